"""Discrete-step model of one vLLM V1 engine (0.8.5 semantics) serving many LoRA adapters.

The model is split the way vLLM splits its scheduler:

* :class:`EngineCore` holds the engine state (running list, waiting queue, paged KV cache, LoRA
  slot and CPU caches). :meth:`EngineCore.schedule` makes one step's scheduling decision and
  :meth:`EngineCore.update_from_output` applies the step's outcome; neither reads a clock, so both
  are unit-tested without SimPy. A private runner advances time: it asks the step-time and
  scheduler-overhead models how long each step lasts and fast-forwards runs of identical steps.
* :func:`simulate_engine` is the entry point: a SimPy environment drives the arrival process (it
  wakes an idle engine at the next arrival) and the engine process, which runs batches of steps
  inside one SimPy timeout (the per-step loop is far too hot for one SimPy event per step).

Scheduling semantics (vLLM 0.8.5 ``vllm/v1/core/sched/scheduler.py``, ``kv_cache_manager.py``;
read in the study's fork FerranAgulloLopez/GPULLMAdapterOptimization):

* Each step first serves the RUNNING requests in admission order (a decode needs 1 token; an
  unfinished chunked prefill continues with what is left of the token budget), then, only if no
  request was preempted in this step, the WAITING queue FCFS. One token budget
  (``max_num_batched_tokens``) is shared by decodes and prefill chunks; ``max_num_seqs`` caps the
  running list. vLLM requires ``max_num_batched_tokens >= max_num_seqs``, so every running decode
  is scheduled in every step, and at most one running request (the newest) is mid-prefill.
* Paged KV cache of ``kv_cache_tokens // block_size`` blocks, no prefix caching and (since vLLM
  0.8.5) no block pre-allocation: a request holds ``ceil(computed_tokens / block_size)`` blocks.
  When a running request needs a block and none is free, the newest running request is preempted
  (recompute: its blocks are freed, it goes back to the head of the waiting queue and later
  prefills prompt + generated tokens again). Repeating this "pop from the tail while the prefix
  does not fit" equals vLLM's per-request loop (the needs are non-negative and processed in order).
* A waiting request is admitted only if the blocks for its first chunk are free; the first one that
  does not fit stops admission for the step.
* LoRA: the adapters of the scheduled requests form the step's set; a waiting request whose adapter
  is not in the set while the set holds ``max_loras`` adapters is skipped (keeps its place), later
  requests of adapters already in the set are still admitted. Because every running request is
  scheduled, the set is exactly the adapters with running requests: slots are "sticky".
* Adapter caches: GPU slots are an LRU of ``max_loras`` adapters, the CPU cache an LRU of
  ``max_cpu_loras``; the adapters of the batch are touched in every step. An adapter entering the
  batch that is not in a GPU slot is loaded from the CPU cache (``adapter_load_ms``) or from disk
  first (``adapter_disk_ms``); the load time adds to that step.
* Start-up: a KV cache smaller than one ``max_model_len`` sequence (or none) fails at start:
  ``EngineResult.oom`` and nothing is served.

Time: a step lasts ``step_time.step_s(...) + overhead.overhead_s(...) + loads``. Requests arriving
in ``[0, duration_s)`` are served; at ``duration_s`` the run stops and every unfinished request is
cancelled (not counted). A step that would end after ``duration_s`` is not committed.

Metrics: ``itl_ms_mean`` is vLLM's ``benchmark_serving`` definition (the mean over all inter-token
gaps of completed requests, i.e. sum of (finish - first token) over sum of (output - 1)), which is
what the reference runs' ``mean_itl_ms`` reports; ``tpot_ms_mean`` is the per-request mean of
(finish - first token) / (output - 1). TTFT percentiles are over requests completed in the window.

Speed: per-adapter FIFO queues plus a global pointer and a heap of the active adapters' queue heads
implement the FCFS scan with the skip rule without scanning the waiting list; decoding requests are
stored lazily (computed tokens = base + step index), so a step costs O(1) plus O(admissions +
completions + preemptions); block boundaries are counted per phase (computed mod block_size);
completions are bucketed by step index; runs of steps in which nothing is admitted, completed or
preempted are jumped in closed form (the step time is affine in the context tokens, checked) until
the next completion, the KV limit, or an arrival that could be admitted (arrivals of adapters that
cannot enter the full adapter set only change the scheduler overhead); per-request columns are
``array.array`` copies of the workload (no per-request Python objects up front).
"""

from __future__ import annotations

import heapq
import math
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

__all__ = [
    "EngineConfig",
    "EngineCore",
    "EngineResult",
    "OverheadModel",
    "StepPlan",
    "StepTimeModelLike",
    "WorkloadLike",
    "engine_config_from_profile",
    "simulate_engine",
]


class StepTimeModelLike(Protocol):
    """What the engine needs from ``optplace.twin.steptime.StepTimeModel``."""

    def step_s(
        self,
        num_seqs: int,
        prefill_tokens: int,
        decode_tokens: int,
        distinct_adapters: int,
        mean_rank: float,
        context_tokens: float | None = None,
    ) -> float: ...


class OverheadModel(Protocol):
    """What the engine needs from ``optplace.twin.steptime.SchedulerOverhead``."""

    def overhead_s(self, running: int, waiting: int, slots: int = 1, served: int = 1) -> float: ...


class WorkloadLike(Protocol):
    """``optplace.twin.workload.Workload``: arrays sorted by arrival time (read-only: frozen types qualify)."""

    @property
    def arrival_s(self) -> np.ndarray: ...
    @property
    def adapter(self) -> np.ndarray: ...
    @property
    def input_tokens(self) -> np.ndarray: ...
    @property
    def output_tokens(self) -> np.ndarray: ...
    @property
    def duration_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """One vLLM engine (one GPU) with its LoRA configuration and time models.

    ``adapter_ranks[i]`` is the rank of adapter ``i`` (the workload's adapter index);
    ``adapter_load_ms[i]`` the CPU→GPU load time of adapter ``i`` and ``adapter_disk_ms[i]`` its
    disk→CPU time (both ms; empty tuples mean free loads).
    """

    kv_cache_tokens: int
    max_loras: int
    max_cpu_loras: int
    adapter_ranks: tuple[int, ...]
    max_lora_rank: int
    step_time: Any
    overhead: Any = None
    adapter_load_ms: tuple[float, ...] = ()
    adapter_disk_ms: tuple[float, ...] = ()
    block_size: int = 16
    max_num_seqs: int = 2048
    max_num_batched_tokens: int = 2048
    max_model_len: int = 131072
    max_outstanding: int | None = None
    """Client-side cap on requests outstanding at the server (running + waiting); a request that
    arrives while the cap is reached is rejected (never served, counted in ``rejected``). ``None``:
    no cap, as in vLLM itself. The study's load generator behaved as if capped (see bench.fidelity)."""

    def __post_init__(self) -> None:
        errors: list[str] = []
        if self.max_loras < 1:
            errors.append(f"max_loras must be >= 1, got {self.max_loras}")
        if self.max_cpu_loras < self.max_loras:
            errors.append(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras}), as vLLM requires"
            )
        if self.max_num_batched_tokens < self.max_num_seqs:
            errors.append(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}), as vLLM requires"
            )
        if self.block_size < 1:
            errors.append(f"block_size must be >= 1, got {self.block_size}")
        if self.max_outstanding is not None and self.max_outstanding < 1:
            errors.append(f"max_outstanding must be >= 1 or None, got {self.max_outstanding}")
        if self.kv_cache_tokens < 0:
            errors.append(f"kv_cache_tokens must be >= 0, got {self.kv_cache_tokens}")
        bad = sorted({r for r in self.adapter_ranks if r > self.max_lora_rank or r < 1})
        if bad:
            errors.append(f"adapter ranks {bad} are outside 1..max_lora_rank ({self.max_lora_rank})")
        n = len(self.adapter_ranks)
        for name in ("adapter_load_ms", "adapter_disk_ms"):
            v = getattr(self, name)
            if v and len(v) != n:
                errors.append(f"{name} has {len(v)} entries but there are {n} adapters")
        if errors:
            raise ValueError("; ".join(errors))

    @property
    def num_blocks(self) -> int:
        """KV cache size in blocks."""
        return self.kv_cache_tokens // self.block_size

    @property
    def starts(self) -> bool:
        """Whether vLLM starts: the KV cache must hold one ``max_model_len`` sequence."""
        return self.kv_cache_tokens > 0 and self.kv_cache_tokens >= self.max_model_len


def engine_config_from_profile(
    profile: Any,
    adapter_ranks: Sequence[int],
    max_loras: int,
    max_cpu_loras: int | None = None,
    max_lora_rank: int | None = None,
    max_num_seqs: int = 2048,
    max_num_batched_tokens: int = 2048,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    kv_cache_tokens: int | None = None,
) -> EngineConfig:
    """Build an :class:`EngineConfig` from a ``specs`` profile (KV capacity, time and load models).

    ``max_lora_rank`` defaults to the largest rank served (what the plan passes to vLLM);
    ``kv_cache_tokens`` overrides the profile's memory model (e.g. a measured value).
    """
    from optplace.twin.steptime import SchedulerOverhead, StepTimeModel

    ranks = tuple(int(r) for r in adapter_ranks)
    mlr = int(max_lora_rank if max_lora_rank is not None else max(ranks, default=8))
    cpu = int(max_cpu_loras if max_cpu_loras is not None else max(len(ranks), max_loras))
    kv = int(
        kv_cache_tokens
        if kv_cache_tokens is not None
        else profile.kv_cache_tokens(max_loras, mlr, gpu_memory_utilization)
    )
    step = StepTimeModel.from_params(profile.step_time)
    if hasattr(step, "bind"):
        step = step.bind(mlr, int(max_loras))
    overhead = SchedulerOverhead.from_params(getattr(profile, "scheduler_overhead", None))
    load = profile.adapter_load
    return EngineConfig(
        kv_cache_tokens=kv,
        max_loras=int(max_loras),
        max_cpu_loras=cpu,
        adapter_ranks=ranks,
        max_lora_rank=mlr,
        step_time=step,
        overhead=overhead,
        adapter_load_ms=tuple(float(load.cpu_to_gpu(mlr, r)) for r in ranks),
        adapter_disk_ms=tuple(float(load.disk_to_cpu(r)) for r in ranks),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=int(max_model_len if max_model_len is not None else profile.model_arch.max_model_len),
    )


@dataclass(frozen=True, slots=True)
class EngineResult:
    """Outcome of one simulated engine over one window (per-adapter tuples indexed like the workload)."""

    oom: bool
    duration_s: float
    simulated_s: float
    steps: int
    explicit_steps: int  # steps scheduled one by one (the rest were fast-forwarded)
    # per adapter
    arrived: tuple[int, ...]
    offered_tokens: tuple[int, ...]
    completed: tuple[int, ...]
    completed_tokens: tuple[int, ...]
    engine_tokens: tuple[int, ...]
    rejected: tuple[int, ...]  # refused by the client-side outstanding cap (``max_outstanding``)
    # totals and end state (conservation: sum(arrived) == finished + running_end + waiting_end + sum(rejected))
    finished: int
    running_end: int
    waiting_end: int
    # latency
    itl_ms_mean: float
    tpot_ms_mean: float
    ttft_ms_mean: float
    ttft_ms_p50: float
    ttft_ms_p99: float
    # engine events
    preemptions: int
    adapter_loads: int
    disk_loads: int
    load_time_s: float
    scheduler_time_s: float
    max_running: int
    max_waiting: int
    mean_running: float
    mean_waiting: float
    # invariants observed over all committed steps
    max_distinct_adapters: int
    max_kv_blocks_used: int
    kv_blocks_total: int
    max_scheduled_tokens: int
    config: EngineConfig | None = field(default=None, repr=False, compare=False)

    @property
    def throughput_tok_s(self) -> float:
        """Tokens (input + output) of requests completed in the window, per second (the study's metric)."""
        return sum(self.completed_tokens) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def engine_tok_s(self) -> float:
        """Prefill + decode tokens processed in the window, per second."""
        return sum(self.engine_tokens) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def offered_tok_s(self) -> float:
        """Input + output tokens of every request that arrived in the window, per second."""
        return sum(self.offered_tokens) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def throughput_loss(self) -> float:
        """1 - delivered / offered token rate (0 when nothing was offered)."""
        off = sum(self.offered_tokens)
        return 1.0 - sum(self.completed_tokens) / off if off > 0 else 0.0

    def adapter_loss(self) -> tuple[float, ...]:
        """Per-adapter throughput loss (0 for an adapter with no offered load)."""
        return tuple(
            (1.0 - c / o) if o > 0 else 0.0 for c, o in zip(self.completed_tokens, self.offered_tokens, strict=True)
        )

    def starved_adapters(self, max_loss: float = 0.10) -> tuple[int, ...]:
        """Indices of adapters whose own loss is at least ``max_loss``."""
        return tuple(i for i, x in enumerate(self.adapter_loss()) if self.offered_tokens[i] > 0 and x >= max_loss)


class StepPlan(NamedTuple):
    """One step's scheduling decision (the analogue of vLLM's ``SchedulerOutput``); immutable."""

    step: int
    num_seqs: int
    decode_tokens: int
    prefill_tokens: int
    distinct_adapters: int
    rank_sum: int
    context_tokens: int
    admitted: Sequence[int]
    preempted: Sequence[int]
    prefill_done: Sequence[tuple[int, int, int]]  # (request, tokens computed, generated before)
    chunks: Sequence[tuple[int, int]]  # (request, prefill tokens scheduled in this step)
    tail_chunk: int
    loads: int
    disk_loads: int
    load_s: float
    num_running: int
    num_waiting: int
    blocked: bool  # admission stopped for a reason that persists while nothing changes

    @property
    def scheduled_tokens(self) -> int:
        return self.decode_tokens + self.prefill_tokens

    @property
    def empty(self) -> bool:
        return self.num_seqs == 0


_E: tuple[Any, ...] = ()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _i64(x: np.ndarray) -> array[int]:
    out = array("q")
    out.frombytes(np.ascontiguousarray(x, dtype=np.int64).tobytes())
    return out


def _f64(x: np.ndarray) -> array[float]:
    out = array("d")
    out.frombytes(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    return out


class EngineCore:
    """Clock-free engine state: ``schedule()`` decides a step, ``update_from_output()`` applies it.

    Requests are the workload's row indices (sorted by arrival). The caller tells ``schedule`` how
    many requests have arrived; ``update_from_output`` gets the step's end time only to stamp
    first-token and finish times.
    """

    def __init__(self, cfg: EngineConfig, workload: WorkloadLike, *, check: bool = False) -> None:
        self.cfg = cfg
        self.check = check
        wl = workload
        n_adapters = len(cfg.adapter_ranks)
        adapter = np.asarray(wl.adapter, dtype=np.int64)
        if adapter.size and (adapter.min() < 0 or adapter.max() >= n_adapters):
            raise ValueError(f"workload adapter index out of range 0..{n_adapters - 1}")
        arr = np.asarray(wl.arrival_s, dtype=np.float64)
        if arr.size > 1 and np.any(np.diff(arr) < 0):
            raise ValueError("workload arrivals must be sorted by time")
        inp = np.asarray(wl.input_tokens, dtype=np.int64)
        out = np.asarray(wl.output_tokens, dtype=np.int64)
        if inp.size and (inp.min() < 1 or out.min() < 1):
            raise ValueError("request lengths must be >= 1 token")
        if inp.size and int((inp + out).max()) > cfg.max_model_len:
            # vLLM's API server refuses these (prompt + max_tokens > max_model_len); a twin that
            # admitted one could preempt it forever
            raise ValueError(
                f"a request needs {int((inp + out).max())} tokens, more than max_model_len ({cfg.max_model_len})"
            )
        self.n = int(arr.size)
        # Per-request columns as array.array: built by memcpy (no million Python objects up front,
        # which dominated the set-up of the heaviest runs) and indexed as fast as lists.
        self.np_arrival, self.np_adapter, self.np_inp, self.np_out = arr, adapter, inp, out
        self.arrival = _f64(arr)
        self.adapter = _i64(adapter)
        self.inp = _i64(inp)
        self.out = _i64(out)
        self.rank = list(cfg.adapter_ranks)
        self.load_s = [x * 1e-3 for x in cfg.adapter_load_ms] or [0.0] * n_adapters
        self.disk_s = [x * 1e-3 for x in cfg.adapter_disk_ms] or [0.0] * n_adapters
        B = cfg.block_size
        self.B = B
        self.total_blocks = cfg.num_blocks
        self.used = 0
        # per-adapter FIFO of fresh (never admitted) requests: a sorted list + head position
        # a stable sort by adapter; 16-bit keys let NumPy use a radix sort (5x faster on 1M requests)
        key = adapter.astype(np.int16) if n_adapters < 2**15 else adapter
        order = np.argsort(key, kind="stable")
        counts = np.bincount(adapter, minlength=n_adapters) if adapter.size else np.zeros(n_adapters, np.int64)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self.aq: list[array[int]] = [_i64(order[bounds[a] : bounds[a + 1]]) for a in range(n_adapters)]
        self.aq_np = [order[bounds[a] : bounds[a + 1]] for a in range(n_adapters)]  # views, for bulk skips
        pos = np.empty(self.n, dtype=np.int64)
        pos[order] = np.arange(self.n) - np.repeat(bounds[:-1], counts)
        self.pos = _i64(pos)  # position of each request in its adapter's queue
        self.cap = cfg.max_outstanding
        self.dropped = bytearray(self.n)
        self.n_dropped = 0
        self.n_adapters = n_adapters
        self.n_seen = 0
        self.rejected = [0] * n_adapters
        self.ahead = [0] * n_adapters
        self.admitted = bytearray(self.n)
        self.gptr = 0  # smallest request index never admitted
        self.n_fresh_admitted = 0
        self.preempted_q: list[int] = []  # waiting head: preempted requests, in queue order
        self.pgen: dict[int, int] = {}  # generated tokens of preempted requests
        self.active_heap: list[int] = []  # queue heads of adapters with running requests
        self.running: dict[int, None] = {}  # admission order; popitem() = newest
        self.run_count = [0] * n_adapters
        self.n_active = 0
        self.rank_sum = 0
        # decoding requests: computed(step) = base + step, generated(step) = gbase + step
        zeros = bytes(8 * self.n)
        self.base = array("q", zeros)
        self.gbase = array("q", zeros)
        self.s0 = array("q", zeros)
        self.fin_step = _i64(np.full(self.n, -1, dtype=np.int64))
        self.phase = [0] * B
        self.n_dec = 0
        self.sum_base = 0  # sum of base over decoders (context tokens = sum_base + n_dec * step)
        self.buckets: dict[int, list[int]] = {}
        self.bucket_heap: list[int] = []
        # the (at most one) running request that is mid-prefill: always the newest running one
        self.tail = -1
        self.tail_comp = 0
        self.tail_total = 0
        self.tail_gen = 0
        # adapter caches: adapters of the batch are resident; *_idle hold the others in LRU order
        self.gpu_idle: OrderedDict[int, None] = OrderedDict()
        self.gpu_count = 0
        self.cpu_idle: OrderedDict[int, None] = OrderedDict()
        self.cpu_resident = bytearray(n_adapters)
        self.cpu_count = 0
        self.gpu_resident = bytearray(n_adapters)
        # accounting
        self.first_tok = array("d", zeros)
        self.eng_tokens = [0] * n_adapters
        self.completed_ids: list[int] = []
        self.finish_t: list[float] = []
        self.preemptions = 0
        self.loads = 0
        self.disk_loads = 0
        self.step = 0

    # ------------------------------------------------------------------ queries
    def num_waiting(self, n_arrived: int) -> int:
        """Requests waiting (arrived, not rejected, not running, not finished)."""
        self.accept(n_arrived)
        return len(self.preempted_q) + n_arrived - self.n_fresh_admitted - self.n_dropped

    def accept(self, n_arrived: int) -> None:
        """Let requests ``[0, n_arrived)`` in, rejecting those beyond ``max_outstanding``."""
        seen = self.n_seen
        if n_arrived <= seen:
            return
        self.n_seen = n_arrived
        cap = self.cap
        if cap is None:
            return
        outstanding = len(self.running) + len(self.preempted_q) + seen - self.n_fresh_admitted - self.n_dropped
        first_drop = seen + max(cap - outstanding, 0)
        if first_drop >= n_arrived:
            return
        rej = self.rejected
        if n_arrived - first_drop > 32:
            # bulk rejection (overloaded client): flag the range through NumPy views
            np.frombuffer(self.admitted, dtype=np.uint8)[first_drop:n_arrived] = 1
            np.frombuffer(self.dropped, dtype=np.uint8)[first_drop:n_arrived] = 1
            cnt = np.bincount(self.np_adapter[first_drop:n_arrived], minlength=self.n_adapters)
            for a in np.flatnonzero(cnt).tolist():
                rej[a] += int(cnt[a])
        else:
            adm = self.admitted
            dropped = self.dropped
            adapter = self.adapter
            for r in range(first_drop, n_arrived):
                adm[r] = 1  # out of the waiting queue for good
                dropped[r] = 1
                rej[adapter[r]] += 1
        self.n_dropped += n_arrived - first_drop

    def first_fresh(self) -> int:
        """The earliest request never admitted nor rejected (``n`` if none)."""
        gp = self.gptr
        adm = self.admitted
        n = self.n
        while gp < n and adm[gp]:
            gp += 1
        self.gptr = gp
        return gp

    def _active_head(self) -> int:
        """The earliest queued request of the adapters in the batch (-1 if none); drops stale heap entries."""
        heap = self.active_heap
        adapter = self.adapter
        run_count = self.run_count
        aq = self.aq
        ahead = self.ahead
        while heap:
            r = heap[0]
            a = adapter[r]
            if run_count[a] > 0:
                q = aq[a]
                h = ahead[a]
                if h < len(q) and q[h] == r:
                    if not self.dropped[r]:
                        return r
                    heapq.heappop(heap)
                    self._advance_head(a, h + 1)
                    continue
            heapq.heappop(heap)
        return -1

    def _advance_head(self, a: int, h: int) -> None:
        """Set adapter ``a``'s queue head to position ``h`` (skipping rejected requests); push it."""
        q = self.aq[a]
        dropped = self.dropped
        n_q = len(q)
        k = 0
        while h < n_q and dropped[q[h]]:
            h += 1
            k += 1
            if k == 16 and h < n_q and dropped[q[h]]:
                # a long run of rejected requests: search it in chunks with NumPy
                drop_np = np.frombuffer(dropped, dtype=np.uint8)
                qn = self.aq_np[a]
                while h < n_q:
                    nz = np.flatnonzero(drop_np[qn[h : h + 512]] == 0)
                    if nz.size:
                        h += int(nz[0])
                        break
                    h += 512
                h = min(h, n_q)
                break
        self.ahead[a] = h
        if h < len(q) and self.run_count[a] > 0:
            heapq.heappush(self.active_heap, q[h])

    # ------------------------------------------------------------------ adapter set / caches
    def _join(self, a: int) -> tuple[int, int, float]:
        """Adapter ``a`` enters the batch: returns (gpu loads, disk loads, load seconds)."""
        self.n_active += 1
        self.rank_sum += self.rank[a]
        q = self.aq[a]
        h = self.ahead[a]
        if h < len(q):
            heapq.heappush(self.active_heap, q[h])
        cfg = self.cfg
        loads = disk = 0
        secs = 0.0
        if self.cpu_resident[a]:
            self.cpu_idle.pop(a, None)
        else:
            disk = 1
            secs += self.disk_s[a]
            if self.cpu_count >= cfg.max_cpu_loras:
                old, _ = self.cpu_idle.popitem(last=False)
                self.cpu_resident[old] = 0
                self.cpu_count -= 1
                if self.gpu_resident[old]:  # removing from the CPU cache deactivates it as well
                    self.gpu_idle.pop(old, None)
                    self.gpu_resident[old] = 0
                    self.gpu_count -= 1
            self.cpu_resident[a] = 1
            self.cpu_count += 1
        if self.gpu_resident[a]:
            self.gpu_idle.pop(a, None)
        else:
            loads = 1
            secs += self.load_s[a]
            if self.gpu_count >= cfg.max_loras:
                old, _ = self.gpu_idle.popitem(last=False)
                self.gpu_resident[old] = 0
                self.gpu_count -= 1
            self.gpu_resident[a] = 1
            self.gpu_count += 1
        return loads, disk, secs

    def _leave(self, a: int) -> None:
        """Adapter ``a`` has no running request any more (most recently used of the idle ones)."""
        self.n_active -= 1
        self.rank_sum -= self.rank[a]
        self.gpu_idle[a] = None
        self.cpu_idle[a] = None

    def _remove_decoder(self, r: int) -> None:
        b = self.base[r]
        self.phase[b % self.B] -= 1
        self.n_dec -= 1
        self.sum_base -= b

    # ------------------------------------------------------------------ scheduling
    def schedule(self, n_arrived: int) -> StepPlan:
        """Decide the next step given that requests ``[0, n_arrived)`` have arrived. No clock.

        Mutates the state like vLLM's ``schedule()`` does (admissions, preemptions, computed tokens);
        :meth:`update_from_output` then applies the step's outputs (sampled tokens, completions).
        """
        if n_arrived > self.n_seen:
            self.accept(n_arrived)
        # hot path: locals instead of attribute lookups
        cfg = self.cfg
        B = self.B
        s = self.step
        running = self.running
        budget = cfg.max_num_batched_tokens
        total = self.total_blocks
        used = self.used
        n_dec = self.n_dec
        need = self.phase[(-s) % B] if n_dec else 0
        tail = self.tail
        if tail < 0 and need <= total - used and not self.preempted_q:
            # Fast path: a decode-only step in which nothing can be admitted (the common case).
            if self.n_active < cfg.max_loras:
                gp = self.gptr
                adm = self.admitted
                n = self.n
                while gp < n and adm[gp]:
                    gp += 1
                self.gptr = gp
                cand = gp < n_arrived
            else:
                h = self._active_head()
                cand = 0 <= h < n_arrived
                # (the admission loop below calls _active_head again: it is idempotent and cheap
                # once stale entries are gone)
            if not cand or len(running) >= cfg.max_num_seqs or budget <= n_dec:
                self.used = used + need
                plan = StepPlan(
                    s, n_dec, n_dec, 0, self.n_active, self.rank_sum, self.sum_base + n_dec * s, _E, _E, _E, _E,
                    0, 0, 0, 0.0, len(running), len(self.preempted_q) + n_arrived - self.n_fresh_admitted -
                    self.n_dropped, True,
                )
                if self.check:
                    self._check_invariants(plan)
                return plan
        tail_chunk = 0
        tblocks = 0
        if tail >= 0:
            tail_comp = self.tail_comp
            tail_chunk = self.tail_total - tail_comp
            if tail_chunk > budget - n_dec:
                tail_chunk = budget - n_dec
            tblocks = -(-(tail_comp + tail_chunk) // B) - (-(-tail_comp // B))
            need += tblocks
        preempted: list[int] = []
        if need > total - used:
            # vLLM preempts from the tail of the running list until the remaining prefix fits
            adapter = self.adapter
            run_count = self.run_count
            while running and need > total - used:
                r = running.popitem()[0]
                a = adapter[r]
                if r == tail:
                    need -= tblocks
                    used -= -(-self.tail_comp // B)
                    self.pgen[r] = self.tail_gen
                    self.tail = tail = -1
                    tail_chunk = 0
                else:
                    c = self.base[r] + s
                    if c % B == 0:
                        need -= 1
                    used -= -(-c // B)
                    self._remove_decoder(r)
                    n_dec -= 1
                    self.eng_tokens[a] += s - self.s0[r]
                    self.pgen[r] = self.gbase[r] + s
                    self.fin_step[r] = -1
                preempted.append(r)
                run_count[a] -= 1
                if run_count[a] == 0:
                    self._leave(a)
            self.preemptions += len(preempted)
            preempted.reverse()
            self.preempted_q[0:0] = preempted
        used += need
        budget -= n_dec + tail_chunk
        prefill_tokens = tail_chunk
        prefill_done: list[tuple[int, int, int]] = []
        chunks: list[tuple[int, int]] = []
        if tail >= 0 and tail_chunk > 0:
            chunks.append((tail, tail_chunk))
            self.tail_comp += tail_chunk
            if self.tail_comp == self.tail_total:
                prefill_done.append((tail, self.tail_total, self.tail_gen))
                self.tail = tail = -1
        admitted: list[int] = []
        loads = disk_loads = 0
        load_s = 0.0
        blocked = bool(preempted)
        if not preempted and budget > 0:
            max_loras = cfg.max_loras
            max_seqs = cfg.max_num_seqs
            run_count = self.run_count
            adapter = self.adapter
            inp = self.inp
            pq = self.preempted_q
            n_pq = len(pq)
            n_run = len(running)
            aq = self.aq
            ahead = self.ahead
            heap = self.active_heap
            i = 0
            while budget > 0:
                if n_run >= max_seqs:
                    blocked = True
                    break
                if i < n_pq:
                    r = pq[i]
                    a = adapter[r]
                    if self.n_active >= max_loras and run_count[a] == 0:
                        i += 1
                        continue
                    g = self.pgen[r]
                    tokens = inp[r] + g
                    fresh = False
                else:
                    if self.n_active < max_loras:
                        gp = self.gptr
                        adm = self.admitted
                        n = self.n
                        while gp < n and adm[gp]:
                            gp += 1
                        self.gptr = gp
                        if gp >= n_arrived:
                            blocked = True
                            break
                        r = gp
                        a = adapter[r]
                    else:
                        r = self._active_head()
                        if r < 0 or r >= n_arrived:
                            blocked = True
                            break
                        a = adapter[r]
                    g = 0
                    tokens = inp[r]
                    fresh = True
                chunk = tokens if tokens < budget else budget
                blk = -(-chunk // B)
                if blk > total - used:
                    blocked = True
                    break
                # admit r
                used += blk
                budget -= chunk
                prefill_tokens += chunk
                running[r] = None
                n_run += 1
                if run_count[a] == 0:
                    run_count[a] = 1
                    ld, dk, sec = self._join(a)
                    loads += ld
                    disk_loads += dk
                    load_s += sec
                else:
                    run_count[a] += 1
                if fresh:
                    self.admitted[r] = 1
                    self.n_fresh_admitted += 1
                    h = self.pos[r] + 1
                    q = aq[a]
                    if h < len(q) and not self.dropped[q[h]]:
                        ahead[a] = h
                        heapq.heappush(heap, q[h])
                    else:
                        self._advance_head(a, h)
                else:
                    del pq[i]
                    n_pq -= 1
                    del self.pgen[r]
                admitted.append(r)
                chunks.append((r, chunk))
                if chunk == tokens:
                    prefill_done.append((r, tokens, g))
                else:
                    self.tail = r
                    self.tail_comp = chunk
                    self.tail_total = tokens
                    self.tail_gen = g
            if loads:
                self.loads += loads
            if disk_loads:
                self.disk_loads += disk_loads
        self.used = used
        n_running = len(running)
        ctx = self.sum_base + n_dec * s + (self.tail_comp if self.tail >= 0 else 0)
        plan = StepPlan(
            s,
            n_dec + (1 if tail_chunk > 0 else 0) + len(admitted),
            n_dec,
            prefill_tokens,
            self.n_active,
            self.rank_sum,
            ctx,
            admitted,
            preempted,
            prefill_done,
            chunks,
            tail_chunk,
            loads,
            disk_loads,
            load_s,
            n_running,
            len(self.preempted_q) + n_arrived - self.n_fresh_admitted - self.n_dropped,
            blocked,
        )
        if self.check:
            self._check_invariants(plan)
        return plan

    # ------------------------------------------------------------------ step outcome
    def update_from_output(self, plan: StepPlan, t_end: float, *, record: bool = True) -> int:
        """Apply the outcome of ``plan``'s step, which ended at ``t_end``. Returns completions.

        ``record=False`` applies the state change without counting completions.
        """
        s = plan[0]
        B = self.B
        out = self.out
        adapter = self.adapter
        done = 0
        chunks = plan[10]
        if chunks:
            eng = self.eng_tokens
            for r, c in chunks:
                eng[adapter[r]] += c
            first_tok = self.first_tok
            for r, tokens, g in plan[9]:
                if g == 0:
                    first_tok[r] = t_end
                g1 = g + 1
                if g1 >= out[r]:
                    self._complete(r, -(-tokens // B), t_end, record)
                    done += 1
                else:
                    s1 = s + 1
                    b = tokens - s1
                    self.base[r] = b
                    self.gbase[r] = g1 - s1
                    self.s0[r] = s1
                    self.phase[b % B] += 1
                    self.n_dec += 1
                    self.sum_base += b
                    f = s1 + out[r] - g1 - 1
                    self.fin_step[r] = f
                    bl = self.buckets.get(f)
                    if bl is None:
                        self.buckets[f] = [r]
                        heapq.heappush(self.bucket_heap, f)
                    else:
                        bl.append(r)
        if s in self.buckets:
            done += self.finish_decodes(s, t_end, record)
        self.step = s + 1
        return done

    def finish_decodes(self, s: int, t_end: float, record: bool = True) -> int:
        """Complete the decoding requests whose last token was generated in step ``s``."""
        fin = self.buckets.pop(s, None)
        done = 0
        B = self.B
        out = self.out
        adapter = self.adapter
        if fin is not None:
            fin_step = self.fin_step
            base = self.base
            phase = self.phase
            inp = self.inp
            s0 = self.s0
            eng = self.eng_tokens
            running = self.running
            run_count = self.run_count
            used = self.used
            n_dec = self.n_dec
            sum_base = self.sum_base
            completed_ids = self.completed_ids
            finish_t = self.finish_t
            for r in fin:
                if fin_step[r] != s:
                    continue
                fin_step[r] = -1
                b = base[r]
                phase[b % B] -= 1
                n_dec -= 1
                sum_base -= b
                a = adapter[r]
                eng[a] += s + 1 - s0[r]
                del running[r]
                used -= -(-(inp[r] + out[r] - 1) // B)
                run_count[a] -= 1
                if run_count[a] == 0:
                    self._leave(a)
                if record:
                    completed_ids.append(r)
                    finish_t.append(t_end)
                done += 1
            self.used = used
            self.n_dec = n_dec
            self.sum_base = sum_base
        return done

    def _complete(self, r: int, blocks: int, t_end: float, record: bool) -> None:
        del self.running[r]
        self.used -= blocks
        a = self.adapter[r]
        self.run_count[a] -= 1
        if self.run_count[a] == 0:
            self._leave(a)
        if record:
            self.completed_ids.append(r)
            self.finish_t.append(t_end)

    # ------------------------------------------------------------------ fast-forward
    def next_completion_step(self) -> int:
        """Smallest step index with a pending decode completion (or a large number)."""
        h = self.bucket_heap
        bk = self.buckets
        while h and h[0] not in bk:
            heapq.heappop(h)
        return h[0] if h else 1 << 62

    def blocks_needed(self, k: int) -> int:
        """Blocks the decoders need over the next ``k`` steps (from ``self.step``), all scheduled."""
        B = self.B
        full, rem = divmod(k, B)
        tot = full * self.n_dec
        s = self.step
        ph = self.phase
        for j in range(rem):
            tot += ph[(-(s + j)) % B]
        return tot

    def skip_decode_steps(self, k: int) -> int:
        """Commit ``k`` identical decode-only steps at once (no completion inside). Returns blocks used."""
        blk = self.blocks_needed(k)
        self.used += blk
        self.step += k
        return blk

    # ------------------------------------------------------------------ invariants (tests)
    def _check_invariants(self, plan: StepPlan) -> None:
        """Checks on a scheduling decision (``check=True``); raises RuntimeError on a violation."""
        s = plan.step
        if self.used > self.total_blocks:
            raise RuntimeError(f"step {s}: KV blocks {self.used} > capacity {self.total_blocks}")
        adapters = {self.adapter[r] for r in self.running}
        if len(adapters) > self.cfg.max_loras or len(adapters) != self.n_active:
            raise RuntimeError(
                f"step {s}: {len(adapters)} adapters in the batch (tracked {self.n_active}), "
                f"max_loras {self.cfg.max_loras}"
            )
        if plan.scheduled_tokens > self.cfg.max_num_batched_tokens:
            raise RuntimeError(f"step {s}: {plan.scheduled_tokens} tokens > budget {self.cfg.max_num_batched_tokens}")
        if len(self.running) > self.cfg.max_num_seqs:
            raise RuntimeError(f"step {s}: {len(self.running)} running > max_num_seqs {self.cfg.max_num_seqs}")
        if plan.num_seqs > len(self.running):
            raise RuntimeError(f"step {s}: {plan.num_seqs} scheduled but {len(self.running)} running")

    def check_state(self) -> None:
        """Recompute the KV usage and the adapter counts from scratch at a step boundary."""
        s = self.step
        used = 0
        counts: dict[int, int] = {}
        for r in self.running:
            a = self.adapter[r]
            counts[a] = counts.get(a, 0) + 1
            if r == self.tail:
                used += _cdiv(self.tail_comp, self.B)
            else:
                if self.fin_step[r] < s:
                    raise RuntimeError(f"step {s}: request {r} should have finished at {self.fin_step[r]}")
                used += _cdiv(self.base[r] + s, self.B)
        if used != self.used:
            raise RuntimeError(f"step {s}: KV accounting {self.used} != recomputed {used}")
        if used > self.total_blocks:
            raise RuntimeError(f"step {s}: KV blocks {used} > capacity {self.total_blocks}")
        for a, c in enumerate(self.run_count):
            if counts.get(a, 0) != c:
                raise RuntimeError(f"step {s}: adapter {a} running count {c} != {counts.get(a, 0)}")
        if self.n_dec + (1 if self.tail >= 0 else 0) != len(self.running):
            raise RuntimeError(f"step {s}: {self.n_dec} decoders + tail != {len(self.running)} running")


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
        step_s = self.step_time.step_s
        overhead_s = self.overhead.overhead_s if self.overhead is not None else None
        slots = core.cfg.max_loras
        served = self.served
        schedule = core.schedule
        update = core.update_from_output
        check = core.check
        ff = self.fast_forward
        na = self.n_arrived
        slopes = self.slopes
        explicit = self.explicit
        sched_s = self.sched_s
        load_tot = self.load_s
        run_area = self.run_area
        wait_area = self.wait_area
        max_running = self.max_running
        max_waiting = self.max_waiting
        max_distinct = self.max_distinct
        max_used = self.max_used
        max_tokens = self.max_tokens
        while t < horizon:
            na = bisect_right(arrival, t, na)
            plan = schedule(na)
            num_seqs = plan[1]
            if num_seqs == 0:
                break  # idle: nothing running, nothing admissible
            n_act = plan[4]
            mean_rank = plan[5] / n_act if n_act else 0.0
            st = step_s(num_seqs, plan[3], plan[2], n_act, mean_rank, plan[6])
            nr = plan[15]
            nw = plan[16]
            ov = overhead_s(nr, nw, slots, served) if overhead_s is not None else 0.0
            dt = st + ov + plan[14]
            t_end = t + dt
            if t_end > duration:
                self.done = True
                break
            completions = update(plan, t_end)
            t = t_end
            explicit += 1
            # statistics
            sched_s += ov
            load_tot += plan[14]
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
            if plan[2] + plan[3] > max_tokens:
                max_tokens = plan[2] + plan[3]
            if check:
                core.check_state()
            # Fast-forward decode-only steps until the next completion, KV limit, window end, or a
            # request that could be admitted. Arrivals that cannot be admitted (the adapter set is
            # full and their adapter is not in it) only lengthen the waiting queue, i.e. change the
            # scheduler overhead; completions that leave nothing admissible only change the batch
            # composition: in both cases the run continues with the new step time.
            if not ff or plan[8] or core.tail >= 0:
                continue
            # after admissions, prefills, loads or completions the next step has a new composition
            changed = bool(completions or plan[7] or plan[9] or plan[11] or plan[12])
            if not changed:
                kc = core.next_completion_step() - core.step + 1  # steps up to the completing one
                if kc <= 0:
                    continue
                st0 = dt - ov - plan[14]
                # The step time is affine in the context tokens, which grow by one per decoder per
                # step: its slope depends on the batch composition only (cached; None = not affine).
                key = (num_seqs, n_act, plan[5])
                delta = slopes.get(key, -1.0)
                if delta is not None and delta < 0.0:
                    st1 = step_s(num_seqs, 0, num_seqs, n_act, mean_rank, plan[6] + num_seqs)
                    st2 = step_s(num_seqs, 0, num_seqs, n_act, mean_rank, plan[6] + 2 * num_seqs)
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
                    assert delta is not None  # `changed` (no slope) leaves through the branch below
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
                    mean_rank = rs / n_act if n_act else 0.0
                    ctx = core.sum_base + num_seqs * core.step
                    st0 = step_s(num_seqs, 0, num_seqs, n_act, mean_rank, ctx)
                    key = (num_seqs, n_act, rs)
                    delta = slopes.get(key, -1.0)
                    if delta is not None and delta < 0.0:
                        st1 = step_s(num_seqs, 0, num_seqs, n_act, mean_rank, ctx + num_seqs)
                        st2 = step_s(num_seqs, 0, num_seqs, n_act, mean_rank, ctx + 2 * num_seqs)
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
                ov = overhead_s(nr, nw, slots, served) if overhead_s is not None else 0.0
        self.n_arrived = na
        self.explicit = explicit
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


def _result(core: EngineCore, runner: _Runner | None, duration: float, *, oom: bool) -> EngineResult:
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
            oom=oom, duration_s=duration, simulated_s=0.0, steps=0, explicit_steps=0,
            arrived=tuple(int(x) for x in arrived), offered_tokens=tuple(int(x) for x in offered),
            completed=z, completed_tokens=z, engine_tokens=z, rejected=z,
            finished=0, running_end=0, waiting_end=int(arrived.sum()),
            itl_ms_mean=0.0, tpot_ms_mean=0.0, ttft_ms_mean=0.0, ttft_ms_p50=0.0, ttft_ms_p99=0.0,
            preemptions=0, adapter_loads=0, disk_loads=0, load_time_s=0.0, scheduler_time_s=0.0,
            max_running=0, max_waiting=0, mean_running=0.0, mean_waiting=0.0,
            max_distinct_adapters=0, max_kv_blocks_used=0, kv_blocks_total=cfg.num_blocks,
            max_scheduled_tokens=0, config=cfg,
        )
    ids = np.asarray(core.completed_ids, dtype=np.int64)
    fin = np.asarray(core.finish_t, dtype=np.float64)
    first = np.frombuffer(core.first_tok, dtype=np.float64)[ids] if ids.size else np.zeros(0)
    completed = np.bincount(ad[ids], minlength=n_ad) if ids.size else np.zeros(n_ad, np.int64)
    ctoks = (
        np.bincount(ad[ids], weights=(inp + out)[ids], minlength=n_ad) if ids.size else np.zeros(n_ad)
    )
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
        # no s0 yet, and counting s_end - 0 for it inflated engine_tok_s (seen against real vLLM)
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
    )
