"""The twin checked against a real vLLM engine (marker ``vllm``; CPU build, tiny Llama, dummy adapters).

One session: a calibration sweep (``optplace calibrate --sweep --engine vllm``: one server with 4 slots
and 6 adapters, probes, eight load points from idle to saturated, ``optplace.vllm.sweep.DEFAULT_POINTS``)
fits a profile; then configurations *not* used for calibration run on real servers through ``optplace
validate --engine vllm --launch`` and are compared with the twin driven by the profile just fitted. Their
loads are fractions of the capacity this machine's server showed in the calibration's saturated point
(``_capacity_rps``), so a configuration offers the same share of capacity on any machine speed:

- ``solve-plan`` (~20 %): the plan ``optplace solve`` makes for a small scenario on that profile;
- ``load-50`` and ``load-80`` (50 % and 80 %, where latency objectives live): 5 and 4 adapters with
  skewed rates, one slot each;
- ``load-100`` (100 %): 4 adapters on 4 slots, run twice on the same workload, judged on the mean;
- ``sat-2slots`` (~150 %): 2 slots, 4 adapters, two heavy ones saturating the server — fewer slots than
  active adapters: the two light adapters never get a slot and complete nothing (slot stickiness); run
  twice, judged on the mean;
- ``5ad-3slots`` (~15 %): 3 slots, 5 light adapters — swaps all the time.

Criteria: engine token rate and completed-token throughput each within 15 % on every configuration;
the same starvation verdict and the same set of adapters completing nothing (not on ``load-100``, whose
loss sits at the 10 % threshold by construction). Every miss is reported at once. Latency below
saturation (``load-50``, ``load-80``) is measured and printed against its target (TTFT median within
20 %, TTFT p99 within 30 %, mean ITL within 10 %) but not asserted yet: the twin does not model three
costs this engine shows (optplace/vllm/README.md), and misses them by up to ~70 % in mean ITL at 80 %.
``pytest -s`` prints the tables: per configuration (load share, token rates, errors,
latency errors) and latency per GPU and adapter (twin/real ms and error), plus each repeated run.

A real run on a shared 2-core machine is a noisy instrument: identical back-to-back runs at capacity
differed by 1.7× in mean ITL (76 vs 129 ms) and saturated engine rates by 15–17 % between sessions; the
calibration and the validations see whatever else runs on the machine at their time. Near capacity the
latency amplifies any step-time error by 1 / (1 − load): at 80 % a 2 % error in the per-token cost is a
10 % error in ITL.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest_vllm import START_TIMEOUT_S
from conftest_vllm import tiny_model, vllm_available  # noqa: F401  (pytest fixtures, requested by name)
from optplace.cli import app
from optplace.vllm.compare import (
    GpuComparison,
    compare_gpu,
    compare_runs,
    mean_of_runs,
    render_comparison,
    render_latency,
)
from optplace.vllm.sweep import CPU_EXTRA_ARGS, CPU_SERVER_ENV

# the session's calibration sweep (minutes) counts towards the first test, then three real validations
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(3600)]
runner = CliRunner()
TOLERANCE = 0.15
#: below saturation (the issue's acceptance): relative error of the twin's latency, per figure
LATENCY_TOLERANCE = {"ttft_ms_p50": 0.20, "ttft_ms_p99": 0.30, "itl_ms_mean": 0.10}
#: sat-2slots' heavy pair offers this multiple of the calibrated capacity
SAT_LOAD = 1.5

LENGTHS = (
    "{kind: lognormal, mean_input_tokens: 120, mean_output_tokens: 40, cv_input: 0.8, cv_output: 0.8, "
    "max_input_tokens: 1000, max_total_tokens: 1400}"
)


def _spec(
    name: str,
    adapters: list[tuple[str, int, float]],
    window: float,
    seed: int,
    placement: list[tuple[int, list[str]]] | None = None,
) -> str:
    lines = [
        f"name: {name}",
        "model: tiny-llama",
        "gpu: cpu",
        "profile: fitted.json",
        "serving: {max_num_seqs: 128, max_num_batched_tokens: 2048}",
        "workload:",
        f"  duration_s: {window}",
        "  arrivals: {kind: poisson}",
        f"  lengths: {LENGTHS}",
        "adapters:",
    ]
    lines += [f"  - {{name: {n}, rank: {r}, rate_rps: {q}}}" for n, r, q in adapters]
    lines += [
        "constraints: {max_throughput_loss: 0.10}",
        "objective: min_gpus",
        "solver: {strategy: milp, time_limit_s: 20}",
        f"seed: {seed}",
    ]
    if placement:
        lines.append("placement:")
        lines += [f"  - {{max_loras: {ml}, adapters: [{', '.join(ad)}]}}" for ml, ad in placement]
    return "\n".join(lines) + "\n"


def _server_flags(model: Path, adapters: Path) -> list[str]:
    flags = [
        "--launch",
        "--model",
        str(model),
        "--adapters-dir",
        str(adapters),
        "--make-adapters",
        "--vocab",
        "4:2048",
        "--python",
        sys.executable,
        "--start-timeout",
        str(int(START_TIMEOUT_S)),
    ]
    flags += [f"--extra-arg={a}" for a in CPU_EXTRA_ARGS]
    flags += [f"--env={k}={v}" for k, v in CPU_SERVER_ENV.items() if v is not None]
    return flags


def _sticky_seed(rates: list[float], window: float) -> int:
    """A seed whose first arrivals are the two heavy adapters (0 and 1), each well before any light one.

    Which adapters hold the two slots is decided by the first seconds of traffic; with both heavy
    adapters in first, their backlog never drains and the light ones never get a slot, on the real
    engine and in the twin alike. Chosen from the twin's own workload generator (same as the replay).
    """
    from optplace.vllm.sweep import SweepConfig, sweep_workload

    cfg = SweepConfig(model_path=Path("."), adapters_dir=Path("."))
    for seed in range(1, 200):
        wl = sweep_workload(cfg, rates, window, seed)
        light = wl.arrival_s[wl.adapter >= 2]
        t_light = float(light.min()) if light.size else window
        heavy_first = [float(wl.arrival_s[wl.adapter == a].min()) for a in (0, 1)]
        if max(heavy_first) + 1.0 < t_light:
            return seed
    raise AssertionError("no seed puts both heavy adapters first")


def _capacity_rps(d: Path) -> float:
    """Requests per second this machine's calibration server served in the saturated calibration point
    (engine tokens per second over the mean tokens of a request of the sweep's lengths): every
    configuration's load is a fraction of it, so a configuration offers the same share of capacity on a
    fast idle machine and on a slow shared one."""
    from optplace.vllm.runs import load_run
    from optplace.vllm.sweep import DEFAULT_POINTS

    point = next(p for p in DEFAULT_POINTS if p.label == "cal-4x8-sat")
    served = load_run(d / "fitted.runs" / point.label).result["gpus"][0]["engine_tok_s"]
    return float(served / _mean_request_tokens())


def _heavy_rate(d: Path, load: float = SAT_LOAD) -> float:
    """Per-adapter rate [req/s] at which sat-2slots' two heavy adapters alone offer ``load`` × what this
    machine's server served in the calibration's saturated point.

    A fixed rate made the heavy pair's load depend on the machine: at 8 req/s each it was 1.01× the
    server on a fast idle machine, where a heavy adapter's queue could drain for a moment and hand its
    slot to a light one in one run but not in the other (twin: l2, l3 completed 5 each; real engine:
    none). With the pair well above capacity the heavy backlog only grows, on any machine speed.
    """
    return round(load / 2 * _capacity_rps(d), 2)


@pytest.fixture(scope="session")
def fitted(tiny_model, tmp_path_factory):
    """The calibration sweep, run once: (folder with fitted.json, wall seconds)."""
    d = tmp_path_factory.mktemp("twin-vs-real")
    t = time.monotonic()
    res = runner.invoke(
        app,
        [
            "calibrate",
            "--sweep",
            "--engine",
            "vllm",
            "--model-dir",
            str(tiny_model.path),
            "--out",
            str(d / "fitted.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    print(f"\n[calibration sweep {time.monotonic() - t:.0f} s] {res.stdout.strip()}")
    return d


def _validate(path: Path, out: Path, window: float, model: Path, adapters: Path) -> dict:
    t = time.monotonic()
    res = runner.invoke(
        app,
        [
            "validate",
            str(path),
            "--engine",
            "vllm",
            "--window",
            str(window),
            "--json",
            "--out",
            str(out),
            *_server_flags(model, adapters),
        ],
    )
    assert res.exit_code in (0, 1), res.output
    doc = json.loads(res.stdout)
    doc["wall_s"] = time.monotonic() - t
    return doc


def _rates(weights: list[float], load: float, capacity_rps: float) -> list[float]:
    """Per-adapter rates [req/s] in proportion to ``weights`` that offer ``load`` × the capacity in total."""
    return [round(load * capacity_rps * w / sum(weights), 3) for w in weights]


def _merged(label: str, docs: list[dict]) -> GpuComparison:
    """The twin against the mean of the real runs of one configuration (same workload in every run)."""
    for doc in docs:
        assert not any(g.get("oom") for g in doc["real"]["gpus"]), (label, "server failed to start")
    (twin,) = docs[0]["twin"]["gpus"]
    real = mean_of_runs([doc["real"]["gpus"][0] for doc in docs])
    return compare_gpu(twin, real)


def test_twin_matches_real_engine_on_unseen_configurations(fitted, tiny_model):
    d = fitted
    model, adapters = tiny_model.path, d / "adapters"
    cap = _capacity_rps(d)
    runs: dict[str, list[dict]] = {}

    def validate(label: str, spec_text: str, window: float, repeats: int = 1) -> None:
        path = d / f"{label}.yaml"
        path.write_text(spec_text)
        runs[label] = [_validate(path, d / f"v-{label}-{k}", window, model, adapters) for k in range(repeats)]

    # 1. the plan optplace solve makes for a small scenario on the fitted profile (light load)
    solve_spec = d / "solve.yaml"
    solve_spec.write_text(_spec("solve-plan", [(f"s{i}", 8 if i % 2 else 16, 0.5) for i in range(8)], 45, seed=21))
    r = runner.invoke(app, ["solve", str(solve_spec), "--json"])
    assert r.exit_code == 0, r.output
    plan = d / "plan.json"
    plan.write_text(r.stdout)
    placement = json.loads(r.stdout)["placement"]
    assert len(placement) == 1, placement  # one server serves ~640 tokens/s of offered load
    runs["solve-plan"] = [_validate(plan, d / "v-solve", 45, model, adapters)]

    # 2. below saturation, where latency objectives live: 50 % and 80 % of the calibrated capacity,
    #    skewed rates, all adapters resident (as many slots as adapters)
    for label, load, weights, window, seed in (
        ("load-50", 0.5, [4.0, 3.0, 2.0, 1.0, 1.0], 45, 51),
        ("load-80", 0.8, [3.0, 2.0, 1.5, 1.0], 60, 81),
    ):
        rates = _rates(weights, load, cap)
        names = [f"{label[-2:]}r{i}" for i in range(len(rates))]
        validate(
            label,
            _spec(
                label,
                [(n, 8 if i % 2 == 0 else 16, q) for i, (n, q) in enumerate(zip(names, rates))],
                window,
                seed=seed,
                placement=[(len(names), names)],
            ),
            window,
        )

    # 3. at capacity (100 %): the verdict is a coin flip by construction (loss at the threshold), so only
    #    the token rates are judged, on the mean of two runs of the same workload
    rates = _rates([1.0, 1.0, 1.0, 1.0], 1.0, cap)
    validate(
        "load-100",
        _spec(
            "load-100",
            [(f"c{i}", 8 if i % 2 == 0 else 16, q) for i, q in enumerate(rates)],
            45,
            seed=101,
            placement=[(4, [f"c{i}" for i in range(4)])],
        ),
        45,
        repeats=2,
    )

    # 4. saturated at ~150 %, fewer slots than active adapters: heavy h0, h1 hold the 2 slots, l2, l3 starve
    #    (slot stickiness); mean of two runs of the same workload
    rates = [*[_heavy_rate(d)] * 2, 0.5, 0.5]
    seed = _sticky_seed(rates, 60)
    validate(
        "sat-2slots",
        _spec(
            "sat-2slots",
            [(f"h{i}" if i < 2 else f"l{i}", 8 if i % 2 == 0 else 16, q) for i, q in enumerate(rates)],
            60,
            seed=seed,
            placement=[(2, ["h0", "h1", "l2", "l3"])],
        ),
        60,
        repeats=2,
    )

    # 5. light, 5 adapters on 3 slots (swaps, every adapter served)
    validate(
        "5ad-3slots",
        _spec(
            "5ad-3slots",
            [(f"m{i}", 8 if i % 2 == 0 else 16, 0.4) for i in range(5)],
            30,
            seed=33,
            placement=[(3, [f"m{i}" for i in range(5)])],
        ),
        30,
    )

    by = {label: _merged(label, docs) for label, docs in runs.items()}
    load = {label: c.offered_tok_s / (cap * _mean_request_tokens()) for label, c in by.items()}
    labels = [f"{lb} {load[lb] * 100:.0f}%" + (f" x{len(runs[lb])}" if len(runs[lb]) > 1 else "") for lb in by]
    walls = ", ".join(f"{lb} {sum(doc['wall_s'] for doc in docs):.0f} s" for lb, docs in runs.items())
    print(
        f"\n[twin vs real, profile fitted in this run; capacity {cap:.1f} req/s; load avg "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; validation walls {walls}]"
    )
    print(render_comparison(list(by.values()), labels, TOLERANCE))
    print(render_latency(list(by.values()), labels))
    for label, docs in runs.items():
        if len(docs) > 1:  # the spread of the real engine between identical runs
            for k, doc in enumerate(docs):
                c = compare_runs(doc["twin"]["gpus"], doc["real"]["gpus"])[0]
                print(
                    f"  {label} run {k + 1}: engine {c.engine_error * 100 if c.engine_error is not None else 0:+.1f} %,"
                    f" completed {c.throughput_error * 100 if c.throughput_error is not None else 0:+.1f} %"
                )

    # the scenarios do what they are meant to: one saturated with stuck adapters, the light and the
    # below-saturation ones served in full, at the intended share of the capacity
    assert by["sat-2slots"].real_starved and set(by["sat-2slots"].real_zero) == {"l2", "l3"}
    for label in ("solve-plan", "5ad-3slots", "load-50", "load-80"):
        assert not by[label].real_starved, label
    assert 0.4 <= load["load-50"] <= 0.6 and 0.7 <= load["load-80"] <= 0.9, load
    assert 0.9 <= load["load-100"] <= 1.1 and load["sat-2slots"] >= 1.3, load
    assert all(not g.get("oom") for docs in runs.values() for doc in docs for g in doc["real"]["gpus"])
    # every criterion checked, every miss reported at once (one real run costs minutes)
    misses = []
    for label, c in by.items():
        if label != "load-100" and not (c.same_verdict and c.same_zero_set):
            misses.append(
                f"{label}: verdict twin/real {c.twin_starved}/{c.real_starved}, zero {c.twin_zero}/{c.real_zero}"
            )
        for what, err in (("engine tokens/s", c.engine_error), ("completed tokens/s", c.throughput_error)):
            if err is None or abs(err) > TOLERANCE:
                misses.append(f"{label}: {what} error {err} beyond {TOLERANCE}")
    # latency where it is an objective (below saturation): measured and printed against its target, not
    # yet asserted: the twin lacks three costs this engine shows (the API server's TTFT offset, prefill
    # growing faster than linearly with the prompt, a per-adapter step cost independent of the batch;
    # optplace/vllm/README.md), and it must be held to the target once it models them
    latency_misses = [
        f"{label}: {key} error {err} beyond {tol}"
        for label in ("load-50", "load-80")
        for key, tol in LATENCY_TOLERANCE.items()
        if (err := by[label].latency_error(key)) is None or abs(err) > tol
    ]
    print("[latency targets below saturation] " + ("; ".join(latency_misses) or "all met"))
    assert all(by[label].latency_error("itl_ms_mean") is not None for label in ("load-50", "load-80"))
    # the saved runs are calibration input too: refit from the validations' runs
    refit_args = [a for lb in ("solve-plan", "load-80", "5ad-3slots") for a in ("--runs", str(_run_dir(d, lb)))]
    r = runner.invoke(app, ["calibrate", *refit_args, "--out", str(d / "refit.json")])
    assert r.exit_code == 0, r.output
    print(f"[refit from the validation runs] {r.stdout.strip()}")
    fit_doc = json.loads((d / "refit.json").read_text())
    assert fit_doc["calibrated"] and fit_doc["step_time"]["coef"]["c0"] > 0
    assert np.isfinite(list(fit_doc["step_time"]["coef"].values())).all()
    assert not misses, "\n".join(misses)


def _run_dir(d: Path, label: str) -> Path:
    return d / "v-solve" if label == "solve-plan" else d / f"v-{label}-0"


def _mean_request_tokens() -> float:
    """Mean input + output tokens of a request of the sweep's lengths (the specs' ``LENGTHS``): 10^4 draws pin
    their truncated mean to ~1 %."""
    from optplace.vllm.sweep import SweepConfig, sweep_workload

    wl = sweep_workload(SweepConfig(model_path=Path("."), adapters_dir=Path(".")), [100.0], 100.0, seed=0)
    return float(np.mean(wl.input_tokens + wl.output_tokens))
