"""The digital twin as a sweep evaluator (``optplace.twin.simulate.simulate_gpu`` on one GPU).

Picklable (a frozen dataclass holding only the profile name and window), so process-pool and Ray
workers rebuild the profile themselves.  Its identity in a dataset's provenance is the twin semantics
version (:mod:`optplace.twin.version`) and the profile's semantic hash (:func:`profile_hash`), so a
dataset records which twin behaviour and which profile numbers produced its labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from optplace.surrogate.config import GpuCase, GpuMetrics
from optplace.surrogate.provenance import profile_hash
from optplace.twin.version import TWIN_SEMANTICS_VERSION


@lru_cache(maxsize=None)
def cached_profile(name: str) -> Any:
    from optplace.specs import bundled_profiles, load_profile_file

    if name.endswith(".json"):
        return load_profile_file(name)
    profs = bundled_profiles()
    if name not in profs:
        raise ValueError(f"unknown profile {name!r}; bundled: {sorted(profs)}")
    return profs[name]


def current_profile_hash(profile: str) -> str:
    """:func:`profile_hash` of a profile as loaded now (bundled name or JSON path)."""
    return profile_hash(cached_profile(profile).model_dump(mode="json"))


def _specs(config: GpuCase) -> tuple[Any, Any]:
    from optplace.specs.model import (
        GammaArrivals,
        LognormalLengths,
        MmppArrivals,
        PoissonArrivals,
        ShareGptLengths,
    )

    a = config.arrivals
    if a.kind == "poisson":
        arr: Any = PoissonArrivals(kind="poisson")
    elif a.kind == "gamma":
        arr = GammaArrivals(kind="gamma", cv=float(a.cv))
    else:
        arr = MmppArrivals(
            kind="mmpp",
            burst_factor=float(a.burst_factor),
            burst_fraction=float(a.burst_fraction),
            mean_burst_s=float(a.mean_burst_s),
        )
    ln = config.lengths
    if ln.kind == "sharegpt":
        lens: Any = ShareGptLengths(kind="sharegpt")
    elif ln.kind == "lognormal":
        lens = LognormalLengths(
            kind="lognormal",
            mean_input_tokens=float(ln.mean_input_tokens),
            mean_output_tokens=float(ln.mean_output_tokens),
            cv_input=float(ln.cv_input),
            cv_output=float(ln.cv_output),
        )
    else:
        from optplace.specs.model import FixedLengths

        lens = FixedLengths(
            kind="fixed", input_tokens=int(ln.mean_input_tokens), output_tokens=int(ln.mean_output_tokens)
        )
    return arr, lens


@dataclass(frozen=True, slots=True)
class TwinEvaluator:
    """Evaluate a :class:`GpuCase` with the twin on profile ``profile`` (bundled name or JSON path)."""

    profile: str
    gpu_memory_utilization: float = 0.9

    def describe(self) -> dict[str, Any]:
        """Identity recorded in a sweep's provenance (see :mod:`optplace.surrogate.provenance`)."""
        return {
            "evaluator": "twin",
            "twin_semantics_version": TWIN_SEMANTICS_VERSION,
            "profile": self.profile,
            "profile_hash": current_profile_hash(self.profile),
        }

    def slot_cap(self, max_lora_rank: int) -> int:
        """Largest ``max_loras`` that starts at this rank (the profile's memory model)."""
        return int(cached_profile(self.profile).max_startable_slots(max_lora_rank, self.gpu_memory_utilization))

    def report(self, config: GpuCase, slo: Any = None) -> Any:
        """The twin's ``GpuReport`` of one configuration (adapters ``a0``, ``a1``, …), judged by ``slo``
        (an ``optplace.twin.simulate.SloRule``) when given."""
        from optplace.specs import Adapter, Constraints, Serving
        from optplace.twin.simulate import simulate_gpu

        arr, lens = _specs(config)
        adapters = [
            Adapter(name=f"a{i}", rank=int(r), rate_rps=float(q))
            for i, (r, q) in enumerate(zip(config.ranks, config.rates_rps))
        ]
        return simulate_gpu(
            cached_profile(self.profile),
            Serving(gpu_memory_utilization=self.gpu_memory_utilization),
            Constraints(),
            arr,
            lens,
            adapters,
            config.max_loras,
            config.max_cpu_loras,
            duration_s=config.duration_s,
            seed=config.seed,
            slo=slo,
        )

    def __call__(self, config: GpuCase) -> GpuMetrics:
        rep = self.report(config)
        return GpuMetrics(
            throughput_tok_s=float(rep.throughput_tok_s),
            offered_tok_s=float(rep.offered_tok_s),
            throughput_loss=float(rep.throughput_loss),
            starved=bool(rep.starved),
            oom=bool(rep.oom),
            itl_ms_mean=float(rep.itl_ms_mean) if rep.itl_ms_mean is not None else math.nan,
            ttft_ms_p50=float(rep.ttft_ms_p50) if rep.ttft_ms_p50 is not None else math.nan,
            ttft_ms_p99=float(rep.ttft_ms_p99) if rep.ttft_ms_p99 is not None else math.nan,
            engine_tok_s=float(rep.engine_tok_s),
            starved_adapters=len(rep.starved_adapters),
        )
