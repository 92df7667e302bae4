"""The LP (Farley) lower bound: a valid relaxation of the analytic model, below brute-force optima,
converged to the LP value, and still valid when stopped by a deadline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optplace.solver import AnalyticCapacity, Mix, compile_problem
from optplace.solver import bound
from optplace.solver.bound import (
    round_up,
    LP_BIN_WIDTH,
    ROT_SLOTS,
    bin_widths,
    cached_lp_bound,
    lagrangian_bound,
    lower_bound,
    lp_bound,
    rate_bins,
    relaxed_groups,
    volume_bound,
)
from optplace.solver.capacity import SLOT_GRID
from optplace.solver.envelope import BUSY_PER_SLOT, LoadEnvelope
from optplace.specs import load_scenario_text
from helpers import REPO


def _scenario(adapters: list[tuple[int, float]], gpu: str = "gpu: h100-64gb", extra: str = "") -> object:
    lines = "\n".join(f"  - {{name: a{i}, rank: {r}, rate_rps: {x:.6f}}}" for i, (r, x) in enumerate(adapters))
    text = f"""
name: bound
model: llama-3.1-8b-instruct
{gpu}
workload: {{duration_s: 600, arrivals: {{kind: poisson}}, lengths: {{kind: sharegpt}}}}
adapters:
{lines}
seed: 1
{extra}
"""
    return load_scenario_text(text, base_dir=REPO)


def _zipf_problem(n: int, s: float, mean: float, ranks=(8, 16), seed: int = 0):
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n + 1) ** s
    rates = w / w.sum() * mean * n
    ads = [(int(rng.choice(ranks)), float(x)) for x in rates]
    pb = compile_problem(_scenario(ads), REPO)
    return pb, AnalyticCapacity(pb)


def _family_of(groups, bins_rate: np.ndarray, ranks: np.ndarray, gtype: int, L: int, n: int, svc_tol=1e-12):
    """Whether the (binned) mix lies in the relaxed family the analytic model's verdict at L slots maps to."""
    rmax = int(ranks.max())
    for g in groups:
        if g.gtype != gtype or g.rank_max != rmax:
            continue
        if g.kind == "count" and L >= n:
            f = n - 1
            if f < g.size.size and bins_rate.sum() <= g.c1[f] * (1 + 1e-9):
                return True
        if g.kind == "rot" and L < n:
            for f in range(g.size.size):
                if g.size[f] <= L <= g.size_hi[f]:
                    p = -np.expm1(-bins_rate * g.service_s[f])
                    if np.sum(bins_rate + g.slope[f] * p) <= g.c1[f] * (1 + 1e-9) and p.sum() <= g.c2[f] * (1 + 1e-9):
                        return True
    return False


def test_every_mix_the_analytic_model_accepts_lies_in_a_relaxed_family():
    pb, an = _zipf_problem(400, 0.9, 0.4)
    checked, rotating = _check_relaxation(pb, an)
    assert checked >= 100


def test_every_mix_the_busy_slot_rule_accepts_lies_in_a_relaxed_family():
    """Under the busy-slot rule the families with fewer slots than adapters are split by load
    (bound._rot_rows): every configuration the rule accepts still lies in one of the rows."""
    pb, an = _zipf_problem(400, 0.9, 0.4)
    busy = an.enveloped(LoadEnvelope({}, 1.0, 1.0, busy_per_slot=BUSY_PER_SLOT))
    checked, rotating = _check_relaxation(pb, busy)
    assert checked >= 100 and rotating >= 20


def test_lazy_pricing_gives_valid_bounds_and_the_full_pricings_farley_ratio():
    """The LP bound prices lazily (cheap knapsack bounds first, the two-row search only where a family can
    matter): every family's value must still bound its LP optimum, and the largest ratio (the Farley
    bound's) must be the full search's."""
    from scipy.optimize import linprog

    pb, an = _zipf_problem(1500, 0.9, 0.4, ranks=(8, 16, 32))
    busy = an.enveloped(LoadEnvelope({}, 1.0, 1.0, busy_per_slot=BUSY_PER_SLOT))
    bins = bound.rate_bins(pb, 0.05)
    groups = bound.relaxed_groups(pb, busy, bound.ROT_SLOTS)
    rng = np.random.default_rng(3)
    w = np.ones(len(pb.gpu_types))
    for trial in range(3):
        pi = rng.uniform(0.0, 1.0, bins.rates.size) * (bins.rates / bins.rates.max()) ** 0.5
        pi *= 1.2 / max(float(np.max(u)) for u in bound._Pricer(bins, groups).price(pi) if u.size)
        full = bound._Pricer(bins, groups).price(pi)
        pricer = bound._Pricer(bins, groups)
        if trial:  # the second and third also start from multipliers a first lazy round left behind
            pricer.price(pi * rng.uniform(0.95, 1.05, pi.size), lazy=(w, 25, set()))
        lazy = pricer.price(pi, lazy=(w, 25, set()))
        top_full = max(float(np.max(u)) for u in full if u.size)
        top_lazy = max(float(np.max(u)) for u in lazy if u.size)
        assert top_lazy == pytest.approx(top_full, rel=1e-4)
        checked = 0
        for gi, g in enumerate(groups):
            if g.kind != "rot":
                continue
            ok = pricer.allowed[gi]
            p = pricer.p[gi][:, ok]
            for f in rng.choice(g.size.size, size=min(8, g.size.size), replace=False):
                w1 = bins.rates[ok] + g.slope[f] * p[f]
                res = linprog(
                    -pi[ok],
                    A_ub=np.vstack([w1, p[f]]),
                    b_ub=[g.c1[f], g.c2[f]],
                    bounds=list(zip(np.zeros(ok.sum()), bins.counts[ok])),
                    method="highs",
                )
                assert res.status == 0
                assert lazy[gi][f] >= -res.fun - 1e-7 * max(1.0, abs(res.fun))
                checked += 1
        assert checked >= 16


def _check_relaxation(pb, an) -> tuple[int, int]:
    """Random mixes of ``pb`` at random slot counts: each one ``an`` accepts must lie in a relaxed family
    of ``an``; returns (accepted mixes, of which with fewer slots than adapters)."""
    groups = relaxed_groups(pb, an)
    bins = rate_bins(pb)
    step = math.log1p(0.005)
    rng = np.random.default_rng(7)
    checked = rotating = 0
    for trial in range(120):
        k = int(rng.integers(1, 90))
        idx = rng.choice(pb.n_adapters, size=k, replace=False)
        ads = [pb.adapters[i] for i in idx]
        mix = Mix.of(ads)
        cap = an.slot_cap(0, mix.rank_max)
        # Rates as the bound sees them: rounded down to its geometric grid.
        rb = np.array([math.exp(math.floor(math.log(a.rate_rps) / step) * step) for a in ads])
        rb = np.minimum(rb, [a.rate_rps for a in ads])
        assert set(np.round(rb, 12)) <= set(np.round(bins.rates, 12))
        for L in sorted({1, 2, k - 1, k, k + 1, *rng.integers(1, cap + 1, size=6).tolist()}):
            if not 1 <= L <= cap:
                continue
            if an.evaluate(0, mix, L).feasible:
                checked += 1
                rotating += L < k
                assert _family_of(groups, rb, np.array(mix.ranks), 0, L, k), (trial, k, L)
    return checked, rotating


def _brute_force_optimum(pb, an, weights) -> float:
    """Exact minimum of Σ weight over GPUs (every slot count 1..cap tried) by DP over adapter subsets."""
    n = pb.n_adapters
    cost = np.full(1 << n, math.inf)
    for mask in range(1, 1 << n):
        mix = Mix.of(pb.adapters[i] for i in range(n) if mask >> i & 1)
        for t in pb.gpu_types:
            cap = an.slot_cap(t.index, mix.rank_max)
            if any(an.evaluate(t.index, mix, L).feasible for L in range(1, cap + 1)):
                cost[mask] = min(cost[mask], weights[t.index])
    best = np.full(1 << n, math.inf)
    best[0] = 0.0
    for mask in range(1, 1 << n):
        low = mask & -mask
        sub = mask
        while sub:
            if sub & low and cost[sub] < math.inf:
                best[mask] = min(best[mask], cost[sub] + best[mask ^ sub])
            sub = (sub - 1) & mask
    return float(best[-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lp_bound_is_below_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    probe = compile_problem(_scenario([(8, 1.0)]), REPO)
    lam1 = AnalyticCapacity(probe).linear_limits(0, 8, 1)[0]
    ads = [(int(rng.choice([8, 16])), float(lam1 * rng.uniform(0.12, 0.55))) for _ in range(7)]
    pb = compile_problem(_scenario(ads), REPO)
    an = AnalyticCapacity(pb)
    opt = _brute_force_optimum(pb, an, [1.0])
    res = lp_bound(pb, an)
    assert res.converged
    assert 0 < res.value <= opt + 1e-9
    assert volume_bound(pb, an) <= res.value + 1e-9  # the LP bound is never weaker than the volume bound
    assert lower_bound(pb, an, integral=True) <= opt


def test_lp_bound_with_prices_is_below_the_cheapest_fleet():
    pool = "pool: [{gpu: h100-64gb, count: 6, cost_per_hour: 1.0}, {gpu: a100-80gb, count: 6, cost_per_hour: 1.7}]"
    rng = np.random.default_rng(11)
    probe = compile_problem(_scenario([(8, 1.0)], gpu=pool), REPO)
    lam1 = AnalyticCapacity(probe).linear_limits(0, 8, 1)[0]
    ads = [(8, float(lam1 * rng.uniform(0.15, 0.6))) for _ in range(6)]
    pb = compile_problem(_scenario(ads, gpu=pool), REPO)
    an = AnalyticCapacity(pb)
    w = [1.0, 1.7]
    opt = _brute_force_optimum(pb, an, w)
    res = lp_bound(pb, an, w)
    assert res.converged
    assert 0 < res.value <= opt + 1e-9
    assert lower_bound(pb, an, weights=w, integral=False) <= opt + 1e-9


def test_lp_bound_converges_to_the_lp_value_and_beats_the_old_lagrangian_bound():
    pb, an = _zipf_problem(300, 1.0, 0.5, ranks=(8, 16, 32))
    res = lp_bound(pb, an)
    assert res.converged
    # At convergence no family prices out (every m_f <= w), so the Farley value pi.n / max(m_f / w) is at
    # least the LP's dual value pi.n; above it where the pricer's knapsacks cap a pattern's adapters per bin
    # at the bin's count, which the compact LP's fractional patterns do not
    assert res.value >= res.lp_value * (1 - 1e-6)
    assert res.value >= lagrangian_bound(pb, an) - 1e-9
    assert res.value >= volume_bound(pb, an) - 1e-9


def test_an_integral_lp_bound_stops_once_its_rounding_is_settled():
    # The 10,000-adapter bench family needed 20 rounds to converge and 10 to settle its GPU count.
    pb, an = _zipf_problem(2000, 0.9, 0.5, ranks=(8, 16, 32))
    full = lp_bound(pb, an)
    settled = lp_bound(pb, an, integral=True)
    assert full.converged and settled.converged
    assert round_up(settled.value) == round_up(full.value)
    assert settled.rounds < full.rounds
    assert settled.value <= full.value + 1e-9
    # stopped because the rounded bound met the restricted LP's, not because no family priced out
    assert round_up(settled.value) >= round_up(settled.lp_value)
    assert round_up(192.0000001) == 192.0 and round_up(192.01) == 193.0


class _Expired:
    def expired(self) -> bool:
        return True


class _AfterCalls:
    """A deadline that expires after ``n`` questions (deterministic, unlike the clock)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def expired(self) -> bool:
        self.left -= 1
        return self.left < 0


class _TimeLeft:
    """A deadline that never expires and always has ``s`` seconds left."""

    def __init__(self, s: float) -> None:
        self.s = s

    def expired(self) -> bool:
        return False

    def remaining(self) -> float:
        return self.s


def test_the_lp_bound_runs_its_coarse_grids_first_and_keeps_the_best(monkeypatch):
    pb, an = _zipf_problem(300, 1.0, 0.5, ranks=(8, 16, 32))
    grids = bin_widths(pb, coarse_bins=40)
    widths, bins = [w for w, _ in grids], [n for _, n in grids]
    assert len(grids) >= 2 and widths[-1] == LP_BIN_WIDTH and bins[0] <= 40 < bins[1]
    assert widths == sorted(widths, reverse=True) and bins == sorted(bins)
    assert bin_widths(pb, coarse_bins=10**6) == [(LP_BIN_WIDTH, bins[-1])]
    # the first of several grids prices its rot families on the solver's slot grid (quick), the finer
    # ones on ROT_SLOTS
    each = [lp_bound(pb, an, width=w, rot_slots=SLOT_GRID if i == 0 else ROT_SLOTS).value for i, w in enumerate(widths)]
    full = cached_lp_bound(pb, AnalyticCapacity(pb), coarse_bins=40)
    assert full.converged and full.value == pytest.approx(max(each))
    # A finer grid predicted not to finish in the time left is not started: the coarse bound stands.
    monkeypatch.setattr(bound, "LP_BINS_EXPONENT", 60.0)
    an2 = AnalyticCapacity(pb)
    short = cached_lp_bound(pb, an2, deadline=_TimeLeft(100.0), coarse_bins=40)
    assert not short.converged and short.value == pytest.approx(each[0])
    assert 0 < short.value <= full.value
    assert {k[1] for k in an2.__dict__["_lp_cache"]} == {((None, False), widths[0], False)}


def test_a_bound_that_answers_the_question_stops_at_the_coarse_grid():
    # "Does the bound reach this plan?" (the solver's stopping rules): once a grid's bound does, finer
    # grids are not run; a bound that does not is refined to the finest grid as without the question.
    pb, an = _zipf_problem(300, 1.0, 0.5, ranks=(8, 16, 32))
    widths = [w for w, _ in bin_widths(pb, coarse_bins=40)]
    coarse = lp_bound(pb, an, width=widths[0], rot_slots=SLOT_GRID).value
    full = cached_lp_bound(pb, AnalyticCapacity(pb), coarse_bins=40)
    assert full.value > coarse  # the finest grid is tighter: stopping early is a real saving of precision
    an2 = AnalyticCapacity(pb)
    asked: list[float] = []

    def reaches(x: float) -> bool:
        asked.append(x)
        return x >= coarse

    early = cached_lp_bound(pb, an2, coarse_bins=40, enough=reaches)
    assert not early.converged and early.value == pytest.approx(coarse) and asked == [early.value]
    assert {k[1] for k in an2.__dict__["_lp_cache"]} == {((None, False), widths[0], False)}
    never = cached_lp_bound(pb, AnalyticCapacity(pb), coarse_bins=40, enough=lambda x: x > full.value + 1)
    assert never.converged and never.value == pytest.approx(full.value)
    # A question the coarse bound is too far from for a finer grid to settle: the finer grids are not run.
    an3 = AnalyticCapacity(pb)
    far = cached_lp_bound(pb, an3, coarse_bins=40, hopeless=lambda x: x * (1 + bound.FINER_GRID_GAIN) < full.value * 2)
    assert not far.converged and far.value == pytest.approx(coarse)
    assert {k[1] for k in an3.__dict__["_lp_cache"]} == {((None, False), widths[0], False)}
    near = cached_lp_bound(pb, AnalyticCapacity(pb), coarse_bins=40, hopeless=lambda x: x < coarse * 0.5)
    assert near.converged and near.value == pytest.approx(full.value)


def test_a_deadline_stops_the_bound_with_a_valid_value():
    pb, an = _zipf_problem(300, 1.0, 0.5, ranks=(8, 16, 32))
    full = lp_bound(pb, an)
    none = lp_bound(pb, an, deadline=_Expired())
    assert none.rounds == 0 and none.value == 0.0 and not none.converged
    # The entry check and the checks while pricing round 1 pass; the next one stops it.
    counted = _AfterCalls(10**9)
    lp_bound(pb, an, deadline=counted, max_rounds=1)
    one = lp_bound(pb, an, deadline=_AfterCalls(10**9 - counted.left))
    assert one.rounds == 1 and not one.converged
    assert 0 < one.value <= full.value + 1e-9
    mid = lp_bound(pb, an, deadline=_AfterCalls(3))  # stopped while pricing round 1: no bound from a part
    assert mid.rounds == 1 and mid.value == 0.0
    # Cut short, it is not memoised, and lower_bound still returns the volume bound.
    an2 = AnalyticCapacity(pb)
    lb = lower_bound(pb, an2, integral=False, deadline=_Expired())
    assert lb == pytest.approx(max(1.0, volume_bound(pb, an2)))
    assert an2.__dict__.get("_lp_cache", {}) == {}


def test_rot_families_span_at_most_4_percent_of_slots_and_tighten_the_bound():
    """A rot family stands for its whole slot interval at the interval's top capacity and active cap, so
    narrower intervals (ROT_SLOTS) give a bound at least the solver's slot grid's, here strictly higher
    (800 light Zipf-0.5 adapters, ranks 8/16/32: most GPUs rotate adapters through their slots)."""
    pb, an = _zipf_problem(800, 0.5, 0.05, ranks=(8, 16, 32))
    for g in bound.relaxed_groups(pb, an):
        if g.kind == "rot":
            for lo, hi in zip(g.size, g.size_hi):
                assert hi + 1 <= max(lo + 1, lo * 1.04) + 1e-9, (lo, hi)
    fine = lp_bound(pb, an)
    coarse = lp_bound(pb, AnalyticCapacity(pb), rot_slots=SLOT_GRID)
    assert fine.converged and coarse.converged
    assert fine.value > coarse.value + 0.01, (fine.value, coarse.value)


def test_the_first_finer_grid_is_judged_at_the_narrow_rot_families_cost(monkeypatch):
    """The coarsest of several grids runs on the solver's slot grid, the next on ROT_SLOTS, whose LP costs
    more: whether it fits the time left is judged at that cost (ROT_SLOTS_COST); where it would overrun,
    the grid runs on the solver's slot grid instead."""
    pb, _ = _zipf_problem(300, 1.0, 0.5, ranks=(8, 16, 32))
    widths = [w for w, _ in bin_widths(pb, coarse_bins=40)]
    on_slot_grid = max(lp_bound(pb, AnalyticCapacity(pb), width=w, rot_slots=SLOT_GRID).value for w in widths)
    monkeypatch.setattr(bound, "ROT_SLOTS_COST", 1.0)
    an = AnalyticCapacity(pb)
    ran = cached_lp_bound(pb, an, deadline=_TimeLeft(100.0), coarse_bins=40)
    assert ran.converged and ran.value > on_slot_grid
    assert ((None, False), widths[1], True) in {k[1] for k in an.__dict__["_lp_cache"]}
    monkeypatch.setattr(bound, "ROT_SLOTS_COST", 1e9)
    an = AnalyticCapacity(pb)
    fallback = cached_lp_bound(pb, an, deadline=_TimeLeft(100.0), coarse_bins=40)
    assert fallback.converged and fallback.value == pytest.approx(on_slot_grid)
    assert ((None, False), widths[1], False) in {k[1] for k in an.__dict__["_lp_cache"]}


def test_the_final_bound_with_no_time_for_an_lp_keeps_the_lp_bound_an_earlier_phase_proved():
    """A solve's final bound with less time left than an LP needs still reports the LP bound its early
    phases proved on the same model (memoised there; nothing new is started), not the volume bound: at
    10,000 adapters and a 20 s limit that was 59 GPUs instead of 26."""
    from optplace.solver.objectives import BoundContext, get_objective
    from optplace.solver.problem import Deadline

    pb, an = _zipf_problem(300, 1.0, 0.5)
    w = [1.0] * len(pb.gpu_types)
    volume = math.ceil(volume_bound(pb, an, w) - 1e-6)
    proved = lower_bound(pb, an, weights=w, integral=True)  # an earlier phase's bound, memoised on an
    assert proved > volume

    def final(model: AnalyticCapacity) -> tuple[float, list[str]]:
        spent = Deadline.begin(0.0).phase("bound")
        ctx = BoundContext(pb, model, model, model, "analytic", w, None, spent, 0, 0.0)
        return get_objective("min_gpus").model_bound(ctx)

    lb, log = final(an)
    assert lb == proved and "earlier phase" in log[0], log
    lb, log = final(AnalyticCapacity(pb))  # nothing proved on this model yet: the volume bound
    assert lb == volume and "volume bound only" in log[0], log
