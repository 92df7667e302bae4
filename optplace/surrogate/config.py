"""Per-GPU configurations and measured metrics: the surrogate's inputs and targets.

A :class:`GpuCase` is everything that decides how one vLLM instance performs: the adapters it
serves (rank and Poisson/Gamma/MMPP rate each), its slot count, the workload's arrival and length
models, the window and the seed.  A :class:`GpuMetrics` is what an evaluator (the digital twin,
or a synthetic stand-in in tests) reports for it.  Both are frozen and picklable so they travel
to process-pool and Ray workers unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Literal

ArrivalKind = Literal["poisson", "gamma", "mmpp"]
LengthKind = Literal["sharegpt", "fixed", "lognormal"]

# Mean request lengths of the ShareGPT pool sampled by the reference 1-hour runs
# (the reference measurements' README, columns pool_mean_input_tokens / pool_mean_output_tokens).
SHAREGPT_MEAN_INPUT_TOKENS = 223.0
SHAREGPT_MEAN_OUTPUT_TOKENS = 196.0


@dataclass(frozen=True, slots=True)
class ArrivalParams:
    """Per-adapter arrival process.

    ``cv`` is the coefficient of variation of inter-arrival gaps (gamma renewal; 1 for Poisson).
    ``burst_factor`` / ``burst_fraction`` / ``mean_burst_s`` describe a two-state MMPP: in a burst
    the rate is ``burst_factor`` × the normal-state rate, bursts cover ``burst_fraction`` of the
    time on average, and last ``mean_burst_s`` seconds on average.
    """

    kind: ArrivalKind = "poisson"
    cv: float = 1.0
    burst_factor: float = 1.0
    burst_fraction: float = 0.0
    mean_burst_s: float = 30.0


@dataclass(frozen=True, slots=True)
class LengthParams:
    """Request-length model: ShareGPT-like, fixed, or log-normal with the given means and CVs."""

    kind: LengthKind = "sharegpt"
    mean_input_tokens: float = SHAREGPT_MEAN_INPUT_TOKENS
    mean_output_tokens: float = SHAREGPT_MEAN_OUTPUT_TOKENS
    cv_input: float = 1.0
    cv_output: float = 1.0

    def means(self) -> tuple[float, float]:
        """Expected (input, output) tokens per request after the workload's length filters.

        Uses the twin's exact filtered statistics (``optplace.twin.workload.expected_lengths``), the
        same numbers the solver computes for a scenario, so training and solving see one feature.
        """
        if self.kind == "sharegpt":
            return SHAREGPT_MEAN_INPUT_TOKENS, SHAREGPT_MEAN_OUTPUT_TOKENS
        if self.kind == "lognormal":
            return _lognormal_means(self.mean_input_tokens, self.mean_output_tokens, self.cv_input, self.cv_output)
        return float(self.mean_input_tokens), float(self.mean_output_tokens)


@lru_cache(maxsize=4096)
def _lognormal_means(mi: float, mo: float, cvi: float, cvo: float) -> tuple[float, float]:
    try:
        from optplace.specs.model import LognormalLengths
        from optplace.twin.workload import expected_lengths
    except ImportError:  # pragma: no cover - the twin ships with the package
        return float(mi), float(mo)
    st = expected_lengths(
        LognormalLengths(
            kind="lognormal",
            mean_input_tokens=float(mi),
            mean_output_tokens=float(mo),
            cv_input=float(cvi),
            cv_output=float(cvo),
        )
    )
    assert st is not None  # lognormal lengths have exact statistics
    return float(st.mean_input_tokens), float(st.mean_output_tokens)


@dataclass(frozen=True, slots=True)
class GpuCase:
    """One surrogate case: an anonymous adapter mix (ranks and rates, no names) with slots, workload
    model, window and seed; what a sweep row is made from and what a query describes. A placed GPU's
    configuration, with named adapters, is :class:`optplace.twin.simulate.GpuConfig`.

    ``ranks[i]`` and ``rates_rps[i]`` describe adapter ``i``.  ``max_cpu_loras`` None means
    max(adapters, slots), the published system's setting.
    """

    ranks: tuple[int, ...]
    rates_rps: tuple[float, ...]
    max_loras: int
    arrivals: ArrivalParams = field(default_factory=ArrivalParams)
    lengths: LengthParams = field(default_factory=LengthParams)
    max_cpu_loras: int | None = None
    duration_s: float = 3600.0
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.ranks) != len(self.rates_rps):
            raise ValueError(f"ranks has {len(self.ranks)} entries but rates_rps has {len(self.rates_rps)}")
        if not self.ranks:
            raise ValueError("a GPU configuration needs at least one adapter")
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {self.max_loras}")

    @property
    def n_adapters(self) -> int:
        """Number of adapters served."""
        return len(self.ranks)

    @property
    def max_lora_rank(self) -> int:
        """Largest rank placed (vLLM's ``--max-lora-rank``)."""
        return max(self.ranks)

    @property
    def offered_tok_s(self) -> float:
        """Expected offered load in tokens/s (rate × mean input+output tokens)."""
        mi, mo = self.lengths.means()
        return float(sum(self.rates_rps)) * (mi + mo)


@dataclass(frozen=True, slots=True)
class GpuMetrics:
    """What an evaluator reports for one :class:`GpuCase` (twin ``GpuReport`` subset)."""

    throughput_tok_s: float
    offered_tok_s: float
    throughput_loss: float
    starved: bool
    oom: bool
    itl_ms_mean: float
    ttft_ms_p50: float
    ttft_ms_p99: float
    engine_tok_s: float = float("nan")
    starved_adapters: int = 0
    wall_s: float = 0.0


Evaluator = Callable[[GpuCase], GpuMetrics]
"""Anything that maps a GPU configuration to metrics: the twin, or a synthetic model in tests."""
