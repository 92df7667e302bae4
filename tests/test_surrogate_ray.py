"""The Ray executor against a local Ray instance gives the same dataset as the process pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from optplace.surrogate.dataset import read_rows
from optplace.surrogate.design import SweepDesign
from optplace.surrogate.execution import LocalExecutor, RayExecutor, run_sweep
from optplace.surrogate.synthetic import SyntheticEvaluator

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")  # the `ray` extra; CI installs it: pip install -e '.[dev,ray]'


def test_ray_executor_matches_process_pool(tmp_path: Path) -> None:
    design = SweepDesign(n_points=40, n_chains=6, chain_steps=3, max_adapters=128)
    ev = SyntheticEvaluator()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        r = run_sweep(ev, tmp_path / "ray", design, seed=9, executor=RayExecutor(), progress=False)
    finally:
        ray.shutdown()
    p = run_sweep(ev, tmp_path / "pool", design, seed=9, executor=LocalExecutor(2), progress=False)
    assert r.rows_total == p.rows_total == design.n_rows
    strip = lambda rows: {i: {k: v for k, v in rec.items() if k != "wall_s"} for i, rec in rows.items()}  # noqa: E731
    assert strip(read_rows(r.csv_path)) == strip(read_rows(p.csv_path))
