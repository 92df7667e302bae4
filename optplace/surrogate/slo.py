"""SLO surrogates: does one GPU configuration meet the default SLO, and with what margin.

The default SLO (:class:`optplace.specs.model.Slo` with no fields: TTFT p99 ≤ 2 s and TPOT p99 ≤ 200 ms
for every adapter, steady state after a 10 % warm-up, and a stable queue) is judged by the twin
(:func:`optplace.twin.simulate.judge_slo`).  This module learns that verdict per GPU:

* **Figures of one twin run** (:class:`SloFigures`): the worst adapter's TTFT p99 ÷ its bound and TPOT p99
  ÷ its bound, whether the queue stayed stable, and the verdict.  The *margin* is the larger of the two
  ratios (≤ 1 with a stable queue means "meets the SLO"; 0.5 means twice the latency would still pass).
* **Design** (:func:`slo_tasks`): the surrogate sweep's configurations (:func:`~optplace.surrogate.design.
  design_config`: adapters, ranks, slots, rate shapes, lengths, burstiness) with the load set relative to the
  fluid-model capacity of that configuration (:mod:`optplace.surrogate.physics`), log-uniform over
  ``rho_range``; then boundary chains that bisect the load on the SLO verdict, so rows concentrate where
  the SLO breaks (for a GPU with fewer slots than adapters that is far below its throughput capacity).
* **Sweep** (:func:`run_slo_sweep`): one CSV row per run (feature row + SLO figures) and a provenance
  JSON (twin semantics version, profile hash, design, seed); resumable by row index.
* **Models** (:mod:`optplace.surrogate.slo_model`): a LightGBM classifier of the verdict and a regressor
  of the log margin over the capacity surrogates' feature row plus its derived features.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optplace.surrogate.config import GpuCase
from optplace.surrogate.design import SweepDesign, design_config, memoize, row_seed, sobol_unit
from optplace.surrogate.features import FEATURE_NAMES, feature_row

#: Version of the SLO sweep file layout and labels.
SLO_SWEEP_VERSION = 1
#: Ratio recorded when a metric has no value (no request completed in the steady state): far over.
NO_VALUE_RATIO = 100.0

SLO_LABELS: tuple[str, ...] = ("ttft_ratio", "tpot_ratio", "stable", "ok", "throughput_loss", "wall_s")
SLO_COLUMNS: tuple[str, ...] = ("index", "group", "pass", "rho", "n_adapters_cfg", *FEATURE_NAMES, *SLO_LABELS)


@dataclass(frozen=True, slots=True)
class SloFigures:
    """The SLO figures of one twin run (see the module docstring)."""

    ttft_ratio: float
    tpot_ratio: float
    stable: bool
    ok: bool
    throughput_loss: float

    @property
    def margin(self) -> float:
        """Worst adapter's worst latency ÷ its bound (≤ 1: within the latency bounds)."""
        return max(self.ttft_ratio, self.tpot_ratio)


@dataclass(frozen=True, slots=True)
class SloDesign:
    """What an SLO sweep samples: ``n_points`` Sobol configurations with load ``rho`` (offered requests/s ÷
    fluid capacity) log-uniform in ``rho_range``, then ``n_chains`` chains of ``chain_steps`` bisections of
    log ``rho`` on the SLO verdict. ``base`` sets the mix (adapters, ranks, slots, rates, lengths, arrivals)."""

    n_points: int = 400
    n_chains: int = 60
    chain_steps: int = 5
    duration_s: float = 1200.0
    rho_range: tuple[float, float] = (0.02, 1.2)
    max_adapters: int = 576

    @property
    def n_rows(self) -> int:
        """Total rows (pass 1 + pass 2)."""
        return self.n_points + self.n_chains * self.chain_steps

    def base(self) -> SweepDesign:
        """The capacity sweep design whose mixes this one reuses (its load is rescaled here)."""
        return SweepDesign(max_adapters=self.max_adapters, duration_s=self.duration_s)


def slo_design_from_dict(d: dict[str, Any]) -> SloDesign:
    """An :class:`SloDesign` from its YAML/JSON form."""
    known = set(SloDesign.__dataclass_fields__)
    if set(d) - known:
        raise ValueError(f"unknown SLO design fields {sorted(set(d) - known)}; known: {sorted(known)}")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return SloDesign(**fields)


def default_slo_rule(n_adapters: int, duration_s: float) -> Any:
    """The twin's rule for the default SLO on a GPU of ``n_adapters`` adapters (warm-up 10 % of the window)."""
    from optplace.specs.model import Slo
    from optplace.twin.simulate import SloRule

    b = Slo().bounds()
    return SloRule("adapter", 0.1 * duration_s, b, (b,) * n_adapters)


def _ratio(check: Any) -> float:
    v = float(check.value)
    return NO_VALUE_RATIO if not math.isfinite(v) else v / float(check.bound)


def evaluate_slo(profile: str, config: GpuCase, gpu_memory_utilization: float = 0.9) -> SloFigures:
    """Run the twin on one configuration and judge it by the default SLO."""
    from optplace.surrogate.twin_eval import TwinEvaluator

    rep = TwinEvaluator(profile, gpu_memory_utilization).report(
        config, slo=default_slo_rule(config.n_adapters, config.duration_s)
    )
    v = rep.slo
    assert v is not None  # judged: a rule was given
    ratios = {c.metric: _ratio(c) for c in v.checks}
    per = [a.slo for a in rep.per_adapter if a.slo is not None]
    if rep.oom or v.served_nothing or any(a.served_nothing for a in per):
        ratios = {k: NO_VALUE_RATIO for k in ("ttft_p99_ms", "tpot_p99_ms")}
    return SloFigures(
        ttft_ratio=ratios.get("ttft_p99_ms", NO_VALUE_RATIO),
        tpot_ratio=ratios.get("tpot_p99_ms", NO_VALUE_RATIO),
        # the verdict needs the GPU's backlog and every adapter's to stay within their allowance
        stable=bool(v.stable and all(a.stable for a in per)),
        ok=bool(v.ok and not rep.oom),
        throughput_loss=float(rep.throughput_loss),
    )


def scaled_case(profile: str, u: np.ndarray, design: SloDesign, seed: int, group: int, index: int) -> GpuCase | None:
    """The configuration of unit point ``u`` with its load set to ``rho`` (from ``u[4]``) × fluid capacity."""
    from optplace.surrogate.physics import physics_for

    made = design_config(u, design.base(), _slot_cap(profile), seed, group, index)
    if made is None:
        return None
    cfg = made[0]
    rho = rho_of(float(u[4]), design)
    mi, mo = cfg.lengths.means()
    lam, _ = physics_for(profile).fluid(
        float(cfg.max_lora_rank), float(min(cfg.n_adapters, cfg.max_loras)), float(cfg.max_loras), mi, mo
    )
    w = np.asarray(cfg.rates_rps)
    rates = tuple(float(x) for x in w / w.sum() * rho * lam)
    return GpuCase(
        ranks=cfg.ranks,
        rates_rps=rates,
        max_loras=cfg.max_loras,
        arrivals=cfg.arrivals,
        lengths=cfg.lengths,
        max_cpu_loras=None,
        duration_s=design.duration_s,
        seed=row_seed(seed, index),
    )


_CAPS: dict[str, Any] = {}


def _slot_cap(profile: str) -> Any:
    if profile not in _CAPS:
        from optplace.surrogate.twin_eval import TwinEvaluator

        _CAPS[profile] = memoize(TwinEvaluator(profile).slot_cap)
    return _CAPS[profile]


def rho_of(u4: float, design: SloDesign) -> float:
    """The load ``rho`` a unit coordinate maps to."""
    lo, hi = design.rho_range
    return math.exp(math.log(lo) + u4 * (math.log(hi) - math.log(lo)))


def provenance(profile: str, design: SloDesign, seed: int) -> dict[str, Any]:
    """What identifies an SLO sweep: evaluator (twin version, profile hash), SLO, design, seed, columns."""
    from optplace.specs.model import Slo
    from optplace.surrogate.twin_eval import TwinEvaluator

    return {
        "slo_sweep_version": SLO_SWEEP_VERSION,
        "evaluator": TwinEvaluator(profile).describe(),
        "slo": {"scope": "adapter", "warmup_frac": 0.1, "bounds": dict(Slo().bounds()), "stable_queue": True},
        "design": json.loads(json.dumps(asdict(design))),
        "seed": seed,
        "columns": list(SLO_COLUMNS),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return repr(v)
    return str(v)


def read_slo_rows(csv_path: Path) -> dict[int, dict[str, str]]:
    """Rows of an SLO sweep CSV by index (a torn last line is ignored)."""
    if not csv_path.exists():
        return {}
    out: dict[int, dict[str, str]] = {}
    with csv_path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if None in r.values() or len(r) != len(SLO_COLUMNS):
                continue
            out[int(r["index"])] = r
    return out


def run_slo_sweep(profile: str, base: Path, design: SloDesign, seed: int, on_row: Any = None) -> tuple[int, int]:
    """Run (or resume) the SLO sweep ``base``.csv/.json; returns (rows in the file, rows run now).

    A file whose provenance differs from this run's (other twin, profile numbers, design or seed) is
    refused, never overwritten."""
    prov = provenance(profile, design, seed)
    jpath, cpath = base.with_suffix(".json"), base.with_suffix(".csv")
    if jpath.exists():
        old = json.loads(jpath.read_text(encoding="utf-8"))
        if old != prov:
            diff = sorted(k for k in set(old) | set(prov) if old.get(k) != prov.get(k))
            raise ValueError(f"{jpath}: an SLO sweep of other provenance ({diff}); remove it or use another directory")
    else:
        base.parent.mkdir(parents=True, exist_ok=True)
        jpath.write_text(json.dumps(prov, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    rows = read_slo_rows(cpath)
    if cpath.exists() and len(rows) < sum(1 for _ in cpath.open(encoding="utf-8")) - 1:
        # drop a torn tail so appended rows start on a fresh line
        cpath.write_text(
            ",".join(SLO_COLUMNS) + "\n" + "".join(",".join(r[c] for c in SLO_COLUMNS) + "\n" for r in rows.values()),
            encoding="utf-8",
        )
    new = 0
    with cpath.open("a", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if not rows:
            w.writerow(SLO_COLUMNS)
        for index, group, pass_no, u in _walk(design, seed, rows):
            if index in rows:
                continue
            case = scaled_case(profile, u, design, seed, group, index)
            if case is None:
                rec: dict[str, Any] | None = None
            else:
                t0 = time.perf_counter()
                fig = evaluate_slo(profile, case)
                rec = {
                    "index": index,
                    "group": group,
                    "pass": pass_no,
                    "rho": rho_of(float(u[4]), design),
                    "n_adapters_cfg": case.n_adapters,
                    **dict(zip(FEATURE_NAMES, feature_row(case).tolist())),
                    "ttft_ratio": fig.ttft_ratio,
                    "tpot_ratio": fig.tpot_ratio,
                    "stable": fig.stable,
                    "ok": fig.ok,
                    "throughput_loss": fig.throughput_loss,
                    "wall_s": round(time.perf_counter() - t0, 3),
                }
            if rec is None:
                continue
            w.writerow([_fmt(rec[c]) for c in SLO_COLUMNS])
            f.flush()
            rows[index] = {c: _fmt(rec[c]) for c in SLO_COLUMNS}
            new += 1
            if on_row is not None:
                on_row(len(rows), design.n_rows)
    return len(rows), new


def _walk(design: SloDesign, seed: int, rows: dict[int, dict[str, str]]) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(index, group, pass, unit point) of every row; a chain's next load depends on the verdicts so far,
    read from ``rows`` (the caller adds each row it runs before asking for the next)."""
    u_all = sobol_unit(seed, design.n_points + design.n_chains)
    for i in range(design.n_points):
        yield i, i, 1, u_all[i]
    for c in range(design.n_chains):
        group = design.n_points + c
        lo, hi = 0.0, 1.0
        for step in range(design.chain_steps):
            index = design.n_points + c * design.chain_steps + step
            u = u_all[group].copy()
            u[4] = 0.5 * (lo + hi)
            yield index, group, 2, u
            r = rows.get(index)
            if r is None:  # no configuration could start: the chain ends
                break
            if int(r["ok"]):
                lo = u[4]
            else:
                hi = u[4]


def seed_agreement(
    profile: str, base: Path, design: SloDesign, seed: int, k: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """The twin against itself: ``k`` evenly spaced rows of the finished sweep ``base`` re-run under another
    twin seed (:func:`~optplace.surrogate.design.replicate_seed`, salt 1). Returns (rows, verdict "violates"
    of the sweep, of the re-run): the macro-F1 between the two is the ceiling for any single-seed score."""
    import dataclasses

    from optplace.surrogate.design import replicate_seed

    rows = read_slo_rows(base.with_suffix(".csv"))
    units = {index: (group, u) for index, group, _, u in _walk(design, seed, rows)}
    picked = sorted(rows)[:: max(1, len(rows) // k)][:k]
    a, b = [], []
    for i in picked:
        group, u = units[i]
        case = scaled_case(profile, u, design, seed, group, i)
        assert case is not None  # the row exists, so its configuration could start
        again = evaluate_slo(profile, dataclasses.replace(case, seed=replicate_seed(seed, i, 1)))
        a.append(not int(rows[i]["ok"]))
        b.append(not again.ok)
    return len(picked), np.array(a), np.array(b)
