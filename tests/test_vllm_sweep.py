"""The calibration sweep's load points scaled to a machine's measured capacity (no vLLM needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from optplace.vllm.sweep import (
    DEFAULT_POINTS,
    MAX_POINT_WINDOW_S,
    MIN_POINT_REQUESTS,
    NOMINAL_CAPACITY_RPS,
    SLOW_MACHINE_LOAD,
    LoadPoint,
    SweepConfig,
    mean_request_tokens,
    rate_scale,
    saved_point,
    scale_points,
    sweep_workload,
)

CFG = SweepConfig(model_path=Path("."), adapters_dir=Path("."))


def _offered_share(points: tuple[LoadPoint, ...], capacity_rps: float) -> list[float]:
    return [sum(p.rates_rps) / capacity_rps for p in points]


def test_scaled_points_offer_the_same_shares_of_a_slower_or_faster_machine():
    nominal = _offered_share(DEFAULT_POINTS, NOMINAL_CAPACITY_RPS)
    for capacity in (2.1, 8.0, 40.0):
        scaled = scale_points(DEFAULT_POINTS, capacity / NOMINAL_CAPACITY_RPS)
        assert [p.label for p in scaled] == [p.label for p in DEFAULT_POINTS]
        # rates are rounded to 1e-3 req/s: shares within 1 % of the nominal machine's
        np.testing.assert_allclose(_offered_share(scaled, capacity), nominal, rtol=0.01)
        # the lengths of each point are kept (they are what some points identify)
        assert [(p.mean_input_tokens, p.mean_output_tokens) for p in scaled] == [
            (p.mean_input_tokens, p.mean_output_tokens) for p in DEFAULT_POINTS
        ]


def test_rate_scale_is_the_capacity_ratio_at_nominal_speed_and_lighter_on_slower_machines():
    # nominal and faster: the capacity ratio itself (the points' designed loads)
    assert rate_scale(NOMINAL_CAPACITY_RPS) == 1.0 and rate_scale(2 * NOMINAL_CAPACITY_RPS) == 2.0
    # slower: a share of the ratio, from SLOW_MACHINE_LOAD (far slower) up to 1, rising with the speed
    caps = np.linspace(1.5, NOMINAL_CAPACITY_RPS, 50)  # above the lower bound on the scale
    shares = np.array([rate_scale(c) / (c / NOMINAL_CAPACITY_RPS) for c in caps])
    assert np.all(np.diff(shares) > 0) and SLOW_MACHINE_LOAD < shares[0] < SLOW_MACHINE_LOAD + 0.05
    assert np.all(np.diff([rate_scale(c) for c in caps]) > 0)  # a faster server never gets lighter points
    # a machine serving 2.3 req/s: the saturated point offers ~1.3x its capacity, the mid point ~half
    sat = next(p for p in scale_points(DEFAULT_POINTS, rate_scale(2.3)) if p.label == "cal-4x8-sat")
    assert 1.2 <= sum(sat.rates_rps) / 2.3 <= 1.4
    # a dead or broken server's reading stays within bounds
    assert rate_scale(0.0) > 0 and rate_scale(1e6) < 10


def test_windows_lengthen_only_to_hold_enough_requests_and_boundedly():
    # the nominal machine's points are unchanged (every one holds ≥ 10 requests)
    assert scale_points(DEFAULT_POINTS, 1.0) == DEFAULT_POINTS
    assert [p.window_s for p in scale_points(DEFAULT_POINTS, 3.0)] == [p.window_s for p in DEFAULT_POINTS]
    for scale in (0.3, 0.1, 0.02):
        for nominal, p in zip(DEFAULT_POINTS, scale_points(DEFAULT_POINTS, scale)):
            expected = sum(p.rates_rps) * p.window_s
            assert p.window_s >= nominal.window_s and p.window_s <= MAX_POINT_WINDOW_S
            assert expected >= MIN_POINT_REQUESTS - 1e-9 or p.window_s == MAX_POINT_WINDOW_S, (scale, p)
            if p.window_s > nominal.window_s:  # lengthened no more than needed
                assert expected == pytest.approx(MIN_POINT_REQUESTS, rel=0.02) or p.window_s == MAX_POINT_WINDOW_S


def test_saved_point_replays_the_rates_window_and_lengths_a_run_was_drawn_with(tmp_path):
    (point,) = scale_points([p for p in DEFAULT_POINTS if p.label == "cal-2x1.5-longctx"], 0.3)
    run = tmp_path / point.label
    run.mkdir()
    doc = {
        "label": point.label,
        "window_s": point.window_s,
        "workload": {
            "rates_rps": list(point.rates_rps),
            "seed": 7,
            "lengths": "lognormal",
            "mean_input_tokens": point.mean_input_tokens,
            "mean_output_tokens": point.mean_output_tokens,
            "cv": CFG.cv,
        },
    }
    (run / "run.json").write_text(json.dumps(doc))
    back = saved_point(run)
    assert back == point
    a = sweep_workload(CFG, back.rates_rps, back.window_s, 7, back.mean_input_tokens, back.mean_output_tokens)
    b = sweep_workload(CFG, point.rates_rps, point.window_s, 7, point.mean_input_tokens, point.mean_output_tokens)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.input_tokens, b.input_tokens)


def test_mean_request_tokens_is_the_truncated_mean_of_the_sweep_lengths():
    m = mean_request_tokens(CFG)
    # 120 + 40 tokens before truncation; the caps (1,000 in, 1,400 in all) cut little of a cv-0.8 log-normal
    assert 150.0 < m < 162.0
    assert m == pytest.approx(mean_request_tokens(CFG, seed=1), rel=0.02)
