"""``optplace bench busy-slots``: the twin's SLO verdict on one-GPU mixes with fewer slots than adapters,
against the busy-slot rule of the SLO oracle's envelope (:data:`optplace.solver.envelope.BUSY_PER_SLOT`).

Each mix is one GPU (Llama-3.1-8B on H100-64GB, ShareGPT lengths, Poisson arrivals, the default SLO) with
``L`` slots and ``k·L`` adapters of one rank, rates shaped uniform, Zipf-0.9, one adapter with a quarter
of the load, or lognormal (σ = 1.35, the bench's heavy-tailed fleet), scaled to a share ``u`` of the
analytic capacity ρ·λ* at ``L`` distinct adapters. The twin simulates every mix for the scenario's hour
(one plan, GPUs in parallel). For each it prints the busy-slot ratio — expected adapters with a request
in the engine at the mix's own load, per slot (:func:`optplace.solver.envelope.busy_slots`) — and the
verdict; the summary gives the largest ratio among the mixes that met the SLO, the smallest among those
that missed it, and how many each side of the rule's threshold. Misses where the only failing check is
"an adapter was offered load and served nothing" (a light adapter with a request and none completed in
the window, every latency bound met) are counted apart: they are not the slot queue the rule is about.
The same mixes are then judged against other TTFT bounds (:data:`TTFT_BOUNDS_MS`: each adapter's
steady-state p99, or its median, with the default SLO's other checks): the smallest busy ratio that missed
each, which is why the rule also holds under an SLO of another TTFT bound
(:func:`optplace.solver.envelope.bounds_adapter_ttft`).

The default grid is 252 mixes (ranks 8 and 32; 24, 64, 128 and 192 slots, capped at the largest that
starts; 1.3, 2 and 4 adapters per slot; four shapes; u = 0.6, 0.75, 0.9), 1.5 min on 2 cores; ``--full``
adds rank 16, 16 slots, 6 adapters per slot and u = 0.3 (896 mixes, 5.3 min).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = ("uniform", "zipf", "hot", "lognormal")
GRID = {"ranks": (8, 32), "slots": (24, 64, 128, 192), "per_slot": (1.3, 2.0, 4.0), "loads": (0.6, 0.75, 0.9)}
FULL_GRID = {
    "ranks": (8, 16, 32),
    "slots": (16, 24, 64, 128, 192),
    "per_slot": (1.3, 2.0, 4.0, 6.0),
    "loads": (0.3, 0.6, 0.75, 0.9),
}
#: TTFT bounds [ms] the mixes are also judged against, per metric (the default SLO's is a p99 of 2,000 ms).
TTFT_BOUNDS_MS: dict[str, tuple[float, ...]] = {
    "ttft_p99_ms": (500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0),
    "ttft_p50_ms": (300.0, 500.0, 1000.0, 2000.0, 5000.0),
}
_LABEL = {"ttft_p99_ms": "TTFT p99", "ttft_p50_ms": "TTFT median"}


def _shape(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Rate shares of ``n`` adapters (sum 1)."""
    s: np.ndarray
    if kind == "uniform":
        s = np.ones(n)
    elif kind == "zipf":
        s = 1.0 / np.arange(1, n + 1) ** 0.9
    elif kind == "hot":
        s = np.r_[n / 4.0, np.ones(n - 1)]
    else:
        s = rng.lognormal(0.0, 1.35, n)
    return s / s.sum()


def mixes(
    full: bool = False, seed: int = 0, grid: dict[str, tuple[Any, ...]] | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    """The scenario holding every mix of the grid (``grid``: keys as :data:`GRID`'s; default :data:`GRID`, or
    :data:`FULL_GRID` when ``full``) as one GPU of its placement, and one row per mix (its grid point and
    busy-slot ratio)."""
    from optplace.solver import compile_problem
    from optplace.solver.capacity import AnalyticCapacity
    from optplace.solver.envelope import busy_slots
    from optplace.specs import Scenario

    g = grid if grid is not None else (FULL_GRID if full else GRID)
    base = dict(name="busy-slots", model="llama-3.1-8b-instruct", gpu="h100-64gb", seed=seed)
    probe = Scenario.model_validate(
        dict(base, adapters=[{"name": f"r{r}", "rank": r, "rate_rps": 1.0} for r in g["ranks"]])
    )
    an = AnalyticCapacity(compile_problem(probe, Path(".")))
    rng = np.random.default_rng([seed, 0xB05])
    adapters: list[dict[str, Any]] = []
    placement: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for rank in (int(r) for r in g["ranks"]):
        cap = an.slot_cap(0, rank)
        for L in sorted({min(int(x), cap) for x in g["slots"]}):
            pt = an.point(0, rank, L, L)
            for k in g["per_slot"]:
                n = int(L * k)
                for kind in SHAPES:
                    share = _shape(kind, n, rng)
                    for u in g["loads"]:
                        rates = share * u * an.rho * pt.lam_max_rps
                        i = len(rows)
                        names = [f"m{i:04d}-{j:04d}" for j in range(n)]
                        adapters += [{"name": a, "rank": rank, "rate_rps": float(r)} for a, r in zip(names, rates)]
                        placement.append({"max_loras": L, "adapters": names})
                        rows.append(
                            {
                                "rank": rank,
                                "slots": L,
                                "adapters": n,
                                "shape": kind,
                                "load": u,
                                "busy_per_slot": round(busy_slots(rates, pt) / L, 4),
                            }
                        )
    return Scenario.model_validate(dict(base, adapters=adapters, placement=placement)), rows


def run(json: bool = False, full: bool = False) -> dict[str, Any]:
    """Simulate every mix; print one line per mix and the summary unless ``json``; return both."""
    from optplace.solver.envelope import BUSY_PER_SLOT
    from optplace.twin.simulate import placement_of, simulate_plan

    t0 = time.perf_counter()
    sc, rows = mixes(full)
    rep = simulate_plan(sc, placement_of(sc), Path("."))
    for row, g in zip(rows, rep.gpus, strict=True):
        assert g.slo is not None  # the scenario is judged by the default SLO
        worst = g.slo.worst
        only_idle = not g.slo.ok and g.slo.served_nothing and all(c.ok for c in g.slo.checks) and g.slo.stable
        # every check but the TTFT p99 one (TTFT is re-judged at each bound of TTFT_BOUNDS_MS)
        others_ok = g.slo.stable and all(c.ok for c in g.slo.checks if c.metric != "ttft_p99_ms")
        adapter_p99 = next((c.value for c in g.slo.checks if c.metric == "ttft_p99_ms"), math.nan)
        # (an adapter that completed nothing reads 0 here; the "served nothing" flag judges it)
        adapter_p50 = max((a.latency.steady.ttft_ms_p50 for a in g.per_adapter if a.latency), default=math.nan)
        row.update(
            met_slo=g.slo.ok,
            served_nothing_only=only_idle,
            served_nothing=g.slo.served_nothing,
            ttft_p99_ms=round(g.ttft_ms_p99, 1),
            worst_ratio=round(worst.ratio, 3) if worst is not None else None,
            worst_adapter_ttft_p99_ms=round(adapter_p99, 1) if math.isfinite(adapter_p99) else None,
            worst_adapter_ttft_p50_ms=round(adapter_p50, 1) if math.isfinite(adapter_p50) else None,
            other_checks_ok=others_ok,
        )
        if not json:
            verdict = "meets SLO" if g.slo.ok else ("served nothing" if only_idle else "misses SLO")
            print(
                f"rank {row['rank']:>2}  {row['slots']:>3} slots  {row['adapters']:>4} adapters  {row['shape']:<9} "
                f"load {row['load']:.2f}  busy/slot {row['busy_per_slot']:.3f}  TTFT p99 {g.ttft_ms_p99 / 1e3:8.1f} s  "
                f"{verdict}",
                flush=True,
            )
    met = [r["busy_per_slot"] for r in rows if r["met_slo"]]
    missed = [r["busy_per_slot"] for r in rows if not r["met_slo"] and not r["served_nothing_only"]]
    summary = {
        "mixes": len(rows),
        "threshold": BUSY_PER_SLOT,
        "met": len(met),
        "missed": len(missed),
        "served_nothing_only": sum(r["served_nothing_only"] for r in rows),
        "largest_met": max(met, default=math.nan),
        "smallest_missed": min(missed, default=math.nan),
        "missed_within_threshold": sum(b <= BUSY_PER_SLOT for b in missed),
        "met_beyond_threshold": sum(b > BUSY_PER_SLOT for b in met),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    summary["by_ttft_bound"] = [_at_bound(rows, m, b) for m, bounds in TTFT_BOUNDS_MS.items() for b in bounds]
    if not json:
        s = summary
        print(
            f"{s['mixes']} mixes: {s['met']} met the SLO (busy/slot up to {s['largest_met']:.3f}), "
            f"{s['missed']} missed it (from {s['smallest_missed']:.3f}), {s['served_nothing_only']} served-nothing "
            f"only; rule busy/slot ≤ {s['threshold']:g}: {s['missed_within_threshold']} misses accepted, "
            f"{s['met_beyond_threshold']} passes refused  {s['seconds']:.0f} s"
        )
        for b in s["by_ttft_bound"]:
            print(
                f"  {_LABEL[b['metric']]:<11} bound {b['bound_ms'] / 1e3:5.1f} s: {b['met']} met (busy/slot up to "
                f"{b['largest_met']:.3f}), {b['missed']} missed (from {b['smallest_missed']:.3f}); "
                f"{b['missed_within_threshold']} misses at or below {BUSY_PER_SLOT:g}"
            )
    return {"rows": rows, "summary": summary}


def _at_bound(rows: list[dict[str, Any]], metric: str, bound_ms: float) -> dict[str, Any]:
    """The mixes judged with a bound of ``bound_ms`` on each adapter's ``metric`` (``ttft_p99_ms`` or
    ``ttft_p50_ms``) instead of the default SLO's TTFT p99 (an adapter without a steady-state figure misses
    it; "served nothing" mixes that meet every bound are left out)."""
    from optplace.solver.envelope import BUSY_PER_SLOT

    met: list[float] = []
    missed: list[float] = []
    for r in rows:
        worst = r[f"worst_adapter_{metric}"]
        ok = r["other_checks_ok"] and worst is not None and worst <= bound_ms
        if ok and r["served_nothing"]:
            continue  # every bound met, one light adapter had a request and none completed
        (met if ok else missed).append(r["busy_per_slot"])
    return {
        "metric": metric,
        "bound_ms": bound_ms,
        "met": len(met),
        "missed": len(missed),
        "largest_met": max(met, default=math.nan),
        "smallest_missed": min(missed, default=math.nan),
        "missed_within_threshold": sum(b <= BUSY_PER_SLOT for b in missed),
    }
