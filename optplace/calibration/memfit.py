"""Fit a profile's memory model from measured KV capacities (``kv_capacity_v1.csv`` format).

Columns used: model, max_loras, max_lora_rank, status, kv_cache_tokens, model_plus_lora_buffers_gib,
gpu_memory_utilization. Weights and the per-slot LoRA buffer sizes come from a least-squares line
through ``model_plus_lora_buffers_gib`` (every row that reports it, OOM rows included); the
reserved memory from the mean of what the startable rows leave unexplained; the measured KV
capacities are kept as ``kv_points`` (see ``MemoryModel``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from optplace.specs.hardware import GiB, GpuSpec, ModelArch
from optplace.specs.profiles import MemoryModel


def fit_memory(csv_path: str | Path, arch: ModelArch, gpu: GpuSpec) -> MemoryModel:
    """Fit ``MemoryModel`` for ``arch`` on ``gpu`` from a KV-capacity CSV."""
    rows = [r for r in csv.DictReader(open(csv_path, newline="")) if r["model"] == arch.name]
    if not rows:
        raise ValueError(f"{csv_path}: no rows for model {arch.name}")
    with_buf = [r for r in rows if r["model_plus_lora_buffers_gib"]]
    L = np.array([int(r["max_loras"]) for r in with_buf], dtype=float)
    R = np.array([int(r["max_lora_rank"]) for r in with_buf], dtype=float)
    y = np.array([float(r["model_plus_lora_buffers_gib"]) for r in with_buf])
    (weights, per_slot_rank, per_slot), *_ = np.linalg.lstsq(np.c_[np.ones_like(L), L * R, L], y, rcond=None)
    per_slot = max(per_slot, 0.0)
    ok = [r for r in rows if r["status"] == "ok" and r["kv_cache_tokens"]]
    util = float(ok[0]["gpu_memory_utilization"])
    bpt = arch.kv_bytes_per_token
    used = [
        weights
        + int(r["max_loras"]) * (per_slot_rank * int(r["max_lora_rank"]) + per_slot)
        + int(r["kv_cache_tokens"]) * bpt / GiB
        for r in ok
    ]
    reserved = util * gpu.memory_gib - float(np.mean(used))
    points = tuple(sorted((int(r["max_loras"]), int(r["max_lora_rank"]), int(r["kv_cache_tokens"])) for r in ok))
    return MemoryModel(
        gpu_memory_gib=gpu.memory_gib,
        weights_gib=round(float(weights), 6),
        reserved_gib=round(float(reserved), 6),
        lora_gib_per_slot_rank=round(float(per_slot_rank), 9),
        lora_gib_per_slot=round(float(per_slot), 9),
        kv_bytes_per_token=bpt,
        reference_utilization=util,
        kv_points=points,
        source=f"fitted from {Path(csv_path).name} ({len(with_buf)} buffer rows, {len(ok)} KV rows)",
    )
