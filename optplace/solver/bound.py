"""Lower bounds on the objective, reported with every solve.

Two bounds, both *proven for the analytic capacity model* (:class:`~optplace.solver.capacity.AnalyticCapacity`,
which every oracle uses as its model of a GPU's limits):

* :func:`volume_bound` — total offered load ÷ the largest usable capacity of any one GPU
  configuration (weighted by price for ``min_cost``).
* :func:`lagrangian_bound` — the Lagrangian (Farley) bound of the pattern master: for class duals
  π ≥ 0 (from the MILP's column generation, or load-proportional by default), every GPU configuration
  family (type, max rank, slot interval, slot rule) is relaxed to a 2-constraint fractional knapsack
  whose optimum is bounded above through its LP dual at any multipliers; ``θ = min_t w_t / max π·a``
  scales π to dual feasibility and ``θ·π·n`` is a lower bound. Adapters enter at their *own* rates
  (binned downwards), so the bound holds for the real adapters, not just class representatives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .capacity import ROTATION, SLOT_GRID, AnalyticCapacity
from .problem import Problem


@dataclass(frozen=True, slots=True)
class Family:
    """One relaxed configuration family: Σ w1·a ≤ c1 (load, req/s), Σ w2·a ≤ c2 (count or activity)."""

    gtype: int
    rank_max: int
    kind: str            # "all" (every adapter has a slot) | "rot" (slots < adapters, activity rule)
    slots: int
    c1: float
    c2: float
    service_s: float     # for kind "rot": activity p = 1 − exp(−rate · service_s)
    slope: float = 0.0   # for kind "rot": load + slope·activity ≤ c1 (chord of the rotation loss)


def families(problem: Problem, an: AnalyticCapacity) -> list[Family]:
    """Every configuration family of the analytic model, relaxed (see the module docstring)."""
    out: list[Family] = []
    for t in problem.gpu_types:
        for rmax in problem.ranks:
            cap = an.slot_cap(t.index, rmax)
            # No GPU holds more adapters (of ranks ≤ rmax) than exist: larger slot counts are pointless.
            n_avail = sum(1 for a in problem.adapters if a.rank <= rmax)
            grid = [L for L in SLOT_GRID if L <= min(cap, n_avail)]
            for k, L in enumerate(grid):
                lam, svc = an.linear_limits(t.index, rmax, L)
                # "all": n adapters with n ∈ [L, next grid value) slots each; capacity at d = L is the largest.
                n_hi = (grid[k + 1] - 1) if k + 1 < len(grid) else cap
                out.append(Family(t.index, rmax, "all", L, lam, float(n_hi), svc))
                # "rot": exactly L slots, active adapters A ≤ κ·L; the rotation loss
                # load ≤ λ*/(1 + ROTATION·A/L) is convex in A, so its chord from A = 0 to κL bounds it
                # from above: load + slope·A ≤ λ* is a valid linear relaxation.
                kl = an.kappa * L
                slope = (lam - lam / (1.0 + ROTATION * an.kappa)) / kl
                out.append(Family(t.index, rmax, "rot", L, lam, kl, svc, slope))
    return out


def _knapsack_ub(values: np.ndarray, w1: np.ndarray, c1: float, w2: np.ndarray, c2: float,
                 ub: np.ndarray) -> float:
    """Upper bound on max Σ v·a, Σ w1·a ≤ c1, Σ w2·a ≤ c2, 0 ≤ a ≤ ub, via its LP dual (convex in y2,
    exact in y1 by the fractional-knapsack rule); valid at whatever y2 the search stops."""
    return _knapsack_ub_y(values, w1, c1, w2, c2, ub)[0]


def _dp_ub(values: np.ndarray, w1: np.ndarray, c1: float, ub: np.ndarray, units: int = 120) -> float:
    """Upper bound on the *integer* bounded knapsack max Σ v·a, Σ w1·a ≤ c1, 0 ≤ a ≤ ub (a ∈ ℤ).

    Items of at least one unit u = c1/units go into a dynamic programme over floor(w1/u) units (weights
    rounded down: a relaxation); items lighter than u fill the rest of the capacity fractionally:
    with k units used by the big items their real load is ≥ k·u, so the small ones get ≤ c1 − k·u.
    """
    pos = values > 0
    v, w, n = values[pos], w1[pos], ub[pos]
    if v.size == 0 or c1 <= 0:
        return float(np.sum(v[w <= 0] * n[w <= 0])) if v.size else 0.0
    u = c1 / units
    big = w >= u
    free = w <= 0
    base = float(np.sum(v[free] * n[free]))
    sm = ~big & ~free
    # g(r): fractional value of the small items within load r (concave, piecewise linear).
    sv, sw, sn = v[sm], w[sm], n[sm]
    order = np.argsort(-(sv / np.where(sw > 0, sw, 1.0))) if sv.size else np.array([], dtype=int)
    cum_w = np.concatenate([[0.0], np.cumsum((sw * sn)[order])])
    cum_v = np.concatenate([[0.0], np.cumsum((sv * sn)[order])])
    f = np.full(units + 1, -np.inf)
    f[0] = 0.0
    for vi, wi, ni in zip(v[big], w[big], n[big]):
        k = int(wi // u)
        cnt = int(ni)
        step = 1
        while cnt > 0:  # binary splitting of the bounded count
            take = min(step, cnt)
            wk, vk = k * take, vi * take
            if wk <= units:
                cand = np.full(units + 1, -np.inf)
                cand[wk:] = f[: units + 1 - wk] + vk
                f = np.maximum(f, cand)
            cnt -= take
            step *= 2
    f = np.maximum.accumulate(f)
    rem = np.maximum(c1 - np.arange(units + 1) * u, 0.0)
    g = np.interp(rem, cum_w, cum_v) if sv.size else np.zeros(units + 1)
    return base + float(np.max(f + g))


def _refined_ub(values: np.ndarray, w1: np.ndarray, c1: float, w2: np.ndarray, c2: float, ub: np.ndarray) -> float:
    """min over y2 ∈ {0, the LP's y2} of c2·y2 + integer-knapsack bound of (v − y2·w2) on the load."""
    frac, y2 = _knapsack_ub_y(values, w1, c1, w2, c2, ub)
    best = frac
    for y in {0.0, y2}:
        best = min(best, c2 * y + _dp_ub(values - y * w2, w1, c1, ub))
    return best


def _knapsack_ub_y(values: np.ndarray, w1: np.ndarray, c1: float, w2: np.ndarray, c2: float,
                   ub: np.ndarray) -> tuple[float, float]:
    pos = values > 0
    if not pos.any():
        return 0.0, 0.0
    v, a1, a2, n = values[pos], w1[pos], w2[pos], ub[pos]

    def g(y2: float) -> float:
        vv = v - a2 * y2
        m = vv > 0
        if not m.any():
            return c2 * y2
        vv, aa, nn = vv[m], a1[m], n[m]
        free = aa <= 0
        base = float(np.sum(nn[free] * vv[free]))  # zero-load items: no y1 can price them out
        vv, aa, nn = vv[~free], aa[~free], nn[~free]
        if vv.size == 0:
            return c2 * y2 + base
        ratio = vv / aa
        order = np.argsort(-ratio)
        cum = np.cumsum((nn * aa)[order])
        j = int(np.searchsorted(cum, c1, side="right"))
        y1 = 0.0 if j >= order.size else float(ratio[order[j]])
        return c1 * y1 + c2 * y2 + base + float(np.sum(nn * np.maximum(0.0, vv - aa * y1)))

    hi = float(np.max(v / np.where(a2 > 0, a2, np.inf))) if np.any(a2 > 0) else 0.0
    if hi <= 0:
        return g(0.0), 0.0
    g0, gh = g(0.0), g(hi)
    best, y_best = (g0, 0.0) if g0 <= gh else (gh, hi)
    a, b = 0.0, hi
    for _ in range(10):
        m1, m2 = a + (b - a) / 3, b - (b - a) / 3
        g1, g2 = g(m1), g(m2)
        if g1 < best:
            best, y_best = g1, m1
        if g2 < best:
            best, y_best = g2, m2
        if g1 <= g2:
            b = m2
        else:
            a = m1
        if b - a < 1e-9 * max(1.0, hi):
            break
    return best, y_best


def adapter_bins(problem: Problem, class_of: Sequence[int], width: float = 0.005
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Adapters binned by (class, rank, rate rounded *down* to a ``width`` geometric grid):
    (class index, rank, rate, count) arrays."""
    step = math.log1p(width)
    bins: dict[tuple[int, int, float], int] = {}
    for a, c in zip(problem.adapters, class_of):
        r = 0.0 if a.rate_rps <= 0 else math.exp(math.floor(math.log(a.rate_rps) / step) * step)
        r = min(r, a.rate_rps)
        key = (int(c), a.rank, r)
        bins[key] = bins.get(key, 0) + 1
    keys = sorted(bins)
    return (np.array([k[0] for k in keys], dtype=np.int64), np.array([k[1] for k in keys], dtype=np.int64),
            np.array([k[2] for k in keys], dtype=float), np.array([bins[k] for k in keys], dtype=float))


def lagrangian_bound(problem: Problem, an: AnalyticCapacity, duals: Sequence[float] | None = None,
                     weights: Sequence[float] | None = None, classes: Sequence[Any] | None = None,
                     refine: int = 40) -> float:
    """θ·π·n for duals π of ``classes`` (default: the problem's classes, π = representative rate)."""
    classes = problem.classes if classes is None else classes
    class_of = [0] * problem.n_adapters
    for c in classes:
        for i in c.members:
            class_of[i] = c.index
    cls, ranks, rates, counts = adapter_bins(problem, class_of)
    pi = np.asarray(duals if duals is not None else [c.rate_rps for c in classes], dtype=float)
    pi = np.maximum(pi, 0.0)
    v = pi[cls]
    total = float(np.sum(v * counts))
    if total <= 0:
        return 0.0
    w = list(weights) if weights is not None else [1.0] * len(problem.gpu_types)
    theta = math.inf
    best_by_type: dict[int, float] = {}
    # Fractional (LP) bounds for every family, then integer-knapsack refinement of the largest ones
    # until the maximum per GPU type is a refined value (or the refinement budget is spent).
    entries: list[list[Any]] = []
    for f in families(problem, an):
        ok = ranks <= f.rank_max
        w2 = np.ones_like(rates) if f.kind == "all" else -np.expm1(-rates * f.service_s)
        w1 = rates + f.slope * w2
        # Integer counts: at most ⌊c/w⌋ copies of an adapter bin fit.
        with np.errstate(divide="ignore", invalid="ignore"):
            fit = np.minimum(np.where(w1 > 0, np.floor(f.c1 / w1 + 1e-9), np.inf),
                             np.where(w2 > 0, np.floor(f.c2 / w2 + 1e-9), np.inf))
        vals, ubs = np.where(ok, v, 0.0), np.minimum(counts, fit)
        entries.append([_knapsack_ub(vals, w1, f.c1, w2, f.c2, ubs), False, f, vals, w1, w2, ubs])
    for gt in {e[2].gtype for e in entries}:
        mine = [e for e in entries if e[2].gtype == gt]
        for _ in range(refine):
            top = max(mine, key=lambda e: e[0])
            if top[1]:
                break
            f = top[2]
            top[0] = min(top[0], _refined_ub(top[3], top[4], f.c1, top[5], f.c2, top[6]))
            top[1] = True
        best_by_type[gt] = max(e[0] for e in mine)
    for t, m in best_by_type.items():
        if m > 0:
            theta = min(theta, w[t] / m)
    if not math.isfinite(theta):
        return 0.0
    return theta * total


def volume_bound(problem: Problem, an: AnalyticCapacity, weights: Sequence[float] | None = None) -> float:
    """Σ offered ÷ the best usable capacity per unit weight (any type, slots and max rank)."""
    w = list(weights) if weights is not None else [1.0] * len(problem.gpu_types)
    best = 0.0
    rmin = min(problem.ranks) if problem.adapters else 8
    for t in problem.gpu_types:
        lam, _ = an.linear_limits(t.index, rmin, 1)
        best = max(best, lam / w[t.index] if w[t.index] > 0 else math.inf)
    total = math.fsum(a.rate_rps for a in problem.adapters)
    return total / best if best > 0 else math.inf


def lower_bound(problem: Problem, an: AnalyticCapacity, duals: Any = None,
                weights: Sequence[float] | None = None, integral: bool = True) -> float:
    """The best of the volume and Lagrangian bounds (rounded up when the objective counts GPUs).
    Memoised on the analytic model object (the bound depends only on it, the duals and weights)."""
    cache = an.__dict__.setdefault("_lb_cache", {})
    key = (id(problem), None if duals is None else tuple(tuple(np.round(np.asarray(d, float), 12)) for d in duals[1]),
           None if weights is None else tuple(weights), integral)
    if key not in cache:
        cache[key] = _lower_bound(problem, an, duals, weights, integral)
    return cache[key]


def _lower_bound(problem: Problem, an: AnalyticCapacity, duals: Any,
                 weights: Sequence[float] | None, integral: bool) -> float:
    """``duals``: None or (classes, [π, …]) from the MILP's column generation (best bound of them)."""
    lb = volume_bound(problem, an, weights)
    if duals is None:
        lb = max(lb, lagrangian_bound(problem, an, None, weights))
    else:
        classes, pis = duals
        for pi in pis:
            lb = max(lb, lagrangian_bound(problem, an, pi, weights, classes))
    if problem.n_adapters > 0:
        lb = max(lb, min(weights) if weights else 1.0)
    return float(math.ceil(lb - 1e-6)) if integral else lb
