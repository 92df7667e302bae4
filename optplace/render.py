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
