"""report.html building blocks: escaped, self-contained, well-formed."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from optplace.app.report_html import Series, bar_chart, page, table


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href") and v and not v.startswith("#"):
                self.external.append(v)
        if tag not in ("meta", "line", "rect", "br", "img"):
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in ("line", "rect"):
            return
        assert self.stack and self.stack[-1] == tag, (self.stack, tag)
        self.stack.pop()


def test_page_is_well_formed_self_contained_and_escaped():
    chart = bar_chart(
        "load <vs> capacity",
        ["gpu0", "gpu1"],
        [Series("offered", (10.0, 20.0)), Series("capacity", (15.0, 25.0))],
        unit=" tok/s",
    )
    doc = page("plan & report", [("Chart", chart), ("Table", table(["a", "b"], [["<script>", 1]]))])
    c = _Checker()
    c.feed(doc)
    assert c.stack == []
    assert "script" not in c.tags and c.external == []
    assert "&lt;script&gt;" in doc and "plan &amp; report" in doc
    assert doc.count("<rect") >= 4 + 2  # 4 bars + 2 legend swatches


def test_bar_heights_are_proportional():
    svg = bar_chart("t", ["a", "b"], [Series("s", (10.0, 40.0))])
    import re

    heights = [
        float(h)
        for h in re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)" fill="[^"]+"><title>', svg)
    ]
    assert len(heights) == 2 and abs(heights[1] / heights[0] - 4.0) < 1e-6


def test_stacked_and_empty_inputs_do_not_crash():
    assert "<svg" in bar_chart("empty", [], [])
    svg = bar_chart("st", ["g"], [Series("r8", (3.0,)), Series("r16", (2.0,))], stacked=True)
    assert svg.count("<title>") == 2


# --- latency against the SLO, headroom, adapters, strategies (issue 14) ---------------------------

# GPU 0: ten adapters at 7 req/s each, far over its capacity (TTFT p99 ~2 minutes in steady state);
# GPU 1: two of them and six cool ones, well within the default SLO. A 300 s window simulates in ~1 s.
OVERLOADED = """\
name: overloaded
model: llama-3.1-8b-instruct
gpu: h100-64gb
workload: {duration_s: 300}
adapters:
  - {group: hot, count: 12, rank: 8, rate_rps: 7.0}
  - {group: cool, count: 6, rank: 8, rate_rps: 0.5}
seed: 1
placement:
  - {max_loras: 10, adapters: [hot-0000, hot-0001, hot-0002, hot-0003, hot-0004, hot-0005, hot-0006, hot-0007,
                               hot-0008, hot-0009]}
  - {max_loras: 8, adapters: [hot-0010, hot-0011, cool-0000, cool-0001, cool-0002, cool-0003, cool-0004,
                              cool-0005]}
"""

_RECT = re.compile(
    r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" fill="([^"]+)"><title>([^<]*)</title>'
)
_DASHED = re.compile(
    r'<line x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)" y2="[\d.]+" stroke="#222" stroke-width="1.5" stroke-dasharray'
)


@pytest.fixture(scope="module")
def overloaded(tmp_path_factory):
    from optplace.specs import load_scenario
    from optplace.twin.simulate import placement_of, simulate_plan

    d = tmp_path_factory.mktemp("overloaded")
    (d / "s.yaml").write_text(OVERLOADED)
    sc = load_scenario(d / "s.yaml")
    return sc, simulate_plan(sc, placement_of(sc), d, workers=1)


def _svgs(doc: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", doc, re.S)


def test_a_failing_gpus_bar_rises_over_the_slo_line_in_the_failing_colour(overloaded):
    from optplace.app.report_html import BAD_COLOUR, OK_COLOUR, slo_section

    _, val = overloaded
    hot, cool = val.gpus
    ttft = lambda g: next(c for c in g.slo.checks if c.metric == "ttft_p99_ms")  # noqa: E731
    assert not ttft(hot).ok and ttft(hot).value > 50 * ttft(hot).bound and ttft(cool).ok  # the scenario's premise
    doc = slo_section(val, list(val.gpus))
    charts = _svgs(doc)
    assert len(charts) == 2 and "TTFT p99 per GPU" in charts[0] and "TPOT p99 per GPU" in charts[1]
    svg = charts[0]
    (line_y,) = (float(y) for y in _DASHED.findall(svg))
    bars = _RECT.findall(svg)
    assert [b[5].split(":")[0] for b in bars] == ["GPU 0", "GPU 1"]
    (_, y0, _, _, fill0, tip0), (_, y1, _, _, fill1, _) = bars
    assert fill0 == BAD_COLOUR and float(y0) < line_y  # over the line (SVG y grows downwards)
    assert fill1 == OK_COLOUR and float(y1) > line_y
    assert "SLO 2.0s" in svg and "1 s" in svg and "100 s" in svg  # log scale: decade ticks, 2 s to 2 min
    assert f"adapter {ttft(hot).adapter}" in tip0
    # a line says what else fails it (the throughput rule here)
    assert hot.starved and f"GPU 0 is starved: {hot.throughput_loss:.0%} of its load lost (limit 10%)" in doc


def test_the_adapter_table_lists_the_worst_adapter_first_and_counts_the_hidden(overloaded, monkeypatch):
    import optplace.app.report_html as rh

    _, val = overloaded
    ratio = {
        a.name: max(c.value / c.bound for c in a.slo.checks) for g in val.gpus for a in g.per_adapter if a.slo.checks
    }
    worst = max(ratio, key=lambda n: ratio[n])
    monkeypatch.setattr(rh, "ADAPTER_ROWS", 5)
    doc = rh.adapter_section(val)
    rows = re.findall(r"<tr><td>([^<]+)</td>", doc)
    assert rows[0] == worst and len(rows) == 5
    assert "18 adapters" in doc and "13 hidden" in doc
    missing = sum(1 for g in val.gpus for a in g.per_adapter if not a.slo.ok)
    assert f"{missing} miss the SLO" in doc and missing >= 10
    assert doc.count('class="bad">ttft99') >= 1  # the verdict cell names the figure over its bound
    # every adapter fits the chart (18 ≤ 30 bars): the hot ones over the 100 % line, in the failing colour
    (svg,) = _svgs(doc)
    bars = _RECT.findall(svg)
    assert len(bars) == 18 and bars[0][5].startswith(worst) and bars[0][4] == rh.BAD_COLOUR


def _room(*gpus):
    from optplace.twin.headroom import GpuHeadroom, PlanHeadroom

    return PlanHeadroom(tuple(GpuHeadroom(*g) for g in gpus), 0.05, 1.0, 7, 12)


def test_headroom_bars_label_each_gpu_and_mark_the_limiting_one(overloaded):
    from types import SimpleNamespace

    from optplace.app.report_html import BAD_COLOUR, LIMIT_COLOUR, OK_COLOUR, headroom_section

    sc, val = overloaded
    room = _room((0, 0.35, 0.4, "ttft_p99_ms", "hot-0003"), (1, 1.0, None, None, None), (2, 0.15, 0.2, "queue", None))
    doc = headroom_section(SimpleNamespace(headroom=room, scenario=sc, validation=val))
    assert "GPU 2 breaks first, at +20% (queue grows)" in doc  # headroom_summary's sentence
    bars = _RECT.findall(_svgs(doc)[0])
    assert [(b[5].split(":")[0], b[4]) for b in bars] == [
        ("GPU 0", OK_COLOUR),
        ("GPU 1", OK_COLOUR),
        ("GPU 2", LIMIT_COLOUR),
    ]
    heights = [float(b[3]) for b in bars]
    assert heights[1] / heights[0] == pytest.approx(1.0 / 0.35, rel=1e-2)
    for label in (">+35%<", ">≥+100%<", ">+15%<", "search cap +100%"):
        assert label in doc
    failing = _room((0, None, 0.0, "oom", None), (1, 0.5, 0.55, "ttft_p99_ms", "x"))
    doc = headroom_section(SimpleNamespace(headroom=failing, scenario=sc, validation=val))
    assert ">fails<" in doc and _RECT.findall(doc)[0][4] == BAD_COLOUR and "fails at the stated load (OOM)" in doc
    # not measured: one line saying why
    none = headroom_section(SimpleNamespace(headroom=None, scenario=sc, validation=val))
    assert "<svg" not in none and "not measured: the plan fails at its stated load" in none


def test_compare_rows_carry_the_slo_verdict():
    from types import SimpleNamespace

    from optplace.app.render import comparison_cells, comparison_verdict
    from optplace.app.report_html import BAD_COLOUR, OK_COLOUR, strategy_section
    from optplace.pipeline import StrategyResult

    ok = StrategyResult("milp", 3, 3.0, 2.0, 1.5, 0, 0, 0.05, 30.0, 3.0, slo_gpus=0)
    slo = StrategyResult("greedy", 2, 2.0, 2.0, 0.1, 0, 0, 0.07, 31.0, None, slo_gpus=2)
    both = StrategyResult("random", 2, 2.0, 2.0, 0.1, 1, 0, 0.12, 33.0, None, slo_gpus=1)
    rule = StrategyResult("round-robin", 2, 2.0, 2.0, 0.1, 0, 0, 0.05, 30.0, 2.0)  # slo: none
    assert [comparison_verdict(r) for r in (ok, slo, both, rule)] == [
        "ok, meets SLO",
        "misses SLO",
        "starved, misses SLO",
        "ok",
    ]
    assert comparison_cells(slo)[6] == "2" and comparison_cells(slo)[-1] == "misses SLO"
    plan = SimpleNamespace(strategy="milp", gpus_used=3, lower_bound=2.0, objective="min_gpus")
    rep = SimpleNamespace(plan=plan, comparison=(ok, slo, both))
    doc = strategy_section(rep, reproducible=True)
    bars = _RECT.findall(_svgs(doc)[0])
    assert [(b[5].split(":")[0], b[4]) for b in bars[:3]] == [
        ("milp", OK_COLOUR),
        ("greedy", BAD_COLOUR),
        ("random", BAD_COLOUR),
    ]
    assert "under the SLO" in doc
    assert '<td class="bad">misses SLO</td>' in doc and '<td class="ok">ok, meets SLO</td>' in doc
    assert "<td>1.50</td>" not in doc and "<td>0.00</td>" in doc  # reproducible: solve times zeroed


HEALTHY = """\
name: healthy
model: llama-3.1-8b-instruct
gpu: h100-64gb
workload: {duration_s: 240}
adapters:
  - {group: a, count: 8, rank: 8, rate_rps: 0.5}
solver: {strategy: greedy, time_limit_s: 20}
seed: 2
"""


def test_solve_writes_the_same_report_with_every_slo_section(tmp_path):
    """A plan that meets the SLO: the report states the SLO and the seeds it was checked on, draws the
    per-GPU figures, the headroom and the adapters, and the same solve writes the same bytes."""
    from typer.testing import CliRunner

    from optplace.cli import app

    spec = tmp_path / "h.yaml"
    spec.write_text(HEALTHY)
    args = ["solve", str(spec), "--reproducible", "--workers", "1", "--json"]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    again = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert first.exit_code == 0 and again.exit_code == 0, first.output
    doc = (tmp_path / "a" / "report.html").read_text()
    assert doc == (tmp_path / "b" / "report.html").read_text()
    plan = json.loads(first.stdout)
    assert plan["headroom"] is not None
    seeds = ", ".join(str(s) for s in plan["seeds_checked"])
    assert f"(seeds {seeds}): passes every one" in doc
    assert "SLO: ttft99 ≤ 2.0s, tpot99 ≤ 200ms, stable queue, per adapter, planned for 5% more load." in doc
    for heading in ("Latency against the SLO", "Headroom", "Adapters"):
        assert f"<h2>{heading}</h2>" in doc
    assert "TTFT p99 per GPU" in doc and "headroom: " in doc and "8 adapters, 0 miss the SLO" in doc
    c = _Checker()
    c.feed(doc)
    assert c.stack == [] and "script" not in c.tags and c.external == []
