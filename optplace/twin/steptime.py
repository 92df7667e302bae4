"""Engine step-time and scheduler-overhead models (interpreted from a profile's coefficients).

One vLLM V1 engine step runs the model on every scheduled token: one decode token per running request
plus the prefill chunks admitted under the ``max_num_batched_tokens`` budget. Its duration is modelled as

    lin    = c0 + c_seq·N                                   (per-step and per-sequence work, N = sequences)
    lora   = 1 + max(0, g0 + g_slot·(S − slots_ref)) + g_lora·L·(1 + g_rank·(r/8 − 1))
             (L = distinct adapters in the batch, r = rank, S = the server's max_loras slots)
    step   = lin·lora + c_ctx·K/1000 + c_pf·P·(1 + h_pf·(lora − 1))   [ms]
             (K = KV tokens read by attention, not touched by LoRA; P = prefill tokens in the step)

form ``"lora_mult_v2"``. ``g0`` is the fixed cost of running with LoRA enabled at all (it doubles a
decode step on the reference H100 runs); ``g_lora`` the cost of each distinct adapter, multiplying
the decode work as in the published twin. Prefill work is compute bound and only partially inflated
by LoRA (``h_pf``). The rank ``r`` is the server's ``max_lora_rank`` and ``S`` its ``max_loras`` once the
model is bound to a configuration (:meth:`StepTimeModel.bind`); unbound, ``r`` is the mean rank passed per
step and ``S = slots_ref`` (the slot count of the LoRA microbenchmark ``g0`` was measured at). When the
caller does not know the KV tokens, ``K = N·ctx_default``.

Form ``"lora_add_v3"`` keeps the fixed LoRA cost multiplicative but makes each distinct adapter's cost
additive, independent of the batch size:

    lora   = 1 + max(0, g0 + g_slot·(S − slots_ref))
    step   = lin·lora + g_lora·L·(1 + g_rank·(r/8 − 1)) + c_ctx·K/1000 + c_pf·P·(1 + h_pf·(lora − 1))   [ms]

(``g_lora`` in ms per adapter at rank 8). The LoRA kernels read each active adapter's weights once per
step whatever the number of its tokens, so in v2 the adapter term grew with the batch in a way the real
runs do not show (too slow at ~600 running requests, too fast with many adapters at moderate batches;
docs/latency-fidelity.md).

The published twin's form ``"published_v1"`` (step = (a·B + b)·(c·L + d)/100 ms, prefill and rank
ignored) is supported for side-by-side comparisons.

Scheduler overhead (form ``"queue_linear_v1"``), added to every step in vLLM 0.8.5 because the
scheduler runs synchronously between model steps:

    overhead = max(0, s0 + s_run·running + s_wait·waiting·(1 − s_ratio·slots/served))   [ms]

Which reference CSV each coefficient comes from is recorded by ``optplace.calibration.reference_fit``.
Both models are on the engine's hot path: ``step_s`` does plain float arithmetic, no allocation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["OVERHEAD_FORMS", "STEP_FORMS", "SchedulerOverhead", "StepTimeModel"]

STEP_FORMS = ("lora_mult_v2", "lora_add_v3", "published_v1", "published")
OVERHEAD_FORMS = ("queue_linear_v1", "published", "none")

_STEP_DEFAULTS: dict[str, dict[str, float]] = {
    "lora_mult_v2": {
        "c0": 12.0,
        "c_seq": 0.03,
        "c_ctx": 0.0,
        "c_pf": 0.027,
        "g0": 1.0,
        "g_lora": 0.02,
        "g_rank": 0.0,
        "h_pf": 0.0,
        "ctx_default": 320.0,
        "g_slot": 0.0,
        "slots_ref": 300.0,
    },
    "published_v1": {"a": 0.0438, "b": 10.54, "c": 1.93, "d": 200.0},
}
_STEP_DEFAULTS["lora_add_v3"] = {**_STEP_DEFAULTS["lora_mult_v2"], "g_lora": 0.3}
_STEP_DEFAULTS["published"] = _STEP_DEFAULTS["published_v1"]


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


@dataclass(frozen=True, slots=True)
class StepTimeModel:
    """Duration of one engine step as a function of the batch composition (see module docstring)."""

    form: str = "lora_mult_v2"
    c0: float = 12.0
    c_seq: float = 0.03
    c_ctx: float = 0.0
    c_pf: float = 0.027
    g0: float = 1.0
    g_lora: float = 0.02
    g_rank: float = 0.0
    h_pf: float = 0.0
    ctx_default: float = 320.0
    g_slot: float = 0.0
    slots_ref: float = 300.0
    time_scale: float = 1.0
    bound_rank: float = 0.0
    bound_slots: float = 0.0
    #: each adapter's cost additive (form lora_add_v3); derived from ``form`` once, read on the hot path
    additive_adapters: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.form not in STEP_FORMS:
            raise ValueError(f"unknown step-time form {self.form!r}; known: {', '.join(STEP_FORMS)}")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")
        object.__setattr__(self, "additive_adapters", self.form == "lora_add_v3")

    @classmethod
    def from_params(cls, params: Any) -> StepTimeModel:
        """Build from a profile's ``step_time`` section (``StepTimeParams`` or a dict with form/coef)."""
        form = str(_get(params, "form", "lora_mult_v2"))
        if form not in STEP_FORMS:
            raise ValueError(f"unknown step-time form {form!r}; known: {', '.join(STEP_FORMS)}")
        coef = dict(_STEP_DEFAULTS[form])
        coef.update({k: float(v) for k, v in (_get(params, "coef", {}) or {}).items()})
        scale = float(_get(params, "time_scale", 1.0) or 1.0)
        if form in ("published_v1", "published"):
            # Map (a·B + b)(c·L + d)/100 onto the general form with no prefill or context cost.
            return cls(
                form=form,
                c0=coef["b"] * coef["d"] / 100.0,
                c_seq=coef["a"] * coef["d"] / 100.0,
                c_ctx=0.0,
                c_pf=0.0,
                g0=0.0,
                g_lora=coef["c"] / coef["d"],
                g_rank=0.0,
                h_pf=0.0,
                ctx_default=0.0,
                time_scale=scale,
            )
        unknown = set(coef) - set(_STEP_DEFAULTS[form])
        if unknown:
            raise ValueError(f"unknown step-time coefficients for {form}: {sorted(unknown)}")
        return cls(form=form, time_scale=scale, **coef)

    def bind(self, max_lora_rank: int, max_loras: int | None = None) -> StepTimeModel:
        """The same model for a server started with ``max_lora_rank`` (and ``max_loras`` slots).

        vLLM pads every adapter to ``max_lora_rank`` in its slot buffers, so the LoRA kernels' cost
        follows the configured maximum rank, not the ranks of the adapters in the batch; a bound model
        uses it in place of the ``mean_rank`` argument. The fixed LoRA cost grows with the number of
        slots the kernels are launched over. Engines should bind once per configuration.
        """
        slots = self.slots_ref if max_loras is None else float(max_loras)
        return replace(self, bound_rank=float(max_lora_rank), bound_slots=slots)

    def step_ms(
        self,
        num_seqs: int,
        prefill_tokens: int,
        decode_tokens: int,
        distinct_adapters: int,
        mean_rank: float,
        context_tokens: float | None = None,
    ) -> float:
        """Step duration [ms]. ``context_tokens``: KV tokens attended over the batch (None → estimate)."""
        k = num_seqs * self.ctx_default if context_tokens is None else context_tokens
        if self.bound_rank > 0.0:
            mean_rank = self.bound_rank
        lin = self.c0 + self.c_seq * num_seqs
        fixed = self.g0 + self.g_slot * ((self.bound_slots or self.slots_ref) - self.slots_ref)
        adapters = self.g_lora * distinct_adapters * (1.0 + self.g_rank * (mean_rank * 0.125 - 1.0))
        if self.additive_adapters:
            lora = 1.0 + (fixed if fixed > 0.0 else 0.0)  # noqa: FURB136 (hot path: no call)
            pf = self.c_pf * prefill_tokens * (1.0 + self.h_pf * (lora - 1.0))
            return (lin * lora + adapters + self.c_ctx * k * 0.001 + pf) * self.time_scale
        lora = 1.0 + (fixed if fixed > 0.0 else 0.0) + adapters  # noqa: FURB136
        pf = self.c_pf * prefill_tokens * (1.0 + self.h_pf * (lora - 1.0))
        return (lin * lora + self.c_ctx * k * 0.001 + pf) * self.time_scale

    def step_s(
        self,
        num_seqs: int,
        prefill_tokens: int,
        decode_tokens: int,
        distinct_adapters: int,
        mean_rank: float,
        context_tokens: float | None = None,
    ) -> float:
        """Step duration [s] (see :meth:`step_ms`)."""
        return 0.001 * self.step_ms(
            num_seqs, prefill_tokens, decode_tokens, distinct_adapters, mean_rank, context_tokens
        )

    def step_s_fn(self) -> Callable[[int, int, int, int, int, float], float]:
        """:meth:`step_s` as a function of ``(num_seqs, prefill_tokens, decode_tokens, distinct_adapters,
        rank_sum, context_tokens)``, bitwise equal to it. The engine calls it once or more per simulated step: for
        a bound model (the engine's) the constants are folded in once and one plain function does the
        arithmetic in the same order, which saves two method calls and a dozen attribute reads per step."""
        if self.bound_rank <= 0.0:
            step_s = self.step_s

            def unbound(
                num_seqs: int, prefill_tokens: int, decode: int, distinct: int, rank_sum: int, k: float
            ) -> float:
                return step_s(num_seqs, prefill_tokens, decode, distinct, rank_sum / distinct if distinct else 0.0, k)

            return unbound
        c0, c_seq, c_ctx, c_pf, h_pf, ts, g_lora = (
            self.c0,
            self.c_seq,
            self.c_ctx,
            self.c_pf,
            self.h_pf,
            self.time_scale,
            self.g_lora,
        )
        fixed = self.g0 + self.g_slot * ((self.bound_slots or self.slots_ref) - self.slots_ref)
        one_fixed = 1.0 + (fixed if fixed > 0.0 else 0.0)  # noqa: FURB136 (as in step_ms)
        rank_f = 1.0 + self.g_rank * (self.bound_rank * 0.125 - 1.0)
        if self.additive_adapters:
            pf_f = 1.0 + h_pf * (one_fixed - 1.0)

            def additive(
                num_seqs: int, prefill_tokens: int, decode: int, distinct: int, rank_sum: int, k: float
            ) -> float:
                return 0.001 * (
                    (
                        (c0 + c_seq * num_seqs) * one_fixed
                        + g_lora * distinct * rank_f
                        + c_ctx * k * 0.001
                        + c_pf * prefill_tokens * pf_f
                    )
                    * ts
                )

            return additive

        def multiplicative(
            num_seqs: int, prefill_tokens: int, decode: int, distinct: int, rank_sum: int, k: float
        ) -> float:
            lora = one_fixed + g_lora * distinct * rank_f
            return 0.001 * (
                (
                    (c0 + c_seq * num_seqs) * lora
                    + c_ctx * k * 0.001
                    + c_pf * prefill_tokens * (1.0 + h_pf * (lora - 1.0))
                )
                * ts
            )

        return multiplicative

    def coef(self) -> dict[str, float]:
        """The coefficients of the general form, as stored in a profile."""
        return {
            "c0": self.c0,
            "c_seq": self.c_seq,
            "c_ctx": self.c_ctx,
            "c_pf": self.c_pf,
            "g0": self.g0,
            "g_lora": self.g_lora,
            "g_rank": self.g_rank,
            "h_pf": self.h_pf,
            "ctx_default": self.ctx_default,
            "g_slot": self.g_slot,
            "slots_ref": self.slots_ref,
        }


@dataclass(frozen=True, slots=True)
class SchedulerOverhead:
    """Per-step scheduler CPU time, growing with the running and waiting queues (see module docstring)."""

    form: str = "queue_linear_v1"
    s0: float = 0.0
    s_run: float = 0.0
    s_wait: float = 0.0
    s_ratio: float = 0.0
    time_scale: float = 1.0
    # The published twin's min-max normalised form (only for side-by-side comparisons):
    # ms = 1000·max(0, c1·mm(B) + c2·mm(W) + c3·mm(W·G/C) − base_s), mm(x) = (x − min)/(max − min).
    published: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.form not in OVERHEAD_FORMS:
            raise ValueError(f"unknown overhead form {self.form!r}; known: {', '.join(OVERHEAD_FORMS)}")

    @classmethod
    def from_params(cls, params: Any) -> SchedulerOverhead:
        """Build from a profile's ``scheduler_overhead`` section (``OverheadParams`` or a dict)."""
        if params is None:
            return cls(form="none")
        form = str(_get(params, "form", "queue_linear_v1"))
        coef: dict[str, Any] = {k: float(v) for k, v in (_get(params, "coef", {}) or {}).items()}
        if form == "none":
            return cls(form="none")
        if form == "published":
            keys = (
                "c1_batch",
                "c2_waiting",
                "c3_waiting_x_slots_over_served",
                "base_s",
                "batch_min",
                "batch_max",
                "waiting_min",
                "waiting_max",
                "wr_min",
                "wr_max",
            )
            return cls(form=form, published=tuple(coef[k] for k in keys))
        unknown = set(coef) - {"s0", "s_run", "s_wait", "s_ratio"}
        if unknown:
            raise ValueError(f"unknown scheduler-overhead coefficients: {sorted(unknown)}")
        return cls(
            form=form,
            time_scale=float(_get(params, "time_scale", 1.0) or 1.0),
            s0=coef.get("s0", 0.0),
            s_run=coef.get("s_run", 0.0),
            s_wait=coef.get("s_wait", 0.0),
            s_ratio=coef.get("s_ratio", 0.0),
        )

    def overhead_ms(self, running: int, waiting: int, slots: int = 1, served: int = 1) -> float:
        """Scheduler time of one step [ms]."""
        if self.form == "none":
            return 0.0
        ratio = slots / served if served > 0 else 1.0
        if self.form == "published":
            c1, c2, c3, base, bmin, bmax, wmin, wmax, rmin, rmax = self.published
            v = (
                c1 * (running - bmin) / (bmax - bmin)
                + c2 * (waiting - wmin) / (wmax - wmin)
                + c3 * (waiting * ratio - rmin) / (rmax - rmin)
                - base
            )
            return 1000.0 * max(0.0, v) * self.time_scale
        v = self.s0 + self.s_run * running + self.s_wait * waiting * (1.0 - self.s_ratio * min(ratio, 1.0))
        return max(0.0, v) * self.time_scale

    def overhead_s(self, running: int, waiting: int, slots: int = 1, served: int = 1) -> float:
        """Scheduler time of one step [s]."""
        return 0.001 * self.overhead_ms(running, waiting, slots, served)

    def overhead_s_fn(self, slots: int, served: int) -> Callable[[int, int], float]:
        """:meth:`overhead_s` of an engine with ``slots`` and ``served`` adapters as a function of
        ``(running, waiting)``, bitwise equal to it (constants folded in once: it runs every step)."""
        if self.form == "none":
            return lambda running, waiting: 0.0
        if self.form != "queue_linear_v1":
            return lambda running, waiting: self.overhead_s(running, waiting, slots, served)
        ratio = slots / served if served > 0 else 1.0
        s0, s_run, s_wait, ts = self.s0, self.s_run, self.s_wait, self.time_scale
        w_f = 1.0 - self.s_ratio * min(ratio, 1.0)

        def linear(running: int, waiting: int) -> float:
            v = s0 + s_run * running + s_wait * waiting * w_f
            return 0.001 * ((v if v > 0.0 else 0.0) * ts)  # noqa: FURB136 (max(0.0, v), without the call)

        return linear

    def coef(self) -> dict[str, float]:
        """The coefficients as stored in a profile."""
        return {"s0": self.s0, "s_run": self.s_run, "s_wait": self.s_wait, "s_ratio": self.s_ratio}
