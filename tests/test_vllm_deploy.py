"""Deploy artefacts: commands parse back with shlex, every adapter routed once, plan errors collected."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from optplace.deploy.artefacts import DeployOptions, PlanError, build_deployment, load_plan, write_deployment


def plan(n_gpus: int = 2, per_gpu: int = 3, **over):
    adapters = [
        {"name": f"ad-{g}.{k}", "rank": 8 if k % 2 else 16, "rate_rps": 0.1}
        for g in range(n_gpus)
        for k in range(per_gpu)
    ]
    placement = [
        {
            "gpu": g,
            "gpu_type": "h100-64gb",
            "max_loras": 2,
            "max_cpu_loras": max(per_gpu, 2),
            "max_lora_rank": 16,
            "adapters": [a["name"] for a in adapters[g * per_gpu : (g + 1) * per_gpu]],
        }
        for g in range(n_gpus)
    ]
    doc = {
        "model": "my-org/base-model",
        "objective": "min_gpus",
        "strategy": "milp",
        "gpus_used": n_gpus,
        "serving": {"max_num_seqs": 2048, "max_num_batched_tokens": 2048, "gpu_memory_utilization": 0.9},
        "adapters": adapters,
        "placement": placement,
    }
    doc.update(over)
    return doc


def flag_values(argv, flag):
    i = argv.index(flag)
    out = []
    for a in argv[i + 1 :]:
        if a.startswith("--"):
            break
        out.append(a)
    return out


def test_commands_parse_back_and_carry_the_plan_knobs(tmp_path):
    dep = build_deployment(plan(), DeployOptions(adapters_dir=tmp_path / "my adapters", base_port=9000))
    assert [s.port for s in dep.servers] == [9000, 9001]
    for s, entry in zip(dep.servers, plan()["placement"]):
        argv = shlex.split(s.command_line())
        assert argv[0] == "CUDA_VISIBLE_DEVICES=" + str(entry["gpu"])
        argv = argv[1:]
        assert tuple(argv) == s.argv
        assert argv[:3] == ["vllm", "serve", "my-org/base-model"] and "--served-model-name" not in argv
        assert "--enable-lora" in argv
        assert flag_values(argv, "--max-loras") == ["2"]
        assert flag_values(argv, "--max-cpu-loras") == ["3"]
        assert flag_values(argv, "--max-lora-rank") == ["16"]
        assert flag_values(argv, "--max-num-seqs") == ["2048"]
        assert flag_values(argv, "--max-num-batched-tokens") == ["2048"]
        assert flag_values(argv, "--gpu-memory-utilization") == ["0.9"]
        assert flag_values(argv, "--port") == [str(s.port)]
        mods = dict(m.split("=", 1) for m in flag_values(argv, "--lora-modules"))
        assert list(mods) == entry["adapters"]
        assert all(v == str(tmp_path / "my adapters" / k) for k, v in mods.items())


def test_every_adapter_routed_once_and_files_written(tmp_path):
    p = plan(n_gpus=3, per_gpu=4)
    dep = build_deployment(p)
    files = write_deployment(dep, tmp_path / "out")
    assert {f.name for f in files} >= {"servers.json", "routes.json", "nginx.conf", "launch.sh", "gpu0.cmd"}
    routes = json.loads((tmp_path / "out" / "routes.json").read_text())
    assert sorted(routes["adapters"]) == sorted(a["name"] for a in p["adapters"])
    for entry in p["placement"]:
        for name in entry["adapters"]:
            (r,) = routes["adapters"][name]
            assert r["gpu"] == entry["gpu"] and r["url"].endswith(f":{8000 + entry['gpu']}") and r["weight"] == 1.0
    servers = json.loads((tmp_path / "out" / "servers.json").read_text())["servers"]
    assert shlex.split((tmp_path / "out" / "gpu1.cmd").read_text())[1:] == servers[1]["argv"]
    nginx = dep.nginx_conf
    for a in p["adapters"]:
        assert nginx.count(re.escape(a["name"]) + '\\"') == 1
    assert nginx.count("upstream optplace_gpu") == 4  # 3 GPUs + one for the base model over all


def test_replicated_adapter_gets_weighted_routes():
    p = plan(n_gpus=2, per_gpu=2)
    p["placement"][1]["adapters"].append("ad-0.0")
    dep = build_deployment(p)
    routes = dep.routes["ad-0.0"]
    assert [r.gpu for r in routes] == [0, 1] and [r.weight for r in routes] == [0.5, 0.5]
    assert "upstream optplace_gpu0_1" in dep.nginx_conf


def test_launch_script_is_valid_bash_and_quotes_arguments(tmp_path):
    p = plan(n_gpus=1, per_gpu=1)
    dep = build_deployment(
        p, DeployOptions(adapters_dir=tmp_path / "we'ird $dir", extra_args=("--served-model-name", "a b;c"))
    )
    write_deployment(dep, tmp_path)
    assert subprocess.run(["bash", "-n", str(tmp_path / "launch.sh")], capture_output=True).returncode == 0
    line = next(ln for ln in dep.launch_sh.splitlines() if ln.strip().startswith("start_one gpu"))
    argv = shlex.split(line)
    rest = argv[argv.index("--") + 1 :]
    assert tuple(rest) == dep.servers[0].argv
    assert "a b;c" in rest and any("we'ird $dir" in a for a in rest)


def test_api_server_entrypoint_and_rank_rounding():
    p = plan(n_gpus=1, per_gpu=2)
    p["placement"][0]["max_lora_rank"] = 12
    p["adapters"][0]["rank"] = 12
    p["adapters"][1]["rank"] = 8
    dep = build_deployment(p, DeployOptions(entrypoint="api-server", python="/venv/bin/python", prefix_caching=True))
    argv = list(dep.servers[0].argv)
    assert argv[:5] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "my-org/base-model"]
    assert flag_values(argv, "--max-lora-rank") == ["16"]  # 12 is not a rank vLLM accepts
    assert "--enable-prefix-caching" in argv


def test_all_plan_problems_reported_together():
    p = plan(n_gpus=2, per_gpu=2)
    p["placement"][0]["max_cpu_loras"] = 1
    p["placement"][0]["adapters"].append("ghost")
    p["placement"][1]["max_lora_rank"] = 8
    p["placement"][1]["adapters"] = p["placement"][1]["adapters"][:1]
    with pytest.raises(PlanError) as err:
        build_deployment(p)
    text = str(err.value)
    assert len(err.value.problems) == 4, text
    assert "max_cpu_loras (1) must be >= max_loras (2)" in text
    assert "ghost" in text
    assert "rank 16 is placed but max_lora_rank is 8" in text
    assert "placed on no GPU" in text and "ad-1.1" in text


def test_load_plan_errors(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text('{"placement": [')
    with pytest.raises(PlanError, match=r"p.json:1:\d+: not JSON"):
        load_plan(bad)
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "missing.json")
    with pytest.raises(PlanError, match='no "placement"'):
        build_deployment({"model": "m"})


def test_launch_script_starts_checks_and_stops_servers(tmp_path):
    import sys

    from optplace.deploy.artefacts import ServerSpec, launch_script
    from optplace.vllm.launcher import check_port_free, pick_free_port
    from helpers import FAKE_VLLM as fake

    def spec(gpu, mode):
        port = pick_free_port()
        return ServerSpec(
            gpu=gpu,
            gpu_type=None,
            host="127.0.0.1",
            port=port,
            adapters=("x",),
            max_loras=1,
            max_cpu_loras=1,
            max_lora_rank=8,
            argv=(sys.executable, fake, mode, str(port)),
            env={"MY_VAR": "a b"},
        )

    def run(servers, *args):
        (tmp_path / "launch.sh").write_text(launch_script(servers))
        return subprocess.run(
            ["bash", str(tmp_path / "launch.sh"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "OPTPLACE_START_TIMEOUT": "20"},
        )

    ok = spec(0, "ok")
    r = run([ok], "start")
    assert r.returncode == 0 and "gpu0 healthy" in r.stdout, r.stderr
    assert "fake server mode=ok" in (tmp_path / "logs" / "gpu0.log").read_text()
    assert "gpu0 healthy" in run([ok], "status").stdout
    r = run([ok], "stop")
    assert r.returncode == 0 and "stopped gpu0" in r.stdout
    check_port_free(ok.port)
    assert "gpu0 down" in run([ok], "status").stdout
    bad = spec(1, "oom")
    r = run([bad], "start")
    assert r.returncode == 1 and "gpu1 exited at start" in r.stderr
    assert "KV cache" in (tmp_path / "logs" / "gpu1.log").read_text()
    assert run([bad], "bogus").returncode == 2


def test_profile_model_name_maps_to_hub_id_served_under_the_plan_name():
    p = plan(n_gpus=1, per_gpu=2, model="llama-3.1-8b-instruct")
    dep = build_deployment(p)
    argv = list(dep.servers[0].argv)
    assert argv[:3] == ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert flag_values(argv, "--served-model-name") == ["llama-3.1-8b-instruct"]
    assert dep.model == "llama-3.1-8b-instruct" and "llama\\-3\\.1" in dep.nginx_conf
    own = build_deployment(p, DeployOptions(model_path="/models/llama"))
    assert "--served-model-name" not in own.servers[0].argv and own.model == "/models/llama"
