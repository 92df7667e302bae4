"""Run a deployment for real: start every server, replay the workload, stop everything.

:func:`run_deployment` is what ``optplace validate --engine vllm --launch`` needs: servers are
started one after the other (each start loads a model; starting them together only makes every
start slower on a shared machine), the workload is replayed against the healthy ones, and a server
that could not start is a measured result — ``oom`` true when the KV cache or device memory was too
small, throughput 0, every adapter on it starved — rather than an exception. Servers are always
stopped, also on errors and Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optplace.deploy.artefacts import Deployment, Route, ServerSpec
from optplace.vllm.launcher import LaunchResult, start_server
from optplace.vllm.loadgen import Endpoint, GpuResult, PerAdapter, ReplayResult, WorkloadLike
from optplace.vllm.router import RouteTable, replay_through

__all__ = ["RealRun", "run_deployment", "unserved_result"]


@dataclass(frozen=True, slots=True)
class RealRun:
    """Launch outcomes per GPU and the replay (``None`` when no server started)."""

    launches: tuple[LaunchResult, ...]
    replay: ReplayResult | None
    gpus: tuple[GpuResult, ...]

    def to_json(self) -> dict[str, Any]:
        """``simulate --json`` shaped, plus each GPU's ``server_status`` / ``server_reason``."""
        base = (
            self.replay.to_json()
            if self.replay is not None
            else {"engine": "vllm", "sim_wall_s": 0.0, "simulated_s": None, "requests": {}}
        )
        gpus = []
        for g, launch in zip(self.gpus, self.launches):
            d = g.to_json()
            d["server_status"], d["server_reason"], d["server_start_s"] = launch.status, launch.reason, launch.start_s
            gpus.append(d)
        return {**base, "gpus": gpus}


def route_weight(routes: Mapping[str, Sequence[Route]], adapter: str, gpu: int) -> float:
    """The share of ``adapter``'s requests routed to ``gpu`` (1 where the routing table lacks it)."""
    return next((r.weight for r in routes.get(adapter, ()) if r.gpu == gpu), 1.0)


def unserved_result(
    server: ServerSpec,
    workload: WorkloadLike,
    adapter_names: Sequence[str],
    routes: Mapping[str, Sequence[Route]],
    oom: bool,
) -> GpuResult:
    """Per-GPU result of a server that never served: its offered load (an adapter replicated on
    GPUs contributes its routing weight's share of its tokens here) entirely lost."""
    index = {n: i for i, n in enumerate(adapter_names)}
    adapter = np.asarray(workload.adapter)
    tokens = np.asarray(workload.input_tokens, dtype=np.int64) + np.asarray(workload.output_tokens, dtype=np.int64)
    arrived = np.asarray(workload.arrival_s) < workload.duration_s
    per = []
    for name in server.adapters:
        mask = arrived & (adapter == index.get(name, -1))
        share = route_weight(routes, name, server.gpu)
        offered = float(tokens[mask].sum()) * share / workload.duration_s
        per.append(PerAdapter(name, offered, 0.0, 0, int(round(mask.sum() * share)), 1.0 if offered > 0 else 0.0))
    offered = sum(p.offered_tok_s for p in per)
    return GpuResult(
        index=server.gpu,
        gpu_type=server.gpu_type,
        adapters=server.adapters,
        max_loras=server.max_loras,
        max_cpu_loras=server.max_cpu_loras,
        max_lora_rank=server.max_lora_rank,
        throughput_tok_s=0.0,
        engine_tok_s=0.0,
        offered_tok_s=offered,
        throughput_loss=1.0,
        starved=True,
        oom=oom,
        starved_adapters=server.adapters,
        itl_ms_mean=None,
        ttft_ms_p50=None,
        ttft_ms_p99=None,
        preemptions=None,
        adapter_loads=None,
        max_running=None,
        max_waiting=None,
        per_adapter=tuple(per),
    )


def run_deployment(
    deployment: Deployment,
    workload: WorkloadLike,
    adapter_names: Sequence[str],
    *,
    log_dir: Path,
    env: Mapping[str, str | None] | None = None,
    start_timeout_s: float = 600.0,
    seed: int = 0,
    token_id_range: tuple[int, int] = (4, 1000),
    max_throughput_loss: float = 0.10,
    max_adapter_loss: float | None = None,
    progress: bool = False,
    before_replay: Callable[[tuple[Endpoint, ...]], None] | None = None,
    route_to: np.ndarray | None = None,
    router: bool = False,
) -> RealRun:
    """Start the deployment's servers, replay ``workload`` on the healthy ones, stop them all.

    Requests of adapters that no healthy server hosts are not sent (they count as offered and lost
    on their GPU's result). Raises :class:`~optplace.vllm.launcher.LaunchError` only for set-up
    errors (port taken, executable missing) — after stopping what was started. ``before_replay`` is
    called with the healthy endpoints right before the replay (e.g. to measure a speed canary).
    ``route_to`` (per request of ``workload``, the GPU to send it to) routes replicas as the twin does;
    without it, or where the target did not start, replicas get requests by the deployment's weights.
    ``router``: send every request through the built-in router (:mod:`optplace.vllm.router`) over the
    deployment's routes instead, as its users would (``route_to`` is then where it is expected to send
    each request); a request it routes to a server that did not start fails there.
    """
    launches: list[LaunchResult] = []
    try:
        for s in deployment.servers:
            launches.append(
                start_server(
                    s.argv,
                    port=s.port,
                    host=s.host,
                    env={**s.env, **(env or {})},
                    log_path=Path(log_dir) / f"gpu{s.gpu}.log",
                    timeout_s=start_timeout_s,
                )
            )
        healthy = [(s, r) for s, r in zip(deployment.servers, launches) if r.ok]
        endpoints = tuple(
            Endpoint(
                s.gpu,
                r.server.url,
                s.adapters,
                s.max_loras,
                s.max_cpu_loras,
                s.max_lora_rank,
                s.gpu_type,
                tuple(route_weight(deployment.routes, a, s.gpu) for a in s.adapters),
            )
            for s, r in healthy
            if r.server is not None
        )
        replay = None
        if endpoints and before_replay is not None:
            before_replay(endpoints)
        if endpoints:
            served = {a for ep in endpoints for a in ep.adapters}
            keep = np.isin(np.asarray(workload.adapter), [i for i, n in enumerate(adapter_names) if n in served])
            sub = _subset(workload, keep)
            replay = replay_through(
                RouteTable.from_routes(deployment.routes_json()) if router else None,
                sub,
                adapter_names,
                endpoints,
                seed=seed,
                token_id_range=token_id_range,
                max_throughput_loss=max_throughput_loss,
                max_adapter_loss=max_adapter_loss,
                progress=progress,
                route_to=None if route_to is None else np.asarray(route_to)[keep],
            )
        by_gpu = {g.index: g for g in (replay.gpus if replay is not None else ())}
        gpus = []
        for s, r in zip(deployment.servers, launches):
            if r.ok and s.gpu in by_gpu:
                gpus.append(by_gpu[s.gpu])
            else:
                gpus.append(unserved_result(s, workload, adapter_names, deployment.routes, oom=r.status == "oom"))
        return RealRun(tuple(launches), replay, tuple(gpus))
    finally:
        for r in launches:
            if r.server is not None:
                r.server.stop()


@dataclass(frozen=True, slots=True)
class _Subset:
    arrival_s: np.ndarray
    adapter: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    duration_s: float


def _subset(wl: WorkloadLike, keep: np.ndarray) -> _Subset:
    return _Subset(
        np.asarray(wl.arrival_s)[keep],
        np.asarray(wl.adapter)[keep],
        np.asarray(wl.input_tokens)[keep],
        np.asarray(wl.output_tokens)[keep],
        float(wl.duration_s),
    )
