"""Boundary-subset replicates (``replicate --subset boundary``): extra twin seeds for the rows within
:data:`BOUNDARY_BAND` of the starvation rule only, and how several such replicates (with a noisy-subset
one) pool into per-configuration seed-mean labels for training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from optplace.surrogate.dataset import load_dataset, load_datasets, read_rows
from optplace.surrogate.design import BOUNDARY_BAND, SweepDesign, boundary_row, noisy_row
from optplace.surrogate.execution import LocalExecutor, run_replicate
from optplace.surrogate.synthetic import SyntheticEvaluator
from surrogate_helpers import noisy_synthetic_sweep

DESIGN = SweepDesign(n_points=80, n_chains=10, chain_steps=4, max_adapters=256)


def test_boundary_rule() -> None:
    assert BOUNDARY_BAND == 0.06
    assert boundary_row(0.10) and boundary_row(0.05) and boundary_row(0.15)
    assert not boundary_row(0.17) and not boundary_row(0.03) and not boundary_row(1.0)
    assert boundary_row(0.14, max_loss=0.2) and not boundary_row(0.14, max_loss=0.25)
    # every boundary row is also a noisy row; a saturated row with few slots is noisy but not boundary
    for loss in np.linspace(0.0, 0.5, 51):
        assert not boundary_row(float(loss)) or noisy_row(float(loss), 4, 4)
    assert noisy_row(0.4, 10, 2) and not boundary_row(0.4)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("boundary")
    ev = noisy_synthetic_sweep(d, DESIGN, seed=9)
    for salt in (2, 3):
        run_replicate(
            ev, d / "a", d / f"a_b{salt}", salt=salt, subset="boundary", executor=LocalExecutor(1), progress=False
        )
    return d


def test_boundary_subset_reruns_only_rows_near_the_rule(sweeps: Path) -> None:
    a = read_rows(sweeps / "a.csv")
    want = {i for i, r in a.items() if boundary_row(float(r["throughput_loss"]))}
    assert 0 < len(want) < len(a)
    for salt in (2, 3):
        b = read_rows(sweeps / f"a_b{salt}.csv")
        assert set(b) == want
        prov = json.loads((sweeps / f"a_b{salt}.json").read_text())
        assert prov["replicate_subset"] == {
            "name": "boundary",
            "rows": len(want),
            "of": len(a),
            "rule": "|source loss - 0.10| <= 0.06",
        }
        assert prov["replicate_salt"] == salt and prov["replicate_of"] == "a"
        # the same configurations under another twin seed: same features, other labels
        for i in want:
            assert b[i]["offered_tok_s"] == a[i]["offered_tok_s"] and b[i]["seed"] != a[i]["seed"]
    assert {r["seed"] for r in read_rows(sweeps / "a_b2.csv").values()}.isdisjoint(
        {r["seed"] for r in read_rows(sweeps / "a_b3.csv").values()}
    )
    # a boundary replicate may not resume into a noisy one (or back)
    with pytest.raises(ValueError, match="cannot resume"):
        run_replicate(
            SyntheticEvaluator(noise=0.05), sweeps / "a", sweeps / "a_n1", salt=1, subset="boundary", progress=False
        )
    with pytest.raises(ValueError, match="subset must be"):
        run_replicate(SyntheticEvaluator(noise=0.05), sweeps / "a", sweeps / "x", salt=4, subset="band")


def test_boundary_replicates_pool_into_seed_mean_labels(sweeps: Path) -> None:
    base = load_dataset(sweeps / "a")
    parts = {k: read_rows(sweeps / f"{k}.csv") for k in ("a", "a_n1", "a_b2", "a_b3")}
    m = load_datasets([sweeps / "a", sweeps / "a_n1", sweeps / "a_b2", sweeps / "a_b3"])
    assert np.array_equal(m.index, base.index) and np.array_equal(m.X, base.X)
    for j, i in enumerate(m.index.tolist()):
        have = [p[i] for p in parts.values() if i in p]
        assert m.targets["n_seeds"][j] == len(have)
        thr = sum(float(r["throughput_tok_s"]) for r in have)
        off = sum(float(r["measured_offered_tok_s"]) for r in have)
        assert m.targets["throughput_tok_s"][j] == pytest.approx(thr / len(have))
        if max(float(r["oom"]) for r in have) == 0:
            loss = 1.0 - thr / off if off > 0 else 0.0
            assert m.targets["starved"][j] == float(loss >= 0.10)
    n = m.targets["n_seeds"]
    near = np.array([boundary_row(float(parts["a"][i]["throughput_loss"])) for i in m.index.tolist()])
    # boundary rows have seed 0 + salts 2 and 3 (+ salt 1, as every boundary row is noisy): 4 seeds
    assert np.all(n[near] == 4) and np.all(n[~near] <= 2) and (n[~near] == 1).any()
    # the pooled loss of a boundary row is no longer seed 0's alone; the other rows keep theirs
    assert np.all(m.targets["throughput_loss"][near] != base.targets["throughput_loss"][near])
    one = n == 1
    assert np.array_equal(m.targets["throughput_loss"][one], base.targets["throughput_loss"][one])
