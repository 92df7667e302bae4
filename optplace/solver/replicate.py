"""Replicas of hot adapters: an adapter whose load alone is more than one GPU serves is split into the
fewest equal replicas that each fit one GPU, before any strategy runs.

:func:`replicate_hot` returns the problem with each such adapter replaced by ``k`` items of the same
name, rank ``rate / k`` and ``share = 1 / k`` (``AdapterItem.share``). The strategies, the bound and
the repair then place replicas like adapters (a replica may share its GPU with cold adapters); the
plan lists each replica as ``{name, share}`` and the twin routes each of the adapter's requests to one
replica (``optplace.twin.simulate.route_slices``).

How many replicas: the fewest ``k`` for which the capacity oracle accepts one replica alone on a GPU of
some type, then, when the problem has a scenario under an SLO, the fewest from there for which the twin
finds every replica alone on a GPU meeting the SLO on exactly the requests it receives in solve's own
checks (every seed solve checks, rates x (1 + ``slo.headroom``), the same routing draw): the oracle
sizes by throughput alone under a custom SLO or without surrogates, its SLO models err near their
boundary, and a GPU holding one replica that misses the SLO is one the repair cannot fix (it moves
adapters, it does not split them). Judged on the plan's own draws, a
replica alone passes the pipeline's check whichever GPU the repair moves it to.

Replication where it would only save GPUs (splitting a mid-size adapter to close a GPU) is not done
here; an adapter that fits one GPU stays whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass, replace

from optplace.solver.capacity import CapacityOracle, Mix
from optplace.solver.problem import AdapterItem, Infeasible, Problem, classify

#: Most replicas one adapter is split into; an adapter needing more is left whole (and reported
#: infeasible by the strategies, with its offered load and one GPU's capacity).
MAX_REPLICAS = 256
#: The twin's confirmation may add at most this many replicas beyond the oracle's count.
MAX_EXTRA_REPLICAS = 8

#: ``fits(item, k)``: does one replica of ``item`` (at 1/k of its rate) alone meet the SLO on one GPU?
Fits = Callable[[AdapterItem, int], bool]


@dataclass(frozen=True, slots=True)
class Replication:
    """The problem with its hot adapters split into replicas, and one log line per split adapter."""

    problem: Problem
    log: tuple[str, ...] = ()
    #: adapter name -> replica count, for the adapters split
    replicas: tuple[tuple[str, int], ...] = ()


def fits_one_gpu(problem: Problem, oracle: CapacityOracle, rank: int, rate_rps: float) -> bool:
    """Does the oracle accept one adapter of ``rank`` at ``rate_rps`` alone on a GPU of some type?"""
    mix = Mix((rank,), (rate_rps,))
    return any(oracle.best_slots(t.index, mix).feasible for t in problem.gpu_types)


def _too_hot(problem: Problem, oracle: CapacityOracle, a: AdapterItem) -> bool:
    """Alone on any GPU, the adapter is refused for its load (not for memory: a replica has the same
    rank, so splitting cannot help there)."""
    mix = Mix.of([a])
    ests = [oracle.best_slots(t.index, mix) for t in problem.gpu_types]
    return not any(e.feasible for e in ests) and any(e.reason != "memory" for e in ests)


def replica_count(problem: Problem, oracle: CapacityOracle, a: AdapterItem, fits: Fits | None = None) -> int:
    """The fewest equal replicas of ``a`` that each fit one GPU alone (the oracle, then ``fits``); 1 when
    the oracle accepts no count up to :data:`MAX_REPLICAS` (the strategies then report the adapter
    infeasible with its load). Raises :class:`~.problem.Infeasible` when the oracle accepts a count but
    ``fits`` refuses it and :data:`MAX_EXTRA_REPLICAS` more: one replica alone misses the SLO even at a
    fraction of the load, so no number of replicas meets it."""
    k = next((k for k in range(2, MAX_REPLICAS + 1) if fits_one_gpu(problem, oracle, a.rank, a.rate_rps / k)), None)
    if k is None:
        return 1
    if fits is None:
        return k
    last = min(k + MAX_EXTRA_REPLICAS, MAX_REPLICAS)
    found = next((j for j in range(k, last + 1) if fits(a, j)), None)
    if found is None:
        raise Infeasible(
            f"adapter {a.name!r} ({a.rate_rps:g} req/s) is more than one GPU serves, and the twin finds one "
            f"replica alone on a GPU missing the SLO at every count from {k} to {last} replicas "
            f"({a.rate_rps / last:.3g} req/s each): the SLO is tighter than one GPU's latency at that load",
            "slo",
        )
    return found


def replicate_hot(
    problem: Problem, oracle: CapacityOracle, fits: Fits | None = None, class_width: float = 0.05
) -> Replication:
    """Split every adapter that alone is too hot for one GPU into its :func:`replica_count` (see the
    module docstring). Only the hottest adapters of each rank are asked about: an adapter that fits
    means every colder one of its rank fits too."""
    counts: dict[int, int] = {}
    for rank in sorted({a.rank for a in problem.adapters}):
        for a in sorted((a for a in problem.adapters if a.rank == rank), key=lambda a: (-a.rate_rps, a.index)):
            if not _too_hot(problem, oracle, a):
                break
            counts[a.index] = replica_count(problem, oracle, a, fits)
    split = {i: k for i, k in counts.items() if k > 1}
    if not split:
        return Replication(problem)
    items: list[AdapterItem] = []
    log = []
    for a in problem.adapters:
        k = split.get(a.index, 1)
        items += [replace(a, rate_rps=a.rate_rps / k, share=1.0 / k)] * k
        if k > 1:
            tok = problem.offered_tok_s(a.rate_rps)
            log.append(
                f"replicated {a.name!r} ({a.rate_rps:g} req/s, {tok:,.0f} tokens/s: more than one GPU serves) "
                f"into {k} replicas of {a.rate_rps / k:.4g} req/s, each with share 1/{k} of its requests"
            )
    ads = tuple(replace(x, index=i) for i, x in enumerate(items))
    names = tuple((problem.adapters[i].name, k) for i, k in sorted(split.items()))
    return Replication(replace(problem, adapters=ads, classes=classify(ads, class_width)), tuple(log), names)


def twin_fits(problem: Problem, executor: Any = None) -> Fits | None:
    """The SLO judgement of ``k`` replicas, each alone on a GPU (the first type of the pool that starts
    one slot at its rank; one slot): the twin on exactly the requests each replica receives in solve's
    own checks (the scenario-wide workload of every seed solve checks, at its rates x (1 + headroom),
    thinned by the routing draw), judged by the scenario's SLO. Every replica on every seed must pass.
    None without a scenario or with ``slo: none`` (the oracle's throughput rule is then the judge).
    ``executor``: an ``ExecutorSpec`` for the twin runs (default: local processes)."""
    sc = problem.scenario
    if sc is None or sc.slo is None:
        return None
    from optplace.infra.executors import ExecutorSpec
    from optplace.twin.simulate import GpuConfig, PlanSimulator, check_seeds, route_slices

    run_on = executor if executor is not None else ExecutorSpec()
    scale = 1.0 + sc.slo_headroom()
    sims: list[PlanSimulator] = []  # one per seed, made once: each generates its seed's workload

    def fits(a: AdapterItem, k: int) -> bool:
        mix = Mix((a.rank,), (a.rate_rps / k,))
        t = next((t for t in problem.gpu_types if starts_one_slot(problem, t.index, mix)), None)
        if t is None:
            return False
        if not sims:
            sims.extend(PlanSimulator(sc, problem.base_dir, run_on, s, scale) for s in check_seeds(sc))
        plan = route_slices([GpuConfig(t.name, 1, 1, (a.name,), (1.0 / k,)) for _ in range(k)])
        return all(sim.run(plan).ok for sim in sims)

    return fits


def starts_one_slot(problem: Problem, gtype: int, mix: Mix) -> bool:
    """Does one slot at the mix's largest rank start on a GPU of type ``gtype`` (its profile's memory)?"""
    sv = problem.serving
    prof = problem.gpu_types[gtype].profile
    return prof.max_startable_slots(mix.rank_max, sv.gpu_memory_utilization, sv.max_model_len, upper=1) >= 1


def fragment_problem(
    problem: Problem, placed: Sequence[Sequence[tuple[int, float]]], class_width: float = 0.05, tag: bool = False
) -> tuple[Problem, list[list[int]]]:
    """``problem`` with its items as ``placed`` puts them (per GPU, (item index, rate there); every item
    on at least one GPU): an item on several GPUs becomes one replica per GPU, whose ``share`` is the
    part's rate over the item's, times the item's share (the last takes the rest, so they add up to the
    item's exactly); and, per GPU of ``placed``, the indices of its items in the new problem. ``tag``:
    each item records its GPU (``AdapterItem.gpu``, what :func:`.loraserve.assign` reads)."""
    parts: dict[int, list[tuple[int, float]]] = {}
    for g, items in enumerate(placed):
        for i, r in items:
            parts.setdefault(i, []).append((g, r))
    out: list[AdapterItem] = []
    where: list[int] = []
    for a in problem.adapters:
        ps = parts[a.index]
        shares = [a.share * r / a.rate_rps for _, r in ps[:-1]]
        shares.append(a.share - math.fsum(shares))
        out += [replace(a, rate_rps=r, share=x, gpu=g if tag else a.gpu) for (g, r), x in zip(ps, shares, strict=True)]
        where += [g for g, _ in ps]
    ads = tuple(replace(x, index=i) for i, x in enumerate(out))
    per_gpu: list[list[int]] = [[] for _ in placed]
    for i, g in enumerate(where):
        per_gpu[g].append(i)
    return replace(problem, adapters=ads, classes=classify(ads, class_width)), per_gpu
