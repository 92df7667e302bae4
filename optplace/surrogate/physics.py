"""Profile-aware derived features of a feature row (:data:`~optplace.surrogate.features.DERIVED_NAMES`).

Trees learn a GPU's capacity from a few thousand twin rows; they learn it much faster when handed
the quantities the engine's behaviour turns on, computed from the profile's own step-time model:

* ``rho_fluid`` — offered requests/s over the fluid-model capacity λ* of :mod:`optplace.twin.fluid` (the
  model behind the solver's analytic oracle; same formula: ``h = a0/(1 − λ(aN·O + aP·I))`` under the token
  budget, ``max_num_seqs`` and KV limits, step model bound to ``max_lora_rank`` and ``max_loras``,
  ``d = min(max_loras, adapters)`` distinct adapters per step).
* ``active_per_slot`` / ``active_frac`` — expected adapters with a request in flight,
  Σ 1 − exp(−rᵢ·T) with T one request's service time at low load, per slot and per adapter.
* ``persistent_per_slot`` / ``persistent_share`` — adapters whose mean busy period
  (e^(rT) − 1)/r (M/G/∞) outlasts the one-hour window, per slot, and their share of the requests.
  Slots are sticky (an adapter keeps its slot while it has requests running), so once such
  adapters hold every slot the others are served no more; this is what decides the delivered
  fraction of a saturated GPU with fewer slots than adapters (the sweep rows' largest errors).

The per-adapter sums use the row's rate histogram (adapters per octave and their rate sum), so
they need no more than the row.  Capacity and service time are memoised per
(max rank, distinct, slots, input, output tokens).  Training and prediction share this code, so a
model always sees the features it was trained on.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from optplace.surrogate.features import (
    FEATURE_INDEX,
    HIST_BINS,
    HIST_COUNT_NAMES,
    HIST_SUM_NAMES,
)

#: Window the persistence test compares busy periods with: the sweeps' (and the study's) one hour.
WINDOW_S = 3600.0
_N, _L, _RMAX, _I, _O, _RSUM = (
    FEATURE_INDEX[k]
    for k in ("n_adapters", "max_loras", "rank_max", "mean_input_tokens", "mean_output_tokens", "rate_sum")
)
_HC0 = FEATURE_INDEX[HIST_COUNT_NAMES[0]]
_HS0 = FEATURE_INDEX[HIST_SUM_NAMES[0]]
_LOG_WINDOW = math.log(WINDOW_S)


class Physics:
    """Derived features for one profile (bundled name or JSON path)."""

    def __init__(
        self,
        profile: Any,
        gpu_memory_utilization: float = 0.9,
        max_num_batched_tokens: int = 2048,
        max_num_seqs: int = 2048,
    ) -> None:
        from optplace.twin.steptime import SchedulerOverhead, StepTimeModel

        self.profile = profile
        self.util = gpu_memory_utilization
        self.budget = max_num_batched_tokens
        self.max_seqs = max_num_seqs
        self._step = StepTimeModel.from_params(profile.step_time)
        self._ovh = SchedulerOverhead.from_params(profile.scheduler_overhead)
        self._memo: dict[tuple[float, ...], tuple[float, float]] = {}

    def fluid(
        self, rank_max: float, distinct: float, slots: float, mean_in: float, mean_out: float
    ) -> tuple[float, float]:
        """(capacity λ* in requests/s, one request's service time T in s) of the fluid model."""
        key = (rank_max, distinct, slots, mean_in, mean_out)
        v = self._memo.get(key)
        if v is None:
            v = self._memo[key] = self._fluid(int(rank_max), int(distinct), int(slots), float(mean_in), float(mean_out))
        return v

    def _fluid(self, rank_max: int, distinct: int, slots: int, I: float, O: float) -> tuple[float, float]:
        from optplace.twin.fluid import fluid_constants

        kv = self.profile.kv_cache_tokens(slots, rank_max, self.util)
        _, _, lam, service = fluid_constants(
            self._step.bind(rank_max, slots), self._ovh, rank_max, distinct, slots, I, O, kv, self.budget, self.max_seqs
        )
        return lam, service

    def derive_row(self, row: list[float]) -> list[float]:
        """The derived features of one row (a list in FEATURE_NAMES order), in DERIVED_NAMES order."""
        n, L = row[_N], row[_L]
        lam, T = self.fluid(row[_RMAX], min(n, L), L, row[_I], row[_O])
        R = row[_RSUM]
        act = pers = pers_r = 0.0
        for b in range(HIST_BINS):
            c = row[_HC0 + b]
            if c > 0.0:
                s = row[_HS0 + b]
                x = s / c * T  # mean rate of the octave × T
                act += c * -math.expm1(-x)
                # busy period (e^x − 1)/r ≥ window  ⇔  log(e^x − 1) − log r ≥ log window
                if x > 0.0 and (x if x > 30.0 else math.log(math.expm1(x))) - math.log(s / c) >= _LOG_WINDOW:
                    pers += c
                    pers_r += s
        return [R / lam if lam > 0 else 1e3, act / L, act / n, pers / L, pers_r / R if R > 0 else 0.0]

    def derive_many(self, X: np.ndarray) -> np.ndarray:
        """Derived features of many rows, shape (n, len(DERIVED_NAMES))."""
        X = np.asarray(X, dtype=np.float64)
        m = X.shape[0]
        n, L, R = X[:, _N], X[:, _L], X[:, _RSUM]
        keys = np.column_stack([X[:, _RMAX], np.minimum(n, L), L, X[:, _I], X[:, _O]])
        uniq, inv = _unique_rows(keys)
        vals = np.array([self.fluid(*map(float, k)) for k in uniq]).reshape(-1, 2)
        lam, T = vals[inv, 0], vals[inv, 1]
        # only the occupied octaves (a few per row) enter the sums
        C = X[:, _HC0 : _HC0 + HIST_BINS]
        row, col = np.nonzero(C > 0)
        c = C[row, col]
        r = X[:, _HS0 : _HS0 + HIST_BINS][row, col] / c
        x = r * T[row]
        act = np.bincount(row, weights=c * -np.expm1(-x), minlength=m)
        with np.errstate(divide="ignore", invalid="ignore"):
            logbusy = np.where(x > 30.0, x, np.log(np.expm1(np.minimum(x, 30.0)))) - np.log(r)
        pers_mask = (x > 0) & (logbusy >= _LOG_WINDOW)
        pers = np.bincount(row, weights=np.where(pers_mask, c, 0.0), minlength=m)
        pers_r = np.bincount(row, weights=np.where(pers_mask, c * r, 0.0), minlength=m)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.column_stack(
                [
                    np.where(lam > 0, R / np.where(lam > 0, lam, 1.0), 1e3),
                    act / L,
                    act / n,
                    pers / L,
                    np.where(R > 0, pers_r / np.where(R > 0, R, 1.0), 0.0),
                ]
            )

    def augment_many(self, X: np.ndarray) -> np.ndarray:
        """Rows followed by their derived features (the layout the trees index)."""
        return np.hstack([np.asarray(X, dtype=np.float64), self.derive_many(X)])


def _unique_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, axis=0, return_inverse=True)``, faster: rows grouped by a random projection
    (a 1-D sort), the grouping verified exactly and the slow path taken if two rows ever collide."""
    w = np.random.default_rng(0x5EED).random(keys.shape[1]) + 0.5
    h = keys @ w
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    uniq = keys[first]
    if np.array_equal(uniq[inv], keys):
        return uniq, inv.ravel()
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    return uniq, inv.ravel()


@lru_cache(maxsize=16)
def physics_for(profile: str) -> Physics:
    """The :class:`Physics` of a bundled profile name or a profile JSON path (memoised)."""
    from optplace.surrogate.twin_eval import cached_profile

    return Physics(cached_profile(profile))
