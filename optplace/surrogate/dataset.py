"""Sweep datasets as arrays: reading sweep files, pooling seed replicates, merging sweeps, held-out sets.

The files are written by :mod:`optplace.surrogate.execution`; this module only reads them.  Sweeps
merged into one training or held-out set must label alike (:func:`~optplace.surrogate.provenance.same_labels`:
the same evaluator, twin semantics version and profile hash).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optplace.surrogate.design import (
    design_config,
    design_from_provenance,
    memoize,
    replay_units,
)
from optplace.surrogate.features import FEATURE_NAMES, SCHEMA_VERSION, feature_row
from optplace.surrogate.provenance import same_labels

DATASET_VERSION = 1

TARGET_COLUMNS: tuple[str, ...] = (
    "throughput_tok_s",
    "measured_offered_tok_s",
    "throughput_loss",
    "starved",
    "oom",
    "itl_ms_mean",
    "ttft_ms_p50",
    "ttft_ms_p99",
    "engine_tok_s",
    "starved_adapters",
)
META_COLUMNS: tuple[str, ...] = (
    "index",
    "group",
    "pass",
    "seed",
    "load",
    "rate_kind",
    "length_kind",
    "arrival_kind",
    "duration_s",
)
COLUMNS: tuple[str, ...] = META_COLUMNS + FEATURE_NAMES + TARGET_COLUMNS + ("wall_s",)
"""CSV column order. ``wall_s`` is the only column that differs between repeated runs."""


def read_rows(csv_path: Path) -> dict[int, dict[str, str]]:
    """Rows already in a dataset CSV, keyed by index (a torn last line is ignored)."""
    rows: dict[int, dict[str, str]] = {}
    if not csv_path.exists():
        return rows
    with csv_path.open(newline="") as fh:
        for rec in csv.DictReader(fh):
            if rec.get("wall_s") in (None, ""):
                continue  # interrupted mid-write
            rows[int(rec["index"])] = rec
    return rows


# ----------------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True, slots=True)
class Dataset:
    """A sweep dataset as arrays, rows sorted by index."""

    X: np.ndarray
    feature_names: tuple[str, ...]
    targets: dict[str, np.ndarray]
    index: np.ndarray
    group: np.ndarray
    meta: dict[str, np.ndarray]
    provenance: dict[str, Any]


def load_dataset(path: Path | str) -> Dataset:
    """Load ``<path>.csv`` (+ ``.json``) written by :func:`run_sweep`."""
    p = Path(path)
    csv_path, prov_path = p.with_suffix(".csv"), p.with_suffix(".json")
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    names = tuple(prov.get("feature_names", FEATURE_NAMES))
    rows = read_rows(csv_path)
    order = sorted(rows)
    recs = [rows[i] for i in order]

    def col(name: str, dtype: Any = np.float64) -> np.ndarray:
        return np.array([float(r[name]) for r in recs], dtype=np.float64).astype(dtype)

    if int(prov.get("feature_schema_version", SCHEMA_VERSION)) == 1 and recs:
        X = _upgrade_v1(p, prov, order, np.column_stack([col(n) for n in names]))
        prov = {
            **prov,
            "feature_schema_version": SCHEMA_VERSION,
            "feature_names": list(FEATURE_NAMES),
            "upgraded_from_schema": 1,
        }
        names = FEATURE_NAMES
    else:
        X = np.column_stack([col(n) for n in names]) if recs else np.zeros((0, len(names)))
    targets = {t: col(t) for t in TARGET_COLUMNS}
    meta = {m: np.array([r[m] for r in recs]) for m in ("rate_kind", "length_kind", "arrival_kind")}
    meta["load"] = col("load")
    meta["pass"] = col("pass", np.int64)
    meta["wall_s"] = col("wall_s")
    meta["seed"] = col("seed", np.int64)  # the row's twin seed (identifies the twin run with the features)
    return Dataset(X, names, targets, col("index", np.int64), col("group", np.int64), meta, prov)


def _upgrade_v1(path: Path, prov: dict[str, Any], order: list[int], stored: np.ndarray) -> np.ndarray:
    """Schema-2 rows of a schema-1 twin sweep (or replicate): the configurations are regenerated from
    the design and seed (the boundary chains replayed from the source sweep's own verdicts) and their
    schema-1 features must equal the stored ones exactly."""
    from optplace.surrogate.features import BASE_NAMES
    from optplace.surrogate.twin_eval import TwinEvaluator

    ev = prov.get("evaluator", {})
    if ev.get("evaluator") != "twin" or tuple(prov.get("feature_names", ())) != BASE_NAMES:
        raise ValueError(f"{path}: schema-1 dataset of a non-twin evaluator; re-run the sweep")
    src = path.parent / prov["replicate_of"] if prov.get("replicate_of") else path
    design, seed = design_from_provenance(prov), int(prov["seed"])
    units = replay_units(read_rows(src.with_suffix(".csv")), design, seed)
    slot_cap = memoize(TwinEvaluator(ev["profile"]).slot_cap)
    out = np.empty((len(order), len(FEATURE_NAMES)))
    for j, index in enumerate(order):
        group, u = units[index]
        made = design_config(u, design, slot_cap, seed, group=group, index=index)
        if made is None:
            raise ValueError(f"{path}: row {index} does not regenerate a configuration")
        out[j] = feature_row(made[0])
    if not np.array_equal(out[:, : len(BASE_NAMES)], stored):
        raise ValueError(f"{path}: regenerated schema-1 features differ from the stored ones")
    return out


def load_datasets(paths: Sequence[Path | str]) -> Dataset:
    """Several sweeps of one profile as one dataset (groups and indices of the k-th offset by k·2³²).

    The provenance is the first sweep's, with the others listed under ``merged_with``; all must
    share the feature schema and label alike (:func:`~optplace.surrogate.provenance.same_labels`: the same
    evaluator, twin semantics version and profile hash).  Paths that are replicates
    (:func:`run_replicate`) of another listed sweep are pooled into it
    (:func:`pool_replicates` with ``partial=True``: each row's label is the mean over the twin seeds
    it has); ``provenance["label"]`` then says so.
    """
    provs = [
        json.loads(Path(p).with_suffix(".json").read_text()) if Path(p).with_suffix(".json").exists() else {}
        for p in paths
    ]
    reps: dict[str, list[Path | str]] = {}
    bases: list[Path | str] = []
    for p, pv in zip(paths, provs):
        if pv.get("replicate_of"):
            reps.setdefault(str(pv["replicate_of"]), []).append(p)
        else:
            bases.append(p)
    names = {Path(b).name for b in bases}
    stray = [r for k, v in reps.items() if k not in names for r in v]
    if stray:
        raise ValueError(f"replicates without their source sweep among the paths: {stray}")
    if reps:
        common = set(TARGET_COLUMNS) | {"n_seeds"}
        parts = []
        for b in bases:
            d = pool_replicates(b, reps[Path(b).name], partial=True) if Path(b).name in reps else load_dataset(b)
            if "n_seeds" not in d.targets:
                d = dataclasses.replace(d, targets={**d.targets, "n_seeds": np.ones(d.index.size)})
            parts.append(dataclasses.replace(d, targets={k: v for k, v in d.targets.items() if k in common}))
        n_multi = int(sum(int((d.targets["n_seeds"] > 1).sum()) for d in parts))
        merged = _merge(parts, bases)
        merged.provenance["label"] = (
            f"per-configuration mean over its twin seeds: {n_multi} of {merged.index.size} rows have 2+ seeds "
            f"(replicates {[Path(r).name for v in reps.values() for r in v]}), the others one"
        )
        return merged
    parts = [load_dataset(p) for p in paths]
    merged = _merge(parts, list(paths))
    merged.provenance.setdefault("label", "one twin seed per configuration")
    return merged


def _merge(parts: list[Dataset], paths: Sequence[Path | str]) -> Dataset:
    """Datasets of one profile as one (see :func:`load_datasets`)."""
    if len(parts) == 1:
        return dataclasses.replace(parts[0], provenance=dict(parts[0].provenance))
    first = parts[0]
    for p, d in zip(paths[1:], parts[1:]):
        if d.feature_names != first.feature_names:
            raise ValueError(f"{p}: feature names differ from {paths[0]}")
        if not same_labels(first.provenance.get("evaluator", {}), d.provenance.get("evaluator", {})):
            raise ValueError(
                f"{p}: evaluator {d.provenance.get('evaluator')} does not label like "
                f"{first.provenance.get('evaluator')}"
            )
    prov = dict(first.provenance)
    prov["merged_with"] = [d.provenance for d in parts[1:]]
    return _stack(parts, prov)


def _stack(
    parts: list[Dataset], provenance: dict[str, Any], extra_meta: dict[str, np.ndarray] | None = None
) -> Dataset:
    """Checked datasets of one profile stacked row-wise; each part's index and group are offset into its
    own 2**32 block so rows of different sweeps never share an id."""
    off = [np.int64(k) << np.int64(32) for k in range(len(parts))]
    meta = {m: np.concatenate([d.meta[m] for d in parts]) for m in parts[0].meta}
    return Dataset(
        X=np.vstack([d.X for d in parts]),
        feature_names=parts[0].feature_names,
        targets={t: np.concatenate([d.targets[t] for d in parts]) for t in parts[0].targets},
        index=np.concatenate([d.index + o for d, o in zip(parts, off)]),
        group=np.concatenate([d.group + o for d, o in zip(parts, off)]),
        meta={**meta, **(extra_meta or {})},
        provenance=provenance,
    )


def pool_replicates(base: Path | str, replicates: Sequence[Path | str], partial: bool = False) -> Dataset:
    """A sweep with its replicates (:func:`run_replicate`) as one dataset of per-configuration means.

    Rows present in every replicate are kept (``partial``: every row of the base sweep, each
    averaged over the seeds it has — for replicates of a subset, ``run_replicate(subset="noisy")``).
    Throughput, offered tokens, latencies and counts are averaged over the seeds;
    ``throughput_loss`` and ``starved`` are the twin's rule applied to the pooled run (delivered over
    all seeds ÷ offered over all seeds, starved at the default ``max_throughput_loss``, or out of
    memory in any).  The single-seed labels stay available as ``throughput_tok_s_rep<k>`` /
    ``starved_rep<k>`` (k = 0 is the base sweep; NaN where a replicate lacks the row) and
    ``n_seeds`` counts the seeds of each row.
    """
    from optplace.specs import Constraints

    max_loss = Constraints().max_throughput_loss
    b = load_dataset(base)
    reps = [load_dataset(r) for r in replicates]
    for p, r in zip(replicates, reps):
        if r.provenance.get("replicate_of") != Path(base).name or not same_labels(
            r.provenance.get("evaluator", {}), b.provenance.get("evaluator", {})
        ):
            raise ValueError(f"{p}: not a replicate of {base} by the same evaluator")
    common = set(b.index.tolist())
    if not partial:
        for p, r in zip(replicates, reps):
            missing = common - set(r.index.tolist())
            if missing:
                # a held-out set silently shrinking to the rows a replicate has finished would change
                # what the scores mean: finish (resume) the replicate first
                raise ValueError(
                    f"{p}: replicate lacks {len(missing)} of the {len(common)} rows of {base}; "
                    "resume it (surrogate replicate) or pass partial=True"
                )
    keep = np.array(sorted(common), dtype=np.int64)
    parts = [b, *reps]
    i0 = np.searchsorted(b.index, keep)
    T = {k: np.full((len(parts), keep.size), np.nan) for k in b.targets}
    for j, d in enumerate(parts):
        ix = np.searchsorted(d.index, keep)
        ix_c = np.minimum(ix, max(d.index.size - 1, 0))
        has = (d.index.size > 0) & (d.index[ix_c] == keep) if d.index.size else np.zeros(keep.size, bool)
        if j and not np.array_equal(d.X[ix_c[has]], b.X[i0[has]]):
            raise ValueError("replicate rows have other features than the base sweep")
        for k in b.targets:
            T[k][j, has] = d.targets[k][ix_c[has]]
    seen = np.isfinite(T["throughput_tok_s"])
    with np.errstate(invalid="ignore"):
        targets = {k: np.nanmean(v, axis=0) for k, v in T.items()}
    oom = np.nanmax(T["oom"], axis=0)
    off = np.nansum(T["measured_offered_tok_s"], axis=0)
    loss = np.where(off > 0, 1.0 - np.nansum(T["throughput_tok_s"], axis=0) / np.where(off > 0, off, 1.0), 0.0)
    targets["oom"] = oom
    targets["throughput_loss"] = np.where(oom > 0, 1.0, loss)
    targets["starved"] = ((oom > 0) | (loss >= max_loss)).astype(np.float64)
    for j in range(len(parts)):
        targets[f"throughput_tok_s_rep{j}"] = T["throughput_tok_s"][j]
        targets[f"starved_rep{j}"] = T["starved"][j]
    targets["n_seeds"] = seen.sum(axis=0).astype(np.float64)
    meta = {m: v[i0] for m, v in b.meta.items()}
    # wall seconds of one twin run (the seeds' mean), so per-configuration sweep costs stay comparable
    W = np.full((len(parts), keep.size), np.nan)
    for j, d in enumerate(parts):
        ix = np.searchsorted(d.index, keep)
        ix_c = np.minimum(ix, max(d.index.size - 1, 0))
        has = (d.index[ix_c] == keep) if d.index.size else np.zeros(keep.size, bool)
        W[j, has] = d.meta["wall_s"][ix_c[has]]
    meta["wall_s"] = np.nanmean(W, axis=0)
    label = (
        f"mean of {len(parts)} twin seeds per configuration"
        if not partial
        else f"mean of the twin seeds each configuration has (1 to {len(parts)}; "
        f"{int((seen.sum(axis=0) > 1).sum())} of {keep.size} rows with more than one)"
    )
    prov = {**b.provenance, "replicates": [r.provenance.get("replicate_salt") for r in reps], "label": label}
    return Dataset(b.X[i0], b.feature_names, targets, b.index[i0], b.group[i0], meta, prov)


def _row_keys(d: Dataset, with_seed: bool) -> set[bytes]:
    X = np.ascontiguousarray(d.X, dtype=np.float64)
    if not with_seed:
        return {r.tobytes() for r in X}
    return {r.tobytes() + int(s).to_bytes(8, "little", signed=True) for r, s in zip(X, d.meta["seed"])}


def check_disjoint(a: Dataset, b: Dataset, a_name: str, b_name: str) -> int:
    """Refuse two datasets that share a sweep (seed and design) or any twin run (a row with the same
    configuration *and* twin seed).  Returns how many configurations they share under other twin
    seeds: sweeps of other seeds can draw the same degenerate configuration (a boundary chain on
    one adapter with one slot bisects the same loads), which is a fair draw, not a leak."""
    pa, pb = a.provenance, b.provenance
    if pa.get("seed") == pb.get("seed") and pa.get("design") == pb.get("design"):
        raise ValueError(f"{b_name}: the same sweep (seed {pb.get('seed')}, same design) as {a_name}")
    if a.feature_names != b.feature_names:
        return 0
    same_runs = len(_row_keys(a, True) & _row_keys(b, True))
    if same_runs:
        raise ValueError(f"{b_name}: {same_runs} twin runs (configuration and twin seed) also in {a_name}")
    return len(_row_keys(a, False) & _row_keys(b, False))


def load_holdouts(holdouts: Sequence[Path | str], replicates: Sequence[Path | str] = ()) -> Dataset:
    """Several held-out sweeps of one profile as one held-out set, each with its seed replicates.

    Each sweep is pooled with the replicates whose provenance names it (:func:`pool_replicates`,
    every row in every replicate: seed-mean labels).  All sweeps must have the same number of
    replicates (the labels must mean the same thing), the same features, evaluators that label alike
    (:func:`same_labels`: one profile), and no sweep or twin run in common (:func:`check_disjoint`).  Groups and indices
    of the k-th sweep are offset by k·2³²; ``meta["holdout_sweep"]`` is k, and
    ``provenance["holdouts"]`` lists the sweeps in that order.
    """
    names = [Path(h).name for h in holdouts]
    if not names:
        raise ValueError("no held-out sweep given")
    if len(set(names)) != len(names):
        raise ValueError(f"a held-out sweep is listed twice: {names}")
    reps: dict[str, list[Path | str]] = {n: [] for n in names}
    for r in replicates:
        of = json.loads(Path(r).with_suffix(".json").read_text()).get("replicate_of")
        if of not in reps:
            raise ValueError(f"{r}: replicate of {of!r}, which is not among the held-out sweeps {names}")
        reps[of].append(r)
    counts = {n: len(v) for n, v in reps.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"held-out sweeps with different numbers of seed replicates: {counts}")
    parts = [pool_replicates(h, reps[n]) if reps[n] else load_dataset(h) for h, n in zip(holdouts, names)]
    first = parts[0]
    shared: dict[str, int] = {}
    for j, (n, d) in enumerate(zip(names, parts)):
        if d.feature_names != first.feature_names:
            raise ValueError(f"{n}: feature names differ from {names[0]}")
        if not same_labels(first.provenance.get("evaluator", {}), d.provenance.get("evaluator", {})):
            raise ValueError(
                f"{n}: evaluator {d.provenance.get('evaluator')} does not label like "
                f"{first.provenance.get('evaluator')} ({names[0]})"
            )
        shared[n] = sum(check_disjoint(parts[i], d, names[i], n) for i in range(j))
    prov = dict(first.provenance)
    prov["holdouts"] = [
        {
            "name": n,
            "seed": d.provenance.get("seed"),
            "evaluator": d.provenance.get("evaluator"),
            "replicates": [Path(r).name for r in reps[n]],
            "n": int(d.index.size),
            "configurations_also_in_earlier_sweeps": shared[n],
        }
        for n, d in zip(names, parts)
    ]
    sweep_of_row = np.concatenate([np.full(d.index.size, k, np.int64) for k, d in enumerate(parts)])
    return _stack(parts, prov, {"holdout_sweep": sweep_of_row})
