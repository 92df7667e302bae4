"""Baseline placement rules, each given the smallest GPU count at which it passes the oracle.

* ``round-robin`` — adapter i → GPU i mod G (spec order).
* ``random`` — each adapter to a uniformly random GPU (numpy Generator seeded by the run).
* ``first-fit-memory`` — fill GPUs in spec order up to ⌈N/G⌉ adapters and the memory cap on slots;
  load is ignored.
* ``least-loaded`` — AIBrix's default: each adapter (spec order) to the GPU with the least summed rate.
* ``rank-grouped`` — LoRAServe-like: GPUs apportioned to rank groups by demand (largest remainder),
  then least-loaded by demand inside each group, largest demand first.

Every GPU gets the oracle's best ``max_loras`` for its adapters. The count G is the smallest that
passes: every count is tried upwards from a lower bound (a rule's feasibility need not be monotone
in G, so a bisection can overshoot).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np

from optplace.solver.bound import volume_bound
from optplace.solver.capacity import AnalyticCapacity, CapacityOracle
from optplace.solver.plan import GpuAssignment, assign_gpu
from optplace.solver.problem import Infeasible, Problem

Rule = Callable[[Problem, CapacityOracle, int], list[list[int]]]


def round_robin(problem: Problem, oracle: CapacityOracle, G: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(G)]
    for a in problem.adapters:
        out[a.index % G].append(a.index)
    return out


def random_rule(problem: Problem, oracle: CapacityOracle, G: int) -> list[list[int]]:
    rng = np.random.default_rng([problem.seed, G, 0x5EED])
    pick = rng.integers(0, G, size=problem.n_adapters)
    out: list[list[int]] = [[] for _ in range(G)]
    for a, g in zip(problem.adapters, pick):
        out[int(g)].append(a.index)
    return out


def first_fit_memory(problem: Problem, oracle: CapacityOracle, G: int) -> list[list[int]]:
    per = math.ceil(problem.n_adapters / G)
    out: list[list[int]] = [[] for _ in range(G)]
    g, rmax = 0, 0
    for a in problem.adapters:
        r = max(rmax, a.rank)
        while g < G and (len(out[g]) >= per or len(out[g]) + 1 > oracle.slot_cap(type_at(problem, g), r)):
            g, rmax = g + 1, 0
            r = a.rank
        if g >= G:
            return []  # the memory rule cannot place everything on G GPUs
        out[g].append(a.index)
        rmax = r
    return out


def least_loaded(problem: Problem, oracle: CapacityOracle, G: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(G)]
    heap = [(0.0, g) for g in range(G)]
    for a in problem.adapters:
        load, g = heapq.heappop(heap)
        out[g].append(a.index)
        heapq.heappush(heap, (load + a.rate_rps, g))
    return out


def rank_grouped(problem: Problem, oracle: CapacityOracle, G: int) -> list[list[int]]:
    ranks = problem.ranks
    if G < len(ranks):
        return []
    demand = {r: math.fsum(a.rate_rps for a in problem.adapters if a.rank == r) for r in ranks}
    total = math.fsum(demand.values()) or 1.0
    # Largest remainder with at least one GPU per rank group.
    quota = {r: max(1.0, G * demand[r] / total) for r in ranks}
    share = {r: int(math.floor(q)) for r, q in quota.items()}
    left = G - sum(share.values())
    for r in sorted(ranks, key=lambda r: -(quota[r] - share[r])):
        if left <= 0:
            break
        share[r] += 1
        left -= 1
    while sum(share.values()) > G:
        r = max(ranks, key=lambda r: share[r])
        share[r] -= 1
    out: list[list[int]] = []
    for r in ranks:
        k = share[r]
        if k <= 0:
            return []
        grp: list[list[int]] = [[] for _ in range(k)]
        heap = [(0.0, g) for g in range(k)]
        for a in sorted((a for a in problem.adapters if a.rank == r), key=lambda a: (-a.rate_rps, a.index)):
            load, g = heapq.heappop(heap)
            grp[g].append(a.index)
            heapq.heappush(heap, (load + a.rate_rps, g))
        out += grp
    return out


BASELINES: dict[str, Rule] = {
    "round-robin": round_robin,
    "random": random_rule,
    "first-fit-memory": first_fit_memory,
    "least-loaded": least_loaded,
    "rank-grouped": rank_grouped,
}


def type_at(problem: Problem, g: int) -> int:
    """Type of the g-th GPU when GPUs are taken in pool order (past the pool: its last type)."""
    for t in problem.gpu_types:
        if g < t.count:
            return t.index
        g -= t.count
    return problem.gpu_types[-1].index


def _evaluate(problem: Problem, oracle: CapacityOracle, rule: Rule, G: int) -> list[GpuAssignment] | None:
    groups = rule(problem, oracle, G)
    if not groups:
        return None
    # Hottest GPU first: a count that fails usually fails there, after one oracle question.
    rate = [math.fsum(problem.adapters[i].rate_rps for i in idx) for idx in groups]
    out: dict[int, GpuAssignment] = {}
    for g in sorted(range(len(groups)), key=lambda g: -rate[g]):
        if not groups[g]:
            continue
        ga = assign_gpu(problem, oracle, type_at(problem, g), groups[g], g)
        if not ga.feasible:
            return None
        out[g] = ga
    return [out[g] for g in sorted(out)]


def _analytic_model(oracle: CapacityOracle) -> AnalyticCapacity | None:
    """The oracle itself when it is the analytic model (bare or behind a deadline wrapper), else None."""
    for cand in (oracle, getattr(oracle, "inner", None)):
        if isinstance(cand, AnalyticCapacity):
            return cand
    return None


def run_baseline(problem: Problem, oracle: CapacityOracle, name: str, start: int = 1) -> list[GpuAssignment]:
    """The smallest G (≥ ``start``) at which rule ``name`` passes, and its GPUs.

    A rule's feasibility need not be monotone in G (round-robin over a random order: 28 and 29 GPUs
    pass, 30 fails, 31 passes on a 1,000-adapter Zipf family), so a gallop + bisection can overshoot
    (it reported 34 there). Every count is tried upwards from ``start`` — or from the volume bound when
    the oracle is the analytic model, whose bound it cannot beat — and the first that passes is the
    answer; failing counts are cheap (hottest GPU first).
    """
    rule = BASELINES[name]
    budget = problem.gpu_budget()
    lo = max(1, start)
    an = _analytic_model(oracle)
    if an is not None:
        lo = max(lo, int(math.ceil(volume_bound(problem, an) - 1e-9)))
    if lo > budget:
        raise Infeasible(f"pool too small: {name} needs at least {lo} GPUs, the pool has {budget}", "pool")
    for G in range(lo, budget + 1):
        found = _evaluate(problem, oracle, rule, G)
        if found is not None:
            return found
    raise Infeasible(f"pool too small: the {name} rule fails on every count up to the pool's {budget} GPUs", "pool")
