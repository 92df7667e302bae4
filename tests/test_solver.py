"""Solver tests: strategies, golden MILP, bound ≤ objective, objectives, infeasibility, plan JSON, repair."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from optplace.specs import load_scenario_text
from optplace.solver import AnalyticCapacity, Estimate, Infeasible, Mix, compile_problem, get_objective, repair, solve
from optplace.solver.milp import Column, solve_master_pulp, solve_master_pyomo, solve_milp
from optplace.solver.greedy import greedy_improved, paper_order
from optplace.solver.problem import classify, AdapterItem
from optplace.solver.strategies import STRATEGIES, solve_split
from helpers import REPO


def scenario(adapters: str, extra: str = "", gpu: str = "gpu: h100-64gb") -> object:
    text = f"""
name: t
model: llama-3.1-8b-instruct
{gpu}
workload: {{duration_s: 600, arrivals: {{kind: poisson}}, lengths: {{kind: sharegpt}}}}
adapters:
{adapters}
seed: 3
{extra}
"""
    return load_scenario_text(text, base_dir=REPO)


MIXED = """  - {group: a, count: 40, rank: 8, total_rate_rps: 24.0, popularity: {kind: zipf, s: 0.8}}
  - {group: b, count: 30, rank: 16, rate_rps: 0.3}
  - {group: c, count: 10, rank: 32, rate_rps: 0.2}"""


@pytest.fixture(scope="module")
def mixed():
    pb = compile_problem(scenario(MIXED, "solver: {time_limit_s: 6}"), REPO)
    return pb, AnalyticCapacity(pb)


class LoadOracle:
    """Cheap deterministic test oracle: a GPU serves Σ rate ≤ capacity and at most 64 adapters' slots."""

    name = "test"

    def __init__(self, problem, capacity_rps: float = 10.0) -> None:
        self.problem = problem
        self.cap = capacity_rps

    def slot_cap(self, gtype, rank_max):
        return 64

    def evaluate(self, gtype, mix, max_loras):
        off = self.problem.offered_tok_s(mix.rate_sum)
        cap_tok = self.problem.offered_tok_s(self.cap)
        if max_loras > 64 or max_loras < min(mix.n, 1):
            return Estimate(False, max_loras, off, 0.0, math.inf, math.inf, "memory", "test", cap_tok)
        ok = mix.rate_sum <= self.cap + 1e-12 and mix.n <= max_loras
        return Estimate(
            ok, max_loras, off, min(off, cap_tok), 20.0 + mix.rate_sum, 100.0, "ok" if ok else "load", "test", cap_tok
        )

    def best_slots(self, gtype, mix, candidates=None):
        return self.evaluate(gtype, mix, max(1, min(mix.n, 64)))


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "milp"])
def test_every_strategy_covers_all_adapters_with_the_test_oracle(mixed, strategy):
    pb, _ = mixed
    orc = LoadOracle(pb, capacity_rps=12.0)
    rep, plan = solve_split(pb, orc, strategy)  # loraserve places the fragments of its own split
    placed = sorted(i for g in plan.gpus for i in g.adapter_indices)
    assert placed == list(range(rep.problem.n_adapters))
    assert {a.name for a in rep.problem.adapters} == {a.name for a in pb.adapters}
    assert all(g.feasible for g in plan.gpus)
    total = sum(a.rate_rps for a in pb.adapters)
    assert plan.gpus_used >= math.ceil(total / 12.0)
    assert plan.lower_bound <= plan.objective_value


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_with_the_analytic_oracle(mixed, strategy):
    pb0, an = mixed
    rep, plan = solve_split(pb0, an, strategy)
    pb = rep.problem
    assert sorted(i for g in plan.gpus for i in g.adapter_indices) == list(range(pb.n_adapters))
    for g in plan.gpus:
        e = an.evaluate(g.type_index, Mix.of(pb.adapters[i] for i in g.adapter_indices), g.max_loras)
        assert e.feasible, (strategy, g.gpu, e.reason)
        assert g.max_lora_rank == max(pb.adapters[i].rank for i in g.adapter_indices)
        assert g.max_cpu_loras == max(len(g.adapters), g.max_loras)
        assert g.max_loras <= an.slot_cap(g.type_index, g.max_lora_rank)  # never exceeds GPU memory
    assert 0 < plan.lower_bound <= plan.objective_value
    assert 0.0 <= plan.gap < 1.0


def test_paper_order_alternates_hot_and_cold_within_rank_groups_largest_rank_first():
    ads = [
        AdapterItem(i, f"a{i}", r, x) for i, (r, x) in enumerate([(8, 1.0), (8, 3.0), (8, 2.0), (16, 0.5), (16, 0.7)])
    ]
    order = paper_order(ads)
    assert [a.index for a in order] == [4, 3, 1, 0, 2]


def test_classes_bucket_rates_geometrically_with_conservative_representatives():
    ads = [AdapterItem(i, f"a{i}", 8, x) for i, x in enumerate([1.0, 1.02, 1.5, 0.0, 0.0])]
    cls = classify(ads, 0.05)
    assert sum(c.count for c in cls) == 5
    for c in cls:
        assert all(ads[i].rate_rps <= c.rate_rps for i in c.members)
    assert len(cls) == 3


def _golden_problem(fracs):
    """Adapters whose loads are given fractions of one GPU's 2-adapter capacity."""
    base = scenario("  - {name: x, rank: 8, rate_rps: 0.1}")
    pb = compile_problem(base, REPO)
    an = AnalyticCapacity(pb)
    lam2, _ = an.linear_limits(0, 8, 2)
    ads = "\n".join(f"  - {{name: a{i}, rank: 8, rate_rps: {f * lam2:.6f}}}" for i, f in enumerate(fracs))
    pb = compile_problem(scenario(ads), REPO)
    return pb, AnalyticCapacity(pb)


def test_golden_milp_finds_the_known_optimum():
    # 0.6 + 0.35 fits one GPU; 0.6 + 0.6 and 0.35 + 0.35 + 0.6 do not: the optimum is 2 GPUs.
    pb, an = _golden_problem([0.6, 0.6, 0.35, 0.35])
    plan = solve(pb, an, "milp")
    assert plan.gpus_used == 2
    assert sorted(
        sorted(round(pb.adapters[i].rate_rps / pb.adapters[0].rate_rps, 2) for i in g.adapter_indices)
        for g in plan.gpus
    ) == [[0.58, 1.0], [0.58, 1.0]]
    pb3, an3 = _golden_problem([0.6, 0.6, 0.6])
    assert solve(pb3, an3, "milp").gpus_used == 3


@pytest.mark.parametrize("backend", ["highs", "pulp"])
def test_golden_master_both_backends(backend):
    cols = [Column(0, 8, 2, (1, 1)), Column(0, 8, 2, (2, 0)), Column(0, 8, 2, (0, 2)), Column(0, 8, 1, (1, 0))]
    fn = solve_master_pyomo if backend == "highs" else solve_master_pulp
    res = fn(cols, [3, 2], [10], [1.0], {3: 3, 2: 1}, 10.0, 0.0)
    assert res.status == "optimal"
    assert res.objective == pytest.approx(3.0)  # 2×(1,1) + 1 more for the third class-0 adapter
    cover = [sum(cols[p].counts[c] * k for p, k in res.x.items()) for c in range(2)]
    assert cover[0] >= 3 and cover[1] >= 2


def test_milp_never_worse_than_its_warm_start_and_greedy(mixed):
    pb, an = mixed
    out = solve_milp(pb, an, [1.0], 6.0, 0.01)
    warm = greedy_improved(pb, an)
    assert len(out.gpus) <= len(warm) + 0  # the integer master only accepts solutions ≤ the warm start
    assert solve(pb, an, "milp").gpus_used <= solve(pb, an, "greedy-paper").gpus_used


def test_objectives_registry_and_scores():
    assert set(get_objective(n).name for n in ("min_gpus", "min_cost", "min_latency")) == {
        "min_gpus",
        "min_cost",
        "min_latency",
    }
    with pytest.raises(ValueError, match="min_gpus, min_cost, min_latency"):
        get_objective("fastest")
    g = SimpleNamespace(
        adapters=("a",),
        starved=False,
        oom=False,
        slo_violated=False,
        throughput_tok_s=100.0,
        itl_ms_mean=20.0,
        gpu_type="h100-64gb",
    )
    h = replace_ns(g, adapters=("b",), throughput_tok_s=300.0, itl_ms_mean=40.0)
    rep = SimpleNamespace(gpus=(g, h))
    plan = SimpleNamespace(gpus=(SimpleNamespace(gpu_type="h100-64gb", cost_per_hour=2.5),))
    assert get_objective("min_gpus").score(plan, rep) == 2
    assert get_objective("min_cost").score(plan, rep) == pytest.approx(5.0)
    assert get_objective("min_latency").score(plan, rep) == pytest.approx(35.0)
    bad = SimpleNamespace(gpus=(g, replace_ns(h, starved=True)))
    assert get_objective("min_gpus").score(plan, bad) == math.inf
    slow = SimpleNamespace(gpus=(g, replace_ns(h, slo_violated=True)))
    assert get_objective("min_gpus").score(plan, slow) == math.inf


def replace_ns(ns, **kw):
    d = dict(vars(ns))
    d.update(kw)
    return SimpleNamespace(**d)


def test_infeasible_hot_adapter_names_the_binding_rule():
    pb = compile_problem(
        scenario("  - {name: hot, rank: 8, rate_rps: 200.0}\n  - {name: ok, rank: 8, rate_rps: 0.1}"), REPO
    )
    with pytest.raises(Infeasible) as e:
        solve(pb, AnalyticCapacity(pb), "greedy")
    assert "hot" in str(e.value) and e.value.constraint == "max_throughput_loss"


def test_infeasible_pool_too_small():
    sc = scenario("  - {group: a, count: 400, rank: 8, rate_rps: 0.5}", gpu="pool: [{gpu: h100-64gb, count: 2}]")
    pb = compile_problem(sc, REPO)
    for s in ("milp", "greedy", "round-robin"):
        with pytest.raises(Infeasible) as e:
            solve(pb, AnalyticCapacity(pb), s)
        assert e.value.constraint == "pool" and "pool" in str(e.value)


def test_plan_json_keys(mixed):
    pb, an = mixed
    d = solve(pb, an, "greedy").to_json()
    for k in ("objective", "strategy", "gpus_used", "lower_bound", "gap", "solve_time_s", "placement"):
        assert k in d
    assert "validation" not in d
    for g in d["placement"]:
        assert {"gpu", "gpu_type", "max_loras", "max_cpu_loras", "max_lora_rank", "adapters"} <= set(g)


def test_min_cost_picks_the_cheaper_fleet():
    # The uncalibrated A100-80GB profile serves more than the H100-64GB one here (more KV memory);
    # price it 4× so one A100 beats two H100s on GPU count but not on cost.
    pool = "pool: [{gpu: h100-64gb, count: 6, cost_per_hour: 1.0}, {gpu: a100-80gb, count: 6, cost_per_hour: 4.0}]"
    probe = compile_problem(scenario("  - {group: a, count: 40, rank: 8, rate_rps: 0.1}", gpu=pool), REPO)
    an0 = AnalyticCapacity(probe)
    lam_h, lam_a = an0.linear_limits(0, 8, 40)[0], an0.linear_limits(1, 8, 40)[0]
    assert lam_a > 1.2 * lam_h
    rate = (0.55 * lam_a + 0.45 * lam_h) / 40  # one A100 or two H100s
    pb = compile_problem(scenario(f"  - {{group: a, count: 40, rank: 8, rate_rps: {rate:.6f}}}", gpu=pool), REPO)
    an = AnalyticCapacity(pb)
    by_gpus = solve(pb.with_objective("min_gpus"), an, "milp")
    by_cost = solve(pb.with_objective("min_cost"), an, "milp")
    assert by_gpus.gpus_used == 1 and by_gpus.gpus[0].gpu_type == "a100-80gb"
    assert by_cost.gpus_used == 2 and {g.gpu_type for g in by_cost.gpus} == {"h100-64gb"}
    assert by_cost.cost_per_hour < by_gpus.cost_per_hour
    assert by_cost.lower_bound <= by_cost.objective_value + 1e-9


def test_repair_raises_slots_then_sheds_load(mixed):
    pb, an = mixed
    plan = solve(pb, an, "greedy")
    g0 = plan.gpus[0]
    r1 = repair(pb, an, plan, starved=[0], losses={0: 0.2}, round_=1)
    assert r1.actions and "moved" in r1.actions[0]
    after = [g for g in r1.plan.gpus]
    assert sorted(i for g in after for i in g.adapter_indices) == list(range(pb.n_adapters))
    hot = max(g0.adapter_indices, key=lambda i: pb.adapters[i].rate_rps)
    assert not any(
        hot in g.adapter_indices
        and set(g.adapter_indices) <= set(g0.adapter_indices)
        and len(g.adapter_indices) == len(g0.adapter_indices)
        for g in after
    )


def test_bound_never_exceeds_objective_on_random_problems():
    import numpy as np

    rng = np.random.default_rng(42)
    for trial in range(2):
        n = int(rng.integers(20, 60))
        rates = rng.pareto(1.5, n) * 0.2 + 0.01
        ranks = rng.choice([8, 16, 32], n)
        ads = "\n".join(
            f"  - {{name: a{i}, rank: {int(r)}, rate_rps: {x:.5f}}}" for i, (r, x) in enumerate(zip(ranks, rates))
        )
        pb = compile_problem(scenario(ads), REPO)
        an = AnalyticCapacity(pb)
        for s in ("greedy", "greedy-paper", "milp"):
            plan = solve(pb, an, s)
            assert plan.lower_bound <= plan.objective_value, (trial, s)
            for g in plan.gpus:  # never beyond GPU memory
                assert g.max_loras <= an.slot_cap(g.type_index, g.max_lora_rank)


def test_pulp_backend_end_to_end(mixed):
    # solve_milp directly: solve() may stop before the master when the bound proves a greedy plan optimal.
    pb, an = mixed
    highs = solve_milp(pb, an, [1.0], 6.0, 0.01, "highs")
    cbc = solve_milp(pb, an, [1.0], 6.0, 0.01, "pulp")
    assert len(cbc.gpus) == len(highs.gpus) == solve(pb, an, "milp").gpus_used
    assert any("PuLP+CBC" in line for line in cbc.log)
    assert any("Pyomo+HiGHS" in line for line in highs.log)


def test_milp_never_trades_a_feasible_first_plan_for_a_mapping_the_oracle_rejects(mixed, monkeypatch):
    """The master's mapping (and its warm start's) can leave a GPU the oracle rejects: the MILP keeps
    the fast greedy's feasible plan then, even when the rejected one has fewer GPUs."""
    import optplace.solver.strategies as st
    from dataclasses import replace as _replace

    from optplace.solver.milp import MilpOutcome
    from optplace.solver.plan import assign_gpu

    pb, an = mixed
    greedy_plan = solve(pb, an, "greedy")

    def fake_milp(problem, oracle, *a, **k):
        everything = list(range(problem.n_adapters))
        bad = _replace(assign_gpu(problem, oracle, 0, everything, 0), feasible=False, reason="load")
        return MilpOutcome([bad], None, ["fake master"])

    monkeypatch.setattr(st, "solve_milp", fake_milp)
    plan = solve(pb, an, "milp", options=st.SolveOptions(stop_when_proven=False))
    assert all(g.feasible for g in plan.gpus)
    assert plan.gpus_used > 1 and plan.gpus_used >= greedy_plan.gpus_used - 1
    assert any("keeping the fast greedy's plan" in line for line in plan.log), plan.log


@pytest.mark.parametrize("parallel", [False, True])
def test_splitting_at_gpu_boundaries_stops_at_the_solve_deadline(mixed, monkeypatch, parallel):
    # loraserve's split runs after the strategy's solve, on the same deadline: at 10,000 adapters it once
    # ran on past the limit for 19 s; now its oracle questions raise once the deadline has passed, and
    # the plan found stands, saying what the clock cut
    import time

    from optplace.solver import loraserve
    from optplace.solver.problem import Deadline, TimeLimitReached

    pb, an = mixed
    dl = Deadline.begin(3.0)
    raised = []

    def slow_split(problem, oracle, *args, **kw):
        time.sleep(max(0.0, dl.remaining()) + 0.05)
        try:
            oracle.best_slots(0, Mix.of(problem.adapters[:1]))
        except TimeLimitReached:
            raised.append(True)
            raise
        raise AssertionError("the split's oracle answered past the deadline")

    monkeypatch.setattr(loraserve, "split", slow_split)
    rep, plan = solve_split(pb, an, "greedy", deadline=dl, parallel=parallel)
    assert raised == ([] if parallel else [True])  # ahead, the split (and what it raised) is the child's
    assert "splitting at GPU boundaries" in plan.cut_by_time_limit
    assert any("while splitting adapters at GPU boundaries" in line for line in plan.log)
    assert sorted(i for g in plan.gpus for i in g.adapter_indices) == list(range(rep.problem.n_adapters))


#: Three adapters of 60 % of a GPU each: whole, no two share a GPU (3 GPUs); split at GPU boundaries, 2.
SPLITS = """
name: split
model: llama-3.1-8b-instruct
gpu: h100-64gb
workload: {duration_s: 300}
slo: none
adapters:
  - {name: a0, rank: 16, rate_rps: 18.0}
  - {name: a1, rank: 16, rate_rps: 18.0}
  - {name: a2, rank: 16, rate_rps: 18.0}
"""


def _same_plans(a, b):
    assert a.plan.gpus == b.plan.gpus and a.split.replicas == b.split.replicas
    assert (a.plan.objective_value, a.plan.lower_bound) == (b.plan.objective_value, b.plan.lower_bound)
    assert a.split.log == b.split.log and (a.unsplit is None) == (b.unsplit is None)


@pytest.mark.parametrize("strategy", ["milp", "greedy"])
def test_the_split_path_solved_ahead_in_a_second_process_gives_the_same_plan(strategy, mixed):
    """``solve_split(parallel=True)`` (what ``solve`` does on two cores): the fragments' path runs in a
    forked process while this one solves the whole problem; the plan is the one of the sequential order,
    where splitting wins (3 GPUs whole, 2 split) and where it does not (the child is then stopped)."""
    import multiprocessing

    pb = compile_problem(load_scenario_text(SPLITS), REPO)
    an = AnalyticCapacity(pb)
    seq = solve_split(pb, an, strategy)
    assert seq.unsplit is not None and (seq.unsplit.gpus_used, seq.plan.gpus_used) == (3, 2)
    _same_plans(solve_split(pb, an, strategy, parallel=True), seq)
    before = set(multiprocessing.active_children())
    mpb, man = mixed
    seq = solve_split(mpb, man, strategy)
    assert seq.unsplit is None
    _same_plans(solve_split(mpb, man, strategy, parallel=True), seq)
    assert set(multiprocessing.active_children()) == before


def test_the_split_process_killed_mid_solve_leaves_pyomos_lock_free(monkeypatch):
    """Pyomo guards its solver-output capture with a ``multiprocessing.Lock``, shared with forked
    children. The split path's process is killed when its plan is not wanted: it must hold a lock of its
    own (``private_output_lock``), or a kill mid-solve leaves this process's next solve waiting 200 s and
    failing with "Deadlock starting capture_output" (seen once in the fuzz test)."""
    import functools
    import multiprocessing
    import time

    import pyomo.common.dependencies as deps

    from optplace.infra.executors import Ahead
    from optplace.solver import strategies
    from optplace.solver.problem import Deadline

    ctx = multiprocessing.get_context("fork")
    shared = ctx.Lock()  # what Pyomo makes of the lock once multiprocessing is imported
    monkeypatch.setattr(deps, "capture_output_lock", shared)
    holding = ctx.Event()

    def fill_mid_solve(problem, oracle, dl):  # the split path's first step, caught inside a solve
        deps.capture_output_lock.acquire()
        holding.set()
        time.sleep(60)

    monkeypatch.setattr(strategies, "_split_fill", fill_mid_solve)
    with Ahead(functools.partial(strategies._split_path, None, None, "milp", Deadline.begin(60.0))):
        assert holding.wait(30)
    # the child was killed holding its lock; this process's lock is free
    assert shared.acquire(timeout=2)
    shared.release()


def test_solve_plans_its_split_path_in_parallel_only_with_a_second_core_and_not_on_the_twin(mixed):
    """``plans_in_parallel``: the decision ``solve`` (and ``bench solver``) take before ``solve_split``."""
    from optplace.pipeline import plans_in_parallel
    from optplace.solver.capacity import TwinCapacity

    pb, an = mixed
    assert plans_in_parallel(an, 2) and not plans_in_parallel(an, 1)
    assert not plans_in_parallel(TwinCapacity(pb), 2)  # its twin runs already use every core
