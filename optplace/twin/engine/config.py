"""Configuration of one simulated vLLM engine, and what the engine needs from its inputs.

:class:`EngineConfig` is one vLLM server (one GPU): its LoRA limits, KV capacity, scheduler limits
and time models. :func:`engine_config_from_profile` derives it from a ``specs`` profile the way a
plan starts vLLM. The protocols name what the engine reads from the step-time model, the scheduler
overhead model and the workload, so tests can pass stand-ins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["EngineConfig", "OverheadModel", "StepTimeModelLike", "WorkloadLike", "engine_config_from_profile"]


class StepTimeModelLike(Protocol):
    """What the engine needs from ``optplace.twin.steptime.StepTimeModel``."""

    def step_s(
        self,
        num_seqs: int,
        prefill_tokens: int,
        decode_tokens: int,
        distinct_adapters: int,
        mean_rank: float,
        context_tokens: float | None = None,
    ) -> float: ...


class OverheadModel(Protocol):
    """What the engine needs from ``optplace.twin.steptime.SchedulerOverhead``."""

    def overhead_s(self, running: int, waiting: int, slots: int = 1, served: int = 1) -> float: ...


class WorkloadLike(Protocol):
    """``optplace.twin.workload.Workload``: arrays sorted by arrival time (read-only: frozen types qualify)."""

    @property
    def arrival_s(self) -> np.ndarray: ...
    @property
    def adapter(self) -> np.ndarray: ...
    @property
    def input_tokens(self) -> np.ndarray: ...
    @property
    def output_tokens(self) -> np.ndarray: ...
    @property
    def duration_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """One vLLM engine (one GPU) with its LoRA configuration and time models.

    ``adapter_ranks[i]`` is the rank of adapter ``i`` (the workload's adapter index);
    ``adapter_load_ms[i]`` the CPU→GPU load time of adapter ``i`` and ``adapter_disk_ms[i]`` its
    disk→CPU time (both ms; empty tuples mean free loads).
    """

    kv_cache_tokens: int
    max_loras: int
    max_cpu_loras: int
    adapter_ranks: tuple[int, ...]
    max_lora_rank: int
    step_time: StepTimeModelLike
    overhead: OverheadModel | None = None
    adapter_load_ms: tuple[float, ...] = ()
    adapter_disk_ms: tuple[float, ...] = ()
    block_size: int = 16
    max_num_seqs: int = 2048
    max_num_batched_tokens: int = 2048
    max_model_len: int = 131072
    max_outstanding: int | None = None
    """Client-side cap on requests outstanding at the server (running + waiting); a request that
    arrives while the cap is reached is rejected (never served, counted in ``rejected``). ``None``:
    no cap, as in vLLM itself. ``bench.fidelity`` sets it to replay reference runs whose load generator
    limited the requests in flight."""

    def __post_init__(self) -> None:
        errors: list[str] = []
        if self.max_loras < 1:
            errors.append(f"max_loras must be >= 1, got {self.max_loras}")
        if self.max_cpu_loras < self.max_loras:
            errors.append(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras}), as vLLM requires"
            )
        if self.max_num_batched_tokens < self.max_num_seqs:
            errors.append(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}), as vLLM requires"
            )
        if self.block_size < 1:
            errors.append(f"block_size must be >= 1, got {self.block_size}")
        if self.max_outstanding is not None and self.max_outstanding < 1:
            errors.append(f"max_outstanding must be >= 1 or None, got {self.max_outstanding}")
        if self.kv_cache_tokens < 0:
            errors.append(f"kv_cache_tokens must be >= 0, got {self.kv_cache_tokens}")
        bad = sorted({r for r in self.adapter_ranks if r > self.max_lora_rank or r < 1})
        if bad:
            errors.append(f"adapter ranks {bad} are outside 1..max_lora_rank ({self.max_lora_rank})")
        n = len(self.adapter_ranks)
        for name in ("adapter_load_ms", "adapter_disk_ms"):
            v = getattr(self, name)
            if v and len(v) != n:
                errors.append(f"{name} has {len(v)} entries but there are {n} adapters")
        if errors:
            raise ValueError("; ".join(errors))

    @property
    def num_blocks(self) -> int:
        """KV cache size in blocks."""
        return self.kv_cache_tokens // self.block_size

    @property
    def starts(self) -> bool:
        """Whether vLLM starts: the KV cache must hold one ``max_model_len`` sequence."""
        return self.kv_cache_tokens > 0 and self.kv_cache_tokens >= self.max_model_len


def engine_config_from_profile(
    profile: Any,
    adapter_ranks: Sequence[int],
    max_loras: int,
    max_cpu_loras: int | None = None,
    max_lora_rank: int | None = None,
    max_num_seqs: int = 2048,
    max_num_batched_tokens: int = 2048,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    kv_cache_tokens: int | None = None,
) -> EngineConfig:
    """Build an :class:`EngineConfig` from a ``specs`` profile (KV capacity, time and load models).

    ``max_lora_rank`` defaults to the largest rank served (what the plan passes to vLLM);
    ``kv_cache_tokens`` overrides the profile's memory model (e.g. a measured value).
    """
    from optplace.twin.steptime import SchedulerOverhead, StepTimeModel

    ranks = tuple(int(r) for r in adapter_ranks)
    mlr = int(max_lora_rank if max_lora_rank is not None else max(ranks, default=8))
    cpu = int(max_cpu_loras if max_cpu_loras is not None else max(len(ranks), max_loras))
    kv = int(
        kv_cache_tokens
        if kv_cache_tokens is not None
        else profile.kv_cache_tokens(max_loras, mlr, gpu_memory_utilization)
    )
    step = StepTimeModel.from_params(profile.step_time)
    if hasattr(step, "bind"):
        step = step.bind(mlr, int(max_loras))
    overhead = SchedulerOverhead.from_params(getattr(profile, "scheduler_overhead", None))
    load = profile.adapter_load
    return EngineConfig(
        kv_cache_tokens=kv,
        max_loras=int(max_loras),
        max_cpu_loras=cpu,
        adapter_ranks=ranks,
        max_lora_rank=mlr,
        step_time=step,
        overhead=overhead,
        adapter_load_ms=tuple(float(load.cpu_to_gpu(mlr, r)) for r in ranks),
        adapter_disk_ms=tuple(float(load.disk_to_cpu(r)) for r in ranks),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=int(max_model_len if max_model_len is not None else profile.model_arch.max_model_len),
    )
