"""Against the real CPU vLLM engine (marker ``vllm``; run with .venv-vllm/bin/python -m pytest -m vllm).

Kept to two server starts: the machine has 2 shared cores and a start takes 30–70 s.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest_vllm import FAST_START, KV_1GIB, START_TIMEOUT_S

# pytest fixtures, requested by name (vllm_available skips a test where vLLM is missing)
from conftest_vllm import start_vllm, tiny_adapters, tiny_model, vllm_available, vllm_server_env  # noqa: F401
from optplace.deploy.artefacts import DeployOptions, build_deployment, write_deployment
from optplace.vllm.launcher import classify_startup_failure, pick_free_port
from optplace.vllm.loadgen import Endpoint, run_replay
from optplace.vllm.metrics import scrape
from helpers import short_quickstart
from vllm_helpers import poisson_workload

# a test starts one or two real servers (up to START_TIMEOUT_S each) on a shared 2-core machine
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]


def venv_path() -> str:
    """PATH with this interpreter's bin folder first (where the `vllm` console script is)."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def tiny_plan(model_path, names, max_loras):
    return {
        "model": str(model_path),
        "serving": {"max_num_seqs": 128, "max_num_batched_tokens": 2048},
        "adapters": [{"name": n, "rank": 16 if i % 2 else 8, "rate_rps": 1.0} for i, n in enumerate(names)],
        "placement": [
            {
                "gpu": 0,
                "gpu_type": "cpu",
                "max_loras": max_loras,
                "max_cpu_loras": len(names),
                "max_lora_rank": 16,
                "adapters": list(names),
            }
        ],
    }


def test_deployed_command_serves_two_adapters_and_replay_measures_it(tiny_model, tiny_adapters, start_vllm, tmp_path):
    port = pick_free_port()
    # the default `vllm serve` form, as deploy writes it for GPUs (the install script's shim makes it run)
    dep = build_deployment(
        tiny_plan(tiny_model.path, ["a0", "a1"], 2),
        DeployOptions(adapters_dir=tiny_adapters, base_port=port, pin_gpus=False, extra_args=KV_1GIB + FAST_START),
    )
    write_deployment(dep, tmp_path / "deploy")
    argv = shlex.split((tmp_path / "deploy" / "gpu0.cmd").read_text())  # the generated command, parsed back
    assert argv[:2] == ["vllm", "serve"]
    t = time.monotonic()
    res = start_vllm(argv, port, env={"PATH": venv_path()})
    start_s = time.monotonic() - t
    assert res.ok, f"{res.status}: {res.reason} (log {res.log_path})"
    print(f"\nserver start {start_s:.1f} s")

    wl = poisson_workload([1.0, 1.0], duration_s=20.0, input_tokens=64, output_tokens=32, seed=5)
    ep = Endpoint(0, res.server.url, ("a0", "a1"), max_loras=2, max_cpu_loras=2)
    out = run_replay(
        wl, ("a0", "a1"), (ep,), seed=5, token_id_range=(tiny_model.first_plain_token_id, tiny_model.vocab_size)
    )
    (g,) = out.gpus
    print(
        json.dumps(
            {
                k: g.to_json()[k]
                for k in (
                    "offered_tok_s",
                    "throughput_tok_s",
                    "engine_tok_s",
                    "throughput_loss",
                    "itl_ms_mean",
                    "ttft_ms_p50",
                    "ttft_ms_p99",
                    "preemptions",
                )
            }
        )
    )
    arrived = len(wl.arrival_s)
    assert len(out.requests) == arrived and all(r.status != "error" for r in out.requests), [
        r.error for r in out.requests if r.error
    ][:3]
    # unsaturated (~200 tok/s offered): every request with 10 s left completes, with exactly max_tokens
    # (ignore_eos); those cut at the window end are lost. A request takes ~2-3 s here (ITL 75-90 ms on
    # the shared 2-core machine), so the loss is a few to ~15 %: not checked against the 10 % rule.
    early = [r for r in out.requests if r.arrival_s < wl.duration_s - 8]
    assert early and all(r.status == "ok" and r.output_tokens == 32 for r in early)
    assert g.throughput_loss < 0.30
    assert g.engine_tok_s is not None and abs(g.engine_tok_s / g.offered_tok_s - 1) < 0.15
    assert g.preemptions == 0 and g.max_running is not None and g.max_running < 128
    assert {p.name: p.completed > 0 for p in g.per_adapter} == {"a0": True, "a1": True}
    assert all(p.loss < 0.40 for p in g.per_adapter)
    assert 0 < g.ttft_ms_p50 < 2000 and 0 < g.itl_ms_mean < 500
    # periodic /metrics samples saw the LoRA state, never more than max_loras adapters running
    lora_samples = [s.lora_running for s in out.samples if s.lora_running is not None]
    assert lora_samples and all(len(s) <= 2 and set(s) <= {"a0", "a1"} for s in lora_samples)
    snap = scrape(res.server.url)
    assert snap.lora is not None and snap.lora.max_lora == 2 and "running" not in snap.missing
    t = time.monotonic()
    res.server.stop()
    print(f"stop {time.monotonic() - t:.1f} s")
    assert not res.server.alive() and time.monotonic() - t < 20


def test_generated_launch_script_reports_a_kv_cache_oom_at_start(tiny_model, tiny_adapters, vllm_server_env, tmp_path):
    # 1 MiB of KV cache holds 512 tokens of the tiny model (2 KiB/token) < max_model_len 4096
    port = pick_free_port()
    dep = build_deployment(
        tiny_plan(tiny_model.path, ["a0"], 1),
        DeployOptions(
            adapters_dir=tiny_adapters,
            entrypoint="api-server",
            python=sys.executable,
            base_port=port,
            pin_gpus=False,
            extra_args=("--kv-cache-memory-bytes", str(2**20), *FAST_START),
        ),
    )
    write_deployment(dep, tmp_path)
    env = {k: v for k, v in {**os.environ, **vllm_server_env}.items() if v is not None}
    env["OPTPLACE_START_TIMEOUT"] = str(int(START_TIMEOUT_S))
    t = time.monotonic()
    run = subprocess.run(
        ["bash", str(tmp_path / "launch.sh"), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 60,
    )
    took = time.monotonic() - t
    subprocess.run(["bash", str(tmp_path / "launch.sh"), "stop"], env=env, capture_output=True, timeout=60)
    status, reason = classify_startup_failure((tmp_path / "logs" / "gpu0.log").read_text())
    print(f"\nlaunch.sh start exited {run.returncode} after {took:.1f} s: {status}: {reason}")
    assert run.returncode == 1 and "gpu0 exited at start" in run.stderr, (run.stdout, run.stderr)
    assert status == "oom" and reason.startswith("oom_kv_cache"), reason


def test_quickstart_plan_deploys_to_a_runnable_command(tiny_model, start_vllm, tmp_path):
    """`optplace solve` → `optplace deploy` for the quickstart scenario, served by the tiny model with
    dummy adapters of the plan's names and ranks (8/16/32): the parsed command of the GPU with the most
    distinct ranks starts and an adapter of each of its ranks answers."""
    from typer.testing import CliRunner

    from optplace.cli import app

    runner = CliRunner()
    # the quickstart on a 5-minute window: the same adapters and pipeline, its plan in a seventh of the time
    r = runner.invoke(app, ["solve", str(short_quickstart(tmp_path)), "--json"])
    assert r.exit_code == 0, r.output
    plan = tmp_path / "plan.json"
    plan.write_text(r.stdout)
    ad = tmp_path / "adapters"
    r = runner.invoke(
        app, ["vllm", "make-adapters", "--out", str(ad), "--base-config", str(tiny_model.path), "--plan", str(plan)]
    )
    assert r.exit_code == 0, r.output
    port = pick_free_port()
    r = runner.invoke(
        app,
        [
            "deploy",
            str(plan),
            "--out",
            str(tmp_path / "deploy"),
            "--adapters-dir",
            str(ad),
            "--model",
            str(tiny_model.path),
            "--base-port",
            str(port),
            "--no-pin-gpus",
            *[f"--extra-arg={a}" for a in KV_1GIB + FAST_START],
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(plan.read_text())
    ranks = {a["name"]: a["rank"] for a in doc["adapters"]}
    # the plan may group ranks per GPU: serve the GPU with the most distinct ranks
    k = max(range(len(doc["placement"])), key=lambda i: (len({ranks[n] for n in doc["placement"][i]["adapters"]}), -i))
    gpu0 = doc["placement"][k]
    argv = shlex.split((tmp_path / "deploy" / f"gpu{k}.cmd").read_text())
    port = int(flag_values_of(argv, "--port")[0])
    assert flag_values_of(argv, "--max-loras") == [str(gpu0["max_loras"])]
    t = time.monotonic()
    res = start_vllm(argv, port, env={"PATH": venv_path()})
    assert res.ok, f"{res.status}: {res.reason} (log {res.log_path})"
    print(
        f"\nquickstart gpu{k} ({len(gpu0['adapters'])} adapters, max_loras {gpu0['max_loras']}) "
        f"started in {time.monotonic() - t:.1f} s"
    )
    picks = [
        next(n for n in gpu0["adapters"] if ranks[n] == rank)
        for rank in sorted(set(ranks[n] for n in gpu0["adapters"]))
    ]
    import urllib.request

    for name in picks:
        body = json.dumps({"model": name, "prompt": [5, 6, 7, 8], "max_tokens": 4, "ignore_eos": True}).encode()
        req = urllib.request.Request(
            f"{res.server.url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        out = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert out["model"] == name and out["usage"]["completion_tokens"] == 4
    assert sorted({ranks[n] for n in picks}) == sorted({ranks[n] for n in gpu0["adapters"]})
    assert set(ranks.values()) == {8, 16, 32}  # the quickstart mixes three ranks


def flag_values_of(argv, flag):
    i = argv.index(flag)
    return [a for a in argv[i + 1 : i + 2]]
