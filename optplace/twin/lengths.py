"""Request-length models for the twin's workload: ``sharegpt``, ``fixed``, ``lognormal`` (``trace``
lives with the trace reader in ``arrivals``).

Each model is a :class:`LengthModel` registered in :data:`optplace.infra.registry.LENGTHS` under its
spec class's ``kind``: the spec class (pydantic), ``draw`` (what the twin generates) and
``expected`` (the filtered mean lengths planning uses; ``None`` when only a generated workload can
tell, then the planner measures one). A new length model is one file doing the same.

Every model draws (input, output) token pairs and then applies the spec's filters by *rejection*:
a pair with ``input < min_tokens``, ``output < min_tokens``, ``input > max_input_tokens`` or
``input + output > max_total_tokens`` is thrown away and redrawn, exactly as vLLM's ShareGPT
sampler skips such conversations. Nothing is clipped, so the filtered distribution is the
conditional one (no resampling bias). Token counts are ``max(1, rint(x))`` of a continuous draw.

ShareGPT model (no dataset ships; fitted to published figures)
--------------------------------------------------------------
What is known, and where it comes from:

* The reference 1-hour runs (``real_runs.csv`` of the reference measurements, columns
  ``pool_mean_input_tokens`` / ``pool_mean_output_tokens``) sampled request pools with mean
  **223 input / 196 output** tokens (Llama-3.1 tokenizer; medians over runs 222.99 / 196.36; Qwen's
  tokenizer gives 222.8 / 200.0). The benchmark that drew them
  (``benchmarks/lora/benchmark_serving_by_time.py`` in FerranAgulloLopez/GPULLMAdapterOptimization,
  commit bae36e2) keeps the first two turns of each conversation and applies the filters *before*
  sampling, with the served model's tokenizer: these means are **after** the filters.
* The quartiles quoted in the reference README (input p25 23 / mean 250 / p75 423, output p25 27 /
  mean 231 / p75 358) come from the same repository's ``create_dummy_dataset.py`` and its output
  (``definitive_results/create_dummy_datasets_for_performance_analysis/log.log``: input mean 250.94,
  p25 23, p75 423; output mean 231.46, p25 27, p75 359). That script applies the *same* filters
  (both >= 4, prompt <= 1024, prompt + output <= 2048) but tokenizes with **Llama-2**. So those
  quartiles are *also* after the filters (not of the unfiltered pool); the 250.9 -> 223 and
  231.5 -> 196 gaps come from the tokenizer (Llama-3's 128k vocabulary needs ~11 % / ~15 % fewer
  tokens), not from the filters. The same folder has the 30-bin histograms of that filtered pool
  (``prompt_lengths.png``, ``output_lengths.png``, ~83.4k conversations); we digitised their bar
  heights (``_SHAREGPT_HIST_*`` below).

Fit (``fit_sharegpt()``, re-runnable; SciPy least squares on an exact probability grid): per
side a three-component lognormal mixture (very short turns, a middle bump, long turns) for the
*unfiltered* draw, independent sides, the default filters applied exactly. Targets, all in
Llama-3.1 tokens after the filters, assuming the Llama-3.1/Llama-2 token ratio is the same at
every length (223 / 250.94 = 0.889 input, 196 / 231.46 = 0.847 output): the two digitised
histograms with their bin edges scaled by those ratios, the means **223.0 / 196.0** (weighted to
be met within 0.1 %), and the scaled quartiles (input p25 20.4, p75 375.9; output p25 22.9,
p75 304.0). Result (``sharegpt_stats()``): means 223.2 / 196.0, input p25 20.4 / p75 374.2,
output p25 22.9 / p75 304.0; 92.4 % of unfiltered draws pass the default filters. Parameters are
``SHAREGPT_INPUT`` / ``SHAREGPT_OUTPUT`` (weights, medians in tokens, log-scale sigmas).

Input/output correlation: the marginals are drawn independently and filtered, then re-paired to a
Gaussian-copula rank correlation ``io_rank_correlation`` (default −0.44, marginals kept; see
:func:`rank_pair`). Only the marginals are published, but the reference runs fix one joint
statistic: the real engine holds ~350 KV tokens per running request, independent draws ~440 —
long prompts come with short answers. ``optplace.calibration.reference_fit.fit_length_correlation`` fits the
default from that (``docs/notes/fidelity.md``). Non-default filters in the spec change the
conditional distribution the same way they would change a real pool drawn with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from optplace.infra.registry import LENGTHS
from optplace.specs.model import FixedLengths, LengthSpecBase, LognormalLengths, ShareGptLengths, registered_by_kind

__all__ = [
    "WorkloadError",
    "LengthLimits",
    "LognormalMixture",
    "FilteredLengthStats",
    "SHAREGPT_INPUT",
    "SHAREGPT_OUTPUT",
    "SHAREGPT_TARGETS",
    "sharegpt_stats",
    "sharegpt_models",
    "filtered_stats",
    "draw_lengths",
    "fit_sharegpt",
]

# Cap on continuous draws before casting to int; anything this long is rejected by any filter.
_INT_CAP = 2**30


class WorkloadError(ValueError):
    """A workload cannot be generated as specified (bad trace file, impossible filters, ...)."""


@dataclass(frozen=True, slots=True)
class LengthLimits:
    """The spec's length filters (vLLM ShareGPT sampler semantics; pairs violating them are redrawn)."""

    max_input_tokens: int = 1024
    max_total_tokens: int = 2048
    min_tokens: int = 4

    @classmethod
    def from_spec(cls, spec: Any) -> "LengthLimits":
        """Read the three limits from any object carrying them (defaults where absent)."""
        return cls(
            int(getattr(spec, "max_input_tokens", 1024)),
            int(getattr(spec, "max_total_tokens", 2048)),
            int(getattr(spec, "min_tokens", 4)),
        )

    def accepts(self, inp: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Boolean mask of pairs that pass every filter."""
        return (
            (inp >= self.min_tokens)
            & (out >= self.min_tokens)
            & (inp <= self.max_input_tokens)
            & (inp + out <= self.max_total_tokens)
        )

    def check_feasible(self) -> None:
        """Raise when no pair at all can pass."""
        if self.min_tokens > self.max_input_tokens or 2 * self.min_tokens > self.max_total_tokens:
            raise WorkloadError(
                f"length filters admit no request: min_tokens={self.min_tokens}, "
                f"max_input_tokens={self.max_input_tokens}, max_total_tokens={self.max_total_tokens}"
            )


_erf = np.vectorize(math.erf, otypes=[float])


@dataclass(frozen=True, slots=True)
class LognormalMixture:
    """A mixture of lognormal components (``weights`` sum to 1; ``medians`` in tokens)."""

    weights: tuple[float, ...]
    medians: tuple[float, ...]
    sigmas: tuple[float, ...]

    @classmethod
    def from_mean_cv(cls, mean: float, cv: float) -> "LognormalMixture":
        """A single lognormal with the given (unfiltered) mean and coefficient of variation."""
        s2 = math.log1p(cv * cv)
        return cls((1.0,), (mean * math.exp(-s2 / 2),), (math.sqrt(s2),))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` token counts (int64, >= 1) from the unfiltered distribution."""
        z = rng.standard_normal(n)
        if len(self.weights) == 1:
            mu, sig = np.full(n, math.log(self.medians[0])), np.full(n, self.sigmas[0])
        else:
            u = rng.random(n)
            comp = np.zeros(n, np.intp)
            for c in np.cumsum(self.weights)[:-1]:  # few components: compares beat a binary search
                comp += u >= c
            mu = np.log(np.asarray(self.medians))[comp]
            sig = np.asarray(self.sigmas)[comp]
        x = np.exp(np.minimum(mu + sig * z, math.log(_INT_CAP)))
        return np.maximum(np.rint(x), 1).astype(np.int64)

    def scaled(self, factor: float) -> "LognormalMixture":
        """The same shape with every length multiplied by ``factor`` (e.g. another tokenizer)."""
        return LognormalMixture(self.weights, tuple(m * factor for m in self.medians), self.sigmas)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """CDF of the continuous (pre-rounding) draw at ``x > 0``."""
        lx = np.log(np.maximum(x, 1e-300))
        return sum(
            w * 0.5 * (1.0 + _erf((lx - math.log(m)) / (s * math.sqrt(2.0))))
            for w, m, s in zip(self.weights, self.medians, self.sigmas)
        )

    def pmf(self, kmax: int) -> np.ndarray:
        """``p[k] = P(tokens == k)`` for ``k = 0..kmax`` (``p[0] = 0``; mass above kmax omitted)."""
        c = self.cdf(np.arange(kmax + 1, dtype=float) + 0.5)
        p = np.empty(kmax + 1)
        p[0] = 0.0
        p[1] = c[1]  # rint(x) <= 1 -> 1
        p[2:] = np.diff(c[1:])
        return p


# Fitted by fit_sharegpt(); see the module docstring for data, targets and sources.
SHAREGPT_INPUT = LognormalMixture(
    weights=(0.448553, 0.058645, 0.492802),
    medians=(19.357868, 89.803557, 433.13778),
    sigmas=(0.783599, 0.348599, 0.687547),
)
SHAREGPT_OUTPUT = LognormalMixture(
    weights=(0.235326, 0.254039, 0.510635),
    medians=(4.942968, 48.070511, 296.490489),
    sigmas=(0.24196, 0.589496, 0.566652),
)

_L2_MEAN_IN, _L2_MEAN_OUT = 250.94, 231.46  # create_dummy_dataset.py log.log (Llama-2 tokens, filtered)
_RATIO_IN, _RATIO_OUT = 223.0 / _L2_MEAN_IN, 196.0 / _L2_MEAN_OUT

#: (mean, p25, p75) per side, Llama-3.1 tokens, after the default filters — the fit's targets.
SHAREGPT_TARGETS = {
    "input": (223.0, 23 * _RATIO_IN, 423 * _RATIO_IN),
    "output": (196.0, 27 * _RATIO_OUT, 359 * _RATIO_OUT),
}

# Fractions of the filtered Llama-2 pool in 30 equal bins, digitised from the bar heights of
# prompt_lengths.png (edges 4..1024) and output_lengths.png (edges 4..2011, read off its x ticks) in
# FerranAgulloLopez/GPULLMAdapterOptimization@bae36e2, create_dummy_datasets_for_performance_analysis/.
# One pixel is ~80 conversations, so bins under ~0.1 % read as 0 or 0.106 %.
_SHAREGPT_HIST_IN = (
    0.34721,
    0.09272,
    0.0492,
    0.03311,
    0.02744,
    0.0246,
    0.0246,
    0.02554,
    0.02649,
    0.02744,
    0.03027,
    0.02933,
    0.02744,
    0.02365,
    0.02176,
    0.01798,
    0.01608,
    0.01608,
    0.01514,
    0.01419,
    0.0123,
    0.01135,
    0.0123,
    0.01135,
    0.01041,
    0.01041,
    0.01135,
    0.01135,
    0.01041,
    0.00851,
)
_SHAREGPT_HIST_OUT = (
    0.38754,
    0.0982,
    0.07709,
    0.0792,
    0.08131,
    0.06969,
    0.05174,
    0.0359,
    0.0264,
    0.01901,
    0.01478,
    0.01478,
    0.01162,
    0.01162,
    0.01056,
    0.00422,
    0.00106,
    0.00106,
    0.00106,
    0.00106,
    0.0,
    0.00106,
    0.00106,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
)
_HIST_EDGES_IN = (4.0, 1024.0)
_HIST_EDGES_OUT = (4.0, 2011.0)


@dataclass(frozen=True, slots=True)
class FilteredLengthStats:
    """Exact statistics of a length model after the filters (from its probability grid)."""

    mean_input_tokens: float
    mean_output_tokens: float
    p25_input_tokens: float
    p75_input_tokens: float
    p25_output_tokens: float
    p75_output_tokens: float
    acceptance: float  # fraction of unfiltered draws that pass the filters


def _quantile(p: np.ndarray, q: float) -> float:
    # Interpolated on the CDF so the fit sees a smooth target.
    c = np.cumsum(p)
    return float(np.interp(q, c, np.arange(len(p), dtype=float)))


def filtered_stats(
    inp: LognormalMixture, out: LognormalMixture, limits: LengthLimits = LengthLimits()
) -> FilteredLengthStats:
    """Means, quartiles and acceptance of independent ``inp`` x ``out`` draws under ``limits``."""
    wi, wo, z = _filtered_pmfs(inp, out, limits)
    k = np.arange(len(wi))
    return FilteredLengthStats(
        float((k * wi).sum()),
        float((k * wo).sum()),
        _quantile(wi, 0.25),
        _quantile(wi, 0.75),
        _quantile(wo, 0.25),
        _quantile(wo, 0.75),
        z,
    )


def sharegpt_stats(
    limits: LengthLimits = LengthLimits(),
    mean_input_tokens: float | None = None,
    mean_output_tokens: float | None = None,
) -> FilteredLengthStats:
    """Exact filtered statistics of the ``sharegpt`` model (means 223.2 / 196.0 with default limits)."""
    return filtered_stats(*sharegpt_models(limits, mean_input_tokens, mean_output_tokens), limits)


@lru_cache(maxsize=64)
def sharegpt_models(
    limits: LengthLimits = LengthLimits(),
    mean_input_tokens: float | None = None,
    mean_output_tokens: float | None = None,
) -> tuple[LognormalMixture, LognormalMixture]:
    """The ShareGPT (input, output) models, optionally rescaled to other filtered means.

    Without targets: the shipped fit (its filtered means move with non-default ``limits``, as a real
    pool's would). With ``mean_*_tokens``: every length is scaled by one factor per side (a
    tokenizer change, e.g. Qwen2.5's pools average 200 output tokens) so that the means *after*
    ``limits`` hit the targets.
    """
    mi, mo = SHAREGPT_INPUT, SHAREGPT_OUTPUT
    if mean_input_tokens is None and mean_output_tokens is None:
        return mi, mo
    fi = fo = 1.0
    for _ in range(60):
        try:
            st = filtered_stats(mi.scaled(fi), mo.scaled(fo), limits)
        except WorkloadError:
            break
        ri = 1.0 if mean_input_tokens is None else mean_input_tokens / st.mean_input_tokens
        ro = 1.0 if mean_output_tokens is None else mean_output_tokens / st.mean_output_tokens
        if abs(ri - 1) < 1e-7 and abs(ro - 1) < 1e-7:
            return mi.scaled(fi), mo.scaled(fo)
        fi, fo = fi * ri, fo * ro
    raise WorkloadError(
        f"sharegpt: means {mean_input_tokens} / {mean_output_tokens} are not reachable under the filters {limits}"
    )


def _filtered_pmfs(
    inp: LognormalMixture, out: LognormalMixture, limits: LengthLimits
) -> tuple[np.ndarray, np.ndarray, float]:
    """Marginal pmfs of input and output after the filters, and the acceptance probability."""
    limits.check_feasible()
    kmax = limits.max_total_tokens
    pi, po = inp.pmf(kmax), out.pmf(kmax)
    k = np.arange(kmax + 1)
    cpi, cpo = np.cumsum(pi), np.cumsum(po)
    lo = limits.min_tokens

    def mass_between(c: np.ndarray, hi: np.ndarray) -> np.ndarray:
        # P(lo <= X <= hi) from the cumulative array c (c[j] = P(X <= j)).
        return np.where(hi >= lo, c[np.clip(hi, 0, kmax)] - c[lo - 1], 0.0)

    wi = pi * mass_between(cpo, kmax - k) * ((k >= lo) & (k <= limits.max_input_tokens))
    wo = po * mass_between(cpi, np.minimum(limits.max_input_tokens, kmax - k)) * (k >= lo)
    z = float(wi.sum())
    if z <= 0:
        raise WorkloadError("length filters reject every request of this length model")
    return wi / z, wo / wo.sum(), z


def _binned(w: np.ndarray, lo: float, hi: float, nbins: int) -> np.ndarray:
    # Mass of the integer pmf w in nbins equal bins over [lo, hi] (CDF interpolated at the edges).
    c = np.concatenate([[0.0], np.cumsum(w)])
    return np.diff(np.interp(np.linspace(lo, hi, nbins + 1), np.arange(len(c)) - 0.5, c))


def fit_sharegpt(limits: LengthLimits = LengthLimits()) -> tuple[LognormalMixture, LognormalMixture]:
    """Re-derive ``SHAREGPT_INPUT`` / ``SHAREGPT_OUTPUT`` (needs SciPy, a scikit-learn dependency).

    Least squares over: the digitised histograms with edges scaled by the token ratios (chi-like
    weights), the means (weight 20 on the log ratio) and the quartiles (weight 3), all after
    ``limits``. Starts from the shipped parameters, so it converges in a few seconds.
    """
    from scipy import optimize, special  # lazy: only for re-fitting

    def unpack(x: np.ndarray) -> tuple[LognormalMixture, LognormalMixture]:
        def side(y: np.ndarray) -> LognormalMixture:
            w = special.softmax(np.concatenate([[0.0], y[0:2]]))
            return LognormalMixture(
                tuple(map(float, w)), tuple(map(float, np.exp(y[2:5]))), tuple(map(float, np.exp(y[5:8])))
            )

        return side(x[:8]), side(x[8:])

    def pack(m: LognormalMixture) -> list[float]:
        w = np.asarray(m.weights)
        return [*np.log(w[1:] / w[0]), *np.log(m.medians), *np.log(m.sigmas)]

    hin, hout = np.asarray(_SHAREGPT_HIST_IN), np.asarray(_SHAREGPT_HIST_OUT)
    (mi, i25, i75), (mo, o25, o75) = SHAREGPT_TARGETS["input"], SHAREGPT_TARGETS["output"]

    def residuals(x: np.ndarray) -> np.ndarray:
        a, b = unpack(x)
        wi, wo, _ = _filtered_pmfs(a, b, limits)
        k = np.arange(len(wi))
        bi = _binned(wi, _HIST_EDGES_IN[0] * _RATIO_IN, _HIST_EDGES_IN[1] * _RATIO_IN, 30)
        bo = _binned(wo, _HIST_EDGES_OUT[0] * _RATIO_OUT, _HIST_EDGES_OUT[1] * _RATIO_OUT, 30)
        return np.concatenate(
            [
                3 * (bi - hin) / np.sqrt(hin + 0.002),
                3 * (bo - hout) / np.sqrt(hout + 0.002),
                [
                    20 * math.log((k * wi).sum() / mi),
                    3 * math.log(_quantile(wi, 0.25) / i25),
                    3 * math.log(_quantile(wi, 0.75) / i75),
                    20 * math.log((k * wo).sum() / mo),
                    3 * math.log(_quantile(wo, 0.25) / o25),
                    3 * math.log(_quantile(wo, 0.75) / o75),
                ],
            ]
        )

    r = optimize.least_squares(residuals, np.array(pack(SHAREGPT_INPUT) + pack(SHAREGPT_OUTPUT)))
    return unpack(r.x)


def _rejection(
    draw: Any, n: int, rng: np.random.Generator, limits: LengthLimits, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs from ``draw(m, rng) -> (inp, out)`` conditioned on ``limits`` (redraw rejects)."""
    limits.check_feasible()
    inp = np.empty(n, np.int32)
    out = np.empty(n, np.int32)
    filled, drawn, accepted = 0, 0, 0
    while filled < n:
        need = n - filled
        rate = accepted / drawn if drawn else 1.0
        # Oversample by the running acceptance rate so one or two rounds usually suffice.
        m = int(min(need / max(rate, 1e-3) * 1.05 + 64, 20_000_000))
        a, b = draw(m, rng)
        ok = np.flatnonzero(limits.accepts(a, b))
        drawn += m
        accepted += len(ok)
        take = ok[:need]
        inp[filled : filled + len(take)] = a[take]
        out[filled : filled + len(take)] = b[take]
        filled += len(take)
        if drawn >= 100_000 and accepted < drawn * 1e-4:
            raise WorkloadError(f"{what}: fewer than 1 in 10,000 draws pass the length filters {limits}")
    return inp, out


def _opt_float(spec: Any, name: str) -> float | None:
    v = getattr(spec, name, None)
    return None if v is None else float(v)


def _ranks(z: np.ndarray) -> np.ndarray:
    """Each value's rank in ``z`` (0 = smallest): the inverse of the sorting permutation, which is exactly
    ``argsort(argsort(z))`` at the cost of one sort instead of two (the second sort was half of drawing a
    workload's lengths)."""
    order = np.argsort(z)
    ranks = np.empty_like(order)
    ranks[order] = np.arange(order.size)
    return ranks


def rank_pair(
    inp: np.ndarray, out: np.ndarray, rho: float, rng: np.random.Generator, max_total: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Re-pair (input, output) draws so their ranks follow a Gaussian copula with correlation ``rho``.

    Marginals are kept exactly (the sorted values are reassigned); a pair that would exceed
    ``max_total`` tokens keeps its input and has its output cut to fit (rare at rho < 0).
    """
    n = inp.size
    z1 = rng.standard_normal(n)
    z2 = rho * z1 + math.sqrt(1.0 - rho * rho) * rng.standard_normal(n)
    i2 = np.sort(inp)[_ranks(z1)]
    o2 = np.sort(out)[_ranks(z2)]
    o2 = np.minimum(o2, max_total - i2)
    return i2.astype(inp.dtype), o2.astype(out.dtype)


def draw_lengths(
    spec: Any, n: int, rng: np.random.Generator, base_dir: Path | str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` filtered (input_tokens, output_tokens) int32 pairs for a LengthSpec-like ``spec`` (by the
    length model registered as ``spec.kind``; file paths resolve against ``base_dir``)."""
    if n == 0:
        return np.empty(0, np.int32), np.empty(0, np.int32)
    return LENGTHS.get(spec.kind).draw(spec, n, rng, base_dir)


class LengthModel:
    """A length model: its spec class, what the twin draws, and the mean lengths planning uses."""

    spec: ClassVar[type[LengthSpecBase]]

    def draw(
        self, spec: Any, n: int, rng: np.random.Generator, base_dir: Path | str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n >= 1`` filtered (input, output) int32 pairs."""
        raise NotImplementedError

    def expected(self, spec: Any) -> FilteredLengthStats | None:
        """Exact filtered statistics, or None when only a generated workload can tell (traces)."""
        return None


#: Class decorator: register one instance of a :class:`LengthModel` under its spec class's ``kind``.
length_model = registered_by_kind(LENGTHS)


@length_model
class FixedLengthModel(LengthModel):
    """Every request has the same prompt and output length."""

    spec = FixedLengths

    def draw(self, spec, n, rng, base_dir):
        limits = LengthLimits.from_spec(spec)
        i, o = int(spec.input_tokens), int(spec.output_tokens)
        if not limits.accepts(np.array([i]), np.array([o]))[0]:
            raise WorkloadError(f"fixed lengths input_tokens={i}, output_tokens={o} violate the filters {limits}")
        return np.full(n, i, np.int32), np.full(n, o, np.int32)

    def expected(self, spec):
        i, o = float(spec.input_tokens), float(spec.output_tokens)
        return FilteredLengthStats(i, o, i, i, o, o, 1.0)


class _MixtureModel(LengthModel):
    """Lognormal-mixture sides drawn independently, filtered by rejection, and (``copula``) re-paired
    to the spec's ``io_rank_correlation``."""

    copula: ClassVar[bool] = False

    def sides(self, spec: Any, limits: LengthLimits) -> tuple[LognormalMixture, LognormalMixture]:
        raise NotImplementedError

    def draw(self, spec, n, rng, base_dir):
        limits = LengthLimits.from_spec(spec)
        mi, mo = self.sides(spec, limits)
        inp, out = _rejection(lambda m, g: (mi.sample(m, g), mo.sample(m, g)), n, rng, limits, f"{spec.kind} lengths")
        rho = _opt_float(spec, "io_rank_correlation") if self.copula else None
        if rho:
            inp, out = rank_pair(inp, out, rho, rng, limits.max_total_tokens)
        return inp, out


@length_model
class ShareGptLengthModel(_MixtureModel):
    """The fitted ShareGPT mixture (see the module docstring), optionally rescaled to given means."""

    spec = ShareGptLengths
    copula = True

    def sides(self, spec, limits):
        return sharegpt_models(limits, _opt_float(spec, "mean_input_tokens"), _opt_float(spec, "mean_output_tokens"))

    def expected(self, spec):
        return sharegpt_stats(
            LengthLimits.from_spec(spec), _opt_float(spec, "mean_input_tokens"), _opt_float(spec, "mean_output_tokens")
        )


@length_model
class LognormalLengthModel(_MixtureModel):
    """One lognormal per side with the given means and CVs (independent sides)."""

    spec = LognormalLengths

    def sides(self, spec, limits):
        return (
            LognormalMixture.from_mean_cv(float(spec.mean_input_tokens), float(spec.cv_input)),
            LognormalMixture.from_mean_cv(float(spec.mean_output_tokens), float(spec.cv_output)),
        )

    def expected(self, spec):
        mi, mo = self.sides(spec, LengthLimits.from_spec(spec))
        return filtered_stats(mi, mo, LengthLimits.from_spec(spec))
