"""The outcome of one simulated engine over one window (:class:`EngineResult`).

Latency is measured as vLLM's ``benchmark_serving`` measures it on the reference runs, over the
requests completed inside the window (:class:`CompletedRequests`, :func:`latency_stats`):

* TTFT = first token − arrival, per completed request;
* TPOT = (finish − first token) / (output − 1), per completed request with more than one output token;
* ITL = every gap between two consecutive tokens of a completed request. A decoding request gets one
  token per engine step, so its gaps are the durations of the steps from the one after its first
  token to the one that finished it. A request that was preempted gets no token in some of those
  steps; its gaps are taken as equal, (finish − first token) / (output − 1) each, which keeps their sum
  (and so the mean ITL) exact.

Percentiles interpolate linearly between order statistics, as ``numpy.percentile`` does on the
benchmark's lists (a weighted value counts as that many copies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from optplace.twin.engine.config import EngineConfig

__all__ = ["CompletedRequests", "EngineResult", "LatencyMeter", "LatencyStats", "latency_stats", "weighted_percentile"]


def weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """``numpy.percentile(np.repeat(values, weights), q)`` without expanding (integer weights ≥ 0).

    0.0 for an empty multiset (the twin's convention for "no request")."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    return _sorted_percentile(v[order], np.cumsum(np.asarray(weights, dtype=np.int64)[order]), q)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Latency of a set of completed requests [ms] (0.0 where the set is empty), as the benchmark computes it."""

    completed: int
    ttft_ms_mean: float
    ttft_ms_p50: float
    ttft_ms_p99: float
    tpot_ms_mean: float
    tpot_ms_p50: float
    tpot_ms_p99: float
    itl_ms_mean: float
    itl_ms_p50: float
    itl_ms_p99: float

    @classmethod
    def of(
        cls, ttft_ms: np.ndarray, tpot_ms: np.ndarray, itl_ms_mean: float, itl_ms_p50: float, itl_ms_p99: float
    ) -> LatencyStats:
        """The statistics of ``ttft_ms`` (one per completed request, at least one) and ``tpot_ms`` (one per
        request with more than one output token), with the ITL figures computed by the caller (the twin
        from its steps, the real engine's load generator from the streamed chunks)."""
        ttft_p50, ttft_p99 = np.percentile(ttft_ms, (50, 99))
        tpot_p50, tpot_p99 = np.percentile(tpot_ms, (50, 99)) if tpot_ms.size else (0.0, 0.0)
        return cls(
            completed=int(ttft_ms.size),
            ttft_ms_mean=float(ttft_ms.mean()),
            ttft_ms_p50=float(ttft_p50),
            ttft_ms_p99=float(ttft_p99),
            tpot_ms_mean=float(tpot_ms.mean()) if tpot_ms.size else 0.0,
            tpot_ms_p50=float(tpot_p50),
            tpot_ms_p99=float(tpot_p99),
            itl_ms_mean=itl_ms_mean,
            itl_ms_p50=itl_ms_p50,
            itl_ms_p99=itl_ms_p99,
        )


@dataclass(frozen=True, slots=True)
class CompletedRequests:
    """Per-request arrays of the requests completed in the window (completion order), and the step clock.

    The clock is kept as the engine recorded it (cheap to collect): ``explicit_end_s`` holds the end
    times, in order, of the steps run one by one, and each row of ``ff_runs`` a fast-forwarded run of
    steps (first step, number of steps, start time, first step's duration, per-step increment);
    :meth:`step_end_s` and :meth:`token_steps` rebuild the per-step view when latency is asked for."""

    adapter: np.ndarray
    arrival_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    n_steps: int
    explicit_end_s: np.ndarray
    ff_runs: np.ndarray

    def __len__(self) -> int:
        return int(self.adapter.size)

    def step_end_s(self) -> np.ndarray:
        """End time of every step ``0 .. n_steps-1``."""
        end = np.empty(self.n_steps)
        covered = np.zeros(self.n_steps, dtype=bool)
        if self.ff_runs.size:
            seg = self.ff_runs
            k = seg[:, 1].astype(np.int64)
            j = np.arange(int(k.sum()), dtype=np.int64) - np.repeat(np.cumsum(k) - k, k)
            d, delta = np.repeat(seg[:, 3], k), np.repeat(seg[:, 4], k)
            idx = np.repeat(seg[:, 0].astype(np.int64), k) + j
            # step j of a run lasts d + j·delta, so it ends (j+1)·d + delta·j(j+1)/2 after the run's start
            end[idx] = np.repeat(seg[:, 2], k) + (j + 1) * d + delta * j * (j + 1) / 2
            covered[idx] = True
        end[~covered] = self.explicit_end_s
        return end

    def token_steps(self, clock: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The step that produced each request's first token and the one that produced its last."""
        # Token times are step end times; a clock rebuilt from fast-forwarded runs may differ from the
        # engine's accumulated one by float rounding, far below a step's duration (milliseconds).
        tol = 1e-6
        return np.searchsorted(clock, self.first_token_s - tol), np.searchsorted(clock, self.finish_s - tol)


def _sorted_percentile(v: np.ndarray, cw: np.ndarray, q: float) -> float:
    """:func:`weighted_percentile` on values sorted ascending with cumulative weights ``cw``."""
    if cw.size == 0 or cw[-1] <= 0:
        return 0.0
    pos = q / 100.0 * float(cw[-1] - 1)
    lo = int(np.floor(pos))
    frac = pos - lo
    i_lo = int(np.searchsorted(cw, lo, side="right"))
    if frac == 0.0:
        return float(v[i_lo])
    i_hi = int(np.searchsorted(cw, lo + 1, side="right"))
    return float(v[i_lo] + frac * (v[i_hi] - v[i_lo]))


def _order_percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``numpy.percentile(values, q)`` for each ``q``, from the needed order statistics only (a partial
    sort); the same interpolation as :func:`_sorted_percentile`, so the same floats."""
    n = int(values.size)
    if n == 0:
        return [0.0] * len(qs)
    pos = [q / 100.0 * float(n - 1) for q in qs]
    kth = sorted({int(np.floor(x)) for x in pos} | {min(int(np.floor(x)) + 1, n - 1) for x in pos})
    part = np.partition(values, kth)
    out = []
    for x in pos:
        lo = int(np.floor(x))
        frac = x - lo
        out.append(float(part[lo]) if frac == 0.0 else float(part[lo] + frac * (part[lo + 1] - part[lo])))
    return out


class LatencyMeter:
    """Computes :class:`LatencyStats` of subsets of one run's completed requests.

    Per-request figures and the sorted step durations are computed once. A subset's ITL percentiles
    weight every step by the subset's requests in it (a few linear passes over the steps), or, when the
    subset has fewer gaps than the run has steps (most adapters of a GPU with many, :meth:`by_group`),
    take the order statistics of its own gaps: either way the cost is at most linear in its tokens."""

    def __init__(self, req: CompletedRequests) -> None:
        self.req = req
        clock = req.step_end_s()
        f0, f1 = req.token_steps(clock)
        n_steps = clock.size
        step_ms = np.diff(clock, prepend=clock[:1]) * 1e3 if n_steps else np.zeros(0)
        self.step_ms = step_ms
        self.order = np.argsort(step_ms, kind="stable")
        self.step_sorted = step_ms[self.order]
        self.n_steps = n_steps
        self.ttft = (req.first_token_s - req.arrival_s) * 1e3
        self.span = req.finish_s - req.first_token_s
        self.gaps = req.output_tokens.astype(np.int64) - 1  # inter-token gaps per request
        self.f0 = f0.astype(np.int64)
        self.f1 = f1.astype(np.int64)
        # not preempted: one token per step from the first to the last
        self.regular = (self.f1 - self.f0) == self.gaps

    def stats(self, mask: np.ndarray | None = None) -> LatencyStats:
        """The statistics of the requests selected by ``mask`` (all by default)."""
        if mask is None:
            return self.stats_of(np.arange(len(self.req)))
        return self.stats_of(np.flatnonzero(np.asarray(mask, dtype=bool)))

    def by_group(self, group: np.ndarray, n_groups: int, mask: np.ndarray | None = None) -> list[LatencyStats]:
        """:meth:`stats` of each group ``0 .. n_groups-1`` of the requests (``group`` per request), within ``mask``."""
        idx = np.arange(len(self.req)) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
        g = np.asarray(group)[idx]
        order = np.argsort(g, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(g, minlength=n_groups))])
        return [self.stats_of(idx[order[bounds[i] : bounds[i + 1]]]) for i in range(n_groups)]

    def stats_of(self, idx: np.ndarray) -> LatencyStats:
        """The statistics of the requests at indices ``idx``."""
        n = int(idx.size)
        if n == 0:
            return LatencyStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        ttft = self.ttft[idx]
        gaps = self.gaps[idx]
        multi = gaps > 0
        m_idx = idx[multi]
        gaps_n = gaps[multi]
        span = self.span[m_idx]
        tpot = span / gaps_n * 1e3
        # ITL: step durations weighted by the selected requests that got a token in that step
        regular = self.regular[m_idx]
        r_idx = m_idx[regular]
        ns = self.n_steps
        # preempted requests: equal gaps (see the module docstring)
        extra_v, extra_w = tpot[~regular], gaps_n[~regular]
        total_gaps = int(gaps_n.sum())
        if total_gaps < ns:
            # the subset's own gaps: each regular request's steps f0+1 .. f1, then the preempted ones' copies
            lens = self.f1[r_idx] - self.f0[r_idx]
            first = np.repeat(self.f0[r_idx] + 1 - (np.cumsum(lens) - lens), lens)
            steps = first + np.arange(int(lens.sum()), dtype=np.int64)
            itl = np.concatenate([self.step_ms[steps], np.repeat(extra_v, extra_w)])
            itl_p50, itl_p99 = _order_percentiles(itl, (50, 99))
        else:
            diff = np.bincount(self.f0[r_idx] + 1, minlength=ns + 1) - np.bincount(self.f1[r_idx] + 1, minlength=ns + 1)
            w = np.cumsum(diff)[:ns][self.order]
            v = self.step_sorted
            if extra_v.size:  # merged into the sorted steps
                o = np.argsort(extra_v, kind="stable")
                pos = np.searchsorted(v, extra_v[o], side="right")
                v, w = np.insert(v, pos, extra_v[o]), np.insert(w, pos, extra_w[o])
            cw = np.cumsum(w)
            itl_p50, itl_p99 = _sorted_percentile(v, cw, 50), _sorted_percentile(v, cw, 99)
        itl_mean = float(span.sum() / total_gaps * 1e3) if total_gaps else 0.0
        return LatencyStats.of(ttft, tpot, itl_mean, itl_p50, itl_p99)


def latency_stats(req: CompletedRequests, mask: np.ndarray | None = None) -> LatencyStats:
    """TTFT, TPOT and ITL statistics of the completed requests selected by ``mask`` (all by default)."""
    return LatencyMeter(req).stats(mask)


@dataclass(frozen=True, slots=True)
class EngineResult:
    """Outcome of one simulated engine over one window (per-adapter tuples indexed like the workload)."""

    oom: bool
    duration_s: float
    simulated_s: float
    steps: int
    explicit_steps: int  # steps scheduled one by one (the rest were fast-forwarded)
    # per adapter
    arrived: tuple[int, ...]
    offered_tokens: tuple[int, ...]
    completed: tuple[int, ...]
    completed_tokens: tuple[int, ...]
    engine_tokens: tuple[int, ...]
    rejected: tuple[int, ...]  # refused by the client-side outstanding cap (``max_outstanding``)
    # totals and end state (conservation: sum(arrived) == finished + running_end + waiting_end + sum(rejected))
    finished: int
    running_end: int
    waiting_end: int
    # latency
    itl_ms_mean: float
    tpot_ms_mean: float
    ttft_ms_mean: float
    ttft_ms_p50: float
    ttft_ms_p99: float
    # engine events
    preemptions: int
    adapter_loads: int
    disk_loads: int
    load_time_s: float
    scheduler_time_s: float
    max_running: int
    max_waiting: int
    mean_running: float
    mean_waiting: float
    # invariants observed over all committed steps
    max_distinct_adapters: int
    max_kv_blocks_used: int
    kv_blocks_total: int
    max_scheduled_tokens: int
    config: EngineConfig | None = field(default=None, repr=False, compare=False)
    #: the completed requests' arrays (None for a server that fails to start), for :func:`latency_stats`
    requests: CompletedRequests | None = field(default=None, repr=False, compare=False)

    def latency(self, mask: np.ndarray | None = None) -> LatencyStats:
        """TTFT / TPOT / ITL of the completed requests (``mask`` over :attr:`requests`; all by default)."""
        if self.requests is None:
            return latency_stats(_EMPTY)
        return latency_stats(self.requests, mask)

    @property
    def throughput_tok_s(self) -> float:
        """Tokens (input + output) of requests completed in the window, per second (the reference runs' metric)."""
        return sum(self.completed_tokens) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def engine_tok_s(self) -> float:
        """Prefill + decode tokens processed in the window, per second."""
        return sum(self.engine_tokens) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def offered_tok_s(self) -> float:
        """Input + output tokens of every request that arrived in the window, per second."""
        return sum(self.offered_tokens) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def throughput_loss(self) -> float:
        """1 - delivered / offered token rate (0 when nothing was offered)."""
        off = sum(self.offered_tokens)
        return 1.0 - sum(self.completed_tokens) / off if off > 0 else 0.0

    def adapter_loss(self) -> tuple[float, ...]:
        """Per-adapter throughput loss (0 for an adapter with no offered load)."""
        return tuple(
            (1.0 - c / o) if o > 0 else 0.0 for c, o in zip(self.completed_tokens, self.offered_tokens, strict=True)
        )

    def starved_adapters(self, max_loss: float = 0.10) -> tuple[int, ...]:
        """Indices of adapters whose own loss is at least ``max_loss``."""
        return tuple(i for i, x in enumerate(self.adapter_loss()) if self.offered_tokens[i] > 0 and x >= max_loss)


_EMPTY = CompletedRequests(
    adapter=np.zeros(0, np.int64),
    arrival_s=np.zeros(0),
    first_token_s=np.zeros(0),
    finish_s=np.zeros(0),
    input_tokens=np.zeros(0, np.int64),
    output_tokens=np.zeros(0, np.int64),
    n_steps=0,
    explicit_end_s=np.zeros(0),
    ff_runs=np.zeros((0, 5)),
)
