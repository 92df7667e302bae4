"""Time limits (issue 7): one deadline for the whole solve; past it the best plan so far comes back
with "time limit reached" in its log; with no plan yet, or a spec plainly too big for its limit, the
solve is refused with one line and exit 1. No timed assertions here: the wall-clock figures are in
`optplace bench limits`; these tests force the deadline's state instead."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optplace.cli import app
from optplace.solver import AnalyticCapacity, compile_problem, solve
from optplace.solver.capacity import TimedOracle, make_oracle
from optplace.solver.greedy import greedy_fast, greedy_improved
from optplace.solver.problem import Deadline, Infeasible, TimeLimitReached
from optplace.specs import load_scenario_text
from helpers import REPO


def _spec(n: int, time_limit_s: float, strategy: str = "milp", duration_s: float = 3600) -> str:
    """``n`` adapters in three rank groups with Zipf popularity (the family of `bench limits`)."""
    groups = ((8, 0.5), (16, 0.3), (32, 0.2))
    counts = [int(n * s) for _, s in groups]
    counts[0] += n - sum(counts)
    lines = "\n".join(
        f"  - {{group: r{r}, count: {k}, rank: {r}, total_rate_rps: {0.1 * k:.3f}, popularity: {{kind: zipf, s: 0.5}}}}"
        for (r, _), k in zip(groups, counts)
    )
    return (
        f"name: limits-{n}\nmodel: llama-3.1-8b-instruct\ngpu: h100-64gb\n"
        f"workload: {{duration_s: {duration_s}, arrivals: {{kind: poisson}}, lengths: {{kind: sharegpt}}}}\n"
        f"adapters:\n{lines}\nsolver: {{strategy: {strategy}, time_limit_s: {time_limit_s}}}\nseed: 1\n"
    )


def _valid(problem, plan) -> None:
    """Every adapter placed exactly once, every GPU starts and passes the oracle it was built with."""
    placed = sorted(i for g in plan.gpus for i in g.adapter_indices)
    assert placed == list(range(problem.n_adapters))
    for g in plan.gpus:
        prof = problem.gpu_types[g.type_index].profile
        assert prof.startup_status(g.max_loras, g.max_lora_rank, problem.serving.gpu_memory_utilization) == "ok"
        assert g.feasible, (g.gpu, g.reason)
    assert plan.lower_bound <= plan.objective_value + 1e-9


# --- the deadline object ---------------------------------------------------------------------


def test_deadline_parts_and_expiry() -> None:
    now = time.monotonic()
    past = Deadline(now - 10.0, 5.0)
    assert past.expired() and past.remaining() < 0
    with pytest.raises(TimeLimitReached, match=r"time limit reached after 1\d\.\d s .*\(greedy, 3 GPUs"):
        past.check("greedy, 3 GPUs")
    d = Deadline(now, 100.0)
    assert not d.expired() and 99.0 < d.remaining() <= 100.0
    assert d.until(0.3).at == pytest.approx(now + 30.0)
    half = d.part(0.5)  # half of what is left, from now
    assert half.start == d.start and half.at == pytest.approx(now + 50.0, abs=0.5)
    never = Deadline.never()
    assert not never.expired() and never.remaining() == math.inf and never.part(0.1) is never
    assert issubclass(TimeLimitReached, Infeasible)  # exit 1 through the CLI's Infeasible handling
    assert TimeLimitReached("x").constraint == "time_limit_s"


# --- a limit reached with a plan, and without ----------------------------------------------------


@pytest.fixture(scope="module")
def big():
    """10,000 adapters: the fast greedy places them in well under a second; the MILP cannot finish."""
    sc = load_scenario_text(_spec(10_000, 60), base_dir=REPO)
    problem = compile_problem(sc, REPO)
    return problem, make_oracle(problem, "auto")


def test_tiny_limit_on_a_big_spec_returns_the_best_plan_so_far(big) -> None:
    problem, oracle = big
    t0 = time.monotonic()
    first = greedy_fast(problem, oracle)
    took = time.monotonic() - t0
    # A limit a few times the first plan's cost: the first plan fits, column generation does not.
    limit = 3.0 * took + 0.5
    plan = solve(problem, oracle, "milp", deadline=Deadline.begin(limit))
    assert plan.time_limit_reached, plan.log
    line = next(ln for ln in plan.log if ln.startswith("time limit reached"))
    assert f"solver.time_limit_s = {limit:g}" in line
    assert plan.to_json()["time_limit_reached"] is True
    assert plan.to_json()["cut_by_time_limit"] == list(plan.cut_by_time_limit) != [], plan.log
    _valid(problem, plan)
    assert plan.gpus_used <= len(first)


def test_expired_deadline_without_a_plan_raises_time_limit(big) -> None:
    problem, oracle = big
    gone = Deadline(time.monotonic() - 1.0, 0.5)
    for strategy in ("milp", "greedy", "greedy-paper", "round-robin"):
        with pytest.raises(TimeLimitReached, match="before a first feasible plan existed"):
            solve(problem, oracle, strategy, deadline=gone)


def test_every_phase_stops_at_the_deadline(big) -> None:
    """The phases that have no plan yet raise, the baselines through the timed oracle."""
    problem, oracle = big
    gone = Deadline(time.monotonic() - 1.0, 0.5)
    with pytest.raises(TimeLimitReached, match="fast greedy"):
        greedy_fast(problem, oracle, gone)
    with pytest.raises(TimeLimitReached, match="greedy, 0 GPUs filled"):
        greedy_improved(problem, AnalyticCapacity(problem), deadline=gone)
    timed = TimedOracle(oracle, gone, "a baseline")
    assert timed.analytic is oracle.analytic and timed.name == oracle.name
    with pytest.raises(TimeLimitReached, match="a baseline"):
        timed.best_slots(0, problem_mix(problem))


def problem_mix(problem):
    from optplace.solver import Mix

    return Mix.of(problem.adapters[:5])


def test_fast_greedy_plan_is_valid_and_no_worse_than_a_gpu_per_class(big) -> None:
    problem, oracle = big
    gpus = greedy_fast(problem, oracle)
    placed = sorted(i for g in gpus for i in g.adapter_indices)
    assert placed == list(range(problem.n_adapters))
    assert all(g.feasible for g in gpus)
    # Deterministic: same problem, same plan.
    again = greedy_fast(problem, oracle)
    assert [g.adapter_indices for g in again] == [g.adapter_indices for g in gpus]
    assert [g.max_loras for g in again] == [g.max_loras for g in gpus]


# --- through the CLI -----------------------------------------------------------------------------


def test_cli_refuses_a_spec_too_big_for_its_limit_up_front(tmp_path: Path) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text(_spec(200_000, 1, duration_s=600), encoding="utf-8")
    res = CliRunner().invoke(app, ["solve", str(spec), "--json", "--no-validate"])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "spec too big for its time limit" in lines[0] and "200,000 adapters" in lines[0]
    assert "raise it" in lines[0]


def test_cli_reports_the_time_limit_in_json(tmp_path: Path) -> None:
    """A small spec with a generous limit finishes: ``time_limit_reached`` is false in --json."""
    spec = tmp_path / "small.yaml"
    spec.write_text(_spec(60, 30), encoding="utf-8")
    res = CliRunner().invoke(app, ["solve", str(spec), "--json", "--no-validate"])
    assert res.exit_code == 0, res.output
    import json

    doc = json.loads(res.output[res.output.index("{") :])
    assert doc["time_limit_reached"] is False and doc["gpus_used"] >= 1


def test_pipeline_deadline_starts_at_the_given_moment() -> None:
    """``started`` (the command's start) counts: a deadline already used up by reading the spec
    raises at once, before compiling; a fresh one solves a small spec without reaching its limit."""
    from optplace.pipeline import solve_scenario

    sc = load_scenario_text(_spec(40, 30), base_dir=REPO)
    with pytest.raises(TimeLimitReached, match=r"reading the spec"):
        solve_scenario(sc, REPO, validate=False, started=time.monotonic() - 31.0)
    rep = solve_scenario(sc, REPO, validate=False, started=time.monotonic())
    assert not rep.plan.time_limit_reached and rep.plan.gpus_used >= 1
    assert rep.to_json()["adapters"] == [a.model_dump() for a in sc.adapter_list()]
