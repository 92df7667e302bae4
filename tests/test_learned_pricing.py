"""Column pricing on the learned models' MILP encoding (optplace.solver.learned_pricing), under the shipped
capacity and SLO surrogates: the MILP's chosen pattern is one the model accepts, with the model's own scores."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from optplace.solver import Mix, compile_problem
from optplace.solver.capacity import AnalyticCapacity, make_oracle
from optplace.solver.learned_pricing import LearnedPricer, _retarget_kingman, top_rates_sum
from optplace.solver.milp import _price, pricing_families, solve_milp
from optplace.solver.problem import classify
from optplace.specs import load_scenario_text
from helpers import REPO

SPEC = """
name: learned-pricing
model: llama-3.1-8b-instruct
gpu: h100-64gb
adapters:
  - {group: a, count: 150, rank: 8, total_rate_rps: 45.0, popularity: {kind: zipf, s: 0.9}}
  - {group: b, count: 90, rank: 16, total_rate_rps: 20.0, popularity: {kind: zipf, s: 0.9}}
solver: {strategy: milp, time_limit_s: 60}
seed: 2
"""


@pytest.fixture(scope="module")
def setting():
    pb = compile_problem(load_scenario_text(SPEC, base_dir=REPO), REPO)
    orc = make_oracle(pb, "auto")
    assert orc.name == "surrogate+slo"
    cpb = replace(pb, classes=classify(pb.adapters, 0.03))
    an = AnalyticCapacity(cpb, kappa=orc.analytic.kappa)
    return pb, cpb, orc, an


def _refused_guard_patterns(cpb, orc, pi, limit):
    """Families of the oracle's guard whose analytic pattern at duals ``pi`` the learned models refuse."""
    need = np.array([c.count for c in cpb.classes])
    lam = np.array([c.rate_rps for c in cpb.classes])
    out = []
    for f in pricing_families(cpb, orc.guard):
        _, a = _price(f, pi, lam, need)
        if a.sum() and not orc.evaluate(f.gtype, Mix.of_counts(cpb.classes, a), f.slots).feasible:
            out.append((f, a))
            if len(out) >= limit:
                break
    return out, need


def test_a_pattern_priced_on_the_encoding_is_accepted_with_the_models_own_scores(setting):
    """Where the analytic pricing's pattern is refused, the learned pricing returns the family's pattern
    the trees accept: at its optimum the MILP's raw scores (starved and throughput logits, the SLO
    classifier's) equal the models' own at that pattern, they satisfy the decision thresholds, and the
    oracle accepts it at the family's slots and within the family's analytic limits."""
    _, cpb, orc, an = setting
    lam = np.array([c.rate_rps for c in cpb.classes])
    pi = lam / lam.max()
    cases, need = _refused_guard_patterns(cpb, orc, pi, 2)
    assert cases, "no refused analytic pattern to price on this fleet"
    pricer = LearnedPricer(orc, cpb, an)
    sur, slo = orc.surrogates[0], orc.slo_models[0]
    for fam, a in cases:
        pat = pricer.price(fam, pi, need, a, 60.0)
        assert pat is not None and pat.counts and not pat.timed_out
        assert pat.agrees, (pat.raw_milp, pat.raw_model)
        model = dict(pat.raw_model)
        assert model == pytest.approx(pricer.model_raw(fam.gtype, pat.counts, fam.slots))
        assert model["starved"] < sur._logit_thr
        assert model["throughput"] > math.log(1.0 - cpb.constraints.max_throughput_loss)
        assert model["violates"] < math.log(slo.threshold / (1.0 - slo.threshold))
        counts = np.asarray(pat.counts)
        assert pat.accepted and orc.evaluate(fam.gtype, Mix.of_counts(cpb.classes, counts), fam.slots).feasible
        assert np.all(counts <= need) and not np.any(counts[~fam.allowed])
        assert float(fam.w1 @ counts) <= fam.c1 + 1e-9 and float(fam.w2 @ counts) <= fam.c2 + 1e-9
        assert pat.value == pytest.approx(float(pi @ counts))


def test_kingman_splits_become_the_same_splits_on_the_load(setting):
    """The SLO classifier's splits on ``rho_kingman`` (a monotone map of ``rho_fluid``) moved onto
    ``rho_fluid`` give the same score on every row, so the encoding needs no variable for it."""
    from optplace.surrogate.slo_model import MODEL_NAMES, slo_extra_many

    pb, _, orc, _ = setting
    slo = orc.slo_models[0]
    ens = slo.models["violates"]
    moved = _retarget_kingman(ens, pb.stats.arrival_cv)
    assert "rho_kingman" in [ens.feature_names[f] for t in ens.trees for f in t.feature.tolist()]
    assert "rho_kingman" not in [moved.feature_names[f] for t in moved.trees for f in t.feature.tolist()]
    rng = np.random.default_rng(0)
    X = slo._phys.augment_many(
        np.asarray(
            [
                orc._features(Mix.of(pb.adapters[:k]), 1.0).row(L)
                for k, L in [(5, 4), (40, 16), (120, 32), (200, 64), (240, 128)]
            ]
        )
    )
    X = np.repeat(X, 40, axis=0)
    X[:, MODEL_NAMES.index("rho_fluid")] = rng.uniform(0.0, 1.5, len(X))
    full = np.hstack([X, slo_extra_many(X)])
    assert np.array_equal(ens.raw(full), moved.raw(full))


def test_the_top_slots_sum_is_exact_at_any_counts():
    """``top_rates_sum`` equals the sum of the ``L`` largest rates of the counted adapters, whether the
    MILP pushes it up or down (both the upper forms and the picked lower one must hold), on random counts
    with tied rates and ``L`` from 1 to all but one adapter."""
    import pyomo.environ as pyo
    from pyomo.contrib.appsi.solvers import Highs

    rng = np.random.default_rng(3)
    for _ in range(12):
        lam = rng.choice([0.01, 0.05, 0.2, 0.7, 1.5, 3.0], size=int(rng.integers(3, 7)))
        u = rng.integers(1, 5, size=lam.size)
        counts = rng.integers(0, u + 1)
        if counts.sum() < 2:
            counts[0] = u[0] = 2
        rates = np.sort(np.repeat(lam, counts))[::-1]
        L = int(rng.integers(1, rates.size))
        for sense in (pyo.maximize, pyo.minimize):
            m = pyo.ConcreteModel()
            m.a = pyo.Var(range(lam.size), domain=pyo.Integers)
            for i, c in enumerate(counts.tolist()):
                m.a[i].fix(c)
            top = top_rates_sum(m, lam, u, L)
            m.obj = pyo.Objective(expr=top, sense=sense)
            opt = Highs()
            opt.config.stream_solver = False
            opt.solve(m)
            assert pyo.value(top) == pytest.approx(rates[:L].sum(), abs=1e-7)


def test_the_milp_prices_on_the_learned_model_and_its_plan_is_accepted(setting):
    """With a learned oracle the column generation prices the guard's families and, where the learned
    model refuses their pattern, the learned encoding; its columns reach the master on the model's own
    verdict (the log counts those whose held quantities settled at a fixed point, where the MILP's
    scores equal the model's: not every one does, their rate spread and octave means can alternate
    between two patterns), and every GPU of the plan is accepted."""
    pb, _, orc, _ = setting
    out = solve_milp(pb, orc, [1.0], 60.0, 0.01)
    line = next(x for x in out.log if x.startswith("learned pricing:"))
    solves, entered, agree = (int(v) for v in __import__("re").findall(r"(\d+) ", line)[:3])
    assert solves >= 1 and entered >= 1 and agree <= entered, line
    assert sorted(i for g in out.gpus for i in g.adapter_indices) == list(range(pb.n_adapters))
    for g in out.gpus:
        assert orc.evaluate(g.type_index, Mix.of(pb.adapters[i] for i in g.adapter_indices), g.max_loras).feasible
