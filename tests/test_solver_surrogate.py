"""The surrogate-backed capacity oracle, with models trained on the synthetic evaluator (fast)."""

from __future__ import annotations


import pytest

from optplace.solver import Mix, SurrogateCapacity, compile_problem, solve
from optplace.specs import load_scenario_text
from optplace.surrogate.runtime import load_surrogate
from optplace.surrogate.training import train
from optplace.surrogate.design import SweepDesign
from optplace.surrogate.execution import LocalExecutor, run_sweep
from optplace.surrogate.synthetic import SyntheticEvaluator
from helpers import REPO


@pytest.fixture(scope="module")
def surrogate(tmp_path_factory):
    d = tmp_path_factory.mktemp("solver-surr")
    design = SweepDesign(n_points=400, n_chains=30, chain_steps=5, max_adapters=384)
    run_sweep(SyntheticEvaluator(), d / "ds", design, seed=3, executor=LocalExecutor(1), progress=False)
    train(d / "ds", d / "m", seed=0)
    return load_surrogate(d / "m")


SPEC = """
name: surr
model: llama-3.1-8b-instruct
gpu: h100-64gb
adapters:
  - {group: a, count: 120, rank: 8, rate_rps: 0.4}
  - {group: b, count: 60, rank: 16, rate_rps: 0.2}
seed: 1
solver: {time_limit_s: 6}
"""


def test_surrogate_oracle_answers_and_plans(surrogate):
    pb = compile_problem(load_scenario_text(SPEC, base_dir=REPO), REPO)
    orc = SurrogateCapacity(pb, [surrogate])
    light = Mix.of(pb.adapters[:4])
    heavy = Mix((8,) * 300, (5.0,) * 300)
    e_light = orc.best_slots(0, light)
    e_heavy = orc.best_slots(0, heavy)
    assert e_light.feasible and e_light.source == "surrogate"
    assert not e_heavy.feasible
    assert orc.evaluate(0, light, 10_000).reason == "memory"
    for s in ("greedy", "greedy-paper", "round-robin"):
        plan = solve(pb, orc, s)
        assert plan.oracle == "surrogate"
        assert sorted(i for g in plan.gpus for i in g.adapter_indices) == list(range(pb.n_adapters))
        for g in plan.gpus:
            assert orc.evaluate(g.type_index, Mix.of(pb.adapters[i] for i in g.adapter_indices), g.max_loras).feasible


def test_the_milps_configurations_are_ones_the_learned_model_accepts():
    """Under the shipped SLO surrogates the MILP offers its master only columns the learned model
    accepts and warm-starts on it, so every GPU it chooses is one that model accepts as configured
    (before, a mapped GPU was rejected on this scenario and the plan fell back)."""
    from optplace.solver.capacity import make_oracle
    from optplace.solver.milp import solve_milp

    sc = load_scenario_text((REPO / "scenarios" / "skewed-2000.yaml").read_text(), base_dir=REPO / "scenarios")
    pb = compile_problem(sc, REPO / "scenarios")
    orc = make_oracle(pb, "auto")
    assert orc.name == "surrogate+slo"
    out = solve_milp(pb, orc, [1.0], 60.0, 0.01)
    assert sorted(i for g in out.gpus for i in g.adapter_indices) == list(range(pb.n_adapters))
    for g in out.gpus:
        e = orc.evaluate(g.type_index, Mix.of(pb.adapters[i] for i in g.adapter_indices), g.max_loras)
        assert e.feasible, (g.gpu, e.reason)
    assert not any("rejected by the" in line for line in out.log), out.log
    assert any("refused by the surrogate+slo model" in line for line in out.log), out.log
