"""`optplace bench` option handling: bad values are one-line input errors (exit 2), not tracebacks."""

from __future__ import annotations

from typer.testing import CliRunner

from optplace.cli import app

runner = CliRunner()


def _one_error(args: list[str], needle: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.output


def test_bench_rejects_bad_sizes_and_strategies() -> None:
    _one_error(["bench", "solver", "--sizes", "100,x"], "--sizes")
    _one_error(["bench", "solver", "--sizes", "0"], "--sizes")
    _one_error(["bench", "solver", "--strategies", "milp,nope"], "'nope'")
    _one_error(["bench", "fidelity", "--sizes", "100"], "--sizes does not apply")
    _one_error(["bench", "solver", "--skews", "uniform,zipf"], "--skews: unknown skew 'zipf'")
    _one_error(["bench", "capacity", "--skews", "uniform"], "--skews does not apply")
    _one_error(["bench", "nope"], "unknown benchmark")
    _one_error(["bench", "fidelity", "--step-form", "published_v1"], "--step-form: unknown form 'published_v1'")
    _one_error(["bench", "solver", "--step-form", "lora_add_v3"], "--step-form does not apply")
    _one_error(["bench", "solver", "--rule", "strict"], "--rule: unknown rule 'strict'")
    _one_error(["bench", "fidelity", "--rule", "slo"], "--rule does not apply")
    _one_error(["bench", "solver", "--window", "0"], "--window")
    _one_error(["bench", "solver", "--window", "-5"], "--window")
    _one_error(["bench", "fidelity", "--window", "60"], "--window does not apply")


def test_bench_solver_runs_a_chosen_subset() -> None:
    res = runner.invoke(
        app,
        [
            "bench",
            "solver",
            "--sizes",
            "30",
            "--strategies",
            "greedy,round-robin",
            "--skews",
            "uniform,zipf-0.9",
            "--rule",
            "slo",
            "--window",
            "600",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    import json

    doc = json.loads(res.output)
    rows = doc["rows"]
    assert {r["adapters"] for r in rows} == {30}
    assert {r["skew"] for r in rows} == {"uniform", "zipf-0.9"}
    assert {r["strategy"] for r in rows} <= {"greedy", "round-robin", "round-robin@popularity"}
    assert all(r.get("gpus", 0) >= 1 for r in rows)
    # --rule slo: twin-checked under the default SLO only (30 adapters ≤ the twin-checked size)
    checked = [r for r in rows if r["validated"]]
    assert len(checked) == 8 and all("slo" in r and "study" not in r for r in checked)
    assert doc["rule"] == "slo" and doc["summary"]["rule_only_missing_slo"] is None
    assert doc["window_s"] == 600.0
    # greedy (the first asked for: milp is not) is the strategy re-simulated on three other seeds
    assert [c["strategy"] for c in doc["summary"]["slo_cost"]] == ["greedy"] * 4
