"""`validate --engine vllm`, the twin-vs-real comparison, saved runs and the profile fit (no vLLM needed:
a fake OpenAI server process, a fake server that dies at start, and synthetic engine traces)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from optplace.calibration.runs_fit import StepSamples, fit_profile, fit_step_time, step_samples
from optplace.cli import app
from optplace.specs import load_profile_file
from optplace.twin.steptime import StepTimeModel
from optplace.vllm.compare import (
    compare_gpu,
    mean_of_runs,
    rel_error,
    render_comparison,
    render_latency,
    render_routing,
)
from optplace.vllm.launcher import pick_free_port
from optplace.vllm.runs import RunError, kv_tokens_from_log, load_run, save_run
from helpers import FAKE_VLLM
from vllm_helpers import KV_OOM_LINE

runner = CliRunner()

SPEC = """\
name: tiny-val
model: tiny-llama
gpu: cpu
serving: {max_num_seqs: 128, max_num_batched_tokens: 2048}
workload:
  duration_s: 60
  arrivals: {kind: poisson}
  lengths: {kind: fixed, input_tokens: 16, output_tokens: 8}
adapters:
  - {name: a0, rank: 8, rate_rps: 4.0}
  - {name: a1, rank: 16, rate_rps: 4.0}
placement:
  - {max_loras: 2, adapters: [a0, a1]}
seed: 5
"""


def _gpu(name="x", completed=(3, 0), offered=(10.0, 5.0), thr=100.0, eng=120.0, starved=False, oom=False):
    return {
        "index": 0,
        "max_loras": 2,
        "adapters": ["a", "b"],
        "offered_tok_s": sum(offered),
        "throughput_tok_s": thr,
        "engine_tok_s": eng,
        "starved": starved,
        "oom": oom,
        "per_adapter": [{"name": n, "offered_tok_s": o, "completed": c} for n, o, c in zip("ab", offered, completed)],
    }


def test_comparison_errors_verdicts_and_zero_sets():
    c = compare_gpu(_gpu(thr=110.0, eng=126.0), _gpu())
    assert c.throughput_error == pytest.approx(0.10) and c.engine_error == pytest.approx(0.05)
    assert c.twin_zero == c.real_zero == ("b",) and c.same_verdict and c.within(0.15) and not c.within(0.08)
    # same rates but another adapter starved, or another verdict: not within any tolerance
    assert not compare_gpu(_gpu(completed=(0, 4)), _gpu()).within(1.0)
    assert not compare_gpu(_gpu(starved=True), _gpu()).within(1.0)
    # an adapter with no offered load is not "completing nothing"
    assert compare_gpu(_gpu(offered=(10.0, 0.0)), _gpu()).twin_zero == ()
    assert rel_error(0.0, 0.0) == 0.0 and math.isinf(rel_error(1.0, 0.0)) and rel_error(None, 1.0) is None
    both_oom = compare_gpu(_gpu(oom=True, eng=None), _gpu(oom=True, eng=None))
    assert both_oom.within(0.01)
    table = render_comparison([c], ["cfg-A"])
    assert "cfg-A" in table and "+10.0%" in table and "yes" in table.splitlines()[-1]


def _lat(ttft50, ttft99, itl, itl99, completed=10):
    win = {
        "completed": completed,
        "ttft_ms_p50": ttft50,
        "ttft_ms_p99": ttft99,
        "itl_ms_mean": itl,
        "itl_ms_p99": itl99,
    }
    return {"warmup_s": 1.0, "window": win, "steady": win}


def test_latency_comparison_per_gpu_and_adapter_and_mean_of_runs():
    twin, real = _gpu(), _gpu()
    twin["latency"], real["latency"] = _lat(120.0, 390.0, 11.0, 40.0), _lat(100.0, 300.0, 10.0, 50.0)
    twin["per_adapter"][0]["latency"] = _lat(60.0, 80.0, 9.0, 20.0)
    real["per_adapter"][0]["latency"] = _lat(50.0, 100.0, 10.0, 20.0)
    c = compare_gpu(twin, real)
    assert c.latency_error("ttft_ms_p50") == pytest.approx(0.2) and c.latency_error("ttft_ms_p99") == pytest.approx(0.3)
    assert c.latency_error("itl_ms_mean") == pytest.approx(0.1) and c.latency_error("itl_ms_p99") == pytest.approx(-0.2)
    a, b = c.adapter_latency
    assert a.name == "a" and a.error("ttft_ms_p99") == pytest.approx(-0.2) and b.error("ttft_ms_p50") is None
    assert c.to_json()["latency"]["ttft_ms_p50"] == {"twin": 120.0, "real": 100.0, "error": 0.2}
    assert "+20.0%" in render_comparison([c]) and "-20.0%" in render_latency([c], ["cfg"])
    # nothing completed on one side: no latency to compare, not an error of 0
    real["latency"] = _lat(0.0, 0.0, 0.0, 0.0, completed=0)
    assert compare_gpu(twin, real).latency_error("ttft_ms_p50") is None
    # two runs of one configuration: figures averaged, an adapter zero only if zero in both runs
    r1 = _gpu(thr=100.0, eng=120.0, completed=(3, 0))
    r2 = _gpu(thr=80.0, eng=100.0, completed=(0, 0), starved=True)
    r1["latency"], r2["latency"] = _lat(100.0, 300.0, 10.0, 50.0), _lat(200.0, 500.0, 20.0, 70.0)
    m = mean_of_runs([r1, r2])
    assert m["throughput_tok_s"] == 90.0 and m["engine_tok_s"] == 110.0 and m["starved"]
    assert m["latency"]["window"]["ttft_ms_p50"] == 150.0 and m["latency"]["steady"]["itl_ms_p99"] == 60.0
    assert compare_gpu(_gpu(), m).real_zero == ("b",)


def test_kv_tokens_from_vllm_log_line():
    log = (
        "(EngineCore pid=1) INFO 11-28 12:33:54 [kv_cache_utils.py:2327] CPU KV cache size: 524,288 tokens, "
        "Maximum concurrency for 4,096 tokens per request: 128.00x\n"
    )
    assert kv_tokens_from_log(log) == 524288 and kv_tokens_from_log("nothing here") is None


def _start_fake(*adapters: str) -> tuple[subprocess.Popen, int]:
    """A fake OpenAI server process serving ``adapters``, once its /health answers; (process, port)."""
    import urllib.request

    port = pick_free_port()
    proc = subprocess.Popen(
        [sys.executable, FAKE_VLLM, "openai", str(port), *adapters],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc, port
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "fake server did not start"
            time.sleep(0.1)


@pytest.fixture
def fake_server(tmp_path):
    proc, port = _start_fake("a0", "a1")
    yield port
    proc.kill()
    proc.wait(timeout=10)


def test_validate_vllm_through_the_router_reports_each_replicas_requests(tmp_path):
    """A plan replicating a0 70/30 over two servers: ``--router`` sends the replay through the built-in
    router (the split is its weighted round robin, within a request of the shares) and the twin follows
    its picks; without it each request goes where the twin routed it. Both report ``routing``."""
    procs = [_start_fake("a0", "a1"), _start_fake("a0")]
    try:
        urls = [f"http://127.0.0.1:{port}" for _, port in procs]
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            SPEC.replace("rate_rps: 4.0}", "rate_rps: 10.0}", 1).replace(
                "  - {max_loras: 2, adapters: [a0, a1]}",
                "  - {max_loras: 2, adapters: [{name: a0, share: 0.7}, a1]}\n"
                "  - {max_loras: 1, adapters: [{name: a0, share: 0.3}]}",
            )
        )
        routes = tmp_path / "routes.json"
        routes.write_text(
            json.dumps(
                {
                    "model": "fake-base",
                    "adapters": {
                        "a0": [{"gpu": 0, "url": urls[0], "weight": 0.7}, {"gpu": 1, "url": urls[1], "weight": 0.3}],
                        "a1": [{"gpu": 0, "url": urls[0], "weight": 1.0}],
                    },
                    "endpoints": [
                        {"gpu": 0, "url": urls[0], "adapters": ["a0", "a1"]},
                        {"gpu": 1, "url": urls[1], "adapters": ["a0"]},
                    ],
                }
            )
        )
        base = ["validate", str(spec), "--engine", "vllm", "--endpoints", str(routes), "--window", "4"]
        res = runner.invoke(app, [*base, "--router", "--json"])
        assert res.exit_code in (0, 1), res.output
        routing = routing_doc = json.loads(res.stdout)["real"]["routing"]
        a0 = routing["adapters"]["a0"]
        assert routing["router"] and set(routing["adapters"]) == {"a0"} and a0["shares"] == {"0": 0.7, "1": 0.3}
        n = sum(a0["real_requests"].values())
        assert n > 20 and abs(a0["real_requests"]["0"] - 0.7 * n) <= 1
        # the twin follows the router's picks: the same requests on each replica (two arriving within a few
        # ms of each other may reach the router in either order)
        assert a0["twin_requests"] == a0["real_requests"] and a0["elsewhere_than_twin"] <= max(2, 0.05 * n)
        assert a0["elsewhere_than_twin"] == 0 or a0["elsewhere_nearest_s"] <= 0.25, a0
        res = runner.invoke(app, [*base, "--json"])
        plain = json.loads(res.stdout)["real"]["routing"]["adapters"]["a0"]
        assert not json.loads(res.stdout)["real"]["routing"]["router"]
        assert plain["real_requests"] == plain["twin_requests"] and plain["elsewhere_than_twin"] == 0
        assert plain["elsewhere_nearest_s"] is None
        (line,) = render_routing(routing_doc)
        assert line.startswith("a0: requests per replica, plan → twin/real (the built-in router): gpu0 70 % → ")
    finally:
        for proc, _ in procs:
            proc.kill()
            proc.wait(timeout=10)


def _spec_and_routes(tmp_path, port, max_loras=2):
    """The two-adapter spec and a routes file sending both adapters to one server on ``port``."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    endpoint = {"gpu": 0, "url": f"http://127.0.0.1:{port}", "adapters": ["a0", "a1"]}
    if max_loras is not None:
        endpoint["max_loras"] = max_loras
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"endpoints": [endpoint]}))
    return spec, routes


def test_moved_requests_are_judged_by_their_nearest_neighbour():
    """``elsewhere_nearest_s``: over the requests a router sent elsewhere than the twin, the widest gap to
    their own nearest neighbour (a swap of two near-simultaneous requests has a small one)."""
    from optplace.vllm.validate import _widest_nearest_gap

    arrivals = np.array([0.0, 0.01, 1.0, 3.0, 3.002])
    assert _widest_nearest_gap(arrivals, []) is None
    assert _widest_nearest_gap(arrivals, [0.0, 0.01]) == 0.01  # a swapped pair
    assert _widest_nearest_gap(arrivals, [0.0, 0.01, 3.002]) == 0.01
    assert _widest_nearest_gap(arrivals, [1.0]) == 0.99  # alone: the nearest is 0.01 away by 0.99 s
    assert _widest_nearest_gap(arrivals, [2.0]) == 1.0  # a time not among the arrivals: its neighbours either side


def test_validate_vllm_endpoints_writes_results_comparison_and_a_loadable_run(fake_server, tmp_path):
    spec, routes = _spec_and_routes(tmp_path, fake_server)
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "validate",
            str(spec),
            "--engine",
            "vllm",
            "--endpoints",
            str(routes),
            "--window",
            "3",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code in (0, 1), res.output
    doc = json.loads(res.stdout)
    (real,) = doc["real"]["gpus"]
    (twin,) = doc["twin"]["gpus"]
    (cmp_,) = doc["comparison"]
    # the same simulate --json per-GPU keys on both sides
    for key in (
        "index",
        "adapters",
        "max_loras",
        "throughput_tok_s",
        "engine_tok_s",
        "offered_tok_s",
        "starved",
        "oom",
        "starved_adapters",
        "per_adapter",
        "latency",
    ):
        assert key in real and key in twin, key
    assert set(real["latency"]["window"]) == set(twin["latency"]["window"])
    assert cmp_["latency"]["ttft_ms_p50"]["real"] == pytest.approx(real["latency"]["window"]["ttft_ms_p50"], rel=1e-3)
    assert [a["name"] for a in cmp_["per_adapter_latency"]] == ["a0", "a1"]
    # both sides replayed the very same requests: same offered load
    assert real["offered_tok_s"] == pytest.approx(twin["offered_tok_s"], rel=1e-6)
    assert real["throughput_tok_s"] > 0 and cmp_["throughput_tok_s"]["real"] == pytest.approx(
        real["throughput_tok_s"], rel=1e-3
    )
    # the default SLO judged on both sides, per GPU and adapter, the same bounds and steady state
    for side in (real, twin):
        assert isinstance(side["slo"]["ok"], bool)
        for p in side["per_adapter"]:
            assert [c["metric"] for c in p["slo"]["checks"]] == ["ttft_p99_ms", "tpot_p99_ms"], p["slo"]
    assert [a["name"] for a in cmp_["per_adapter_slo"]] == ["a0", "a1"]
    real_ttft = real["per_adapter"][0]["slo"]["checks"][0]
    assert cmp_["per_adapter_slo"][0]["ttft_p99_ms"]["real"] == pytest.approx(real_ttft["value"], rel=1e-3)
    assert cmp_["per_adapter_slo"][0]["ttft_p99_ms"]["bound"] == 2000.0
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "real.json", "run.json", "twin.json"]
    run = load_run(out)
    assert run.window_s == 3.0 and run.servers[0].max_loras == 2 and run.adapter_names == ("a0", "a1")
    done = np.isfinite(run.done_s)
    assert done.sum() == sum(p["completed"] for p in real["per_adapter"]) > 0
    assert all(run.gaps_ms[i].size == run.output_tokens[i] - 1 for i in np.flatnonzero(done))
    assert len(step_samples(run)) == int(done.sum())


def test_validate_vllm_prints_slo_verdicts_twin_and_real(fake_server, tmp_path):
    spec, routes = _spec_and_routes(tmp_path, fake_server)
    res = runner.invoke(app, ["validate", str(spec), "--engine", "vllm", "--endpoints", str(routes), "--window", "2"])
    assert res.exit_code in (0, 1), res.output
    slo_lines = [line for line in res.stdout.splitlines() if "ttft_p99_ms" in line and "<= 2000" in line]
    assert [line.split()[1] for line in slo_lines] == ["a0", "a1"], res.stdout
    # slo: none judges nothing on either side, and prints no SLO table
    spec.write_text(SPEC + "slo: none\n")
    res = runner.invoke(app, ["validate", str(spec), "--engine", "vllm", "--endpoints", str(routes), "--window", "2"])
    assert res.exit_code in (0, 1), res.output
    assert "ttft_p99_ms" not in res.stdout and "ok t/r" not in res.stdout


def test_validate_vllm_speed_canary_scales_the_twin(fake_server, tmp_path):
    spec, routes = _spec_and_routes(tmp_path, fake_server)
    base = ["validate", str(spec), "--engine", "vllm", "--endpoints", str(routes), "--window", "2", "--json"]
    plain = json.loads(runner.invoke(app, base).stdout)
    # the fake server streams a token every 2 ms: a reference several times faster slows the twin as much
    res = runner.invoke(app, [*base, "--speed-ref-ms", "0.5"])
    doc = json.loads(res.stdout)
    canary = doc["speed"]["canary_itl_ms"]
    assert len(canary) == 1 and 1.0 < canary[0] < 50.0
    assert doc["speed"]["factor"] == pytest.approx(canary[0] / 0.5) and plain["speed"]["factor"] == 1.0
    assert doc["twin"]["speed_factor"] == doc["speed"]["factor"]
    ratio = doc["twin"]["gpus"][0]["itl_ms_mean"] / plain["twin"]["gpus"][0]["itl_ms_mean"]
    # slower steps batch more requests, so the twin's ITL grows at least as much as the factor, not exactly
    assert doc["speed"]["factor"] > 1.5 and ratio > 0.8 * doc["speed"]["factor"]
    res = runner.invoke(app, [*base, "--speed-ref-ms", "0"])
    assert res.exit_code == 2 and "--speed-ref-ms" in res.stderr


def test_validate_vllm_input_errors_are_exit_2(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    for argv, needle in [
        ([], "exactly one of --launch"),
        (["--launch"], "--launch needs --model"),
        (["--endpoints", str(tmp_path / "nope.json")], "nope.json"),
        (["--endpoints", str(spec), "--vocab", "9:3"], "--vocab"),
    ]:
        res = runner.invoke(app, ["validate", str(spec), "--engine", "vllm", *argv])
        assert res.exit_code == 2 and needle in res.stderr, (argv, res.output)
    for argv in (["--window", "3"], ["--router"]):
        res = runner.invoke(app, ["validate", str(spec), *argv])
        assert res.exit_code == 2 and "only with --engine vllm" in res.stderr
    res = runner.invoke(app, ["validate", str(spec), "--engine", "gpu"])
    assert res.exit_code == 2 and "unknown engine" in res.stderr


def test_validate_vllm_unreachable_endpoint_is_a_clear_error_not_a_hang(tmp_path):
    spec, routes = _spec_and_routes(tmp_path, pick_free_port(), max_loras=None)
    t = time.monotonic()
    res = runner.invoke(app, ["validate", str(spec), "--engine", "vllm", "--endpoints", str(routes)])
    assert res.exit_code == 2 and "unreachable" in res.stderr and time.monotonic() - t < 30


def test_validate_vllm_launch_records_a_server_that_dies_at_start_as_oom(tmp_path):
    # a stand-in interpreter: whatever it is asked to run, it prints vLLM's KV-cache error and exits 1
    fake_py = tmp_path / "fake-python"
    fake_py.write_text(f"#!/bin/sh\necho 'INFO loading model'\necho {json.dumps(KV_OOM_LINE)}\nexit 1\n")
    fake_py.chmod(0o755)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "validate",
            str(spec),
            "--engine",
            "vllm",
            "--launch",
            "--model",
            str(tmp_path),
            "--adapters-dir",
            str(tmp_path),
            "--python",
            str(fake_py),
            "--window",
            "5",
            "--start-timeout",
            "30",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 1, res.output
    (g,) = json.loads(res.stdout)["real"]["gpus"]
    assert g["oom"] and g["starved"] and g["server_status"] == "oom" and g["throughput_tok_s"] == 0
    assert g["server_reason"].startswith("oom_kv_cache")
    assert (out / "logs" / "gpu0.log").is_file() and not (out / "run.json").exists()


def _synthetic_run(tmp_path, coef, seed=0, window=40.0, label="syn"):
    """Requests served by an ideal continuous-batching engine whose step lasts exactly ``coef``'s model."""
    rng = np.random.default_rng(seed)
    c0, c_seq, g, c_pf = coef
    n_ad = 4
    rates = rng.uniform(0.5, 6.0, size=n_ad)
    arr, ad = [], []
    for a, r in enumerate(rates):
        t = np.cumsum(rng.exponential(1 / r, size=int(r * window * 2) + 5))
        t = t[t < window]
        arr += t.tolist()
        ad += [a] * len(t)
    order = np.argsort(arr)
    arr, ad = np.asarray(arr)[order], np.asarray(ad)[order]
    n_in = rng.integers(8, 200, size=len(arr))
    n_out = rng.integers(6, 60, size=len(arr))
    now, nxt = 0.0, 0
    running: dict[int, int] = {}
    first = np.full(len(arr), np.nan)
    times: list[list[float]] = [[] for _ in arr]
    while now < window:
        if not running and nxt < len(arr) and arr[nxt] > now:
            now = arr[nxt]
        new = []
        while nxt < len(arr) and arr[nxt] <= now:
            new.append(nxt)
            nxt += 1
        batch = list(running) + new
        if not batch:
            break
        L = len({ad[i] for i in batch})
        now += ((c0 + c_seq * len(batch)) * (1 + g * L) + c_pf * sum(n_in[i] for i in new)) / 1000.0
        for i in new:
            running[i] = 0
        for i in batch:
            times[i].append(now)
            running[i] += 1
            if running[i] == n_out[i]:
                del running[i]
    done = np.array([t[-1] if len(t) == n_out[i] and t[-1] <= window else np.nan for i, t in enumerate(times)])
    for i, t in enumerate(times):
        if t:
            first[i] = t[0]
    keep = np.isfinite(first) & (np.asarray([t[0] if t else np.inf for t in times]) <= window)
    idx = np.flatnonzero(keep)
    doc = {
        "kind": "optplace-vllm-run",
        "format": 1,
        "label": label,
        "window_s": window,
        "seed": seed,
        "adapter_names": [f"a{i}" for i in range(n_ad)],
        "adapter_ranks": {f"a{i}": 8 for i in range(n_ad)},
        "servers": [
            {"gpu": 0, "max_loras": n_ad, "adapters": [f"a{i}" for i in range(n_ad)], "kv_cache_tokens": 65536}
        ],
        "result": {},
        "probes": {"hit_ttft_ms": [20, 21, 19], "swap_ttft_ms": [25, 24, 26], "first_use_ttft_ms": [60, 70]},
        "requests": {
            "adapter": ad[idx].tolist(),
            "gpu": [0] * len(idx),
            "sent_s": arr[idx].tolist(),
            "first_s": first[idx].tolist(),
            "done_s": [None if not np.isfinite(d) else d for d in done[idx]],
            "input_tokens": n_in[idx].tolist(),
            "output_tokens": [
                int(n_out[i]) if np.isfinite(done[i]) else len([x for x in times[i] if x <= window]) for i in idx
            ],
            "status": ["ok" if np.isfinite(done[i]) else "cancelled" for i in idx],
            "gaps_ms": [(np.diff([x for x in times[i] if x <= window]) * 1000).tolist() for i in idx],
        },
    }
    save_run(doc, tmp_path / label)
    return load_run(tmp_path / label)


def test_step_time_fit_recovers_a_known_engine(tmp_path):
    truth = (12.0, 0.8, 0.05, 0.3)  # c0, c_seq [ms], g_lora, c_pf [ms per prompt token]
    run = _synthetic_run(tmp_path, truth)
    s = step_samples(run)
    fit = fit_step_time(s)
    assert len(s) > 200 and fit.r2 > 0.95 and fit.mape < 0.05
    # the model is identified well where the data are: compare predictions, not raw coefficients
    true_model = StepTimeModel(c0=truth[0], c_seq=truth[1], g0=0.0, g_lora=truth[2], c_pf=truth[3], c_ctx=0.0)
    for n, L, p in [(1, 1, 0), (8, 3, 0), (30, 4, 0), (10, 2, 150)]:
        fitted = StepTimeModel(**{k: v for k, v in fit.coef(300.0).items()}).step_ms(n, p, n, L, 8.0, 300.0 * n)
        assert fitted == pytest.approx(true_model.step_ms(n, p, n, L, 8.0, 300.0 * n), rel=0.12), (n, L, p)


def test_ttft_offset_and_pinned_coefficients_are_reported(tmp_path):
    """The idle prefill probes give the API server's time beyond the modelled step; coefficients a sweep
    cannot identify are named in the profile, not silently fitted to 0."""
    from optplace.calibration.runs_fit import NOT_IDENTIFIABLE, ttft_offset_ms

    run = _synthetic_run(tmp_path, (12.0, 0.8, 0.05, 0.3))
    fit = fit_step_time(step_samples(run))
    assert ttft_offset_ms([run], fit) is None  # no prefill probes in this run
    toks = [16, 256, 1024, 2000]
    probed = run.probes | {
        "prefill_probe_tokens": toks,
        "prefill_probe_ms": [3.0 + fit.c0 + fit.c_seq + fit.c_pf * n for n in toks],
    }
    from dataclasses import replace

    off = ttft_offset_ms([replace(run, probes=probed)], fit)
    assert off is not None and off.offset_ms == pytest.approx(3.0) and off.points == 4
    assert off.slope_ms_per_token == pytest.approx(fit.c_pf) and off.quad_ms_per_token2 == pytest.approx(0.0, abs=1e-9)
    # one row per run: its step-weighted means (the design contrasts alone)
    two = StepSamples.concat(
        [step_samples(run), step_samples(_synthetic_run(tmp_path, (6.0, 0.4, 0.0, 0.2), 1, 30.0, "b"))]
    )
    m = two.run_means()
    assert m.run == ("syn", "b") and len(m) == 2 and m.steps.sum() == two.steps.sum()
    first = np.asarray(two.run) == "syn"
    assert m.n_seq[0] == pytest.approx(np.average(two.n_seq[first], weights=two.steps[first]))
    prof, fit2 = fit_profile([run])
    assert all(prof.step_time.coef[k] == 0.0 for k in NOT_IDENTIFIABLE)
    assert all(k in prof.step_time.source for k in NOT_IDENTIFIABLE)
    assert set(fit2.at_zero()) <= {"c0", "c_seq", "g_lora", "c_ctx", "c_pf"}


def test_step_model_from_load_point_contrasts_recovers_a_known_engine(tmp_path):
    """With enough load points the profile's step model is fitted on one row per run (the design
    contrasts), and still predicts a known engine where the data are."""
    from optplace.calibration.runs_fit import MIN_DESIGN_RUNS, fit_step_design

    truth = (7.0, 0.5, 0.0, 0.25)
    runs = [_synthetic_run(tmp_path, truth, seed=k, window=20.0, label=f"r{k}") for k in range(MIN_DESIGN_RUNS)]
    s = StepSamples.concat([step_samples(r) for r in runs])
    fit = fit_step_design(s)
    assert fit.rows == len(s) and fit.mape < 0.08  # statistics on the requests, not on the 6 rows
    true_model = StepTimeModel(c0=truth[0], c_seq=truth[1], g0=0.0, g_lora=0.0, c_pf=truth[3], c_ctx=0.0)
    for n, L, p in [(1, 1, 0), (8, 3, 0), (20, 4, 0), (10, 2, 150)]:
        fitted = StepTimeModel(**fit.coef(300.0)).step_ms(n, p, n, L, 8.0, 300.0 * n)
        assert fitted == pytest.approx(true_model.step_ms(n, p, n, L, 8.0, 300.0 * n), rel=0.12), (n, L, p)
    prof, _ = fit_profile(runs)
    assert "one row per load point (6 runs)" in prof.step_time.source
    # fewer runs: per request (the refit from a few validation runs)
    assert fit_step_design(StepSamples.concat([step_samples(r) for r in runs[:2]])) == fit_step_time(
        StepSamples.concat([step_samples(r) for r in runs[:2]])
    )


def test_fitted_profile_loads_like_a_bundled_one_and_drives_the_twin(tmp_path):
    runs = [_synthetic_run(tmp_path, (12.0, 0.8, 0.05, 0.3), seed=s, label=f"r{s}") for s in (1, 2)]
    prof, fit = fit_profile(runs, provenance={"command": "test", "machine": "m", "date": "d"})
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof.model_dump(mode="json")))
    back = load_profile_file(path)
    assert back == prof and back.calibrated and back.kv_cache_tokens(4, 16) == 65536
    assert back.adapter_load.cpu_to_gpu(16, 8) == pytest.approx(5.0) and back.adapter_load.disk_to_cpu(
        8
    ) == pytest.approx(40.0)
    assert "r1" in back.source and "command: test" in back.source
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.replace("gpu: cpu\n", f"gpu: cpu\nprofile: {path}\n"))
    res = runner.invoke(app, ["simulate", str(spec), "--json"])
    assert res.exit_code in (0, 1), res.output
    (g,) = json.loads(res.stdout)["gpus"]
    assert g["throughput_tok_s"] > 0 and g["kv_cache_tokens"] == 65536


def test_load_run_rejects_foreign_and_broken_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "run.json").write_text('{"kind": "other"}')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "run.json").write_text('{"kind": "optplace-vllm-run", "requests": {"adapter": [1]}}')
    for d, needle in (("a", "not a run"), ("b", "malformed"), ("c", "cannot read")):
        with pytest.raises(RunError, match=needle):
            load_run(tmp_path / d)


def test_calibrate_runs_cli_fits_saved_runs_and_checks_its_input(tmp_path):
    for s in (3, 4):
        _synthetic_run(tmp_path / "runs", (10.0, 0.5, 0.02, 0.25), seed=s, label=f"r{s}")
    out = tmp_path / "fit.json"
    res = runner.invoke(app, ["calibrate", "--runs", str(tmp_path / "runs"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 runs" in res.stdout and load_profile_file(out).name == "tiny-llama@cpu"
    for argv, needle in [
        (["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "x.txt")], "--out must name"),
        (["--runs", str(tmp_path / "missing"), "--out", str(out)], "no such folder"),
        (["--runs", str(tmp_path), "--out", str(out), "--name", "nomodel"], "model@gpu"),
        (["--sweep", "--out", str(out)], "--model-dir"),
        (["--runs", str(tmp_path / "runs"), "--reference", str(tmp_path), "--out", str(out)], "do not combine"),
        ([], "give --reference"),
    ]:
        res = runner.invoke(app, ["calibrate", *argv])
        assert res.exit_code == 2 and needle in res.stderr, (argv, res.output)


def test_launched_servers_get_ports_below_the_ephemeral_range():
    """A starting vLLM server binds ports of its own from the OS's ephemeral range: the servers' ports
    are chosen below it, consecutive and free."""
    import socket

    from optplace.vllm.validate import _ephemeral_low, _free_base_port

    base = _free_base_port(3)
    assert 20000 <= base and base + 3 <= _ephemeral_low()
    for p in range(base, base + 3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
