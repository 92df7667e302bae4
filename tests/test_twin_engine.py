"""Tests of the twin's engine model (optplace.twin.engine).

The fast engine is checked against ``_RefScheduler``, a literal per-request transcription of vLLM
0.8.5's ``Scheduler.schedule()`` / ``update_from_output()`` loops (lists, no aggregates, no
fast-forward), step by step, on small random workloads; then the invariants and the behaviours the
brief names (conservation, max_loras, KV capacity, preemption, slot stickiness, OOM, determinism)
are checked on full simulations.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pytest

from optplace.twin.engine import EngineConfig, EngineCore, simulate_engine


# --------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class _WL:
    arrival_s: np.ndarray
    adapter: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    duration_s: float


def _workload(rates, duration, seed, mean_in=223, mean_out=196, max_in=1024, max_total=2048) -> _WL:
    rng = np.random.default_rng(seed)
    ts, ads = [], []
    for a, r in enumerate(rates):
        n = rng.poisson(r * duration)
        ts.append(np.sort(rng.uniform(0, duration, n)))
        ads.append(np.full(n, a))
    t = np.concatenate(ts)
    ad = np.concatenate(ads)
    order = np.argsort(t, kind="stable")
    n = t.size
    inp = np.clip(rng.lognormal(np.log(mean_in) - 0.5, 1.0, n), 4, max_in).astype(np.int64)
    out = np.clip(rng.lognormal(np.log(mean_out) - 0.5, 1.0, n), 4, max_total - inp).astype(np.int64)
    return _WL(t[order], ad[order].astype(np.int32), inp, out, float(duration))


class _PublishedStep:
    """Stand-in step time: the published twin's form (a·B + b)(c·L + d)/100 ms, Llama constants
    from the reference measurements' twin_estimator_constants.json."""

    def step_s(self, num_seqs, prefill_tokens, decode_tokens, distinct_adapters, mean_rank, context_tokens=None):
        return (0.0438 * num_seqs + 10.54) * (1.93 * distinct_adapters + 200.0) / 100.0 * 1e-3


class _ContextStep(_PublishedStep):
    """Stand-in whose step time also grows with the KV tokens attended (affine, like steptime's c_ctx)."""

    def step_s(self, num_seqs, prefill_tokens, decode_tokens, distinct_adapters, mean_rank, context_tokens=None):
        base = super().step_s(num_seqs, prefill_tokens, decode_tokens, distinct_adapters, mean_rank)
        return base + 2e-5 * prefill_tokens * 1e-3 + 6e-5 * (context_tokens or 0) * 1e-3


class _Overhead:
    def overhead_s(self, running, waiting, slots=1, served=1):
        return 1e-3 * (0.2 + 0.004 * running + 0.0002 * waiting)


def _cfg(
    n_adapters,
    max_loras,
    kv_tokens,
    *,
    ranks=None,
    max_model_len=2048,
    max_num_seqs=256,
    mbt=2048,
    overhead=True,
    cpu=None,
) -> EngineConfig:
    ranks = tuple(ranks or [(8, 16)[i % 2] for i in range(n_adapters)])
    return EngineConfig(
        kv_cache_tokens=kv_tokens,
        max_loras=max_loras,
        max_cpu_loras=cpu if cpu is not None else max(n_adapters, max_loras),
        adapter_ranks=ranks,
        max_lora_rank=max(ranks),
        step_time=_PublishedStep(),
        overhead=_Overhead() if overhead else None,
        adapter_load_ms=tuple(6.4 for _ in ranks),
        adapter_disk_ms=tuple(80.0 for _ in ranks),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=mbt,
        max_model_len=max_model_len,
    )


def _cdiv(a, b):
    return -(-a // b)


class _Req:
    __slots__ = ("adapter", "blocks", "computed", "generated", "max_out", "prompt", "rid")

    def __init__(self, rid, adapter, prompt, max_out):
        self.rid, self.adapter, self.prompt, self.max_out = rid, adapter, prompt, max_out
        self.generated = 0
        self.computed = 0
        self.blocks = 0

    @property
    def num_tokens(self):
        return self.prompt + self.generated


class _RefScheduler:
    """Literal transcription of vLLM 0.8.5 V1 scheduling (no prefix caching, no pre-allocation)."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.B = cfg.block_size
        self.free = cfg.num_blocks
        self.waiting: deque[_Req] = deque()
        self.running: list[_Req] = []
        self.finished: list[int] = []

    def add(self, req: _Req):
        self.waiting.append(req)

    def _alloc(self, r: _Req, n: int) -> bool:
        need = _cdiv(r.computed + n, self.B) - r.blocks
        if need > self.free:
            return False
        self.free -= need
        r.blocks += need
        return True

    def _release(self, r: _Req):
        self.free += r.blocks
        r.blocks = 0

    def schedule(self):
        cfg = self.cfg
        budget = cfg.max_num_batched_tokens
        scheduled: dict[int, tuple[_Req, int]] = {}
        preempted: list[int] = []
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            n = min(r.num_tokens - r.computed, budget)
            can = True
            while not self._alloc(r, n):
                victim = self.running.pop()
                self._release(victim)
                victim.computed = 0
                self.waiting.appendleft(victim)
                preempted.append(victim.rid)
                if victim is r:
                    can = False
                    break
            if not can:
                break
            scheduled[r.rid] = (r, n)
            budget -= n
            i += 1
        loras = {r.adapter for r, _ in scheduled.values()}
        skipped: deque[_Req] = deque()
        admitted: list[int] = []
        if not preempted:
            while self.waiting and budget > 0:
                if len(self.running) == cfg.max_num_seqs:
                    break
                r = self.waiting[0]
                if len(loras) == cfg.max_loras and r.adapter not in loras:
                    self.waiting.popleft()
                    skipped.appendleft(r)
                    continue
                n = min(r.num_tokens, budget)
                if not self._alloc(r, n):
                    break
                self.waiting.popleft()
                self.running.append(r)
                loras.add(r.adapter)
                scheduled[r.rid] = (r, n)
                admitted.append(r.rid)
                budget -= n
        self.waiting.extendleft(skipped)
        for r, n in scheduled.values():
            r.computed += n
        return scheduled, admitted, preempted, loras

    def update(self, scheduled):
        done = []
        keep = []
        for r in self.running:
            if r.rid in scheduled and r.computed == r.num_tokens:
                r.generated += 1
                if r.generated >= r.max_out:
                    self._release(r)
                    done.append(r.rid)
                    continue
            keep.append(r)
        self.running = keep
        self.finished.extend(done)
        return done


def _lockstep(cfg: EngineConfig, wl: _WL, step_of_arrival: np.ndarray, n_steps: int):
    # the client-side cap (``max_outstanding``) is modelled here as the client would do it: an
    # arrival is dropped when running + waiting requests already reach the cap
    """Drive the fast core and the reference with the same arrivals (in step units); compare."""
    core = EngineCore(cfg, wl, check=True)
    ref = _RefScheduler(cfg)
    n = len(step_of_arrival)
    na = 0
    stats = {"preempted": 0, "admitted": 0, "finished": 0, "rejected": 0, "max_loras_hit": 0}
    for s in range(n_steps):
        while na < n and step_of_arrival[na] <= s:
            if cfg.max_outstanding is None or len(ref.running) + len(ref.waiting) < cfg.max_outstanding:
                ref.add(_Req(na, int(wl.adapter[na]), int(wl.input_tokens[na]), int(wl.output_tokens[na])))
            else:
                stats["rejected"] += 1
            na += 1
        plan = core.schedule(na)
        scheduled, admitted, preempted, loras = ref.schedule()
        assert list(plan.admitted) == admitted, f"step {s}: admitted {plan.admitted} != ref {admitted}"
        # the plan lists preempted requests in queue order (oldest first); vLLM pops newest first
        assert list(plan.preempted) == preempted[::-1], f"step {s}: preempted {plan.preempted} != ref {preempted}"
        assert plan.num_seqs == len(scheduled), f"step {s}: {plan.num_seqs} scheduled != ref {len(scheduled)}"
        assert plan.scheduled_tokens == sum(x for _, x in scheduled.values())
        assert plan.distinct_adapters == len(loras) <= cfg.max_loras
        assert plan.step == s
        assert (plan.num_running, plan.num_waiting) == (len(ref.running), len(ref.waiting)), f"step {s}: queues"
        assert core.used == cfg.num_blocks - ref.free, f"step {s}: KV {core.used} != ref {cfg.num_blocks - ref.free}"
        assert [r.rid for r in ref.waiting][: len(core.preempted_q)] == core.preempted_q
        done = ref.update(scheduled)
        core.update_from_output(plan, float(s + 1))
        assert sorted(core.completed_ids[-len(done) :] if done else []) == sorted(done), f"step {s}: finished"
        assert list(core.running) == [r.rid for r in ref.running], f"step {s}: running order differs"
        core.check_state()
        assert sum(core.rejected) == stats["rejected"]
        stats["preempted"] += len(preempted)
        stats["admitted"] += len(admitted)
        stats["finished"] += len(done)
        stats["max_loras_hit"] += int(len(loras) == cfg.max_loras)
    return stats


# --------------------------------------------------------------------------- oracle equivalence
@pytest.mark.parametrize(
    ("n_adapters", "max_loras", "kv_tokens", "rate", "seed", "max_seqs", "mbt"),
    [
        (6, 2, 40_000, 3.0, 1, 256, 2048),  # skip rule in saturation
        (8, 3, 2_400, 2.0, 2, 256, 2048),  # tiny KV: preemption storms
        (12, 4, 6_000, 4.0, 3, 256, 2048),  # both
        (3, 3, 100_000, 0.5, 4, 256, 2048),  # light load
        (5, 2, 8_000, 2.0, 5, 8, 64),  # small budget: long chunked prefills; max_num_seqs binds
        (7, 7, 3_000, 3.0, 6, 16, 128),  # every limit at once
        (6, 2, 20_000, 4.0, 7, 64, 512),  # with a client-side cap (max_outstanding = 40)
    ],
)
def test_core_matches_literal_vllm_scheduler(n_adapters, max_loras, kv_tokens, rate, seed, max_seqs, mbt):
    from dataclasses import replace

    wl = _workload([rate] * n_adapters, 20.0, seed, max_total=1024, max_in=512)
    cfg = _cfg(n_adapters, max_loras, kv_tokens, max_model_len=1024, max_num_seqs=max_seqs, mbt=mbt)
    if seed == 7:
        cfg = replace(cfg, max_outstanding=40)
    step_of_arrival = np.floor(wl.arrival_s / 0.05).astype(int)  # 20 steps per simulated second
    stats = _lockstep(cfg, wl, step_of_arrival, 800)
    assert stats["admitted"] > 0 and stats["finished"] > 0
    if cfg.max_outstanding is not None:
        assert stats["rejected"] > 0
    if kv_tokens <= 6_000:
        assert stats["preempted"] > 0, "the tiny-KV case must exercise preemption"
    if max_loras < n_adapters:
        assert stats["max_loras_hit"] > 0


def test_core_matches_literal_scheduler_with_bulk_rejections():
    # ~120 arrivals per step against a cap of 60 outstanding: rejections in bulk and long runs of
    # rejected requests in every adapter queue (the NumPy paths of the cap)
    from dataclasses import replace

    wl = _workload([20.0] * 6, 20.0, 9, max_total=1024, max_in=512)
    cfg = replace(_cfg(6, 2, 30_000, max_model_len=1024, max_num_seqs=64, mbt=512), max_outstanding=60)
    step_of_arrival = np.floor(wl.arrival_s).astype(int)  # one step per simulated second
    stats = _lockstep(cfg, wl, step_of_arrival, 400)
    assert stats["rejected"] > 1000 and stats["finished"] > 0


# --------------------------------------------------------------------------- schedule() unit tests
def _tiny(arrivals, adapters, inputs, outputs):
    return _WL(
        np.asarray(arrivals, float),
        np.asarray(adapters, np.int32),
        np.asarray(inputs, np.int64),
        np.asarray(outputs, np.int64),
        100.0,
    )


def test_budget_shared_and_long_prompt_chunked():
    # request 0: 3000-token prompt > budget 2048 -> chunked over two steps; request 1 waits behind it
    wl = _tiny([0, 0], [0, 0], [3000, 10], [3, 2])
    cfg = _cfg(1, 1, 100_000, max_model_len=4096, mbt=2048)
    core = EngineCore(cfg, wl, check=True)
    p0 = core.schedule(2)
    assert p0.admitted == [0] and p0.prefill_tokens == 2048 and p0.prefill_done == []
    core.update_from_output(p0, 1.0)
    p1 = core.schedule(2)
    # the running chunked prefill continues with 952 tokens, then request 1 is admitted with its 10
    assert p1.tail_chunk == 952 and p1.admitted == [1] and p1.prefill_tokens == 962
    assert p1.num_seqs == 2 and p1.decode_tokens == 0
    core.update_from_output(p1, 2.0)
    p2 = core.schedule(2)
    assert p2.decode_tokens == 2 and p2.prefill_tokens == 0  # both decoding now
    core.update_from_output(p2, 3.0)
    # request 1 had output 2: first token at step 1, second at step 2 -> finished
    assert core.completed_ids == [1]
    p3 = core.schedule(2)
    core.update_from_output(p3, 4.0)
    assert core.completed_ids == [1, 0]


def test_skip_rule_keeps_place_and_admits_adapters_in_set():
    # max_loras=1: adapter 0 runs; request 1 (adapter 1) is skipped, request 2 (adapter 0) admitted
    wl = _tiny([0, 0, 0], [0, 1, 0], [10, 10, 10], [50, 5, 50])
    core = EngineCore(_cfg(2, 1, 100_000), wl, check=True)
    p = core.schedule(3)
    assert p.admitted == [0, 2] and p.distinct_adapters == 1
    assert p.num_waiting == 1
    core.update_from_output(p, 1.0)
    # request 1 keeps waiting while adapter 0 holds the only slot
    for s in range(48):
        p = core.schedule(3)
        assert list(p.admitted) == [] and p.num_waiting == 1
        core.update_from_output(p, 2.0 + s)
    p = core.schedule(3)
    core.update_from_output(p, 60.0)  # both adapter-0 requests finish (50 tokens)
    assert sorted(core.completed_ids) == [0, 2]
    p = core.schedule(3)
    assert p.admitted == [1]  # the slot is free now


def test_preempted_request_goes_to_head_and_recomputes():
    # 4 blocks of 16 tokens; two requests of 20-token prompts need 2 blocks each, then grow
    wl = _tiny([0, 0, 0.5], [0, 0, 0], [20, 20, 5], [40, 40, 5])
    cfg = _cfg(1, 1, 64, max_model_len=64)
    core = EngineCore(cfg, wl, check=True)
    preempted_at = None
    for s in range(200):
        p = core.schedule(3 if s >= 1 else 2)
        if p.preempted and preempted_at is None:
            preempted_at = s
            assert p.preempted == [1]  # the newest running request
            assert list(p.admitted) == []  # no admission in a step with preemption
            assert core.preempted_q[0] == 1  # back at the head of the waiting queue
        core.update_from_output(p, float(s + 1))
        core.check_state()
        if len(core.completed_ids) == 3:
            break
    assert preempted_at is not None
    assert sorted(core.completed_ids) == [0, 1, 2]
    assert core.preemptions >= 1 and core.used == 0


def test_admission_stops_at_first_request_that_does_not_fit():
    # 10 blocks: request 0 (100 tokens = 7 blocks) fits, request 1 (100) does not, request 2 (10) would
    wl = _tiny([0, 0, 0], [0, 0, 0], [100, 100, 10], [5, 5, 5])
    core = EngineCore(_cfg(1, 1, 160, max_model_len=160), wl, check=True)
    p = core.schedule(3)
    assert p.admitted == [0] and p.blocked and p.num_waiting == 2


def test_lora_loads_counted_when_entering_batch():
    # one slot, two adapters alternating: every switch is a load, first use of each is a disk load
    wl = _tiny([0, 1, 2, 3], [0, 1, 0, 1], [10, 10, 10, 10], [5, 5, 5, 5])
    cfg = _cfg(2, 1, 100_000, cpu=2)
    res = simulate_engine(cfg, wl, duration_s=10.0, check=True)
    assert res.finished == 4
    assert res.adapter_loads == 4 and res.disk_loads == 2
    assert res.load_time_s == pytest.approx(4 * 6.4e-3 + 2 * 80e-3)


# --------------------------------------------------------------------------- whole simulations
@pytest.mark.parametrize("context_cost", [False, True])
def test_conservation_invariants_and_fast_forward_equivalence(context_cost):
    wl = _workload([0.8, 0.4, 0.2, 0.1] * 3, 120.0, 7)
    cfg = _cfg(12, 4, 20_000, max_model_len=2048)
    if context_cost:
        from dataclasses import replace

        cfg = replace(cfg, step_time=_ContextStep())
    a = simulate_engine(cfg, wl, check=True)
    b = simulate_engine(cfg, wl, check=True, fast_forward=False)
    assert sum(a.arrived) == a.finished + a.running_end + a.waiting_end
    assert a.max_distinct_adapters <= cfg.max_loras
    assert a.max_kv_blocks_used <= a.kv_blocks_total
    assert a.max_scheduled_tokens <= cfg.max_num_batched_tokens
    assert a.finished > 0 and a.steps == b.steps
    assert b.explicit_steps == b.steps and a.explicit_steps < a.steps / 3  # fast-forward did engage
    assert a.completed == b.completed and a.preemptions == b.preemptions
    assert a.engine_tokens == b.engine_tokens
    assert a.itl_ms_mean == pytest.approx(b.itl_ms_mean, rel=1e-9)
    assert sum(a.completed_tokens) <= sum(a.offered_tokens)


def test_light_load_is_fast_forwarded_and_served_fully():
    wl = _workload([0.1, 0.05, 0.025] * 3, 600.0, 3)
    cfg = _cfg(9, 9, 300_000, max_model_len=131072 // 2)
    res = simulate_engine(cfg, wl, check=True)
    assert res.throughput_loss < 0.05
    assert res.preemptions == 0 and res.max_waiting <= 3
    # ITL of a nearly empty engine is one step of the published model: ~21 ms
    assert 20.0 < res.itl_ms_mean < 25.0


def test_tiny_kv_preempts_and_recovers():
    # a burst that does not fit in 300 blocks, then nothing: preemptions happen, and everyone finishes
    wl = _workload([3.0] * 4, 10.0, 11, max_total=1024, max_in=512)
    wl = _WL(wl.arrival_s, wl.adapter, wl.input_tokens, wl.output_tokens, 300.0)
    cfg = _cfg(4, 4, 4800, max_model_len=1024)
    res = simulate_engine(cfg, wl, check=True)
    assert res.preemptions > 0
    assert res.finished == sum(res.arrived) and res.running_end == 0 and res.waiting_end == 0
    assert res.max_kv_blocks_used <= res.kv_blocks_total == 300


def test_slot_stickiness_six_adapters_two_slots():
    # measured on a real vLLM engine: 6 adapters x 4 req/s, 2 slots -> 4 adapters complete nothing in 60 s
    wl = _workload([4.0] * 6, 60.0, 5)
    cfg = _cfg(6, 2, 400_000, max_model_len=131072, max_num_seqs=2048)
    res = simulate_engine(cfg, wl, check=True)
    holders = [a for a in range(6) if res.completed[a] > 0]
    assert len(holders) == 2
    assert all(res.completed[a] > 100 for a in holders)
    assert sorted(res.completed).count(0) == 4
    loss = res.adapter_loss()
    assert all(loss[a] == 1.0 for a in range(6) if a not in holders)
    assert all(loss[a] < 0.5 for a in holders)
    assert res.max_distinct_adapters == 2


def test_client_outstanding_cap_rejects_and_conserves():
    wl = _workload([4.0] * 6, 60.0, 5)
    base = _cfg(6, 2, 400_000, max_model_len=131072, max_num_seqs=2048)
    free = simulate_engine(base, wl)
    from dataclasses import replace

    capped = simulate_engine(replace(base, max_outstanding=150), wl, check=True)
    assert sum(free.rejected) == 0 and sum(capped.rejected) > 0
    assert sum(capped.arrived) == capped.finished + capped.running_end + capped.waiting_end + sum(capped.rejected)
    assert capped.max_running <= 150 and capped.max_waiting <= 150
    assert capped.max_waiting < free.max_waiting


def test_oom_at_start():
    wl = _workload([1.0], 10.0, 1)
    res = simulate_engine(_cfg(1, 1, 100_000, max_model_len=131072), wl)
    assert res.oom and res.finished == 0 and res.throughput_tok_s == 0.0
    assert res.waiting_end == sum(res.arrived) > 0
    res0 = simulate_engine(_cfg(1, 1, 0, max_model_len=1024), wl)
    assert res0.oom


def test_same_workload_same_result_and_seed_matters():
    cfg = _cfg(8, 4, 60_000, max_model_len=2048)
    a = simulate_engine(cfg, _workload([1.0] * 8, 60.0, 42))
    b = simulate_engine(cfg, _workload([1.0] * 8, 60.0, 42))
    c = simulate_engine(cfg, _workload([1.0] * 8, 60.0, 43))
    assert a == b
    assert a.completed != c.completed or a.itl_ms_mean != c.itl_ms_mean


def test_empty_workload_and_too_long_requests():
    empty = _WL(np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64), 60.0)
    res = simulate_engine(_cfg(2, 1, 10_000, max_model_len=2048), empty, check=True)
    assert res.finished == 0 and sum(res.arrived) == 0 and res.steps == 0 and not res.oom
    too_long = _tiny([0.0], [0], [1500], [600])
    with pytest.raises(ValueError, match=r"2100 tokens, more than max_model_len \(2048\)"):
        simulate_engine(_cfg(1, 1, 10_000, max_model_len=2048), too_long)


def test_config_errors_quote_both_values():
    with pytest.raises(ValueError, match=r"max_num_batched_tokens \(512\) must be >= max_num_seqs \(1024\)"):
        _cfg(2, 2, 10_000, max_num_seqs=1024, mbt=512)
    with pytest.raises(ValueError, match=r"max_cpu_loras \(1\) must be >= max_loras \(2\)"):
        _cfg(2, 2, 10_000, cpu=1)
    with pytest.raises(ValueError, match="outside 1..max_lora_rank"):
        EngineConfig(
            kv_cache_tokens=1,
            max_loras=1,
            max_cpu_loras=1,
            adapter_ranks=(32,),
            max_lora_rank=16,
            step_time=_PublishedStep(),
        )


def test_step_plan_is_built_in_field_order():
    # EngineCore.schedule builds StepPlan positionally (hot path); each argument carries its field
    # name as a comment, so a reordered or added field shows up here rather than as a wrong number.
    import ast
    import inspect

    from optplace.twin.engine import StepPlan
    from optplace.twin.engine import core as core_mod

    src = inspect.getsource(core_mod)
    lines = src.splitlines()
    calls = [
        n
        for n in ast.walk(ast.parse(src))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "StepPlan"
    ]
    assert len(calls) == 2
    for call in calls:
        assert not call.keywords
        names = tuple(lines[a.end_lineno - 1].rsplit("# ", 1)[1].strip() for a in call.args)
        assert names == StepPlan._fields
