"""Baselines get the *smallest* GPU count at which their rule passes, even when passing is not
monotone in the count (round-robin over a random order is not)."""

from __future__ import annotations

from optplace.solver import AnalyticCapacity, compile_problem
from optplace.solver.baselines import BASELINES, _evaluate, round_robin, run_baseline
from helpers import REPO
from test_solver import LoadOracle, scenario


def test_the_smallest_passing_count_is_found_when_passing_is_not_monotone(monkeypatch):
    pb = compile_problem(scenario("  - {group: a, count: 40, rank: 8, rate_rps: 0.1}"), REPO)
    orc = LoadOracle(pb, capacity_rps=100.0)
    passing = {9} | set(range(14, 60))
    tried: list[int] = []

    def toy(problem, oracle, G):
        tried.append(G)
        return round_robin(problem, oracle, G) if G in passing else []

    monkeypatch.setitem(BASELINES, "toy", toy)
    gpus = run_baseline(pb, orc, "toy", start=1)
    assert len(gpus) == 9  # a gallop + bisection jumped from 8 to 10 and answered 14
    assert tried == list(range(1, 10))


def test_round_robin_on_a_shuffled_zipf_family_is_not_overstated():
    from optplace.bench.solver import family

    sc = family(1000, (8, 16), "zipf-0.5", seed=2)
    pb = compile_problem(sc, REPO)
    an = AnalyticCapacity(pb)
    gpus = run_baseline(pb, an, "round-robin")
    G = len(gpus)
    assert _evaluate(pb, an, BASELINES["round-robin"], G) is not None
    # No smaller count from the volume bound up passes (the answer is the smallest).
    from optplace.solver.bound import volume_bound

    lo = int(volume_bound(pb, an)) + 1
    assert all(_evaluate(pb, an, BASELINES["round-robin"], g) is None for g in range(lo, G))
    # Placements cover every adapter once, each GPU within the analytic model.
    assert sorted(i for g in gpus for i in g.adapter_indices) == list(range(pb.n_adapters))
    assert all(g.feasible for g in gpus)
