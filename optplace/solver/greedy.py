"""Greedy placements: the published algorithm (``greedy-paper``) and optplace's improved one (``greedy``).

``greedy-paper`` follows /work/shared/notes/published-system.md ("Their greedy placement"):
rank groups from the largest rank down; within a group rates alternate hottest, coldest, next
hottest…; one GPU at a time, first fit; the GPU is only tested when its served-adapter count
reaches a test point of :data:`TEST_POINTS`; at a test point the memory cap applies, the current and
the next larger ``max_loras`` are compared by predicted throughput (ties → more slots), and the
starvation check decides: pass → commit, fail → put the pending adapters back, close the GPU for
good and open the next. Leftovers at the end get a final check. One deviation, to terminate: when
the *first* test point already fails on an empty GPU (e.g. 8 hot adapters do not fit one GPU), the
test points of that GPU halve (4, 2, 1) instead of closing an empty GPU forever.

``greedy`` (improved): the same hot/cold interleaving inside rank groups, but each GPU takes the
*largest* prefix the oracle accepts (bisection over the adapter count, not a 14-point grid), the
slot count is the oracle's best for that prefix, the GPU type is the cheapest per served load
(heterogeneous pools), and a final consolidation pass empties the least-loaded GPUs into the
others where the oracle allows (revisiting open GPUs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .capacity import CapacityOracle, Estimate, Mix
from .plan import GpuAssignment, assign_gpu, from_estimate
from .problem import AdapterItem, Infeasible, Problem

TEST_POINTS: tuple[int, ...] = (8, 16, 32, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512, 576)


def paper_order(adapters: Sequence[AdapterItem]) -> list[AdapterItem]:
    """Rank groups from the largest rank down; within a group rates alternate hottest, coldest, …"""
    out: list[AdapterItem] = []
    for rank in sorted({a.rank for a in adapters}, reverse=True):
        grp = sorted((a for a in adapters if a.rank == rank), key=lambda a: (-a.rate_rps, a.index))
        lo, hi = 0, len(grp) - 1
        take_hot = True
        while lo <= hi:
            if take_hot:
                out.append(grp[lo])
                lo += 1
            else:
                out.append(grp[hi])
                hi -= 1
            take_hot = not take_hot
    return out


def _type_sequence(problem: Problem) -> list[int]:
    """GPU types in pool order, one entry per available GPU (bounded by the solver's budget)."""
    seq: list[int] = []
    budget = problem.gpu_budget()
    for t in problem.gpu_types:
        seq += [t.index] * min(t.count, budget - len(seq))
        if len(seq) >= budget:
            break
    return seq


def _paper_check(oracle: CapacityOracle, gtype: int, mix: Mix, slots: int) -> tuple[Estimate, int]:
    """Memory cap, then the better of current and next slot values by predicted throughput."""
    cap = oracle.slot_cap(gtype, mix.rank_max)
    cur = min(slots, cap, max(mix.n, 1))
    nxt = next((s for s in TEST_POINTS if s > cur), cur)
    nxt = min(nxt, cap, mix.n) if mix.n > cur else cur
    cands = sorted({max(cur, 1), max(nxt, 1)})
    ests = [oracle.evaluate(gtype, mix, L) for L in cands]
    best = max(ests, key=lambda e: (e.throughput_tok_s, e.max_loras))
    return best, best.max_loras


def greedy_paper(problem: Problem, oracle: CapacityOracle) -> list[GpuAssignment]:
    """The published greedy (see the module docstring)."""
    order = paper_order(problem.adapters)
    types = _type_sequence(problem)
    gpus: list[GpuAssignment] = []
    pos = 0
    gi = 0
    while pos < len(order):
        if gi >= len(types):
            raise Infeasible(f"not enough servers: the published greedy needs more than the {len(types)} GPUs "
                             f"available ({len(order) - pos} adapters left)", "pool")
        gtype = types[gi]
        committed: list[AdapterItem] = []
        slots = TEST_POINTS[0]
        last: Estimate | None = None
        points = list(TEST_POINTS)
        closed = False
        while not closed:
            target = next((p for p in points if p > len(committed)), None)
            if target is None:
                break
            end = min(pos + target - len(committed), len(order))
            pending = order[pos:end]
            mix = Mix.of(committed + pending)
            est, L = _paper_check(oracle, gtype, mix, slots)
            if est.feasible:
                committed += pending
                pos = end
                slots, last = L, est
                if pos >= len(order):
                    break
            elif not committed and points[0] > 1:
                points = [p for p in (points[0] // 2,) if p >= 1] + [p for p in TEST_POINTS if p > points[0]]
            else:
                closed = True
        if not committed:
            # Even one adapter alone fails: the spec is infeasible (reported with the binding rule).
            raise _single_adapter_infeasible(problem, oracle, order[pos])
        assert last is not None
        gpus.append(from_estimate(problem, gtype, [a.index for a in committed], last, len(gpus)))
        gi += 1
    return gpus


def _single_adapter_infeasible(problem: Problem, oracle: CapacityOracle, a: AdapterItem) -> Infeasible:
    best = None
    for t in problem.gpu_types:
        e = oracle.best_slots(t.index, Mix.of([a]))
        if best is None or e.throughput_tok_s > best[1].throughput_tok_s:
            best = (t, e)
    assert best is not None
    t, e = best
    if e.reason == "memory":
        return Infeasible(f"adapter {a.name!r} (rank {a.rank}) does not fit GPU memory: no {t.name} starts with "
                          f"one slot at max_lora_rank {a.rank}", "memory")
    return Infeasible(f"adapter {a.name!r} alone offers {e.offered_tok_s:.0f} tokens/s at {a.rate_rps:g} req/s, more "
                      f"than one {t.name} serves within max_throughput_loss="
                      f"{problem.constraints.max_throughput_loss:g} (capacity ≈ {e.capacity_tok_s:.0f} tokens/s)",
                      "max_throughput_loss")


def largest_prefix(oracle: CapacityOracle, gtype: int, seq: Sequence[AdapterItem], base: Sequence[AdapterItem] = ()
                   ) -> tuple[int, Estimate | None]:
    """Largest k such that ``base + seq[:k]`` is feasible on one GPU (bisection; k = 0 → None)."""
    def feas(k: int) -> Estimate:
        return oracle.best_slots(gtype, Mix.of(list(base) + list(seq[:k])))

    lo, best = 0, None
    hi = len(seq)
    # Gallop first: most GPUs hold far fewer adapters than remain.
    step = 8
    while step < hi:
        e = feas(step)
        if not e.feasible:
            hi = step - 1
            break
        lo, best = step, e
        step *= 2
    else:
        e = feas(hi)
        if e.feasible:
            return hi, e
        hi -= 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        e = feas(mid)
        if e.feasible:
            lo, best = mid, e
        else:
            hi = mid - 1
    if lo > 0 and best is None:
        best = feas(lo)
    return lo, best


def greedy_improved(problem: Problem, oracle: CapacityOracle, consolidate_passes: int = 2) -> list[GpuAssignment]:
    """The improved greedy (see the module docstring)."""
    order = paper_order(problem.adapters)
    avail = {t.index: t.count for t in problem.gpu_types}
    budget = problem.gpu_budget()
    gpus: list[GpuAssignment] = []
    pos = 0
    min_cost = problem.objective == "min_cost"
    while pos < len(order):
        if len(gpus) >= budget or not any(avail.values()):
            raise Infeasible(f"pool too small: {len(gpus)} GPUs are used up with {len(order) - pos} adapters "
                             f"left to place", "pool")
        rest = order[pos:]
        choices = []
        for t in problem.gpu_types:
            if avail[t.index] <= 0:
                continue
            k, est = largest_prefix(oracle, t.index, rest)
            if k > 0 and est is not None:
                load = math.fsum(a.rate_rps for a in rest[:k])
                choices.append(((load / t.cost_per_hour) if min_cost else k, -t.index, t.index, k, est))
            if not min_cost and k > 0:
                break  # min_gpus: the first type that takes adapters (pool order)
        if not choices:
            raise _single_adapter_infeasible(problem, oracle, rest[0])
        _, _, gtype, k, est = max(choices, key=lambda c: c[:2])
        gpus.append(from_estimate(problem, gtype, [a.index for a in rest[:k]], est, len(gpus)))
        avail[gtype] -= 1
        pos += k
    for _ in range(consolidate_passes):
        before = len(gpus)
        gpus = consolidate(problem, oracle, gpus)
        if len(gpus) == before:
            break
    return gpus


def consolidate(problem: Problem, oracle: CapacityOracle, gpus: list[GpuAssignment],
                max_tries: int = 4, max_dest: int = 12) -> list[GpuAssignment]:
    """Try to empty the least-loaded GPUs by moving their adapters (hottest first) into the other GPUs
    (best fit: the GPU with the least remaining capacity that still accepts the adapter)."""
    gpus = list(gpus)
    tries = 0
    victims = sorted(range(len(gpus)), key=lambda i: gpus[i].offered_tok_s)
    for v in victims:
        if tries >= max_tries or len(gpus) <= 1:
            break
        tries += 1
        src = gpus[v]
        if not src.adapters:
            continue
        work = {i: list(g.adapter_indices) for i, g in enumerate(gpus) if i != v and g.adapters}
        ests: dict[int, Estimate] = {}
        moved_all = True
        for a in sorted(src.adapter_indices, key=lambda i: -problem.adapters[i].rate_rps):
            # Best fit among the GPUs with the most headroom (bounded, so large plans stay fast).
            roomy = sorted(work, key=lambda i: -(gpus[i].capacity_tok_s - gpus[i].offered_tok_s))[:max_dest]
            slack = sorted(roomy, key=lambda i: (gpus[i].capacity_tok_s - gpus[i].offered_tok_s, i))
            placed = False
            for i in slack:
                mix = Mix.of(problem.adapters[j] for j in work[i] + [a])
                e = oracle.best_slots(gpus[i].type_index, mix)
                if e.feasible:
                    work[i].append(a)
                    ests[i] = e
                    placed = True
                    break
            if not placed:
                moved_all = False
                break
        if moved_all:
            for i, e in ests.items():
                gpus[i] = from_estimate(problem, gpus[i].type_index, work[i], e, i)
            gpus[v] = assign_gpu(problem, oracle, src.type_index, [], v)
    return [g for g in gpus if g.adapters]
