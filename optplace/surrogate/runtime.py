"""What ``solve`` loads: a trained surrogate (four tree ensembles evaluated in NumPy / pure Python).

Four models per profile, over the feature schema of :mod:`optplace.surrogate.features`:
``throughput`` (``log(delivered / offered)``), ``itl`` and ``ttft_p99`` (log latencies) and
``starved`` (the probability of the twin's starvation verdict, "starved" from the decision threshold
recorded with the models).  Models trained on a twin sweep also split on the profile-physics
features of :mod:`optplace.surrogate.physics`, which a loaded :class:`Surrogate` derives from the row
itself, so callers pass schema rows.

A model directory holds ``<name>.txt`` (LightGBM text, read by :mod:`optplace.surrogate.trees`
without LightGBM) and ``surrogate.json`` (schema, transforms, the twin semantics version and profile
hash it was trained under, held-out metrics, provenance).  :func:`check_compatible` refuses a
surrogate whose twin version or profile differs from the ones in use.  Nothing here imports
LightGBM or scikit-learn (training does: :mod:`optplace.surrogate.training`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optplace.surrogate.config import GpuCase
from optplace.surrogate.features import (
    DERIVED_NAMES,
    FEATURE_INDEX,
    FEATURE_NAMES,
    RATE_SCALED_NAMES,
    check_schema,
    feature_row,
)
from optplace.surrogate.trees import Ensemble, ensemble_from_text

MODEL_FORMAT_VERSION = 2
MODELS_DIR = Path(__file__).parent / "models"
#: The recipes of the shipped models (:mod:`optplace.surrogate.recipe`), one per profile.
RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass(frozen=True, slots=True)
class Prediction:
    """Surrogate answer for one GPU configuration."""

    throughput_tok_s: float
    offered_tok_s: float
    delivered_frac: float
    itl_ms: float
    ttft_p99_ms: float
    p_starved: float
    starved: bool

    @property
    def throughput_loss(self) -> float:
        """Predicted 1 − delivered / offered."""
        return 1.0 - self.delivered_frac


class Surrogate:
    """A loaded set of capacity models for one profile (see module docstring).

    Beyond the largest offered load seen in training (``offered_max``) trees would extrapolate the
    delivered *fraction* as a constant, i.e. throughput growing without bound.  A GPU's throughput
    saturates instead, so there the models are evaluated at the same mix scaled down to
    ``offered_max`` and the throughput found there is kept (fraction = that ÷ offered).  Feasible
    (non-starved) configurations lie well inside the domain, so this never changes a feasible
    answer, nor the MILP encodings, which encode the trees themselves.
    """

    def __init__(self, directory: Path, meta: dict[str, Any], models: dict[str, Ensemble], physics: Any = None) -> None:
        self.directory = directory
        self.meta = meta
        self.models = models
        self.physics = physics
        self.feature_names: tuple[str, ...] = tuple(meta["feature_names"])
        self.threshold = float(meta.get("starved_threshold", 0.5))
        self.max_loss = float(meta.get("max_throughput_loss", 0.10))
        self.offered_max = float(meta.get("offered_max") or math.inf)
        self._offered = FEATURE_INDEX["offered_tok_s"]
        self._load_idx = [FEATURE_INDEX[n] for n in RATE_SCALED_NAMES]
        self._logit_thr = math.log(self.threshold / (1.0 - self.threshold))
        self._fns = {k: m._fn for k, m in models.items()}

    @property
    def metrics(self) -> dict[str, float]:
        """Held-out metrics recorded at training time."""
        return dict(self.meta.get("metrics", {}))

    def _in_domain(self, r: list[float]) -> tuple[list[float], float]:
        """The row the trees see (scaled into the training load range, with derived features) and the scale."""
        offered = r[self._offered]
        k = 1.0
        if offered > self.offered_max:
            k = self.offered_max / offered
            r = list(r)
            for j in self._load_idx:
                r[j] *= k
        if self.physics is not None:
            r = list(r) + self.physics.derive_row(r)
        return r, k

    def augment(self, X: np.ndarray) -> np.ndarray:
        """Full rows followed by their derived features (the rows unchanged without physics)."""
        X = np.asarray(X, dtype=np.float64)
        return self.physics.augment_many(X) if self.physics is not None else X

    def predict_row(self, row: Sequence[float]) -> Prediction:
        """Predict for one full feature row (list or array in FEATURE_NAMES order)."""
        r0 = row.tolist() if isinstance(row, np.ndarray) else list(row)
        offered = r0[self._offered]
        r, k = self._in_domain(r0)
        f = self._fns
        frac = min(math.exp(f["throughput"](r)), 1.0) * k
        s = f["starved"](r)
        return Prediction(
            throughput_tok_s=offered * frac,
            offered_tok_s=offered,
            delivered_frac=frac,
            itl_ms=math.exp(f["itl"](r)),
            ttft_p99_ms=math.exp(f["ttft_p99"](r)),
            p_starved=1.0 / (1.0 + math.exp(-s)),
            starved=s >= self._logit_thr or (k < 1.0 and frac < 1.0 - self.max_loss),
        )

    def predict(self, config: GpuCase) -> Prediction:
        """Predict for one GPU configuration."""
        return self.predict_row(feature_row(config).tolist())

    def throughput_row(self, row: list[float]) -> float:
        """Predicted delivered tokens/s only (the cheapest call; row is a list of floats)."""
        r, k = self._in_domain(row)
        return row[self._offered] * k * min(math.exp(self._fns["throughput"](r)), 1.0)

    def starved_row(self, row: list[float]) -> bool:
        """Predicted starvation verdict only (row is a list of floats)."""
        r, k = self._in_domain(row)
        if self._fns["starved"](r) >= self._logit_thr:
            return True
        return k < 1.0 and k * math.exp(self._fns["throughput"](r)) < 1.0 - self.max_loss

    def capacity_row(self, row: list[float]) -> tuple[float, bool]:
        """(predicted delivered tokens/s, starved) with one feature derivation (the solver's question)."""
        r, k = self._in_domain(row)
        frac = min(math.exp(self._fns["throughput"](r)), 1.0) * k
        starved = self._fns["starved"](r) >= self._logit_thr or (k < 1.0 and frac < 1.0 - self.max_loss)
        return row[self._offered] * frac, starved

    def capacity_many(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predicted delivered tokens/s, starved) for many full rows, deriving the features once."""
        offered, k, Xa, frac = self._many_in_domain(X)
        starved = (self.models["starved"].raw(Xa) >= self._logit_thr) | ((k < 1.0) & (frac < 1.0 - self.max_loss))
        return offered * frac, starved

    def _many_in_domain(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(offered, k, augmented rows, delivered fraction) for many rows: loads beyond the training range
        are scaled down by ``k`` (the vectorised form of ``_in_domain``) and the fraction scaled back."""
        X = np.asarray(X, dtype=np.float64)
        offered = X[:, self._offered]
        k = np.minimum(1.0, self.offered_max / np.where(offered > 0, offered, 1.0))
        if np.any(k < 1.0):
            X = X.copy()
            X[:, self._load_idx] *= k[:, None]
        Xa = self.augment(X)
        frac = np.minimum(np.exp(self.models["throughput"].raw(Xa)), 1.0) * k
        return offered, k, Xa, frac

    def predict_many(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Vectorised predictions for full feature rows: arrays keyed like :class:`Prediction`."""
        offered, k, Xa, frac = self._many_in_domain(X)
        s = self.models["starved"].raw(Xa)
        return {
            "throughput_tok_s": offered * frac,
            "offered_tok_s": offered,
            "delivered_frac": frac,
            "itl_ms": np.exp(self.models["itl"].raw(Xa)),
            "ttft_p99_ms": np.exp(self.models["ttft_p99"].raw(Xa)),
            "p_starved": 1.0 / (1.0 + np.exp(-s)),
            "starved": (s >= self._logit_thr) | ((k < 1.0) & (frac < 1.0 - self.max_loss)),
        }


class SurrogateRefused(ValueError):
    """A surrogate file that must not be used for the profile in use; ``str()`` is the one-line reason."""


def rebuild_hint(profile_name: str) -> str:
    """The command that rebuilds a surrogate for a profile (its recipe when the profile is bundled)."""
    recipe = RECIPES_DIR / f"{profile_name.replace('/', '_')}.yaml"
    shown = f"optplace/surrogate/recipes/{recipe.name}" if recipe.exists() else "RECIPE.yaml"
    return f"optplace surrogate build {shown} --out DIR"


def load_surrogate(path: Path | str) -> Surrogate:
    """Load models written by :func:`~optplace.surrogate.training.train`: a directory holding
    ``surrogate.json``, or that JSON.  A file of another format is refused (:class:`SurrogateRefused`)."""
    p = Path(path)
    meta_path = p / "surrogate.json" if p.is_dir() else p
    d = meta_path.parent
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or meta.get("format_version") != MODEL_FORMAT_VERSION:
            got = meta.get("format_version") if isinstance(meta, dict) else type(meta).__name__
            raise SurrogateRefused(
                f"{meta_path}: surrogate format {got}, this optplace reads format {MODEL_FORMAT_VERSION}"
            )
        names = tuple(meta["feature_names"])
        check_schema(names, int(meta["feature_schema_version"]))
        model_files = {name: (d / info["file"]).read_text() for name, info in meta["models"].items()}
    except SurrogateRefused:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SurrogateRefused(f"{meta_path}: not a readable surrogate ({type(e).__name__}: {e})") from e
    row_index = tuple(FEATURE_INDEX[n] for n in names)
    physics = None
    if set(names) & set(DERIVED_NAMES):
        from optplace.surrogate.physics import physics_for

        physics = physics_for((meta.get("physics") or {})["profile"])
    models = {
        name: ensemble_from_text(
            text, names, row_index, "sigmoid" if name == "starved" else "identity", physics, len(FEATURE_NAMES)
        )
        for name, text in model_files.items()
    }
    return Surrogate(d, meta, models, physics)


def check_compatible(meta: dict[str, Any], profile_name: str, profile_hash_now: str, where: str = "surrogate") -> None:
    """Refuse (:class:`SurrogateRefused`, one line naming the rebuild command) a surrogate trained under
    another twin semantics version or on other profile numbers than the ones in use."""
    from optplace.twin.version import TWIN_SEMANTICS_VERSION

    hint = rebuild_hint(profile_name)
    twin = meta.get("twin_semantics_version")
    if twin != TWIN_SEMANTICS_VERSION:
        raise SurrogateRefused(
            f"{where}: trained under twin semantics version {twin}, the twin is at "
            f"{TWIN_SEMANTICS_VERSION}; rebuild: {hint}"
        )
    trained = meta.get("profile_hash")
    if trained != profile_hash_now:
        raise SurrogateRefused(
            f"{where}: trained on profile {meta.get('profile')!r} with hash {trained}, the "
            f"profile in use ({profile_name!r}) has hash {profile_hash_now} (other numbers); "
            f"rebuild: {hint}"
        )


def shipped_model_path(profile_name: str) -> Path:
    """Metadata JSON of the model shipped for a bundled profile (``<profile>.surrogate.json``)."""
    return MODELS_DIR / f"{profile_name.replace('/', '_')}.surrogate.json"


def load_shipped(profile: Any) -> Surrogate:
    """The surrogate shipped as package data for ``profile`` (a :class:`~optplace.specs.Profile`, or a
    bundled profile's name), checked against that profile's numbers and the twin in use.

    Raises FileNotFoundError when none is shipped under the profile's name, and :class:`SurrogateRefused`
    (one line) when the shipped file is of another format, or was trained under another twin semantics
    version or on a profile with the same name but other numbers (a recalibrated profile).
    """
    from optplace.surrogate.provenance import profile_hash

    if isinstance(profile, str):
        from optplace.specs import bundled_profiles

        profs = bundled_profiles()
        if profile not in profs:
            raise FileNotFoundError(f"no bundled profile {profile!r}")
        profile = profs[profile]
    d = shipped_model_path(profile.name)
    if not d.exists():
        raise FileNotFoundError(
            f"no shipped surrogate for profile {profile.name!r}; build one with {rebuild_hint(profile.name)}"
        )
    sur = load_surrogate(d)
    check_compatible(
        sur.meta, profile.name, profile_hash(profile.model_dump(mode="json")), f"shipped surrogate {d.name}"
    )
    return sur
