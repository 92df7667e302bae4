"""Scenario specs: the typed model, YAML loading with line-numbered errors, hardware profiles."""

from optplace.specs.errors import SpecError, SpecIssue
from optplace.specs.hardware import GPUS, MODELS, GpuSpec, ModelArch
from optplace.specs.loader import load_scenario, load_scenario_text, semantic_issues
from optplace.specs.model import (
    Adapter,
    AdapterEntry,
    AdapterGroup,
    Constraints,
    PlacementEntry,
    ReplicaEntry,
    PoolEntry,
    Scenario,
    Serving,
    SolverOptions,
    Workload,
)
from optplace.specs.profiles import (
    SUPPORTED_RANKS,
    Profile,
    UnknownProfile,
    bundled_profiles,
    generic_profile,
    load_profile_file,
    resolve_profile,
)

__all__ = [
    "GPUS",
    "MODELS",
    "SUPPORTED_RANKS",
    "Adapter",
    "AdapterEntry",
    "AdapterGroup",
    "Constraints",
    "GpuSpec",
    "ModelArch",
    "PlacementEntry",
    "ReplicaEntry",
    "PoolEntry",
    "Profile",
    "Scenario",
    "Serving",
    "SolverOptions",
    "SpecError",
    "SpecIssue",
    "UnknownProfile",
    "Workload",
    "bundled_profiles",
    "generic_profile",
    "load_profile_file",
    "load_scenario",
    "load_scenario_text",
    "resolve_profile",
    "semantic_issues",
]
