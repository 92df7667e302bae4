"""Hardware/model profiles (``model@gpu``): KV-cache memory, step time, adapter load and scheduler
overhead models the twin and the solver share.

Calibrated profiles ship as JSON package data (``profiles/*.json``) with a provenance line; they
are written by ``optplace calibrate`` from the reference measurements. For any other pair of a
known model architecture and GPU, ``resolve_profile`` builds a clearly labelled *uncalibrated*
profile from first principles (weights, KV bytes per token, LoRA buffer sizes, bandwidth ratio).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from optplace.specs.hardware import GPUS, MODELS, GiB, GpuSpec, ModelArch

SUPPORTED_RANKS: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
StartupStatus = Literal["ok", "oom_kv_cache", "oom_cuda"]
REFERENCE_PROFILE = "llama-3.1-8b-instruct@h100-64gb"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemoryModel(_Frozen):
    """GPU memory left for the KV cache once weights, activations and LoRA slot buffers are in.

    vLLM pre-allocates LoRA buffers for every slot at ``max_lora_rank``, so
    ``buffers = lora_gib_per_slot_rank · max_loras · max_lora_rank + lora_gib_per_slot · max_loras``
    and ``kv_tokens = (gpu_memory_utilization · gpu_memory_gib − weights − reserved − buffers) / kv_bytes``,
    rounded down to whole 16-token blocks. ``kv_points`` are measured (max_loras, max_lora_rank,
    kv_tokens) at ``reference_utilization``; where present they replace the linear model, and between
    them the model's residual is interpolated linearly in max_loras · max_lora_rank (vLLM's memory
    profiling is not exactly linear, e.g. Qwen2.5-7B deviates up to 7 % from the best line).
    """

    gpu_memory_gib: float = Field(gt=0)
    weights_gib: float = Field(gt=0)
    reserved_gib: float = Field(ge=0, description="Activation peak and non-torch memory, GiB.")
    lora_gib_per_slot_rank: float = Field(ge=0)
    lora_gib_per_slot: float = Field(ge=0)
    kv_bytes_per_token: int = Field(gt=0)
    block_size: int = 16
    reference_utilization: float = 0.9
    kv_points: tuple[tuple[int, int, int], ...] = ()
    source: str = ""

    def lora_buffers_gib(self, max_loras: int, max_lora_rank: int) -> float:
        return max_loras * (self.lora_gib_per_slot_rank * max_lora_rank + self.lora_gib_per_slot)

    def _linear_tokens(self, max_loras: int, max_lora_rank: int, util: float) -> float:
        free = util * self.gpu_memory_gib - self.weights_gib - self.reserved_gib
        return (free - self.lora_buffers_gib(max_loras, max_lora_rank)) * GiB / self.kv_bytes_per_token

    def kv_cache_tokens(self, max_loras: int, max_lora_rank: int, util: float) -> int:
        """KV capacity in tokens (whole blocks); 0 when nothing is left."""
        tokens = self._linear_tokens(max_loras, max_lora_rank, util) + self._residual(max_loras, max_lora_rank)
        blocks = math.floor(max(tokens, 0.0) / self.block_size)
        return blocks * self.block_size

    def _residual(self, max_loras: int, max_lora_rank: int) -> float:
        if not self.kv_points:
            return 0.0
        ref = self.reference_utilization
        for L, r, tok in self.kv_points:
            if L == max_loras and r == max_lora_rank:
                return tok - self._linear_tokens(L, r, ref)
        pts = sorted({L * r: tok - self._linear_tokens(L, r, ref) for L, r, tok in self.kv_points}.items())
        x = max_loras * max_lora_rank
        if x <= pts[0][0]:
            return pts[0][1]
        if x >= pts[-1][0]:
            return 0.0 if len(pts) < 2 else pts[-1][1]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x0 <= x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return 0.0  # pragma: no cover - the loop always returns


class StepTimeParams(_Frozen):
    """Engine step-time model; ``form`` and ``coef`` are interpreted by ``optplace.twin.steptime``.

    ``time_scale`` multiplies every predicted duration (uncalibrated profiles scale a calibrated
    one by the ratio of weight-streaming times).
    """

    form: str
    coef: dict[str, float]
    time_scale: float = Field(default=1.0, gt=0)
    source: str = ""


class AdapterLoadParams(_Frozen):
    """Adapter load costs: CPU→GPU by [max_lora_rank][adapter rank] and disk→CPU by rank, in ms."""

    cpu_to_gpu_ms: dict[str, dict[str, float]]
    disk_to_cpu_ms: dict[str, float]
    time_scale: float = Field(default=1.0, gt=0)
    source: str = ""

    def cpu_to_gpu(self, max_lora_rank: int, rank: int) -> float:
        """CPU→GPU load time [ms]; nearest measured entry when the pair was not measured."""
        table = self.cpu_to_gpu_ms
        mr = _nearest_key(table, max_lora_rank)
        return table[mr][_nearest_key(table[mr], rank)] * self.time_scale

    def disk_to_cpu(self, rank: int) -> float:
        return self.disk_to_cpu_ms[_nearest_key(self.disk_to_cpu_ms, rank)] * self.time_scale


def _nearest_key(d: dict[str, Any], value: int) -> str:
    return min(d, key=lambda k: (abs(int(k) - value), -int(k)))


class OverheadParams(_Frozen):
    """Scheduler overhead model (interpreted by ``optplace.twin.steptime``)."""

    form: str
    coef: dict[str, float]
    source: str = ""


class Profile(_Frozen):
    """Everything the twin and the solver need to know about one model on one GPU type."""

    name: str
    model: str
    gpu: str
    calibrated: bool
    source: str
    model_arch: ModelArch
    gpu_spec: GpuSpec
    memory: MemoryModel
    step_time: StepTimeParams
    adapter_load: AdapterLoadParams
    scheduler_overhead: OverheadParams
    supported_ranks: tuple[int, ...] = (8, 16, 32, 64)

    @property
    def max_lora_rank(self) -> int:
        return max(self.supported_ranks)

    def time_scaled(self, factor: float) -> "Profile":
        """This profile with every predicted step and adapter-load time multiplied by ``factor`` (both
        sections' ``time_scale``): the same engine on a machine ``factor`` times slower."""
        return self.model_copy(
            update={
                "step_time": self.step_time.model_copy(update={"time_scale": self.step_time.time_scale * factor}),
                "adapter_load": self.adapter_load.model_copy(
                    update={"time_scale": self.adapter_load.time_scale * factor}
                ),
            }
        )

    def kv_cache_tokens(self, max_loras: int, max_lora_rank: int, gpu_memory_utilization: float = 0.9) -> int:
        """KV capacity [tokens] with ``max_loras`` slots pre-allocated at ``max_lora_rank``."""
        return self.memory.kv_cache_tokens(max_loras, max_lora_rank, gpu_memory_utilization)

    def startup_status(
        self, max_loras: int, max_lora_rank: int, gpu_memory_utilization: float = 0.9, max_model_len: int | None = None
    ) -> StartupStatus:
        """Would vLLM start? ``oom_cuda`` when weights + LoRA buffers exceed the budget,
        ``oom_kv_cache`` when the KV cache cannot hold one max-length sequence."""
        m = self.memory
        budget = gpu_memory_utilization * m.gpu_memory_gib - m.reserved_gib
        if m.weights_gib + m.lora_buffers_gib(max_loras, max_lora_rank) >= budget:
            return "oom_cuda"
        need = max_model_len if max_model_len is not None else self.model_arch.max_model_len
        if self.kv_cache_tokens(max_loras, max_lora_rank, gpu_memory_utilization) < need:
            return "oom_kv_cache"
        return "ok"

    def max_startable_slots(
        self,
        max_lora_rank: int,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        upper: int = 4096,
    ) -> int:
        """Largest ``max_loras`` that starts at this rank (0 if none); capacity shrinks with slots."""
        lo, hi = 0, upper
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.startup_status(mid, max_lora_rank, gpu_memory_utilization, max_model_len) == "ok":
                lo = mid
            else:
                hi = mid - 1
        return lo


def _bundled_dir():
    return resources.files("optplace.specs") / "profiles"


@lru_cache(maxsize=None)
def bundled_profiles() -> dict[str, Profile]:
    """The calibrated profiles shipped with the package, by name."""
    out: dict[str, Profile] = {}
    for entry in sorted(_bundled_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            p = Profile.model_validate(json.loads(entry.read_text(encoding="utf-8")))
            out[p.name] = p
    return out


def load_profile_file(path: str | Path) -> Profile:
    """Load a profile JSON written by ``optplace calibrate`` (or by hand)."""
    return Profile.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


class UnknownProfile(ValueError):
    """Neither a bundled profile nor a model/GPU pair that a generic profile can be built from."""


def resolve_profile(model: str | ModelArch, gpu: str | GpuSpec) -> Profile:
    """The calibrated profile for ``model@gpu`` if one ships, else an uncalibrated generic one."""
    mname = model if isinstance(model, str) else model.name
    gname = gpu if isinstance(gpu, str) else gpu.name
    bundled = bundled_profiles()
    if isinstance(model, str) and isinstance(gpu, str) and f"{mname}@{gname}" in bundled:
        return bundled[f"{mname}@{gname}"]
    arch = model if isinstance(model, ModelArch) else MODELS.get(model)
    spec = gpu if isinstance(gpu, GpuSpec) else GPUS.get(gpu)
    if arch is None:
        raise UnknownProfile(
            f"unknown model {mname!r}: give its architecture inline or use one of {', '.join(sorted(MODELS))}"
        )
    if spec is None:
        raise UnknownProfile(f"unknown GPU {gname!r}: give its spec inline or use one of {', '.join(sorted(GPUS))}")
    return generic_profile(arch, spec)


def generic_profile(arch: ModelArch, gpu: GpuSpec) -> Profile:
    """An *uncalibrated* profile from architecture and GPU data sheets.

    Memory: weights = params × dtype bytes; LoRA buffers = A+B elements of q,k,v,o,gate,up,down per
    slot per rank × dtype bytes × 1.2 (the measured Llama-3.1-8B buffers are ~1.2× this count:
    vLLM also allocates embedding/lm-head LoRA and padding); reserved = the reference profile's
    reserved memory scaled by vocabulary (logits dominate the activation peak at 2,048 tokens).
    Time: the reference profile's step-time and load models scaled by the ratio of
    weight-streaming times (weights / bandwidth), since decode steps are memory-bound.
    """
    ref = bundled_profiles().get(REFERENCE_PROFILE)
    if ref is None:  # pragma: no cover - the package always ships it
        raise UnknownProfile(f"reference profile {REFERENCE_PROFILE} missing from the package")
    rarch, rgpu = ref.model_arch, ref.gpu_spec
    scale = (arch.weights_gib / gpu.bandwidth_gbs) / (rarch.weights_gib / rgpu.bandwidth_gbs)
    timed = ref.time_scaled(scale)
    mem = MemoryModel(
        gpu_memory_gib=gpu.memory_gib,
        weights_gib=arch.weights_gib,
        reserved_gib=ref.memory.reserved_gib * max(1.0, arch.vocab_size / rarch.vocab_size),
        lora_gib_per_slot_rank=1.2 * arch.lora_elems_per_slot_rank * arch.dtype_bytes / GiB,
        lora_gib_per_slot=0.0,
        kv_bytes_per_token=arch.kv_bytes_per_token,
        source="uncalibrated: derived from the architecture and GPU data sheet",
    )
    return Profile(
        name=f"{arch.name}@{gpu.name}",
        model=arch.name,
        gpu=gpu.name,
        calibrated=False,
        source=f"UNCALIBRATED generic profile (memory from architecture; times = {REFERENCE_PROFILE} "
        f"× {scale:.3f} weight-streaming ratio). Calibrate with `optplace calibrate` before trusting it.",
        model_arch=arch,
        gpu_spec=gpu,
        memory=mem,
        step_time=timed.step_time,
        adapter_load=timed.adapter_load,
        scheduler_overhead=ref.scheduler_overhead,
        supported_ranks=(8, 16, 32, 64),
    )
