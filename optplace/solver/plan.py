"""The solver's result: a frozen :class:`Plan` (per-GPU entries, bound, gap, log) and its JSON form.

Per GPU the published system's outputs: ``max_loras`` (slots), ``max_cpu_loras`` = max(adapters
placed, slots), ``max_lora_rank`` = the largest rank placed, plus the oracle's predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from optplace.solver.capacity import CapacityOracle, Estimate, Mix
from optplace.solver.problem import Problem
from optplace.twin.simulate import GpuConfig, placement_entries, route_slices


@dataclass(frozen=True, slots=True)
class GpuAssignment:
    """One GPU of a plan."""

    gpu: int
    gpu_type: str
    type_index: int
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    adapters: tuple[str, ...]
    adapter_indices: tuple[int, ...]
    offered_tok_s: float
    predicted_throughput_tok_s: float
    predicted_itl_ms: float
    predicted_ttft_p99_ms: float
    capacity_tok_s: float
    feasible: bool
    reason: str = "ok"
    cost_per_hour: float = 1.0
    #: Per entry of ``adapter_indices``, the share of the adapter's requests placed here (empty: every
    #: adapter whole; a hot adapter's replicas carry 1/k each).
    shares: tuple[float, ...] = ()

    def entries(self) -> tuple[tuple[str, float], ...]:
        """(adapter, share) per adapter on this GPU, two replicas of one adapter merged into one entry."""
        shares = self.shares or (1.0,) * len(self.adapters)
        out: dict[str, float] = {}
        for name, share in zip(self.adapters, shares, strict=True):
            out[name] = out.get(name, 0.0) + share
        # every replica of an adapter on this one GPU: the whole adapter (1/k summed k times may round)
        return tuple((n, 1.0 if math.isclose(x, 1.0) else x) for n, x in out.items())

    @property
    def config(self) -> GpuConfig:
        """This GPU's configuration (what the twin simulates and vLLM is started with)."""
        names, shares = zip(*self.entries()) if self.adapters else ((), ())
        # replicas that all landed on this GPU add up to whole adapters: the plain configuration
        whole = all(x == 1.0 for x in shares)
        return GpuConfig(self.gpu_type, self.max_loras, self.max_cpu_loras, names, () if whole else shares)

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "gpu_type": self.gpu_type,
            "max_loras": self.max_loras,
            "max_cpu_loras": self.max_cpu_loras,
            "max_lora_rank": self.max_lora_rank,
            # a replica is {name, share}; a whole adapter stays a bare name
            "adapters": placement_entries(self.entries()),
            "offered_tok_s": _r(self.offered_tok_s),
            "predicted_throughput_tok_s": _r(self.predicted_throughput_tok_s),
            "predicted_itl_ms": _r(self.predicted_itl_ms),
            "predicted_ttft_p99_ms": _r(self.predicted_ttft_p99_ms),
            "capacity_tok_s": _r(self.capacity_tok_s),
        }


def _r(x: float) -> float | None:
    return round(float(x), 3) if math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class Plan:
    """A placement with its objective value, proven lower bound, gap and solver log."""

    objective: str
    strategy: str
    gpus: tuple[GpuAssignment, ...]
    objective_value: float
    lower_bound: float
    solve_time_s: float
    oracle: str = "analytic"
    log: tuple[str, ...] = field(default_factory=tuple)
    #: The capacity model ``lower_bound`` is proven for (``bound_model`` in capacity.py): "analytic", the
    #: relaxed analytic model containing the oracle's accepted GPUs, or "none …" (trivial bound).
    lower_bound_model: str = "analytic"
    #: The phases the clock cut (:attr:`~.problem.Deadline.cuts`), in order; empty: every phase ran to its
    #: end, so the plan is the same on every run.
    cut_by_time_limit: tuple[str, ...] = ()

    @property
    def gpus_used(self) -> int:
        return sum(1 for g in self.gpus if g.adapters)

    @property
    def gap(self) -> float:
        """(objective − bound) / objective (0 when the bound is met)."""
        if self.objective_value <= 0 or not math.isfinite(self.objective_value):
            return 0.0 if self.objective_value == self.lower_bound else math.inf
        return max(0.0, (self.objective_value - self.lower_bound) / self.objective_value)

    @property
    def feasible(self) -> bool:
        return all(g.feasible for g in self.gpus)

    @property
    def time_limit_reached(self) -> bool:
        """The clock cut a phase of the solve (at ``solver.time_limit_s`` or at that phase's share of it;
        :attr:`cut_by_time_limit`), or the solve stopped at the limit (its log says "time limit reached
        after …")."""
        return bool(self.cut_by_time_limit) or any(line.startswith("time limit reached") for line in self.log)

    @property
    def cost_per_hour(self) -> float:
        return math.fsum(g.cost_per_hour for g in self.gpus if g.adapters)

    def to_json(self) -> dict[str, Any]:
        """The ``solve --json`` document (docs/json-contracts.md), minus ``validation`` (the pipeline adds it)."""
        return {
            "objective": self.objective,
            "strategy": self.strategy,
            "gpus_used": self.gpus_used,
            "objective_value": _r(self.objective_value),
            "lower_bound": _r(self.lower_bound),
            "lower_bound_model": self.lower_bound_model,
            "gap": _r(self.gap),
            "solve_time_s": round(self.solve_time_s, 3),
            "time_limit_reached": self.time_limit_reached,
            "cut_by_time_limit": list(self.cut_by_time_limit),
            "cost_per_hour": _r(self.cost_per_hour),
            "oracle": self.oracle,
            "placement": [g.to_json() for g in self.gpus if g.adapters],
        }

    def with_(self, **kw: Any) -> "Plan":
        return replace(self, **kw)


def assign_gpu(
    problem: Problem,
    oracle: CapacityOracle,
    gtype: int,
    indices: Sequence[int],
    gpu: int = 0,
    max_loras: int | None = None,
) -> GpuAssignment:
    """Build one GPU entry for adapters ``indices`` on type ``gtype`` (best slots unless given)."""
    ads = [problem.adapters[i] for i in indices]
    ads.sort(key=lambda a: (-a.rate_rps, a.index))
    mix = Mix.of(ads)
    t = problem.gpu_types[gtype]
    if not ads:
        return GpuAssignment(gpu, t.name, gtype, 1, 1, 8, (), (), 0.0, 0.0, 0.0, 0.0, 0.0, True, "ok", t.cost_per_hour)
    est = oracle.best_slots(gtype, mix) if max_loras is None else oracle.evaluate(gtype, mix, max_loras)
    return from_estimate(problem, gtype, [a.index for a in ads], est, gpu)


def from_estimate(problem: Problem, gtype: int, indices: Sequence[int], est: Estimate, gpu: int) -> GpuAssignment:
    t = problem.gpu_types[gtype]
    ads = [problem.adapters[i] for i in indices]
    L = int(est.max_loras)
    return GpuAssignment(
        gpu=gpu,
        gpu_type=t.name,
        type_index=gtype,
        max_loras=L,
        max_cpu_loras=max(len(ads), L),
        max_lora_rank=max(a.rank for a in ads),
        adapters=tuple(a.name for a in ads),
        adapter_indices=tuple(a.index for a in ads),
        offered_tok_s=est.offered_tok_s,
        predicted_throughput_tok_s=est.throughput_tok_s,
        predicted_itl_ms=est.itl_ms,
        predicted_ttft_p99_ms=est.ttft_p99_ms,
        capacity_tok_s=est.capacity_tok_s if not math.isnan(est.capacity_tok_s) else est.throughput_tok_s,
        feasible=est.feasible,
        reason=est.reason,
        cost_per_hour=t.cost_per_hour,
        shares=tuple(a.share for a in ads) if any(a.share != 1.0 for a in ads) else (),
    )


def renumber(gpus: Sequence[GpuAssignment]) -> tuple[GpuAssignment, ...]:
    """Drop empty GPUs, order by type then load (hottest first), number 0..n−1."""
    keep = [g for g in gpus if g.adapters]
    keep.sort(key=lambda g: (g.type_index, -g.offered_tok_s, g.adapter_indices))
    return tuple(replace(g, gpu=i) for i, g in enumerate(keep))


def gpu_plans(plan: Plan) -> list[GpuConfig]:
    """The configurations of the plan's used GPUs (for ``optplace.twin.simulate.simulate_plan``), each
    replica with its slice of the routing draw."""
    return list(route_slices([g.config for g in plan.gpus if g.adapters]))
