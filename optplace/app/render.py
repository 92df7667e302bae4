"""Rich rendering of results for the terminal (the CLI's only presentation code)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from optplace.twin.simulate import SimReport


def render_sim_report(console: Console, rep: SimReport) -> None:
    """A table of GPUs (load vs delivered, loss, latency, slots) and the adapters that starve."""
    from rich.table import Table

    t = Table(title=f"twin: {rep.scenario} (seed {rep.seed}, {rep.duration_s:.0f} s window)")
    for col, just in [("GPU", "right"), ("type", "left"), ("adapters", "right"), ("slots", "right"),
                      ("KV tokens", "right"), ("offered tok/s", "right"), ("delivered tok/s", "right"),
                      ("loss", "right"), ("ITL ms", "right"), ("TTFT p99 ms", "right"), ("status", "left")]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for g in rep.gpus:
        status = "[red]OOM at start[/]" if g.oom else ("[red]starved[/]" if g.starved else "[green]ok[/]")
        if not g.oom and g.starved_adapters and not g.starved:
            status += f" ([yellow]{len(g.starved_adapters)} adapters starve[/])"
        t.add_row(str(g.index), g.gpu_type, str(len(g.adapters)), f"{g.max_loras}/{g.max_cpu_loras} r{g.max_lora_rank}",
                  f"{g.kv_cache_tokens:,}", f"{g.offered_tok_s:,.0f}", f"{g.throughput_tok_s:,.0f}",
                  f"{g.throughput_loss:.1%}", f"{g.itl_ms_mean:.1f}", f"{g.ttft_ms_p99:,.0f}", status)
    console.print(t)
    for g in rep.gpus:
        if g.starved_adapters and not g.oom:
            names = ", ".join(g.starved_adapters[:8]) + (" …" if len(g.starved_adapters) > 8 else "")
            console.print(f"GPU {g.index}: {len(g.starved_adapters)} adapters above the loss bound: {names}",
                          markup=False)
    verdict = ("[green]all GPUs serve their load[/]" if not (rep.starved_gpus or rep.oom_gpus) else
               f"[red]{len(rep.starved_gpus)} starved, {len(rep.oom_gpus)} OOM[/]")
    console.print(f"{verdict} — simulated {rep.simulated_s:,.0f} GPU-seconds in {rep.sim_wall_s:.1f} s wall")


def render_solve_report(console: Console, rep) -> None:  # rep: optplace.pipeline.SolveReport
    """The plan (GPU, type, slots, adapters, offered vs capacity, predicted and twin figures), bound and gap."""
    from rich.table import Table

    plan, val = rep.plan, rep.validation
    twin = {g.index: g for g in val.gpus} if val is not None else {}
    t = Table(title=f"{rep.scenario.name}: {plan.gpus_used} GPUs ({plan.strategy}, objective {plan.objective})")
    for col in ("GPU", "type", "adapters", "ranks", "--max-loras", "--max-cpu-loras", "--max-lora-rank",
                "offered tok/s", "capacity tok/s", "predicted tok/s", "twin tok/s", "twin loss", "twin ITL ms",
                "twin TTFT p99 ms", "status"):
        t.add_column(col, justify="left" if col in ("type", "ranks", "status") else "right")
    for g in plan.gpus:
        if not g.adapters:
            continue
        tw = twin.get(g.gpu)
        ranks = _rank_counts(rep.scenario, g.adapters)
        if tw is None:
            status, cells = "not validated", ["–"] * 4
        else:
            status = "[red]OOM[/]" if tw.oom else ("[red]starved[/]" if tw.starved else "[green]ok[/]")
            if tw.starved_adapters and not tw.starved:
                status += f" [yellow]({len(tw.starved_adapters)} adapters > loss bound)[/]"
            cells = [f"{tw.throughput_tok_s:,.0f}", f"{tw.throughput_loss:.1%}", f"{tw.itl_ms_mean:.1f}",
                     f"{tw.ttft_ms_p99:,.0f}"]
        t.add_row(str(g.gpu), g.gpu_type, str(len(g.adapters)), ranks, str(g.max_loras), str(g.max_cpu_loras),
                  str(g.max_lora_rank), f"{g.offered_tok_s:,.0f}", f"{g.capacity_tok_s:,.0f}",
                  f"{g.predicted_throughput_tok_s:,.0f}", *cells, status)
    console.print(t)
    gap = f"{plan.gap:.1%}" if plan.gap == plan.gap and plan.gap != float("inf") else "–"
    console.print(f"objective {plan.objective}: {plan.objective_value:g} · lower bound {plan.lower_bound:g} · "
                  f"gap {gap} · solved in {plan.solve_time_s:.1f} s with the {plan.oracle} capacity oracle",
                  markup=False)
    for a in rep.repairs:
        console.print(f"repaired: {a}", markup=False)
    if val is not None:
        verdict = ("[green]twin: every GPU serves its load[/]" if rep.ok else
                   f"[red]twin: {len(val.starved_gpus)} starved, {len(val.oom_gpus)} OOM after {rep.rounds} repair "
                   "rounds[/]")
        console.print(verdict)
    if rep.comparison:
        render_comparison_table(console, rep.comparison, rep.plan.objective)


def comparison_headers(objective: str) -> list[str]:
    """The columns of the strategy comparison (terminal table and report.html alike)."""
    return ["strategy", "GPUs", objective, "lower bound", "starved", "OOM", "worst loss", "mean ITL ms", "solve s",
            "twin"]


def comparison_cells(r) -> list[str]:  # r: pipeline.StrategyResult
    """One strategy's row of the comparison, as text; the last cell is the twin's verdict (or why there is
    no plan)."""
    if r.error is not None:
        return [r.strategy, *["–"] * 8, f"no plan: {r.error}"]
    return [r.strategy, str(r.gpus_used), f"{r.objective_value:g}", f"{r.lower_bound:g}", str(r.starved_gpus),
            str(r.oom_gpus), f"{r.worst_loss:.1%}" if r.worst_loss is not None else "–",
            f"{r.itl_ms_mean:.1f}" if r.itl_ms_mean is not None else "–", f"{r.solve_time_s:.2f}",
            "ok" if r.ok else "fails"]


def render_comparison_table(console: Console, rows, objective: str) -> None:  # rows: pipeline.StrategyResult
    """Every strategy's plan for the scenario, as placed (not repaired), as the twin found it."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="strategies compared (each plan as placed, not repaired; checked by the twin)")
    for col in comparison_headers(objective):
        t.add_column(col, justify="left" if col in ("strategy", "twin") else "right")
    for r in rows:
        *cells, verdict = comparison_cells(r)
        colour = "yellow" if r.error is not None else "green" if r.ok else "red"
        t.add_row(*cells, f"[{colour}]{escape(verdict)}[/]")
    console.print(t)


def _rank_counts(sc, names) -> str:
    rank = {a.name: a.rank for a in sc.adapter_list()}
    counts: dict[int, int] = {}
    for n in names:
        counts[rank[n]] = counts.get(rank[n], 0) + 1
    return " ".join(f"r{r}×{c}" for r, c in sorted(counts.items()))


def render_validation_table(console: Console, files: list[str], reports: list) -> None:
    """One row per validated plan: GPUs, starved, OOM, worst throughput margin, latency."""
    from rich.table import Table

    t = Table(title="twin validation")
    for col in ("plan", "scenario", "GPUs", "starved", "OOM", "adapters > bound", "worst loss", "mean ITL ms",
                "worst TTFT p99 ms"):
        t.add_column(col, justify="left" if col in ("plan", "scenario") else "right")
    for f, r in zip(files, reports):
        ok = [g for g in r.gpus if not g.oom]
        worst = max((g.throughput_loss for g in r.gpus), default=0.0)
        w = sum(g.throughput_tok_s for g in ok)
        itl = sum(g.itl_ms_mean * g.throughput_tok_s for g in ok) / w if w > 0 else float("nan")
        t.add_row(f, r.scenario, str(len(r.gpus)), str(len(r.starved_gpus)), str(len(r.oom_gpus)),
                  str(sum(len(g.starved_adapters) for g in ok)), f"{worst:.1%}", f"{itl:.1f}",
                  f"{max((g.ttft_ms_p99 for g in ok), default=0.0):,.0f}")
    console.print(t)
