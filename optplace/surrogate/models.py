"""LightGBM capacity surrogates: deterministic training, saving, loading and fast prediction.

Four models per profile, all over the feature schema of :mod:`optplace.surrogate.features`:

* ``throughput`` — regressor of ``log(delivered / offered)``, offered being the *expected* offered
  tokens/s (a feature the solver knows exactly).  Below capacity the target is ≈ 0 everywhere, so
  the trees only spend splits on the saturated region; in log space an error of ε is a relative
  error of ε in throughput, which is what sMAPE measures.  Throughput = offered × exp(prediction).
* ``itl`` and ``ttft_p99`` — regressors of ``log`` mean ITL and ``log`` p99 TTFT (ms); latencies
  span orders of magnitude, and log makes the L2 loss a relative one.
* ``starved`` — binary classifier of the twin's starvation verdict (probability).

Training is deterministic: fixed seeds, ``deterministic=True``, ``force_row_wise``, one thread.
Held-out rows are either a seeded split by *group* (a boundary chain's rows stay together) or a
whole sweep of the same design under another sweep seed, optionally re-run under a second twin
seed (:func:`optplace.surrogate.sweep.run_replicate`) so its labels are per-configuration seed
means; the metrics then also score the model against each seed alone and the twin against itself
(seed 1 vs seed 0: the noise floor no surrogate of these features can beat on single-seed labels).  A model directory holds
``<name>.txt`` (LightGBM text) and ``surrogate.json`` (schema, transforms, held-out metrics,
dataset provenance).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optplace.outputs import atomic_files
from optplace.surrogate.config import GpuConfig
from optplace.surrogate.features import FEATURE_INDEX, FEATURE_NAMES, SCHEMA_VERSION, check_schema, feature_row
from optplace.surrogate.sweep import Dataset, load_dataset, load_datasets
from optplace.surrogate.trees import Ensemble, ensemble_from_text

MODEL_FORMAT_VERSION = 1
MODELS_DIR = Path(__file__).parent / "models"
_FRAC_FLOOR = 1e-4

# chosen by 5-fold group CV on the training sweeps only (never the held-out sweep).  Session 1, 660 rows
# of an older twin: num_leaves 15 / min_data 4 beat 31 / 8 (throughput sMAPE 9.5 vs 10.2 %).  Re-checked
# on the current twin's seed-4101/4201 sweeps (~1,380 rows each, /tmp analysis): learning rate 0.15 ×
# 80 rounds 6.82 / 7.12 % (Llama / Qwen) vs 6.80 / 7.08 % with 100 rounds and 6.57 / 6.94 % with
# 0.1 × 150 (50 % more trees, over the 10k-row budget); Huber, L1, 31 leaves, max_depth 6 and monotone
# load constraints were no better.  The classifier at learning rate 0.2 × 60 rounds scores like
# 0.1 × 100 (macro-F1 0.934 / 0.928 vs 0.936 / 0.929) with 40 % fewer trees.
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
CLASSIFIER_PARAMS: dict[str, Any] = {**REGRESSION_PARAMS, "objective": "binary", "learning_rate": 0.2,
                                     "min_data_in_leaf": 8}
MAX_ROUNDS = 250
# per-model caps on boosting rounds: prediction cost is linear in trees (LightGBM, one thread: ~0.2 ms
# per regression tree and ~0.3 ms per classifier tree for 10k rows), and the capacity query
# (throughput + starvation) must stay ≤ 50 µs per row and ≤ 50 ms per 10k rows
ROUNDS_CAP = {"throughput": 80, "starved": 60, "itl": 60, "ttft_p99": 40}


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


@dataclass(frozen=True, slots=True)
class TrainReport:
    """Held-out metrics and where the models went."""

    out_dir: Path
    n_train: int
    n_test: int
    metrics: dict[str, float]


def smape(y: np.ndarray, yhat: np.ndarray) -> float:
    """Textbook sMAPE in percent: mean 2|y−ŷ|/(|y|+|ŷ|) (0 where both are 0)."""
    y, yhat = np.asarray(y, float), np.asarray(yhat, float)
    den = np.abs(y) + np.abs(yhat)
    term = np.where(den > 0, 2.0 * np.abs(y - yhat) / np.where(den > 0, den, 1.0), 0.0)
    return float(100.0 * term.mean()) if term.size else math.nan


def macro_f1(y: np.ndarray, yhat: np.ndarray) -> float:
    """Macro-averaged F1 of two classes (a class absent from both counts as F1 = 1)."""
    y, yhat = np.asarray(y, bool), np.asarray(yhat, bool)
    f1s = []
    for cls in (True, False):
        tp = np.sum((yhat == cls) & (y == cls))
        fp = np.sum((yhat == cls) & (y != cls))
        fn = np.sum((yhat != cls) & (y == cls))
        f1s.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


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


def _fit(params: dict[str, Any], X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int,
         max_rounds: int = MAX_ROUNDS) -> Any:
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


def train(
    dataset_path: Path | str | Sequence[Path | str],
    out_dir: Path | str,
    seed: int = 0,
    features: Sequence[str] | None = None,
    test_frac: float = 0.2,
    prefix: str = "",
    holdout: Path | str | None = None,
    holdout_replicates: Sequence[Path | str] = (),
    note: str | None = None,
) -> TrainReport:
    """Train the four surrogates on a sweep dataset, write them to ``out_dir``, return metrics.

    Files are ``<prefix><model>.txt`` and ``<prefix>surrogate.json`` (shipped models use
    ``prefix="<profile>."`` because package data is one flat directory).

    ``features`` restricts the models to a subset of the schema (e.g.
    :data:`optplace.surrogate.features.LINEAR_FEATURES` for a fully linear MILP encoding).

    Held-out rows: by default a seeded ``test_frac`` of the sweep groups.  With ``holdout`` (a
    sweep of the same design under another sweep seed) the models train on every row of
    ``dataset_path`` and are scored on that sweep instead; with ``holdout_replicates`` (its
    :func:`~optplace.surrogate.sweep.run_replicate` re-runs) the held-out labels are the
    per-configuration means over the twin seeds, the single-seed labels kept beside them.
    """
    from optplace.surrogate.sweep import pool_replicates

    paths = [dataset_path] if isinstance(dataset_path, (str, Path)) else list(dataset_path)
    train_ds = load_datasets(paths)
    check_schema(train_ds.feature_names, int(train_ds.provenance.get("feature_schema_version", SCHEMA_VERSION)))
    if holdout is not None:
        hold = pool_replicates(holdout, holdout_replicates) if holdout_replicates else load_dataset(holdout)
        if hold.feature_names != train_ds.feature_names or hold.provenance.get("evaluator") != train_ds.provenance.get(
                "evaluator"):
            raise ValueError(f"{holdout}: other features or evaluator than the training sweeps")
        ds = _stack(train_ds, hold)
        is_test = np.concatenate([np.zeros(train_ds.index.size, bool), np.ones(hold.index.size, bool)])
    else:
        ds, hold = train_ds, None
    names = tuple(features) if features else tuple(FEATURE_NAMES)
    cols = [ds.feature_names.index(n) for n in names]
    ok = ds.targets["oom"] == 0
    X = ds.X[ok][:, cols]
    groups = ds.group[ok]
    ys = {k: v[ok] for k, v in _targets(ds).items()}
    test = is_test[ok] if holdout is not None else split_groups(groups, test_frac, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Everything is written to a staging folder inside ``out`` and renamed into place together at the
    # end (surrogate.json last), so an interrupted training leaves the previous model set intact.
    stage = Path(tempfile.mkdtemp(prefix=".train-", dir=out))
    try:
        metrics = _train_into(stage, ds, X, ys, test, groups, names, seed, prefix, holdout, holdout_replicates,
                              hold, test_frac, paths, train_ds, note, ok)
        written = sorted((p.name for p in stage.iterdir()), key=lambda n: n.endswith("surrogate.json"))
        with atomic_files(out) as tmp:
            for name in written:
                os.replace(stage / name, tmp(name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    n_test = int(test.sum())
    return TrainReport(out, int((~test).sum()), n_test, metrics)


def _train_into(out: Path, ds: Any, X: np.ndarray, ys: dict[str, np.ndarray], test: np.ndarray, groups: np.ndarray,
                names: tuple[str, ...], seed: int, prefix: str, holdout: Any, holdout_replicates: Any, hold: Any,
                test_frac: float, paths: Any, train_ds: Any, note: str | None, ok: np.ndarray) -> dict[str, Any]:
    """Fit the four models, write them with their metadata and held-out rows into ``out``; the metrics."""
    files: dict[str, Any] = {}
    for name, params in (
        ("throughput", REGRESSION_PARAMS),
        ("itl", REGRESSION_PARAMS),
        ("ttft_p99", REGRESSION_PARAMS),
        ("starved", CLASSIFIER_PARAMS),
    ):
        y = ys[name]
        use = ~test & np.isfinite(y)
        booster = _fit(params, X[use], y[use], groups[use], seed, ROUNDS_CAP.get(name, MAX_ROUNDS))
        (out / f"{prefix}{name}.txt").write_text(booster.model_to_string())
        files[name] = {"file": f"{prefix}{name}.txt", "trees": booster.num_trees()}
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
        "starved_threshold": 0.5,
        "max_throughput_loss": 0.10,
        "offered_max": float(X[:, names.index("offered_tok_s")].max()) if "offered_tok_s" in names else None,
        "seed": seed,
        "test_frac": test_frac if holdout is None else None,
        "split": "random 20 % of sweep groups" if holdout is None else {
            "holdout": Path(holdout).name, "replicates": [Path(p).name for p in holdout_replicates],
            "label": hold.provenance.get("label", "one twin seed per configuration")},
        "params": {"regression": REGRESSION_PARAMS, "classifier": CLASSIFIER_PARAMS, "rounds_cap": ROUNDS_CAP},
        "n_train": int((~test).sum()),
        "n_test": int(test.sum()),
        "dataset": {"path": [Path(p).name for p in paths], "provenance": train_ds.provenance},
        "metrics": {},
    }
    if note:
        meta["note"] = note
    _write_holdout(out / f"{prefix}holdout.csv", ds, np.flatnonzero(ok)[test])
    meta["holdout"] = f"{prefix}holdout.csv"
    meta_path = out / f"{prefix}surrogate.json"
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    sur = load_surrogate(meta_path)
    full = np.zeros((int(test.sum()), len(FEATURE_NAMES)))
    full[:, [FEATURE_INDEX[n] for n in names]] = X[test]
    metrics = evaluate(sur, full, {k: ds.targets[k][ok][test] for k in ds.targets}) if test.any() else {}
    meta["metrics"] = metrics
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return metrics


def _stack(a: Dataset, b: Dataset) -> Dataset:
    """Training rows ``a`` then held-out rows ``b`` (groups of ``b`` offset so none clash); targets
    only ``b`` has (single-seed labels of a pooled hold-out) are NaN for ``a``."""
    off = np.int64(1) << np.int64(40)
    keys = list(a.targets) + [k for k in b.targets if k not in a.targets]

    def col(d: Dataset, k: str) -> np.ndarray:
        return d.targets[k] if k in d.targets else np.full(d.index.size, np.nan)

    return Dataset(
        X=np.vstack([a.X, b.X]), feature_names=a.feature_names,
        targets={k: np.concatenate([col(a, k), col(b, k)]) for k in keys},
        index=np.concatenate([a.index, b.index + off]), group=np.concatenate([a.group, b.group + off]),
        meta={m: np.concatenate([a.meta[m], b.meta[m]]) for m in a.meta}, provenance=a.provenance)


HOLDOUT_COLUMNS = ("index", "group", "pass", "wall_s")


def _write_holdout(path: Path, ds: Dataset, rows: np.ndarray) -> None:
    """The held-out rows (features + twin targets), so benchmarks can recompute accuracy later."""
    import csv

    tnames = list(ds.targets)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*HOLDOUT_COLUMNS, *ds.feature_names, *tnames])
        for i in rows:
            w.writerow([int(ds.index[i]), int(ds.group[i]), int(ds.meta["pass"][i]), repr(float(ds.meta["wall_s"][i])),
                        *(repr(float(v)) for v in ds.X[i]), *(repr(float(ds.targets[t][i])) for t in tnames)])


def load_holdout(sur: "Surrogate") -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Held-out rows shipped with a surrogate: (full feature rows, twin targets, twin wall seconds,
    sweep pass: 1 = Sobol, 2 = boundary chain)."""
    import csv

    name = sur.meta.get("holdout")
    if not name:
        raise FileNotFoundError(f"{sur.directory}: this surrogate has no held-out rows")
    with (sur.directory / name).open(newline="") as fh:
        recs = list(csv.DictReader(fh))
    X = np.array([[float(r[n]) for n in FEATURE_NAMES] for r in recs]).reshape(len(recs), len(FEATURE_NAMES))
    skip = set(HOLDOUT_COLUMNS) | set(FEATURE_NAMES)
    targets = {k: np.array([float(r[k]) for r in recs]) for k in (recs[0].keys() if recs else []) if k not in skip}
    return X, targets, np.array([float(r["wall_s"]) for r in recs]), np.array([int(r["pass"]) for r in recs])


def evaluate(sur: "Surrogate", X: np.ndarray, targets: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy of a surrogate on full feature rows ``X`` against twin targets."""
    P = sur.predict_many(X)
    y_thr = targets["throughput_tok_s"]
    y_st = targets["starved"].astype(bool)
    itl_ok = np.isfinite(targets["itl_ms_mean"])
    ttft_ok = np.isfinite(targets["ttft_ms_p99"])
    thr_ok = y_thr > 0
    sat = targets["throughput_loss"] >= 0.05
    sticky = X[:, FEATURE_INDEX["slots_frac"]] < 1.0
    sub = {
        "not_starved": ~y_st,
        "starved": y_st,
        "unsaturated": ~sat,
        "saturated_full_slots": sat & ~sticky,
        "saturated_slots_lt_adapters": sat & sticky,
    }
    parts = {f"throughput_smape_pct_{k}": smape(y_thr[m], P["throughput_tok_s"][m]) for k, m in sub.items()}
    parts.update({f"n_{k}": float(m.sum()) for k, m in sub.items()})
    reps = sorted(int(k.rsplit("rep", 1)[1]) for k in targets if k.startswith("throughput_tok_s_rep"))
    for r in reps:
        # the same rows scored against one twin seed's label instead of the seed mean
        parts[f"throughput_smape_pct_vs_seed{r}"] = smape(targets[f"throughput_tok_s_rep{r}"], P["throughput_tok_s"])
        parts[f"starved_macro_f1_vs_seed{r}"] = macro_f1(targets[f"starved_rep{r}"].astype(bool), P["starved"])
    if len(reps) >= 2:
        # the twin against itself: what a second seed scores against the first (the noise floor)
        a, b = targets[f"throughput_tok_s_rep{reps[0]}"], targets[f"throughput_tok_s_rep{reps[1]}"]
        sa, sb = targets[f"starved_rep{reps[0]}"].astype(bool), targets[f"starved_rep{reps[1]}"].astype(bool)
        parts["twin_seed_vs_seed_throughput_smape_pct"] = smape(a, b)
        parts["twin_seed_vs_seed_starved_macro_f1"] = macro_f1(sa, sb)
        for k, m in sub.items():
            if k.startswith("saturated_slots"):
                parts[f"twin_seed_vs_seed_throughput_smape_pct_{k}"] = smape(a[m], b[m])
    return {
        **parts,
        "n": float(X.shape[0]),
        "throughput_smape_pct": smape(y_thr, P["throughput_tok_s"]),
        "throughput_smape_pct_positive": smape(y_thr[thr_ok], P["throughput_tok_s"][thr_ok]),
        "throughput_mape_pct": float(
            100 * np.mean(np.abs(P["throughput_tok_s"][thr_ok] - y_thr[thr_ok]) / y_thr[thr_ok])
        ),
        "starved_macro_f1": macro_f1(y_st, P["starved"]),
        "starved_accuracy": float(np.mean(y_st == P["starved"])),
        "starved_macro_f1_margin_rule": macro_f1(y_st, P["delivered_frac"] < 0.9),
        "starved_share": float(y_st.mean()) if y_st.size else math.nan,
        "itl_smape_pct": smape(targets["itl_ms_mean"][itl_ok], P["itl_ms"][itl_ok]),
        "ttft_p99_smape_pct": smape(targets["ttft_ms_p99"][ttft_ok], P["ttft_p99_ms"][ttft_ok]),
    }


_LOAD_FEATURES = ("rate_sum", "rate_max", "rate_std", "offered_tok_s", "decode_tok_s")


class Surrogate:
    """A loaded set of capacity models for one profile (see module docstring).

    Beyond the largest offered load seen in training (``offered_max``) trees would extrapolate the
    delivered *fraction* as a constant, i.e. throughput growing without bound.  A GPU's throughput
    saturates instead, so there the models are evaluated at the same mix scaled down to
    ``offered_max`` and the throughput found there is kept (fraction = that ÷ offered).  Feasible
    (non-starved) configurations lie well inside the domain, so this never changes a feasible
    answer, nor the MILP encodings, which encode the trees themselves.
    """

    def __init__(self, directory: Path, meta: dict[str, Any], models: dict[str, Ensemble]) -> None:
        self.directory = directory
        self.meta = meta
        self.models = models
        self.feature_names: tuple[str, ...] = tuple(meta["feature_names"])
        self.threshold = float(meta.get("starved_threshold", 0.5))
        self.max_loss = float(meta.get("max_throughput_loss", 0.10))
        self.offered_max = float(meta.get("offered_max") or math.inf)
        self._offered = FEATURE_INDEX["offered_tok_s"]
        self._load_idx = [FEATURE_INDEX[n] for n in _LOAD_FEATURES]
        self._logit_thr = math.log(self.threshold / (1.0 - self.threshold))

    @property
    def metrics(self) -> dict[str, float]:
        """Held-out metrics recorded at training time."""
        return dict(self.meta.get("metrics", {}))

    def _in_domain(self, r: list[float]) -> tuple[list[float], float]:
        offered = r[self._offered]
        if offered <= self.offered_max:
            return r, 1.0
        k = self.offered_max / offered
        r2 = list(r)
        for j in self._load_idx:
            r2[j] *= k
        return r2, k

    def predict_row(self, row: Sequence[float]) -> Prediction:
        """Predict for one full feature row (list or array in FEATURE_NAMES order)."""
        r0 = row.tolist() if isinstance(row, np.ndarray) else list(row)
        offered = r0[self._offered]
        r, k = self._in_domain(r0)
        frac = min(math.exp(self.models["throughput"].raw_row(r)), 1.0) * k
        s = self.models["starved"].raw_row(r)
        return Prediction(
            throughput_tok_s=offered * frac,
            offered_tok_s=offered,
            delivered_frac=frac,
            itl_ms=math.exp(self.models["itl"].raw_row(r)),
            ttft_p99_ms=math.exp(self.models["ttft_p99"].raw_row(r)),
            p_starved=1.0 / (1.0 + math.exp(-s)),
            starved=s >= self._logit_thr or (k < 1.0 and frac < 1.0 - self.max_loss),
        )

    def predict(self, config: GpuConfig) -> Prediction:
        """Predict for one GPU configuration."""
        return self.predict_row(feature_row(config).tolist())

    def throughput_row(self, row: list[float]) -> float:
        """Predicted delivered tokens/s only (the cheapest call; row is a list of floats)."""
        r, k = self._in_domain(row)
        return row[self._offered] * k * min(math.exp(self.models["throughput"].raw_row(r)), 1.0)

    def starved_row(self, row: list[float]) -> bool:
        """Predicted starvation verdict only (row is a list of floats)."""
        r, k = self._in_domain(row)
        if self.models["starved"].raw_row(r) >= self._logit_thr:
            return True
        return k < 1.0 and k * math.exp(self.models["throughput"].raw_row(r)) < 1.0 - self.max_loss

    def predict_many(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Vectorised predictions for full feature rows: arrays keyed like :class:`Prediction`."""
        X = np.asarray(X, dtype=np.float64)
        offered = X[:, self._offered]
        k = np.minimum(1.0, self.offered_max / np.where(offered > 0, offered, 1.0))
        if np.any(k < 1.0):
            X = X.copy()
            X[:, self._load_idx] *= k[:, None]
        frac = np.minimum(np.exp(self.models["throughput"].raw(X)), 1.0) * k
        s = self.models["starved"].raw(X)
        return {
            "throughput_tok_s": offered * frac,
            "offered_tok_s": offered,
            "delivered_frac": frac,
            "itl_ms": np.exp(self.models["itl"].raw(X)),
            "ttft_p99_ms": np.exp(self.models["ttft_p99"].raw(X)),
            "p_starved": 1.0 / (1.0 + np.exp(-s)),
            "starved": (s >= self._logit_thr) | ((k < 1.0) & (frac < 1.0 - self.max_loss)),
        }


def load_surrogate(path: Path | str) -> Surrogate:
    """Load models written by :func:`train`: a directory holding ``surrogate.json``, or that JSON."""
    p = Path(path)
    meta_path = p / "surrogate.json" if p.is_dir() else p
    d = meta_path.parent
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{d}: model format {meta.get('format_version')} != {MODEL_FORMAT_VERSION}")
    names = tuple(meta["feature_names"])
    check_schema(names, int(meta["feature_schema_version"]))
    row_index = tuple(FEATURE_INDEX[n] for n in names)
    models = {
        name: ensemble_from_text(
            (d / info["file"]).read_text(), names, row_index, "sigmoid" if name == "starved" else "identity"
        )
        for name, info in meta["models"].items()
    }
    return Surrogate(d, meta, models)


def shipped_model_path(profile_name: str) -> Path:
    """Metadata JSON of the model shipped for a bundled profile (``<profile>.surrogate.json``)."""
    return MODELS_DIR / f"{profile_name.replace('/', '_')}.surrogate.json"


def load_shipped(profile_name: str) -> Surrogate:
    """Load the surrogate shipped as package data for a bundled profile."""
    d = shipped_model_path(profile_name)
    if not d.exists():
        raise FileNotFoundError(
            f"no shipped surrogate for profile {profile_name!r} in {MODELS_DIR}; "
            "train one with `optplace surrogate train`"
        )
    return load_surrogate(d)


def ship(dataset_path: Path | str | Sequence[Path | str], profile_name: str, seed: int = 0,
         out_dir: Path | str | None = None, holdout: Path | str | None = None,
         holdout_replicates: Sequence[Path | str] = (), note: str | None = None) -> TrainReport:
    """Train on twin sweeps of a bundled profile and write the result as package data
    (``holdout`` / ``holdout_replicates`` as in :func:`train`)."""
    paths = [dataset_path] if isinstance(dataset_path, (str, Path)) else list(dataset_path)
    for p in [*paths, *([holdout] if holdout is not None else []), *holdout_replicates]:
        ev = load_dataset(p).provenance.get("evaluator", {})
        if ev.get("evaluator") != "twin" or ev.get("profile") != profile_name:
            raise ValueError(f"{p}: not a twin sweep of {profile_name!r} (provenance: {ev})")
    return train(paths, out_dir or MODELS_DIR, seed=seed, prefix=f"{profile_name}.", holdout=holdout,
                 holdout_replicates=holdout_replicates, note=note)
