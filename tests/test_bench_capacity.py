"""The capacity benchmark's reading of the real runs: the censored answer and the throughput-implied estimate."""

from __future__ import annotations

from optplace.bench.capacity import real_capacity, throughput_implied
from optplace.calibration.reference import load_dt_validation

LLAMA = "llama-3.1-8b-instruct"
HIGH = "rank_16_rates_1.6_0.8_0.4"
LOW = "rank_16_rates_0.1_0.05_0.025"


def test_real_capacity_is_censored_by_the_tested_grid() -> None:
    runs = load_dt_validation()
    ok, starved = real_capacity(runs, LLAMA, HIGH)
    assert (ok, starved) == (32, 64)  # the study tested 32 (one slot count passes) and 64 (all starve)
    ok_low, starved_low = real_capacity(runs, LLAMA, LOW)
    assert ok_low == 384 and starved_low is None


def test_throughput_implied_estimate_lies_inside_the_censored_interval() -> None:
    runs = load_dt_validation()
    for group in (HIGH, LOW):
        ok, starved = real_capacity(runs, LLAMA, group)
        implied = throughput_implied(runs, LLAMA, group)
        assert implied >= ok
        assert starved is None or implied < starved
    # A stricter loss rule can only lower the estimate.
    assert throughput_implied(runs, LLAMA, HIGH, max_loss=0.0) < throughput_implied(runs, LLAMA, HIGH)


def test_throughput_implied_estimate_uses_the_offered_load_near_its_own_count() -> None:
    # The estimate falls between 32 and 64 adapters, so its offered load per adapter is read between the
    # real runs at 32 and 64 (not averaged with the 8- or 384-adapter runs).
    runs = load_dt_validation()
    mine = [
        r
        for r in runs
        if r.model == LLAMA
        and r.config_group == HIGH
        and r.status == "ok"
        and r.total_throughput
        and r.offered_total_tok_s
    ]
    peak = max(r.total_throughput for r in mine)

    def per_adapter(n: int) -> float:
        vals = [r.offered_total_tok_s / r.n_adapters for r in mine if r.n_adapters == n]
        return sum(vals) / len(vals)

    implied = throughput_implied(runs, LLAMA, HIGH)
    assert 32 <= implied < 64
    lo, hi = sorted((per_adapter(32), per_adapter(64)))
    assert implied * lo <= peak / 0.9 < (implied + 1) * hi
