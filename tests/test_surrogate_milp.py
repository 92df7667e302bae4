"""MILP encodings of the surrogates, each checked against the model's own prediction as the oracle."""

from __future__ import annotations

import math

import numpy as np
import pyomo.environ as pyo
import pytest

from optplace.surrogate.features import FEATURE_NAMES, feature_row_from_parts
from optplace.surrogate.milp_encoding import (
    GbtEncoding,
    PwlEncoding,
    StepEncoding,
    class_rows,
    one_gpu_capacity,
    row_from_point,
    solve,
    step_table,
    tabulate,
)
from optplace.surrogate.runtime import Surrogate, load_surrogate
from optplace.surrogate.training import train
from optplace.surrogate.dataset import load_dataset
from optplace.surrogate.design import SweepDesign
from optplace.surrogate.execution import LocalExecutor, run_sweep
from optplace.surrogate.synthetic import SyntheticEvaluator


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Surrogate, np.ndarray]:
    d = tmp_path_factory.mktemp("milp")
    design = SweepDesign(n_points=400, n_chains=30, chain_steps=4, max_adapters=256)
    run_sweep(SyntheticEvaluator(), d / "ds", design, seed=21, executor=LocalExecutor(1), progress=False)
    train(d / "ds", d / "m", seed=0)
    return load_surrogate(d / "m"), load_dataset(d / "ds").X


def _bounds(X: np.ndarray) -> dict[str, tuple[float, float]]:
    return {n: (float(X[:, i].min()), float(X[:, i].max())) for i, n in enumerate(FEATURE_NAMES)}


# --- (a) exact tree encoding -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["throughput", "starved"])
def test_gbt_fixed_inputs_reproduce_predict(model: tuple[Surrogate, np.ndarray], key: str) -> None:
    sur, X = model
    ens = sur.models[key]
    rng = np.random.default_rng(4)
    rows = X[rng.choice(X.shape[0], 3, replace=False)].copy()
    # one row placed exactly on a split threshold: LightGBM sends x == t left, so must the MILP
    t0 = ens.trees[0]
    rows[0, t0.feature[0]] = t0.threshold[0]
    for row in rows:
        m = pyo.ConcreteModel()
        # inputs as linked expressions (x == expr) for some features, the others as free variables fixed below
        m.v = pyo.Var(bounds=(0, 1e7))
        m.v.fix(float(row[FEATURE_NAMES.index("offered_tok_s")]))
        enc = GbtEncoding(m, "g", {key: ens}, _bounds(np.vstack([X, rows])), inputs={"offered_tok_s": m.v})
        for name, xv in enc.x.items():
            if name != "offered_tok_s":
                xv.fix(float(row[FEATURE_NAMES.index(name)]))
        m.obj = pyo.Objective(expr=enc.raw[key])
        solve(m)
        assert pyo.value(enc.raw[key]) == pytest.approx(ens.raw_row(row.tolist()), abs=1e-9)


@pytest.mark.parametrize("sense", [pyo.maximize, pyo.minimize])
def test_gbt_optimum_maps_back_to_model_prediction(model: tuple[Surrogate, np.ndarray], sense: int) -> None:
    sur, X = model
    ens = sur.models["starved"]
    m = pyo.ConcreteModel()
    enc = GbtEncoding(m, "g", {"s": ens}, _bounds(X))
    m.obj = pyo.Objective(expr=enc.raw["s"], sense=sense)
    solve(m, time_limit_s=120)
    obj = pyo.value(m.obj)
    point = enc.representative_point(integer=("n_adapters", "max_loras"))
    row = row_from_point(point, X[0], FEATURE_NAMES)
    assert ens.raw_row(row) == pytest.approx(obj, abs=1e-9)
    # the reported point lies strictly inside the selected leaf region, not on a threshold
    for name, (lo, hi) in enc.leaf_box().items():
        assert lo <= point[name] <= hi
    # and it is an optimum: no data row beats it
    data = ens.raw(X)
    assert (obj >= data.max() - 1e-9) if sense == pyo.maximize else (obj <= data.min() + 1e-9)


def test_gbt_requires_bounds(model: tuple[Surrogate, np.ndarray]) -> None:
    sur, _ = model
    with pytest.raises(ValueError, match="bounds needed"):
        GbtEncoding(pyo.ConcreteModel(), "g", {"t": sur.models["throughput"]}, bounds={})


# --- (b) exact step slice and the 1-GPU problem ------------------------------------------------


def test_class_rows_match_feature_row(model: tuple[Surrogate, np.ndarray]) -> None:
    ns = np.array([1, 5, 40, 300])
    got = class_rows(ns, 16, rank=16, rate_rps=0.3, mean_input_tokens=100.0, mean_output_tokens=80.0, arrival_cv=2.0)
    for n, r in zip(ns, got):
        ref = feature_row_from_parts([0.3] * n, [16] * n, 16, 100.0, 80.0, 2.0, 1.0)
        assert np.allclose(r, ref, rtol=1e-12, atol=1e-12)


def test_step_table_is_exact(model: tuple[Surrogate, np.ndarray]) -> None:
    sur, _ = model
    ens = sur.models["throughput"]
    tab = step_table({"t": ens.raw}, lambda ns, s: class_rows(ns, s, 8, 0.2), (1, 200), [4, 16, 64])
    for n in (1, 3, 4, 17, 63, 64, 150, 200):
        for s in (4, 16, 64):
            if n < s:
                continue
            ref = ens.raw_row(class_rows([n], s, 8, 0.2)[0].tolist())
            assert tab.lookup(n, s)["t"] == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("rank,rate,cap", [(8, 0.1, 384), (32, 0.4, 96), (16, 0.02, 224)])
def test_one_gpu_capacity_step_equals_brute_force(
    model: tuple[Surrogate, np.ndarray], rank: int, rate: float, cap: int
) -> None:
    sur, _ = model
    cands = [1, 2, 4, 8, 16, 32, 64, 96, 128, 256, 384]
    r = one_gpu_capacity(sur, rank, rate, cap, n_max=400, slot_candidates=[c for c in cands if c <= cap])
    assert r.status == "optimal"
    # oracle: the model's own prediction at the returned point satisfies the constraints ...
    row = class_rows([r.n_adapters], r.max_loras, rank, rate)[0].tolist()
    assert sur.models["throughput"].raw_row(row) == pytest.approx(r.throughput_raw, abs=1e-9)
    assert sur.models["starved"].raw_row(row) == pytest.approx(r.starved_raw, abs=1e-9)
    # ... and no larger n passes at any candidate slot count (brute force over the model)
    best = 0
    for s in (c for c in cands if c <= cap):
        ns = np.arange(s, 401)
        Xs = class_rows(ns, s, rank, rate)
        ok = (sur.models["starved"].raw(Xs) <= 0.0) & (sur.models["throughput"].raw(Xs) >= math.log(0.9))
        if ok.any():
            best = max(best, int(ns[ok].max()))
    assert r.n_adapters == best


def test_one_gpu_capacity_gbt_agrees_with_step(model: tuple[Surrogate, np.ndarray]) -> None:
    sur, _ = model
    cands = [1, 2, 4, 8, 16, 32, 64, 96]
    a = one_gpu_capacity(sur, 32, 0.4, 96, n_max=200, slot_candidates=cands, encoding="step")
    b = one_gpu_capacity(sur, 32, 0.4, 96, n_max=200, encoding="gbt", time_limit_s=300)
    assert b.status == "optimal"
    # gbt may use any slot count, so it serves at least as many adapters as the candidate grid
    assert b.n_adapters >= a.n_adapters
    row = class_rows([b.n_adapters], b.max_loras, 32, 0.4)[0].tolist()
    assert sur.models["throughput"].raw_row(row) == pytest.approx(b.throughput_raw, abs=1e-6)
    assert sur.models["starved"].raw_row(row) == pytest.approx(b.starved_raw, abs=1e-6)


def test_step_encoding_fixed_point(model: tuple[Surrogate, np.ndarray]) -> None:
    sur, _ = model
    ens = sur.models["starved"]
    tab = step_table({"s": ens.raw}, lambda ns, s: class_rows(ns, s, 16, 0.1), (1, 120), [8, 32])
    m = pyo.ConcreteModel()
    enc = StepEncoding(m, "st", tab)
    enc.n.fix(77)
    m.sfix = pyo.Constraint(expr=enc.second == 32)
    m.obj = pyo.Objective(expr=enc.out["s"])
    solve(m)
    assert pyo.value(enc.out["s"]) == pytest.approx(ens.raw_row(class_rows([77], 32, 16, 0.1)[0].tolist()), abs=1e-9)


# --- (c) PWL over a grid -----------------------------------------------------------------------


def test_pwl_1d_vertices_and_optimum(model: tuple[Surrogate, np.ndarray]) -> None:
    sur, _ = model
    f = sur.models["throughput"].raw_row
    grid = [1, 8, 32, 64, 128, 256]
    tab = tabulate(f, lambda n: class_rows([int(n)], min(int(n), 16), 8, 0.2)[0], [grid])
    for g, v in zip(grid, tab.values):
        m = pyo.ConcreteModel()
        enc = PwlEncoding(m, "p", tab)
        enc.x[0].fix(g)
        m.obj = pyo.Objective(expr=enc.out)
        solve(m)
        assert pyo.value(enc.out) == pytest.approx(v, abs=1e-9)
        assert v == pytest.approx(f(class_rows([g], min(g, 16), 8, 0.2)[0].tolist()), abs=1e-12)
    m = pyo.ConcreteModel()
    enc = PwlEncoding(m, "p", tab)
    m.obj = pyo.Objective(expr=enc.out, sense=pyo.maximize)
    solve(m)
    x = pyo.value(enc.x[0])
    assert pyo.value(enc.out) == pytest.approx(tab.interpolate(x), abs=1e-7)
    assert pyo.value(enc.out) == pytest.approx(tab.values.max(), abs=1e-7)


def test_pwl_2d_interpolates_on_triangles(model: tuple[Surrogate, np.ndarray]) -> None:
    sur, _ = model
    f = sur.models["throughput"].raw_row
    g1, g2 = [1, 16, 64, 200], [1, 8, 32]
    tab = tabulate(f, lambda n, s: class_rows([int(n)], int(min(s, n)), 16, 0.1)[0], [g1, g2])
    rng = np.random.default_rng(1)
    for x1, x2 in [(16, 8), (40.5, 20.25), *rng.uniform([1, 1], [200, 32], size=(3, 2)).tolist()]:
        m = pyo.ConcreteModel()
        enc = PwlEncoding(m, "p", tab)
        enc.x[0].fix(x1)
        enc.x[1].fix(x2)
        # the triangle choice is free inside a cell; both diagonals' triangles must agree on the value
        m.obj = pyo.Objective(expr=enc.out, sense=pyo.maximize)
        solve(m)
        hi = pyo.value(enc.out)
        m.obj.sense = pyo.minimize
        solve(m)
        lo = pyo.value(enc.out)
        assert lo == pytest.approx(tab.interpolate(x1, x2), abs=1e-7)
        assert hi == pytest.approx(lo, abs=1e-7)
    # at a vertex the value is the model's own prediction
    assert tab.values[1, 1] == pytest.approx(f(class_rows([16], 8, 16, 0.1)[0].tolist()), abs=1e-12)
