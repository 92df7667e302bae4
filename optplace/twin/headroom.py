"""Headroom: how much more load a plan takes before the twin first finds it failing.

For every GPU of a plan the twin re-runs the GPU with every adapter's rate multiplied by ``1 + x`` on
a grid of ``x`` (steps of :data:`STEP`, up to :data:`CAP`) and finds the largest ``x`` it still
passes: within the SLO (or, with ``slo: none``, not starved) and starting. The plan holds up to the
smallest of its GPUs' figures.

Search: gallop up from the first step (+5 %, +10 %, +20 %, +40 %, +80 %, then the cap) until the GPU
fails, then bisect between the last pass and the first failure. Plans sized to the minimum usually
have little headroom, so the gallop settles them in two or three runs where a bisection over the
whole range would always spend five. Given a predicted headroom per GPU (``solve`` passes its capacity
oracle's), the search starts at the predicted breaking step and gallops away from it instead: a right
guess settles a GPU in two runs, and the runs stay near its boundary rather than deep in overload,
where the twin is slowest. Results the solve already has (its check at ``slo.headroom``) count as
probes. Each multiplier is one twin workload of the run's seed at the scaled rates; each round's probes
run together, in parallel. Where thinning is exact (Poisson and MMPP arrivals,
:func:`~optplace.twin.workload.thins_exactly`) every multiplier's workload is one draw at the cap's
load, thinned (:class:`LoadProbes`): one draw instead of one per multiplier (drawing took a third of
the search at 1,000 adapters), and a lower load's requests are a subset of a higher one's, so the
probes differ by the extra load and not by a fresh draw of the rest.

Only a rate-driven workload can be scaled (Poisson, MMPP, or a trace assigned ``by_rate`` without a
fixed ``scale``); for the others no headroom is measured (``Scenario.rates_scalable``).

The verdict is not strictly monotone in load (more requests can change which adapters hold the slots,
and other arrival models draw each multiplier afresh), so the figure is "passes at +x, fails at the next
probe above", not a proof that every load below +x passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optplace.infra.executors import ExecutorSpec
from optplace.specs.model import Scenario
from optplace.twin.simulate import GpuConfig, GpuReport, PlanSimulator, SimReport, simulate_into
from optplace.twin.workload import thins_exactly

#: Grid step of the load multiplier (5 %: finer than the seed-to-seed noise of a one-hour window's
#: tail latency, coarse enough that a GPU settles in a few runs).
STEP = 0.05
#: Largest extra load probed (+100 %): a GPU that passes at twice its load is reported as "≥ +100 %".
CAP = 1.0


@dataclass(frozen=True, slots=True)
class GpuHeadroom:
    """One GPU's headroom."""

    index: int
    #: Largest extra load share found to pass (0.35: +35 %); None when the GPU fails at the stated load.
    holds_up_to: float | None
    #: Smallest extra load share found to fail (0.0: at the stated load); None: passes at the cap.
    breaks_at: float | None
    #: What fails first there: an SLO metric (``ttft_p99_ms`` …), ``queue`` (the backlog grows),
    #: ``serves_nothing``, ``starved`` (throughput rule) or ``oom``; None when nothing broke.
    breaks_on: str | None
    #: The adapter whose figure fails (per-adapter SLO scope), else None.
    adapter: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu": self.index,
            "holds_up_to": _r(self.holds_up_to),
            "breaks_at": _r(self.breaks_at),
            "breaks_on": self.breaks_on,
            "adapter": self.adapter,
        }


@dataclass(frozen=True, slots=True)
class PlanHeadroom:
    """Every GPU's headroom, and the search that found them."""

    gpus: tuple[GpuHeadroom, ...]
    step: float
    cap: float
    seed: int
    #: Twin runs the search took (distinct GPU configurations x probed multipliers).
    simulations: int

    @property
    def holds_up_to(self) -> float | None:
        """The plan's headroom: its weakest GPU's (None when a GPU fails at the stated load)."""
        vals = [g.holds_up_to for g in self.gpus]
        return None if not vals or any(v is None for v in vals) else min(v for v in vals if v is not None)

    @property
    def limiting_gpu(self) -> GpuHeadroom | None:
        """The GPU that breaks first (lowest headroom; the first such in plan order)."""
        if not self.gpus:
            return None
        return min(self.gpus, key=lambda g: -1.0 if g.holds_up_to is None else g.holds_up_to)

    def to_json(self) -> dict[str, Any]:
        lim = self.limiting_gpu
        return {
            "holds_up_to": _r(self.holds_up_to),
            "limiting_gpu": None if lim is None else lim.index,
            "step": self.step,
            "cap": self.cap,
            "seed": self.seed,
            "simulations": self.simulations,
            "gpus": [g.to_json() for g in self.gpus],
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def failure_of(g: GpuReport) -> tuple[str | None, str | None]:
    """What fails a GPU report, as (what, adapter): OOM, starvation, then the SLO's worst figure."""
    if g.oom:
        return "oom", None
    if g.starved:
        return "starved", None
    v = g.slo
    if v is None or v.ok:
        return None, None
    if v.served_nothing:
        bad = next((a.name for a in g.per_adapter if a.slo is not None and a.slo.served_nothing), None)
        return "serves_nothing", bad
    if not v.stable:
        return "queue", None
    over = [c for c in v.checks if not c.ok]
    if over:
        worst = max(over, key=lambda c: c.ratio)
        return worst.metric, worst.adapter
    # the GPU-wide figures pass: some adapter's own queue or bound fails
    return "adapter", v.violating_adapters[0] if v.violating_adapters else None


def _next_probe(lo: int, hi: int | None, top: int, anchor: int | None = None) -> int | None:
    """The next grid index to probe, or None when settled. ``lo``: largest passing index (0 = stated
    load); ``hi``: smallest failing one (None: none known).

    Without an ``anchor``: gallop up from 0 (double) while no failure is known, then bisect. With one
    (a predicted breaking point, e.g. from the capacity oracle): probe the anchor first, then gallop
    away from it (±1, ±2, ±4 …) on the side the verdict points to, then bisect: a GPU whose
    prediction is right settles in two runs, one that is off by d in ~2 log2(d) more."""
    if hi is not None and hi - lo <= 1:
        return None
    if anchor is None or not 1 <= anchor <= top:
        if hi is None:
            return None if lo >= top else min(top, max(1, 2 * lo))
        return (lo + hi) // 2
    if hi is None:
        if lo >= top:
            return None
        if lo < anchor:
            return anchor
        return min(top, lo + max(1, lo - anchor))  # anchor passed: anchor+1, +2, +4 …
    if hi <= anchor and lo < anchor:
        # failed at or below the anchor: gallop down (hi-1, -2, -4 …), never past the bisection point
        return max(lo + 1, hi - max(1, anchor - hi), (lo + hi) // 2)
    return (lo + hi) // 2


def breaking_checks(g: GpuReport) -> dict[str, bool]:
    """Every check a GPU report is judged by, and whether it fails: each SLO metric (any adapter's
    figure over its bound), ``queue`` (the GPU's or an adapter's backlog grows), ``throughput`` (the
    study's rule: starved, or fails to start)."""
    out: dict[str, bool] = {}
    v = g.slo
    if v is not None:
        for c in v.checks:
            out[c.metric] = out.get(c.metric, False) or not c.ok
        grows = not v.stable or any(a.slo is not None and not a.slo.stable for a in g.per_adapter)
        out["queue"] = grows or v.served_nothing
    out["throughput"] = g.starved or g.oom
    if g.oom:
        out = dict.fromkeys(out, True)
    return out


def first_failures(evaluate: Callable[[int], GpuReport], top: int) -> dict[str, tuple[int | None, GpuReport | None]]:
    """For each check of :func:`breaking_checks`, the smallest grid index (load multiplier
    ``1 + index x STEP``, index 0 passing) at which it fails, searched up to ``top`` by gallop then
    bisection, and the report there; (None, None) when it still holds at ``top``. ``evaluate(i)`` is
    called once per index."""
    cache: dict[int, GpuReport] = {}

    def at(i: int) -> GpuReport:
        if i not in cache:
            cache[i] = evaluate(i)
        return cache[i]

    out: dict[str, tuple[int | None, GpuReport | None]] = {}
    for check in breaking_checks(at(0)):
        lo, hi = 0, None
        while (k := _next_probe(lo, hi, top)) is not None:
            if breaking_checks(at(k)).get(check, False):
                hi = k
            else:
                lo = k
        out[check] = (hi, None if hi is None else at(hi))
    return out


class LoadProbes:
    """The twin workloads a headroom search probes, one simulator per load multiplier (of one seed, up to
    ``1 + cap``): where thinning is exact, every multiplier thins one draw at ``1 + cap`` (drawn when
    the first probe runs); otherwise each multiplier is its own draw at the scaled rates. Anyone can
    re-run a search's probe with the same requests: ``LoadProbes(sc, dir, executor, seed).at(1.2)``."""

    def __init__(self, sc: Scenario, base_dir: Path, executor: ExecutorSpec, seed: int, cap: float = CAP) -> None:
        self.sc, self.base_dir, self.executor, self.seed, self.cap = sc, base_dir, executor, seed, cap
        self.top = (
            PlanSimulator(sc, base_dir, executor, seed=seed, load_scale=1.0 + cap)
            if thins_exactly(sc.workload.arrivals)
            else None
        )

    def at(self, scale: float) -> PlanSimulator:
        """A simulator of the workload at ``scale`` times the rates (``1 <= scale <= 1 + cap``)."""
        if self.top is not None:
            return self.top.thinned(scale)
        return PlanSimulator(self.sc, self.base_dir, self.executor, seed=self.seed, load_scale=scale)


def find_headroom(
    sc: Scenario,
    base_dir: Path,
    executor: ExecutorSpec,
    plan: Sequence[GpuConfig],
    stated: SimReport,
    step: float = STEP,
    cap: float = CAP,
    progress: Callable[[str], None] | None = None,
    known: Mapping[float, PlanSimulator] | None = None,
    guesses: Sequence[float | None] | None = None,
    workloads: LoadProbes | None = None,
) -> PlanHeadroom:
    """Every GPU's headroom; ``stated`` is the plan's twin report at the stated rates (seed and GPU
    order as in ``plan``), whose verdicts are the search's starting point. ``known``: simulators
    already run at some extra load share (same seed), e.g. solve's check at ``slo.headroom``, whose
    cached GPU results the search starts from. ``guesses``: per GPU of ``plan``, a predicted headroom
    (extra load share, e.g. from the capacity oracle; None: no prediction), where its search starts
    (:func:`_next_probe`'s anchor); a guess only orders the probes, the figures are the twin's.
    ``workloads``: the probes' workloads (drawn ahead, e.g.), used when of ``stated``'s seed and this cap.

    Each round's probes (every unsettled GPU's next multiplier) run as one batch, so both cores stay
    busy when the GPUs probe different multipliers."""
    top = max(1, round(cap / step))
    sims: dict[int, PlanSimulator] = {}
    for share, sim in (known or {}).items():
        at = share / step
        if abs(at - round(at)) < 1e-9 and sim.seed == stated.seed:
            sims[round(at)] = sim
    configs = list(dict.fromkeys(plan))
    first = {gp: stated.gpus[i] for i, gp in reversed(list(enumerate(plan)))}
    lo: dict[GpuConfig, int | None] = {gp: (None if first[gp].failed else 0) for gp in configs}
    hi: dict[GpuConfig, int | None] = {gp: (0 if first[gp].failed else None) for gp in configs}
    broke: dict[GpuConfig, GpuReport] = {gp: first[gp] for gp in configs if first[gp].failed}
    for step_k in sorted(sims):
        for gp in configs:
            seen = sims[step_k].cache.get(gp)
            below, above = lo[gp], hi[gp]
            if seen is None or below is None or step_k <= below or (above is not None and step_k >= above):
                continue
            if seen.failed:
                hi[gp], broke[gp] = step_k, seen
            else:
                lo[gp] = step_k
    anchor: dict[GpuConfig, int] = {}
    for gp, guess in zip(plan, guesses or ()):
        if guess is not None and gp not in anchor:
            # the grid step just above the predicted largest passing load: where it should break
            anchor[gp] = min(top, max(1, math.floor(guess / step + 1e-9) + 1))
    draws = workloads
    if draws is None or draws.seed != stated.seed or draws.cap != top * step:
        draws = LoadProbes(sc, base_dir, executor, stated.seed, top * step)
    runs = 0
    while True:
        probes: list[tuple[int, GpuConfig]] = []
        for gp in configs:
            low = lo[gp]
            k = None if low is None else _next_probe(low, hi[gp], top, anchor.get(gp))
            if k is not None:
                probes.append((k, gp))
        if not probes:
            break
        for k, _ in probes:
            if k not in sims:
                sims[k] = draws.at(1.0 + k * step)
        todo = [(k, gp) for k, gp in probes if gp not in sims[k].cache]
        if progress is not None and todo:
            loads = ", ".join(f"+{k * step:.0%}" for k in sorted({k for k, _ in todo}))
            progress(f"headroom: {len(todo)} GPU run(s) at {loads} load")
        runs += simulate_into([(sims[k], gp) for k, gp in todo], executor)
        for k, gp in probes:
            g = sims[k].cache[gp]
            if g.failed:
                hi[gp], broke[gp] = k, g
            else:
                lo[gp] = k
    out = []
    for i, gp in enumerate(plan):
        low, high = lo[gp], hi[gp]
        what, adapter = failure_of(broke[gp]) if gp in broke else (None, None)
        out.append(
            GpuHeadroom(
                i,
                None if low is None else low * step,
                None if high is None else high * step,
                what,
                adapter,
            )
        )
    return PlanHeadroom(tuple(out), step, cap, stated.seed, runs)
