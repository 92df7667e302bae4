"""The outcome of one simulated engine over one window (:class:`EngineResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from optplace.twin.engine.config import EngineConfig

__all__ = ["EngineResult"]


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
        """Tokens (input + output) of requests completed in the window, per second (the reference runs' metric)."""
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
