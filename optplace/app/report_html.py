"""A self-contained ``report.html`` (inline SVG charts, no JavaScript, no external files).

Pure functions from plain data to HTML text, so the pipeline can write the page atomically and
tests can parse it. Sections: the summary (objective, bound, the SLO, the seeds the plan was checked
on), the plan, latency against the SLO (each bounded metric per GPU against its bound, colour by
verdict, log scale when the values span decades), headroom per GPU, the adapters furthest over (or
closest to) their bound, load vs capacity, ranks per GPU, latency per GPU and the strategies compared
under the SLO. The page holds no wall-clock figure other than solve times (zeroed by ``reproducible``),
so the same solve writes the same bytes.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optplace.twin.simulate import AdapterReport, GpuReport, SimReport

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")
#: Verdict colours: meets its bound / over it / limits the plan (headroom) / no verdict.
OK_COLOUR, BAD_COLOUR, LIMIT_COLOUR, NEUTRAL_COLOUR = "#59a14f", "#e15759", "#f28e2b", "#4e79a7"
#: Adapters listed in the per-adapter table (the worst first) and drawn in its chart; the rest are counted.
ADAPTER_ROWS = 50
ADAPTER_BARS = 30
#: A chart turns logarithmic when its values span more than this ratio (a GPU at 200 s against a 2 s bound).
LOG_SPAN = 50.0
#: Titles of the SLO metrics.
METRIC_TITLE = {
    "ttft_p99_ms": "TTFT p99",
    "ttft_p50_ms": "TTFT p50",
    "itl_p99_ms": "ITL p99",
    "itl_mean_ms": "mean ITL",
    "tpot_p99_ms": "TPOT p99",
}


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


@dataclass(frozen=True, slots=True)
class Cell:
    """A table cell with a CSS class (``ok`` / ``bad``: coloured by verdict)."""

    text: str
    cls: str


def _td(c: object) -> str:
    if isinstance(c, Cell):
        return f'<td class="{_esc(c.cls)}">{_esc(c.text)}</td>'
    return f"<td>{_esc(c)}</td>"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table (every cell escaped; a :class:`Cell` carries its class)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def para(text: str, cls: str = "") -> str:
    """A paragraph of escaped text."""
    return f'<p class="{cls}">{_esc(text)}</p>' if cls else f"<p>{_esc(text)}</p>"


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of a :func:`verdict_chart`: its category, value (NaN or inf: no finite figure, drawn to the
    top), colour, the text over it, its tooltip, and its own bound (a mark across its slot) if any."""

    label: str
    value: float
    colour: str
    text: str = ""
    tip: str = ""
    bound: float | None = None


def _log_range(vals: Sequence[float]) -> tuple[float, float] | None:
    """The decades a log axis spans, or None when the values do not span :data:`LOG_SPAN`."""
    pos = [v for v in vals if v > 0 and math.isfinite(v)]
    if not pos or max(pos) / min(pos) <= LOG_SPAN:
        return None
    return 10 ** math.floor(math.log10(min(pos))), 10 ** math.ceil(math.log10(max(pos)))


def verdict_chart(
    title: str,
    bars: Sequence[Bar],
    fmt: Callable[[float], str],
    lines: Sequence[tuple[float, str]] = (),
    legend: Sequence[tuple[str, str]] = (),
    vmax: float | None = None,
    width: int = 760,
    height: int = 280,
) -> str:
    """Bars coloured one by one (by verdict) against reference lines (an SLO bound, a search's cap) as an
    inline SVG; logarithmic when the values and lines span decades. ``fmt`` writes an axis value;
    ``legend``: (colour, text) swatches; ``vmax``: the linear axis's top (else a round number above all)."""
    n = max(len(bars), 1)
    labels = [b.label for b in bars]
    rotate = n > 12 or max((len(x) for x in labels), default=0) * 6.5 > (width - 74) / n
    left, right, top = 64, 10, 30
    bottom = 34 + (min(5 * max((len(x) for x in labels), default=0), 70) if rotate else 0) + (18 if legend else 0)
    height += bottom - 40
    pw, ph = width - left - right, height - top - bottom
    finite = [b.value for b in bars if math.isfinite(b.value)]
    refs = finite + [v for v, _ in lines] + [b.bound for b in bars if b.bound is not None]
    span = _log_range(refs)
    if span is not None:
        lo, hi = span
        decades = math.log10(hi / lo)

        def ypos(v: float) -> float:
            v = min(max(v, lo), hi) if math.isfinite(v) else hi
            return top + ph - ph * math.log10(v / lo) / decades

        ticks = [lo * 10**k for k in range(round(decades) + 1)]
    else:
        top_v = vmax if vmax is not None else _nice_max(1.08 * max(refs, default=1.0))
        step = _nice_max(top_v / 5)  # round ticks: 0, 500, 1000 … rather than quarters of the top
        top_v = step * math.ceil(top_v / step - 1e-9)

        def ypos(v: float) -> float:
            v = min(max(v, 0.0), top_v) if math.isfinite(v) else top_v
            return top + ph - ph * v / top_v

        ticks = [step * k for k in range(round(top_v / step) + 1)]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_esc(title)}">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-weight="bold" font-size="14">{_esc(title)}</text>',
    ]
    for t in ticks:
        y = ypos(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{_esc(fmt(t))}</text>')
    slot = pw / n
    base = top + ph
    every = 1 if n <= 40 else math.ceil(n / 40)
    for i, b in enumerate(bars):
        x0 = left + i * slot
        y = ypos(b.value)
        tip = f"<title>{_esc(b.tip)}</title>" if b.tip else ""
        out.append(
            f'<rect x="{x0 + slot * 0.15:.1f}" y="{y:.1f}" width="{max(slot * 0.7, 1):.1f}" '
            f'height="{max(base - y, 0):.1f}" fill="{b.colour}">{tip}</rect>'
        )
        if b.bound is not None:
            yb = ypos(b.bound)
            out.append(
                f'<line x1="{x0 + slot * 0.05:.1f}" x2="{x0 + slot * 0.95:.1f}" y1="{yb:.1f}" y2="{yb:.1f}" '
                f'stroke="#222" stroke-width="2"/>'
            )
        if b.text and n <= 30:
            out.append(
                f'<text x="{x0 + slot / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="10">'
                f"{_esc(b.text)}</text>"
            )
        if i % every == 0:
            lx, ly = x0 + slot / 2, base + 13
            if rotate:
                out.append(
                    f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="end" font-size="10" '
                    f'transform="rotate(-45 {lx:.1f} {ly:.1f})">{_esc(b.label)}</text>'
                )
            else:
                out.append(
                    f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle" font-size="10">{_esc(b.label)}</text>'
                )
    for v, text in lines:
        y = ypos(v)
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#222" stroke-width="1.5" '
            f'stroke-dasharray="6 3"/>'
            f'<text x="{left + pw - 2}" y="{y - 4:.1f}" text-anchor="end" font-size="11">{_esc(text)}</text>'
        )
    lx = left
    for colour, text in legend:
        out.append(
            f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14}" y="{height - 5}" font-size="11">{_esc(text)}</text>'
        )
        lx += 24 + 6.2 * len(text)
    out.append("</svg>")
    return "".join(out)


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


def solve_report_html(rep: Any, reproducible: bool = False) -> str:  # rep: optplace.pipeline.SolveReport
    """The ``report.html`` of a solve: summary, plan, latency against the SLO, headroom, adapters, load vs
    capacity, ranks per GPU, latency, strategies. ``reproducible`` zeroes the solve times (the page's only
    wall-clock figures)."""
    from optplace.app.render import headroom_text, seeds_summary, slo_summary

    plan, val = rep.plan, rep.validation
    gpus = [g for g in plan.gpus if g.adapters]
    cats = [f"GPU {g.gpu}" for g in gpus]
    twin = {g.index: g for g in val.gpus} if val is not None else {}
    room = {h.index: h for h in rep.headroom.gpus} if rep.headroom is not None else {}
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
        "Latency per GPU (twin, whole window, every adapter's requests)",
        cats,
        [
            Series("mean ITL ms", tuple(twin[g.gpu].itl_ms_mean if g.gpu in twin else 0.0 for g in gpus)),
            Series("TTFT p50 ms", tuple(twin[g.gpu].ttft_ms_p50 if g.gpu in twin else 0.0 for g in gpus)),
        ],
        unit=" ms",
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
                headroom_text(room.get(g.gpu)),
                Cell(_twin_verdict(tw), "bad" if tw.failed else "ok") if tw else "not validated",
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
                f"{0.0 if reproducible else plan.solve_time_s:.1f}",
                len(rep.repairs),
            ]
        ],
    )
    if val is not None:
        summary += para(f"SLO: {slo_summary(val.slo)}.")
        summary += para(f"Twin: {seeds_summary(rep)}.", "ok" if rep.ok else "bad")
    else:
        summary += para("Not validated in the twin (--no-validate or solver.validate_plan: false).")
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
                    "headroom",
                    "status",
                ],
                rows,
            ),
        ),
    ]
    if val is not None:
        sections += [
            ("Latency against the SLO", slo_section(val, [twin.get(g.gpu) for g in gpus])),
            ("Headroom", headroom_section(rep)),
            ("Adapters", adapter_section(val)),
        ]
        if val.replicated():
            sections.append(("Replicated adapters", replica_section(val)))
    sections += [
        ("Load", load),
        ("Ranks", by_rank),
        ("Latency", lat),
        ("Strategies", strategy_section(rep, reproducible)),
    ]
    if rep.repairs:
        sections.append(("Repairs", table(["action"], [[a] for a in rep.repairs])))
    return page(f"optplace plan — {rep.scenario.name}", sections)


def _axis_ms(ms: float) -> str:
    """An axis value in ms as "500 ms", "2 s", "100 s"."""
    return f"{ms / 1e3:g} s" if ms >= 1000 else f"{ms:g} ms"


def _metric_bar(label: str, metric: str, g: GpuReport | None) -> Bar:
    """A GPU's bar for one SLO metric: its steady-state figure (the worst adapter's, judged per adapter)."""
    from optplace.app.render import SLO_SHORT, duration_text

    if g is None:
        return Bar(label, math.nan, NEUTRAL_COLOUR, "–", f"{label}: not simulated")
    c = next((c for c in g.slo.checks if c.metric == metric), None) if g.slo is not None else None
    if c is None:
        what = "OOM" if g.oom else "–"
        return Bar(label, 0.0, NEUTRAL_COLOUR, what, f"{label}: no {SLO_SHORT[metric]} figure ({what})")
    who = f" (adapter {c.adapter})" if c.adapter else ""
    value = duration_text(c.value) if math.isfinite(c.value) else "none completed"
    tip = f"{label}: {SLO_SHORT[metric]} {value}{who}, bound {duration_text(c.bound)}: {'meets it' if c.ok else 'over'}"
    return Bar(label, c.value, OK_COLOUR if c.ok else BAD_COLOUR, value, tip, c.bound)


def _bound_lines(bars: list[Bar], name: str = "SLO") -> tuple[list[Bar], list[tuple[float, str]]]:
    """One dashed line across the chart when every bar has the same bound (each bar keeps its own mark
    otherwise)."""
    from dataclasses import replace

    from optplace.app.render import duration_text

    bounds = {b.bound for b in bars if b.bound is not None}
    if len(bounds) != 1:
        return bars, []
    (bound,) = bounds
    return [replace(b, bound=None) for b in bars], [(bound, f"{name} {duration_text(bound)}")]


def slo_section(val: SimReport, twin: Sequence[GpuReport | None]) -> str:
    """Each SLO metric per GPU against its bound (one chart per bounded metric), then a line per GPU that
    misses the SLO for another reason (a growing queue, an adapter served nothing)."""
    from optplace.app.render import slo_miss_lines

    if val.slo is None:
        return para("No SLO (slo: none): the plan is judged by the study's throughput rule alone.")
    scope = val.slo["scope"]
    metrics = [
        m
        for m in METRIC_TITLE
        if any(g is not None and g.slo is not None and any(c.metric == m for c in g.slo.checks) for g in twin)
    ]
    whose = "the worst adapter's" if scope == "adapter" else "GPU-wide"
    out = [
        para(
            f"Steady state: requests arriving after {val.slo['warmup_s']:g} s. Each bar is {whose} figure; "
            "the dashed line (or a bar's own mark) is its bound; a red bar is over it."
        )
    ]
    legend = [(OK_COLOUR, "meets its bound"), (BAD_COLOUR, "over its bound")]
    for m in metrics:
        bars, lines = _bound_lines([_metric_bar(f"GPU {g.index}" if g else "–", m, g) for g in twin])
        out.append(verdict_chart(f"{METRIC_TITLE[m]} per GPU ({whose}) against the SLO", bars, _axis_ms, lines, legend))
    if not metrics:
        out.append(para("The SLO bounds no latency figure: only the stable queue is judged."))
    misses = [_starved_line(val, g) for g in twin if g is not None and (g.oom or g.starved)]
    misses += slo_miss_lines([g for g in twin if g is not None])
    out += [para(line, "bad") for line in misses]
    if not misses and all(g is not None and not g.failed for g in twin):
        out.append(para("Every GPU meets the SLO.", "ok"))
    return "".join(out)


def _starved_line(val: SimReport, g: GpuReport) -> str:
    """Why a GPU fails the throughput rule: OOM, its loss over the limit, or adapters over their loss bound."""
    if g.oom:
        return f"GPU {g.index} fails to start (OOM)"
    if g.throughput_loss >= val.max_throughput_loss:
        return (
            f"GPU {g.index} is starved: {g.throughput_loss:.0%} of its load lost (limit {val.max_throughput_loss:.0%})"
        )
    bound = f" ({val.max_adapter_loss:.0%})" if val.max_adapter_loss is not None else ""
    return (
        f"GPU {g.index} is starved: {len(g.starved_adapters)} adapter(s) lose more than the adapter loss bound{bound}"
    )


def headroom_section(rep: Any) -> str:
    """A bar per GPU: the extra load it holds before the twin first finds it failing, the limiting GPU
    marked, with the summary sentence; a note when headroom was not measured."""
    from optplace.app.render import breaks_text, headroom_summary, headroom_text

    room = rep.headroom
    if room is None:
        if rep.validation is not None and not rep.validation.ok:
            why = "the plan fails at its stated load"
        elif not rep.scenario.rates_scalable():
            why = "the workload's rates do not scale (a trace with a fixed scale or assignment)"
        else:
            why = "skipped (--no-headroom)"
        return para(f"Headroom not measured: {why}.")
    lim = room.limiting_gpu
    bars = []
    for h in room.gpus:
        limiting = lim is not None and h.index == lim.index and h.breaks_at is not None
        colour = BAD_COLOUR if h.holds_up_to is None else LIMIT_COLOUR if limiting else OK_COLOUR
        more = f", breaks at +{h.breaks_at:.0%} ({breaks_text(h)})" if h.breaks_at is not None else ""
        tip = (
            f"GPU {h.index}: holds up to {headroom_text(h)}{more}"
            if h.holds_up_to is not None
            else (f"GPU {h.index}: fails at the stated load ({breaks_text(h)})")
        )
        bars.append(Bar(f"GPU {h.index}", 100 * (h.holds_up_to or 0.0), colour, headroom_text(h), tip))
    lines = [(100 * room.cap, f"search cap +{room.cap:.0%}")]
    planned = rep.scenario.slo.headroom if rep.scenario.slo is not None else 0.0
    if planned:
        lines.append((100 * planned, f"planned for +{planned:.0%}"))
    legend = [(OK_COLOUR, "holds"), (LIMIT_COLOUR, "limits the plan"), (BAD_COLOUR, "fails at the stated load")]
    chart = verdict_chart(
        "Headroom per GPU: extra load held before the twin finds it failing",
        bars,
        lambda v: f"+{v:.0f}%",
        lines,
        legend,
        vmax=120 * room.cap,
    )
    rows = [
        [
            h.index,
            Cell(headroom_text(h), "bad" if h.holds_up_to is None else ""),
            "–" if h.breaks_at is None else "the stated load" if h.breaks_at == 0 else f"+{h.breaks_at:.0%}",
            breaks_text(h),
        ]
        for h in room.gpus
    ]
    return para(headroom_summary(room) + ".") + chart + table(["GPU", "holds up to", "breaks at", "breaks on"], rows)


def _adapter_ratio(a: AdapterReport) -> float:
    """How far over (or under) its bounds an adapter is: its figure furthest over its bound, as a share of
    it (inf when it served nothing or a figure is missing; its TTFT p99 in seconds when not judged by bounds,
    so the slowest still sort first)."""
    v = a.slo
    if v is not None and v.served_nothing:
        return math.inf
    if v is not None and v.checks:
        return max(c.ratio for c in v.checks)
    if a.latency is None or not math.isfinite(a.latency.steady.ttft_ms_p99):
        return 0.0
    return a.latency.steady.ttft_ms_p99 / 1e3


def adapter_section(val: SimReport) -> str:
    """Every adapter's steady-state latency, bounds and verdict, the worst :data:`ADAPTER_ROWS` first (those
    that miss the SLO, then by their figure closest to its bound), with a chart of the worst ones."""
    from optplace.app.render import SLO_SHORT, duration_text, adapter_slo_text

    ads = [(g.index, a) for g in val.gpus for a in g.per_adapter]
    if not ads:
        return para("No adapter was simulated.")
    judged = val.slo is not None
    ads.sort(key=lambda ga: (ga[1].slo is None or ga[1].slo.ok, -_adapter_ratio(ga[1]), ga[1].name))

    def ms(x: float) -> str:
        return duration_text(x) if math.isfinite(x) else "–"

    rows = []
    for gi, a in ads[:ADAPTER_ROWS]:
        st = a.latency.steady if a.latency is not None else None
        figures = (
            [ms(st.ttft_ms_p50), ms(st.ttft_ms_p99), ms(st.itl_ms_mean), ms(st.itl_ms_p99), ms(st.tpot_ms_p99)]
            if st is not None and st.completed > 0
            else ["–"] * 5  # no request completed: no latency to show
        )
        loss = a.loss if st is None or st.loss is None else st.loss
        checks = a.slo.checks if a.slo is not None else ()
        bounds = ", ".join(f"{SLO_SHORT[c.metric]} ≤ {duration_text(c.bound)}" for c in checks) or (
            "GPU-wide" if judged else "–"
        )
        ratio = _adapter_ratio(a)
        share = f"{ratio:.0%}" if checks and math.isfinite(ratio) else "–"
        verdict = adapter_slo_text(a)
        rows.append(
            [
                a.name,
                gi,
                *figures,
                f"{st.completed if st is not None else a.completed:,}",
                f"{loss:.1%}",
                bounds,
                share,
                Cell(verdict, "ok" if verdict == "ok" else "bad" if verdict != "–" else ""),
            ]
        )
    missing = sum(1 for _, a in ads if a.slo is not None and not a.slo.ok)
    head = (
        f"{len(ads):,} adapters, {missing:,} miss the SLO"
        if judged
        else f"{len(ads):,} adapters (no SLO: the slowest first)"
    )
    hidden = ads[ADAPTER_ROWS:]
    if hidden:
        worse = sum(1 for _, a in hidden if a.slo is not None and not a.slo.ok)
        head += f"; the {ADAPTER_ROWS} furthest over (or closest to) their bound are listed, {len(hidden):,} hidden" + (
            f" ({worse:,} of them miss the SLO too)" if worse else " (all within the SLO)" if judged else ""
        )
    out = [para(head + ". Figures are steady-state (requests after the warm-up).", "bad" if missing else "")]
    worst = [(gi, a) for gi, a in ads[:ADAPTER_BARS] if a.slo is not None and a.slo.checks]
    if worst:
        bars = []
        for gi, a in worst:
            assert a.slo is not None
            c = a.slo.worst
            assert c is not None
            ok = a.slo.ok
            if a.slo.served_nothing:  # no figure: a full-height bar
                tip, pct = f"{a.name} (GPU {gi}): served none of its requests", math.inf
            else:
                figure = f"{SLO_SHORT[c.metric]} {ms(c.value)} of {duration_text(c.bound)}"
                tip = f"{a.name} (GPU {gi}): {figure}; {adapter_slo_text(a)}"
                pct = 100 * c.ratio
            bars.append(Bar(a.name, pct, OK_COLOUR if ok else BAD_COLOUR, "none" if a.slo.served_nothing else "", tip))
        out.append(
            verdict_chart(
                (
                    f"The {len(bars)} adapters nearest (or furthest over) their SLO"
                    if len(bars) < len(ads)
                    else "Every adapter"
                )
                + ": worst figure, % of its bound",
                bars,
                lambda v: f"{v:.0f}%" if v >= 1 else f"{v:.2g}%",
                [(100.0, "bound")],
                [(OK_COLOUR, "meets the SLO"), (BAD_COLOUR, "misses the SLO")],
            )
        )
    headers = [
        "adapter",
        "GPU",
        "TTFT p50",
        "TTFT p99",
        "ITL mean",
        "ITL p99",
        "TPOT p99",
        "completed",
        "loss",
        "SLO",
        "worst / bound",
        "verdict",
    ]
    out.append(table(headers, rows))
    return "".join(out)


def replica_section(val: SimReport) -> str:
    """Each adapter placed on several GPUs: one row per replica (GPU, share, load, TTFT and TPOT p99, SLO)
    and the adapter across them (its p99s: the largest replica's, an upper bound of the merged one)."""
    rows: list[list[object]] = []
    for r in val.replicated():
        for x in r.replicas:
            ok = "–" if x.slo_ok is None else ("meets SLO" if x.slo_ok else "misses SLO")
            rows.append(
                [r.name, x.gpu, f"{x.share:.1%}", x.offered_tok_s, x.throughput_tok_s, x.ttft_ms_p99, x.tpot_ms_p99, ok]
            )
        ok = "–" if r.slo_ok is None else ("meets SLO" if r.slo_ok else "misses SLO")
        worst = (max(x.ttft_ms_p99 for x in r.replicas), max(x.tpot_ms_p99 for x in r.replicas))
        rows.append([r.name, "all", "100%", r.offered_tok_s, r.throughput_tok_s, *worst, ok])
    heads = ["adapter", "GPU", "share", "offered tok/s", "twin tok/s", "TTFT p99 ms", "TPOT p99 ms", "SLO"]
    note = para(
        "Each request of a replicated adapter goes to one replica (a seeded draw per request, so the "
        "replicas see its bursts together); the adapter's row sums its replicas, and its p99s are the "
        "largest replica's (an upper bound of the p99 over all its requests)."
    )
    return note + table(heads, rows)


def strategy_section(rep: Any, reproducible: bool = False) -> str:
    """GPUs per strategy coloured by the twin's verdict under the SLO, and the comparison table."""
    from dataclasses import replace

    from optplace.app.render import comparison_cells, comparison_headers, comparison_verdict

    plan = rep.plan
    if not rep.comparison:
        return bar_chart(
            "GPUs: this plan vs the proven lower bound (solve --compare adds every strategy)",
            [plan.strategy, "lower bound"],
            [Series("GPUs", (float(plan.gpus_used), float(plan.lower_bound)))],
        )
    results = [replace(c, solve_time_s=0.0) if reproducible else c for c in rep.comparison]
    planned = [c for c in results if c.error is None]
    bars = [
        Bar(
            c.strategy,
            float(c.gpus_used or 0),
            OK_COLOUR if c.ok else BAD_COLOUR,
            f"{c.gpus_used}",
            f"{c.strategy}: {comparison_verdict(c)}",
        )
        for c in planned
    ]
    bars.append(
        Bar("lower bound", float(plan.lower_bound), NEUTRAL_COLOUR, f"{plan.lower_bound:g}", "the proven lower bound")
    )
    judged = "the SLO" if any(c.slo_gpus is not None for c in planned) else "the throughput rule"
    top = max([b.value for b in bars], default=0.0)
    chart = verdict_chart(
        f"GPUs per strategy (each plan as placed) under {judged}, and the lower bound",
        bars,
        lambda v: f"{v:g}",
        legend=[
            (OK_COLOUR, "passes the twin"),
            (BAD_COLOUR, "fails it (see the table)"),
            (NEUTRAL_COLOUR, "lower bound"),
        ],
        vmax=top + 1,  # whole GPUs on the axis
    )
    rows = []
    for c in results:
        *first, last = comparison_cells(c)
        rows.append([*first, Cell(last, "" if c.error is not None else "ok" if c.ok else "bad")])
    return chart + table(comparison_headers(plan.objective), rows)


def _twin_verdict(g: GpuReport) -> str:
    """A GPU's twin verdict as text: OOM / starved / misses SLO (its worst figure against its bound) / ok."""
    from optplace.app.render import slo_text

    if g.oom:
        return "OOM"
    if g.starved:
        return "starved"
    return f"misses SLO: {slo_text(g)}" if g.slo_violated else "ok"
