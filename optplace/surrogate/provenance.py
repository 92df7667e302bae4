"""Who labelled a sweep or a surrogate: evaluator identities, read alike from files of every age.

A twin evaluator's identity is ``{"evaluator": "twin", "twin_semantics_version": N, "profile": name,
"profile_hash": h}``: the twin's behaviour (:data:`optplace.twin.version.TWIN_SEMANTICS_VERSION`)
and the profile's numbers (:func:`optplace.surrogate.twin_eval.profile_hash`).  Two sweeps label alike
when these agree.

Files written before the semantics version existed record ``"version": "<optplace>+<hash of the twin's
source files>"`` instead.  :data:`LEGACY_TWIN_VERSIONS` is the one place that maps those strings to
semantics versions; every reader goes through :func:`evaluator_identity`.  All three strings below
label rows identically (the shipped held-out rows of every one of them re-run to the same bits under
semantics version 1), so all map to 1.  An unknown legacy string maps to nothing, and such a file
labels like no other.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: Source-hash twin versions of files made before :mod:`optplace.twin.version`, by semantics version.
LEGACY_TWIN_VERSIONS: dict[str, int] = {
    "0.1.0+9b6736f53690": 1,
    "0.1.0+f10ef4122c71": 1,
    "0.1.0+346586ed45ce": 1,
}


def twin_semantics_of(evaluator: dict[str, Any]) -> int | None:
    """The twin semantics version an evaluator identity records (None: not the twin, or unknown)."""
    if evaluator.get("evaluator") != "twin":
        return None
    if "twin_semantics_version" in evaluator:
        return int(evaluator["twin_semantics_version"])
    return LEGACY_TWIN_VERSIONS.get(str(evaluator.get("version")))


def evaluator_identity(evaluator: dict[str, Any]) -> dict[str, Any]:
    """An evaluator identity in today's form (a legacy twin ``version`` string replaced by its semantics
    version; other evaluators unchanged)."""
    if evaluator.get("evaluator") != "twin" or "twin_semantics_version" in evaluator:
        return dict(evaluator)
    out = {k: v for k, v in evaluator.items() if k != "version"}
    out["twin_semantics_version"] = twin_semantics_of(evaluator)
    return out


def same_labels(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two evaluator identities (provenance ``evaluator``) label rows alike: equal once legacy
    twin versions are read as semantics versions (an unknown legacy version labels like nothing)."""
    ia, ib = evaluator_identity(a), evaluator_identity(b)
    if ia.get("evaluator") == "twin" and ia.get("twin_semantics_version") is None:
        return a == b
    return ia == ib


def profile_hash(profile_json: Any) -> str:
    """Short hash of a profile's semantic content: every field except the free-text ``source``
    descriptions (they document where the numbers came from and change nothing the twin computes),
    keys sorted, so re-wording a source line or re-ordering the JSON keeps the hash."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in sorted(v.items()) if k != "source"}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return hashlib.sha256(json.dumps(strip(profile_json), sort_keys=True).encode()).hexdigest()[:12]
