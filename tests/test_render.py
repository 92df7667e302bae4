"""Terminal output of `solve`, `simulate` and `validate`: the compact default fits 80 columns with the
key columns whole; `--wide` shows every column at its natural width; no progress display in pipes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from optplace.app.render import SIM_COLUMNS, SOLVE_COLUMNS, VALIDATION_COLUMNS
from optplace.cli import app
from test_solve_cli import SPEC  # 20 adapters, greedy, a 240 s window: fast to solve and simulate

runner = CliRunner()

PLACED = (
    SPEC
    + """\
placement:
  - {max_loras: 10, adapters: [a-0000, a-0001, a-0002, a-0003, a-0004, a-0005, b-0000, b-0001, b-0002, b-0003]}
  - {max_loras: 10, adapters: [a-0006, a-0007, a-0008, a-0009, a-0010, a-0011, b-0004, b-0005, b-0006, b-0007]}
"""
)

COMPACT = ["GPU", "type", "adapters", "slots", "load tok/s", "loss", "verdict"]


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    d = tmp_path_factory.mktemp("render")
    (d / "s.yaml").write_text(SPEC)
    (d / "placed.yaml").write_text(PLACED)
    return d


def _run(args: list[str], columns: int = 80):
    res = runner.invoke(app, [*args, "--workers", "1"], env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, res.output
    return res


def _header_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("┃"))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("┃│ ").replace("┃", "│").split("│")]


@pytest.mark.parametrize("command", ["solve", "simulate"])
def test_compact_table_fits_80_columns_with_the_key_columns_whole(specs, command):
    spec = specs / ("s.yaml" if command == "solve" else "placed.yaml")
    out = _run([command, str(spec)]).stdout
    widths = [len(line) for line in out.splitlines()]
    assert max(widths) <= 80, out
    # each header on one line, none cut; a solved plan also shows each GPU's spare load (headroom)
    assert _cells(_header_line(out)) == (COMPACT[:-1] + ["spare", "verdict"] if command == "solve" else COMPACT)
    rows = [_cells(line) for line in out.splitlines() if line.startswith("│")]
    assert rows and all(r[1] == "h100-64gb" and r[-1].startswith("ok") for r in rows), out
    assert "--max-cpu-loras" not in out and "TTFT" not in out


def test_wide_shows_every_column_at_its_natural_width(specs):
    out = _run(["solve", str(specs / "s.yaml"), "--wide"]).stdout
    headers = _cells(_header_line(out))
    assert headers == [c.header for c in SOLVE_COLUMNS if c.wide]
    assert "--max-cpu-loras" in headers and "twin TTFT p99 ms" in headers
    assert max(len(line) for line in out.splitlines()) > 80  # not squeezed into the terminal
    sim = _run(["simulate", str(specs / "placed.yaml"), "--wide"]).stdout
    assert _cells(_header_line(sim)) == [c.header for c in SIM_COLUMNS if c.wide]


def test_validate_table_compact_and_wide(specs):
    placed = str(specs / "placed.yaml")
    out = _run(["validate", placed, placed]).stdout
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert _cells(_header_line(out)) == [c.header for c in VALIDATION_COLUMNS if c.compact]
    wide = _run(["validate", placed, "--wide"], columns=200).stdout
    assert _cells(_header_line(wide)) == [c.header for c in VALIDATION_COLUMNS if c.wide]
    assert placed in wide  # the file name whole when there is room


def test_no_progress_display_when_stderr_is_not_a_terminal(specs):
    res = _run(["simulate", str(specs / "placed.yaml"), "--json"])
    assert res.stderr == ""
    assert json.loads(res.stdout)["scenario"] == "small"
    wide = _run(["simulate", str(specs / "placed.yaml"), "--json", "--wide", "--reproducible"])
    plain = _run(["simulate", str(specs / "placed.yaml"), "--json", "--reproducible"])
    assert wide.stdout == plain.stdout  # --wide never touches JSON


def test_profile_grid_and_capacity_sentence_fit_80_columns(specs):
    grid = runner.invoke(app, ["profiles", "--show", "llama-3.1-8b-instruct@h100-64gb"], env={"COLUMNS": "80"})
    assert grid.exit_code == 0, grid.output
    assert max(len(line) for line in grid.stdout.splitlines()) <= 80, grid.stdout
    header = _cells(_header_line(grid.stdout))
    assert header == ["--max-loras", "rank 8", "rank 16", "rank 32", "rank 64"]
    rows = {r[0]: r[1:] for r in (_cells(line) for line in grid.stdout.splitlines() if line.startswith("│"))}
    assert len(rows) == 14 and rows["384"][1:] == ["–", "–", "–"]  # rank ≥ 16 with 384 slots does not start
    cap = runner.invoke(app, ["capacity", str(specs / "s.yaml"), "--no-confirm"], env={"COLUMNS": "80"})
    assert cap.exit_code == 0 and max(len(line) for line in cap.stdout.splitlines()) <= 80, cap.stdout


def test_twin_progress_counts_every_simulated_gpu(specs):
    from optplace.pipeline import solve_scenario
    from optplace.specs import load_scenario
    from optplace.twin.simulate import placement_of, simulate_plan

    events: list[str] = []
    sc = load_scenario(specs / "s.yaml")
    rep = solve_scenario(sc, specs, workers=1, on_event=events.append)
    # the last round's check: every GPU of the final plan on the 3 other draws and at the stated rates (the
    # report at the stated rates then reuses those runs)
    n = 4 * rep.plan.gpus_used
    counts = [e.rsplit(": ", 1)[1] for e in events if e.endswith(" simulated")]
    assert counts and counts[-1] == f"{n}/{n} simulated", events
    assert any(e.startswith("checking") and "at the stated rates" in e for e in events), events
    seen: list[tuple[int, int]] = []
    placed = load_scenario(specs / "placed.yaml")
    simulate_plan(placed, placement_of(placed), specs, workers=1, progress=lambda k, t: seen.append((k, t)))
    assert seen == [(1, 2), (2, 2)]
