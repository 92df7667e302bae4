"""Tests for the reference loader, the step-time model and the calibration fit."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from optplace.calibration.reference import find_reference_dir, load_dt_validation


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


# --- step-time model -------------------------------------------------------------------------------

import json  # noqa: E402

from optplace.calibration.reference import read_csv_rows  # noqa: E402
from optplace.calibration.reference_fit import (  # noqa: E402
    MODELS,
    fit_adapter_load,
    fit_profile_sections,
    fit_scheduler_overhead,
    fit_step_time,
    write_profile,
)
from optplace.twin.steptime import SchedulerOverhead, StepTimeModel  # noqa: E402


def test_published_form_matches_formula():
    m = StepTimeModel.from_params({"form": "published_v1", "coef": {"a": 0.0438, "b": 10.54, "c": 1.93, "d": 200.0}})
    for b, n_lora in ((1, 1), (200, 100), (900, 256)):
        want = (0.0438 * b + 10.54) * (1.93 * n_lora + 200.0) / 100.0
        assert m.step_ms(b, 5000, b, n_lora, 32) == pytest.approx(want, rel=1e-12)  # prefill and rank ignored


def test_step_time_monotone_and_rank_binding():
    m = StepTimeModel.from_params({"form": "lora_mult_v2", "coef": {"g_rank": 0.2, "c_ctx": 0.05}})
    assert m.step_s(100, 0, 100, 10, 8) < m.step_s(200, 0, 200, 10, 8)
    assert m.step_s(100, 0, 100, 10, 8) < m.step_s(100, 500, 100, 10, 8)
    assert m.step_s(100, 0, 100, 10, 8) < m.step_s(100, 0, 100, 50, 8)
    assert m.step_s(100, 0, 100, 10, 8) < m.step_s(100, 0, 100, 10, 32)
    assert m.step_s(100, 0, 100, 10, 8, context_tokens=1e4) < m.step_s(100, 0, 100, 10, 8, context_tokens=1e5)
    bound = m.bind(32)
    assert bound.step_s(100, 0, 100, 10, 8) == pytest.approx(m.step_s(100, 0, 100, 10, 32))
    scaled = StepTimeModel.from_params({"form": "lora_mult_v2", "coef": {}, "time_scale": 2.0})
    assert scaled.step_s(50, 10, 50, 3, 8) == pytest.approx(2 * StepTimeModel().step_s(50, 10, 50, 3, 8))


@pytest.mark.parametrize("form", ["lora_mult_v2", "lora_add_v3", "published_v1"])
@pytest.mark.parametrize("bound", [None, (16, 8), (64, 256)])
def test_the_engines_folded_step_time_is_bitwise_the_models(form, bound):
    """``step_s_fn()`` (what the engine calls every step) returns exactly ``step_s``'s float: bound or not,
    every form, with and without a fixed LoRA cost and slot term."""
    coef = {"g0": 0.3, "g_slot": 0.002, "c_ctx": 0.05, "h_pf": 0.4} if form != "published_v1" else {}
    if form == "published_v1":
        coef = {"a": 0.0438, "b": 10.54, "c": 1.93, "d": 200.0}
    m = StepTimeModel.from_params({"form": form, "coef": coef, "time_scale": 1.3})
    if bound is not None:
        m = m.bind(*bound)
    fn = m.step_s_fn()
    rng = np.random.default_rng(3)
    for _ in range(300):
        ns, pf, dec, d = (int(x) for x in rng.integers(0, 512, 4))
        rs = int(rng.integers(0, 64)) * d
        k = float(rng.integers(0, 200_000))
        want = m.step_s(ns, pf, dec, d, rs / d if d else 0.0, k)
        assert fn(ns, pf, dec, d, rs, k) == want  # bitwise: the twin's golden outputs depend on it


@pytest.mark.parametrize(
    "params",
    [
        {"form": "queue_linear_v1", "coef": {"s0": 0.1, "s_run": 0.004, "s_wait": 0.0003, "s_ratio": 0.7}},
        {"form": "queue_linear_v1", "coef": {"s0": -2.0, "s_run": 0.004}, "time_scale": 1.5},  # clipped at 0
        {"form": "none"},
    ],
)
def test_the_engines_folded_overhead_is_bitwise_the_models(params):
    m = SchedulerOverhead.from_params(params)
    for slots, served in ((8, 100), (64, 32), (1, 0)):
        fn = m.overhead_s_fn(slots, served)
        for running, waiting in ((0, 0), (7, 3000), (250, 12), (900, 90_000)):
            assert fn(running, waiting) == m.overhead_s(running, waiting, slots, served)


def test_unknown_forms_and_coefficients_rejected():
    with pytest.raises(ValueError):
        StepTimeModel.from_params({"form": "magic", "coef": {}})
    with pytest.raises(ValueError):
        StepTimeModel.from_params({"form": "lora_mult_v2", "coef": {"nope": 1.0}})
    with pytest.raises(ValueError):
        SchedulerOverhead.from_params({"form": "queue_linear_v1", "coef": {"nope": 1.0}})


def test_bundled_profiles_load_into_models():
    from optplace.specs import resolve_profile

    for model in MODELS:
        p = resolve_profile(model=model, gpu="h100-64gb")
        m = StepTimeModel.from_params(p.step_time)
        o = SchedulerOverhead.from_params(p.scheduler_overhead)
        assert 5.0 < m.step_ms(1, 0, 1, 1, 8) < 40.0
        assert m.step_ms(900, 1000, 900, 128, 16) > 100.0
        assert o.overhead_ms(10, 0, 8, 8) < o.overhead_ms(10, 20000, 8, 384)


# --- calibration fit -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref():
    return find_reference_dir()


def test_additive_form_charges_each_adapter_the_same_whatever_the_batch():
    coef = {"g_lora": 0.3, "g_rank": 0.5, "g0": 0.8, "h_pf": 2.0, "g_slot": 0.001}
    v3 = StepTimeModel.from_params({"form": "lora_add_v3", "coef": coef}).bind(16, 64)
    v2 = StepTimeModel.from_params({"form": "lora_mult_v2", "coef": {**coef, "g_lora": 0.02}}).bind(16, 64)

    def per_adapter(m, n):
        return m.step_ms(n, 0, n, 5, 8) - m.step_ms(n, 0, n, 4, 8)

    # v3: g_lora ms per adapter at rank 8, x (1 + g_rank (16/8 - 1)) for a server bound to rank 16
    assert per_adapter(v3, 10) == pytest.approx(0.3 * 1.5) and per_adapter(v3, 600) == pytest.approx(0.3 * 1.5)
    assert per_adapter(v2, 600) > 2 * per_adapter(v2, 10)  # the multiplicative form scales it with c0 + c_seq·N
    # the fixed LoRA cost still multiplies the batch work and inflates prefill by h_pf
    fixed = 0.8 + 0.001 * (64 - 300)
    base = v3.step_ms(10, 0, 10, 0, 8)
    assert v3.step_ms(10, 100, 10, 0, 8) - base == pytest.approx(v3.c_pf * 100 * (1 + 2.0 * fixed))


@pytest.mark.parametrize("form", ["lora_mult_v2", "lora_add_v3"])
@pytest.mark.parametrize("model", MODELS)
def test_fit_reproduces_microbenchmarks(ref, model, form):
    m = fit_step_time(ref, model, fit_globals=False, form=form)
    assert m.form == form
    assert m.c0 > 0 and m.c_seq > 0 and m.g0 > 0 and m.g_lora > 0 and m.c_pf > 0
    for r in read_csv_rows(ref / "v1_base_latency.csv"):
        if r["model"] != model or r["experiment"] != "decode":
            continue
        b = float(r["mean_batch_size"])
        ctx = b * (float(r["total_input_tokens"]) / float(r["num_prompts"]) + float(r["output_len"]) / 2)
        lin = m.c0 + m.c_seq * b
        pred = lin + m.c_ctx * ctx / 1000  # no LoRA: the lora factor is 1
        assert pred == pytest.approx(float(r["mean_itl_ms"]), rel=0.08)
    for r in read_csv_rows(ref / "v1_lora_decode_overhead.csv"):
        if r["model"] != model or r["experiment"] != "lora" or r["status"] != "ok" or not r["mean_loras_by_batch"]:
            continue
        b = float(r["mean_batch_size"])
        pred = m.step_ms(
            round(b),
            0,
            round(b),
            round(float(r["mean_loras_by_batch"])),
            8,
            context_tokens=b * (1 + float(r["output_len"]) / 2),
        )
        assert pred == pytest.approx(float(r["mean_itl_ms"]), rel=0.08)


def test_only_fittable_forms_are_fitted(ref):
    with pytest.raises(ValueError, match="cannot fit step-time form 'published_v1'"):
        fit_step_time(ref, MODELS[0], form="published_v1")


def test_fit_is_deterministic_and_write_keeps_other_keys(ref, tmp_path):
    a = fit_profile_sections(ref, MODELS[0])
    b = fit_profile_sections(ref, MODELS[0])
    assert a == b
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "x", "memory": {"k": 1}, "step_time": {"form": "published", "coef": {}}}))
    write_profile(path, a)
    data = json.loads(path.read_text())
    assert data["memory"] == {"k": 1} and data["name"] == "x"
    assert data["step_time"] == a["step_time"] and data["adapter_load"] == a["adapter_load"]
    assert "v1_base_latency.csv" in data["step_time"]["source"]


def test_adapter_load_and_overhead_fit(ref):
    al = fit_adapter_load(ref, "llama-3.1-8b-instruct")
    assert al["cpu_to_gpu_ms"]["16"]["16"] == pytest.approx(6.3839)  # README: 6.38 ms for rank 16/16
    assert set(al["cpu_to_gpu_ms"]) == {"8", "16", "32"}
    ov = fit_scheduler_overhead(ref)
    # a deep waiting queue with few slots costs milliseconds per step; with slots for all, far less
    assert 2.0 < ov.overhead_ms(200, 18000, 8, 448) < 12.0
    assert ov.overhead_ms(200, 18000, 448, 448) < ov.overhead_ms(200, 18000, 8, 448)


def test_length_correlation_fit(ref):
    import numpy as np

    from optplace.calibration.reference_fit import (
        fit_length_correlation,
        kv_tokens_per_running_request,
        repair_lengths,
        time_avg_context,
    )

    kv = kv_tokens_per_running_request(ref)
    assert all(330 < v < 380 for v in kv.values())
    fit = fit_length_correlation(ref, n=40_000)
    assert fit["independent_tokens"] > fit["target_tokens"] + 50  # independence overstates KV per request
    assert -0.7 < fit["rho"] < -0.2
    rng = np.random.default_rng(3)
    inp = rng.integers(4, 1000, 40_000)
    out = rng.integers(4, 1000, 40_000)
    i2, o2 = repair_lengths(inp, out, fit["rho"], np.random.default_rng(4))
    assert sorted(i2) == sorted(inp)  # marginals kept (outputs only cut where the 2048 total binds)
    assert np.all(i2 + o2 <= 2048)
    assert np.corrcoef(i2, o2)[0, 1] < -0.2
    assert time_avg_context(i2, o2) < time_avg_context(inp, out)
