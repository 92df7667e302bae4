"""Draining GPUs by splitting adapters over the others' room (optplace.solver.drain)."""

from __future__ import annotations

import math

import pytest

from optplace.solver import AnalyticCapacity
from optplace.solver.capacity import Mix
from optplace.solver.drain import drain, drained_gpus
from optplace.solver.replicate import fragment_problem
from optplace.solver.plan import assign_gpu
from optplace.solver.problem import Deadline
from helpers import h100_problem


def _hot_trio(share: float = 0.6):
    """Three rank-8 adapters, each ``share`` of what one GPU carries of a single adapter."""
    lam, _ = AnalyticCapacity(h100_problem([(8, 1.0)], extra="slo: none")).linear_limits(0, 8, 1)
    pb = h100_problem([(8, share * lam)] * 3, name="trio", extra="slo: none")
    return pb, AnalyticCapacity(pb)


def test_three_hot_adapters_on_two_gpus_once_one_is_split():
    pb, an = _hot_trio()
    # whole adapters: no two fit one GPU, so three GPUs
    assert not an.best_slots(0, Mix.of(pb.adapters[:2])).feasible
    gpus = [assign_gpu(pb, an, 0, [i], i) for i in range(3)]
    out = drain(pb, an, gpus, Deadline.never())
    assert out is not None and len(out) == 2
    frag, placed = drained_gpus(pb, an, out)
    assert len(placed) == 2 and all(g.feasible for g in placed)
    by_name: dict[str, list] = {}
    for a in frag.adapters:
        by_name.setdefault(a.name, []).append(a)
    assert sorted(len(v) for v in by_name.values()) == [1, 1, 2]  # one adapter in two parts
    for a in pb.adapters:
        parts = by_name[a.name]
        assert math.fsum(p.rate_rps for p in parts) == pytest.approx(a.rate_rps, rel=1e-12)
        assert math.fsum(p.share for p in parts) == pytest.approx(1.0, rel=1e-12)
    for g in placed:  # never two parts of one adapter on one GPU
        assert len(set(g.adapters)) == len(g.adapters)


def test_nothing_to_drain_when_every_gpu_is_full():
    pb, an = _hot_trio(0.97)
    gpus = [assign_gpu(pb, an, 0, [i], i) for i in range(3)]
    assert drain(pb, an, gpus, Deadline.never()) is None


def test_fragments_keep_whole_items_and_split_the_rest():
    pb, _ = _hot_trio()
    r = pb.adapters[0].rate_rps
    frag, per_gpu = fragment_problem(
        pb, [[(0, 0.25 * r), (1, pb.adapters[1].rate_rps)], [(0, 0.75 * r), (2, pb.adapters[2].rate_rps)]]
    )
    assert [a.name for a in frag.adapters] == ["a0", "a0", "a1", "a2"]
    assert [a.share for a in frag.adapters[:2]] == pytest.approx([0.25, 0.75])
    assert per_gpu == [[0, 2], [1, 3]]
    assert [a.index for a in frag.adapters] == [0, 1, 2, 3]


@pytest.mark.parametrize("strategy", ["milp", "greedy"])
def test_solve_drains_what_rank_pure_fills_cannot(strategy):
    # one adapter per rank, each 55 % of a GPU: whole adapters take three GPUs, and so does loraserve's
    # fill (it never co-batches ranks); split over the other two GPUs' room, two
    from optplace.solver.strategies import solve_split

    lam, _ = AnalyticCapacity(h100_problem([(8, 1.0)], extra="slo: none")).linear_limits(0, 32, 1)
    pb = h100_problem([(8, 0.55 * lam), (16, 0.55 * lam), (32, 0.55 * lam)], name="ranks", extra="slo: none")
    an = AnalyticCapacity(pb)
    solved = solve_split(pb, an, strategy)
    plan = solved.plan
    assert plan.gpus_used == 2 and solved.unsplit is not None and solved.unsplit.gpus_used == 3
    assert any(line.startswith("drained 1 GPU(s)") for line in plan.log)
    assert all(g.feasible for g in plan.gpus)
    shares: dict[str, float] = {}
    for a in solved.split.problem.adapters:
        shares[a.name] = shares.get(a.name, 0.0) + a.share
    assert shares == pytest.approx({"a0": 1.0, "a1": 1.0, "a2": 1.0})
    assert dict(solved.split.replicas) and max(k for _, k in solved.split.replicas) == 2
    # a baseline is left as it places
    assert solve_split(pb, an, "greedy-paper").plan.gpus_used == 3
