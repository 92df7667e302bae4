"""The engine's clock: step durations, fast-forward of identical steps, and the SimPy driver.

:func:`simulate_engine` is the entry point. A SimPy environment drives the arrival process (it
wakes an idle engine at the next arrival) and the engine process, which runs batches of steps
inside one SimPy timeout (one SimPy event per step would dominate the run time). A private runner
asks the :class:`~optplace.twin.engine.core.EngineCore` for each step's plan and the step-time and
scheduler-overhead models how long it lasts:

    step duration = step_time.step_s(...) + overhead.overhead_s(...) + adapter loads

(each through its ``*_fn()`` form, the same arithmetic with the engine's constants folded in)

Requests arriving in ``[0, duration_s)`` are served; at ``duration_s`` the run stops and every
unfinished request is cancelled (not counted). A step that would end after ``duration_s`` is not
committed. A KV cache smaller than one ``max_model_len`` sequence (or none) fails at start:
``EngineResult.oom`` and nothing is served.

Fast-forward: runs of decode-only steps in which nothing is admitted, completed or preempted are
jumped in closed form (the step time is affine in the context tokens, which is checked per batch
composition) until the next completion, the KV limit, or an arrival that could be admitted;
arrivals of adapters that cannot enter the full adapter set only change the scheduler overhead.

Metrics: ``itl_ms_mean`` is vLLM's ``benchmark_serving`` definition (the mean over all inter-token
gaps of completed requests, i.e. sum of (finish - first token) over sum of (output - 1)), which is
what the reference runs' ``mean_itl_ms`` reports; ``tpot_ms_mean`` is the per-request mean of
(finish - first token) / (output - 1). TTFT percentiles are over requests completed in the window.
``EngineResult.requests`` carries the completed requests' times and the step clock (end time of every
step, kept as the explicit steps' times plus the fast-forwarded runs' closed forms), from which
:func:`optplace.twin.engine.result.latency_stats` computes the percentiles of TTFT, TPOT and ITL.
"""

# The hot loops compare and assign instead of calling min()/max(): a builtin call costs more per step.
# ruff: noqa: PLR1730, FURB136, RUF046

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from optplace.twin.engine.config import EngineConfig, OverheadModel, StepTimeModelLike, WorkloadLike
from optplace.twin.engine.core import EngineCore
from optplace.twin.engine.result import CompletedRequests, EngineResult

__all__ = ["simulate_engine"]


class _Runner:
    """Advances an :class:`EngineCore` in time (step-time model, overhead, fast-forward)."""

    def __init__(self, core: EngineCore, duration_s: float, fast_forward: bool = True) -> None:
        self.core = core
        self.fast_forward = fast_forward
        cfg = core.cfg
        self.duration = float(duration_s)
        self.t = 0.0
        self.n_arrived = 0
        self.step_time = cfg.step_time
        self.overhead = cfg.overhead
        self.served = len(cfg.adapter_ranks)
        # the step-time and overhead models with this engine's constants folded in (bitwise equal to
        # their step_s / overhead_s; called every step)
        self.step_s = _step_fn(cfg.step_time)
        self.overhead_s = _overhead_fn(cfg.overhead, cfg.max_loras, self.served)
        self.max_running = 0
        self.max_waiting = 0
        self.run_area = 0.0
        self.wait_area = 0.0
        self.sched_s = 0.0
        self.load_s = 0.0
        self.max_distinct = 0
        self.max_used = 0
        self.max_tokens = 0
        self.explicit = 0
        self.slopes: dict[tuple[int, int, int], float | None] = {}
        self.done = False
        # The step clock, for the latency metrics: the end time of each step run one by one (in order),
        # and (first step, steps, start time, first duration, increment) of each fast-forwarded run;
        # the steps no run covers are the ones run one by one.
        self.ex_t = array("d")
        self.ff_runs = array("d")

    def next_arrival(self) -> float:
        c = self.core
        return c.arrival[self.n_arrived] if self.n_arrived < c.n else math.inf

    def idle(self) -> bool:
        c = self.core
        return not c.running and c.num_waiting(self.n_arrived) == 0

    def run_until(self, horizon: float) -> None:
        """Run steps while the engine has work, until simulated time reaches ``horizon``."""
        core = self.core
        arrival = core.arrival
        n = core.n
        duration = self.duration
        horizon = min(horizon, duration)
        t = self.t
        step_s = self.step_s
        overhead_s = self.overhead_s
        slots = core.cfg.max_loras
        schedule = core.schedule
        update = core.update_from_output
        check = core.check
        ff = self.fast_forward
        na = self.n_arrived
        slopes = self.slopes
        sched_s = self.sched_s
        load_tot = self.load_s
        run_area = self.run_area
        wait_area = self.wait_area
        max_running = self.max_running
        max_waiting = self.max_waiting
        max_distinct = self.max_distinct
        max_used = self.max_used
        max_tokens = self.max_tokens
        ex_t_append = self.ex_t.append
        ff_extend = self.ff_runs.extend
        while t < horizon:
            na = bisect_right(arrival, t, na)
            plan = schedule(na)
            num_seqs = plan.num_seqs
            if num_seqs == 0:
                break  # idle: nothing running, nothing admissible
            n_act = plan.distinct_adapters
            rank_sum = plan.rank_sum
            st = step_s(num_seqs, plan.prefill_tokens, plan.decode_tokens, n_act, rank_sum, plan.context_tokens)
            nr = plan.num_running
            nw = plan.num_waiting
            ov = overhead_s(nr, nw)
            dt = st + ov + plan.load_s
            t_end = t + dt
            if t_end > duration:
                self.done = True
                break
            completions = update(plan, t_end)
            ex_t_append(t_end)  # also counts the explicit steps (len)
            t = t_end
            # statistics
            sched_s += ov
            load_tot += plan.load_s
            run_area += nr * dt
            wait_area += nw * dt
            if nr > max_running:
                max_running = nr
            if nw > max_waiting:
                max_waiting = nw
            if n_act > max_distinct:
                max_distinct = n_act
            if core.used > max_used:
                max_used = core.used
            if plan.decode_tokens + plan.prefill_tokens > max_tokens:
                max_tokens = plan.decode_tokens + plan.prefill_tokens
            if check:
                core.check_state()
            # Fast-forward decode-only steps until the next completion, KV limit, window end, or a
            # request that could be admitted. Arrivals that cannot be admitted (the adapter set is
            # full and their adapter is not in it) only lengthen the waiting queue, i.e. change the
            # scheduler overhead; completions that leave nothing admissible only change the batch
            # composition: in both cases the run continues with the new step time.
            if not ff or plan.preempted or core.tail >= 0:
                continue
            # after admissions, prefills, loads or completions the next step has a new composition
            changed = bool(completions or plan.admitted or plan.prefill_done or plan.tail_chunk or plan.loads)
            if not changed:
                kc = core.next_completion_step() - core.step + 1  # steps up to the completing one
                if kc <= 0:
                    continue
                st0 = dt - ov - plan.load_s
                # The step time is affine in the context tokens, which grow by one per decoder per
                # step: its slope depends on the batch composition only (cached; None = not affine).
                key = (num_seqs, n_act, rank_sum)
                delta = slopes.get(key, -1.0)
                if delta is not None and delta < 0.0:
                    st1 = step_s(num_seqs, 0, num_seqs, n_act, rank_sum, plan.context_tokens + num_seqs)
                    st2 = step_s(num_seqs, 0, num_seqs, n_act, rank_sum, plan.context_tokens + 2 * num_seqs)
                    delta = st1 - st0
                    if abs((st2 - st1) - delta) > 1e-9 * st0 or delta < 0.0:
                        delta = None
                    slopes[key] = delta
                if delta is None:
                    continue  # not affine (or decreasing) in the context: go step by step
            j0 = 0
            skip_advance = changed
            while True:
                if not skip_advance:
                    assert delta is not None  # set (affine) whenever the run is advanced
                    d = st0 + ov + delta * (j0 + 1)
                    t_arr = arrival[na] if na < n else math.inf
                    lim = t_arr if t_arr < horizon else horizon
                    k_arr = _steps_before(lim - t, d, delta)
                    k = min(kc, k_arr, _steps_within(duration - t, d, delta))
                    if k <= 0:
                        break
                    free = core.total_blocks - core.used
                    need = core.blocks_needed(k)
                    kv_limited = need > free
                    if kv_limited:
                        lo, hi = 0, k
                        while lo < hi:
                            mid = (lo + hi + 1) // 2
                            if core.blocks_needed(mid) <= free:
                                lo = mid
                            else:
                                hi = mid - 1
                        k = lo
                        if k <= 0:
                            break
                        need = core.blocks_needed(k)
                    span = _cum(k, d, delta)
                    ff_extend((core.step, k, t, d, delta))
                    core.used += need
                    core.step += k
                    sched_s += ov * k
                    run_area += nr * span
                    wait_area += nw * span
                    if core.used > max_used:
                        max_used = core.used
                    t += span
                    j0 += k
                    kc -= k
                    changed = kc == 0
                    if changed:
                        # the last skipped step is the one in which decodes finish
                        core.finish_decodes(core.step - 1, t)
                    elif kv_limited or k < k_arr:
                        break  # KV limit or window end: the next step is done one by one
                skip_advance = False
                if t >= horizon:
                    break
                # The next step differs only by new arrivals and/or its composition: carry on if it
                # cannot admit anything.
                na2 = bisect_right(arrival, t, na)
                if changed:
                    if core.n_dec == 0 or core.preempted_q or core.tail >= 0:
                        break
                    if core.n_active < slots:
                        if core.first_fresh() < na2:
                            break
                    else:
                        h = core._active_head()
                        if 0 <= h < na2:
                            break
                else:
                    if core.n_active < slots:
                        break
                    adapter = core.adapter
                    run_count = core.run_count
                    if any(run_count[adapter[r]] for r in range(na, na2)):
                        break
                na = na2
                nw = core.num_waiting(na)
                if nw > max_waiting:
                    max_waiting = nw
                if changed:
                    # new batch composition (decoders only; nothing admissible)
                    num_seqs = core.n_dec
                    n_act = core.n_active
                    rs = core.rank_sum
                    ctx = core.sum_base + num_seqs * core.step
                    st0 = step_s(num_seqs, 0, num_seqs, n_act, rs, ctx)
                    key = (num_seqs, n_act, rs)
                    delta = slopes.get(key, -1.0)
                    if delta is not None and delta < 0.0:
                        st1 = step_s(num_seqs, 0, num_seqs, n_act, rs, ctx + num_seqs)
                        st2 = step_s(num_seqs, 0, num_seqs, n_act, rs, ctx + 2 * num_seqs)
                        delta = st1 - st0
                        if abs((st2 - st1) - delta) > 1e-9 * st0 or delta < 0.0:
                            delta = None
                        slopes[key] = delta
                    if delta is None:
                        break
                    nr = len(core.running)
                    if nr > max_running:
                        max_running = nr
                    if n_act > max_distinct:
                        max_distinct = n_act
                    if num_seqs > max_tokens:
                        max_tokens = num_seqs
                    j0 = -1  # the next step is the new reference step itself
                    kc = core.next_completion_step() - core.step + 1
                ov = overhead_s(nr, nw)
        self.n_arrived = na
        self.explicit = len(self.ex_t)
        self.sched_s = sched_s
        self.load_s = load_tot
        self.run_area = run_area
        self.wait_area = wait_area
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_distinct = max_distinct
        self.max_used = max_used
        self.max_tokens = max_tokens
        self.t = max(t, self.t)
        if self.done:
            self.t = duration


def _step_fn(model: StepTimeModelLike) -> Callable[[int, int, int, int, int, float], float]:
    """``model.step_s`` as a function of (num_seqs, prefill, decode, distinct adapters, rank sum, context
    tokens): its folded form where it has one (``StepTimeModel.step_s_fn``), else a wrapper."""
    fast = getattr(model, "step_s_fn", None)
    if fast is not None:
        return cast(Callable[[int, int, int, int, int, float], float], fast())
    step_s = model.step_s
    return lambda ns, pf, dec, d, rs, k: step_s(ns, pf, dec, d, rs / d if d else 0.0, k)


def _overhead_fn(model: OverheadModel | None, slots: int, served: int) -> Callable[[int, int], float]:
    """``model.overhead_s`` of this engine as a function of (running, waiting): its folded form where it
    has one (``SchedulerOverhead.overhead_s_fn``), else a wrapper; zero without a model."""
    if model is None:
        return lambda running, waiting: 0.0
    fast = getattr(model, "overhead_s_fn", None)
    if fast is not None:
        return cast(Callable[[int, int], float], fast(slots, served))
    overhead_s = model.overhead_s
    return lambda running, waiting: overhead_s(running, waiting, slots, served)


def _cum(k: int, d: float, delta: float) -> float:
    """Total duration of k steps lasting d, d + delta, d + 2·delta, ..."""
    return k * d + delta * k * (k - 1) / 2


def _steps_before(gap: float, d: float, delta: float) -> int:
    """Number of steps j >= 0 whose start (after the first j steps) is strictly before ``gap``."""
    if gap == math.inf:
        return 1 << 62
    if gap <= 0:
        return 0
    h = 0.5 * delta
    if delta <= 0:
        k = math.ceil(gap / d)
    else:
        # smallest k with cum(k) >= gap  ->  start of step k is at/after gap
        b = d - h
        k = math.ceil((-b + math.sqrt(b * b + 4 * h * gap)) / (2 * h))
    # cum(k) = k*d + h*k*(k-1), inlined (hot path)
    while k > 0 and (k - 1) * d + h * (k - 1) * (k - 2) >= gap:
        k -= 1
    while k * d + h * k * (k - 1) < gap:
        k += 1
    return k


def _steps_within(gap: float, d: float, delta: float) -> int:
    """Largest k with cum(k) <= gap (steps that end inside the window)."""
    if gap <= 0:
        return 0
    h = 0.5 * delta
    if delta <= 0:
        k = int(gap // d)
    else:
        b = d - h
        k = int((-b + math.sqrt(b * b + 4 * h * gap)) / (2 * h))
    while k > 0 and k * d + h * k * (k - 1) > gap:
        k -= 1
    while (k + 1) * d + h * (k + 1) * k <= gap:
        k += 1
    return k


def simulate_engine(
    cfg: EngineConfig,
    workload: WorkloadLike,
    *,
    duration_s: float | None = None,
    check: bool = False,
    fast_forward: bool = True,
    quantum_s: float = 5.0,
) -> EngineResult:
    """Simulate one engine serving ``workload`` for ``duration_s`` (default: the workload's window).

    SimPy drives the run: an arrival process wakes the idle engine at the next arrival, and the
    engine process advances through batches of steps (at most ``quantum_s`` simulated seconds per
    SimPy timeout). ``fast_forward=False`` runs every step one by one (same result up to float
    rounding of the clock; for tests). ``check=True`` recomputes the KV and adapter accounting after every step (slow;
    for tests). Deterministic: the same config and workload give the same result.
    """
    import simpy

    duration = float(duration_s if duration_s is not None else workload.duration_s)
    core = EngineCore(cfg, workload, check=check)
    if not cfg.starts:
        return _result(core, None, duration, oom=True)
    runner = _Runner(core, duration, fast_forward)
    env = simpy.Environment()
    link: dict[str, Any] = {}

    def arrivals(env: simpy.Environment):
        # Only idle->busy transitions need an event: a busy engine reads the arrivals up to its own
        # clock at every step (one SimPy event per request would dominate the run time).
        while True:
            link["idle"] = env.event()
            yield link["idle"]
            ta = runner.next_arrival()
            if ta >= duration:
                return
            if ta > env.now:
                yield env.timeout(ta - env.now)
            link["wake"].succeed()

    def engine(env: simpy.Environment):
        while env.now < duration and not runner.done:
            if runner.idle():
                if runner.next_arrival() >= duration:
                    break
                link["wake"] = env.event()
                link["idle"].succeed()
                yield link["wake"]
                runner.t = env.now
            runner.run_until(env.now + quantum_s)
            if runner.t > env.now:
                yield env.timeout(runner.t - env.now)

    arr_gen = arrivals(env)
    env.process(arr_gen)
    proc = env.process(engine(env))
    env.run(until=proc)
    # The suspended arrival process, the environment and the closures form a reference cycle that
    # holds the whole engine state; close it so the memory goes back at once, not at the next GC.
    arr_gen.close()
    link.clear()
    return _result(core, runner, duration, oom=False)


def _percentile(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else 0.0


def _completed_requests(
    core: EngineCore, runner: _Runner, ids: np.ndarray, first: np.ndarray, fin: np.ndarray
) -> CompletedRequests:
    """The completed requests' arrays and the raw step clock (:class:`CompletedRequests`)."""
    return CompletedRequests(
        adapter=core.np_adapter[ids],
        arrival_s=core.np_arrival[ids],
        first_token_s=first,
        finish_s=fin,
        input_tokens=core.np_inp[ids],
        output_tokens=core.np_out[ids],
        n_steps=core.step,
        explicit_end_s=np.frombuffer(runner.ex_t, dtype=np.float64),
        ff_runs=np.frombuffer(runner.ff_runs, dtype=np.float64).reshape(-1, 5),
    )


def _result(core: EngineCore, runner: _Runner | None, duration: float, *, oom: bool) -> EngineResult:
    """The run's :class:`EngineResult` from the core's accounting and the runner's statistics."""
    cfg = core.cfg
    n_ad = len(cfg.adapter_ranks)
    arr = core.np_arrival
    ad = core.np_adapter
    inp = core.np_inp
    out = core.np_out
    inwin = arr < duration
    arrived = np.bincount(ad[inwin], minlength=n_ad)
    offered = np.bincount(ad[inwin], weights=(inp + out)[inwin], minlength=n_ad)
    if oom or runner is None:
        z = tuple(0 for _ in range(n_ad))
        return EngineResult(
            oom=oom,
            duration_s=duration,
            simulated_s=0.0,
            steps=0,
            explicit_steps=0,
            arrived=tuple(int(x) for x in arrived),
            offered_tokens=tuple(int(x) for x in offered),
            completed=z,
            completed_tokens=z,
            engine_tokens=z,
            rejected=z,
            finished=0,
            running_end=0,
            waiting_end=int(arrived.sum()),
            itl_ms_mean=0.0,
            tpot_ms_mean=0.0,
            ttft_ms_mean=0.0,
            ttft_ms_p50=0.0,
            ttft_ms_p99=0.0,
            preemptions=0,
            adapter_loads=0,
            disk_loads=0,
            load_time_s=0.0,
            scheduler_time_s=0.0,
            max_running=0,
            max_waiting=0,
            mean_running=0.0,
            mean_waiting=0.0,
            max_distinct_adapters=0,
            max_kv_blocks_used=0,
            kv_blocks_total=cfg.num_blocks,
            max_scheduled_tokens=0,
            config=cfg,
        )
    ids = np.asarray(core.completed_ids, dtype=np.int64)
    fin = np.asarray(core.finish_t, dtype=np.float64)
    first = np.frombuffer(core.first_tok, dtype=np.float64)[ids] if ids.size else np.zeros(0)
    completed = np.bincount(ad[ids], minlength=n_ad) if ids.size else np.zeros(n_ad, np.int64)
    ctoks = np.bincount(ad[ids], weights=(inp + out)[ids], minlength=n_ad) if ids.size else np.zeros(n_ad)
    o = out[ids] if ids.size else np.zeros(0, np.int64)
    gaps = fin - first
    multi = o > 1
    itl = float(gaps[multi].sum() / (o[multi] - 1).sum() * 1e3) if multi.any() else 0.0
    tpot = float(np.mean(gaps[multi] / (o[multi] - 1)) * 1e3) if multi.any() else 0.0
    ttft = (first - arr[ids]) * 1e3 if ids.size else np.zeros(0)
    # decode work of requests still running at the end
    eng = list(core.eng_tokens)
    s_end = core.step
    for r in core.running:
        # only requests decoding (fin_step set): one admitted by the step cut at the window end has
        # no s0 yet, and counting s_end - 0 for it would overstate engine_tok_s
        if r != core.tail and core.fin_step[r] >= 0:
            eng[core.adapter[r]] += s_end - core.s0[r]
    waiting_end = core.num_waiting(int(np.searchsorted(arr, duration, side="left")))
    running_end = len(core.running)
    span = max(runner.t, 1e-12)
    return EngineResult(
        oom=False,
        duration_s=duration,
        simulated_s=runner.t,
        steps=core.step,
        explicit_steps=runner.explicit,
        arrived=tuple(int(x) for x in arrived),
        offered_tokens=tuple(int(round(x)) for x in offered),
        completed=tuple(int(x) for x in completed),
        completed_tokens=tuple(int(round(x)) for x in ctoks),
        engine_tokens=tuple(int(x) for x in eng),
        finished=int(ids.size),
        running_end=running_end,
        waiting_end=waiting_end,
        rejected=tuple(core.rejected),
        itl_ms_mean=itl,
        tpot_ms_mean=tpot,
        ttft_ms_mean=float(ttft.mean()) if ttft.size else 0.0,
        ttft_ms_p50=_percentile(ttft, 50),
        ttft_ms_p99=_percentile(ttft, 99),
        preemptions=core.preemptions,
        adapter_loads=core.loads,
        disk_loads=core.disk_loads,
        load_time_s=runner.load_s,
        scheduler_time_s=runner.sched_s,
        max_running=runner.max_running,
        max_waiting=runner.max_waiting,
        mean_running=runner.run_area / span,
        mean_waiting=runner.wait_area / span,
        max_distinct_adapters=runner.max_distinct,
        max_kv_blocks_used=runner.max_used,
        kv_blocks_total=cfg.num_blocks,
        max_scheduled_tokens=runner.max_tokens,
        config=cfg,
        requests=_completed_requests(core, runner, ids, first, fin),
    )
