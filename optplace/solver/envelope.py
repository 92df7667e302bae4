"""The learned SLO oracle's load envelope: what it accepts, in the analytic model's terms.

The lower bound is proven on an analytic model that contains every GPU the plan's oracle accepts
(:func:`~optplace.solver.capacity.bound_model`). For the learned oracle under the default SLO
(``surrogate+slo``) that model was the analytic one with its load relaxed by ``GUARD`` and no limit
on active adapters per slot: valid, but far from what the SLO models accept. Measured here
(llama@h100, Poisson, ShareGPT lengths), they accept 1.19 × ρ·λ* with one adapter, falling to
1.04 × at 128 distinct adapters; and with fewer slots than adapters only loads that keep the
expected active adapters near the slot count (≤ ~1.1 per slot), i.e. 2–44 % of ρ·λ*. On the
1,000-adapter uniform bench family the bound was 14 GPUs against a plan of 21.

:func:`slo_envelope` measures, for one problem (its lengths, burstiness and the SLO's load margin),
the largest load the oracle accepts on a designed set of mixes — per GPU type, max rank and number of
distinct adapters ``d`` (one adapter per slot: uniform, Zipf-1, one hot adapter, lognormal rates;
every adapter at the max rank, or one at it and the rest at the smallest) and, with fewer slots than
adapters (2 and 4 adapters per slot), the active adapters per slot at that load. The envelope is the
largest multiplier of ρ·λ* per ``d`` (interpolated between the measured counts, plus
:data:`MARGIN`, never above ``GUARD``, made non-increasing in ``d``) and the largest active
adapters per slot (plus :data:`MARGIN`): overall (κ) and per slot count, the most any sample had with
that many slots or more (``active_caps``, non-decreasing in the slots). The SLO models keep ~1.1
active adapters per slot on 12–64 slots but only ~0.75–0.8 on 96–192 (llama, the 10,000-adapter
lognormal fleet): one κ would let the bound crowd a GPU's 200–380 adapters onto fewer slots than the
models allow.

The oracle then *enforces* the envelope (its guard is the enveloped analytic model), so the bound on
that model is proven for every plan the oracle judges by construction, whatever the sample missed; a
mix the sample did not foresee, accepted by the SLO models above the envelope, is refused by the
guard (reason ``slo``). ``optplace bench surrogate`` counts, on random mixes, the
load the envelope refuses that the models accept; ``optplace bench solver``'s SLO columns print the
bound.

*Busy slots.* One rule the envelope does not learn from the SLO models: with fewer slots than adapters,
the expected number of adapters with a request in the engine, at the mix's own load, must stay below
the slot count (:data:`BUSY_PER_SLOT`). The SLO models accept mixes far beyond it, and the twin finds
them catastrophic: on a 10,000-adapter zipf-0.9 bench family and the 10,000-adapter lognormal fleet,
every planned GPU with fewer slots than adapters (37 and 28 of them) missed the SLO, TTFT p99 of 3 s to
2 min, while every GPU with a slot per adapter met it (156 and 18). The cause is vLLM's sticky slots:
an adapter holds its slot while it has a request running, so once the active adapters outnumber the
slots, the waiting ones queue behind adapters that hardly ever go idle. Counting activity with one
request's service time *at the mix's load* (the fluid model's step time there, not at an empty
engine) separates the twin's verdicts: :func:`busy_slots` gives that count.

The queue is all or nothing, so the threshold does not depend on the TTFT bound: on the 252 mixes of
``optplace bench busy-slots`` (its per-bound lines), judged by each adapter's TTFT p99 against bounds
from 0.5 s to 30 s, the smallest busy ratio that missed was 1.01–1.03 at every bound and none at or
below 0.9 missed; judged by each adapter's median against 0.3–5 s, 1.03 too. So an oracle without SLO
models, under another SLO that bounds each adapter's TTFT p99 or median (:func:`bounds_adapter_ttft`),
keeps the rule too (``SurrogateCapacity``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


#: Relative margin added to every measured figure. None: the oracle enforces the envelope, so a margin
#: buys plans no validity, only mixes the SLO models accept a little beyond the sampled maximum (a count
#: between two measured ones, a shape not sampled), and it costs the bound the same share of every GPU.
#: Measured on the twelve 1,000- and 10,000-adapter bench families (``solve --no-validate``), 0.02 → 0:
#: bounds +1 to +4 GPUs on eight (unchanged on four), plans unchanged on eleven, +1 GPU (186 → 187)
#: on one.
MARGIN = 0.0
#: Expected active adapters per slot allowed with fewer slots than adapters, activity counted at the
#: mix's load (:func:`busy_slots`). Measured in the twin by ``optplace bench busy-slots --full`` (896
#: one-GPU mixes: 16–192 slots, 1.3–6 adapters per slot, uniform / Zipf / one-hot / lognormal rates,
#: ranks 8/16/32, loads 0.3–0.9 × ρ·λ*): the mixes that met the SLO reach 1.10 busy adapters per slot,
#: those that missed it (TTFT p99 up to minutes) start at 0.925; in the band 0.90–0.95, 2 of 22 missed
#: it; of the 261 below 0.90 none did, but for two "served nothing" misses (one light adapter had a
#: request and none completed in the window, the GPU's TTFT p99 0.2–0.3 s). Plans pack GPUs up to the
#: rule's edge, so it sits below that band.
BUSY_PER_SLOT = 0.9
#: Distinct adapter counts measured (others are interpolated): the slot grid, thinned where capacity
#: varies slowly with the count.
COUNTS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
#: Adapters per slot sampled below one slot per adapter.
PER_SLOT: tuple[int, ...] = (2, 4)
#: Coarse load scales (× ρ·λ* of the configuration) tried before refining above the largest accepted:
#: this many, geometric from this floor to the throughput guard.
_COARSE_POINTS, _COARSE_FLOOR = 24, 1e-3
#: Refinement above the largest accepted coarse scale: rounds, and parts each round splits the interval
#: into (the coarse step of 36 % shrinks to 36 % / 8³ ≈ 0.07 %).
_ROUNDS, _SPLIT = 3, 8


@dataclass(frozen=True, slots=True)
class LoadEnvelope:
    """A learned oracle's upper envelope in the analytic model's terms (see :mod:`.envelope`): per GPU
    type and max rank, the largest multiplier of ρ·λ* it accepts with ``d`` distinct adapters in the
    batch (``factors[(type, rank)][d - 1]``, non-increasing in ``d``), and the largest number of active
    adapters per slot it accepts when slots are fewer than adapters (``kappa``)."""

    factors: dict[tuple[int, int], tuple[float, ...]]
    kappa: float
    #: the factor of a (type, rank) the envelope did not measure (the oracle's plain load guard)
    default: float
    #: per (type, rank), the most active adapters allowed with ``slots`` slots (``[slots - 1]``), fewer
    #: slots than adapters; at most ``kappa × slots``, non-decreasing in the slots
    active_caps: dict[tuple[int, int], tuple[float, ...]] = field(default_factory=dict)
    #: with fewer slots than adapters, the most active adapters per slot at the mix's own load
    #: (:func:`busy_slots`); None: no such rule
    busy_per_slot: float | None = None
    #: the rates × this when the busy-slot rule counts activity: the oracle's SLO load scale (the plan is
    #: checked at the rates × (1 + the SLO's headroom))
    busy_load_scale: float = 1.0

    def factor(self, gtype: int, rank_max: int, distinct: int) -> float:
        """The load multiplier with ``distinct`` adapters in the batch (counts beyond the table: its last)."""
        f = self.factors.get((gtype, rank_max))
        if not f:
            return self.default
        return f[min(max(int(distinct), 1), len(f)) - 1]

    def active_cap(self, gtype: int, rank_max: int, slots: int) -> float:
        """The most active adapters allowed with ``slots`` slots (``kappa × slots`` where not measured)."""
        caps = self.active_caps.get((gtype, rank_max))
        cap = self.kappa * slots
        if caps and slots <= len(caps):
            cap = min(caps[max(int(slots), 1) - 1], cap)
        # activity at low load is at most activity at any load: the busy-slot rule bounds it too
        return cap if self.busy_per_slot is None else min(cap, self.busy_per_slot * slots)

    def min_kappa(self) -> float:
        """The smallest active adapters per slot allowed anywhere (for the bound model's name)."""
        least = min((c[L - 1] / L for c in self.active_caps.values() for L in range(1, len(c) + 1)), default=self.kappa)
        return least if self.busy_per_slot is None else min(least, self.busy_per_slot)

    def min_factor(self) -> float:
        """The smallest load multiplier of any (type, rank) and count (for the bound model's name)."""
        return min((min(f) for f in self.factors.values() if f), default=self.default)

    def max_factor(self) -> float:
        """The largest load multiplier of any (type, rank) and count (for the bound model's name)."""
        return max((max(f) for f in self.factors.values() if f), default=self.default)


def _shapes(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Rate shapes of ``n`` adapters (each sums to 1): uniform, Zipf-1, one adapter with half the load,
    lognormal (σ = 1.35, the spread of the bench's heavy-tailed fleet)."""
    out = [np.ones(n), 1.0 / np.arange(1, n + 1)]
    if n > 1:
        out.append(np.r_[float(n - 1), np.ones(n - 1)])
        out.append(rng.lognormal(0.0, 1.35, n))
    return [s / s.sum() for s in out]


class _Case:
    """One sampled mix: unit rates, ranks, slots, its reference rate ρ·λ* (req/s), its rates there and
    its feature row there."""

    __slots__ = ("unit", "ranks", "slots", "ref", "rates", "row")

    def __init__(self, oracle: Any, unit: np.ndarray, ranks: list[int], slots: int, ref: float) -> None:
        from optplace.surrogate.features import feature_row_from_parts

        st = oracle.problem.stats
        self.unit, self.ranks, self.slots, self.ref = unit, ranks, slots, ref
        self.rates = unit * ref
        self.row = feature_row_from_parts(
            self.rates, ranks, slots, st.mean_input_tokens, st.mean_output_tokens, st.arrival_cv, st.burst_factor
        )


def _accepts(oracle: Any, gtype: int, cases: list[_Case], scales: list[np.ndarray]) -> list[np.ndarray]:
    """The learned models' verdicts (``SurrogateCapacity.learned_accept_many``) on each case at its total
    rates ``scale × ref``; one batch of predictions."""
    from optplace.surrogate.features import scaled_rows

    k = oracle.slo_load_scale
    # each case's rows at its scales and, for the SLO models, at those scales × the SLO's load margin
    both = [scaled_rows(c.row, c.rates, np.concatenate([x, x * k])) for c, x in zip(cases, scales)]
    X = np.vstack([b[: x.size] for b, x in zip(both, scales)])
    Xs = np.vstack([b[x.size :] for b, x in zip(both, scales)])
    ok = oracle.learned_accept_many(gtype, X, Xs)
    return np.split(ok, np.cumsum([x.size for x in scales])[:-1])


def _largest(oracle: Any, gtype: int, cases: list[_Case], top: float) -> np.ndarray:
    """Per case, the largest scale (× its ``ref``) accepted: the largest coarse scale accepted, then
    refined towards the next coarse scale (the largest point accepted in each round's split of the
    interval); 0 when none is accepted."""
    grid = np.geomspace(_COARSE_FLOOR, top, _COARSE_POINTS)
    coarse = _accepts(oracle, gtype, cases, [grid] * len(cases))
    lo = np.zeros(len(cases))
    hi = np.zeros(len(cases))
    for j, ok in enumerate(coarse):
        if ok.any():
            i = int(np.flatnonzero(ok)[-1])
            lo[j] = grid[i]
            hi[j] = grid[i + 1] if i + 1 < len(grid) else grid[i]
    todo = np.flatnonzero(hi > lo)
    for _ in range(_ROUNDS):
        if todo.size == 0:
            break
        # _SPLIT − 1 interior points per interval: the interval shrinks _SPLIT-fold per round
        idx = [int(j) for j in todo]
        pts = [lo[j] + (hi[j] - lo[j]) * np.arange(1, _SPLIT) / _SPLIT for j in idx]
        for j, p, ok in zip(idx, pts, _accepts(oracle, gtype, [cases[j] for j in idx], pts)):
            step = (hi[j] - lo[j]) / _SPLIT
            if ok.any():
                lo[j] = p[np.flatnonzero(ok)[-1]]
            hi[j] = lo[j] + step
    return lo


def slo_envelope(oracle: Any, guard: float, rotation: float, seed: int = 0, busy: bool = True) -> LoadEnvelope:
    """The envelope of ``oracle`` (a :class:`~optplace.solver.capacity.SurrogateCapacity` judging an SLO:
    with its SLO models, or with the throughput models' ITL cap) for its problem (see the module
    docstring), within its throughput guard ``guard`` (largest load factor) and with the analytic
    model's rotation loss ``rotation``, with the busy-slot rule when ``busy``; the lognormal shapes are
    drawn from ``seed``."""
    prob = oracle.problem
    an = oracle.analytic
    rng = np.random.default_rng([seed, 0xE4E1])
    rmin = min(prob.ranks) if prob.ranks else 8
    factors: dict[tuple[int, int], tuple[float, ...]] = {}
    per_count: dict[tuple[int, int], tuple[list[int], np.ndarray]] = {}
    kappa = 0.0
    for gtype, rmax, cap, n_avail in an.rank_families():
        top = min(cap, n_avail)
        counts = sorted({c for c in COUNTS if c <= top} | {top})
        # (count index, active adapters per slot at the accepted load — None: one slot per adapter)
        cases: list[_Case] = []
        where: list[tuple[int, int | None]] = []
        for j, d in enumerate(counts):
            ref = an.rho * an.point(gtype, rmax, d, d).lam_max_rps
            rank_sets = [[rmax] * d] + ([[rmax] + [rmin] * (d - 1)] if rmin < rmax and d > 1 else [])
            for unit in _shapes(d, rng):
                for ranks in rank_sets:
                    cases.append(_Case(oracle, unit, ranks, d, ref))
                    where.append((j, None))
            for k in PER_SLOT:
                if k * d <= n_avail:
                    for unit in _shapes(k * d, rng):
                        cases.append(_Case(oracle, unit, [rmax] * (k * d), d, ref))
                        where.append((j, d))
        raw = np.zeros(len(counts))
        amax = np.zeros(len(counts))  # the most active adapters per slot accepted at each slot count
        for case, (j, slots), x in zip(cases, where, _largest(oracle, gtype, cases, guard)):
            if x <= 0.0:
                continue
            if slots is None:
                raw[j] = max(raw[j], x)
                continue
            service = an.point(gtype, rmax, slots, slots).service_s
            per_slot = an.active(list(case.unit * x * case.ref), service) / slots
            kappa = max(kappa, per_slot)
            amax[j] = max(amax[j], per_slot)
            # the guard's load rule there carries the rotation loss: measure against it
            raw[j] = max(raw[j], x * (1.0 + rotation * per_slot))
        dense = np.interp(np.arange(1, cap + 1), counts, raw)
        f = np.minimum(dense * (1.0 + MARGIN), guard)
        f = np.maximum.accumulate(f[::-1])[::-1]  # non-increasing in d: never below a larger count's
        factors[(gtype, rmax)] = tuple(float(v) for v in f)
        per_count[(gtype, rmax)] = (counts, amax)
    # no sample below one slot per adapter (a single adapter): κ = 1, the analytic default
    kappa = kappa * (1.0 + MARGIN) if kappa > 0 else 1.0
    caps = {k: _active_caps(c, a, len(factors[k]), kappa) for k, (c, a) in per_count.items()}
    return LoadEnvelope(factors, kappa, guard, caps, BUSY_PER_SLOT if busy else None, float(oracle.slo_load_scale))


def bounds_adapter_ttft(scenario: Any) -> bool:
    """Whether ``scenario`` (a :class:`~optplace.specs.model.Scenario`, or None) judges each adapter's own
    requests and bounds some adapter's TTFT (p99 or median): the SLOs a sticky-slot queue breaks. Not
    under ``slo: none`` nor with ``scope: gpu``, where a few cold adapters' waits hide in the GPU's tail."""
    slo = getattr(scenario, "slo", None)
    if slo is None or slo.scope != "adapter":
        return False
    per = scenario.adapter_slos() or ()
    return any(b.ttft_p99_ms is not None or b.ttft_p50_ms is not None for b in per)


#: Under an SLO the SLO models did not learn, a bound on an adapter's TPOT p99, mean ITL or ITL p99 as a
#: multiple of the mean ITL the throughput surrogate predicts for its GPU: the twin's worst adapter over the
#: prediction, at the 90th percentile of ``optplace bench latency-rule``'s one-GPU mixes (llama@h100,
#: a slot per adapter, 8–192 adapters, loads 0.3–1.05 × ρ·λ*). A GPU whose prediction × this exceeds the
#: bound is refused (:func:`itl_cap_ms`): the one mix in ten beyond it is left to the twin's repair, and a
#: larger multiple would refuse most GPUs that meet the bound.
ITL_MULTIPLE: dict[str, float] = {"tpot_p99_ms": 1.53, "itl_mean_ms": 1.11, "itl_p99_ms": 2.01}


def itl_cap_ms(scenario: Any) -> float:
    """The largest predicted mean ITL [ms] a GPU may have under ``scenario``'s SLO (:data:`ITL_MULTIPLE`):
    the strictest of every adapter's TPOT / ITL bounds over its multiple; inf without such a bound. The
    same under ``scope: gpu``: a GPU's figures over all its requests sit below its worst adapter's."""
    cap = math.inf
    for bounds in (scenario.adapter_slos() if scenario is not None else None) or ():
        for metric, mult in ITL_MULTIPLE.items():
            b = getattr(bounds, metric)
            if b is not None:
                cap = min(cap, float(b) / mult)
    return cap


def busy_slots(rates: np.ndarray, point: Any) -> float:
    """Expected adapters with a request in the engine at the mix's own load: Σ 1 − exp(−λᵢ·T) with T one
    request's service time at the fluid point ``point`` (a :class:`~optplace.twin.fluid.FluidPoint`)
    loaded with the mix's total rate (:meth:`~optplace.twin.fluid.FluidPoint.service_at`); inf beyond
    the point's capacity."""
    service = point.service_at(float(np.sum(rates)))
    if not math.isfinite(service):
        return math.inf
    return float(np.sum(-np.expm1(-np.asarray(rates, dtype=float) * service)))


def _active_caps(counts: list[int], amax: np.ndarray, cap: int, kappa: float) -> tuple[float, ...]:
    """The most active adapters allowed with L = 1 … ``cap`` slots: per slot, the most any sampled mix had
    at its accepted load with this many slots *or more* (+ :data:`MARGIN`; ``kappa`` above the largest
    count with a sample), so the cap never refuses a sampled mix and never falls with the slots;
    between measured counts the lower count's (the larger); then made non-decreasing in the slots."""
    per = np.full(len(counts), kappa)
    seen = 0.0
    for j in range(len(counts) - 1, -1, -1):  # the most per slot at this count or any larger one
        if amax[j] > 0:
            seen = max(seen, amax[j] * (1.0 + MARGIN))
        if seen > 0:
            per[j] = min(seen, kappa)
    out = np.empty(cap)
    for L in range(1, cap + 1):
        j = int(np.searchsorted(counts, L, side="right")) - 1  # counts[j] <= L
        out[L - 1] = per[max(j, 0)] * L
    return tuple(float(v) for v in np.maximum.accumulate(out))
