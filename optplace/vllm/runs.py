"""Run folders from live replays: :func:`run_from_replay` turns a finished replay into the ``run.json``
document of :mod:`optplace.calibration.run_records` (which holds the format, the record types and the
reader/writer, re-exported here), and :func:`kv_tokens_from_log` reads a server's KV capacity from its
start-up log. Nothing here needs vLLM.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from optplace.calibration.run_records import KIND, RunError, RunServer, SavedRun, load_run, save_run
from optplace.vllm.loadgen import ReplayResult

__all__ = ["RunError", "RunServer", "SavedRun", "kv_tokens_from_log", "load_run", "run_from_replay", "save_run"]

# vLLM prints e.g. "CPU KV cache size: 524,288 tokens" / "GPU KV cache size: 305,104 tokens"
# (vllm/v1/core/kv_cache_utils.py); the last occurrence is the current start.
_KV_LINE = re.compile(r"KV cache size:\s*([\d,]+)\s*tokens")


def kv_tokens_from_log(log_text: str) -> int | None:
    """KV-cache capacity [tokens] a vLLM server reported in its start-up log, or None."""
    found = _KV_LINE.findall(log_text)
    return int(found[-1].replace(",", "")) if found else None


def run_from_replay(
    replay: ReplayResult,
    servers: Sequence[RunServer],
    adapter_ranks: Mapping[str, int],
    label: str,
    probes: Mapping[str, Any] | None = None,
    result: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``run.json`` document of a finished replay."""
    recs = replay.requests

    def opt(x: float | None) -> float | None:
        return None if x is None else round(x, 5)

    return {
        "kind": KIND,
        "format": 1,
        "label": label,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "window_s": replay.window_s,
        "seed": replay.seed,
        "adapter_names": list(replay.adapter_names),
        "adapter_ranks": {k: int(v) for k, v in adapter_ranks.items()},
        "servers": [
            {
                "gpu": s.gpu,
                "max_loras": s.max_loras,
                "max_cpu_loras": s.max_cpu_loras,
                "max_lora_rank": s.max_lora_rank,
                "max_num_seqs": s.max_num_seqs,
                "max_num_batched_tokens": s.max_num_batched_tokens,
                "adapters": list(s.adapters),
                "kv_cache_tokens": s.kv_cache_tokens,
                "status": s.status,
                "reason": s.reason,
            }
            for s in servers
        ],
        "result": dict(result) if result is not None else replay.to_json(),
        "requests": {
            "adapter": [r.adapter for r in recs],
            "gpu": [r.gpu for r in recs],
            "arrival_s": [round(r.arrival_s, 6) for r in recs],
            "max_tokens": [r.max_tokens for r in recs],
            "sent_s": [round(r.sent_s, 5) for r in recs],
            "first_s": [opt(r.first_token_s) for r in recs],
            "done_s": [opt(r.done_s) for r in recs],
            "input_tokens": [r.input_tokens for r in recs],
            "output_tokens": [r.output_tokens for r in recs],
            "status": [r.status for r in recs],
            "gaps_ms": [[round(g * 1000, 3) for g in r.chunk_gaps_s] for r in recs],
        },
        "probes": dict(probes or {}),
    }
