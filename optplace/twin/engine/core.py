"""The engine core: vLLM V1's scheduler (0.8.5 semantics) as clock-free state.

:class:`EngineCore` holds the engine state (running list, waiting queue, paged KV cache, LoRA slot
and CPU caches). :meth:`EngineCore.schedule` makes one step's scheduling decision (a
:class:`StepPlan`, the analogue of vLLM's ``SchedulerOutput``) and
:meth:`EngineCore.update_from_output` applies the step's outcome; neither reads a clock, so both are
unit-tested step by step against a literal transcription of vLLM's loops. Time is added by
:mod:`optplace.twin.engine.clock`.

Scheduling semantics (vLLM 0.8.5 ``vllm/v1/core/sched/scheduler.py`` and ``kv_cache_manager.py``;
``docs/twin.md`` explains them at more length):

* Each step first serves the RUNNING requests in admission order (a decode needs 1 token; an
  unfinished chunked prefill continues with what is left of the token budget), then, only if no
  request was preempted in this step, the WAITING queue FCFS. One token budget
  (``max_num_batched_tokens``) is shared by decodes and prefill chunks; ``max_num_seqs`` caps the
  running list. vLLM requires ``max_num_batched_tokens >= max_num_seqs``, so every running decode
  is scheduled in every step, and at most one running request (the newest) is mid-prefill.
* Paged KV cache of ``kv_cache_tokens // block_size`` blocks, no prefix caching and no block
  pre-allocation: a request holds ``ceil(computed_tokens / block_size)`` blocks. When a running
  request needs a block and none is free, the newest running request is preempted (recompute: its
  blocks are freed, it goes back to the head of the waiting queue and later prefills prompt +
  generated tokens again). Repeating this "pop from the tail while the prefix does not fit" equals
  vLLM's per-request loop (the needs are non-negative and processed in order).
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

Speed: per-adapter FIFO queues plus a global pointer and a heap of the active adapters' queue heads
implement the FCFS scan with the skip rule without scanning the waiting list; decoding requests are
stored lazily (computed tokens = base + step index), so a step costs O(1) plus O(admissions +
completions + preemptions); block boundaries are counted per phase (computed mod block_size);
completions are bucketed by step index; per-request columns are ``array.array`` copies of the
workload (no per-request Python objects up front).
"""

# The hot loops compare and assign instead of calling min()/max(): a builtin call costs more per step.
# ruff: noqa: PLR1730, FURB136

from __future__ import annotations

import heapq
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from optplace.twin.engine.config import EngineConfig, WorkloadLike

__all__ = ["EngineCore", "StepPlan"]


class StepPlan(NamedTuple):
    """One step's scheduling decision (the analogue of vLLM's ``SchedulerOutput``); immutable.

    Read by field name. :meth:`EngineCore.schedule` builds it positionally, in field order: it runs
    once per simulated step, and keyword construction of an 18-field tuple costs about three times
    as much as positional construction.
    """

    step: int
    """Index of the step (0 for the first step of the run)."""
    num_seqs: int
    """Requests scheduled in the step (decodes + prefill chunks)."""
    decode_tokens: int
    """Decode tokens scheduled (one per decoding request)."""
    prefill_tokens: int
    """Prefill tokens scheduled (the continued chunk plus the admitted requests' first chunks)."""
    distinct_adapters: int
    """Adapters in the batch after admission (the LoRA set of the step)."""
    rank_sum: int
    """Sum of the ranks of the adapters in the batch."""
    context_tokens: int
    """KV tokens the running requests attend over (what the step-time model's context term reads)."""
    admitted: Sequence[int]
    """Requests admitted from the waiting queue, in admission order."""
    preempted: Sequence[int]
    """Requests preempted in the step, in queue order (oldest first)."""
    prefill_done: Sequence[tuple[int, int, int]]
    """(request, tokens computed, tokens generated before) of every prefill that completes in the step."""
    chunks: Sequence[tuple[int, int]]
    """(request, prefill tokens scheduled in the step) of every prefill chunk."""
    tail_chunk: int
    """Tokens scheduled for the request that was mid-prefill at the start of the step."""
    loads: int
    """Adapters loaded into a GPU slot for the step."""
    disk_loads: int
    """Adapters loaded from disk into the CPU cache for the step."""
    load_s: float
    """Adapter load time added to the step [s]."""
    num_running: int
    """Running requests after the step's scheduling decision."""
    num_waiting: int
    """Waiting requests after the step's scheduling decision."""
    blocked: bool
    """Admission stopped for a reason that persists while nothing changes."""

    @property
    def scheduled_tokens(self) -> int:
        """Tokens scheduled in the step (the part of the token budget used)."""
        return self.decode_tokens + self.prefill_tokens

    @property
    def empty(self) -> bool:
        """Nothing was scheduled (the engine is idle)."""
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


class AdapterCache:
    """One LRU adapter cache of vLLM's LoRA manager: the GPU's slots or the CPU cache.

    Adapters in the batch are resident and pinned; ``idle`` holds the other resident ones in LRU order
    (oldest first), the ones an admission may evict."""

    __slots__ = ("resident", "idle", "count", "capacity")

    def __init__(self, n_adapters: int, capacity: int) -> None:
        self.resident = bytearray(n_adapters)
        self.idle: OrderedDict[int, None] = OrderedDict()
        self.count = 0
        self.capacity = capacity

    def use(self, a: int) -> bool:
        """Adapter ``a`` joins the batch: True when it was resident (no load), and it is pinned now."""
        if self.resident[a]:
            self.idle.pop(a, None)
            return True
        return False

    def admit(self, a: int) -> int:
        """Load a non-resident ``a``, evicting the least recently used idle adapter when full; returns
        the evicted adapter, or -1."""
        evicted = -1
        if self.count >= self.capacity:
            evicted, _ = self.idle.popitem(last=False)
            self.resident[evicted] = 0
            self.count -= 1
        self.resident[a] = 1
        self.count += 1
        return evicted

    def drop(self, a: int) -> None:
        """Remove ``a`` if resident (an idle adapter)."""
        if self.resident[a]:
            self.idle.pop(a, None)
            self.resident[a] = 0
            self.count -= 1


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
        # adapter caches: the GPU's LoRA slots (--max-loras) and the CPU cache (--max-cpu-loras)
        self.gpu = AdapterCache(n_adapters, cfg.max_loras)
        self.cpu = AdapterCache(n_adapters, cfg.max_cpu_loras)
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
        cpu, gpu = self.cpu, self.gpu
        loads = disk = 0
        secs = 0.0
        if not cpu.use(a):
            disk = 1
            secs += self.disk_s[a]
            evicted = cpu.admit(a)
            if evicted >= 0:  # removing an adapter from the CPU cache deactivates it as well
                gpu.drop(evicted)
        if not gpu.use(a):
            loads = 1
            secs += self.load_s[a]
            gpu.admit(a)
        return loads, disk, secs

    def _leave(self, a: int) -> None:
        """Adapter ``a`` has no running request any more (most recently used of the idle ones)."""
        self.n_active -= 1
        self.rank_sum -= self.rank[a]
        self.gpu.idle[a] = None
        self.cpu.idle[a] = None

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
                # first_fresh() written inline: this branch runs once per decode-only step (the hot loop)
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
                plan = StepPlan(  # positional, in field order (see StepPlan)
                    s,  # step
                    n_dec,  # num_seqs
                    n_dec,  # decode_tokens
                    0,  # prefill_tokens
                    self.n_active,  # distinct_adapters
                    self.rank_sum,  # rank_sum
                    self.sum_base + n_dec * s,  # context_tokens
                    _E,  # admitted
                    _E,  # preempted
                    _E,  # prefill_done
                    _E,  # chunks
                    0,  # tail_chunk
                    0,  # loads
                    0,  # disk_loads
                    0.0,  # load_s
                    len(running),  # num_running
                    len(self.preempted_q) + n_arrived - self.n_fresh_admitted - self.n_dropped,  # num_waiting
                    True,  # blocked
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
        plan = StepPlan(  # positional, in field order (see StepPlan)
            s,  # step
            n_dec + (1 if tail_chunk > 0 else 0) + len(admitted),  # num_seqs
            n_dec,  # decode_tokens
            prefill_tokens,  # prefill_tokens
            self.n_active,  # distinct_adapters
            self.rank_sum,  # rank_sum
            ctx,  # context_tokens
            admitted,  # admitted
            preempted,  # preempted
            prefill_done,  # prefill_done
            chunks,  # chunks
            tail_chunk,  # tail_chunk
            loads,  # loads
            disk_loads,  # disk_loads
            load_s,  # load_s
            n_running,  # num_running
            len(self.preempted_q) + n_arrived - self.n_fresh_admitted - self.n_dropped,  # num_waiting
            blocked,  # blocked
        )
        if self.check:
            self._check_invariants(plan)
        return plan

    # ------------------------------------------------------------------ step outcome
    def update_from_output(self, plan: StepPlan, t_end: float, *, record: bool = True) -> int:
        """Apply the outcome of ``plan``'s step, which ended at ``t_end``. Returns completions.

        ``record=False`` applies the state change without counting completions.
        """
        s = plan.step
        B = self.B
        out = self.out
        adapter = self.adapter
        done = 0
        chunks = plan.chunks
        if chunks:
            eng = self.eng_tokens
            for r, c in chunks:
                eng[adapter[r]] += c
            first_tok = self.first_tok
            for r, tokens, g in plan.prefill_done:
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
