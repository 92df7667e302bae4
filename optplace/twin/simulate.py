"""``simulate()``: run the twin on a scenario's placement, one engine per GPU, GPUs in parallel.

The scenario-wide workload is generated once from the run's seed and split by GPU, so an adapter
sees the same requests whichever GPU a plan puts it on (plans are compared on common random
numbers). Each GPU's engine is built from its profile (KV capacity for its ``max_loras`` and
largest rank, step-time, load and overhead models) and simulated by ``optplace.twin.engine``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from optplace import __version__
from optplace.infra.executors import ExecutorSpec, map_ordered
from optplace.specs import Adapter, Constraints, Profile, Scenario, Serving
from optplace.specs.loader import resolve_spec_path
from optplace.specs.profiles import load_profile_file, resolve_profile
from optplace.twin.engine import EngineResult, engine_config_from_profile, simulate_engine
from optplace.twin.engine.result import LatencyMeter, LatencyStats
from optplace.twin.workload import Workload, generate_workload

#: Steady state: requests arriving after this fraction of the window (the start-up transient left out).
WARMUP_FRACTION = 0.10


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency and service of a set of requests [ms], as the reference benchmark computes them."""

    completed: int
    loss: float | None  # 1 − completed / offered tokens of the requests that arrived (None: not known)
    ttft_ms_mean: float
    ttft_ms_p50: float
    ttft_ms_p99: float
    tpot_ms_mean: float
    tpot_ms_p99: float
    itl_ms_mean: float
    itl_ms_p99: float

    @classmethod
    def of(cls, st: LatencyStats, loss: float | None) -> Latency:
        return cls(
            completed=st.completed,
            loss=loss,
            ttft_ms_mean=st.ttft_ms_mean,
            ttft_ms_p50=st.ttft_ms_p50,
            ttft_ms_p99=st.ttft_ms_p99,
            tpot_ms_mean=st.tpot_ms_mean,
            tpot_ms_p99=st.tpot_ms_p99,
            itl_ms_mean=st.itl_ms_mean,
            itl_ms_p99=st.itl_ms_p99,
        )


@dataclass(frozen=True, slots=True)
class WindowLatency:
    """Latency over the whole window and in steady state (requests arriving at or after ``warmup_s``)."""

    warmup_s: float
    window: Latency
    steady: Latency


#: A queue is stable when its backlog (requests arrived and not finished) grows over the steady-state
#: window by at most this share of the requests that arrived in it, plus :data:`STABLE_SLACK` requests,
#: plus the requests a stable server has in service (arrival rate x mean decode time, Little's law).
#: A stable server ends the window with its in-service requests still running, and may start the
#: steady state with fewer (still filling up after the warm-up); a server short of capacity piles up
#: (offered − served) × time, e.g. 3 % of the load for the whole window. The share leaves room for the
#: in-flight count's own fluctuation and is small enough that a queue growing by more than it also fails
#: any interactive TTFT bound; the slack keeps an adapter of a few requests from failing on one still in
#: flight. The in-service term matters in short windows: at 2.4 req/s and 12 s of decode an adapter has
#: ~29 requests running, more than 1 % + 5 of a 4-minute window's arrivals, and without the term such a
#: window failed healthy GPUs that no repair could fix. It counts decode time only (first token to
#: finish), not queueing, so a growing queue does not raise its own allowance.
STABLE_SHARE = 0.01
STABLE_SLACK = 5.0

#: The SLO metrics (spec names) and the :class:`Latency` field each is read from.
SLO_FIELDS = {
    "ttft_p99_ms": "ttft_ms_p99",
    "ttft_p50_ms": "ttft_ms_p50",
    "itl_p99_ms": "itl_ms_p99",
    "itl_mean_ms": "itl_ms_mean",
    "tpot_p99_ms": "tpot_ms_p99",
}

Bounds = tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class SloRule:
    """The SLO one GPU is judged by: scope, steady-state start, and the bounds of each of its adapters
    (in the job's adapter order) and of the scenario (the GPU's own bounds under ``scope: gpu``)."""

    scope: str
    warmup_s: float
    bounds: Bounds
    adapter_bounds: tuple[Bounds, ...]


@dataclass(frozen=True, slots=True)
class SloCheck:
    """One bound: the steady-state value, the bound, and whether it holds. On a GPU judged per adapter,
    the adapter whose value is furthest over (or closest to) its bound."""

    metric: str
    value: float
    bound: float
    ok: bool
    adapter: str | None = None

    @property
    def ratio(self) -> float:
        """The value as a share of the bound (over 1: past it); inf for a missing figure (NaN), so the
        check that cannot be judged sorts as the worst."""
        return self.value / self.bound if math.isfinite(self.value) and self.bound > 0 else math.inf


@dataclass(frozen=True, slots=True)
class SloVerdict:
    """The SLO verdict of one GPU or adapter over the steady state (requests arriving at or after the
    warm-up): every bound, the backlog's growth against its allowance, and "offered load, nothing served"."""

    ok: bool
    checks: tuple[SloCheck, ...]
    arrived: int
    backlog_growth: int
    backlog_allowance: float
    stable: bool
    served_nothing: bool
    #: Adapters of the GPU that miss their own SLO (empty for an adapter's verdict).
    violating_adapters: tuple[str, ...] = ()

    @property
    def worst(self) -> SloCheck | None:
        """The check furthest over (or closest to) its bound, by :attr:`SloCheck.ratio`; None without bounds."""
        return max(self.checks, key=lambda c: c.ratio, default=None)


def _checks(lat: Latency, bounds: Bounds) -> tuple[SloCheck, ...]:
    out = []
    for metric, bound in bounds:
        v = float(getattr(lat, SLO_FIELDS[metric]))
        out.append(SloCheck(metric, v, bound, v <= bound))
    return tuple(out)


def _backlog(arrived: int, finished: int, in_service: float = 0.0) -> tuple[int, float, bool]:
    growth = arrived - finished
    allowance = STABLE_SHARE * arrived + STABLE_SLACK + in_service
    return growth, allowance, growth <= allowance


def in_service(
    adapter: np.ndarray,
    arrival_s: np.ndarray,
    first_token_s: np.ndarray,
    finish_s: np.ndarray,
    arrived: np.ndarray,
    rule: SloRule,
    duration_s: float,
) -> np.ndarray:
    """Per adapter, the requests a server keeps decoding: steady-state arrival rate x mean decode time
    (first token to finish) of its completed steady-state requests (0 for an adapter with none). The
    arrays describe the completed requests (adapter index, arrival, first token, finish)."""
    n = len(arrived)
    if len(adapter) == 0 or duration_s <= rule.warmup_s:
        return np.zeros(n)
    steady = np.asarray(arrival_s) >= rule.warmup_s
    idx = np.asarray(adapter)[steady]
    count = np.bincount(idx, minlength=n)
    decode = np.bincount(idx, weights=(np.asarray(finish_s) - np.asarray(first_token_s))[steady], minlength=n)
    mean = np.divide(decode, count, out=np.zeros(n), where=count > 0)
    return np.asarray(arrived, dtype=float) / (duration_s - rule.warmup_s) * mean


def judge_slo(
    rule: SloRule,
    names: Sequence[str],
    gpu_lat: WindowLatency,
    ad_lat: Sequence[WindowLatency],
    arrived: np.ndarray,
    finished: np.ndarray,
    serving: np.ndarray | None = None,
) -> tuple[SloVerdict, tuple[SloVerdict, ...]]:
    """The GPU's and each adapter's verdict. ``arrived`` / ``finished``: per adapter, the requests that
    arrived in the steady state and those that finished in it (whenever they arrived), so their
    difference is the growth of the adapter's backlog over the steady state; ``serving``: per adapter,
    the requests a stable server has decoding at any time (:func:`in_service`, :data:`STABLE_SHARE`)."""
    per: list[SloVerdict] = []
    serving = np.zeros(len(names)) if serving is None else np.asarray(serving, dtype=float)
    for i in range(len(names)):
        lat = ad_lat[i].steady
        nothing = int(arrived[i]) > 0 and lat.completed == 0
        growth, allow, stable = _backlog(int(arrived[i]), int(finished[i]), float(serving[i]))
        checks = _checks(lat, rule.adapter_bounds[i]) if rule.scope == "adapter" else ()
        ok = not nothing and (rule.scope != "adapter" or (stable and all(c.ok for c in checks)))
        per.append(SloVerdict(ok, checks, int(arrived[i]), growth, allow, stable, nothing))
    growth, allow, stable = _backlog(int(arrived.sum()), int(finished.sum()), float(serving.sum()))
    bad = tuple(n for n, v in zip(names, per) if not v.ok)
    nothing = any(v.served_nothing for v in per)
    if rule.scope == "gpu":
        checks = _checks(gpu_lat.steady, rule.bounds)
    else:  # each metric's worst adapter (largest value / bound)
        worst: dict[str, SloCheck] = {}
        for name, v in zip(names, per):
            for c in v.checks:
                w = worst.get(c.metric)
                if w is None or c.ratio > w.ratio:
                    worst[c.metric] = replace(c, adapter=name)
        checks = tuple(worst[m] for m in SLO_FIELDS if m in worst)
    ok = stable and not bad and all(c.ok for c in checks)
    return SloVerdict(ok, checks, int(arrived.sum()), growth, allow, stable, nothing, bad), tuple(per)


@dataclass(frozen=True, slots=True)
class AdapterReport:
    """One adapter on one GPU over the window."""

    name: str
    offered_tok_s: float
    throughput_tok_s: float
    completed: int
    loss: float
    latency: WindowLatency | None = None
    slo: SloVerdict | None = None


@dataclass(frozen=True, slots=True)
class GpuReport:
    """One GPU's twin result (the ``simulate --json`` per-GPU schema, docs/json-contracts.md)."""

    index: int
    gpu_type: str
    adapters: tuple[str, ...]
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    kv_cache_tokens: int
    throughput_tok_s: float
    engine_tok_s: float
    offered_tok_s: float
    throughput_loss: float
    starved: bool
    oom: bool
    starved_adapters: tuple[str, ...]
    itl_ms_mean: float
    ttft_ms_p50: float
    ttft_ms_p99: float
    preemptions: int
    adapter_loads: int
    max_running: int
    max_waiting: int
    per_adapter: tuple[AdapterReport, ...]
    latency: WindowLatency | None = None
    #: The SLO verdict (None when the scenario has ``slo: none`` or the caller judged no SLO).
    slo: SloVerdict | None = None
    #: Per adapter, the share of its requests this GPU received (empty: every adapter whole here).
    shares: tuple[float, ...] = ()

    @property
    def slo_violated(self) -> bool:
        return self.slo is not None and not self.slo.ok

    @property
    def failed(self) -> bool:
        """Fails the plan: starved (throughput rule), fails to start, or misses the SLO."""
        return self.starved or self.oom or self.slo_violated

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["adapters"] = list(self.adapters)
        d["starved_adapters"] = list(self.starved_adapters)
        d["per_adapter"] = [asdict(a) for a in self.per_adapter]
        if self.shares:
            d["shares"] = list(self.shares)
        else:
            del d["shares"]  # single placements keep the document they had
        return _round(d)


@dataclass(frozen=True, slots=True)
class SimReport:
    """Every GPU of a placement, plus run metadata (config, seed, version)."""

    scenario: str
    seed: int
    duration_s: float
    gpus: tuple[GpuReport, ...]
    sim_wall_s: float
    simulated_s: float
    version: str = __version__
    max_throughput_loss: float = 0.10
    max_adapter_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The SLO the GPUs were judged by, as the JSON shows it (None: ``slo: none``).
    slo: dict[str, Any] | None = None

    @property
    def slo_gpus(self) -> tuple[int, ...]:
        """GPUs that start and are not starved but miss the SLO."""
        return tuple(g.index for g in self.gpus if g.slo_violated and not (g.starved or g.oom))

    @property
    def failed_gpus(self) -> tuple[int, ...]:
        """GPUs that are starved, fail to start or miss the SLO."""
        return tuple(g.index for g in self.gpus if g.failed)

    @property
    def ok(self) -> bool:
        return not self.failed_gpus

    @property
    def starved_gpus(self) -> tuple[int, ...]:
        return tuple(g.index for g in self.gpus if g.starved)

    def replicated(self) -> tuple[ReplicatedAdapter, ...]:
        """Every adapter placed on several GPUs, across its replicas (:func:`merge_replicas`)."""
        return merge_replicas(self.gpus)

    @property
    def oom_gpus(self) -> tuple[int, ...]:
        return tuple(g.index for g in self.gpus if g.oom)

    def to_json(self, reproducible: bool = False) -> dict[str, Any]:
        """The ``simulate --json`` document; ``reproducible`` zeroes the wall-clock field. Adapters placed
        on several GPUs are also shown across their replicas (``replicated_adapters``, only then)."""
        doc = {
            "scenario": self.scenario,
            "seed": self.seed,
            "version": self.version,
            "duration_s": self.duration_s,
            "rule": {"max_throughput_loss": self.max_throughput_loss, "max_adapter_loss": self.max_adapter_loss},
            "gpus": [g.to_json() for g in self.gpus],
            "starved_gpus": list(self.starved_gpus),
            "oom_gpus": list(self.oom_gpus),
            "slo": self.slo,
            "slo_gpus": list(self.slo_gpus),
            "sim_wall_s": 0.0 if reproducible else round(self.sim_wall_s, 3),
            "simulated_s": round(self.simulated_s, 3),
        }
        rows = self.replicated()
        if rows:
            doc["replicated_adapters"] = [r.to_json() for r in rows]
        return doc


@dataclass(frozen=True, slots=True)
class ReplicaResult:
    """One replica of a replicated adapter: its GPU, share, and what it served there."""

    gpu: int
    share: float
    offered_tok_s: float
    throughput_tok_s: float
    completed: int
    ttft_ms_p99: float
    tpot_ms_p99: float
    slo_ok: bool | None


@dataclass(frozen=True, slots=True)
class ReplicatedAdapter:
    """An adapter across its replicas. Tokens and counts add up exactly; each latency percentile is the
    largest of its replicas' (steady state): an upper bound on the percentile of the merged requests,
    since a mixture's quantile never exceeds its largest component's. The adapter meets the SLO when
    every replica does (None without an SLO)."""

    name: str
    replicas: tuple[ReplicaResult, ...]

    @property
    def offered_tok_s(self) -> float:
        return math.fsum(r.offered_tok_s for r in self.replicas)

    @property
    def throughput_tok_s(self) -> float:
        return math.fsum(r.throughput_tok_s for r in self.replicas)

    @property
    def loss(self) -> float:
        off = self.offered_tok_s
        return 1.0 - self.throughput_tok_s / off if off > 0 else 0.0

    @property
    def slo_ok(self) -> bool | None:
        oks = [r.slo_ok for r in self.replicas]
        return None if any(o is None for o in oks) else all(oks)

    def to_json(self) -> dict[str, Any]:
        return _round(
            {
                "name": self.name,
                "offered_tok_s": self.offered_tok_s,
                "throughput_tok_s": self.throughput_tok_s,
                "completed": sum(r.completed for r in self.replicas),
                "loss": self.loss,
                "ttft_ms_p99_max": max(r.ttft_ms_p99 for r in self.replicas),
                "tpot_ms_p99_max": max(r.tpot_ms_p99 for r in self.replicas),
                "slo_ok": self.slo_ok,
                "replicas": [asdict(r) for r in self.replicas],
            }
        )


def merge_replicas(gpus: Sequence[GpuReport]) -> tuple[ReplicatedAdapter, ...]:
    """Every adapter with a share below 1 on some GPU, its replicas in GPU order."""
    found: dict[str, list[ReplicaResult]] = {}
    for g in gpus:
        for share, a in zip(g.shares, g.per_adapter):
            if share >= 1.0:
                continue
            st = a.latency.steady if a.latency is not None else None
            found.setdefault(a.name, []).append(
                ReplicaResult(
                    g.index,
                    share,
                    a.offered_tok_s,
                    a.throughput_tok_s,
                    a.completed,
                    st.ttft_ms_p99 if st is not None else math.nan,
                    st.tpot_ms_p99 if st is not None else math.nan,
                    None if a.slo is None else a.slo.ok,
                )
            )
    return tuple(ReplicatedAdapter(n, tuple(rs)) for n, rs in found.items())


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v) for v in obj]
    return obj


@dataclass(frozen=True, slots=True)
class GpuConfig:
    """One GPU's configuration: its type, LoRA slots, CPU adapter cache and adapters (by name).

    The one type for a GPU's configuration from the spec up: a spec's ``placement:`` entries become
    ``GpuConfig`` (:func:`placement_of`), a solver plan's GPUs expose theirs
    (``GpuAssignment.config``), and a :class:`GpuJob` simulates one. The server's ``max_lora_rank``
    is not stored: a plan starts vLLM with the largest rank of the GPU's adapters. ``gpu_type``
    None means the scenario's only GPU type; ``max_cpu_loras`` None means max(adapters, slots).
    Hashable: the simulator caches results per configuration.
    """

    gpu_type: str | None
    max_loras: int
    max_cpu_loras: int | None
    adapters: tuple[str, ...]
    #: Per adapter, the share of its requests this GPU receives; empty when every adapter is whole here
    #: (a single placement, so such a configuration compares and hashes as before replication existed).
    shares: tuple[float, ...] = ()
    #: Per adapter, where this replica's slice of the routing draw starts (set by :func:`route_slices`
    #: from the plan's order; empty when ``shares`` is).
    share_from: tuple[float, ...] = ()

    def placement_entries(self) -> list[str | dict[str, Any]]:
        """This GPU's ``adapters`` as a placement lists them (:func:`placement_entries`)."""
        return placement_entries(zip(self.adapters, self.shares or (1.0,) * len(self.adapters)))

    def slices(self) -> tuple[tuple[float, float], ...]:
        """Per adapter, the slice [from, to) of the routing draw whose requests this GPU receives
        ((0, 1): all of them)."""
        if not self.shares:
            return ((0.0, 1.0),) * len(self.adapters)
        return tuple((lo, lo + s) for lo, s in zip(self.share_from, self.shares, strict=True))


def placement_entries(pairs: Iterable[tuple[str, float]]) -> list[str | dict[str, Any]]:
    """A placement's ``adapters`` list from (adapter, share) pairs: a whole adapter (share 1) as its bare
    name, a replica as ``{name, share}`` (the spec's and the plan JSON's form)."""
    return [n if x == 1.0 else {"name": n, "share": x} for n, x in pairs]


def route_slices(plan: Sequence[GpuConfig]) -> tuple[GpuConfig, ...]:
    """``plan`` with every replica's slice of the routing draw set: an adapter's replicas, in GPU order,
    take consecutive slices of [0, 1) as wide as their shares (normalised by their sum, so the slices
    cover every request even when the shares were rounded). Single placements are returned unchanged."""
    totals: dict[str, float] = {}
    for gp in plan:
        for name, share in zip(gp.adapters, gp.shares or (1.0,) * len(gp.adapters)):
            totals[name] = totals.get(name, 0.0) + share
    if all(not gp.shares for gp in plan):
        return tuple(plan)
    used: dict[str, float] = {}
    out = []
    for gp in plan:
        if not gp.shares:
            out.append(gp)
            continue
        starts, widths = [], []
        for name, share in zip(gp.adapters, gp.shares):
            lo = used.get(name, 0.0)
            used[name] = lo + share
            starts.append(lo / totals[name])
            # the last replica ends exactly at 1: no request falls between the slices
            widths.append(1.0 - lo / totals[name] if math.isclose(used[name], totals[name]) else share / totals[name])
        out.append(replace(gp, shares=tuple(widths), share_from=tuple(starts)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class GpuJob:
    """One GPU's simulation: its configuration (``gpu_type`` resolved), the adapters' and the
    scenario's settings it runs under, and the workload of its adapters (picklable, for workers)."""

    index: int
    config: GpuConfig
    profile: Profile
    serving: Serving
    constraints: Constraints
    adapters: tuple[Adapter, ...]
    workload: Workload
    slo: SloRule | None = None


def run_gpu_job(job: GpuJob) -> GpuReport:
    """Simulate one GPU (runs in a worker process)."""
    ranks = [a.rank for a in job.adapters]
    cfg = engine_config_from_profile(
        job.profile,
        ranks,
        job.config.max_loras,
        max_cpu_loras=job.config.max_cpu_loras,
        max_num_seqs=job.serving.max_num_seqs,
        max_num_batched_tokens=job.serving.max_num_batched_tokens,
        gpu_memory_utilization=job.serving.gpu_memory_utilization,
        max_model_len=job.serving.max_model_len,
    )
    res = simulate_engine(cfg, job.workload)
    gpu_type = job.config.gpu_type or job.profile.gpu  # resolved by whoever made the job
    rep = gpu_report(
        job.index,
        gpu_type,
        job.adapters,
        cfg.max_loras,
        cfg.max_cpu_loras,
        cfg.max_lora_rank,
        cfg.kv_cache_tokens,
        res,
        job.constraints,
        workload=job.workload,
        slo=job.slo,
    )
    return replace(rep, shares=job.config.shares) if job.config.shares else rep


def window_latency(
    res: EngineResult, n_adapters: int, workload: Workload | None = None, warmup_fraction: float = WARMUP_FRACTION
) -> tuple[WindowLatency, tuple[WindowLatency, ...]]:
    """The GPU's and each adapter's latency, over the window and in steady state.

    Steady state keeps the requests that arrived at or after ``warmup_fraction`` of the window; its loss
    needs the offered tokens of those requests, so it is None without the ``workload``."""
    dur = res.duration_s
    warm = warmup_fraction * dur
    meter = LatencyMeter(res.requests) if res.requests is not None else None
    steady_off: np.ndarray = np.zeros(n_adapters)
    if workload is not None:
        arr = np.asarray(workload.arrival_s)
        inwin = (arr >= warm) & (arr < dur)
        ad = np.asarray(workload.adapter)[inwin]
        toks = (np.asarray(workload.input_tokens) + np.asarray(workload.output_tokens))[inwin]
        steady_off = np.bincount(ad, weights=toks, minlength=n_adapters)
    if meter is not None:
        req = meter.req
        late = req.arrival_s >= warm
        done_toks = (req.input_tokens + req.output_tokens).astype(np.float64)
        steady_done: np.ndarray = np.bincount(req.adapter[late], weights=done_toks[late], minlength=n_adapters)
    else:
        late = np.zeros(0, dtype=bool)
        steady_done = np.zeros(n_adapters)

    def loss(done: float, offered: float) -> float:
        return 1.0 - done / offered if offered > 0 else 0.0

    zero = LatencyStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if meter is None:
        win_all, steady_all = zero, zero
        win_ad, steady_ad = [zero] * n_adapters, [zero] * n_adapters
    else:
        win_all, steady_all = meter.stats(), meter.stats(late)
        win_ad = meter.by_group(meter.req.adapter, n_adapters)
        steady_ad = meter.by_group(meter.req.adapter, n_adapters, late)
    have = workload is not None
    gpu = WindowLatency(
        warm,
        Latency.of(win_all, 1.0 if res.oom else res.throughput_loss),
        Latency.of(
            steady_all, (1.0 if res.oom else loss(float(steady_done.sum()), float(steady_off.sum()))) if have else None
        ),
    )
    losses = res.adapter_loss()
    per = tuple(
        WindowLatency(
            warm,
            Latency.of(win_ad[i], 1.0 if res.oom else float(losses[i])),
            Latency.of(
                steady_ad[i], (1.0 if res.oom else loss(float(steady_done[i]), float(steady_off[i]))) if have else None
            ),
        )
        for i in range(n_adapters)
    )
    return gpu, per


def gpu_report(
    index: int,
    gpu_type: str,
    adapters: Sequence[Adapter],
    max_loras: int,
    max_cpu_loras: int,
    max_lora_rank: int,
    kv_cache_tokens: int,
    res: EngineResult,
    constraints: Constraints,
    workload: Workload | None = None,
    slo: SloRule | None = None,
) -> GpuReport:
    """Turn an engine result into a report, applying the starvation rules and, given ``slo``, the SLO.

    ``workload`` (the GPU's requests) gives the steady-state losses of the latency section; the SLO
    needs it (its backlog counts the steady state's arrivals)."""
    dur = res.duration_s
    losses = res.adapter_loss()
    n = len(adapters)
    warm_frac = WARMUP_FRACTION if slo is None else slo.warmup_s / dur
    gpu_lat, ad_lat = window_latency(res, n, workload, warm_frac)
    verdict: SloVerdict | None = None
    ad_verdicts: tuple[SloVerdict | None, ...] = (None,) * n
    if slo is not None:
        if workload is None:
            raise ValueError("judging an SLO needs the GPU's workload")
        arr = np.asarray(workload.arrival_s)
        steady = (arr >= slo.warmup_s) & (arr < dur)
        arrived = np.bincount(np.asarray(workload.adapter)[steady], minlength=n)
        req = res.requests
        finished = (
            np.bincount(req.adapter[req.finish_s > slo.warmup_s], minlength=n) if req is not None else np.zeros(n)
        )
        serving = (
            in_service(req.adapter, req.arrival_s, req.first_token_s, req.finish_s, arrived, slo, dur)
            if req is not None
            else None
        )
        verdict, ad_verdicts = judge_slo(slo, [a.name for a in adapters], gpu_lat, ad_lat, arrived, finished, serving)
    per = tuple(
        AdapterReport(
            a.name,
            res.offered_tokens[i] / dur,
            res.completed_tokens[i] / dur,
            int(res.completed[i]),
            float(losses[i]),
            ad_lat[i],
            ad_verdicts[i],
        )
        for i, a in enumerate(adapters)
    )
    adapter_rule = constraints.max_adapter_loss
    threshold = adapter_rule if adapter_rule is not None else constraints.max_throughput_loss
    starved_ad = (
        tuple(adapters[i].name for i in res.starved_adapters(threshold))
        if not res.oom
        else tuple(a.name for a in adapters)
    )
    starved = (
        res.oom
        or res.throughput_loss >= constraints.max_throughput_loss
        or (adapter_rule is not None and bool(starved_ad))
    )
    return GpuReport(
        index=index,
        gpu_type=gpu_type,
        adapters=tuple(a.name for a in adapters),
        max_loras=max_loras,
        max_cpu_loras=max_cpu_loras,
        max_lora_rank=max_lora_rank,
        kv_cache_tokens=kv_cache_tokens,
        throughput_tok_s=res.throughput_tok_s,
        engine_tok_s=res.engine_tok_s,
        offered_tok_s=res.offered_tok_s,
        throughput_loss=1.0 if res.oom else res.throughput_loss,
        starved=bool(starved),
        oom=res.oom,
        starved_adapters=starved_ad,
        itl_ms_mean=res.itl_ms_mean,
        ttft_ms_p50=res.ttft_ms_p50,
        ttft_ms_p99=res.ttft_ms_p99,
        preemptions=res.preemptions,
        adapter_loads=res.adapter_loads,
        max_running=res.max_running,
        max_waiting=res.max_waiting,
        per_adapter=per,
        latency=gpu_lat,
        slo=verdict,
    )


def profile_for(sc: Scenario, gpu_type: str | None, base_dir: Path) -> tuple[str, Profile]:
    """The profile of a GPU type of the scenario (the only one when ``gpu_type`` is None)."""
    types = sc.gpu_types()
    entry = types[0] if gpu_type is None else next(p for p in types if p.gpu_name == gpu_type)
    if entry.profile is not None:
        return entry.gpu_name, load_profile_file(resolve_spec_path(sc, entry.profile, base_dir))
    return entry.gpu_name, resolve_profile(sc.model, entry.gpu)


def scenario_workload(
    sc: Scenario, adapters: Sequence[Adapter], base_dir: Path, seed: int | None = None, load_scale: float = 1.0
):
    """The scenario-wide workload (one seeded generator owned by this run); ``load_scale`` multiplies
    every adapter's rate (the SLO headroom check)."""
    rng = np.random.default_rng(sc.seed if seed is None else seed)
    return generate_workload(
        sc.workload.arrivals,
        sc.workload.lengths,
        [a.rate_rps * load_scale for a in adapters],
        sc.workload.duration_s,
        rng,
        base_dir=base_dir,
    )


#: The golden ratio's fractional part: the step of the routing sequence (:func:`route_values`).
GOLDEN_STEP = (math.sqrt(5.0) - 1.0) / 2.0


def route_values(adapter: np.ndarray, n_adapters: int, seed: int) -> np.ndarray:
    """Per request, its routing value: the k-th request of adapter ``a`` (in arrival order) gets
    ``(x_a + k · φ⁻¹) mod 1``, ``x_a`` a seeded uniform offset per adapter (from
    :func:`routing_generator`, so the workload is the same with or without replicas).

    Why a golden-ratio (Weyl) sequence and not an independent draw per request: the routers a plan is
    deployed behind — nginx's and the built-in router's smooth weighted round robin — send each
    replica its share of the requests to within a request or two, not a binomial sample of it (±5
    percentage points over 100 requests). The sequence's values fill [0, 1) evenly (any slice of
    width w holds w·N of the first N values to within O(log N)), so each replica's slice receives
    its share of the adapter's requests as closely as behind those routers, and in an interleaved
    order: a burst still reaches every replica at once."""
    offset = routing_generator(seed).random(max(n_adapters, 1))
    adapter = np.asarray(adapter, dtype=np.int64)
    counts = np.bincount(adapter, minlength=n_adapters)
    starts = np.cumsum(counts) - counts
    order = np.argsort(adapter, kind="stable")  # grouped by adapter, arrival order kept
    k = np.empty(len(adapter), dtype=np.float64)
    k[order] = np.arange(len(adapter)) - np.repeat(starts, counts)
    return np.mod(offset[adapter] + k * GOLDEN_STEP, 1.0) if len(adapter) else np.zeros(0)


def routing_generator(seed: int) -> np.random.Generator:
    """The generator of a run's routing draws: the fourth child of the run's seed (the workload's
    arrivals, lengths and adapter assignment are its first three, ``generate_workload``)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(4)[3])


def thinning_generator(seed: int) -> np.random.Generator:
    """The generator of a run's thinning draws (:meth:`PlanSimulator.thinned`): the fifth child of the
    run's seed (after the workload's three and the routing's)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(4,)))


def scenario_slo_rule(sc: Scenario, adapter_bounds: Sequence[Any]) -> SloRule | None:
    """The scenario's SLO for one GPU whose adapters have these bounds (each a
    :class:`~optplace.specs.model.SloBounds`, in the GPU's adapter order); None with ``slo: none``."""
    slo = sc.slo
    if slo is None:
        return None
    return SloRule(slo.scope, sc.slo_warmup_s(), slo.bounds(), tuple(b.bounds() for b in adapter_bounds))


def placement_of(sc: Scenario) -> tuple[GpuConfig, ...]:
    """The spec's ``placement:`` as GPU plans (``all`` expanded)."""
    if sc.placement is None:
        raise ValueError("the spec has no placement: to simulate, add `placement:` (or run `optplace solve`)")
    names = tuple(a.name for a in sc.adapter_list())
    out = []
    for p in sc.placement:
        entries = p.shares(names)
        shares = tuple(s for _, s in entries)
        whole = all(s == 1.0 for s in shares)
        out.append(
            GpuConfig(p.gpu_type, p.max_loras, p.max_cpu_loras, tuple(n for n, _ in entries), () if whole else shares)
        )
    return route_slices(out)


def _routed_here(adapter: np.ndarray, i: int, sl: tuple[float, float], u: np.ndarray | None) -> np.ndarray:
    """Mask of the requests of adapter ``i`` whose routing draw ``u`` falls in the replica's slice ``sl``
    (all of them for the whole slice (0, 1))."""
    mine = adapter == i
    if sl == (0.0, 1.0):
        return mine
    assert u is not None  # a partial slice only exists in a plan with replicas, which draws u
    lo, hi = sl
    return mine & (u >= lo) & (u < hi)


class PlanSimulator:
    """Simulates GPU plans of one scenario, caching each distinct GPU configuration's result."""

    def __init__(
        self, sc: Scenario, base_dir: Path, executor: ExecutorSpec, seed: int | None = None, load_scale: float = 1.0
    ) -> None:
        self.sc, self.base_dir, self.executor = sc, base_dir, executor
        self.seed = sc.seed if seed is None else seed
        self.adapters = sc.adapter_list()
        self.index = {a.name: i for i, a in enumerate(self.adapters)}
        # load_scale multiplies every adapter's rate (1 + the SLO's headroom when solve checks a plan)
        self.load_scale = load_scale
        # Drawn when first needed (:attr:`workload`), or for several simulators at once in parallel
        # (:func:`draw_workloads`): a solve makes a simulator per check seed and per headroom multiplier,
        # and drawing each in turn in the main process (~2 s per million requests) kept the workers idle.
        self._workload: Workload | None = None
        self.cache: dict[GpuConfig, GpuReport] = {}
        self.simulated = 0
        self.slo_bounds = sc.adapter_slos()
        self._route: np.ndarray | None = None
        # (simulator at a higher load, share kept): this one's workload is that one's, thinned
        self._source: tuple[PlanSimulator, float] | None = None
        self._thinning: np.ndarray | None = None

    @property
    def workload(self) -> Workload:
        """The scenario-wide workload of this simulator's seed and load scale (drawn on first use)."""
        if self._workload is None:
            self._workload = self.draw()
        return self._workload

    def draw(self) -> Workload:
        """Draw this simulator's workload (:func:`scenario_workload`), or thin its source's (:meth:`thinned`)."""
        if self._source is not None:
            src, share = self._source
            return src.workload.thinned(src.thinning_values() < share)
        return scenario_workload(self.sc, self.adapters, self.base_dir, self.seed, self.load_scale)

    def thinned(self, load_scale: float) -> PlanSimulator:
        """A simulator of the same seed at ``load_scale`` (at most this one's) whose workload is this one's
        with each request kept with probability ``load_scale / self.load_scale`` (by one uniform per
        request, :func:`thinning_generator`): for arrival models that thin exactly
        (:func:`~optplace.twin.workload.thins_exactly`) the same law as drawing at ``load_scale``, one draw
        serves every multiplier, and a lower load's requests are a subset of a higher one's (the verdicts
        of a headroom search compare loads on common random numbers)."""
        if not 0 < load_scale <= self.load_scale:
            raise ValueError(f"thinned: load scale {load_scale} not in (0, {self.load_scale}]")
        if self._source is not None:  # thin the one draw, not a thinning of it
            return self._source[0].thinned(load_scale)
        sim = PlanSimulator(self.sc, self.base_dir, self.executor, self.seed, load_scale)
        sim._source = (self, load_scale / self.load_scale)
        return sim

    def thinning_values(self) -> np.ndarray:
        """One uniform in [0, 1) per request of the workload, from :func:`thinning_generator`."""
        if self._thinning is None:
            self._thinning = thinning_generator(self.seed).random(len(self.workload))
        return self._thinning

    def route_draw(self) -> np.ndarray:
        """One routing value in [0, 1) per request of the workload: a replicated adapter's request goes
        to the replica whose slice holds it (:func:`route_values`). Whole requests are routed, so an
        MMPP burst or a trace's spike reaches every replica at once, as a router spreading one stream
        sees it."""
        if self._route is None:
            self._route = route_values(self.workload.adapter, len(self.adapters), self.seed)
        return self._route

    def follow_routing(self, plan: Sequence[GpuConfig], gpu_of_request: np.ndarray) -> None:
        """Send each request of a replicated adapter to the replica ``gpu_of_request`` names (a position in
        ``plan``) instead of by the routing sequence: what a router in front of real servers will pick,
        so that the twin simulates each replica on the very requests it will receive there. Call it
        before simulating (results already cached were routed the other way)."""
        if self.cache:
            raise ValueError("follow_routing() must come before the first simulation")
        u = self.route_draw().copy()
        ad = np.asarray(self.workload.adapter)
        to = np.asarray(gpu_of_request)
        for g, gp in enumerate(route_slices(plan)):
            for name, (lo, hi) in zip(gp.adapters, gp.slices()):
                if (lo, hi) != (0.0, 1.0):
                    u[(ad == self.index[name]) & (to == g)] = (lo + hi) / 2
        self._route = u

    def job(self, gp: GpuConfig, index: int, workload: Workload | None = None) -> GpuJob:
        """The twin job of configuration ``gp`` (``index``: its place in the batch). ``workload``: its
        requests when already split off (:meth:`jobs`), else taken from the scenario-wide workload."""
        gtype, prof = profile_for(self.sc, gp.gpu_type, self.base_dir)
        members = [self.index[n] for n in gp.adapters]
        if workload is None:
            keep = None
            if gp.shares:
                if len(gp.share_from) != len(gp.shares):
                    raise ValueError("a GPU with replicas needs its slices: pass the plan through route_slices()")
                u = self.route_draw()
                ad = np.asarray(self.workload.adapter)
                keep = np.zeros(len(u), dtype=bool)
                for i, sl in zip(members, gp.slices()):
                    keep |= _routed_here(ad, i, sl, u)
            workload = self.workload.subset(members, keep)
        return GpuJob(
            index=index,
            config=replace(gp, gpu_type=gtype),
            profile=prof,
            serving=self.sc.serving,
            constraints=self.sc.constraints,
            adapters=tuple(self.adapters[i] for i in members),
            workload=workload,
            slo=self.slo_rule(members),
        )

    def jobs(self, items: Sequence[tuple[GpuConfig, int]]) -> list[GpuJob]:
        """``[self.job(gp, i) for gp, i in items]``, with the workload split once for all the whole-adapter
        configurations whose adapters are disjoint (a plan's GPUs): the same jobs, one pass over the
        requests instead of one per GPU."""
        whole = [k for k, (gp, _) in enumerate(items) if not gp.shares]
        groups = [[self.index[n] for n in items[k][0].adapters] for k in whole]
        parts: dict[int, Workload] = {}
        flat = [a for g in groups for a in g]
        if len(whole) > 1 and len(flat) == len(set(flat)):
            parts = dict(zip(whole, self.workload.split(groups), strict=True))
        return [self.job(gp, i, parts.get(k)) for k, (gp, i) in enumerate(items)]

    def request_gpus(self, plan: Sequence[GpuConfig]) -> np.ndarray:
        """Per request of the workload, the position in ``plan`` of the GPU the twin sends it to (-1
        where no GPU serves its adapter): what a real replay of the plan routes by, so the twin and the
        real servers compare each replica on the very same requests."""
        ad = np.asarray(self.workload.adapter)
        out = np.full(len(ad), -1, dtype=np.int64)
        u = self.route_draw() if any(gp.shares for gp in plan) else None
        for g, gp in enumerate(route_slices(plan)):
            for name, sl in zip(gp.adapters, gp.slices()):
                out[_routed_here(ad, self.index[name], sl, u)] = g
        return out

    def slo_rule(self, members: Sequence[int]) -> SloRule | None:
        """The SLO of a GPU holding adapters ``members`` (indices into the scenario's adapters)."""
        per = self.slo_bounds
        return None if per is None else scenario_slo_rule(self.sc, [per[i] for i in members])

    def run(self, plan: Sequence[GpuConfig], progress: Progress | None = None) -> SimReport:
        """Twin results for every GPU of ``plan`` (new configurations simulated in parallel; ``progress``
        is told as each finishes)."""
        t0 = time.perf_counter()
        plan = route_slices(plan)
        todo = [gp for gp in dict.fromkeys(plan) if gp not in self.cache]
        simulate_into([(self, gp) for gp in todo], self.executor, progress)
        gpus = tuple(replace(self.cache[gp], index=i) for i, gp in enumerate(plan))
        c = self.sc.constraints
        return SimReport(
            scenario=self.sc.name,
            seed=self.seed,
            duration_s=self.sc.workload.duration_s,
            gpus=gpus,
            sim_wall_s=time.perf_counter() - t0,
            simulated_s=self.sc.workload.duration_s * len(todo),
            max_throughput_loss=c.max_throughput_loss,
            max_adapter_loss=c.max_adapter_loss,
            slo=slo_json(self.sc),
        )


#: Distance between the run's seed and the other seeds a plan is checked with: far enough apart that
#: a user re-running with seed + 1, + 2 … draws windows the check has not already seen.
SEED_STRIDE = 1_000_003


def check_seeds(sc: Scenario) -> tuple[int, ...]:
    """The seeds solve checks a plan with: the run's own, then ``Scenario.check_seed_count()`` others."""
    return tuple((sc.seed + i * SEED_STRIDE) % 2**63 for i in range(sc.check_seed_count() + 1))


def worst_of(a: SimReport, b: SimReport) -> SimReport:
    """``a`` with each of its GPUs that passes there but fails in ``b`` (the same plan on another
    draw) replaced by ``b``'s report: a GPU fails the plan when it fails on any draw."""
    gpus = tuple(y if y.failed and not x.failed else x for x, y in zip(a.gpus, b.gpus, strict=True))
    return replace(a, gpus=gpus)


def simulate_into(
    pairs: Sequence[tuple[PlanSimulator, GpuConfig]], executor: ExecutorSpec, progress: Progress | None = None
) -> int:
    """Simulate each (simulator, configuration) not yet in its simulator's cache, all in one parallel
    batch (several seeds or load multipliers of one plan keep every core busy where one simulator's
    few GPUs would not), and store each result in its simulator's cache. Returns the runs made."""
    todo = [(sim, gp) for sim, gp in dict.fromkeys(pairs) if gp not in sim.cache]
    if not todo:
        return 0
    draw_workloads([sim for sim, _ in todo], executor)
    by_sim: dict[PlanSimulator, list[tuple[GpuConfig, int]]] = {}
    for i, (sim, gp) in enumerate(todo):
        by_sim.setdefault(sim, []).append((gp, i))
    jobs = {i: job for sim, items in by_sim.items() for (_, i), job in zip(items, sim.jobs(items), strict=True)}
    reports = run_jobs([jobs[i] for i in range(len(todo))], executor=executor, progress=progress)
    for (sim, gp), rep in zip(todo, reports, strict=True):
        sim.cache[gp] = rep
        sim.simulated += 1
    return len(todo)


def draw_workloads(sims: Sequence[PlanSimulator], executor: ExecutorSpec) -> None:
    """Draw the workloads of the simulators that have none yet, in parallel when there are several
    (each is the same draw it would make alone: its own seed and load scale). A simulator ships to
    the worker without results (its cache is empty until its workload exists)."""
    todo = [sim for sim in dict.fromkeys(sims) if sim._workload is None]
    # thinned simulators need their sources' draws; the thinning itself is cheap and stays here
    roots = [s for s in dict.fromkeys(s if s._source is None else s._source[0] for s in todo) if s._workload is None]
    # one draw stays in-process on any executor: a worker would only add the copy back
    drawn = [roots[0].draw()] if len(roots) == 1 else map_ordered(PlanSimulator.draw, roots, executor)
    for sim, w in zip(roots, drawn, strict=True):
        sim._workload = w
    for sim in todo:
        if sim._workload is None:
            sim._workload = sim.draw()


#: Most requests (summed over the workloads) :class:`WorkloadsAhead` draws: the child holds them all
#: before sending (~20 bytes each), and the parent receives a copy.
AHEAD_MAX_REQUESTS = 16_000_000


def can_draw_ahead(sc: Scenario, executor: ExecutorSpec, requests: float) -> bool:
    """Whether :class:`WorkloadsAhead` may draw workloads of ``requests`` requests in all for ``sc``: on
    local workers, two or more (a single one has no idle core to draw on), rate-driven arrivals (a
    trace's count follows the trace, not the rates), at most :data:`AHEAD_MAX_REQUESTS`."""
    return (
        executor.kind == "local"
        and executor.n_workers >= 2
        and getattr(sc.workload.arrivals, "kind", None) != "trace"
        and requests <= AHEAD_MAX_REQUESTS
    )


def expected_requests(sim: PlanSimulator) -> float:
    """Requests a simulator's draw holds on average: its rates × the window × its load scale."""
    return math.fsum(a.rate_rps for a in sim.adapters) * sim.sc.workload.duration_s * sim.load_scale


class WorkloadsAhead:
    """The workloads of some simulators, drawn in a forked process while this one does something else
    (``solve`` plans; its checks then started on draws made with a core waiting: ~5 s of a 60 s solve
    at 1,000 adapters). :meth:`collect` hands each simulator its workload, the same arrays it would
    have drawn itself (the same function of the seed and scale).

    The child draws every workload before sending any (a send blocks until this process reads, which
    it does only in :meth:`collect`). Used as a context manager: leaving the block stops a child whose
    workloads were not collected. Draws nothing (and forks nothing) where :func:`can_draw_ahead` says
    no for the simulators' requests together."""

    def __init__(self, sims: Sequence[PlanSimulator], executor: ExecutorSpec) -> None:
        from optplace.infra.executors import Ahead

        todo = [s for s in dict.fromkeys(sims) if s._workload is None and s._source is None]
        fits = bool(todo) and can_draw_ahead(todo[0].sc, executor, math.fsum(expected_requests(s) for s in todo))
        self.sims = todo if fits else []
        self._ahead = Ahead(partial(_draw_all, self.sims)) if self.sims else None

    def collect(self) -> None:
        """Give each simulator its workload (waiting for the draws still running)."""
        if self._ahead is None:
            return
        for sim in self.sims:
            w = self._ahead.receive()
            if sim._workload is None:
                sim._workload = w
        self.stop()

    def stop(self) -> None:
        """Stop the child (its draws are dropped)."""
        if self._ahead is not None:
            self._ahead.stop()
            self._ahead = None

    def __enter__(self) -> WorkloadsAhead:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _draw_all(sims: Sequence[PlanSimulator], send: Callable[[Any], None]) -> None:
    drawn = [sim.draw() for sim in sims]
    for w in drawn:
        send(w)


def slo_json(sc: Scenario) -> dict[str, Any] | None:
    """The scenario's SLO as reports show it: scope, warm-up, the bounds (adapters' own ones apart),
    and the stable-queue rule's constants."""
    if sc.slo is None:
        return None
    own = sum(1 for a in sc.adapters if a.slo is not None)
    return {
        "scope": sc.slo.scope,
        "warmup_s": sc.slo_warmup_s(),
        "bounds": dict(sc.slo.bounds()),
        "adapter_entries_with_own_bounds": own,
        "stable_share": STABLE_SHARE,
        "stable_slack": STABLE_SLACK,
        "headroom": sc.slo_headroom(),
    }


def simulate_plan(
    sc: Scenario,
    plan: Sequence[GpuConfig],
    base_dir: Path,
    workers: int | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
) -> SimReport:
    """Simulate every GPU of ``plan`` for the scenario's workload; GPUs run in parallel processes."""
    return PlanSimulator(sc, base_dir, ExecutorSpec(workers=workers), seed).run(plan, progress)


#: Told ``(GPUs finished, GPUs to simulate)`` as each GPU's simulation finishes (a progress display).
Progress = Callable[[int, int], None]


def run_jobs(
    jobs: Sequence[GpuJob],
    workers: int | None = None,
    executor: ExecutorSpec | None = None,
    progress: Progress | None = None,
) -> list[GpuReport]:
    """Run GPU jobs in parallel (local process pool, or Ray); results in job order."""
    spec = executor or ExecutorSpec(workers=workers)
    finished = 0

    def on_done(_i: int, _report: GpuReport) -> None:
        nonlocal finished
        finished += 1
        progress(finished, len(jobs))  # type: ignore[misc]  # only passed when progress is given

    return map_ordered(
        run_gpu_job,
        jobs,
        spec,
        cost=lambda j: len(j.workload.arrival_s),
        on_done=on_done if progress is not None else None,
    )


def simulate_gpu(
    profile: Profile,
    serving: Serving,
    constraints: Constraints,
    arrivals: Any,
    lengths: Any,
    adapters: Sequence[Adapter],
    max_loras: int,
    max_cpu_loras: int | None = None,
    duration_s: float = 3600.0,
    seed: int = 0,
    base_dir: Path | None = None,
    slo: SloRule | None = None,
) -> GpuReport:
    """Simulate one GPU serving ``adapters`` (its own seeded workload), judged by ``slo`` when given:
    the surrogate sweeps' and ``optplace capacity``'s evaluator."""
    rng = np.random.default_rng(seed)
    wl = generate_workload(arrivals, lengths, [a.rate_rps for a in adapters], duration_s, rng, base_dir=base_dir)
    config = GpuConfig(profile.gpu, max_loras, max_cpu_loras, tuple(a.name for a in adapters))
    job = GpuJob(
        index=0,
        config=config,
        profile=profile,
        serving=serving,
        constraints=constraints,
        adapters=tuple(adapters),
        workload=wl,
        slo=slo,
    )
    return run_gpu_job(job)
