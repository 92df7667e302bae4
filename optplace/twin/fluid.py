"""The fluid model of one vLLM engine: a closed-form steady state of the twin's step-time model.

With arrival rate λ, mean input I and output O tokens, a step with N running sequences and P prefill
tokens lasts ``h = a0 + aN·N + aP·P``; in steady state ``N = λ·O·h`` and ``P = λ·I·h``, so
``h = a0 / (1 − λ·(aN·O + aP·I))``. The capacity λ* is the largest λ for which the token budget,
``max_num_seqs`` and the KV cache hold. It lives in the twin layer because both the solver's analytic
capacity oracle and the surrogate's derived features are built on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FluidPoint:
    """The fluid model of one (type, max rank, distinct adapters, slots) configuration."""

    a0_ms: float  # step time with an empty batch [ms]
    slope_ms: float  # aN·O + aP·I: extra step time per (req/ms) of arrival rate
    lam_max_rps: float  # capacity λ* [req/s]
    service_s: float  # one request's time in the engine at low load [s]
    kv_tokens: int

    def step_ms(self, lam_rps: float) -> float:
        x = lam_rps * 1e-3 * self.slope_ms
        return self.a0_ms / (1.0 - x) if x < 1.0 else math.inf

    def service_at(self, lam_rps: float) -> float:
        """One request's time in the engine [s] with the engine loaded at ``lam_rps``: the low-load
        service time stretched by the step time there over the empty engine's; inf beyond the point
        where the step time diverges."""
        h = self.step_ms(lam_rps)
        return self.service_s * h / self.a0_ms if math.isfinite(h) else math.inf


def fluid_constants(
    step: Any,
    ovh: Any,
    rank_max: int,
    distinct: int,
    slots: int,
    I: float,
    O: float,
    kv: int,
    budget: int,
    max_seqs: int,
) -> tuple[float, float, float, float]:
    """The fluid model of one engine configuration: (empty-batch step a0 [ms], slope aN·O + aP·I [ms per
    req/ms], capacity λ* [req/s], one request's service time at low load [s]). ``step``/``ovh``: the
    profile's step-time (bound as the caller wants) and scheduler-overhead models; ``kv``: KV tokens;
    ``budget``/``max_seqs``: ``max_num_batched_tokens`` / ``max_num_seqs``. Shared by
    :class:`optplace.solver.capacity.AnalyticCapacity` and the surrogate's derived features
    (``optplace.surrogate.physics``)."""
    ctx = I + 0.5 * O  # mean KV tokens a decoding request attends over

    def h(n: int, pf: int) -> float:
        return step.step_ms(n, pf, n, distinct, float(rank_max), n * ctx) + ovh.overhead_ms(n, 0, slots, slots)

    a0 = h(0, 0)
    aN = (h(1000, 0) - a0) / 1000.0
    aP = (h(0, 1000) - a0) / 1000.0
    slope = max(aN * O + aP * I, 1e-9)
    a0 = max(a0, 1e-6)
    # λ in req/ms: h = a0/(1 − λ·slope); budget λ(I+O)h ≤ B; seqs λ·O·h ≤ S; KV λ·O·h·(I+O) ≤ kv.
    limits = [
        1.0 / slope,
        budget / ((I + O) * a0 + budget * slope),
        max_seqs / (O * a0 + max_seqs * slope),
        kv / (O * (I + O) * a0 + kv * slope) if kv > 0 else 0.0,
    ]
    lam = max(min(limits), 0.0) * 1e3
    # A request's service time: its decode steps plus one prefill step, at low load.
    service = (O + 1.0) * h(1, int(min(I, budget))) * 1e-3
    return a0, slope, lam, service
