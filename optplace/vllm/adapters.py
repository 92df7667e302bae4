"""Dummy LoRA adapters in PEFT format, written with NumPy only (no torch, no safetensors package).

The study behind the reference data served dummy adapters with random weights; vLLM only needs
``adapter_config.json`` plus ``adapter_model.safetensors`` whose tensor names and shapes match the
base model's projection layers.

The safetensors layout (https://github.com/huggingface/safetensors, README "Format"): an 8-byte
little-endian unsigned header length N, then N bytes of UTF-8 JSON mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data section, optional
``"__metadata__"`` of string values), then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AdapterFiles",
    "DEFAULT_TARGET_MODULES",
    "SafetensorsError",
    "float32_to_bfloat16_bits",
    "bfloat16_bits_to_float32",
    "lora_shapes",
    "make_adapters",
    "read_safetensors",
    "read_safetensors_header",
    "write_safetensors",
]

DEFAULT_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
_ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}
_MLP = {"gate_proj", "up_proj", "down_proj"}
_DTYPES: dict[str, tuple[str, int]] = {  # safetensors dtype -> (numpy dtype of the stored bits, size)
    "BF16": ("<u2", 2),
    "F16": ("<f2", 2),
    "F32": ("<f4", 4),
    "F64": ("<f8", 8),
    "I32": ("<i4", 4),
    "I64": ("<i8", 8),
    "U8": ("u1", 1),
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read (bad header, offsets or dtype)."""


@dataclass(frozen=True, slots=True)
class AdapterFiles:
    """One written adapter: its name, rank and folder (holding the two PEFT files)."""

    name: str
    rank: int
    path: Path
    target_modules: tuple[str, ...]
    num_tensors: int


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Return the bfloat16 bit patterns (uint16) of float32 values, rounding to nearest even.

    bfloat16 is the top half of an IEEE float32; rounding adds 0x7FFF plus the lowest kept bit
    before truncating, so ties go to even. NaNs keep a quiet-NaN pattern.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (bits >> 16) & np.uint32(1)
    rounded = ((bits + np.uint32(0x7FFF) + lsb) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, np.uint16(0x7FC0), rounded)
    return rounded


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def write_safetensors(
    path: Path,
    tensors: Mapping[str, tuple[str, np.ndarray]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write tensors ``{name: (safetensors_dtype, array_of_stored_values)}`` to ``path``.

    For ``BF16`` the array must already hold the uint16 bit patterns. Tensors are laid out in
    sorted name order; the header is space-padded to a multiple of 8 bytes (as the reference
    implementation does, so the data section is aligned).
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    buffers: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        dtype, arr = tensors[name]
        if dtype not in _DTYPES:
            raise SafetensorsError(f"{name}: unsupported dtype {dtype!r}")
        np_dtype, _ = _DTYPES[dtype]
        raw = np.ascontiguousarray(arr).astype(np_dtype, copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        buffers.append(raw)
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for raw in buffers:
            f.write(raw)


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Read and check the JSON header of a safetensors file (offsets contiguous, sizes consistent)."""
    data = Path(path).read_bytes()
    return _parse_header(data, str(path))[0]


def read_safetensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Read every tensor as ``{name: (dtype, array)}``; BF16 comes back as uint16 bit patterns."""
    data = Path(path).read_bytes()
    header, base = _parse_header(data, str(path))
    out: dict[str, tuple[str, np.ndarray]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        np_dtype, _ = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        arr = np.frombuffer(
            data, dtype=np_dtype, count=(end - begin) // np.dtype(np_dtype).itemsize, offset=base + begin
        )
        out[name] = (info["dtype"], arr.reshape(info["shape"]))
    return out


def _parse_header(data: bytes, where: str) -> tuple[dict[str, Any], int]:
    if len(data) < 8:
        raise SafetensorsError(f"{where}: file shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise SafetensorsError(f"{where}: header length {n} runs past the end of the file ({len(data)} bytes)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{where}: header is not UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise SafetensorsError(f"{where}: header is not a JSON object")
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            raise SafetensorsError(f"{where}: {name}: unsupported dtype {dtype!r}")
        begin, end = info["data_offsets"]
        size = int(np.prod(info["shape"], dtype=np.int64)) * _DTYPES[dtype][1]
        if end - begin != size:
            raise SafetensorsError(f"{where}: {name}: data_offsets span {end - begin} bytes, shape needs {size}")
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise SafetensorsError(f"{where}: {name}: data starts at {begin}, expected {pos} (gap or overlap)")
        pos = end
    if 8 + n + pos != len(data):
        raise SafetensorsError(f"{where}: data section is {len(data) - 8 - n} bytes, header describes {pos}")
    return header, 8 + n


def lora_shapes(
    base_config: Mapping[str, Any], target_modules: Sequence[str], rank: int
) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Shapes ``{module: ((rank, in_features), (out_features, rank))}`` of lora_A / lora_B per module.

    ``base_config`` is a Hugging Face Llama-style config (``hidden_size``, ``intermediate_size``,
    ``num_attention_heads``, ``num_key_value_heads``, optional ``head_dim``).
    """
    hidden = int(base_config["hidden_size"])
    heads = int(base_config["num_attention_heads"])
    kv_heads = int(base_config.get("num_key_value_heads") or heads)
    head_dim = int(base_config.get("head_dim") or hidden // heads)
    inter = int(base_config.get("intermediate_size") or 4 * hidden)
    io = {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    unknown = [m for m in target_modules if m not in io]
    if unknown:
        raise ValueError(f"unknown target modules {unknown}; known: {sorted(io)}")
    return {m: ((rank, io[m][0]), (io[m][1], rank)) for m in target_modules}


def make_adapters(
    out_dir: Path,
    specs: Iterable[tuple[str, int]],
    base_config: Mapping[str, Any],
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    seed: int = 0,
    *,
    base_model_name_or_path: str = "",
    lora_alpha_per_rank: float = 2.0,
    init_std: float = 0.02,
) -> tuple[AdapterFiles, ...]:
    """Write one PEFT LoRA adapter folder per ``(name, rank)`` under ``out_dir`` with seeded random weights.

    Both lora_A and lora_B are random (PEFT initialises B to zero, which would make every adapter
    equal to the base model); the weights of adapter *i* come from child *i* of
    ``SeedSequence(seed)``, so adding adapters at the end never changes earlier ones.
    Returns the written adapters in input order.
    """
    specs = list(specs)
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate adapter names: {dup}")
    bad = [n for n in names if not _NAME_RE.match(n)]
    if bad:
        raise ValueError(f"adapter names must be folder-safe ([A-Za-z0-9._-], not starting with . or -): {bad}")
    bad_ranks = [(n, r) for n, r in specs if int(r) < 1]
    if bad_ranks:
        raise ValueError(f"ranks must be >= 1: {bad_ranks}")
    targets = tuple(target_modules)
    layers = int(base_config["num_hidden_layers"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(len(specs))
    written: list[AdapterFiles] = []
    for (name, rank), child in zip(specs, children):
        rank = int(rank)
        rng = np.random.default_rng(child)
        shapes = lora_shapes(base_config, targets, rank)
        tensors: dict[str, tuple[str, np.ndarray]] = {}
        for layer in range(layers):
            for module in targets:
                block = "self_attn" if module in _ATTN else "mlp"
                prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
                a_shape, b_shape = shapes[module]
                a = rng.normal(0.0, init_std, size=a_shape).astype(np.float32)
                b = rng.normal(0.0, init_std, size=b_shape).astype(np.float32)
                tensors[f"{prefix}.lora_A.weight"] = ("BF16", float32_to_bfloat16_bits(a))
                tensors[f"{prefix}.lora_B.weight"] = ("BF16", float32_to_bfloat16_bits(b))
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(folder / "adapter_model.safetensors", tensors, {"format": "pt"})
        config = {
            "base_model_name_or_path": base_model_name_or_path,
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": rank,
            "lora_alpha": lora_alpha_per_rank * rank,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "modules_to_save": None,
            "target_modules": list(targets),
            "use_rslora": False,
            "use_dora": False,
        }
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        written.append(
            AdapterFiles(name=name, rank=rank, path=folder, target_modules=targets, num_tensors=len(tensors))
        )
    return tuple(written)
