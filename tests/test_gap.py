"""How full a plan's GPUs are under its oracle, and how far the bound's model reaches beyond it
(optplace.solver.gap)."""

from __future__ import annotations

import pytest

from optplace.solver import AnalyticCapacity
from optplace.solver.capacity import Mix
from optplace.solver.gap import MAX_SCALE, attribute_gap, largest_scale, predicted_headroom
from optplace.solver.strategies import solve
from helpers import h100_problem


def _problem(n: int = 60, rate: float = 0.5):
    return h100_problem([(8 if i % 2 else 16, rate) for i in range(n)], name="gap", extra="slo: none")


def test_largest_scale_finds_one_adapters_analytic_capacity():
    pb = _problem()
    an = AnalyticCapacity(pb)
    lam, _ = an.linear_limits(0, 8, 1)  # the most req/s one rank-8 adapter may carry alone
    s = largest_scale(an, 0, Mix((8,), (10.0,)))
    assert s * 10.0 == pytest.approx(lam, rel=2e-3)
    assert not an.best_slots(0, Mix((8,), (10.0 * s * 1.01,))).feasible
    assert largest_scale(an, 0, Mix((8,), (1e-6,))) == MAX_SCALE  # far below capacity: reported at the cap


def test_a_plan_on_its_own_model_has_no_excess_and_a_relaxed_model_has_some():
    pb = _problem()
    an = AnalyticCapacity(pb)
    plan = solve(pb, an, "milp")
    own = attribute_gap(pb, an, an, plan)
    assert own.gpus == plan.gpus_used and own.bound == plan.lower_bound
    assert own.model_excess == pytest.approx(0.0, abs=1e-9)
    assert 0.5 < own.fill <= 1.0 + 1e-3  # every GPU is feasible: its load fits at scale 1
    loose = attribute_gap(pb, an, an.relaxed(1.25), plan)
    assert loose.oracle_gpus == pytest.approx(own.oracle_gpus)
    # 25 % more load everywhere: the relaxed model needs ~1/1.25 of the GPUs for the same mixes
    assert loose.model_gpus == pytest.approx(own.oracle_gpus / 1.25, rel=0.02)
    assert loose.model_excess > 0 and set(loose.to_json()) == set(own.to_json())


def test_predicted_headroom_is_the_oracles_own_margin_at_each_gpus_slots():
    pb = _problem()
    an = AnalyticCapacity(pb)
    plan = solve(pb, an, "milp")
    used = [g for g in plan.gpus if g.adapters]
    room = predicted_headroom(pb, an, plan)
    assert len(room) == len(used) and all(-1e-9 <= x < MAX_SCALE for x in room)
    for g, x in zip(used, room, strict=True):
        mix = Mix.of(pb.adapters[i] for i in g.adapter_indices)

        def at(s: float, mix: Mix = mix, g=g) -> bool:
            return an.evaluate(0, Mix(mix.ranks, tuple(r * s for r in mix.rates)), g.max_loras).feasible

        assert at(1.0 + x) and not at((1.0 + x) * 1.01)  # at the GPU's own slot count, to ~0.1 %
    # judged at +5 %: the oracle's verdict stands for 5 % more load than it was asked about
    assert predicted_headroom(pb, an, plan, 1.05) == pytest.approx([(1 + x) * 1.05 - 1 for x in room])
