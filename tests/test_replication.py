"""Replicas of hot adapters: the placement with shares, its errors, the twin's thinning, the solver's split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from optplace.cli import app
from optplace.specs import load_scenario_text
from optplace.twin.simulate import GpuConfig, PlanSimulator, placement_of, route_slices, simulate_plan
from optplace.infra.executors import ExecutorSpec

runner = CliRunner()

HEAD = """\
name: rep
model: llama-3.1-8b-instruct
gpu: h100-64gb
workload: {duration_s: 300, arrivals: {kind: mmpp, burst_factor: 4.0, burst_fraction: 0.2, mean_burst_s: 15},
           lengths: {kind: sharegpt}}
adapters:
  - {name: hot, rank: 16, rate_rps: 6.0}
  - {name: cold-a, rank: 8, rate_rps: 0.3}
  - {name: cold-b, rank: 8, rate_rps: 0.3}
seed: 5
slo: {ttft_p99_ms: 10000}
"""

REPLICATED = (
    HEAD
    + """\
placement:
  - {max_loras: 2, adapters: [{name: hot, share: 0.5}, cold-a]}
  - {max_loras: 2, adapters: [cold-b, {name: hot, share: 0.5}]}
"""
)

WHOLE = (
    HEAD
    + """\
placement:
  - {max_loras: 2, adapters: [hot, cold-a]}
  - {max_loras: 1, adapters: [cold-b]}
"""
)


def _write(tmp_path: Path, text: str, name: str = "s.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --- the placement ----------------------------------------------------------------------------


def test_placement_with_replicas_loads_into_shares_and_slices():
    sc = load_scenario_text(REPLICATED)
    gpus = placement_of(sc)
    assert gpus[0].adapters == ("hot", "cold-a") and gpus[0].shares == (0.5, 1.0)
    assert gpus[1].adapters == ("cold-b", "hot") and gpus[1].shares == (1.0, 0.5)
    # consecutive slices of the routing draw, in GPU order; whole adapters take all of it
    assert gpus[0].slices() == ((0.0, 0.5), (0.0, 1.0))
    assert gpus[1].slices() == ((0.0, 1.0), (0.5, 1.0))
    # a placement without replicas is the configuration it always was
    assert placement_of(load_scenario_text(WHOLE))[0] == GpuConfig(None, 2, None, ("hot", "cold-a"))


@pytest.mark.parametrize("shares", [(0.7, 0.3), (0.5, 0.25, 0.25), (0.9, 0.1), (0.123, 0.456, 0.421)])
def test_each_replica_receives_its_share_of_the_requests_to_within_two(shares):
    from optplace.twin.simulate import route_values

    rng = np.random.default_rng(3)
    adapter = rng.integers(0, 4, size=5000)  # four adapters' requests interleaved
    u = route_values(adapter, 4, seed=11)
    assert u.shape == adapter.shape and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    edges = np.concatenate([[0.0], np.cumsum(shares)])
    for a in range(4):
        mine = u[adapter == a]
        for lo, hi in zip(edges, edges[1:]):
            got = int(((mine >= lo) & (mine < hi)).sum())
            assert abs(got - (hi - lo) * mine.size) <= 2, (a, lo, hi, got, mine.size)
        # and on every prefix (a window cut short): within three
        for n in (10, 37, 100, 333):
            pre = mine[:n]
            got = int(((pre >= edges[0]) & (pre < edges[1])).sum())
            assert abs(got - shares[0] * n) <= 3, (a, n, got)
    # the offsets are seeded: another seed routes other requests, the same seed the same ones
    assert not np.array_equal(route_values(adapter, 4, seed=12), u)
    assert np.array_equal(route_values(adapter, 4, seed=11), u)


def test_route_slices_normalises_rounded_shares_and_ends_at_one():
    plan = [GpuConfig(None, 1, None, ("h",), (0.333,)) for _ in range(3)]
    sliced = route_slices(plan)
    bounds = [g.slices()[0] for g in sliced]
    assert bounds[0][0] == 0.0 and bounds[-1][1] == 1.0
    assert all(math.isclose(a[1], b[0]) for a, b in zip(bounds, bounds[1:]))
    assert route_slices(sliced) == sliced  # idempotent


@pytest.mark.parametrize(
    ("placement", "where", "message"),
    [
        (
            "  - {max_loras: 2, adapters: [{name: hot, share: 0.5}, cold-a]}\n"
            "  - {max_loras: 2, adapters: [cold-b, {name: hot, share: 0.3}]}\n",
            ":14: placement[1].adapters[1].share:",
            "shares of adapter 'hot' sum to 0.8 over placement[0], placement[1]; they must sum to 1",
        ),
        (
            "  - {max_loras: 2, adapters: [{name: hot, share: 1.2}, cold-a]}\n"
            "  - {max_loras: 2, adapters: [cold-b, {name: hot, share: -0.2}]}\n",
            ":14: placement[1].adapters[1].share:",
            "a share must be > 0 (got -0.2)",
        ),
        (
            "  - {max_loras: 2, adapters: [{name: hot, share: 0}, cold-a]}\n  - {max_loras: 1, adapters: [cold-b]}\n",
            ":13: placement[0].adapters[0].share:",
            "a share must be > 0 (got 0)",
        ),
        (
            "  - {max_loras: 1, adapters: [{name: hot, share: 1.0}]}\n  - {max_loras: 1, adapters: [cold-b]}\n",
            ":12: placement:",
            "1 adapter(s) on no GPU: 'cold-a'",
        ),
        (
            "  - {max_loras: 2, adapters: [hot, cold-a]}\n"
            "  - {max_loras: 2, adapters: [cold-b, {name: hot, share: 0.5}]}\n",
            ":14: placement[1].adapters[1].share:",
            "shares of adapter 'hot' sum to 1.5",
        ),
    ],
    ids=["sum", "negative", "zero", "missing", "whole-plus-replica"],
)
def test_bad_shares_are_one_line_errors_exit_2(tmp_path, placement, where, message):
    spec = _write(tmp_path, HEAD + "placement:\n" + placement)
    for cmd in (["check", spec], ["simulate", spec, "--json"], ["validate", spec]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2, (cmd, res.output)
        lines = [line for line in res.stderr.strip().splitlines() if message in line]
        assert len(lines) == 1, (cmd, res.stderr)
        assert where in lines[0], lines[0]


def test_bad_share_in_a_plan_json_is_a_one_line_error(tmp_path):
    rep = _solved_plan_doc(tmp_path)
    rep["placement"][0]["adapters"] = [
        {"name": a, "share": 0.25} if isinstance(a, str) and a == "cold-a" else a
        for a in rep["placement"][0]["adapters"]
    ]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(rep))
    res = runner.invoke(app, ["validate", str(plan)])
    assert res.exit_code == 2, res.output
    bad = [line for line in res.stderr.splitlines() if "shares of adapter 'cold-a' sum to 0.25" in line]
    assert len(bad) == 1 and "placement.0.adapters" in bad[0], res.stderr


def _solved_plan_doc(tmp_path: Path) -> dict:
    """A plan document as `solve --json` writes it, for the WHOLE placement (no solve needed)."""
    sc = load_scenario_text(WHOLE)
    doc = {
        "scenario": sc.model_dump(mode="json", by_alias=True, exclude={"placement"}),
        "placement": [
            {"gpu": 0, "gpu_type": "h100-64gb", "max_loras": 2, "max_cpu_loras": 2, "adapters": ["hot", "cold-a"]},
            {"gpu": 1, "gpu_type": "h100-64gb", "max_loras": 1, "max_cpu_loras": 1, "adapters": ["cold-b"]},
        ],
        "spec_dir": str(tmp_path),
    }
    return doc


def test_validate_accepts_a_plan_json_with_replicas(tmp_path):
    doc = _solved_plan_doc(tmp_path)
    doc["placement"] = [
        {"gpu": 0, "max_loras": 2, "adapters": [{"name": "hot", "share": 0.5}, "cold-a"]},
        {"gpu": 1, "max_loras": 2, "adapters": ["cold-b", {"name": "hot", "share": 0.5}]},
    ]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(doc))
    res = runner.invoke(app, ["validate", str(plan), "--json"])
    assert res.exit_code in (0, 1), res.output
    spec = _write(tmp_path, REPLICATED, "r.yaml")
    res2 = runner.invoke(app, ["simulate", spec, "--json", "--reproducible"])
    assert res2.exit_code in (0, 1), res2.output
    # the plan file and the spec say the same thing: the same twin result per GPU
    sim = json.loads(res2.stdout)
    (val,) = json.loads(res.stdout)["results"]
    assert [g["throughput_tok_s"] for g in val["gpus"]] == [g["throughput_tok_s"] for g in sim["gpus"]]
    assert val["replicated_adapters"][0]["name"] == "hot"


# --- the twin ---------------------------------------------------------------------------------


def test_replicas_partition_the_adapters_requests_and_share_its_bursts(tmp_path):
    sc = load_scenario_text(REPLICATED)
    sim = PlanSimulator(sc, tmp_path, ExecutorSpec(workers=1))
    plan = placement_of(sc)
    jobs = [sim.job(gp, i) for i, gp in enumerate(plan)]
    hot = sim.index["hot"]
    whole = np.flatnonzero(np.asarray(sim.workload.adapter) == hot)
    parts = [
        np.asarray(j.workload.arrival_s)[np.asarray(j.workload.adapter) == j.adapters.index(_ad(sc, "hot"))]
        for j in jobs
    ]
    # every request of the adapter goes to exactly one replica
    assert sum(p.size for p in parts) == whole.size
    merged = np.sort(np.concatenate(parts))
    assert np.array_equal(merged, np.asarray(sim.workload.arrival_s)[whole])
    # half each to within two requests (a weighted round robin's split, not a binomial sample), and
    # interleaved: no long run of consecutive requests to one replica
    n = whole.size
    assert abs(parts[0].size - n / 2) <= 2, (parts[0].size, n)
    to_first = np.isin(np.asarray(sim.workload.arrival_s)[whole], parts[0])
    ends = np.flatnonzero(np.diff(to_first.astype(int)))  # last request of each run to one replica
    runs = np.diff(np.concatenate([[-1], ends, [to_first.size - 1]]))
    assert int(runs.max()) <= 3, runs
    # MMPP bursts reach both replicas at once: their per-10 s counts move together
    c0 = np.bincount((parts[0] // 10).astype(int), minlength=30)
    c1 = np.bincount((parts[1] // 10).astype(int), minlength=30)
    assert np.corrcoef(c0, c1)[0, 1] > 0.5
    # the whole adapters keep every request they had
    cold = sim.index["cold-a"]
    assert int((np.asarray(jobs[0].workload.adapter) == 1).sum()) == int(
        (np.asarray(sim.workload.adapter) == cold).sum()
    )


def _ad(sc, name):
    return next(a for a in sc.adapter_list() if a.name == name)


def test_simulate_reports_each_replica_and_the_adapter_across_them(tmp_path):
    sc = load_scenario_text(REPLICATED)
    rep = simulate_plan(sc, placement_of(sc), tmp_path, workers=1)
    doc = rep.to_json(reproducible=True)
    assert doc["gpus"][0]["shares"] == [0.5, 1.0] and doc["gpus"][1]["shares"] == [1.0, 0.5]
    (row,) = doc["replicated_adapters"]
    assert row["name"] == "hot" and [r["gpu"] for r in row["replicas"]] == [0, 1]
    per = [g["per_adapter"][[a["name"] for a in g["per_adapter"]].index("hot")] for g in doc["gpus"]]
    assert row["offered_tok_s"] == pytest.approx(sum(p["offered_tok_s"] for p in per), rel=1e-6)
    assert row["completed"] == sum(p["completed"] for p in per)
    assert row["ttft_ms_p99_max"] == max(r["ttft_ms_p99"] for r in row["replicas"])
    assert row["slo_ok"] == all(p["slo"]["ok"] for p in per)
    # across replicas the adapter is offered what it is offered whole
    whole = simulate_plan(sc, placement_of(load_scenario_text(WHOLE)), tmp_path, workers=1)
    hot_whole = next(a for a in whole.gpus[0].per_adapter if a.name == "hot")
    assert row["offered_tok_s"] == pytest.approx(hot_whole.offered_tok_s, rel=1e-9)
    # a plan without replicas has no such section and no shares
    wdoc = whole.to_json(reproducible=True)
    assert "replicated_adapters" not in wdoc and all("shares" not in g for g in wdoc["gpus"])
    spec = _write(tmp_path, REPLICATED)
    for cmd in ("simulate", "validate"):
        res = runner.invoke(app, [cmd, spec])
        assert "hot on 2 GPUs (0, 1; shares 50/50 %)" in res.stdout, (cmd, res.stdout)


def test_request_gpus_route_each_request_where_the_twin_simulates_it(tmp_path):
    """The routing a real replay follows (``request_gpus``) is the twin's: every GPU's job holds exactly
    the requests routed to its position, so twin and real compare each replica on the same requests."""
    sc = load_scenario_text(REPLICATED)
    sim = PlanSimulator(sc, tmp_path, ExecutorSpec(workers=1))
    plan = placement_of(sc)
    gpus = sim.request_gpus(plan)
    assert gpus.shape == (len(sim.workload),) and set(np.unique(gpus)) == {0, 1}
    arrival = np.asarray(sim.workload.arrival_s)
    for g, gp in enumerate(plan):
        job = sim.job(gp, g)
        assert np.array_equal(np.sort(arrival[gpus == g]), np.sort(np.asarray(job.workload.arrival_s)))
    # the hot adapter is split, the whole ones go where they are placed
    hot = np.asarray(sim.workload.adapter) == sim.index["hot"]
    assert 0 < int((gpus[hot] == 0).sum()) < int(hot.sum())
    assert set(gpus[np.asarray(sim.workload.adapter) == sim.index["cold-b"]]) == {1}
    # an adapter placed nowhere is routed nowhere
    assert set(sim.request_gpus(plan[:1])[np.asarray(sim.workload.adapter) == sim.index["cold-b"]]) == {-1}


def test_a_gpu_with_replicas_needs_its_slices(tmp_path):
    sc = load_scenario_text(REPLICATED)
    sim = PlanSimulator(sc, tmp_path, ExecutorSpec(workers=1))
    with pytest.raises(ValueError, match="route_slices"):
        sim.job(GpuConfig(None, 1, None, ("hot",), (0.5,)), 0)


# --- deploy -----------------------------------------------------------------------------------


def test_routes_carry_the_plans_shares():
    from optplace.deploy.artefacts import PlanError, build_deployment

    plan = {
        "model": "m",
        "adapters": [{"name": "hot", "rank": 16}, {"name": "c", "rank": 8}],
        "placement": [
            {"max_loras": 2, "adapters": [{"name": "hot", "share": 0.25}, "c"]},
            {"max_loras": 1, "adapters": [{"name": "hot", "share": 0.75}]},
        ],
    }
    dep = build_deployment(plan)
    assert [r.weight for r in dep.routes["hot"]] == [0.25, 0.75]
    assert [r.weight for r in dep.routes["c"]] == [1.0]
    # the router weighs the replicas as the plan does (nginx weights are integers: 25/75 -> 1:3)
    assert "upstream optplace_gpu0_1w3 {" in dep.nginx_conf
    assert f"server 127.0.0.1:{dep.servers[1].port} weight=3;" in dep.nginx_conf
    assert "optplace_gpu0_1w3;" in dep.nginx_conf.split("map $request_body")[1].split("}")[0]
    # and routes.json hands the weights to a load generator
    from optplace.vllm.loadgen import endpoints_from_routes

    e0, e1 = endpoints_from_routes(dep.routes_json())
    assert (e0.weight("hot"), e0.weight("c"), e1.weight("hot")) == (0.25, 1.0, 0.75)
    # equal replicas: plain round robin, no weights written
    even = {
        **plan,
        "placement": [
            {"max_loras": 2, "adapters": [{"name": "hot", "share": 0.5}, "c"]},
            {"max_loras": 1, "adapters": [{"name": "hot", "share": 0.5}]},
        ],
    }
    assert "weight=" not in build_deployment(even).nginx_conf
    bad = {**plan, "placement": [{"max_loras": 1, "adapters": [{"name": "hot", "share": "half"}, "c"]}]}
    with pytest.raises(PlanError, match="share must be a number > 0"):
        build_deployment(bad)


# --- the solver -------------------------------------------------------------------------------


def _hot_problem(rate: float):
    from optplace.solver.problem import GpuType, make_problem
    from optplace.specs import resolve_profile
    from optplace.twin.workload import WorkloadStats

    prof = resolve_profile("llama-3.1-8b-instruct", "h100-64gb")
    return make_problem(
        [("hot", 16, rate), ("c0", 8, 0.5), ("c1", 8, 0.5)],
        [GpuType(0, "h100-64gb", prof, 100, 1.0)],
        WorkloadStats(3600.0, 223.0, 196.0),
    )


def test_a_hot_adapter_is_split_into_the_fewest_equal_replicas_that_fit():
    from optplace.solver.capacity import AnalyticCapacity
    from optplace.solver.replicate import fits_one_gpu, replicate_hot

    p = _hot_problem(60.0)
    oracle = AnalyticCapacity(p)
    assert not fits_one_gpu(p, oracle, 16, 60.0)
    out = replicate_hot(p, oracle)
    reps = [a for a in out.problem.adapters if a.name == "hot"]
    k = len(reps)
    assert k >= 2 and all(a.share == pytest.approx(1 / k) and a.rate_rps == pytest.approx(60.0 / k) for a in reps)
    assert fits_one_gpu(p, oracle, 16, 60.0 / k) and not fits_one_gpu(p, oracle, 16, 60.0 / (k - 1))
    assert [a.index for a in out.problem.adapters] == list(range(len(out.problem.adapters)))
    assert out.replicas == (("hot", k),) and "into" in out.log[0]
    # an SLO judgement that refuses the oracle's count adds replicas until it accepts
    more = replicate_hot(p, oracle, fits=lambda a, j: j >= k + 2)
    assert sum(1 for a in more.problem.adapters if a.name == "hot") == k + 2
    # nothing is split when every adapter fits
    assert replicate_hot(_hot_problem(1.0), oracle).problem.adapters == _hot_problem(1.0).adapters


def test_replicated_plan_lists_replicas_with_shares_and_the_strategies_place_them():
    from optplace.solver.capacity import AnalyticCapacity
    from optplace.solver.plan import gpu_plans
    from optplace.solver.problem import Infeasible
    from optplace.solver.replicate import replicate_hot
    from optplace.solver.strategies import solve

    p = _hot_problem(60.0)
    oracle = AnalyticCapacity(p)
    with pytest.raises(Infeasible) as e:
        solve(p, oracle, "greedy")
    assert "nan" not in str(e.value) and "capacity ≈" in str(e.value)
    split = replicate_hot(p, oracle)
    k = len([a for a in split.problem.adapters if a.name == "hot"])
    for strategy in ("greedy", "milp"):
        plan = solve(split.problem, oracle, strategy)
        doc = plan.to_json()
        shares = [
            a["share"] for g in doc["placement"] for a in g["adapters"] if isinstance(a, dict) and a["name"] == "hot"
        ]
        assert math.fsum(shares) == pytest.approx(1.0) and len(shares) >= 2, (strategy, doc["placement"])
        assert plan.gpus_used >= len(shares)
        configs = gpu_plans(plan)
        assert configs[-1].slices()[-1][1] <= 1.0
        ends = sorted(hi for gp in configs for (n, (lo, hi)) in zip(gp.adapters, gp.slices()) if n == "hot")
        assert ends[-1] == 1.0
    assert k >= 2


def test_infeasible_message_has_a_capacity_from_a_surrogate_oracle():
    from optplace.solver.capacity import make_oracle
    from optplace.solver.greedy import single_adapter_infeasible

    p = _hot_problem(80.0)
    try:
        oracle = make_oracle(p, "surrogate")
    except (FileNotFoundError, ValueError) as e:  # pragma: no cover - the shipped models are package data
        pytest.skip(str(e))
    msg = str(single_adapter_infeasible(p, oracle, p.adapters[0]))
    assert "nan" not in msg and "capacity ≈" in msg, msg


# --- the bundled scenario ---------------------------------------------------------------------


@pytest.mark.slow
def test_hot_adapter_scenario_solves_with_replicas_that_meet_the_slo(tmp_path):
    """scenarios/hot-adapter.yaml: its support bot needs at least 3 GPUs under the default SLO; solve
    splits it, and the twin confirms the SLO per adapter and per replica, on every seed it checks."""
    from helpers import REPO

    res = runner.invoke(
        app,
        [
            "solve",
            str(REPO / "scenarios" / "hot-adapter.yaml"),
            "--json",
            "--reproducible",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    shares = [
        a["share"]
        for g in doc["placement"]
        for a in g["adapters"]
        if isinstance(a, dict) and a["name"] == "support-bot"
    ]
    assert len(shares) >= 3 and math.fsum(shares) == pytest.approx(1.0)
    assert any(
        line.startswith("replicated 'support-bot'") for line in (tmp_path / "o" / "solver.log").read_text().splitlines()
    )
    val = doc["validation"]
    assert not val["starved_gpus"] and not val["oom_gpus"] and not val["slo_gpus"]
    (bot,) = val["replicated_adapters"]
    assert bot["slo_ok"] is True and len(bot["replicas"]) == len(shares)
    assert all(r["slo_ok"] for r in bot["replicas"])
    assert all(a["slo"]["ok"] for g in val["gpus"] for a in g["per_adapter"])
    assert len(doc["seeds_checked"]) == 4 and doc["seed_failures"] == []
    # the plan JSON lists the spec's adapters once each, at their own rates (not the replicas)
    assert [a["name"] for a in doc["adapters"]].count("support-bot") == 1
    # the routes split the bot's requests by the plan's shares
    routes = json.loads((tmp_path / "o" / "deploy" / "routes.json").read_text())
    assert [r["weight"] for r in routes["adapters"]["support-bot"]] == pytest.approx(shares)
    # the plan file validates again to the same twin result
    again = runner.invoke(app, ["validate", str(tmp_path / "o" / "plan.json"), "--json", "--reproducible"])
    assert again.exit_code == 0, again.output
    (rep,) = json.loads(again.stdout)["results"]
    assert rep["replicated_adapters"][0]["completed"] == bot["completed"]
    html = (tmp_path / "o" / "report.html").read_text()
    assert "Replicated adapters" in html and html.count("support-bot") >= len(shares) + 1


def test_replicas_on_one_gpu_are_the_whole_adapter_there():
    from optplace.solver.capacity import AnalyticCapacity
    from optplace.solver.plan import assign_gpu
    from optplace.solver.replicate import replicate_hot

    p = _hot_problem(60.0)
    split = replicate_hot(p, AnalyticCapacity(p)).problem
    reps = [a.index for a in split.adapters if a.name == "hot"]
    g = assign_gpu(split, AnalyticCapacity(split), 0, reps + [len(split.adapters) - 1])
    assert g.entries() == (("hot", 1.0), ("c1", 1.0))
    assert g.config.shares == () and g.config.adapters == ("hot", "c1")
    assert g.to_json()["adapters"] == ["hot", "c1"]


def test_an_slo_no_replica_count_meets_is_infeasible_with_the_reason():
    from optplace.solver.capacity import AnalyticCapacity
    from optplace.solver.problem import Infeasible
    from optplace.solver.replicate import replicate_hot

    p = _hot_problem(60.0)
    with pytest.raises(Infeasible, match="missing the SLO at every count") as e:
        replicate_hot(p, AnalyticCapacity(p), fits=lambda a, k: False)
    assert e.value.constraint == "slo"


@pytest.mark.parametrize(
    ("entry", "where", "message"),
    [
        ("{name: hot, shar: 0.5}", "placement[0].adapters[0].shar:", "unknown key 'shar' (valid keys: name, share)"),
        ("{name: hot, share: half}", "placement[0].adapters[0].share:", "valid number (got 'half')"),
        ('"bad name"', "placement[0].adapters[0]:", "should match pattern"),
    ],
)
def test_a_malformed_adapter_entry_is_reported_as_what_it_looks_like(tmp_path, entry, where, message):
    # a mapping is a replica and a string a name: no error for the alternative it is not
    spec = _write(tmp_path, REPLICATED.replace("{name: hot, share: 0.5}, cold-a", f"{entry}, cold-a"))
    res = runner.invoke(app, ["check", spec])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert any(where in line and message in line for line in lines), res.stderr
    assert not any("Input should be 'all'" in line or "valid string" in line for line in lines), res.stderr
