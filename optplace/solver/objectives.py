"""Objectives: what a plan is scored by, and everything a solve does differently for it.

Each objective is one class registered in :data:`optplace.infra.registry.OBJECTIVES` (the spec's
``objective:`` is checked against that registry), and carries its own behaviour, so adding one is
one file with one ``@OBJECTIVES.register("name")`` class:

* ``value`` / ``score_report`` — the measure on the solver's predictions and on a twin report
  (``score`` makes a starved or OOM GPU infinite), so the twin checks what the optimiser optimised;
* budget handling — ``fixed_budget``: plan on a fixed GPU budget (``solver.max_gpus`` or the pool)
  instead of minimising GPUs; the spec check then requires a budget and the strategies place over it;
* GPU-type choice in the greedy (``type_preference``) and the MILP column weight (``column_weight``);
* bounds — ``precheck`` (reject a pool before solving), ``plan_bound`` (the proven lower bound
  reported with the plan), ``integral`` (bounds on a count round up).

Built in:

* ``min_gpus`` — number of GPUs used.
* ``min_cost`` — summed ``cost_per_hour`` of the GPUs used (heterogeneous pools).
* ``min_latency`` — with a fixed GPU budget, the token-weighted mean inter-token latency [ms]
  (predicted, or measured by the twin), subject to no starvation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from optplace.infra.registry import OBJECTIVES
from optplace.solver.bound import lower_bound, lp_bound_seconds, volume_bound
from optplace.solver.capacity import AnalyticCapacity, CapacityOracle
from optplace.solver.plan import GpuAssignment, Plan
from optplace.solver.problem import Deadline, Infeasible, Problem

__all__ = ["OBJECTIVES", "Objective", "BoundContext", "get_objective"]


@dataclass(frozen=True, slots=True)
class BoundContext:
    """What the final bound of a solve may use: the oracle, its analytic model and the model the
    bound is valid on (None: no such model), the column weights, the MILP's duals, the time left."""

    problem: Problem
    oracle: CapacityOracle
    analytic: AnalyticCapacity
    model: AnalyticCapacity | None
    model_name: str
    weights: list[float]
    duals: Any
    deadline: Deadline
    gpus_used: int
    value: float


class Objective:
    """Base objective (a GPU-count-like measure to minimise); subclasses override what differs."""

    name: str = ""
    description: str = ""
    #: Plans on a fixed GPU budget (``solver.max_gpus``, else an explicit pool) instead of minimising
    #: the fleet: the spec check asks for a budget, the strategies place over it, no rebalancing.
    fixed_budget: bool = False
    #: The value is a count: lower bounds round up.
    integral: bool = False

    def value(self, gpus: tuple[GpuAssignment, ...]) -> float:
        """The objective on the solver's predictions for GPU entries."""
        raise NotImplementedError

    def score_report(self, plan: Plan, rep: Any) -> float:
        """The objective measured on a twin report (no GPU starved or OOM)."""
        raise NotImplementedError

    def score(self, plan: Plan, sim_report: Any) -> float:
        """The objective measured on a twin report (``optplace.twin.simulate.SimReport``); inf when a
        GPU starved, ran out of memory or missed the SLO."""
        if any(g.starved or g.oom or g.slo_violated for g in sim_report.gpus):
            return math.inf
        return self.score_report(plan, sim_report)

    def column_weight(self, cost_per_hour: float) -> float:
        """Weight of one GPU of a type in the MILP master and the bounds."""
        return 1.0

    #: The greedy compares GPU types by :meth:`type_preference` for each GPU (else it takes the first
    #: type in pool order that takes adapters).
    compares_gpu_types: bool = False

    def type_preference(self, adapters: int, load_rps: float, cost_per_hour: float) -> float:
        """How much the greedy likes filling one GPU of a type with ``adapters`` adapters (``load_rps``
        in total); the largest wins."""
        return float(adapters)

    def round_bound(self, lb: float) -> float:
        """A bound rounded to what the objective can take (up to an integer for a count)."""
        return float(math.ceil(lb - 1e-6)) if self.integral else lb

    def precheck(
        self, problem: Problem, model: AnalyticCapacity | None, weights: list[float], deadline: Deadline
    ) -> None:
        """Raise :class:`~.problem.Infeasible` before solving when the pool cannot hold any plan."""

    def trivial_bound(self, problem: Problem) -> float:
        """What holds for any oracle: a plan with adapters uses at least one GPU."""
        return 1.0

    def model_bound(self, ctx: BoundContext) -> tuple[float, list[str]]:
        """The proven lower bound on ``ctx.model``: the volume bound always; the LP bound with what is
        left of the deadline (it stops there with the best valid bound so far)."""
        assert ctx.model is not None
        problem, an = ctx.problem, ctx.model
        lb = self.round_bound(volume_bound(problem, an, ctx.weights))
        need = lp_bound_seconds(problem.n_adapters)
        if not ctx.deadline.affords(need):
            why = f"the LP bound needs ~{need:.1f} s, {max(0.0, ctx.deadline.remaining()):.1f} s left"
            # No time for a new LP, but what this solve's earlier phases (the early bound) proved on this
            # model is memoised there: asked with a spent deadline, the LP bound starts nothing new.
            done = lower_bound(problem, an, weights=ctx.weights, integral=self.integral, deadline=ctx.deadline.until(0))
            if done > lb:
                return done, [f"bound: the LP bound an earlier phase proved on this model ({why} for more)"]
            return lb, [f"bound: volume bound only ({why})"]
        lb = max(
            lb,
            lower_bound(
                problem, an, duals=ctx.duals, weights=ctx.weights, integral=self.integral, deadline=ctx.deadline
            ),
        )
        return lb, []

    def plan_bound(self, ctx: BoundContext) -> tuple[float, str, list[str]]:
        """``(bound, name of the model it holds on, log lines)`` reported with a plan."""
        if ctx.model is None:
            return self.trivial_bound(ctx.problem), ctx.model_name, []
        lb, log = self.model_bound(ctx)
        return lb, ctx.model_name, log


def get_objective(name: str) -> Objective:
    """The registered objective ``name``; an unknown name (a ValueError) lists the registered ones."""
    return OBJECTIVES.get(name)


def _used(gpus: tuple[GpuAssignment, ...]) -> list[GpuAssignment]:
    return [g for g in gpus if g.adapters]


@OBJECTIVES.register("min_gpus")
class MinGpus(Objective):
    description = "fewest GPUs without starvation"
    integral = True

    def value(self, gpus):
        return float(len(_used(gpus)))

    def score_report(self, plan, rep):
        return float(sum(1 for g in rep.gpus if g.adapters))

    def precheck(self, problem, model, weights, deadline):
        budget = problem.gpu_budget()
        lb0 = self.round_bound(volume_bound(problem, model, weights)) if model is not None else 1
        if model is not None and lb0 <= budget < 2 * lb0:  # the pool may bind: a tighter bound decides
            lb0 = lower_bound(problem, model, weights=weights, integral=True, deadline=deadline.part(0.2))
        if lb0 > budget:
            raise Infeasible(
                f"pool too small: at least {lb0:.0f} GPUs are needed (capacity bound), the pool/budget has {budget}",
                "pool",
            )


@OBJECTIVES.register("min_cost")
class MinCost(Objective):
    description = "cheapest fleet (Σ cost_per_hour) without starvation"
    compares_gpu_types = True

    def value(self, gpus):
        return math.fsum(g.cost_per_hour for g in _used(gpus))

    def score_report(self, plan, rep):
        price = {g.gpu_type: g.cost_per_hour for g in plan.gpus}
        return math.fsum(price.get(g.gpu_type, 1.0) for g in rep.gpus if g.adapters)

    def column_weight(self, cost_per_hour):
        return cost_per_hour

    def type_preference(self, adapters, load_rps, cost_per_hour):
        # Served load per unit of price; a free GPU type is the cheapest per load whatever it carries.
        return load_rps / cost_per_hour if cost_per_hour > 0 else math.inf

    def trivial_bound(self, problem):
        return min(t.cost_per_hour for t in problem.gpu_types)

    def model_bound(self, ctx):
        lb, log = Objective.model_bound(self, ctx)
        problem, an = ctx.problem, ctx.model
        if not log and ctx.deadline.affords(lp_bound_seconds(problem.n_adapters)):
            # Any fleet has at least k GPUs (the GPU-count bound), so it costs at least the k cheapest.
            k = int(lower_bound(problem, an, integral=True, deadline=ctx.deadline))
            prices = sorted(p for t in problem.gpu_types for p in [t.cost_per_hour] * min(t.count, k))
            lb = max(lb, math.fsum(prices[:k]))
        return lb, log


@OBJECTIVES.register("min_latency")
class MinLatency(Objective):
    description = "lowest token-weighted mean ITL on a fixed GPU budget"
    fixed_budget = True

    def value(self, gpus):
        used = _used(gpus)
        w = math.fsum(g.offered_tok_s for g in used)
        return math.fsum(g.offered_tok_s * g.predicted_itl_ms for g in used) / w if w > 0 else 0.0

    def score_report(self, plan, rep):
        ok = [g for g in rep.gpus if math.isfinite(g.itl_ms_mean)]
        w = math.fsum(g.throughput_tok_s for g in ok)
        return math.fsum(g.throughput_tok_s * g.itl_ms_mean for g in ok) / w if w > 0 else 0.0

    def plan_bound(self, ctx):
        lb = latency_bound(ctx.problem, ctx.analytic, ctx.gpus_used)
        if isinstance(ctx.oracle, AnalyticCapacity):
            return lb, "analytic step time (predicted ITL)", []
        # The ITL bound is the analytic model's; a surrogate/twin predicts ITL on its own, so it bounds
        # none of that oracle's plans, whether or not this plan's prediction happens to lie above it
        # (quickstart at 3 GPUs: milp's surrogate ITL 28.6 ms is below the analytic bound 29.1 ms).
        return (
            0.0,
            "none (the analytic ITL bound does not hold for the oracle's predictions)",
            [
                f"bound: the analytic ITL bound ({lb:.3g} ms) does not bound the {ctx.oracle.name} oracle's "
                f"predicted mean ITL ({ctx.value:.3g} ms here); reporting 0"
            ],
        )


def latency_bound(problem: Problem, an: AnalyticCapacity, G: int) -> float:
    """Mean ITL ≥ the step time of the best configuration at load total/G (one adapter, lowest rank)."""
    if G <= 0:
        return 0.0
    lam = math.fsum(a.rate_rps for a in problem.adapters) / G
    best = math.inf
    for t in problem.gpu_types:
        pt = an.point(t.index, min(problem.ranks), 1, 1)
        best = min(best, pt.step_ms(lam))
    return best if math.isfinite(best) else 0.0
