"""Local Ray instances give what the process pool gives: the surrogate's dataset, and the twin's validation
report of a plan. One file, so a parallel test run (pytest-xdist, ``--dist loadfile``) starts one Ray
instance at a time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
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


#: a hot adapter more than one GPU serves (replicated: the routing draw travels to the workers too), and a
#: short window so the check on four draws stays a few seconds of twin
SPEC = """\
name: ray-check
model: llama-3.1-8b-instruct
gpu: h100-64gb
workload: {duration_s: 300, arrivals: {kind: poisson}, lengths: {kind: sharegpt}}
adapters:
  - {group: support, count: 30, rank: 8, rate_rps: 0.5}
  - {group: code, count: 10, rank: 16, rate_rps: 0.3}
  - {name: hot, rank: 16, rate_rps: 60.0}
solver: {executor: EXECUTOR, workers: 2}
seed: 3
"""


def _solve(tmp_path: Path, executor: str) -> dict:
    spec = tmp_path / f"{executor}.yaml"
    spec.write_text(SPEC.replace("EXECUTOR", executor))
    exe = shutil.which("optplace", path=str(Path(sys.executable).parent))
    assert exe is not None, "the optplace console script is installed beside this interpreter"
    run = subprocess.run(
        [exe, "solve", str(spec), "--json", "--reproducible"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


def test_ray_validation_gives_the_process_pools_report(tmp_path: Path) -> None:
    pool, on_ray = _solve(tmp_path, "local"), _solve(tmp_path, "ray")
    assert pool["scenario"]["solver"].pop("executor") == "local"
    assert on_ray["scenario"]["solver"].pop("executor") == "ray"
    # the plan replicates the hot adapter and the twin checked it on every draw: the same everywhere
    assert any(isinstance(a, dict) for g in pool["placement"] for a in g["adapters"])
    assert len(pool["seeds_checked"]) == 4 and pool["validation"]["gpus"]
    assert on_ray == pool
