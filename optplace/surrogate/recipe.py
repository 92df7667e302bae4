"""Recipes: everything that makes a shipped surrogate, in one file, and the build that runs it end to end.

A recipe (``optplace/surrogate/recipes/<profile>.yaml`` for the shipped ones) names the profile, the
training sweeps (design and sweep seed each), their seed replicates (source sweep, salt, subset rule),
the held-out sweeps and their replicates, and the training options (training seed, boosting-round caps,
LightGBM parameters, the starvation-threshold rule).  :func:`build_recipe` runs it: sweeps → replicates →
dataset → training → threshold → model files, every step resumable (a sweep file whose provenance
matches the recipe is reused or continued; one that does not is refused, never overwritten).

The model files record the recipe's hash (:func:`recipe_hash`, over its parsed content, so comments and
layout do not count), the twin semantics version and the profile hash.  The training options are
checked against the code's, because the code, not the recipe, sets them: a recipe that asks for other
parameters is refused rather than silently trained with these.  docs/surrogate-training.md explains
why the shipped recipes are as they are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from optplace.surrogate.design import REPLICATE_SUBSETS, SweepDesign, design_from_dict

RECIPE_VERSION = 1

_DESIGN_FIELDS = {f.name for f in fields(SweepDesign)}


@dataclass(frozen=True, slots=True)
class SweepStep:
    """One sweep of a recipe: its file name (without suffix), sweep seed and design."""

    name: str
    seed: int
    design: SweepDesign


@dataclass(frozen=True, slots=True)
class ReplicateStep:
    """A seed replicate of a recipe sweep (``of``): salt ≥ 1 and the subset of rows it re-runs."""

    name: str
    of: str
    salt: int
    subset: str


@dataclass(frozen=True, slots=True)
class Recipe:
    """A parsed recipe (see the module docstring); ``hash`` identifies its content."""

    path: Path
    profile: str
    sweeps: tuple[SweepStep, ...]
    replicates: tuple[ReplicateStep, ...]
    holdout_sweeps: tuple[SweepStep, ...]
    holdout_replicates: tuple[ReplicateStep, ...]
    training: dict[str, Any]
    note: str | None
    hash: str

    def steps(self, with_holdout: bool = True) -> list[SweepStep | ReplicateStep]:
        """The twin work in the order it runs: training sweeps, their replicates, then the held-out ones."""
        out: list[SweepStep | ReplicateStep] = [*self.sweeps, *self.replicates]
        if with_holdout:
            out += [*self.holdout_sweeps, *self.holdout_replicates]
        return out


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one sweep or replicate step did: rows in its file, rows evaluated now."""

    name: str
    rows_total: int
    rows_new: int


@dataclass(frozen=True, slots=True)
class BuildReport:
    """The outcome of :func:`build_recipe`."""

    out_dir: Path
    steps: tuple[StepResult, ...]
    model_json: Path
    metrics: dict[str, float]

    @property
    def rows_new(self) -> int:
        """Twin runs this build made (0 when everything was reused)."""
        return sum(s.rows_new for s in self.steps)


def recipe_hash(doc: dict[str, Any]) -> str:
    """Short hash of a recipe's parsed content (keys sorted; comments and layout do not count)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def _sweep(d: dict[str, Any], where: str) -> SweepStep:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: a sweep is a mapping (name, seed, design), got {d!r}")
    unknown = set(d) - {"name", "seed", "design"}
    bad = set(d.get("design", {})) - _DESIGN_FIELDS
    if unknown or bad or "name" not in d or "seed" not in d:
        raise ValueError(
            f"{where}: a sweep needs name, seed and design ({sorted(_DESIGN_FIELDS)}); unknown: {sorted(unknown | bad)}"
        )
    return SweepStep(str(d["name"]), int(d["seed"]), design_from_dict(d.get("design", {})))


def _replicate(d: dict[str, Any], names: set[str], where: str) -> ReplicateStep:
    if not isinstance(d, dict) or "name" not in d or "of" not in d:
        raise ValueError(f"{where}: a replicate needs name and of (and optionally salt, subset): {d}")
    r = ReplicateStep(str(d["name"]), str(d["of"]), int(d.get("salt", 1)), str(d.get("subset", "all")))
    if r.of not in names:
        raise ValueError(f"{where}: replicate {r.name} of {r.of!r}, which is not a sweep of this section")
    if r.subset not in REPLICATE_SUBSETS or r.salt < 1:
        raise ValueError(f"{where}: replicate {r.name}: subset must be one of {REPLICATE_SUBSETS}, salt >= 1")
    return r


def load_recipe(path: Path | str) -> Recipe:
    """Parse and check a recipe file."""
    import yaml

    p = Path(path)
    doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("recipe_version") != RECIPE_VERSION:
        raise ValueError(f"{p}: not a surrogate recipe (recipe_version {RECIPE_VERSION} expected)")
    sweeps = tuple(_sweep(s, str(p)) for s in doc.get("sweeps", []))
    hold = doc.get("holdout") or {}
    hsweeps = tuple(_sweep(s, str(p)) for s in hold.get("sweeps", []))
    reps = tuple(_replicate(r, {s.name for s in sweeps}, str(p)) for r in doc.get("replicates", []))
    hreps = tuple(_replicate(r, {s.name for s in hsweeps}, str(p)) for r in hold.get("replicates", []))
    names = [s.name for s in sweeps + hsweeps] + [r.name for r in reps + hreps]
    if not sweeps or len(set(names)) != len(names):
        raise ValueError(f"{p}: a recipe needs at least one sweep, and distinct step names")
    if not isinstance(doc.get("profile"), str):
        raise ValueError(f"{p}: the recipe names no profile")
    return Recipe(
        p,
        doc["profile"],
        sweeps,
        reps,
        hsweeps,
        hreps,
        dict(doc.get("training") or {}),
        doc.get("note"),
        recipe_hash(doc),
    )


def check_training_options(recipe: Recipe) -> dict[str, int]:
    """The recipe's boosting-round caps, after checking its other training options equal the code's."""
    from optplace.surrogate.training import (
        CLASSIFIER_PARAMS,
        REGRESSION_PARAMS,
        ROUNDS_CAP,
        THRESHOLD_FOLDS,
        THRESHOLD_GRID,
    )

    tr = recipe.training
    code = {
        "regression": REGRESSION_PARAMS,
        "classifier": CLASSIFIER_PARAMS,
        "threshold": {
            "rule": "group-cv-macro-f1",
            "folds": THRESHOLD_FOLDS,
            "grid": [float(g) for g in THRESHOLD_GRID],
        },
    }
    for key, want in code.items():
        if key in tr and json.loads(json.dumps(tr[key])) != json.loads(json.dumps(want)):
            raise ValueError(f"{recipe.path}: training.{key} is {tr[key]}, this optplace trains with {want}")
    caps = {**ROUNDS_CAP, **{str(k): int(v) for k, v in (tr.get("rounds_cap") or {}).items()}}
    return caps


def build_recipe(
    recipe: Recipe,
    out_dir: Path | str,
    sweeps_dir: Path | str | None = None,
    executor: Any = None,
    with_holdout: bool = True,
    progress: bool = True,
    on_event: Callable[[str], None] = lambda _: None,
) -> BuildReport:
    """Run a recipe end to end and write the model files into ``out_dir`` (``<profile>.*``, as shipped).

    Sweep and replicate files go to ``sweeps_dir`` (default ``out_dir/sweeps``) under their recipe
    names; existing ones are resumed or reused when their provenance matches the recipe and the twin in
    use, refused otherwise.  ``with_holdout=False`` skips the held-out sweeps: the model files and the
    threshold are the same (held-out rows never shape them), only the recorded metrics are missing.
    """
    from optplace.surrogate.execution import LocalExecutor, run_replicate, run_sweep
    from optplace.surrogate.training import train
    from optplace.surrogate.twin_eval import TwinEvaluator

    caps = check_training_options(recipe)
    out = Path(out_dir)
    sdir = Path(sweeps_dir) if sweeps_dir is not None else out / "sweeps"
    sdir.mkdir(parents=True, exist_ok=True)
    ev = TwinEvaluator(recipe.profile)
    ex = executor or LocalExecutor()
    results: list[StepResult] = []
    steps = recipe.steps(with_holdout)
    for k, step in enumerate(steps, 1):
        on_event(f"[{k}/{len(steps)}] {'sweep' if isinstance(step, SweepStep) else 'replicate'} {step.name}")
        if isinstance(step, SweepStep):
            res = run_sweep(ev, sdir / step.name, step.design, seed=step.seed, executor=ex, progress=progress)
        else:
            res = run_replicate(
                ev, sdir / step.of, sdir / step.name, salt=step.salt, executor=ex, progress=progress, subset=step.subset
            )
        results.append(StepResult(step.name, res.rows_total, res.rows_new))
        on_event(f"      {res.rows_total} rows ({res.rows_new} new, {res.wall_s:.0f} s)")
    on_event("training")
    paths = [sdir / s.name for s in recipe.sweeps] + [sdir / r.name for r in recipe.replicates]
    hold = [sdir / s.name for s in recipe.holdout_sweeps] if with_holdout else []
    hold_reps = [sdir / s.name for s in recipe.holdout_replicates] if with_holdout else []
    rep = train(
        paths,
        out,
        seed=int(recipe.training.get("seed", 0)),
        prefix=f"{recipe.profile}.",
        holdout=hold or None,
        holdout_replicates=hold_reps,
        note=recipe.note,
        rounds_cap=caps,
        recipe_hash=recipe.hash,
        test_frac=0.2 if hold else 0.0,
    )
    model_json = out / f"{recipe.profile}.surrogate.json"
    on_event(f"wrote {model_json} ({rep.n_train} training rows, {rep.n_test} held out)")
    return BuildReport(out, tuple(results), model_json, rep.metrics)
