"""Golden outputs of the twin (``optplace simulate --json --reproducible``) for a few small fixed cases.

``tests/golden/twin/<case>.yaml`` are scenarios with a placement, chosen to exercise the twin's
distinct mechanisms in a second or so each: fewer LoRA slots than adapters, prompts longer than the
token budget (chunked prefill), KV-cache exhaustion (preemption), and bursty (MMPP) arrivals.
``<case>.json`` stores the output together with the twin semantics version it was made under.

Regenerate after a deliberate behaviour change (and a bump of
``optplace.twin.version.TWIN_SEMANTICS_VERSION``)::

    PYTHONPATH=. python tests/twin_golden.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).resolve().parent / "golden" / "twin"
REGENERATE = "PYTHONPATH=. python tests/twin_golden.py"


def cases() -> list[Path]:
    """The golden scenarios, sorted by name."""
    return sorted(GOLDEN_DIR.glob("*.yaml"))


def render(case: Path) -> dict[str, Any]:
    """The stored form of one case: the twin semantics version and the full reproducible simulate JSON."""
    from optplace.specs import load_scenario
    from optplace.twin.simulate import placement_of, simulate_plan
    from optplace.twin.version import TWIN_SEMANTICS_VERSION

    sc = load_scenario(case)
    rep = simulate_plan(sc, placement_of(sc), case.parent, workers=1)
    return {"twin_semantics_version": TWIN_SEMANTICS_VERSION, "simulate": rep.to_json(reproducible=True)}


def dumps(doc: dict[str, Any]) -> str:
    """The golden file's exact text."""
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def regenerate() -> list[Path]:
    """Rewrite every ``<case>.json``; returns the files written."""
    written = []
    for case in cases():
        out = case.with_suffix(".json")
        out.write_text(dumps(render(case)))
        written.append(out)
    return written


if __name__ == "__main__":
    for p in regenerate():
        print(p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p)
    sys.exit(0)
