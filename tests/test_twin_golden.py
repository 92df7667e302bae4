"""The twin semantics version guards the twin's behaviour: fixed small cases, outputs compared in full.

A changed output with the same :data:`TWIN_SEMANTICS_VERSION` fails (bump it: surrogates trained on
the old behaviour must be refused), and a bumped version with old golden files fails too
(regenerate them, so the next change is caught again).
"""

from __future__ import annotations

import json

import pytest
from twin_golden import REGENERATE, cases, dumps, render

from optplace.twin.version import TWIN_SEMANTICS_VERSION


def test_there_are_golden_cases() -> None:
    names = {c.stem for c in cases()}
    assert {"slots-lt-adapters", "long-prompts", "kv-pressure", "bursty"} <= names
    for c in cases():
        assert c.with_suffix(".json").exists(), f"{c.name} has no golden output: run {REGENERATE}"


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.stem)
def test_twin_output_matches_golden(case) -> None:
    stored = json.loads(case.with_suffix(".json").read_text())
    assert stored["twin_semantics_version"] == TWIN_SEMANTICS_VERSION, (
        f"{case.name}: golden made under twin semantics version {stored['twin_semantics_version']}, the code says "
        f"{TWIN_SEMANTICS_VERSION}: regenerate with {REGENERATE}"
    )
    now = render(case)
    assert dumps(now) == dumps(stored), (
        f"twin behaviour changed ({case.name}): bump TWIN_SEMANTICS_VERSION in optplace/twin/version.py and "
        f"regenerate with {REGENERATE}"
    )


def test_cases_exercise_their_mechanism() -> None:
    """Each case still shows what it was chosen for (else it guards less than its name says)."""
    gpu = {c.stem: json.loads(c.with_suffix(".json").read_text())["simulate"]["gpus"][0] for c in cases()}
    assert gpu["slots-lt-adapters"]["adapter_loads"] > gpu["slots-lt-adapters"]["max_loras"]
    assert gpu["kv-pressure"]["preemptions"] > 0
    assert gpu["long-prompts"]["ttft_ms_p50"] > 2 * gpu["long-prompts"]["itl_ms_mean"]
    assert gpu["bursty"]["max_running"] > 0
