"""SLO surrogate models: training from SLO sweeps (:mod:`optplace.surrogate.slo`), the shipped files, the query.

Two LightGBM models per profile over the capacity surrogates' feature row and its physics-derived
features (:mod:`optplace.surrogate.features`, :mod:`optplace.surrogate.physics`):

* ``violates`` — the probability that the GPU misses the default SLO; "meets" below the decision
  threshold, chosen by group CV on the training rows (:func:`~optplace.surrogate.training.cv_threshold`,
  never above 0.5: a false "meets" is the costly mistake for a planner);
* ``margin`` — log of the worst adapter's worst latency ÷ its bound (clipped to [1/100, 100]).

A recipe (``optplace/surrogate/recipes/slo/<profile>.yaml``) names the profile, the training and held-out
sweeps and the training seed; :func:`build_slo_recipe` runs it (sweeps resumed or reused when their
provenance matches) and writes ``<profile>.slo.json`` (both models as LightGBM text, the threshold, the
recipe hash, twin semantics version and profile hash, held-out metrics) and ``<profile>.slo-holdout.csv``
(the held-out rows, so ``optplace bench surrogate`` re-scores the shipped models without the twin).
:func:`load_slo_surrogate` / :func:`load_shipped_slo` read them back without LightGBM.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optplace.surrogate.features import (
    ALL_NAMES,
    BASE_NAMES,
    DERIVED_NAMES,
    FEATURE_INDEX,
    FEATURE_NAMES,
    SCHEMA_VERSION,
    check_schema,
    feature_row_from_parts,
)
from optplace.surrogate.slo import SLO_COLUMNS, SloDesign, read_slo_rows, run_slo_sweep, slo_design_from_dict
from optplace.surrogate.trees import Ensemble, ensemble_from_text

SLO_RECIPE_VERSION = 1
SLO_MODEL_FORMAT = 1
#: Boosting-round caps: the query (both models, derived features once) must stay within the solver's
#: 50 µs per row; group CV on the training rows lost no macro-F1 against more rounds at these caps.
SLO_ROUNDS_CAP = {"violates": 60, "margin": 60}
#: Margins are clipped to [1/MARGIN_CLIP, MARGIN_CLIP] before the log: beyond that only "far" matters.
MARGIN_CLIP = 100.0
#: What the trees split on: the capacity surrogates' choice (the row's base features and the derived ones;
#: the rate histogram only feeds the derived features), which also keeps LightGBM's per-row cost down.
#: Queueing features the SLO trees get on top (computed from an augmented row by :func:`slo_extra_row` /
#: :func:`slo_extra_many`): trees split on one feature at a time, and the latency tail turns on products
#: of load and burstiness. ``rho_burst`` = rho × burst factor (the load inside an MMPP burst, up to the
#: normal-state share); ``rho_kingman`` = rho / (1 − rho) × (1 + cv²) / 2 (Kingman's queueing-delay
#: factor, rho capped at 0.99); ``active_burst`` = expected active adapters per slot × burst factor.
EXTRA_NAMES: tuple[str, ...] = ("rho_burst", "rho_kingman", "active_burst")
MODEL_NAMES: tuple[str, ...] = BASE_NAMES + DERIVED_NAMES + EXTRA_NAMES
_N_AUG = len(ALL_NAMES)
_EXTRA_INDEX = {n: _N_AUG + k for k, n in enumerate(EXTRA_NAMES)}
_MODEL_COLS = [FEATURE_INDEX.get(n, _EXTRA_INDEX.get(n, -1)) for n in MODEL_NAMES]
_RHO, _APS, _CV, _BF = (FEATURE_INDEX[n] for n in ("rho_fluid", "active_per_slot", "arrival_cv", "burst_factor"))


def slo_extra_row(r: Sequence[float]) -> list[float]:
    """:data:`EXTRA_NAMES` of one augmented row (features + derived features)."""
    rho, cv, bf = r[_RHO], r[_CV], r[_BF]
    rc = min(rho, 0.99)
    return [rho * bf, rc / (1.0 - rc) * (1.0 + cv * cv) / 2.0, r[_APS] * bf]


def slo_extra_many(Xa: np.ndarray) -> np.ndarray:
    """:data:`EXTRA_NAMES` of many augmented rows, shape (n, len(EXTRA_NAMES))."""
    rho, cv, bf = Xa[:, _RHO], Xa[:, _CV], Xa[:, _BF]
    rc = np.minimum(rho, 0.99)
    return np.column_stack([rho * bf, rc / (1.0 - rc) * (1.0 + cv * cv) / 2.0, Xa[:, _APS] * bf])


def _full_many(phys: Any, X: np.ndarray) -> np.ndarray:
    Xa = phys.augment_many(np.asarray(X, dtype=np.float64))
    return np.hstack([Xa, slo_extra_many(Xa)])


_SLO_DIR = "slo"


@dataclass(frozen=True, slots=True)
class SloSweepStep:
    """One sweep of an SLO recipe."""

    name: str
    seed: int
    design: SloDesign


@dataclass(frozen=True, slots=True)
class SloRecipe:
    """A parsed SLO recipe; ``hash`` identifies its content (comments and layout do not count)."""

    path: Path
    profile: str
    sweeps: tuple[SloSweepStep, ...]
    holdout_sweeps: tuple[SloSweepStep, ...]
    training_seed: int
    hash: str


@dataclass(frozen=True, slots=True)
class SloPrediction:
    """One GPU's predicted SLO verdict: probability of a violation, the verdict, and the margin."""

    p_violates: float
    meets: bool
    margin: float


def is_slo_recipe(doc: Any) -> bool:
    """Whether a parsed YAML document is an SLO recipe (not a capacity-surrogate one)."""
    return isinstance(doc, dict) and "slo_recipe_version" in doc


def load_slo_recipe(path: Path | str) -> SloRecipe:
    """Parse and check an SLO recipe file."""
    import yaml

    from optplace.surrogate.recipe import recipe_hash

    p = Path(path)
    doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not is_slo_recipe(doc) or doc["slo_recipe_version"] != SLO_RECIPE_VERSION:
        raise ValueError(f"{p}: not an SLO surrogate recipe (slo_recipe_version {SLO_RECIPE_VERSION} expected)")

    def steps(items: Any) -> tuple[SloSweepStep, ...]:
        out = []
        for s in items or []:
            if not isinstance(s, dict) or set(s) - {"name", "seed", "design"} or "name" not in s or "seed" not in s:
                raise ValueError(f"{p}: a sweep is a mapping of name, seed and design, got {s!r}")
            out.append(SloSweepStep(str(s["name"]), int(s["seed"]), slo_design_from_dict(s.get("design") or {})))
        return tuple(out)

    sweeps, hold = steps(doc.get("sweeps")), steps((doc.get("holdout") or {}).get("sweeps"))
    names = [s.name for s in sweeps + hold]
    if not sweeps or len(set(names)) != len(names) or not isinstance(doc.get("profile"), str):
        raise ValueError(f"{p}: an SLO recipe needs a profile, at least one sweep, and distinct sweep names")
    unknown = set(doc) - {"slo_recipe_version", "profile", "sweeps", "holdout", "training", "note"}
    if unknown:
        raise ValueError(f"{p}: unknown keys {sorted(unknown)}")
    return SloRecipe(p, doc["profile"], sweeps, hold, int((doc.get("training") or {}).get("seed", 0)), recipe_hash(doc))


@dataclass(frozen=True, slots=True)
class SloRows:
    """SLO sweep rows as arrays: feature rows, verdicts (1 = violates), log margins, groups, pass."""

    X: np.ndarray
    violates: np.ndarray
    log_margin: np.ndarray
    groups: np.ndarray
    pass_no: np.ndarray

    def __len__(self) -> int:
        return int(self.violates.size)


def rows_from_dicts(rows: Sequence[dict[str, str]], group_offset: int = 0) -> SloRows:
    """Arrays from SLO sweep rows (CSV dicts); groups offset so several sweeps never share one."""
    X = np.array([[float(r[n]) for n in FEATURE_NAMES] for r in rows], dtype=np.float64).reshape(-1, len(FEATURE_NAMES))
    m = np.array([max(float(r["ttft_ratio"]), float(r["tpot_ratio"])) for r in rows], dtype=np.float64)
    return SloRows(
        X,
        np.array([0.0 if int(r["ok"]) else 1.0 for r in rows]),
        np.log(np.clip(m, 1.0 / MARGIN_CLIP, MARGIN_CLIP)),
        np.array([int(r["group"]) + group_offset for r in rows], dtype=np.int64),
        np.array([int(r["pass"]) for r in rows], dtype=np.int64),
    )


def load_slo_rows(paths: Sequence[Path]) -> SloRows:
    """Rows of several SLO sweeps (``<base>.csv``), in index order, groups kept apart per sweep."""
    parts = []
    for k, p in enumerate(paths):
        rows = read_slo_rows(Path(p).with_suffix(".csv"))
        parts.append(rows_from_dicts([rows[i] for i in sorted(rows)], group_offset=k * 1_000_000))
    return SloRows(*(np.concatenate([getattr(q, f) for q in parts]) for f in SloRows.__slots__))


def _fit_text(params: dict[str, Any], X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, cap: int) -> str:
    from optplace.surrogate.training import fit_booster

    return str(fit_booster(params, X, y, groups, seed, cap).model_to_string())


def verdict_figures(violates: np.ndarray, pred_violates: np.ndarray) -> dict[str, float]:
    """Macro-F1 of the verdict, accuracy, and the false "meets" rate (violations predicted to meet)."""
    from optplace.surrogate.evaluation import macro_f1

    y, p = violates > 0.5, pred_violates > 0.5
    return {
        "macro_f1": float(macro_f1(y, p)),
        "accuracy": float(np.mean(y == p)),
        "false_meets_rate": float(np.mean(~p[y])) if y.any() else 0.0,
        "false_violates_rate": float(np.mean(p[~y])) if (~y).any() else 0.0,
        "violating_share": float(np.mean(y)),
    }


def margin_figures(log_true: np.ndarray, log_pred: np.ndarray) -> dict[str, float]:
    """Error of the predicted margin: median and p90 of |log ratio| (as a factor), within ±20 % of 1."""
    err = np.abs(log_true - log_pred)
    near = np.abs(log_true) <= math.log(1.25)
    return {
        "margin_median_factor": float(np.exp(np.median(err))) if err.size else math.nan,
        "margin_p90_factor": float(np.exp(np.quantile(err, 0.9))) if err.size else math.nan,
        "margin_near_boundary_median_factor": float(np.exp(np.median(err[near]))) if near.any() else math.nan,
        "margin_near_boundary_rows": int(near.sum()),
    }


def train_slo(
    profile: str, train: SloRows, seed: int = 0, holdout: SloRows | None = None
) -> tuple[dict[str, str], float, dict[str, Any]]:
    """Train both models on ``train``; returns (LightGBM texts by model, threshold, metrics)."""
    from optplace.surrogate.physics import physics_for
    from optplace.surrogate.training import CLASSIFIER_PARAMS, REGRESSION_PARAMS, cv_threshold

    phys = physics_for(profile)
    Xa = _full_many(phys, train.X)[:, _MODEL_COLS]
    texts = {
        "violates": _fit_text(CLASSIFIER_PARAMS, Xa, train.violates, train.groups, seed, SLO_ROUNDS_CAP["violates"]),
        "margin": _fit_text(REGRESSION_PARAMS, Xa, train.log_margin, train.groups, seed + 1, SLO_ROUNDS_CAP["margin"]),
    }
    threshold, cv = cv_threshold(Xa, train.violates, train.groups, seed, rounds=SLO_ROUNDS_CAP["violates"])
    # the shared CV routine names the positive class "starved"; here it is "violates"
    cv = {k.replace("false_not_starved", "false_meets"): v for k, v in cv.items()}
    metrics: dict[str, Any] = {"n_train": len(train), "threshold_cv": cv}
    if holdout is not None and len(holdout):
        sur = SloSurrogate(_ensembles(texts, profile), threshold, {})
        pv, lm = sur.predict_many(holdout.X)
        metrics["holdout"] = {
            "n": len(holdout),
            **verdict_figures(holdout.violates, (pv >= threshold).astype(float)),
            **margin_figures(holdout.log_margin, lm),
        }
    return texts, threshold, metrics


def _ensembles(texts: dict[str, str], profile: str) -> dict[str, Ensemble]:
    from optplace.surrogate.physics import physics_for

    row_index = tuple(_MODEL_COLS)
    phys = physics_for(profile)
    return {
        k: ensemble_from_text(
            t, MODEL_NAMES, row_index, "sigmoid" if k == "violates" else "identity", phys, len(FEATURE_NAMES)
        )
        for k, t in texts.items()
    }


class SloSurrogate:
    """A loaded SLO surrogate: ``meets`` / ``predict_row`` for one GPU, ``predict_many`` for many rows."""

    def __init__(self, models: dict[str, Ensemble], threshold: float, meta: dict[str, Any]) -> None:
        self.models = models
        self.threshold = float(threshold)
        self.meta = meta
        v, m = models["violates"], models["margin"]
        self._v, self._m, self._phys = v, m, v.physics

    def full_row(self, row: Sequence[float]) -> list[float]:
        """A feature row (:data:`~optplace.surrogate.features.FEATURE_NAMES` order) with the physics and
        SLO features the models also read appended: the row their ensembles score."""
        r = list(row)
        r = r + self._phys.derive_row(r)
        return r + slo_extra_row(r)

    def predict_row(self, row: Sequence[float]) -> SloPrediction:
        """Prediction for one feature row (:data:`~optplace.surrogate.features.FEATURE_NAMES` order);
        the derived features are computed once for both models."""
        r = self.full_row(row)
        p = self._v.predict_row(r)
        return SloPrediction(p, p < self.threshold, math.exp(self._m.raw_row(r)))

    def meets(
        self,
        rates_rps: Sequence[float],
        ranks: Sequence[int],
        max_loras: int,
        mean_input_tokens: float,
        mean_output_tokens: float,
        arrival_cv: float = 1.0,
        burst_factor: float = 1.0,
    ) -> SloPrediction:
        """Whether one GPU serving these adapters (rates, ranks) with ``max_loras`` slots meets the default SLO."""
        row = feature_row_from_parts(
            rates_rps, ranks, max_loras, mean_input_tokens, mean_output_tokens, arrival_cv, burst_factor
        )
        return self.predict_row(row.tolist())

    def predict_many(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probability of a violation, predicted log margin) of many feature rows."""
        Xa = _full_many(self._phys, X)
        return self._v.predict(Xa), self._m.raw(Xa)

    def meets_many(self, X: np.ndarray) -> np.ndarray:
        """The verdict ("meets") of many feature rows."""
        return self.predict_many(X)[0] < self.threshold


def shipped_slo_path(profile_name: str) -> Path:
    """The SLO model shipped for a bundled profile (``<profile>.slo.json`` next to the capacity models)."""
    from optplace.surrogate.runtime import MODELS_DIR

    return MODELS_DIR / f"{profile_name.replace('/', '_')}.slo.json"


def slo_recipe_path(profile_name: str) -> Path:
    """The recipe of a bundled profile's SLO model."""
    from optplace.surrogate.runtime import RECIPES_DIR

    return RECIPES_DIR / _SLO_DIR / f"{profile_name.replace('/', '_')}.yaml"


def load_slo_surrogate(path: Path | str) -> SloSurrogate:
    """Read an SLO model file (refused, :class:`~optplace.surrogate.runtime.SurrogateRefused`, when it is of
    another format or schema)."""
    from optplace.surrogate.runtime import SurrogateRefused

    p = Path(path)
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
        if meta.get("format") != "optplace-slo-surrogate" or meta.get("format_version") != SLO_MODEL_FORMAT:
            raise SurrogateRefused(f"{p}: not an SLO surrogate of format {SLO_MODEL_FORMAT}")
        check_schema([n for n in meta["feature_names"] if n in FEATURE_NAMES], int(meta["feature_schema_version"]))
        if tuple(meta["feature_names"]) != MODEL_NAMES:
            raise SurrogateRefused(f"{p}: trained on other feature names than this optplace builds")
        models = _ensembles(meta["models"], meta["profile"])
    except SurrogateRefused:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SurrogateRefused(f"{p}: not a readable SLO surrogate ({type(e).__name__}: {e})") from e
    return SloSurrogate(models, float(meta["threshold"]), {k: v for k, v in meta.items() if k != "models"})


def load_shipped_slo(profile: Any) -> SloSurrogate:
    """The SLO surrogate shipped for ``profile`` (a Profile or bundled name), checked against the profile's
    numbers and the twin in use (FileNotFoundError when none is shipped)."""
    from optplace.surrogate.provenance import profile_hash
    from optplace.surrogate.runtime import check_compatible

    if isinstance(profile, str):
        from optplace.specs import bundled_profiles

        profile = bundled_profiles()[profile]
    p = shipped_slo_path(profile.name)
    if not p.exists():
        raise FileNotFoundError(f"no shipped SLO surrogate for profile {profile.name!r}")
    sur = load_slo_surrogate(p)
    check_compatible(sur.meta, profile.name, profile_hash(profile.model_dump(mode="json")), f"SLO surrogate {p.name}")
    return sur


@dataclass(frozen=True, slots=True)
class SloBuildReport:
    """What :func:`build_slo_recipe` did: rows per sweep (total, run now), the model file, held-out metrics."""

    steps: tuple[tuple[str, int, int], ...]
    model_json: Path
    metrics: dict[str, Any]


def build_slo_recipe(
    recipe: SloRecipe,
    out_dir: Path | str,
    sweeps_dir: Path | str | None = None,
    with_holdout: bool = True,
    on_event: Callable[[str], None] = lambda _: None,
) -> SloBuildReport:
    """Run an SLO recipe end to end: sweeps (resumed/reused), training, threshold, ``<profile>.slo.json``
    and, with the held-out sweeps, ``<profile>.slo-holdout.csv``."""
    from optplace.surrogate.twin_eval import TwinEvaluator

    out = Path(out_dir)
    sdir = Path(sweeps_dir) if sweeps_dir is not None else out / "sweeps"
    steps = [*recipe.sweeps, *(recipe.holdout_sweeps if with_holdout else ())]
    done = []
    for k, s in enumerate(steps, 1):
        on_event(f"[{k}/{len(steps)}] SLO sweep {s.name} ({s.design.n_rows} rows)")
        total, new = run_slo_sweep(recipe.profile, sdir / s.name, s.design, s.seed)
        done.append((s.name, total, new))
        on_event(f"      {total} rows ({new} new)")
    train = load_slo_rows([sdir / s.name for s in recipe.sweeps])
    hold_paths = [sdir / s.name for s in recipe.holdout_sweeps] if with_holdout else []
    hold = load_slo_rows(hold_paths) if hold_paths else None
    on_event(f"training on {len(train)} rows")
    texts, threshold, metrics = train_slo(recipe.profile, train, recipe.training_seed, hold)
    ident = TwinEvaluator(recipe.profile).describe()
    from optplace.specs.model import Slo

    meta = {
        "format": "optplace-slo-surrogate",
        "format_version": SLO_MODEL_FORMAT,
        "profile": recipe.profile,
        "profile_hash": ident["profile_hash"],
        "twin_semantics_version": ident["twin_semantics_version"],
        "recipe_hash": recipe.hash,
        "slo": {"scope": "adapter", "bounds": dict(Slo().bounds()), "stable_queue": True, "warmup_frac": 0.1},
        "window_s": sorted({s.design.duration_s for s in recipe.sweeps}),
        "feature_schema_version": SCHEMA_VERSION,
        "feature_names": list(MODEL_NAMES),
        "threshold": threshold,
        "margin": f"log(max over adapters and metrics of p99 / bound), clipped to [1/{MARGIN_CLIP:g}, {MARGIN_CLIP:g}]",
        "metrics": metrics,
        "models": texts,
    }
    out.mkdir(parents=True, exist_ok=True)
    model_json = out / f"{recipe.profile.replace('/', '_')}.slo.json"
    model_json.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if hold_paths:
        _write_holdout(out / f"{recipe.profile.replace('/', '_')}.slo-holdout.csv", hold_paths)
    on_event(f"wrote {model_json}")
    return SloBuildReport(tuple(done), model_json, metrics)


#: Columns of the shipped held-out file: the sweep's columns without the run's wall time.
HOLDOUT_COLUMNS: tuple[str, ...] = ("sweep", *(c for c in SLO_COLUMNS if c != "wall_s"))


def _write_holdout(path: Path, sweeps: Sequence[Path]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HOLDOUT_COLUMNS)
        for p in sweeps:
            rows = read_slo_rows(Path(p).with_suffix(".csv"))
            for i in sorted(rows):
                w.writerow([Path(p).name, *(rows[i][c] for c in HOLDOUT_COLUMNS[1:])])


def shipped_holdout(profile_name: str) -> list[dict[str, str]]:
    """The held-out rows shipped next to a bundled profile's SLO model (empty when none)."""
    p = shipped_slo_path(profile_name).with_name(f"{profile_name.replace('/', '_')}.slo-holdout.csv")
    if not p.exists():
        return []
    with p.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def has_default_slo(scenario: Any) -> bool:
    """Whether a scenario is judged by exactly the SLO the shipped SLO models learned: the default bounds
    per adapter (no adapter or group bounds of its own) and the default warm-up."""
    from optplace.specs.model import Slo

    slo = getattr(scenario, "slo", None)
    if slo is None or slo.scope != "adapter" or slo.warmup_s is not None or slo.bounds() != Slo().bounds():
        return False
    per = scenario.adapter_slos()
    return per is not None and all(b.bounds() == slo.bounds() for b in per)
