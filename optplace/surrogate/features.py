"""Feature schema of the per-GPU capacity surrogates, shared by training, prediction and the MILP.

One ordered tuple of names (:data:`FEATURE_NAMES`, version :data:`SCHEMA_VERSION`) and one function
that builds the row (:func:`feature_row`).  Changing a feature's meaning or order bumps the version;
models record the version and names they were trained with and refuse a mismatch.

Why these features (beyond the published set: rate sum/std, rank max/mean/std, slots, adapters):
* ``mean_input_tokens`` / ``mean_output_tokens`` / ``offered_tok_s``: the load in tokens, which is
  what the GPU actually processes — the published models ignore lengths (their main limitation).
* ``decode_tok_s``: decode tokens set how many engine steps a request spends in the batch.
* ``arrival_cv`` / ``burst_factor``: burstiness (their other stated limitation).
* ``slots_frac`` and ``rate_top_slots_frac``: with fewer slots than adapters, sticky slots decide
  whether the hottest adapters can keep the load (the share of traffic the top ``max_loras``
  adapters carry).
* ``n_rank*``: rank counts; rank sets the LoRA kernel cost and, through ``max_lora_rank``,
  the KV memory left.

Schema 2 adds a log2 histogram of the per-adapter rates (:data:`HIST_NAMES`: adapter count and rate
sum per octave) to the row.  The trees do not split on it: it carries enough of the rate
distribution for :mod:`optplace.surrogate.physics` to compute profile-aware *derived* features
(:data:`DERIVED_NAMES`: fluid-model load, expected active adapters per slot, adapters that hold a
sticky slot for the whole window) from the row alone, so the solver, the MILP tables and training
all build rows with the one function :func:`feature_row_from_parts` and need no profile for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from optplace.surrogate.config import GpuCase

SCHEMA_VERSION = 2

RANK_BUCKETS: tuple[int, ...] = (8, 16, 32, 64)
_BUCKETS = np.asarray(RANK_BUCKETS, dtype=np.float64)

#: The schema-1 features: what the trees may split on directly (besides :data:`DERIVED_NAMES`).
BASE_NAMES: tuple[str, ...] = (
    "n_adapters",
    "max_loras",
    "slots_frac",
    "rate_sum",
    "rate_max",
    "rate_std",
    "rate_top_slots_frac",
    "rank_max",
    "rank_mean",
    "n_rank8",
    "n_rank16",
    "n_rank32",
    "n_rank64",
    "mean_input_tokens",
    "mean_output_tokens",
    "arrival_cv",
    "burst_factor",
    "offered_tok_s",
    "decode_tok_s",
)


#: octaves of the per-adapter rate histogram: bin b holds rates in [2^(b+HIST_LO), 2^(b+HIST_LO+1)) req/s,
#: the first and last bins open-ended (2^-17 ≈ 7.6e-6 to 2^9 = 512 req/s covers every sweep and scenario)
HIST_LO, HIST_BINS = -17, 27
HIST_COUNT_NAMES: tuple[str, ...] = tuple(f"hist_n{b:02d}" for b in range(HIST_BINS))
HIST_SUM_NAMES: tuple[str, ...] = tuple(f"hist_rate{b:02d}" for b in range(HIST_BINS))
HIST_NAMES: tuple[str, ...] = HIST_COUNT_NAMES + HIST_SUM_NAMES

FEATURE_NAMES = BASE_NAMES + HIST_NAMES
"""The row :func:`feature_row_from_parts` builds (and sweep CSVs store), in this order."""

#: Features computed from a row and the profile by :mod:`optplace.surrogate.physics`; they follow the
#: row (an *augmented* row is ``row + derived``).
DERIVED_NAMES: tuple[str, ...] = (
    "rho_fluid",  # offered req/s ÷ the fluid model's capacity (the analytic oracle's λ*)
    "active_per_slot",  # expected busy adapters Σ(1 − e^(−rᵢT)) ÷ max_loras (T: one request's service time)
    "active_frac",  # the same ÷ adapters
    "persistent_per_slot",  # adapters whose mean busy period (e^(rT) − 1)/r outlasts the window, ÷ max_loras
    "persistent_share",  # their share of the offered requests
)
ALL_NAMES: tuple[str, ...] = FEATURE_NAMES + DERIVED_NAMES
#: Features proportional to the rates when every rate is scaled by one factor (the histogram's counts
#: move between octaves instead: :func:`scaled_rows` recomputes them).
RATE_SCALED_NAMES: tuple[str, ...] = (
    "rate_sum",
    "rate_max",
    "rate_std",
    "offered_tok_s",
    "decode_tok_s",
    *HIST_SUM_NAMES,
)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(ALL_NAMES)}
_SCALED = [FEATURE_INDEX[n] for n in RATE_SCALED_NAMES]

#: The ratios, spread and top-k features of :data:`BASE_NAMES`: not linear in the placement.
NONLINEAR_FEATURES: tuple[str, ...] = ("slots_frac", "rate_std", "rate_top_slots_frac", "rank_mean")
#: Features that are linear (or fixed) in a placement's per-adapter decisions for a given slot
#: count, hence directly expressible in a MILP.
LINEAR_FEATURES: tuple[str, ...] = tuple(n for n in BASE_NAMES if n not in NONLINEAR_FEATURES)


class MixFeatures:
    """One GPU's adapters (rates, ranks) and lengths as feature rows at any slot count: every feature
    but the three that depend on ``max_loras`` is computed once. A solver asks the same mix at many
    slot counts (best slots: ~30 candidates); building each row from scratch was most of its time."""

    __slots__ = ("_rates", "_n", "_rate_sum", "_base")

    def __init__(
        self,
        rates_rps: Sequence[float] | np.ndarray,
        ranks: Sequence[int],
        mean_input_tokens: float,
        mean_output_tokens: float,
        arrival_cv: float = 1.0,
        burst_factor: float = 1.0,
    ) -> None:
        rates = np.asarray(rates_rps, dtype=np.float64)
        rk = np.asarray(ranks, dtype=np.float64)
        n = rates.size
        if n == 0 or rk.size != n:
            raise ValueError(f"need one rank per rate and at least one adapter (got {n} rates, {rk.size} ranks)")
        rate_sum = float(rates.sum())
        buckets = np.minimum(np.searchsorted(_BUCKETS, rk), len(RANK_BUCKETS) - 1)
        counts = np.bincount(buckets, minlength=len(RANK_BUCKETS)).tolist()
        tokens = mean_input_tokens + mean_output_tokens
        hb = hist_bins(rates)
        self._rates, self._n, self._rate_sum = rates, n, rate_sum
        self._base = np.array(
            [
                n,
                0.0,  # max_loras  (set by row())
                0.0,  # slots_frac
                rate_sum,
                float(rates.max()),
                float(rates.std()),
                0.0,  # rate_top_slots_frac
                float(rk.max()),
                float(rk.mean()),
                *counts,
                mean_input_tokens,
                mean_output_tokens,
                arrival_cv,
                burst_factor,
                rate_sum * tokens,
                rate_sum * mean_output_tokens,
                *np.bincount(hb, minlength=HIST_BINS).tolist(),
                *np.bincount(hb, weights=rates, minlength=HIST_BINS).tolist(),
            ],
            dtype=np.float64,
        )

    def row(self, max_loras: int) -> np.ndarray:
        """The feature row (float64, ordered as :data:`FEATURE_NAMES`) at ``max_loras`` slots."""
        n, rate_sum = self._n, self._rate_sum
        k = min(int(max_loras), n)
        # partition: the k largest rates without a full sort
        top = float(np.partition(self._rates, n - k)[n - k :].sum()) if k < n else rate_sum
        out = self._base.copy()
        out[1] = max_loras
        out[2] = max_loras / n
        out[6] = top / rate_sum if rate_sum > 0 else 1.0
        return out


def feature_row_from_parts(
    rates_rps: Sequence[float] | np.ndarray,
    ranks: Sequence[int],
    max_loras: int,
    mean_input_tokens: float,
    mean_output_tokens: float,
    arrival_cv: float = 1.0,
    burst_factor: float = 1.0,
) -> np.ndarray:
    """Build the feature row (float64, ordered as :data:`FEATURE_NAMES`) from raw per-GPU facts.

    Ranks above 64 count in ``n_rank64`` (the largest bucket); ranks between buckets count in the
    next larger one. Rows of one mix at several slot counts: :class:`MixFeatures`.
    """
    return MixFeatures(rates_rps, ranks, mean_input_tokens, mean_output_tokens, arrival_cv, burst_factor).row(max_loras)


def scaled_rows(
    row: np.ndarray, rates_rps: Sequence[float] | np.ndarray, scales: Sequence[float] | np.ndarray
) -> np.ndarray:
    """The rows of one GPU with every rate multiplied by each of ``scales`` (one row per scale), from
    its row at ``rates_rps`` (:func:`feature_row_from_parts`): equal to building each row from the
    scaled rates, at a fraction of the cost."""
    rates = np.asarray(rates_rps, dtype=np.float64)
    x = np.asarray(scales, dtype=np.float64)
    out = np.repeat(np.asarray(row, dtype=np.float64)[None, :], x.size, axis=0)
    out[:, _SCALED] *= x[:, None]
    c0, s0 = FEATURE_INDEX[HIST_COUNT_NAMES[0]], FEATURE_INDEX[HIST_SUM_NAMES[0]]
    r = np.outer(x, rates)
    # one bincount over all rows: row i's bins offset by i·HIST_BINS
    cell = (hist_bins(r) + HIST_BINS * np.arange(x.size)[:, None]).ravel()
    size = HIST_BINS * x.size
    out[:, c0 : c0 + HIST_BINS] = np.bincount(cell, minlength=size).reshape(x.size, HIST_BINS)
    out[:, s0 : s0 + HIST_BINS] = np.bincount(cell, weights=r.ravel(), minlength=size).reshape(x.size, HIST_BINS)
    return out


def hist_bins(rates: np.ndarray) -> np.ndarray:
    """Histogram bin of each rate (octaves from 2^HIST_LO; zero rates in the first bin)."""
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.maximum(rates, 1e-300))).astype(np.int64) - HIST_LO
    return np.clip(e, 0, HIST_BINS - 1)


def feature_row(config: GpuCase) -> np.ndarray:
    """The feature row of one GPU configuration."""
    mi, mo = config.lengths.means()
    a = config.arrivals
    cv = a.cv if a.kind == "gamma" else 1.0
    bf = a.burst_factor if a.kind == "mmpp" else 1.0
    return feature_row_from_parts(config.rates_rps, config.ranks, config.max_loras, mi, mo, cv, bf)


def check_schema(names: Sequence[str], version: int) -> None:
    """Raise ValueError when a stored model/dataset's schema is not compatible with this one
    (schema-1 datasets are upgraded on load by :func:`optplace.surrogate.dataset.load_dataset`)."""
    if version != SCHEMA_VERSION:
        raise ValueError(f"feature schema version {version} != supported {SCHEMA_VERSION}")
    unknown = [n for n in names if n not in FEATURE_INDEX]
    if unknown:
        raise ValueError(f"unknown feature names {unknown}; known: {list(FEATURE_NAMES)}")
