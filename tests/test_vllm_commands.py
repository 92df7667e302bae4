"""`optplace vllm …` sub-app through typer's CliRunner (no vLLM needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from typer.testing import CliRunner

from optplace.vllm.adapters import read_safetensors
from optplace.vllm.commands import vllm_app
from optplace.vllm.launcher import pick_free_port
from helpers import FAKE_VLLM, REPO

runner = CliRunner()
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def write_plan(path: Path) -> Path:
    plan = {
        "model": "m",
        "serving": {"max_num_seqs": 64},
        "adapters": [{"name": "x", "rank": 8, "rate_rps": 1}, {"name": "y", "rank": 16, "rate_rps": 1}],
        "placement": [{"gpu": 0, "max_loras": 1, "max_cpu_loras": 2, "max_lora_rank": 16, "adapters": ["x", "y"]}],
    }
    path.write_text(json.dumps(plan))
    return path


def test_make_adapters_then_deploy(tmp_path):
    plan = write_plan(tmp_path / "plan.json")
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    r = runner.invoke(
        vllm_app,
        [
            "make-adapters",
            "--out",
            str(tmp_path / "ad"),
            "--base-config",
            str(tmp_path),
            "--plan",
            str(plan),
            "--targets",
            "q_proj,o_proj",
            "--seed",
            "4",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "wrote 2 adapters" in r.output
    _, w = read_safetensors(tmp_path / "ad" / "y" / "adapter_model.safetensors")[
        "base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight"
    ]
    assert w.shape == (64, 16)
    r = runner.invoke(
        vllm_app,
        [
            "deploy",
            str(plan),
            "--out",
            str(tmp_path / "dep"),
            "--adapters-dir",
            str(tmp_path / "ad"),
            "--base-port",
            "9100",
            "--extra-arg=--dtype",
            "--extra-arg",
            "bfloat16",
            "--env",
            "A=1",
        ],
    )
    assert r.exit_code == 0, r.output
    servers = json.loads((tmp_path / "dep" / "servers.json").read_text())["servers"]
    assert servers[0]["argv"][-2:] == ["--dtype", "bfloat16"] and servers[0]["env"] == {
        "A": "1",
        "CUDA_VISIBLE_DEVICES": "0",
    }
    assert "warning" not in r.output


def test_deploy_reports_every_plan_problem_with_exit_2(tmp_path):
    plan = json.loads(write_plan(tmp_path / "plan.json").read_text())
    plan["placement"][0]["max_lora_rank"] = 8
    plan["placement"][0]["max_cpu_loras"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(plan))
    r = runner.invoke(vllm_app, ["deploy", str(tmp_path / "bad.json"), "--out", str(tmp_path / "dep")])
    assert r.exit_code == 2
    assert "max_lora_rank is 8" in r.output and "max_cpu_loras (0) must be >= max_loras (1)" in r.output
    assert not (tmp_path / "dep").exists()


def test_launch_records_a_server_that_dies_at_start(tmp_path):
    port = pick_free_port()
    servers = {
        "model": "m",
        "servers": [
            {
                "gpu": 0,
                "host": "127.0.0.1",
                "port": port,
                "url": f"http://127.0.0.1:{port}",
                "argv": [sys.executable, FAKE_VLLM, "oom", str(port)],
                "env": {},
            }
        ],
    }
    (tmp_path / "servers.json").write_text(json.dumps(servers))
    r = runner.invoke(vllm_app, ["launch", str(tmp_path), "--timeout", "30"])
    assert r.exit_code == 1, r.output
    res = json.loads((tmp_path / "launch-results.json").read_text())
    assert res[0]["status"] == "oom" and res[0]["reason"].startswith("oom_kv_cache")


def test_loadgen_replays_a_scenario_workload_against_routes(tmp_path):
    import asyncio
    import threading

    from optplace.specs import load_scenario
    from vllm_helpers import FakeVllm

    spec = REPO / "scenarios" / "quickstart.yaml"
    names = [a.name for a in load_scenario(spec).adapter_list()]
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    fakes = [
        FakeVllm(adapters=tuple(names[:25]), ttft_s=0.001, token_s=0.0005),
        FakeVllm(adapters=tuple(names[25:]), ttft_s=0.001, token_s=0.0005),
    ]
    urls = [asyncio.run_coroutine_threadsafe(f.start(), loop).result(5) for f in fakes]
    routes = {
        "endpoints": [
            {"gpu": i, "url": u, "adapters": list(f.adapters), "max_loras": 4}
            for i, (u, f) in enumerate(zip(urls, fakes))
        ]
    }
    (tmp_path / "routes.json").write_text(json.dumps(routes))
    try:
        r = runner.invoke(
            vllm_app,
            [
                "loadgen",
                str(spec),
                "--routes",
                str(tmp_path / "routes.json"),
                "--duration",
                "3",
                "--out",
                str(tmp_path / "res.json"),
                "--traces",
                str(tmp_path / "tr"),
            ],
        )
    finally:
        for f in fakes:
            asyncio.run_coroutine_threadsafe(f.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
    doc = json.loads((tmp_path / "res.json").read_text())
    sent = doc["requests"]["sent"]
    assert sent == len(fakes[0].received) + len(fakes[1].received) and 20 < sent < 150  # ~18 req/s for 3 s
    assert [g["index"] for g in doc["gpus"]] == [0, 1] and doc["simulated_s"] == 3.0
    import csv

    rows = list(csv.DictReader(open(tmp_path / "tr" / "requests.csv")))
    assert len(rows) == sent and {r["status"] for r in rows} <= {"ok", "cancelled"}
    assert all(float(r["sent_s"]) >= 0 and r["adapter_name"] in names for r in rows)
    assert sum(r["status"] == "ok" for r in rows) == doc["requests"]["completed"]
    assert (tmp_path / "tr" / "samples.csv").read_text().startswith("gpu,t_s,running")
    assert all(g["max_loras"] == 4 and g["offered_tok_s"] > 0 for g in doc["gpus"])
    assert r.exit_code in (0, 1), r.output  # 1 = starved (long ShareGPT outputs cut at the 3 s window)
    assert r.exit_code == (1 if any(g["starved"] for g in doc["gpus"]) else 0)
    # same seed -> the same requests (adapter, prompt length, max_tokens) as the twin would simulate
    got = sorted((m, n, k) for f in fakes for m, n, k, _ in f.received)
    from optplace.twin.simulate import scenario_workload

    sc = load_scenario(spec)
    wl = scenario_workload(sc, sc.adapter_list(), spec.parent)
    keep = wl.arrival_s < 3.0
    want = sorted(
        (names[a], int(i), int(o)) for a, i, o in zip(wl.adapter[keep], wl.input_tokens[keep], wl.output_tokens[keep])
    )
    assert got == want
