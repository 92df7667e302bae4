"""``optplace validate PLAN --engine vllm``: run a plan on real vLLM servers and compare with the twin.

One function, :func:`validate_on_vllm`: the plan's scenario workload is generated once for the
validation window (seeded; the twin and the real servers get the very same requests, and an adapter
placed on several GPUs has each request sent to the replica the twin's routing draw gives it, or, with
``router``, through the built-in router, whose picks the twin then follows), the twin
simulates every GPU of the plan, and the real side either launches one server per GPU from the
plan (:mod:`optplace.deploy.artefacts` + :mod:`optplace.vllm.run`: a server that dies at start is a
recorded ``oom``/``failed`` GPU) or replays against given endpoints (a ``routes.json``). The result
holds the measured per-GPU figures in the ``simulate --json`` schema, the twin's report, the
per-GPU comparison (:mod:`optplace.vllm.compare`) and the run document that ``optplace calibrate
--runs`` can fit from (:mod:`optplace.vllm.runs`). Under an SLO, every measured GPU and adapter carries
its real SLO verdict (``slo``, :mod:`optplace.vllm.slo`: the twin's rule on the measured requests) beside
the twin's; every replicated adapter, the requests each replica received on both sides (``routing``).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from optplace.infra.executors import ExecutorSpec
from optplace.app.reporting import PlanItem
from optplace.specs import Scenario
from optplace.twin.simulate import PlanSimulator, SimReport, run_jobs

from optplace.vllm.compare import GpuComparison, compare_runs
from optplace.deploy.artefacts import DeployOptions, build_deployment
from optplace.vllm.launcher import LaunchError
from optplace.vllm.loadgen import Endpoint, LoadgenError, ReplayResult, RequestRecord, endpoints_from_routes
from optplace.vllm.router import RouteTable, replay_through
from optplace.vllm.run import run_deployment
from optplace.vllm.runs import RunServer, kv_tokens_from_log, run_from_replay
from optplace.vllm.slo import judge_records, verdict_json

__all__ = [
    "VllmValidateOptions",
    "VllmValidation",
    "ValidateError",
    "plan_document",
    "validate_on_vllm",
    "window_scenario",
]


class ValidateError(RuntimeError):
    """The validation cannot run (bad endpoints file, nothing to launch, set-up error)."""


@dataclass(frozen=True, slots=True)
class VllmValidateOptions:
    """How to reach real servers. Exactly one of ``launch`` / ``endpoints``."""

    launch: bool = False
    endpoints: Path | None = None
    window_s: float | None = None
    model_path: str | None = None
    adapters_dir: Path = Path("adapters")
    python: str = "python"
    entrypoint: str = "api-server"
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str | None] = field(default_factory=dict)
    start_timeout_s: float = 600.0
    base_port: int | None = None
    token_id_range: tuple[int, int] = (4, 1000)
    log_dir: Path = Path("vllm-logs")
    seed: int | None = None
    progress: bool = False
    speed_ref_ms: float | None = None
    """Canary ITL [ms] measured when the profile was fitted (``optplace.vllm.sweep.canary_itl_ms``).
    Given, the canary is measured again on every server before the replay and the twin's step and
    load times are scaled by (now / then): a correction for a shared machine whose speed drifts."""
    router: bool = False
    """Send every request through the built-in router (:mod:`optplace.vllm.router`) over the plan's
    routes: replicas get requests by its weighted round robin, and the twin routes them as the router
    will (its picks predicted on a fresh table, in arrival order), so both sides still simulate and
    serve each replica on the same requests."""


@dataclass(frozen=True, slots=True)
class VllmValidation:
    """Measured result (``simulate --json`` schema), twin report, comparison and the saveable run."""

    real: dict[str, Any]
    twin: dict[str, Any]
    comparisons: tuple[GpuComparison, ...]
    run: dict[str, Any] | None
    speed_factor: float = 1.0
    """Factor applied to the twin's times (1.0 without ``speed_ref_ms``)."""
    canary_itl_ms: tuple[float, ...] = ()

    @property
    def failed(self) -> bool:
        """Some real GPU starved or did not start."""
        return any(g.get("starved") or g.get("oom") or g.get("server_status", "ok") != "ok" for g in self.real["gpus"])

    def to_json(self) -> dict[str, Any]:
        """``{"engine": "vllm", "real": …, "twin": …, "comparison": […]}``."""
        return {
            "engine": "vllm",
            "real": self.real,
            "twin": self.twin,
            "comparison": [c.to_json() for c in self.comparisons],
            "speed": {"factor": self.speed_factor, "canary_itl_ms": list(self.canary_itl_ms)},
        }


def window_scenario(sc: Scenario, window_s: float | None) -> Scenario:
    """The scenario with its window replaced (``None``: unchanged)."""
    if window_s is None:
        return sc
    if not window_s > 0:
        raise ValidateError(f"--window must be > 0 (got {window_s})")
    return sc.model_copy(update={"workload": sc.workload.model_copy(update={"duration_s": float(window_s)})})


def plan_document(item: PlanItem) -> dict[str, Any]:
    """A deployable plan document (model, serving, adapters, placement) for a plan or placed spec."""
    sc = item.scenario
    ranks = {a.name: a.rank for a in sc.adapter_list()}
    return {
        "model": sc.model_name,
        "serving": sc.serving.model_dump(),
        "adapters": [a.model_dump() for a in sc.adapter_list()],
        "placement": [
            {
                "gpu": i,
                "gpu_type": g.gpu_type,
                "max_loras": g.max_loras,
                "max_cpu_loras": g.max_cpu_loras,
                "max_lora_rank": max((ranks[n] for n in g.adapters), default=8),
                # a replica's share of its adapter's requests: the deployment's routing weight
                "adapters": g.placement_entries(),
            }
            for i, g in enumerate(item.gpus)
        ],
    }


#: Lowest port the launched servers get (above the registered ports that services commonly use).
_LOWEST_BASE_PORT = 20000


def _ephemeral_low() -> int:
    """First port of the OS's ephemeral range (Linux's default 32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_base_port(n: int, host: str = "127.0.0.1", tries: int = 50) -> int:
    """A port p with p … p+n−1 all bindable right now, below the OS's ephemeral range: a starting vLLM
    server binds ports for its own sockets from that range (port 0), and one took the second server's
    port while the first was starting. The scan starts at a point set by the process id, so two
    validations started together look in different places."""
    top = _ephemeral_low()
    span = top - _LOWEST_BASE_PORT - n
    for k in range(tries):
        base = _LOWEST_BASE_PORT + (os.getpid() * 97 + k * 1009) % span
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind((host, p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise ValidateError(f"no {n} consecutive free ports found; give --base-port")


def validate_on_vllm(item: PlanItem, opts: VllmValidateOptions) -> VllmValidation:
    """Run the plan on real servers for the window and compare every GPU with the twin."""
    if opts.launch == (opts.endpoints is not None):
        raise ValidateError("give exactly one of --launch (start servers from the plan) or --endpoints FILE")
    sc = window_scenario(item.scenario, opts.window_s)
    seed = sc.seed if opts.seed is None else opts.seed
    adapters = sc.adapter_list()
    names = [a.name for a in adapters]
    ranks = {a.name: a.rank for a in adapters}
    sim = PlanSimulator(sc, item.base_dir, ExecutorSpec(workers=1), seed)
    # the twin's workload, and (below) its routing of replicas: each replica gets the very requests it gets there
    workload = sim.workload
    c = sc.constraints

    def routing(routes_doc: Mapping[str, Any]) -> np.ndarray:
        """Per request, the plan position of the GPU it goes to on both sides: with ``router``, what the
        router started on ``routes_doc`` will pick for the requests in arrival order (the order the
        replay sends them in; the twin follows it), else the twin's own routing sequence."""
        if opts.router:
            order = np.argsort(np.asarray(workload.arrival_s), kind="stable")
            ad = np.asarray(workload.adapter)[order]
            gpu_of = np.empty(len(order), dtype=np.int64)
            gpu_of[order] = RouteTable.from_routes(routes_doc).pick_all([names[a] for a in ad])
            sim.follow_routing(item.gpus, gpu_of)
        return sim.request_gpus(item.gpus)

    canaries: list[float] = []

    def canary(endpoints: Sequence[Endpoint]) -> None:
        if opts.speed_ref_ms is None:
            return
        from optplace.vllm.sweep import canary_itl_ms

        for ep in endpoints:
            try:
                canaries.append(canary_itl_ms(ep.url, ep.adapters[0]))
            except OSError as exc:
                raise ValidateError(f"gpu {ep.gpu}: speed canary failed: {exc}") from None

    doc = plan_document(PlanItem(sc, item.base_dir, item.gpus))
    servers: list[RunServer]
    if opts.launch:
        base = opts.base_port if opts.base_port is not None else _free_base_port(len(item.gpus))
        dep = build_deployment(
            doc,
            DeployOptions(
                model_path=opts.model_path,
                adapters_dir=opts.adapters_dir,
                base_port=base,
                entrypoint=opts.entrypoint,  # type: ignore[arg-type]
                python=opts.python,
                extra_args=opts.extra_args,
                pin_gpus=False,
            ),
        )
        route_to = routing(dep.routes_json())
        try:
            real = run_deployment(
                dep,
                workload,
                names,
                log_dir=opts.log_dir,
                env=dict(opts.env),
                start_timeout_s=opts.start_timeout_s,
                seed=seed,
                token_id_range=opts.token_id_range,
                max_throughput_loss=c.max_throughput_loss,
                max_adapter_loss=c.max_adapter_loss,
                progress=opts.progress,
                before_replay=canary,
                route_to=route_to,
                router=opts.router,
            )
        except (LaunchError, LoadgenError) as exc:
            raise ValidateError(str(exc)) from None
        real_doc = real.to_json()
        replay = real.replay
        servers = []
        for s, launch in zip(dep.servers, real.launches):
            log = launch.log_path.read_text(errors="replace") if launch.log_path.is_file() else ""
            servers.append(
                RunServer(
                    s.gpu,
                    s.max_loras,
                    s.max_cpu_loras,
                    s.max_lora_rank,
                    sc.serving.max_num_seqs,
                    sc.serving.max_num_batched_tokens,
                    s.adapters,
                    kv_tokens_from_log(log),
                    launch.status,
                    launch.reason,
                )
            )
    else:
        assert opts.endpoints is not None
        try:
            routes_doc = json.loads(Path(opts.endpoints).read_text(encoding="utf-8"))
            eps = endpoints_from_routes(routes_doc)
            table = RouteTable.from_routes(routes_doc) if opts.router else None
        except (OSError, ValueError, LoadgenError) as exc:  # RouterError is a ValueError
            raise ValidateError(f"--endpoints {opts.endpoints}: {exc}") from None
        by_gpu = {ep.gpu: ep for ep in eps}
        missing = [i for i in range(len(item.gpus)) if i not in by_gpu]
        if missing or len(eps) != len(item.gpus):
            raise ValidateError(
                f"--endpoints lists GPUs {sorted(by_gpu)} but the plan has GPUs 0..{len(item.gpus) - 1}"
            )
        wrong = [i for i, g in enumerate(item.gpus) if set(by_gpu[i].adapters) != set(g.adapters)]
        if wrong:
            raise ValidateError(f"--endpoints: GPUs {wrong} serve other adapters than the plan places there")
        ordered = [by_gpu[i] for i in range(len(item.gpus))]
        route_to = routing(routes_doc)
        try:
            canary(ordered)
            replay = replay_through(
                table,
                workload,
                names,
                ordered,
                seed=seed,
                token_id_range=opts.token_id_range,
                max_throughput_loss=c.max_throughput_loss,
                max_adapter_loss=c.max_adapter_loss,
                progress=opts.progress,
                route_to=route_to,
            )
        except LoadgenError as exc:
            raise ValidateError(str(exc)) from None
        real_doc = replay.to_json()
        servers = [
            RunServer(
                i,
                g.max_loras,
                g.max_cpu_loras,
                max((ranks[n] for n in g.adapters), default=8),
                sc.serving.max_num_seqs,
                sc.serving.max_num_batched_tokens,
                g.adapters,
            )
            for i, g in enumerate(item.gpus)
        ]
    real_doc["scenario"], real_doc["window_s"] = sc.name, sc.workload.duration_s
    factor = 1.0
    if opts.speed_ref_ms is not None and canaries:
        factor = float(np.median(canaries)) / opts.speed_ref_ms
        real_doc["canary_itl_ms"] = canaries
    if replay is not None:
        _judge_real_slo(sim, real_doc, replay)
        real_doc["routing"] = routing_json(item, names, workload, route_to, replay, opts.router)
    twin = _twin(sim, item, factor)
    twin_doc = twin.to_json()
    twin_doc["speed_factor"] = factor
    comparisons = compare_runs(twin_doc["gpus"], real_doc["gpus"])
    run = (
        run_from_replay(
            replay,
            servers,
            ranks,
            label=sc.name,
            result=real_doc,
            probes={"canary_itl_ms": float(np.median(canaries))} if canaries else None,
        )
        if replay is not None
        else None
    )
    return VllmValidation(real_doc, twin_doc, comparisons, run, factor, tuple(canaries))


def routing_json(
    item: PlanItem, names: Sequence[str], workload: Any, twin_gpus: np.ndarray, replay: ReplayResult, router: bool
) -> dict[str, Any]:
    """Per replicated adapter: each replica's share in the plan, the requests it received in the twin
    (``twin_gpus``: per request of ``workload``, where the twin sent it) and on the real servers, and how
    many requests reached another replica than in the twin (``router``: a router picked the replicas;
    it receives near-simultaneous requests in either order)."""
    shares: dict[str, dict[int, float]] = {}
    for g, gp in enumerate(item.gpus):
        for n, sh in zip(gp.adapters, gp.shares or (1.0,) * len(gp.adapters)):
            shares.setdefault(n, {})[g] = sh
    ad, arrival, twin_gpus = np.asarray(workload.adapter), np.asarray(workload.arrival_s), np.asarray(twin_gpus)
    out = {}
    for n, by in shares.items():
        if len(by) < 2:
            continue
        i = names.index(n)
        twin_n, arrived = twin_gpus[ad == i], arrival[ad == i]
        twin_of = dict(zip(arrived.tolist(), twin_n.tolist()))  # a request is its adapter and arrival
        real = [r for r in replay.requests if r.adapter == i]
        moved = [r.arrival_s for r in real if twin_of.get(r.arrival_s) != r.gpu]
        out[n] = {
            "shares": {str(g): round(sh, 6) for g, sh in sorted(by.items())},  # slice widths: 1 - 0.7 = 0.3000…04
            "twin_requests": {str(g): int((twin_n == g).sum()) for g in sorted(by)},
            "real_requests": {str(g): sum(1 for r in real if r.gpu == g) for g in sorted(by)},
            "elsewhere_than_twin": len(moved),
            "elsewhere_nearest_s": _widest_nearest_gap(np.sort(arrived), moved),
        }
    return {"router": router, "adapters": out}


def _widest_nearest_gap(arrivals: np.ndarray, moved: Sequence[float]) -> float | None:
    """Over the requests in ``moved`` (arrival times), the largest gap to the nearest other arrival of the
    same adapter in ``arrivals`` (sorted) [s], rounded to the ms; ``None`` when nothing moved. A router
    picks replicas in the order requests reach it, so two requests sent close together can swap picks
    on a loaded machine: moved requests with near neighbours are such swaps, a moved request far from
    every other one is a routing the twin got wrong."""
    if not moved or len(arrivals) < 2:
        return None
    worst = 0.0
    for a in moved:
        k = int(np.searchsorted(arrivals, a))
        own = k < len(arrivals) and arrivals[k] == a  # the moved request itself is not its own neighbour
        gaps = [abs(arrivals[j] - a) for j in (k - 1, k, k + 1) if 0 <= j < len(arrivals) and not (own and j == k)]
        worst = max(worst, min(gaps))
    return round(float(worst), 3)


def _judge_real_slo(sim: PlanSimulator, real_doc: dict[str, Any], replay: ReplayResult) -> None:
    """Add the scenario's SLO verdicts (``slo``, per GPU and per adapter, as the twin reports them) to every
    measured GPU of ``real_doc``; nothing under ``slo: none``."""
    by_gpu: dict[int, list[RequestRecord]] = {}
    for r in replay.requests:
        by_gpu.setdefault(r.gpu, []).append(r)
    measured = {g.index for g in replay.gpus}
    for g in real_doc["gpus"]:
        if g["index"] not in measured:
            continue
        names = list(g["adapters"])
        rule = sim.slo_rule([sim.index[n] for n in names])
        if rule is None:
            return
        verdict, per = judge_records(by_gpu.get(g["index"], []), names, sim.index, replay.window_s, rule)
        g["slo"] = verdict_json(verdict)
        for p, v in zip(g["per_adapter"], per):
            p["slo"] = verdict_json(v)


def _twin(sim: PlanSimulator, item: PlanItem, factor: float) -> SimReport:
    """The twin on the plan, its step and load times scaled by ``factor`` (1: the profile as fitted)."""
    sc, seed = sim.sc, sim.seed
    if factor == 1.0:
        return sim.run(item.gpus)
    jobs = []
    for i, gp in enumerate(item.gpus):
        job = sim.job(gp, i)
        jobs.append(replace(job, profile=job.profile.time_scaled(factor)))
    reports = run_jobs(jobs, executor=ExecutorSpec(workers=1))
    cst = sc.constraints
    return SimReport(
        scenario=sc.name,
        seed=seed,
        duration_s=sc.workload.duration_s,
        gpus=tuple(reports),
        sim_wall_s=0.0,
        simulated_s=sc.workload.duration_s * len(reports),
        max_throughput_loss=cst.max_throughput_loss,
        max_adapter_loss=cst.max_adapter_loss,
    )
