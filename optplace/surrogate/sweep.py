"""Sweep generation: sample GPU configurations, evaluate them (twin), store a resumable dataset.

Design (see :class:`SweepDesign`):

* **Pass 1** — a scrambled Sobol sequence over the feasible region: adapters log-uniform in
  1..``max_adapters``; a rank subset of the profile's ranks (round-robin as in the study, or a
  random mix); ``max_loras`` log-uniform in 1..min(adapters, memory cap of the largest rank),
  with extra mass on "one slot per adapter"; an offered load log-uniform relative to a reference
  capacity; rate shapes (equal, the study's halving triples, Zipf); ShareGPT or log-normal lengths;
  Poisson, Gamma or MMPP arrivals.
* **Pass 2** — boundary chains: for further Sobol points, bisect the offered load (in log space)
  between the ends of the load range on the evaluator's starvation verdict, so rows concentrate
  near the starvation boundary where the classifier must be sharp.

Every row's configuration and seed are a pure function of (sweep seed, row index) — never of the
worker — so the local process pool and Ray give identical rows, and an interrupted sweep resumes by
skipping the indices already in the CSV.  The dataset is ``<name>.csv`` plus ``<name>.json``
(provenance: evaluator/profile/twin version, seed, design, feature schema).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from optplace.infra.executors import ExecutorSpec, iter_done
from optplace.infra.outputs import write_text_atomic
from optplace.surrogate.config import ArrivalParams, GpuConfig, GpuMetrics, LengthParams
from optplace.surrogate.features import FEATURE_NAMES, SCHEMA_VERSION, feature_row

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

_SOBOL_DIMS = 12


class SweepEvaluator(Protocol):
    """An evaluator usable in a sweep: callable, self-describing, and aware of the memory cap."""

    def __call__(self, config: GpuConfig) -> GpuMetrics: ...

    def describe(self) -> dict[str, str]: ...

    def slot_cap(self, max_lora_rank: int) -> int: ...


@dataclass(frozen=True, slots=True)
class SweepDesign:
    """What to sample. ``load`` is offered tokens/s ÷ ``ref_capacity_tok_s``."""

    n_points: int = 1500
    n_chains: int = 100
    chain_steps: int = 5
    max_adapters: int = 576
    ranks: tuple[int, ...] = (8, 16, 32)
    duration_s: float = 3600.0
    ref_capacity_tok_s: float = 10000.0
    load_range: tuple[float, float] = (0.03, 2.0)
    full_slots_share: float = 0.25
    sharegpt_share: float = 0.6
    poisson_share: float = 0.5
    gamma_share: float = 0.3

    @property
    def n_rows(self) -> int:
        """Total rows of the sweep (pass 1 + pass 2)."""
        return self.n_points + self.n_chains * self.chain_steps


@dataclass(frozen=True, slots=True)
class RowTask:
    """One evaluation: row index, its group (chain), pass number, load and configuration."""

    index: int
    group: int
    pass_no: int
    load: float
    rate_kind: str
    config: GpuConfig


def _row_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def sobol_unit(seed: int, n: int) -> np.ndarray:
    from scipy.stats import qmc  # scipy ships with scikit-learn; imported lazily (slow import)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balance warning for non-power-of-2 n: harmless here
        return qmc.Sobol(_SOBOL_DIMS, scramble=True, seed=np.random.default_rng([seed, 0x50B0])).random(n)


def _rank_subsets(ranks: Sequence[int]) -> list[tuple[int, ...]]:
    rs = sorted(ranks)
    return [c for k in range(1, len(rs) + 1) for c in itertools.combinations(rs, k)]


def design_config(
    u: np.ndarray,
    design: SweepDesign,
    slot_cap: Callable[[int], int],
    seed: int,
    group: int,
    index: int,
) -> tuple[GpuConfig, float, str] | None:
    """Map a unit-cube point to a configuration (None when no slot count can start).

    ``u[4]`` is the load coordinate (bisected by the boundary chains).  Random choices that shape
    the adapter mix use a generator seeded by (seed, group) so all steps of a chain share the mix;
    the twin's seed comes from (seed, index).
    """
    rng = np.random.default_rng([seed, group, 0xAD])
    n = int(min(design.max_adapters, max(1, math.floor(math.exp(u[0] * math.log(design.max_adapters + 1))))))
    subsets = _rank_subsets(design.ranks)
    subset = subsets[min(int(u[1] * len(subsets)), len(subsets) - 1)]
    if u[2] < 0.5 or len(subset) == 1:
        ranks = [subset[i % len(subset)] for i in range(n)]  # the study's round-robin split
    else:
        p = rng.dirichlet(np.ones(len(subset)))
        ranks = [int(x) for x in rng.choice(subset, size=n, p=p)]
    rank_max = max(ranks)
    cap = min(n, slot_cap(rank_max))
    if cap < 1:
        return None
    if u[3] >= 1.0 - design.full_slots_share:
        slots = cap
    else:
        v = u[3] / (1.0 - design.full_slots_share)
        slots = int(min(cap, max(1, math.floor(math.exp(v * math.log(cap + 1))))))
    lo, hi = design.load_range
    load = math.exp(math.log(lo) + u[4] * (math.log(hi) - math.log(lo)))

    if u[5] < 0.2:
        rate_kind, weights = "equal", np.ones(n)
    elif u[5] < 0.5:
        rate_kind = "halving"  # the study's rate triples a, a/2, a/4, round-robin then shuffled
        weights = np.array([2.0 ** -(i % 3) for i in range(n)])
    else:
        rate_kind = "zipf"
        s = 1.5 * u[6]
        weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    weights = rng.permutation(weights)

    if u[7] < design.sharegpt_share:
        lengths = LengthParams()
    else:
        mean_in = math.exp(math.log(32) + u[8] * (math.log(600) - math.log(32)))
        mean_out = math.exp(math.log(16) + u[9] * (math.log(500) - math.log(16)))
        lengths = LengthParams(kind="lognormal", mean_input_tokens=round(mean_in, 1), mean_output_tokens=round(mean_out, 1))
    mi, mo = lengths.means()

    if u[10] < design.poisson_share:
        arrivals = ArrivalParams()
    elif u[10] < design.poisson_share + design.gamma_share:
        arrivals = ArrivalParams(kind="gamma", cv=round(0.5 + 2.5 * u[11], 3))
    else:
        arrivals = ArrivalParams(kind="mmpp", burst_factor=round(2.0 + 8.0 * u[11], 3), burst_fraction=0.1, mean_burst_s=30.0)

    rate_sum = load * design.ref_capacity_tok_s / (mi + mo)
    rates = tuple(float(x) for x in rate_sum * weights / weights.sum())
    cfg = GpuConfig(
        ranks=tuple(ranks),
        rates_rps=rates,
        max_loras=slots,
        arrivals=arrivals,
        lengths=lengths,
        max_cpu_loras=None,
        duration_s=design.duration_s,
        seed=_row_seed(seed, index),
    )
    return cfg, load, rate_kind


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


# ----------------------------------------------------------------------------------------------
# dataset files


def _fmt(v: Any) -> str:
    # repr(float) round-trips exactly, so rows written by any worker compare equal as text
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


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


def _check_resume(path: Path, prov: dict[str, Any]) -> None:
    old = json.loads(path.read_text())
    keys = ("dataset_version", "evaluator", "seed", "design", "feature_schema_version", "feature_names")
    diff = [k for k in keys if old.get(k) != json.loads(json.dumps(prov[k]))]
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


def _design_from(prov: dict[str, Any]) -> SweepDesign:
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in prov["design"].items()}
    return SweepDesign(**fields)


def replay_units(rows: dict[int, dict[str, str]], design: SweepDesign, seed: int) -> dict[int, tuple[int, np.ndarray]]:
    """``index → (group, unit-cube point)`` of every row of a sweep, pass-2 loads replayed exactly.

    A boundary chain's k-th load is the bisection midpoint after its first k verdicts, so it is
    recomputed from the verdicts stored in ``rows`` (the same arithmetic as :func:`run_sweep`).
    """
    u_all = sobol_unit(seed, design.n_points + design.n_chains)
    out: dict[int, tuple[int, np.ndarray]] = {i: (i, u_all[i]) for i in range(design.n_points) if i in rows}
    for c in range(design.n_chains):
        group = design.n_points + c
        lo, hi = 0.0, 1.0
        for step in range(design.chain_steps):
            index = design.n_points + c * design.chain_steps + step
            if index not in rows:
                break
            mid = 0.5 * (lo + hi)
            u = u_all[group].copy()
            u[4] = mid
            out[index] = (group, u)
            if int(rows[index]["starved"]):
                hi = mid
            else:
                lo = mid
    return out


def replicate_seed(seed: int, index: int, salt: int) -> int:
    """Twin seed of row ``index`` in replicate ``salt`` (≥ 1) of sweep ``seed``."""
    return int(np.random.SeedSequence([seed, index, 0x5EED, salt]).generate_state(1)[0])


REPLICATE_SUBSETS = ("all", "noisy", "boundary")

#: Half-width (loss points) of the band around the starvation rule whose single-seed verdicts flip
#: between twin seeds; the band part of :func:`noisy_row` and the whole of :func:`boundary_row`.
BOUNDARY_BAND = 0.06
#: Loss from which a GPU with fewer slots than adapters counts as saturated in :func:`noisy_row`.
NOISY_SATURATED_LOSS = 0.05

_SUBSET_RULES = {
    "noisy": f"source loss >= {NOISY_SATURATED_LOSS} with max_loras < n_adapters, or |loss - 0.10| <= {BOUNDARY_BAND}",
    "boundary": f"|source loss - 0.10| <= {BOUNDARY_BAND}",
}


def noisy_row(loss: float, n_adapters: float, max_loras: float, max_loss: float = 0.10) -> bool:
    """Rows whose twin label varies most from seed to seed, where seed-averaged labels pay off:
    saturated GPUs (loss ≥ 5 %) with fewer slots than adapters (which adapters win the sticky slots
    is random) and rows within 6 points of the starvation rule (the verdict flips between seeds)."""
    return (loss >= NOISY_SATURATED_LOSS and max_loras < n_adapters) or boundary_row(loss, max_loss)


def boundary_row(loss: float, max_loss: float = 0.10) -> bool:
    """Rows within :data:`BOUNDARY_BAND` of the starvation rule: the ones whose verdict a single twin
    seed gets wrong most often, so extra seeds there buy the most label accuracy per twin run."""
    return abs(loss - max_loss) <= BOUNDARY_BAND


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
    if src_prov.get("evaluator") != json.loads(json.dumps(evaluator.describe())):
        raise ValueError(f"{src}: made by {src_prov.get('evaluator')}, not by {evaluator.describe()}")
    design, seed = _design_from(src_prov), int(src_prov["seed"])
    src_rows = read_rows(src.with_suffix(".csv"))
    units = replay_units(src_rows, design, seed)
    slot_cap = memoize(evaluator.slot_cap)
    tasks: list[RowTask] = []
    for index in sorted(units):
        rec = src_rows[index]
        if subset == "noisy" and not noisy_row(float(rec["throughput_loss"]), float(rec["n_adapters"]),
                                               float(rec["max_loras"])):
            continue
        if subset == "boundary" and not boundary_row(float(rec["throughput_loss"])):
            continue
        group, u = units[index]
        made = design_config(u, design, slot_cap, seed, group=group, index=index)
        if made is None:
            raise ValueError(f"{src}: row {index} does not regenerate a configuration")
        cfg, load, kind = made
        src_names = src_prov.get("feature_names", FEATURE_NAMES)
        feats = feature_row(cfg)[:len(src_names)]
        stored = np.array([float(src_rows[index][n]) for n in src_names])
        if not np.array_equal(feats, stored):
            raise ValueError(f"{src}: row {index} regenerates other features than stored; wrong design/seed?")
        cfg = dataclasses.replace(cfg, seed=replicate_seed(seed, index, salt))
        tasks.append(RowTask(index, group, int(src_rows[index]["pass"]), load, kind, cfg))

    out = Path(out)
    csv_path, prov_path = out.with_suffix(".csv"), out.with_suffix(".json")
    prov = {**src_prov, "replicate_of": src.name, "replicate_salt": salt,
            "source_provenance_seed": seed}
    if subset != "all":
        prov["replicate_subset"] = {"name": subset, "rows": len(tasks), "of": len(units),
                                    "rule": _SUBSET_RULES[subset]}
    if prov_path.exists():
        old = json.loads(prov_path.read_text())
        if (old.get("replicate_of"), old.get("replicate_salt"), old.get("evaluator"),
                old.get("replicate_subset", {}).get("name", "all")) != (src.name, salt, prov["evaluator"], subset):
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


def memoize(fn: Callable[[int], int]) -> Callable[[int], int]:
    cache: dict[int, int] = {}

    def f(r: int) -> int:
        if r not in cache:
            cache[r] = fn(r)
        return cache[r]

    return f


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
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

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
        prov = {**prov, "feature_schema_version": SCHEMA_VERSION, "feature_names": list(FEATURE_NAMES),
                "upgraded_from_schema": 1}
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
    design, seed = _design_from(prov), int(prov["seed"])
    units = replay_units(read_rows(src.with_suffix(".csv")), design, seed)
    slot_cap = memoize(TwinEvaluator(ev["profile"]).slot_cap)
    out = np.empty((len(order), len(FEATURE_NAMES)))
    for j, index in enumerate(order):
        group, u = units[index]
        made = design_config(u, design, slot_cap, seed, group=group, index=index)
        if made is None:
            raise ValueError(f"{path}: row {index} does not regenerate a configuration")
        out[j] = feature_row(made[0])
    if not np.array_equal(out[:, :len(BASE_NAMES)], stored):
        raise ValueError(f"{path}: regenerated schema-1 features differ from the stored ones")
    return out


def iter_tasks(design: SweepDesign, evaluator: SweepEvaluator, seed: int) -> Iterable[RowTask]:
    """Pass-1 tasks of a design (for inspection and benchmarks)."""
    slot_cap = memoize(evaluator.slot_cap)
    for i, u in enumerate(sobol_unit(seed, design.n_points)):
        made = design_config(u, design, slot_cap, seed, group=i, index=i)
        if made is not None:
            cfg, load, kind = made
            yield RowTask(i, i, 1, load, kind, cfg)


def load_datasets(paths: Sequence[Path | str]) -> Dataset:
    """Several sweeps of one profile as one dataset (groups and indices of the k-th offset by k·2³²).

    The provenance is the first sweep's, with the others listed under ``merged_with``; all must
    share the feature schema and label alike (:func:`same_labels`: the same evaluator, or twin versions
    listed together in :data:`LABEL_EQUIVALENT_TWINS`).  Paths that are replicates
    (:func:`run_replicate`) of another listed sweep are pooled into it
    (:func:`pool_replicates` with ``partial=True``: each row's label is the mean over the twin seeds
    it has); ``provenance["label"]`` then says so.
    """
    provs = [json.loads(Path(p).with_suffix(".json").read_text()) if Path(p).with_suffix(".json").exists() else {}
             for p in paths]
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
            f"(replicates {[Path(r).name for v in reps.values() for r in v]}), the others one")
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
            raise ValueError(f"{p}: evaluator {d.provenance.get('evaluator')} does not label like "
                             f"{first.provenance.get('evaluator')}")
    prov = dict(first.provenance)
    prov["merged_with"] = [d.provenance for d in parts[1:]]
    return _stack(parts, prov)


def _stack(parts: list[Dataset], provenance: dict[str, Any], extra_meta: dict[str, np.ndarray] | None = None
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
        if r.provenance.get("replicate_of") != Path(base).name or r.provenance.get("evaluator") != b.provenance.get(
                "evaluator"):
            raise ValueError(f"{p}: not a replicate of {base} by the same evaluator")
    common = set(b.index.tolist())
    if not partial:
        for p, r in zip(replicates, reps):
            missing = common - set(r.index.tolist())
            if missing:
                # a held-out set silently shrinking to the rows a replicate has finished would change
                # what the scores mean: finish (resume) the replicate first
                raise ValueError(f"{p}: replicate lacks {len(missing)} of the {len(common)} rows of {base}; "
                                 "resume it (surrogate replicate) or pass partial=True")
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
    for rep in range(len(parts)):
        targets[f"throughput_tok_s_rep{rep}"] = T["throughput_tok_s"][rep]
        targets[f"starved_rep{rep}"] = T["starved"][rep]
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
    label = (f"mean of {len(parts)} twin seeds per configuration" if not partial else
             f"mean of the twin seeds each configuration has (1 to {len(parts)}; "
             f"{int((seen.sum(axis=0) > 1).sum())} of {keep.size} rows with more than one)")
    prov = {**b.provenance, "replicates": [r.provenance.get("replicate_salt") for r in reps], "label": label}
    return Dataset(b.X[i0], b.feature_names, targets, b.index[i0], b.group[i0], meta, prov)


#: Twin versions that give identical model labels (throughput, verdicts, OOM, ITL, TTFT; they differ
#: only in ``engine_tok_s``, which no model uses), so a held-out sweep of one may be scored next to
#: training rows or held-out sweeps of another.  Checked by re-running configurations of the old
#: held-out replicates with their twin seeds: 100 of 100 in session 3 (surrogate.json note), 62 of 62
#: rows (llama_test_4103_r1 / qwen_test_4203_r1) in session 4 (/work/sweeps2/twincheck_s4.py).
LABEL_EQUIVALENT_TWINS: tuple[frozenset[str], ...] = (frozenset({"0.1.0+9b6736f53690", "0.1.0+f10ef4122c71"}),)


def same_labels(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two evaluator identities (provenance ``evaluator``) label rows alike: equal, or the
    twin on one profile (same profile hash) at versions listed together in :data:`LABEL_EQUIVALENT_TWINS`."""
    if a == b:
        return True
    strip = ("version",)
    if a.get("evaluator") != "twin" or {k: v for k, v in a.items() if k not in strip} != {
            k: v for k, v in b.items() if k not in strip}:
        return False
    return any({a.get("version"), b.get("version")} <= s for s in LABEL_EQUIVALENT_TWINS)


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
            raise ValueError(f"{n}: evaluator {d.provenance.get('evaluator')} does not label like "
                             f"{first.provenance.get('evaluator')} ({names[0]})")
        shared[n] = sum(check_disjoint(parts[i], d, names[i], n) for i in range(j))
    prov = dict(first.provenance)
    prov["holdouts"] = [{"name": n, "seed": d.provenance.get("seed"), "evaluator": d.provenance.get("evaluator"),
                         "replicates": [Path(r).name for r in reps[n]], "n": int(d.index.size),
                         "configurations_also_in_earlier_sweeps": shared[n]}
                        for n, d in zip(names, parts)]
    sweep_of_row = np.concatenate([np.full(d.index.size, k, np.int64) for k, d in enumerate(parts)])
    return _stack(parts, prov, {"holdout_sweep": sweep_of_row})
