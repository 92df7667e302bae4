"""A self-contained ``report.html`` (inline SVG charts, no JavaScript, no external files).

Pure functions from plain data to HTML text, so the pipeline can write the page atomically and
tests can parse it. Charts: per-GPU offered load vs capacity vs twin throughput, adapters per GPU
by rank, per-GPU latency (mean ITL and p99 TTFT), and strategies compared.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optplace.twin.simulate import GpuReport

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")


@dataclass(frozen=True, slots=True)
class Series:
    """One named series of a bar chart (one value per category)."""

    name: str
    values: tuple[float, ...]


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _nice_max(v: float) -> float:
    if v <= 0 or not math.isfinite(v):
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp  # pragma: no cover


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: Sequence[Series],
    unit: str = "",
    stacked: bool = False,
    width: int = 760,
    height: int = 260,
) -> str:
    """Grouped (or stacked) vertical bars as an inline SVG string."""
    n = max(len(categories), 1)
    left, right, top, bottom = 60, 10, 30, 40
    pw, ph = width - left - right, height - top - bottom
    totals = (
        [sum(s.values[i] for s in series) for i in range(len(categories))]
        if stacked
        else [max((s.values[i] for s in series), default=0.0) for i in range(len(categories))]
    )
    vmax = _nice_max(max([v for v in totals if math.isfinite(v)], default=1.0))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_esc(title)}">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-weight="bold">{_esc(title)}</text>',
    ]
    for k in range(5):
        y = top + ph - ph * k / 4
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">'
            f"{_fmt(vmax * k / 4)}{_esc(unit)}</text>"
        )
    slot = pw / n
    ns = max(len(series), 1)
    for i, cat in enumerate(categories):
        x0 = left + i * slot
        base = 0.0
        for j, s in enumerate(series):
            v = s.values[i] if math.isfinite(s.values[i]) else 0.0
            h = ph * v / vmax
            if stacked:
                x, w, y = x0 + slot * 0.15, slot * 0.7, top + ph - ph * (base + v) / vmax
                base += v
            else:
                w = slot * 0.8 / ns
                x, y = x0 + slot * 0.1 + j * w, top + ph - h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w - 1, 1):.1f}" height="{max(h, 0):.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{_esc(cat)} · {_esc(s.name)}: '
                f"{_fmt(v)}{_esc(unit)}</title></rect>"
            )
        if n <= 40 or i % math.ceil(n / 40) == 0:
            out.append(
                f'<text x="{x0 + slot / 2:.1f}" y="{top + ph + 14}" text-anchor="middle" '
                f'font-size="10">{_esc(cat)}</text>'
            )
    lx = left
    for j, s in enumerate(series):
        out.append(
            f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
            f'<text x="{lx + 14}" y="{height - 5}" font-size="11">{_esc(s.name)}</text>'
        )
        lx += 24 + 7 * len(s.name)
    out.append("</svg>")
    return "".join(out)


def _fmt(v: float) -> str:
    if abs(v) >= 10_000:
        return f"{v / 1000:.0f}k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table (every cell escaped)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A complete HTML document from (heading, inner HTML) sections."""
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}"
        "h2{margin-top:1.6em}.bad{color:#c00}.ok{color:#080}"
    )
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{style}</style></head><body><h1>{_esc(title)}</h1>"
    ]
    for heading, inner in sections:
        parts.append(f"<h2>{_esc(heading)}</h2>{inner}")
    parts.append("</body></html>\n")
    return "".join(parts)


def solve_report_html(rep) -> str:  # rep: optplace.pipeline.SolveReport
    """The ``report.html`` of a solve: plan table, load vs capacity, ranks per GPU, latency, strategies."""
    from optplace.app.render import comparison_cells, comparison_headers

    plan, val = rep.plan, rep.validation
    gpus = [g for g in plan.gpus if g.adapters]
    cats = [f"GPU {g.gpu}" for g in gpus]
    twin = {g.index: g for g in val.gpus} if val is not None else {}
    rank_of = {a.name: a.rank for a in rep.scenario.adapter_list()}
    ranks = sorted({rank_of[n] for g in gpus for n in g.adapters})
    load = bar_chart(
        "Offered load vs capacity per GPU",
        cats,
        [
            Series("offered", tuple(g.offered_tok_s for g in gpus)),
            Series("capacity (predicted)", tuple(g.capacity_tok_s for g in gpus)),
            Series("delivered (twin)", tuple(twin[g.gpu].throughput_tok_s if g.gpu in twin else 0.0 for g in gpus)),
        ],
        unit=" tok/s",
    )
    by_rank = bar_chart(
        "Adapters per GPU by rank",
        cats,
        [Series(f"rank {r}", tuple(float(sum(1 for n in g.adapters if rank_of[n] == r)) for g in gpus)) for r in ranks],
        stacked=True,
    )
    lat = bar_chart(
        "Latency per GPU (twin)",
        cats,
        [
            Series("mean ITL ms", tuple(twin[g.gpu].itl_ms_mean if g.gpu in twin else 0.0 for g in gpus)),
            Series("TTFT p50 ms", tuple(twin[g.gpu].ttft_ms_p50 if g.gpu in twin else 0.0 for g in gpus)),
        ],
        unit=" ms",
    )
    if rep.comparison:
        planned = [c for c in rep.comparison if c.error is None]
        strat = bar_chart(
            "GPUs per strategy (each plan as placed) and the proven lower bound",
            [c.strategy for c in planned] + ["lower bound"],
            [Series("GPUs", tuple(float(c.gpus_used) for c in planned) + (float(plan.lower_bound),))],
        )
        strat += table(comparison_headers(plan.objective), [comparison_cells(c) for c in rep.comparison])
    else:
        strat = bar_chart(
            "GPUs: this plan vs the proven lower bound (solve --compare adds every strategy)",
            [plan.strategy, "lower bound"],
            [Series("GPUs", (float(plan.gpus_used), float(plan.lower_bound)))],
        )
    rows = []
    for g in gpus:
        tw = twin.get(g.gpu)
        rows.append(
            [
                g.gpu,
                g.gpu_type,
                len(g.adapters),
                g.max_loras,
                g.max_cpu_loras,
                g.max_lora_rank,
                f"{g.offered_tok_s:,.0f}",
                f"{g.capacity_tok_s:,.0f}",
                f"{tw.throughput_tok_s:,.0f}" if tw else "–",
                f"{tw.throughput_loss:.1%}" if tw else "–",
                _twin_verdict(tw) if tw else "not validated",
            ]
        )
    summary = table(
        ["objective", "value", "lower bound", "gap", "strategy", "oracle", "solve time s", "repairs"],
        [
            [
                plan.objective,
                f"{plan.objective_value:g}",
                f"{plan.lower_bound:g}",
                f"{plan.gap:.1%}",
                plan.strategy,
                plan.oracle,
                f"{plan.solve_time_s:.1f}",
                len(rep.repairs),
            ]
        ],
    )
    sections = [
        ("Summary", summary),
        (
            "Plan",
            table(
                [
                    "GPU",
                    "type",
                    "adapters",
                    "--max-loras",
                    "--max-cpu-loras",
                    "--max-lora-rank",
                    "offered tok/s",
                    "capacity tok/s",
                    "twin tok/s",
                    "twin loss",
                    "status",
                ],
                rows,
            ),
        ),
        ("Load", load),
        ("Ranks", by_rank),
        ("Latency", lat),
        ("Strategies", strat),
    ]
    if rep.repairs:
        sections.append(("Repairs", table(["action"], [[a] for a in rep.repairs])))
    return page(f"optplace plan — {rep.scenario.name}", sections)


def _twin_verdict(g: GpuReport) -> str:
    """A GPU's twin verdict as text: OOM / starved / misses SLO (its worst figure against its bound) / ok."""
    from optplace.app.render import slo_text

    if g.oom:
        return "OOM"
    if g.starved:
        return "starved"
    return f"misses SLO: {slo_text(g)}" if g.slo_violated else "ok"
