"""Fidelity benchmark on a few light reference runs (the full set is ``optplace bench fidelity``)."""

from __future__ import annotations

import json

import pytest

from optplace.bench import fidelity
from optplace.bench.fidelity import RunResult, simulate_ref_run, summarize
from optplace.calibration.reference import load_dt_validation


@pytest.fixture(scope="module")
def runs():
    return load_dt_validation()


def _light(runs, n=2):
    ok = [r for r in runs if r.has_results and r.aggregate_rate_rps * r.window_s < 3000]
    return sorted(ok, key=lambda r: r.aggregate_rate_rps)[:n]


def _fake(run, thr, offered, itl=20.0, oom=False):
    return RunResult(
        run_id=run.run_id,
        model=run.model,
        config_group=run.config_group,
        max_loras=run.max_loras,
        max_cpu_loras=run.max_cpu_loras,
        max_lora_rank=run.max_lora_rank,
        oom=oom,
        total_throughput=None if oom else thr,
        offered_tok_s=None if oom else offered,
        mean_itl_ms=None if oom else itl,
        completed=None,
        arrivals=None,
        preemptions=None,
        mean_running=None,
        mean_waiting=None,
        adapter_loads=None,
        rejected=None,
        sim_wall_s=0.0,
    )


def test_summarize_scores_known_errors(runs):
    ok = [r for r in runs if r.has_results][:4]
    oom = [r for r in runs if r.is_oom][:2]
    res = [
        _fake(ok[0], ok[0].total_throughput * 1.10, ok[0].total_throughput * 1.10),  # +10 %, not starved
        _fake(ok[1], ok[1].total_throughput * 0.95, ok[1].total_throughput * 2.0),  # -5 %, starved
        _fake(ok[2], ok[2].total_throughput, ok[2].total_throughput),  # exact, not starved
        _fake(ok[3], 0.0, 0.0, oom=True),  # false OOM
        _fake(oom[0], 0, 0, oom=True),
        _fake(oom[1], 1000.0, 1000.0),  # missed OOM
    ]
    s = summarize(ok + oom, res)
    tw = s["twin"]
    assert s["runs"] == 4
    assert tw["throughput_mape_pct"] == pytest.approx((10 + 5 + 0 + 100) / 4)
    assert tw["oom_runs"] == 2 and tw["oom_predicted"] == 1 and tw["false_oom"] == 1
    want_agree = sum(bool(r.starved) == w for r, w in zip(ok, (False, True, False, False)))
    assert tw["starvation_agreement"] == want_agree
    assert s["worst"][0]["run_id"] == ok[3].run_id
    assert s["published"]["throughput_mape_pct"] > 0


def test_oom_runs_are_predicted_oom(runs):
    for r in [r for r in runs if r.is_oom][:3]:
        assert simulate_ref_run(r).oom


def test_light_runs_match_real_throughput(runs):
    for r in _light(runs):
        res = simulate_ref_run(r)
        assert not res.oom
        assert res.arrivals == r.twin_arrivals  # conditioned on the real arrival count
        assert res.total_throughput == pytest.approx(r.total_throughput, rel=0.08)
        assert (res.total_throughput < 0.9 * res.offered_tok_s) == bool(r.starved)


def test_run_is_cached_and_deterministic(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPTPLACE_CACHE", str(tmp_path))
    ids = {r.run_id for r in _light(runs)}
    a = fidelity.run(json=True, workers=1, select=lambda r: r.run_id in ids)
    assert capsys.readouterr().out == ""  # the CLI prints the returned dict
    printed = json.loads(json.dumps(a))
    assert printed["runs"] == len(ids) and printed["twin"]["oom_runs"] == 0
    assert printed["length_adjustment"]["rho"] is None or -0.7 < printed["length_adjustment"]["rho"] < -0.2
    assert list((tmp_path / "fidelity").glob("*/*.json"))
    b = fidelity.run(json=True, workers=1, select=lambda r: r.run_id in ids)
    assert [x["twin_tok_s"] for x in a["rows"]] == [x["twin_tok_s"] for x in b["rows"]]


def test_process_pool_gives_the_in_process_figures(runs, tmp_path, monkeypatch):
    ids = {r.run_id for r in _light(runs)}
    monkeypatch.setenv("OPTPLACE_CACHE", str(tmp_path / "one"))
    a = fidelity.run(json=True, workers=1, select=lambda r: r.run_id in ids)
    monkeypatch.setenv("OPTPLACE_CACHE", str(tmp_path / "two"))  # a cold cache: the pool really simulates
    b = fidelity.run(json=True, workers=2, select=lambda r: r.run_id in ids)
    assert len(list((tmp_path / "two" / "fidelity").glob("*/*.json"))) == len(ids)
    key = lambda rows: sorted((x["run_id"], x["twin_tok_s"], x["twin_itl_ms"]) for x in rows)  # noqa: E731
    assert key(a["rows"]) == key(b["rows"])
