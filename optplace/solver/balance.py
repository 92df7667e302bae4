"""Balancing a plan at a fixed GPU fleet: the worst GPU's load/capacity margin as large as possible.

A plan filled first-fit to the capacity oracle's edge is fragile: the oracle (a surrogate trained on
the twin, or the analytic fluid model) has errors of several per cent, and a GPU planned at 99 % of
its predicted capacity starves as soon as the truth is 2 % lower. Once the GPU count (or, for
``min_cost``, the fleet) is fixed, :func:`rebalance` spreads the adapters so that the largest
*utilisation* (offered tokens/s ÷ the GPU's capacity) is as small as it can make it, keeping every GPU
feasible for the oracle.

* Utilisation is measured on the analytic fluid model (:class:`~.capacity.AnalyticCapacity`, the
  oracle's own or a fresh one): capacity of the mix at the best of a few slot counts
  (:func:`utilisation`), so it is *rank-aware* (one rank-32 adapter lowers the capacity of a rank-8
  GPU) and slot-aware (rotation when the slots run short, LoRA cost of many distinct adapters).
  It is a proxy for ranking GPUs; whether a GPU is acceptable is always the oracle's verdict
  (:func:`~.greedy.judge`).
* Local search, lexicographic min–max: take the most utilised GPU, move one of its adapters (or
  swap one for a lighter or lower-rank one) to one of the least utilised GPUs when that lowers the
  larger of the two utilisations and both GPUs pass the oracle; when the most utilised GPU cannot be
  improved, continue with the next one. Every accepted step lowers the sorted utilisation vector,
  so it terminates; it also stops with the plan so far (every state is feasible) once it has spent
  its work budget — evaluations counted, not seconds, so the result does not depend on the machine's
  speed or load — or at its deadline (a cut the solve reports).
* No GPU is emptied (the count is the strategy's decision) and types never change.

Changed GPUs are rebuilt from the oracle's verdict on their new mix (:func:`~.greedy.judge`: its slot
count, predicted throughput/latency), so the plan's per-GPU figures are the oracle's for the new mixes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from optplace.solver.capacity import AnalyticCapacity, CapacityOracle, Estimate, Mix
from optplace.solver.greedy import judge
from optplace.solver.plan import GpuAssignment, assign_gpu, from_estimate
from optplace.solver.problem import Deadline, Problem

_NEVER = Deadline(0.0)
#: Destinations tried per step: the least utilised GPUs (a move to a busier one rarely lowers the max).
DESTINATIONS = 6
#: Oracle checks per step before the GPU is declared stuck (the proxy ranks; the oracle decides).
ORACLE_TRIES = 6


@dataclass(frozen=True, slots=True)
class BalanceResult:
    """The balanced GPUs and the worst utilisation before/after (analytic proxy; nan without one)."""

    gpus: tuple[GpuAssignment, ...]
    max_util_before: float
    max_util_after: float
    moves: int
    swaps: int
    stopped_by_deadline: bool
    #: Stopped because its work budget was spent (deterministic, unlike the deadline).
    stopped_by_budget: bool = False

    def log_line(self) -> str:
        """One solver-log line describing the pass."""
        tail = "; stopped at its deadline" if self.stopped_by_deadline else ""
        tail += "; stopped at its work budget" if self.stopped_by_budget else ""
        return (
            f"balanced at {len(self.gpus)} GPUs: worst load/capacity {self.max_util_before:.0%} → "
            f"{self.max_util_after:.0%} (analytic capacity), {self.moves} moves, {self.swaps} swaps{tail}"
        )


def proxy_model(problem: Problem, oracle: CapacityOracle) -> AnalyticCapacity | None:
    """The analytic model utilisation is measured on: the oracle's own, or one built from the problem's
    profiles (None for a problem whose GPU types have no profile, e.g. a test's toy oracle)."""
    an = getattr(oracle, "analytic", oracle)
    if isinstance(an, AnalyticCapacity):
        return an
    try:
        return AnalyticCapacity(problem)
    except Exception:  # noqa: BLE001 - a toy problem without profiles: balance the offered load
        return None


#: Work units of one oracle verdict per adapter of its mix, against 1 per adapter of a utilisation
#: evaluation (:class:`_State`): a verdict asks the oracle at up to eight slot counts.
VERDICT_WORK = 8


class _State:
    """Adapters per GPU with cached utilisation (analytic proxy), and the work spent: adapters of every
    mix evaluated (:data:`VERDICT_WORK` per adapter of an oracle verdict), a count that grows with the
    time a pass takes but, unlike the time, is the same on every machine and every run."""

    def __init__(self, problem: Problem, an: AnalyticCapacity | None, gpus: Sequence[GpuAssignment]) -> None:
        self.pb, self.an = problem, an
        self.work = 0
        self.types = [g.type_index for g in gpus]
        self.groups = [list(g.adapter_indices) for g in gpus]
        self.util = [self.u(t, idx) for t, idx in zip(self.types, self.groups)]

    def u(self, gtype: int, idx: Sequence[int]) -> float:
        self.work += len(idx)
        return utilisation(self.pb, self.an, gtype, idx)


#: Slot counts the utilisation proxy tries besides one slot per adapter (the oracle's picks for
#: 50–500 adapters fall among them; the capacity varies slowly between them).
_PROXY_SLOTS: tuple[int, ...] = (8, 16, 32, 64, 128, 256)


def utilisation(problem: Problem, an: AnalyticCapacity | None, gtype: int, idx: Sequence[int]) -> float:
    """Offered tokens/s of adapters ``idx`` ÷ the analytic capacity of the best of a few slot counts
    (one per adapter, or :data:`_PROXY_SLOTS`, within the memory cap) — the load rule only, with the
    rotation loss: the sticky-slot rule is a yes/no question left to the oracle. Offered tokens/s when
    there is no analytic model."""
    if not idx:
        return 0.0
    ads = [problem.adapters[i] for i in idx]
    offered = problem.offered_tok_s(math.fsum(a.rate_rps for a in ads))
    if an is None:
        return offered
    mix = Mix.of(ads)
    top = min(mix.n, an.slot_cap(gtype, mix.rank_max))
    if top < 1:
        return math.inf
    cap = max(an.evaluate(gtype, mix, L).capacity_tok_s for L in {top, *(L for L in _PROXY_SLOTS if L < top)})
    return offered / cap if cap > 0 and math.isfinite(cap) else math.inf


def _key(problem: Problem, i: int) -> tuple[int, float]:
    a = problem.adapters[i]
    return (a.rank, round(a.rate_rps, 12))


#: Most adapters of one GPU tried per step (spread over its rate range): a GPU of a large plan holds
#: hundreds of adapters with distinct Zipf rates, and a step must stay in milliseconds.
CANDIDATES = 24
#: The same for each side of a swap (pairs: its square).
SWAP_CANDIDATES = 8


def _distinct(problem: Problem, idx: Sequence[int], limit: int = CANDIDATES) -> list[int]:
    """One adapter per (rank, rate) (equal adapters give equal moves), at most ``limit`` of them,
    evenly spaced in rate order within each rank."""
    seen: dict[tuple[int, float], int] = {}
    for i in idx:
        seen.setdefault(_key(problem, i), i)
    keys = sorted(seen, key=lambda k: (-k[0], -k[1]))
    if len(keys) > limit:
        step = len(keys) / limit
        keys = [keys[int(j * step)] for j in range(limit)]
    return [seen[k] for k in keys]


def scaled(problem: Problem, idx: Sequence[int], load_scale: float = 1.0) -> Mix:
    """The mix of adapters ``idx`` with every rate multiplied by ``load_scale`` (a load margin)."""
    ads = [problem.adapters[i] for i in idx]
    return Mix(tuple(a.rank for a in ads), tuple(a.rate_rps * load_scale for a in ads))


def rebalance(
    problem: Problem,
    oracle: CapacityOracle,
    gpus: Sequence[GpuAssignment],
    deadline: Deadline = _NEVER,
    max_steps: int | None = None,
    load_scale: float = 1.0,
    work_budget: int | None = None,
) -> BalanceResult:
    """Spread ``gpus``' adapters over the same GPUs so the worst utilisation is as low as the local
    search gets it, every GPU staying oracle-feasible (see the module docstring). ``max_steps``: bound
    on accepted moves/swaps (default 4 per GPU + 50). ``load_scale`` > 1: a GPU receiving adapters must
    pass the oracle at that multiple of its load (the repair's margin). Empty GPUs may receive
    adapters (a GPU added by the repair); a GPU the oracle rejects may always give adapters away.
    ``work_budget``: stop once this much work (:class:`_State`) is spent (None: no budget)."""
    gpus = list(gpus)
    an = proxy_model(problem, oracle)
    st = _State(problem, an, gpus)
    before = max(st.util, default=0.0)
    steps_left = max_steps if max_steps is not None else 4 * len(gpus) + 50
    moves = swaps = 0
    stuck: set[int] = set()
    changed: set[int] = set()
    feasible_cache: dict[tuple[int, tuple[int, ...]], Estimate] = {}
    timed_out = spent = False

    def verdict(g: int, idx: list[int]) -> Estimate:
        key = (st.types[g], tuple(sorted(idx)))
        e = feasible_cache.get(key)
        if e is None:
            st.work += VERDICT_WORK * len(idx)
            e = feasible_cache[key] = judge(oracle, st.types[g], scaled(problem, idx, load_scale))
        return e

    while len(gpus) > 1 and steps_left > 0:
        if work_budget is not None and st.work >= work_budget:
            spent = True
            break
        if deadline.expired():
            timed_out = True
            break
        live = [g for g in range(len(gpus)) if g not in stuck]
        if not live:
            break
        s = max(live, key=lambda g: (st.util[g], -g))
        us = st.util[s]
        dests = sorted((g for g in range(len(gpus)) if g != s), key=lambda g: (st.util[g], g))[:DESTINATIONS]
        cands: list[tuple[float, int, int, int | None]] = []  # (new max, dst, adapter out of s, adapter back)
        src_keys = _distinct(problem, st.groups[s])
        if len(st.groups[s]) > 1:
            for a in src_keys:
                rest = [i for i in st.groups[s] if i != a]
                u_s = st.u(st.types[s], rest)
                if u_s >= us:
                    continue
                for d in dests:
                    v = max(u_s, st.u(st.types[d], st.groups[d] + [a]))
                    if v < us - 1e-9:
                        cands.append((v, d, a, None))
        if not cands:
            # Swaps: one adapter of s for a lighter or lower-rank one of a lightly used GPU.
            for d in dests[:3]:
                for a in _distinct(problem, st.groups[s], SWAP_CANDIDATES):
                    ra = problem.adapters[a]
                    for b in _distinct(problem, st.groups[d], SWAP_CANDIDATES):
                        rb = problem.adapters[b]
                        if rb.rate_rps >= ra.rate_rps and rb.rank >= ra.rank:
                            continue
                        u_s = st.u(st.types[s], [i for i in st.groups[s] if i != a] + [b])
                        if u_s >= us - 1e-9:
                            continue
                        v = max(u_s, st.u(st.types[d], [i for i in st.groups[d] if i != b] + [a]))
                        if v < us - 1e-9:
                            cands.append((v, d, a, b))
        cands.sort(key=lambda c: (c[0], c[1], c[2], -1 if c[3] is None else c[3]))
        done = False
        for _v, d, a, swap in cands[:ORACLE_TRIES]:
            new_s = [i for i in st.groups[s] if i != a] + ([swap] if swap is not None else [])
            new_d = [i for i in st.groups[d] if i != swap] + [a]
            # A source the oracle already rejects may shed load whatever the verdict on what is left.
            src_ok = verdict(s, new_s).feasible or not verdict(s, st.groups[s]).feasible
            if not (verdict(d, new_d).feasible and src_ok):
                continue
            st.groups[s], st.groups[d] = new_s, new_d
            st.util[s], st.util[d] = st.u(st.types[s], new_s), st.u(st.types[d], new_d)
            changed |= {s, d}
            stuck.discard(d)
            if swap is None:
                moves += 1
            else:
                swaps += 1
            steps_left -= 1
            done = True
            break
        if not done:
            stuck.add(s)
    out: list[GpuAssignment] = []
    for g, old in enumerate(gpus):
        if g not in changed or not st.groups[g]:
            out.append(old if g not in changed else assign_gpu(problem, oracle, st.types[g], [], old.gpu))
            continue
        # The oracle's verdict at the real rates (cached when there is no margin): a bounded number of
        # oracle calls per GPU (judge), where best_slots would scan the whole slot grid.
        e = verdict(g, st.groups[g]) if load_scale == 1.0 else judge(oracle, st.types[g], scaled(problem, st.groups[g]))
        out.append(from_estimate(problem, st.types[g], st.groups[g], e, old.gpu))
    return BalanceResult(tuple(out), before, max(st.util, default=0.0), moves, swaps, timed_out, spent)
