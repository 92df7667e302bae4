"""Twin versus real engine: per-GPU errors and verdicts, and the table ``validate --engine vllm`` prints.

Both sides use the per-GPU ``simulate --json`` schema (twin: :class:`optplace.twin.simulate.GpuReport`
as JSON; real: :class:`optplace.vllm.loadgen.GpuResult` as JSON), so this module works on plain
dicts and never imports the twin or vLLM. Compared per GPU, as the issue's acceptance asks:

- ``engine_tok_s``: prefill + decode tokens processed in the window (real: the server's own
  prompt/generation token counters; twin: the work its engine did);
- ``throughput_tok_s``: tokens of requests completed inside the window (both sides);
- the starvation verdict (``starved``, or ``oom`` for a server that did not start);
- the set of adapters that had offered load and completed nothing (slot stickiness shows here);
- latency (:data:`LATENCY_KEYS`: TTFT median and p99, ITL mean and p99, over the requests completed in
  the window, the ``latency.window`` section both sides report), per GPU and per adapter;
- under an SLO, each adapter's verdict and steady-state value of every bound, twin vs real
  (:class:`SloComparison`, from the ``slo`` entries both sides report).

:func:`mean_of_runs` averages repeated real runs of one configuration (a saturated real run is a noisy
instrument: the verdict should not rest on one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optplace.calibration.runs_fit import rel_error

__all__ = [
    "LATENCY_KEYS",
    "GpuComparison",
    "LatencyComparison",
    "SloComparison",
    "compare_gpu",
    "compare_runs",
    "mean_of_runs",
    "rel_error",
    "render_comparison",
    "render_latency",
    "render_slo",
]

#: the latency figures compared, twin vs engine (keys of a ``latency.window`` section) [ms]
LATENCY_KEYS: tuple[str, ...] = ("ttft_ms_p50", "ttft_ms_p99", "itl_ms_mean", "itl_ms_p99")


@dataclass(frozen=True, slots=True)
class LatencyComparison:
    """Latency of one GPU or adapter (``name``), twin and real, over the requests each completed in the window."""

    name: str
    twin_completed: int
    real_completed: int
    twin: tuple[float | None, ...]
    """Per :data:`LATENCY_KEYS`; None where a side reports no latency or completed nothing."""
    real: tuple[float | None, ...]

    def error(self, key: str) -> float | None:
        """Relative error of the twin's figure ``key`` (one of :data:`LATENCY_KEYS`)."""
        k = LATENCY_KEYS.index(key)
        return rel_error(self.twin[k], self.real[k])

    def to_json(self) -> dict[str, Any]:
        """``{name, completed: {twin, real}, <key>: {twin, real, error}…}``."""
        out: dict[str, Any] = {
            "name": self.name,
            "completed": {"twin": self.twin_completed, "real": self.real_completed},
        }
        for k, key in enumerate(LATENCY_KEYS):
            out[key] = {"twin": _num(self.twin[k]), "real": _num(self.real[k]), "error": _num(self.error(key))}
        return out


@dataclass(frozen=True, slots=True)
class SloComparison:
    """One adapter's SLO verdict on both sides, with every bound's steady-state value (twin, real)."""

    name: str
    twin_ok: bool
    real_ok: bool
    checks: tuple[tuple[str, float, float, float], ...]
    """``(metric, bound, twin value, real value)`` per bound judged on both sides [ms]."""

    @property
    def agree(self) -> bool:
        """Both sides give the same verdict."""
        return self.twin_ok == self.real_ok

    def error(self, metric: str) -> float | None:
        """Relative error of the twin's steady-state ``metric`` (an SLO metric, e.g. ``ttft_p99_ms``)."""
        return next((rel_error(t, r) for m, _, t, r in self.checks if m == metric), None)

    def to_json(self) -> dict[str, Any]:
        """``{name, ok: {twin, real}, agree, <metric>: {bound, twin, real, error}…}``."""
        out: dict[str, Any] = {
            "name": self.name,
            "ok": {"twin": self.twin_ok, "real": self.real_ok},
            "agree": self.agree,
        }
        for m, b, t, r in self.checks:
            out[m] = {"bound": _num(b), "twin": _num(t), "real": _num(r), "error": _num(self.error(m))}
        return out


def compare_slo(name: str, twin: Mapping[str, Any] | None, real: Mapping[str, Any] | None) -> SloComparison | None:
    """Compare the ``slo`` verdicts of a twin and a real adapter entry (None unless both carry one)."""
    ts, rs = (twin or {}).get("slo"), (real or {}).get("slo")
    if not ts or not rs:
        return None
    real_checks = {c["metric"]: c for c in rs.get("checks", ())}
    checks = tuple(
        (c["metric"], float(c["bound"]), float(c["value"]), float(real_checks[c["metric"]]["value"]))
        for c in ts.get("checks", ())
        if c["metric"] in real_checks
    )
    return SloComparison(name, bool(ts["ok"]), bool(rs["ok"]), checks)


def _window_latency(d: Mapping[str, Any] | None) -> tuple[int, tuple[float | None, ...]]:
    """(completed, figures) of a ``latency`` section's window; figures None when nothing completed."""
    win = ((d or {}).get("latency") or {}).get("window") or {}
    n = int(win.get("completed") or 0)
    return n, tuple((float(win[k]) if n and win.get(k) is not None else None) for k in LATENCY_KEYS)


def compare_latency(name: str, twin: Mapping[str, Any] | None, real: Mapping[str, Any] | None) -> LatencyComparison:
    """Compare the ``latency.window`` sections of a twin and a real GPU (or ``per_adapter``) entry."""
    tn, tv = _window_latency(twin)
    rn, rv = _window_latency(real)
    return LatencyComparison(name, tn, rn, tv, rv)


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 4)


def zero_completion_adapters(gpu: Mapping[str, Any]) -> tuple[str, ...]:
    """Adapters of a GPU result with offered load and no request completed in the window."""
    return tuple(
        sorted(
            p["name"]
            for p in gpu.get("per_adapter", ())
            if (p.get("offered_tok_s") or 0) > 0 and float(p.get("completed") or 0) == 0
        )
    )


@dataclass(frozen=True, slots=True)
class GpuComparison:
    """One GPU: the twin's and the real engine's figures, their relative errors and verdicts."""

    index: int
    max_loras: int | None
    adapters: int
    offered_tok_s: float
    twin_engine_tok_s: float | None
    real_engine_tok_s: float | None
    twin_throughput_tok_s: float
    real_throughput_tok_s: float
    twin_starved: bool
    real_starved: bool
    twin_oom: bool
    real_oom: bool
    twin_zero: tuple[str, ...]
    real_zero: tuple[str, ...]
    latency: LatencyComparison | None = None
    """The GPU's latency, twin vs real (None: neither side reports a ``latency`` section)."""
    adapter_latency: tuple[LatencyComparison, ...] = ()
    """Each adapter's latency, in the real result's adapter order."""
    adapter_slo: tuple[SloComparison, ...] = ()
    """Each adapter's SLO verdict, twin vs real (empty unless both sides judged one)."""

    @property
    def same_slo_verdicts(self) -> bool:
        """Every adapter judged on both sides has the same SLO verdict (True when none was judged)."""
        return all(a.agree for a in self.adapter_slo)

    def latency_error(self, key: str) -> float | None:
        """Relative error of the twin's GPU latency figure ``key`` (:data:`LATENCY_KEYS`), or None."""
        return None if self.latency is None else self.latency.error(key)

    @property
    def engine_error(self) -> float | None:
        """Relative error of the twin's engine token rate (None when the server exposed no counters)."""
        return rel_error(self.twin_engine_tok_s, self.real_engine_tok_s)

    @property
    def throughput_error(self) -> float | None:
        """Relative error of the twin's completed-token throughput."""
        return rel_error(self.twin_throughput_tok_s, self.real_throughput_tok_s)

    @property
    def same_verdict(self) -> bool:
        """Both sides agree on starved and on failing at start."""
        return self.twin_starved == self.real_starved and self.twin_oom == self.real_oom

    @property
    def same_zero_set(self) -> bool:
        """Both sides name the same adapters as completing nothing."""
        return self.twin_zero == self.real_zero

    def within(self, tolerance: float) -> bool:
        """Token rates within ``tolerance`` (relative), same verdict and same zero-completion set.

        A GPU that failed to start on both sides passes on the verdicts alone (no rates to compare).
        """
        if self.twin_oom and self.real_oom:
            return True
        errs = [self.engine_error, self.throughput_error]
        return all(e is not None and abs(e) <= tolerance for e in errs) and self.same_verdict and self.same_zero_set

    def to_json(self) -> dict[str, Any]:
        """Plain-dict form (``comparison`` entries of ``validate --engine vllm --json``)."""
        num = _num
        return {
            "index": self.index,
            "max_loras": self.max_loras,
            "adapters": self.adapters,
            "offered_tok_s": num(self.offered_tok_s),
            "engine_tok_s": {
                "twin": num(self.twin_engine_tok_s),
                "real": num(self.real_engine_tok_s),
                "error": num(self.engine_error),
            },
            "throughput_tok_s": {
                "twin": num(self.twin_throughput_tok_s),
                "real": num(self.real_throughput_tok_s),
                "error": num(self.throughput_error),
            },
            "starved": {"twin": self.twin_starved, "real": self.real_starved},
            "oom": {"twin": self.twin_oom, "real": self.real_oom},
            "zero_completion_adapters": {"twin": list(self.twin_zero), "real": list(self.real_zero)},
            "same_verdict": self.same_verdict,
            "same_zero_set": self.same_zero_set,
            "latency": None if self.latency is None else self.latency.to_json(),
            "per_adapter_latency": [a.to_json() for a in self.adapter_latency],
            "per_adapter_slo": [a.to_json() for a in self.adapter_slo],
        }


def compare_gpu(twin: Mapping[str, Any], real: Mapping[str, Any]) -> GpuComparison:
    """Compare one GPU's twin result with its measured result (both ``simulate --json`` GPU dicts)."""
    twin_ad = {p.get("name"): p for p in twin.get("per_adapter", ())}
    return GpuComparison(
        index=int(real.get("index", twin.get("index", 0))),
        max_loras=real.get("max_loras", twin.get("max_loras")),
        adapters=len(real.get("adapters") or twin.get("adapters") or ()),
        offered_tok_s=float(real.get("offered_tok_s") or twin.get("offered_tok_s") or 0.0),
        twin_engine_tok_s=twin.get("engine_tok_s"),
        real_engine_tok_s=real.get("engine_tok_s"),
        twin_throughput_tok_s=float(twin.get("throughput_tok_s") or 0.0),
        real_throughput_tok_s=float(real.get("throughput_tok_s") or 0.0),
        twin_starved=bool(twin.get("starved")),
        real_starved=bool(real.get("starved")),
        twin_oom=bool(twin.get("oom")),
        real_oom=bool(real.get("oom")),
        twin_zero=zero_completion_adapters(twin),
        real_zero=zero_completion_adapters(real),
        latency=compare_latency("gpu", twin, real) if (twin.get("latency") or real.get("latency")) else None,
        adapter_latency=tuple(
            compare_latency(p["name"], twin_ad.get(p["name"]), p) for p in real.get("per_adapter", ()) if "name" in p
        ),
        adapter_slo=tuple(
            c
            for p in real.get("per_adapter", ())
            if (c := compare_slo(str(p.get("name")), twin_ad.get(p.get("name")), p)) is not None
        ),
    )


def compare_runs(
    twin_gpus: Sequence[Mapping[str, Any]], real_gpus: Sequence[Mapping[str, Any]]
) -> tuple[GpuComparison, ...]:
    """Pair GPUs by position (both come from the same plan, in plan order) and compare each."""
    if len(twin_gpus) != len(real_gpus):
        raise ValueError(f"twin has {len(twin_gpus)} GPUs but the real run has {len(real_gpus)}")
    return tuple(compare_gpu(t, r) for t, r in zip(twin_gpus, real_gpus))


def _pct(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if not math.isfinite(x) else f"{x * 100:+.1f}%"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def render_comparison(
    rows: Sequence[GpuComparison], labels: Sequence[str] | None = None, tolerance: float = 0.15
) -> str:
    """A compact fixed-width table (one line per GPU) for terminals and ``pytest -s`` logs.

    ``ok`` judges throughput and verdicts only (the latency errors are printed, not judged here)."""
    head = (
        f"{'config':<20} {'slots':>5} {'ad':>3} {'offered':>8} {'engine twin/real':>17} {'err':>7} "
        f"{'thr twin/real':>14} {'err':>7} {'starved t/r':>11} {'zero-completion twin | real':<30} ok  "
        f"{'ttft50':>7} {'ttft99':>7} {'itl':>7} {'itl99':>7}"
    )
    lines = [head, "-" * len(head)]
    for k, c in enumerate(rows):
        label = labels[k] if labels is not None else f"gpu{c.index}"
        zero = f"{','.join(c.twin_zero) or '-'} | {','.join(c.real_zero) or '-'}"
        verdict = f"{'oom' if c.twin_oom else c.twin_starved!s:.5}/{'oom' if c.real_oom else c.real_starved!s:.5}"
        lat = " ".join(f"{_pct(c.latency_error(key)):>7}" for key in LATENCY_KEYS)
        lines.append(
            f"{label[:20]:<20} {c.max_loras if c.max_loras is not None else '-':>5} {c.adapters:>3} "
            f"{c.offered_tok_s:>8.0f} {_rate(c.twin_engine_tok_s) + '/' + _rate(c.real_engine_tok_s):>17} "
            f"{_pct(c.engine_error):>7} {_rate(c.twin_throughput_tok_s) + '/' + _rate(c.real_throughput_tok_s):>14} "
            f"{_pct(c.throughput_error):>7} {verdict:>11} {zero:<30} {'yes' if c.within(tolerance) else 'NO ':<3} "
            f"{lat}"
        )
    return "\n".join(lines)


def _ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.0f}" if x >= 100 else f"{x:.1f}")


def render_latency(rows: Sequence[GpuComparison], labels: Sequence[str] | None = None) -> str:
    """Latency twin/real [ms] and the twin's relative error, per GPU and per adapter (one line each)."""
    head = f"{'config':<20} {'gpu/adapter':<12} {'done t/r':>11}" + "".join(
        f" {key.replace('_ms_', ' '):>21}" for key in LATENCY_KEYS
    )
    lines = [head, "-" * len(head)]
    for k, c in enumerate(rows):
        label = labels[k] if labels is not None else f"gpu{c.index}"
        for lc in ((c.latency,) if c.latency is not None else ()) + c.adapter_latency:
            cells = "".join(
                f" {_ms(lc.twin[j]) + '/' + _ms(lc.real[j]) + ' ' + _pct(lc.error(key)):>21}"
                for j, key in enumerate(LATENCY_KEYS)
            )
            name = f"gpu{c.index}" if lc.name == "gpu" else f"  {lc.name}"
            lines.append(
                f"{label[:20]:<20} {name[:12]:<12} {str(lc.twin_completed) + '/' + str(lc.real_completed):>11}{cells}"
            )
    return "\n".join(lines)


def render_slo(rows: Sequence[GpuComparison], labels: Sequence[str] | None = None) -> str:
    """SLO verdicts twin/real per adapter, with each bound and its steady-state values twin/real [ms] and
    the twin's relative error (one line per adapter judged on both sides)."""
    lines = [f"{'config':<20} {'adapter':<10} {'ok t/r':>11} {'agree':>5}  bounds: twin/real ms (error) <= bound"]
    lines.append("-" * len(lines[0]))
    for k, c in enumerate(rows):
        label = labels[k] if labels is not None else f"gpu{c.index}"
        for a in c.adapter_slo:
            cells = "  ".join(f"{m} {_ms(t)}/{_ms(r)} ({_pct(a.error(m))}) <= {_ms(b)}" for m, b, t, r in a.checks)
            lines.append(
                f"{label[:20]:<20} {a.name[:10]:<10} {str(a.twin_ok) + '/' + str(a.real_ok):>11} "
                f"{'yes' if a.agree else 'NO':>5}  {cells}"
            )
    return "\n".join(lines)


def render_routing(routing: Mapping[str, Any] | None) -> list[str]:
    """One line per replicated adapter of a validation's ``routing`` section: each replica's share in the
    plan and the share of the requests it received, twin / real (e.g. ``hot: gpu0 70 % → 69.8/70.1 %``)."""
    if not routing:
        return []
    how = "the built-in router" if routing.get("router") else "the twin's routing, replayed"
    out = []
    for name, r in routing.get("adapters", {}).items():
        tn, rn = sum(r["twin_requests"].values()), sum(r["real_requests"].values())
        cells = ", ".join(
            f"gpu{g} {sh * 100:.0f} % → {_share(r['twin_requests'][g], tn)}/{_share(r['real_requests'][g], rn)}"
            for g, sh in r["shares"].items()
        )
        out.append(f"{name}: requests per replica, plan → twin/real ({how}): {cells}")
    return out


def _share(n: int, total: int) -> str:
    return f"{n / total * 100:.1f} %" if total else "-"


#: booleans that say something passed (an SLO verdict's ``ok``, its queue ``stable``): true over repeated runs
#: only if true in every run, where a failure flag (``starved``, ``oom``) is true if true in any
_PASS_KEYS = frozenset({"ok", "stable"})


def _mean(values: Sequence[Any], key: str | None = None) -> Any:
    """Element-wise mean of equally shaped JSON values: numbers averaged (None if any is None), booleans
    true if any is (all, for the pass flags of :data:`_PASS_KEYS`), dicts by key, lists by position,
    anything else taken from the first. ``key``: the dict key the values are found under."""
    first = values[0]
    if isinstance(first, bool) and key in _PASS_KEYS:
        return all(bool(v) for v in values)
    if isinstance(first, bool):
        return any(bool(v) for v in values)
    if isinstance(first, (int, float)):
        if any(v is None or isinstance(v, bool) for v in values):
            return None
        return float(sum(values)) / len(values)
    if isinstance(first, Mapping):
        return {k: _mean([v.get(k) if isinstance(v, Mapping) else None for v in values], k) for k in first}
    if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first) for v in values):
        if first and all(isinstance(x, Mapping) for x in first):
            return [_mean([v[i] for v in values]) for i in range(len(first))]
    return first


def mean_of_runs(gpus: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One real GPU result from repeated runs of the same configuration and workload (``simulate --json``
    GPU dicts): every figure averaged, ``starved``/``oom`` true if any run says so, an adapter's ``completed``
    zero only if it completed nothing in every run, an SLO verdict met only if met in every run. Latency
    percentiles are averaged per run (the mean of two medians), not recomputed over the pooled requests."""
    if not gpus:
        raise ValueError("no runs to average")
    return dict(_mean(list(gpus)))
