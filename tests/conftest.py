"""Shared test fixtures (plain helpers and paths: tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import reference_dir


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    """The reference measurements; the tests that need them fail (not skip) when they are missing."""
    return reference_dir()
