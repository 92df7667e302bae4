"""Several held-out sweeps scored as one set (load_holdouts, train/ship with a list of held-out sweeps,
bench per-sweep figures): what it refuses, and that the held-out set never changes the models."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from optplace.surrogate.evaluation import evaluate, holdout_sweeps, load_holdout
from optplace.surrogate.runtime import load_surrogate
from optplace.surrogate.training import train
from optplace.surrogate.dataset import load_holdouts, pool_replicates
from optplace.surrogate.design import SweepDesign
from optplace.surrogate.execution import LocalExecutor, run_replicate, run_sweep
from optplace.surrogate.provenance import same_labels
from optplace.surrogate.synthetic import SyntheticEvaluator

HOLD = SweepDesign(n_points=60, n_chains=6, chain_steps=4, max_adapters=256)
EV = SyntheticEvaluator(noise=0.05)


class OtherProfile(SyntheticEvaluator):
    def describe(self) -> dict[str, str]:
        return {"evaluator": "synthetic", "version": "1", "profile": "another"}


def _sweep(
    d: Path,
    name: str,
    seed: int,
    design: SweepDesign = HOLD,
    ev: SyntheticEvaluator = EV,
    salts: tuple[int, ...] = (1,),
) -> None:
    run_sweep(ev, d / name, design, seed=seed, executor=LocalExecutor(1), progress=False)
    for s in salts:
        run_replicate(ev, d / name, d / f"{name}_r{s}", salt=s, executor=LocalExecutor(1), progress=False)


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("holdouts")
    _sweep(d, "h1", 21)
    _sweep(d, "h2", 22)
    _sweep(d, "h3", 23, salts=())
    _sweep(d, "other", 24, ev=OtherProfile(noise=0.05))
    run_sweep(
        EV,
        d / "tr",
        SweepDesign(n_points=300, n_chains=20, chain_steps=4, max_adapters=256),
        seed=3,
        executor=LocalExecutor(1),
        progress=False,
    )
    # a copy of h1 under another name: the same configurations
    for suf in (".csv", ".json"):
        shutil.copy(d / f"h1{suf}", d / f"h1copy{suf}")
    return d


def test_union_pools_each_sweep_with_its_replicates(d: Path) -> None:
    u = load_holdouts([d / "h1", d / "h2"], [d / "h2_r1", d / "h1_r1"])  # replicate order does not matter
    p1, p2 = pool_replicates(d / "h1", [d / "h1_r1"]), pool_replicates(d / "h2", [d / "h2_r1"])
    assert u.index.size == p1.index.size + p2.index.size == 2 * HOLD.n_rows
    assert np.array_equal(u.meta["holdout_sweep"], np.repeat([0, 1], HOLD.n_rows))
    for t in ("throughput_tok_s", "starved", "throughput_tok_s_rep1"):
        assert np.array_equal(u.targets[t], np.concatenate([p1.targets[t], p2.targets[t]]), equal_nan=True)
    assert np.unique(u.group).size == np.unique(p1.group).size + np.unique(p2.group).size  # no group clash
    assert [h["name"] for h in u.provenance["holdouts"]] == ["h1", "h2"]
    assert u.provenance["holdouts"][1]["replicates"] == ["h2_r1"]


def test_union_refuses_what_would_change_its_meaning(d: Path) -> None:
    with pytest.raises(ValueError, match="does not label like"):
        load_holdouts([d / "h1", d / "other"])
    with pytest.raises(ValueError, match="same sweep"):
        load_holdouts([d / "h1", d / "h1copy"])
    with pytest.raises(ValueError, match="listed twice"):
        load_holdouts([d / "h1", d / "h1"])
    with pytest.raises(ValueError, match="not among the held-out"):
        load_holdouts([d / "h1"], [d / "h1_r1", d / "h2_r1"])
    with pytest.raises(ValueError, match="numbers of seed replicates"):
        load_holdouts([d / "h1", d / "h3"], [d / "h1_r1"])


def test_union_refuses_overlapping_configurations_under_another_seed(d: Path, tmp_path: Path) -> None:
    # same rows, provenance claiming another sweep seed: caught by the configurations, not the seed
    for suf in (".csv", ".json"):
        shutil.copy(d / f"h2{suf}", tmp_path / f"x{suf}")
    prov = json.loads((tmp_path / "x.json").read_text())
    prov["seed"] = 99
    (tmp_path / "x.json").write_text(json.dumps(prov))
    with pytest.raises(ValueError, match=r"\d+ twin runs \(configuration and twin seed\) also in h2"):
        load_holdouts([d / "h2", tmp_path / "x"])


def test_same_configuration_under_other_twin_seeds_is_a_fair_draw(d: Path) -> None:
    # a boundary chain on one adapter with one slot bisects the same loads in every sweep: those rows
    # coincide across sweeps of other seeds (other twin seeds) and are kept, and counted
    u = load_holdouts([d / "h1", d / "h2"], [d / "h1_r1", d / "h2_r1"])
    keys = [{r.tobytes() for r in u.X[u.meta["holdout_sweep"] == k]} for k in (0, 1)]
    assert u.provenance["holdouts"][1]["configurations_also_in_earlier_sweeps"] == len(keys[0] & keys[1]) > 0


def test_label_equivalence_is_explicit() -> None:
    twin = {"evaluator": "twin", "profile": "p", "profile_hash": "h", "version": "0.1.0+9b6736f53690"}
    assert same_labels(twin, {**twin, "version": "0.1.0+f10ef4122c71"})
    assert not same_labels(twin, {**twin, "version": "0.1.0+000000000000"})  # unknown twin change
    assert not same_labels(twin, {**twin, "version": "0.1.0+f10ef4122c71", "profile": "q"})
    assert not same_labels(twin, {**twin, "profile_hash": "other"})
    syn = {"evaluator": "synthetic", "version": "1", "profile": "synthetic"}
    assert same_labels(syn, dict(syn)) and not same_labels(syn, {**syn, "version": "2"})


def test_train_on_several_heldouts_models_unchanged_and_rows_tagged(d: Path, tmp_path: Path) -> None:
    one = train(d / "tr", tmp_path / "one", seed=0, holdout=d / "h1", holdout_replicates=[d / "h1_r1"])
    two = train(
        d / "tr", tmp_path / "two", seed=0, holdout=[d / "h1", d / "h2"], holdout_replicates=[d / "h1_r1", d / "h2_r1"]
    )
    assert two.n_train == one.n_train and two.n_test == 2 * one.n_test == 2 * HOLD.n_rows
    # the held-out set never shapes the models: same tree files, threshold and load domain
    for m in ("throughput", "itl", "ttft_p99", "starved"):
        assert (tmp_path / "one" / f"{m}.txt").read_bytes() == (tmp_path / "two" / f"{m}.txt").read_bytes(), m
    s1, s2 = load_surrogate(tmp_path / "one"), load_surrogate(tmp_path / "two")
    for k in ("starved_threshold", "offered_max", "threshold_cv"):
        assert s1.meta[k] == s2.meta[k], k
    names, idx = holdout_sweeps(s2)
    assert names == ("h1", "h2") and np.bincount(idx).tolist() == [HOLD.n_rows, HOLD.n_rows]
    assert s2.meta["split"]["holdout"] == ["h1", "h2"] and s2.meta["split"]["replicates"] == ["h1_r1", "h2_r1"]
    # the rows of sweep 0 in the union file are the single-sweep file's rows, scored alike
    X2, t2, _, _ = load_holdout(s2)
    X1, t1, _, _ = load_holdout(s1)
    assert np.array_equal(X2[idx == 0], X1)
    assert evaluate(s2, X2[idx == 0], {k: v[idx == 0] for k, v in t2.items()})["starved_macro_f1"] == pytest.approx(
        s1.metrics["starved_macro_f1"]
    )
    assert s2.metrics["n"] == 2 * HOLD.n_rows
    n1, i1 = holdout_sweeps(s1)
    assert n1 == ("h1",) and i1.tolist() == [0] * HOLD.n_rows


def test_train_refuses_a_heldout_that_overlaps_training(d: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="twin runs"):
        train([d / "tr"], tmp_path / "m", holdout=[d / "h1", d / "tr"])
    with pytest.raises(ValueError, match="other features or evaluator|does not label like"):
        train([d / "tr"], tmp_path / "m2", holdout=[d / "other"])


def test_bench_by_sweep_matches_each_sweep_alone(d: Path, tmp_path: Path) -> None:
    from optplace.bench.surrogate import SWEEP_FIGURES, by_sweep, holdout_figures

    train(d / "tr", tmp_path / "m", seed=0, holdout=[d / "h1", d / "h2"], holdout_replicates=[d / "h1_r1", d / "h2_r1"])
    sur = load_surrogate(tmp_path / "m")
    X, t, _, pass_no = load_holdout(sur)
    names, idx = holdout_sweeps(sur)
    per = by_sweep(sur, X, t, pass_no, names, idx)
    assert set(per) == {"h1", "h2"} and set(per["h1"]) == set(SWEEP_FIGURES)
    for k, name in enumerate(names):
        m = idx == k
        alone = holdout_figures(sur, X[m], {a: b[m] for a, b in t.items()}, pass_no[m])
        assert per[name]["starved_macro_f1"] == alone["starved_macro_f1"]
        assert per[name]["n"] == HOLD.n_rows
    union = holdout_figures(sur, X, t, pass_no)
    assert union["n_errors"] == per["h1"]["n_errors"] + per["h2"]["n_errors"]
    # the union sMAPE is the row-weighted mean of the sweeps' (equal sizes here)
    assert union["throughput_smape_pct"] == pytest.approx(
        (per["h1"]["throughput_smape_pct"] + per["h2"]["throughput_smape_pct"]) / 2
    )
    with (tmp_path / "m" / sur.meta["holdout"]).open() as fh:
        assert "holdout_sweep" in next(csv.reader(fh))


def test_cli_ship_style_repeated_holdout(d: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from optplace.app.surrogate_commands import app

    res = CliRunner().invoke(
        app,
        [
            "train",
            str(d / "tr"),
            "--out",
            str(tmp_path / "m"),
            "--holdout",
            str(d / "h1"),
            "--holdout",
            str(d / "h2"),
            "--holdout-replicate",
            str(d / "h1_r1"),
            "--holdout-replicate",
            str(d / "h2_r1"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n_test"] == 2 * HOLD.n_rows
