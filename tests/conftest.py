"""Shared test fixtures (plain helpers and paths: tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.testing

from helpers import reference_dir

# CliRunner.invoke rebuilds the click command tree of the app on every call: typer inspects the signature
# and type hints of every command, ~0.1 s per invoke, two thirds of a `check` in the fuzz test and several
# minutes of the suite. The app is never modified after import, so each app's tree is built once here.
_COMMANDS: dict[int, tuple[Any, Any]] = {}
_build_command = typer.testing._get_command


def _command_built_once(app: Any) -> Any:
    if id(app) not in _COMMANDS:
        _COMMANDS[id(app)] = (app, _build_command(app))  # the app kept alive: its id is not reused
    return _COMMANDS[id(app)][1]


typer.testing._get_command = _command_built_once  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    """The reference measurements; the tests that need them fail (not skip) when they are missing."""
    return reference_dir()
