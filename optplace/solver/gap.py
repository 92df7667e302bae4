"""How full a plan's GPUs are under its oracle, and how far the bound's model reaches beyond it.

For every GPU of the plan, the largest multiple of its load (every adapter's rate scaled alike) that
(a) the plan's capacity oracle and (b) the model the bound is proven on accept, at their best slot
counts. ``1 / scale`` is the share of a GPU, filled to what that model accepts for this very mix,
that the GPU's load takes; summed over the plan it is the plan's load in *full GPUs* of that model:

* ``oracle_gpus / gpus`` — how full the plan's GPUs are under their own oracle (``fill``);
* ``oracle_gpus − model_gpus`` — the load, in GPUs, the bound's model accepts on the plan's mixes
  beyond what the oracle does (``model_excess``: for the default SLO, the SLO models' envelope
  against the models themselves). A bound on a model that accepts this much more cannot be tighter
  than about ``oracle_gpus − model_excess`` by packing the plan's own mixes.

Both are measured on the plan's own mixes with the adapters fixed (scaling load is not adding an
adapter: a GPU whose load could grow 5 % may still not take one more adapter, so ``fill`` below 1
does not by itself mean a better plan exists); a diagnostic, not a proof. Only for objectives that
count GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from optplace.solver.capacity import CapacityOracle, Mix
from optplace.solver.problem import Problem

#: Bisection steps on a GPU's load scale after bracketing: the scale is found to ~0.1 %.
STEPS = 11
#: Largest load multiple tried (a GPU's load this far below what a model accepts is reported at it).
MAX_SCALE = 8.0


@dataclass(frozen=True, slots=True)
class GapShares:
    """A plan's GPUs and bound, and its load in full GPUs of its oracle and of the bound's model."""

    gpus: int
    bound: float
    oracle_gpus: float
    model_gpus: float

    @property
    def fill(self) -> float:
        """The plan's load as a share of what its oracle accepts on its GPUs' mixes."""
        return self.oracle_gpus / self.gpus if self.gpus else 1.0

    @property
    def model_excess(self) -> float:
        """GPUs' worth of load the bound's model accepts on the plan's mixes beyond the oracle."""
        return self.oracle_gpus - self.model_gpus

    def to_json(self) -> dict[str, float]:
        return {
            "gpus": self.gpus,
            "bound": self.bound,
            "oracle_gpus": round(self.oracle_gpus, 3),
            "model_gpus": round(self.model_gpus, 3),
            "fill": round(self.fill, 4),
            "model_excess_gpus": round(self.model_excess, 3),
        }


def largest_scale(model: CapacityOracle, gtype: int, mix: Mix, max_loras: int | None = None) -> float:
    """The largest multiple of ``mix``'s rates (≤ :data:`MAX_SCALE`) ``model`` accepts on one GPU of type
    ``gtype`` at its best slot count, or at ``max_loras`` slots when given (bisection; 0 when not even
    a thousandth of the load fits)."""

    def ok(s: float) -> bool:
        scaled = Mix(mix.ranks, tuple(r * s for r in mix.rates))
        if max_loras is not None:
            return model.evaluate(gtype, scaled, max_loras).feasible
        return model.best_slots(gtype, scaled).feasible

    lo, hi = 0.0, 1.0
    while ok(hi):
        lo, hi = hi, hi * 2.0
        if lo >= MAX_SCALE:
            return MAX_SCALE
    if lo == 0.0:
        lo = 1e-3
        if not ok(lo):
            return 0.0
    for _ in range(STEPS):
        mid = math.sqrt(lo * hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def predicted_headroom(problem: Problem, oracle: CapacityOracle, plan: Any, judged_at: float = 1.0) -> list[float]:
    """Per used GPU of ``plan`` (in :func:`~optplace.solver.plan.gpu_plans` order), the extra load share
    ``oracle`` predicts the GPU takes at its own slot count: the largest accepted multiple of its load
    times ``judged_at`` (the load the oracle's verdict stands for, ``1 + slo.headroom`` when the
    oracle plans the SLO margin in), minus 1; negative when the oracle refuses the stated load. The
    twin's headroom search starts from it."""
    out = []
    for g in plan.gpus:
        if g.adapters:
            mix = Mix.of(problem.adapters[i] for i in g.adapter_indices)
            out.append(largest_scale(oracle, g.type_index, mix, g.max_loras) * judged_at - 1.0)
    return out


def attribute_gap(problem: Problem, oracle: CapacityOracle, model: Any, plan: Any) -> GapShares:
    """``plan``'s load in full GPUs of its oracle and of the bound's model (see the module docstring):
    ``plan`` solved on ``problem`` (the problem as split, with its replicas) with ``oracle``, its bound
    proven on ``model``."""
    used = [g for g in plan.gpus if g.adapter_indices]
    full: list[float] = [0.0, 0.0]
    for g in used:
        # a replica's item already carries its share of the adapter's rate
        mix = Mix.of(problem.adapters[i] for i in g.adapter_indices)
        for k, m in enumerate((oracle, model)):
            s = largest_scale(m, g.type_index, mix)
            full[k] += 1.0 / s if s > 0 else 1.0
    return GapShares(len(used), float(plan.lower_bound), full[0], full[1])
