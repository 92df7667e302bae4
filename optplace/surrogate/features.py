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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from optplace.surrogate.config import GpuConfig

SCHEMA_VERSION = 1

RANK_BUCKETS: tuple[int, ...] = (8, 16, 32, 64)
_BUCKETS = np.asarray(RANK_BUCKETS, dtype=np.float64)

FEATURE_NAMES: tuple[str, ...] = (
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

FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}

#: Features that are linear (or fixed) in a placement's per-adapter decisions for a given slot
#: count, hence directly expressible in a MILP; the others are nonlinear (ratios, std, top-k).
LINEAR_FEATURES: tuple[str, ...] = (
    "n_adapters",
    "max_loras",
    "rate_sum",
    "rate_max",
    "rank_max",
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


def feature_row_from_parts(
    rates_rps: Sequence[float],
    ranks: Sequence[int],
    max_loras: int,
    mean_input_tokens: float,
    mean_output_tokens: float,
    arrival_cv: float = 1.0,
    burst_factor: float = 1.0,
) -> np.ndarray:
    """Build the feature row (float64, ordered as :data:`FEATURE_NAMES`) from raw per-GPU facts.

    Ranks above 64 count in ``n_rank64`` (the largest bucket); ranks between buckets count in the
    next larger one.
    """
    rates = np.asarray(rates_rps, dtype=np.float64)
    rk = np.asarray(ranks, dtype=np.float64)
    n = rates.size
    if n == 0 or rk.size != n:
        raise ValueError(f"need one rank per rate and at least one adapter (got {n} rates, {rk.size} ranks)")
    rate_sum = float(rates.sum())
    k = min(int(max_loras), n)
    # partition: the k largest rates without a full sort
    top = float(np.partition(rates, n - k)[n - k :].sum()) if k < n else rate_sum
    buckets = np.minimum(np.searchsorted(_BUCKETS, rk), len(RANK_BUCKETS) - 1)
    counts = np.bincount(buckets, minlength=len(RANK_BUCKETS)).tolist()
    tokens = mean_input_tokens + mean_output_tokens
    return np.array(
        [
            n,
            max_loras,
            max_loras / n,
            rate_sum,
            float(rates.max()),
            float(rates.std()),
            top / rate_sum if rate_sum > 0 else 1.0,
            float(rk.max()),
            float(rk.mean()),
            *counts,
            mean_input_tokens,
            mean_output_tokens,
            arrival_cv,
            burst_factor,
            rate_sum * tokens,
            rate_sum * mean_output_tokens,
        ],
        dtype=np.float64,
    )


def feature_row(config: GpuConfig) -> np.ndarray:
    """The feature row of one GPU configuration."""
    mi, mo = config.lengths.means()
    a = config.arrivals
    cv = a.cv if a.kind == "gamma" else 1.0
    bf = a.burst_factor if a.kind == "mmpp" else 1.0
    return feature_row_from_parts(config.rates_rps, config.ranks, config.max_loras, mi, mo, cv, bf)


def feature_matrix(configs: Sequence[GpuConfig]) -> np.ndarray:
    """Stack the feature rows of many configurations into an (n, n_features) array."""
    if not configs:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.vstack([feature_row(c) for c in configs])


def check_schema(names: Sequence[str], version: int) -> None:
    """Raise ValueError when a stored model/dataset's schema is not compatible with this one."""
    if version != SCHEMA_VERSION:
        raise ValueError(f"feature schema version {version} != supported {SCHEMA_VERSION}")
    unknown = [n for n in names if n not in FEATURE_INDEX]
    if unknown:
        raise ValueError(f"unknown feature names {unknown}; known: {list(FEATURE_NAMES)}")
