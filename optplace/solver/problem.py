"""Problem compilation: a Scenario becomes a frozen :class:`Problem` the strategies work on.

The problem holds the expanded adapters (name, rank, rate, index), the GPU types of the pool
(profile, how many are available, price), the workload statistics every capacity model needs
(:class:`~optplace.twin.workload.WorkloadStats`: mean request lengths and arrival burstiness, from the
registered arrival and length models the twin generates with — closed forms where a model has one,
else measured on a workload the twin generates, so a trace is planned with its own burstiness), the
constraints and the objective.

Adapters with equal rank and near-equal rates are aggregated into *classes* (rates bucketed
geometrically, ``class_width`` wide), so a pattern/cutting-stock MILP over class-count vectors
scales to 10k+ adapters. A class's representative rate is the *largest* rate in it, so a pattern
that is feasible for representatives is feasible for any members it is filled with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optplace.specs import Constraints, Profile, Scenario, Serving, SolverOptions
from optplace.specs.profiles import load_profile_file, resolve_profile
from optplace.twin.workload import WorkloadStats, planning_stats


class Infeasible(Exception):
    """The spec has no feasible plan; ``constraint`` names what binds (the CLI maps this to exit 1)."""

    def __init__(self, message: str, constraint: str = "") -> None:
        super().__init__(message)
        self.constraint = constraint

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled whole (a solve's second process re-raises it in the first): message and constraint
        return _rebuilt, (type(self), str(self), self.constraint)


def _rebuilt(cls: type[Infeasible], message: str, constraint: str) -> Infeasible:
    e = cls.__new__(cls)
    Infeasible.__init__(e, message, constraint)
    return e


class TimeLimitReached(Infeasible):
    """``solver.time_limit_s`` ran out before a first feasible plan existed, or the spec is plainly too
    big for it. A subclass of :class:`Infeasible` on purpose: the spec is valid but has no plan within
    its time budget, so the CLI exits 1 (like a pool that is too small), not 2 (input errors)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "time_limit_s")


@dataclass(frozen=True, slots=True)
class Deadline:
    """The one time budget of a solve, on the monotonic clock, and the record of what it cut.

    Created once when the solve starts (``optplace solve``: before the problem is compiled) and passed
    to every phase — compile, greedy, consolidation, column generation, the integer master (which gets
    only the remaining time), baselines, the bound. A phase that sees it expired stops improving and
    returns the best it has; a phase that has nothing yet raises :class:`TimeLimitReached`.
    ``limit_s = inf`` is "no limit" (library callers, tests).

    The clock is the only thing in a solve that is not a function of the spec: every budget inside a
    phase is counted in work (iterations, moves, evaluations), so a solve the clock never stopped is
    the same on every run. Each phase runs on its own view of the deadline (:meth:`phase`); whenever
    the clock stops or skips work — :meth:`expired` true, :meth:`check` raising, :meth:`affords` false,
    a solver's own time limit hit (:meth:`cut`) — that phase's name is added to :attr:`cuts`, a list
    shared by every view of one deadline, which the plan reports as ``cut_by_time_limit``.
    """

    start: float
    limit_s: float = math.inf
    #: The phase this view of the budget belongs to (what :meth:`cut` records).
    name: str = "solve"
    #: Phases the clock cut, in the order it cut them; one list shared by every view of a deadline.
    cuts: list[str] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def begin(cls, limit_s: float, started: float | None = None) -> "Deadline":
        """A deadline ``limit_s`` after ``started`` (a ``time.monotonic()`` reading; default now)."""
        return cls(time.monotonic() if started is None else float(started), float(limit_s))

    @classmethod
    def never(cls) -> "Deadline":
        return cls(time.monotonic(), math.inf)

    @property
    def at(self) -> float:
        """The monotonic time when the budget ends."""
        return self.start + self.limit_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        """Whether the budget has ended, without recording a cut (for reporting, not for stopping)."""
        return time.monotonic() >= self.at

    def expired(self) -> bool:
        """Whether the budget has ended; a phase that stops on it is recorded as cut."""
        if time.monotonic() < self.at:
            return False
        self.cut()
        return True

    def affords(self, seconds: float) -> bool:
        """Whether ``seconds`` are left; a phase skipped for lack of them is recorded as cut."""
        if self.remaining() >= seconds:
            return True
        self.cut()
        return False

    def cut(self, name: str | None = None) -> None:
        """Record that the clock cut this view's phase (or ``name``)."""
        what = name or self.name
        if what not in self.cuts:
            self.cuts.append(what)

    def phase(self, name: str) -> "Deadline":
        """The same budget as seen by phase ``name`` (its cuts are recorded under that name)."""
        return Deadline(self.start, self.limit_s, name, self.cuts)

    def part(self, fraction: float) -> "Deadline":
        """A deadline ending ``fraction`` of the way from now to this one's end (a phase's budget)."""
        if not math.isfinite(self.limit_s):
            return self
        now = time.monotonic()
        return Deadline(self.start, (now - self.start) + max(0.0, self.at - now) * fraction, self.name, self.cuts)

    def until(self, fraction: float) -> "Deadline":
        """The first ``fraction`` of this budget (same start): a phase that must leave time to the next."""
        return Deadline(self.start, self.limit_s * fraction, self.name, self.cuts)

    def check(self, what: str) -> None:
        """Raise :class:`TimeLimitReached` (nothing feasible yet: ``what`` says what was under way)."""
        if self.expired():
            raise TimeLimitReached(
                f"time limit reached after {self.elapsed():.1f} s (solver.time_limit_s = "
                f"{self.limit_s:g}) before a first feasible plan existed ({what}); "
                f"raise solver.time_limit_s"
            )


@dataclass(frozen=True, slots=True)
class AdapterItem:
    """One adapter of the problem (index = position in the scenario's expanded adapter list)."""

    index: int
    name: str
    rank: int
    rate_rps: float
    #: The share of the adapter's requests this item stands for: below 1 for a replica of a hot
    #: adapter split over several GPUs (:mod:`.replicate`); several items then carry one name.
    share: float = 1.0
    #: The GPU (in pool order) a fractional strategy's split made this item for (:mod:`.loraserve`:
    #: the item is a fragment of the adapter cut at that GPU's boundary); -1: none.
    gpu: int = -1


@dataclass(frozen=True, slots=True)
class AdapterClass:
    """Adapters of one rank whose rates fall into one geometric bucket."""

    index: int
    rank: int
    rate_rps: float  # representative: the largest member rate (conservative)
    mean_rate_rps: float
    members: tuple[int, ...]  # adapter indices, hottest first

    @property
    def count(self) -> int:
        return len(self.members)


@dataclass(frozen=True, slots=True)
class GpuType:
    """A GPU type of the pool and the profile of the scenario's model on it."""

    index: int
    name: str
    profile: Profile
    count: int
    cost_per_hour: float


@dataclass(frozen=True, slots=True)
class Problem:
    """Everything a strategy needs; built once by :func:`compile_problem`."""

    name: str
    adapters: tuple[AdapterItem, ...]
    classes: tuple[AdapterClass, ...]
    gpu_types: tuple[GpuType, ...]
    stats: WorkloadStats
    constraints: Constraints
    serving: Serving
    objective: str
    solver: SolverOptions
    seed: int
    scenario: Scenario | None = None
    base_dir: Path = field(default_factory=Path)

    @property
    def n_adapters(self) -> int:
        return len(self.adapters)

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(sorted({a.rank for a in self.adapters}))

    def offered_tok_s(self, rate_rps: float) -> float:
        """Offered tokens/s of a rate (input + output tokens, the study's definition)."""
        return rate_rps * self.stats.tokens_per_request

    @property
    def total_offered_tok_s(self) -> float:
        return self.offered_tok_s(math.fsum(a.rate_rps for a in self.adapters))

    def gpu_budget(self) -> int:
        """GPUs the solver may use: ``solver.max_gpus`` if set, else the pool's total count."""
        pool = sum(t.count for t in self.gpu_types)
        return min(pool, self.solver.max_gpus) if self.solver.max_gpus is not None else pool

    def with_objective(self, objective: str) -> "Problem":
        from dataclasses import replace

        return replace(self, objective=objective)


def classify(adapters: Sequence[AdapterItem], width: float = 0.05) -> tuple[AdapterClass, ...]:
    """Group adapters by rank and geometric rate bucket (``width`` = relative bucket width).

    Zero-rate adapters form their own class per rank. Classes are ordered by rank, then rate
    descending; members hottest first (ties by index, so the order is deterministic).
    """
    if width <= 0:
        raise ValueError(f"class width must be > 0 (got {width})")
    step = math.log1p(width)
    buckets: dict[tuple[int, int | None], list[AdapterItem]] = {}
    for a in adapters:
        key = (a.rank, None if a.rate_rps <= 0 else math.floor(math.log(a.rate_rps) / step))
        buckets.setdefault(key, []).append(a)
    out: list[AdapterClass] = []
    for (rank, _b), items in sorted(
        buckets.items(), key=lambda kv: (kv[0][0], -(kv[0][1] if kv[0][1] is not None else -(10**9)))
    ):
        items.sort(key=lambda a: (-a.rate_rps, a.index))
        rates = [a.rate_rps for a in items]
        out.append(
            AdapterClass(
                index=len(out),
                rank=rank,
                rate_rps=max(rates),
                mean_rate_rps=math.fsum(rates) / len(rates),
                members=tuple(a.index for a in items),
            )
        )
    return tuple(out)


def workload_stats(sc: Scenario, base_dir: Path) -> WorkloadStats:
    """What planning uses of the scenario's workload (:func:`~optplace.twin.workload.planning_stats`)."""
    return planning_stats(sc.workload, [a.rate_rps for a in sc.adapter_list()], sc.seed, base_dir)


def gpu_types_of(sc: Scenario, base_dir: Path) -> tuple[GpuType, ...]:
    """The scenario's pool with one profile per type (a spec ``profile:`` file wins over bundled)."""
    from optplace.specs.loader import resolve_spec_path

    out = []
    for i, entry in enumerate(sc.gpu_types()):
        if entry.profile is not None:
            prof = load_profile_file(resolve_spec_path(sc, entry.profile, base_dir))
        elif sc.profile is not None and sc.pool is None:
            prof = load_profile_file(resolve_spec_path(sc, sc.profile, base_dir))
        else:
            prof = resolve_profile(sc.model, entry.gpu)
        out.append(GpuType(i, entry.gpu_name, prof, int(entry.count), float(entry.cost_per_hour)))
    return tuple(out)


def compile_problem(sc: Scenario, base_dir: str | Path = ".", class_width: float = 0.05) -> Problem:
    """Build the solver's :class:`Problem` from a validated scenario."""
    base = Path(base_dir)
    ads = tuple(AdapterItem(i, a.name, a.rank, float(a.rate_rps)) for i, a in enumerate(sc.adapter_list()))
    return Problem(
        name=sc.name,
        adapters=ads,
        classes=classify(ads, class_width),
        gpu_types=gpu_types_of(sc, base),
        stats=workload_stats(sc, base),
        constraints=sc.constraints,
        serving=sc.serving,
        objective=sc.objective,
        solver=sc.solver,
        seed=sc.seed,
        scenario=sc,
        base_dir=base,
    )


def make_problem(
    adapters: Sequence[tuple[str, int, float]],
    gpu_types: Sequence[GpuType],
    stats: WorkloadStats,
    constraints: Constraints | None = None,
    serving: Serving | None = None,
    objective: str = "min_gpus",
    solver: SolverOptions | None = None,
    seed: int = 0,
    name: str = "problem",
    class_width: float = 0.05,
) -> Problem:
    """A problem without a scenario (benchmarks and tests): ``adapters`` as (name, rank, rate_rps)."""
    ads = tuple(AdapterItem(i, n, int(r), float(x)) for i, (n, r, x) in enumerate(adapters))
    return Problem(
        name=name,
        adapters=ads,
        classes=classify(ads, class_width),
        gpu_types=tuple(gpu_types),
        stats=stats,
        constraints=constraints or Constraints(),
        serving=serving or Serving(),
        objective=objective,
        solver=solver or SolverOptions(),
        seed=seed,
    )
