"""Lower bounds on the objective, reported with every solve.

All bounds are *proven for the analytic capacity model they are given* (an
:class:`~optplace.solver.capacity.AnalyticCapacity`, any ρ and κ). ``strategies.solve`` passes the model
valid for the plan's oracle (:func:`~optplace.solver.capacity.bound_model`): the analytic oracle itself,
for a surrogate/twin oracle the relaxed model (load × ``GUARD``) that contains every GPU those
oracles accept, and for the surrogate oracle under the default SLO the SLO models' envelope (a load
multiplier per distinct-adapter count and an active-adapters-per-slot limit,
:mod:`~optplace.solver.envelope`), which that oracle enforces — so the reported bound is a bound for
the plan's own problem, and
``lower_bound ≤ objective_value`` holds by construction (``Plan.lower_bound_model`` names the model):

* :func:`lp_bound` — the main one: the Farley bound of the pattern (cutting-stock) LP over *relaxed*
  configuration families (exactly n adapters each with a slot; or a slot interval with the rotation
  rule's chord), adapters at their own rates binned downwards, with duals from the compact LP solved by
  HiGHS with families added lazily. Valid at every iteration (see its docstring for the argument);
  equal to the LP value once no family prices out. :func:`cached_lp_bound` runs it on coarse rate
  grids first (each a proven bound; the best is kept), so a short deadline at 10,000 adapters still
  gets one within a GPU of the finest grid's. On the bench's 1,000-adapter Zipf families it
  proves the MILP's plans optimal (bound 22 / 23 = plan; the volume + Lagrangian bound gave 19 / 19).
* :func:`volume_bound` — total offered load ÷ the largest usable capacity of any one GPU
  configuration (weighted by price for ``min_cost``).
* :func:`lagrangian_bound` — the earlier Lagrangian (Farley) bound over grid families with given class
  duals (used by the MILP's early stop, and by :func:`lower_bound` only when the LP bound was cut short
  by its deadline): every family relaxed to a 2-constraint fractional knapsack bounded through its LP
  dual, refined by a dynamic programme for the largest ones; ``θ = min_t w_t / max π·a`` and ``θ·π·n``.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np

from optplace.solver.capacity import ROTATION, SLOT_GRID, AnalyticCapacity
from optplace.solver.problem import Problem


@dataclass(frozen=True, slots=True)
class Family:
    """One relaxed configuration family: Σ w1·a ≤ c1 (load, req/s), Σ w2·a ≤ c2 (count or activity)."""

    gtype: int
    rank_max: int
    kind: str  # "all" (every adapter has a slot) | "rot" (slots < adapters, activity rule)
    slots: int
    c1: float
    c2: float
    service_s: float  # for kind "rot": activity p = 1 − exp(−rate · service_s)
    slope: float = 0.0  # for kind "rot": load + slope·activity ≤ c1 (chord of the rotation loss)


def families(problem: Problem, an: AnalyticCapacity) -> list[Family]:
    """Every configuration family of the analytic model, relaxed (see the module docstring)."""
    out: list[Family] = []
    for gtype, rmax, cap, n_avail in an.rank_families():
        # No GPU holds more adapters (of ranks ≤ rmax) than exist: larger slot counts are pointless.
        grid = [L for L in SLOT_GRID if L <= min(cap, n_avail)]
        for k, L in enumerate(grid):
            lam, svc = an.linear_limits(gtype, rmax, L)
            # "all": n adapters with n ∈ [L, next grid value) slots each; capacity at d = L is the largest.
            n_hi = (grid[k + 1] - 1) if k + 1 < len(grid) else cap
            out.append(Family(gtype, rmax, "all", L, lam, float(n_hi), svc))
            # "rot": exactly L slots, active adapters A ≤ their cap K(L) (κ·L, or the envelope's); the
            # rotation loss load ≤ λ*/(1 + ROTATION·A/L) is convex in A, so its chord from A = 0 to K(L)
            # bounds it from above: load + slope·A ≤ λ* is a valid linear relaxation.
            kl = an.active_cap(gtype, rmax, L)
            slope = (lam - lam / (1.0 + ROTATION * kl / L)) / kl
            out.append(Family(gtype, rmax, "rot", L, lam, kl, svc, slope))
    return out


def _knapsack_ub(values: np.ndarray, w1: np.ndarray, c1: float, w2: np.ndarray, c2: float, ub: np.ndarray) -> float:
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


def _knapsack_ub_y(
    values: np.ndarray, w1: np.ndarray, c1: float, w2: np.ndarray, c2: float, ub: np.ndarray
) -> tuple[float, float]:
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


def adapter_bins(
    problem: Problem, class_of: Sequence[int], width: float = 0.005
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
    return (
        np.array([k[0] for k in keys], dtype=np.int64),
        np.array([k[1] for k in keys], dtype=np.int64),
        np.array([k[2] for k in keys], dtype=float),
        np.array([bins[k] for k in keys], dtype=float),
    )


def lagrangian_bound(
    problem: Problem,
    an: AnalyticCapacity,
    duals: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
    classes: Sequence[Any] | None = None,
    refine: int = 40,
) -> float:
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
            fit = np.minimum(
                np.where(w1 > 0, np.floor(f.c1 / w1 + 1e-9), np.inf),
                np.where(w2 > 0, np.floor(f.c2 / w2 + 1e-9), np.inf),
            )
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


def lp_bound_seconds(n_adapters: int) -> float:
    """Time the LP bound needs for its first full round (measured 0.4 / 2.0 / 2.7 s at 1k / 10k / 100k
    adapters, `optplace bench limits` family, loaded 2-core machine; +30 %). It stops within ~0.2 s of
    its deadline whatever that is, but with less than a round it proves little: then it is not started
    and the volume bound stands."""
    return 1.3 * min(0.4 + 1.6e-4 * n_adapters, 3.0)


def volume_bound(problem: Problem, an: AnalyticCapacity, weights: Sequence[float] | None = None) -> float:
    """Σ offered ÷ the best usable capacity per unit weight (any type, slots and max rank)."""
    w = list(weights) if weights is not None else [1.0] * len(problem.gpu_types)
    best = 0.0
    ranks = problem.ranks if problem.adapters else (8,)
    for t in problem.gpu_types:
        # one adapter at the smallest rank has the largest λ*; a load envelope may favour another rank
        lam = max(an.linear_limits(t.index, r, 1)[0] for r in ranks)
        best = max(best, lam / w[t.index] if w[t.index] > 0 else math.inf)
    total = math.fsum(a.rate_rps for a in problem.adapters)
    return total / best if best > 0 else math.inf


def lower_bound(
    problem: Problem,
    an: AnalyticCapacity,
    duals: Any = None,
    weights: Sequence[float] | None = None,
    integral: bool = True,
    deadline: Any = None,
) -> float:
    """The best of the volume bound and the LP bound (:func:`lp_bound`), rounded up when the objective
    counts GPUs. ``duals`` (from the MILP) only matter when the LP bound stopped at ``deadline`` (anything
    with ``expired()``, e.g. :class:`~optplace.solver.problem.Deadline`): then the Lagrangian bound at them
    may be better. Memoised on the analytic model object (the bound depends only on it and the weights)."""
    key = (
        None if duals is None else tuple(tuple(np.round(np.asarray(d, float), 12)) for d in duals[1]),
        None if weights is None else tuple(weights),
        integral,
    )
    hit = _memo_get(an, "_lb_cache", problem, key)
    if hit is None:
        value, complete = _lower_bound(problem, an, duals, weights, integral, deadline)
        if not complete:
            return value  # cut short by the deadline: a later call with more time may do better
        hit = _memo_put(an, "_lb_cache", problem, key, value)
    return hit


# Bounds are memoised on the model object per problem. A problem is keyed by its identity with the
# problem itself kept in the entry: while cached it stays alive, so its ``id`` cannot be reused by
# another problem (a bare ``id`` key could hand a new problem a freed one's bound).
def _memo_get(an: AnalyticCapacity, name: str, problem: Problem, key: Any) -> Any:
    hit = an.__dict__.get(name, {}).get((id(problem), key))
    return hit[1] if hit is not None and hit[0] is problem else None


def _memo_put(an: AnalyticCapacity, name: str, problem: Problem, key: Any, value: Any) -> Any:
    an.__dict__.setdefault(name, {})[(id(problem), key)] = (problem, value)
    return value


def cached_lp_bound(
    problem: Problem,
    an: AnalyticCapacity,
    weights: Sequence[float] | None = None,
    deadline: Any = None,
    coarse_bins: int | None = None,
    enough: Callable[[float], bool] | None = None,
    integral: bool = False,
    hopeless: Callable[[float], bool] | None = None,
) -> "LpBound":
    """:func:`lp_bound` on :func:`bin_widths`' grids from coarse to fine, memoised on ``an`` per
    (problem, weights, width); a run cut short by its deadline is not memoised, so a later call with
    more time can do better.

    Every grid gives a proven bound (rates are rounded down on each), so the best of them is one. A
    finer grid is not started when, judged by the coarser run's time, it would not finish before
    ``deadline``: the coarse bound then stands. The result's ``converged`` is the finest grid's.
    ``coarse_bins``: the coarsest grid's most bins (default :data:`LP_COARSE_BINS`). ``enough``: a
    bound value that settles the caller's question (e.g. "does the bound reach this plan?"); once a
    grid's bound is enough, no finer grid is run and the result says it did not converge (a stopping
    rule's coarse answer: 2 s instead of 11 s at 10,000 adapters). ``integral``: the caller rounds the
    bound up (:func:`round_up`), so each grid's run stops once that rounding is settled (see
    :func:`lp_bound`). ``hopeless``: a bound value from which no finer grid is expected to settle the
    caller's question (see :data:`FINER_GRID_GAIN`); once a coarse grid's bound is hopeless, the finer
    ones are not run and the result says it did not converge."""
    key = (None if weights is None else tuple(weights), integral)
    best: LpBound | None = None
    last: tuple[int, float] | None = None  # (bins, seconds on the solver's slot grid) of the previous grid's run
    grids = _memo_get(an, "_grid_cache", problem, coarse_bins)
    if grids is None:  # binning 100,000 adapters takes ~0.2 s a grid: once per problem
        grids = _memo_put(an, "_grid_cache", problem, coarse_bins, _grids(problem, coarse_bins))
    for k, (width, bins) in enumerate(grids):
        n_bins = int(bins.rates.size)
        # The first of several grids is the quick bound a short deadline relies on: its rot families on
        # the solver's slot grid, as cheap as they come. Finer grids take the narrow intervals too
        # (ROT_SLOTS, up to ROT_SLOTS_COST times the time) where they fit the time left, else the
        # solver's slot grid: a finer grid on either is at least as tight as the coarse one.
        # ``narrow``: whether this grid's bound (memoised or run now) is on ROT_SLOTS
        hit, narrow = _memo_get(an, "_lp_cache", problem, (key, width, True)), True
        if hit is None:
            hit, narrow = _memo_get(an, "_lp_cache", problem, (key, width, False)), False
        if hit is None:
            narrow = not (k == 0 and len(grids) > 1)
            if best is not None and last is not None:
                left = _remaining(deadline)
                guess = last[1] * (n_bins / max(last[0], 1)) ** LP_BINS_EXPONENT
                if left is not None and narrow and ROT_SLOTS_COST * guess > left:
                    narrow = False
                if left is not None and guess > left:
                    return replace(best, converged=False)
            rot = ROT_SLOTS if narrow else SLOT_GRID
            hit = lp_bound(
                problem, an, weights, deadline=deadline, width=width, bins=bins, rot_slots=rot, integral=integral
            )
            if hit.converged:
                _memo_put(an, "_lp_cache", problem, (key, width, narrow), hit)
        last = (n_bins, hit.seconds / (ROT_SLOTS_COST if narrow else 1.0))
        best = hit if best is None or hit.value >= best.value else replace(best, converged=hit.converged)
        if not hit.converged:
            break  # the deadline passed: a finer grid would not get further
        if width != grids[-1][0] and any(q is not None and q(best.value) for q in (enough, hopeless)):
            return replace(best, converged=False)
    assert best is not None  # bin_widths gives at least the finest grid
    return best


#: The LP bound's cost grows faster than its bin count: measured on a 10,000-adapter lognormal fleet
#: (ranks 8/16/32), 489 / 1,060 / 3,228 bins took 1.6 / 3.6 / 20 s (bounds 37.5 / 38.0 / 38.2 GPUs);
#: the exponent predicts the next grid's time from the previous one's, rounded up from those.
LP_BINS_EXPONENT = 1.6
#: How much a finer rate grid raised the LP bound over the coarsest one, at most (measured 1-4 %: the
#: 10,000-adapter r8-16-32 zipf-0.9 bench family 190.3 -> 192.1 GPUs, the 10,000-adapter lognormal fleet
#: 47.1 -> 48.1 and, on the analytic model alone, 40.6 -> 42.1), with a margin: a stopping rule that asks
#: whether the bound reaches a plan does not run the finer grids when the coarse bound is further below.
FINER_GRID_GAIN = 0.10
#: Bins of the coarsest grid: up to here one run takes ≤ ~3.5 s on 2 cores (the 1,000-adapter bench
#: families need one grid), so even a short deadline gets a bound within ~1 GPU of the finest grid's.
LP_COARSE_BINS = 1000


def bin_widths(problem: Problem, coarse_bins: int | None = None) -> list[tuple[float, int]]:
    """(width, bins) of the LP bound's rate grids, coarse to fine: :data:`LP_BIN_WIDTH` and 4×
    coarser ones until one has at most ``coarse_bins`` bins (default :data:`LP_COARSE_BINS`; one grid
    when the fine one has no more)."""
    return [(w, int(b.rates.size)) for w, b in _grids(problem, coarse_bins)]


def _grids(problem: Problem, coarse_bins: int | None = None) -> list[tuple[float, Bins]]:
    """:func:`bin_widths` with each grid's bins (what :func:`lp_bound` runs on)."""
    cap = LP_COARSE_BINS if coarse_bins is None else coarse_bins
    out: list[tuple[float, Bins]] = []
    w = LP_BIN_WIDTH
    while True:
        b = rate_bins(problem, w)
        out.append((w, b))
        if b.rates.size <= cap or w >= 1.0:
            return out[::-1]
        w *= 4.0


def _lower_bound(
    problem: Problem,
    an: AnalyticCapacity,
    duals: Any,
    weights: Sequence[float] | None,
    integral: bool,
    deadline: Any = None,
) -> tuple[float, bool]:
    """(bound, whether the LP bound converged). ``duals``: None or (classes, [π, …]) from the MILP."""
    lb = volume_bound(problem, an, weights)
    lp = cached_lp_bound(problem, an, weights, deadline, integral=integral)
    lb = max(lb, lp.value)
    if not lp.converged and duals is not None and not (deadline is not None and deadline.expired()):
        classes, pis = duals
        for pi in pis:
            lb = max(lb, lagrangian_bound(problem, an, pi, weights, classes))
    if problem.n_adapters > 0:
        lb = max(lb, min(weights) if weights else 1.0)
    return (round_up(lb) if integral else lb), lp.converged


def round_up(x: float) -> float:
    """``x`` rounded up to an integer past the LP's floating-point noise (~1e-9 relative)."""
    return float(math.ceil(x - 1e-6 * max(1.0, abs(x))))


# ---------------------------------------------------------------------------------------------
# The LP (Dantzig–Wolfe) bound: the pattern LP over relaxed families, solved in its compact form


def geometric_slots(step: float, top: int = 512) -> tuple[int, ...]:
    """Every slot count to 16, then counts at most ``step`` (a ratio) apart, up to ``top``."""
    out = list(range(1, 17))
    while out[-1] < top:
        out.append(min(top, max(out[-1] + 1, int(out[-1] * step))))
    return tuple(out)


#: Where the LP bound's "rot" families (fewer slots than adapters) start their slot intervals. A family
#: stands for every slot count of its interval at once: the most capacity and the most active adapters
#: any of them allows (those of its top end), so the interval's relative width is what the bound gives
#: away. On the solver's :data:`SLOT_GRID` (intervals 6-20 % wide from 20 slots up) the 10,000-adapter
#: r8-16-32 zipf-0.9 bench family's LP bound was 182.0 GPUs (7.0 s); at most 4 % apart 183.7 (9.2 s);
#: one family per slot count 184.2 (20 s). The lognormal 10,000-adapter fleet: 39.9 -> 40.7 GPUs.
ROT_SLOTS: tuple[int, ...] = geometric_slots(1.04)
#: How much longer the LP bound takes on :data:`ROT_SLOTS` than on :data:`SLOT_GRID`, at most (measured
#: 1.65-1.7x on the 10,000-adapter lognormal fleet, with the busy-slot rule's load splits and the lazy
#: pricing of :meth:`_Pricer.price`; 1.3-2.4x before them). A finer rate grid whose LP on the narrow
#: families would not finish in the time left runs on the solver's slot grid instead: run regardless, at
#: 10,000 adapters and a 20 s limit it left the final bound no time (the volume bound's 26 GPUs where
#: the coarse grid's was 60).
ROT_SLOTS_COST = 1.8

#: Under the busy-slot rule, where the LP bound splits the load range of a family with fewer slots than
#: adapters (shares of its largest load; see :func:`_rot_rows`). Each split adds a row per family: the
#: 10,000-adapter lognormal fleet's LP bound on a 1,060-bin grid was 46.9 GPUs with two splits (0.6,
#: 0.85), 48.0 with seven, 48.8 with these eleven, 49.0 with 24 (0.4 … 0.975); its full bound went from 48
#: to 50 (plan 52). Lazy pricing (:meth:`_Pricer.price`) keeps the extra rows cheap: the 10,000-adapter
#: bench families' bounds take no longer than with two splits.
BUSY_LOAD_SHARES = (0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.96, 0.98)

#: Relative width of the rate bins of the LP bound (rates rounded *down*, so the bound stays valid).
LP_BIN_WIDTH = 0.005


@dataclass(frozen=True, slots=True)
class Bins:
    """Adapters grouped by rank and rate rounded down to a geometric grid."""

    ranks: np.ndarray
    rates: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True, slots=True)
class Group:
    """Relaxed families of one GPU type and max rank that share their items (adapters of rank ≤ rank_max).

    ``kind == "count"``: exactly ``size`` adapters, every one with a slot: Σ a = size, Σ λ·a ≤ c1.
    ``kind == "rot"``: slot counts in ``[size, size_hi]`` below the adapter count: Σ (λ + slope·p)·a ≤ c1,
    Σ p·a ≤ c2 with activity p = 1 − exp(−λ·service_s).
    """

    gtype: int
    rank_max: int
    kind: str
    size: np.ndarray
    size_hi: np.ndarray
    c1: np.ndarray
    c2: np.ndarray
    service_s: np.ndarray
    slope: np.ndarray


@dataclass(frozen=True, slots=True)
class LpBound:
    """Outcome of :func:`lp_bound`: the proven bound (Farley value) and how far the LP got."""

    value: float  # proven lower bound on Σ weights·GPUs (not rounded)
    lp_value: float  # the last restricted LP's value (see ``converged``)
    rounds: int
    families: int  # families in the compact LP at the end
    # no family priced out: value is at least the LP optimum, up to the pricing tolerance (above it where
    # the pricer's cap of a pattern's adapters per bin at the bin's count binds, which the LP lacks)
    converged: bool
    seconds: float


def rate_bins(problem: Problem, width: float = LP_BIN_WIDTH) -> Bins:
    """Adapters binned by rank and rate rounded down to a ``width`` geometric grid (never up)."""
    cls, ranks, rates, counts = adapter_bins(problem, [0] * problem.n_adapters, width)
    return Bins(ranks, rates, counts)


def relaxed_groups(problem: Problem, an: AnalyticCapacity, rot_slots: Sequence[int] = ROT_SLOTS) -> list[Group]:
    """Every GPU configuration the analytic model can accept, as relaxed families (see :func:`lp_bound`);
    the families with fewer slots than adapters start their slot intervals at ``rot_slots``."""
    out: list[Group] = []
    util = problem.serving.gpu_memory_utilization
    for gtype, rmax, cap, n_avail in an.rank_families():
        t = problem.gpu_types[gtype]
        # λ* depends on the slot count only through the KV cache (the fluid model's scheduler
        # overhead runs at slots = served), and grows with it: n adapters on L ≥ n slots are bounded
        # by λ*(n distinct, the most KV any L in [n, cap] leaves).
        kv = np.array([t.profile.kv_cache_tokens(L, rmax, util) for L in range(1, cap + 1)], dtype=float)
        best_L = np.empty(cap, dtype=np.int64)
        arg = cap
        for L in range(cap, 0, -1):
            if kv[L - 1] > kv[arg - 1]:
                arg = L
            best_L[L - 1] = arg
        N = min(cap, n_avail)
        size = np.arange(1, N + 1)
        # (1 + 1e-9): the model accepts loads up to 1e-12 relative above ρ·λ*.
        lam_n = [
            an.factor(t.index, rmax, int(n)) * an.point(t.index, rmax, int(n), int(best_L[n - 1])).lam_max_rps
            for n in size
        ]
        c1 = an.rho * np.array(lam_n) * (1 + 1e-9)
        z = np.zeros(N)
        out.append(Group(t.index, rmax, "count", size, size, c1, size.astype(float), z, z))
        if n_avail < 2:
            continue
        # Slots L < adapters: d = L distinct adapters, capacity ρ·λ*(L)/(1 + ROTATION·A/L) with A ≤ K(L)
        # active (κ·L, or the envelope's cap). Over a slot interval [lo, hi] this is at most
        # ρ·max λ*/(1 + ROTATION·A/hi), whose chord from A = 0 to K(hi) bounds it from above (it is
        # convex in A; K grows with the slots); activity uses the shortest service.
        lo_l, hi_l, c1_r, c2_r, svc_r, sl_r = [], [], [], [], [], []
        grid = [L for L in rot_slots if L <= min(cap, n_avail - 1)]
        for k, lo in enumerate(grid):
            hi = min((grid[k + 1] - 1) if k + 1 < len(grid) else min(cap, n_avail - 1), min(cap, n_avail - 1))
            pts = [an.point(t.index, rmax, L, L) for L in range(lo, hi + 1)]
            lam = an.rho * max(an.factor(t.index, rmax, L) * p.lam_max_rps for L, p in zip(range(lo, hi + 1), pts))
            lam *= 1 + 1e-9
            svc = min(p.service_s for p in pts)
            # the active-adapter cap grows with the slots: the interval's largest is at hi
            kl = an.active_cap(t.index, rmax, hi)
            for load_row, act_row, svc_row, sl in _rot_rows(an, pts, lam, kl, svc, hi):
                lo_l.append(lo)
                hi_l.append(hi)
                c1_r.append(load_row)
                c2_r.append(act_row)
                svc_r.append(svc_row)
                sl_r.append(sl)
        if lo_l:
            out.append(
                Group(
                    t.index,
                    rmax,
                    "rot",
                    np.array(lo_l),
                    np.array(hi_l),
                    np.array(c1_r),
                    np.array(c2_r),
                    np.array(svc_r),
                    np.array(sl_r),
                )
            )
    return out


def _rot_rows(
    an: AnalyticCapacity, pts: Sequence[Any], lam: float, kl: float, svc: float, hi: int
) -> list[tuple[float, float, float, float]]:
    """The relaxed rows (c1, c2, service, slope) of one slot interval with fewer slots than adapters, whose
    fluid points are ``pts``, largest load ``lam``, active cap ``kl`` (at its top ``hi`` slots) and
    shortest service ``svc``.

    Without the busy-slot rule, one row: the rotation loss's chord (see :func:`relaxed_groups`). With it
    (:data:`optplace.solver.envelope.BUSY_PER_SLOT`: activity counted at the mix's own load stays below
    busy·L), the load range is split at :data:`BUSY_LOAD_SHARES`: a GPU whose load lies in
    (s_k·lam, s_k+1·lam] has activity at its load at least the activity at s_k·lam (service grows with
    the load), so row k bounds the load by s_k+1·lam and that activity by busy·hi. Every configuration
    lies in one row, so the rows together are a relaxation, far tighter at high load than one row with
    the low-load activity. (The rows drop the rotation chord: its activity is the low-load one.)"""
    chord = (lam - lam / (1.0 + ROTATION * kl / hi)) / kl if kl > 0 else 0.0
    busy = an.envelope.busy_per_slot if an.envelope is not None else None
    if busy is None:
        return [(lam, kl, svc, chord)]
    rows = [(BUSY_LOAD_SHARES[0] * lam, kl, svc, 0.0)]
    for k, share in enumerate(BUSY_LOAD_SHARES):
        top = BUSY_LOAD_SHARES[k + 1] * lam if k + 1 < len(BUSY_LOAD_SHARES) else lam
        x = share * lam
        # the shortest service at that load over the interval's slot counts (beyond a point's capacity
        # its service is unbounded: capped, so zero rates keep zero activity)
        s = min(min(p.service_at(x), p.service_s * 1e9) for p in pts)
        rows.append((top, busy * hi, s, 0.0))
    return rows


def _y1_grid(pi: np.ndarray, w1: np.ndarray, k: int = 96) -> np.ndarray:
    """Load multipliers to try: 0 and a geometric grid over the items' value/load ratios."""
    ok = (w1 > 0) & (pi > 0)
    if not ok.any():
        return np.zeros(1)
    r = pi[ok] / w1[ok]
    lo, hi = float(r.min()) * 0.02, float(r.max()) * 1.5
    return np.concatenate([[0.0], np.geomspace(max(lo, 1e-12), max(hi, 2e-12), k)])


def _count_ub(
    pi: np.ndarray, lam: np.ndarray, cnt: np.ndarray, c1: np.ndarray, n: np.ndarray, y1s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Upper bounds on max Σ π·a, Σ λ·a ≤ c1_f, Σ a = n_f, 0 ≤ a ≤ cnt for every family f, by LP duality:
    for any y1 ≥ 0 the best y2 makes the bound c1·y1 + (sum of the n largest π − y1·λ, with multiplicity).
    Returns (bounds, the y1 attaining each)."""
    F = n.size
    best = np.full(F, np.inf)
    arg = np.zeros(F)
    total = float(cnt.sum())
    feasible = n <= total + 1e-9
    for y1 in y1s:
        v = pi - y1 * lam
        order = np.argsort(-v, kind="stable")
        sv, sc = v[order], cnt[order]
        cc = np.cumsum(sc)
        cv = np.cumsum(sv * sc)
        j = np.minimum(np.searchsorted(cc, n - 1e-9), cc.size - 1)
        top = cv[j] - (cc[j] - n) * sv[j]
        val = c1 * y1 + top
        m = val < best
        best[m] = val[m]
        arg[m] = y1
    best[~feasible] = -np.inf  # no such pattern exists: the family contributes nothing
    return best, arg


def _rot_ub_one(
    pi: np.ndarray, w1: np.ndarray, p: np.ndarray, cnt: np.ndarray, c1: float, c2: float, y1s: np.ndarray
) -> tuple[float, float]:
    """Upper bound on max Σ π·a, Σ w1·a ≤ c1, Σ p·a ≤ c2, 0 ≤ a ≤ cnt, by LP duality: for each y1 ≥ 0
    the exact best y2 ≥ 0 (a weighted quantile of the ratios (π − y1·w1)/p). Returns (bound, its y1)."""
    V = pi[None, :] - y1s[:, None] * w1[None, :]
    pos = V > 0
    free = p <= 0  # zero-rate adapters are never active: no y2 prices them
    ratio = np.where(pos & ~free[None, :], V / np.where(free, 1.0, p)[None, :], -np.inf)
    order = np.argsort(-ratio, axis=1, kind="stable")
    rs = np.take_along_axis(ratio, order, axis=1)
    wp = np.take_along_axis(np.broadcast_to(cnt * p, V.shape), order, axis=1)
    wp = np.where(np.isfinite(rs), wp, 0.0)
    cum = np.cumsum(wp, axis=1)
    j = np.argmax(cum >= c2, axis=1)
    reach = cum[np.arange(len(y1s)), j] >= c2
    y2 = np.where(reach, np.maximum(rs[np.arange(len(y1s)), j], 0.0), 0.0)
    val = c1 * y1s + c2 * y2 + np.sum(cnt[None, :] * np.maximum(0.0, V - y2[:, None] * p[None, :]), axis=1)
    k = int(np.argmin(val))
    return float(val[k]), float(y1s[k])


def _knap_ub(pi: np.ndarray, w: np.ndarray, cnt: np.ndarray, cap: float) -> float:
    """max Σ π·a, Σ w·a ≤ cap, 0 ≤ a ≤ cnt (w ≥ 0): the fractional knapsack's optimum, an upper bound on
    every family's knapsack that has this row among others (one sort instead of :func:`_rot_ub_one`'s
    one per load multiplier)."""
    gain = pi > 0
    free = gain & (w <= 0)
    total = float(np.sum(pi[free] * cnt[free]))
    take = gain & ~free
    if not take.any() or cap <= 0:
        return total
    ratio, wt, val = pi[take] / w[take], (w * cnt)[take], (pi * cnt)[take]
    order = np.argsort(-ratio, kind="stable")
    cw = np.cumsum(wt[order])
    j = int(np.searchsorted(cw, cap))
    if j >= cw.size:
        return total + float(val.sum())
    before = float(cw[j - 1]) if j > 0 else 0.0
    return total + float(np.sum(val[order][:j])) + (cap - before) * float(ratio[order][j])


def _cheap_rot_ub(pi: np.ndarray, w1: np.ndarray, p: np.ndarray, cnt: np.ndarray, c1: float, c2: float) -> float:
    """An upper bound on max Σ π·a, Σ w1·a ≤ c1, Σ p·a ≤ c2, 0 ≤ a ≤ cnt from three fractional knapsacks
    (:func:`_knap_ub`): each row alone and their normalised sum (a valid surrogate row, the one that
    counts when both rows bind, as under the busy-slot rule near a family's largest load)."""
    best = min(_knap_ub(pi, w1, cnt, c1), _knap_ub(pi, p, cnt, c2))
    if c1 > 0 and c2 > 0:
        best = min(best, _knap_ub(pi, w1 / c1 + p / c2, cnt, 2.0))
    return best


def _refine(fn: Any, a: float, b: float, f_best: float, y_best: float, iters: int = 30) -> tuple[float, float]:
    """Golden-section search of a convex function on [a, b]; every evaluation is a valid bound."""
    g = (math.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = b - g * (b - a), a + g * (b - a)
    f1, f2 = fn(x1), fn(x2)
    for _ in range(iters):
        for x, f in ((x1, f1), (x2, f2)):
            if f < f_best:
                f_best, y_best = f, x
        if f1 <= f2:
            b, x2, f2 = x2, x1, f1
            x1 = b - g * (b - a)
            f1 = fn(x1)
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + g * (b - a)
            f2 = fn(x2)
        if b - a < 1e-9 * max(1.0, abs(b)):
            break
    return f_best, y_best


class _Pricer:
    """Upper bounds on the best pattern value of every relaxed family at duals π (all valid)."""

    def __init__(self, bins: Bins, groups: Sequence[Group]) -> None:
        self.bins, self.groups = bins, groups
        self.allowed = [bins.ranks <= g.rank_max for g in groups]
        self.p = [(-np.expm1(-bins.rates[None, :] * g.service_s[:, None]) if g.kind == "rot" else None) for g in groups]
        self.last_y: dict[tuple[int, int], float] = {}  # (group, family) → its last searched load multiplier

    def price(
        self,
        pi: np.ndarray,
        hints: dict[tuple[int, int], float] | None = None,
        deadline: Any = None,
        refine_top: int = 3,
        lazy: tuple[np.ndarray, int, Collection[tuple[int, int]]] | None = None,
    ) -> list[np.ndarray] | None:
        """Per group, an upper bound per family (−inf for families no adapter set fits). ``hints``:
        load multipliers worth trying for some families (the compact LP's own, for its members).
        None when ``deadline`` passes before every group is priced (no valid bound from a part).

        ``lazy`` = (each GPU type's weight, k, the LP's members): the caller wants only the Farley
        ratio (the largest bound per weight) and the k best non-members that price out (bound above
        their weight). A family with fewer slots than adapters then first gets a cheap bound: the dual
        bound at its last searched load multiplier (the duals move little between rounds), or before it
        has one, :func:`_cheap_rot_ub`'s fractional knapsacks (one sort each). Families are then searched
        exactly (:func:`_rot_ub_one`, ~40 sorts each) in decreasing order of that bound per weight, until
        it can neither price out, nor reach the k best non-members found, nor exceed the largest ratio
        found. The rest keep their cheap bounds, so every value stays a valid bound and the caller's
        answer is the full search's: under the busy-slot rule's load splits most families stop there
        (one finest-grid LP bound of a 10,000-adapter bench family: 64 s → 6.5 s)."""
        b = self.bins
        hints = hints or {}
        out: list[np.ndarray] = []
        todo: list[tuple[int, int]] = []  # (group, family) of rot families still on their cheap bound
        exact: list[np.ndarray] = []  # per group: which families have their exact (searched) bound
        ys: list[np.ndarray] = []  # per group: the load multiplier of each exact bound
        for gi, g in enumerate(self.groups):
            if deadline is not None and deadline.expired():
                return None
            ok = self.allowed[gi]
            pi_g, lam, cnt = pi[ok], b.rates[ok], b.counts[ok]
            if g.kind == "count":
                out.append(self._count(g, gi, pi_g, lam, cnt, hints, refine_top))
                exact.append(np.ones(g.size.size, bool))
                ys.append(np.zeros(g.size.size))
                continue
            pmat = cast(np.ndarray, self.p[gi])[:, ok]  # set for every "rot" group
            ub = np.empty(g.size.size)
            done = np.full(g.size.size, lazy is None)
            for f in range(g.size.size) if lazy is not None else ():
                w1, c1, c2 = lam + g.slope[f] * pmat[f], float(g.c1[f]), float(g.c2[f])
                y_last = self.last_y.get((gi, f))
                if y_last is None:
                    ub[f] = _cheap_rot_ub(pi_g, w1, pmat[f], cnt, c1, c2)
                else:
                    ub[f] = _rot_at(pi_g, w1, pmat[f], cnt, c1, c2, y_last)
                todo.append((gi, f))
            out.append(ub)
            exact.append(done)
            ys.append(np.zeros(g.size.size))
            for j in np.nonzero(done)[0]:
                ub[j], ys[gi][j] = self._rot(gi, int(j), pi, hints)
        refined: set[tuple[int, int]] = set()
        if lazy is not None:
            weights, k, members = lazy
            ratio_of = {(gi, f): out[gi][f] / weights[self.groups[gi].gtype] for gi, f in todo}
            top = max(
                (float(np.max(u[e])) / weights[g.gtype] for g, u, e in zip(self.groups, out, exact) if e.any()),
                default=-math.inf,
            )
            best_k: list[float] = []  # the k largest exact ratios of non-members that price out (a min-heap)
            for gi, (g, u, e) in enumerate(zip(self.groups, out, exact)):
                for j in np.nonzero(e)[0]:
                    _push_k(best_k, k, float(u[j]) / weights[g.gtype], (gi, int(j)) in members)
            for n_done, key in enumerate(sorted(todo, key=lambda x: -ratio_of[x])):
                r = ratio_of[key]
                settled = r <= 1.0 + 1e-6 or (len(best_k) >= k and r <= best_k[0])
                if settled and r <= top:
                    break  # sorted: every later family is as settled
                if deadline is not None and n_done % 64 == 63 and deadline.expired():
                    return None
                gi, f = key
                g = self.groups[gi]
                out[gi][f], ys[gi][f] = self._rot(gi, f, pi, hints)
                self.last_y[key] = float(ys[gi][f])
                exact[gi][f] = True
                rr = float(out[gi][f]) / weights[g.gtype]
                if rr > top:
                    # the grid's bound can be ~10 % above the family's optimum: refined, the largest
                    # ratio (the Farley value's, and where the search stops) is tight
                    out[gi][f] = self._refine_one(gi, f, pi, float(out[gi][f]), float(ys[gi][f]))
                    refined.add(key)
                    rr = float(out[gi][f]) / weights[g.gtype]
                top = max(top, rr)
                _push_k(best_k, k, rr, key in members)
        for gi, g in enumerate(self.groups):
            if g.kind != "count":
                idx = np.nonzero(exact[gi])[0]
                for f in idx[np.argsort(-out[gi][idx])][:refine_top]:
                    if (gi, int(f)) not in refined:
                        out[gi][f] = self._refine_one(gi, int(f), pi, float(out[gi][f]), float(ys[gi][f]))
        return out

    def _count(
        self,
        g: Group,
        gi: int,
        pi_g: np.ndarray,
        lam: np.ndarray,
        cnt: np.ndarray,
        hints: dict[tuple[int, int], float],
        refine_top: int,
    ) -> np.ndarray:
        """Bounds of a "count" group's families (all at once, the largest few refined)."""
        mine = [y for (hg, _), y in hints.items() if hg == gi]
        y1s = np.unique(np.concatenate([_y1_grid(pi_g, lam), mine]))
        ub, arg = _count_ub(pi_g, lam, cnt, g.c1, g.size.astype(float), y1s)
        # Refine the largest few exactly around their grid optimum (convex in y1).
        for f in np.argsort(-ub)[:refine_top]:
            if not math.isfinite(ub[f]):
                continue
            k = int(np.searchsorted(y1s, arg[f]))
            lo, hi = y1s[max(k - 1, 0)], y1s[min(k + 1, len(y1s) - 1)]
            c1f, nf = g.c1[f : f + 1], g.size[f : f + 1].astype(float)

            def fn(y: float, c1f: np.ndarray = c1f, nf: np.ndarray = nf) -> float:
                return float(_count_ub(pi_g, lam, cnt, c1f, nf, np.array([y]))[0][0])

            ub[f], _ = _refine(fn, float(lo), float(hi), float(ub[f]), float(arg[f]))
        return ub

    def _rot_args(self, gi: int, f: int, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(π, load weights, activity weights, counts) of rot family ``f`` of group ``gi`` over its bins."""
        ok = self.allowed[gi]
        p = cast(np.ndarray, self.p[gi])[f, ok]
        return pi[ok], self.bins.rates[ok] + self.groups[gi].slope[f] * p, p, self.bins.counts[ok]

    def _rot(self, gi: int, f: int, pi: np.ndarray, hints: dict[tuple[int, int], float]) -> tuple[float, float]:
        """(bound, its load multiplier) of rot family ``f`` of group ``gi``: the two-row dual search."""
        g = self.groups[gi]
        pi_g, w1, p, cnt = self._rot_args(gi, f, pi)
        y1s = _y1_grid(pi_g, w1, 40)
        if (gi, f) in hints:
            y1s = np.unique(np.concatenate([y1s, [hints[(gi, f)]]]))
        return _rot_ub_one(pi_g, w1, p, cnt, float(g.c1[f]), float(g.c2[f]), y1s)

    def _refine_one(self, gi: int, f: int, pi: np.ndarray, ub: float, y1: float) -> float:
        """Rot family ``f`` of group ``gi``'s bound ``ub`` (at load multiplier ``y1`` on its grid) refined by
        a golden-section search between the grid's neighbours of ``y1`` (the bound is convex in it)."""
        g = self.groups[gi]
        pi_g, w1, p, cnt = self._rot_args(gi, f, pi)
        y1s = _y1_grid(pi_g, w1, 40)
        k = int(np.searchsorted(y1s, y1))
        lo, hi = y1s[max(k - 1, 0)], y1s[min(k + 1, len(y1s) - 1)]
        fr = functools.partial(_rot_at, pi_g, w1, p, cnt, float(g.c1[f]), float(g.c2[f]))
        return _refine(fr, float(lo), float(hi), ub, y1, iters=20)[0]


def _rot_at(pi: np.ndarray, w1: np.ndarray, p: np.ndarray, cnt: np.ndarray, c1: float, c2: float, y1: float) -> float:
    """:func:`_rot_ub_one` at one load multiplier."""
    return _rot_ub_one(pi, w1, p, cnt, c1, c2, np.array([y1]))[0]


def _push_k(heap: list[float], k: int, ratio: float, member: bool) -> None:
    """Keep in the min-heap ``heap`` the ``k`` largest ratios of non-members that price out."""
    if member or ratio <= 1.0 + 1e-6:
        return
    if len(heap) < k:
        heapq.heappush(heap, ratio)
    elif ratio > heap[0]:
        heapq.heapreplace(heap, ratio)


class _CompactLp:
    """min Σ w·y  s.t. Σ_f z_fb ≥ n_b (all bins); per family f: Σ w1·z_f ≤ c1·y_f, Σ w2·z_f (=|≤) c2·y_f.

    The compact form of the pattern LP with fractional patterns (one block of variables per family,
    added lazily). Artificial covers (cost ``big``) keep it feasible before enough families exist.
    """

    def __init__(self, bins: Bins, big: float) -> None:
        import highspy

        self.hs = highspy
        self.h = highspy.Highs()
        self.h.setOptionValue("output_flag", False)
        # Primal simplex: each round only adds columns (and their family rows), so the previous
        # basis stays primal feasible; measured 2–5× faster than HiGHS's default dual simplex here.
        self.h.setOptionValue("simplex_strategy", 4)
        self.bins = bins
        B = bins.rates.size
        self.B = B
        inf = highspy.kHighsInf
        self.h.addRows(
            B, bins.counts.astype(float), np.full(B, inf), 0, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0)
        )
        self.h.addCols(
            B,
            np.full(B, big),
            np.zeros(B),
            np.full(B, inf),
            B,
            np.arange(B, dtype=np.int32),
            np.arange(B, dtype=np.int32),
            np.ones(B),
        )
        self.n_rows = B
        self.members: dict[tuple[int, int], int] = {}  # (group, family) → its load row

    def add(self, gi: int, g: Group, f: int, allowed: np.ndarray, p: np.ndarray | None, weight: float) -> None:
        hs = self.hs
        inf = hs.kHighsInf
        r_load, r_cnt = self.n_rows, self.n_rows + 1
        eq = g.kind == "count"
        self.h.addRows(
            2,
            np.array([-inf, 0.0 if eq else -inf]),
            np.array([0.0, 0.0]),
            0,
            np.zeros(0, np.int32),
            np.zeros(0, np.int32),
            np.zeros(0),
        )
        self.n_rows += 2
        b = np.nonzero(allowed)[0]
        rates = self.bins.rates[b]
        if eq:
            w2 = np.ones(b.size)
            w1 = rates
        else:
            assert p is not None  # given for every group but "count"
            w2 = p[b]
            w1 = rates + g.slope[f] * w2
        k = b.size
        idx = np.empty(3 * k, dtype=np.int32)
        val = np.empty(3 * k)
        idx[0::3], idx[1::3], idx[2::3] = b, r_load, r_cnt
        val[0::3], val[1::3], val[2::3] = 1.0, w1, w2
        self.h.addCols(
            k, np.zeros(k), np.zeros(k), np.full(k, inf), 3 * k, np.arange(0, 3 * k, 3, dtype=np.int32), idx, val
        )
        self.h.addCols(
            1,
            np.array([weight]),
            np.zeros(1),
            np.full(1, inf),
            2,
            np.zeros(1, np.int32),
            np.array([r_load, r_cnt], dtype=np.int32),
            np.array([-float(g.c1[f]), -float(g.c2[f])]),
        )
        self.members[(gi, f)] = r_load

    def solve(self, time_limit_s: float | None = None) -> tuple[float, np.ndarray, dict[tuple[int, int], float]]:
        """LP value, cover duals π ≥ 0, and each member family's load multiplier y1 ≥ 0. Stopped by
        ``time_limit_s``, the duals are not optimal, but any π ≥ 0 gives a valid Farley bound."""
        if time_limit_s is not None:
            self.h.setOptionValue("time_limit", max(0.05, float(time_limit_s)))
        self.h.run()
        sol = self.h.getSolution()
        dual = np.array(sol.row_dual)
        if dual.size < self.n_rows:  # no solution at all (stopped before one existed): π = 0 is valid
            return math.inf, np.zeros(self.B), {}
        pi = np.maximum(dual[: self.B], 0.0)
        y1 = {k: max(0.0, -float(dual[r])) for k, r in self.members.items()}
        return float(self.h.getInfo().objective_function_value), pi, y1


def _remaining(deadline: Any) -> float | None:
    """Seconds left before ``deadline`` if it can say (``remaining()``), else None."""
    rem = getattr(deadline, "remaining", None)
    return float(rem()) if callable(rem) else None


def lp_bound(
    problem: Problem,
    an: AnalyticCapacity,
    weights: Sequence[float] | None = None,
    deadline: Any = None,
    width: float = LP_BIN_WIDTH,
    bins: Bins | None = None,
    max_rounds: int = 60,
    per_round: int = 25,
    rot_slots: Sequence[int] = ROT_SLOTS,
    integral: bool = False,
) -> LpBound:
    """A proven lower bound on Σ w·GPUs: the Farley bound of the pattern LP over relaxed families.

    *What is relaxed.* A GPU in a plan runs a mix of adapters of max rank r on type t with L slots
    (any L up to the memory cap). The analytic model accepts it when (i) L ≥ n (every adapter has a
    slot, d = n distinct) and the load is ≤ ρ·λ*(n, L), or (ii) L < n, the expected active adapters
    A ≤ κ·L and the load is ≤ ρ·λ*(L, L)/(1 + ROTATION·A/L). (i) lies in the "count" family of size n
    (exactly n adapters, load ≤ ρ·λ*(n, the slot count ≥ n with the most KV)); (ii) lies in the "rot"
    family of L's slot interval (load + chord·A ≤ ρ·max λ*, A ≤ κ·hi, activity at the interval's
    shortest service time). Adapters enter at rates rounded down (every constraint grows with rate),
    so each feasible GPU's adapter multiset is a feasible integer point of some family.

    *Why it is a bound.* For duals π ≥ 0 on the bins, let m_f ≥ max{π·a : a in family f} and
    M_t = max_f of type t m_f. Any plan covers every bin, so π·n ≤ Σ_GPUs π·a ≤ Σ_t M_t·(GPUs of t)
    ≤ max_t(M_t/w_t)·Σ w·GPUs: hence Σ w·GPUs ≥ π·n / max_t(M_t/w_t) (Farley). m_f comes from the
    LP dual of the family's knapsack at *any* multipliers (weak duality), so the bound holds however
    far the search for good multipliers and duals went; the pool limits only raise the optimum.
    Rounding up (for GPU counts) is left to the caller.

    *How π is found.* The compact LP (one block of fractional assignment variables per family) is
    solved with families added when they price out (m_f > w_t); its cover duals are π. When no family
    prices out, the Farley value is at least the LP value (up to the multiplier search's tolerance;
    above it where m_f's cap of a pattern's adapters per bin at the bin's count binds). The
    search stops once ``deadline`` (anything with ``expired()``) has passed, with the best bound so far.
    ``bins``: :func:`rate_bins` at ``width``, when the caller has them. ``rot_slots``: where the families
    with fewer slots than adapters start their slot intervals (:data:`ROT_SLOTS`; any increasing grid
    from 1 gives a valid bound, a finer one a tighter and slower one).

    ``integral``: the caller rounds the bound up (:func:`round_up`; a GPU count). The search then stops,
    reporting itself converged, once the bound rounds up to what the restricted LP's value does: the
    rounds after that close the last fraction of a GPU between the two and cannot change the rounded
    bound while the LP's value stays above the bound it converges to (it did on every bench family,
    where the final bound equals the LP value within 1e-3). At 10,000 adapters that is half the rounds.
    """
    import time

    t0 = time.perf_counter()
    w = np.asarray(list(weights) if weights is not None else [1.0] * len(problem.gpu_types), dtype=float)
    if problem.n_adapters == 0:
        return LpBound(0.0, 0.0, 0, 0, True, 0.0)
    if deadline is not None and deadline.expired():
        # Not even one round: a first LP takes seconds at 100k adapters (the caller has the volume bound).
        return LpBound(0.0, math.inf, 0, 0, False, time.perf_counter() - t0)
    bins = bins if bins is not None else rate_bins(problem, width)
    groups = relaxed_groups(problem, an, rot_slots)
    pricer = _Pricer(bins, groups)
    n = bins.counts
    big = 10.0 * float(w.max()) * max(1.0, float(n.sum()))
    lp = _CompactLp(bins, big)
    # Start with each group's families at powers of two: enough for a feasible, informative first LP.
    for gi, g in enumerate(groups):
        for f in range(g.size.size):
            if g.kind == "count" and (g.size[f] & (g.size[f] - 1)) == 0:
                lp.add(gi, g, f, pricer.allowed[gi], None, float(w[g.gtype]))
    best, lp_val, rounds, converged = 0.0, math.inf, 0, False
    while rounds < max_rounds:
        if rounds and deadline is not None and deadline.expired():
            break
        rounds += 1
        lp_val, pi, y1 = lp.solve(_remaining(deadline))
        ubs = pricer.price(pi, y1, deadline, lazy=(w, per_round, lp.members.keys()))
        if ubs is None:
            break  # the deadline passed while pricing: the last complete round's bound stands
        ratio = np.zeros(len(problem.gpu_types))
        for g, ub in zip(groups, ubs):
            if ub.size:
                ratio[g.gtype] = max(ratio[g.gtype], float(np.max(ub)) / w[g.gtype])
        top = float(ratio.max())
        if top > 0:
            best = max(best, float(pi @ n) / top)
        if integral and math.isfinite(lp_val) and round_up(best) >= round_up(lp_val):
            converged = True
            break
        cands = [
            (float(ub[f]) / w[g.gtype], gi, int(f))
            for gi, (g, ub) in enumerate(zip(groups, ubs))
            for f in np.nonzero(ub > w[g.gtype] * (1.0 + 1e-6))[0]
            if (gi, int(f)) not in lp.members
        ]
        if not cands:
            converged = True
            break
        cands.sort(key=lambda c: -c[0])
        for _, gi, f in cands[:per_round]:
            g = groups[gi]
            p_f = None if g.kind == "count" else cast(np.ndarray, pricer.p[gi])[int(f)]  # set for every other kind
            lp.add(gi, g, int(f), pricer.allowed[gi], p_f, float(w[g.gtype]))
    return LpBound(best, lp_val, rounds, len(lp.members), converged, time.perf_counter() - t0)
