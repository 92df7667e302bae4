"""Repair hook: given a plan and the GPUs the twin found starved or OOM, produce a repaired plan.

The pipeline calls :func:`repair` in a loop (simulate → repair → simulate …). Per bad GPU:

* OOM → lower ``max_loras`` to the largest slot count that starts at its ``max_lora_rank``; if
  even that does not start, split the GPU in two.
* starved, first round, with fewer slots than adapters → raise slots (all adapters get one, within
  the memory cap): sticky slots are the usual cause of a starved GPU the oracle accepted.
* starved otherwise → move the hottest adapters off until the GPU's offered load drops by the
  measured loss plus a 5 % margin (at least 10 %).

A GPU that misses the SLO (``slo``: it serves its throughput, but its latency is over a bound) is
repaired like a starved one, except that more slots are tried in any round, and a GPU already at its
memory cap of slots with more adapters than slots sheds its coldest adapters down to the cap first:
an adapter without a slot waits for one to free (sticky slots), which is what makes a GPU with a low
loss miss a TTFT bound. While SLO misses are repaired, re-homing also keeps every GPU it fills within
its slot cap.

The moved adapters (of every starved GPU of the round) are re-homed, cheapest first:

1. onto the good GPUs (not starved/OOM this round) with the most headroom (analytic utilisation)
   that the oracle accepts with a :data:`MARGIN` load margin — the twin already disagreed with the
   oracle once on this plan;
2. else by re-balancing the good GPUs with the leftovers on them (:func:`~.balance.rebalance`, same
   margin), so no GPU is added when the existing ones can share the load;
3. else onto as few new GPUs as the oracle allows (first fit with the margin; one in the usual case),
   then re-balanced with the good GPUs so the new GPU takes its share instead of only the leftovers.

A starved GPU keeps its remaining adapters and receives none (the twin just rejected its mix).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
) -> RepairResult:
    """Repair the GPUs at indices ``starved`` / ``oom`` / ``slo`` (misses the SLO) of ``plan`` (see the
    module docstring)."""
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
        if (round_ == 0 or i in slo_set) and g.max_loras < n and min(n, cap) > g.max_loras:
            L = min(n, cap)
            gpus[i] = assign_gpu(problem, oracle, g.type_index, g.adapter_indices, i, max_loras=L)
            actions.append(f"GPU {i}: {what} → max_loras {g.max_loras} → {L}")
            continue
        total = math.fsum(problem.adapters[a].rate_rps for a in g.adapter_indices)
        if i in slo_set and n > max(cap, 1):
            # coldest first: they are the ones left waiting for a slot
            moved = sorted(g.adapter_indices, key=lambda a: (problem.adapters[a].rate_rps, a))[: n - cap]
            shed = math.fsum(problem.adapters[a].rate_rps for a in moved)
            what = f"misses SLO with {n} adapters on {cap} slots (its memory cap) → moved {len(moved)} coldest"
        else:
            target = max(0.10, losses.get(i, 0.10) + 0.05)
            order = sorted(g.adapter_indices, key=lambda a: (-problem.adapters[a].rate_rps, a))
            moved = []
            shed = 0.0
            for a in order:
                if shed >= target * total or len(moved) >= len(order) - 1:
                    break
                moved.append(a)
                shed += problem.adapters[a].rate_rps
            what += f" → moved {len(moved)} hottest"
        if not moved:  # a single adapter that starves alone: nothing to move
            name = problem.adapters[g.adapter_indices[0]].name
            if i in slo_set:
                raise Infeasible(f"GPU {i}: adapter {name!r} misses the SLO even alone", "slo")
            raise Infeasible(f"GPU {i}: adapter {name!r} starves even alone", "max_throughput_loss")
        keep = [a for a in g.adapter_indices if a not in set(moved)]
        gpus[i] = assign_gpu(problem, oracle, g.type_index, keep, i)
        pending += moved
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
        )
        for i, how, frac in shed_lines:
            actions.append(f"GPU {i}: {how} adapters ({frac:.0%} of its load) off it")
        actions.append(where)
    out = renumber(gpus + new)
    from optplace.solver.objectives import get_objective

    obj_value = get_objective(plan.objective).value(out)
    return RepairResult(plan.with_(gpus=out, objective_value=obj_value, log=plan.log + tuple(actions)), tuple(actions))


#: Load margin the re-homing keeps on every GPU it touches (oracle judged at offered / (1 − MARGIN)).
MARGIN = 0.10


def _ok(problem: Problem, oracle: CapacityOracle, gtype: int, idx: list[int], fit_slots: bool = False) -> bool:
    """The oracle accepts adapters ``idx`` on ``gtype`` with the :data:`MARGIN` load margin (and, with
    ``fit_slots``, every adapter gets a slot within the memory cap)."""
    if fit_slots and len(idx) > oracle.slot_cap(gtype, max(problem.adapters[a].rank for a in idx)):
        return False
    return judge(oracle, gtype, scaled(problem, idx, 1.0 / (1.0 - MARGIN))).feasible


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
) -> str:
    """Place ``pending`` adapters (see the module docstring, steps 1–3); updates ``gpus``/``new`` in place
    and returns the action line."""
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
            if _ok(problem, oracle, gpus[i].type_index, idx, fit_slots):
                gpus[i] = assign_gpu(problem, oracle, gpus[i].type_index, idx, i)
                placed = True
                on_existing += 1
                break
        if not placed:
            left.append(a)
    if not left:
        return f"moved adapters → {on_existing} onto GPUs with headroom (≥ {MARGIN:.0%} load margin)"
    # 2. Re-balance the good GPUs with the leftovers on them (no GPU added).
    if good:
        trial = {i: list(gpus[i].adapter_indices) for i in good}
        load = {i: util(i) for i in good}
        for a in left:
            i = min(good, key=lambda i: (load[i], i))
            trial[i].append(a)
            load[i] += problem.adapters[a].rate_rps * 1e-3  # spread ties; the balancer decides
        entries = [assign_gpu(problem, oracle, gpus[i].type_index, trial[i], i) for i in good]
        bal = rebalance(problem, oracle, entries, load_scale=1.0 / (1.0 - MARGIN))
        if all(_ok(problem, oracle, g.type_index, list(g.adapter_indices), fit_slots) for g in bal.gpus):
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
            if _ok(problem, oracle, new_type, b + [a], fit_slots):
                b.append(a)
                break
        else:
            bins.append([a])
    base = len(gpus) + len(new)
    added = [assign_gpu(problem, oracle, new_type, b, base + k) for k, b in enumerate(bins)]
    entries = [gpus[i] for i in good] + added
    bal = rebalance(problem, oracle, entries, load_scale=1.0 / (1.0 - MARGIN))
    for i, g in zip(good, bal.gpus):
        gpus[i] = g
    new += list(bal.gpus[len(good) :])
    return (
        f"moved adapters → {on_existing} onto GPUs with headroom, {len(left)} onto {len(bins)} new "
        f"{problem.gpu_types[new_type].name} GPU{'s' if len(bins) > 1 else ''}, re-balanced with {len(good)} "
        f"GPUs ({bal.moves} moves, {bal.swaps} swaps)"
    )
