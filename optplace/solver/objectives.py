"""Objectives registry: what a plan is scored by — by the solver's predictions and by a twin report.

* ``min_gpus`` — number of GPUs used.
* ``min_cost`` — summed ``cost_per_hour`` of the GPUs used (heterogeneous pools).
* ``min_latency`` — with a fixed GPU budget (``solver.max_gpus`` or the pool), the token-weighted
  mean inter-token latency [ms] (predicted, or measured by the twin), subject to no starvation.

``score(plan, sim_report)`` applies the same measure to the twin's report, so the twin checks what
the optimiser optimised; a starved or OOM GPU makes the score infinite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from optplace.solver.plan import GpuAssignment, Plan


@dataclass(frozen=True, slots=True)
class Objective:
    """One objective: predicted value of GPU entries, twin score, and the MILP column weight."""

    name: str
    description: str
    value: Callable[[tuple[GpuAssignment, ...]], float]
    score_report: Callable[[Plan, Any], float]
    column_weight: Callable[[float], float]  # cost_per_hour → weight of one GPU in the master
    fixed_budget: bool = False

    def score(self, plan: Plan, sim_report: Any) -> float:
        """The objective measured on a twin report (``optplace.twin.simulate.SimReport``)."""
        if any(g.starved or g.oom for g in sim_report.gpus):
            return math.inf
        return self.score_report(plan, sim_report)


def _count(gpus: tuple[GpuAssignment, ...]) -> float:
    return float(sum(1 for g in gpus if g.adapters))


def _cost(gpus: tuple[GpuAssignment, ...]) -> float:
    return math.fsum(g.cost_per_hour for g in gpus if g.adapters)


def _pred_itl(gpus: tuple[GpuAssignment, ...]) -> float:
    w = math.fsum(g.offered_tok_s for g in gpus if g.adapters)
    if w <= 0:
        return 0.0
    return math.fsum(g.offered_tok_s * g.predicted_itl_ms for g in gpus if g.adapters) / w


def _twin_itl(plan: Plan, rep: Any) -> float:
    w = math.fsum(g.throughput_tok_s for g in rep.gpus if math.isfinite(g.itl_ms_mean))
    if w <= 0:
        return 0.0
    return math.fsum(g.throughput_tok_s * g.itl_ms_mean for g in rep.gpus if math.isfinite(g.itl_ms_mean)) / w


def _twin_cost(plan: Plan, rep: Any) -> float:
    price = {g.gpu_type: g.cost_per_hour for g in plan.gpus}
    return math.fsum(price.get(g.gpu_type, 1.0) for g in rep.gpus if g.adapters)


OBJECTIVES: dict[str, Objective] = {
    "min_gpus": Objective("min_gpus", "fewest GPUs without starvation", _count,
                          lambda plan, rep: float(sum(1 for g in rep.gpus if g.adapters)), lambda c: 1.0),
    "min_cost": Objective("min_cost", "cheapest fleet (Σ cost_per_hour) without starvation", _cost, _twin_cost,
                          lambda c: c),
    "min_latency": Objective("min_latency", "lowest token-weighted mean ITL on a fixed GPU budget", _pred_itl,
                             _twin_itl, lambda c: 1.0, fixed_budget=True),
}


def get_objective(name: str) -> Objective:
    """The registered objective ``name``; unknown names list the valid ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}") from None
