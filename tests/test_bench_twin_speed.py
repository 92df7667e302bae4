"""Tests of ``optplace bench twin-speed`` helpers (selection and one timed run)."""

from __future__ import annotations

from types import SimpleNamespace

from optplace.bench.twin_speed import select_runs, time_run


def _fake(run_id, model, rates, max_loras, served, rank=16, window=60.0):
    rate_list = tuple(sorted(set(rates)))
    adapter_rates = tuple(rates[i % len(rates)] for i in range(served))
    return SimpleNamespace(
        run_id=run_id,
        model=model,
        rate_list=rate_list,
        adapter_rates=adapter_rates,
        adapter_ranks=tuple((8, rank)[i % 2] for i in range(served)),
        max_loras=max_loras,
        max_cpu_loras=served,
        max_lora_rank=rank,
        window_s=window,
        aggregate_rate_rps=float(sum(adapter_rates)),
    )


def test_select_runs_spreads_and_keeps_heaviest_per_group():
    runs = [
        _fake(f"{m}-{g}-{i}", m, (1.6, 0.8, 0.4) if g == "hi" else (0.1, 0.05, 0.025), 8, 8 * (i + 1))
        for m in ("llama-3.1-8b-instruct", "qwen-2.5-7b-instruct")
        for g in ("hi", "lo")
        for i in range(20)
    ]
    sel = select_runs(runs, stride=8)
    ids = {r.run_id for r in sel}
    for m in ("llama-3.1-8b-instruct", "qwen-2.5-7b-instruct"):
        for g in ("hi", "lo"):
            assert f"{m}-{g}-19" in ids  # the heaviest of the group
            assert f"{m}-{g}-0" in ids  # the lightest
    assert len(sel) == 4 * 4  # indices 0, 8, 16 and the heaviest (19) per group


def test_time_run_simulates_the_configuration():
    row = time_run(_fake("x", "llama-3.1-8b-instruct", (0.4, 0.2), 4, 8, window=120.0), seed=1)
    assert row.simulated_s == 120.0
    assert row.arrivals > 0 and 0 < row.completed <= row.arrivals
    assert row.steps > 0 and row.engine_wall_s > 0 and row.engine_cpu_s >= 0
    assert row.speedup > 1.0  # faster than real time by far on 8 light adapters
