"""Repair hook: given a plan and the GPUs the twin found starved or OOM, produce a repaired plan.

The pipeline calls :func:`repair` in a loop (simulate → repair → simulate …). Per bad GPU:

* OOM → lower ``max_loras`` to the largest slot count that starts at its ``max_lora_rank``; if
  even that does not start, split the GPU in two.
* starved, first round, with fewer slots than adapters → raise slots (all adapters get one, within
  the memory cap): sticky slots are the usual cause of a starved GPU the oracle accepted.
* starved otherwise → move adapters off until the GPU's offered load drops by the measured loss plus
  a 5 % margin (at least 10 %): the hottest that fit within that share, then the one that crosses it
  by the least (:func:`_shed`), so one hot adapter is not moved for a GPU that needs to shed a tenth.

A GPU that misses the SLO (``slo``: it serves its throughput, but its latency is over a bound) is
repaired like a starved one, except that

* a GPU with more adapters than its memory cap of slots first moves its coldest adapters off, down
  to the cap; one with fewer slots than adapters (below the cap) gets a slot per adapter, in any
  round: an adapter without a slot waits for one to free (sticky slots), which is what makes a GPU
  with a low loss miss a TTFT bound;
* a GPU that already gives every adapter a slot sheds load as a starved one does;
* every GPU it leaves with adapters or fills gets a slot per adapter (within the cap), and the
  re-homing keeps every GPU within its slot cap.

The twin judges the result again; the pipeline runs up to 8 rounds under an SLO.

The moved adapters (of every starved GPU of the round) are re-homed, cheapest first:

1. onto the good GPUs (not starved/OOM this round) with the most headroom (analytic utilisation)
   that the oracle accepts with a :data:`MARGIN` load margin — the twin already disagreed with the
   oracle once on this plan — growing by :data:`SLO_MARGIN_STEP` per round when a GPU misses the SLO;
1b. else, when the caller hands a twin check (the pipeline does), onto the good GPUs the twin finds
   roomiest, judged by the twin itself on every check draw (:func:`_twin_place`): on a plan as full as
   the oracle allows, the margin of step 1 leaves no GPU for the few adapters a repair moves, though
   the twin may have room for them;
2. else by re-balancing the good GPUs with the leftovers on them (:func:`~.balance.rebalance`, same
   margin), so no GPU is added when the existing ones can share the load;
3. else onto as few new GPUs as the oracle allows (first fit with the margin; one in the usual case),
   then re-balanced with the good GPUs so the new GPU takes its share instead of only the leftovers.

A starved GPU keeps its remaining adapters and receives none (the twin just rejected its mix).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from optplace.infra.text import count
from optplace.solver.balance import proxy_model, rebalance, scaled, utilisation
from optplace.solver.capacity import CapacityOracle
from optplace.solver.greedy import judge
from optplace.solver.plan import GpuAssignment, Plan, assign_gpu, renumber
from optplace.solver.problem import Infeasible, Problem


@dataclass(frozen=True, slots=True)
class RepairResult:
    """The repaired plan and what was done (one line per action)."""

    plan: Plan
    actions: tuple[str, ...]


def repair(
    problem: Problem,
    oracle: CapacityOracle,
    plan: Plan,
    starved: Sequence[int] = (),
    oom: Sequence[int] = (),
    losses: Mapping[int, float] | None = None,
    round_: int = 0,
    slo: Sequence[int] = (),
    twin_check: TwinCheck | None = None,
    room: Mapping[int, float] | None = None,
) -> RepairResult:
    """Repair the GPUs at indices ``starved`` / ``oom`` / ``slo`` (misses the SLO) of ``plan`` (see the
    module docstring); ``twin_check`` and ``room`` (per GPU, the twin's margin to failing on this plan,
    larger is roomier) enable step 1b."""
    gpus = list(plan.gpus)
    actions: list[str] = []
    slo_set = set(slo) - set(starved) - set(oom)
    starved = sorted(set(starved) | slo_set)
    bad = set(starved) | set(oom)
    losses = dict(losses or {})
    new: list[GpuAssignment] = []
    for i in sorted(oom):
        g = gpus[i]
        cap = oracle.slot_cap(g.type_index, g.max_lora_rank)
        if cap >= 1:
            L = min(g.max_loras, cap)
            gpus[i] = assign_gpu(problem, oracle, g.type_index, g.adapter_indices, i, max_loras=L)
            actions.append(f"GPU {i}: OOM → max_loras {g.max_loras} → {L} (memory cap at rank {g.max_lora_rank})")
        else:
            half = len(g.adapter_indices) // 2
            gpus[i] = assign_gpu(problem, oracle, g.type_index, g.adapter_indices[:half], i)
            new.append(assign_gpu(problem, oracle, g.type_index, g.adapter_indices[half:], len(gpus) + len(new)))
            actions.append(f"GPU {i}: OOM at any slot count → split in two")
    pending: list[int] = []
    shed_lines: list[tuple[int, str, float]] = []
    for i in sorted(set(starved) - set(oom)):
        g = gpus[i]
        n = len(g.adapter_indices)
        cap = oracle.slot_cap(g.type_index, g.max_lora_rank)
        what = "misses SLO" if i in slo_set else "starved"
        moved: list[int] = []
        if i in slo_set:
            moved = _coldest_beyond_cap(problem, g, cap)
            if not moved and min(n, cap) > g.max_loras:
                L = min(n, cap)
                gpus[i] = assign_gpu(problem, oracle, g.type_index, g.adapter_indices, i, max_loras=L)
                actions.append(f"GPU {i}: {what} → max_loras {g.max_loras} → {L} (a slot per adapter)")
                continue
            if moved:
                what += f" → moved {len(moved)} coldest adapters (more than its {cap} slots)"
        elif round_ == 0 and g.max_loras < n and min(n, cap) > g.max_loras:
            L = min(n, cap)
            gpus[i] = assign_gpu(problem, oracle, g.type_index, g.adapter_indices, i, max_loras=L)
            actions.append(f"GPU {i}: {what} → max_loras {g.max_loras} → {L}")
            continue
        if not moved:  # shed the measured loss plus a margin
            target = max(0.10, losses.get(i, 0.10) + 0.05)
            total = math.fsum(problem.adapters[a].rate_rps for a in g.adapter_indices)
            moved = _shed(problem, g.adapter_indices, target * total)
            what = ("misses SLO" if i in slo_set else "starved") + f" → moved {count(len(moved), 'adapter')}"
        if not moved:  # a single adapter that starves alone: nothing to move
            name = problem.adapters[g.adapter_indices[0]].name
            if i in slo_set:
                raise Infeasible(f"GPU {i}: adapter {name!r} misses the SLO even alone", "slo")
            raise Infeasible(f"GPU {i}: adapter {name!r} starves even alone", "max_throughput_loss")
        keep = [a for a in g.adapter_indices if a not in set(moved)]
        slots = _slot_each(problem, oracle, g.type_index, keep) if i in slo_set else None
        gpus[i] = assign_gpu(problem, oracle, g.type_index, keep, i, max_loras=slots)
        pending += moved
        total = math.fsum(problem.adapters[a].rate_rps for a in g.adapter_indices)
        shed = math.fsum(problem.adapters[a].rate_rps for a in moved)
        shed_lines.append((i, what, shed / total if total > 0 else 0.0))
    if pending:
        where = _rehome(
            problem,
            oracle,
            gpus,
            new,
            sorted(pending, key=lambda a: (-problem.adapters[a].rate_rps, a)),
            bad,
            _type_for_new(problem, [gpus[i].type_index for i, _, _ in shed_lines], gpus + new),
            fit_slots=bool(slo_set),
            margin=MARGIN + (SLO_MARGIN_STEP * round_ if slo_set else 0.0),
            twin_check=twin_check,
            room=room,
        )
        for i, how, frac in shed_lines:
            actions.append(f"GPU {i}: {how} ({frac:.0%} of its load) off it")
        actions.append(where)
    if slo_set:
        # A GPU that received adapters gets a slot per adapter (within its memory cap), as the GPUs
        # repaired for the SLO did: the oracle's slot count would leave the SLO to sticky slots.
        before = {i: g.adapter_indices for i, g in enumerate(plan.gpus)}
        for k, g in enumerate(gpus + new):
            if g.adapters and before.get(k) != g.adapter_indices:
                L = _slot_each(problem, oracle, g.type_index, list(g.adapter_indices))
                if L > g.max_loras:
                    fixed = assign_gpu(problem, oracle, g.type_index, g.adapter_indices, g.gpu, max_loras=L)
                    if k < len(gpus):
                        gpus[k] = fixed
                    else:
                        new[k - len(gpus)] = fixed
    out = renumber(gpus + new)
    from optplace.solver.objectives import get_objective

    obj_value = get_objective(plan.objective).value(out)
    return RepairResult(plan.with_(gpus=out, objective_value=obj_value, log=plan.log + tuple(actions)), tuple(actions))


#: The pipeline's twin check for step 1b: (the GPUs of a candidate plan, the positions among them to
#: judge) → whether the judged GPUs pass on every check draw.
TwinCheck = Callable[[Sequence[GpuAssignment], Sequence[int]], bool]
#: GPUs step 1b offers the leftovers to (each try costs a simulation of the GPUs it changes on every
#: check draw).
TWIN_TARGETS = 3
#: Step 1b is tried when the leftovers' rate is at most this share of the busiest good GPU's: on the
#: 1,000-adapter Zipf-0.9 bench families it placed two adapters of a GPU's 11 % (saving the GPU) and
#: could not place 19 adapters carrying most of a GPU's load (~117 s of twin tries on a loaded machine).
TWIN_SHARE = 0.10

#: Load margin the re-homing keeps on every GPU it touches (oracle judged at offered / (1 − MARGIN)).
MARGIN = 0.10
#: Under an SLO the margin grows by this much per repair round. An oracle that knows throughput only
#: (or an SLO model that errs on a GPU) can call a GPU roomy that misses a bound with one more hot
#: adapter, and with a fixed margin a repair can move one hot adapter back and forth between two such
#: GPUs for all its rounds (seen on a 24-adapter scenario whose GPUs failed the stable-queue rule in a
#: 4-minute window, before that rule counted the requests in service: 8 rounds, never a GPU added); a
#: growing margin ends such a cycle with a new GPU.
SLO_MARGIN_STEP = 0.05


def _slot_each(problem: Problem, oracle: CapacityOracle, gtype: int, idx: Sequence[int]) -> int:
    """A slot per adapter of ``idx``, within the memory cap at their largest rank."""
    return max(1, min(len(idx), oracle.slot_cap(gtype, max(problem.adapters[a].rank for a in idx))))


def _shed(problem: Problem, idx: Sequence[int], want: float) -> list[int]:
    """Adapters of ``idx`` whose rates sum to at least ``want``, keeping one adapter behind: the hottest
    that fit within ``want``, then the one that crosses it by the least; where keeping one behind
    leaves that short, the hottest first (as much load as any choice of all but one). Plain
    hottest-first moved a hot adapter carrying half a GPU's load off a GPU that needed to shed a tenth
    (1,000-adapter Zipf-0.9 r8-16-32 bench family): five times the load to re-home."""
    rate = {a: problem.adapters[a].rate_rps for a in idx}
    order = sorted(idx, key=lambda a: (-rate[a], a))
    keep_one = max(len(idx) - 1, 0)
    moved: list[int] = []
    shed = 0.0
    for a in order:
        if shed >= want or len(moved) >= keep_one:
            break
        if shed + rate[a] <= want:
            moved.append(a)
            shed += rate[a]
    if shed < want and len(moved) < keep_one:
        taken = set(moved)
        # the coldest adapter that reaches ``want`` (``order`` is hottest first, so the last such one)
        crossing = [a for a in order if a not in taken and shed + rate[a] >= want][-1:]
        moved += crossing
        shed += sum(rate[a] for a in crossing)
    if shed >= want:
        return moved
    hottest, shed = [], 0.0
    for a in order[:keep_one]:
        if shed >= want:
            break
        hottest.append(a)
        shed += rate[a]
    return hottest


def _coldest_beyond_cap(problem: Problem, g: GpuAssignment, cap: int) -> list[int]:
    """The coldest adapters of a GPU beyond its memory cap of slots: without a slot of their own they
    are the ones left waiting for one (sticky slots) while the hot adapters keep theirs."""
    n = len(g.adapter_indices)
    if n <= max(cap, 1):
        return []
    return sorted(g.adapter_indices, key=lambda a: (problem.adapters[a].rate_rps, a))[: n - cap]


def _ok(
    problem: Problem,
    oracle: CapacityOracle,
    gtype: int,
    idx: list[int],
    fit_slots: bool = False,
    margin: float = MARGIN,
) -> bool:
    """The oracle accepts adapters ``idx`` on ``gtype`` with a ``margin`` load margin (and, with
    ``fit_slots``, every adapter gets a slot within the memory cap)."""
    if fit_slots and len(idx) > oracle.slot_cap(gtype, max(problem.adapters[a].rank for a in idx)):
        return False
    return judge(oracle, gtype, scaled(problem, idx, 1.0 / (1.0 - margin))).feasible


def _type_for_new(problem: Problem, preferred: list[int], in_use: list[GpuAssignment]) -> int:
    """The type of a GPU the repair adds: the starved GPU's type (the same mix fits it) while the pool
    has one to spare, else the first type with a spare GPU, else the starved GPU's type anyway (the
    action line then names it; the pool is the spec's statement of what exists)."""
    used: dict[int, int] = {}
    for g in in_use:
        if g.adapters:
            used[g.type_index] = used.get(g.type_index, 0) + 1
    spare = [t.index for t in problem.gpu_types if used.get(t.index, 0) < t.count]
    for t in preferred:
        if t in spare:
            return t
    return spare[0] if spare else (preferred[0] if preferred else problem.gpu_types[0].index)


def _rehome(
    problem: Problem,
    oracle: CapacityOracle,
    gpus: list[GpuAssignment],
    new: list[GpuAssignment],
    pending: list[int],
    bad: set[int],
    new_type: int,
    fit_slots: bool = False,
    margin: float = MARGIN,
    twin_check: TwinCheck | None = None,
    room: Mapping[int, float] | None = None,
) -> str:
    """Place ``pending`` adapters (see the module docstring, steps 1–3) with a ``margin`` load margin;
    updates ``gpus``/``new`` in place and returns the action line."""
    an = proxy_model(problem, oracle)
    good = [i for i, g in enumerate(gpus) if i not in bad and g.adapters]

    def util(i: int) -> float:
        return utilisation(problem, an, gpus[i].type_index, gpus[i].adapter_indices)

    # 1. GPUs with headroom.
    left: list[int] = []
    on_existing = 0
    for a in pending:
        placed = False
        for i in sorted(good, key=lambda i: (util(i), i))[:8]:
            idx = list(gpus[i].adapter_indices) + [a]
            if _ok(problem, oracle, gpus[i].type_index, idx, fit_slots, margin):
                gpus[i] = assign_gpu(problem, oracle, gpus[i].type_index, idx, i)
                placed = True
                on_existing += 1
                break
        if not placed:
            left.append(a)
    if not left:
        return f"moved adapters → {on_existing} onto GPUs with headroom (≥ {margin:.0%} load margin)"
    # 1b. The GPUs the twin finds roomiest, asked of the twin: for a few adapters only (a try costs
    # simulations, and a larger load than TWIN_SHARE of a GPU did not fit in the cases measured).
    if (
        twin_check is not None
        and good
        and math.fsum(problem.adapters[a].rate_rps for a in left)
        <= TWIN_SHARE * max(math.fsum(problem.adapters[a].rate_rps for a in gpus[i].adapter_indices) for i in good)
    ):
        where = _twin_place(
            problem, oracle, gpus, new, left, sorted(good, key=lambda i: (util(i), i)), twin_check, room
        )
        if where:
            return f"moved adapters → {on_existing} onto GPUs with headroom, {len(left)} {where}"
    # 2. Re-balance the good GPUs with the leftovers on them (no GPU added).
    if good:
        trial = {i: list(gpus[i].adapter_indices) for i in good}
        load = {i: util(i) for i in good}
        for a in left:
            i = min(good, key=lambda i: (load[i], i))
            trial[i].append(a)
            load[i] += problem.adapters[a].rate_rps * 1e-3  # spread ties; the balancer decides
        entries = [assign_gpu(problem, oracle, gpus[i].type_index, trial[i], i) for i in good]
        bal = rebalance(problem, oracle, entries, load_scale=1.0 / (1.0 - margin))
        if all(_ok(problem, oracle, g.type_index, list(g.adapter_indices), fit_slots, margin) for g in bal.gpus):
            for i, g in zip(good, bal.gpus):
                gpus[i] = g
            return (
                f"moved adapters → {on_existing} onto GPUs with headroom, {len(left)} by re-balancing "
                f"{len(good)} GPUs ({bal.moves} moves, {bal.swaps} swaps); no GPU added"
            )
    # 3. As few new GPUs as the oracle allows (first fit), then re-balanced with the good GPUs.
    bins: list[list[int]] = []
    for a in left:
        for b in bins:
            if _ok(problem, oracle, new_type, b + [a], fit_slots, margin):
                b.append(a)
                break
        else:
            bins.append([a])
    base = len(gpus) + len(new)
    added = [assign_gpu(problem, oracle, new_type, b, base + k) for k, b in enumerate(bins)]
    entries = [gpus[i] for i in good] + added
    bal = rebalance(problem, oracle, entries, load_scale=1.0 / (1.0 - margin))
    for i, g in zip(good, bal.gpus):
        gpus[i] = g
    new += list(bal.gpus[len(good) :])
    return (
        f"moved adapters → {on_existing} onto GPUs with headroom, {len(left)} onto {len(bins)} new "
        f"{problem.gpu_types[new_type].name} GPU{'s' if len(bins) > 1 else ''}, re-balanced with {len(good)} "
        f"GPUs ({bal.moves} moves, {bal.swaps} swaps)"
    )


def _twin_place(
    problem: Problem,
    oracle: CapacityOracle,
    gpus: list[GpuAssignment],
    new: list[GpuAssignment],
    left: list[int],
    good: list[int],
    twin_check: TwinCheck,
    room: Mapping[int, float] | None,
) -> str | None:
    """Step 1b: ``left`` onto the :data:`TWIN_TARGETS` good GPUs of most twin ``room`` (``good`` is in
    the order to break ties: least utilised first), all on one, then spread over them hottest first,
    each receiving GPU given a slot per adapter within its memory cap; the first try whose receiving
    GPUs ``twin_check`` passes is applied to ``gpus``. Returns its description, or None."""
    targets = sorted(good, key=lambda i: -(room or {}).get(i, 0.0))[:TWIN_TARGETS]
    tries = [{t: list(left)} for t in targets]
    if len(left) > 1 and len(targets) > 1:
        spread: dict[int, list[int]] = {t: [] for t in targets}
        for k, a in enumerate(left):
            spread[targets[k % len(targets)]].append(a)
        tries.append({t: m for t, m in spread.items() if m})
    for moves in tries:
        trial = list(gpus)
        fits = True
        for t, extra in moves.items():
            g = gpus[t]
            idx = list(g.adapter_indices) + extra
            L = _slot_each(problem, oracle, g.type_index, idx)
            fits = fits and L >= len(idx)
            trial[t] = assign_gpu(problem, oracle, g.type_index, idx, g.gpu, max_loras=L)
        if fits and twin_check(trial + new, sorted(moves)):
            gpus[:] = trial
            on = ", ".join(f"{len(m)} on GPU {gpus[t].gpu}" for t, m in sorted(moves.items()))
            return f"onto GPUs the twin found room on ({on}; checked on every draw)"
    return None
