"""Typed access to the reference measurements (an external input: the artefact of arXiv:2508.08343).

Pass their folder with ``--reference`` or ``$OPTPLACE_REFERENCE`` (:func:`find_reference_dir` says
where else it looks). The folder holds tidy CSVs extracted from the published study's artefact (real
H100 runs of vLLM 0.8.5 V1 with many LoRA adapters, plus the authors' digital-twin replays). This module loads the
``dt_validation`` 1-hour runs of ``real_runs.csv`` into frozen :class:`RefRun` records, joined with
the published twin's figures from ``sim_runs.csv`` / ``twin_vs_real.csv``.

Per-adapter ranks and rates are rebuilt the way the study's benchmark assigned them (reference README,
"Workload for the 1-hour runs"): ranks round-robin from the ``--dummy-lora-modules`` list, rates
round-robin from the rate list (whose order is the one in the config-group folder name), then the rates
are shuffled. The real shuffle is unknown, so we shuffle with a generator seeded by ``seed`` and the
run id; the multiset of rates per rank class is all that matters statistically.

Only the ``csv`` module and NumPy are used (no pandas: it is not a runtime dependency).
"""

from __future__ import annotations

import csv
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PublishedTwinRun",
    "RefRun",
    "ReferenceNotFound",
    "find_reference_dir",
    "find_shared_dir",
    "load_dt_validation",
    "read_csv_rows",
]

WINDOW_S = 3600.0


class ReferenceNotFound(FileNotFoundError):
    """The reference-data folder could not be located."""


@dataclass(frozen=True, slots=True)
class PublishedTwinRun:
    """The published digital twin's replay of one real run (``sim_runs.csv`` + ``twin_vs_real.csv``)."""

    total_throughput: float
    input_throughput: float
    output_throughput: float
    itl_ms: float
    ttft_ms: float
    finished: int
    arrivals: int
    starved: bool | None  # the 10 % rule against the real offered load (twin_vs_real.csv), None if absent
    ape_total_throughput_pct: float | None
    ape_itl_pct: float | None


@dataclass(frozen=True, slots=True)
class RefRun:
    """One ``dt_validation`` real run (1-hour window), with its per-adapter workload rebuilt.

    Measured fields are ``None`` for runs that never served (``failed_*``) or printed no summary.
    ``adapter_ranks[i]`` / ``adapter_rates[i]`` describe served adapter ``i`` (``max_cpu_loras`` of them).
    """

    run_id: str
    model: str
    config_group: str
    status: str
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    rank_list: tuple[int, ...]
    rate_list: tuple[float, ...]
    adapter_ranks: tuple[int, ...]
    adapter_rates: tuple[float, ...]
    window_s: float
    pool_mean_input_tokens: float | None
    pool_mean_output_tokens: float | None
    total_throughput: float | None
    input_throughput: float | None
    output_throughput: float | None
    mean_itl_ms: float | None
    mean_ttft_ms: float | None
    median_ttft_ms: float | None
    mean_tpot_ms: float | None
    completed: int | None
    twin_arrivals: int | None
    offered_total_tok_s: float | None
    throughput_loss_frac: float | None
    starved: bool | None
    kv_cache_tokens: int | None
    mean_running: float | None
    mean_waiting: float | None
    mean_kv_usage: float | None
    preemptions_in_window: int | None
    published: PublishedTwinRun | None

    @property
    def n_adapters(self) -> int:
        """Number of served adapters (= ``max_cpu_loras``)."""
        return self.max_cpu_loras

    @property
    def aggregate_rate_rps(self) -> float:
        """Sum of the per-adapter Poisson rates [req/s]."""
        return float(sum(self.adapter_rates))

    @property
    def has_results(self) -> bool:
        """True when the real run printed a benchmark summary (status ``ok``)."""
        return self.status == "ok"

    @property
    def is_oom(self) -> bool:
        """True when the real server failed at start because the KV cache could not hold one sequence."""
        return self.status == "failed_oom_kv_cache"


def find_shared_dir(name: str, marker: str, env_var: str, explicit: str | os.PathLike[str] | None = None) -> Path:
    """Locate a folder of external data (reference measurements, request traces) that is not shipped.

    Order: ``explicit``; the ``env_var`` environment variable; a ``shared/NAME`` folder beside the
    checkout (the parent of the repository root, for an editable install run from a clean clone that
    sits next to a ``shared/`` folder); the same beside, then below, the current directory. The first
    that holds ``marker`` wins; :class:`ReferenceNotFound` lists every place tried. This is the only
    place that knows these defaults.
    """
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(Path(explicit))
    env = os.environ.get(env_var)
    if env:
        candidates.append(Path(env))
    repo_root = Path(__file__).resolve().parents[2]
    candidates.append(repo_root.parent / "shared" / name)
    candidates.append(Path.cwd().parent / "shared" / name)
    candidates.append(Path.cwd() / "shared" / name)
    for c in candidates:
        if (c / marker).is_file():
            return c
    raise ReferenceNotFound(
        f"{name} data not found (pass the folder or set {env_var}); tried: " + ", ".join(str(c) for c in candidates)
    )


def find_reference_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Locate the reference measurements (the folder holding ``real_runs.csv``): ``explicit``, then
    ``$OPTPLACE_REFERENCE``, then the defaults of :func:`find_shared_dir`."""
    return find_shared_dir("reference", "real_runs.csv", "OPTPLACE_REFERENCE", explicit)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Read a CSV file into a list of row dicts (strings, as stored)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _f(v: str | None) -> float | None:
    if v is None or v.strip() == "":
        return None
    return float(v)


def _i(v: str | None) -> int | None:
    x = _f(v)
    return None if x is None else int(round(x))


def _b(v: str | None) -> bool | None:
    x = _i(v)
    return None if x is None else bool(x)


def _rate_list_from_group(config_group: str, fallback: str) -> tuple[float, ...]:
    # The folder name keeps the order the benchmark received the list in (``rates_1.6_0.8_0.4``);
    # the ``rate_values`` column is sorted for ok rows, so the name is the authority.
    if "_rates_" in config_group:
        return tuple(float(x) for x in config_group.split("_rates_", 1)[1].split("_"))
    return tuple(float(x) for x in fallback.split())


def _assign(
    run_id: str, n: int, ranks: tuple[int, ...], rates: tuple[float, ...], seed: int
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    adapter_ranks = tuple(ranks[i % len(ranks)] for i in range(n))
    rr = np.array([rates[i % len(rates)] for i in range(n)], dtype=np.float64)
    rng = np.random.default_rng([seed, zlib.crc32(run_id.encode("utf-8"))])
    rng.shuffle(rr)
    return adapter_ranks, tuple(float(x) for x in rr)


def _check_counts(row: dict[str, str], ranks: tuple[int, ...], rates: tuple[float, ...]) -> None:
    # Guard the round-robin reconstruction against the counts the extraction recorded.
    n = int(row["max_cpu_loras"])
    if row.get("rate_counts"):
        want = dict(zip((float(v) for v in row["rate_values"].split()), (int(c) for c in row["rate_counts"].split())))
        got: dict[float, int] = {}
        for i in range(n):
            got[rates[i % len(rates)]] = got.get(rates[i % len(rates)], 0) + 1
        if got != want:
            raise ValueError(f"{row['run_id']}: rate counts {got} differ from recorded {want}")
    if row.get("adapter_rank_counts"):
        want_r = {int(k): int(v) for k, v in (kv.split(":") for kv in row["adapter_rank_counts"].split())}
        got_r: dict[int, int] = {}
        for i in range(n):
            got_r[ranks[i % len(ranks)]] = got_r.get(ranks[i % len(ranks)], 0) + 1
        if got_r != want_r:
            raise ValueError(f"{row['run_id']}: rank counts {got_r} differ from recorded {want_r}")


def _published_index(ref: Path) -> dict[str, PublishedTwinRun]:
    sims: dict[str, dict[str, str]] = {}
    sim_path = ref / "sim_runs.csv"
    if sim_path.is_file():
        for r in read_csv_rows(sim_path):
            sims[r["run_id"].replace("/simulation_results_mean/", "/real_results/")] = r
    tvr: dict[str, dict[str, str]] = {}
    tvr_path = ref / "twin_vs_real.csv"
    if tvr_path.is_file():
        tvr = {r["run_id"]: r for r in read_csv_rows(tvr_path)}
    out: dict[str, PublishedTwinRun] = {}
    for rid, s in sims.items():
        t = tvr.get(rid, {})
        tot = _f(s["total_throughput"])
        if tot is None:
            continue
        out[rid] = PublishedTwinRun(
            total_throughput=tot,
            input_throughput=_f(s["input_throughput"]) or 0.0,
            output_throughput=_f(s["output_throughput"]) or 0.0,
            itl_ms=_f(s["itl_ms"]) or 0.0,
            ttft_ms=_f(s["ttft_ms"]) or 0.0,
            finished=_i(s["finished_requests"]) or 0,
            arrivals=_i(s["arrivals"]) or 0,
            starved=_b(t.get("twin_starved_authors_rule")),
            ape_total_throughput_pct=_f(t.get("ape_total_throughput_pct")),
            ape_itl_pct=_f(t.get("ape_itl_pct")),
        )
    return out


def load_dt_validation(
    ref_dir: str | os.PathLike[str] | None = None,
    *,
    statuses: frozenset[str] | None = frozenset({"ok", "failed_oom_kv_cache"}),
    seed: int = 0,
) -> list[RefRun]:
    """Load the ``dt_validation`` runs of ``real_runs.csv`` as :class:`RefRun` records.

    ``statuses`` filters on the run status (default: the 294 runs with results plus the start-up OOM
    ones; ``None`` keeps all). ``seed`` seeds the per-run rate shuffle. Order is the CSV's order.
    """
    ref = find_reference_dir(ref_dir)
    published = _published_index(ref)
    runs: list[RefRun] = []
    for row in read_csv_rows(ref / "real_runs.csv"):
        if row["experiment_set"] != "dt_validation":
            continue
        if statuses is not None and row["status"] not in statuses:
            continue
        ranks = tuple(int(x) for x in row["adapter_ranks"].split())
        rates = _rate_list_from_group(row["config_group"], row["rate_values"])
        _check_counts(row, ranks, rates)
        n = int(row["max_cpu_loras"])
        a_ranks, a_rates = _assign(row["run_id"], n, ranks, rates, seed)
        window = _f(row["total_time_s"]) or WINDOW_S
        runs.append(
            RefRun(
                run_id=row["run_id"],
                model=row["model"],
                config_group=row["config_group"],
                status=row["status"],
                max_loras=int(row["max_loras"]),
                max_cpu_loras=n,
                max_lora_rank=int(row["max_lora_rank"]),
                rank_list=ranks,
                rate_list=rates,
                adapter_ranks=a_ranks,
                adapter_rates=a_rates,
                window_s=window,
                pool_mean_input_tokens=_f(row["pool_mean_input_tokens"]),
                pool_mean_output_tokens=_f(row["pool_mean_output_tokens"]),
                total_throughput=_f(row["total_throughput"]),
                input_throughput=_f(row["input_throughput"]),
                output_throughput=_f(row["output_throughput"]),
                mean_itl_ms=_f(row["mean_itl_ms"]),
                mean_ttft_ms=_f(row["mean_ttft_ms"]),
                median_ttft_ms=_f(row["median_ttft_ms"]),
                mean_tpot_ms=_f(row["mean_tpot_ms"]),
                completed=_i(row["completed"]),
                twin_arrivals=_i(row["twin_arrivals"]),
                offered_total_tok_s=_f(row["offered_total_tok_s"]),
                throughput_loss_frac=_f(row["throughput_loss_frac"]),
                starved=_b(row["starved_authors_rule"]),
                kv_cache_tokens=_i(row["kv_cache_tokens"]),
                mean_running=_f(row["mean_running"]),
                mean_waiting=_f(row["mean_waiting"]),
                mean_kv_usage=_f(row["mean_kv_usage"]),
                preemptions_in_window=_i(row["preemptions_in_window"]),
                published=published.get(row["run_id"]),
            )
        )
    return runs
