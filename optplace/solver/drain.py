"""Draining a GPU by splitting adapters over the others' room.

A plan of whole adapters leaves room on GPUs whose adapters are few and hot: two adapters that each
take 40 % of a GPU leave 20 % free, and no third one fits. Under the learned oracle that room adds up
(on the 1,000-adapter Zipf-0.9 family with ranks 8/16/32, 21 GPUs carry ~19.4 GPUs of load) but no
whole-adapter move can use it. :func:`drain` tries to empty one GPU after another (the least full
first, as the oracle sees it): each adapter of the victim, hottest first, goes whole to the GPU with
the most room that accepts it, else is split, the roomiest GPUs taking the largest part each accepts
(bisection on the part's rate), until all of it is placed. A victim that cannot be emptied is left
as it was. The split parts are replicas with routing shares, as :mod:`.loraserve`'s fill makes them
(:func:`~.replicate.fragment_problem`), so the twin, the repair and the router treat them as any replica.

Room is the oracle's: a GPU's largest accepted multiple of its load (:func:`.gap.largest_scale`),
measured once and lowered by every part placed. It only orders the destinations: a part is placed
only where the oracle accepts the GPU's new mix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

from optplace.solver.capacity import CapacityOracle, Mix
from optplace.solver.gap import largest_scale
from optplace.solver.plan import GpuAssignment, assign_gpu
from optplace.solver.problem import Deadline, Problem
from optplace.solver.replicate import fragment_problem

#: Victims tried per call (least full first): each costs a few oracle calls per adapter.
MAX_VICTIMS = 8
#: Bisection steps on a part's rate (its size known to 2^-12 of what was left of the adapter).
PART_STEPS = 12
#: A part below this share of what is left of the adapter is not made.
MIN_PART = 1e-3

#: Per GPU: its type and (item index, rate placed there) pairs.
Drained = list[tuple[int, list[tuple[int, float]]]]


def _mix(problem: Problem, items: Sequence[tuple[int, float]]) -> Mix:
    return Mix(tuple(problem.adapters[i].rank for i, _ in items), tuple(r for _, r in items))


def drain(
    problem: Problem, oracle: CapacityOracle, gpus: Sequence[GpuAssignment], deadline: Deadline
) -> Drained | None:
    """``gpus`` with as many GPUs emptied as the oracle allows (see the module docstring), or None when
    none could be. Stops at ``deadline`` with the GPUs emptied so far."""
    state: Drained = [
        (g.type_index, [(i, problem.adapters[i].rate_rps) for i in g.adapter_indices]) for g in gpus if g.adapters
    ]

    def with_part(k: int, base: list[tuple[int, float]], i: int, part: float) -> bool:
        """Does GPU ``k`` accept item ``i`` at rate ``part`` beside ``base``?"""
        return oracle.best_slots(state[k][0], _mix(problem, [*base, (i, part)])).feasible

    scale: list[float] = []
    for t, items in state:
        if deadline.expired():  # hundreds of GPUs: measuring their room alone may outlast the limit
            return None
        scale.append(largest_scale(oracle, t, _mix(problem, items)))
    emptied = 0
    for v in sorted(range(len(state)), key=lambda k: (-scale[k], k))[:MAX_VICTIMS]:
        if deadline.expired() or len(state) - emptied <= 1:
            break
        work = {k: list(items) for k, (_, items) in enumerate(state) if k != v and items}
        room = {k: math.fsum(r for _, r in work[k]) * (scale[k] - 1.0) for k in work}
        names = {k: {problem.adapters[i].name for i, _ in work[k]} for k in work}
        done = True
        for i, rate in sorted(state[v][1], key=lambda p: (-p[1], p[0])):
            name = problem.adapters[i].name
            left = rate
            for k in sorted(work, key=lambda k: (-room[k], k)):
                if left <= 0.0 or deadline.expired():
                    break
                if room[k] <= 0.0 or name in names[k]:
                    continue
                part = _largest_part(partial(with_part, k, work[k], i), left)
                if part < MIN_PART * left:
                    continue
                if part >= left * (1 - 1e-12):
                    part = left
                work[k].append((i, part))
                names[k].add(name)
                room[k] -= part
                left -= part
            if left > 0.0:
                done = False
                break
        if done:
            for k, items in work.items():
                state[k] = (state[k][0], items)
            state[v] = (state[v][0], [])
            emptied += 1
    return [s for s in state if s[1]] if emptied else None


def _largest_part(ok: Callable[[float], bool], rate: float) -> float:
    """The largest part of ``rate`` that ``ok(part)`` accepts: the whole when it does, else by
    bisection (0 when not even :data:`MIN_PART` of it)."""
    if ok(rate):
        return rate
    lo, hi = MIN_PART * rate, rate
    if not ok(lo):
        return 0.0
    for _ in range(PART_STEPS):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def drained_gpus(problem: Problem, oracle: CapacityOracle, drained: Drained) -> tuple[Problem, list[GpuAssignment]]:
    """The fragments' problem (:func:`~.replicate.fragment_problem`) and each GPU of ``drained`` on it."""
    frag, per_gpu = fragment_problem(problem, [items for _, items in drained])
    return frag, [assign_gpu(frag, oracle, drained[g][0], idx, g) for g, idx in enumerate(per_gpu)]
