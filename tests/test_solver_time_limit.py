"""Issue 7, limits: a solve must not run more than 10 % past ``solver.time_limit_s``.

Fails today (solver engineer's area, optplace/solver/*): the MILP strategy's greedy warm start,
its consolidation passes and the column-generation set-up ignore the limit (2,000 adapters with the
surrogate oracle and a 2 s limit take ~13 s). Kept as a strict xfail so CI stays green until the
fix lands and then flags the marker for removal; `optplace bench limits` prints the figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from optplace.bench.limits import spec_text
from optplace.solver import compile_problem, make_oracle, solve
from optplace.specs import load_scenario_text


@pytest.mark.xfail(strict=True, reason="solver ignores time_limit_s outside the HiGHS call (see module docstring)")
def test_milp_solve_honours_time_limit() -> None:
    limit = 2.0
    sc = load_scenario_text(spec_text(2000, limit))
    pb = compile_problem(sc, Path("."))
    plan = solve(pb, make_oracle(pb, "auto"), "milp")
    assert plan.solve_time_s <= 1.1 * limit, f"solve took {plan.solve_time_s:.1f} s with time_limit_s {limit}"
