"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def reference_dir() -> Path:
    """The shared reference data (../shared/reference next to the repo, or $OPTPLACE_REFERENCE)."""
    env = os.environ.get("OPTPLACE_REFERENCE")
    return Path(env) if env else REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    d = reference_dir()
    assert d.is_dir(), f"reference data not found at {d} (set OPTPLACE_REFERENCE)"
    return d
