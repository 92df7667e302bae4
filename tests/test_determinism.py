"""A solve is a function of its spec unless the clock cuts it: budgets inside the solver are counted in
work, the clock only stops phases at ``solver.time_limit_s`` (or a phase's share of it), and every such
stop is reported (``cut_by_time_limit``).

The solve runs here on a fake clock (``optplace.solver.problem.time``, which only the solver's
:class:`~optplace.solver.problem.Deadline` reads): a slow clock stands for a slow or loaded machine.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import optplace.solver.problem as problem_mod
from optplace.bench.solver import fleet_spec_text, lognormal_fleet
from optplace.pipeline import solve_scenario
from optplace.solver.problem import Deadline, TimeLimitReached

REPO = Path(__file__).resolve().parents[1]
#: Adapters of the fleet a clock cuts: 3 GPUs whose balancing takes tens of moves and swaps.
N_SLOW = 400
#: Adapters of the fleet solved on a slow clock to the end: 2 GPUs, balanced (a ~2 s solve; the
#: 400-adapter fleet took a minute per solve, and this test solves twice).
N_SAME = 250


class SlowClock:
    """A monotonic clock that advances ``step`` seconds at every reading."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 1000.0, step

    def monotonic(self) -> float:
        self.t += self.step
        return self.t


def _solve(sc, monkeypatch=None, step: float | None = None, clock: SlowClock | None = None) -> dict:
    if monkeypatch is not None and (step is not None or clock is not None):
        monkeypatch.setattr(problem_mod, "time", clock or SlowClock(step or 0.0))
    doc = solve_scenario(sc, Path("."), validate=False).to_json(reproducible=True)
    if monkeypatch is not None:
        monkeypatch.undo()
    return doc


def test_deadline_records_what_the_clock_cut(monkeypatch):
    clock = SlowClock(1.0)
    monkeypatch.setattr(problem_mod, "time", clock)
    dl = Deadline.begin(10.0)
    master = dl.until(0.5).phase("integer master")
    assert not master.expired() and master.affords(1.0) and dl.cuts == []
    assert not dl.phase("bound").affords(100.0)  # skipped for lack of time: a cut
    clock.t += 100.0
    assert master.passed() and dl.cuts == ["bound"]  # passed() only reports
    assert master.expired() and master.part(0.5).expired()
    assert dl.cuts == ["bound", "integer master"]  # one shared record, each phase once
    with pytest.raises(TimeLimitReached):
        dl.phase("first plan").check("filling GPUs")
    assert dl.cuts == ["bound", "integer master", "first plan"]
    assert Deadline.begin(math.inf).phase("x").affords(1e9) and Deadline.begin(math.inf).cuts == []


def test_a_slow_machine_gets_the_same_plan(monkeypatch):
    """The clock running 100 ms per reading (a machine far slower than this one) leaves the limit far
    away: the plan must be the one the real clock gives. A phase with a budget in seconds of its own
    (say 1 s of balancing) would end after a few steps on this clock and place the adapters differently
    (the plan of a 10,000-adapter fleet differed between two runs on the real clock that way)."""
    sc = lognormal_fleet(N_SAME, time_limit_s=1e6)
    real = _solve(sc)
    clock = SlowClock(0.1)
    slow = _solve(sc, monkeypatch, clock=clock)
    assert slow == real
    # the solve read the slow clock ~90 times: a phase with a budget of a few seconds would have been cut
    assert clock.t - 1000.0 > 5.0, clock.t
    assert real["time_limit_reached"] is False and real["cut_by_time_limit"] == []


@pytest.mark.parametrize("step", [0.5, 2.0])
def test_a_cut_phase_is_named(monkeypatch, step):
    """A clock that reaches the limit mid-solve: the plan is returned, ``time_limit_reached`` is true and
    ``cut_by_time_limit`` names each phase the clock cut, with a name the JSON contract documents."""
    sc = lognormal_fleet(N_SLOW, time_limit_s=40.0)
    doc = _solve(sc, monkeypatch, step)
    assert doc["time_limit_reached"] is True and doc["placement"]
    assert "balance" in doc["cut_by_time_limit"], doc["cut_by_time_limit"]
    page = (REPO / "docs" / "json-contracts.md").read_text(encoding="utf-8")
    row = next(line for line in page.splitlines() if line.startswith("| `cut_by_time_limit`"))
    assert all(f"`{p}`" in row for p in doc["cut_by_time_limit"]), doc["cut_by_time_limit"]


def test_two_processes_give_byte_identical_json(tmp_path):
    """``solve --json --reproducible`` in two fresh processes (string hashing salted differently),
    under the default SLO with twin validation and repair: byte-identical."""
    sc = lognormal_fleet(200)  # 3 GPUs; 18 s per solve (300 adapters over 300 s: 41 s)
    sc = sc.model_copy(update={"workload": sc.workload.model_copy(update={"duration_s": 200.0})})
    spec = tmp_path / "fleet.yaml"
    spec.write_text(fleet_spec_text(sc), encoding="utf-8")
    outs = []
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt, "PYTHONPATH": str(REPO)}
        r = subprocess.run(
            [sys.executable, "-m", "optplace.cli", "solve", str(spec), "--json", "--reproducible", "--workers", "1"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=600,
        )
        assert r.returncode in (0, 1), r.stderr.decode()
        outs.append(r.stdout)
    assert outs[0] == outs[1]
    assert json.loads(outs[0])["cut_by_time_limit"] == []
