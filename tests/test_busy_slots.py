"""The busy-slot rule: with fewer slots than adapters, the SLO oracle keeps the expected active adapters
at the mix's own load below the slots (optplace.solver.envelope.BUSY_PER_SLOT), because the twin's
sticky slots queue the rest for tens of seconds beyond it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optplace.bench.busy_slots import _at_bound, mixes
from optplace.bench.solver import family
from optplace.solver import compile_problem
from optplace.solver.capacity import AnalyticCapacity, Mix, SurrogateCapacity
from optplace.solver.envelope import BUSY_PER_SLOT, busy_slots
from optplace.solver.problem import AdapterItem
from optplace.twin.simulate import placement_of, simulate_plan


def test_busy_slots_grow_with_the_load_from_the_low_load_activity() -> None:
    sc = family(100, (16,), "uniform")
    an = AnalyticCapacity(compile_problem(sc, Path(".")))
    pt = an.point(0, 16, 32, 32)
    shares = np.random.default_rng(1).lognormal(0.0, 1.35, 64)
    shares /= shares.sum()
    loads = np.linspace(0.01, 0.99, 12) * pt.lam_max_rps
    busy = [busy_slots(shares * x, pt) for x in loads]
    assert np.all(np.diff(busy) > 0)
    # at a vanishing load the service time is the empty engine's: the analytic model's activity
    tiny = shares * 1e-6
    assert busy_slots(tiny, pt) == pytest.approx(an.active(tiny, pt.service_s), rel=1e-6)
    assert busy_slots(shares * pt.lam_max_rps * 10, pt) == np.inf


def test_the_slo_oracle_refuses_busy_slots_and_accepts_a_slot_per_adapter() -> None:
    sc = family(300, (8, 16), "zipf-0.9")
    orc = SurrogateCapacity.shipped(compile_problem(sc, Path(".")), slo=True)
    assert orc.envelope is not None and orc.envelope.busy_per_slot == BUSY_PER_SLOT
    an = orc.analytic
    L = 32
    pt = an.point(0, 16, L, L)
    # 96 equal adapters at 60 % of the capacity: ~1.5 busy adapters per slot on 32 slots
    rate = 0.6 * an.rho * pt.lam_max_rps / 96
    mix = Mix.of([AdapterItem(i, f"a{i}", 16, rate) for i in range(96)])
    assert busy_slots(mix.rate_array, pt) > BUSY_PER_SLOT * L
    e = orc.evaluate(0, mix, L)
    assert not e.feasible and e.reason == "slo"
    # the same adapters with a slot each are judged on the learned models alone
    assert orc.guard.evaluate(0, mix, 96).feasible


def test_the_twin_agrees_with_the_rule_away_from_its_edge() -> None:
    """Four one-GPU mixes of the bench's grid each side of the threshold (lognormal, Zipf, one-hot and
    uniform rates; 2 adapters per slot on 64): those the rule accepts meet the SLO in the twin, those
    well beyond it (≥ 1.05 busy adapters per slot) miss it — and the verdict does not hang on the bound:
    the accepted ones' worst adapter is within a quarter of it, the others' beyond 1.5 × it."""
    grid = {"ranks": (8,), "slots": (64,), "per_slot": (2.0,), "loads": (0.5, 0.95)}
    sc, rows = mixes(grid=grid)
    rep = simulate_plan(sc, placement_of(sc), Path("."), workers=2)
    judged = 0
    for row, g in zip(rows, rep.gpus, strict=True):
        assert g.slo is not None
        worst_adapter = next(c.value for c in g.slo.checks if c.metric == "ttft_p99_ms")
        if row["busy_per_slot"] <= BUSY_PER_SLOT:
            assert g.slo.ok and worst_adapter < 500.0, row
            judged += 1
        elif row["busy_per_slot"] >= 1.05:
            assert not g.slo.ok and g.ttft_ms_p99 > 2000.0 and worst_adapter > 3000.0, row
            judged += 1
    assert judged >= 6


def test_the_bench_judges_each_mix_again_at_other_ttft_bounds() -> None:
    """``bench busy-slots``' per-bound summary: a mix meets a bound when its worst adapter's p99 is within it
    and every other check holds; a mix that met every bound but served nothing to one light adapter is left
    out; an adapter without a steady-state p99 misses every bound."""

    def row(busy: float, p99: float | None, others: bool = True, nothing: bool = False) -> dict[str, object]:
        return {
            "busy_per_slot": busy,
            "worst_adapter_ttft_p99_ms": p99,
            "worst_adapter_ttft_p50_ms": None if p99 is None else p99 / 4,
            "other_checks_ok": others,
            "served_nothing": nothing,
        }

    rows = [row(0.5, 300.0), row(0.8, 900.0), row(0.85, 400.0, others=False), row(0.7, 100.0, nothing=True)]
    rows += [row(1.1, 4000.0), row(0.95, None)]
    tight, loose = _at_bound(rows, "ttft_p99_ms", 500.0), _at_bound(rows, "ttft_p99_ms", 5000.0)
    # the same judgement on each adapter's median
    assert _at_bound(rows, "ttft_p50_ms", 125.0) | {"metric": "ttft_p99_ms", "bound_ms": 500.0} == tight
    assert (tight["met"], tight["missed"], tight["largest_met"]) == (1, 4, 0.5)
    assert tight["smallest_missed"] == 0.8 and tight["missed_within_threshold"] == 2
    assert (loose["met"], loose["missed"], loose["largest_met"], loose["smallest_missed"]) == (3, 2, 1.1, 0.85)
    assert loose["missed_within_threshold"] == 1


def test_the_rule_counts_activity_at_the_load_the_plan_is_checked_at() -> None:
    """Under the default SLO's headroom the twin checks a plan at the rates × (1 + headroom): the busy-slot
    rule counts activity there, so a mix within the rule at its own rates but beyond it at the checked
    ones is refused."""
    import dataclasses

    sc = family(300, (8, 16), "zipf-0.9")
    orc = SurrogateCapacity.shipped(compile_problem(sc, Path(".")), slo=True)
    env = orc.envelope
    assert env is not None and env.busy_load_scale == orc.slo_load_scale > 1.0
    L, n = 64, 128
    pt = orc.analytic.point(0, 16, L, L)
    shares = np.full(n, 1.0 / n)
    # the total rate whose activity at the checked rates sits just above the rule's edge
    lo, hi = 0.0, pt.lam_max_rps
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if busy_slots(shares * mid * env.busy_load_scale, pt) <= BUSY_PER_SLOT * L else (lo, mid)
    rate = hi * 1.001
    assert busy_slots(shares * rate, pt) < BUSY_PER_SLOT * L < busy_slots(shares * rate * env.busy_load_scale, pt)
    mix = Mix.of([AdapterItem(i, f"a{i}", 16, rate / n) for i in range(n)])
    assert not orc.guard.slots_ok(0, mix, L)
    unscaled = orc.analytic.enveloped(dataclasses.replace(env, busy_load_scale=1.0))
    assert unscaled.slots_ok(0, mix, L)


def test_the_latency_rule_bench_compares_the_twin_with_the_predicted_itl() -> None:
    """``bench latency-rule`` on a small grid: every mix has a prediction and the twin's figures, a p99 is
    never below the mean, and the summary's quantiles, shares and per-slot percentiles are consistent."""
    from optplace.bench.latency_rule import METRICS, run

    out = run(json=True, grid={"ranks": (8,), "slots": (8,), "per_slot": (1.0,), "loads": (0.4, 0.9)})
    rows, summary = out["rows"], out["summary"]
    assert summary["mixes"] == len(rows) == 8
    for r in rows:
        assert r["predicted_itl_ms"] > 0 and r["itl_p99_ms"] >= r["itl_mean_ms"] > 0
    # more load, longer steps: in the twin and in the prediction
    for lo, hi in zip(rows[0::2], rows[1::2]):
        assert hi["load"] > lo["load"] and hi["predicted_itl_ms"] > lo["predicted_itl_ms"]
        assert hi["itl_mean_ms"] > lo["itl_mean_ms"]
    for metric in METRICS:
        s = summary[metric]
        q = s["ratio_quantiles"]
        assert q == sorted(q) and q[0] > 0 and 0.0 <= s["share_within_multiple"] <= 1.0
        assert list(s["p90_by_slots"]) == [8] and q[0] <= s["p90_by_slots"][8] <= q[-1]
