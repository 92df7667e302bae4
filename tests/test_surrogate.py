"""Surrogate infrastructure: feature schema, sweeps (determinism, resume, executors), tree compiler, training."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from optplace.surrogate.config import ArrivalParams, GpuCase, LengthParams
from optplace.surrogate.features import (
    BASE_NAMES,
    FEATURE_INDEX,
    FEATURE_NAMES,
    LINEAR_FEATURES,
    SCHEMA_VERSION,
    check_schema,
    feature_row,
)
from optplace.surrogate.evaluation import macro_f1, smape
from optplace.surrogate.runtime import load_surrogate
from optplace.surrogate.training import split_groups, train
from optplace.surrogate.dataset import COLUMNS, load_dataset, read_rows
from optplace.surrogate.design import SweepDesign, design_config
from optplace.surrogate.execution import LocalExecutor, run_sweep
from optplace.surrogate.synthetic import SyntheticEvaluator
from optplace.surrogate.trees import parse_lightgbm_text

SMALL = SweepDesign(n_points=120, n_chains=12, chain_steps=4, max_adapters=256)


def _rows_without_wall(path: Path) -> dict[int, dict[str, str]]:
    return {i: {k: v for k, v in r.items() if k != "wall_s"} for i, r in read_rows(path).items()}


# --- features ---------------------------------------------------------------------------------


def test_feature_row_values() -> None:
    cfg = GpuCase(
        ranks=(8, 16, 16, 32),
        rates_rps=(1.0, 2.0, 3.0, 4.0),
        max_loras=2,
        lengths=LengthParams(kind="fixed", mean_input_tokens=100, mean_output_tokens=50),
        arrivals=ArrivalParams(kind="gamma", cv=2.5),
    )
    r = feature_row(cfg)
    f = dict(zip(FEATURE_NAMES, r))
    assert r.shape == (len(FEATURE_NAMES),)
    assert f["n_adapters"] == 4 and f["max_loras"] == 2 and f["slots_frac"] == 0.5
    assert f["rate_sum"] == 10.0 and f["rate_max"] == 4.0
    assert f["rate_std"] == pytest.approx(np.std([1, 2, 3, 4]))
    assert f["rate_top_slots_frac"] == pytest.approx(0.7)  # two hottest: 4 + 3
    assert (f["n_rank8"], f["n_rank16"], f["n_rank32"], f["n_rank64"]) == (1, 2, 1, 0)
    assert f["rank_max"] == 32 and f["rank_mean"] == 18.0
    assert f["offered_tok_s"] == 1500.0 and f["decode_tok_s"] == 500.0
    assert f["arrival_cv"] == 2.5 and f["burst_factor"] == 1.0


def test_feature_schema_names_and_check() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert set(LINEAR_FEATURES) <= set(FEATURE_NAMES)
    check_schema(FEATURE_NAMES, SCHEMA_VERSION)
    with pytest.raises(ValueError, match="version"):
        check_schema(FEATURE_NAMES, SCHEMA_VERSION + 1)
    with pytest.raises(ValueError, match="unknown feature"):
        check_schema(("n_adapters", "bogus"), SCHEMA_VERSION)


def test_sharegpt_means_default() -> None:
    cfg = GpuCase(ranks=(8,), rates_rps=(1.0,), max_loras=1)
    assert cfg.offered_tok_s == pytest.approx(223.0 + 196.0)


def test_config_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="ranks has 2"):
        GpuCase(ranks=(8, 8), rates_rps=(1.0,), max_loras=1)


# --- sweep ------------------------------------------------------------------------------------


def test_design_respects_memory_cap_and_slots() -> None:
    ev = SyntheticEvaluator()
    u = np.random.default_rng(3).random((300, 12))
    for i, ui in enumerate(u):
        made = design_config(ui, SMALL, ev.slot_cap, seed=5, group=i, index=i)
        assert made is not None
        cfg, load, _ = made
        assert 1 <= cfg.max_loras <= min(cfg.n_adapters, ev.slot_cap(cfg.max_lora_rank))
        assert cfg.n_adapters <= SMALL.max_adapters
        assert SMALL.load_range[0] * 0.999 <= load <= SMALL.load_range[1] * 1.001
        assert cfg.offered_tok_s == pytest.approx(load * SMALL.ref_capacity_tok_s, rel=1e-9)


def test_sweep_deterministic_and_seed_sensitive(tmp_path: Path) -> None:
    ev = SyntheticEvaluator()
    a = run_sweep(ev, tmp_path / "a", SMALL, seed=11, executor=LocalExecutor(1), progress=False)
    b = run_sweep(ev, tmp_path / "b", SMALL, seed=11, executor=LocalExecutor(2), progress=False)
    c = run_sweep(ev, tmp_path / "c", SMALL, seed=12, executor=LocalExecutor(1), progress=False)
    assert a.rows_total == SMALL.n_rows
    ra, rb, rc = (_rows_without_wall(r.csv_path) for r in (a, b, c))
    assert ra == rb  # in-process and 2-process pool give identical rows
    assert ra != rc
    header = a.csv_path.read_text().splitlines()[0].split(",")
    assert tuple(header) == COLUMNS
    prov = json.loads(a.provenance_path.read_text())
    assert prov["seed"] == 11 and prov["feature_schema_version"] == SCHEMA_VERSION
    assert prov["evaluator"]["evaluator"] == "synthetic"


def test_sweep_resume_skips_done_rows(tmp_path: Path) -> None:
    ev = SyntheticEvaluator()
    full = run_sweep(ev, tmp_path / "full", SMALL, seed=3, executor=LocalExecutor(1), progress=False)
    # simulate an interruption: keep the header and the first 50 rows plus a torn line
    lines = full.csv_path.read_text().splitlines()
    part = tmp_path / "part.csv"
    part.write_text("\n".join(lines[:51]) + "\n" + lines[60][:20])
    (tmp_path / "part.json").write_text(full.provenance_path.read_text())
    res = run_sweep(ev, tmp_path / "part", SMALL, seed=3, executor=LocalExecutor(1), progress=False)
    assert res.rows_new == SMALL.n_rows - 50
    assert _rows_without_wall(res.csv_path) == _rows_without_wall(full.csv_path)
    again = run_sweep(ev, tmp_path / "part", SMALL, seed=3, executor=LocalExecutor(1), progress=False)
    assert again.rows_new == 0


def test_sweep_resume_refuses_other_design(tmp_path: Path) -> None:
    ev = SyntheticEvaluator()
    run_sweep(ev, tmp_path / "x", SMALL, seed=3, executor=LocalExecutor(1), progress=False)
    with pytest.raises(ValueError, match="cannot resume"):
        run_sweep(ev, tmp_path / "x", SMALL, seed=4, executor=LocalExecutor(1), progress=False)


def test_boundary_chains_bracket_the_starvation_boundary(tmp_path: Path) -> None:
    design = SweepDesign(n_points=0, n_chains=10, chain_steps=6, max_adapters=128)
    res = run_sweep(
        SyntheticEvaluator(noise=0.0), tmp_path / "ch", design, seed=2, executor=LocalExecutor(1), progress=False
    )
    ds = load_dataset(res.csv_path)
    lo, hi = design.load_range
    for g in np.unique(ds.group):
        m = ds.group == g
        loads, starved = ds.meta["load"][m], ds.targets["starved"][m]
        # bisection: successive loads move by halving steps in log space
        steps = np.abs(np.diff(np.log(loads)))
        assert np.allclose(steps, math.log(hi / lo) / 2.0 ** np.arange(2, 2 + steps.size))
        # every non-starved load lies below every starved load (the synthetic model is monotone in load)
        if starved.any() and (~starved.astype(bool)).any():
            assert loads[starved == 0].max() < loads[starved == 1].min()


def test_dataset_load_matches_csv(tmp_path: Path) -> None:
    res = run_sweep(SyntheticEvaluator(), tmp_path / "d", SMALL, seed=1, executor=LocalExecutor(1), progress=False)
    ds = load_dataset(tmp_path / "d")
    assert ds.X.shape == (SMALL.n_rows, len(FEATURE_NAMES))
    assert np.all(np.diff(ds.index) > 0)
    with res.csv_path.open() as fh:
        first = next(r for r in csv.DictReader(fh) if int(r["index"]) == int(ds.index[0]))
    assert float(first["offered_tok_s"]) == ds.X[0, FEATURE_INDEX["offered_tok_s"]]


# --- metrics ----------------------------------------------------------------------------------


def test_smape_and_f1_textbook() -> None:
    assert smape(np.array([100.0]), np.array([50.0])) == pytest.approx(200 * 50 / 150)
    assert smape(np.array([0.0, 10.0]), np.array([0.0, 10.0])) == 0.0
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([1, 0, 0, 1, 1])
    # class 1: tp 2 fp 1 fn 1 → 2/3 ; class 0: tp 1 fp 1 fn 1 → 1/2
    assert macro_f1(y, p) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_split_groups_keeps_groups_together() -> None:
    g = np.repeat(np.arange(50), 3)
    m = split_groups(g, 0.2, seed=0)
    assert m.sum() == 30
    for grp in range(50):
        assert len(set(m[g == grp])) == 1
    assert np.array_equal(m, split_groups(g, 0.2, seed=0))


# --- training and the tree compiler -----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("surr")
    design = SweepDesign(n_points=500, n_chains=40, chain_steps=5, max_adapters=384)
    run_sweep(SyntheticEvaluator(), d / "ds", design, seed=7, executor=LocalExecutor(1), progress=False)
    train(d / "ds", d / "m", seed=0)
    return d / "ds", d / "m"


def test_training_is_deterministic(trained: tuple[Path, Path], tmp_path: Path) -> None:
    ds, m = trained
    train(ds, tmp_path / "m2", seed=0)
    for name in ("throughput", "itl", "ttft_p99", "starved"):
        assert (m / f"{name}.txt").read_text() == (tmp_path / "m2" / f"{name}.txt").read_text()


def test_interrupted_training_leaves_the_previous_models(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from optplace.surrogate import training as training_mod

    ds, m = trained
    out = tmp_path / "m"
    shutil.copytree(m, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as if interrupted after the boosters were written

    monkeypatch.setattr(training_mod, "write_holdout", boom)
    with pytest.raises(KeyboardInterrupt):
        train(ds, out, seed=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same files, same bytes, no staging left


def test_trained_models_learn_the_synthetic_surface(trained: tuple[Path, Path]) -> None:
    _, m = trained
    meta = json.loads((m / "surrogate.json").read_text())
    assert meta["feature_names"] == list(BASE_NAMES)  # a synthetic sweep has no profile: no derived features
    met = meta["metrics"]
    # the synthetic surface is learnable; loose bounds, the real targets are checked by the benchmark
    assert met["throughput_smape_pct"] < 12.0
    assert met["starved_macro_f1"] > 0.85
    assert met["n"] > 50


def test_compiled_trees_match_lightgbm_exactly(trained: tuple[Path, Path]) -> None:
    import lightgbm as lgb

    ds_path, m = trained
    sur = load_surrogate(m)
    X = load_dataset(ds_path).X
    rng = np.random.default_rng(0)
    # include points exactly on split thresholds, where `<=` vs `<` matters
    Xt = X[rng.choice(X.shape[0], 200)].copy()
    tree = sur.models["throughput"].trees[0]
    Xt[:50, sur.models["throughput"].row_index[tree.feature[0]]] = tree.threshold[0]
    for name, ens in sur.models.items():
        booster = lgb.Booster(model_file=str(m / f"{name}.txt"))
        Xm = Xt[:, list(ens.row_index)]  # the model's own columns of the full rows
        ref = booster.predict(Xm, raw_score=True)
        one = np.array([ens.raw_row(r) for r in Xt.tolist()])
        assert np.array_equal(one, ref), name
        assert np.array_equal(ens._numpy_raw(Xm), ref), name
        assert np.allclose(ens.raw(Xt), ref, rtol=0, atol=1e-12), name
        assert len(ens.trees) == booster.num_trees()


def test_surrogate_prediction_consistency(trained: tuple[Path, Path]) -> None:
    ds_path, m = trained
    sur = load_surrogate(m)
    X = load_dataset(ds_path).X[:100]
    many = sur.predict_many(X)
    for i, row in enumerate(X):
        p = sur.predict_row(row)
        assert p.throughput_tok_s == pytest.approx(many["throughput_tok_s"][i], rel=1e-12)
        assert p.starved == bool(many["starved"][i])
        assert p.starved == sur.starved_row(row.tolist())
        assert p.throughput_tok_s <= p.offered_tok_s + 1e-9
        assert p.itl_ms > 0 and p.ttft_p99_ms > 0
    cfg = GpuCase(ranks=(8,) * 10, rates_rps=(0.5,) * 10, max_loras=10)
    assert sur.predict(cfg).offered_tok_s == pytest.approx(cfg.offered_tok_s)


def test_parse_rejects_categorical() -> None:
    text = (
        "tree\nversion=v4\n\nTree=0\nnum_leaves=2\nnum_cat=1\nsplit_feature=0\nthreshold=0\n"
        "decision_type=1\nleft_child=-1\nright_child=-2\nleaf_value=0.1 0.2\n\nend of trees\n"
    )
    with pytest.raises(ValueError, match="categorical"):
        parse_lightgbm_text(text)


def test_throughput_saturates_beyond_training_load(trained: tuple[Path, Path]) -> None:
    _, m = trained
    sur = load_surrogate(m)
    assert math.isfinite(sur.offered_max)
    cfg = GpuCase(ranks=(16,) * 20, rates_rps=(1.0,) * 20, max_loras=20)
    base = feature_row(cfg)
    scale = 3.0 * sur.offered_max / base[FEATURE_INDEX["offered_tok_s"]]
    heavy = base.copy()
    for name in ("rate_sum", "rate_max", "rate_std", "offered_tok_s", "decode_tok_s"):
        heavy[FEATURE_INDEX[name]] *= scale
    edge = base.copy()
    k = sur.offered_max / base[FEATURE_INDEX["offered_tok_s"]]
    for name in ("rate_sum", "rate_max", "rate_std", "offered_tok_s", "decode_tok_s"):
        edge[FEATURE_INDEX[name]] *= k
    p_heavy, p_edge = sur.predict_row(heavy), sur.predict_row(edge)
    # same delivered tokens/s as at the edge of the training domain, not offered × a constant fraction
    assert p_heavy.throughput_tok_s == pytest.approx(p_edge.throughput_tok_s, rel=1e-9)
    assert p_heavy.delivered_frac == pytest.approx(p_edge.delivered_frac / 3.0, rel=1e-9)
    assert p_heavy.starved
    assert sur.throughput_row(heavy.tolist()) == pytest.approx(p_heavy.throughput_tok_s, rel=1e-12)
    assert sur.starved_row(heavy.tolist()) is True
    many = sur.predict_many(np.vstack([heavy, edge]))
    assert many["throughput_tok_s"][0] == pytest.approx(p_heavy.throughput_tok_s, rel=1e-9)
    assert bool(many["starved"][0])


def test_cli_train_command(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from optplace.app.surrogate_commands import app

    ds, m = trained
    res = CliRunner().invoke(app, ["train", str(ds), "--out", str(tmp_path / "cli"), "--seed", "0"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_test"] > 0 and "throughput_smape_pct" in out["metrics"]
    # same seed, same data → the same model as the fixture's
    assert (tmp_path / "cli" / "throughput.txt").read_text() == (m / "throughput.txt").read_text()


def test_cli_sweep_rejects_unknown_executor(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from optplace.app.surrogate_commands import app

    res = CliRunner().invoke(
        app, ["sweep", "llama-3.1-8b-instruct@h100-64gb", "--out", str(tmp_path / "x"), "--executor", "dask"]
    )
    assert res.exit_code != 0
    assert not (tmp_path / "x.csv").exists()


def test_load_datasets_merges_sweeps_without_group_clashes(tmp_path: Path) -> None:
    from optplace.surrogate.dataset import load_datasets

    ev = SyntheticEvaluator()
    run_sweep(ev, tmp_path / "a", SMALL, seed=1, executor=LocalExecutor(1), progress=False)
    run_sweep(ev, tmp_path / "b", SMALL, seed=2, executor=LocalExecutor(1), progress=False)
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    ab = load_datasets([tmp_path / "a", tmp_path / "b"])
    assert ab.X.shape[0] == a.X.shape[0] + b.X.shape[0]
    assert np.unique(ab.group).size == np.unique(a.group).size + np.unique(b.group).size
    assert np.array_equal(ab.X[: a.X.shape[0]], a.X)
    assert ab.provenance["seed"] == 1 and ab.provenance["merged_with"][0]["seed"] == 2
    assert set(np.unique(ab.meta["pass"])) == {1, 2}


def test_load_datasets_pools_label_equivalent_twins_only(tmp_path: Path) -> None:
    # training may pool sweeps made by twin versions listed as label-equivalent, and no others
    from optplace.surrogate.dataset import load_datasets

    ev = SyntheticEvaluator()
    for name, seed in (("a", 1), ("b", 2)):
        run_sweep(ev, tmp_path / name, SMALL, seed=seed, executor=LocalExecutor(1), progress=False)

    def as_twin(name: str, version: str) -> None:
        meta = tmp_path / f"{name}.json"
        prov = json.loads(meta.read_text())
        prov["evaluator"] = {"evaluator": "twin", "profile": "p", "profile_hash": "h", "version": version}
        meta.write_text(json.dumps(prov))

    as_twin("a", "0.1.0+9b6736f53690")
    as_twin("b", "0.1.0+f10ef4122c71")
    ab = load_datasets([tmp_path / "a", tmp_path / "b"])
    assert ab.provenance["merged_with"][0]["evaluator"]["version"] == "0.1.0+f10ef4122c71"
    as_twin("b", "0.1.0+000000000000")
    with pytest.raises(ValueError, match="does not label like"):
        load_datasets([tmp_path / "a", tmp_path / "b"])
