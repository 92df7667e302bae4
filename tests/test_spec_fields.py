"""Nothing in a spec is accepted and ignored: every field of every spec class (the scenario, its
sections, the GPU and model descriptions, every registered arrival and length model's spec) is read
by optplace's code, or is refused with a message, or is documented as informational in its own
description. A field added to the spec without code that reads it fails here.

The check is static: a field counts as read when its name appears as an attribute access
(``.name``) or a quoted key (``"name"``) anywhere in the package's source (declarations are
``name: type`` and keyword arguments ``name=``, which match neither). Whether each read changes an
outcome is the business of the tests of the code that reads it."""

from __future__ import annotations

import inspect
import re

import pytest
from pydantic import BaseModel, ValidationError

import optplace.specs.hardware as hardware
import optplace.specs.model as model
import optplace.twin.arrivals  # noqa: F401 - registers the built-in arrival models
import optplace.twin.lengths  # noqa: F401 - registers the built-in length models
from helpers import REPO
from optplace.infra.registry import ARRIVALS, LENGTHS

#: Fields that are refused with a message (tests/test_specs.py checks the message and its line).
REFUSED = {"Constraints.max_itl_ms": 1.0, "Constraints.max_ttft_p99_ms": 1.0}
#: Fields documented as informational (their description says so).
INFORMATIONAL = {"GpuSpec.bf16_tflops"}


def spec_classes() -> list[type[BaseModel]]:
    out: set[type[BaseModel]] = set()
    for mod in (model, hardware):
        for c in vars(mod).values():
            if inspect.isclass(c) and issubclass(c, BaseModel) and c.__module__ == mod.__name__:
                out.add(c)
    for reg in (ARRIVALS, LENGTHS):
        out |= {reg.get(n).spec for n in reg.names()}
    return sorted(out, key=lambda c: c.__name__)


def _source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "optplace").rglob("*.py")))


def _fields() -> list[tuple[str, type[BaseModel], str]]:
    return [(f"{c.__name__}.{f}", c, f) for c in spec_classes() for f in c.model_fields]


def test_the_walk_sees_every_section():
    names = {c.__name__ for c in spec_classes()}
    assert {"Scenario", "Workload", "Serving", "Constraints", "Slo", "SloOverride", "SolverOptions"} <= names
    assert {"AdapterEntry", "AdapterGroup", "PlacementEntry", "PoolEntry", "GpuSpec", "ModelArch"} <= names
    assert {"MmppArrivals", "TraceArrivals", "ShareGptLengths", "LognormalLengths"} <= names
    assert len(_fields()) > 80


@pytest.mark.parametrize("key,cls,field", _fields(), ids=[k for k, _, _ in _fields()])
def test_every_spec_field_is_read_refused_or_informational(key, cls, field):
    info = cls.model_fields[field]
    if key in REFUSED:
        with pytest.raises(ValidationError, match="slo"):
            cls.model_validate({field: REFUSED[key]})
        return
    if key in INFORMATIONAL:
        assert "informational" in (info.description or ""), f"{key}: say 'informational' in its description"
        return
    names = {field} | ({info.alias} if info.alias else set())
    pattern = "|".join(rf"\.{re.escape(n)}\b|[\"']{re.escape(n)}[\"']" for n in names)
    assert re.search(pattern, _SOURCE), (
        f"{key} is accepted but nothing reads it: read it, refuse it, or document it as informational"
    )


_SOURCE = _source()
