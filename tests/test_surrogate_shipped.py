"""The surrogates shipped as package data: provenance, and their MILP encodings against the models."""

from __future__ import annotations

import math

import numpy as np
import pyomo.environ as pyo
import pytest

from optplace.specs import bundled_profiles
from optplace.surrogate.features import ALL_NAMES, BASE_NAMES, DERIVED_NAMES, FEATURE_NAMES, SCHEMA_VERSION
from optplace.surrogate.milp_encoding import GbtEncoding, class_rows, one_gpu_capacity, solve
from optplace.surrogate.evaluation import holdout_sweeps, load_holdout
from optplace.surrogate.runtime import load_shipped

PROFILES = ("llama-3.1-8b-instruct@h100-64gb", "qwen-2.5-7b-instruct@h100-64gb")


@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_model_provenance(profile: str) -> None:
    sur = load_shipped(profile)
    meta = sur.meta
    assert meta["feature_schema_version"] == SCHEMA_VERSION
    assert tuple(meta["feature_names"]) == BASE_NAMES + DERIVED_NAMES and meta["physics"]["profile"] == profile
    # the labels' definition travels with the models
    assert "twin seeds" in meta["split"]["label"] and "label" in meta["dataset"]
    ev = meta["dataset"]["provenance"]["evaluator"]
    assert ev["evaluator"] == "twin" and ev["profile"] == profile  # never synthetic data
    X, targets, _, _ = load_holdout(sur)
    assert X.shape[0] == meta["n_test"] > 50
    assert set(sur.models) == {"throughput", "itl", "ttft_p99", "starved"}


@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_holdout_is_the_union_of_its_sweeps(profile: str) -> None:
    # every shipped held-out row is tagged with its sweep; each sweep is a separate sweep seed with
    # the same number of twin seeds, and none is a training sweep
    sur = load_shipped(profile)
    split = sur.meta["split"]
    names, idx = holdout_sweeps(sur)
    assert len(names) >= 2 and names == tuple(h["name"] for h in split["holdouts"])
    assert len({h["seed"] for h in split["holdouts"]}) == len(names)
    assert {len(h["replicates"]) for h in split["holdouts"]} == {3}
    counts = np.bincount(idx, minlength=len(names))
    assert counts.sum() == sur.meta["n_test"] and all(0 < c <= h["n"] for c, h in zip(counts, split["holdouts"]))
    train_seeds = {
        pv.get("seed")
        for pv in [sur.meta["dataset"]["provenance"], *sur.meta["dataset"]["provenance"].get("merged_with", [])]
    }
    assert not train_seeds & {h["seed"] for h in split["holdouts"]}
    X, _, _, _ = load_holdout(sur)
    keys = [{r.tobytes() for r in X[idx == k]} for k in range(len(names))]
    # configurations drawn again by a later sweep (other twin seeds) are counted at ship time
    for j, h in enumerate(split["holdouts"]):
        assert sum(len(keys[i] & keys[j]) for i in range(j)) <= h["configurations_also_in_earlier_sweeps"]


@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_step_encoding_agrees_with_model(profile: str) -> None:
    sur = load_shipped(profile)
    prof = bundled_profiles()[profile]
    for rank, rate in ((8, 0.1), (32, 0.4)):
        cap = prof.max_startable_slots(rank)
        r = one_gpu_capacity(sur, rank, rate, cap, n_max=384)
        assert r.status == "optimal" and r.n_adapters >= 1
        row = class_rows([r.n_adapters], r.max_loras, rank, rate)[0].tolist()
        assert sur.models["throughput"].raw_row(row) == pytest.approx(r.throughput_raw, abs=1e-9)
        assert sur.models["starved"].raw_row(row) == pytest.approx(r.starved_raw, abs=1e-9)
        assert not sur.starved_row(row) and sur.throughput_row(row) >= 0.9 * row[FEATURE_NAMES.index("offered_tok_s")]


def test_shipped_gbt_one_gpu_refuses_derived_features() -> None:
    # the shipped models split on profile-physics features, nonlinear in (n, max_loras): the one-GPU
    # problem uses the step encoding (exact per slot count); the tree encoding still holds for fixed
    # rows (next test) and for schema-only models (tests/test_surrogate_milp.py)
    sur = load_shipped(PROFILES[0])
    cap = bundled_profiles()[PROFILES[0]].max_startable_slots(16)
    with pytest.raises(ValueError, match="encoding='step'"):
        one_gpu_capacity(sur, 16, 0.2, cap, n_max=64, encoding="gbt", time_limit_s=300)


def test_shipped_gbt_fixed_rows_reproduce_predict() -> None:
    sur = load_shipped(PROFILES[1])
    X, _, _, _ = load_holdout(sur)
    Xa = sur.augment(X)  # rows + derived features: what the trees index
    bounds = {n: (float(Xa[:, i].min()), float(Xa[:, i].max())) for i, n in enumerate(ALL_NAMES)}
    ens = sur.models["throughput"]
    for j in np.random.default_rng(0).choice(X.shape[0], 3, replace=False):
        m = pyo.ConcreteModel()
        enc = GbtEncoding(m, "g", {"t": ens}, bounds, fixed={n: float(v) for n, v in zip(ALL_NAMES, Xa[j])})
        m.obj = pyo.Objective(expr=enc.raw["t"])
        solve(m)
        assert pyo.value(enc.raw["t"]) == pytest.approx(ens.raw_row(X[j].tolist()), abs=1e-9)


def test_bench_recomputes_the_shipped_holdout_metrics() -> None:
    from optplace.bench.surrogate import run

    out = run(json=True, profiles=(PROFILES[0],), milp=False, sweep_sample=0)
    res = out["profiles"][PROFILES[0]]
    stored = load_shipped(PROFILES[0]).metrics
    h = res["holdout"]
    # the benchmark scores the shipped held-out rows again: it must find what training recorded
    for k in ("throughput_smape_pct", "starved_macro_f1", "itl_smape_pct"):
        assert h[k] == pytest.approx(stored[k], rel=1e-9), k
    lat = res["latency"]
    assert all(math.isfinite(v) and v > 0 for v in lat.values())
    assert lat["rows10k_ms_capacity"] > lat["row_us_capacity"] / 1000  # 10k rows cost more than one
    assert out["machine"]["cpus"] >= 1 and res["label"]
    assert res["real_dt_validation"]["n"] > 0


def test_under_the_default_slo_the_learned_models_decide_below_the_guard():
    """On random mixes (one slot per adapter, or half as many slots), the shipped surrogates + SLO models
    accept no load at the throughput guard's edge (GUARD), and the oracle's envelope (the bound's model)
    refuses none of the load they accept beyond the envelope sample's refinement (0.1 %, the bench's
    ``binds_on`` threshold): the envelope contains them without overruling them. The busy-slot rule the
    twin adds to it does overrule them, on some of the mixes with half as many slots as adapters."""
    from optplace.bench.surrogate import slo_envelope
    from optplace.solver.capacity import GUARD

    env = slo_envelope("llama-3.1-8b-instruct@h100-64gb", sizes=(1, 16, 128), mixes=4)
    assert env["mixes"] >= 8 and env["binds_on"] == 0 and env["cut_min"] >= 1.0 - 1e-3
    assert 1 <= env["busy_binds_on"] <= env["mixes"] // 2 and env["busy_cut_min"] < 1.0
    assert 0.5 < env["median"] <= env["p90"] <= env["max"] < GUARD


def test_the_slo_verdicts_macro_f1_comes_with_its_bootstrap_interval() -> None:
    """``bench surrogate`` prints the held-out macro-F1 with a 95 % bootstrap interval over the rows:
    seeded (the same every run), around the score, a point where the verdicts are all right."""
    from optplace.bench.surrogate import bootstrap_interval
    from optplace.surrogate.evaluation import macro_f1

    rng = np.random.default_rng(5)
    y = rng.random(300) < 0.4
    pred = np.where(rng.random(300) < 0.9, y, ~y)
    lo, hi = bootstrap_interval(y, pred)
    assert (lo, hi) == bootstrap_interval(y, pred)
    assert lo < macro_f1(y, pred) < hi and hi - lo < 0.15
    assert bootstrap_interval(y, y) == (1.0, 1.0)
    wide = bootstrap_interval(y[:30], pred[:30])
    assert wide[1] - wide[0] > hi - lo  # fewer rows, a wider interval
