"""Workload generation for the twin: who sends what, when.

``generate_workload(arrivals, lengths, rates_rps, duration_s, rng, base_dir=None)`` turns a
scenario's ``ArrivalSpec`` and ``LengthSpec`` (any objects with those field names) and the
adapters' rates into a :class:`Workload`: NumPy arrays of every request in the window, sorted by
arrival time. Arrival processes live in ``_arrivals`` and length models (with the fitted ShareGPT
distribution and its sources) in ``_lengths``.

Randomness: the run's generator is split with ``Generator.spawn`` into independent children for
arrivals, lengths and adapter assignment, so e.g. changing the length model leaves the arrival
times unchanged. Same seed -> identical arrays.

``workload_stats`` gives the workload-side features the surrogates use (mean lengths, arrival
burstiness), from a generated workload.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from optplace.twin._arrivals import (filter_trace, gamma_arrivals, load_trace, mmpp_arrivals, poisson_arrivals,
                        replay_trace)
from optplace.twin._lengths import (FilteredLengthStats, LengthLimits, WorkloadError,
                       draw_lengths, filtered_stats, sharegpt_stats)

__all__ = ["Workload", "WorkloadSummary", "WorkloadStats", "WorkloadError", "generate_workload", "workload_stats",
           "sharegpt_stats", "expected_lengths", "arrival_idc", "FilteredLengthStats", "LengthLimits"]


@dataclass(frozen=True, slots=True)
class WorkloadSummary:
    """Headline figures of a workload."""

    count: int
    duration_s: float
    mean_rate_rps: float
    mean_input_tokens: float
    mean_output_tokens: float
    arrival_cv: float          # CV of the merged stream's inter-arrival times (nan if < 3 requests)
    offered_tok_s: float       # (input + output tokens of all requests) / duration


@dataclass(frozen=True, slots=True, eq=False)
class Workload:
    """Every request of a window, sorted by arrival time (read-only arrays).

    ``adapter`` indexes the ``rates_rps`` list the workload was generated from; ``n_adapters`` is
    that list's length (adapters may have no request).
    """

    arrival_s: np.ndarray      # float64 [s], non-decreasing, in [0, duration_s)
    adapter: np.ndarray        # int32
    input_tokens: np.ndarray   # int32
    output_tokens: np.ndarray  # int32
    duration_s: float
    n_adapters: int

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    def summary(self) -> WorkloadSummary:
        """Count, mean rate, mean lengths, arrival CV and offered token rate."""
        n = len(self)
        mi = float(self.input_tokens.mean()) if n else 0.0
        mo = float(self.output_tokens.mean()) if n else 0.0
        tot = float(self.input_tokens.sum(dtype=np.int64) + self.output_tokens.sum(dtype=np.int64))
        return WorkloadSummary(n, self.duration_s, n / self.duration_s, mi, mo, _cv(np.diff(self.arrival_s)),
                               tot / self.duration_s)

    def subset(self, adapters: Sequence[int]) -> "Workload":
        """The requests of ``adapters`` only, re-indexed ``0..len(adapters)-1`` in the given order.

        Lets one workload of all adapters be split over GPUs, so every placement sees the same traffic.
        """
        sel = np.asarray(adapters, dtype=np.int64)
        if sel.size != np.unique(sel).size or (sel.size and (sel.min() < 0 or sel.max() >= self.n_adapters)):
            raise WorkloadError(f"subset: adapters must be distinct indices in [0, {self.n_adapters})")
        remap = np.full(self.n_adapters, -1, np.int64)
        remap[sel] = np.arange(sel.size)
        new = remap[self.adapter]
        keep = new >= 0
        return _frozen(self.arrival_s[keep], new[keep], self.input_tokens[keep], self.output_tokens[keep],
                       self.duration_s, int(sel.size))


def _frozen(t: np.ndarray, a: np.ndarray, i: np.ndarray, o: np.ndarray, duration_s: float,
            n_adapters: int) -> Workload:
    arrays = (np.ascontiguousarray(t, np.float64), np.ascontiguousarray(a, np.int32),
              np.ascontiguousarray(i, np.int32), np.ascontiguousarray(o, np.int32))
    for x in arrays:
        x.flags.writeable = False
    return Workload(*arrays, duration_s=float(duration_s), n_adapters=int(n_adapters))


def _cv(x: np.ndarray) -> float:
    if x.size < 2:
        return float("nan")
    m = float(x.mean())
    return float(x.std() / m) if m > 0 else float("nan")


def _children(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    try:
        return list(rng.spawn(n))
    except (AttributeError, TypeError):  # a generator without a SeedSequence (or old NumPy)
        return [np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, n)]


def generate_workload(arrivals: Any, lengths: Any, rates_rps: Sequence[float], duration_s: float,
                      rng: np.random.Generator, base_dir: Path | str | None = None) -> Workload:
    """All requests of a ``duration_s`` window for adapters with the given mean rates.

    ``arrivals``: an ArrivalSpec (``kind`` poisson | gamma(cv) | mmpp(burst_factor, burst_fraction,
    mean_burst_s) | trace(path, assignment, zipf_s, dirichlet_alpha, scale)); ``lengths``: a
    LengthSpec (``kind`` sharegpt | fixed | lognormal | trace(path), plus the filters). Trace paths
    resolve against ``base_dir`` (the spec's folder). Raises :class:`WorkloadError` on impossible input.
    """
    duration_s = float(duration_s)
    if not duration_s > 0 or not np.isfinite(duration_s):
        raise WorkloadError(f"duration_s must be > 0 (got {duration_s})")
    rates = np.asarray(rates_rps, dtype=float).reshape(-1)
    g_arr, g_len, g_asg = _children(rng, 3)
    limits = LengthLimits.from_spec(lengths)
    kind = arrivals.kind
    trace_rows: np.ndarray | None = None
    trace = None
    if kind == "poisson":
        t, a = poisson_arrivals(rates, duration_s, g_arr)
    elif kind == "gamma":
        t, a = gamma_arrivals(rates, float(arrivals.cv), duration_s, g_arr)
    elif kind == "mmpp":
        t, a = mmpp_arrivals(rates, float(arrivals.burst_factor), float(arrivals.burst_fraction),
                             float(arrivals.mean_burst_s), duration_s, g_arr)
    elif kind == "trace":
        trace = load_trace(arrivals.path, base_dir)
        paired = lengths.kind == "trace" and _same_file(lengths.path, arrivals.path, base_dir)
        # With paired lengths, requests failing the filters leave the trace (like the benchmark's
        # sampler skipping them); otherwise the trace only supplies times.
        rows = filter_trace(trace, limits) if paired else np.arange(len(trace))
        t, a, trace_rows = replay_trace(trace, rows, rates, duration_s, g_asg,
                                        assignment=getattr(arrivals, "assignment", "by_rate"),
                                        zipf_s=float(getattr(arrivals, "zipf_s", 1.0)),
                                        dirichlet_alpha=float(getattr(arrivals, "dirichlet_alpha", 0.5)),
                                        scale=getattr(arrivals, "scale", None))
        if not paired:
            trace_rows = None
    else:
        raise WorkloadError(f"unknown arrival process kind {kind!r}")

    if t.size > 1 and not np.all(t[1:] >= t[:-1]):
        order = np.argsort(t, kind="stable")
        t, a = t[order], a[order]
        if trace_rows is not None:
            trace_rows = trace_rows[order]
    if trace_rows is not None:
        assert trace is not None
        rows = trace_rows
        inp, out = trace.input_tokens[rows], trace.output_tokens[rows]
    else:
        pool = None
        if lengths.kind == "trace":
            lt = load_trace(lengths.path, base_dir)
            keep = filter_trace(lt, limits)
            pool = (lt.input_tokens[keep], lt.output_tokens[keep])
        inp, out = draw_lengths(lengths, t.size, g_len, trace_pool=pool)
    return _frozen(t, a, inp, out, duration_s, rates.size)


def _same_file(a: str, b: str, base_dir: Path | str | None) -> bool:
    from optplace.twin._arrivals import resolve_path
    try:
        return resolve_path(a, base_dir).resolve() == resolve_path(b, base_dir).resolve()
    except OSError:
        return a == b


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    """Workload-side features for the surrogates (from a generated workload)."""

    count: int
    mean_rate_rps: float
    mean_input_tokens: float
    mean_output_tokens: float
    arrival_cv: float            # CV of the merged stream's inter-arrival times
    adapter_arrival_cv: float    # request-weighted mean of per-adapter inter-arrival CVs (>= 3 requests)
    idc_10s: float               # index of dispersion (var / mean) of merged counts in 10 s windows
    idc_60s: float               # same in 60 s windows (1 for Poisson; grows with slow bursts)


def _idc(t: np.ndarray, duration_s: float, window_s: float) -> float:
    nb = int(duration_s // window_s)
    if nb < 2:
        return float("nan")
    c = np.bincount((t[t < nb * window_s] // window_s).astype(np.int64), minlength=nb)
    m = c.mean()
    return float(c.var() / m) if m > 0 else float("nan")


def workload_stats(wl: Workload) -> WorkloadStats:
    """Mean lengths and arrival burstiness of ``wl`` (per adapter and merged)."""
    n = len(wl)
    gaps = np.diff(wl.arrival_s)
    # Per-adapter CVs from one stable sort by adapter (arrival order is kept within an adapter).
    order = np.argsort(wl.adapter, kind="stable")
    a, t = wl.adapter[order], wl.arrival_s[order]
    counts = np.bincount(a, minlength=wl.n_adapters)
    same = a[1:] == a[:-1]
    g = np.diff(t)[same]
    owner = a[1:][same]
    s1 = np.bincount(owner, weights=g, minlength=wl.n_adapters)
    s2 = np.bincount(owner, weights=g * g, minlength=wl.n_adapters)
    k = np.maximum(counts - 1, 0).astype(float)
    ok = counts >= 3
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / k
        cv = np.sqrt(np.maximum(s2 / k - mean * mean, 0.0)) / mean
    adapter_cv = float(np.average(cv[ok], weights=counts[ok])) if ok.any() else float("nan")
    return WorkloadStats(
        count=n, mean_rate_rps=n / wl.duration_s,
        mean_input_tokens=float(wl.input_tokens.mean()) if n else 0.0,
        mean_output_tokens=float(wl.output_tokens.mean()) if n else 0.0,
        arrival_cv=_cv(gaps), adapter_arrival_cv=adapter_cv,
        idc_10s=_idc(wl.arrival_s, wl.duration_s, 10.0), idc_60s=_idc(wl.arrival_s, wl.duration_s, 60.0))


def expected_lengths(lengths: Any) -> FilteredLengthStats | None:
    """Exact filtered length statistics of a parametric LengthSpec (None for ``trace``).

    For ``sharegpt`` and ``lognormal`` the filters are applied on the probability grid, so the
    means are those a generated workload converges to; ``fixed`` is returned as is.
    """
    from optplace.twin._lengths import LognormalMixture
    limits = LengthLimits.from_spec(lengths)
    if lengths.kind == "sharegpt":
        mi, mo = (getattr(lengths, k, None) for k in ("mean_input_tokens", "mean_output_tokens"))
        return sharegpt_stats(limits, None if mi is None else float(mi), None if mo is None else float(mo))
    if lengths.kind == "lognormal":
        return filtered_stats(LognormalMixture.from_mean_cv(float(lengths.mean_input_tokens), float(lengths.cv_input)),
                              LognormalMixture.from_mean_cv(float(lengths.mean_output_tokens),
                                                            float(lengths.cv_output)), limits)
    if lengths.kind == "fixed":
        i, o = float(lengths.input_tokens), float(lengths.output_tokens)
        return FilteredLengthStats(i, o, i, i, o, o, 1.0)
    return None


def arrival_idc(arrivals: Any, rate_rps: float = 1.0, window_s: float = 60.0) -> float | None:
    """Index of dispersion (variance / mean) of one adapter's counts in ``window_s`` windows, from the spec.

    A burstiness feature that needs no sampling: 1 for Poisson; ``cv**2`` for Gamma renewal (its
    large-window limit, accurate once a window holds several arrivals); the exact value for the
    MMPP (see :func:`mmpp_idc`; its excess over 1 grows linearly with ``rate_rps``). ``None`` for
    traces (use :func:`workload_stats` on a generated workload).
    """
    kind = arrivals.kind
    if kind == "poisson":
        return 1.0
    if kind == "gamma":
        return float(arrivals.cv) ** 2
    if kind == "mmpp":
        return mmpp_idc(rate_rps, float(arrivals.burst_factor), float(arrivals.burst_fraction),
                        float(arrivals.mean_burst_s), window_s)
    return None


def mmpp_idc(rate_rps: float, burst_factor: float, burst_fraction: float, mean_burst_s: float,
             window_s: float) -> float:
    """Exact index of dispersion of a stationary two-state MMPP's counts in windows of ``window_s``.

    With burst/calm rates ``lb, lc`` (long-run mean ``rate_rps``), switching rates
    ``rb = 1 / mean_burst_s`` and ``rc = f rb / (1 - f)``, ``g = rb + rc``:
    ``IDC(t) = 1 + 2 (lb - lc)**2 f (1 - f) / (rate_rps g) * (1 - (1 - exp(-g t)) / (g t))``.
    """
    b, f = burst_factor, burst_fraction
    lc = rate_rps / (1.0 + f * (b - 1.0))
    lb = b * lc
    rb = 1.0 / mean_burst_s
    g = rb + f * rb / (1.0 - f)
    gt = g * window_s
    return float(1.0 + 2.0 * (lb - lc) ** 2 * f * (1.0 - f) / (rate_rps * g) * (1.0 - (1.0 - np.exp(-gt)) / gt))
