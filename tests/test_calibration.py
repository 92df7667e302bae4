"""Tests for the reference loader, the step-time model and the calibration fit."""

from __future__ import annotations

from collections import Counter

import pytest

from optplace.bench.reference import find_reference_dir, load_dt_validation


@pytest.fixture(scope="module")
def runs():
    return load_dt_validation()


def test_reference_counts(runs):
    assert sum(r.has_results for r in runs) == 294
    assert sum(r.is_oom for r in runs) == 30
    assert all(r.published is not None for r in runs if r.has_results)
    assert {r.model for r in runs} == {"llama-3.1-8b-instruct", "qwen-2.5-7b-instruct"}


def test_round_robin_assignment(runs):
    for r in runs:
        assert len(r.adapter_ranks) == len(r.adapter_rates) == r.max_cpu_loras
        n, k = r.max_cpu_loras, len(r.rate_list)
        want = Counter(r.rate_list[i % k] for i in range(n))
        assert Counter(r.adapter_rates) == want
        assert max(r.adapter_ranks) <= r.max_lora_rank
    ok = [r for r in runs if r.has_results]
    # On runs the server kept up with, the real arrival count must match the rebuilt aggregate rate
    # (Poisson counts within a few sigma); overloaded runs issue fewer (the client stalls).
    for r in ok:
        if r.starved:
            continue
        expected = r.aggregate_rate_rps * r.window_s
        assert abs(r.twin_arrivals - expected) < 6 * expected**0.5 + 5


def test_shuffle_is_seeded(runs):
    again = load_dt_validation()
    assert [r.adapter_rates for r in again] == [r.adapter_rates for r in runs]
    other = load_dt_validation(seed=1)
    assert any(a.adapter_rates != b.adapter_rates for a, b in zip(other, runs))


def test_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTPLACE_REFERENCE", str(find_reference_dir()))
    assert (find_reference_dir() / "real_runs.csv").is_file()
