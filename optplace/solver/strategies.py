"""Strategies behind one interface, registered by name, and :func:`solve`.

Every strategy turns (problem, oracle, options) into GPU entries; :func:`solve` adds the objective
value, the lower bound and gap, timing and the log, and returns a frozen :class:`~.plan.Plan`.
Strategies are registered in :data:`optplace.infra.registry.STRATEGIES` (``solver.strategy``,
``--strategy`` and ``bench solver --strategies`` are checked against it): a new one is one class
with ``@STRATEGIES.register("name")`` in one module; the baselines are registered here from the rules of
:data:`~.baselines.BASELINES`. What differs per objective lives on the objective
(:mod:`.objectives`); a *fixed-budget* objective (``min_latency``) is handled by the optimising
strategies (``milp`` and ``greedy``) with a load-balancing placement, by ``greedy-paper`` with the
published latency variant (least summed rate over all GPUs, slots = adapters), and by the baselines
with their rule at the budget.

Time limit: :func:`solve` runs on one :class:`~.problem.Deadline` (``solver.time_limit_s``; the
pipeline starts it before compiling the problem). ``milp`` and ``greedy`` are *anytime*: the fast
class-pattern greedy (:func:`~.greedy.greedy_fast`) gives a first plan in seconds even at 100,000
adapters; ``milp`` stops there when the LP bound (given 30 % of what is left) already reaches it,
else runs column generation and the master on the remaining time (each phase is skipped when it
cannot finish, see the ``*_SECONDS_PER_ADAPTER`` constants) and keeps the best plan; 10 % of the limit
is kept for the LP bound when that is enough for one of its rounds. When the deadline passes, the
best plan so far is returned with its bound and a "time limit reached after …" log line; with no
plan at all, :class:`~.problem.TimeLimitReached` (exit 1). ``greedy-paper`` and the baselines have no
intermediate plan: they finish in time or raise it (baselines through :class:`~.capacity.TimedOracle`).
Figures: ``optplace bench limits``.

Robust plans: the final plan of ``milp`` and ``greedy`` (the fast greedy's included) is balanced at its
GPU count by :func:`~.balance.rebalance` (worst load/capacity as low as it gets, every GPU still
accepted by the oracle), within a work budget (:data:`BALANCE_WORK`) and at most half of the time left
after the strategy; the published greedy and the baselines keep their rule's placement.

Determinism: no phase is stopped by a budget in seconds of its own. Phases stop on work counts (rounds,
iterations, moves) or on the solve's one deadline (a share of ``solver.time_limit_s``); every stop or
skip caused by the clock is recorded on the deadline (:attr:`~.problem.Deadline.cuts`) and reported as
``Plan.cut_by_time_limit``, so a plan without cuts is the same on every run.

Bound: computed on :func:`~.capacity.bound_model` of the oracle — the analytic model, or for a
surrogate/twin oracle the relaxed analytic model that contains every GPU it accepts — and reported
with that model's name (``Plan.lower_bound_model``, a "bound … on the … model" log line). ``milp``
stops early when that bound proves the first plan optimal, or (logged as such, not a proof) when the
strict analytic bound, on which the MILP prices its columns, already reaches it.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from optplace.infra.executors import Ahead
from optplace.infra.registry import STRATEGIES
from optplace.solver.balance import rebalance
from optplace.solver.baselines import BASELINES, run_baseline, type_at
from optplace.solver.bound import FINER_GRID_GAIN, cached_lp_bound, lower_bound, lp_bound_seconds, volume_bound
from optplace.solver.capacity import AnalyticCapacity, CapacityOracle, Mix, TimedOracle, bound_model, make_oracle
from optplace.solver.greedy import greedy_fast, greedy_improved, greedy_paper
from optplace.solver.milp import private_output_lock, solve_milp
from optplace.solver.objectives import BoundContext, Objective, get_objective
from optplace.solver.plan import GpuAssignment, Plan, assign_gpu, renumber
from optplace.solver.problem import Deadline, Infeasible, Problem, TimeLimitReached
from optplace.solver.replicate import Fits, Replication, replicate_hot
from optplace.solver import loraserve

_NEVER = Deadline(0.0)
#: Least time column generation needs per adapter before its first deadline check (classes, the
#: representative-rate problem, the warm start: ~1 s per 100,000 adapters each); with less left the
#: MILP is not started and the fast greedy's plan stands.
MILP_SECONDS_PER_ADAPTER = 3e-5
#: Least time the improved and the published greedy take per adapter on the analytic model (8 s for
#: 100,000 adapters); with less left they are not started.
GREEDY_SECONDS_PER_ADAPTER = 5e-5
#: Share of the time limit kept for the bound: strategies stop at 90 %, the LP bound gets the rest.
BOUND_SHARE = 0.10
#: Share of what is left after the first plan that the bound may take to prove that plan optimal.
EARLY_BOUND_SHARE = 0.30
#: Strategies whose final plan is balanced at its GPU count (:mod:`.balance`); greedy-paper and the
#: baselines are faithful rules and keep their placement.
BALANCED = frozenset({"milp", "greedy"})
#: Share of the time left after the strategy that balancing may take (the rest is the bound's).
BALANCE_SHARE = 0.5
#: Balancing's work budget (:func:`balance_work`, units of :class:`~.balance._State`): a fixed part
#: plus a part per adapter. Counted in work, not seconds, so the balanced plan is the same on every
#: run (a budget in seconds cut it at a different step on each run of a 10,000-adapter fleet).
BALANCE_WORK = (2_000_000, 200)


def balance_work(n_adapters: int) -> int:
    """The work budget of balancing a plan of ``n_adapters`` adapters (:data:`BALANCE_WORK`)."""
    return BALANCE_WORK[0] + BALANCE_WORK[1] * n_adapters


__all__ = [
    "STRATEGIES",
    "SolveOptions",
    "Strategy",
    "get_strategy",
    "lp_bound_seconds",
    "prepare",
    "Solved",
    "solve",
    "solve_split",
]


def _proven(
    problem: Problem,
    oracle: CapacityOracle,
    objective: Objective,
    weights: list[float],
    value: float,
    deadline: Deadline,
    model: AnalyticCapacity | None = None,
) -> float | None:
    """The lower bound on ``model`` when (within ``deadline``) it reaches ``value``, else None.

    Default ``model``: the one valid for ``oracle`` (:func:`~.capacity.bound_model`: the analytic model,
    or the relaxed one containing every configuration a surrogate/twin oracle accepts), so reaching it
    proves the plan optimal for that oracle. With the oracle's strict analytic model instead it says
    only that the MILP (whose columns are priced on that model) cannot improve the plan."""
    if objective.fixed_budget:
        return None
    bm = model if model is not None else bound_model(oracle)[0]
    if bm is None or not deadline.affords(lp_bound_seconds(problem.n_adapters)):
        return None
    # The LP bound is memoised only when it converged, so the final bound reuses it or retries.
    lb = _bound_value(problem, bm, objective, weights, deadline, reach=value)
    return lb if lb >= value - 1e-9 else None


def _improving(deadline: Deadline, n_adapters: int = 0) -> Deadline:
    """The part of the budget for improving a first plan: all but the bound's share, when that share
    is enough for the LP bound (else the whole of it: the volume bound needs no time)."""
    if BOUND_SHARE * deadline.limit_s >= lp_bound_seconds(n_adapters):
        return deadline.until(1.0 - BOUND_SHARE)
    return deadline


class _Skip(Exception):
    """A phase not started for lack of time (not an error)."""


@dataclass(frozen=True, slots=True)
class SolveOptions:
    """Per-call options (defaults from the problem's ``solver:`` section)."""

    time_limit_s: float = 60.0
    mip_gap: float = 0.01
    backend: str = "highs"
    class_width: float = 0.03
    #: ``milp``: stop as soon as the bound proves the fast greedy's plan optimal (False: run the MILP
    #: anyway, e.g. to exercise a backend).
    stop_when_proven: bool = True

    @classmethod
    def of(cls, problem: Problem) -> "SolveOptions":
        s = problem.solver
        return cls(time_limit_s=float(s.time_limit_s), mip_gap=float(s.mip_gap), backend=s.backend)


class Strategy(Protocol):
    """What ``solver.strategy`` names (registered in :data:`STRATEGIES`)."""

    name: str

    def solve(
        self, problem: Problem, oracle: CapacityOracle, options: SolveOptions, deadline: Deadline
    ) -> tuple[list[GpuAssignment], list[str], Any]:
        """GPU entries, log lines, and optional class duals (for the bound). Past ``deadline`` a strategy
        returns the best plan it has, or raises :class:`~.problem.TimeLimitReached` when it has none."""
        ...


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; an unknown name (a ValueError) lists the registered ones."""
    return STRATEGIES.get(name)


def _weights(problem: Problem) -> list[float]:
    obj = get_objective(problem.objective)
    return [obj.column_weight(t.cost_per_hour) for t in problem.gpu_types]


def time_up_line(deadline: Deadline, keeping: str) -> str:
    """The log line of a solve stopped by its deadline (improvement phases stop at 90 % of it: the
    rest is the bound's)."""
    share = ""
    if deadline.remaining() > 0:
        share = f"; the last {BOUND_SHARE:.0%} is the bound's"
    return (
        f"time limit reached after {deadline.elapsed():.1f} s (solver.time_limit_s = {deadline.limit_s:g}"
        f"{share}); {keeping}"
    )


def _first_plan(
    problem: Problem, oracle: CapacityOracle, deadline: Deadline, log: list[str]
) -> list[GpuAssignment] | None:
    """The fast greedy's plan (the anytime strategies' fallback); None when it finds none (e.g. a pool
    its class patterns cannot share out; the other algorithms may)."""
    t0 = time.monotonic()
    try:
        gpus = greedy_fast(problem, oracle, deadline.phase("first plan"))
    except TimeLimitReached:
        raise
    except Infeasible as e:
        log.append(f"fast greedy found no plan ({e})")
        return None
    log.append(f"fast greedy (class patterns): {len(gpus)} GPUs in {time.monotonic() - t0:.2f} s")
    return gpus


class _Anytime:
    """An optimising strategy: a fixed-budget objective gets the balanced placement over the budget;
    otherwise the fast greedy's plan first, then :meth:`improve`."""

    def solve(self, problem, oracle, options, deadline):
        obj = get_objective(problem.objective)
        if obj.fixed_budget:
            return (
                balance_latency(problem, oracle, deadline=deadline.phase("balanced placement")),
                ["balanced placement over the GPU budget"],
                None,
            )
        log: list[str] = []
        first = _first_plan(problem, oracle, deadline, log)
        if problem.adapters and all(a.gpu >= 0 for a in problem.adapters):
            # the fragments of loraserve's fill (solve_split): that fill is a plan too, and may be better
            fill = loraserve.assign(problem, TimedOracle(oracle, deadline, "loraserve's fill"))
            if all(g.feasible for g in fill) and (first is None or obj.value(tuple(fill)) < obj.value(tuple(first))):
                log.append(f"loraserve's fill of the fragments: {len(fill)} GPUs, the first plan")
                first = fill
        return self.improve(problem, oracle, options, deadline, obj, log, first)

    def improve(
        self,
        problem: Problem,
        oracle: CapacityOracle,
        options: SolveOptions,
        deadline: Deadline,
        obj: Objective,
        log: list[str],
        first: list[GpuAssignment] | None,
    ) -> tuple[list[GpuAssignment], list[str], Any]:
        raise NotImplementedError


@STRATEGIES.register("milp")
class Milp(_Anytime):
    """The fast greedy's plan, then column generation and the pattern master (see the module docstring)."""

    def improve(self, problem, oracle, options, deadline, obj, log, first):
        best, best_v = first, (obj.value(tuple(first)) if first is not None else math.inf)
        duals = None
        w = _weights(problem)
        need = MILP_SECONDS_PER_ADAPTER * problem.n_adapters
        full, deadline = deadline, (deadline if first is None else _improving(deadline, problem.n_adapters))
        early = deadline.phase("early bound")
        lb = (
            _proven(problem, oracle, obj, w, best_v, early.part(EARLY_BOUND_SHARE))
            if first is not None and options.stop_when_proven
            else None
        )
        if lb is not None:
            log.append(f"the bound proves the fast greedy's plan optimal ({best_v:g}); stopping")
            return first, log, None
        an = getattr(oracle, "analytic", oracle)
        if (
            first is not None
            and options.stop_when_proven
            and isinstance(an, AnalyticCapacity)
            and an is not bound_model(oracle)[0]
            and _proven(problem, oracle, obj, w, best_v, early.part(EARLY_BOUND_SHARE), an) is not None
        ):
            # Not a proof for this oracle (its bound is the relaxed model's, below): a stopping rule. A
            # learned oracle's MILP also prices beyond that model (on the guard and the learned encoding),
            # so there it is a judgement: run anyway on the 1,000-adapter bench families where the rule
            # holds, it found no better plan, and at short limits it took the final bound's time
            # (1,000 adapters at 5 s: bound 7 -> 3).
            log.append(
                f"the analytic model's bound reaches the fast greedy's plan ({best_v:g}): the MILP, priced "
                f"mostly on that model, is not run; stopping (not a proof for the {oracle.name} oracle)"
            )
            return first, log, None
        try:
            if best is not None and not deadline.phase("column generation").affords(need):
                log.append(
                    f"column generation not started: it needs ~{need:.1f} s before its first deadline "
                    f"check, {max(0.0, deadline.remaining()):.1f} s left"
                )
                raise _Skip()
            out = solve_milp(
                problem,
                oracle,
                w,
                options.time_limit_s,
                options.mip_gap,
                options.backend,
                options.class_width,
                deadline=deadline,
            )
            log += list(out.log)
            duals = out.duals
            v = obj.value(tuple(out.gpus))
            if best is not None and not all(g.feasible for g in out.gpus):
                # the master's mapping and its warm start's can both leave a GPU the oracle rejects
                # (columns are priced at representative rates): never trade a feasible plan for it
                log.append("the MILP's plan has a GPU the oracle rejects; keeping the fast greedy's plan")
            elif best is None or v < best_v - 1e-9:
                best, best_v = out.gpus, v
            elif v <= best_v + 1e-9:
                # a tie keeps the fast greedy's plan: its class patterns leave the room that draining
                # GPUs by splitting adapters (after the strategy) fills
                log.append(f"the MILP's plan ties the fast greedy's ({v:g}); keeping the fast greedy's")
            else:
                log.append(f"the fast greedy's plan is better ({best_v:g} < {v:g}); keeping it")
        except _Skip:
            pass
        except TimeLimitReached:
            if best is None:
                raise
            log.append(time_up_line(full, "keeping the fast greedy's plan (column generation / master did not finish)"))
        # Keep the best plan among the MILP's and the greedy ones on the real rates.
        # The comparison runs on the analytic model (cheap); with a twin/surrogate oracle a better
        # plan is only adopted when every one of its GPUs passes that oracle too.
        an = getattr(oracle, "analytic", oracle)
        for name, fn in (("greedy", greedy_improved), ("greedy-paper", greedy_paper)):
            real = deadline.phase(f"{name} on the real rates")
            if not real.affords(GREEDY_SECONDS_PER_ADAPTER * problem.n_adapters):
                break  # would not finish: the time left goes to the bound
            try:
                alt = fn(problem, an, deadline=real)
                v = obj.value(tuple(alt))
                if v < best_v - 1e-9:
                    if an is not oracle:
                        alt = [_judged(problem, oracle, g, real) for g in alt]
                        if not all(g.feasible for g in alt):
                            continue
                    log.append(f"{name} on the real rates is better ({v:g} < {best_v:g}); keeping it")
                    best, best_v = alt, v
            except TimeLimitReached:
                break
            except Infeasible:
                continue
        if deadline.passed() and best is not None:
            log.append(time_up_line(full, f"returning the best plan found ({best_v:g})"))
        if best is None:
            deadline.check("milp")
            raise Infeasible("no plan found", "")
        return best, log, duals


@STRATEGIES.register("greedy")
class Greedy(_Anytime):
    """The fast greedy's plan, improved (bisection capacity, best slots, consolidation)."""

    def improve(self, problem, oracle, options, deadline, obj, log, first):
        try:
            gpus = greedy_improved(
                problem,
                oracle,
                deadline=(deadline if first is None else _improving(deadline, problem.n_adapters)).phase(
                    "improved greedy"
                ),
            )
        except TimeLimitReached:
            if first is None:
                raise
            log.append(
                time_up_line(
                    deadline, "returning the fast greedy's plan (the improved greedy did not finish in its share)"
                )
            )
            return first, log, None
        except Infeasible:
            if first is None:
                raise
            gpus = first
        if first is not None and obj.value(tuple(first)) < obj.value(tuple(gpus)) - 1e-9:
            log.append(
                f"the fast greedy's plan is better ({obj.value(tuple(first)):g} < {obj.value(tuple(gpus)):g}); "
                "keeping it"
            )
            gpus = first
        log.append("improved greedy (bisection capacity, best slots, consolidation)")
        if _improving(deadline, problem.n_adapters).passed():
            log.append(time_up_line(deadline, "consolidation stopped early"))
        return gpus, log, None


@STRATEGIES.register("greedy-paper")
class GreedyPaper:
    def solve(self, problem, oracle, options, deadline):
        if get_objective(problem.objective).fixed_budget:
            return (
                latency_paper(problem, oracle, deadline),
                ["published latency variant: least summed rate, slots = adapters"],
                None,
            )
        return (
            greedy_paper(problem, oracle, deadline),
            ["published greedy (test points 8…576, first fit, no revisits)"],
            None,
        )


def _judged(problem: Problem, oracle: CapacityOracle, g: GpuAssignment, deadline: Deadline) -> GpuAssignment:
    deadline.check("re-checking a greedy plan with the capacity oracle")
    return assign_gpu(problem, oracle, g.type_index, g.adapter_indices, g.gpu)


class Baseline:
    def __init__(self, name: str) -> None:
        self.name = name

    def solve(self, problem, oracle, options, deadline):
        deadline = deadline.phase(self.name)
        timed = TimedOracle(oracle, deadline, f"the {self.name} baseline's GPU-count search")
        if get_objective(problem.objective).fixed_budget:
            G = latency_budget(problem, oracle, deadline)
            groups = BASELINES[self.name](problem, timed, G)
            gpus = [assign_gpu(problem, timed, type_at(problem, g), idx, g) for g, idx in enumerate(groups) if idx]
            return gpus, [f"{self.name} rule at the budget of {G} GPUs"], None
        bm, _ = bound_model(oracle)
        start = 1
        if bm is not None:  # a count below the oracle's proven bound cannot pass: start there
            start = (
                int(lower_bound(problem, bm, integral=True, deadline=deadline.part(0.2)))
                if problem.n_adapters <= 2000
                else 1
            )
        return (
            run_baseline(problem, timed, self.name, max(1, start)),
            [f"{self.name}: smallest passing GPU count"],
            None,
        )


for _rule in BASELINES:  # after milp, greedy and greedy-paper: the order names are listed in
    STRATEGIES.register(_rule, Baseline(_rule))


@STRATEGIES.register("loraserve")
class LoraServe:
    """LoRAServe's placement (:mod:`.loraserve`): ranks on GPUs of their own, each GPU filled to its
    operating point, adapters split at GPU boundaries. It places the fragments :func:`prepare` made
    for it (``fractional``: the problem is split by the strategy, not by
    :func:`~.replicate.replicate_hot`)."""

    name: str  # set by the registry
    fractional = True

    def solve(self, problem, oracle, options, deadline):
        deadline = deadline.phase(self.name)
        gpus = loraserve.assign(problem, TimedOracle(oracle, deadline, "the loraserve baseline"))
        return gpus, ["loraserve: each rank's adapters filled over GPUs of their own, split at the boundaries"], None


def prepare(
    problem: Problem, oracle: CapacityOracle, strategy: str, fits: Fits | None = None, deadline: Deadline = _NEVER
) -> Replication:
    """The problem ``strategy`` places: for a ``fractional`` strategy (``loraserve``) its own split;
    for every other one the hot adapters split into equal replicas (:func:`~.replicate.replicate_hot`,
    ``fits`` the twin's confirmation)."""
    if not getattr(get_strategy(strategy), "fractional", False):
        return replicate_hot(problem, oracle, fits)
    budget = latency_budget(problem, oracle, deadline) if get_objective(problem.objective).fixed_budget else None
    split, log = loraserve.split(problem, oracle, budget)
    return Replication(split, log, _replicas(split))


def _replicas(problem: Problem) -> tuple[tuple[str, int], ...]:
    """Each adapter the problem places on several GPUs, with its item count (``Replication.replicas``)."""
    counts: dict[str, int] = {}
    for a in problem.adapters:
        counts[a.name] = counts.get(a.name, 0) + 1
    return tuple((n, k) for n, k in counts.items() if k > 1)


def _bound_value(
    problem: Problem,
    bm: AnalyticCapacity,
    objective: Objective,
    weights: list[float],
    deadline: Deadline,
    reach: float | None = None,
) -> float:
    """The better of the volume and LP bounds on ``bm``, rounded as ``objective`` counts. With ``reach``
    (a plan's value: the question is only whether the bound reaches it), the LP stops at the first rate
    grid whose bound does, and is not run when the volume bound already does; the value returned is
    then a valid bound at least ``reach``, not necessarily the best one. Nor are finer grids run once a
    coarse one's bound is too far below ``reach`` for them to close (:data:`~.bound.FINER_GRID_GAIN`)."""
    vol = volume_bound(problem, bm, weights)

    def rounded(lp: float) -> float:
        return objective.round_bound(max(vol, lp))

    if reach is not None and rounded(0.0) >= reach - 1e-9:
        return rounded(0.0)

    enough: Callable[[float], bool] | None = None
    hopeless: Callable[[float], bool] | None = None
    if reach is not None:
        target = reach

        def enough(lp: float) -> bool:
            return rounded(lp) >= target - 1e-9

        def hopeless(lp: float) -> bool:
            return rounded(lp * (1.0 + FINER_GRID_GAIN)) < target - 1e-9

    lp = cached_lp_bound(
        problem, bm, weights, deadline=deadline, enough=enough, integral=objective.integral, hopeless=hopeless
    )
    return rounded(lp.value)


# --- min_latency ------------------------------------------------------------------------------


def latency_budget(problem: Problem, oracle: CapacityOracle, deadline: Deadline = _NEVER) -> int:
    """The fixed GPU budget: ``solver.max_gpus``, else an explicit pool's total, else the min_gpus count
    (the improved greedy's; the fast greedy's when the improved one does not fit half the time left)."""
    if problem.solver.max_gpus is not None:
        return int(problem.solver.max_gpus)
    sc = problem.scenario
    if sc is not None and sc.pool is not None:
        return sum(t.count for t in problem.gpu_types)
    p = problem.with_objective("min_gpus")
    try:
        return len(greedy_improved(p, oracle, deadline=deadline.part(0.5)))
    except TimeLimitReached:
        return len(greedy_fast(p, oracle, deadline))


def balance_latency(
    problem: Problem, oracle: CapacityOracle, passes: int = 3, deadline: Deadline = _NEVER
) -> list[GpuAssignment]:
    """Spread load over the budget (largest load first to the least-loaded GPU, rank groups kept
    apart where possible), each GPU at the slot count with the lowest predicted ITL, then moves of
    single adapters that lower the token-weighted mean ITL."""
    G = latency_budget(problem, oracle, deadline)
    types = [type_at(problem, g) for g in range(G)]
    order = sorted(problem.adapters, key=lambda a: (-a.rank, -a.rate_rps, a.index))
    groups: list[list[int]] = [[] for _ in range(G)]
    heap = [(0.0, g) for g in range(G)]
    for a in order:
        load, g = heapq.heappop(heap)
        groups[g].append(a.index)
        heapq.heappush(heap, (load + a.rate_rps, g))
    gpus = []
    for g, idx in enumerate(groups):
        deadline.check(f"balanced placement, GPU {g} of {G}")
        gpus.append(_latency_gpu(problem, oracle, types[g], idx, g))
    for _ in range(passes):
        if deadline.expired():
            break
        improved = False
        gpus.sort(key=lambda x: -x.offered_tok_s * (x.predicted_itl_ms if math.isfinite(x.predicted_itl_ms) else 1e9))
        src, dst = gpus[0], gpus[-1]
        if not src.adapters or len(src.adapters) <= 1:
            break
        for i in sorted(src.adapter_indices, key=lambda i: -problem.adapters[i].rate_rps)[:8]:
            a_src = [j for j in src.adapter_indices if j != i]
            a_dst = list(dst.adapter_indices) + [i]
            ns = _latency_gpu(problem, oracle, src.type_index, a_src, src.gpu)
            nd = _latency_gpu(problem, oracle, dst.type_index, a_dst, dst.gpu)
            if ns.feasible and nd.feasible and _wmean([ns, nd]) < _wmean([src, dst]) - 1e-9:
                gpus[0], gpus[-1] = ns, nd
                src, dst = ns, nd
                improved = True
        if not improved:
            break
    if not all(g.feasible for g in gpus if g.adapters):
        raise Infeasible(
            f"min_latency: the budget of {G} GPUs cannot serve the adapters without starvation (raise solver.max_gpus)",
            "max_gpus",
        )
    return gpus


def _wmean(gpus: Sequence[GpuAssignment]) -> float:
    w = math.fsum(g.offered_tok_s for g in gpus)
    return math.fsum(g.offered_tok_s * g.predicted_itl_ms for g in gpus) / w if w > 0 else 0.0


def _latency_gpu(problem: Problem, oracle: CapacityOracle, gtype: int, idx: Sequence[int], g: int) -> GpuAssignment:
    """The GPU entry at the feasible slot count with the lowest predicted ITL."""
    if not idx:
        return assign_gpu(problem, oracle, gtype, [], g)
    ads = [problem.adapters[i] for i in idx]
    mix = Mix.of(ads)
    an = oracle.analytic if hasattr(oracle, "analytic") else oracle
    cands = an.candidate_slots(gtype, mix) if isinstance(an, AnalyticCapacity) else None
    if not cands:
        return assign_gpu(problem, oracle, gtype, idx, g)
    ests = [oracle.evaluate(gtype, mix, L) for L in cands]
    feas = [e for e in ests if e.feasible]
    if not feas:
        return assign_gpu(problem, oracle, gtype, idx, g)
    best = min(feas, key=lambda e: (e.itl_ms, -e.max_loras))
    return assign_gpu(problem, oracle, gtype, idx, g, max_loras=best.max_loras)


def latency_paper(problem: Problem, oracle: CapacityOracle, deadline: Deadline = _NEVER) -> list[GpuAssignment]:
    """Published latency variant: least summed rate over all GPUs, slots = adapters (memory-capped)."""
    G = latency_budget(problem, oracle, deadline)
    groups: list[list[int]] = [[] for _ in range(G)]
    heap = [(0.0, g) for g in range(G)]
    for a in sorted(problem.adapters, key=lambda a: (-a.rate_rps, a.index)):
        load, g = heapq.heappop(heap)
        groups[g].append(a.index)
        heapq.heappush(heap, (load + a.rate_rps, g))
    out = []
    for g, idx in enumerate(groups):
        if not idx:
            continue
        deadline.check(f"published latency variant, GPU {g} of {G}")
        t = type_at(problem, g)
        rmax = max(problem.adapters[i].rank for i in idx)
        L = max(1, min(len(idx), oracle.slot_cap(t, rmax)))
        out.append(assign_gpu(problem, oracle, t, idx, g, max_loras=L))
    return out


# --- the entry point ------------------------------------------------------------------------


def solve(
    problem: Problem,
    oracle: CapacityOracle | None = None,
    strategy: str | None = None,
    options: SolveOptions | None = None,
    deadline: Deadline | None = None,
) -> Plan:
    """Solve ``problem`` with ``strategy`` (default: the spec's ``solver.strategy``) → :class:`Plan`.

    ``deadline``: the solve's one time budget (default: ``time_limit_s`` from now; the pipeline starts it
    before compiling the problem). Every phase gets it; when it passes the best plan so far is returned
    with its proven bound and a "time limit reached after …" log line, and the bound falls back to the
    cheap volume bound when the Lagrangian one does not fit what is left. ``solve_time_s`` is measured
    from the deadline's start. Raises :class:`~.problem.Infeasible` (with the binding constraint) when
    no plan exists, :class:`~.problem.TimeLimitReached` when none was found in time.
    """
    name = strategy or problem.solver.strategy
    strat = get_strategy(name)
    obj = get_objective(problem.objective)
    opts = options or SolveOptions.of(problem)
    dl = deadline if deadline is not None else Deadline.begin(opts.time_limit_s)
    orc = oracle if oracle is not None else make_oracle(problem, "auto")
    an = (
        orc.analytic
        if hasattr(orc, "analytic")
        else (orc if isinstance(orc, AnalyticCapacity) else AnalyticCapacity(problem))
    )
    bm, bm_name = bound_model(orc)
    if problem.n_adapters == 0:
        raise Infeasible("the spec has no adapters", "adapters")
    _precheck(problem, orc)
    weights = _weights(problem)
    obj.precheck(problem, bm, weights, dl.phase("precheck bound"))
    dl.check(f"{name}: before the first plan")
    gpus, log, duals = strat.solve(problem, orc, opts, dl)
    if name in BALANCED and not obj.fixed_budget and len(gpus) > 1:
        bal = rebalance(
            problem,
            orc,
            gpus,
            deadline=dl.part(BALANCE_SHARE).phase("balance"),
            work_budget=balance_work(problem.n_adapters),
        )
        gpus = list(bal.gpus)
        log.append(bal.log_line())
    gpus_t = renumber(gpus)
    value = obj.value(gpus_t)
    lb, bm_name, bound_log = obj.plan_bound(
        BoundContext(problem, orc, an, bm, bm_name, weights, duals, dl.phase("bound"), len(gpus_t), value)
    )
    log += bound_log
    log.append(f"bound {lb:g} on the {bm_name} model")
    if value < lb <= value + 1e-7 * max(1.0, abs(value)):
        # Within the LP's floating-point tolerance (HiGHS feasibility tolerance 1e-7): the Farley value
        # is computed from duals that carry that error, so a bound this close to the plan is the plan.
        lb = value
    elif lb > value:
        # Only a GPU the bound's model rejects can put the bound above the plan: say so, do not hide it.
        log.append(
            f"bound {lb:g} is above the plan's value {value:g}: a GPU of the plan is outside the bound's "
            f"model ({bm_name}); the plan is not proven feasible for it"
        )
    if (dl.passed() or dl.cuts) and not any(line.startswith("time limit reached") for line in log):
        log.append(time_up_line(dl, "returning the plan found"))
    if dl.cuts:
        log.append(f"cut by the time limit: {', '.join(dl.cuts)}")
    return Plan(
        objective=obj.name,
        strategy=name,
        gpus=gpus_t,
        objective_value=value,
        lower_bound=lb,
        solve_time_s=dl.elapsed(),
        oracle=orc.name,
        log=tuple(log),
        lower_bound_model=bm_name,
        cut_by_time_limit=tuple(dl.cuts),
    )


@dataclass(frozen=True, slots=True)
class Solved:
    """What :func:`solve_split` returns: the problem as solved (its replicas), the plan, and — when
    the plan on loraserve's fragments was kept — the plan on the problem before that split."""

    split: Replication
    plan: Plan
    #: the plan with only the hot adapters split (equal replicas); None when that is ``plan``
    unsplit: Plan | None = None

    def __iter__(self):  # (split, plan), the pair most callers want
        return iter((self.split, self.plan))


def solve_split(
    problem: Problem,
    oracle: CapacityOracle,
    strategy: str | None = None,
    fits: Fits | None = None,
    deadline: Deadline | None = None,
    parallel: bool = False,
) -> Solved:
    """:func:`_split_and_solve`, then, for an optimising strategy, GPUs emptied by splitting adapters
    over the others' room where the oracle allows it (:func:`_drained`). ``parallel``: solve the
    split path in a second process meanwhile (a second core; same result)."""
    name = strategy or problem.solver.strategy
    dl = deadline if deadline is not None else Deadline.begin(SolveOptions.of(problem).time_limit_s)
    solved = _split_and_solve(problem, oracle, name, fits, dl, parallel)
    return _drained(solved, oracle, name, dl)


def _drained(solved: Solved, oracle: CapacityOracle, name: str, dl: Deadline) -> Solved:
    """``solved`` with GPUs emptied by :func:`~.drain.drain` when that lowers the objective: the plan on
    the problem with the split parts as replicas, its bound the lower of the two problems' (as for
    loraserve's fragments: a plan that splits adapters is not bound by the whole-adapter problem's)."""
    from optplace.solver.drain import drain, drained_gpus

    obj = get_objective(solved.plan.objective)
    plan = solved.plan
    if name not in BALANCED or obj.fixed_budget or dl.passed() or plan.gpus_used <= 1:
        return solved
    problem = solved.split.problem
    # the bound's share of the limit stays for the fragments' bound
    phase = dl.until(1.0 - BOUND_SHARE).phase("draining GPUs by splitting adapters")
    out = drain(problem, oracle, [g for g in plan.gpus if g.adapters], phase)
    if out is not None:
        frag, gpus = drained_gpus(problem, oracle, out)
        value = obj.value(tuple(gpus))
        if all(g.feasible for g in gpus) and value < plan.objective_value - 1e-9:
            return _with_drained(solved, oracle, obj, dl, frag, renumber(gpus), value)
    if tuple(dl.cuts) == plan.cut_by_time_limit:
        return solved
    return Solved(solved.split, plan.with_(cut_by_time_limit=tuple(dl.cuts)), solved.unsplit)


def _with_drained(
    solved: Solved,
    oracle: CapacityOracle,
    obj: Objective,
    dl: Deadline,
    frag: Problem,
    gpus: tuple[GpuAssignment, ...],
    value: float,
) -> Solved:
    """The drained plan (``gpus`` on the fragments' problem ``frag``) in place of ``solved``'s."""
    plan = solved.plan
    replicas = _replicas(frag)
    lb = plan.lower_bound
    bm = bound_model(oracle)[0]
    if bm is None:
        lb = 0.0  # no model contains the oracle's GPUs: only the trivial bound holds
    elif dl.phase("bound").affords(lp_bound_seconds(frag.n_adapters)):
        lb = min(lb, _bound_value(frag, bm, obj, _weights(frag), dl))
    else:
        lb = min(lb, obj.round_bound(volume_bound(frag, bm, _weights(frag))))
    why = (
        f"drained {plan.gpus_used - len(gpus)} GPU(s) by splitting adapters over the others' room: "
        f"{plan.objective_value:g} -> {value:g}, {len(replicas)} adapter(s) in several parts; bound {lb:g}: the "
        "lower of the two problems'"
    )
    drained = plan.with_(
        gpus=gpus,
        objective_value=value,
        lower_bound=lb,
        solve_time_s=dl.elapsed(),
        log=(*plan.log, why),
        cut_by_time_limit=tuple(dl.cuts),
    )
    return Solved(Replication(frag, solved.split.log, replicas), drained, solved.unsplit or plan)


def _split_and_solve(
    problem: Problem,
    oracle: CapacityOracle,
    name: str,
    fits: Fits | None,
    dl: Deadline,
    parallel: bool = False,
) -> Solved:
    """:func:`prepare` the problem for ``strategy`` and :func:`solve` it: the problem solved (with its
    replicas) and the plan (:class:`Solved`).

    Replication where it saves GPUs: for an optimising strategy (``milp``, ``greedy``) under an
    objective that is not a fixed budget, when the ``loraserve`` fill of the problem (every GPU filled
    to its operating point, adapters split at the boundaries) needs a smaller objective than the plan,
    the strategy solves again on that fill's fragments, starting from the fill, and the better plan is
    kept. An adapter is thus split beyond :func:`~.replicate.replicate_hot` only where that saves a GPU
    (or cost); the fragments' extra replicas are the price, paid only for a better objective. The bound
    reported is then the lower of the two problems' bounds (splitting can beat the whole-adapter
    problem's bound).

    ``parallel``: the split path (the fill, then the solve on its fragments) runs ahead in a forked
    process (:class:`~optplace.infra.executors.Ahead`) while this one solves the whole problem, and is
    stopped when its fill turns out not to beat the plan. The two paths share nothing but the inputs,
    so the result is the one the sequential order gives (at 10,000 adapters the fragments' solve
    alone took 14 s of a 62 s solve, the split 8 s), except that under a time limit each path has the
    whole remaining budget instead of what the other left."""
    rep = prepare(problem, oracle, name, fits, dl)
    obj = get_objective(problem.objective)
    splits = name in BALANCED and not obj.fixed_budget
    ahead_cm: contextlib.AbstractContextManager[Ahead | None] = (
        Ahead(functools.partial(_split_path, problem, oracle, name, dl))
        if splits and parallel
        else contextlib.nullcontext()
    )
    with ahead_cm as ahead:
        plan = solve(rep.problem, oracle, name, deadline=dl)
        if not splits or dl.passed():
            return Solved(rep, plan)
        filled, frag = ahead.receive() if ahead is not None else _split_fill(problem, oracle, dl)
        _merge_cuts(dl, filled.cuts)
        if filled.cut_line is not None:  # the plan found stands, and says what the clock cut
            return Solved(rep, plan.with_(log=(*plan.log, filled.cut_line), cut_by_time_limit=tuple(dl.cuts)))
        if filled.fill_value is None or filled.fill_value >= plan.objective_value - 1e-9:
            return Solved(rep, plan)  # (with ``ahead``: its fragments' solve is not wanted, and stopped)
        if ahead is not None:
            frag, second, cuts = ahead.receive()
            _merge_cuts(dl, cuts)
        else:
            assert frag is not None  # a fill has fragments
            second = solve(frag, oracle, name, deadline=dl)
    if second.objective_value >= plan.objective_value - 1e-9:
        return Solved(rep, plan)
    assert frag is not None
    replicas = _replicas(frag)
    why = (
        f"splitting adapters where it saves GPUs: {plan.objective_value:g} on whole adapters (and hot ones' "
        f"equal replicas), {second.objective_value:g} with {len(replicas)} adapter(s) split at GPU boundaries"
    )
    lb = min(plan.lower_bound, second.lower_bound)
    second = second.with_(lower_bound=lb, log=(*second.log, f"bound {lb:g}: the lower of the two problems'"))
    return Solved(Replication(frag, (*filled.frag_log, why), replicas), second, plan)


@dataclass(frozen=True, slots=True)
class _Filled:
    """What loraserve's split of a problem and its fill say: the split's log and the fill's objective
    value (None when it has no feasible fill), or the line saying the clock cut them. Small: the
    process ahead sends it while the other may not read yet (a pipe holds 64 KiB), the fragments'
    problem comes with its solve."""

    frag_log: tuple[str, ...]
    fill_value: float | None
    cut_line: str | None
    cuts: tuple[str, ...]


def _split_fill(problem: Problem, oracle: CapacityOracle, dl: Deadline) -> tuple[_Filled, Problem | None]:
    """Split ``problem`` at GPU boundaries (:func:`~.loraserve.split`) and fill the fragments
    (:func:`~.loraserve.assign`), within the solve's deadline: at 10,000 adapters under the SLO oracle
    the split alone takes ~8-20 s, and run past the limit it made a 60 s solve return after 76 s."""
    obj = get_objective(problem.objective)
    try:
        split_dl = dl.phase("splitting at GPU boundaries")
        frag, frag_log = loraserve.split(problem, TimedOracle(oracle, split_dl, "loraserve's split"))
        fill = loraserve.assign(frag, TimedOracle(oracle, split_dl, "loraserve's fill"))
    except TimeLimitReached:
        line = f"time limit reached after {dl.elapsed():.1f} s while splitting adapters at GPU boundaries"
        return _Filled((), None, line, tuple(dl.cuts)), None
    except Infeasible:
        return _Filled((), None, None, tuple(dl.cuts)), None
    value = obj.value(tuple(fill)) if all(g.feasible for g in fill) else None
    return _Filled(tuple(frag_log), value, None, tuple(dl.cuts)), frag


def _split_path(problem: Problem, oracle: CapacityOracle, name: str, dl: Deadline, send: Callable[[Any], None]) -> None:
    """The split path, run ahead in a forked process: what the fill says (one message), then, when it
    is feasible, the fragments' problem, its solve and the cuts the clock made (a second message)."""
    private_output_lock()  # this process may be killed mid-solve: never while holding the parent's lock
    filled, frag = _split_fill(problem, oracle, dl)
    send((filled, None))
    if frag is not None and filled.fill_value is not None:
        second = solve(frag, oracle, name, deadline=dl)
        send((frag, second, tuple(dl.cuts)))


def _merge_cuts(dl: Deadline, cuts: Sequence[str]) -> None:
    """Record on ``dl`` the phases a copy of it (in the process ahead) saw the clock cut."""
    for c in cuts:
        dl.cut(c)


def _precheck(problem: Problem, oracle: CapacityOracle) -> None:
    """Every adapter must fit one GPU alone (load and memory), on at least one type."""
    hottest = max(problem.adapters, key=lambda a: (a.rate_rps, a.rank))
    by_rank: dict[int, Any] = {}
    for a in problem.adapters:
        if a.rank not in by_rank or a.rate_rps > by_rank[a.rank].rate_rps:
            by_rank[a.rank] = a
    for a in {hottest, *by_rank.values()}:
        if not any(oracle.best_slots(t.index, Mix.of([a])).feasible for t in problem.gpu_types):
            from optplace.solver.greedy import single_adapter_infeasible

            raise single_adapter_infeasible(problem, oracle, a)
