"""One registry per concept: names defined once, checked everywhere, plug-ins in one file each.

The toy test registers an objective and an arrival model from one file each (``tests/plugins``) and
solves a spec that names them, end to end (solver, twin validation).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from optplace.cli import app
from optplace.infra.registry import ARRIVALS, EXECUTORS, LENGTHS, OBJECTIVES, STRATEGIES, Registry, UnknownName
from optplace.specs import SpecError, load_scenario_text

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()

SPEC = """\
name: reg
model: llama-3.1-8b-instruct
gpu: h100-64gb
workload:
  duration_s: 300
  arrivals: {arrivals}
  lengths: {{kind: sharegpt}}
adapters:
  - {{group: a, count: 12, rank: 8, rate_rps: 1.0}}
  - {{group: b, count: 8, rank: 16, rate_rps: 0.6}}
objective: {objective}
solver: {{time_limit_s: 30}}
seed: 3
"""


def spec(arrivals: str = "{kind: poisson}", objective: str = "min_gpus") -> str:
    return SPEC.format(arrivals=arrivals, objective=objective)


@pytest.fixture
def toys():
    """The toy plug-ins, imported (which registers them) and unregistered afterwards."""
    mods = [importlib.import_module(f"plugins.{m}") for m in ("toy_objective", "toy_arrivals")]
    yield mods
    OBJECTIVES.unregister("toy_gpus_and_slots")
    ARRIVALS.unregister("toy_batches")
    for m in ("plugins.toy_objective", "plugins.toy_arrivals"):
        sys.modules.pop(m, None)


# --- the registries ------------------------------------------------------------------------------


def test_builtin_names_load_on_first_lookup_in_their_listed_order():
    assert STRATEGIES.names() == (
        "milp",
        "greedy",
        "greedy-paper",
        "round-robin",
        "random",
        "first-fit-memory",
        "least-loaded",
        "rank-grouped",
        "loraserve",
    )
    assert OBJECTIVES.names()[:3] == ("min_gpus", "min_cost", "min_latency")
    assert ARRIVALS.names()[:4] == ("poisson", "gamma", "mmpp", "trace")
    assert LENGTHS.names()[:4] == ("fixed", "sharegpt", "lognormal", "trace")
    assert EXECUTORS.names() == ("local", "ray")
    # every arrival / length model's spec class declares the name it is registered under
    for reg in (ARRIVALS, LENGTHS):
        for name, model in reg.items():
            assert model.spec.model_fields["kind"].annotation.__args__ == (name,)


def test_unknown_name_lists_registered_ones_and_a_name_is_defined_once():
    with pytest.raises(UnknownName, match=r"unknown objective 'fastest' \(registered: min_gpus, min_cost"):
        OBJECTIVES.get("fastest")
    assert ["x"] not in STRATEGIES  # unhashable input is simply not a name
    reg: Registry[int] = Registry("thing", ())
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)


#: A registry the environment-variable plug-in below registers into.
THINGS: Registry[int] = Registry("thing", ())


def test_plugins_env_variable_loads_extra_modules(monkeypatch, tmp_path):
    (tmp_path / "envthing_plugin.py").write_text("import test_registry\ntest_registry.THINGS.register('envthing', 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OPTPLACE_PLUGINS", "envthing_plugin")
    assert THINGS.names() == ("envthing",)
    assert THINGS.get("envthing") == 1


# --- the spec, the CLI and the schema read the registries ----------------------------------------


@pytest.mark.parametrize(
    "text,line,path,names",
    [
        (spec(objective="fastest"), 11, "objective", "min_gpus, min_cost, min_latency"),
        (spec().replace("{time_limit_s: 30}", "{strategy: best}"), 12, "solver.strategy", "milp, greedy, greedy-paper"),
        (spec().replace("{time_limit_s: 30}", "{executor: slurm}"), 12, "solver.executor", "local, ray"),
        (spec(arrivals="{kind: uniform}"), 6, "workload.arrivals", "poisson, gamma, mmpp, trace"),
        (spec().replace("{kind: sharegpt}", "{kind: zipf}"), 7, "workload.lengths", "fixed, sharegpt, lognormal"),
    ],
    ids=["objective", "strategy", "executor", "arrivals", "lengths"],
)
def test_check_reports_an_unknown_name_on_one_line_with_the_registered_names(tmp_path, text, line, path, names):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    res = runner.invoke(app, ["check", str(f)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert f"s.yaml:{line}: {path}: unknown " in lines[0] and f"(registered: {names}" in lines[0], lines


def test_cli_strategy_options_check_against_the_same_registry():
    res = runner.invoke(app, ["solve", str(REPO / "scenarios" / "quickstart.yaml"), "--strategy", "best"])
    assert res.exit_code == 2
    assert "--strategy: unknown strategy 'best' (registered: milp, greedy" in res.stderr
    res = runner.invoke(app, ["bench", "solver", "--strategies", "milp,best"])
    assert res.exit_code == 2
    assert "--strategies: unknown strategy 'best' (registered: milp, greedy" in res.stderr


def test_schema_lists_the_registered_names(toys):
    res = runner.invoke(app, ["schema"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    text = json.dumps(doc)
    props = doc["properties"]
    assert props["objective"]["enum"] == list(OBJECTIVES.names())
    assert "toy_gpus_and_slots" in props["objective"]["enum"]
    assert '"toy_batches"' in text and '"mmpp"' in text and '"lognormal"' in text


def test_a_registered_spec_class_validates_its_own_fields_with_their_paths(toys):
    with pytest.raises(SpecError) as e:
        load_scenario_text(spec(arrivals="{kind: toy_batches, period_s: -1, extra: 2}"), base_dir=REPO)
    msgs = {i.path: i.message for i in e.value.issues}
    assert "workload.arrivals.period_s" in msgs and "workload.arrivals.extra" in msgs
    assert "period_s" in msgs["workload.arrivals.extra"]  # the unknown-key hint lists the toy's own keys


# --- the toy test: a new objective and a new arrival model, one file each ------------------------


def test_toy_objective_and_toy_arrival_model_solve_end_to_end(toys):
    from optplace.pipeline import solve_scenario
    from optplace.solver import compile_problem

    toy_obj, toy_arr = toys
    sc = load_scenario_text(
        spec(arrivals="{kind: toy_batches, period_s: 20}", objective="toy_gpus_and_slots"), base_dir=REPO
    )
    assert isinstance(sc.workload.arrivals, toy_arr.ToyBatchArrivals) and sc.workload.arrivals.period_s == 20.0
    # planning measured the toy generator's burstiness: 20 s batches at ~1 req/s, gap CV ≈ √20
    pb = compile_problem(sc, REPO)
    assert pb.stats.arrival_cv > 3.0 and pb.stats.burst_factor == 1.0
    poisson = compile_problem(load_scenario_text(spec(objective="toy_gpus_and_slots"), base_dir=REPO), REPO)
    assert poisson.stats.arrival_cv == 1.0
    before = toy_arr.ToyBatches.generated
    rep = solve_scenario(sc, REPO, validate=True, workers=1)
    assert toy_arr.ToyBatches.generated > before  # the twin validated with the toy's own arrivals
    plan = rep.plan
    used = [g for g in plan.gpus if g.adapters]
    assert plan.objective == "toy_gpus_and_slots"
    assert plan.objective_value == pytest.approx(len(used) + toy_obj.SLOT_WEIGHT * sum(g.max_loras for g in used))
    assert plan.objective_value != int(plan.objective_value)
    twin_used = [g for g in rep.validation.gpus if g.adapters]
    twin_slots = sum(g.max_loras for g in twin_used)
    assert rep.twin_objective == pytest.approx(len(twin_used) + toy_obj.SLOT_WEIGHT * twin_slots)
    # the burstiness reached the capacity model: it keeps more headroom for the batches than for Poisson
    from optplace.solver.capacity import AnalyticCapacity

    assert AnalyticCapacity(pb).rho < 0.9 * AnalyticCapacity(poisson).rho


def test_toy_strategy_from_one_file_is_named_by_the_spec():
    from optplace.solver import compile_problem, solve

    importlib.import_module("plugins.toy_strategy")
    try:
        sc = load_scenario_text(spec().replace("{time_limit_s: 30}", "{strategy: toy-fast-greedy}"), base_dir=REPO)
        plan = solve(compile_problem(sc, REPO))
        assert plan.strategy == "toy-fast-greedy" and plan.gpus_used >= 1
        assert "toy: the fast greedy's plan, unimproved" in plan.log
        assert plan.lower_bound <= plan.objective_value
    finally:
        STRATEGIES.unregister("toy-fast-greedy")
        sys.modules.pop("plugins.toy_strategy", None)


# --- planning statistics come from the twin's own generators -------------------------------------


def _bursty_trace(path: Path) -> Path:
    """A trace of 60 s bursts (10 s at 10× the calm rate), lengths 200 / 100 tokens."""
    rng = np.random.default_rng(0)
    t, now = [], 0.0
    while now < 1200.0:
        now += rng.exponential(1.0 / (20.0 if (now % 60.0) < 10.0 else 2.0))
        t.append(now)
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + "".join(f"{x:.4f},200,100\n" for x in t))
    return path


def test_planning_stats_use_closed_forms_or_measure_the_generated_workload(tmp_path):
    from optplace.solver import compile_problem

    _bursty_trace(tmp_path / "t.csv")
    base = spec().replace("duration_s: 300", "duration_s: 1200")
    cases = {
        "{kind: poisson}": (1.0, 1.0),
        "{kind: gamma, cv: 2.5}": (2.5, 1.0),
        "{kind: mmpp, burst_factor: 3.0}": (1.0, 3.0),
    }
    for arr, want in cases.items():
        pb = compile_problem(load_scenario_text(spec(arrivals=arr), base_dir=tmp_path), tmp_path)
        assert (pb.stats.arrival_cv, pb.stats.burst_factor) == want
    sc = load_scenario_text(
        base.replace("{kind: poisson}", "{kind: trace, path: t.csv}").replace(
            "{kind: sharegpt}", "{kind: trace, path: t.csv}"
        ),
        base_dir=tmp_path,
    )
    pb = compile_problem(sc, tmp_path)
    # measured on the replay the twin generates: one adapter's gaps are burstier than Poisson's
    from optplace.twin.workload import generate_workload

    wl = generate_workload(
        sc.workload.arrivals,
        sc.workload.lengths,
        [a.rate_rps for a in sc.adapter_list()],
        600.0,
        np.random.default_rng(sc.seed),
        base_dir=tmp_path,
    )
    assert pb.stats.arrival_cv == pytest.approx(wl.summary().adapter_arrival_cv)
    assert pb.stats.arrival_cv > 1.2 and pb.stats.burst_factor == 1.0
    assert (pb.stats.mean_input_tokens, pb.stats.mean_output_tokens) == (200.0, 100.0)


def test_bound_memo_is_per_problem_object_not_per_reusable_id():
    from dataclasses import replace

    from optplace.solver import compile_problem
    from optplace.solver.bound import lower_bound
    from optplace.solver.capacity import AnalyticCapacity
    from optplace.solver.problem import classify

    pb0 = compile_problem(load_scenario_text(spec(), base_dir=REPO), REPO)
    an = AnalyticCapacity(pb0)
    scaled = [tuple(replace(a, rate_rps=a.rate_rps * k) for a in pb0.adapters) for k in range(1, 9)]
    seen = []
    for ads in scaled:  # problems freed one after another: CPython hands their ids to the next ones
        pb = replace(pb0, adapters=ads, classes=classify(ads))
        seen.append((lower_bound(pb, an, integral=False), lower_bound(pb, AnalyticCapacity(pb), integral=False)))
        del pb
    assert all(a == pytest.approx(b) for a, b in seen), seen
    assert len({round(a, 9) for a, _ in seen}) == len(seen)


def test_a_one_file_plugin_works_from_the_command_line(tmp_path):
    """``OPTPLACE_PLUGINS`` names the plug-in modules; ``optplace check`` then accepts their names."""
    import os
    import subprocess

    f = tmp_path / "toy.yaml"
    f.write_text(spec(arrivals="{kind: toy_batches, period_s: 10}", objective="toy_gpus_and_slots"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)]),
        "OPTPLACE_PLUGINS": "plugins.toy_objective,plugins.toy_arrivals",
    }
    ok = subprocess.run(
        [sys.executable, "-m", "optplace.cli", "check", str(f)], env=env, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    env.pop("OPTPLACE_PLUGINS")
    bad = subprocess.run(
        [sys.executable, "-m", "optplace.cli", "check", str(f)], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert "unknown arrival model 'toy_batches'" in bad.stderr
    assert "unknown objective 'toy_gpus_and_slots'" in bad.stderr
