"""Dummy PEFT adapters: safetensors layout, bf16 rounding, shapes per rank/target, seeding."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optplace.vllm.adapters import (
    SafetensorsError,
    bfloat16_bits_to_float32,
    float32_to_bfloat16_bits,
    lora_shapes,
    make_adapters,
    read_safetensors,
    read_safetensors_header,
    write_safetensors,
)

TINY = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def test_bf16_known_values_and_round_to_nearest_even():
    x = np.array([1.0, -2.5, 0.0, 3.140625, 256.0], dtype=np.float32)
    assert np.array_equal(bfloat16_bits_to_float32(float32_to_bfloat16_bits(x)), x)  # exactly representable
    # 1 + 2^-8 is halfway between two bf16 values (1 and 1 + 2^-7): ties go to the even one (1.0)
    assert bfloat16_bits_to_float32(float32_to_bfloat16_bits(np.float32([1 + 2**-8])))[0] == 1.0
    # 1 + 3*2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even mantissa is 1 + 2^-6
    assert bfloat16_bits_to_float32(float32_to_bfloat16_bits(np.float32([1 + 3 * 2**-8])))[0] == 1 + 2**-6
    assert float32_to_bfloat16_bits(np.float32([1.0]))[0] == 0x3F80
    assert np.isnan(bfloat16_bits_to_float32(float32_to_bfloat16_bits(np.float32([np.nan])))[0])


@settings(max_examples=200, deadline=None)
@given(
    st.floats(allow_nan=False, allow_infinity=False, width=32).filter(lambda v: v == 0 or 1.2e-38 < abs(v) < 3e38)
)  # normal range
def test_bf16_error_within_half_ulp(v):
    x = np.float32(v)
    y = bfloat16_bits_to_float32(float32_to_bfloat16_bits(np.array([x])))[0]
    if x != 0:
        assert abs(float(y) - float(x)) <= abs(float(x)) * 2.0**-8 * 1.0001


def test_safetensors_round_trip_and_header(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 5)).astype(np.float32)
    tensors = {
        "b.weight": ("BF16", float32_to_bfloat16_bits(a)),
        "a.bias": ("F32", a[0]),
        "c.idx": ("I64", np.arange(7)),
    }
    path = tmp_path / "x.safetensors"
    write_safetensors(path, tensors, {"format": "pt"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"] == {"format": "pt"}
    assert header["b.weight"] == {
        "dtype": "BF16",
        "shape": [3, 5],
        "data_offsets": [20, 50],
    }  # sorted: a.bias (5 x F32) first
    back = read_safetensors(path)
    assert set(back) == set(tensors)
    for name, (dtype, arr) in tensors.items():
        assert back[name][0] == dtype and np.array_equal(back[name][1], arr)
    assert read_safetensors_header(path)["c.idx"]["shape"] == [7]


def test_safetensors_rejects_corrupt_files(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"w": ("F32", np.ones((2, 2), np.float32))})
    raw = path.read_bytes()
    (tmp_path / "short").write_bytes(raw[:-4])
    with pytest.raises(SafetensorsError, match="data section"):
        read_safetensors(tmp_path / "short")
    (tmp_path / "len").write_bytes(struct.pack("<Q", 10**6) + raw[8:])
    with pytest.raises(SafetensorsError, match="runs past the end"):
        read_safetensors_header(tmp_path / "len")
    with pytest.raises(SafetensorsError, match="unsupported dtype"):
        write_safetensors(path, {"w": ("Q4", np.ones(2))})


def test_shapes_follow_rank_and_targets():
    s = lora_shapes(TINY, ["q_proj", "k_proj", "o_proj", "down_proj"], 8)
    assert s["q_proj"] == ((8, 256), (256, 8))
    assert s["k_proj"] == ((8, 256), (128, 8))  # 2 KV heads x 64
    assert s["o_proj"] == ((8, 256), (256, 8))
    assert s["down_proj"] == ((8, 512), (256, 8))
    with pytest.raises(ValueError, match="unknown target modules"):
        lora_shapes(TINY, ["qkv"], 8)


def test_make_adapters_writes_peft_folders(tmp_path):
    out = make_adapters(tmp_path, [("fin-0", 8), ("sql-1", 16)], TINY, ["q_proj", "v_proj", "gate_proj"], seed=7)
    assert [a.name for a in out] == ["fin-0", "sql-1"]
    for a in out:
        cfg = json.loads((a.path / "adapter_config.json").read_text())
        assert (
            cfg["peft_type"] == "LORA"
            and cfg["r"] == a.rank
            and cfg["target_modules"] == ["q_proj", "v_proj", "gate_proj"]
        )
        tensors = read_safetensors(a.path / "adapter_model.safetensors")
        assert len(tensors) == 4 * 3 * 2 == a.num_tensors
        dtype, A = tensors["base_model.model.model.layers.3.mlp.gate_proj.lora_A.weight"]
        assert dtype == "BF16" and A.shape == (a.rank, 256)
        _, B = tensors["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
        assert B.shape == (128, a.rank)
        vals = bfloat16_bits_to_float32(B)
        assert 0.015 < float(vals.std()) < 0.025 and float(np.abs(vals).max()) > 0  # B is random, not PEFT's zeros


def test_make_adapters_seeded_and_prefix_stable(tmp_path):
    a = make_adapters(tmp_path / "a", [("x", 8), ("y", 8)], TINY, seed=1)
    b = make_adapters(tmp_path / "b", [("x", 8), ("y", 8), ("z", 16)], TINY, seed=1)
    c = make_adapters(tmp_path / "c", [("x", 8)], TINY, seed=2)
    rd = lambda r: (r.path / "adapter_model.safetensors").read_bytes()  # noqa: E731
    assert rd(a[0]) == rd(b[0]) and rd(a[1]) == rd(b[1])
    assert rd(a[0]) != rd(a[1]) and rd(a[0]) != rd(c[0])


def test_make_adapters_rejects_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        make_adapters(tmp_path, [("x", 8), ("x", 16)], TINY)
    with pytest.raises(ValueError, match="folder-safe"):
        make_adapters(tmp_path, [("../evil", 8)], TINY)
    with pytest.raises(ValueError, match="ranks must be"):
        make_adapters(tmp_path, [("x", 0)], TINY)
