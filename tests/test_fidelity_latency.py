"""``bench fidelity``'s latency scoring: regimes, MAPE and bias, the cross-validation split, the page."""

from __future__ import annotations

import pytest

from optplace.bench import fidelity
from optplace.bench.fidelity import (
    METRICS,
    cv_folds,
    latency_rows,
    markdown,
    real_latency,
    regime_disagreements,
    regime_of,
    regime_scores,
    summarize,
)
from optplace.calibration.reference import load_dt_validation
from test_fidelity_small import _fake


@pytest.fixture(scope="module")
def runs():
    return load_dt_validation()


def test_regimes_follow_the_real_loss() -> None:
    assert [regime_of(x) for x in (-0.01, 0.0, 0.0199, 0.02, 0.149, 0.15, 0.9)] == [
        "stable",
        "stable",
        "stable",
        "boundary",
        "boundary",
        "overloaded",
        "overloaded",
    ]
    assert regime_of(None) is None


def test_real_latency_reads_every_figure(runs) -> None:
    real = real_latency()
    ok = [r for r in runs if r.has_results]
    assert all(r.run_id in real for r in ok)
    row = real[ok[0].run_id]
    assert set(row) == set(METRICS)
    assert row["ttft_p99"] >= row["ttft_p50"] > 0 and row["itl_p99"] >= row["itl_mean"] > 0
    assert row["ttft_mean"] == pytest.approx(ok[0].mean_ttft_ms)


def test_scores_are_mape_and_signed_bias_per_regime(runs) -> None:
    ok = [r for r in runs if r.has_results]
    stable = [r for r in ok if regime_of(r.throughput_loss_frac) == "stable"][:2]
    over = [r for r in ok if regime_of(r.throughput_loss_frac) == "overloaded"][:1]
    real = real_latency()

    def fake(r, f):  # every latency figure off by the factor f, throughput exact
        x = real[r.run_id]
        return fidelity.RunResult(
            **{
                **fidelity.asdict(_fake(r, r.total_throughput, r.total_throughput)),
                "mean_itl_ms": x["itl_mean"] * f,
                "ttft_ms_mean": x["ttft_mean"] * f,
                "ttft_ms_p50": x["ttft_p50"] * f,
                "ttft_ms_p99": x["ttft_p99"] * f,
                "tpot_ms_mean": x["tpot_mean"] * f,
                "tpot_ms_p99": x["tpot_p99"] * f,
                "itl_ms_p99": x["itl_p99"] * f,
            }
        )

    res = [fake(stable[0], 1.2), fake(stable[1], 0.9), fake(over[0], 2.0)]
    rows = latency_rows(stable + over, res, real)
    sc = regime_scores(rows)
    assert sc["stable"]["runs"] == 2 and sc["overloaded"]["runs"] == 1 and sc["boundary"]["runs"] == 0
    for m in ("ttft_p50", "ttft_p99", "tpot_p99", "itl_mean", "itl_p99"):
        assert sc["stable"][m]["twin"]["mape_pct"] == pytest.approx(15.0)  # (20 + 10) / 2
        assert sc["stable"][m]["twin"]["bias_pct"] == pytest.approx(5.0)  # (+20 − 10) / 2
        assert sc["overloaded"][m]["twin"]["bias_pct"] == pytest.approx(100.0)
    assert sc["stable"]["throughput"]["twin"]["mape_pct"] == pytest.approx(0.0)
    assert sc["boundary"]["ttft_p99"]["twin"]["n"] == 0
    assert sc["all"]["runs"] == 3
    # the published twin is scored on what sim_runs.csv has (throughput, mean ITL, mean TTFT) only
    assert sc["stable"]["throughput"]["published"]["n"] == 2
    assert sc["stable"]["ttft_p99"]["published"]["n"] == 0

    s = summarize(stable + over, res)
    s["latency"] = sc
    page = markdown(s)
    assert "## Latency and throughput by regime" in page
    assert "| stable (2 runs) | TTFT mean | 15.0 % (+5.0 %) |" in page
    assert "|  | TTFT p99 | 15.0 % (+5.0 %) |" in page


def test_runs_in_another_queueing_regime_are_set_apart_both_ways(runs) -> None:
    ok = [r for r in runs if r.has_results]
    stable = [r for r in ok if regime_of(r.throughput_loss_frac) == "stable"][:4]
    real = real_latency()

    def fake(r, ttft_f, tpot_f):
        x = real[r.run_id]
        return fidelity.RunResult(
            **{
                **fidelity.asdict(_fake(r, r.total_throughput, r.total_throughput)),
                "ttft_ms_p50": x["ttft_p50"] * ttft_f,
                "tpot_ms_mean": x["tpot_mean"] * tpot_f,
            }
        )

    # a queue the real run did not have (×10), one it had and the twin did not (×0.2), and two ordinary runs;
    # ×3.0 exactly is not beyond the factor
    res = [fake(stable[0], 10.0, 1.3), fake(stable[1], 0.2, 0.9), fake(stable[2], 1.1, 1.0), fake(stable[3], 3.0, 1)]
    fl = regime_disagreements(latency_rows(stable, res, real))
    assert [f["run_id"] for f in fl["runs"]] == [stable[0].run_id, stable[1].run_id]
    assert fl["runs"][0]["ttft_ratio"] == pytest.approx(10.0)
    assert fl["runs"][1]["tpot_error_pct"] == pytest.approx(-10.0)
    kept = fl["by_regime"]["stable"]
    assert kept["flips"] == 2 and kept["ttft_p50_without"]["n"] == 2
    assert kept["ttft_p50_without"]["mape_pct"] == pytest.approx(105.0)  # (10 + 200) / 2
    assert fl["by_regime"]["overloaded"] == {"flips": 0, "ttft_p50_without": fidelity._err_stats([])}

    s = summarize(stable, res)
    s["latency"] = regime_scores(latency_rows(stable, res, real))
    s["latency_flips"] = fl
    page = markdown(s)
    assert "### Runs in a different queueing regime" in page
    assert "| stable | 2 / — | 105.0 % (+105.0 %), median 105.0 % | — |" in page


def test_cv_halves_are_disjoint_workload_groups_each_with_every_rank_and_rate_set(runs) -> None:
    a, b = cv_folds(runs)
    assert len(a) + len(b) == len(runs) and a and b
    ga = {(r.rank_list, r.rate_list) for r in a}
    gb = {(r.rank_list, r.rate_list) for r in b}
    assert not ga & gb  # no workload group on both sides
    for half in (a, b):
        assert {r.rank_list for r in half} == {r.rank_list for r in runs}
        assert {tuple(sorted(r.rate_list)) for r in half} == {tuple(sorted(r.rate_list)) for r in runs}
        assert {r.model for r in half} == {r.model for r in runs}


@pytest.fixture
def light_pair(runs, tmp_path, monkeypatch) -> set[str]:
    """The lightest run with results of each cross-validation half (replays in a private cache)."""
    monkeypatch.setenv("OPTPLACE_CACHE", str(tmp_path))

    def light(half):
        ok = [r for r in half if r.has_results and r.aggregate_rate_rps * r.window_s < 3000]
        return sorted(ok, key=lambda r: r.aggregate_rate_rps)[:1]

    a, b = cv_folds(runs)
    return {r.run_id for r in light(a) + light(b)}


def test_cv_scores_both_halves_with_coefficients_fitted_without_them(light_pair) -> None:
    ids = light_pair
    s = fidelity.run(json=True, workers=1, cv=True, select=lambda r: r.run_id in ids)
    cv = s["cv"]
    assert len(cv["folds"]) == 2 and [f["runs_scored"] for f in cv["folds"]] == [1, 1]
    assert {x["run_id"] for x in cv["latency_rows"]} == ids  # every run scored once, by the fold that left it out
    assert not set(cv["folds"][0]["groups"]) & set(cv["folds"][1]["groups"])
    model = next(iter(cv["folds"][0]["step_time"]))
    coef = [f["step_time"][model]["coef"] for f in cv["folds"] if model in f["step_time"]]
    assert any(c["h_pf"] != s["step_time_fitted"][model]["h_pf"] for c in coef)  # really refitted
    assert cv["latency"]["all"]["runs"] == 2
    assert cv["latency"]["all"]["ttft_p99"]["twin"]["n"] == 2


def test_a_candidate_step_form_is_fitted_on_all_runs_and_per_fold(light_pair) -> None:
    ids = light_pair
    base = fidelity.run(json=True, workers=1, select=lambda r: r.run_id in ids)
    s = fidelity.run(json=True, workers=1, cv=True, step_form="lora_add_v3", select=lambda r: r.run_id in ids)
    assert base["step_form"] is None and s["step_form"] == "lora_add_v3"
    model = next(iter(s["step_time_fitted"]))
    # the additive form's g_lora is ms per adapter (~0.3), the bundled multiplicative one's a factor (~0.02)
    assert s["step_time_fitted"][model]["g_lora"] > 5 * base["step_time_fitted"][model]["g_lora"]
    assert all(f["step_time"][m]["form"] == "lora_add_v3" for f in s["cv"]["folds"] for m in f["step_time"])
    twin = {x["run_id"]: x["metrics"]["tpot_mean"]["twin"] for x in s["latency_rows"]}
    bundled = {x["run_id"]: x["metrics"]["tpot_mean"]["twin"] for x in base["latency_rows"]}
    assert twin.keys() == bundled.keys() == ids and twin != bundled  # the replays used the candidate form


def test_cv_and_runs_flags_only_for_fidelity() -> None:
    from typer.testing import CliRunner

    from optplace.cli import app

    for flag in ("--cv", "--runs"):
        res = CliRunner().invoke(app, ["bench", "capacity", flag])
        assert res.exit_code == 2 and f"{flag} does not apply" in res.output
