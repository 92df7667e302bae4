"""SLOs: the spec's `slo:` section (defaults, `none`, per-adapter overrides), the twin's verdict per GPU
and per adapter (steady state, stable queue, an adapter served nothing), the exit codes of `simulate` /
`validate`, and `solve` repairing a plan until it meets the SLO."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from optplace.cli import app
from optplace.specs import Scenario, load_scenario
from optplace.specs.model import Slo
from optplace.twin.simulate import Latency, SloCheck, SloRule, SloVerdict, WindowLatency, judge_slo
from test_solve_compare import SPEC as COMPARE_SPEC

runner = CliRunner()

BASE = """\
name: slo
model: llama-3.1-8b-instruct
gpu: h100-64gb
workload: {duration_s: 300}
adapters:
  - {group: hot, count: 4, rank: 8, rate_rps: 3.0}
  - {name: cold, rank: 8, rate_rps: 0.1}
seed: 1
"""
# Four hot adapters always running hold the four slots: the cold adapter's requests never get one
# (sticky slots). The GPU delivers ~97 % of its load (not starved) with a TTFT p99 of ~70 ms.
STICKY = BASE + "placement:\n  - {max_loras: 4, adapters: all}\n"
# The same adapters with a slot each: every adapter's TTFT p99 is ~70 ms.
SLOTTED = BASE + "placement:\n  - {max_loras: 5, adapters: all}\n"


def _write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _simulate(tmp_path: Path, text: str, *extra: str):
    res = runner.invoke(app, ["simulate", str(_write(tmp_path, text)), "--json", "--workers", "1", *extra])
    return res.exit_code, json.loads(res.stdout)


# --- spec ---------------------------------------------------------------------------------------


def test_default_slo_when_the_spec_says_nothing(tmp_path):
    sc = load_scenario(_write(tmp_path, SLOTTED))
    assert isinstance(sc.slo, Slo) and sc.slo.scope == "adapter"
    assert sc.slo.bounds() == (("ttft_p99_ms", 2000.0), ("tpot_p99_ms", 200.0))
    assert sc.slo_warmup_s() == pytest.approx(30.0)  # 10 % of the 300 s window
    per = sc.adapter_slos()
    assert per is not None and len(per) == 5 and all(b.bounds() == sc.slo.bounds() for b in per)


def test_slo_none_and_its_round_trip_through_a_plan_file(tmp_path):
    sc = load_scenario(_write(tmp_path, SLOTTED + "slo: none\n"))
    assert sc.slo is None and sc.adapter_slos() is None
    dumped = sc.model_dump(mode="json", by_alias=True)
    assert dumped["slo"] == "none"
    assert Scenario.model_validate(dumped).slo is None
    # a given SLO survives the same round trip
    sc2 = load_scenario(_write(tmp_path, SLOTTED + "slo: {itl_p99_ms: 90, warmup_s: 60}\n", "t.yaml"))
    again = Scenario.model_validate(sc2.model_dump(mode="json", by_alias=True))
    assert again.slo == sc2.slo and again.slo_warmup_s() == 60.0


def test_given_bounds_keep_the_defaults_unless_nulled(tmp_path):
    sc = load_scenario(_write(tmp_path, SLOTTED + "slo: {itl_mean_ms: 40, tpot_p99_ms: null, scope: gpu}\n"))
    assert sc.slo is not None and sc.slo.scope == "gpu"
    assert sc.slo.bounds() == (("ttft_p99_ms", 2000.0), ("itl_mean_ms", 40.0))


def test_adapter_and_group_overrides_replace_only_the_bounds_they_name(tmp_path):
    text = BASE.replace("rate_rps: 3.0}", "rate_rps: 3.0, slo: {ttft_p99_ms: 500, itl_p99_ms: 80}}").replace(
        "rate_rps: 0.1}", "rate_rps: 0.1, slo: {tpot_p99_ms: null}}"
    )
    sc = load_scenario(_write(tmp_path, text))
    per = sc.adapter_slos()
    assert per is not None
    hot = (("ttft_p99_ms", 500.0), ("itl_p99_ms", 80.0), ("tpot_p99_ms", 200.0))
    assert [b.bounds() for b in per] == [hot] * 4 + [(("ttft_p99_ms", 2000.0),)]


# --- the twin's verdict -------------------------------------------------------------------------


def test_sticky_slots_starve_one_adapter_on_a_healthy_gpu(tmp_path):
    rc, doc = _simulate(tmp_path, STICKY)
    assert rc == 1
    (g,) = doc["gpus"]
    assert not g["starved"] and g["throughput_loss"] < 0.10  # the study's rule passes it
    assert g["latency"]["steady"]["ttft_ms_p99"] < 2000  # and so does the GPU's own latency
    assert doc["slo_gpus"] == [0] and not g["slo"]["ok"]
    assert g["slo"]["violating_adapters"] == ["cold"] and g["slo"]["served_nothing"]
    cold = next(a for a in g["per_adapter"] if a["name"] == "cold")
    assert cold["slo"]["served_nothing"] and cold["slo"]["arrived"] > 0 and not cold["slo"]["ok"]
    assert all(a["slo"]["ok"] for a in g["per_adapter"] if a["name"] != "cold")
    # judged per GPU the latency bounds hold, but an adapter served nothing still fails the SLO
    rc_gpu, doc_gpu = _simulate(tmp_path, STICKY + "slo: {scope: gpu}\n")
    assert rc_gpu == 1 and all(c["ok"] for c in doc_gpu["gpus"][0]["slo"]["checks"])
    assert doc_gpu["gpus"][0]["slo"]["served_nothing"]
    # the study's rule alone accepts the plan
    rc_none, doc_none = _simulate(tmp_path, STICKY + "slo: none\n")
    assert rc_none == 0 and doc_none["slo"] is None and doc_none["gpus"][0]["slo"] is None


def test_a_slot_each_meets_the_slo_and_the_report_shows_value_bound_verdict(tmp_path):
    rc, doc = _simulate(tmp_path, SLOTTED)
    assert rc == 0 and doc["slo_gpus"] == []
    assert doc["slo"]["scope"] == "adapter" and doc["slo"]["bounds"] == {"ttft_p99_ms": 2000.0, "tpot_p99_ms": 200.0}
    (g,) = doc["gpus"]
    assert g["slo"]["ok"] and g["slo"]["stable"] and g["slo"]["violating_adapters"] == []
    checks = {c["metric"]: c for c in g["slo"]["checks"]}
    assert set(checks) == {"ttft_p99_ms", "tpot_p99_ms"}
    for a in g["per_adapter"]:
        own = {c["metric"]: c for c in a["slo"]["checks"]}
        assert own["ttft_p99_ms"]["value"] == a["latency"]["steady"]["ttft_ms_p99"]
        assert own["tpot_p99_ms"]["value"] == a["latency"]["steady"]["tpot_ms_p99"]
        assert own["ttft_p99_ms"]["ok"] and own["ttft_p99_ms"]["bound"] == 2000.0
    # the GPU's check names the adapter furthest over (closest to) its bound
    worst = max(g["per_adapter"], key=lambda a: a["latency"]["steady"]["ttft_ms_p99"])
    assert checks["ttft_p99_ms"]["adapter"] == worst["name"]


def test_an_adapters_own_bound_fails_it_alone(tmp_path):
    text = SLOTTED.replace("rate_rps: 0.1}", "rate_rps: 0.1, slo: {ttft_p99_ms: 1}}")
    rc, doc = _simulate(tmp_path, text)
    assert rc == 1
    g = doc["gpus"][0]
    assert g["slo"]["violating_adapters"] == ["cold"]
    check = next(c for c in g["slo"]["checks"] if c["metric"] == "ttft_p99_ms")
    assert check["adapter"] == "cold" and check["bound"] == 1.0 and not check["ok"]


def test_warmup_s_sets_the_steady_state(tmp_path):
    _, doc = _simulate(tmp_path, SLOTTED + "slo: {warmup_s: 120}\n")
    g = doc["gpus"][0]
    assert g["latency"]["warmup_s"] == 120.0 and doc["slo"]["warmup_s"] == 120.0
    _, plain = _simulate(tmp_path, SLOTTED)
    assert plain["gpus"][0]["latency"]["warmup_s"] == 30.0
    assert g["slo"]["arrived"] < plain["gpus"][0]["slo"]["arrived"]  # fewer requests after 120 s than after 30 s


def _lat(completed: int, ttft_p99: float = 100.0) -> WindowLatency:
    lat = Latency(completed, 0.0, 50.0, 60.0, ttft_p99, 20.0, 30.0, 20.0, 40.0)
    return WindowLatency(10.0, lat, lat)


def test_backlog_growth_fails_the_stable_queue_without_any_latency_bound():
    rule = SloRule("adapter", 10.0, (), ((), ()))
    names = ["a", "b"]
    lats = [_lat(900), _lat(900)]
    # 1000 arrivals each: allowance 1 % + 5 = 15 requests
    ok_gpu, ok_ad = judge_slo(rule, names, _lat(1800), lats, np.array([1000, 1000]), np.array([990, 1000]))
    assert ok_gpu.ok and all(v.ok for v in ok_ad) and ok_gpu.backlog_growth == 10
    bad_gpu, bad_ad = judge_slo(rule, names, _lat(1800), lats, np.array([1000, 1000]), np.array([980, 1000]))
    assert not bad_ad[0].stable and bad_ad[0].backlog_growth == 20 and bad_ad[0].backlog_allowance == 15.0
    assert bad_ad[1].ok and not bad_gpu.ok and bad_gpu.violating_adapters == ("a",)
    assert bad_gpu.stable  # 20 over 2000 arrivals is within the GPU's own allowance (25)


def test_an_adapter_with_requests_and_no_completion_fails_in_either_scope():
    for scope in ("adapter", "gpu"):
        rule = SloRule(scope, 10.0, (("ttft_p99_ms", 2000.0),), ((("ttft_p99_ms", 2000.0),),) * 2)
        gpu, per = judge_slo(rule, ["a", "b"], _lat(500), [_lat(500), _lat(0)], np.array([500, 3]), np.array([500, 0]))
        assert per[1].served_nothing and not per[1].ok and not gpu.ok and gpu.served_nothing, scope
        # no request at all is not "served nothing"
        gpu, per = judge_slo(rule, ["a", "b"], _lat(500), [_lat(500), _lat(0)], np.array([500, 0]), np.array([500, 0]))
        assert gpu.ok and per[1].ok, scope


def test_gpu_scope_judges_the_gpus_requests_together():
    rule = SloRule("gpu", 10.0, (("ttft_p99_ms", 2000.0),), ((("ttft_p99_ms", 1.0),),) * 2)
    # one adapter over the (ignored) adapter bound, the GPU as a whole within the scenario's
    gpu, per = judge_slo(
        rule,
        ["a", "b"],
        _lat(1000, 150.0),
        [_lat(500, 100.0), _lat(500, 3000.0)],
        np.array([500, 500]),
        np.array([500, 500]),
    )
    assert gpu.ok and all(v.ok and v.checks == () for v in per)
    gpu, _ = judge_slo(
        rule, ["a", "b"], _lat(1000, 2500.0), [_lat(500), _lat(500)], np.array([500, 500]), np.array([500, 500])
    )
    assert not gpu.ok and gpu.checks[0].value == 2500.0 and gpu.checks[0].adapter is None


def test_the_worst_check_is_the_one_furthest_over_its_bound_and_a_missing_figure_is_worse():
    near = SloCheck("ttft_p99_ms", 1900.0, 2000.0, True)
    over = SloCheck("tpot_p99_ms", 300.0, 200.0, False)
    missing = SloCheck("itl_mean_ms", math.nan, 50.0, False)
    v = SloVerdict(False, (near, over), 100, 0, 6.0, True, False)
    assert v.worst is over and over.ratio == pytest.approx(1.5) and near.ratio == pytest.approx(0.95)
    assert replace(v, checks=(missing, near, over)).worst is missing and missing.ratio == math.inf
    assert replace(v, checks=()).worst is None


# --- commands -----------------------------------------------------------------------------------


def test_validate_exits_1_on_an_slo_miss_and_shows_it(tmp_path):
    sticky, slotted = _write(tmp_path, STICKY, "sticky.yaml"), _write(tmp_path, SLOTTED, "slotted.yaml")
    res = runner.invoke(app, ["validate", str(sticky), str(slotted), "--json", "--workers", "1"])
    assert res.exit_code == 1
    results = json.loads(res.stdout)["results"]
    assert [r["slo_gpus"] for r in results] == [[0], []]
    assert runner.invoke(app, ["validate", str(slotted), "--workers", "1"]).exit_code == 0
    table = runner.invoke(app, ["validate", str(sticky), "--workers", "1"], env={"COLUMNS": "80"}).stdout
    assert "miss SLO" in table and "fails" in table


def test_simulate_table_names_the_miss_within_80_columns(tmp_path):
    res = runner.invoke(app, ["simulate", str(_write(tmp_path, STICKY)), "--workers", "1"], env={"COLUMNS": "80"})
    assert res.exit_code == 1
    out = res.stdout
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "misses SLO:" in out and "serves" in out  # the verdict cell may wrap
    assert "GPU 0 misses the SLO" in out and "cold" in out and "1 miss the SLO" in out


def test_solve_repairs_until_the_slo_holds(tmp_path):
    """test_solve_compare's scenario: 2 GPUs by the throughput rule, whose busiest adapters' TTFT p99
    is over a 150 ms bound; the repair moves load until every adapter meets it."""
    with_slo = COMPARE_SPEC.replace("slo: none\n", "slo: {ttft_p99_ms: 150}\n")
    args = ["--json", "--reproducible", "--workers", "1"]
    res = runner.invoke(app, ["solve", str(_write(tmp_path, with_slo, "slo.yaml")), *args])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    rule = runner.invoke(app, ["solve", str(_write(tmp_path, COMPARE_SPEC, "rule.yaml")), *args])
    assert rule.exit_code == 0
    rule_doc = json.loads(rule.stdout)
    assert rule_doc["validation"]["slo"] is None and rule_doc["repairs"] == []
    assert any("misses SLO" in r for r in doc["repairs"]) and doc["repair_rounds"] >= 1
    assert doc["gpus_used"] > rule_doc["gpus_used"]
    v = doc["validation"]
    assert v["slo_gpus"] == [] and v["starved_gpus"] == [] and v["slo"]["scope"] == "adapter"
    for g in v["gpus"]:
        assert g["slo"]["ok"]
        for a in g["per_adapter"]:
            assert a["latency"]["steady"]["ttft_ms_p99"] <= 150.0 and a["latency"]["steady"]["tpot_ms_p99"] <= 200.0
    assert v["twin_objective"] == doc["gpus_used"]


def test_compare_rows_count_the_gpus_that_miss_the_slo(tmp_path):
    with_slo = COMPARE_SPEC.replace("slo: none\n", "slo: {ttft_p99_ms: 150}\n")
    res = runner.invoke(
        app, ["solve", str(_write(tmp_path, with_slo)), "--json", "--compare", "--reproducible", "--workers", "1"]
    )
    rows = json.loads(res.stdout)["comparison"]
    assert all(r["slo_gpus"] is not None for r in rows)
    missing = [r for r in rows if r["slo_gpus"]]
    assert missing, rows  # the strategies' plans as placed are sized by throughput
    assert all(r["twin_objective"] is None for r in missing)  # a plan that misses the SLO scores inf


# --- the repair of a GPU that misses the SLO ------------------------------------------------------


class _FewSlotsOracle:
    """A GPU serves Σ rate ≤ ``cap`` req/s at any slot count up to ``slots``; its best slot count is
    2 (as an oracle that trades slots for KV cache would pick): the sticky-slot case."""

    name = "few-slots"

    def __init__(self, problem, cap: float, slots: int) -> None:
        self.problem, self.cap, self.slots = problem, cap, slots

    def slot_cap(self, gtype, rank_max):
        return self.slots

    def evaluate(self, gtype, mix, max_loras):
        from optplace.solver import Estimate

        off = self.problem.offered_tok_s(mix.rate_sum)
        ok = mix.rate_sum <= self.cap + 1e-12 and 1 <= max_loras <= self.slots
        return Estimate(ok, max_loras, off, off if ok else 0.9 * off, 20.0, 100.0, "ok" if ok else "load", "test")

    def best_slots(self, gtype, mix, candidates=None):
        return self.evaluate(gtype, mix, max(1, min(mix.n, 2)))


def _toy_plan(rates: list[float], groups: list[list[int]], cap: float, slots: int):
    from helpers import REPO

    from optplace.solver import compile_problem
    from optplace.solver.plan import Plan, assign_gpu, renumber
    from optplace.specs import load_scenario_text

    ads = "\n".join(f"  - {{name: a{i}, rank: 8, rate_rps: {x}}}" for i, x in enumerate(rates))
    text = f"name: toy\nmodel: llama-3.1-8b-instruct\ngpu: h100-64gb\nadapters:\n{ads}\n"
    pb = compile_problem(load_scenario_text(text, base_dir=REPO), REPO)
    orc = _FewSlotsOracle(pb, cap, slots)
    gpus = renumber([assign_gpu(pb, orc, 0, idx, k) for k, idx in enumerate(groups)])
    return pb, orc, Plan("min_gpus", "milp", gpus, float(len(gpus)), 1.0, 0.0, orc.name)


def _placed(plan) -> list[int]:
    return sorted(a for g in plan.gpus for a in g.adapter_indices)


def test_repair_gives_every_adapter_a_slot_in_any_round():
    from optplace.solver import repair

    pb, orc, plan = _toy_plan([1.0] * 8, [[0, 1, 2, 3], [4, 5, 6, 7]], cap=10.0, slots=4)
    assert [g.max_loras for g in plan.gpus] == [2, 2]
    r = repair(pb, orc, plan, slo=[1], round_=3)
    assert r.actions == ("GPU 1: misses SLO → max_loras 2 → 4 (a slot per adapter)",)
    assert [g.max_loras for g in r.plan.gpus] == [2, 4]  # GPU 0 met the SLO: untouched
    # a starved GPU gets more slots in the first round only (the throughput rule's repair)
    again = repair(pb, orc, plan, starved=[1], losses={1: 0.2}, round_=3)
    assert "starved → moved 1 adapter" in again.actions[0] and "max_loras" not in again.actions[0]


def test_repair_moves_the_coldest_adapters_beyond_the_slot_cap():
    from optplace.solver import repair

    rates = [3.0, 2.0, 1.0, 0.5, 0.2, 0.1]
    pb, orc, plan = _toy_plan(rates, [[0, 1, 2, 3, 4, 5]], cap=10.0, slots=4)
    r = repair(pb, orc, plan, slo=[0], round_=0)
    assert r.actions[0].startswith("GPU 0: misses SLO → moved 2 coldest adapters (more than its 4 slots)")
    assert _placed(r.plan) == list(range(6))
    by_adapters = {frozenset(g.adapter_indices): g for g in r.plan.gpus}
    assert frozenset({0, 1, 2, 3}) in by_adapters and by_adapters[frozenset({0, 1, 2, 3})].max_loras == 4
    assert all(g.max_loras == len(g.adapter_indices) for g in r.plan.gpus)  # a slot each, receivers too


def test_repair_sheds_the_hottest_when_every_adapter_has_a_slot_and_fails_a_lone_adapter():
    from optplace.solver import Infeasible, repair

    pb, orc, plan = _toy_plan([1.0, 1.0], [[0, 1]], cap=10.0, slots=4)
    assert plan.gpus[0].max_loras == 2
    r = repair(pb, orc, plan, slo=[0], losses={0: 0.0}, round_=1)
    assert r.actions[0].startswith("GPU 0: misses SLO → moved 1 adapter ")
    assert r.plan.gpus_used == 2 and _placed(r.plan) == [0, 1]
    pb1, orc1, plan1 = _toy_plan([1.0], [[0]], cap=10.0, slots=4)
    with pytest.raises(Infeasible, match="misses the SLO even alone"):
        repair(pb1, orc1, plan1, slo=[0], round_=1)


def test_report_html_names_the_slo_miss(tmp_path):
    from optplace.app.report_html import _twin_verdict
    from optplace.twin.simulate import placement_of, simulate_plan

    sc = load_scenario(_write(tmp_path, STICKY))
    (g,) = simulate_plan(sc, placement_of(sc), tmp_path, workers=1).gpus
    assert _twin_verdict(g) == "misses SLO: serves none"
    sc_ok = load_scenario(_write(tmp_path, SLOTTED, "ok.yaml"))
    assert _twin_verdict(simulate_plan(sc_ok, placement_of(sc_ok), tmp_path, workers=1).gpus[0]) == "ok"


def test_check_states_the_slo_the_plans_will_be_judged_by(tmp_path):
    res = runner.invoke(app, ["check", str(_write(tmp_path, SLOTTED))])
    assert res.exit_code == 0 and "SLO: ttft99 ≤ 2.0s, tpot99 ≤ 200ms, stable queue, per adapter" in res.stdout
    none = runner.invoke(app, ["check", str(_write(tmp_path, SLOTTED + "slo: none\n", "n.yaml")), "--json"])
    assert json.loads(none.stdout)["specs"][0]["slo"] is None


def test_headroom_plans_for_more_load_and_reports_the_stated_rates(tmp_path):
    """40 adapters one GPU serves within the SLO (its headroom: +75 %); planned for 100 % more load, the
    repair adds a GPU, the plan is reported at the stated rates, and the scaled check's verdict is in
    the JSON."""
    spec = (
        "name: hq\nmodel: llama-3.1-8b-instruct\ngpu: h100-64gb\nworkload: {duration_s: 600}\n"
        "adapters:\n  - {group: a, count: 40, rank: 16, rate_rps: 0.4}\nseed: 3\n"
    )
    args = ["--json", "--reproducible", "--workers", "1"]
    at_load = spec + "slo: {headroom: 0}\n"
    plain = runner.invoke(app, ["solve", str(_write(tmp_path, at_load, "plain.yaml")), *args])
    more = runner.invoke(app, ["solve", str(_write(tmp_path, spec + "slo: {headroom: 1.0}\n", "more.yaml")), *args])
    assert plain.exit_code == 0 and more.exit_code == 0, more.output
    p, m = json.loads(plain.stdout), json.loads(more.stdout)
    assert p["slo_headroom"] is None and p["validation"]["slo"]["headroom"] == 0.0
    default = json.loads(runner.invoke(app, ["solve", str(_write(tmp_path, spec, "d.yaml")), *args]).stdout)
    assert default["slo_headroom"]["headroom"] == 0.05 and default["slo_headroom"]["ok"]
    assert m["gpus_used"] > p["gpus_used"]
    h = m["slo_headroom"]
    assert p["headroom"]["holds_up_to"] < 1.0  # the one GPU does not hold twice its load
    assert h["headroom"] == 1.0 and h["ok"] and h["slo_gpus"] == [] and h["starved_gpus"] == []
    # the reported validation is the stated load: its offered tokens are those of the plain plan's GPUs
    offered = lambda doc: sum(g["offered_tok_s"] for g in doc["validation"]["gpus"])  # noqa: E731
    assert offered(m) == pytest.approx(offered(p), rel=0.05)


def test_headroom_is_refused_where_it_cannot_act(tmp_path):
    trace = "workload: {duration_s: 300, arrivals: {kind: trace, path: t.csv, scale: 2.0}}\n"
    (tmp_path / "t.csv").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.5,100,20\n1.0,80,30\n")
    text = BASE.replace("workload: {duration_s: 300}\n", trace) + "slo: {headroom: 0.2}\n"
    res = runner.invoke(app, ["check", str(_write(tmp_path, text))])
    assert res.exit_code == 2 and "slo.headroom" in res.output and "fixed scale" in res.output, res.output
    res = runner.invoke(app, ["check", str(_write(tmp_path, BASE + "slo: {headroom: -0.1}\n", "neg.yaml"))])
    assert res.exit_code == 2 and "headroom" in res.output, res.output
