"""Schema-2 rows, profile-physics derived features, noisy-subset replicates, partial seed pooling, the
CV-chosen starvation threshold and the upgrade of schema-1 twin sweeps."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from optplace.surrogate.config import GpuCase
from optplace.surrogate.features import (
    BASE_NAMES,
    DERIVED_NAMES,
    FEATURE_INDEX,
    FEATURE_NAMES,
    HIST_COUNT_NAMES,
    HIST_LO,
    HIST_SUM_NAMES,
    feature_row,
    feature_row_from_parts,
)
from optplace.surrogate.runtime import load_surrogate
from optplace.surrogate.training import ROUNDS_CAP, THRESHOLD_GRID, cv_threshold, train
from optplace.surrogate.physics import WINDOW_S, physics_for
from optplace.surrogate.dataset import load_dataset, load_datasets, pool_replicates, read_rows
from optplace.surrogate.design import SweepDesign, noisy_row
from optplace.surrogate.execution import LocalExecutor, run_replicate, run_sweep
from optplace.surrogate.synthetic import SyntheticEvaluator
from optplace.surrogate.twin_eval import TwinEvaluator
from surrogate_helpers import noisy_synthetic_sweep

LLAMA = "llama-3.1-8b-instruct@h100-64gb"


def test_rate_histogram_in_the_row() -> None:
    rates = [0.3, 0.3, 0.5, 2.0**HIST_LO / 4, 600.0]
    row = feature_row_from_parts(rates, [8, 16, 16, 32, 8], 2, 200.0, 100.0)
    f = dict(zip(FEATURE_NAMES, row))
    assert row.shape == (len(FEATURE_NAMES),) and FEATURE_NAMES[: len(BASE_NAMES)] == BASE_NAMES
    b03 = int(math.floor(math.log2(0.3))) - HIST_LO
    assert f[HIST_COUNT_NAMES[b03]] == 2 and f[HIST_SUM_NAMES[b03]] == pytest.approx(0.6)
    assert f[HIST_COUNT_NAMES[0]] == 1 and f[HIST_COUNT_NAMES[-1]] == 1  # out-of-range rates clip to the ends
    counts = np.array([f[n] for n in HIST_COUNT_NAMES])
    sums = np.array([f[n] for n in HIST_SUM_NAMES])
    assert counts.sum() == len(rates) and sums.sum() == pytest.approx(sum(rates))


def test_derived_features_follow_the_physics() -> None:
    ph = physics_for(LLAMA)
    lam, T = ph.fluid(16.0, 4.0, 4.0, 223.0, 196.0)
    assert lam > 0 and T > 0
    # rho is the offered request rate over the fluid capacity: linear in the load
    r1 = feature_row_from_parts([0.1] * 8, [16] * 8, 4, 223.0, 196.0).tolist()
    r2 = feature_row_from_parts([0.2] * 8, [16] * 8, 4, 223.0, 196.0).tolist()
    d1, d2 = ph.derive_row(r1), ph.derive_row(r2)
    names = dict(zip(DERIVED_NAMES, range(len(DERIVED_NAMES))))
    assert d1[names["rho_fluid"]] == pytest.approx(0.8 / lam)
    assert d2[names["rho_fluid"]] == pytest.approx(2 * d1[names["rho_fluid"]])
    assert d1[names["active_per_slot"]] == pytest.approx(8 * -math.expm1(-0.1 * T) / 4)
    assert d1[names["active_frac"]] == pytest.approx(-math.expm1(-0.1 * T))
    # one hot adapter whose busy period (e^(rT) - 1)/r outlasts the window holds its slot for good
    hot = 2.0 * math.log(WINDOW_S) / T
    d3 = ph.derive_row(feature_row_from_parts([hot, 0.01, 0.01], [16] * 3, 2, 223.0, 196.0).tolist())
    assert d3[names["persistent_per_slot"]] == pytest.approx(0.5)
    assert d3[names["persistent_share"]] == pytest.approx(hot / (hot + 0.02))
    assert d1[names["persistent_per_slot"]] == 0.0
    # the vectorised path computes the same numbers
    X = np.array([r1, r2, feature_row_from_parts([hot, 0.01, 0.01], [16] * 3, 2, 223.0, 196.0).tolist()])
    assert np.allclose(ph.derive_many(X), np.array([d1, d2, d3]), rtol=1e-12, atol=0)
    assert ph.augment_many(X).shape == (3, len(FEATURE_NAMES) + len(DERIVED_NAMES))


def test_noisy_row_rule() -> None:
    assert noisy_row(0.3, 10, 2) and not noisy_row(0.3, 10, 10)  # saturated with fewer slots than adapters
    assert noisy_row(0.12, 4, 4) and noisy_row(0.05, 4, 4) and not noisy_row(0.17, 4, 4)  # near the 10 % rule
    assert not noisy_row(0.0, 100, 1)


DESIGN = SweepDesign(n_points=80, n_chains=8, chain_steps=4, max_adapters=256)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("phys")
    ev = noisy_synthetic_sweep(d, DESIGN, seed=5)
    run_replicate(ev, d / "a", d / "a_r1", salt=1, executor=LocalExecutor(1), progress=False)
    return d


def test_noisy_subset_replicate_and_partial_pooling(synth: Path) -> None:
    a, n1 = read_rows(synth / "a.csv"), read_rows(synth / "a_n1.csv")
    want = {
        i for i, r in a.items() if noisy_row(float(r["throughput_loss"]), float(r["n_adapters"]), float(r["max_loras"]))
    }
    assert set(n1) == want and 0 < len(want) < len(a)
    prov = json.loads((synth / "a_n1.json").read_text())
    assert prov["replicate_subset"]["name"] == "noisy" and prov["replicate_subset"]["rows"] == len(want)
    with pytest.raises(ValueError, match="cannot resume"):  # a full replicate may not resume a subset one
        run_replicate(SyntheticEvaluator(noise=0.05), synth / "a", synth / "a_n1", salt=1, progress=False)
    # all-rows pooling refuses a replicate that lacks rows; partial pooling averages what each row has
    with pytest.raises(ValueError, match="lacks"):
        pool_replicates(synth / "a", [synth / "a_n1"])
    p = pool_replicates(synth / "a", [synth / "a_n1"], partial=True)
    base = load_dataset(synth / "a")
    assert p.index.size == base.index.size
    two = np.isin(p.index, sorted(want))
    assert np.all(p.targets["n_seeds"][two] == 2) and np.all(p.targets["n_seeds"][~two] == 1)
    assert np.array_equal(p.targets["throughput_tok_s"][~two], base.targets["throughput_tok_s"][~two])
    y1 = np.array([float(n1[int(i)]["throughput_tok_s"]) for i in p.index[two]])
    assert np.allclose(p.targets["throughput_tok_s"][two], 0.5 * (base.targets["throughput_tok_s"][two] + y1))
    # load_datasets pools a listed replicate into its sweep and says how labels were formed
    m = load_datasets([synth / "a", synth / "a_n1"])
    assert np.array_equal(m.targets["throughput_tok_s"], p.targets["throughput_tok_s"])
    assert f"{int(two.sum())} of {base.index.size} rows have 2+ seeds" in m.provenance["label"]
    with pytest.raises(ValueError, match="without their source"):
        load_datasets([synth / "a_n1"])


def test_cv_threshold_is_at_most_half_and_recorded(synth: Path, tmp_path: Path) -> None:
    ds = load_dataset(synth / "a")
    X = ds.X[:, : len(BASE_NAMES)]
    y = ds.targets["starved"]
    t, info = cv_threshold(X, y, ds.group, seed=0)
    assert t in set(THRESHOLD_GRID.tolist()) and t <= 0.5
    assert info["macro_f1_at_threshold"] == pytest.approx(max(info["macro_f1"]), abs=1e-4)
    assert info["macro_f1_at_threshold"] >= info["macro_f1_at_0.5"] - 1e-12
    assert info["false_not_starved_rate_at_threshold"] <= info["false_not_starved_rate_at_0.5"]
    rep = train([synth / "a", synth / "a_n1"], tmp_path / "m", holdout=None)
    sur = load_surrogate(tmp_path / "m")
    assert sur.threshold == sur.meta["starved_threshold"] <= 0.5
    assert "2+ seeds" in sur.meta["dataset"]["label"] and sur.meta["physics"] is None  # synthetic: no profile
    assert rep.metrics["false_not_starved_rate"] >= 0


def test_rounds_cap_override_caps_trees_and_is_recorded(synth: Path, tmp_path: Path) -> None:
    train([synth / "a"], tmp_path / "d", holdout=None)
    train([synth / "a"], tmp_path / "c", holdout=None, rounds_cap={"starved": 21, "throughput": 22})
    d, c = load_surrogate(tmp_path / "d"), load_surrogate(tmp_path / "c")
    assert c.meta["models"]["starved"]["trees"] <= 21 and c.meta["models"]["throughput"]["trees"] <= 22
    assert c.meta["params"]["rounds_cap"] == {**ROUNDS_CAP, "starved": 21, "throughput": 22}
    assert d.meta["params"]["rounds_cap"] == ROUNDS_CAP
    # untouched models are trained exactly as without the override
    assert c.meta["models"]["itl"] == d.meta["models"]["itl"]
    assert (tmp_path / "c" / "itl.txt").read_text() == (tmp_path / "d" / "itl.txt").read_text()


def test_schema1_twin_sweep_is_upgraded_on_load(tmp_path: Path) -> None:
    # a tiny real-twin sweep (60 s windows), then rewritten as schema 1 (no histogram columns)
    design = SweepDesign(n_points=4, n_chains=1, chain_steps=2, max_adapters=12, duration_s=60.0)
    res = run_sweep(TwinEvaluator(LLAMA), tmp_path / "t", design, seed=3, executor=LocalExecutor(1), progress=False)
    v2 = load_dataset(tmp_path / "t")
    prov = json.loads(res.provenance_path.read_text())
    prov.update(feature_schema_version=1, feature_names=list(BASE_NAMES))
    (tmp_path / "old.json").write_text(json.dumps(prov))
    with res.csv_path.open() as fh, (tmp_path / "old.csv").open("w", newline="") as out:
        rd = csv.DictReader(fh)
        keep = [c for c in rd.fieldnames or [] if c not in set(HIST_COUNT_NAMES + HIST_SUM_NAMES)]
        w = csv.DictWriter(out, keep, extrasaction="ignore")
        w.writeheader()
        for r in rd:
            w.writerow(r)
    old = load_dataset(tmp_path / "old")
    assert old.provenance["upgraded_from_schema"] == 1 and old.feature_names == FEATURE_NAMES
    assert np.array_equal(old.X, v2.X)  # regenerated configurations give the same rows
    # stored schema-1 features that do not match the regenerated ones are refused
    rows = (tmp_path / "old.csv").read_text().splitlines()
    hdr = rows[0].split(",")
    j = hdr.index("rate_sum")
    cells = rows[1].split(",")
    cells[j] = repr(float(cells[j]) * 1.5)
    (tmp_path / "old.csv").write_text("\n".join([rows[0], ",".join(cells), *rows[2:]]) + "\n")
    with pytest.raises(ValueError, match="differ"):
        load_dataset(tmp_path / "old")


def test_physics_models_predict_the_same_row_by_row_and_vectorised() -> None:
    from optplace.surrogate.evaluation import load_holdout
    from optplace.surrogate.runtime import load_shipped

    sur = load_shipped(LLAMA)
    assert sur.physics is not None and set(DERIVED_NAMES) <= set(sur.feature_names)
    X, _, _, _ = load_holdout(sur)
    P = sur.predict_many(X)
    for j in range(0, X.shape[0], 7):
        p = sur.predict_row(X[j])
        assert p.throughput_tok_s == pytest.approx(P["throughput_tok_s"][j], rel=1e-9)
        assert p.starved == bool(P["starved"][j])
        thr, st = sur.capacity_row(X[j].tolist())
        assert thr == pytest.approx(p.throughput_tok_s, rel=1e-12) and st == p.starved
    # a configuration seen through feature_row gives the model's answer for its row
    cfg = GpuCase(ranks=(8, 16, 16), rates_rps=(0.2, 0.1, 0.05), max_loras=2)
    assert sur.predict(cfg) == sur.predict_row(feature_row(cfg))
    assert FEATURE_INDEX["rho_fluid"] == len(FEATURE_NAMES)
