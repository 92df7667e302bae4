"""Scenario loading: valid specs load; each malformed spec gives exit code 2 and one located line per problem."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from optplace.cli import app
from optplace.specs import SpecError, load_scenario, load_scenario_text
from helpers import REPO

runner = CliRunner()

BASE = """\
name: t
model: llama-3.1-8b-instruct
gpu: h100-64gb
adapters:
  - {name: a, rank: 8, rate_rps: 0.5}
  - {name: b, rank: 16, rate_rps: 0.2}
"""

# (case id, YAML text, expected dotted path in the message, expected line, expected message fragment)
MALFORMED: list[tuple[str, str, str, int | None, str]] = [
    ("unknown-top-key", BASE + "colour: red\n", "colour", 7, "unknown key"),
    ("unknown-nested-key", BASE + "serving: {max_num_seqs: 8, foo: 1}\n", "serving.foo", 7, "valid keys"),
    ("rate-string", BASE.replace("rate_rps: 0.5", "rate_rps: fast"), "adapters[0].rate_rps", 5, "valid number"),
    (
        "rate-negative",
        BASE.replace("rate_rps: 0.5", "rate_rps: -1"),
        "adapters[0].rate_rps",
        5,
        "greater than or equal",
    ),
    ("rate-nan", BASE.replace("rate_rps: 0.5", "rate_rps: .nan"), "adapters[0].rate_rps", 5, "finite"),
    ("rate-inf", BASE.replace("rate_rps: 0.5", "rate_rps: .inf"), "adapters[0].rate_rps", 5, "finite"),
    ("rank-not-supported", BASE.replace("rank: 8,", "rank: 12,"), "adapters[0].rank", 5, "not one of"),
    ("rank-float", BASE.replace("rank: 8,", "rank: 8.5,"), "adapters[0].rank", 5, "valid integer"),
    ("rank-bool", BASE.replace("rank: 8,", "rank: true,"), "adapters[0].rank", 5, "valid integer"),
    ("rank-above-profile", BASE.replace("rank: 16,", "rank: 128,"), "adapters[1].rank", 6, "supported maximum"),
    ("duplicate-names", BASE.replace("name: b", "name: a"), "adapters[1]", 6, "duplicate adapter name"),
    ("missing-name", BASE.replace("name: t\n", ""), "name", None, "required"),
    ("missing-adapters", "name: t\nmodel: llama-3.1-8b-instruct\ngpu: h100-64gb\n", "adapters", None, "required"),
    ("empty-adapters", BASE.split("adapters:")[0] + "adapters: []\n", "adapters", 4, "at least 1"),
    ("adapter-missing-rate", BASE.replace(", rate_rps: 0.5", ""), "adapters[0].rate_rps", 5, "required"),
    (
        "group-both-rates",
        BASE + "  - {group: g, count: 3, rank: 8, rate_rps: 1, total_rate_rps: 3}\n",
        "adapters[2]",
        7,
        "exactly one of",
    ),
    (
        "group-zero-count",
        BASE + "  - {group: g, count: 0, rank: 8, rate_rps: 1}\n",
        "adapters[2].count",
        7,
        "greater than",
    ),
    ("gpu-and-pool", BASE + "pool: [{gpu: h100-64gb, count: 2}]\n", "gpu", 3, "exactly one of"),
    ("no-gpu", BASE.replace("gpu: h100-64gb\n", ""), "gpu", None, "exactly one of"),
    ("empty-pool", BASE.replace("gpu: h100-64gb\n", "pool: []\n"), "pool", 3, "empty"),
    (
        "pool-bad-count",
        BASE.replace("gpu: h100-64gb\n", "pool: [{gpu: h100-64gb, count: -2}]\n"),
        "pool[0].count",
        3,
        "greater than",
    ),
    (
        "pool-duplicate-gpu",
        BASE.replace("gpu: h100-64gb\n", "pool:\n  - {gpu: h100-64gb, count: 1}\n  - {gpu: h100-64gb, count: 2}\n"),
        "pool[1].gpu",
        5,
        "twice",
    ),
    ("unknown-gpu", BASE.replace("h100-64gb", "tpu-v9"), "gpu", 3, "unknown GPU"),
    ("unknown-model", BASE.replace("llama-3.1-8b-instruct", "gpt-17"), "model", 2, "unknown model"),
    ("bad-objective", BASE + "objective: fastest\n", "objective", 7, "min_gpus"),
    ("bad-strategy", BASE + "solver: {strategy: magic}\n", "solver.strategy", 7, "greedy-paper"),
    ("bad-arrival-kind", BASE + "workload: {arrivals: {kind: uniform}}\n", "workload.arrivals", 7, "poisson"),
    ("gamma-needs-cv", BASE + "workload: {arrivals: {kind: gamma}}\n", "workload.arrivals.cv", 7, "required"),
    (
        "mmpp-factor",
        BASE + "workload: {arrivals: {kind: mmpp, burst_factor: 0.5}}\n",
        "workload.arrivals.burst_factor",
        7,
        "> 1",
    ),
    (
        "fixed-lengths-missing",
        BASE + "workload: {lengths: {kind: fixed, input_tokens: 10}}\n",
        "workload.lengths.output_tokens",
        7,
        "required",
    ),
    ("duration-zero", BASE + "workload: {duration_s: 0}\n", "workload.duration_s", 7, "greater than"),
    (
        "loss-too-big",
        BASE + "constraints: {max_throughput_loss: 1.5}\n",
        "constraints.max_throughput_loss",
        7,
        "less than",
    ),
    (
        "gmu-above-one",
        BASE + "serving: {gpu_memory_utilization: 1.2}\n",
        "serving.gpu_memory_utilization",
        7,
        "less than",
    ),
    (
        "budget-below-seqs",
        BASE + "serving: {max_num_batched_tokens: 1024}\n",
        "serving.max_num_batched_tokens",
        7,
        ">= max_num_seqs",
    ),
    ("seqs-string", BASE + "serving: {max_num_seqs: many}\n", "serving.max_num_seqs", 7, "valid integer"),
    ("seed-negative", BASE + "seed: -3\n", "seed", 7, "greater than"),
    (
        "placement-unknown-adapter",
        BASE + "placement:\n  - {max_loras: 1, adapters: [a, zz]}\n",
        "placement[0].adapters[1]",
        8,
        "unknown adapter",
    ),
    (
        "placement-twice",
        BASE + "placement:\n  - {max_loras: 1, adapters: [a]}\n  - {max_loras: 1, adapters: [a, b]}\n",
        "placement[1].adapters[0]",
        9,
        "already placed",
    ),
    (
        "placement-too-many-slots",
        BASE + "placement:\n  - {max_loras: 5, adapters: [a, b]}\n",
        "placement[0].max_loras",
        8,
        "exceeds",
    ),
    (
        "placement-cpu-below-gpu",
        BASE + "placement:\n  - {max_loras: 2, max_cpu_loras: 1, adapters: [a, b]}\n",
        "placement[0].max_cpu_loras",
        8,
        "below",
    ),
    (
        "placement-unknown-gpu-type",
        BASE + "placement:\n  - {gpu_type: a100, max_loras: 1, adapters: [a]}\n",
        "placement[0].gpu_type",
        8,
        "unknown GPU type",
    ),
    ("min-latency-no-budget", BASE + "objective: min_latency\n", "solver.max_gpus", None, "budget"),
    ("name-with-space", BASE.replace("name: a,", "name: 'a b',"), "adapters[0].name", 5, "pattern"),
    ("name-too-long", BASE.replace("name: a,", "name: " + "x" * 300 + ","), "adapters[0].name", 5, "at most"),
    ("duplicate-yaml-key", BASE + "seed: 1\nseed: 2\n", "seed", 8, "duplicate key"),
    ("bad-yaml-syntax", BASE + "serving: {max_num_seqs: 8\n", "", 8, "invalid YAML"),
    ("bad-yaml-indent", "name: t\n  model: x\n", "", 2, "invalid YAML"),
    ("top-level-list", "- a\n- b\n", "", 1, "expected a mapping"),
    ("empty-file", "", "", 1, "empty spec"),
    (
        "trace-escapes",
        BASE + "workload: {arrivals: {kind: trace, path: ../../etc/passwd}}\n",
        "workload.arrivals.path",
        7,
        "leaves the spec's folder",
    ),
    (
        "trace-missing",
        BASE + "workload: {arrivals: {kind: trace, path: nope.csv}}\n",
        "workload.arrivals.path",
        7,
        "not found",
    ),
    (
        "alias-bomb",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        "g: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
        "",
        None,
        "alias",
    ),
    ("python-tag", BASE + "seed: !!python/object/apply:os.system ['true']\n", "seed", 7, "not allowed"),
    (  # accepted and ignored once: refused, pointing to where latency objectives go
        "latency-bound-not-enforced",
        BASE + "constraints: {max_ttft_p99_ms: 2000}\n",
        "constraints.max_ttft_p99_ms",
        7,
        "slo: {ttft_p99_ms: 2000}",
    ),
    ("itl-bound-not-enforced", BASE + "constraints: {max_itl_ms: 50}\n", "constraints.max_itl_ms", 7, "`slo:`"),
    ("slo-negative-bound", BASE + "slo: {ttft_p99_ms: -5}\n", "slo.ttft_p99_ms", 7, "greater than 0"),
    ("slo-bound-string", BASE + "slo: {tpot_p99_ms: fast}\n", "slo.tpot_p99_ms", 7, "valid number"),
    ("slo-unknown-key", BASE + "slo: {ttft_p95_ms: 500}\n", "slo.ttft_p95_ms", 7, "valid keys"),
    ("slo-bad-scope", BASE + "slo: {scope: cluster}\n", "slo.scope", 7, "'adapter' or 'gpu'"),
    ("slo-bad-word", BASE + "slo: off\n", "slo", 7, "`none`"),
    ("slo-null", BASE + "slo:\n", "slo", 7, "`none`"),
    (
        "slo-warmup-past-window",
        BASE + "workload: {duration_s: 300}\nslo: {warmup_s: 300}\n",
        "slo.warmup_s",
        8,
        "shorter than the window",
    ),
    (
        "adapter-slo-bad-bound",
        BASE.replace("rate_rps: 0.5}", "rate_rps: 0.5, slo: {itl_p99_ms: 0}}"),
        "adapters[0].slo.itl_p99_ms",
        5,
        "greater than 0",
    ),
    (
        "adapter-slo-under-none",
        BASE.replace("rate_rps: 0.5}", "rate_rps: 0.5, slo: {ttft_p99_ms: 900}}") + "slo: none\n",
        "adapters[0].slo",
        5,
        "says none",
    ),
    (
        "adapter-slo-under-gpu-scope",
        BASE.replace("rate_rps: 0.2}", "rate_rps: 0.2, slo: {ttft_p99_ms: 900}}") + "slo: {scope: gpu}\n",
        "adapters[1].slo",
        6,
        "scope: adapter",
    ),
    (
        "adapter-slo-scope-key",
        BASE.replace("rate_rps: 0.5}", "rate_rps: 0.5, slo: {scope: gpu}}"),
        "adapters[0].slo.scope",
        5,
        "unknown key",
    ),
    (  # a fixed length the length filters reject would be redrawn forever: refused, not a crash (exit 3)
        "fixed-input-beyond-filter",
        BASE + "workload: {lengths: {kind: fixed, input_tokens: 1500, output_tokens: 10}}\n",
        "workload.lengths.input_tokens",
        7,
        "max_input_tokens 1024",
    ),
    (
        "fixed-total-beyond-filter",
        BASE + "workload: {lengths: {kind: fixed, input_tokens: 1000, output_tokens: 1100}}\n",
        "workload.lengths.output_tokens",
        7,
        "max_total_tokens 2048",
    ),
    (  # found by the fuzzer: crashed (exit 3) when the first workload was drawn
        "sharegpt-mean-unreachable",
        BASE + "workload: {lengths: {kind: sharegpt, mean_output_tokens: 9223372036854775807}}\n",
        "workload.lengths",
        7,
        "not reachable",
    ),
]

LINE = re.compile(r"^error: (?P<file>[^:]+\.yaml)(:(?P<line>\d+))?: (?:(?P<path>[\w.\[\]]+): )?(?P<msg>.+)$")


@pytest.mark.parametrize("case,text,path,line,fragment", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_spec_exits_2_with_located_message(tmp_path, case, text, path, line, fragment):
    spec = tmp_path / f"{case}.yaml"
    spec.write_text(text)
    res = runner.invoke(app, ["check", str(spec)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines, "no error printed"
    assert all(ln.startswith("error: ") for ln in lines), lines
    assert "Traceback" not in res.output
    matches = [LINE.match(ln) for ln in lines]
    assert all(matches), lines
    hit = [m for m in matches if (m.group("path") or "") == path and fragment in m.group("msg")]
    assert hit, f"expected {path!r} with {fragment!r} in {lines}"
    if line is not None:
        assert hit[0].group("line") == str(line), lines


def test_at_least_thirty_malformed_cases():
    assert len(MALFORMED) >= 30


def test_all_problems_reported_at_once(tmp_path):
    spec = tmp_path / "many.yaml"
    spec.write_text(BASE.replace("rate_rps: 0.5", "rate_rps: -1").replace("rank: 16,", "rank: 7,") + "colour: red\n")
    res = runner.invoke(app, ["check", str(spec)])
    assert res.exit_code == 2
    msgs = res.stderr.strip().splitlines()
    assert len(msgs) == 3, msgs
    assert [LINE.match(m).group("line") for m in msgs] == ["5", "6", "7"]


def test_directory_instead_of_file(tmp_path):
    res = runner.invoke(app, ["check", str(tmp_path)])
    assert res.exit_code == 2
    assert "is a directory" in res.stderr


def test_binary_garbage(tmp_path):
    spec = tmp_path / "bin.yaml"
    spec.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    res = runner.invoke(app, ["check", str(spec)])
    assert res.exit_code == 2
    assert "bin.yaml" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_bundled_scenarios_are_valid():
    specs = sorted((REPO / "scenarios").glob("*.yaml"))
    assert len(specs) >= 4
    res = runner.invoke(app, ["check", *map(str, specs)])
    assert res.exit_code == 0, res.output
    assert res.output.count("ok  ") == len(specs)


def test_group_expansion_and_zipf_split():
    sc = load_scenario_text(
        textwrap.dedent("""\
        name: z
        model: qwen-2.5-7b-instruct
        gpu: h100-64gb
        adapters:
          - {group: hot, count: 4, rank: 8, total_rate_rps: 10.0, popularity: {kind: zipf, s: 1.0}}
          - {group: flat, count: 3, rank: 16, rate_rps: 0.5}
        """)
    )
    ad = sc.adapter_list()
    assert [a.name for a in ad] == [
        "hot-0000",
        "hot-0001",
        "hot-0002",
        "hot-0003",
        "flat-0000",
        "flat-0001",
        "flat-0002",
    ]
    hot = [a.rate_rps for a in ad[:4]]
    assert sum(hot) == pytest.approx(10.0)
    assert hot[0] == pytest.approx(2 * hot[1]) and hot[0] > hot[1] > hot[2] > hot[3]
    assert all(a.rate_rps == 0.5 and a.rank == 16 for a in ad[4:])


def test_defaults_follow_vllm_and_the_study():
    sc = load_scenario_text(BASE)
    assert (sc.serving.max_num_batched_tokens, sc.serving.max_num_seqs, sc.serving.gpu_memory_utilization) == (
        2048,
        2048,
        0.9,
    )
    assert sc.constraints.max_throughput_loss == 0.10
    assert sc.objective == "min_gpus" and sc.workload.duration_s == 3600
    assert sc.workload.arrivals.kind == "poisson" and sc.workload.lengths.kind == "sharegpt"


def test_scenario_is_frozen():
    sc = load_scenario_text(BASE)
    with pytest.raises(ValidationError):
        sc.seed = 3  # type: ignore[misc]


def test_allow_path_permits_outside_file(tmp_path):
    outside = tmp_path / "data"
    outside.mkdir()
    (outside / "t.csv").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.1,10,5\n")
    specdir = tmp_path / "specs"
    specdir.mkdir()
    spec = specdir / "s.yaml"
    spec.write_text(BASE + "workload: {arrivals: {kind: trace, path: ../data/t.csv}}\n")
    with pytest.raises(SpecError):
        load_scenario(spec)
    sc = load_scenario(spec, allow_paths=[outside])
    assert sc.workload.arrivals.kind == "trace"


def test_schema_is_json():
    res = runner.invoke(app, ["schema"])
    assert res.exit_code == 0
    schema = json.loads(res.output)
    assert "adapters" in schema["properties"] and "placement" in schema["properties"]
