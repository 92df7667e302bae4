"""Replay a workload against OpenAI-compatible vLLM servers for a fixed window (asyncio, stdlib HTTP).

Each request is sent at its arrival time to the endpoint serving its adapter, as a streaming
``/v1/completions`` call whose prompt is a list of token ids (so its length is exact) and whose
output length is fixed by ``max_tokens`` with ``ignore_eos``. Chunk arrival times give TTFT and
inter-token latency. When the window ends, every unfinished request is cancelled (its connection is
closed, which makes vLLM abort it), as in the reference study; only requests completed inside the
window count as throughput. ``/metrics`` is scraped at the window start and end (and every
``sample_every_s`` in between) for the engine's own token counters, preemptions and queue lengths.

Results use the per-GPU schema of ``optplace simulate --json`` (docs/json-contracts.md). HTTP/1.1 is spoken over
``asyncio`` streams (one connection per request, ``Connection: close``), chunked transfer and
server-sent events parsed here, so the load generator needs no third-party client.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from optplace.twin.engine import WorkloadLike  # the replay reads exactly what the twin reads
from optplace.twin.engine.result import LatencyStats
from optplace.twin.simulate import WARMUP_FRACTION, Latency, WindowLatency

from optplace.vllm.metrics import MetricsError, MetricsSnapshot, delta, scrape

__all__ = [
    "Endpoint",
    "GpuResult",
    "LoadgenError",
    "PerAdapter",
    "RequestRecord",
    "ReplayResult",
    "Sample",
    "WorkloadLike",
    "endpoints_from_routes",
    "records_latency",
    "replay",
    "run_replay",
    "split_http_url",
    "summarise",
    "window_latency_of",
]


class LoadgenError(RuntimeError):
    """The replay cannot start (unreachable endpoint, adapter not served, bad routing)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server (one GPU): its base URL and the adapters it serves."""

    gpu: int
    url: str
    adapters: tuple[str, ...]
    max_loras: int | None = None
    max_cpu_loras: int | None = None
    max_lora_rank: int | None = None
    gpu_type: str | None = None
    #: Per adapter (aligned with ``adapters``), its routing weight here: the share of its requests this
    #: endpoint receives when it is one of several serving it (empty: equal weights).
    weights: tuple[float, ...] = ()

    def weight(self, adapter: str) -> float:
        """The routing weight of ``adapter`` on this endpoint (1 without weights)."""
        return self.weights[self.adapters.index(adapter)] if self.weights else 1.0


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What happened to one request. Times are seconds from the window start."""

    index: int
    adapter: int
    gpu: int
    arrival_s: float
    sent_s: float
    input_tokens: int
    max_tokens: int
    status: Literal["ok", "cancelled", "error"]
    first_token_s: float | None = None
    done_s: float | None = None
    output_tokens: int = 0
    chunk_gaps_s: tuple[float, ...] = ()
    error: str | None = None
    last_token_s: float | None = None
    """Arrival of the last token chunk (``done_s`` is the end of the stream, a usage chunk later)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One periodic ``/metrics`` sample of a server (seconds from the window start)."""

    gpu: int
    t_s: float
    running: float | None
    waiting: float | None
    kv_cache_usage: float | None
    preemptions: float | None
    lora_running: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class PerAdapter:
    """Per-adapter figures of one GPU (``per_adapter`` entries of ``simulate --json``)."""

    name: str
    offered_tok_s: float
    throughput_tok_s: float
    completed: int
    arrived: int
    loss: float
    latency: WindowLatency | None = None


@dataclass(frozen=True, slots=True)
class GpuResult:
    """Per-GPU figures in the ``simulate --json`` schema; ``None`` = not measurable on this server."""

    index: int
    gpu_type: str | None
    adapters: tuple[str, ...]
    max_loras: int | None
    max_cpu_loras: int | None
    max_lora_rank: int | None
    throughput_tok_s: float
    engine_tok_s: float | None
    offered_tok_s: float
    throughput_loss: float
    starved: bool
    oom: bool
    starved_adapters: tuple[str, ...]
    itl_ms_mean: float | None
    ttft_ms_p50: float | None
    ttft_ms_p99: float | None
    preemptions: float | None
    adapter_loads: int | None
    max_running: float | None
    max_waiting: float | None
    per_adapter: tuple[PerAdapter, ...]
    errors: int = 0
    latency: WindowLatency | None = None
    """Latency over the window and in steady state, as the twin reports it (``simulate --json``)."""

    def to_json(self) -> dict[str, Any]:
        """The ``simulate --json`` per-GPU dict (plus ``errors``; ``kv_cache_tokens`` is not measured)."""
        return {
            "index": self.index,
            "gpu_type": self.gpu_type,
            "adapters": list(self.adapters),
            "max_loras": self.max_loras,
            "max_cpu_loras": self.max_cpu_loras,
            "max_lora_rank": self.max_lora_rank,
            "kv_cache_tokens": None,
            "throughput_tok_s": self.throughput_tok_s,
            "engine_tok_s": self.engine_tok_s,
            "offered_tok_s": self.offered_tok_s,
            "throughput_loss": self.throughput_loss,
            "starved": self.starved,
            "oom": self.oom,
            "starved_adapters": list(self.starved_adapters),
            "itl_ms_mean": self.itl_ms_mean,
            "ttft_ms_p50": self.ttft_ms_p50,
            "ttft_ms_p99": self.ttft_ms_p99,
            "preemptions": self.preemptions,
            "adapter_loads": self.adapter_loads,
            "max_running": self.max_running,
            "max_waiting": self.max_waiting,
            "per_adapter": [
                {
                    "name": p.name,
                    "offered_tok_s": p.offered_tok_s,
                    "throughput_tok_s": p.throughput_tok_s,
                    "completed": p.completed,
                    "arrived": p.arrived,
                    "loss": p.loss,
                    "latency": None if p.latency is None else asdict(p.latency),
                }
                for p in self.per_adapter
            ],
            "errors": self.errors,
            "latency": None if self.latency is None else asdict(self.latency),
        }


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """A finished replay: per-GPU figures, every request, metric samples, and the run's settings."""

    gpus: tuple[GpuResult, ...]
    requests: tuple[RequestRecord, ...]
    samples: tuple[Sample, ...]
    window_s: float
    wall_s: float
    seed: int
    adapter_names: tuple[str, ...]
    metrics_delta: Mapping[int, dict[str, float | None]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``simulate --json``-shaped document (``sim_wall_s`` = wall time of the real run)."""
        return {
            "engine": "vllm",
            "gpus": [g.to_json() for g in self.gpus],
            "sim_wall_s": self.wall_s,
            "simulated_s": self.window_s,
            "seed": self.seed,
            "requests": {
                "sent": len(self.requests),
                "completed": sum(1 for r in self.requests if r.status == "ok"),
                "cancelled": sum(1 for r in self.requests if r.status == "cancelled"),
                "errors": sum(1 for r in self.requests if r.status == "error"),
            },
            "metrics_delta": {str(k): v for k, v in self.metrics_delta.items()},
        }

    def write_traces(self, out_dir: Path) -> tuple[Path, Path]:
        """Write ``requests.csv`` (one row per sent request) and ``samples.csv`` (periodic /metrics)
        into ``out_dir``: the raw material for calibrating step time, TTFT and queueing."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        req_path, smp_path = out / "requests.csv", out / "samples.csv"
        with open(req_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                [
                    "index",
                    "adapter",
                    "adapter_name",
                    "gpu",
                    "arrival_s",
                    "sent_s",
                    "first_token_s",
                    "done_s",
                    "input_tokens",
                    "max_tokens",
                    "output_tokens",
                    "status",
                    "itl_mean_ms",
                    "error",
                ]
            )
            for r in self.requests:
                itl = sum(r.chunk_gaps_s) / len(r.chunk_gaps_s) * 1000 if r.chunk_gaps_s else ""
                w.writerow(
                    [
                        r.index,
                        r.adapter,
                        self.adapter_names[r.adapter],
                        r.gpu,
                        f"{r.arrival_s:.6f}",
                        f"{r.sent_s:.6f}",
                        "" if r.first_token_s is None else f"{r.first_token_s:.6f}",
                        "" if r.done_s is None else f"{r.done_s:.6f}",
                        r.input_tokens,
                        r.max_tokens,
                        r.output_tokens,
                        r.status,
                        itl if itl == "" else f"{itl:.3f}",
                        r.error or "",
                    ]
                )
        with open(smp_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["gpu", "t_s", "running", "waiting", "kv_cache_usage", "preemptions", "lora_running"])
            for s in self.samples:
                w.writerow(
                    [
                        s.gpu,
                        f"{s.t_s:.3f}",
                        s.running,
                        s.waiting,
                        s.kv_cache_usage,
                        s.preemptions,
                        "" if s.lora_running is None else " ".join(s.lora_running),
                    ]
                )
        return req_path, smp_path


def endpoints_from_routes(routes: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """Endpoints from a ``routes.json`` document written by ``optplace vllm deploy``, with the routing
    weights of its ``adapters`` section (replicas) where it has one."""
    try:
        weight = {
            (str(name), int(r["gpu"])): float(r["weight"])
            for name, rs in (routes.get("adapters") or {}).items()
            for r in rs
            if "weight" in r
        }
        eps = []
        for e in routes["endpoints"]:
            adapters, gpu = tuple(e["adapters"]), int(e["gpu"])
            w = tuple(weight.get((a, gpu), 1.0) for a in adapters)
            if not all(x > 0 for x in w):  # also NaN
                raise LoadgenError(f"gpu {gpu}: routing weights must be > 0 (got {list(w)})")
            eps.append(
                Endpoint(
                    gpu=gpu,
                    url=str(e["url"]),
                    adapters=adapters,
                    max_loras=e.get("max_loras"),
                    max_cpu_loras=e.get("max_cpu_loras"),
                    max_lora_rank=e.get("max_lora_rank"),
                    gpu_type=e.get("gpu_type"),
                    weights=w if any(x != 1.0 for x in w) else (),
                )
            )
        return tuple(eps)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise LoadgenError(f"routes document lacks endpoints[{{gpu, url, adapters}}]: {exc}") from exc


# ----------------------------------------------------------------------------- HTTP/1.1 over asyncio


class _HttpError(Exception):
    pass


_TOKEN_IDS = re.compile(rb'"token_ids":\s*\[')


def split_http_url(url: str) -> tuple[str, int, str]:
    """``(host, port, base path)`` of a server URL (``http://`` assumed when it names no scheme); the base
    path has no trailing ``/`` or ``/v1`` (callers append ``/v1/...``). :class:`ValueError` for another
    scheme or no host. The load generator and the router (:mod:`optplace.vllm.router`) read URLs alike."""
    p = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if p.scheme != "http" or not p.hostname:
        raise ValueError(f"{url!r} is not an http:// URL")
    return p.hostname, p.port or 80, p.path.rstrip("/").removesuffix("/v1")


def _split_url(url: str) -> tuple[str, int, str]:
    try:
        return split_http_url(url)
    except ValueError as exc:
        raise LoadgenError(str(exc)) from None


async def _read_headers(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise _HttpError("connection closed before a status line")
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise _HttpError(f"bad status line {status_line[:80]!r}")
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def _body_chunks(reader: asyncio.StreamReader, headers: Mapping[str, str]):
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining > 0:
            data = await reader.read(min(remaining, 65536))
            if not data:
                return
            remaining -= len(data)
            yield data
    else:
        while data := await reader.read(65536):
            yield data


async def _request(
    host: str, port: int, method: str, path: str, body: bytes | None, timeout_s: float
) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"\r\n" + (body or b""))
            await writer.drain()
            status, headers = await _read_headers(reader)
            return status, b"".join([c async for c in _body_chunks(reader, headers)])
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout_s)


class _Stream:
    """Mutable progress of one streaming request (filled while it runs, read when it ends)."""

    __slots__ = ("sent", "first", "last", "gaps", "tokens", "usage_tokens", "done", "served_by")

    def __init__(self) -> None:
        self.sent = 0.0
        #: The GPU a router says served the request (its ``x-optplace-gpu`` header); None without one.
        self.served_by: str | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.gaps: list[float] = []
        self.tokens = 0
        self.usage_tokens: int | None = None
        self.done: float | None = None


async def _stream_completion(
    host: str, port: int, path: str, body: bytes, st: _Stream, clock: Callable[[], float]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = (
            f"POST {path}/v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        status, headers = await _read_headers(reader)
        st.served_by = headers.get("x-optplace-gpu")
        if status != 200:
            text = b"".join([c async for c in _body_chunks(reader, headers)])[:300]
            raise _HttpError(f"HTTP {status}: {text.decode(errors='replace')}")
        buf = b""
        async for chunk in _body_chunks(reader, headers):
            buf += chunk
            while True:
                cut = buf.find(b"\n\n")
                if cut < 0:
                    break
                event, buf = buf[:cut], buf[cut + 2 :]
                for line in event.split(b"\n"):
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        st.done = clock()
                        return
                    now = clock()
                    if b'"usage"' in data or b'"error"' in data or _TOKEN_IDS.search(data):
                        msg = json.loads(data)
                        if "error" in msg and "choices" not in msg:
                            raise _HttpError(f"stream error: {str(msg['error'])[:300]}")
                        if msg.get("usage"):
                            st.usage_tokens = int(msg["usage"].get("completion_tokens", 0))
                        choices = msg.get("choices") or []
                        if not choices:
                            continue
                        n = len(choices[0].get("token_ids") or []) or 1
                    else:
                        # a plain token chunk: decoding its JSON would cost more than the rest of the
                        # client's work, and saturated runs stream hundreds of them per second
                        n = 1
                    if st.first is None:
                        st.first = now
                    elif st.last is not None:
                        st.gaps.append(now - st.last)
                    st.last = now
                    st.tokens += n
        raise _HttpError("stream ended without [DONE]")
    finally:
        writer.close()


# ----------------------------------------------------------------------------- replay


async def _preflight(endpoints: Sequence[Endpoint], timeout_s: float) -> None:
    problems = []
    for ep in endpoints:
        host, port, base = _split_url(ep.url)
        try:
            status, _ = await _request(host, port, "GET", f"{base}/health", None, timeout_s)
            if status != 200:
                problems.append(f"gpu {ep.gpu} {ep.url}: /health answered HTTP {status}")
                continue
            status, body = await _request(host, port, "GET", f"{base}/v1/models", None, timeout_s)
            served = {m.get("id") for m in json.loads(body).get("data", [])} if status == 200 else set()
            missing = [a for a in ep.adapters if a not in served]
            if missing:
                problems.append(f"gpu {ep.gpu} {ep.url}: adapters not served there: {missing[:10]}")
        except (OSError, asyncio.TimeoutError, _HttpError, ValueError) as exc:
            problems.append(f"gpu {ep.gpu} {ep.url}: unreachable ({type(exc).__name__}: {exc})")
    if problems:
        raise LoadgenError("endpoints not ready:\n" + "\n".join(f"  - {p}" for p in problems))


async def _scrape(ep: Endpoint, timeout_s: float) -> MetricsSnapshot | None:
    try:
        return await asyncio.to_thread(scrape, ep.url, timeout_s)
    except MetricsError:
        return None


def _route(choices: Sequence[Endpoint], adapter: str, target: int | None, rng: np.random.Generator) -> Endpoint:
    """The endpoint a request of ``adapter`` goes to: its only host, the ``target`` GPU if it hosts the
    adapter, else one drawn by the hosts' routing weights."""
    if len(choices) == 1:
        return choices[0]
    for ep in choices:
        if ep.gpu == target:
            return ep
    w = np.array([ep.weight(adapter) for ep in choices])
    return choices[int(rng.choice(len(choices), p=w / w.sum()))]


def _served_by(
    header: str | None, expected: Endpoint, hosts: Sequence[Endpoint], by_gpu: Mapping[int, Endpoint]
) -> tuple[Endpoint, str | None]:
    """The endpoint a router says served a request, and what is wrong with that when something is: no
    header (the router had not answered: counted on ``expected``, where the request was expected to
    go), a GPU this replay does not measure (its server did not start: a stand-in endpoint, so no
    measured GPU counts it), a GPU that does not host the adapter."""
    try:
        gpu = None if header is None else int(header)
    except ValueError:
        gpu = None
    if gpu is None:
        return expected, f"the router named no GPU ({header!r})"
    ep = by_gpu.get(gpu)
    if ep is None:
        return Endpoint(gpu, "", ()), f"the router sent it to GPU {gpu}, which this replay does not measure"
    if ep not in hosts:
        return ep, f"the router sent it to GPU {gpu}, which does not serve its adapter"
    return ep, None


async def replay(
    workload: WorkloadLike,
    adapter_names: Sequence[str],
    endpoints: Sequence[Endpoint],
    *,
    seed: int = 0,
    token_id_range: tuple[int, int] = (4, 1000),
    max_throughput_loss: float = 0.10,
    max_adapter_loss: float | None = None,
    sample_every_s: float = 2.0,
    request_timeout_s: float | None = None,
    preflight_timeout_s: float = 10.0,
    progress: bool = False,
    lead_s: float = 0.5,
    route_to: Sequence[int] | np.ndarray | None = None,
    router_url: str | None = None,
) -> ReplayResult:
    """Replay ``workload`` for ``workload.duration_s`` seconds; see the module docstring.

    ``adapter_names[i]`` is the model name of adapter index *i*. A request of an adapter served by
    several endpoints goes to ``route_to[i]`` (an endpoint's ``gpu``: the twin's routing of the plan,
    so both compare each replica on the same requests) when it is given and serves the adapter, else
    to one of them drawn by the endpoints' routing weights (seeded). With ``router_url`` (a router in
    front of ``endpoints``, e.g. :mod:`optplace.vllm.router`) every request is sent to the router
    instead, which picks the server, and counts on the GPU its ``x-optplace-gpu`` response header
    names; ``route_to`` is then where the router is expected to send it, and a request cancelled at
    the window's end before the router answered counts there (a finished one without the header is
    an error). The endpoints are still scraped for ``/metrics``. Prompt token ids are drawn
    uniformly from ``token_id_range`` (half-open) with ``numpy.random.default_rng(seed)``. Raises
    :class:`LoadgenError` before sending anything if an endpoint is unreachable or does not serve
    its adapters.
    """
    names = tuple(adapter_names)
    window = float(workload.duration_s)
    arrival = np.asarray(workload.arrival_s, dtype=np.float64)
    adapter = np.asarray(workload.adapter, dtype=np.int64)
    n_in = np.asarray(workload.input_tokens, dtype=np.int64)
    n_out = np.asarray(workload.output_tokens, dtype=np.int64)
    if not (len(arrival) == len(adapter) == len(n_in) == len(n_out)):
        raise LoadgenError("workload arrays differ in length")
    if route_to is not None and len(route_to) != len(arrival):
        raise LoadgenError(f"{len(route_to)} routing targets for {len(arrival)} requests")
    if len(adapter) and (adapter.min() < 0 or adapter.max() >= len(names)):
        raise LoadgenError(f"workload uses adapter index {int(adapter.max())} but only {len(names)} names were given")
    hosts: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        for a in ep.adapters:
            hosts.setdefault(a, []).append(ep)
    used = sorted({names[i] for i in np.unique(adapter)})
    unrouted = [a for a in used if a not in hosts]
    if unrouted:
        raise LoadgenError(f"no endpoint serves adapters {unrouted[:10]}")
    await _preflight(endpoints, preflight_timeout_s)
    if router_url is not None:
        await _preflight([Endpoint(-1, router_url, tuple(used))], preflight_timeout_s)
    by_gpu = {ep.gpu: ep for ep in endpoints}

    rng = np.random.default_rng(seed)
    loop = asyncio.get_running_loop()
    wall0 = time.monotonic()
    before = {ep.gpu: await _scrape(ep, 5.0) for ep in endpoints}
    t0 = loop.time() + lead_s
    clock = lambda: loop.time() - t0  # noqa: E731 - seconds since the window start
    streams: list[_Stream | None] = [None] * len(arrival)
    errors: dict[int, str] = {}
    targets: list[Endpoint | None] = [None] * len(arrival)
    tasks: dict[int, asyncio.Task[None]] = {}
    samples: list[Sample] = []

    async def one(i: int, ep: Endpoint, body: bytes) -> None:
        st = streams[i]
        assert st is not None  # set before the task is created
        host, port, base = _split_url(ep.url if router_url is None else router_url)
        try:
            if request_timeout_s is None:
                await _stream_completion(host, port, base, body, st, clock)
            else:
                await asyncio.wait_for(_stream_completion(host, port, base, body, st, clock), request_timeout_s)
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, _HttpError, ValueError) as exc:
            errors[i] = f"{type(exc).__name__}: {exc}"[:300]

    async def dispatch() -> None:
        for i in np.argsort(arrival, kind="stable"):
            i = int(i)
            if arrival[i] >= window:
                break
            name = names[adapter[i]]
            ep = _route(hosts[name], name, None if route_to is None else int(route_to[i]), rng)
            prompt = rng.integers(token_id_range[0], token_id_range[1], size=int(n_in[i])).tolist()
            body = json.dumps(
                {
                    "model": names[adapter[i]],
                    "prompt": prompt,
                    "max_tokens": int(n_out[i]),
                    "ignore_eos": True,
                    "temperature": 0.0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
            ).encode()
            delay = arrival[i] - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            st = _Stream()
            st.sent = clock()
            streams[i] = st
            targets[i] = ep
            tasks[i] = asyncio.create_task(one(i, ep, body))

    async def sampler() -> None:
        while True:
            for ep in endpoints:
                snap = await _scrape(ep, 2.0)
                if snap is not None:
                    samples.append(
                        Sample(
                            ep.gpu,
                            clock(),
                            snap.running,
                            snap.waiting,
                            snap.kv_cache_usage,
                            snap.preemptions,
                            snap.lora.running if snap.lora else None,
                        )
                    )
            await asyncio.sleep(sample_every_s)

    async def ticker(prog: Any, task_id: Any) -> None:
        while True:
            done = sum(1 for s in streams if s is not None and s.done is not None)
            sent = sum(1 for s in streams if s is not None)
            prog.update(
                task_id,
                completed=min(window, max(0.0, clock())),
                description=f"sent {sent}  done {done}  in flight {sent - done - len(errors)}  errors {len(errors)}",
            )
            await asyncio.sleep(0.5)

    background = [asyncio.create_task(dispatch())]
    if sample_every_s > 0:
        background.append(asyncio.create_task(sampler()))
    prog_ctx = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        prog_ctx = Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), transient=True)
        prog_ctx.start()
        background.append(asyncio.create_task(ticker(prog_ctx, prog_ctx.add_task("replay", total=window))))
    try:
        await asyncio.sleep(max(0.0, window - clock()))
        after = {ep.gpu: await _scrape(ep, 5.0) for ep in endpoints}
    finally:
        for t in background:
            t.cancel()
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*background, *tasks.values(), return_exceptions=True)
        if prog_ctx is not None:
            prog_ctx.stop()
    crashed = [exc for t in background if not t.cancelled() and (exc := t.exception()) is not None]
    if crashed:  # a bug in the dispatcher or sampler must not pass for an idle server
        raise crashed[0]

    records = []
    for i, st in enumerate(streams):
        if st is None:
            continue
        target = targets[i]
        assert target is not None
        if router_url is not None:
            target, problem = _served_by(st.served_by, target, hosts[names[adapter[i]]], by_gpu)
            # a request cancelled at the window's end may not have had its headers yet
            if problem and i not in errors and st.done is not None:
                errors[i] = problem
        done_in_window = st.done is not None and st.done <= window
        status: Literal["ok", "cancelled", "error"] = (
            "error" if i in errors else ("ok" if done_in_window else "cancelled")
        )
        records.append(
            RequestRecord(
                index=i,
                adapter=int(adapter[i]),
                gpu=target.gpu,
                arrival_s=float(arrival[i]),
                sent_s=st.sent,
                input_tokens=int(n_in[i]),
                max_tokens=int(n_out[i]),
                status=status,
                first_token_s=st.first,
                done_s=st.done if done_in_window else None,
                output_tokens=st.usage_tokens if (status == "ok" and st.usage_tokens is not None) else st.tokens,
                chunk_gaps_s=tuple(st.gaps),
                error=errors.get(i),
                last_token_s=st.last,
            )
        )
    metric_deltas: dict[int, dict[str, float | None]] = {}
    for ep in endpoints:
        m0, m1 = before.get(ep.gpu), after.get(ep.gpu)
        if m0 is not None and m1 is not None:
            d = delta(m0, m1)
            # per second of the window, as the twin counts it: the scrapes bracket the window (nothing
            # runs before it; the end scrape follows it within milliseconds), their interval is longer
            eng = d.engine_tokens
            metric_deltas[ep.gpu] = {
                "seconds": d.seconds,
                "prompt_tokens": d.prompt_tokens,
                "generation_tokens": d.generation_tokens,
                "preemptions": d.preemptions,
                "requests_finished": d.requests_finished,
                "engine_tok_s": None if eng is None else eng / window,
            }
    gpus = summarise(records, names, endpoints, window, metric_deltas, max_throughput_loss, max_adapter_loss, samples)
    return ReplayResult(
        gpus=gpus,
        requests=tuple(records),
        samples=tuple(samples),
        window_s=window,
        wall_s=time.monotonic() - wall0,
        seed=seed,
        adapter_names=names,
        metrics_delta=metric_deltas,
    )


def records_latency(records: Sequence[RequestRecord]) -> LatencyStats:
    """TTFT, TPOT and ITL [ms] of the completed requests among ``records``, defined as the twin defines them
    (:mod:`optplace.twin.engine.result`, vLLM ``benchmark_serving``'s definitions), 0.0 where none completed.

    TTFT = first token − request sent; TPOT = (last token − first token) / (output − 1) per request with more
    than one output token; mean ITL = Σ(last − first) / Σ(output − 1) (exact even where the server merged
    tokens into one chunk); ITL percentiles over every inter-chunk gap; ``numpy.percentile`` throughout.
    """
    done = [r for r in records if r.status == "ok" and r.first_token_s is not None]
    if not done:
        return LatencyStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    ttft = np.array([r.first_token_s - r.sent_s for r in done]) * 1e3  # type: ignore[operator]
    last = np.array([r.last_token_s if r.last_token_s is not None else (r.done_s or 0.0) for r in done])
    span = last - np.array([r.first_token_s for r in done], dtype=np.float64)
    n_gaps = np.array([r.output_tokens - 1 for r in done], dtype=np.int64)
    multi = n_gaps > 0
    tpot = span[multi] / n_gaps[multi] * 1e3
    gaps = np.fromiter((g for r in done for g in r.chunk_gaps_s), dtype=np.float64) * 1e3
    total = int(n_gaps[multi].sum())
    itl_p50, itl_p99 = np.percentile(gaps, (50, 99)) if gaps.size else (0.0, 0.0)
    itl_mean = float(span[multi].sum() / total * 1e3) if total else 0.0
    return LatencyStats.of(ttft, tpot, itl_mean, float(itl_p50), float(itl_p99))


def window_latency_of(
    records: Sequence[RequestRecord], window_s: float, warmup_fraction: float = WARMUP_FRACTION
) -> WindowLatency:
    """Latency of ``records`` over the window and in steady state (requests arriving at or after
    ``warmup_fraction`` of the window), with losses, in the twin's ``latency`` shape
    (:func:`optplace.twin.simulate.window_latency`)."""
    warm = warmup_fraction * window_s

    def of(rs: Sequence[RequestRecord]) -> Latency:
        offered = sum(r.input_tokens + r.max_tokens for r in rs)
        done = sum(r.input_tokens + r.output_tokens for r in rs if r.status == "ok")
        return Latency.of(records_latency(rs), (1.0 - done / offered) if offered > 0 else 0.0)

    return WindowLatency(warm, of(records), of([r for r in records if r.arrival_s >= warm]))


def summarise(
    records: Sequence[RequestRecord],
    names: Sequence[str],
    endpoints: Sequence[Endpoint],
    window_s: float,
    metric_deltas: Mapping[int, Mapping[str, float | None]] | None = None,
    max_throughput_loss: float = 0.10,
    max_adapter_loss: float | None = None,
    samples: Sequence[Sample] = (),
) -> tuple[GpuResult, ...]:
    """Per-GPU figures from request records, with the twin's definitions (``optplace.twin.simulate``).

    Offered = input + output tokens of every request that arrived in the window; throughput = those
    of requests completed in it; both divided by the window; loss = 1 − throughput / offered.
    ``starved_adapters``: adapters with offered load whose own loss is at least ``max_adapter_loss``
    (default ``max_throughput_loss``). A GPU is starved when its loss is at least
    ``max_throughput_loss`` or, with ``max_adapter_loss`` set, when any adapter is starved.
    """
    metric_deltas = metric_deltas or {}
    index = {n: i for i, n in enumerate(names)}
    by_gpu: dict[int, list[RequestRecord]] = {}
    by_pair: dict[tuple[int, int], list[RequestRecord]] = {}
    for r in records:  # one pass: thousands of adapters x 10^5 requests must stay linear
        by_gpu.setdefault(r.gpu, []).append(r)
        by_pair.setdefault((r.gpu, r.adapter), []).append(r)
    out = []
    for ep in endpoints:
        mine = by_gpu.get(ep.gpu, [])
        per = []
        for a_name in ep.adapters:
            reqs = by_pair.get((ep.gpu, index.get(a_name, -1)), [])
            offered = sum(r.input_tokens + r.max_tokens for r in reqs) / window_s
            done = [r for r in reqs if r.status == "ok"]
            thr = sum(r.input_tokens + r.output_tokens for r in done) / window_s
            per.append(
                PerAdapter(
                    a_name,
                    offered,
                    thr,
                    len(done),
                    len(reqs),
                    (1 - thr / offered) if offered > 0 else 0.0,
                    window_latency_of(reqs, window_s),
                )
            )
        offered = sum(p.offered_tok_s for p in per)
        thr = sum(p.throughput_tok_s for p in per)
        lat = window_latency_of(mine, window_s)
        md = metric_deltas.get(ep.gpu, {})
        loss = (1 - thr / offered) if offered > 0 else 0.0
        threshold = max_throughput_loss if max_adapter_loss is None else max_adapter_loss
        starved_ad = tuple(p.name for p in per if p.offered_tok_s > 0 and p.loss >= threshold)
        mine_s = [s for s in samples if s.gpu == ep.gpu]
        run = [s.running for s in mine_s if s.running is not None]
        wait = [s.waiting for s in mine_s if s.waiting is not None]
        out.append(
            GpuResult(
                index=ep.gpu,
                gpu_type=ep.gpu_type,
                adapters=ep.adapters,
                max_loras=ep.max_loras,
                max_cpu_loras=ep.max_cpu_loras,
                max_lora_rank=ep.max_lora_rank,
                throughput_tok_s=thr,
                engine_tok_s=md.get("engine_tok_s"),
                offered_tok_s=offered,
                throughput_loss=loss,
                starved=loss >= max_throughput_loss or (max_adapter_loss is not None and bool(starved_ad)),
                oom=False,
                starved_adapters=starved_ad,
                max_running=max(run) if run else None,
                max_waiting=max(wait) if wait else None,
                itl_ms_mean=lat.window.itl_ms_mean if lat.window.completed else None,
                ttft_ms_p50=lat.window.ttft_ms_p50 if lat.window.completed else None,
                ttft_ms_p99=lat.window.ttft_ms_p99 if lat.window.completed else None,
                preemptions=md.get("preemptions"),
                adapter_loads=None,
                per_adapter=tuple(per),
                errors=sum(1 for r in mine if r.status == "error"),
                latency=lat,
            )
        )
    return tuple(out)


def run_replay(*args: Any, **kwargs: Any) -> ReplayResult:
    """Synchronous wrapper of :func:`replay` (runs its own event loop)."""
    return asyncio.run(replay(*args, **kwargs))
