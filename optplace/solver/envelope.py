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
adapters per slot (plus :data:`MARGIN`).

The oracle then *enforces* the envelope (its guard is the enveloped analytic model), so the bound on
that model is proven for every plan the oracle judges by construction, whatever the sample missed; a
mix the sample did not foresee, accepted by the SLO models above the envelope, is refused by the
guard (reason ``load`` or ``slots``). ``optplace bench solver`` shows the effect on plans and
bounds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optplace.solver.capacity import GUARD, ROTATION, AnalyticCapacity, LoadEnvelope

#: Relative margin added to every measured figure: the sample's load scale is refined to ~0.1 %,
#: and a mix between two measured adapter counts is interpolated.
MARGIN = 0.02
#: Distinct adapter counts measured (others are interpolated): the slot grid, thinned where capacity
#: varies slowly with the count.
COUNTS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
#: Adapters per slot sampled below one slot per adapter.
PER_SLOT: tuple[int, ...] = (2, 4)
#: Coarse load scales (× ρ·λ* of the configuration) tried before refining above the largest accepted.
_COARSE = np.geomspace(1e-3, GUARD, 24)
#: Refinement above the largest accepted coarse scale: rounds, and parts each round splits the interval
#: into (the coarse step of 36 % shrinks to 36 % / 8³ ≈ 0.07 %).
_ROUNDS, _SPLIT = 3, 8


def _shapes(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Rate shapes of ``n`` adapters (each sums to 1): uniform, Zipf-1, one adapter with half the load,
    lognormal (σ = 1.35, the spread of the bench's heavy-tailed fleet)."""
    out = [np.ones(n), 1.0 / np.arange(1, n + 1)]
    if n > 1:
        out.append(np.r_[float(n - 1), np.ones(n - 1)])
        out.append(rng.lognormal(0.0, 1.35, n))
    return [s / s.sum() for s in out]


class _Case:
    """One sampled mix: unit rates, ranks, slots, its reference rate ρ·λ* (req/s) and feature row there."""

    __slots__ = ("unit", "ranks", "slots", "ref", "row")

    def __init__(self, oracle: Any, unit: np.ndarray, ranks: list[int], slots: int, ref: float) -> None:
        from optplace.surrogate.features import feature_row_from_parts

        st = oracle.problem.stats
        self.unit, self.ranks, self.slots, self.ref = unit, ranks, slots, ref
        self.row = feature_row_from_parts(
            unit * ref, ranks, slots, st.mean_input_tokens, st.mean_output_tokens, st.arrival_cv, st.burst_factor
        )


def _accepts(oracle: Any, gtype: int, cases: list[_Case], scales: list[np.ndarray]) -> list[np.ndarray]:
    """The oracle's verdicts without its guard (surrogate starvation and loss, then the SLO models at
    the SLO's load margin) on each case at its total rates ``scale × ref``; one batch of predictions."""
    from optplace.surrogate.features import scaled_rows

    prob = oracle.problem
    k = oracle.slo_load_scale
    # each case's rows at its scales and, for the SLO models, at those scales × the SLO's load margin
    both = [scaled_rows(c.row, c.unit * c.ref, np.concatenate([x, x * k])) for c, x in zip(cases, scales)]
    X = np.vstack([b[: x.size] for b, x in zip(both, scales)])
    Xs = np.vstack([b[x.size :] for b, x in zip(both, scales)])
    thr, starved = oracle.surrogates[gtype].capacity_many(X)
    offered = np.array([prob.offered_tok_s(r) for r in np.concatenate([c.ref * x for c, x in zip(cases, scales)])])
    loss = 1.0 - np.divide(thr, offered, out=np.ones_like(thr), where=offered > 0)
    ok = ~starved & (loss < prob.constraints.max_throughput_loss) & oracle.slo_models[gtype].meets_many(Xs)
    return np.split(ok, np.cumsum([x.size for x in scales])[:-1])


def _largest(oracle: Any, gtype: int, cases: list[_Case]) -> np.ndarray:
    """Per case, the largest scale (× its ``ref``) accepted: the largest coarse scale accepted, then
    refined towards the next coarse scale (the largest point accepted in each round's split of the
    interval); 0 when none is accepted."""
    coarse = _accepts(oracle, gtype, cases, [_COARSE] * len(cases))
    lo = np.zeros(len(cases))
    hi = np.zeros(len(cases))
    for j, ok in enumerate(coarse):
        if ok.any():
            i = int(np.flatnonzero(ok)[-1])
            lo[j] = _COARSE[i]
            hi[j] = _COARSE[i + 1] if i + 1 < len(_COARSE) else _COARSE[i]
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


def slo_envelope(oracle: Any, seed: int = 0) -> LoadEnvelope:
    """The envelope of ``oracle`` (a :class:`~optplace.solver.capacity.SurrogateCapacity` with SLO
    models) for its problem (see the module docstring); the lognormal shapes are drawn from ``seed``."""
    prob = oracle.problem
    an: AnalyticCapacity = oracle.analytic
    rng = np.random.default_rng([seed, 0xE4E1])
    rmin = min(prob.ranks) if prob.ranks else 8
    factors: dict[tuple[int, int], tuple[float, ...]] = {}
    kappa = 0.0
    for t in prob.gpu_types:
        for rmax in prob.ranks:
            cap = an.slot_cap(t.index, rmax)
            n_avail = sum(1 for a in prob.adapters if a.rank <= rmax)
            if cap < 1 or n_avail < 1:
                continue
            top = min(cap, n_avail)
            counts = sorted({c for c in COUNTS if c <= top} | {top})
            # (count index, active adapters per slot at the accepted load — None: one slot per adapter)
            cases: list[_Case] = []
            where: list[tuple[int, int | None]] = []
            for j, d in enumerate(counts):
                ref = an.rho * an.point(t.index, rmax, d, d).lam_max_rps
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
            for case, (j, slots), x in zip(cases, where, _largest(oracle, t.index, cases)):
                if x <= 0.0:
                    continue
                if slots is None:
                    raw[j] = max(raw[j], x)
                    continue
                service = an.point(t.index, rmax, slots, slots).service_s
                per_slot = an.active(list(case.unit * x * case.ref), service) / slots
                kappa = max(kappa, per_slot)
                # the guard's load rule there carries the rotation loss: measure against it
                raw[j] = max(raw[j], x * (1.0 + ROTATION * per_slot))
            dense = np.interp(np.arange(1, cap + 1), counts, raw)
            f = np.minimum(dense * (1.0 + MARGIN), GUARD)
            f = np.maximum.accumulate(f[::-1])[::-1]  # non-increasing in d: never below a larger count's
            factors[(t.index, rmax)] = tuple(float(v) for v in f)
    kappa = kappa * (1.0 + MARGIN) if kappa > 0 else 1.0
    if not math.isfinite(kappa):
        kappa = float(prob.n_adapters + 1)
    return LoadEnvelope(factors, kappa, f"the SLO models' envelope on {len(factors)} (type, rank) pairs")
