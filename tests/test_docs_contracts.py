"""docs/json-contracts.md names every key the commands' --json documents hold (walked on real outputs),
so a key added to a document without documenting it fails here."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from helpers import REPO
from optplace.cli import app
from test_render import PLACED
from test_solve_cli import SPEC

runner = CliRunner()

#: Keys whose values' keys are data, not contract: the scenario echoed back (its format is `optplace
#: schema`), the vLLM knobs (the scenario's), and the ranks and slot counts of the profile listings.
OPAQUE = {"scenario", "serving", "kv_cache_tokens", "max_slots"}


def keys(doc: Any, into: set[str]) -> set[str]:
    """Every object key in ``doc``, descending into lists and objects (not into OPAQUE keys' values)."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            into.add(k)
            if k not in OPAQUE:
                keys(v, into)
    elif isinstance(doc, list):
        for v in doc:
            keys(v, into)
    return into


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    d = tmp_path_factory.mktemp("contracts")
    (d / "s.yaml").write_text(SPEC)
    (d / "placed.yaml").write_text(PLACED)
    runs = {
        "solve": ["solve", str(d / "s.yaml"), "--json", "--compare", "--workers", "1"],
        "simulate": ["simulate", str(d / "placed.yaml"), "--json", "--workers", "1"],
        "validate": ["validate", str(d / "placed.yaml"), "--json", "--workers", "1"],
        "capacity": ["capacity", str(d / "s.yaml"), "--json", "--no-confirm"],
        "check": ["check", str(d / "s.yaml"), "--json"],
        "profiles": ["profiles", "--json"],
        "profiles --show": ["profiles", "--json", "--show", "llama-3.1-8b-instruct@h100-64gb"],
    }
    out = {}
    for name, argv in runs.items():
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, (name, res.output)
        out[name] = json.loads(res.stdout)
    return out


def test_every_key_of_every_document_is_documented(documents):
    page = (REPO / "docs" / "json-contracts.md").read_text(encoding="utf-8")
    missing = {name: sorted(k for k in keys(doc, set()) if f"`{k}`" not in page) for name, doc in documents.items()}
    assert not any(missing.values()), missing


def test_reproducible_zeroes_exactly_the_documented_wall_clock_fields(documents, tmp_path):
    (tmp_path / "s.yaml").write_text(SPEC)
    res = runner.invoke(
        app, ["solve", str(tmp_path / "s.yaml"), "--json", "--reproducible", "--compare", "--workers", "1"]
    )
    doc = json.loads(res.stdout)
    assert doc["solve_time_s"] == 0.0 and doc["validation"]["sim_wall_s"] == 0.0
    assert all(c["solve_time_s"] == 0.0 for c in doc["comparison"])
    assert documents["solve"]["validation"]["sim_wall_s"] > 0.0  # without the flag they are measured
