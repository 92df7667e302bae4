"""Fit a profile's step-time, adapter-load and scheduler-overhead sections from the reference data.

Re-runnable and deterministic (closed-form least squares, no random draws). Where each coefficient
of the step-time form ``lora_mult_v2`` (see :mod:`optplace.twin.steptime`) comes from:

* ``c0``, ``c_seq``, ``c_ctx`` — ``v1_base_latency.csv``, ``decode`` rows (no LoRA, 1-token prompts,
  100–400 output tokens): mean ITL ≈ decode step time against the mean batch size B and the KV tokens
  read, K = B·(prompt + output/2). Weighted least squares on relative error.
* ``c_pf`` — ``v1_base_latency.csv``, Llama ``prefill`` rows (4096 prompts sent at once, output 1):
  mean step = duration / ⌈input tokens / 2048⌉ minus ``c0``, regressed on the 2048 prefill tokens and
  the number of prompts per step (the per-prompt part is request handling in the API server, which
  runs beside the engine in V1, so only the per-token slope is kept). The Qwen prefill rows are a
  single step each (64 tiny prompts), too few to fit, so Qwen's slope is Llama's scaled by the ratio
  of the two models' decode slopes ``c_seq`` (both are weight-streaming bound at the same token count).
* ``g0``, ``g_lora`` — ``v1_lora_decode_overhead.csv`` ``lora`` rows (300 slots, rank 8): ITL divided by
  the base decode prediction at the same batch, minus 1, regressed on the mean number of distinct adapters
  per batch (``mean_loras_by_batch``; where missing, the expectation for B requests spread uniformly over
  the adapters used: D·(1 − (1 − 1/D)^B)).
* ``h_pf``, ``g_rank``, ``g_slot`` — the only coefficients fitted on the 1-hour ``dt_validation`` runs,
  three global numbers per model (prefill share of the LoRA slowdown, rank effect, and the growth of the
  fixed LoRA cost with the slot count; ``g0`` was measured at ``slots_ref`` = 300 slots): each run's mean
  step time is measured as 1000·mean_running / output_throughput (it agrees with the mean ITL), its prefill
  tokens per step as input_throughput × step, its distinct adapters as min(max_loras, expected distinct
  among mean_running requests at the adapters' rates), and the scheduler overhead at the run's mean queues
  is subtracted. ``fit_report`` cross-validates them (fit on one rate group, test on the other).
* ``ctx_default`` — mean KV tokens held by a running request of the reference workload when a caller
  does not pass KV tokens: prompt + half the output, length-weighted (a request stays in the batch for
  its output length), computed from the pool means of the 1-hour runs (``real_runs.csv``).

Request lengths (not a profile section; used by ``optplace bench fidelity``): ``fit_length_correlation``
finds the input/output rank correlation of the ShareGPT length model that reproduces the KV tokens per
running request of the real runs (``real_runs.csv``: mean_kv_usage × kv_cache_tokens / mean_running,
≈ 350 tokens; independent draws give ≈ 440).

Adapter load (``adapter_load``): ``v1_adapter_load_time.csv`` (50 forced CPU→GPU loads per
(adapter rank, max_lora_rank) with 1 slot; disk→CPU time per adapter).

Scheduler overhead (``queue_linear_v1``): ``scheduler_overhead_adapter_rates.csv`` and
``scheduler_overhead_aggregated_rate.csv`` (600 s runs, model not recorded, so the same for both models):
total scheduling time / steps regressed on the mean running, waiting and waiting·slots/served.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optplace.calibration.reference import RefRun, find_reference_dir, load_dt_validation, read_csv_rows
from optplace.twin.steptime import SchedulerOverhead, StepTimeModel

__all__ = [
    "FitReport",
    "calibrate_bundled",
    "fit_adapter_load",
    "fit_length_correlation",
    "kv_tokens_per_running_request",
    "fit_profile_sections",
    "fit_report",
    "fit_scheduler_overhead",
    "fit_step_time",
    "fit_step_time_section",
    "write_profile",
]

MODELS = ("llama-3.1-8b-instruct", "qwen-2.5-7b-instruct")
_PREFILL_SOURCE_MODEL = "llama-3.1-8b-instruct"
BUDGET_TOKENS = 2048
#: the step-time form the bundled profiles are fitted in; ``optplace bench fidelity --cv --step-form``
#: scores another (docs/latency-fidelity.md compares ``lora_add_v3``)
STEP_FORM = "lora_mult_v2"
#: the forms the reference data can be fitted in
FIT_FORMS = ("lora_mult_v2", "lora_add_v3")


def _f(v: str | None) -> float:
    return float("nan") if v is None or v == "" else float(v)


def _lstsq(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    if w is not None:
        x, y = x * w[:, None], y * w
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return coef


def _base_decode(ref: Path, model: str) -> tuple[float, float, float]:
    rows = [
        r
        for r in read_csv_rows(ref / "v1_base_latency.csv")
        if r["model"] == model and r["experiment"] == "decode" and r["status"] == "ok"
    ]
    if len(rows) < 3:
        raise ValueError(f"v1_base_latency.csv: fewer than 3 decode rows for {model}")
    b = np.array([_f(r["mean_batch_size"]) for r in rows])
    prompt = np.array([_f(r["total_input_tokens"]) / _f(r["num_prompts"]) for r in rows])
    out = np.array([_f(r["output_len"]) for r in rows])
    y = np.array([_f(r["mean_itl_ms"]) for r in rows])
    x = np.c_[np.ones_like(b), b, b * (prompt + out / 2.0) / 1000.0]
    c = _lstsq(x, y, 1.0 / y)
    return float(c[0]), float(c[1]), float(c[2])


def _prefill_slope(ref: Path, c0: float) -> float:
    rows = [
        r
        for r in read_csv_rows(ref / "v1_base_latency.csv")
        if r["model"] == _PREFILL_SOURCE_MODEL and r["experiment"] == "prefill" and r["status"] == "ok"
    ]
    tin = np.array([_f(r["total_input_tokens"]) for r in rows])
    n = np.array([_f(r["num_prompts"]) for r in rows])
    steps = np.ceil(tin / BUDGET_TOKENS)
    step_ms = 1000.0 * np.array([_f(r["duration_s"]) for r in rows]) / steps
    prompts_per_step = n / steps
    x = np.c_[np.full_like(tin, BUDGET_TOKENS), prompts_per_step]
    c = _lstsq(x, step_ms - c0)
    return float(c[0])


def _lora_factor(ref: Path, model: str, base: tuple[float, float, float], form: str) -> tuple[float, float]:
    rows = [
        r
        for r in read_csv_rows(ref / "v1_lora_decode_overhead.csv")
        if r["model"] == model and r["experiment"] == "lora" and r["status"] == "ok"
    ]
    b = np.array([_f(r["mean_batch_size"]) for r in rows])
    out = np.array([_f(r["output_len"]) for r in rows])
    prompt = np.array([_f(r["input_len"]) for r in rows])
    used = np.array([_f(r["distinct_adapters_used"]) for r in rows])
    lb = np.array([_f(r["mean_loras_by_batch"]) for r in rows])
    expected = used * (1.0 - (1.0 - 1.0 / used) ** b)
    lb = np.where(np.isnan(lb), expected, lb)
    y = np.array([_f(r["mean_itl_ms"]) for r in rows])
    attention = base[2] * b * (prompt + out / 2.0) / 1000.0
    lin = base[0] + base[1] * b
    if form == "lora_add_v3":
        # ITL − attention − lin = g0·lin + g_lora·L (g_lora in ms per adapter), relative weights
        g = _lstsq(np.c_[lin, lb], y - attention - lin, 1.0 / y)
    else:
        g = _lstsq(np.c_[np.ones_like(lb), lb], (y - attention) / lin - 1.0)
    return float(g[0]), float(g[1])


def _ctx_default(runs: list[RefRun]) -> float:
    # A running request holds prompt + generated-so-far tokens; averaged over its decode steps that
    # is prompt + out/2, and requests are in the batch in proportion to their output length. With
    # exponential-like output lengths E[out²]/E[out] ≈ 2·E[out], hence prompt + E[out].
    ins = [r.pool_mean_input_tokens for r in runs if r.pool_mean_input_tokens]
    outs = [r.pool_mean_output_tokens for r in runs if r.pool_mean_output_tokens]
    return float(np.mean(ins) + np.mean(outs))


def expected_distinct(rates: tuple[float, ...], requests: float) -> float:
    """Expected number of distinct adapters among ``requests`` requests drawn in proportion to ``rates``."""
    p = np.asarray(rates, dtype=np.float64)
    p = p / p.sum()
    return float(np.sum(1.0 - np.exp(-requests * p)))


@dataclass(frozen=True, slots=True)
class _Obs:
    run: RefRun
    batch: float
    step_ms: float
    prefill: float
    distinct: float
    overhead_ms: float


def _observations(runs: list[RefRun], overhead: SchedulerOverhead, min_batch: float = 3.0) -> list[_Obs]:
    obs = []
    for r in runs:
        if not r.has_results or not r.mean_running or not r.output_throughput or r.mean_running < min_batch:
            continue
        step = 1000.0 * r.mean_running / r.output_throughput
        obs.append(
            _Obs(
                run=r,
                batch=r.mean_running,
                step_ms=step,
                prefill=(r.input_throughput or 0.0) * step / 1000.0,
                distinct=min(float(r.max_loras), expected_distinct(r.adapter_rates, r.mean_running)),
                overhead_ms=overhead.overhead_ms(
                    round(r.mean_running), round(r.mean_waiting or 0.0), r.max_loras, r.max_cpu_loras
                ),
            )
        )
    return obs


def _predict(m: StepTimeModel, o: _Obs) -> float:
    return (
        m.bind(o.run.max_lora_rank, o.run.max_loras).step_ms(
            round(o.batch), round(o.prefill), round(o.batch), round(o.distinct), 8.0
        )
        + o.overhead_ms
    )


GLOBALS = ("h_pf", "g_rank", "g_slot")


def _fit_globals(m: StepTimeModel, obs: list[_Obs], names: tuple[str, ...] = GLOBALS) -> StepTimeModel:
    # Gauss–Newton on relative error; the coefficients enter (almost) linearly, so it converges in a few steps.
    theta = np.array([getattr(m, n) for n in names], dtype=np.float64)
    y = np.array([o.step_ms for o in obs])

    def model(t: np.ndarray) -> StepTimeModel:
        return StepTimeModel(**{**_fields(m), **{n: float(v) for n, v in zip(names, t)}})

    def pred(t: np.ndarray) -> np.ndarray:
        mm = model(t)
        return np.array([_predict(mm, o) for o in obs])

    for _ in range(30):
        p0 = pred(theta)
        jac = np.empty((len(obs), len(names)))
        for j in range(len(names)):
            d = np.zeros(len(names))
            d[j] = 1e-5
            jac[:, j] = (pred(theta + d) - p0) / 1e-5
        step = _lstsq(jac / y[:, None], (y - p0) / y)
        theta = theta + step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return model(theta)


def _fields(m: StepTimeModel) -> dict[str, Any]:
    return {"form": m.form, **m.coef(), "time_scale": m.time_scale}


def fit_scheduler_overhead(ref_dir: str | os.PathLike[str] | None = None) -> SchedulerOverhead:
    """Fit the per-step scheduler overhead (ms) on the two scheduler-overhead CSVs."""
    ref = find_reference_dir(ref_dir)
    rows = []
    for name in ("scheduler_overhead_adapter_rates.csv", "scheduler_overhead_aggregated_rate.csv"):
        rows += [r for r in read_csv_rows(ref / name) if _f(r["steps"]) > 0]
    b = np.array([_f(r["avg_batch_size"]) for r in rows])
    w = np.array([_f(r["avg_waiting_queue"]) for r in rows])
    ratio = np.minimum(1.0, np.array([_f(r["gpu_loras"]) / _f(r["cpu_loras"]) for r in rows]))
    y = 1000.0 * np.array([_f(r["total_scheduling_time"]) / _f(r["steps"]) for r in rows])
    c = _lstsq(np.c_[np.ones_like(b), b, w, -w * ratio], y)
    s_wait = float(c[2])
    return SchedulerOverhead(
        form="queue_linear_v1",
        s0=float(c[0]),
        s_run=float(c[1]),
        s_wait=s_wait,
        s_ratio=float(c[3] / s_wait) if s_wait else 0.0,
    )


def fit_step_time(
    ref_dir: str | os.PathLike[str] | None,
    model: str,
    *,
    runs: list[RefRun] | None = None,
    overhead: SchedulerOverhead | None = None,
    fit_globals: bool = True,
    form: str = STEP_FORM,
) -> StepTimeModel:
    """Fit the step-time model of ``model`` in ``form`` (see the module docstring for sources)."""
    if form not in FIT_FORMS:
        raise ValueError(f"cannot fit step-time form {form!r} (fittable: {', '.join(FIT_FORMS)})")
    ref = find_reference_dir(ref_dir)
    base = _base_decode(ref, model)
    c_pf = _prefill_slope(ref, _base_decode(ref, _PREFILL_SOURCE_MODEL)[0])
    if model != _PREFILL_SOURCE_MODEL:
        c_pf *= base[1] / _base_decode(ref, _PREFILL_SOURCE_MODEL)[1]
    g0, g_lora = _lora_factor(ref, model, base, form)
    all_runs = load_dt_validation(ref) if runs is None else runs
    model_runs = [r for r in all_runs if r.model == model]
    m = StepTimeModel(
        form=form,
        c0=base[0],
        c_seq=base[1],
        c_ctx=base[2],
        c_pf=c_pf,
        g0=g0,
        g_lora=g_lora,
        g_rank=0.0,
        h_pf=0.0,
        ctx_default=_ctx_default(model_runs),
    )
    if fit_globals:
        ov = overhead if overhead is not None else fit_scheduler_overhead(ref)
        m = _fit_globals(m, _observations(model_runs, ov))
    return m


def fit_adapter_load(ref_dir: str | os.PathLike[str] | None, model: str) -> dict[str, Any]:
    """CPU→GPU load time [ms] per [max_lora_rank][adapter rank] and disk→CPU [ms] per rank."""
    ref = find_reference_dir(ref_dir)
    rows = [r for r in read_csv_rows(ref / "v1_adapter_load_time.csv") if r["model"] == model and r["status"] == "ok"]
    if not rows:
        raise ValueError(f"v1_adapter_load_time.csv: no rows for {model}")
    cpu: dict[str, dict[str, float]] = {}
    disk_acc: dict[str, list[float]] = {}
    for r in sorted(rows, key=lambda r: (int(r["max_lora_rank"]), int(r["adapter_rank"]))):
        cpu.setdefault(r["max_lora_rank"], {})[r["adapter_rank"]] = round(_f(r["mean_cpu_to_gpu_load_ms"]), 4)
        disk_acc.setdefault(r["adapter_rank"], []).append(_f(r["mean_disk_to_cpu_load_ms"]))
    disk = {k: round(float(np.mean(v)), 3) for k, v in sorted(disk_acc.items(), key=lambda kv: int(kv[0]))}
    return {
        "cpu_to_gpu_ms": cpu,
        "disk_to_cpu_ms": disk,
        "source": "v1_adapter_load_time.csv: mean of 50 forced CPU->GPU loads (1 slot) per (max_lora_rank, rank);"
        " disk->CPU = mean per-adapter disk load time, averaged over max_lora_rank",
    }


def _r(x: float) -> float:
    return float(f"{x:.6g}")


def fit_step_time_section(
    ref_dir: str | os.PathLike[str] | None,
    model: str,
    runs: list[RefRun] | None = None,
    overhead: SchedulerOverhead | None = None,
    form: str = STEP_FORM,
) -> dict[str, Any]:
    """The profile ``step_time`` section (form and coefficients, as stored) fitted on ``runs``.

    ``runs`` None fits on every ``dt_validation`` run (the bundled profile); a subset fits the global
    coefficients on it alone (``optplace bench fidelity --cv`` scores the runs left out)."""
    ref = find_reference_dir(ref_dir)
    ov = overhead if overhead is not None else fit_scheduler_overhead(ref)
    m = fit_step_time(ref, model, runs=runs, overhead=ov, form=form)
    return {"form": m.form, "coef": {k: _r(v) for k, v in m.coef().items()}}


def fit_profile_sections(ref_dir: str | os.PathLike[str] | None, model: str) -> dict[str, Any]:
    """The ``step_time``, ``adapter_load`` and ``scheduler_overhead`` profile sections of ``model``."""
    ref = find_reference_dir(ref_dir)
    ov = fit_scheduler_overhead(ref)
    return {
        "step_time": {
            **fit_step_time_section(ref, model, overhead=ov),
            "source": (
                "c0,c_seq,c_ctx: v1_base_latency.csv decode rows; c_pf: v1_base_latency.csv llama prefill rows"
                + ("" if model == _PREFILL_SOURCE_MODEL else " x (c_seq ratio qwen/llama)")
                + "; g0,g_lora: v1_lora_decode_overhead.csv lora rows (300 slots = slots_ref); h_pf,g_rank,g_slot:"
                " 3 global coefficients fitted on real_runs.csv dt_validation mean step times"
                " (1000*mean_running/output_throughput), cross-validated across rate groups;"
                " ctx_default: real_runs.csv pool mean lengths. Fit: optplace.calibration.reference_fit"
            ),
        },
        "adapter_load": fit_adapter_load(ref, model),
        "scheduler_overhead": {
            "form": ov.form,
            "coef": {k: _r(v) for k, v in ov.coef().items()},
            "source": "scheduler_overhead_adapter_rates.csv + scheduler_overhead_aggregated_rate.csv:"
            " total_scheduling_time/steps vs avg batch, avg waiting, waiting*slots/served (ms per step)",
        },
    }


def write_profile(path: str | os.PathLike[str], sections: dict[str, Any]) -> None:
    """Replace the calibrated sections of the profile JSON at ``path``, keeping every other key."""
    p = Path(path)
    data = json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
    for key in ("step_time", "adapter_load", "scheduler_overhead"):
        if key in sections:
            data[key] = sections[key]
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(p)


@dataclass(frozen=True, slots=True)
class FitReport:
    """Step-time fit quality on the 1-hour runs: mean |relative error| of the mean step time [%]."""

    model: str
    microbench_only_pct: float
    fitted_pct: float
    cv_pct: float
    n_runs: int


def fit_report(ref_dir: str | os.PathLike[str] | None = None) -> list[FitReport]:
    """Check the step-time fit on the 1-hour runs, with a 2-fold cross-validation of the global terms.

    Folds are the two rate groups (``rates_0.1_…`` vs ``rates_1.6_…``): the global coefficients fitted on
    one are tested on the other (rank groups cannot serve as folds: ``g_rank`` needs both ranks).
    """
    ref = find_reference_dir(ref_dir)
    ov = fit_scheduler_overhead(ref)
    runs = load_dt_validation(ref)
    out = []
    for model in MODELS:
        mr = [r for r in runs if r.model == model]
        obs = _observations(mr, ov)
        raw = fit_step_time(ref, model, runs=runs, overhead=ov, fit_globals=False)
        full = _fit_globals(raw, obs)

        def err(m: StepTimeModel, oo: list[_Obs]) -> float:
            return 100.0 * float(np.mean([abs(_predict(m, o) - o.step_ms) / o.step_ms for o in oo]))

        cv_errs = []
        for fold in ("rates_0.1", "rates_1.6"):
            train = [o for o in obs if fold not in o.run.config_group]
            test = [o for o in obs if fold in o.run.config_group]
            cv_errs.append((err(_fit_globals(raw, train), test), len(test)))
        cv = sum(e * n for e, n in cv_errs) / sum(n for _, n in cv_errs)
        out.append(
            FitReport(
                model=model, microbench_only_pct=err(raw, obs), fitted_pct=err(full, obs), cv_pct=cv, n_runs=len(obs)
            )
        )
    return out


def calibrate_bundled(
    ref_dir: str | os.PathLike[str] | None = None, profiles_dir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Refit the three calibrated sections of every bundled ``<model>@*.json`` profile; returns the files written."""
    ref = find_reference_dir(ref_dir)
    pdir = (
        Path(profiles_dir) if profiles_dir is not None else Path(__file__).resolve().parents[1] / "specs" / "profiles"
    )
    written = []
    for path in sorted(pdir.glob("*.json")):
        model = json.loads(path.read_text(encoding="utf-8")).get("model", path.stem.split("@")[0])
        if model not in MODELS:
            continue
        write_profile(path, fit_profile_sections(ref, model))
        written.append(path)
    return written


def kv_tokens_per_running_request(ref_dir: str | os.PathLike[str] | None = None) -> dict[str, float]:
    """Median KV tokens held per running request in the real 1-hour runs, per model.

    ``mean_kv_usage × kv_cache_tokens / mean_running`` over ``dt_validation`` runs with results, at
    least 20 running requests on average and no preemption (so the cache is not the binding limit).
    Includes the block rounding (half a 16-token block per request on average).
    """
    runs = load_dt_validation(ref_dir)
    out: dict[str, float] = {}
    for model in MODELS:
        v = [
            r.mean_kv_usage * r.kv_cache_tokens / r.mean_running
            for r in runs
            if r.model == model
            and r.has_results
            and r.mean_running
            and r.mean_running > 20
            and r.mean_kv_usage
            and r.kv_cache_tokens
            and not r.preemptions_in_window
        ]
        out[model] = float(np.median(v))
    return out


def time_avg_context(inp: np.ndarray, out: np.ndarray) -> float:
    """Time-averaged KV tokens of a running request: prompt + half the output, weighted by output length."""
    i = inp.astype(np.float64)
    o = out.astype(np.float64)
    return float((np.sum(i * o) + 0.5 * np.sum(o * o)) / np.sum(o))


def repair_lengths(
    inp: np.ndarray, out: np.ndarray, rho: float, rng: np.random.Generator, max_total: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Re-pair lengths to a rank correlation (see :func:`optplace.twin.lengths.rank_pair`)."""
    from optplace.twin.lengths import rank_pair

    return rank_pair(inp, out, rho, rng, max_total)


def fit_length_correlation(
    ref_dir: str | os.PathLike[str] | None = None, n: int = 200_000, seed: int = 0
) -> dict[str, float]:
    """Input/output rank correlation of the ShareGPT length model that reproduces the real KV per request.

    Target: :func:`kv_tokens_per_running_request` averaged over both models, minus the half-block rounding
    (7.5 tokens). Marginals: the twin's ``sharegpt`` draws. Solved by bisection on a seeded Monte-Carlo
    sample (deterministic). Returns ``{"target_tokens", "independent_tokens", "rho"}``.
    """
    from optplace.specs.model import ShareGptLengths
    from optplace.twin.lengths import draw_lengths

    per_model = kv_tokens_per_running_request(ref_dir)
    target = float(np.mean(list(per_model.values()))) - 7.5
    inp, out = draw_lengths(ShareGptLengths(kind="sharegpt", io_rank_correlation=0.0), n, np.random.default_rng(seed))
    lo, hi = -0.95, 0.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        i2, o2 = repair_lengths(inp, out, mid, np.random.default_rng(seed + 1))
        if time_avg_context(i2, o2) > target:
            hi = mid
        else:
            lo = mid
    return {"target_tokens": target, "independent_tokens": time_avg_context(inp, out), "rho": 0.5 * (lo + hi)}
