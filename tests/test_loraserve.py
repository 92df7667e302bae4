"""The ``loraserve`` baseline: rank-pure GPUs filled to the oracle's operating point, adapters split at
the boundaries into replicas whose shares add up to the adapter."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from optplace.solver import loraserve
from optplace.solver.capacity import AnalyticCapacity, Mix
from optplace.solver.strategies import prepare, solve


def _problem(adapters, objective="min_gpus", max_gpus=None):
    from optplace.solver.problem import GpuType, make_problem
    from optplace.specs import resolve_profile
    from optplace.twin.workload import WorkloadStats

    prof = resolve_profile("llama-3.1-8b-instruct", "h100-64gb")
    p = make_problem(adapters, [GpuType(0, "h100-64gb", prof, 100, 1.0)], WorkloadStats(3600.0, 223.0, 196.0))
    p = p.with_objective(objective)
    if max_gpus is not None:
        p = replace(p, solver=p.solver.model_copy(update={"max_gpus": max_gpus}))
    return p


def _fleet():
    """A hot rank-16 adapter beyond one GPU, and 60 rank-8 adapters of falling rates."""
    return [("hot", 16, 60.0)] + [(f"c{i}", 8, 4.0 / (1 + i)) for i in range(60)]


def test_split_keeps_every_adapters_rate_and_shares_and_tags_each_part_with_its_gpu():
    p = _problem(_fleet())
    oracle = AnalyticCapacity(p)
    split, log = loraserve.split(p, oracle)
    assert [a.index for a in split.adapters] == list(range(len(split.adapters)))
    assert all(a.gpu >= 0 for a in split.adapters)
    for a in p.adapters:
        parts = [x for x in split.adapters if x.name == a.name]
        assert math.fsum(x.rate_rps for x in parts) == pytest.approx(a.rate_rps, rel=1e-12)
        assert math.fsum(x.share for x in parts) == pytest.approx(1.0, abs=1e-12)
        assert all(x.rank == a.rank for x in parts)
        assert len({x.gpu for x in parts}) == len(parts)  # never two parts of one adapter on one GPU
    hot = [x for x in split.adapters if x.name == "hot"]
    assert len(hot) >= 2  # more than one GPU serves: split over several
    assert len(log) == 2 and all("loraserve rank" in line for line in log)


def test_ranks_are_never_co_batched_and_every_gpu_is_full_but_the_last_of_its_rank():
    p = _problem(_fleet())
    oracle = AnalyticCapacity(p)
    split, _ = loraserve.split(p, oracle)
    gpus = loraserve.assign(split, oracle)
    assert all(g.feasible for g in gpus)
    by_rank: dict[int, list] = {}
    for g in gpus:
        ranks = {split.adapters[i].rank for i in g.adapter_indices}
        assert len(ranks) == 1, g
        by_rank.setdefault(ranks.pop(), []).append(g)
    for rank, gs in by_rank.items():
        for g in gs[:-1]:
            # at its operating point: 1 % more of its load is refused by the oracle
            rates = [1.01 * split.adapters[i].rate_rps for i in g.adapter_indices]
            assert not oracle.best_slots(0, Mix((rank,) * len(rates), tuple(rates))).feasible, (rank, g.gpu)


def test_the_strategy_places_what_prepare_split_and_needs_it():
    p = _problem(_fleet())
    oracle = AnalyticCapacity(p)
    rep = prepare(p, oracle, "loraserve")
    assert dict(rep.replicas)["hot"] >= 2
    plan = solve(rep.problem, oracle, "loraserve")
    doc = plan.to_json()
    shares = [a["share"] for g in doc["placement"] for a in g["adapters"] if isinstance(a, dict) and a["name"] == "hot"]
    assert math.fsum(shares) == pytest.approx(1.0, abs=1e-9)
    assert plan.lower_bound <= plan.objective_value
    cold = _problem([("a", 8, 1.0), ("b", 8, 1.0)])
    with pytest.raises(ValueError, match="loraserve.split"):
        solve(cold, AnalyticCapacity(cold), "loraserve")  # an unsplit problem has no GPU per item
    # every other strategy gets the equal replicas of replicate_hot
    eq = [a for a in prepare(p, oracle, "milp").problem.adapters if a.name == "hot"]
    assert len({round(a.share, 12) for a in eq}) == 1


def test_a_fixed_budget_is_shared_out_over_the_ranks_and_filled_evenly():
    p = _problem(_fleet(), objective="min_latency", max_gpus=12)
    oracle = AnalyticCapacity(p)
    rep = prepare(p, oracle, "loraserve")
    plan = solve(rep.problem, oracle, "loraserve")
    assert plan.gpus_used == 12
    loads: dict[int, list[float]] = {}
    for g in plan.gpus:
        rank = rep.problem.adapters[g.adapter_indices[0]].rank
        loads.setdefault(rank, []).append(math.fsum(rep.problem.adapters[i].rate_rps for i in g.adapter_indices))
    assert set(loads) == {8, 16}
    for xs in loads.values():
        assert max(xs) == pytest.approx(min(xs), rel=1e-9)  # evenly filled
    with pytest.raises(Exception, match="rank classes"):
        prepare(_problem(_fleet(), objective="min_latency", max_gpus=1), oracle, "loraserve")


def test_pool_too_small_is_infeasible_with_the_pool_named():
    from optplace.solver.problem import Infeasible

    p = _problem(_fleet(), max_gpus=2)
    with pytest.raises(Infeasible) as e:
        loraserve.split(p, AnalyticCapacity(p))
    assert e.value.constraint == "pool"
