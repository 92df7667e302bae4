"""``optplace bench latency-rule``: how the twin's TPOT and ITL figures relate to the mean ITL the throughput
surrogate predicts, the multiples behind :data:`optplace.solver.envelope.ITL_MULTIPLE`.

Under an SLO the shipped SLO models did not learn, the oracle knows no latency model but the throughput
surrogate's mean ITL; a TPOT p99, mean-ITL or ITL p99 bound is turned into a cap on it. This bench
measures the multiple. Each mix is one GPU (Llama-3.1-8B on H100-64GB, ShareGPT lengths, Poisson
arrivals) with a slot per adapter (8, 32, 96 and 192, capped at the largest that starts), ranks 8 and 32,
rates shaped uniform, Zipf-0.9, one adapter with a quarter of the load, or lognormal, at 0.3–1.05 × the
analytic capacity ρ·λ* (the grid of :mod:`optplace.bench.busy_slots`, 192 mixes, ~1.2 min on 2 cores).
For every metric it prints the twin's worst adapter (steady state) over the surrogate's prediction at
the mix's rates: minimum, 10th percentile, median, 90th percentile and maximum, and the multiple in use.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

GRID = {"ranks": (8, 32), "slots": (8, 32, 96, 192), "per_slot": (1.0,), "loads": (0.3, 0.5, 0.7, 0.85, 0.95, 1.05)}
#: The twin's per-adapter figures compared, by SLO metric.
METRICS = {"tpot_p99_ms": "tpot_ms_p99", "itl_mean_ms": "itl_ms_mean", "itl_p99_ms": "itl_ms_p99"}
QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)


def run(json: bool = False) -> dict[str, Any]:
    """Simulate every mix and compare; print the table unless ``json``; return rows and summary."""
    from optplace.bench.busy_slots import mixes
    from optplace.solver import compile_problem
    from optplace.solver.capacity import Mix, SurrogateCapacity
    from optplace.solver.envelope import ITL_MULTIPLE
    from optplace.twin.simulate import placement_of, simulate_plan

    t0 = time.perf_counter()
    sc, rows = mixes(grid=GRID)
    placed = placement_of(sc)
    rep = simulate_plan(sc, placed, Path("."))
    # the throughput surrogate alone: the scenario without its SLO (so no SLO model or rule is asked)
    oracle = SurrogateCapacity.shipped(compile_problem(sc.model_copy(update={"placement": None, "slo": None})))
    ads = {a.name: a for a in sc.adapter_list()}
    for row, gpu, g in zip(rows, placed, rep.gpus, strict=True):
        mix = Mix(tuple(ads[n].rank for n in gpu.adapters), tuple(ads[n].rate_rps for n in gpu.adapters))
        predicted = oracle.evaluate(0, mix, gpu.max_loras).itl_ms
        steady = [a.latency.steady for a in g.per_adapter if a.latency is not None and a.latency.steady.completed]
        row["predicted_itl_ms"] = round(predicted, 2)
        for metric, field in METRICS.items():
            vals = [getattr(s, field) for s in steady if math.isfinite(getattr(s, field))]
            row[metric] = round(max(vals), 2) if vals else None
    summary: dict[str, Any] = {"mixes": len(rows), "seconds": round(time.perf_counter() - t0, 1)}
    for metric in METRICS:
        ratios = np.array([r[metric] / r["predicted_itl_ms"] for r in rows if r[metric] is not None])
        summary[metric] = {
            "multiple": ITL_MULTIPLE[metric],
            "ratio_quantiles": [round(float(np.quantile(ratios, q)), 3) for q in QUANTILES],
            "share_within_multiple": round(float(np.mean(ratios <= ITL_MULTIPLE[metric])), 3),
        }
    if not json:
        print(f"{len(rows)} one-GPU mixes, a slot per adapter; twin's worst adapter ÷ the surrogate's mean ITL")
        print("metric        min    p10    p50    p90    max   multiple  mixes within it")
        for metric in METRICS:
            s = summary[metric]
            q = "  ".join(f"{v:5.2f}" for v in s["ratio_quantiles"])
            print(f"{metric:<12} {q}   {s['multiple']:6.2f}   {100 * s['share_within_multiple']:5.1f} %")
        print(f"{summary['seconds']:.0f} s")
    return {"rows": rows, "summary": summary}
