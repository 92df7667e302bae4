"""Shared fixtures' building blocks for the surrogate tests (imported by tests/test_surrogate_*.py)."""

from __future__ import annotations

from pathlib import Path

from optplace.surrogate.design import SweepDesign
from optplace.surrogate.execution import LocalExecutor, run_replicate, run_sweep
from optplace.surrogate.synthetic import SyntheticEvaluator


def noisy_synthetic_sweep(d: Path, design: SweepDesign, seed: int) -> SyntheticEvaluator:
    """Write sweep ``d/a`` of a synthetic evaluator with 5 % noise and its noisy-subset replicate ``d/a_n1``
    (salt 1); return the evaluator so a caller can add more replicates of the same sweep."""
    ev = SyntheticEvaluator(noise=0.05)
    run_sweep(ev, d / "a", design, seed=seed, executor=LocalExecutor(1), progress=False)
    run_replicate(ev, d / "a", d / "a_n1", salt=1, subset="noisy", executor=LocalExecutor(1), progress=False)
    return ev
