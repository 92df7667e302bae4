"""Fit complete profiles (memory + step time + adapter load + scheduler overhead) from measurements.

Joins the memory fit (``optplace.calibration.memfit``) and the time fits (``optplace.calibration.reference_fit``) and
writes one profile JSON per model, in the bundled format. ``optplace calibrate --reference DIR``
calls ``calibrate_reference``; run with ``--bundled`` it regenerates the files shipped in
``optplace/specs/profiles`` (that is how they were made).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from optplace.specs.hardware import GPUS, MODELS
from optplace.calibration.memfit import fit_memory
from optplace.specs.profiles import Profile

REFERENCE_GPU = "h100-64gb"  # the reference runs' GPU (inferred from memory arithmetic; see the reference README)
SOURCE = (
    "fitted from the reference measurements (arXiv:2508.08343 artefact, "
    "FerranAgulloLopez/GPULLMAdapterOptimization@bae36e2) by optplace calibrate"
)


def reference_models(ref_dir: Path) -> list[str]:
    """Models with KV-capacity measurements in the reference folder, in file order."""
    seen: list[str] = []
    for row in csv.DictReader(open(ref_dir / "kv_capacity_v1.csv", newline="")):
        if row["model"] not in seen:
            seen.append(row["model"])
    return seen


def build_profile(ref_dir: Path, model: str, gpu: str = REFERENCE_GPU) -> Profile:
    """A calibrated profile of ``model@gpu`` from the reference measurements."""
    from optplace.calibration.reference_fit import fit_profile_sections

    if model not in MODELS:
        raise ValueError(f"no architecture known for {model!r}; known: {', '.join(sorted(MODELS))}")
    arch, spec = MODELS[model], GPUS[gpu]
    mem = fit_memory(ref_dir / "kv_capacity_v1.csv", arch, spec)
    sections = fit_profile_sections(ref_dir, model)
    return Profile.model_validate(
        {
            "name": f"{model}@{gpu}",
            "model": model,
            "gpu": gpu,
            "calibrated": True,
            "source": SOURCE,
            "model_arch": arch.model_dump(),
            "gpu_spec": spec.model_dump(),
            "memory": mem.model_dump(),
            **sections,
            "supported_ranks": [8, 16, 32, 64],
        }
    )


def calibrate_reference(ref_dir: Path, out_dir: Path) -> list[Path]:
    """Write ``<model>@<gpu>.json`` into ``out_dir`` for every model of the reference data; the files
    appear together or not at all (fitted first, then renamed into place with signals held)."""
    from optplace.infra.outputs import atomic_files

    profiles = [build_profile(ref_dir, model) for model in reference_models(ref_dir) if model in MODELS]
    with atomic_files(out_dir) as tmp:
        for prof in profiles:
            tmp(f"{prof.name}.json").write_text(
                json.dumps(prof.model_dump(mode="json"), indent=1) + "\n", encoding="utf-8"
            )
    return [out_dir / f"{prof.name}.json" for prof in profiles]


def bundled_profiles_dir() -> Path:
    """The folder of the profiles shipped as package data (``optplace/specs/profiles``)."""
    import optplace.specs

    return Path(optplace.specs.__file__).resolve().parent / "profiles"
