"""The ``loraserve`` baseline: LoRAServe's placement idea — per-rank operating points under the SLO and
fractional assignment with routing fractions — rebuilt from its published description, to compare
against.

Source of the idea (not of code): Jaiswal et al., "Serving Heterogeneous LoRA Adapters in Distributed
LLM Inference Systems" (LoRAServe), arXiv:2511.22880, 2025: co-batching adapters of different ranks
skews performance, so adapters are placed rank-aware and requests are routed to GPUs by fractions.

What this module does, per rank class (adapters of one rank get GPUs of their own, so ranks are never
co-batched), adapters hottest first:

* **Fractional fill to the operating point.** GPUs are filled one after the other, each to its
  *operating point*: the largest load the capacity oracle accepts for that GPU's adapters (under the
  SLO when the oracle is the SLO surrogate; a GPU of many light adapters carries less than one of a few
  hot ones: slot rotation). The adapter that crosses the operating point is split there: the GPU takes
  the part that fits, the next GPU the rest, each part a replica whose routing share is its part of
  the adapter's rate. An adapter more than one GPU serves fills several GPUs this way.
* **Under a fixed budget** (``min_latency``): each rank gets GPUs in proportion to the count the fill
  needs (largest remainders, at least one each), and its load is spread evenly over them, split at
  the boundaries the same way.

The fragments are :class:`~.problem.AdapterItem` replicas (``share`` < 1) tagged with their GPU
(``AdapterItem.gpu``), so the plan, the twin, the router artefacts and the repair treat them as any
replica: :func:`split` turns a problem into its fragments (what ``optplace solve`` places with this
strategy instead of the equal replicas of :func:`~.replicate.replicate_hot`), :func:`assign` puts
each fragment on its GPU. GPUs are taken in pool order, as the other baselines take them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from optplace.solver.baselines import type_at
from optplace.solver.capacity import CapacityOracle, Mix
from optplace.solver.plan import GpuAssignment, assign_gpu
from optplace.solver.problem import AdapterItem, Infeasible, Problem
from optplace.solver.replicate import fragment_problem

#: Bisection steps of a GPU's fractional last adapter (its part known to 2^-30 of the adapter's rate).
FRACTION_STEPS = 30
#: A fragment below this share of its adapter is not made: the rest stays whole on the GPU before.
MIN_SHARE = 1e-6

#: Per GPU, (adapter index, rate placed there) in fill order.
Fill = list[list[tuple[int, float]]]


def _ordered(problem: Problem, rank: int) -> list[AdapterItem]:
    """The rank's adapters, hottest first (ties by index)."""
    return sorted((a for a in problem.adapters if a.rank == rank), key=lambda a: (-a.rate_rps, a.index))


def _accepts(problem: Problem, oracle: CapacityOracle, g: int, rank: int, rates: Sequence[float]) -> bool:
    return oracle.best_slots(type_at(problem, g), Mix((rank,) * len(rates), tuple(rates))).feasible


def fill_to_operating_point(problem: Problem, oracle: CapacityOracle, rank: int, first: int, pool: int) -> Fill:
    """Next-fit of the rank's adapters over GPUs ``first …``, each GPU to its operating point (see the
    module docstring). Whole adapters are added by bisection on how many fit (the oracle's verdict is
    taken as monotone in the load added), then the part of the next one by bisection on its rate."""
    items = _ordered(problem, rank)
    out: Fill = []
    pos, left = 0, items[0].rate_rps if items else 0.0  # next item, and its rate not yet placed
    g = first
    while pos < len(items):
        if g >= pool:
            raise Infeasible(
                f"pool too small: loraserve fills all {pool} GPUs before the rank-{rank} adapters are placed", "pool"
            )
        head = [left]
        # the most whole adapters after the head that still fit
        lo, hi = 0, len(items) - pos - 1
        if not _accepts(problem, oracle, g, rank, head):
            lo, hi = -1, -1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            rates = head + [a.rate_rps for a in items[pos + 1 : pos + 1 + mid]]
            lo, hi = (mid, hi) if _accepts(problem, oracle, g, rank, rates) else (lo, mid - 1)
        if lo < 0:  # not even the head's rest: the GPU takes the part of it that fits
            part = _largest_part(problem, oracle, g, rank, [], left)
            if part <= MIN_SHARE * items[pos].rate_rps:
                raise Infeasible(f"loraserve: one adapter of rank {rank} does not fit a GPU at any load", "memory")
            out.append([(items[pos].index, part)])
            left -= part
            g += 1
            continue
        gpu = [(items[pos].index, left)] + [(a.index, a.rate_rps) for a in items[pos + 1 : pos + 1 + lo]]
        pos += 1 + lo
        if pos < len(items):  # the part of the next adapter that still fits
            base = [r for _, r in gpu]
            part = _largest_part(problem, oracle, g, rank, base, items[pos].rate_rps)
            left = items[pos].rate_rps
            if part > MIN_SHARE * left and left - part > MIN_SHARE * left:
                gpu.append((items[pos].index, part))
                left -= part
        out.append(gpu)
        g += 1
    return out


def _largest_part(problem: Problem, oracle: CapacityOracle, g: int, rank: int, base: list[float], rate: float) -> float:
    """The largest part of ``rate`` the GPU accepts beside ``base`` (0 when none)."""
    lo, hi = 0.0, rate
    for _ in range(FRACTION_STEPS):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _accepts(problem, oracle, g, rank, base + [mid]) else (lo, mid)
    return lo


def even_fill(items: Sequence[AdapterItem], n: int) -> Fill:
    """``items`` (hottest first) spread over ``n`` GPUs at an equal load each, split at the boundaries."""
    per = math.fsum(a.rate_rps for a in items) / n
    out: Fill = [[] for _ in range(n)]
    g, room = 0, per
    for a in items:
        left = a.rate_rps
        while left > MIN_SHARE * a.rate_rps:
            if g == n - 1 or left <= room * (1 + 1e-12):  # the last GPU takes any rounding rest
                out[g].append((a.index, left))
                room -= left
                break
            if room > MIN_SHARE * a.rate_rps:
                out[g].append((a.index, room))
                left -= room
            g, room = g + 1, per
    return out


def _share_out(budget: int, need: dict[int, int]) -> dict[int, int]:
    """``budget`` GPUs shared out in proportion to ``need`` by largest remainders, at least one each."""
    if budget < len(need):
        raise Infeasible(
            f"loraserve keeps ranks apart: the budget of {budget} GPUs is less than the {len(need)} rank classes",
            "max_gpus",
        )
    total = sum(need.values())
    extra = budget - len(need)
    quota = {r: extra * x / total for r, x in need.items()}
    counts = {r: 1 + int(q) for r, q in quota.items()}
    for r in sorted(need, key=lambda r: (-(quota[r] - int(quota[r])), r))[: budget - sum(counts.values())]:
        counts[r] += 1
    return counts


def plan(problem: Problem, oracle: CapacityOracle, budget: int | None = None) -> dict[int, Fill]:
    """Per rank (ascending), its GPUs' fills, GPUs numbered on in pool order across ranks. ``budget``:
    a fixed GPU count to share out (see the module docstring)."""
    ranks = sorted({a.rank for a in problem.adapters})
    pool = problem.gpu_budget()
    out: dict[int, Fill] = {}
    first = 0
    for r in ranks:
        out[r] = fill_to_operating_point(problem, oracle, r, first, pool if budget is None else 10**9)
        first += len(out[r])
    if budget is not None:
        counts = _share_out(budget, {r: len(f) for r, f in out.items()})
        out = {r: even_fill(_ordered(problem, r), counts[r]) for r in ranks}
    return out


def split(
    problem: Problem, oracle: CapacityOracle, budget: int | None = None, class_width: float = 0.05
) -> tuple[Problem, tuple[str, ...]]:
    """The problem as :func:`plan` fills it: every adapter split at a GPU boundary replaced by its
    fragments (replicas with ``share`` = fragment rate / adapter rate), every item tagged with its GPU;
    and one log line per rank class."""
    fills = plan(problem, oracle, budget)
    split_problem, _ = fragment_problem(problem, [gpu for f in fills.values() for gpu in f], class_width, tag=True)
    log = []
    for r, f in fills.items():
        n_split = sum(len(gpu) for gpu in f) - len({i for gpu in f for i, _ in gpu})
        load = math.fsum(x for gpu in f for _, x in gpu)
        log.append(
            f"loraserve rank {r}: {load:.4g} req/s on {len(f)} GPU(s) filled to their operating points"
            + (" (a fixed budget: filled evenly)" if budget is not None else "")
            + f", {n_split} adapter part(s) split off at a GPU boundary"
        )
    return split_problem, tuple(log)


def assign(problem: Problem, oracle: CapacityOracle) -> list[GpuAssignment]:
    """Each item of a problem :func:`split` made on the GPU it is tagged with. Raises ``ValueError``
    for a problem :func:`split` did not make (an item without its GPU)."""
    by_gpu: dict[int, list[int]] = {}
    for a in problem.adapters:
        if a.gpu < 0:
            raise ValueError(f"loraserve.assign needs the problem loraserve.split returns ({a.name!r} has no GPU)")
        by_gpu.setdefault(a.gpu, []).append(a.index)
    return [assign_gpu(problem, oracle, type_at(problem, g), idx, g) for g, idx in sorted(by_gpu.items())]
