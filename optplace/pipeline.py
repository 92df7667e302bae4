"""The pipeline that joins the solver and the twin: solve → validate every GPU in the twin → repair
what starves or fails to start → re-validate, and the batch validation and capacity questions.

The twin never imports the solver; this module is the only place the two meet. Every twin result
here is computed on the scenario-wide workload (one seeded generator owned by the run), so GPUs
that did not change between repair rounds are not simulated again: their results are reused.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from optplace.infra.executors import ExecutorSpec
from optplace.infra.text import count
from optplace.specs import Adapter, Scenario
from optplace.twin.headroom import LoadProbes, PlanHeadroom, find_headroom
from optplace.twin.simulate import (
    PlanSimulator,
    SimReport,
    WorkloadsAhead,
    can_draw_ahead,
    check_seeds,
    simulate_into,
    worst_of,
)

Event = Callable[[str], None]


@lru_cache(maxsize=1)
def silence_highs_banner() -> None:
    """HiGHS prints a two-line banner when a process creates its first solver, whatever the options;
    creating that first one with stdout/stderr on /dev/null keeps the CLI's output clean."""
    try:
        import highspy
    except ImportError:  # pragma: no cover - highspy is a core dependency
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        highspy.Highs()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send C-level writes to stdout (e.g. a MILP solver's banner) to stderr, so `--json` stays clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _quiet(_: str) -> None:
    pass


def _counting(on_event: Event, step: str) -> Callable[[int, int], None]:
    """A twin progress callback that reports ``step: k/n simulated`` through ``on_event``."""
    return lambda k, n: on_event(f"{step}: {k}/{n} simulated")


def executor_of(sc: Scenario, workers: int | None = None) -> ExecutorSpec:
    """The executor a scenario asks for (``solver.executor``, ``solver.ray_address``, workers)."""
    return ExecutorSpec(kind=sc.solver.executor, workers=workers or sc.solver.workers, address=sc.solver.ray_address)


@dataclass(frozen=True, slots=True)
class StrategyResult:
    """One strategy's plan for the same scenario, as placed (not repaired), checked by the twin."""

    strategy: str
    gpus_used: int | None = None
    objective_value: float | None = None
    lower_bound: float | None = None
    solve_time_s: float = 0.0
    starved_gpus: int | None = None
    oom_gpus: int | None = None
    #: The largest GPU throughput loss the twin measured (the starvation rule compares it with the limit).
    worst_loss: float | None = None
    #: Mean ITL over GPUs, weighted by the tokens each delivered [ms].
    itl_ms_mean: float | None = None
    #: The objective measured on the twin report (inf when a GPU starves or fails to start).
    twin_objective: float | None = None
    #: Why the strategy has no plan (infeasible, time limit), else None.
    error: str | None = None
    #: GPUs that start and are not starved but miss the SLO (None: no SLO).
    slo_gpus: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.starved_gpus == 0 and self.oom_gpus == 0 and not self.slo_gpus

    def to_json(self, reproducible: bool = False) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "gpus_used": self.gpus_used,
            "objective_value": _finite(self.objective_value),
            "lower_bound": _finite(self.lower_bound),
            "solve_time_s": 0.0 if reproducible else round(self.solve_time_s, 3),
            "starved_gpus": self.starved_gpus,
            "oom_gpus": self.oom_gpus,
            "slo_gpus": self.slo_gpus,
            "worst_loss": _finite(self.worst_loss),
            "itl_ms_mean": _finite(self.itl_ms_mean),
            "twin_objective": _finite(self.twin_objective),
            "error": self.error,
        }


def strategy_result(name: str, plan: Any, rep: SimReport, score: float) -> StrategyResult:
    """Summarise one strategy's plan and its twin report (pure)."""
    served = [g for g in rep.gpus if not g.oom and g.throughput_tok_s > 0]
    tokens = math.fsum(g.throughput_tok_s for g in served)
    itl = math.fsum(g.itl_ms_mean * g.throughput_tok_s for g in served) / tokens if tokens > 0 else None
    return StrategyResult(
        name,
        plan.gpus_used,
        plan.objective_value,
        plan.lower_bound,
        plan.solve_time_s,
        len(rep.starved_gpus),
        len(rep.oom_gpus),
        max((g.throughput_loss for g in rep.gpus if not g.oom), default=None),
        itl,
        score,
        slo_gpus=len(rep.slo_gpus) if rep.slo is not None else None,
    )


@dataclass(frozen=True, slots=True)
class SolveReport:
    """A solved, twin-validated (and if needed repaired) plan."""

    scenario: Scenario
    plan: Any  # optplace.solver.plan.Plan (final)
    initial: Any  # the plan before repair
    validation: SimReport | None
    repairs: tuple[str, ...]
    rounds: int
    twin_objective: float | None
    wall_s: float
    base_dir: Path = Path(".")
    #: The expanded adapters (the solver's, so the JSON does not expand 100,000 groups members again).
    adapters: tuple[Any, ...] | None = None
    #: Every strategy's plan checked by the twin (``solve --compare``); empty when not asked for.
    comparison: tuple[StrategyResult, ...] = ()
    #: The plan checked at every rate x (1 + slo.headroom) (None: no headroom asked for, or not validated);
    #: ``validation`` is then the plan at the stated rates.
    headroom_check: SimReport | None = None
    #: How much more load each GPU takes before the twin finds it failing (None: not measured:
    #: ``--no-headroom``, no validation, or a workload whose rates do not scale).
    headroom: PlanHeadroom | None = None
    #: The other seeds' failures of the final plan: (seed, failing GPUs) for each draw it fails.
    seed_failures: tuple[tuple[int, tuple[int, ...]], ...] = ()
    #: Every seed the plan was checked with, the run's own first.
    seeds_checked: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        v, h = self.validation, self.headroom_check
        return (v is None or v.ok) and (h is None or h.ok) and not self.seed_failures

    def to_json(self, reproducible: bool = False) -> dict[str, Any]:
        """The ``solve --json`` document (docs/json-contracts.md), plus the scenario (a plan file is
        self-contained)."""
        doc = self.plan.to_json()
        if reproducible:
            doc["solve_time_s"] = 0.0
        v = self.validation
        doc["validation"] = (
            None
            if v is None
            else {
                "starved_gpus": list(v.starved_gpus),
                "oom_gpus": list(v.oom_gpus),
                "slo": v.slo,
                "slo_gpus": list(v.slo_gpus),
                "gpus": [g.to_json() for g in v.gpus],
                "twin_objective": _finite(self.twin_objective),
                "sim_wall_s": 0.0 if reproducible else round(v.sim_wall_s, 3),
            }
        )
        replicated = v.replicated() if v is not None else ()
        if replicated:
            doc["validation"]["replicated_adapters"] = [r.to_json() for r in replicated]
        h = self.headroom_check
        doc["slo_headroom"] = (
            None
            if h is None or self.scenario.slo is None
            else {
                "headroom": self.scenario.slo_headroom(),
                "ok": h.ok,
                "starved_gpus": list(h.starved_gpus),
                "oom_gpus": list(h.oom_gpus),
                "slo_gpus": list(h.slo_gpus),
            }
        )
        doc["headroom"] = None if self.headroom is None else self.headroom.to_json()
        doc["seeds_checked"] = list(self.seeds_checked)
        doc["seed_failures"] = [{"seed": s, "failed_gpus": list(g)} for s, g in self.seed_failures]
        doc["repairs"] = list(self.repairs)
        doc["repair_rounds"] = self.rounds
        if self.comparison:
            doc["comparison"] = [c.to_json(reproducible) for c in self.comparison]
        doc["model"] = self.scenario.model_name
        doc["serving"] = self.scenario.serving.model_dump()
        doc["adapters"] = (
            [a.model_dump() for a in self.scenario.adapter_list()]
            if self.adapters is None
            else [{"name": a.name, "rank": a.rank, "rate_rps": a.rate_rps} for a in self.adapters]
        )
        doc["scenario"] = self.scenario.model_dump(mode="json", by_alias=True, exclude={"placement"})
        doc["seed"] = self.scenario.seed
        doc["spec_dir"] = str(self.base_dir)
        return doc


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 4)


#: Least time the solver spends per adapter (compiling the problem and the fast greedy's first plan
#: measured 18–29 µs per adapter at 100,000 adapters on a shared 2-core machine, `optplace bench
#: limits`); a spec needing more than its time limit at a third of that is refused before compiling.
MIN_SECONDS_PER_ADAPTER = 1e-5


def adapter_count(sc: Scenario) -> int:
    """The number of adapters of a scenario without expanding its groups."""
    return sum(int(getattr(a, "count", 1)) for a in sc.adapters)


def solve_scenario(
    sc: Scenario,
    base_dir: Path,
    strategy: str | None = None,
    validate: bool = True,
    workers: int | None = None,
    max_rounds: int | None = None,
    on_event: Event = _quiet,
    started: float | None = None,
    compare: bool = False,
    measure_headroom: bool = True,
) -> SolveReport:
    """Solve, validate in the twin, repair starved/OOM GPUs and those that miss the SLO, and re-validate
    (at most ``max_rounds``: default 4, or 8 under an SLO).

    The solver's oracle judges each GPU by the SLO where it can (``auto``: the SLO surrogates under the
    default SLO) and by throughput elsewhere; the twin's check of the
    whole plan and the repair make sure the SLO holds, which with a throughput-only oracle typically
    needs one round to give every adapter a slot and one or two more to move load off the GPUs that
    then run short of KV cache.

    ``compare``: also solve the scenario with every other strategy (each on its own
    ``solver.time_limit_s``) and check each plan, as placed, in the twin (:class:`StrategyResult`,
    the chosen strategy's row is its plan before repair), at the rates the plans are judged at (with
    ``slo.headroom``, the scaled ones). Twin results of GPU configurations that
    several plans share are computed once.

    Time limit: ``solver.time_limit_s`` bounds *the solve* — compiling the problem, every strategy
    phase and the bound — on one monotonic deadline started at ``started`` (a ``time.monotonic()``
    reading taken when the command started; default: when this function is called). Past it the best
    plan so far is returned (its log says "time limit reached after …"); with no plan yet
    :class:`~optplace.solver.problem.TimeLimitReached` is raised (an ``Infeasible``: exit 1). A spec
    plainly too big for its limit (more adapters than ``limit / MIN_SECONDS_PER_ADAPTER``) is refused
    the same way before anything is compiled. The twin validation and repair rounds that follow are
    *not* under the deadline: cutting them short would report a plan the twin has not checked as
    checked; their cost is bounded by the spec's window (specs over 50 M expected requests are
    refused) and ``--no-validate`` skips them.
    """
    from optplace.solver.capacity import make_oracle
    from optplace.solver.objectives import get_objective
    from optplace.solver.plan import gpu_plans
    from optplace.solver.problem import Deadline, TimeLimitReached, compile_problem
    from optplace.solver.repair import repair
    from optplace.solver.replicate import twin_fits
    from optplace.solver.strategies import solve_split

    t0 = time.perf_counter()
    deadline = Deadline.begin(sc.solver.time_limit_s, started)
    n = adapter_count(sc)
    need = n * MIN_SECONDS_PER_ADAPTER
    # Judged on the whole limit, not what reading the spec left: "too big" is about the spec.
    if need > sc.solver.time_limit_s:
        raise TimeLimitReached(
            f"spec too big for its time limit: {n:,} adapters need at least ~{need:.1f} s to "
            f"compile and place (≥ {MIN_SECONDS_PER_ADAPTER * 1e6:.0f} µs each), "
            f"solver.time_limit_s is {sc.solver.time_limit_s:g} s; raise it"
        )
    deadline.check("reading the spec")
    silence_highs_banner()
    problem = compile_problem(sc, base_dir)
    oracle = make_oracle(problem, "auto")
    compiled = problem  # the spec's adapters whole: every strategy of --compare splits its own
    whole = problem.adapters  # the spec's adapters (the plan JSON lists these, not the replicas)
    # an adapter more than one GPU serves becomes replicas the strategies place like adapters (a
    # fractional strategy, loraserve, splits the problem its own way)
    # (confirmed in the twin unless the plan is not to be: --no-validate runs no twin)
    validating = validate and sc.solver.validate_plan
    executor = executor_of(sc, workers)
    headroom = sc.slo_headroom()

    def check_simulators() -> tuple[list[PlanSimulator], PlanSimulator | None, LoadProbes | None]:
        """The twin workloads the checks run on: with the plan checked and repaired at the scaled rates
        (a headroom), the run's seed and the other check seeds at those; the stated rates, a draw of
        their own (scaled rates draw other arrivals), where the plan must pass too: a verdict such as a
        light adapter's queue growing in a short window can fail at the stated rates and pass at +5 %;
        the headroom search's multipliers, which thin one draw of their own (LoadProbes)."""
        seeds = [PlanSimulator(sc, base_dir, executor, seed=s, load_scale=1.0 + headroom) for s in check_seeds(sc)]
        at_stated = PlanSimulator(sc, base_dir, executor) if headroom > 0 else None
        search = LoadProbes(sc, base_dir, executor, sc.seed) if measure_headroom and sc.rates_scalable() else None
        return seeds, at_stated, search

    # None of them depends on the plan: they are drawn while the solver plans (WorkloadsAhead), where
    # that can fit. The check seeds' draws alone bound the requests from below, so a fleet too big for
    # it makes its simulators after planning, outside the time limit (five take ~3 s at 100,000 adapters).
    fleet_rps = math.fsum(a.rate_rps for a in problem.adapters)
    early = validating and can_draw_ahead(
        sc, executor, fleet_rps * sc.workload.duration_s * (1.0 + headroom) * len(check_seeds(sc))
    )
    checkers, stated, probes = check_simulators() if early else ([], None, None)
    fits = twin_fits(problem, executor) if validating else None
    on_event(f"solving with {strategy or sc.solver.strategy} ({oracle.name} capacity oracle)")
    ahead_of_plan = [*checkers, *([stated] if stated else []), *([probes.top] if probes and probes.top else [])]
    with WorkloadsAhead(ahead_of_plan, executor) as drawn_ahead:
        with stdout_to_stderr():
            split, plan = solve_split(
                problem, oracle, strategy, fits, deadline, parallel=plans_in_parallel(oracle, workers)
            )
        drawn_ahead.collect()
    problem = split.problem
    for line in split.log:
        on_event(line)
    if split.log:
        plan = plan.with_(log=(*split.log, *plan.log))
    initial = plan
    for line in plan.log:
        if line.startswith("time limit reached"):
            on_event(line)
    on_event(
        f"plan: {count(plan.gpus_used, 'GPU')} (lower bound {plan.lower_bound:g} on the "
        f"{plan.lower_bound_model} model) in {plan.solve_time_s:.1f} s"
    )
    if not validating:
        return SolveReport(sc, plan, initial, None, (), 0, None, time.perf_counter() - t0, base_dir, whole)
    if not early:
        checkers, stated, probes = check_simulators()
    # With a headroom the plan is checked and repaired at the scaled rates, then reported at the stated ones.
    if max_rounds is None:
        max_rounds = 4 if sc.slo is None else 8
    actions: list[str] = []
    rounds = 0
    first: SimReport | None = None
    seed_failures: dict[int, tuple[int, ...]] = {}
    while True:
        step = f"validating {count(plan.gpus_used, 'GPU')} in the twin" + (
            f" (repair round {rounds})" if rounds else ""
        )
        on_event(step)
        rep = checkers[0].run(gpu_plans(plan), progress=_counting(on_event, step))
        checks_wall = rep.sim_wall_s  # the twin's time on this round's plan, over every draw
        first = first or rep
        judged = rep
        seed_failures = {}
        if rep.ok:
            # Only a plan that passes its own draw is checked on the others: one round of repair on
            # the run's seed usually moves most of the load, and re-checking every draw each round
            # would multiply the cost for GPUs that are about to change anyway.
            others = checkers[1:]
            runs = [*others, *([stated] if stated is not None else [])]
            if runs:
                step = f"checking {count(plan.gpus_used, 'GPU')} on {count(len(others), 'other draw')}" + (
                    " and at the stated rates" if stated is not None else ""
                )
                on_event(step)
                pairs = [(c, gp) for c in runs for gp in gpu_plans(plan)]
                t_checks = time.perf_counter()
                simulate_into(pairs, executor, _counting(on_event, step))
                checks_wall += time.perf_counter() - t_checks
            for checker in others:
                other = checker.run(gpu_plans(plan))
                if not other.ok:
                    seed_failures[checker.seed] = other.failed_gpus
                    judged = worst_of(judged, other)
            if stated is not None:
                at_stated = stated.run(gpu_plans(plan))  # simulated in the batch above
                if not at_stated.ok:
                    judged = worst_of(judged, at_stated)
                    on_event(f"at the stated rates: GPU {', '.join(map(str, at_stated.failed_gpus))} fail(s)")
        if judged.ok or rounds >= max_rounds:
            break
        rounds += 1
        for s, bad in seed_failures.items():
            on_event(f"seed {s}: GPU {', '.join(map(str, bad))} fail(s) on this draw")
        losses = {g.index: g.throughput_loss for g in judged.gpus}
        with stdout_to_stderr():
            fixed = repair(
                problem,
                oracle,
                plan,
                starved=judged.starved_gpus,
                oom=judged.oom_gpus,
                losses=losses,
                round_=rounds - 1,
                slo=judged.slo_gpus,
                twin_check=partial(_judged_pass, [*checkers, *([stated] if stated is not None else [])], executor),
                room={g.index: _twin_room(g, problem.constraints.max_throughput_loss) for g in judged.gpus},
            )
        actions += [f"round {rounds}: {a}" for a in fixed.actions]
        for a in fixed.actions:
            on_event(f"repair: {a}")
        plan = fixed.plan
    checked: SimReport | None = None
    if stated is not None:
        checked = judged
        step = f"reporting {count(plan.gpus_used, 'GPU')} at the stated rates (checked at +{headroom:.0%})"
        on_event(step)
        rep = stated.run(gpu_plans(plan), progress=_counting(on_event, step))
        # simulated with the checks (cached here unless the rounds ran out before it was checked)
        rep = replace(rep, sim_wall_s=rep.sim_wall_s + checks_wall)
    elif not judged.ok:
        rep = judged
    room = None
    if probes is not None and rep.ok:
        room = find_headroom(
            sc,
            base_dir,
            executor,
            gpu_plans(plan),
            rep,
            progress=on_event,
            known={headroom: checkers[0]},
            guesses=_headroom_guesses(problem, oracle, plan, 1.0 + headroom),
            workloads=probes,
        )
    objective = get_objective(plan.objective)
    comparison: tuple[StrategyResult, ...] = ()
    if compare:
        comparison = _compare(
            compiled, oracle, checkers[0], initial, first, objective, sc.solver.time_limit_s, on_event
        )
    return SolveReport(
        sc,
        plan,
        initial,
        rep,
        tuple(actions),
        rounds,
        objective.score(plan, rep),
        time.perf_counter() - t0,
        base_dir,
        whole,
        comparison,
        checked,
        room,
        tuple(sorted(seed_failures.items())),
        tuple(c.seed for c in checkers),
    )


def _twin_room(gpu: Any, max_loss: float) -> float:
    """How far one simulated GPU is from failing, as a share: the least of its SLO checks' margins
    (1 − value / bound, the adapter closest to each bound) and its backlog's (1 − growth / allowance);
    without an SLO, its loss's margin to the starvation rule's ``max_loss``."""
    if gpu.slo is None:
        return 1.0 - gpu.throughput_loss / max(max_loss, 1e-9)
    margins = [1.0 - c.ratio for c in gpu.slo.checks]
    if gpu.slo.backlog_allowance > 0:
        margins.append(1.0 - max(gpu.slo.backlog_growth, 0) / gpu.slo.backlog_allowance)
    return min(margins, default=0.0)


def _judged_pass(checks: Sequence[PlanSimulator], executor: Any, gpus: Sequence[Any], judge: Sequence[int]) -> bool:
    """The repair's twin check (:data:`~optplace.solver.repair.TwinCheck`): whether the GPUs at positions
    ``judge`` of the candidate ``gpus`` pass on every check simulator (the GPUs not yet simulated run as
    one batch; the others come from the simulators' caches)."""
    from optplace.twin.simulate import route_slices

    used = [k for k, g in enumerate(gpus) if g.adapters]
    configs = list(route_slices([gpus[k].config for k in used]))
    simulate_into([(c, gp) for c in checks for gp in configs], executor)
    at = {k: pos for pos, k in enumerate(used)}
    for c in checks:
        failed = set(c.run(configs).failed_gpus)
        if any(at[k] in failed for k in judge):
            return False
    return True


def plans_in_parallel(oracle: Any, workers: int | None) -> bool:
    """Whether the solve's split path runs in a second process (:func:`~.solver.strategies.solve_split`):
    when this machine lends two cores to the run (``workers``: default, every core), and not for the
    twin-backed oracle, whose twin runs keep every core busy already."""
    from optplace.solver.capacity import TwinCapacity

    return not isinstance(oracle, TwinCapacity) and (workers if workers is not None else os.cpu_count() or 1) >= 2


def _headroom_guesses(problem: Any, oracle: Any, plan: Any, judged_at: float) -> list[float] | None:
    """Where the twin's headroom search starts on each GPU: the headroom the plan's oracle predicts
    (:func:`~optplace.solver.gap.predicted_headroom`). Its verdicts sit close to the twin's near the
    boundary, so most GPUs settle in two runs where a search from the stated load galloped through
    four to six, the highest of them far into overload where the twin runs slowest. None for the
    twin-backed oracle: asking it would cost the very runs the guess is to save."""
    from optplace.solver.capacity import TwinCapacity
    from optplace.solver.gap import predicted_headroom

    if isinstance(oracle, TwinCapacity):
        return None
    return predicted_headroom(problem, oracle, plan, judged_at)


def _compare(
    problem: Any,
    oracle: Any,
    val: PlanSimulator,
    chosen: Any,
    chosen_rep: SimReport,
    objective: Any,
    time_limit_s: float,
    on_event: Event,
) -> tuple[StrategyResult, ...]:
    """Every strategy's plan checked by the twin; ``chosen`` (already solved and simulated) is reused.
    ``problem``: the compiled problem, adapters whole (each strategy splits it its own way)."""
    from optplace.solver.plan import gpu_plans
    from optplace.solver.problem import Deadline, Infeasible
    from optplace.solver.strategies import STRATEGIES, solve_split

    rows = []
    for name in STRATEGIES:
        if name == chosen.strategy:
            rows.append(strategy_result(name, chosen, chosen_rep, objective.score(chosen, chosen_rep)))
            continue
        on_event(f"comparing: {name}")
        try:
            with stdout_to_stderr():
                _, p = solve_split(problem, oracle, name, deadline=Deadline.begin(time_limit_s))
        except Infeasible as e:
            rows.append(StrategyResult(name, error=str(e)))
            continue
        step = f"comparing: {name}, {p.gpus_used} GPUs in the twin"
        on_event(step)
        r = val.run(gpu_plans(p), progress=_counting(on_event, step))
        rows.append(strategy_result(name, p, r, objective.score(p, r)))
    return tuple(rows)


# --- capacity -----------------------------------------------------------------------------------


def mix_sequence(
    adapters: Sequence[Adapter], n: int, slos: Sequence[Any] | None = None
) -> tuple[list[Adapter], list[Any] | None]:
    """``n`` adapters following the spec's mix, and their SLO bounds (``slos``: each spec adapter's
    :class:`~optplace.specs.model.SloBounds`, None with ``slo: none``). Each kind of adapter (rank,
    rate, bounds) has its count as its share (groups read as proportions), filled by largest deficit
    so every prefix keeps the proportions."""
    kinds: dict[tuple[int, float, int], int] = {}
    bound_sets: list[Any] = []
    for i, a in enumerate(adapters):
        b = None if slos is None else slos[i]
        if b not in bound_sets:
            bound_sets.append(b)
        key = (a.rank, round(a.rate_rps, 12), bound_sets.index(b))
        kinds[key] = kinds.get(key, 0) + 1
    keys = list(kinds)
    total = sum(kinds.values())
    have = [0] * len(keys)
    out: list[Adapter] = []
    bounds: list[Any] = []
    for i in range(n):
        j = max(range(len(keys)), key=lambda k: (kinds[keys[k]] * (i + 1) / total - have[k], -k))
        have[j] += 1
        rank, rate, b = keys[j]
        out.append(Adapter(name=f"m{i:05d}", rank=rank, rate_rps=rate))
        bounds.append(bound_sets[b])
    return out, (None if slos is None else bounds)


@dataclass(frozen=True, slots=True)
class LoadBreak:
    """At the capacity answer, the extra load at which one check first fails in the twin."""

    #: An SLO metric (``ttft_p99_ms`` …), ``queue`` (the backlog grows) or ``throughput`` (the study's
    #: rule: more than ``constraints.max_throughput_loss`` of the offered tokens lost).
    check: str
    #: Extra load share at which it first fails (0.15: +15 %); None: still holds at the search's cap.
    breaks_at: float | None
    #: The GPU's offered tokens/s there (None when it never broke).
    offered_tok_s: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "breaks_at": None if self.breaks_at is None else round(self.breaks_at, 4),
            "offered_tok_s": None if self.offered_tok_s is None else round(self.offered_tok_s, 2),
        }


@dataclass(frozen=True, slots=True)
class CapacityAnswer:
    """Largest adapter count of a mix one GPU serves (within the SLO, or by the study's rule with
    ``slo: none``), its best slots, and the load at which each check breaks."""

    max_adapters: int
    max_loras: int
    throughput_tok_s: float
    offered_tok_s: float
    source: str
    twin_confirmed: bool | None
    gpu_type: str
    #: What the answer was judged by: "slo" or "throughput rule".
    judged_by: str = "slo"
    breaks: tuple[LoadBreak, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "max_adapters": self.max_adapters,
            "max_loras": self.max_loras,
            "throughput_tok_s": round(self.throughput_tok_s, 2),
            "offered_tok_s": round(self.offered_tok_s, 2),
            "source": self.source,
            "twin_confirmed": self.twin_confirmed,
            "gpu_type": self.gpu_type,
            "judged_by": self.judged_by,
            "breaks": [b.to_json() for b in self.breaks],
        }


def capacity(
    sc: Scenario,
    base_dir: Path,
    gpu_type: str | None = None,
    upper: int = 2048,
    confirm: bool = True,
    breaks: bool = True,
) -> CapacityAnswer:
    """Answer ``optplace capacity``: search the adapter count with the solver's capacity oracle
    (surrogate when shipped, else twin-backed), then let the twin judge: the largest count whose GPU
    passes (within the scenario's SLO, or not starved with ``slo: none``), and, with ``breaks``, the
    extra load at which each SLO bound, the stable queue and the throughput rule first fail there.

    The oracle sizes by throughput, so under an SLO its answer is an upper start: the twin search
    gallops down from it."""
    from optplace.solver.capacity import Mix, make_oracle
    from optplace.solver.greedy import largest_prefix
    from optplace.solver.problem import AdapterItem, compile_problem
    from optplace.twin.headroom import CAP, STEP, first_failures
    from optplace.twin.simulate import SloRule, scenario_slo_rule, simulate_gpu

    problem = compile_problem(sc, base_dir)
    types = [t for t in problem.gpu_types if gpu_type is None or t.name == gpu_type]
    if not types:
        raise ValueError(f"unknown GPU type {gpu_type!r}")
    t = types[0]
    judged_by = "slo" if sc.slo is not None else "throughput rule"
    oracle = make_oracle(problem, "auto")
    mix_ads, mix_bounds = mix_sequence(sc.adapter_list(), upper, sc.adapter_slos())
    seq = [AdapterItem(i, a.name, a.rank, a.rate_rps) for i, a in enumerate(mix_ads)]
    k, est = largest_prefix(oracle, t.index, seq)
    if k == 0 or est is None:
        return CapacityAnswer(0, 0, 0.0, 0.0, oracle.name, None, t.name, judged_by)
    best = oracle.best_slots(t.index, Mix.of(seq[:k]))
    if not confirm:
        return CapacityAnswer(
            k, best.max_loras, best.throughput_tok_s, best.offered_tok_s, oracle.name, None, t.name, judged_by
        )

    def rule(n: int) -> SloRule | None:
        return None if mix_bounds is None else scenario_slo_rule(sc, mix_bounds[:n])

    def run(n: int, slots: int, scale: float = 1.0) -> Any:
        ads = [a.model_copy(update={"rate_rps": a.rate_rps * scale}) for a in mix_ads[:n]]
        return simulate_gpu(
            t.profile,
            sc.serving,
            sc.constraints,
            sc.workload.arrivals,
            sc.workload.lengths,
            ads,
            slots,
            max(n, slots),
            duration_s=sc.workload.duration_s,
            seed=sc.seed,
            base_dir=base_dir,
            slo=rule(n),
        )

    def twin(n: int) -> Any:
        """The twin's verdict at ``n`` adapters: the oracle's slot count first, then the study's slot grid
        (starvation is very slot-dependent at hundreds of adapters) and a slot per adapter (no sticky-slot
        queue), so the answer does not depend on which oracle proposed the count; the first that passes
        wins."""
        mix = Mix.of(seq[:n])
        cap = oracle.slot_cap(t.index, mix.rank_max)
        first_slots = oracle.best_slots(t.index, mix).max_loras
        grid = [L for L in (8, 16, 32, 64, 128, 256) if L <= min(n, cap)] + [min(n, cap)]
        cands = list(dict.fromkeys([first_slots, *grid]))
        rep = None
        for slots in cands:
            rep = run(n, slots)
            if not rep.failed:
                break
        return rep

    # The twin is the judge: gallop from the oracle's answer until the verdict flips, then bisect.
    first = twin(k)
    confirmed = not first.failed
    results = {k: first}
    step = 1
    if confirmed:
        lo, hi = k, None
        while hi is None and lo < upper:
            m = min(lo + step, upper)
            results[m] = twin(m)
            if results[m].failed:
                hi = m
            else:
                lo, step = m, step * 2
        hi = hi if hi is not None else upper + 1
    else:
        lo, hi = 0, k
        while lo == 0 and hi > 1:
            m = max(hi - step, 1)
            results[m] = twin(m)
            if results[m].failed:
                hi, step = m, step * 2
            else:
                lo = m
    while hi - lo > 1:
        m = (lo + hi) // 2
        results[m] = twin(m)
        lo, hi = (m, hi) if not results[m].failed else (lo, m)
    if lo == 0:
        return CapacityAnswer(0, 0, 0.0, 0.0, f"{oracle.name}+twin", confirmed, t.name, judged_by)
    rep = results[lo]
    found: tuple[LoadBreak, ...] = ()
    if breaks:
        top = max(1, round(CAP / STEP))
        at = first_failures(lambda i: rep if i == 0 else run(lo, rep.max_loras, 1.0 + i * STEP), top)
        found = tuple(
            LoadBreak(c, None if i is None else i * STEP, None if g is None else g.offered_tok_s)
            for c, (i, g) in at.items()
        )
    return CapacityAnswer(
        lo,
        rep.max_loras,
        rep.throughput_tok_s,
        rep.offered_tok_s,
        f"{oracle.name}+twin" if lo != k else oracle.name,
        confirmed,
        t.name,
        judged_by,
        found,
    )
