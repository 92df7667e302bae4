"""``optplace bench limits``: the largest specs and the solver's time limit, measured.

Each case runs ``optplace solve SPEC --json --no-validate`` in a child process (one at a time) and
reports its wall time, its peak RSS (``ru_maxrss`` from ``os.wait4`` of that child) and how it ended:
solved (GPUs, bound, gap, the solver's own ``solve_time_s``) or rejected (exit code and the
one-line message). Cases:

* 1,000, 10,000 and 100,000 adapters (three rank groups 8/16/32, Zipf s = 0.5 popularity, mean
  0.1 req/s per adapter, ShareGPT lengths, Llama-3.1-8B on H100-64GB) × ``time_limit_s`` = 5, 20, 60.
  A limit is honoured when the solve takes at most 10 % longer: ``solve_time_s`` (measured by the
  solver from its deadline's start — before the problem is compiled — to the plan with its bound)
  ≤ 1.1 × limit. The process wall time (interpreter start-up, imports, reading the YAML, JSON output)
  is printed beside it with its own overrun, ``wall − limit``.
* refusal: 300,000 adapters at ``time_limit_s`` = 2 must be refused up front (exit 1, one line),
  since it cannot even be compiled in 2 s.

Twin validation is off (a 100k plan has hundreds of GPUs; ``bench solver`` validates small plans;
the time limit does not cover validation, see ``optplace.pipeline.solve_scenario``). Run it alone
(``nice -n 15 optplace bench limits``): the figures are wall-clock times on a shared machine.
"""

from __future__ import annotations

import json as _json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MEAN_RATE = 0.1
GROUPS = ((8, 0.5), (16, 0.3), (32, 0.2))  # rank, share of the adapters
WALL_CAP_S = 900.0  # a child running longer than this is killed and reported as a hang


def spec_text(n: int, time_limit_s: float, duration_s: float = 3600) -> str:
    """A scenario with ``n`` adapters in three rank groups (``duration_s``: keep n × 0.1 × duration
    under the twin's 50 M-request window cap, or the spec is refused as input)."""
    counts = [int(n * share) for _, share in GROUPS]
    counts[0] += n - sum(counts)
    lines = "\n".join(
        f"  - {{group: r{r}, count: {k}, rank: {r}, total_rate_rps: {MEAN_RATE * k:.3f}, "
        "popularity: {kind: zipf, s: 0.5}}"
        for (r, _), k in zip(GROUPS, counts)
        if k > 0
    )
    return (
        f"name: limits-{n}\nmodel: llama-3.1-8b-instruct\ngpu: h100-64gb\n"
        f"workload: {{duration_s: {duration_s:g}, arrivals: {{kind: poisson}}, lengths: {{kind: sharegpt}}}}\n"
        f"adapters:\n{lines}\nsolver: {{strategy: milp, time_limit_s: {time_limit_s}}}\nseed: 1\n"
    )


def run_child(
    argv: list[str], cwd: Path, cap_s: float = WALL_CAP_S, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one command (``env``: its environment, default this process's); return exit code, wall
    seconds, peak RSS [MiB], stdout and stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, env=env)
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > cap_s and not killed:
                proc.kill()
                killed = True
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
        out.seek(0)
        err.seek(0)
        return {
            "rc": proc.returncode,
            "wall_s": wall,
            "rss_mib": usage.ru_maxrss / 1024.0,
            "killed": killed,
            "stdout": out.read().decode("utf-8", "replace"),
            "stderr": err.read().decode("utf-8", "replace"),
        }


def solve_case(n: int, time_limit_s: float, folder: Path) -> dict[str, Any]:
    """Solve the ``n``-adapter family in a child process and summarise the outcome."""
    spec = folder / f"limits-{n}-{time_limit_s:g}.yaml"
    spec.write_text(spec_text(n, time_limit_s, 3600 if n <= 100_000 else 600), encoding="utf-8")
    r = run_child([sys.executable, "-m", "optplace.cli", "solve", str(spec), "--json", "--no-validate"], folder)
    row: dict[str, Any] = {
        "adapters": n,
        "time_limit_s": time_limit_s,
        "exit_code": r["rc"],
        "wall_s": round(r["wall_s"], 2),
        "peak_rss_mib": round(r["rss_mib"], 1),
    }
    if r["killed"]:
        row["outcome"] = f"killed after {WALL_CAP_S:.0f} s"
    elif r["rc"] in (0, 1) and r["stdout"].lstrip().startswith("{"):
        doc = _json.loads(r["stdout"])
        st = float(doc["solve_time_s"])
        row.update(
            outcome="solved",
            gpus_used=doc["gpus_used"],
            lower_bound=doc["lower_bound"],
            gap=doc["gap"],
            oracle=doc["oracle"],
            solve_time_s=st,
            limit_honoured=st <= 1.1 * time_limit_s,
            over_limit_pct=round(100.0 * (st / time_limit_s - 1.0), 1),
            wall_over_s=round(r["wall_s"] - time_limit_s, 2),
            time_limit_reached=bool(doc.get("time_limit_reached")),
            cut_by_time_limit=list(doc.get("cut_by_time_limit") or []),
        )
    else:
        msg = [ln for ln in r["stderr"].splitlines() if ln.startswith(("error:", "infeasible:", "internal error"))]
        row.update(outcome="rejected", message=msg[-1] if msg else r["stderr"].strip().splitlines()[-1:])
    return row


def run(
    json: bool = False,
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000),
    limits: tuple[float, ...] = (5.0, 20.0, 60.0),
    refuse: tuple[int, float] | None = (300_000, 2.0),
) -> dict[str, Any]:
    """Run every case (single process at a time); print a table unless ``json``; return the rows."""
    cases = [(n, t) for n in sizes for t in limits] + ([refuse] if refuse else [])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="optplace-limits-") as d:
        for n, t in cases:
            row = solve_case(n, t, Path(d))
            rows.append(row)
            if not json:
                _print_row(row)
    solved = [r for r in rows if r.get("outcome") == "solved"]
    refused = [r for r in rows if refuse and r["adapters"] == refuse[0] and r["time_limit_s"] == refuse[1]]
    summary: dict[str, Any] = {
        "all_ended": all(r.get("outcome") in ("solved", "rejected") for r in rows),
        "time_limits_honoured": sum(1 for r in solved if r["limit_honoured"]),
        "solves": len(solved),
        "worst_over_limit_pct": max((r["over_limit_pct"] for r in solved), default=None),
        "worst_wall_over_s": max((r["wall_over_s"] for r in solved), default=None),
        "refused_up_front": bool(refused) and all(r["outcome"] == "rejected" and r["exit_code"] == 1 for r in refused),
        "peak_rss_mib": {
            str(n): max(r["peak_rss_mib"] for r in rows if r["adapters"] == n)
            for n in sorted({r["adapters"] for r in rows})
        },
    }
    if not json:
        worst, wall_over = summary["worst_over_limit_pct"], summary["worst_wall_over_s"]
        head = (
            f"limits: {summary['time_limits_honoured']}/{summary['solves']} solves within 10 % of time_limit_s "
            f"(worst {worst:+.1f} %; process wall at most {wall_over:+.1f} s past the limit)"
            if worst is not None
            else "limits: no solves"
        )
        print(
            f"{head}; refused up front: {summary['refused_up_front']}; peak RSS by size: "
            + ", ".join(f"{int(k):,} adapters {v:.0f} MiB" for k, v in summary["peak_rss_mib"].items())
        )
    return {"rows": rows, "summary": summary}


def _reached(r: dict[str, Any]) -> str:
    """``, limit reached (cut: …)`` when the clock cut the solve, else nothing."""
    if not r["time_limit_reached"]:
        return ""
    cut = r.get("cut_by_time_limit") or []
    return ", limit reached" + (f" (cut: {', '.join(cut)})" if cut else "")


def _print_row(r: dict[str, Any]) -> None:
    head = f"{r['adapters']:>7,} adapters, time_limit_s {r['time_limit_s']:>4g}: "
    if r["outcome"] == "solved":
        print(
            head + f"solved, {r['gpus_used']} GPUs (bound {r['lower_bound']}, gap {r['gap']}), "
            f"solve {r['solve_time_s']:.1f} s ({r['over_limit_pct']:+.1f} % vs limit, "
            f"{'ok' if r['limit_honoured'] else 'OVER'}{_reached(r)}), "
            f"wall {r['wall_s']:.1f} s ({r['wall_over_s']:+.1f} s), "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB, oracle {r['oracle']}",
            flush=True,
        )
    else:
        print(
            head + f"{r['outcome']} (exit {r['exit_code']}): {r.get('message', '')}; wall {r['wall_s']:.1f} s, "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
