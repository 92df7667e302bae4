"""Latency metrics of the twin (TTFT, TPOT, ITL as the reference benchmark computes them) and their reports."""

from __future__ import annotations

import numpy as np
import pytest

from optplace.twin.engine.result import CompletedRequests, latency_stats, weighted_percentile


def test_weighted_percentile_is_numpy_percentile_of_the_expanded_list() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        v = rng.exponential(10.0, size=rng.integers(1, 30))
        w = rng.integers(0, 6, size=v.size)
        w[0] = max(w[0], 1)
        for q in (0, 37.5, 50, 90, 99, 100):
            assert weighted_percentile(v, w, q) == pytest.approx(np.percentile(np.repeat(v, w), q), rel=1e-12)
    assert weighted_percentile(np.zeros(0), np.zeros(0, np.int64), 99) == 0.0


def _hand_made(fast_forwarded: bool) -> CompletedRequests:
    # Five steps ending at 0.1, 0.2, 0.4, 0.5, 0.9 s.
    # A: arrives 0.00, first token step 0, last step 3, 4 tokens -> gaps 0.1, 0.2, 0.1
    # B: arrives 0.05, first token step 1, last step 4, 4 tokens -> gaps 0.2, 0.1, 0.4
    # C: arrives 0.30, one token at step 2 (no gap)
    # D: arrives 0.00, first token step 0, last step 4, 3 tokens: preempted (4 steps, 2 gaps) -> 0.4, 0.4
    if fast_forwarded:  # steps 2-3 as one run starting at 0.2: durations 0.2, 0.1
        explicit, runs = np.array([0.1, 0.2, 0.9]), np.array([[2, 2, 0.2, 0.2, -0.1]])
    else:
        explicit, runs = np.array([0.1, 0.2, 0.4, 0.5, 0.9]), np.zeros((0, 5))
    return CompletedRequests(
        adapter=np.array([0, 1, 1, 0]),
        arrival_s=np.array([0.0, 0.05, 0.3, 0.0]),
        first_token_s=np.array([0.1, 0.2, 0.4, 0.1]),
        finish_s=np.array([0.5, 0.9, 0.4, 0.9]),
        input_tokens=np.array([10, 10, 10, 10]),
        output_tokens=np.array([4, 4, 1, 3]),
        n_steps=5,
        explicit_end_s=explicit,
        ff_runs=runs,
    )


@pytest.mark.parametrize("fast_forwarded", [False, True])
def test_hand_made_requests_have_known_latency(fast_forwarded: bool) -> None:
    req = _hand_made(fast_forwarded)
    np.testing.assert_allclose(req.step_end_s(), [0.1, 0.2, 0.4, 0.5, 0.9])
    st = latency_stats(req)
    ttft = [100.0, 150.0, 100.0, 100.0]
    tpot = [400 / 3, 700 / 3, 400.0]
    itl = [100, 200, 100, 200, 100, 400, 400, 400]
    assert st.completed == 4
    assert st.ttft_ms_mean == pytest.approx(np.mean(ttft))
    assert st.ttft_ms_p50 == pytest.approx(np.median(ttft))
    assert st.ttft_ms_p99 == pytest.approx(np.percentile(ttft, 99))
    assert st.tpot_ms_mean == pytest.approx(np.mean(tpot))
    assert st.tpot_ms_p99 == pytest.approx(np.percentile(tpot, 99))
    assert st.itl_ms_mean == pytest.approx(np.mean(itl))
    assert st.itl_ms_p50 == pytest.approx(np.percentile(itl, 50))
    assert st.itl_ms_p99 == pytest.approx(np.percentile(itl, 99))
    # a subset: adapter 1 only (B and C)
    sub = latency_stats(req, req.adapter == 1)
    assert sub.completed == 2
    assert sub.ttft_ms_p99 == pytest.approx(np.percentile([150.0, 100.0], 99))
    assert sub.itl_ms_p99 == pytest.approx(np.percentile([200, 100, 400], 99))
    assert sub.tpot_ms_mean == pytest.approx(700 / 3)
    assert latency_stats(req, np.zeros(4, bool)).completed == 0


def _engine_run(rate: float, n: int, slots: int, duration: float = 300.0, fast_forward: bool = True):
    from optplace.specs import resolve_profile
    from optplace.specs.model import PoissonArrivals, ShareGptLengths
    from optplace.twin.engine import engine_config_from_profile, simulate_engine
    from optplace.twin.workload import generate_workload

    prof = resolve_profile(model="llama-3.1-8b-instruct", gpu="h100-64gb")
    wl = generate_workload(
        PoissonArrivals(kind="poisson"),
        ShareGptLengths(kind="sharegpt"),
        [rate] * n,
        duration,
        np.random.default_rng(1),
    )
    cfg = engine_config_from_profile(
        prof, [16] * n, slots, max_cpu_loras=n, max_lora_rank=16, max_num_seqs=2048, max_num_batched_tokens=2048
    )
    return simulate_engine(cfg, wl, fast_forward=fast_forward)


def test_engine_latency_agrees_with_its_summary_fields_and_without_fast_forward() -> None:
    fast, slow = _engine_run(0.3, 64, 32, fast_forward=True), _engine_run(0.3, 64, 32, fast_forward=False)
    a, b = fast.latency(), slow.latency()
    assert fast.explicit_steps < fast.steps  # the clock really mixes fast-forwarded and explicit steps
    assert a.completed == fast.finished > 100
    assert a.itl_ms_mean == pytest.approx(fast.itl_ms_mean, rel=1e-9)
    assert a.tpot_ms_mean == pytest.approx(fast.tpot_ms_mean, rel=1e-9)
    assert (a.ttft_ms_p50, a.ttft_ms_p99) == pytest.approx((fast.ttft_ms_p50, fast.ttft_ms_p99), rel=1e-9)
    for f in ("ttft_ms_p99", "tpot_ms_p99", "itl_ms_p50", "itl_ms_p99"):
        assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-6), f
    # ITL p99 by brute force: every request's gaps are the durations of the steps it decoded in
    req = slow.requests
    clock = req.step_end_s()
    assert np.all(np.diff(clock) > 0)
    f0, f1 = req.token_steps(clock)
    dur = np.diff(clock, prepend=0.0) * 1e3
    gaps = np.concatenate([dur[s + 1 : e + 1] for s, e, o in zip(f0, f1, req.output_tokens) if o > 1])
    assert b.itl_ms_p99 == pytest.approx(np.percentile(gaps, 99), rel=1e-9)
    assert b.itl_ms_p99 > b.itl_ms_mean  # prefill chunks make some steps longer


def test_simulate_reports_per_adapter_and_steady_state_latency() -> None:
    from optplace.specs import Constraints
    from optplace.specs.model import Adapter
    from optplace.twin.simulate import gpu_report

    res = _engine_run(0.3, 8, 8, duration=200.0)
    adapters = [Adapter(name=f"a{i}", rank=16, rate_rps=0.3) for i in range(8)]
    rep = gpu_report(0, "h100-64gb", adapters, 8, 8, 16, 1000, res, Constraints())
    d = rep.to_json()
    lat = d["latency"]
    assert lat["warmup_s"] == pytest.approx(20.0)
    assert lat["window"]["completed"] == res.finished
    assert lat["window"]["ttft_ms_p50"] == pytest.approx(d["ttft_ms_p50"], rel=1e-3)
    assert 0 < lat["steady"]["completed"] < lat["window"]["completed"]
    assert lat["steady"]["loss"] is None  # no workload given: steady-state offered load unknown
    per = d["per_adapter"]
    assert sum(a["latency"]["window"]["completed"] for a in per) == res.finished
    assert all(a["latency"]["window"]["completed"] == a["completed"] for a in per)
    keys = {
        "completed",
        "loss",
        "ttft_ms_mean",
        "ttft_ms_p50",
        "ttft_ms_p99",
        "tpot_ms_mean",
        "tpot_ms_p99",
        "itl_ms_mean",
        "itl_ms_p99",
    }
    assert set(per[0]["latency"]["steady"]) == keys


def test_itl_percentiles_of_small_and_large_subsets_are_those_of_their_gap_lists() -> None:
    # A subset with fewer gaps than the run has steps takes the order statistics of its own gaps; a
    # larger one weights the sorted steps. Both must be numpy.percentile of the subset's gap list.
    from optplace.twin.engine.result import LatencyMeter

    res = _engine_run(0.05, 64, 32)  # light adapters: each has fewer gaps than the run has steps
    req = res.requests
    meter = LatencyMeter(req)
    clock = req.step_end_s()
    f0, f1 = req.token_steps(clock)
    dur = np.diff(clock, prepend=clock[:1]) * 1e3
    paths = set()
    for mask in [req.adapter == a for a in range(0, 64, 7)] + [np.ones(len(req), bool)]:
        idx = np.flatnonzero(mask)
        gaps = [
            dur[f0[i] + 1 : f1[i] + 1]
            if f1[i] - f0[i] == req.output_tokens[i] - 1
            else np.full(
                req.output_tokens[i] - 1, (req.finish_s[i] - req.first_token_s[i]) * 1e3 / (req.output_tokens[i] - 1)
            )
            for i in idx
            if req.output_tokens[i] > 1
        ]
        expanded = np.concatenate(gaps)
        paths.add(expanded.size < meter.n_steps)
        st = meter.stats(mask)
        assert st.itl_ms_p50 == pytest.approx(np.percentile(expanded, 50), rel=1e-12)
        assert st.itl_ms_p99 == pytest.approx(np.percentile(expanded, 99), rel=1e-12)
    assert paths == {True, False}  # both ways of computing were exercised
