"""The twin checked against a real vLLM engine (marker ``vllm``; CPU build, tiny Llama, dummy adapters).

One session: a calibration sweep (``optplace calibrate --sweep --engine vllm``: one server with 4 slots
and 6 adapters, probes, eight load points from idle to saturated, ``optplace.vllm.sweep.DEFAULT_POINTS``,
their rates scaled to the capacity two short saturated replays measure first) fits a profile; then
configurations *not* used for calibration run on real servers through ``optplace validate --engine vllm``
and are compared with the twin driven by the profile just fitted. A
configuration's load is a share of a measured capacity (requests per second the engine served in the
calibration's saturated point, ``_capacity_rps``), so it offers the same share on any machine speed:

- ``load-80``, ``load-50`` (80 % and 50 %, where latency objectives live) and ``load-100`` (100 %; a
  group's runs can be repeated on the same workload and judged on the mean, and two runs of it once
  differed by 0.6 % in engine tokens, so it runs once): 4 adapters with skewed (equal for load-100) rates on
  4 slots, replayed (``validate --endpoints``) on one server of the calibration's shape started right after
  the calibration. A shared machine's speed moves by 15–30 % within minutes, so a capacity measured once,
  earlier, does not say what load a later run offers (a calibration at 21 req/s followed by validations
  on a machine that had become slower put ``load-80`` past saturation). Before each group the same server
  replays the calibration's saturated point again (same workload and seed: a capacity probe), the twin
  replays the probe's requests, and the group's rates are shares of the smaller of the two capacities, the
  engine's now and the twin's: at most the intended load on either side. Not the calibrated capacity: the
  fitted twin can miss its own saturated point (+12.5 % in one run: its capacity 10.6 req/s, the engine's
  9.4), while on the probe's requests it is what the twin will do;
- ``solve-plan`` (30 %): the plan ``optplace solve`` makes for a small scenario (4 adapters, equal rates)
  on that profile under an SLO scaled to this engine (``_cpu_slo``), deployed on a server of its own; the
  real per-adapter SLO verdicts (the twin's rule on the measured requests, ``optplace.vllm.slo``) must
  agree with the twin's;
- ``sat-2slots`` (~150 % of probe 0's capacity): 2 slots, 4 adapters, two heavy ones saturating the
  server — fewer slots than active adapters: the two light adapters never get a slot and complete nothing
  (slot stickiness); two 90 s runs (``SAT_REPEATS``) on a second server, started before probe 0 as the
  calibration's is (``start_calibration_server``, the sweep's adapters a0..a3), each run between two
  probes, judged on their mean net of the machine's drift;
- ``5ad-3slots`` (15 %): 3 slots, 5 light adapters — swaps all the time.

Criteria: engine token rate within 15 % on every configuration, and completed-token throughput on every
one below capacity (at and beyond it, ``load-100`` and ``sat-2slots``, it is printed: a window's completed
tokens there are its leftover running set, which multiplies any speed difference; ``AT_CAPACITY``); every
probed configuration's draw offers its nominal load within 3 % (``_seed_offering``);
the same starvation verdict and the same set of adapters completing nothing (not on ``load-100``, whose
loss sits at the 10 % threshold by construction, nor where both losses lie within 2 points of the
threshold; ``solve-plan`` and ``replicas``, light and about something else, starve only past 50 % loss,
``load-80`` and ``load-50`` past 25 %: ``TAIL_MAX_LOSS``); the same SLO verdict per adapter on
``solve-plan``.
Every miss is reported at once. Latency below saturation (``load-50``, ``load-80``) is measured and
printed against its target (TTFT median within 20 %, TTFT p99 within 30 %, mean ITL within 10 %) but not
asserted yet: the twin does not model three costs this engine shows (optplace/vllm/README.md), and misses
them by up to ~70 % in mean ITL at 80 %; nor is ``solve-plan``'s per-adapter TTFT p99 (target: within
25 %), printed with the SLO verdicts. Beside them, for the probed configurations, the same latency with
the twin at the engine's speed of the probe before their group (its step and load times multiplied by the
twin's over the engine's capacity there): near capacity a few per cent of drift move the twin's relative
load and with it the queueing (on one run's ``load-80``, TTFT p50 / p99 / mean ITL +31 / +26 / +35 % at the
calibrated speed, +7 / −1 / +1 % at the probed one), while at light load the saturated probe's ratio is not
the small batch's (``load-50``'s mean ITL −8 % → −20 %). ``pytest -s`` prints the tables: the probes, per configuration
(offered share of the capacity it was scaled to, the realised load — the engine's served rate over the
calibrated and the probed capacity —, token rates, errors, latency errors), latency per GPU and adapter
(twin/real ms and error), the SLO verdicts, plus each repeated run.

A real run on a shared 2-core machine is a noisy instrument: identical back-to-back runs at capacity
differed by 1.7× in mean ITL (76 vs 129 ms) and saturated engine rates by 15–17 % between sessions. The
probes make the below-saturation loads hold whatever the machine's speed; a saturated configuration's
token rates are the engine's speed itself, so each run of ``sat-2slots`` lies between two probes and its
token-rate errors are judged net of the twin's mean error on them (the twin's error on a new
configuration beyond its error on the calibration's workload at the same time). Identical saturated runs
three minutes apart on an otherwise idle machine moved by 12 % (3,148 vs 2,780 engine tokens/s), so the
bracket is kept tight, around each of sat-2slots' runs (with the calibration's point four minutes before
as one side, a CI run missed by −19 % net; with one probe before both runs and one after them, three of
four CI runs in one day missed by −16 % to −21 %), and the verdict rests on the mean of two runs. Both
servers are started the same way and stay up: alternated on one machine, 2 slots and 4 slots serving the
same two saturating adapters differed by −5 %, −2 % and +4 % in engine tokens (no slot-count cost), while
a server launched per run by ``validate --launch`` had steps 8–14 % shorter, against the fitted step
model, than the probed server's in two of three CI runs (equal in the third). Near
capacity the latency amplifies any step-time error by 1 / (1 − load): at 80 % a 2 % error in the
per-token cost is a 10 % error in ITL.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    render_slo,
)
from optplace.vllm.loadgen import Endpoint
from optplace.vllm.runs import RunServer
from optplace.twin.workload import Workload
from optplace.vllm.sweep import CPU_EXTRA_ARGS, CPU_SERVER_ENV, SweepConfig

# the session's calibration sweep (minutes) counts towards the first test, then the real validations
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(3600)]
runner = CliRunner()
TOLERANCE = 0.15
#: below saturation (the issue's acceptance): relative error of the twin's latency, per figure
LATENCY_TOLERANCE = {"ttft_ms_p50": 0.20, "ttft_ms_p99": 0.30, "itl_ms_mean": 0.10}
#: solve-plan under its SLO: the target for the twin's per-adapter steady-state TTFT p99 (printed, not asserted)
SLO_TTFT_P99_TARGET = 0.25
#: the specs' starvation threshold (``max_throughput_loss``) and the band around it where twin and engine
#: may fall on either side (same loss within the window's tail)
STARVED_LOSS = 0.10
VERDICT_BAND = 0.02
#: solve-plan's adapters (equal rates) together offer this share of the calibrated capacity, in a window of
#: this length, each with at least this many requests well inside it (:func:`_seed_serving_each`)
SOLVE_ADAPTERS = 4
SOLVE_LOAD = 0.3
SOLVE_WINDOW_S = 45
SOLVE_MIN_REQUESTS = 3
#: the starvation threshold of the light configurations whose comparison is about something else
#: (solve-plan's SLO verdicts, the replicas' routing and token rates): on a slow machine their losses are
#: the window's tail only (a request lasts 2-5 s there), around the usual 10 % threshold
LIGHT_MAX_LOSS = 0.5
#: the starvation threshold of the probed configurations below capacity (``load-80``, ``load-50``). Their
#: windows are short (45-60 s) and a request there lasts ~5 s on a slow machine, so the window's tail alone
#: cuts 10-13 % of the offered tokens (the twin, at 80 % of its own capacity, lost 12.3 % and 12.5 % in two
#: CI runs; the engine 14.6 % and 15.5 %): at the usual 10 % both sides sit on the threshold and the verdict
#: is the tail's, not the load's. Past 25 % a loss is a backlog, which is what these configurations must
#: not build (their completed tokens are judged within ``TOLERANCE`` as well)
TAIL_MAX_LOSS = 0.25
#: sat-2slots' heavy pair offers this multiple of the capacity probed right before it
SAT_LOAD = 1.5
#: each of sat-2slots' two light adapters offers this share of the capacity probed right before it
SAT_LIGHT_SHARE = 0.04
#: the replicas test's window [s]: requests last ~5 s on a slow machine, and a 40 s window cut 10 % of a
#: replica's tokens at its end
REPLICAS_WINDOW_S = 60
#: Requests the router may send to another replica than the twin's, as a share of an adapter's requests:
#: near-simultaneous requests reaching the router in either order swap picks.
SWAPPED_SHARE = 0.05
#: Each such request arrived within this of another request of its adapter [s]. The router, proxying
#: every stream on a loaded 2-core machine, can take requests out of its queue late: a clean-clone run
#: swapped 4 of 326 requests, the widest due 0.302 s from its neighbour, while the client sent every
#: request within 0.1 s of its due time (so the reordering was the router's, not the client's).
SWAP_GAP_S = 0.5
#: sat-2slots' window [s]: long runs between two probes, not short ones before a probe minutes later
SAT_WINDOW_S = 90
#: sat-2slots' runs, each between two probes, judged on their mean: a saturated run's token
#: rate is the engine's speed of that minute, and one run decided the verdict alone. Net of the drift, one
#: run's engine-token error was +4.2 % in one clean-clone CI run and -15.7 % in the next (limit 15 %) on
#: an idle machine; identical saturated runs three minutes apart have differed by 12 %
SAT_REPEATS = 2
#: the calibration's saturated load point: its served rate is the calibrated capacity, and replayed again
#: (same workload, same seed, a server of the same shape) it probes the engine's capacity now
SAT_POINT = "cal-4x8-sat"
#: a probed configuration's draw offers its rates' mean tokens within this share (:func:`_seed_offering`)
OFFER_MATCH = 0.03
#: the configurations at and beyond capacity, whose completed tokens are printed, not judged: there what a
#: window completes is the running set left at its end, which multiplies any difference in speed between the
#: twin and the engine (a machine 10-20 % faster or slower than at its calibration, minutes earlier).
#: Judged, they missed by -19 % and +46 % (load-100) and by -54 % and +25 % net of the drift (sat-2slots)
#: in four clean-clone runs whose engine tokens were within the tolerance; in one the twin, 17 % slow,
#: held 128 running requests in sat-2slots where the engine held 62. Their engine tokens are judged
AT_CAPACITY = ("load-100", "sat-2slots")
#: the configurations replayed on one server of the calibration's shape (adapters a0..a3, 4 slots), in probe
#: groups: (label, share of the capacity, rate weights, window [s], first seed tried, runs)
PROBED_GROUPS: tuple[tuple[tuple[str, float, tuple[float, ...], float, int, int], ...], ...] = (
    (("load-80", 0.8, (3.0, 2.0, 1.5, 1.0), 60, 81, 1), ("load-50", 0.5, (4.0, 3.0, 2.0, 1.0), 45, 51, 1)),
    (("load-100", 1.0, (1.0, 1.0, 1.0, 1.0), 45, 101, 1),),
)

LENGTHS = (
    "{kind: lognormal, mean_input_tokens: 120, mean_output_tokens: 40, cv_input: 0.8, cv_output: 0.8, "
    "max_input_tokens: 1000, max_total_tokens: 1400}"
)
#: the longest prompt LENGTHS allows [tokens]
MAX_INPUT_TOKENS = 1000


def _spec(
    name: str,
    adapters: list[tuple[str, int, float]],
    window: float,
    seed: int,
    placement: list[tuple[int, list[str]]] | None = None,
    slo: dict[str, float] | None = None,
    check_seeds: int | None = None,
    max_loss: float = STARVED_LOSS,
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
        "constraints: {max_throughput_loss: " + str(max_loss) + "}",
        "objective: min_gpus",
        "solver: {strategy: milp, time_limit_s: 20"
        + (f", check_seeds: {check_seeds}" if check_seeds is not None else "")
        + "}",
        f"seed: {seed}",
    ]
    if slo:
        lines.append("slo: {" + ", ".join(f"{k}: {v}" for k, v in slo.items()) + "}")
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


def _first_seed(rates: list[float], window: float, base: int, ok: Callable[[Workload], bool], what: str) -> int:
    """The first seed from ``base`` whose draw of ``rates`` over ``window`` (the twin's own workload
    generator, whose draw the replay sends too) satisfies ``ok``."""
    from optplace.vllm.sweep import sweep_workload

    cfg = SweepConfig(model_path=Path("."), adapters_dir=Path("."))
    for seed in range(base, base + 2000):
        if ok(sweep_workload(cfg, rates, window, seed)):
            return seed
    raise AssertionError(f"no seed from {base} gives a draw where {what}")


def _sticky_seed(rates: list[float], window: float) -> int:
    """A seed whose first arrivals are the two heavy adapters (0 and 1), each well before any light one.

    Which adapters hold the two slots is decided by the first seconds of traffic; with both heavy
    adapters in first, their backlog never drains and the light ones never get a slot, on the real
    engine and in the twin alike.
    """

    def heavy_first(wl: Workload) -> bool:
        light = wl.arrival_s[wl.adapter >= 2]
        t_light = float(light.min()) if light.size else window
        return max(float(wl.arrival_s[wl.adapter == a].min()) for a in (0, 1)) + 1.0 < t_light

    return _first_seed(rates, window, 1, heavy_first, "both heavy adapters come first")


def _seed_offering(rates: list[float], window: float, base: int) -> int:
    """The first seed from ``base`` whose draw offers the tokens ``rates`` mean (rates × mean request tokens)
    within ``OFFER_MATCH``.

    A 45-60 s Poisson draw of 30-70 requests with log-normal lengths (cv 0.8) offers its nominal tokens
    only within ~±15 % (1 sigma): over 40 consecutive seeds load-50's draws offered 0.52x to 1.62x its
    rates' tokens, load-80's 0.75x to 1.36x (past capacity), and load-100's seed offered 0.898x, outside its
    ±10 % band, in one CI run. A configuration named by its load must offer that load."""
    want = sum(rates) * _mean_request_tokens() * window

    def offers(wl: Workload) -> bool:
        return abs(float(np.sum(wl.input_tokens + wl.output_tokens)) / want - 1.0) <= OFFER_MATCH

    what = f"{sum(rates):.3f} req/s offer their tokens within {OFFER_MATCH:.0%}"
    return _first_seed(rates, window, base, offers, what)


def _seed_serving_each(rates: list[float], window: float, base: int) -> int:
    """The first seed from ``base`` whose draw gives every adapter ``SOLVE_MIN_REQUESTS`` requests that
    arrive after the SLO's warm-up (10 % of the window) and before its last fifth: every adapter's SLO
    verdict then rests on requests the window lets finish.

    At ~2 requests per adapter, one draw gave adapter s1 a single steady request, in the window's last
    seconds: the twin judged it "served nothing", repair moved it to a GPU of its own, where the request
    cut off at the window's end was most of its tokens, and solve refused the scenario ("s1 starves even
    alone") in CI."""

    def served(wl: Workload) -> bool:
        inside = wl.adapter[(wl.arrival_s >= 0.1 * window) & (wl.arrival_s < 0.8 * window)]
        return bool(np.bincount(inside, minlength=len(rates)).min() >= SOLVE_MIN_REQUESTS)

    return _first_seed(rates, window, base, served, f"every adapter has {SOLVE_MIN_REQUESTS} requests inside")


def _capacity_rps(d: Path) -> float:
    """Requests per second this machine's calibration server served in the saturated calibration point
    (engine tokens per second over the mean tokens of a request of the sweep's lengths): a configuration's
    load is a fraction of it (or of a probe's, :func:`_probe`), so a configuration offers the same share of
    capacity on a fast idle machine and on a slow shared one."""
    from optplace.vllm.runs import load_run

    return _served_rps(load_run(d / "fitted.runs" / SAT_POINT).result["gpus"][0])


def _served_rps(gpu: dict) -> float:
    """Requests per second a measured GPU's engine served: its engine tokens per second over the mean tokens
    of a request of the sweep's lengths."""
    return float(gpu["engine_tok_s"] / _mean_request_tokens())


def _heavy_rate(capacity_rps: float, load: float = SAT_LOAD) -> float:
    """Per-adapter rate [req/s] at which sat-2slots' two heavy adapters alone offer ``load`` × what this
    machine's server of the calibration's shape serves now (``capacity_rps``, a probe's).

    A fixed rate made the heavy pair's load depend on the machine: at 8 req/s each it was 1.01× the
    server on a fast idle machine, where a heavy adapter's queue could drain for a moment and hand its
    slot to a light one in one run but not in the other (twin: the light pair completed 5 each; real engine:
    none). With the pair well above capacity the heavy backlog only grows, on any machine speed.
    """
    return round(load / 2 * capacity_rps, 2)


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


def _validate(path: Path, out: Path, window: float, server_args: list[str]) -> dict:
    """``optplace validate PATH --engine vllm --json`` with ``server_args`` (launch flags or ``--endpoints``)."""
    t = time.monotonic()
    res = runner.invoke(
        app,
        ["validate", str(path), "--engine", "vllm", "--window", str(window), "--json", "--out", str(out), *server_args],
    )
    assert res.exit_code in (0, 1), res.output
    doc = json.loads(res.stdout)
    doc["wall_s"] = time.monotonic() - t
    return doc


@contextmanager
def _calibration_shaped_server(
    d: Path, model: Path, max_loras: int | None = None, adapters: int | None = None, log: str = "probed-server.log"
) -> Iterator[tuple[SweepConfig, Endpoint, RunServer]]:
    """A server of the calibration's shape (4 slots, adapters a0..a5 of the sweep), stopped on exit; with
    ``max_loras`` / ``adapters`` that many slots and the sweep's first that many adapters instead."""
    from optplace.vllm.sweep import start_calibration_server

    cfg = SweepConfig(model_path=model, adapters_dir=d / "fitted.runs" / "adapters", start_timeout_s=START_TIMEOUT_S)
    names = cfg.adapter_names if adapters is None else cfg.adapter_names[:adapters]
    t = time.monotonic()
    res, server = start_calibration_server(cfg, d / log, max_loras=max_loras, adapters=names)
    assert res.ok and res.server is not None, (res.status, res.reason, res.log_path)
    took = time.monotonic() - t
    print(f"\n[server with {server.max_loras} slots and {len(names)} adapters healthy after {took:.0f} s]")
    ep = Endpoint(0, res.server.url, names, server.max_loras, server.max_cpu_loras, server.max_lora_rank, "cpu")
    try:
        yield cfg, ep, server
    finally:
        res.server.stop()


def _probe(d: Path, k: int, cfg: SweepConfig, ep: Endpoint, server: RunServer) -> tuple[float, float, str]:
    """Replay the calibration's saturated point on the running server (its workload and seed): the engine's
    capacity now and the twin's on the same requests (the fitted profile replayed on them) [req/s], and a
    line saying both beside the calibrated capacity."""
    from optplace.calibration.runs_fit import twin_errors
    from optplace.specs.profiles import load_profile_file
    from optplace.vllm.runs import load_run, save_run
    from optplace.vllm.sweep import replay_point, saved_point

    point = saved_point(d / "fitted.runs" / SAT_POINT)  # its rates scaled to this machine by the sweep
    seed = load_run(d / "fitted.runs" / SAT_POINT).seed
    out = d / f"probe-{k}"
    save_run(replay_point(cfg, ep, server, point, seed), out)
    run = load_run(out)
    cap = _served_rps(run.result["gpus"][0])
    (chk,) = twin_errors(load_profile_file(d / "fitted.json"), run)
    assert chk.engine_error is not None, "the probe's server exposed no token counters"
    twin_cap = cap * (1.0 + chk.engine_error)
    time.sleep(3.0)  # the requests cancelled at the probe's end aborted before the next window starts
    cal = _capacity_rps(d)
    return (
        cap,
        twin_cap,
        f"probe {k}: capacity now {cap:.1f} req/s, twin on the probe's requests {twin_cap:.1f} "
        f"({chk.engine_error * 100:+.1f} %); calibrated {cal:.1f} (engine now {(cap / cal - 1) * 100:+.1f} %); "
        f"load avg {os.getloadavg()[0]:.1f}",
    )


def _cpu_slo(d: Path) -> dict[str, float]:
    """solve-plan's SLO, scaled to this engine: TTFT p99 within two steps that prefill the longest prompt the
    lengths allow (it may wait for one such step before its own), TPOT p99 within one such step plus a
    decode step. A step is the longer of the fitted profile's and the engine's own in the calibration: a
    1,024-token prompt alone (the idle prefill probe) and the mean ITL at the lightest load point. A fit
    disturbed by the machine's load once put the decode step at 5.4 ms where the engine took 18 ms per
    token at light load, and a bound sized from the fit alone was one the engine missed even nearly idle.

    The TPOT bound is what one request can see at light load: its decode steps plus one step prefilling
    the longest prompt. A tighter one (four decode steps) was a coin flip: ~15 requests per adapter make
    the p99 their slowest, and a short request whose one or two decode steps share a step with a long
    prefill has a TPOT of that step. In one CI run the twin put one adapter of the one-server plan at
    41.5 ms against a 41.1 ms bound (the others 14–22 ms), and solve split the plan under comparison.
    A light plan thus meets both by a margin on either side, so the verdicts compared are not coin flips
    at the bound; the plan's load is a share of the capacity (``SOLVE_LOAD``)."""
    from optplace.specs.profiles import load_profile_file
    from optplace.twin.steptime import StepTimeModel
    from optplace.vllm.runs import load_run
    from optplace.vllm.sweep import DEFAULT_POINTS

    step = StepTimeModel.from_params(load_profile_file(d / "fitted.json").step_time).bind(16)
    idle = load_run(d / "fitted.runs" / DEFAULT_POINTS[0].label)  # the probes are saved with the first point
    probe_ms = dict(zip(idle.probes["prefill_probe_tokens"], idle.probes["prefill_probe_ms"]))
    prefill = max(step.step_ms(1, MAX_INPUT_TOKENS, 0, 1, 16.0), float(probe_ms[1024]))
    decode = max(step.step_ms(4, 0, 4, 4, 16.0), float(idle.result["gpus"][0]["latency"]["window"]["itl_ms_mean"]))
    return {"ttft_p99_ms": round(2 * prefill, 1), "tpot_p99_ms": round(prefill + decode, 1)}


def _rates(weights: tuple[float, ...], load: float, capacity_rps: float) -> list[float]:
    """Per-adapter rates [req/s] in proportion to ``weights`` that offer ``load`` × the capacity in total."""
    return [round(load * capacity_rps * w / sum(weights), 3) for w in weights]


def _losses(c: GpuComparison) -> tuple[float, float]:
    """The twin's and the engine's throughput loss (1 − completed / offered tokens) on one GPU."""
    return 1.0 - c.twin_throughput_tok_s / c.offered_tok_s, 1.0 - c.real_throughput_tok_s / c.offered_tok_s


def _at_threshold(c: GpuComparison, max_loss: float) -> bool:
    """Both losses within ``VERDICT_BAND`` of the configuration's starvation threshold ``max_loss``, every
    adapter served: a verdict there is the window's tail, not the load (requests arriving in the last
    seconds are cut on both sides)."""
    return not c.real_zero and all(abs(x - max_loss) <= VERDICT_BAND for x in _losses(c))


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
    cap_cal = _capacity_rps(d)
    runs: dict[str, list[dict]] = {}
    scaled_to: dict[str, float] = {}  # the capacity [req/s] each configuration's rates are shares of
    probed: dict[str, float] = {}  # the engine's capacity probed right before the configuration [req/s]
    twin_cap: dict[str, float] = {}  # the twin's capacity on the probe's requests [req/s]
    max_loss: dict[str, float] = {"solve-plan": LIGHT_MAX_LOSS}  # each configuration's starvation threshold
    probe_lines: list[str] = []
    probe_caps: list[tuple[float, float]] = []  # per probe [req/s]: the engine's capacity, the twin's on its requests
    launch = _server_flags(model, adapters)

    def validate(
        label: str,
        spec_text: str,
        window: float,
        server_args: list[str],
        repeats: int = 1,
        after_each: Callable[[], object] | None = None,
    ) -> None:
        path = d / f"{label}.yaml"
        path.write_text(spec_text)
        runs[label] = []
        for k in range(repeats):
            runs[label].append(_validate(path, d / f"v-{label}-{k}", window, server_args))
            if after_each is not None:
                after_each()

    # 1. on one server of the calibration's shape: capacity probes, and between them the configurations
    #    they scale (below saturation and at capacity, all adapters resident) back to back. The probes also
    #    bracket each run of sat-2slots, on a second server (2 slots, the sweep's a0..a3) started before
    #    probe 0 and kept up until its runs are done: saturated at ~150 % with fewer slots than active
    #    adapters, heavy a0, a1 hold the 2 slots and light a2, a3 starve (slot stickiness). Its token rates
    #    are the engine's speed itself, judged net of the twin's error on the probes' workload just before
    #    and just after each of its runs
    with _calibration_shaped_server(d, model) as (cfg, ep, server):

        def probe() -> tuple[float, float]:
            cap_now, cap_twin, line = _probe(d, len(probe_lines), cfg, ep, server)
            probe_lines.append(line)
            probe_caps.append((cap_now, cap_twin))
            print(f"[{line}]")
            return cap_now, cap_twin

        with _calibration_shaped_server(d, model, max_loras=2, adapters=4, log="sat-server.log") as (_, sat_ep, _):
            cap_now, _ = probe()
            # the light pair a share of the capacity too (fixed at 0.5 req/s each, they added 43 % to the load
            # of a machine serving 2.3 req/s): a few requests each in the window, to show they get none done
            rates = [*[_heavy_rate(cap_now)] * 2, *[round(SAT_LIGHT_SHARE * cap_now, 3)] * 2]
            seed = _sticky_seed(rates, SAT_WINDOW_S)
            names = list(sat_ep.adapters)
            routes = d / "routes-sat-2slots.json"
            routes.write_text(
                json.dumps({"endpoints": [{"gpu": 0, "url": sat_ep.url, "adapters": names, "max_loras": 2}]})
            )
            validate(
                "sat-2slots",
                _spec(
                    "sat-2slots",
                    [(n, 8 if i % 2 == 0 else 16, q) for i, (n, q) in enumerate(zip(names, rates))],
                    SAT_WINDOW_S,
                    seed=seed,
                    placement=[(2, names)],
                ),
                SAT_WINDOW_S,
                ["--endpoints", str(routes), "--vocab", "4:2048"],
                SAT_REPEATS,
                after_each=probe,
            )
        scaled_to["sat-2slots"] = cap_now
        for k, group in enumerate(PROBED_GROUPS):
            # the first group follows the probe after sat-2slots' last run
            cap_now, cap_twin = probe_caps[-1] if k == 0 else probe()
            for label, load, weights, window, base_seed, repeats in group:
                rates = _rates(weights, load, min(cap_twin, cap_now))
                seed = _seed_offering(rates, window, base_seed)
                names = [f"a{i}" for i in range(len(rates))]
                routes = d / f"routes-{label}.json"
                routes.write_text(
                    json.dumps(
                        {"endpoints": [{"gpu": 0, "url": ep.url, "adapters": names, "max_loras": cfg.max_loras}]}
                    )
                )
                max_loss[label] = TAIL_MAX_LOSS if load < 1.0 else STARVED_LOSS
                spec = _spec(
                    label,
                    [(n, 8 if i % 2 == 0 else 16, q) for i, (n, q) in enumerate(zip(names, rates))],
                    window,
                    seed=seed,
                    placement=[(len(names), names)],
                    max_loss=max_loss[label],
                )
                validate(label, spec, window, ["--endpoints", str(routes), "--vocab", "4:2048"], repeats)
                scaled_to[label], probed[label], twin_cap[label] = min(cap_twin, cap_now), cap_now, cap_twin

    # 2. the plan optplace solve makes for a small scenario on the fitted profile (light load) under an SLO
    #    scaled to this engine, deployed on a server of its own
    slo = _cpu_slo(d)
    solve_spec = d / "solve.yaml"
    rates = _rates((1.0,) * SOLVE_ADAPTERS, SOLVE_LOAD, cap_cal)
    solve_spec.write_text(
        _spec(
            "solve-plan",
            [(f"s{i}", 8 if i % 2 else 16, q) for i, q in enumerate(rates)],
            SOLVE_WINDOW_S,
            seed=_seed_serving_each(rates, SOLVE_WINDOW_S, 21),
            slo=slo,
            # the real engine replays the run's own draw, and the verdicts compared are on it: on other
            # draws a 45 s window holds ~20 requests per adapter, whose TPOT p99 is their slowest one (one
            # draw at +5 % load failed TPOT by a hair where +10 % and +20 % passed), and repair would
            # split the plan the comparison is about
            check_seeds=0,
            # what is compared here is the SLO verdicts. At a fifth of a slow machine's capacity (~2 req/s) and
            # 8 adapters, an adapter had ~3 requests in the window, one arriving in its last seconds was cut off
            # (a third of the adapter's tokens), and at the usual threshold solve refused the scenario in CI:
            # "adapter s7 starves even alone"
            max_loss=max_loss["solve-plan"],
        )
    )
    r = runner.invoke(app, ["solve", str(solve_spec), "--json"])
    assert r.exit_code == 0, r.output
    plan = d / "plan.json"
    plan.write_text(r.stdout)
    placement = json.loads(r.stdout)["placement"]
    assert len(placement) == 1, placement  # one server serves 30 % of its capacity within the SLO
    runs["solve-plan"] = [_validate(plan, d / "v-solve", SOLVE_WINDOW_S, launch)]
    scaled_to["solve-plan"] = cap_cal

    # 3. light, 5 adapters on 3 slots (swaps, every adapter served): 15 % of the calibrated capacity, as a
    # share like the others (fixed at 0.4 req/s per adapter, it was 125 % on a machine 6x slower than the one
    # it was set on, and starved), for a window with ~10 requests per adapter (30-90 s)
    rate_5ad = round(0.03 * cap_cal, 3)
    window_5ad = min(90.0, max(30.0, round(10.0 / rate_5ad)))
    validate(
        "5ad-3slots",
        _spec(
            "5ad-3slots",
            [(f"m{i}", 8 if i % 2 == 0 else 16, rate_5ad) for i in range(5)],
            window_5ad,
            seed=33,
            placement=[(3, [f"m{i}" for i in range(5)])],
        ),
        window_5ad,
        launch,
    )
    scaled_to["5ad-3slots"] = cap_cal

    by = {label: _merged(label, docs) for label, docs in runs.items()}

    def threshold(label: str) -> float:
        return max_loss.get(label, STARVED_LOSS)

    tok = _mean_request_tokens()
    # offered: the share of the capacity the configuration's rates were scaled to; realised: what the engine
    # served in the run over the calibrated capacity, and over the one probed right before it (engine, twin)
    load = {label: c.offered_tok_s / (scaled_to[label] * tok) for label, c in by.items()}
    served = {label: _served_rps(mean_of_runs([doc["real"]["gpus"][0] for doc in runs[label]])) for label in by}
    labels = [f"{lb} {load[lb] * 100:.0f}%" + (f" x{len(runs[lb])}" if len(runs[lb]) > 1 else "") for lb in by]
    walls = ", ".join(f"{lb} {sum(doc['wall_s'] for doc in docs):.0f} s" for lb, docs in runs.items())
    print(
        f"\n[twin vs real, profile fitted in this run; calibrated capacity {cap_cal:.1f} req/s; load avg "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; validation walls {walls}]"
    )
    print("\n".join(f"[{line}]" for line in probe_lines))
    for lb in by:
        now = ""
        if lb in probed:  # the twin's side: what it served over its own capacity on the probe's requests
            twin_served = _served_rps(runs[lb][0]["twin"]["gpus"][0])
            now = (
                f", {served[lb] / probed[lb] * 100:.0f} % of the probed {probed[lb]:.1f}; twin "
                f"{twin_served / twin_cap[lb] * 100:.0f} % of its {twin_cap[lb]:.1f}"
            )
        print(
            f"[load {lb}: offered {load[lb] * 100:.0f} % of {scaled_to[lb]:.1f} req/s; realised (engine served "
            f"{served[lb]:.1f} req/s) {served[lb] / cap_cal * 100:.0f} % of the calibrated capacity{now}]"
        )
    print(render_comparison(list(by.values()), labels, TOLERANCE))
    print(render_latency(list(by.values()), labels))
    print(render_slo([by["solve-plan"]], ["solve-plan"]))
    for label, docs in runs.items():
        if len(docs) > 1:  # the spread of the real engine between identical runs
            for k, doc in enumerate(docs):
                c = compare_runs(doc["twin"]["gpus"], doc["real"]["gpus"])[0]
                print(
                    f"  {label} run {k + 1}: engine {c.engine_error * 100 if c.engine_error is not None else 0:+.1f} %,"
                    f" completed {c.throughput_error * 100 if c.throughput_error is not None else 0:+.1f} %"
                )

    # sat-2slots at saturation: the twin's token rates against the engine's, net of the twin's error on the
    # calibration's workload at the same time: each run is bracketed by the probes just before and just after
    # it (the twin's over the engine's capacity on their requests), and the drift is the mean over its runs of
    # those two probes' mean. Judged raw against the calibration, its errors ranged from -20 % to +13 % over
    # four runs of this suite as the shared machine's speed drifted; bracketed by one probe before both runs
    # and one after them, three of four CI runs in one day missed by -16 % to -21 %
    twin_over_engine = [cap_twin / cap_now for cap_now, cap_twin in probe_caps]
    drift = float(np.mean([(twin_over_engine[k] + twin_over_engine[k + 1]) / 2.0 for k in range(SAT_REPEATS)]))
    sat = by["sat-2slots"]
    sat_net = {
        what: None if err is None else (1.0 + err) / drift - 1.0
        for what, err in (("engine tokens/s", sat.engine_error), ("completed tokens/s", sat.throughput_error))
    }
    print(
        f"[sat-2slots net of the drift (twin/engine on the calibration's workload around it {drift:.3f}): "
        + ", ".join(f"{what} {_pct(err)}" for what, err in sat_net.items())
        + "]"
    )
    # the scenarios do what they are meant to: one saturated with stuck adapters, the light and the
    # below-saturation ones served in full, at the intended share of the capacity
    assert by["sat-2slots"].real_starved and set(by["sat-2slots"].real_zero) == {"a2", "a3"}
    for label in ("solve-plan", "5ad-3slots", "load-50", "load-80"):
        assert not by[label].real_starved or _at_threshold(by[label], threshold(label)), (label, _losses(by[label]))
    assert 0.4 <= load["load-50"] <= 0.6 and 0.7 <= load["load-80"] <= 0.9, load
    assert 0.9 <= load["load-100"] <= 1.1 and load["sat-2slots"] >= 1.3, load
    assert all(not g.get("oom") for docs in runs.values() for doc in docs for g in doc["real"]["gpus"])
    # every criterion checked, every miss reported at once (one real run costs minutes)
    misses = []
    unjudged = []  # completed tokens at and beyond capacity (AT_CAPACITY): printed, not judged
    for label, c in by.items():
        if label != "load-100" and (not c.same_zero_set or not (c.same_verdict or _at_threshold(c, threshold(label)))):
            misses.append(
                f"{label}: verdict twin/real {c.twin_starved}/{c.real_starved}, zero {c.twin_zero}/{c.real_zero}"
            )
        errors = {"engine tokens/s": c.engine_error, "completed tokens/s": c.throughput_error}
        for what, err in (sat_net if label == "sat-2slots" else errors).items():
            if label in AT_CAPACITY and what == "completed tokens/s":
                unjudged.append(f"{label} {_pct(err)}")
            elif err is None or abs(err) > TOLERANCE:
                misses.append(f"{label}: {what} error {err} beyond {TOLERANCE}")
    print(f"[completed tokens at and beyond capacity (sat-2slots net of the drift), not judged: {', '.join(unjudged)}]")
    # the real engine judged by the twin's SLO rule on the plan solved under it: the same verdict per adapter
    sp = by["solve-plan"]
    assert {a.name for a in sp.adapter_slo} == {f"s{i}" for i in range(SOLVE_ADAPTERS)}, sp.adapter_slo
    assert all(a.twin_ok for a in sp.adapter_slo), "solve's plan meets its SLO in the twin"
    misses += [
        f"solve-plan: SLO verdict of {a.name} twin/real {a.twin_ok}/{a.real_ok}" for a in sp.adapter_slo if not a.agree
    ]
    ttft_err = {a.name: a.error("ttft_p99_ms") for a in sp.adapter_slo}
    far = {n: e for n, e in ttft_err.items() if e is None or abs(e) > SLO_TTFT_P99_TARGET}
    print(
        f"[solve-plan under SLO {slo}: verdicts agree on {sum(a.agree for a in sp.adapter_slo)}/"
        f"{len(sp.adapter_slo)} adapters; steady TTFT p99 within {SLO_TTFT_P99_TARGET:.0%} of the engine's on "
        f"{len(ttft_err) - len(far)}/{len(ttft_err)}"
        + (
            ": beyond on " + ", ".join(f"{n} {e * 100:+.0f} %" if e is not None else n for n, e in far.items())
            if far
            else ""
        )
        + "]"
    )
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
    # the same latency with the twin at the engine's speed of the probe before each group (diagnostic): near
    # capacity a few per cent of machine drift move the twin's relative load, and with it the queueing
    for label in ("load-50", "load-80", "load-100"):
        ratio = twin_cap[label] / probed[label]
        at_speed = compare_gpu(
            _twin_at_speed(d, label, ratio), mean_of_runs([doc["real"]["gpus"][0] for doc in runs[label]])
        )
        print(
            f"[{label}, twin at the probed speed (x{ratio:.3f}): "
            + ", ".join(f"{key} {_pct(at_speed.latency_error(key))}" for key in LATENCY_TOLERANCE)
            + f"; raw: {', '.join(f'{key} {_pct(by[label].latency_error(key))}' for key in LATENCY_TOLERANCE)}]"
        )
        assert at_speed.engine_error is not None
    # the saved runs are calibration input too: refit from the validations' runs
    refit_args = [a for lb in ("solve-plan", "load-80", "5ad-3slots") for a in ("--runs", str(_run_dir(d, lb)))]
    r = runner.invoke(app, ["calibrate", *refit_args, "--out", str(d / "refit.json")])
    assert r.exit_code == 0, r.output
    print(f"[refit from the validation runs] {r.stdout.strip()}")
    fit_doc = json.loads((d / "refit.json").read_text())
    assert fit_doc["calibrated"] and fit_doc["step_time"]["coef"]["c0"] > 0
    assert np.isfinite(list(fit_doc["step_time"]["coef"].values())).all()
    assert not misses, "\n".join(misses)


def _pct(err: float | None) -> str:
    return "-" if err is None else f"{err * 100:+.1f} %"


def _twin_at_speed(d: Path, label: str, ratio: float) -> dict:
    """The twin's GPU result (``optplace simulate --json``) for configuration ``label``'s spec, the fitted
    profile's step and adapter-load times multiplied by ``ratio`` (the twin's capacity over the engine's on
    the probe before it): the twin replayed at the engine's speed of that minute, on the same draw."""
    from optplace.specs.profiles import load_profile_file

    prof = load_profile_file(d / "fitted.json").time_scaled(ratio)
    (d / f"fitted-{label}.json").write_text(json.dumps(prof.model_dump(mode="json")))
    path = d / f"{label}-at-speed.yaml"
    spec = (d / f"{label}.yaml").read_text()
    assert "profile: fitted.json" in spec
    path.write_text(spec.replace("profile: fitted.json", f"profile: fitted-{label}.json"))
    r = runner.invoke(app, ["simulate", str(path), "--json"])
    assert r.exit_code in (0, 1), r.output
    (gpu,) = json.loads(r.stdout)["gpus"]
    return gpu


def _run_dir(d: Path, label: str) -> Path:
    return d / "v-solve" if label == "solve-plan" else d / f"v-{label}-0"


def _mean_request_tokens() -> float:
    """Mean input + output tokens of a request of the sweep's lengths (the specs' ``LENGTHS``)."""
    from optplace.vllm.sweep import SweepConfig, mean_request_tokens

    return mean_request_tokens(SweepConfig(model_path=Path("."), adapters_dir=Path(".")))


def test_weighted_replicas_run_as_planned_on_two_real_servers_behind_the_router(fitted, tiny_model):
    """An adapter replicated 70/30 on two servers launched from the plan, every request sent through the
    built-in router over the plan's routes (``validate --router``): each server receives the share of
    the replicated adapter's requests its weight says (within 5 %; counted by the router's header and
    by each server's own request counter), the twin, following the router's picks, simulates each replica
    on the requests it received, and matches each replica's throughput."""
    d = fitted
    cap = _capacity_rps(d)
    # light: the busier server gets ~a third of the calibrated capacity
    rates = [("hot", 16, round(0.4 * cap, 3)), ("c0", 8, round(0.05 * cap, 3)), ("c1", 8, round(0.05 * cap, 3))]
    spec = d / "replicas.yaml"
    spec.write_text(
        _spec(
            "replicas",
            rates,
            REPLICAS_WINDOW_S,
            seed=17,
            placement=[(2, ["{name: hot, share: 0.7}", "c0"]), (2, ["{name: hot, share: 0.3}", "c1"])],
            # a CI run on a slow machine lost 10.3 % on the engine and 13.8 % in the twin at a third of the
            # capacity: the window's tail, not the routing under test
            max_loss=LIGHT_MAX_LOSS,
        )
    )
    doc = _validate(
        spec, d / "v-replicas", REPLICAS_WINDOW_S, [*_server_flags(tiny_model.path, d / "adapters"), "--router"]
    )
    twin, real = doc["twin"]["gpus"], doc["real"]["gpus"]
    assert len(real) == 2 and not any(g.get("oom") for g in real), "a server failed to start"
    routing = doc["real"]["routing"]
    hot = routing["adapters"]["hot"]
    assert routing["router"] and hot["shares"] == {"0": 0.7, "1": 0.3}
    sent = hot["real_requests"]
    n = sent["0"] + sent["1"]
    # the router's count per server is what each server itself finished or aborted (its /metrics counter)
    served = [doc["real"]["metrics_delta"][str(g)]["requests_finished"] for g in (0, 1)]
    per_gpu = [sum(a["arrived"] for a in g["per_adapter"]) for g in real]
    comps = compare_runs(twin, real)
    print(
        f"\n[replicas 70/30 on two servers behind the router: hot's requests {sent['0']}/{sent['1']} "
        f"({sent['0'] / n:.3f} to the 70 % replica; twin {hot['twin_requests']['0']}/{hot['twin_requests']['1']}, "
        f"{hot['elsewhere_than_twin']} elsewhere, nearest {hot['elsewhere_nearest_s']} s); "
        f"requests per server {per_gpu}, finished there {served};"
        + "; ".join(
            f" gpu{i} engine {c.engine_error * 100:+.1f} %, completed {c.throughput_error * 100:+.1f} %"
            for i, c in enumerate(comps)
            if c.engine_error is not None and c.throughput_error is not None
        )
        + "]"
    )
    # the twin followed the router's picks: the router picks in the order requests reach it, and on a loaded
    # machine two sent close together may swap (a CI run moved 8 of 421, 1.9 %); a swap moves requests that
    # have a near neighbour, a routing the twin got wrong would move them whatever their neighbours
    assert hot["twin_requests"] == sent and n >= 10, hot
    assert hot["elsewhere_than_twin"] <= max(2, SWAPPED_SHARE * n), hot
    assert hot["elsewhere_nearest_s"] is None or hot["elsewhere_nearest_s"] <= SWAP_GAP_S, hot
    assert abs(sent["0"] / n - 0.7) <= 0.05 * 0.7, sent
    for g, fin in zip(real, served):
        # every request sent to this server finished there or was cut off at the window's end
        assert fin is not None and fin <= sum(a["arrived"] for a in g["per_adapter"])
        assert fin >= sum(a["completed"] for a in g["per_adapter"])
    for i, c in enumerate(comps):
        assert not c.real_starved and c.same_verdict, (i, _losses(c), c)
        for what, err in (("engine", c.engine_error), ("completed", c.throughput_error)):
            assert err is not None and abs(err) <= TOLERANCE, (i, what, err)
