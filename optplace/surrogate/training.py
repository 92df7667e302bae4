"""LightGBM training of the capacity surrogates: deterministic fits, the starvation threshold, files.

* ``throughput`` — regressor of ``log(delivered / offered)``, offered being the *expected* offered
  tokens/s (a feature the solver knows exactly).  Below capacity the target is ≈ 0 everywhere, so
  the trees only spend splits on the saturated region; in log space an error of ε is a relative
  error of ε in throughput, which is what sMAPE measures.
* ``itl`` and ``ttft_p99`` — regressors of ``log`` mean ITL and ``log`` p99 TTFT (ms); latencies
  span orders of magnitude, and log makes the L2 loss a relative one.
* ``starved`` — binary classifier of the twin's starvation verdict, "starved" at a decision
  threshold ≤ 0.5 chosen by group CV on the training rows for macro-F1 (:func:`cv_threshold`).

A training row's label is the mean over the twin seeds it has (replicates pooled by
:func:`~optplace.surrogate.dataset.load_datasets`); held-out rows are a seeded split by group or
whole held-out sweeps.  Training is deterministic: fixed seeds, ``deterministic=True``,
``force_row_wise``, one thread, so the same rows give byte-identical model files.  The reasons for
the parameters, caps and rules are in docs/surrogate-training.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optplace.infra.outputs import atomic_files
from optplace.surrogate.dataset import (
    Dataset,
    check_disjoint,
    load_dataset,
    load_datasets,
    load_holdouts,
)
from optplace.surrogate.evaluation import evaluate, macro_f1, write_holdout
from optplace.surrogate.features import (
    BASE_NAMES,
    DERIVED_NAMES,
    FEATURE_INDEX,
    SCHEMA_VERSION,
    check_schema,
)
from optplace.surrogate.provenance import evaluator_identity, same_labels
from optplace.surrogate.runtime import MODEL_FORMAT_VERSION, MODELS_DIR, load_surrogate

_FRAC_FLOOR = 1e-4

# Chosen by 5-fold group CV on training sweeps only (docs/surrogate-training.md): 15 leaves, at least 4 rows
# per leaf and learning rate 0.15 scored as well as larger or slower settings, with fewer trees.
REGRESSION_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "learning_rate": 0.15,
    "num_leaves": 15,
    "max_depth": 9,
    "min_data_in_leaf": 4,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
}
CLASSIFIER_PARAMS: dict[str, Any] = {
    **REGRESSION_PARAMS,
    "objective": "binary",
    "learning_rate": 0.2,
    "min_data_in_leaf": 8,
}
MAX_ROUNDS = 250
#: Candidate decision thresholds (probability of "starved") and the CV folds that pick one.
THRESHOLD_GRID = np.round(np.arange(0.20, 0.501, 0.025), 3)
THRESHOLD_FOLDS = 5
# Caps on boosting rounds per model: prediction cost is linear in trees, and the solver's capacity query
# (throughput + starvation, derived features included) must stay within 50 us per row and 50 ms per
# 10k rows; at these caps group CV loses at most 0.002 macro-F1 and 0.07 sMAPE points against more rounds.
ROUNDS_CAP = {"throughput": 70, "starved": 40, "itl": 60, "ttft_p99": 40}


@dataclass(frozen=True, slots=True)
class TrainReport:
    """Held-out metrics and where the models went."""

    out_dir: Path
    n_train: int
    n_test: int
    metrics: dict[str, float]


def split_groups(groups: np.ndarray, test_frac: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out rows: a seeded random ``test_frac`` of the distinct groups."""
    uniq = np.unique(groups)
    rng = np.random.default_rng([seed, 0x7E57])
    test = rng.choice(uniq, size=max(1, int(round(test_frac * uniq.size))), replace=False)
    return np.isin(groups, test)


def _targets(ds: Dataset) -> dict[str, np.ndarray]:
    offered = ds.X[:, ds.feature_names.index("offered_tok_s")]
    thr = ds.targets["throughput_tok_s"]
    frac = np.maximum(thr / np.where(offered > 0, offered, 1.0), _FRAC_FLOOR)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "throughput": np.log(frac),
            "itl": np.log(ds.targets["itl_ms_mean"]),
            "ttft_p99": np.log(ds.targets["ttft_ms_p99"]),
            "starved": ds.targets["starved"].astype(float),
        }


def _physics_profile(provenance: dict[str, Any]) -> str | None:
    """Profile whose physics the derived features use: a twin sweep's profile, else None."""
    ev = provenance.get("evaluator", {})
    return str(ev["profile"]) if ev.get("evaluator") == "twin" and ev.get("profile") else None


def _augmented(X: np.ndarray, physics_profile: str | None) -> np.ndarray:
    """Rows followed by their derived features (NaN columns without a profile)."""
    if physics_profile is None:
        return np.hstack([X, np.full((X.shape[0], len(DERIVED_NAMES)), np.nan)])
    from optplace.surrogate.physics import physics_for

    return physics_for(physics_profile).augment_many(X)


def fit_booster(
    params: dict[str, Any], X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, max_rounds: int = MAX_ROUNDS
) -> Any:
    """Choose the round count by early stopping on an inner group split, then refit on all rows."""
    import lightgbm as lgb

    p = {
        **params,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbose": -1,
    }
    inner = split_groups(groups, 0.15, seed + 1)
    dtr = lgb.Dataset(X[~inner], y[~inner], free_raw_data=False)
    dva = lgb.Dataset(X[inner], y[inner], reference=dtr, free_raw_data=False)
    b = lgb.train(p, dtr, max_rounds, valid_sets=[dva], callbacks=[lgb.early_stopping(40, verbose=False)])
    rounds = max(20, int(b.best_iteration or max_rounds))
    return lgb.train(p, lgb.Dataset(X, y), rounds)


def _path_list(paths: Path | str | Sequence[Path | str] | None) -> list[Path | str]:
    """One path, several, or none, as a list."""
    if paths is None:
        return []
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def train(
    dataset_path: Path | str | Sequence[Path | str],
    out_dir: Path | str,
    seed: int = 0,
    features: Sequence[str] | None = None,
    test_frac: float = 0.2,
    prefix: str = "",
    holdout: Path | str | Sequence[Path | str] | None = None,
    holdout_replicates: Sequence[Path | str] = (),
    note: str | None = None,
    rounds_cap: dict[str, int] | None = None,
    recipe_hash: str | None = None,
) -> TrainReport:
    """Train the four surrogates on a sweep dataset, write them to ``out_dir``, return metrics.

    Files are ``<prefix><model>.txt`` and ``<prefix>surrogate.json`` (shipped models use
    ``prefix="<profile>."`` because package data is one flat directory).

    ``features`` restricts the models to a subset of the schema (e.g.
    :data:`optplace.surrogate.features.LINEAR_FEATURES` for a fully linear MILP encoding).

    Held-out rows: by default a seeded ``test_frac`` of the sweep groups.  With ``holdout`` (a
    sweep of the same design under another sweep seed) the models train on every row of
    ``dataset_path`` and are scored on that sweep instead; with ``holdout_replicates`` (its
    :func:`~optplace.surrogate.execution.run_replicate` re-runs) the held-out labels are the
    per-configuration means over the twin seeds, the single-seed labels kept beside them.  ``holdout``
    may list several such sweeps (:func:`~optplace.surrogate.dataset.load_holdouts`: each pooled with
    the replicates that name it, scored as one set; the shipped ``holdout.csv`` records each row's
    sweep, see :func:`holdout_sweeps`).  A held-out sweep sharing a sweep or a twin run with the
    training sweeps is refused (:func:`~optplace.surrogate.dataset.check_disjoint`).  The held-out rows
    never influence the models: the model files are the same whatever held-out set is given.

    ``rounds_cap`` overrides entries of :data:`ROUNDS_CAP` (boosting-round caps per model).
    ``surrogate.json`` records the training sweeps' twin semantics version and profile hash (what
    :func:`~optplace.surrogate.runtime.check_compatible` checks) and ``recipe_hash`` when a recipe built it.
    """
    paths, holdouts = _path_list(dataset_path), _path_list(holdout)
    train_ds = load_datasets(paths)
    check_schema(train_ds.feature_names, int(train_ds.provenance.get("feature_schema_version", SCHEMA_VERSION)))
    if holdouts:
        hold = load_holdouts(holdouts, holdout_replicates)
        for h in hold.provenance["holdouts"]:
            if hold.feature_names != train_ds.feature_names or not same_labels(
                h["evaluator"] or {}, train_ds.provenance.get("evaluator", {})
            ):
                raise ValueError(f"{h['name']}: other features or evaluator than the training sweeps")
        in_training = check_disjoint(
            train_ds, hold, "the training sweeps", "+".join(h["name"] for h in hold.provenance["holdouts"])
        )
        hold.provenance["configurations_also_in_training"] = in_training
        ds = _stack(train_ds, hold)
        is_test = np.concatenate([np.zeros(train_ds.index.size, bool), np.ones(hold.index.size, bool)])
    else:
        ds, hold = train_ds, None
    physics_profile = _physics_profile(train_ds.provenance)
    names = tuple(features) if features else BASE_NAMES + (DERIVED_NAMES if physics_profile else ())
    if not physics_profile and set(names) & set(DERIVED_NAMES):
        raise ValueError("derived features need a twin sweep of a known profile (the evaluator has none)")
    Xa = _augmented(ds.X, physics_profile)
    cols = [FEATURE_INDEX[n] for n in names]
    ok = ds.targets["oom"] == 0
    X = Xa[ok][:, cols]
    groups = ds.group[ok]
    ys = {k: v[ok] for k, v in _targets(ds).items()}
    # test_frac 0 without held-out sweeps: every row trains (the models are the same as with held-out
    # sweeps, which never shape them; only the metrics are missing)
    test = (
        is_test[ok]
        if holdouts
        else (split_groups(groups, test_frac, seed) if test_frac > 0 else np.zeros(groups.size, bool))
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Everything is written to a staging folder inside ``out`` and renamed into place together at the
    # end (surrogate.json last), so an interrupted training leaves the previous model set intact.
    stage = Path(tempfile.mkdtemp(prefix=".train-", dir=out))
    try:
        metrics = _train_into(
            stage,
            ds,
            X,
            ys,
            test,
            groups,
            names,
            seed,
            prefix,
            holdouts,
            holdout_replicates,
            hold,
            test_frac,
            paths,
            train_ds,
            note,
            ok,
            physics_profile,
            {**ROUNDS_CAP, **(rounds_cap or {})},
            recipe_hash,
        )
        written = sorted((p.name for p in stage.iterdir()), key=lambda n: n.endswith("surrogate.json"))
        with atomic_files(out) as tmp:
            for name in written:
                os.replace(stage / name, tmp(name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    n_test = int(test.sum())
    return TrainReport(out, int((~test).sum()), n_test, metrics)


def _train_into(
    out: Path,
    ds: Any,
    X: np.ndarray,
    ys: dict[str, np.ndarray],
    test: np.ndarray,
    groups: np.ndarray,
    names: tuple[str, ...],
    seed: int,
    prefix: str,
    holdout: Any,
    holdout_replicates: Any,
    hold: Any,
    test_frac: float,
    paths: Any,
    train_ds: Any,
    note: str | None,
    ok: np.ndarray,
    physics_profile: str | None = None,
    caps: dict[str, int] | None = None,
    recipe_hash: str | None = None,
) -> dict[str, Any]:
    """Fit the four models, write them with their metadata and held-out rows into ``out``; the metrics."""
    caps = caps or ROUNDS_CAP
    files: dict[str, Any] = {}
    for name, params in (
        ("throughput", REGRESSION_PARAMS),
        ("itl", REGRESSION_PARAMS),
        ("ttft_p99", REGRESSION_PARAMS),
        ("starved", CLASSIFIER_PARAMS),
    ):
        y = ys[name]
        use = ~test & np.isfinite(y)
        booster = fit_booster(params, X[use], y[use], groups[use], seed, caps.get(name, MAX_ROUNDS))
        (out / f"{prefix}{name}.txt").write_text(booster.model_to_string())
        files[name] = {"file": f"{prefix}{name}.txt", "trees": booster.num_trees()}
    use = ~test & np.isfinite(ys["starved"])
    threshold, threshold_cv = cv_threshold(
        X[use], ys["starved"][use], groups[use], seed, rounds=caps.get("starved", MAX_ROUNDS)
    )
    meta = {
        "format_version": MODEL_FORMAT_VERSION,
        "feature_schema_version": SCHEMA_VERSION,
        "feature_names": list(names),
        "models": files,
        "transforms": {
            "throughput": "log(throughput_tok_s / offered_tok_s); floor 1e-4",
            "itl": "log(itl_ms_mean)",
            "ttft_p99": "log(ttft_ms_p99)",
            "starved": "P(starved), sigmoid of raw score",
        },
        "starved_threshold": threshold,
        "max_throughput_loss": 0.10,
        "physics": {
            "profile": physics_profile,
            "derived": list(DERIVED_NAMES),
            "source": "optplace.surrogate.physics (fluid model of the profile's step time; rate histogram)",
        }
        if physics_profile and set(names) & set(DERIVED_NAMES)
        else None,
        # the training rows' range only: the held-out rows must not shape the model
        "offered_max": float(X[~test][:, names.index("offered_tok_s")].max()) if "offered_tok_s" in names else None,
        "seed": seed,
        "test_frac": test_frac if not holdout else None,
        "split": (f"random {test_frac * 100:g} % of sweep groups" if test_frac > 0 else "none")
        if not holdout
        else {
            "holdout": Path(holdout[0]).name if len(holdout) == 1 else [Path(h).name for h in holdout],
            "holdouts": hold.provenance["holdouts"],
            "configurations_also_in_training": hold.provenance["configurations_also_in_training"],
            "replicates": [Path(p).name for p in holdout_replicates],
            "label": hold.provenance.get("label", "one twin seed per configuration"),
        },
        "params": {"regression": REGRESSION_PARAMS, "classifier": CLASSIFIER_PARAMS, "rounds_cap": caps},
        "threshold_cv": threshold_cv,
        "n_train": int((~test).sum()),
        "n_test": int(test.sum()),
        "dataset": {
            "path": [Path(p).name for p in paths],
            "provenance": train_ds.provenance,
            "label": train_ds.provenance.get("label", "one twin seed per configuration"),
        },
        "metrics": {},
    }
    if note:
        meta["note"] = note
    ident = evaluator_identity(train_ds.provenance.get("evaluator", {}))
    meta["twin_semantics_version"] = ident.get("twin_semantics_version")
    meta["profile"] = ident.get("profile")
    meta["profile_hash"] = ident.get("profile_hash")
    if recipe_hash:
        meta["recipe_hash"] = recipe_hash
    write_holdout(out / f"{prefix}holdout.csv", ds, np.flatnonzero(ok)[test])
    meta["holdout"] = f"{prefix}holdout.csv"
    meta_path = out / f"{prefix}surrogate.json"
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    sur = load_surrogate(meta_path)
    full = ds.X[ok][test]
    metrics = evaluate(sur, full, {k: ds.targets[k][ok][test] for k in ds.targets}) if test.any() else {}
    meta["metrics"] = metrics
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return metrics


def cv_threshold(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, folds: int = THRESHOLD_FOLDS, rounds: int | None = None
) -> tuple[float, dict[str, Any]]:
    """Decision threshold of the starvation classifier, chosen on training rows only: out-of-fold
    probabilities from a ``folds``-fold group split, then the threshold on :data:`THRESHOLD_GRID`
    (all ≤ 0.5: never more willing to say "not starved" than the plain classifier, since a false
    "not starved" is the costly mistake for the solver) with the best macro-F1 (ties: the lowest).
    ``rounds`` caps the classifier's boosting rounds (default ``ROUNDS_CAP["starved"]``).
    Returns (threshold, what was measured)."""
    rounds = ROUNDS_CAP["starved"] if rounds is None else rounds
    if folds < 2 or np.unique(groups).size < folds or len(np.unique(y)) < 2:
        return 0.5, {"folds": 0, "note": "too few rows or groups: 0.5"}
    uniq = np.unique(groups)
    perm = np.random.default_rng([seed, 0x7417]).permutation(uniq)
    fold_of = dict(zip(perm.tolist(), (np.arange(perm.size) % folds).tolist()))
    f = np.array([fold_of[g] for g in groups.tolist()])
    p = np.full(y.size, np.nan)
    for k in range(folds):
        tr, te = f != k, f == k
        b = fit_booster(CLASSIFIER_PARAMS, X[tr], y[tr], groups[tr], seed + 11 * (k + 1), rounds)
        p[te] = b.predict(X[te], num_threads=1)
    yb = y > 0.5
    f1 = [macro_f1(yb, p >= t) for t in THRESHOLD_GRID]
    best = int(np.argmax(np.round(f1, 4)))
    t = float(THRESHOLD_GRID[best])
    fns = [float(np.mean(p[yb] < t_)) if yb.any() else 0.0 for t_ in (0.5, t)]
    return t, {
        "folds": folds,
        "grid": [float(g) for g in THRESHOLD_GRID],
        "macro_f1": [round(v, 4) for v in f1],
        "macro_f1_at_0.5": float(macro_f1(yb, p >= 0.5)),
        "macro_f1_at_threshold": float(f1[best]),
        "false_not_starved_rate_at_0.5": fns[0],
        "false_not_starved_rate_at_threshold": fns[1],
    }


def _stack(a: Dataset, b: Dataset) -> Dataset:
    """Training rows ``a`` then held-out rows ``b`` (groups of ``b`` offset so none clash); targets
    only ``b`` has (single-seed labels of a pooled hold-out) are NaN for ``a``."""
    off = np.int64(1) << np.int64(40)
    keys = list(a.targets) + [k for k in b.targets if k not in a.targets]

    def col(d: Dataset, k: str) -> np.ndarray:
        return d.targets[k] if k in d.targets else np.full(d.index.size, np.nan)

    return Dataset(
        X=np.vstack([a.X, b.X]),
        feature_names=a.feature_names,
        targets={k: np.concatenate([col(a, k), col(b, k)]) for k in keys},
        index=np.concatenate([a.index, b.index + off]),
        group=np.concatenate([a.group, b.group + off]),
        meta={
            **{m: np.concatenate([a.meta[m], b.meta[m]]) for m in a.meta},
            **{
                m: np.concatenate([np.full(a.index.size, -1, b.meta[m].dtype), b.meta[m]])
                for m in b.meta
                if m not in a.meta
            },
        },
        provenance=a.provenance,
    )


def ship(
    dataset_path: Path | str | Sequence[Path | str],
    profile_name: str,
    seed: int = 0,
    out_dir: Path | str | None = None,
    holdout: Path | str | Sequence[Path | str] | None = None,
    holdout_replicates: Sequence[Path | str] = (),
    note: str | None = None,
    recipe_hash: str | None = None,
) -> TrainReport:
    """Train on twin sweeps of a bundled profile and write the result as package data
    (``holdout`` / ``holdout_replicates`` as in :func:`train`)."""
    paths, holdouts = _path_list(dataset_path), _path_list(holdout)
    for p in [*paths, *holdouts, *holdout_replicates]:
        ev = load_dataset(p).provenance.get("evaluator", {})
        if ev.get("evaluator") != "twin" or ev.get("profile") != profile_name:
            raise ValueError(f"{p}: not a twin sweep of {profile_name!r} (provenance: {ev})")
    return train(
        paths,
        out_dir or MODELS_DIR,
        seed=seed,
        prefix=f"{profile_name}.",
        holdout=holdouts or None,
        holdout_replicates=holdout_replicates,
        note=note,
        recipe_hash=recipe_hash,
    )
