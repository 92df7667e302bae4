"""Strategies behind one interface, a registry keyed by ``solver.strategy``, and :func:`solve`.

Every strategy turns (problem, oracle, options) into GPU entries; :func:`solve` adds the objective
value, the lower bound and gap, timing and the log, and returns a frozen :class:`~.plan.Plan`.
The ``min_latency`` objective (fixed GPU budget) is handled by the optimising strategies (``milp``
and ``greedy``) with a load-balancing placement; ``greedy-paper`` uses the published latency variant
(least summed rate over all GPUs, slots = adapters); baselines apply their rule at the budget.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .baselines import BASELINES, run_baseline
from .bound import lower_bound, volume_bound
from .capacity import AnalyticCapacity, CapacityOracle, Mix, make_oracle
from .greedy import greedy_improved, greedy_paper
from .milp import solve_milp
from .objectives import get_objective
from .plan import GpuAssignment, Plan, assign_gpu, renumber
from .problem import Infeasible, Problem


@dataclass(frozen=True, slots=True)
class SolveOptions:
    """Per-call options (defaults from the problem's ``solver:`` section)."""

    time_limit_s: float = 60.0
    mip_gap: float = 0.01
    backend: str = "highs"
    class_width: float = 0.03

    @classmethod
    def of(cls, problem: Problem) -> "SolveOptions":
        s = problem.solver
        return cls(time_limit_s=float(s.time_limit_s), mip_gap=float(s.mip_gap), backend=s.backend)


class Strategy(Protocol):
    name: str

    def solve(self, problem: Problem, oracle: CapacityOracle, options: SolveOptions) -> tuple[list[GpuAssignment],
                                                                                               list[str], Any]:
        """GPU entries, log lines, and optional class duals (for the bound)."""
        ...


def _weights(problem: Problem) -> list[float]:
    obj = get_objective(problem.objective)
    return [obj.column_weight(t.cost_per_hour) for t in problem.gpu_types]


class GreedyPaper:
    name = "greedy-paper"

    def solve(self, problem, oracle, options):
        if problem.objective == "min_latency":
            return latency_paper(problem, oracle), ["published latency variant: least summed rate, slots = adapters"], None
        return greedy_paper(problem, oracle), ["published greedy (test points 8…576, first fit, no revisits)"], None


class Greedy:
    name = "greedy"

    def solve(self, problem, oracle, options):
        if problem.objective == "min_latency":
            return balance_latency(problem, oracle), ["balanced placement over the GPU budget"], None
        return greedy_improved(problem, oracle), ["improved greedy (bisection capacity, best slots, consolidation)"], None


class Milp:
    name = "milp"

    def solve(self, problem, oracle, options):
        if problem.objective == "min_latency":
            return balance_latency(problem, oracle), ["balanced placement over the GPU budget"], None
        w = _weights(problem)
        out = solve_milp(problem, oracle, w, options.time_limit_s, options.mip_gap, options.backend,
                         options.class_width)
        gpus, log = out.gpus, list(out.log)
        # Keep the best plan among the MILP's and the greedy ones on the real rates.
        obj = get_objective(problem.objective)
        best, best_v = gpus, obj.value(tuple(gpus))
        # The comparison runs on the analytic model (cheap); with a twin/surrogate oracle a better
        # plan is only adopted when every one of its GPUs passes that oracle too.
        an = getattr(oracle, "analytic", oracle)
        for name, fn in (("greedy", greedy_improved), ("greedy-paper", greedy_paper)):
            try:
                alt = fn(problem, an)
            except Infeasible:
                continue
            v = obj.value(tuple(alt))
            if v < best_v - 1e-9:
                if an is not oracle:
                    alt = [assign_gpu(problem, oracle, g.type_index, g.adapter_indices, g.gpu) for g in alt]
                    if not all(g.feasible for g in alt):
                        continue
                log.append(f"{name} on the real rates is better ({v:g} < {best_v:g}); keeping it")
                best, best_v = alt, v
        return best, log, out.duals


class Baseline:
    def __init__(self, name: str) -> None:
        self.name = name

    def solve(self, problem, oracle, options):
        if problem.objective == "min_latency":
            G = latency_budget(problem, oracle)
            groups = BASELINES[self.name](problem, oracle, G)
            gpus = [assign_gpu(problem, oracle, _type_at(problem, g), idx, g) for g, idx in enumerate(groups) if idx]
            return gpus, [f"{self.name} rule at the budget of {G} GPUs"], None
        an = oracle.analytic if hasattr(oracle, "analytic") else oracle
        start = 1
        if isinstance(an, AnalyticCapacity):
            start = int(lower_bound(problem, an, integral=True)) if problem.n_adapters <= 2000 else 1
        return run_baseline(problem, oracle, self.name, max(1, start)), [f"{self.name}: smallest passing GPU count"], None


def _type_at(problem: Problem, g: int) -> int:
    for t in problem.gpu_types:
        if g < t.count:
            return t.index
        g -= t.count
    return problem.gpu_types[-1].index


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Milp(), Greedy(), GreedyPaper(),
                                                       *(Baseline(n) for n in BASELINES))}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}") from None


# --- min_latency ------------------------------------------------------------------------------

def latency_budget(problem: Problem, oracle: CapacityOracle) -> int:
    """The fixed GPU budget: ``solver.max_gpus``, else an explicit pool's total, else the min_gpus count."""
    if problem.solver.max_gpus is not None:
        return int(problem.solver.max_gpus)
    sc = problem.scenario
    if sc is not None and sc.pool is not None:
        return sum(t.count for t in problem.gpu_types)
    return len(greedy_improved(problem.with_objective("min_gpus"), oracle))


def balance_latency(problem: Problem, oracle: CapacityOracle, passes: int = 3) -> list[GpuAssignment]:
    """Spread load over the budget (largest load first to the least-loaded GPU, rank groups kept
    apart where possible), each GPU at the slot count with the lowest predicted ITL, then moves of
    single adapters that lower the token-weighted mean ITL."""
    G = latency_budget(problem, oracle)
    types = [_type_at(problem, g) for g in range(G)]
    order = sorted(problem.adapters, key=lambda a: (-a.rank, -a.rate_rps, a.index))
    groups: list[list[int]] = [[] for _ in range(G)]
    heap = [(0.0, g) for g in range(G)]
    for a in order:
        load, g = heapq.heappop(heap)
        groups[g].append(a.index)
        heapq.heappush(heap, (load + a.rate_rps, g))
    gpus = [_latency_gpu(problem, oracle, types[g], idx, g) for g, idx in enumerate(groups)]
    for _ in range(passes):
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
        raise Infeasible(f"min_latency: the budget of {G} GPUs cannot serve the adapters without starvation "
                         f"(raise solver.max_gpus)", "max_gpus")
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


def latency_paper(problem: Problem, oracle: CapacityOracle) -> list[GpuAssignment]:
    """Published latency variant: least summed rate over all GPUs, slots = adapters (memory-capped)."""
    G = latency_budget(problem, oracle)
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
        t = _type_at(problem, g)
        rmax = max(problem.adapters[i].rank for i in idx)
        L = max(1, min(len(idx), oracle.slot_cap(t, rmax)))
        out.append(assign_gpu(problem, oracle, t, idx, g, max_loras=L))
    return out


# --- the entry point ------------------------------------------------------------------------

def solve(problem: Problem, oracle: CapacityOracle | None = None, strategy: str | None = None,
          options: SolveOptions | None = None) -> Plan:
    """Solve ``problem`` with ``strategy`` (default: the spec's ``solver.strategy``) → :class:`Plan`.

    Raises :class:`~.problem.Infeasible` (with the binding constraint) when no plan exists.
    """
    t0 = time.perf_counter()
    name = strategy or problem.solver.strategy
    strat = get_strategy(name)
    obj = get_objective(problem.objective)
    opts = options or SolveOptions.of(problem)
    orc = oracle if oracle is not None else make_oracle(problem, "auto")
    an = orc.analytic if hasattr(orc, "analytic") else (orc if isinstance(orc, AnalyticCapacity) else
                                                         AnalyticCapacity(problem))
    if problem.n_adapters == 0:
        raise Infeasible("the spec has no adapters", "adapters")
    _precheck(problem, orc)
    weights = _weights(problem)
    if obj.name != "min_latency":
        budget = problem.gpu_budget()
        lb0 = math.ceil(volume_bound(problem, an, weights) - 1e-6)
        if obj.name == "min_gpus" and lb0 <= budget < 2 * lb0:  # the pool may bind: use the tighter bound
            lb0 = lower_bound(problem, an, weights=weights, integral=True)
        if obj.name == "min_gpus" and lb0 > budget:
            raise Infeasible(f"pool too small: at least {lb0:.0f} GPUs are needed (capacity bound), "
                             f"the pool/budget has {budget}", "pool")
    gpus, log, duals = strat.solve(problem, orc, opts)
    gpus_t = renumber(gpus)
    value = obj.value(gpus_t)
    if obj.name == "min_latency":
        lb = _latency_bound(problem, an, len(gpus_t))
    else:
        lb = lower_bound(problem, an, duals=duals, weights=weights, integral=obj.name == "min_gpus")
        if duals is not None:
            lb = max(lb, lower_bound(problem, an, weights=weights, integral=obj.name == "min_gpus"))
        if obj.name == "min_cost":
            # Any fleet has at least k GPUs (the GPU-count bound), so it costs at least the k cheapest.
            k = int(lower_bound(problem, an, integral=True))
            prices = sorted(p for t in problem.gpu_types for p in [t.cost_per_hour] * min(t.count, k))
            lb = max(lb, math.fsum(prices[:k]))
        lb = min(lb, value)  # cannot happen for a proven bound; guards float noise
    return Plan(objective=obj.name, strategy=name, gpus=gpus_t, objective_value=value, lower_bound=lb,
                solve_time_s=time.perf_counter() - t0, oracle=orc.name, log=tuple(log))


def _precheck(problem: Problem, oracle: CapacityOracle) -> None:
    """Every adapter must fit one GPU alone (load and memory), on at least one type."""
    hottest = max(problem.adapters, key=lambda a: (a.rate_rps, a.rank))
    by_rank: dict[int, Any] = {}
    for a in problem.adapters:
        if a.rank not in by_rank or a.rate_rps > by_rank[a.rank].rate_rps:
            by_rank[a.rank] = a
    for a in {hottest, *by_rank.values()}:
        if not any(oracle.best_slots(t.index, Mix.of([a])).feasible for t in problem.gpu_types):
            from .greedy import _single_adapter_infeasible
            raise _single_adapter_infeasible(problem, oracle, a)


def _latency_bound(problem: Problem, an: AnalyticCapacity, G: int) -> float:
    """Mean ITL ≥ the step time of the best configuration at load total/G (one adapter, lowest rank)."""
    if G <= 0:
        return 0.0
    lam = math.fsum(a.rate_rps for a in problem.adapters) / G
    best = math.inf
    for t in problem.gpu_types:
        pt = an.point(t.index, min(problem.ranks), 1, 1)
        best = min(best, pt.step_ms(lam))
    return best if math.isfinite(best) else 0.0
