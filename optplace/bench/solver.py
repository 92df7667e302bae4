"""``optplace bench solver``: every strategy on scenario families of 100 … 10,000 adapters.

Families: adapter counts {100, 500, 1000} (``--full``: also 5000 and 10000) × ranks {8,16} and {8,16,32}
(equal shares) × uniform and Zipf-skewed rates (``zipf-0.5`` and ``zipf-0.9``: exponent s, each rank group's
rate split by i^−s); mean rate 0.5 req/s per adapter, ShareGPT lengths, Poisson arrivals, Llama-3.1-8B on
H100-64GB.

*Adapter order.* The spec lists the adapters in a seeded random order (``order="shuffled"``): the
order a placement rule sees (round-robin deals adapters in spec order, first-fit-memory and
least-loaded take them in spec order) is the order adapters were registered, which carries no
information about their popularity or rank. Source for the assumption: the published system's own
evaluation maps requests to adapters by a Dirichlet(0.5) popularity law, which is exchangeable (any
adapter index is equally likely to be hot; arXiv:2508.08343, its evaluation harness), and S-LoRA's
real-trace benchmark assigns adapters and ranks to trace models at random (github.com/S-LoRA/S-LoRA,
benchmarks/trace.py, ``generate_model_mapping``). ``order="popularity"``
lists them hottest first within each rank group, rank groups one after the other (the families of
the first version of this bench, kept for comparison). Round-robin over a popularity-sorted list
deals hot adapters out like cards, an accidental load balancer no deployed system has; on skewed
families with ``order="shuffled"`` a row ``round-robin@popularity`` gives that variant too.

*Exponents.* Both sit inside the skew range S-LoRA benchmarks (its synthetic workload draws the
adapter of each request as ⌊N·X⌋ with X ~ numpy ``power(α)``, α ∈ {0.1, 0.3, 0.6, 1}: adapter i's share
∝ i^(α−1), a Zipf exponent 1 − α ∈ {0.9, 0.7, 0.4, 0}; S-LoRA benchmarks/exp_suite.py and trace.py):
s = 0.9 is its most skewed setting, s = 0.5 a mild one. At 0.5 req/s per adapter the hottest adapter of a
``zipf-0.9`` family alone exceeds one GPU from a few thousand adapters; optplace does not split one adapter
over several GPUs, so every strategy reports those families infeasible (``--full`` rows), as the solver
must. How much any placement can save over round-robin depends on the skew and on how many adapters
share a GPU: the summary prints that ceiling, 1 − ⌈lower bound⌉ / round-robin's GPUs, for every skewed
family.

Every strategy solves with the analytic capacity oracle; printed per row: GPUs used, lower bound,
gap, solve time. Rows of families up to ``validate_max`` adapters are twin-validated (the
``milp`` and ``greedy-paper`` plans, whole plan simulated for the window by
``optplace.twin.simulate.simulate_plan``, one process): starved and OOM GPU counts; other rows say
"not validated". The summary also prints, for every skewed family, the most *any* plan could save
against round-robin: 1 − ⌈lower bound⌉ / round-robin's GPUs.

Subsets: ``optplace bench solver --sizes 1000 --strategies milp,round-robin --skews zipf-0.9``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

SIZES = (100, 500, 1000, 5000, 10000)
QUICK_SIZES = (100, 500, 1000)
RANKS = ((8, 16), (8, 16, 32))
SKEWS = ("uniform", "zipf-0.5", "zipf-0.9")
ORDERS = ("shuffled", "popularity")
MEAN_RATE = 0.5


def zipf_exponent(skew: str) -> float | None:
    """The Zipf exponent of a skew name (``"zipf-0.9"`` → 0.9), None for ``"uniform"``; refuses others."""
    if skew == "uniform":
        return None
    head, _, tail = skew.partition("-")
    try:
        s = float(tail)
    except ValueError:
        s = float("nan")
    if head != "zipf" or not s > 0 or not math.isfinite(s):
        raise ValueError(f"unknown skew {skew!r}; valid: 'uniform' or 'zipf-<exponent>', e.g. {', '.join(SKEWS)}")
    return s


def family(n: int, ranks: tuple[int, ...], skew: str, seed: int = 0, order: str = "shuffled") -> Any:
    """The scenario of one benchmark family (adapters in a seeded random order unless ``order="popularity"``)."""
    import numpy as np

    from optplace.specs import Scenario
    from optplace.specs.model import AdapterGroup, Popularity

    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")
    s = zipf_exponent(skew)
    per = [n // len(ranks) + (1 if i < n % len(ranks) else 0) for i in range(len(ranks))]
    groups = tuple(
        AdapterGroup(
            group=f"r{r}",
            count=k,
            rank=r,
            total_rate_rps=MEAN_RATE * k,
            popularity=Popularity(kind="zipf", s=s) if s is not None else Popularity(kind="uniform"),
        )
        for r, k in zip(ranks, per)
    )
    name = f"bench-{n}-r{'-'.join(map(str, ranks))}-{skew}"
    solver = {"strategy": "milp", "time_limit_s": 60.0 if n <= 1000 else 240.0}
    # model_validate: the solver options and (below) the entries are validated from plain dicts
    sc = Scenario.model_validate(
        dict(name=name, model="llama-3.1-8b-instruct", gpu="h100-64gb", adapters=groups, seed=seed, solver=solver)
    )
    if order == "popularity":
        return sc.model_copy(update={"name": f"{name}-popularity-order"})
    ads = sc.adapter_list()
    perm = np.random.default_rng([seed, n, len(ranks), 0x0DE5]).permutation(len(ads))
    entries = [{"name": ads[i].name, "rank": ads[i].rank, "rate_rps": ads[i].rate_rps} for i in perm]
    return Scenario.model_validate(
        dict(name=name, model="llama-3.1-8b-instruct", gpu="h100-64gb", adapters=entries, seed=seed, solver=solver)
    )


def run(
    json: bool = False,
    full: bool = False,
    sizes: tuple[int, ...] | None = None,
    strategies: tuple[str, ...] | None = None,
    order: str = "shuffled",
    validate_max: int = 100,
    validate_window_s: float = 3600.0,
    skews: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run the benchmark, print a table (unless ``json``), return the rows. ``full`` adds the 5,000 and
    10,000-adapter families to the default sizes; ``skews`` picks some of :data:`SKEWS` (or other
    ``zipf-<s>``)."""
    from optplace.pipeline import silence_highs_banner
    from optplace.solver import AnalyticCapacity, Infeasible, compile_problem, gpu_plans, solve
    from optplace.infra.registry import STRATEGIES

    silence_highs_banner()  # its banner on stdout would break --json
    names = strategies or tuple(STRATEGIES)
    for name in names:
        STRATEGIES.check(name)  # refuse a bad name before any solve (the message lists the registered ones)
    skews = skews or SKEWS
    for skew in skews:
        zipf_exponent(skew)  # refuse a bad name before any solve
    sizes = sizes or (SIZES if full else QUICK_SIZES)
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for n in sizes:
        for ranks in RANKS:
            for skew in skews:
                sc = family(n, ranks, skew, order=order)
                pb = compile_problem(sc, Path("."))
                an = AnalyticCapacity(pb)
                for s in names:
                    row = _solve_row(sc, pb, an, s, n, ranks, skew, order, solve, Infeasible)
                    if "gpus" in row and n <= validate_max and s in ("milp", "greedy-paper"):
                        from optplace.twin.simulate import simulate_plan

                        sc_v = sc.model_copy(
                            update={"workload": sc.workload.model_copy(update={"duration_s": validate_window_s})}
                        )
                        rep = simulate_plan(sc_v, gpu_plans(row.pop("_plan")), Path("."), workers=1)
                        row.update(
                            validated=True,
                            starved_gpus=len(rep.starved_gpus),
                            oom_gpus=len(rep.oom_gpus),
                            sim_wall_s=round(rep.sim_wall_s, 2),
                        )
                    row.pop("_plan", None)
                    rows.append(row)
                    _print_row(row, json)
                if skew != "uniform" and order == "shuffled" and "round-robin" in names:
                    # The first version's order, for comparison: round-robin over a popularity-sorted list.
                    sc_p = family(n, ranks, skew, order="popularity")
                    pb_p = compile_problem(sc_p, Path("."))
                    row = _solve_row(
                        sc_p,
                        pb_p,
                        AnalyticCapacity(pb_p),
                        "round-robin",
                        n,
                        ranks,
                        skew,
                        "popularity",
                        solve,
                        Infeasible,
                    )
                    row.pop("_plan", None)
                    row.update(family=sc.name, strategy="round-robin@popularity")
                    rows.append(row)
                    _print_row(row, json)
    summary = _summary(rows)
    out = {"order": order, "rows": rows, "summary": summary, "wall_s": round(time.perf_counter() - t_all, 1)}
    if not json:
        for line in summary["lines"]:
            print(line)
    return out


def _solve_row(
    sc: Any,
    pb: Any,
    an: Any,
    s: str,
    n: int,
    ranks: tuple[int, ...],
    skew: str,
    order: str,
    solve: Any,
    infeasible: Any,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "family": sc.name,
        "adapters": n,
        "ranks": list(ranks),
        "skew": skew,
        "order": order,
        "strategy": s,
    }
    try:
        plan = solve(pb, an, s)
    except infeasible as e:
        row.update(error=str(e))
        return row
    row.update(
        gpus=plan.gpus_used,
        lower_bound=plan.lower_bound,
        gap=round(plan.gap, 4),
        solve_time_s=round(plan.solve_time_s, 3),
        validated=False,
        _plan=plan,
    )
    return row


def _print_row(row: dict[str, Any], json: bool) -> None:
    if json:
        return
    if "error" in row:
        print(f"{row['family']:<34} {row['strategy']:<22} infeasible: {row['error']}", flush=True)
        return
    val = f"starved {row['starved_gpus']} oom {row['oom_gpus']}" if row.get("validated") else "not validated"
    print(
        f"{row['family']:<34} {row['strategy']:<22} gpus {row['gpus']:>4}  lb {row['lower_bound']:>6.1f}  "
        f"gap {100 * row['gap']:5.1f}%  {row['solve_time_s']:8.2f} s  {val}",
        flush=True,
    )


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[tuple[str, str], dict[str, Any]] = {(r["family"], r["strategy"]): r for r in rows if "gpus" in r}
    fams = sorted({r["family"] for r in rows}, key=lambda f: (next(r["adapters"] for r in rows if r["family"] == f), f))
    lines = []
    milp_le_paper = []
    skew: list[dict[str, Any]] = []
    gaps: dict[int, list[float]] = {}
    for f in fams:
        m, p, rr = by.get((f, "milp")), by.get((f, "greedy-paper")), by.get((f, "round-robin"))
        rp = by.get((f, "round-robin@popularity"))
        if m:
            gaps.setdefault(m["adapters"], []).append(m["gap"])
        if m and p:
            milp_le_paper.append(m["gpus"] <= p["gpus"])
        if m and rr and m["skew"] != "uniform":
            lb = math.ceil(max(r["lower_bound"] for r in rows if r["family"] == f and "lower_bound" in r) - 1e-9)
            skew.append(
                {
                    "family": f,
                    "skew": m["skew"],
                    "adapters": m["adapters"],
                    "milp": m["gpus"],
                    "round_robin": rr["gpus"],
                    "saving": round(1 - m["gpus"] / rr["gpus"], 4),
                    "ceiling": round(1 - lb / rr["gpus"], 4),
                    "round_robin_popularity": rp["gpus"] if rp else None,
                    "saving_vs_popularity_order": round(1 - m["gpus"] / rp["gpus"], 4) if rp else None,
                }
            )
    if milp_le_paper:
        lines.append(f"milp ≤ greedy-paper GPUs in {sum(milp_le_paper)}/{len(milp_le_paper)} families")
    for n, g in sorted(gaps.items()):
        lines.append(f"milp gap to the lower bound at {n} adapters: max {100 * max(g):.1f} %")
    for s in skew:
        extra = (
            f"; vs round-robin over the popularity-sorted list ({s['round_robin_popularity']} GPUs): "
            f"{100 * s['saving_vs_popularity_order']:.0f} %"
            if s["round_robin_popularity"]
            else ""
        )
        lines.append(
            f"{s['family']}: milp {s['milp']} vs round-robin {s['round_robin']} GPUs: "
            f"{100 * s['saving']:.0f} % fewer (no plan can save more than {100 * s['ceiling']:.0f} %){extra}"
        )
    for name in sorted({s["skew"] for s in skew}):
        sv = [s["saving"] for s in skew if s["skew"] == name]
        lines.append(
            f"{name} families: milp uses {100 * min(sv):.0f}–{100 * max(sv):.0f} % fewer GPUs than round-robin"
        )
    infeasible = sorted({r["family"] for r in rows if "error" in r})
    if infeasible:
        lines.append(f"infeasible for some strategy (see rows): {', '.join(infeasible)}")
    return {
        "milp_le_greedy_paper": milp_le_paper,
        "skew_saving_vs_round_robin": [s["saving"] for s in skew],
        "skewed": skew,
        "lines": lines,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m optplace.bench.solver [--sizes 100,1000] [--strategies milp,round-robin] [--order …] [--json]``."""
    import argparse
    import json as _json

    ap = argparse.ArgumentParser(prog="python -m optplace.bench.solver", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help="comma-separated adapter counts (default 100,500,1000)")
    ap.add_argument("--full", action="store_true", help="also 5,000 and 10,000 adapters")
    ap.add_argument("--strategies", default=None, help="comma-separated strategies (default: all)")
    ap.add_argument("--order", default="shuffled", choices=ORDERS)
    ap.add_argument("--skews", default=None, help=f"comma-separated skews (default {','.join(SKEWS)})")
    ap.add_argument("--validate-max", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    sizes = tuple(int(x) for x in a.sizes.split(",")) if a.sizes else None
    strategies = tuple(a.strategies.split(",")) if a.strategies else None
    skews = tuple(a.skews.split(",")) if a.skews else None
    out = run(
        json=a.json,
        full=a.full,
        sizes=sizes,
        strategies=strategies,
        order=a.order,
        validate_max=a.validate_max,
        skews=skews,
    )
    if a.json:
        print(_json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
