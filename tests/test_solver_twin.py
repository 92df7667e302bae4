"""Solver with the real twin: the twin-backed oracle, twin-validated plans, min_latency vs min_gpus."""

from __future__ import annotations


from optplace.solver import TwinCapacity, compile_problem, gpu_plans, solve
from optplace.specs import load_scenario_text
from optplace.twin.simulate import simulate_plan
from helpers import REPO

SPEC = """
name: twin-small
model: llama-3.1-8b-instruct
gpu: h100-64gb
workload: {duration_s: 400, arrivals: {kind: poisson}, lengths: {kind: sharegpt}}
adapters:
  - {group: a, count: 32, rank: 8, rate_rps: 0.9}
  - {group: b, count: 12, rank: 16, rate_rps: 0.6}
seed: 11
"""


def test_twin_oracle_plan_passes_the_twin():
    sc = load_scenario_text(SPEC, base_dir=REPO)
    pb = compile_problem(sc, REPO)
    orc = TwinCapacity(pb)
    plan = solve(pb, orc, "greedy")
    assert plan.oracle == "twin"
    assert orc.twin_calls >= 1  # the boundary was decided by the twin
    rep = simulate_plan(sc, gpu_plans(plan), REPO, workers=1)
    assert rep.starved_gpus == () and rep.oom_gpus == ()
    total = sum(a.rate_rps for a in pb.adapters) * pb.stats.tokens_per_request
    assert plan.gpus_used >= 2 and total > 14000  # more load than one GPU serves (~12.5k tokens/s)


def test_min_latency_beats_min_gpus_in_the_twin_on_the_same_budget():
    sc = load_scenario_text(SPEC.replace("seed: 11", "seed: 11\nsolver: {max_gpus: 4}"), base_dir=REPO)
    pb = compile_problem(sc, REPO)
    orc = TwinCapacity(pb)
    packed = solve(pb, orc, "greedy")
    spread = solve(pb.with_objective("min_latency"), orc, "greedy")
    assert spread.gpus_used == 4 and packed.gpus_used < 4
    r_packed = simulate_plan(sc, gpu_plans(packed), REPO, workers=1)
    r_spread = simulate_plan(sc, gpu_plans(spread), REPO, workers=1)
    from optplace.solver import get_objective
    lat = get_objective("min_latency")
    assert lat.score(spread, r_spread) < lat.score(packed, r_packed)
