"""`optplace solve` / `validate` / `capacity` end to end on small scenarios (short windows keep it fast)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from optplace.cli import app

runner = CliRunner()

SPEC = """\
name: small
model: llama-3.1-8b-instruct
gpu: h100-64gb
workload: {duration_s: 240, arrivals: {kind: poisson}, lengths: {kind: sharegpt}}
adapters:
  - {group: a, count: 12, rank: 8, rate_rps: 1.2}
  - {group: b, count: 8, rank: 16, rate_rps: 0.8}
solver: {strategy: greedy, time_limit_s: 20}
seed: 5
"""

SOLVE_KEYS = {"objective", "strategy", "gpus_used", "lower_bound", "gap", "solve_time_s", "placement", "validation"}
PLACEMENT_KEYS = {"gpu", "gpu_type", "max_loras", "max_cpu_loras", "max_lora_rank", "adapters"}


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    d = tmp_path_factory.mktemp("solve")
    spec = d / "small.yaml"
    spec.write_text(SPEC)
    out = d / "out"
    res = runner.invoke(app, ["solve", str(spec), "--json", "--reproducible", "--out", str(out), "--workers", "1"])
    return spec, out, res


def test_solve_json_contract_and_all_adapters_placed_once(solved):
    spec, out, res = solved
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert SOLVE_KEYS <= doc.keys()
    assert doc["gpus_used"] == len(doc["placement"]) >= 1
    assert doc["lower_bound"] <= doc["gpus_used"]
    names = [n for g in doc["placement"] for n in g["adapters"]]
    assert sorted(names) == sorted([f"a-{i:04d}" for i in range(12)] + [f"b-{i:04d}" for i in range(8)])
    for g in doc["placement"]:
        assert PLACEMENT_KEYS <= g.keys()
        assert g["max_cpu_loras"] >= max(g["max_loras"], len(g["adapters"]))
        assert g["max_lora_rank"] == (16 if any(n.startswith("b-") for n in g["adapters"]) else 8)
    v = doc["validation"]
    assert {"starved_gpus", "oom_gpus", "gpus"} <= v.keys()
    assert v["starved_gpus"] == [] and v["oom_gpus"] == []
    assert len(v["gpus"]) == doc["gpus_used"]


def test_out_folder_has_every_artefact(solved):
    _, out, res = solved
    assert res.exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["deploy", "plan.json", "report.html", "solver.log", "twin.json"]
    assert json.loads((out / "plan.json").read_text()) == json.loads(res.stdout)
    servers = json.loads((out / "deploy" / "servers.json").read_text())
    assert len(servers["servers"] if isinstance(servers, dict) else servers) == json.loads(res.stdout)["gpus_used"]
    assert "<svg" in (out / "report.html").read_text()
    assert not list(out.parent.glob(".out.tmp-*"))


def test_out_refuses_non_empty_folder_without_force(solved):
    spec, out, _ = solved
    before = (out / "plan.json").read_text()
    res = runner.invoke(app, ["solve", str(spec), "--out", str(out), "--no-validate"])
    assert res.exit_code == 2 and "--force" in res.stderr
    assert (out / "plan.json").read_text() == before


def test_validate_plan_json_and_spec_together(solved, tmp_path):
    spec, out, _ = solved
    placed = tmp_path / "placed.yaml"
    placed.write_text(SPEC + "placement:\n  - {max_loras: 20, adapters: all}\n")
    res = runner.invoke(app, ["validate", str(out / "plan.json"), str(placed), "--json", "--workers", "1"])
    assert res.exit_code in (0, 1), res.output
    doc = json.loads(res.stdout)
    assert [r["file"] for r in doc["results"]] == [str(out / "plan.json"), str(placed)]
    first = doc["results"][0]
    solved_doc = json.loads((out / "plan.json").read_text())
    # The same plan and seed give the same twin figures as the solve's own validation.
    assert [g["throughput_tok_s"] for g in first["gpus"]] == [
        g["throughput_tok_s"] for g in solved_doc["validation"]["gpus"]
    ]


def test_validate_rejects_garbage_plan(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"placement": 3}')
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 2 and "bad.json" in res.stderr


def test_infeasible_spec_exits_1_naming_the_constraint(tmp_path):
    # 100,000 req/s: more than the most replicas solve splits an adapter into (MAX_REPLICAS) serve
    # (a short window keeps the spec under the twin's request limit)
    spec = tmp_path / "hot.yaml"
    spec.write_text(SPEC.replace("rate_rps: 1.2", "rate_rps: 100000").replace("duration_s: 240", "duration_s: 30"))
    res = runner.invoke(app, ["solve", str(spec), "--no-validate"])
    assert res.exit_code == 1, res.output
    assert "infeasible" in res.stderr and ("a-0000" in res.stderr or "rate" in res.stderr)
    assert "nan" not in res.stderr


def test_adapters_hotter_than_one_gpu_are_split_into_replicas(tmp_path):
    # 500 req/s per adapter: infeasible before replication, now each is split over several GPUs
    spec = tmp_path / "hot.yaml"
    spec.write_text(SPEC.replace("rate_rps: 1.2", "rate_rps: 500"))
    res = runner.invoke(app, ["solve", str(spec), "--no-validate", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    shares: dict[str, float] = {}
    for g in doc["placement"]:
        for a in g["adapters"]:
            name, x = (a["name"], a["share"]) if isinstance(a, dict) else (a, 1.0)
            shares[name] = shares.get(name, 0.0) + x
    assert all(shares[f"a-{i:04d}"] == pytest.approx(1.0) for i in range(12))
    assert all(shares[f"b-{i:04d}"] == 1.0 for i in range(8))
    assert sum(1 for g in doc["placement"] for a in g["adapters"] if isinstance(a, dict)) >= 24


def test_capacity_json(tmp_path):
    spec = tmp_path / "cap.yaml"
    spec.write_text(SPEC)
    res = runner.invoke(app, ["capacity", str(spec), "--json", "--no-confirm"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {"max_adapters", "max_loras", "throughput_tok_s"} <= doc.keys()
    assert doc["max_adapters"] >= 1 and 1 <= doc["max_loras"] <= doc["max_adapters"]
