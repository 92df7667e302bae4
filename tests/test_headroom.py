"""Headroom and robustness: the search for the extra load at which a GPU first fails (gallop, then
bisect), solve's headroom report and the figures it claims re-checked in the twin, the plan checked
on several draws of the window, the default load margin, and `optplace capacity` under the SLO with
the load at which each check breaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from optplace.cli import app
from optplace.infra.executors import ExecutorSpec
from optplace.specs import load_scenario
from optplace.specs.model import DEFAULT_HEADROOM
from optplace.twin.headroom import LoadProbes, _next_probe, failure_of
from optplace.twin.simulate import GpuConfig, PlanSimulator, check_seeds, worst_of
from test_slo import SLOTTED, STICKY
from test_solve_cli import SPEC

runner = CliRunner()
ONE = ExecutorSpec("local", workers=1)


def _write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _search(breaks_at: int | None, top: int = 20, anchor: int | None = None) -> tuple[int, int | None, list[int]]:
    """Run the probe sequence against a GPU that fails from grid index ``breaks_at`` on."""
    lo, hi, probes = 0, None, []
    while (k := _next_probe(lo, hi, top, anchor)) is not None:
        probes.append(k)
        if breaks_at is not None and k >= breaks_at:
            hi = k
        else:
            lo = k
    return lo, hi, probes


@pytest.mark.parametrize("breaks_at", [1, 2, 3, 5, 8, 13, 20, None])
def test_the_search_finds_the_first_failing_step(breaks_at):
    lo, hi, probes = _search(breaks_at)
    assert hi == breaks_at and lo == (20 if breaks_at is None else breaks_at - 1)
    assert len(set(probes)) == len(probes)  # no probe twice
    assert len(probes) <= 8  # five gallop steps at most, then three bisections of the last octave


def test_a_tight_gpu_settles_in_two_runs():
    assert _search(2)[2] == [1, 2]  # passes at +5 %, fails at +10 %: two twin runs
    assert _search(1)[2] == [1]


@pytest.mark.parametrize("anchor", [1, 2, 4, 7, 12, 20])
@pytest.mark.parametrize("breaks_at", [1, 2, 3, 5, 8, 13, 20, None])
def test_a_search_from_a_guess_finds_the_same_step(anchor, breaks_at):
    lo, hi, probes = _search(breaks_at, anchor=anchor)
    assert hi == breaks_at and lo == (20 if breaks_at is None else breaks_at - 1)
    assert probes[0] == anchor and len(set(probes)) == len(probes)
    # a guess d steps off costs about 2 log2(d) runs more than a right one, never a whole range's
    d = abs((21 if breaks_at is None else breaks_at) - anchor)
    assert len(probes) <= 2 + 2 * max(0, d).bit_length()


def test_a_right_guess_settles_in_two_runs():
    assert _search(5, anchor=5)[2] == [5, 4]  # fails where predicted, passes one step below
    assert _search(6, anchor=5)[2] == [5, 6]  # passes where predicted to fail, fails one step above
    assert _search(None, anchor=20)[2] == [20]  # passes at the cap


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    d = tmp_path_factory.mktemp("headroom")
    spec = _write(d, SPEC, "small.yaml")
    res = runner.invoke(app, ["solve", str(spec), "--json", "--reproducible", "--workers", "1"])
    assert res.exit_code == 0, res.output
    return spec, json.loads(res.stdout)


def test_solve_reports_each_gpus_headroom_and_the_twin_confirms_it(solved):
    spec, doc = solved
    room = doc["headroom"]
    assert room is not None and len(room["gpus"]) == doc["gpus_used"]
    assert room["holds_up_to"] == min(g["holds_up_to"] for g in room["gpus"])
    assert room["simulations"] >= doc["gpus_used"]
    sc = load_scenario(spec)
    names = tuple(a.name for a in sc.adapter_list())
    # the search's own workloads (Poisson: every multiplier thins one draw); except at the margin,
    # which solve checked on a draw of its own
    probes = LoadProbes(sc, spec.parent, ONE, room["seed"], room["cap"])
    margin = PlanSimulator(sc, spec.parent, ONE, load_scale=1 + DEFAULT_HEADROOM)
    assert probes.top is not None

    def at(share: float) -> PlanSimulator:
        return margin if share == pytest.approx(DEFAULT_HEADROOM) else probes.at(1 + share)

    broken = 0
    for g, p in zip(room["gpus"], doc["placement"], strict=True):
        cfg = GpuConfig(p["gpu_type"], p["max_loras"], p["max_cpu_loras"], tuple(p["adapters"]))
        assert set(cfg.adapters) <= set(names)
        held = at(g["holds_up_to"]).run([cfg])
        assert held.ok, (g, held.failed_gpus)
        if g["breaks_at"] is not None:
            broken += 1
            assert g["breaks_at"] == pytest.approx(g["holds_up_to"] + room["step"])
            fails = at(g["breaks_at"]).run([cfg])
            assert not fails.ok and (g["breaks_on"], g["adapter"]) == failure_of(fails.gpus[0])
    assert broken >= 1  # the plan is sized to its load: some GPU breaks below +100 %


def test_the_plan_is_checked_on_other_draws_at_the_default_margin(solved):
    spec, doc = solved
    sc = load_scenario(spec)
    assert doc["seeds_checked"] == list(check_seeds(sc)) and len(doc["seeds_checked"]) == 4
    assert len(set(doc["seeds_checked"])) == 4 and doc["seeds_checked"][0] == sc.seed
    assert doc["seed_failures"] == []
    assert sc.slo_headroom() == DEFAULT_HEADROOM
    assert doc["slo_headroom"]["headroom"] == DEFAULT_HEADROOM and doc["slo_headroom"]["ok"]
    assert doc["headroom"]["holds_up_to"] >= DEFAULT_HEADROOM  # planned for the margin


def test_probes_thin_one_draw_so_a_lower_load_is_a_subset_of_a_higher_one(tmp_path):
    sc = load_scenario(_write(tmp_path, SPEC))
    probes = LoadProbes(sc, tmp_path, ONE, seed=sc.seed, cap=1.0)
    low, high = probes.at(1.1), probes.at(1.4)
    assert low.load_scale == 1.1 and high.load_scale == 1.4
    wl_low, wl_high, top = low.workload, high.workload, probes.top.workload
    assert probes.top.simulated == 0  # drawn, never run
    assert len(wl_low) < len(wl_high) < len(top)
    assert set(wl_low.arrival_s.tolist()) <= set(wl_high.arrival_s.tolist()) <= set(top.arrival_s.tolist())
    assert len(wl_low) == pytest.approx(len(top) * 1.1 / 2.0, rel=0.05)
    # the same seed gives the same probes; a thinned simulator thins the one draw, not its own thinning
    again = LoadProbes(sc, tmp_path, ONE, seed=sc.seed, cap=1.0).at(1.1).workload
    assert np.array_equal(again.arrival_s, wl_low.arrival_s) and np.array_equal(again.adapter, wl_low.adapter)
    assert high.thinned(1.1)._source[0] is probes.top
    with pytest.raises(ValueError, match="load scale"):
        low.thinned(1.2)
    # where thinning is not exact each multiplier is its own draw
    bursty = load_scenario(_write(tmp_path, SPEC.replace("kind: poisson", "kind: gamma, cv: 2.0"), "g.yaml"))
    other = LoadProbes(bursty, tmp_path, ONE, seed=bursty.seed)
    assert other.top is None and other.at(1.1)._source is None


def test_workloads_drawn_ahead_are_the_ones_each_simulator_draws(tmp_path, monkeypatch):
    """``solve`` draws its checks' workloads in a second process while it plans (``WorkloadsAhead``):
    the same arrays as drawn in place; nothing forked on one worker or past the size cap; a child whose
    draws are not collected is stopped when the block ends."""
    import multiprocessing

    from optplace.twin import simulate

    sc = load_scenario(_write(tmp_path, SPEC))
    two = ExecutorSpec("local", workers=2)

    def sims() -> list[PlanSimulator]:
        probes = LoadProbes(sc, tmp_path, two, sc.seed)
        return [PlanSimulator(sc, tmp_path, two, seed=s, load_scale=1.05) for s in check_seeds(sc)] + [probes.top]

    ahead, alone = sims(), sims()
    with simulate.WorkloadsAhead(ahead, two) as drawn:
        assert len(drawn.sims) == len(ahead)
        drawn.collect()
    for a, b in zip(ahead, alone, strict=True):
        assert a._workload is not None and b._workload is None
        for f in ("arrival_s", "adapter", "input_tokens", "output_tokens"):
            assert np.array_equal(getattr(a.workload, f), getattr(b.workload, f))
    assert simulate.WorkloadsAhead(sims(), ONE).sims == []  # one worker: no idle core to draw on
    monkeypatch.setattr(simulate, "AHEAD_MAX_REQUESTS", 100)
    assert simulate.WorkloadsAhead(sims(), two).sims == []
    monkeypatch.undo()
    before = set(multiprocessing.active_children())
    with simulate.WorkloadsAhead(sims(), two):
        pass  # e.g. the solve failed: nothing collected
    assert set(multiprocessing.active_children()) == before


def test_no_headroom_one_seed_and_no_margin(tmp_path):
    text = SPEC.replace("seed: 5", "seed: 5\nslo: {headroom: 0}").replace(
        "time_limit_s: 20}", "time_limit_s: 20, check_seeds: 0}"
    )
    spec = _write(tmp_path, text)
    assert load_scenario(spec).slo_headroom() == 0.0
    res = runner.invoke(app, ["solve", str(spec), "--json", "--reproducible", "--workers", "1", "--no-headroom"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["headroom"] is None and doc["seeds_checked"] == [5] and doc["slo_headroom"] is None
    table = runner.invoke(app, ["solve", str(spec), "--workers", "1", "--no-headroom"], env={"COLUMNS": "100"})
    assert "headroom:" not in table.stdout and "draws of the window" not in table.stdout


def test_slo_none_has_no_margin_and_one_draw_unless_asked(tmp_path):
    sc = load_scenario(_write(tmp_path, SPEC + "slo: none\n"))
    assert sc.slo_headroom() == 0.0 and check_seeds(sc) == (5,)  # the study's rule, judged on one draw
    asked = SPEC.replace("time_limit_s: 20}", "time_limit_s: 20, check_seeds: 2}") + "slo: none\n"
    assert len(check_seeds(load_scenario(_write(tmp_path, asked, "two.yaml")))) == 3


def test_a_gpu_that_fails_on_another_draw_fails_the_plan(tmp_path):
    sticky, slotted = (
        load_scenario(_write(tmp_path, STICKY, "a.yaml")),
        load_scenario(_write(tmp_path, SLOTTED, "b.yaml")),
    )
    names = tuple(a.name for a in sticky.adapter_list())
    good = PlanSimulator(slotted, tmp_path, ONE).run([GpuConfig("h100-64gb", 5, 5, names)])
    bad = PlanSimulator(sticky, tmp_path, ONE).run([GpuConfig("h100-64gb", 4, 5, names)])
    assert good.ok and not bad.ok
    merged = worst_of(good, bad)
    assert not merged.ok and merged.gpus[0] is bad.gpus[0] and merged.seed == good.seed
    assert worst_of(bad, good).gpus[0] is bad.gpus[0]  # a failure is never replaced by a pass


def test_capacity_under_the_slo_and_where_each_check_breaks(tmp_path):
    # A long warm-up: in a 4-minute window, requests still filling the GPU at a 24 s warm-up's end
    # would count as backlog growth.
    base = SPEC + "slo: {warmup_s: 60}\n"
    res = runner.invoke(app, ["capacity", str(_write(tmp_path, base)), "--json"])
    assert res.exit_code == 0, res.output
    slo = json.loads(res.stdout)
    rule = json.loads(
        runner.invoke(app, ["capacity", str(_write(tmp_path, SPEC + "slo: none\n", "r.yaml")), "--json"]).stdout
    )
    assert slo["judged_by"] == "slo" and rule["judged_by"] == "throughput rule"
    assert 1 <= slo["max_adapters"] <= rule["max_adapters"]  # the SLO is the stricter test
    checks = {b["check"]: b for b in slo["breaks"]}
    assert set(checks) == {"ttft_p99_ms", "tpot_p99_ms", "queue", "throughput"}
    assert [b["check"] for b in rule["breaks"]] == ["throughput"]
    for b in slo["breaks"]:
        assert b["breaks_at"] is None or 0 < b["breaks_at"] <= 1.0
        assert (b["offered_tok_s"] is None) == (b["breaks_at"] is None)
        if b["breaks_at"] is not None:
            assert b["offered_tok_s"] > slo["offered_tok_s"]
    # something breaks within +100 % load of the largest count that passes
    assert any(b["breaks_at"] is not None for b in slo["breaks"])
    text = runner.invoke(app, ["capacity", str(_write(tmp_path, base, "t.yaml"))]).stdout
    assert "within the SLO" in text and "breaks at +" in text
