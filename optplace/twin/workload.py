"""Workload generation for the twin: who sends what, when.

``generate_workload(arrivals, lengths, rates_rps, duration_s, rng, base_dir=None)`` turns a
scenario's ``ArrivalSpec`` and ``LengthSpec`` (any objects with those field names) and the
adapters' rates into a :class:`Workload`: NumPy arrays of every request in the window, sorted by
arrival time. Arrival processes live in ``arrivals`` and length models (with the fitted ShareGPT
distribution and its sources) in ``lengths``.

Randomness: the run's generator is split with ``Generator.spawn`` into independent children for
arrivals, lengths and adapter assignment, so e.g. changing the length model leaves the arrival
times unchanged. Same seed -> identical arrays.

:func:`planning_stats` gives the :class:`WorkloadStats` planning uses (mean lengths, arrival
burstiness in the surrogate features' definitions) from the same models the twin generates with;
``Workload.summary()`` measures a generated workload.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from optplace.infra.registry import ARRIVALS, LENGTHS, UnknownName
from optplace.twin.arrivals import mmpp_idc
from optplace.twin.lengths import FilteredLengthStats, LengthLimits, WorkloadError, draw_lengths, sharegpt_stats

__all__ = [
    "Workload",
    "WorkloadSummary",
    "WorkloadStats",
    "WorkloadError",
    "generate_workload",
    "planning_stats",
    "sharegpt_stats",
    "expected_lengths",
    "arrival_idc",
    "thins_exactly",
    "mmpp_idc",
    "FilteredLengthStats",
    "LengthLimits",
]


@dataclass(frozen=True, slots=True)
class WorkloadSummary:
    """Headline figures of a workload."""

    count: int
    duration_s: float
    mean_rate_rps: float
    mean_input_tokens: float
    mean_output_tokens: float
    arrival_cv: float  # CV of the merged stream's inter-arrival times (nan if < 3 requests)
    offered_tok_s: float  # (input + output tokens of all requests) / duration
    adapter_arrival_cv: float  # request-weighted mean of per-adapter inter-arrival CVs (>= 3 requests)
    idc_10s: float  # index of dispersion (var / mean) of merged counts in 10 s windows
    idc_60s: float  # same in 60 s windows (1 for Poisson; grows with slow bursts)


@dataclass(frozen=True, slots=True, eq=False)
class Workload:
    """Every request of a window, sorted by arrival time (read-only arrays).

    ``adapter`` indexes the ``rates_rps`` list the workload was generated from; ``n_adapters`` is
    that list's length (adapters may have no request).
    """

    arrival_s: np.ndarray  # float64 [s], non-decreasing, in [0, duration_s)
    adapter: np.ndarray  # int32
    input_tokens: np.ndarray  # int32
    output_tokens: np.ndarray  # int32
    duration_s: float
    n_adapters: int

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    def summary(self) -> WorkloadSummary:
        """Count, mean rate, mean lengths, arrival burstiness (merged and per adapter) and offered token rate."""
        n = len(self)
        mi = float(self.input_tokens.mean()) if n else 0.0
        mo = float(self.output_tokens.mean()) if n else 0.0
        tot = float(self.input_tokens.sum(dtype=np.int64) + self.output_tokens.sum(dtype=np.int64))
        return WorkloadSummary(
            n,
            self.duration_s,
            n / self.duration_s,
            mi,
            mo,
            _cv(np.diff(self.arrival_s)),
            tot / self.duration_s,
            _adapter_cv(self),
            _idc(self.arrival_s, self.duration_s, 10.0),
            _idc(self.arrival_s, self.duration_s, 60.0),
        )

    def subset(self, adapters: Sequence[int], keep: np.ndarray | None = None) -> "Workload":
        """The requests of ``adapters`` only, re-indexed ``0..len(adapters)-1`` in the given order.

        Lets one workload of all adapters be split over GPUs, so every placement sees the same traffic.
        ``keep`` (one flag per request) further keeps only the flagged requests: a replica's share of
        its adapter's requests.
        """
        sel = np.asarray(adapters, dtype=np.int64)
        if sel.size != np.unique(sel).size or (sel.size and (sel.min() < 0 or sel.max() >= self.n_adapters)):
            raise WorkloadError(f"subset: adapters must be distinct indices in [0, {self.n_adapters})")
        remap = np.full(self.n_adapters, -1, np.int64)
        remap[sel] = np.arange(sel.size)
        new = remap[self.adapter]
        keep = new >= 0 if keep is None else (new >= 0) & np.asarray(keep, dtype=bool)
        return _frozen(
            self.arrival_s[keep],
            new[keep],
            self.input_tokens[keep],
            self.output_tokens[keep],
            self.duration_s,
            int(sel.size),
        )

    def split(self, groups: Sequence[Sequence[int]]) -> list["Workload"]:
        """``[self.subset(g) for g in groups]`` for disjoint ``groups``, in one pass over the requests.

        A plan's GPUs hold disjoint adapters; subsetting the scenario-wide workload once per GPU read
        every request once per GPU, which at a few million requests and dozens of GPUs kept the
        workers waiting on the main process (~30 ms per GPU)."""
        gid = np.full(self.n_adapters, -1, np.int64)
        local = np.zeros(self.n_adapters, np.int64)
        for g, members in enumerate(groups):
            sel = np.asarray(members, dtype=np.int64)
            if sel.size and (sel.min() < 0 or sel.max() >= self.n_adapters or np.any(gid[sel] >= 0)):
                raise WorkloadError(f"split: groups must be disjoint adapter indices in [0, {self.n_adapters})")
            if sel.size != np.unique(sel).size:
                raise WorkloadError("split: an adapter appears twice in a group")
            gid[sel] = g
            local[sel] = np.arange(sel.size)
        of_request = gid[self.adapter]
        # a stable sort keeps arrival order within each group; 16-bit keys get NumPy's radix sort
        keys = of_request.astype(np.int16) if len(groups) < 2**15 else of_request
        order = np.argsort(keys, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(of_request + 1, minlength=len(groups) + 1))])
        out = []
        for g, members in enumerate(groups):
            idx = order[bounds[g + 1] : bounds[g + 2]]
            out.append(
                _frozen(
                    self.arrival_s[idx],
                    local[self.adapter[idx]],
                    self.input_tokens[idx],
                    self.output_tokens[idx],
                    self.duration_s,
                    len(members),
                )
            )
        return out

    def thinned(self, keep: np.ndarray) -> "Workload":
        """The flagged requests only (adapters keep their indices): with flags ``u < p`` for
        independent uniforms ``u``, the workload at ``p`` times the load for arrival models whose
        thinning is exact (``ArrivalModel.thins_exactly``)."""
        k = np.asarray(keep, dtype=bool)
        if k.shape != self.arrival_s.shape:
            raise WorkloadError(f"thinned: {k.size} flags for {len(self)} requests")
        return _frozen(
            self.arrival_s[k],
            self.adapter[k],
            self.input_tokens[k],
            self.output_tokens[k],
            self.duration_s,
            self.n_adapters,
        )


def _frozen(t: np.ndarray, a: np.ndarray, i: np.ndarray, o: np.ndarray, duration_s: float, n_adapters: int) -> Workload:
    arrays = (
        np.ascontiguousarray(t, np.float64),
        np.ascontiguousarray(a, np.int32),
        np.ascontiguousarray(i, np.int32),
        np.ascontiguousarray(o, np.int32),
    )
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


def generate_workload(
    arrivals: Any,
    lengths: Any,
    rates_rps: Sequence[float],
    duration_s: float,
    rng: np.random.Generator,
    base_dir: Path | str | None = None,
) -> Workload:
    """All requests of a ``duration_s`` window for adapters with the given mean rates.

    ``arrivals``: an ArrivalSpec, ``lengths``: a LengthSpec (any objects with those fields), each
    generated by the model registered under its ``kind`` (built-ins: arrivals poisson | gamma(cv) |
    mmpp(burst_factor, burst_fraction, mean_burst_s) | trace(path, assignment, zipf_s,
    dirichlet_alpha, scale); lengths sharegpt | fixed | lognormal | trace(path), plus the filters).
    Trace paths resolve against ``base_dir`` (the spec's folder). Raises :class:`WorkloadError` on
    impossible input.
    """
    duration_s = float(duration_s)
    if not duration_s > 0 or not np.isfinite(duration_s):
        raise WorkloadError(f"duration_s must be > 0 (got {duration_s})")
    rates = np.asarray(rates_rps, dtype=float).reshape(-1)
    g_arr, g_len, g_asg = _children(rng, 3)
    try:
        model = ARRIVALS.get(arrivals.kind)
    except UnknownName as e:
        raise WorkloadError(str(e)) from None
    draw = model.generate(arrivals, rates, duration_s, g_arr, g_asg, lengths, base_dir)
    t, a, paired = draw.arrival_s, draw.adapter, draw.lengths
    if t.size > 1 and not np.all(t[1:] >= t[:-1]):
        order = np.argsort(t, kind="stable")
        t, a = t[order], a[order]
        if paired is not None:
            paired = (paired[0][order], paired[1][order])
    if paired is not None:
        inp, out = paired
    else:
        try:
            LENGTHS.get(lengths.kind)
        except UnknownName as e:
            raise WorkloadError(str(e)) from None
        inp, out = draw_lengths(lengths, t.size, g_len, base_dir)
    return _frozen(t, a, inp, out, duration_s, rates.size)


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    """The workload facts planning uses (every capacity model and the surrogate features): mean
    request lengths and burstiness in the surrogate features' definitions (``arrival_cv``: CV of one
    adapter's inter-arrival gaps; ``burst_factor``: burst-state rate over the long-run mean)."""

    duration_s: float
    mean_input_tokens: float
    mean_output_tokens: float
    arrival_cv: float = 1.0
    burst_factor: float = 1.0

    @property
    def tokens_per_request(self) -> float:
        return self.mean_input_tokens + self.mean_output_tokens


#: Mean lengths of the ShareGPT pool of the reference runs: planning's lengths when a length model has
#: no closed form and the generated workload has no request.
SHAREGPT_MEANS = (223.0, 196.0)
#: Longest window generated to measure a workload model that has no closed form (traces) [s].
MEASURE_WINDOW_S = 600.0


def planning_stats(
    workload: Any, rates_rps: Sequence[float], seed: int, base_dir: Path | str | None = None
) -> WorkloadStats:
    """What planning uses of a spec's ``workload`` (``duration_s``, ``arrivals``, ``lengths``) for adapters
    at ``rates_rps``: each model's closed form where it has one; otherwise measured on the workload
    the twin itself generates (same generator; seeded by ``seed``; at most :data:`MEASURE_WINDOW_S`)."""
    measured: list[WorkloadSummary] = []

    def measure() -> WorkloadSummary:
        if not measured:
            wl = generate_workload(
                workload.arrivals,
                workload.lengths,
                [max(r, 1e-6) for r in rates_rps],
                min(float(workload.duration_s), MEASURE_WINDOW_S),
                np.random.default_rng(seed),
                base_dir=base_dir,
            )
            measured.append(wl.summary())
        return measured[0]

    st = expected_lengths(workload.lengths)
    if st is not None:
        mi, mo = st.mean_input_tokens, st.mean_output_tokens
    else:
        m = measure()
        mi, mo = (m.mean_input_tokens, m.mean_output_tokens) if m.count else SHAREGPT_MEANS
    cv, bf = ARRIVALS.get(workload.arrivals.kind).burstiness(workload.arrivals, measure)
    return WorkloadStats(float(workload.duration_s), float(mi), float(mo), float(cv), float(bf))


def _idc(t: np.ndarray, duration_s: float, window_s: float) -> float:
    nb = int(duration_s // window_s)
    if nb < 2:
        return float("nan")
    c = np.bincount((t[t < nb * window_s] // window_s).astype(np.int64), minlength=nb)
    m = c.mean()
    return float(c.var() / m) if m > 0 else float("nan")


def _adapter_cv(wl: Workload) -> float:
    """Request-weighted mean of the per-adapter inter-arrival CVs (adapters with >= 3 requests)."""
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
    return float(np.average(cv[ok], weights=counts[ok])) if ok.any() else float("nan")


def expected_lengths(lengths: Any) -> FilteredLengthStats | None:
    """Exact filtered length statistics of a LengthSpec, from its registered model (None when the
    model has no closed form, e.g. ``trace``: measure a generated workload instead).

    For ``sharegpt`` and ``lognormal`` the filters are applied on the probability grid, so the
    means are those a generated workload converges to; ``fixed`` is returned as is.
    """
    return LENGTHS.get(lengths.kind).expected(lengths)


def thins_exactly(arrivals: Any) -> bool:
    """Whether keeping each request with probability p draws ``arrivals`` at p times the rates
    (``ArrivalModel.thins_exactly``)."""
    try:
        return bool(ARRIVALS.get(arrivals.kind).thins_exactly)
    except UnknownName:
        return False


def arrival_idc(arrivals: Any, rate_rps: float = 1.0, window_s: float = 60.0) -> float | None:
    """Index of dispersion (variance / mean) of one adapter's counts in ``window_s`` windows, from the
    spec by its registered model (``ArrivalModel.idc``; None for a model without a closed form, e.g.
    traces: measure a generated workload with ``Workload.summary()``)."""
    return ARRIVALS.get(arrivals.kind).idc(arrivals, rate_rps, window_s)
