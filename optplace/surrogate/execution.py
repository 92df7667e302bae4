"""Sweep execution: evaluate a design's rows on an executor, append them to a resumable dataset.

A sweep is ``<name>.csv`` (one row per evaluated configuration, :data:`~optplace.surrogate.dataset.COLUMNS`)
plus ``<name>.json`` (provenance: the evaluator's identity — for the twin its semantics version and
the profile hash — the sweep seed, the design and the feature schema).  Re-running a sweep into the
same name resumes it: the provenance must match, and rows already in the CSV are skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from optplace.infra.executors import ExecutorSpec, iter_done
from optplace.infra.outputs import write_text_atomic
from optplace.surrogate.dataset import COLUMNS, DATASET_VERSION, read_rows
from optplace.surrogate.design import (
    REPLICATE_SUBSETS,
    SUBSET_RULES,
    RowTask,
    SweepDesign,
    SweepEvaluator,
    boundary_row,
    design_config,
    design_from_provenance,
    memoize,
    noisy_row,
    replay_units,
    replicate_seed,
    sobol_unit,
)
from optplace.surrogate.features import FEATURE_NAMES, SCHEMA_VERSION, feature_row
from optplace.surrogate.provenance import same_labels

# ----------------------------------------------------------------------------------------------
# executors


def evaluate_task(evaluator: SweepEvaluator, task: RowTask) -> dict[str, Any]:
    """Evaluate one row and return its CSV record (runs in a worker)."""
    t0 = time.perf_counter()
    m = evaluator(task.config)
    wall = time.perf_counter() - t0
    cfg = task.config
    feats = feature_row(cfg)
    rec: dict[str, Any] = {
        "index": task.index,
        "group": task.group,
        "pass": task.pass_no,
        "seed": cfg.seed,
        "load": task.load,
        "rate_kind": task.rate_kind,
        "length_kind": cfg.lengths.kind,
        "arrival_kind": cfg.arrivals.kind,
        "duration_s": cfg.duration_s,
    }
    rec.update({name: float(v) for name, v in zip(FEATURE_NAMES, feats)})
    rec.update(
        {
            "throughput_tok_s": m.throughput_tok_s,
            "measured_offered_tok_s": m.offered_tok_s,
            "throughput_loss": m.throughput_loss,
            "starved": int(m.starved),
            "oom": int(m.oom),
            "itl_ms_mean": m.itl_ms_mean,
            "ttft_ms_p50": m.ttft_ms_p50,
            "ttft_ms_p99": m.ttft_ms_p99,
            "engine_tok_s": m.engine_tok_s,
            "starved_adapters": m.starved_adapters,
            "wall_s": m.wall_s if m.wall_s > 0 else wall,
        }
    )
    return rec


class Executor(Protocol):
    """Runs ``evaluate_task`` over tasks; yields records as they finish (any order)."""

    def run(self, evaluator: SweepEvaluator, tasks: Sequence[RowTask]) -> Iterator[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class LocalExecutor:
    """A local process pool (``workers`` processes; 1 = in this process, no pool)."""

    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))

    def run(self, evaluator: SweepEvaluator, tasks: Sequence[RowTask]) -> Iterator[dict[str, Any]]:
        return _records(evaluator, tasks, ExecutorSpec(kind="local", workers=self.workers))


@dataclass(frozen=True, slots=True)
class RayExecutor:
    """Ray tasks on a cluster (``address``) or a local Ray instance (``address=None``).

    ``ray`` is an optional extra (``pip install 'optplace[ray]'``), imported only when used.
    """

    address: str | None = None
    num_cpus: int | None = None

    def run(self, evaluator: SweepEvaluator, tasks: Sequence[RowTask]) -> Iterator[dict[str, Any]]:
        return _records(evaluator, tasks, ExecutorSpec(kind="ray", workers=self.num_cpus, address=self.address))


def _records(evaluator: SweepEvaluator, tasks: Sequence[RowTask], spec: ExecutorSpec) -> Iterator[dict[str, Any]]:
    """Sweep rows as they finish, through the project's one fan-out (``optplace.infra.executors``)."""
    for _, rec in iter_done(partial(evaluate_task, evaluator), tasks, spec):
        yield rec


def _fmt(v: Any) -> str:
    # repr(float) round-trips exactly, so rows written by any worker compare equal as text
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


@dataclass(frozen=True, slots=True)
class SweepResult:
    """Where the dataset went and what this call did."""

    csv_path: Path
    provenance_path: Path
    rows_total: int
    rows_new: int
    wall_s: float


def _provenance(evaluator: SweepEvaluator, design: SweepDesign, seed: int) -> dict[str, Any]:
    from optplace import __version__

    return {
        "dataset_version": DATASET_VERSION,
        "optplace_version": __version__,
        "evaluator": evaluator.describe(),
        "seed": seed,
        "design": asdict(design),
        "feature_schema_version": SCHEMA_VERSION,
        "feature_names": list(FEATURE_NAMES),
        "columns": list(COLUMNS),
    }


def sweep_matches(path: Path, prov: dict[str, Any]) -> list[str]:
    """Provenance fields in which the sweep file ``path`` (``.json``) differs from ``prov`` (the evaluator
    compared as labels: :func:`~optplace.surrogate.provenance.same_labels`); empty: it may be resumed."""
    old = json.loads(path.read_text())
    keys = ("dataset_version", "seed", "design", "feature_schema_version", "feature_names")
    diff = [k for k in keys if old.get(k) != json.loads(json.dumps(prov[k]))]
    if not same_labels(old.get("evaluator", {}), json.loads(json.dumps(prov["evaluator"]))):
        diff.insert(0, "evaluator")
    return diff


def _check_resume(path: Path, prov: dict[str, Any]) -> None:
    diff = sweep_matches(path, prov)
    if diff:
        raise ValueError(f"{path}: cannot resume, the existing sweep differs in {diff}; use another output name")


def run_sweep(
    evaluator: SweepEvaluator,
    out: Path | str,
    design: SweepDesign = SweepDesign(),
    seed: int = 0,
    executor: Executor | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run (or resume) a sweep, appending rows to ``<out>.csv``; provenance in ``<out>.json``."""
    out = Path(out)
    csv_path = out.with_suffix(".csv")
    prov_path = out.with_suffix(".json")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    prov = _provenance(evaluator, design, seed)
    if prov_path.exists():
        _check_resume(prov_path, prov)
    else:
        write_text_atomic(prov_path, json.dumps(prov, indent=2, sort_keys=True) + "\n")
    executor = executor or LocalExecutor()
    t0 = time.perf_counter()
    rows = read_rows(csv_path)
    n_before = len(rows)
    slot_cap = memoize(evaluator.slot_cap)
    u_all = sobol_unit(seed, design.n_points + design.n_chains)

    _drop_torn_tail(csv_path)
    new_file = not csv_path.exists() or csv_path.stat().st_size == 0
    with csv_path.open("a", newline="") as fh, _Progress(progress, design.n_rows, len(rows)) as bar:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(COLUMNS)

        def consume(tasks: list[RowTask]) -> None:
            for rec in executor.run(evaluator, tasks):
                writer.writerow([_fmt(rec[c]) for c in COLUMNS])
                fh.flush()
                rows[int(rec["index"])] = {c: _fmt(rec[c]) for c in COLUMNS}
                bar.advance()

        # pass 1: Sobol points
        tasks: list[RowTask] = []
        for i in range(design.n_points):
            if i in rows:
                continue
            made = design_config(u_all[i], design, slot_cap, seed, group=i, index=i)
            if made is None:
                bar.skip()
                continue
            cfg, load, kind = made
            tasks.append(RowTask(i, i, 1, load, kind, cfg))
        consume(tasks)

        # pass 2: boundary chains, one bisection step of every chain per round
        lo_u = np.zeros(design.n_chains)
        hi_u = np.ones(design.n_chains)
        alive = np.ones(design.n_chains, dtype=bool)
        for step in range(design.chain_steps):
            tasks = []
            for c in range(design.n_chains):
                group = design.n_points + c
                index = design.n_points + c * design.chain_steps + step
                if not alive[c]:
                    bar.skip()
                    continue
                mid = 0.5 * (lo_u[c] + hi_u[c])
                if index not in rows:
                    u = u_all[group].copy()
                    u[4] = mid
                    made = design_config(u, design, slot_cap, seed, group=group, index=index)
                    if made is None:
                        alive[c] = False
                        bar.skip()
                        continue
                    cfg, load, kind = made
                    tasks.append(RowTask(index, group, 2, load, kind, cfg))
            consume(tasks)
            for c in range(design.n_chains):
                index = design.n_points + c * design.chain_steps + step
                if not alive[c] or index not in rows:
                    continue
                mid = 0.5 * (lo_u[c] + hi_u[c])
                if int(rows[index]["starved"]):
                    hi_u[c] = mid
                else:
                    lo_u[c] = mid
    return SweepResult(csv_path, prov_path, len(rows), len(rows) - n_before, time.perf_counter() - t0)


def run_replicate(
    evaluator: SweepEvaluator,
    source: Path | str,
    out: Path | str,
    salt: int = 1,
    executor: Executor | None = None,
    progress: bool = True,
    subset: str = "all",
) -> SweepResult:
    """Re-evaluate every row of a finished sweep with another twin seed (resumable).

    The configurations are regenerated from the source's provenance and checked against its stored
    features; only the twin's seed changes.  The result is a dataset of the same columns and
    indices, whose provenance names the source and the salt, so :func:`pool_replicates` can average
    the two — the per-configuration mean of several seeds is a less noisy label where the twin's
    own seed-to-seed spread is large (saturated GPUs with fewer slots than adapters).
    ``subset="noisy"`` re-runs only the source rows :func:`noisy_row` selects, ``subset="boundary"``
    only those :func:`boundary_row` selects (pool either with ``pool_replicates(..., partial=True)``).
    """
    if subset not in REPLICATE_SUBSETS:
        raise ValueError(f"subset must be one of {REPLICATE_SUBSETS}, got {subset!r}")
    if salt < 1:
        raise ValueError(f"salt must be >= 1 (0 is the source's own seed), got {salt}")
    src = Path(source)
    src_prov = json.loads(src.with_suffix(".json").read_text())
    if src_prov.get("replicate_of"):
        raise ValueError(f"{src}: is itself a replicate; pass the original sweep")
    if not same_labels(src_prov.get("evaluator", {}), json.loads(json.dumps(evaluator.describe()))):
        raise ValueError(f"{src}: made by {src_prov.get('evaluator')}, not by {evaluator.describe()}")
    design, seed = design_from_provenance(src_prov), int(src_prov["seed"])
    src_rows = read_rows(src.with_suffix(".csv"))
    units = replay_units(src_rows, design, seed)
    slot_cap = memoize(evaluator.slot_cap)
    tasks: list[RowTask] = []
    for index in sorted(units):
        rec = src_rows[index]
        if subset == "noisy" and not noisy_row(
            float(rec["throughput_loss"]), float(rec["n_adapters"]), float(rec["max_loras"])
        ):
            continue
        if subset == "boundary" and not boundary_row(float(rec["throughput_loss"])):
            continue
        group, u = units[index]
        made = design_config(u, design, slot_cap, seed, group=group, index=index)
        if made is None:
            raise ValueError(f"{src}: row {index} does not regenerate a configuration")
        cfg, load, kind = made
        src_names = src_prov.get("feature_names", FEATURE_NAMES)
        feats = feature_row(cfg)[: len(src_names)]
        stored = np.array([float(src_rows[index][n]) for n in src_names])
        if not np.array_equal(feats, stored):
            raise ValueError(f"{src}: row {index} regenerates other features than stored; wrong design/seed?")
        cfg = dataclasses.replace(cfg, seed=replicate_seed(seed, index, salt))
        tasks.append(RowTask(index, group, int(src_rows[index]["pass"]), load, kind, cfg))

    out = Path(out)
    csv_path, prov_path = out.with_suffix(".csv"), out.with_suffix(".json")
    prov = {**src_prov, "replicate_of": src.name, "replicate_salt": salt, "source_provenance_seed": seed}
    if subset != "all":
        prov["replicate_subset"] = {"name": subset, "rows": len(tasks), "of": len(units), "rule": SUBSET_RULES[subset]}
    if prov_path.exists():
        old = json.loads(prov_path.read_text())
        if (
            old.get("replicate_of"),
            old.get("replicate_salt"),
            old.get("evaluator"),
            old.get("replicate_subset", {}).get("name", "all"),
        ) != (src.name, salt, prov["evaluator"], subset):
            raise ValueError(f"{prov_path}: cannot resume, it replicates another sweep or salt")
    else:
        write_text_atomic(prov_path, json.dumps(prov, indent=2, sort_keys=True) + "\n")
    t0 = time.perf_counter()
    rows = read_rows(csv_path)
    n_before = len(rows)
    _drop_torn_tail(csv_path)
    new_file = not csv_path.exists() or csv_path.stat().st_size == 0
    todo = [t for t in tasks if t.index not in rows]
    ex = executor or LocalExecutor()
    with csv_path.open("a", newline="") as fh, _Progress(progress, len(tasks), len(tasks) - len(todo)) as bar:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(COLUMNS)
        for rec in ex.run(evaluator, todo):
            writer.writerow([_fmt(rec[c]) for c in COLUMNS])
            fh.flush()
            rows[int(rec["index"])] = rec
            bar.advance()
    return SweepResult(csv_path, prov_path, len(rows), len(rows) - n_before, time.perf_counter() - t0)


def _drop_torn_tail(csv_path: Path) -> None:
    """Cut a half-written last line (an interrupted append) so new rows start on a fresh line."""
    if not csv_path.exists():
        return
    data = csv_path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with csv_path.open("r+b") as fh:
            fh.truncate(cut)


class _Progress:
    """rich progress bar, or nothing."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled = enabled
        self.total = total
        self.done = done
        self._p: Any = None
        self._t: Any = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeRemainingColumn,
            )

            self._p = Progress("[bold]sweep", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self._p.__enter__()
            self._t = self._p.add_task("sweep", total=self.total, completed=self.done)
        return self

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._t)

    def skip(self) -> None:
        if self._p is not None:
            self._p.update(self._t, total=max(0, self._p.tasks[0].total - 1))

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
