"""Seed replicates of a sweep (run_replicate, pool_replicates) and training against a held-out sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from optplace.surrogate.evaluation import smape
from optplace.surrogate.runtime import load_surrogate
from optplace.surrogate.training import train
from optplace.surrogate.dataset import load_dataset, pool_replicates, read_rows
from optplace.surrogate.design import SweepDesign
from optplace.surrogate.execution import LocalExecutor, run_replicate, run_sweep
from optplace.surrogate.synthetic import SyntheticEvaluator

DESIGN = SweepDesign(n_points=80, n_chains=10, chain_steps=4, max_adapters=256)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rep")
    run_sweep(SyntheticEvaluator(noise=0.05), d / "a", DESIGN, seed=11, executor=LocalExecutor(1), progress=False)
    run_replicate(
        SyntheticEvaluator(noise=0.05), d / "a", d / "a_r1", salt=1, executor=LocalExecutor(1), progress=False
    )
    return d


def test_replicate_keeps_configurations_and_changes_seeds(base: Path) -> None:
    a, b = read_rows(base / "a.csv"), read_rows(base / "a_r1.csv")
    assert set(a) == set(b) and len(a) == DESIGN.n_rows
    same = (
        "group",
        "pass",
        "load",
        "rate_kind",
        "length_kind",
        "arrival_kind",
        "n_adapters",
        "max_loras",
        "rate_sum",
        "rate_std",
        "offered_tok_s",
        "arrival_cv",
    )
    for i in a:
        assert {k: a[i][k] for k in same} == {k: b[i][k] for k in same}, i  # chain loads replayed exactly
        assert a[i]["seed"] != b[i]["seed"]
    diff = [float(a[i]["throughput_tok_s"]) != float(b[i]["throughput_tok_s"]) for i in a]
    assert np.mean(diff) > 0.9  # the twin seed changed, so the noisy label did
    prov = json.loads((base / "a_r1.json").read_text())
    assert prov["replicate_of"] == "a" and prov["replicate_salt"] == 1


def test_replicate_resumes_and_refuses_bad_sources(base: Path, tmp_path: Path) -> None:
    ev = SyntheticEvaluator(noise=0.05)
    again = run_replicate(ev, base / "a", base / "a_r1", salt=1, executor=LocalExecutor(1), progress=False)
    assert again.rows_new == 0 and again.rows_total == DESIGN.n_rows
    with pytest.raises(ValueError, match="salt"):
        run_replicate(ev, base / "a", tmp_path / "x", salt=0, progress=False)
    with pytest.raises(ValueError, match="itself a replicate"):
        run_replicate(ev, base / "a_r1", tmp_path / "y", salt=2, progress=False)
    with pytest.raises(ValueError, match="cannot resume"):
        run_replicate(ev, base / "a", base / "a_r1", salt=2, progress=False)

    class Other(SyntheticEvaluator):
        def describe(self) -> dict[str, str]:
            return {"evaluator": "other", "version": "1", "profile": "synthetic"}

    with pytest.raises(ValueError, match="made by"):
        run_replicate(Other(), base / "a", tmp_path / "z", salt=1, progress=False)


def test_replicate_detects_a_changed_design(base: Path, tmp_path: Path) -> None:
    # a source whose provenance no longer regenerates its rows (here: another sweep seed) is refused
    for suf in (".csv", ".json"):
        (tmp_path / f"s{suf}").write_bytes((base / f"a{suf}").read_bytes())
    prov = json.loads((tmp_path / "s.json").read_text())
    prov["seed"] = 12
    (tmp_path / "s.json").write_text(json.dumps(prov))
    with pytest.raises(ValueError, match="regenerate"):
        run_replicate(SyntheticEvaluator(noise=0.05), tmp_path / "s", tmp_path / "s_r1", salt=1, progress=False)


def test_pool_replicates_averages_and_applies_the_rule(base: Path) -> None:
    a, b = load_dataset(base / "a"), load_dataset(base / "a_r1")
    p = pool_replicates(base / "a", [base / "a_r1"])
    assert np.array_equal(p.index, a.index) and np.array_equal(p.X, a.X)
    t = p.targets
    assert np.allclose(t["throughput_tok_s"], (a.targets["throughput_tok_s"] + b.targets["throughput_tok_s"]) / 2)
    assert np.array_equal(t["throughput_tok_s_rep0"], a.targets["throughput_tok_s"])
    assert np.array_equal(t["starved_rep1"], b.targets["starved"])
    off = a.targets["measured_offered_tok_s"] + b.targets["measured_offered_tok_s"]
    loss = 1 - (a.targets["throughput_tok_s"] + b.targets["throughput_tok_s"]) / off
    assert np.allclose(t["throughput_loss"], loss)
    assert np.array_equal(t["starved"].astype(bool), loss >= 0.10)
    # pooling can only disagree with a seed where the seeds disagree with each other
    split = a.targets["starved"] != b.targets["starved"]
    assert np.all((t["starved"] == a.targets["starved"]) | split)
    assert "mean of 2 twin seeds" in p.provenance["label"]


def test_train_against_a_heldout_sweep_with_seed_mean_labels(base: Path, tmp_path: Path) -> None:
    ev = SyntheticEvaluator(noise=0.05)
    run_sweep(
        ev,
        tmp_path / "tr",
        SweepDesign(n_points=300, n_chains=20, chain_steps=4, max_adapters=256),
        seed=3,
        executor=LocalExecutor(1),
        progress=False,
    )
    rep = train(tmp_path / "tr", tmp_path / "m", seed=0, holdout=base / "a", holdout_replicates=[base / "a_r1"])
    assert rep.n_train == len(read_rows(tmp_path / "tr.csv"))
    assert rep.n_test == DESIGN.n_rows
    m = rep.metrics
    for k in (
        "throughput_smape_pct_vs_seed0",
        "throughput_smape_pct_vs_seed1",
        "starved_macro_f1_vs_seed0",
        "twin_seed_vs_seed_throughput_smape_pct",
        "twin_seed_vs_seed_starved_macro_f1",
    ):
        assert k in m and np.isfinite(m[k]), k
    p = pool_replicates(base / "a", [base / "a_r1"])
    assert m["twin_seed_vs_seed_throughput_smape_pct"] == pytest.approx(
        smape(p.targets["throughput_tok_s_rep0"], p.targets["throughput_tok_s_rep1"])
    )
    # a mean label is less noisy than either seed's, so the model scores better against it
    assert m["throughput_smape_pct"] < min(m["throughput_smape_pct_vs_seed0"], m["throughput_smape_pct_vs_seed1"])
    sur = load_surrogate(tmp_path / "m")
    assert sur.meta["split"]["holdout"] == "a" and sur.meta["split"]["replicates"] == ["a_r1"]
    assert sur.meta["n_test"] == DESIGN.n_rows


def test_cli_train_with_holdout_and_replicate(base: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from optplace.app.surrogate_commands import app

    ev = SyntheticEvaluator(noise=0.05)
    run_sweep(
        ev,
        tmp_path / "t1",
        SweepDesign(n_points=150, n_chains=10, chain_steps=4, max_adapters=256),
        seed=4,
        executor=LocalExecutor(1),
        progress=False,
    )
    run_sweep(
        ev,
        tmp_path / "t2",
        SweepDesign(n_points=150, n_chains=10, chain_steps=4, max_adapters=256),
        seed=5,
        executor=LocalExecutor(1),
        progress=False,
    )
    res = CliRunner().invoke(
        app,
        [
            "train",
            str(tmp_path / "t1"),
            str(tmp_path / "t2"),
            "--out",
            str(tmp_path / "m"),
            "--holdout",
            str(base / "a"),
            "--holdout-replicate",
            str(base / "a_r1"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_train"] == len(read_rows(tmp_path / "t1.csv")) + len(read_rows(tmp_path / "t2.csv"))
    assert out["n_test"] == DESIGN.n_rows and "twin_seed_vs_seed_starved_macro_f1" in out["metrics"]
