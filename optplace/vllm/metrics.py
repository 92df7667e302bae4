"""Read vLLM's Prometheus ``/metrics`` page into a typed snapshot, tolerant to version drift.

Parsing uses ``prometheus_client.parser.text_string_to_metric_families`` (the real exposition
parser, so numbers in exponent form such as ``1.2e+07`` are read correctly — a regex scraper in the
reference study read 0 for every counter past 10^6). Each quantity has a table of aliases because
vLLM renamed metrics across versions (e.g. ``gpu_cache_usage_perc`` → ``kv_cache_usage_perc``,
``time_per_output_token_seconds`` → ``inter_token_latency_seconds``). A missing quantity is
``None`` and listed in ``missing``; a page that is not Prometheus text raises :class:`MetricsError`
naming the first bad line.

Counters and gauges are summed over label sets (all ``finished_reason`` values of
``request_success``, all engines); KV usage is averaged. ``vllm:lora_requests_info`` keeps stale
label sets and its value is a timestamp, so the current LoRA state is the series with the largest
value.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "COUNTERS",
    "GAUGES",
    "HISTOGRAMS",
    "HistogramSummary",
    "LoraState",
    "MetricsDelta",
    "MetricsError",
    "MetricsSnapshot",
    "delta",
    "parse_metrics",
    "scrape",
]

#: canonical name -> sample names tried in order (first one present wins)
GAUGES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "running": ("vllm:num_requests_running",),
        "waiting": ("vllm:num_requests_waiting",),
        "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    }
)
COUNTERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "preemptions": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
        "prompt_tokens": ("vllm:prompt_tokens_total", "vllm:prompt_tokens"),
        "generation_tokens": ("vllm:generation_tokens_total", "vllm:generation_tokens"),
        "requests_finished": ("vllm:request_success_total", "vllm:request_success"),
    }
)
HISTOGRAMS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "ttft_s": ("vllm:time_to_first_token_seconds",),
        "itl_s": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        "e2e_s": ("vllm:e2e_request_latency_seconds",),
        "queue_s": ("vllm:request_queue_time_seconds",),
    }
)
LORA_INFO = ("vllm:lora_requests_info",)
_AVERAGED = {"kv_cache_usage"}
_NOT_COMPLETED = {"abort", "error"}


class MetricsError(RuntimeError):
    """The metrics page could not be fetched or is not Prometheus text."""


@dataclass(frozen=True, slots=True)
class HistogramSummary:
    """Count and sum of a latency histogram (seconds), summed over label sets."""

    count: float
    sum: float

    @property
    def mean(self) -> float | None:
        """Mean observation, or None with no observations."""
        return self.sum / self.count if self.count > 0 else None


@dataclass(frozen=True, slots=True)
class LoraState:
    """Adapters running / waiting at the latest ``lora_requests_info`` update."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    max_lora: int | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """One scrape. ``None`` = the metric is absent from this vLLM version's page."""

    time_s: float
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    preemptions: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    requests_finished: float | None = None
    """Requests finished normally (stop/length/…), summed over ``finished_reason``; aborts excluded."""
    requests_aborted: float | None = None
    """Requests with ``finished_reason`` abort or error (client cancellations at the window end)."""
    histograms: Mapping[str, HistogramSummary] = field(default_factory=dict)
    lora: LoraState | None = None
    missing: tuple[str, ...] = ()

    @property
    def engine_tokens(self) -> float | None:
        """Prompt + generated tokens processed so far (None if either counter is missing)."""
        if self.prompt_tokens is None or self.generation_tokens is None:
            return None
        return self.prompt_tokens + self.generation_tokens


@dataclass(frozen=True, slots=True)
class MetricsDelta:
    """Counter increments between two snapshots (None where a counter is missing in either)."""

    seconds: float
    preemptions: float | None
    prompt_tokens: float | None
    generation_tokens: float | None
    requests_finished: float | None

    @property
    def engine_tokens(self) -> float | None:
        """Prompt + generated tokens processed in the interval."""
        if self.prompt_tokens is None or self.generation_tokens is None:
            return None
        return self.prompt_tokens + self.generation_tokens

    @property
    def engine_tok_s(self) -> float | None:
        """Engine token rate over the interval (prefill + decode work, tokens/s)."""
        tokens = self.engine_tokens
        return None if tokens is None or self.seconds <= 0 else tokens / self.seconds


def _parser():
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as exc:
        raise MetricsError("reading /metrics needs prometheus_client: pip install 'optplace[vllm]'") from exc
    return text_string_to_metric_families


def _families(text: str):
    text_string_to_metric_families = _parser()
    try:
        return list(text_string_to_metric_families(text))
    except Exception as exc:  # the parser raises bare ValueError/TypeError without a line number
        raise MetricsError(f"malformed metrics page: {_first_bad_line(text) or exc}") from exc


def _first_bad_line(text: str) -> str | None:
    text_string_to_metric_families = _parser()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            list(text_string_to_metric_families(line + "\n"))
        except Exception as exc:
            return f"line {number}: {line[:200]!r} ({exc})"
    return None


def parse_metrics(text: str, time_s: float | None = None) -> MetricsSnapshot:
    """Parse a ``/metrics`` page. ``time_s`` stamps the snapshot (default ``time.monotonic()``).

    Raises :class:`MetricsError` when the text is not Prometheus exposition format, or is not
    a vLLM page at all (no ``vllm:`` sample).
    """
    families = _families(text)
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in families:
        for s in fam.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    if not any(name.startswith("vllm:") for name in samples):
        raise MetricsError("metrics page has no vllm: samples (is this a vLLM server?)")
    values: dict[str, float | None] = {}
    missing: list[str] = []
    for canonical, aliases in (*GAUGES.items(), *COUNTERS.items()):
        series = next((samples[a] for a in aliases if a in samples), None)
        if series is None:
            values[canonical] = None
            if canonical == "requests_finished":
                values["requests_aborted"] = None
            missing.append(canonical)
            continue
        if canonical == "requests_finished":
            # finished_reason="abort"/"error" are requests cancelled by the client or failed
            values["requests_aborted"] = sum(v for lb, v in series if lb.get("finished_reason") in _NOT_COMPLETED)
            series = [(lb, v) for lb, v in series if lb.get("finished_reason") not in _NOT_COMPLETED]
        total = sum(v for _, v in series)
        values[canonical] = total / len(series) if canonical in _AVERAGED and series else total
    histograms: dict[str, HistogramSummary] = {}
    for canonical, aliases in HISTOGRAMS.items():
        base = next((a for a in aliases if f"{a}_count" in samples), None)
        if base is None:
            missing.append(canonical)
            continue
        histograms[canonical] = HistogramSummary(
            count=sum(v for _, v in samples[f"{base}_count"]),
            sum=sum(v for _, v in samples.get(f"{base}_sum", [])),
        )
    lora = _lora_state(next((samples[a] for a in LORA_INFO if a in samples), None))
    if lora is None:
        missing.append("lora")
    return MetricsSnapshot(
        time_s=time.monotonic() if time_s is None else time_s,
        histograms=MappingProxyType(histograms),
        lora=lora,
        missing=tuple(missing),
        **values,
    )


def _split(names: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (names or "").split(",") if n.strip())


def _lora_state(series: list[tuple[dict[str, str], float]] | None) -> LoraState | None:
    if not series:
        return None
    labels, value = max(series, key=lambda lv: lv[1])
    max_lora = labels.get("max_lora")
    return LoraState(
        running=_split(labels.get("running_lora_adapters")),
        waiting=_split(labels.get("waiting_lora_adapters")),
        max_lora=int(max_lora) if max_lora and max_lora.isdigit() else None,
        updated_at=value,
    )


def delta(before: MetricsSnapshot, after: MetricsSnapshot) -> MetricsDelta:
    """Counter increments from ``before`` to ``after``.

    A counter that went down (server restarted in between) gives None rather than a negative
    count, since the true increment is unknown.
    """

    def d(name: str) -> float | None:
        a, b = getattr(before, name), getattr(after, name)
        if a is None or b is None or b < a:
            return None
        return b - a

    return MetricsDelta(
        seconds=after.time_s - before.time_s,
        preemptions=d("preemptions"),
        prompt_tokens=d("prompt_tokens"),
        generation_tokens=d("generation_tokens"),
        requests_finished=d("requests_finished"),
    )


def scrape(url: str, timeout_s: float = 5.0) -> MetricsSnapshot:
    """GET ``url`` (a server base URL or its ``/metrics`` URL) and parse it.

    Raises :class:`MetricsError` on a connection failure, timeout, non-200 status or bad page.
    """
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    path = parts.path.rstrip("/")
    if not path.endswith("/metrics"):
        path = (path.removesuffix("/v1")) + "/metrics"
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)
    t = time.monotonic()
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        raise MetricsError(f"cannot scrape {parts.scheme}://{parts.netloc}{path}: {exc}") from exc
    finally:
        conn.close()
    if resp.status != 200:
        raise MetricsError(f"{parts.scheme}://{parts.netloc}{path} answered HTTP {resp.status}: {body[:200]!r}")
    return parse_metrics(body, time_s=t)
