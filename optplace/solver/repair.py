"""Repair hook: given a plan and the GPUs the twin found starved or OOM, produce a repaired plan.

The pipeline calls :func:`repair` in a loop (simulate → repair → simulate …). Per bad GPU:

* OOM → lower ``max_loras`` to the largest slot count that starts at its ``max_lora_rank``; if
  even that does not start, split the GPU in two.
* starved, first round, with fewer slots than adapters → raise slots (all adapters get one, within
  the memory cap): sticky slots are the usual cause of a starved GPU the oracle accepted.
* starved otherwise → move the hottest adapters off until the GPU's offered load drops by the
  measured loss plus a 5 % margin (at least 10 %); moved adapters go to the GPU with the most
  headroom that the oracle accepts (kept away from other bad GPUs), else to a new GPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .capacity import CapacityOracle, Mix
from .plan import GpuAssignment, Plan, assign_gpu, renumber
from .problem import Infeasible, Problem


@dataclass(frozen=True, slots=True)
class RepairResult:
    """The repaired plan and what was done (one line per action)."""

    plan: Plan
    actions: tuple[str, ...]


def repair(problem: Problem, oracle: CapacityOracle, plan: Plan, starved: Sequence[int] = (),
           oom: Sequence[int] = (), losses: Mapping[int, float] | None = None, round_: int = 0) -> RepairResult:
    """Repair the GPUs at indices ``starved`` / ``oom`` of ``plan`` (see the module docstring)."""
    gpus = list(plan.gpus)
    actions: list[str] = []
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
    for i in sorted(set(starved) - set(oom)):
        g = gpus[i]
        n = len(g.adapter_indices)
        cap = oracle.slot_cap(g.type_index, g.max_lora_rank)
        if round_ == 0 and g.max_loras < n and min(n, cap) > g.max_loras:
            L = min(n, cap)
            gpus[i] = assign_gpu(problem, oracle, g.type_index, g.adapter_indices, i, max_loras=L)
            actions.append(f"GPU {i}: starved → max_loras {g.max_loras} → {L}")
            continue
        target = max(0.10, losses.get(i, 0.10) + 0.05)
        order = sorted(g.adapter_indices, key=lambda a: -problem.adapters[a].rate_rps)
        total = math.fsum(problem.adapters[a].rate_rps for a in order)
        moved: list[int] = []
        shed = 0.0
        for a in order:
            if shed >= target * total or len(moved) >= len(order) - 1:
                break
            moved.append(a)
            shed += problem.adapters[a].rate_rps
        if not moved:  # a single adapter that starves alone: nothing to move
            raise Infeasible(f"GPU {i}: adapter {problem.adapters[order[0]].name!r} starves even alone",
                             "max_throughput_loss")
        keep = [a for a in g.adapter_indices if a not in set(moved)]
        gpus[i] = assign_gpu(problem, oracle, g.type_index, keep, i)
        placed_on: list[str] = []
        for a in moved:
            dest = _place(problem, oracle, gpus, new, a, bad)
            if dest is None:
                new.append(assign_gpu(problem, oracle, g.type_index, [a], len(gpus) + len(new)))
                placed_on.append("new GPU")
            else:
                placed_on.append(f"GPU {dest}")
        actions.append(f"GPU {i}: starved → moved {len(moved)} hottest adapters ({shed / total:.0%} of its load) "
                       f"to {', '.join(sorted(set(placed_on)))}")
    out = renumber(gpus + new)
    obj_value = plan.objective_value
    from .objectives import get_objective
    obj_value = get_objective(plan.objective).value(out)
    return RepairResult(plan.with_(gpus=out, objective_value=obj_value, log=plan.log + tuple(actions)),
                        tuple(actions))


def _place(problem: Problem, oracle: CapacityOracle, gpus: list[GpuAssignment], new: list[GpuAssignment], a: int,
           bad: set[int]) -> int | None:
    """Put adapter ``a`` on the existing (not bad) or new GPU with the most headroom that accepts it."""
    pool = [(i, g) for i, g in enumerate(gpus) if i not in bad and g.adapters]
    pool += [(len(gpus) + j, g) for j, g in enumerate(new)]
    pool.sort(key=lambda ig: -(ig[1].capacity_tok_s - ig[1].offered_tok_s))
    for i, g in pool[:8]:
        idx = list(g.adapter_indices) + [a]
        e = oracle.best_slots(g.type_index, Mix.of(problem.adapters[j] for j in idx))
        # Keep a 10 % margin: the twin already disagreed with the oracle once on this plan.
        if e.feasible and e.offered_tok_s <= 0.9 * e.capacity_tok_s:
            ga = assign_gpu(problem, oracle, g.type_index, idx, i)
            if i < len(gpus):
                gpus[i] = ga
            else:
                new[i - len(gpus)] = ga
            return i
    return None
