"""A cheap, deterministic synthetic evaluator with twin-like structure, for tests and dry runs.

It is *not* a model of vLLM: it exists so the sweep → train → encode pipeline can be exercised in
milliseconds.  It has the features that matter for the surrogate's shape: a capacity that falls with
distinct adapters in the batch and with rank, sticky slots when slots < adapters, a starvation
boundary, and latency rising with utilisation.  Never ship models trained on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from optplace.surrogate.config import GpuCase, GpuMetrics

# Largest startable slot count per max_lora_rank, roughly the published Llama table
# (the reference measurements' kv_capacity_v1.csv: rank 8 → 384, 16 → 224, 32 → 96).
_SYNTH_SLOT_CAP = {8: 384, 16: 224, 32: 96, 64: 48}


@dataclass(frozen=True, slots=True)
class SyntheticEvaluator:
    """Analytic stand-in for the twin: ``metrics = f(config)`` with seeded 1 % noise."""

    base_capacity_tok_s: float = 16000.0
    noise: float = 0.01

    def describe(self) -> dict[str, str]:
        """Identity recorded in a sweep's provenance."""
        return {"evaluator": "synthetic", "version": "1", "profile": "synthetic"}

    def slot_cap(self, max_lora_rank: int) -> int:
        """Largest startable ``max_loras`` for this ``max_lora_rank`` (0: none)."""
        for r in sorted(_SYNTH_SLOT_CAP):
            if max_lora_rank <= r:
                return _SYNTH_SLOT_CAP[r]
        return 0

    def __call__(self, config: GpuCase) -> GpuMetrics:
        rng = np.random.default_rng(config.seed)
        n = config.n_adapters
        slots = min(config.max_loras, n)
        rates = np.asarray(config.rates_rps)
        mi, mo = config.lengths.means()
        offered = float(rates.sum()) * (mi + mo) * float(rng.lognormal(0.0, self.noise))
        if config.max_loras > self.slot_cap(config.max_lora_rank):
            return GpuMetrics(0.0, offered, 1.0, True, True, math.nan, math.nan, math.nan)
        rank_cost = 1.0 + 0.15 * math.log2(config.max_lora_rank / 8.0 + 1.0)
        burst = config.arrivals.cv if config.arrivals.kind == "gamma" else 1.0
        burst *= math.sqrt(config.arrivals.burst_factor) if config.arrivals.kind == "mmpp" else 1.0
        cap = self.base_capacity_tok_s / (rank_cost * (1.0 + 0.004 * slots)) * (mo / (mi + mo) * 0.6 + 0.7)
        cap /= 1.0 + 0.03 * (burst - 1.0)
        served = offered
        if slots < n:
            # sticky slots: in saturation only the slot holders' traffic gets through
            top = float(np.sort(rates)[-slots:].sum()) / float(rates.sum())
            util_all = offered / cap
            if util_all > 0.7:
                served = offered * max(top, min(1.0, 1.0 / util_all) * top + (1 - top) * max(0.0, 1.4 - util_all))
        delivered = min(served, cap) * (1.0 - 0.004) * float(rng.lognormal(0.0, self.noise))
        delivered = min(delivered, offered)
        loss = 1.0 - delivered / offered if offered > 0 else 0.0
        util = min(offered / cap, 3.0)
        itl = (9.0 + 0.02 * slots) * (1.0 + 1.5 * min(util, 1.0) ** 2) * float(rng.lognormal(0.0, self.noise))
        ttft99 = 80.0 + 400.0 * util**3 / max(1.02 - min(util, 1.0), 0.02) * burst
        return GpuMetrics(
            throughput_tok_s=delivered,
            offered_tok_s=offered,
            throughput_loss=loss,
            starved=loss >= 0.10,
            oom=False,
            itl_ms_mean=itl,
            ttft_ms_p50=ttft99 / 4.0,
            ttft_ms_p99=ttft99,
            engine_tok_s=min(offered, cap),
        )
