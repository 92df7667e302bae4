"""report.html building blocks: escaped, self-contained, well-formed."""

from __future__ import annotations

from html.parser import HTMLParser

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
