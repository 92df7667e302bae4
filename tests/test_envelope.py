"""The learned SLO oracle's envelope: the model its lower bound is proven on (optplace.solver.envelope)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optplace.bench.solver import family
from optplace.pipeline import solve_scenario
from optplace.solver import compile_problem
from optplace.solver.bound import lower_bound
from optplace.solver.capacity import GUARD, Mix, SurrogateCapacity, bound_model
from optplace.solver.envelope import MARGIN, _active_caps
from optplace.surrogate.features import feature_row_from_parts, scaled_rows


@pytest.fixture(scope="module")
def fleet() -> tuple[object, SurrogateCapacity]:
    """A 300-adapter Zipf fleet (ranks 8/16) under the default SLO, with the shipped models."""
    sc = family(300, (8, 16), "zipf-0.9")
    return sc, SurrogateCapacity.shipped(compile_problem(sc, Path(".")), slo=True)


def test_scaled_rows_equal_rows_built_from_the_scaled_rates() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 7, 300):
        rates = rng.lognormal(-3.0, 2.0, n)
        ranks = rng.choice([8, 16, 32], n).tolist()
        row = feature_row_from_parts(rates, ranks, max(1, n // 2), 310.0, 190.0, 1.4, 2.0)
        scales = np.geomspace(1e-4, 50.0, 17)
        want = np.vstack(
            [feature_row_from_parts(rates * x, ranks, max(1, n // 2), 310.0, 190.0, 1.4, 2.0) for x in scales]
        )
        np.testing.assert_allclose(scaled_rows(row, rates, scales), want, rtol=1e-12, atol=0)


def test_envelope_is_a_non_increasing_multiplier_within_the_guard(fleet: tuple[object, SurrogateCapacity]) -> None:
    _, orc = fleet
    env = orc.envelope
    assert env is not None and set(env.factors) == {(0, 8), (0, 16)}
    for f in env.factors.values():
        a = np.array(f)
        assert len(a) == orc.slot_cap(0, 8) or len(a) == orc.slot_cap(0, 16)
        assert np.all(np.diff(a) <= 0) and a.max() <= GUARD and a.min() > 0.5
    # the SLO models keep about one active adapter per slot (sticky slots starve the rest otherwise)
    assert 0.5 < env.kappa < 2.0
    # per slot count, the active-adapter cap: never above κ per slot, never falling with the slots
    for key, caps in env.active_caps.items():
        c = np.array(caps)
        L = np.arange(1, len(c) + 1)
        assert len(c) == len(env.factors[key]) and np.all(np.diff(c) >= 0)
        assert np.all(c <= env.kappa * L * (1 + 1e-12)) and np.all(c > 0)
        # beyond the measured counts κ per slot, and the busy-slot rule's share bounds every count
        assert env.busy_per_slot is not None and env.busy_per_slot < 1.0
        M = len(c) + 5
        assert env.active_cap(*key, M) == pytest.approx(min(env.kappa, env.busy_per_slot) * M)
        assert all(env.active_cap(*key, int(x)) <= env.busy_per_slot * x + 1e-9 for x in L)
    # and the oracle's guard is that envelope, which the bound is computed on
    an, name = bound_model(orc)
    assert an is orc.guard and an.envelope is env and "envelope" in name


def test_active_caps_keep_every_sampled_count_and_take_the_most_of_larger_slot_counts() -> None:
    counts = [1, 2, 4, 8, 16]
    amax = np.array([0.9, 0.0, 1.0, 0.7, 0.5])  # 0: no mix sampled with fewer slots than adapters there
    caps = np.array(_active_caps(counts, amax, 20, kappa=1.1))
    per = caps / np.arange(1, 21)
    m = 1.0 + MARGIN
    # at a sampled count, at least what was sampled there (+ margin) and at any larger count
    for L, a in ((1, 1.0), (4, 1.0), (8, 0.7), (16, 0.5)):
        assert per[L - 1] >= a * m - 1e-12
    assert per[0] == pytest.approx(1.0 * m)  # the most of its own and larger counts, below κ
    assert caps[7] == pytest.approx(max(1.0 * m * 7, 0.7 * m * 8))
    # from 16 slots on, 0.5 per slot would allow fewer active adapters than 15 slots do: the cap holds
    assert caps[15] == pytest.approx(max(0.7 * m * 15, 0.5 * m * 16))
    assert np.all(np.diff(caps) >= 0) and np.all(per <= 1.1 + 1e-12)
    # above the largest sampled count: kept from it (non-decreasing), never κ unless sampled so
    assert caps[19] == pytest.approx(max(caps[15], 0.5 * m * 20))


def test_every_gpu_the_oracle_accepts_lies_in_the_bound_model(fleet: tuple[object, SurrogateCapacity]) -> None:
    """By construction: the oracle enforces its envelope. Random mixes around the capacity, one slot per
    adapter and fewer slots than adapters."""
    _, orc = fleet
    an, _ = bound_model(orc)
    assert an is not None
    rng = np.random.default_rng(11)
    accepted = refused = 0
    for _ in range(150):
        n = int(rng.integers(1, 200))
        ranks = tuple(int(r) for r in rng.choice([8, 16], n))
        shape = rng.lognormal(0.0, 1.3, n)
        lam = an.point(0, max(ranks), n, n).lam_max_rps
        rates = tuple(float(x) for x in shape / shape.sum() * lam * rng.uniform(0.02, 1.3))
        slots = int(rng.integers(max(1, n // 4), n + 1))
        if slots > orc.slot_cap(0, max(ranks)):
            continue
        mix = Mix(ranks, rates)
        if orc.evaluate(0, mix, slots).feasible:
            accepted += 1
            assert an.evaluate(0, mix, slots).feasible
        else:
            refused += 1
    assert accepted >= 20 and refused >= 20


def test_the_bound_under_the_slo_is_tighter_than_the_throughput_guard_and_below_the_plan() -> None:
    """The 1,000-adapter uniform family: the bound on the envelope beats the one on the load x GUARD
    relaxation, and stays at or below the plan the oracle's strategies find."""
    sc = family(1000, (8, 16), "uniform")
    rep = solve_scenario(sc, Path("."), validate=False)
    plan = rep.initial
    assert plan.oracle == "surrogate+slo" and "envelope" in plan.lower_bound_model
    pb = compile_problem(sc, Path("."))
    relaxed = lower_bound(pb, SurrogateCapacity.shipped(pb, slo=False).guard)
    assert relaxed < plan.lower_bound <= plan.gpus_used


def test_best_slots_on_the_guards_slot_counts_equals_the_full_scan(fleet: tuple[object, SurrogateCapacity]) -> None:
    # best_slots evaluates the learned models only where the guard accepts, unless nothing there is
    # feasible: the estimate must be the one a scan of every candidate picks, feasible or not.
    from optplace.solver.capacity import _pick

    _, orc = fleet
    rng = np.random.default_rng(11)
    feasible = refused = 0
    for _ in range(40):
        n = int(rng.integers(1, 160))
        mix = Mix(tuple(rng.choice([8, 16], n).tolist()), tuple(rng.lognormal(-2.5, 1.5, n) * rng.uniform(0.2, 3)))
        cands = orc.analytic.candidate_slots(0, mix)
        full = _pick(orc.evaluate(0, mix, L) for L in cands)
        got = orc.best_slots(0, mix)
        assert got == full
        feasible += got.feasible
        refused += not got.feasible
    assert feasible >= 5 and refused >= 5  # both branches taken
