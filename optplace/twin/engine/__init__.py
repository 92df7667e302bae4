"""Discrete-step model of one vLLM V1 engine (0.8.5 semantics) serving many LoRA adapters.

The engine is split by concept (``docs/twin.md`` describes what it models and what it leaves out):

* :mod:`optplace.twin.engine.config`: :class:`EngineConfig`, one engine's LoRA configuration, KV
  capacity and time models (built from a profile by :func:`engine_config_from_profile`), and the
  protocols the engine needs from the time models and the workload.
* :mod:`optplace.twin.engine.core`: :class:`EngineCore`, the clock-free scheduler (a transcription of
  vLLM V1's ``Scheduler.schedule()`` / ``update_from_output()`` with LoRA slots, paged KV blocks,
  chunked prefill and recompute preemption), and :class:`StepPlan`, one step's decision.
* :mod:`optplace.twin.engine.clock`: :func:`simulate_engine`, which advances the core in time (step
  time, scheduler overhead, adapter loads), fast-forwards runs of identical decode steps and lets
  SimPy drive arrivals.
* :mod:`optplace.twin.engine.result`: :class:`EngineResult`, the outcome of one run.
"""

from __future__ import annotations

from optplace.twin.engine.clock import simulate_engine
from optplace.twin.engine.config import (
    EngineConfig,
    OverheadModel,
    StepTimeModelLike,
    WorkloadLike,
    engine_config_from_profile,
)
from optplace.twin.engine.core import EngineCore, StepPlan
from optplace.twin.engine.result import EngineResult

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
