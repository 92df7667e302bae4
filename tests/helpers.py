"""Paths and external data shared by the tests (one definition instead of a copy per test file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optplace.calibration.reference import find_reference_dir, find_shared_dir

__all__ = [
    "FAKE_VLLM",
    "GPU_RESULT_KEYS",
    "REPO",
    "TESTS",
    "h100_problem",
    "reference_dir",
    "short_quickstart",
    "traces_dir",
]

#: the repository root (scenarios/, docs/, scripts/ are found from here)
REPO = Path(__file__).resolve().parent.parent
#: this folder (fixtures and helper scripts)
TESTS = REPO / "tests"
#: the script that stands in for a vLLM server / the vllm console script in tests without vLLM
FAKE_VLLM = str(TESTS / "vllm_helpers.py")
#: keys every per-GPU result carries, from the twin (simulate --json) and from a real engine
#: (validate --engine vllm's real.json) alike (docs/json-contracts.md)
GPU_RESULT_KEYS = frozenset(
    {
        "index",
        "adapters",
        "throughput_tok_s",
        "engine_tok_s",
        "offered_tok_s",
        "throughput_loss",
        "starved",
        "oom",
        "starved_adapters",
        "itl_ms_mean",
        "ttft_ms_p50",
        "ttft_ms_p99",
        "preemptions",
        "adapter_loads",
        "per_adapter",
    }
)


def h100_problem(adapters: list[tuple[int, float]], name: str = "toy", extra: str = "") -> Any:
    """A compiled problem: Llama-3.1-8B on H100-64GB, Poisson arrivals and ShareGPT lengths over 600 s,
    one adapter ``a{i}`` per (rank, rate), seed 1, plus ``extra`` top-level YAML (e.g. ``slo: none``)."""
    from optplace.solver import compile_problem
    from optplace.specs import load_scenario_text

    ads = "\n".join(f"  - {{name: a{i}, rank: {r}, rate_rps: {x}}}" for i, (r, x) in enumerate(adapters))
    text = f"""
name: {name}
model: llama-3.1-8b-instruct
gpu: h100-64gb
workload: {{duration_s: 600, arrivals: {{kind: poisson}}, lengths: {{kind: sharegpt}}}}
adapters:
{ads}
seed: 1
{extra}
"""
    return compile_problem(load_scenario_text(text, base_dir=REPO), REPO)


def short_quickstart(folder: Path, duration_s: int = 300) -> Path:
    """The bundled quickstart scenario with a ``duration_s`` window, written into ``folder``: the same
    pipeline (solve, twin checks on several seeds, deploy files) in ~7 s instead of ~45 s, for tests that
    need a whole run of the main command but not its hour of traffic."""
    text = (REPO / "scenarios" / "quickstart.yaml").read_text()
    assert "duration_s: 3600" in text, "the quickstart's window changed: update short_quickstart"
    path = Path(folder) / "quickstart-short.yaml"
    path.write_text(text.replace("duration_s: 3600", f"duration_s: {duration_s}"))
    return path


def reference_dir() -> Path:
    """The reference measurements (external input; located by :func:`find_reference_dir`)."""
    return find_reference_dir()


def traces_dir() -> Path:
    """The real request traces (external input: $OPTPLACE_TRACES, or a ``shared/traces`` folder beside
    the checkout; located like the reference measurements)."""
    return find_shared_dir("traces", "azure_conv_2023.csv", "OPTPLACE_TRACES")
