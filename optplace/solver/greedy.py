"""Greedy placements: the published algorithm (``greedy-paper``) and optplace's improved one (``greedy``).

``greedy-paper`` follows the greedy placement of the published system (arXiv:2508.08343):
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

``greedy_fast`` (the fast first plan, O(classes) oracle calls plus one check per GPU): the same
largest-prefix rule over adapter *classes* (rank, geometric rate bucket; ``problem.classes``) in
plain hottest-first order within rank groups (hot adapters together keep the number of active
adapters per GPU low). Prefixes are class-count vectors at the classes' representative (largest)
rates, memoised, and searched by galloping from the previous GPU's size; a GPU that lies inside one
class repeats until that class runs short (one decision for all of them). Each GPU is judged by
:func:`judge` (the oracle at a handful of slot counts, not the whole grid), and finally on its
adapters' own rates. It is what makes 100,000 adapters solvable in seconds (``optplace bench
limits``), and the anytime strategies start from it.

Every function takes a :class:`~.problem.Deadline`: the searches that have no plan yet raise
:class:`~.problem.TimeLimitReached` when it passes; consolidation stops and returns what it has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from optplace.solver.capacity import AnalyticCapacity, CapacityOracle, Estimate, Mix
from optplace.solver.objectives import get_objective
from optplace.solver.plan import GpuAssignment, assign_gpu, from_estimate
from optplace.solver.problem import AdapterItem, Deadline, Infeasible, Problem, classify

_NEVER = Deadline(0.0)  # no time limit (``limit_s`` = inf)

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


def greedy_paper(problem: Problem, oracle: CapacityOracle, deadline: Deadline = _NEVER) -> list[GpuAssignment]:
    """The published greedy (see the module docstring)."""
    order = paper_order(problem.adapters)
    types = _type_sequence(problem)
    gpus: list[GpuAssignment] = []
    pos = 0
    gi = 0
    while pos < len(order):
        deadline.check(f"greedy-paper, {len(gpus)} GPUs filled, {len(order) - pos} adapters left")
        if gi >= len(types):
            raise Infeasible(
                f"not enough servers: the published greedy needs more than the {len(types)} GPUs "
                f"available ({len(order) - pos} adapters left)",
                "pool",
            )
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
            raise single_adapter_infeasible(problem, oracle, order[pos])
        assert last is not None
        gpus.append(from_estimate(problem, gtype, [a.index for a in committed], last, len(gpus)))
        gi += 1
    return gpus


def single_adapter_infeasible(problem: Problem, oracle: CapacityOracle, a: AdapterItem) -> Infeasible:
    best = None
    for t in problem.gpu_types:
        e = oracle.best_slots(t.index, Mix.of([a]))
        if best is None or e.throughput_tok_s > best[1].throughput_tok_s:
            best = (t, e)
    assert best is not None
    t, e = best
    if e.reason == "memory":
        return Infeasible(
            f"adapter {a.name!r} (rank {a.rank}) does not fit GPU memory: no {t.name} starts with "
            f"one slot at max_lora_rank {a.rank}",
            "memory",
        )
    cap = e.capacity_tok_s
    if math.isnan(cap):  # the surrogate and the twin give no capacity figure: the analytic model's
        an = getattr(oracle, "analytic", None)
        cap = an.best_slots(t.index, Mix.of([a])).capacity_tok_s if an is not None else math.nan
    about = f" (capacity ≈ {cap:.0f} tokens/s)" if math.isfinite(cap) else ""
    return Infeasible(
        f"adapter {a.name!r} alone offers {e.offered_tok_s:.0f} tokens/s at {a.rate_rps:g} req/s, more "
        f"than one {t.name} serves within max_throughput_loss="
        f"{problem.constraints.max_throughput_loss:g}{about}",
        "max_throughput_loss",
    )


def largest_prefix(
    oracle: CapacityOracle, gtype: int, seq: Sequence[AdapterItem], base: Sequence[AdapterItem] = ()
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


def greedy_improved(
    problem: Problem, oracle: CapacityOracle, consolidate_passes: int = 2, deadline: Deadline = _NEVER
) -> list[GpuAssignment]:
    """The improved greedy (see the module docstring). Past ``deadline`` while filling GPUs it raises
    :class:`~.problem.TimeLimitReached`; past it while consolidating it returns the plan it has."""
    order = paper_order(problem.adapters)
    avail = {t.index: t.count for t in problem.gpu_types}
    budget = problem.gpu_budget()
    gpus: list[GpuAssignment] = []
    pos = 0
    obj = get_objective(problem.objective)
    while pos < len(order):
        deadline.check(f"greedy, {len(gpus)} GPUs filled, {len(order) - pos} adapters left")
        if len(gpus) >= budget or not any(avail.values()):
            raise Infeasible(
                f"pool too small: {len(gpus)} GPUs are used up with {len(order) - pos} adapters left to place", "pool"
            )
        rest = order[pos:]
        choices = []
        for t in problem.gpu_types:
            if avail[t.index] <= 0:
                continue
            k, est = largest_prefix(oracle, t.index, rest)
            if k > 0 and est is not None:
                load = math.fsum(a.rate_rps for a in rest[:k])
                choices.append((obj.type_preference(k, load, t.cost_per_hour), -t.index, t.index, k, est))
            if not obj.compares_gpu_types and k > 0:
                break  # no preference between types: the first type that takes adapters (pool order)
        if not choices:
            raise single_adapter_infeasible(problem, oracle, rest[0])
        _, _, gtype, k, est = max(choices, key=lambda c: c[:2])
        gpus.append(from_estimate(problem, gtype, [a.index for a in rest[:k]], est, len(gpus)))
        avail[gtype] -= 1
        pos += k
    for _ in range(consolidate_passes):
        before = len(gpus)
        gpus = consolidate(problem, oracle, gpus, deadline=deadline)
        if len(gpus) == before or deadline.expired():
            break
    return gpus


def consolidate(
    problem: Problem,
    oracle: CapacityOracle,
    gpus: list[GpuAssignment],
    max_tries: int = 4,
    max_dest: int = 12,
    deadline: Deadline = _NEVER,
) -> list[GpuAssignment]:
    """Try to empty the least-loaded GPUs by moving their adapters (hottest first) into the other GPUs
    (best fit: the GPU with the least remaining capacity that still accepts the adapter). Stops at
    ``deadline`` with the GPUs emptied so far (an unfinished move is dropped)."""
    gpus = list(gpus)
    tries = 0
    victims = sorted(range(len(gpus)), key=lambda i: gpus[i].offered_tok_s)
    for v in victims:
        if tries >= max_tries or len(gpus) <= 1 or deadline.expired():
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
            if deadline.expired():
                moved_all = False
                break
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


# --- the fast first plan -------------------------------------------------------------------------

#: Slot counts a non-analytic oracle is asked at after the analytic model's pick and one slot per
#: adapter (the surrogate's best slots for 50–450 adapters fall between 13 and 64).
_JUDGE_SLOTS: tuple[int, ...] = (32, 16, 48, 24, 64, 40)


def judge(oracle: CapacityOracle, gtype: int, mix: Mix) -> Estimate:
    """One GPU's verdict at a bounded cost: the oracle is asked at the analytic model's best slot
    count, then at its guard's (the model the oracle enforces: under the SLO the envelope, whose
    busy-slot rule can leave only a narrow band of slot counts to a GPU of many adapters), then at one
    slot per adapter, then at a few common counts; the first that passes is the answer. For an
    analytic oracle this is its ``best_slots``. A surrogate's ``best_slots`` evaluates every slot
    count of the grid (~40 evaluations); this costs one to nine, which is what a 600-GPU plan affords
    inside a few seconds."""
    an = getattr(oracle, "analytic", None)
    if an is None or an is oracle:
        return oracle.best_slots(gtype, mix)
    first = an.best_slots(gtype, mix)
    if first.reason == "memory":
        return first
    cap = oracle.slot_cap(gtype, mix.rank_max)
    tried = {first.max_loras}
    e0 = oracle.evaluate(gtype, mix, first.max_loras)
    if e0.feasible:
        return e0
    guard = getattr(oracle, "guard", None)
    guarded = guard.best_slots(gtype, mix).max_loras if isinstance(guard, AnalyticCapacity) else first.max_loras
    for L in (guarded, min(mix.n, cap), *_JUDGE_SLOTS):
        if L in tried or L < 1 or L > min(mix.n, cap):
            continue
        tried.add(L)
        e = oracle.evaluate(gtype, mix, L)
        if e.feasible:
            return e
    return e0


def greedy_fast(
    problem: Problem, oracle: CapacityOracle, deadline: Deadline = _NEVER, width: float | None = None
) -> list[GpuAssignment]:
    """The fast first plan (see the module docstring); ``width``: class width (default: the problem's
    classes)."""
    base = problem.classes if width is None else classify(problem.adapters, width)
    classes = sorted(base, key=lambda c: (-c.rank, -c.rate_rps, c.index))
    left = [c.count for c in classes]
    taken = [0] * len(classes)  # members of each class already placed (members are hottest first)
    budget = problem.gpu_budget()
    avail = {t.index: min(t.count, budget) for t in problem.gpu_types}
    obj = get_objective(problem.objective)
    memo: dict[tuple[int, tuple[tuple[int, int], ...]], Estimate] = {}
    groups: list[tuple[int, list[int], int]] = []  # type, adapters, slots at representative rates
    ptr = 0
    k_prev, load_prev = 8, math.inf

    def prefix(k: int) -> tuple[tuple[int, int], ...]:
        vec, c = [], ptr
        while k > 0 and c < len(classes):
            take = min(k, left[c])
            if take:
                vec.append((c, take))
                k -= take
            c += 1
        return tuple(vec)

    def check(gtype: int, k: int) -> tuple[tuple[tuple[int, int], ...], Estimate]:
        vec = prefix(k)
        key = (gtype, vec)
        e = memo.get(key)
        if e is None:
            ranks = tuple(r for c, m in vec for r in (classes[c].rank,) * m)
            rates = tuple(x for c, m in vec for x in (classes[c].rate_rps,) * m)
            e = memo[key] = judge(oracle, gtype, Mix(ranks, rates))
        return vec, e

    def same_load(load: float) -> int:
        """Length of the prefix whose representative load is closest to ``load`` from below."""
        k, c = 0, ptr
        while c < len(classes) and load > 0:
            m = min(left[c], int(load / classes[c].rate_rps) if classes[c].rate_rps > 0 else left[c])
            k += m
            load -= m * classes[c].rate_rps
            if m < left[c]:
                break
            c += 1
        return k

    def largest(gtype: int, hi: int) -> tuple[int, tuple[tuple[int, int], ...], Estimate | None]:
        """Largest feasible prefix, galloping from the size that carries the previous GPU's load
        (capacity is mostly load: usually two checks)."""
        k = max(1, min(same_load(load_prev) if math.isfinite(load_prev) else k_prev, hi))
        vec, e = check(gtype, k)
        if e.feasible:
            lo, best, step = k, (vec, e), 1
            while lo < hi:
                m = min(hi, lo + step)
                v2, e2 = check(gtype, m)
                if not e2.feasible:
                    hi = m - 1
                    break
                lo, best, step = m, (v2, e2), step * 2
        else:
            lo, best, step, hi = 0, None, 1, k - 1
            while hi >= 1:
                m = max(1, hi - step + 1)
                v2, e2 = check(gtype, m)
                if e2.feasible:
                    lo, best = m, (v2, e2)
                    break
                hi, step = m - 1, step * 2
            if best is None:
                return 0, (), None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            v2, e2 = check(gtype, mid)
            if e2.feasible:
                lo, best = mid, (v2, e2)
            else:
                hi = mid - 1
        assert best is not None  # both branches above leave with a count checked feasible
        return lo, best[0], best[1]

    remaining = problem.n_adapters
    while remaining > 0:
        deadline.check(f"fast greedy, {len(groups)} GPUs filled, {remaining} adapters left")
        while left[ptr] == 0:
            ptr += 1
        if len(groups) >= budget or not any(avail.values()):
            raise Infeasible(
                f"pool too small: {len(groups)} GPUs are used up with {remaining} adapters left to place", "pool"
            )
        choices = []
        for t in problem.gpu_types:
            if avail[t.index] <= 0:
                continue
            k, vec, est = largest(t.index, remaining)
            if k > 0 and est is not None:
                load = math.fsum(classes[c].rate_rps * m for c, m in vec)
                choices.append((obj.type_preference(k, load, t.cost_per_hour), -t.index, t.index, k, vec))
                if not obj.compares_gpu_types:
                    break
        if not choices:
            raise single_adapter_infeasible(problem, oracle, problem.adapters[classes[ptr].members[taken[ptr]]])
        _, _, gtype, k, vec = max(choices, key=lambda c: c[:2])
        slots = memo[(gtype, vec)].max_loras
        k_prev, load_prev = k, math.fsum(classes[c].rate_rps * m for c, m in vec)
        # A GPU inside one class repeats until the class runs short: one decision for all of them.
        reps = 1
        if len(vec) == 1:
            reps = max(1, min(left[vec[0][0]] // k, avail[gtype], budget - len(groups)))
        for _ in range(reps):
            members: list[int] = []
            for c, m in vec:
                members += classes[c].members[taken[c] : taken[c] + m]
                taken[c] += m
                left[c] -= m
            groups.append((gtype, members, slots))
        avail[gtype] -= reps
        remaining -= k * reps
    return _real_rates(problem, oracle, groups, deadline)


def _real_rates(
    problem: Problem, oracle: CapacityOracle, groups: list[tuple[int, list[int], int]], deadline: Deadline
) -> list[GpuAssignment]:
    """GPU entries judged on the adapters' own rates (≤ their class's representative, so they pass
    at the same slots but for a non-monotone oracle; a GPU that fails everywhere is split in two
    until its parts pass)."""
    out: list[GpuAssignment] = []
    todo = list(groups)
    exact = getattr(oracle, "analytic", oracle) is oracle  # the analytic model: best slots are cheap
    while todo:
        gtype, members, slots = todo.pop(0)
        deadline.check(f"fast greedy, checking GPU {len(out)} on the adapters' own rates")
        mix = Mix.of(problem.adapters[i] for i in members)
        e = oracle.best_slots(gtype, mix) if exact else oracle.evaluate(gtype, mix, slots)
        if not e.feasible:
            e = judge(oracle, gtype, mix)
        if not e.feasible and len(members) > 1:
            e = oracle.best_slots(gtype, mix)
            if not e.feasible:
                half = len(members) // 2
                todo[:0] = [(gtype, members[:half], slots), (gtype, members[half:], slots)]
                continue
        out.append(from_estimate(problem, gtype, members, e, len(out)))
    return out
