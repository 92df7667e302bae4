"""Catalogues of model architectures and GPU types, used to build *uncalibrated* profiles.

Numbers are public facts: model configs as published on the models' cards (config.json), GPU
memory / dense BF16 throughput / memory bandwidth from the vendors' data sheets. Where a value is
an assumption it says so.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

GiB = 2**30


class ModelArch(BaseModel):
    """A decoder-only transformer, as far as serving memory and time depend on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Model name, e.g. llama-3.1-8b-instruct.")
    layers: int = Field(gt=0, description="Transformer layers.")
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0, description="Attention (query) heads.")
    num_kv_heads: int = Field(gt=0, description="Key/value heads (GQA).")
    head_dim: int | None = Field(default=None, gt=0, description="Defaults to hidden_size / num_heads.")
    intermediate_size: int = Field(gt=0, description="MLP inner size.")
    vocab_size: int = Field(gt=0)
    params_b: float = Field(gt=0, description="Parameters, billions.")
    dtype_bytes: int = Field(default=2, gt=0, description="Bytes per weight/KV element (2 = bf16/fp16).")
    max_model_len: int = Field(gt=0, description="Context length vLLM serves by default.")

    @property
    def head_dim_(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer: 2 · layers · kv_heads · head_dim · dtype bytes."""
        return 2 * self.layers * self.num_kv_heads * self.head_dim_ * self.dtype_bytes

    @property
    def weights_gib(self) -> float:
        return self.params_b * 1e9 * self.dtype_bytes / GiB

    @property
    def lora_elems_per_slot_rank(self) -> int:
        """LoRA A+B elements per slot per unit of rank, over q,k,v,o,gate,up,down of every layer."""
        h, kv, inter = self.hidden_size, self.num_kv_heads * self.head_dim_, self.intermediate_size
        q = self.num_heads * self.head_dim_
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + inter) + (inter + h)
        return self.layers * per_layer


class GpuSpec(BaseModel):
    """One GPU type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    memory_gib: float = Field(gt=0)
    # Not read by any model yet: an uncalibrated profile scales step time by memory bandwidth (decode
    # is bandwidth-bound). Kept so a GPU is described whole; tests/test_spec_fields.py holds the list.
    bf16_tflops: float = Field(
        gt=0, description="Dense BF16 tensor throughput, TFLOP/s (informational: not read by the models)."
    )
    bandwidth_gbs: float = Field(gt=0, description="Memory bandwidth, GB/s.")
    note: str = ""


MODELS: dict[str, ModelArch] = {
    m.name: m
    for m in [
        # Source: meta-llama/Llama-3.1-8B-Instruct config.json.
        ModelArch(
            name="llama-3.1-8b-instruct",
            layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
            params_b=8.03,
            max_model_len=131072,
        ),
        # Source: Qwen/Qwen2.5-7B-Instruct config.json (vLLM serves 32,768 tokens by default).
        ModelArch(
            name="qwen-2.5-7b-instruct",
            layers=28,
            hidden_size=3584,
            num_heads=28,
            num_kv_heads=4,
            intermediate_size=18944,
            vocab_size=152064,
            params_b=7.62,
            max_model_len=32768,
        ),
        # Source: Qwen/Qwen2.5-14B-Instruct config.json.
        ModelArch(
            name="qwen-2.5-14b-instruct",
            layers=48,
            hidden_size=5120,
            num_heads=40,
            num_kv_heads=8,
            intermediate_size=13824,
            vocab_size=152064,
            params_b=14.77,
            max_model_len=32768,
        ),
        # Source: mistralai/Mistral-7B-Instruct-v0.3 config.json.
        ModelArch(
            name="mistral-7b-instruct-v0.3",
            layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            intermediate_size=14336,
            vocab_size=32768,
            params_b=7.25,
            max_model_len=32768,
        ),
        # Source: meta-llama/Llama-3.2-3B-Instruct config.json.
        ModelArch(
            name="llama-3.2-3b-instruct",
            layers=28,
            hidden_size=3072,
            num_heads=24,
            num_kv_heads=8,
            intermediate_size=8192,
            vocab_size=128256,
            params_b=3.21,
            max_model_len=131072,
        ),
    ]
}

GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in [
        GpuSpec(
            name="h100-64gb",
            memory_gib=64.0,
            bf16_tflops=989.0,
            bandwidth_gbs=1640.0,
            note="H100 64 GB HBM2e (as in the reference runs; memory fits 64 GiB); bandwidth assumed",
        ),
        GpuSpec(name="h100-80gb", memory_gib=79.6, bf16_tflops=989.0, bandwidth_gbs=3350.0, note="H100 SXM 80 GB"),
        GpuSpec(name="h200-141gb", memory_gib=139.8, bf16_tflops=989.0, bandwidth_gbs=4800.0, note="H200 141 GB"),
        GpuSpec(name="a100-80gb", memory_gib=79.2, bf16_tflops=312.0, bandwidth_gbs=2039.0, note="A100 SXM 80 GB"),
        GpuSpec(name="a100-40gb", memory_gib=39.4, bf16_tflops=312.0, bandwidth_gbs=1555.0, note="A100 40 GB"),
        GpuSpec(name="l40s-48gb", memory_gib=44.5, bf16_tflops=362.0, bandwidth_gbs=864.0, note="L40S 48 GB"),
        GpuSpec(name="l4-24gb", memory_gib=22.0, bf16_tflops=121.0, bandwidth_gbs=300.0, note="L4 24 GB"),
        GpuSpec(name="a10g-24gb", memory_gib=22.0, bf16_tflops=125.0, bandwidth_gbs=600.0, note="A10G 24 GB"),
    ]
}
