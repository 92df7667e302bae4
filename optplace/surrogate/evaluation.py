"""Surrogate accuracy: sMAPE and macro-F1, the held-out rows shipped with a model, and the metrics
recorded at training time and recomputed by ``optplace bench surrogate``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from optplace.surrogate.features import FEATURE_INDEX, FEATURE_NAMES

if TYPE_CHECKING:
    from optplace.surrogate.dataset import Dataset
    from optplace.surrogate.runtime import Surrogate


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


HOLDOUT_COLUMNS = ("index", "group", "pass", "wall_s", "holdout_sweep")


def write_holdout(path: Path, ds: Dataset, rows: np.ndarray) -> None:
    """The held-out rows (features + twin targets), so benchmarks can recompute accuracy later."""
    tnames = list(ds.targets)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*HOLDOUT_COLUMNS, *ds.feature_names, *tnames])
        sweep = ds.meta.get("holdout_sweep", np.zeros(ds.index.size, np.int64))
        for i in rows:
            w.writerow(
                [
                    int(ds.index[i]),
                    int(ds.group[i]),
                    int(ds.meta["pass"][i]),
                    repr(float(ds.meta["wall_s"][i])),
                    int(sweep[i]),
                    *(repr(float(v)) for v in ds.X[i]),
                    *(repr(float(ds.targets[t][i])) for t in tnames),
                ]
            )


def load_holdout(sur: "Surrogate") -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Held-out rows shipped with a surrogate: (full feature rows, twin targets, twin wall seconds,
    sweep pass: 1 = Sobol, 2 = boundary chain)."""
    name = sur.meta.get("holdout")
    if not name:
        raise FileNotFoundError(f"{sur.directory}: this surrogate has no held-out rows")
    with (sur.directory / name).open(newline="") as fh:
        recs = list(csv.DictReader(fh))
    X = np.array([[float(r[n]) for n in FEATURE_NAMES] for r in recs]).reshape(len(recs), len(FEATURE_NAMES))
    skip = set(HOLDOUT_COLUMNS) | set(FEATURE_NAMES)
    targets = {k: np.array([float(r[k]) for r in recs]) for k in (recs[0].keys() if recs else []) if k not in skip}
    return X, targets, np.array([float(r["wall_s"]) for r in recs]), np.array([int(r["pass"]) for r in recs])


def holdout_sweeps(sur: "Surrogate") -> tuple[tuple[str, ...], np.ndarray]:
    """Which held-out sweep each shipped held-out row comes from: (sweep names, per-row index into
    them), rows in :func:`load_holdout` order.  A model scored on one sweep (or on a random split:
    name ``"split"``) gives index 0 everywhere."""
    split = sur.meta.get("split")
    if isinstance(split, dict):
        names = tuple(h["name"] for h in split["holdouts"]) if "holdouts" in split else (str(split["holdout"]),)
    else:
        names = ("split",)
    with (sur.directory / sur.meta["holdout"]).open(newline="") as fh:
        idx = np.array([int(r.get("holdout_sweep") or 0) for r in csv.DictReader(fh)], dtype=np.int64)
    return names, idx


def evaluate(
    sur: "Surrogate", X: np.ndarray, targets: dict[str, np.ndarray], predictions: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """Accuracy of a surrogate on full feature rows ``X`` against twin targets (``predictions``:
    ``sur.predict_many(X)`` when the caller already has it)."""
    P = sur.predict_many(X) if predictions is None else predictions
    y_thr = targets["throughput_tok_s"]
    y_st = targets["starved"].astype(bool)
    itl_ok = np.isfinite(targets["itl_ms_mean"])
    ttft_ok = np.isfinite(targets["ttft_ms_p99"])
    thr_ok = y_thr > 0
    sat = targets["throughput_loss"] >= 0.05
    near = np.abs(targets["throughput_loss"] - 0.10) <= 0.05  # within 5 points of the starvation rule
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
    if len(reps) >= 3:
        # one seed against the mean of the others: how far a single twin run sits from a seed mean
        others = np.mean([targets[f"throughput_tok_s_rep{r}"] for r in reps[1:]], axis=0)
        parts["twin_seed0_vs_mean_of_other_seeds_throughput_smape_pct"] = smape(
            targets[f"throughput_tok_s_rep{reps[0]}"], others
        )
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
        # the costly error for the solver: a starved GPU predicted fine (overall, and near the rule)
        "false_not_starved_rate": float(np.mean(~P["starved"][y_st])) if y_st.any() else math.nan,
        "false_not_starved_rate_near_boundary": float(np.mean(~P["starved"][y_st & near]))
        if (y_st & near).any()
        else math.nan,
        "n_starved_near_boundary": float((y_st & near).sum()),
        "starved_macro_f1_near_boundary": macro_f1(y_st[near], P["starved"][near]),
        "starved_accuracy": float(np.mean(y_st == P["starved"])),
        "starved_macro_f1_margin_rule": macro_f1(y_st, P["delivered_frac"] < 0.9),
        "starved_share": float(y_st.mean()) if y_st.size else math.nan,
        "itl_smape_pct": smape(targets["itl_ms_mean"][itl_ok], P["itl_ms"][itl_ok]),
        "ttft_p99_smape_pct": smape(targets["ttft_ms_p99"][ttft_ok], P["ttft_p99_ms"][ttft_ok]),
    }
