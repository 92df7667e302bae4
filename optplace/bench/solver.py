"""``optplace bench solver``: every strategy on scenario families of 100 … 10,000 adapters.

Families: adapter counts {100, 500, 1000, 5000, 10000} × ranks {8,16} and {8,16,32} (equal shares)
× uniform and Zipf-skewed rates (s = 0.5, so the hottest adapter of 10,000 still fits one GPU);
mean rate 0.5 req/s per adapter, ShareGPT lengths, Poisson arrivals, Llama-3.1-8B on H100-64GB.
Every strategy solves with the analytic capacity oracle; printed per row: GPUs used, lower bound,
gap, solve time. Rows of families up to ``validate_max`` adapters are twin-validated (the
``milp`` and ``greedy-paper`` plans, whole plan simulated for the window by
``optplace.twin.simulate.simulate_plan``, one process): starved and OOM GPU counts; other rows say
"not validated".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

SIZES = (100, 500, 1000, 5000, 10000)
RANKS = ((8, 16), (8, 16, 32))
SKEWS = ("uniform", "zipf")
MEAN_RATE = 0.5
ZIPF_S = 0.5


def family(n: int, ranks: tuple[int, ...], skew: str, seed: int = 0) -> Any:
    """The scenario of one benchmark family."""
    from optplace.specs import Scenario
    from optplace.specs.model import AdapterGroup, Popularity
    per = [n // len(ranks) + (1 if i < n % len(ranks) else 0) for i in range(len(ranks))]
    groups = tuple(AdapterGroup(group=f"r{r}", count=k, rank=r, total_rate_rps=MEAN_RATE * k,
                                popularity=Popularity(kind="zipf", s=ZIPF_S) if skew == "zipf"
                                else Popularity(kind="uniform"))
                   for r, k in zip(ranks, per))
    return Scenario(name=f"bench-{n}-r{'-'.join(map(str, ranks))}-{skew}", model="llama-3.1-8b-instruct",
                    gpu="h100-64gb", adapters=groups, seed=seed,
                    solver={"strategy": "milp", "time_limit_s": 60.0 if n <= 1000 else 240.0})


def run(json: bool = False, sizes: tuple[int, ...] = SIZES, strategies: tuple[str, ...] | None = None,
        validate_max: int = 100, validate_window_s: float = 3600.0) -> dict[str, Any]:
    """Run the benchmark, print a table (unless ``json``), return the rows."""
    from optplace.solver import AnalyticCapacity, Infeasible, compile_problem, gpu_plans, solve
    from optplace.solver.strategies import STRATEGIES
    names = strategies or tuple(STRATEGIES)
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for n in sizes:
        for ranks in RANKS:
            for skew in SKEWS:
                sc = family(n, ranks, skew)
                pb = compile_problem(sc, Path("."))
                an = AnalyticCapacity(pb)
                for s in names:
                    row: dict[str, Any] = {"family": sc.name, "adapters": n, "ranks": list(ranks), "skew": skew,
                                           "strategy": s}
                    try:
                        plan = solve(pb, an, s)
                    except Infeasible as e:
                        row.update(error=str(e))
                        rows.append(row)
                        _print_row(row, json)
                        continue
                    row.update(gpus=plan.gpus_used, lower_bound=plan.lower_bound, gap=round(plan.gap, 4),
                               solve_time_s=round(plan.solve_time_s, 3), validated=False)
                    if n <= validate_max and s in ("milp", "greedy-paper"):
                        from optplace.twin.simulate import simulate_plan
                        sc_v = sc.model_copy(update={"workload": sc.workload.model_copy(
                            update={"duration_s": validate_window_s})})
                        rep = simulate_plan(sc_v, gpu_plans(plan), Path("."), workers=1)
                        row.update(validated=True, starved_gpus=len(rep.starved_gpus), oom_gpus=len(rep.oom_gpus),
                                   sim_wall_s=round(rep.sim_wall_s, 2))
                    rows.append(row)
                    _print_row(row, json)
    summary = _summary(rows)
    out = {"rows": rows, "summary": summary, "wall_s": round(time.perf_counter() - t_all, 1)}
    if not json:
        for line in summary["lines"]:
            print(line)
    return out


def _print_row(row: dict[str, Any], json: bool) -> None:
    if json:
        return
    if "error" in row:
        print(f"{row['family']:<34} {row['strategy']:<17} infeasible: {row['error']}", flush=True)
        return
    val = (f"starved {row['starved_gpus']} oom {row['oom_gpus']}" if row.get("validated") else "not validated")
    print(f"{row['family']:<34} {row['strategy']:<17} gpus {row['gpus']:>4}  lb {row['lower_bound']:>6.1f}  "
          f"gap {100 * row['gap']:5.1f}%  {row['solve_time_s']:8.2f} s  {val}", flush=True)


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[tuple[str, str], dict[str, Any]] = {(r["family"], r["strategy"]): r for r in rows if "gpus" in r}
    fams = sorted({r["family"] for r in rows})
    lines = []
    milp_le_paper = []
    skew_saving = []
    for f in fams:
        m, p, rr = by.get((f, "milp")), by.get((f, "greedy-paper")), by.get((f, "round-robin"))
        if m and p:
            milp_le_paper.append(m["gpus"] <= p["gpus"])
        if m and rr and f.endswith("zipf"):
            skew_saving.append(1 - m["gpus"] / rr["gpus"])
    if milp_le_paper:
        lines.append(f"milp ≤ greedy-paper GPUs in {sum(milp_le_paper)}/{len(milp_le_paper)} families")
    if skew_saving:
        lines.append(f"skewed families: milp uses {100 * min(skew_saving):.0f}–{100 * max(skew_saving):.0f} % fewer GPUs "
                     f"than round-robin")
    return {"milp_le_greedy_paper": milp_le_paper, "skew_saving_vs_round_robin": skew_saving, "lines": lines}
