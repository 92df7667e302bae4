"""run_deployment: healthy servers replayed, a server dying at start recorded as oom, all stopped."""

from __future__ import annotations

import sys

from optplace.deploy.artefacts import Deployment, Route, ServerSpec
from optplace.vllm.launcher import check_port_free, pick_free_port
from optplace.vllm.run import run_deployment
from helpers import FAKE_VLLM as FAKE
from vllm_helpers import poisson_workload


def server(gpu: int, mode: str, adapters: tuple[str, ...]) -> ServerSpec:
    port = pick_free_port()
    return ServerSpec(
        gpu=gpu,
        gpu_type="cpu",
        host="127.0.0.1",
        port=port,
        adapters=adapters,
        max_loras=1,
        max_cpu_loras=len(adapters),
        max_lora_rank=16,
        argv=(sys.executable, FAKE, mode, str(port), *adapters),
        env={},
    )


def test_run_deployment_records_oom_gpu_and_measures_the_rest(tmp_path):
    names = ("a", "b", "c")
    # c is replicated: a quarter of its requests routed to the healthy GPU, three quarters to the dead one
    ok, oom = server(0, "openai", ("a", "b", "c")), server(1, "oom", ("c",))
    routes = {
        "a": (Route(0, ok.url, 1.0),),
        "b": (Route(0, ok.url, 1.0),),
        "c": (Route(0, ok.url, 0.25), Route(1, oom.url, 0.75)),
    }
    dep = Deployment(model="m", servers=(ok, oom), routes=routes, nginx_conf="", launch_sh="")
    wl = poisson_workload([3.0, 3.0, 3.0], duration_s=2.0, input_tokens=16, output_tokens=8, seed=1)
    run = run_deployment(dep, wl, names, log_dir=tmp_path, start_timeout_s=30, seed=1)
    assert [r.status for r in run.launches] == ["ok", "oom"]
    g0, g1 = run.gpus
    assert g0.index == 0 and g0.offered_tok_s > 0 and g0.throughput_tok_s > 0 and not g0.oom
    n_c = int((wl.adapter == 2).sum())
    assert g1.oom and g1.starved and g1.throughput_loss == 1.0 and g1.starved_adapters == ("c",)
    # the dead replica's share of c is offered and lost there; c's requests all reach the live replica
    assert g1.offered_tok_s == 0.75 * n_c * 24 / 2.0 and g1.per_adapter[0].arrived == round(0.75 * n_c)
    assert {r.adapter for r in run.replay.requests} == {0, 1, 2}
    assert all(r.gpu == 0 for r in run.replay.requests)
    doc = run.to_json()
    assert [g["server_status"] for g in doc["gpus"]] == ["ok", "oom"] and doc["gpus"][1]["oom"] is True
    check_port_free(ok.port)  # the healthy server was stopped
