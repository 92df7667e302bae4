"""Arrival processes for the twin's workload: one independent stream per adapter, vectorised.

* ``poisson``: per adapter ``N ~ Poisson(rate * T)`` arrivals placed uniformly on ``[0, T)`` (the
  exact conditional law of a Poisson process, and the reference benchmark's per-adapter streams).
* ``gamma``: stationary renewal process with Gamma inter-arrivals of coefficient of variation ``cv``
  (shape ``1 / cv**2``, mean ``1 / rate``). The first arrival is drawn from the equilibrium
  (forward-recurrence) law ``U * Gamma(shape + 1)``, so the stream has no start-up transient.
* ``mmpp``: two-state Markov-modulated Poisson process. Sojourns are exponential with mean
  ``mean_burst_s`` in the burst state and ``mean_burst_s * (1 - f) / f`` in the calm state
  (``f = burst_fraction``), so the long-run burst fraction is ``f``; the initial state is drawn from
  that stationary law. The burst rate is ``burst_factor`` times the calm rate and the calm rate is
  ``rate / (1 + f * (burst_factor - 1))``, so the long-run mean is exactly ``rate``.
* ``trace``: replay of a CSV trace (``arrived_at, num_prefill_tokens, num_decode_tokens``), repeated
  with its own period to cover the window, rate-scaled by thinning (scale < 1) or by superposing
  copies whose arrivals are jittered by +-5 s (the published evaluation harness replicated its
  Azure trace "x K with +-5 s jitter"), then each request assigned to an adapter by a seeded law.

Every function takes the run's ``numpy.random.Generator``; nothing else is random.

Each process is an :class:`ArrivalModel` registered in :data:`optplace.infra.registry.ARRIVALS` under
its spec class's ``kind``: the spec class (pydantic), ``generate`` (what the twin draws) and
``burstiness`` (what planning uses: ``(arrival_cv, burst_factor)`` as the surrogate features define
them — ``arrival_cv`` the CV of one adapter's inter-arrival gaps, ``burst_factor`` the burst-state
rate over the long-run mean). The parametric processes give theirs in closed form, exactly the
values their training rows carry; a trace measures its per-adapter gap CV on a generated workload.
A new arrival model is one file doing the same. The trace *length* model is registered here too,
next to the trace reader it samples from.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from optplace.infra.registry import ARRIVALS
from optplace.specs.model import (
    ArrivalSpecBase,
    GammaArrivals,
    MmppArrivals,
    PoissonArrivals,
    TraceArrivals,
    TraceLengths,
    registered_by_kind,
)
from optplace.twin.lengths import LengthLimits, LengthModel, WorkloadError, length_model

__all__ = [
    "poisson_arrivals",
    "gamma_arrivals",
    "mmpp_arrivals",
    "Trace",
    "load_trace",
    "replay_trace",
    "assignment_weights",
    "TRACE_JITTER_S",
]

#: Half-width of the uniform jitter applied to superposed trace copies [s] (published harness).
TRACE_JITTER_S = 5.0

Stream = tuple[np.ndarray, np.ndarray]  # (arrival_s float64, adapter int64), unsorted


def _rates(rates_rps: Any) -> np.ndarray:
    r = np.asarray(rates_rps, dtype=float).reshape(-1)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise WorkloadError("adapter rates must be finite and >= 0")
    return r


def poisson_arrivals(rates_rps: Any, duration_s: float, rng: np.random.Generator) -> Stream:
    """Independent Poisson streams on ``[0, duration_s)``, returned already sorted by time.

    Drawn as their superposition (one Poisson stream of the total rate whose requests pick an
    adapter with probability ``rate / total``, the same law), with the sorted uniform times built
    from normalised exponential spacings: O(N), no sort.
    """
    r = _rates(rates_rps)
    total = float(r.sum())
    n = int(rng.poisson(total * duration_s)) if total > 0 else 0
    if n == 0:
        return np.empty(0), np.empty(0, np.int64)
    cs = np.cumsum(rng.standard_exponential(n + 1))
    t = cs[:-1] * (duration_s / cs[-1])
    # Multinomial counts in a uniformly random order are i.i.d. categorical marks (and O(N)).
    counts = rng.multinomial(n, r / total)
    adapter = rng.permutation(np.repeat(np.arange(len(r)), counts))
    return t, adapter


def _segmented_cumsum(gaps: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarted at every segment boundary (segments of the given lengths)."""
    cs = np.cumsum(gaps)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    base = np.where(starts > 0, cs[np.maximum(starts - 1, 0)], 0.0)
    return cs - np.repeat(base, counts)


def gamma_arrivals(rates_rps: Any, cv: float, duration_s: float, rng: np.random.Generator) -> Stream:
    """Independent stationary Gamma-renewal streams with inter-arrival CV ``cv``."""
    r = _rates(rates_rps)
    if not cv > 0:
        raise WorkloadError(f"gamma arrivals need cv > 0 (got {cv})")
    shape = 1.0 / (cv * cv)
    active = np.flatnonzero(r > 0)
    theta = 1.0 / (r[active] * shape)  # Gamma scale per active adapter
    # Equilibrium first arrival: U x length-biased interval, Gamma(shape + 1).
    cur = rng.random(active.size) * rng.gamma(shape + 1.0, 1.0, active.size) * theta
    times, owners = [cur[cur < duration_s]], [active[cur < duration_s]]
    live = cur < duration_s
    while live.any():
        idx = np.flatnonzero(live)
        expected = (duration_s - cur[idx]) * r[active[idx]]
        # Enough gaps for the rest of the window with high probability; the loop tops up the rest.
        n = np.ceil(expected + 4.0 * np.sqrt(expected * cv * cv + 1.0) + 4.0).astype(np.int64)
        gaps = rng.gamma(shape, 1.0, int(n.sum())) * np.repeat(theta[idx], n)
        t = _segmented_cumsum(gaps, n) + np.repeat(cur[idx], n)
        keep = t < duration_s
        times.append(t[keep])
        owners.append(np.repeat(active[idx], n)[keep])
        ends = np.cumsum(n) - 1
        cur[idx] = t[ends]
        live[idx] = t[ends] < duration_s
    return np.concatenate(times), np.concatenate(owners)


def mmpp_arrivals(
    rates_rps: Any,
    burst_factor: float,
    burst_fraction: float,
    mean_burst_s: float,
    duration_s: float,
    rng: np.random.Generator,
) -> Stream:
    """Independent two-state MMPP streams whose long-run mean rate is each adapter's rate."""
    r = _rates(rates_rps)
    b, f = float(burst_factor), float(burst_fraction)
    if not (b >= 1 and 0 < f < 1 and mean_burst_s > 0):
        raise WorkloadError(
            f"mmpp needs burst_factor >= 1, 0 < burst_fraction < 1, mean_burst_s > 0 (got {b}, {f}, {mean_burst_s})"
        )
    calm = r / (1.0 + f * (b - 1.0))
    mean_calm_s = mean_burst_s * (1.0 - f) / f
    active = np.flatnonzero(r > 0)
    seg_start, seg_len, seg_rate, seg_owner = [], [], [], []
    cur = np.zeros(active.size)
    burst = rng.random(active.size) < f  # stationary initial state
    live = np.ones(active.size, bool)
    cycle = mean_burst_s + mean_calm_s
    while live.any():
        idx = np.flatnonzero(live)
        remaining = duration_s - cur[idx]
        # Sojourns to draw this round (alternating states); the loop tops up unlucky adapters.
        m = int(np.ceil(2.0 * remaining.max() / cycle + 4.0 * math.sqrt(2.0 * remaining.max() / cycle) + 4.0))
        m = max(2, min(m, max(2, 4_000_000 // idx.size)))
        state = burst[idx, None] ^ (np.arange(m)[None, :] % 2 == 1)
        scale = np.where(state, mean_burst_s, mean_calm_s)
        dur = rng.exponential(1.0, (idx.size, m)) * scale
        ends = cur[idx, None] + np.cumsum(dur, axis=1)
        starts = ends - dur
        keep = starts < duration_s
        ends_c = np.minimum(ends, duration_s)
        owner = np.broadcast_to(active[idx, None], (idx.size, m))
        rate = np.where(state, b, 1.0) * calm[owner]
        seg_start.append(starts[keep])
        seg_len.append((ends_c - starts)[keep])
        seg_rate.append(rate[keep])
        seg_owner.append(owner[keep])
        cur[idx] = ends[:, -1]
        burst[idx] = ~state[:, -1]  # the state after the last drawn sojourn
        live[idx] = ends[:, -1] < duration_s
    if not seg_start:
        return np.empty(0), np.empty(0, np.int64)
    s0, ln, rt, ow = (np.concatenate(x) for x in (seg_start, seg_len, seg_rate, seg_owner))
    counts = rng.poisson(np.asarray(rt * ln, dtype=np.float64))
    t = np.repeat(s0, counts) + rng.random(int(counts.sum())) * np.repeat(ln, counts)
    return t, np.repeat(ow, counts)


@dataclass(frozen=True, slots=True, eq=False)
class Trace:
    """A loaded request trace: arrivals from 0, lengths, and its repeat period."""

    path: str
    arrival_s: np.ndarray  # float64, sorted, starting at 0
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    period_s: float  # span plus one mean gap, so repeats keep the mean rate

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def rate_rps(self) -> float:
        """Mean request rate of one period."""
        return len(self) / self.period_s


_TRACE_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")


def resolve_path(path: str, base_dir: Path | str | None) -> Path:
    """``path`` as given when absolute, else relative to ``base_dir`` (the spec's folder) or the CWD."""
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


@lru_cache(maxsize=8)
def _load_trace_cached(path: str, mtime_ns: int, size: int) -> Trace:
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), None)
    if header is None:
        raise WorkloadError(f"{path}: empty trace file")
    header = [h.strip() for h in header]
    missing = [c for c in _TRACE_COLUMNS if c not in header]
    if missing:
        raise WorkloadError(f"{path}: trace lacks column(s) {', '.join(missing)} (has {', '.join(header)})")
    cols = [header.index(c) for c in _TRACE_COLUMNS]
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=cols, ndmin=2)
    except ValueError as e:
        raise WorkloadError(f"{path}: unreadable trace row ({e})") from None
    if len(data) < 2:
        raise WorkloadError(f"{path}: a trace needs at least 2 requests")
    if not np.all(np.isfinite(data)) or np.any(data[:, 1:] < 0):
        raise WorkloadError(f"{path}: trace has non-finite or negative values")
    order = np.argsort(data[:, 0], kind="stable")
    t = data[order, 0] - data[order[0], 0]
    span = float(t[-1])
    if span <= 0:
        raise WorkloadError(f"{path}: all trace arrivals are at the same time")
    arrays = (t, data[order, 1].astype(np.int64), data[order, 2].astype(np.int64))
    for a in arrays:
        a.flags.writeable = False
    return Trace(path, *arrays, period_s=span * len(t) / (len(t) - 1))


def load_trace(path: str, base_dir: Path | str | None = None) -> Trace:
    """Load (and cache) a trace CSV with columns ``arrived_at, num_prefill_tokens, num_decode_tokens``."""
    p = resolve_path(path, base_dir)
    try:
        st = os.stat(p)
    except OSError:
        raise WorkloadError(f"trace file not found: {p}") from None
    return _load_trace_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


def filter_trace(trace: Trace, limits: LengthLimits) -> np.ndarray:
    """Indices of the trace rows whose lengths pass ``limits``."""
    return np.flatnonzero(limits.accepts(trace.input_tokens, trace.output_tokens))


def assignment_weights(
    law: str, rates: np.ndarray, rng: np.random.Generator, *, zipf_s: float = 1.0, dirichlet_alpha: float = 0.5
) -> np.ndarray:
    """Popularity weights over adapters (sum 1) for a trace assignment law."""
    n = len(rates)
    if law == "by_rate":
        if rates.sum() <= 0:
            raise WorkloadError("trace assignment 'by_rate' needs at least one adapter with rate_rps > 0")
        return rates / rates.sum()
    if law == "uniform":
        return np.full(n, 1.0 / n)
    if law == "zipf":
        # Popularity ranks are a seeded permutation, so no adapter is favoured by its list position.
        ranks = rng.permutation(n) + 1.0
        w = ranks ** -float(zipf_s)
        return w / w.sum()
    if law == "dirichlet":
        w = rng.dirichlet(np.full(n, float(dirichlet_alpha)))
        if not np.all(np.isfinite(w)) or w.sum() <= 0:  # tiny alpha can underflow every weight
            w = np.zeros(n)
            w[rng.integers(n)] = 1.0
        return w / w.sum()
    raise WorkloadError(f"unknown trace assignment law {law!r}")


def _assign(law: str, weights: np.ndarray, n_req: int, rng: np.random.Generator) -> np.ndarray:
    n = len(weights)
    if law == "dirichlet" and n_req >= n:
        # Every adapter gets at least one request (as the published harness did): a random set of n
        # requests goes one to each adapter, the rest follow the weights.
        adapter = np.empty(n_req, np.int64)
        first = rng.permutation(n_req)
        adapter[first[:n]] = rng.permutation(n)
        adapter[first[n:]] = rng.choice(n, n_req - n, p=weights)
        return adapter
    return rng.choice(n, n_req, p=weights)


def replay_trace(
    trace: Trace,
    rows: np.ndarray,
    rates_rps: Any,
    duration_s: float,
    rng: np.random.Generator,
    *,
    assignment: str = "by_rate",
    zipf_s: float = 1.0,
    dirichlet_alpha: float = 0.5,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replay ``trace`` (only its ``rows``) over ``[0, duration_s)`` as multi-adapter traffic.

    Returns ``(arrival_s, adapter, trace_row)``, unsorted; ``trace_row`` indexes the trace so its
    lengths can be paired. ``scale=None`` matches ``sum(rates_rps)`` under ``by_rate`` and is 1 otherwise.
    """
    r = _rates(rates_rps)
    if len(r) == 0:
        raise WorkloadError("trace replay needs at least one adapter")
    if len(rows) == 0:
        raise WorkloadError(f"{trace.path}: no trace request passes the length filters")
    if assignment == "by_rate" and r.sum() <= 0:  # no traffic to route (e.g. a GPU of idle adapters)
        return np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64)
    period = trace.period_s
    base_t = trace.arrival_s[rows]
    if scale is None:
        scale = r.sum() * period / len(rows) if assignment == "by_rate" else 1.0
    scale = float(scale)
    if not scale >= 0 or not math.isfinite(scale):
        raise WorkloadError(f"trace scale must be finite and >= 0 (got {scale})")
    tiles = max(1, math.ceil(duration_s / period))
    horizon = tiles * period
    t1 = (base_t[None, :] + period * np.arange(tiles)[:, None]).ravel()
    row1 = np.tile(rows, tiles)
    whole, frac = int(scale), scale - int(scale)
    parts_t, parts_r = [], []
    for copy in range(whole + (1 if frac > 0 else 0)):
        t, rr = t1, row1
        if copy > 0:
            t = np.mod(t + rng.uniform(-TRACE_JITTER_S, TRACE_JITTER_S, t.size), horizon)
        if copy == whole:  # the fractional copy: thin it
            keep = rng.random(t.size) < frac
            t, rr = t[keep], rr[keep]
        sel = t < duration_s
        parts_t.append(t[sel])
        parts_r.append(rr[sel])
    t = np.concatenate(parts_t) if parts_t else np.empty(0)
    row = np.concatenate(parts_r) if parts_r else np.empty(0, np.int64)
    weights = assignment_weights(assignment, r, rng, zipf_s=zipf_s, dirichlet_alpha=dirichlet_alpha)
    adapter = _assign(assignment, weights, t.size, rng)
    return t, adapter, row


def mmpp_idc(
    rate_rps: float, burst_factor: float, burst_fraction: float, mean_burst_s: float, window_s: float
) -> float:
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


# --- the registered models ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class ArrivalDraw:
    """What an arrival model generates: arrival times and adapters (any order), and the requests'
    lengths when the model supplies them (a trace replayed with its own lengths), else None."""

    arrival_s: np.ndarray
    adapter: np.ndarray
    lengths: tuple[np.ndarray, np.ndarray] | None = None


class ArrivalModel:
    """An arrival process: its spec class, what the twin draws, and the burstiness planning uses."""

    spec: ClassVar[type[ArrivalSpecBase]]
    #: Keeping each request independently with probability p gives exactly this process at p times the
    #: rates (a Poisson or Cox process; not a renewal process other than Poisson, nor a tiled trace), so
    #: the load multipliers of a headroom search can share one draw (``PlanSimulator.thinned``).
    thins_exactly: ClassVar[bool] = False

    def generate(
        self,
        spec: Any,
        rates: np.ndarray,
        duration_s: float,
        rng: np.random.Generator,
        assign_rng: np.random.Generator,
        lengths: Any,
        base_dir: Path | str | None,
    ) -> ArrivalDraw:
        """Arrivals of every adapter on ``[0, duration_s)``. ``rng`` is the arrivals' generator,
        ``assign_rng`` the one for assigning requests to adapters (models that assign separately)."""
        raise NotImplementedError

    def idc(self, spec: Any, rate_rps: float, window_s: float) -> float | None:
        """Index of dispersion of one adapter's counts in ``window_s`` windows (closed form), or None."""
        return None

    def burstiness(self, spec: Any, measured: Callable[[], Any]) -> tuple[float, float]:
        """``(arrival_cv, burst_factor)`` as the surrogate features define them; ``measured()`` gives
        the :class:`~optplace.twin.workload.WorkloadSummary` of a generated workload when a model has
        no closed form. Default: Poisson's (1, 1)."""
        return 1.0, 1.0


#: Class decorator: register one instance of an :class:`ArrivalModel` under its spec class's ``kind``.
arrival_model = registered_by_kind(ARRIVALS)


@arrival_model
class PoissonModel(ArrivalModel):
    spec = PoissonArrivals
    thins_exactly = True

    def generate(self, spec, rates, duration_s, rng, assign_rng, lengths, base_dir):
        return ArrivalDraw(*poisson_arrivals(rates, duration_s, rng))

    def idc(self, spec, rate_rps, window_s):
        return 1.0


@arrival_model
class GammaModel(ArrivalModel):
    spec = GammaArrivals

    def generate(self, spec, rates, duration_s, rng, assign_rng, lengths, base_dir):
        return ArrivalDraw(*gamma_arrivals(rates, float(spec.cv), duration_s, rng))

    def idc(self, spec, rate_rps, window_s):
        # The large-window limit, accurate once a window holds several arrivals.
        return float(spec.cv) ** 2

    def burstiness(self, spec, measured):
        return float(spec.cv), 1.0


@arrival_model
class MmppModel(ArrivalModel):
    spec = MmppArrivals
    # each adapter's burst chain is kept and only its rates scale: thinning is exact
    thins_exactly = True

    def generate(self, spec, rates, duration_s, rng, assign_rng, lengths, base_dir):
        return ArrivalDraw(
            *mmpp_arrivals(
                rates, float(spec.burst_factor), float(spec.burst_fraction), float(spec.mean_burst_s), duration_s, rng
            )
        )

    def idc(self, spec, rate_rps, window_s):
        return mmpp_idc(
            rate_rps, float(spec.burst_factor), float(spec.burst_fraction), float(spec.mean_burst_s), window_s
        )

    def burstiness(self, spec, measured):
        return 1.0, float(spec.burst_factor)


@arrival_model
class TraceModel(ArrivalModel):
    spec = TraceArrivals

    def generate(self, spec, rates, duration_s, rng, assign_rng, lengths, base_dir):
        trace = load_trace(spec.path, base_dir)
        paired = lengths.kind == "trace" and _same_file(lengths.path, spec.path, base_dir)
        # With paired lengths, requests failing the filters leave the trace (like the benchmark's
        # sampler skipping them); otherwise the trace only supplies times.
        rows = filter_trace(trace, LengthLimits.from_spec(lengths)) if paired else np.arange(len(trace))
        t, a, trace_rows = replay_trace(
            trace,
            rows,
            rates,
            duration_s,
            assign_rng,
            assignment=getattr(spec, "assignment", "by_rate"),
            zipf_s=float(getattr(spec, "zipf_s", 1.0)),
            dirichlet_alpha=float(getattr(spec, "dirichlet_alpha", 0.5)),
            scale=getattr(spec, "scale", None),
        )
        return ArrivalDraw(t, a, (trace.input_tokens[trace_rows], trace.output_tokens[trace_rows]) if paired else None)

    def burstiness(self, spec, measured):
        # The feature's definition (one adapter's gap CV, as a Gamma stream's cv) measured on the replay;
        # no adapter with 3 requests in the window: nothing measured, Poisson's value.
        cv = float(measured().adapter_arrival_cv)
        return (cv if math.isfinite(cv) and cv > 0 else 1.0), 1.0


def _same_file(a: str, b: str, base_dir: Path | str | None) -> bool:
    try:
        return resolve_path(a, base_dir).resolve() == resolve_path(b, base_dir).resolve()
    except OSError:
        return a == b


@length_model
class TraceLengthModel(LengthModel):
    """Lengths resampled uniformly from the trace's rows that pass the filters."""

    spec = TraceLengths

    def draw(self, spec, n, rng, base_dir):
        lt = load_trace(spec.path, base_dir)
        keep = filter_trace(lt, LengthLimits.from_spec(spec))
        if keep.size == 0:
            raise WorkloadError("trace lengths: no trace request passes the length filters")
        idx = rng.integers(0, keep.size, n)
        return lt.input_tokens[keep][idx].astype(np.int32), lt.output_tokens[keep][idx].astype(np.int32)
