"""Saved real-engine runs: the folder format ``validate --engine vllm --out`` and the calibration sweep
write, and ``optplace calibrate --runs`` reads (the records and their reader/writer; the conversion of a
live replay into this format is :func:`optplace.vllm.runs.run_from_replay`).

A run folder holds ``run.json``::

    {"kind": "optplace-vllm-run", "format": 1, "label", "created", "window_s", "seed",
     "adapter_names": [...], "adapter_ranks": {name: rank},
     "servers": [{"gpu", "max_loras", "max_cpu_loras", "max_lora_rank", "max_num_seqs",
                  "max_num_batched_tokens", "adapters", "kv_cache_tokens", "status", "reason"}],
     "result": <simulate --json shaped measured result>,
     "requests": {"adapter": [...], "gpu": [...], "arrival_s": [...], "max_tokens": [...], "sent_s": [...],
                  "first_s": [...], "done_s": [...], "input_tokens": [...], "output_tokens": [...],
                  "status": [...], "gaps_ms": [[...], ...]},
     "probes": {...}}     # optional: adapter-load probe TTFTs (see optplace.vllm.sweep)

Times are seconds from the window start; ``gaps_ms`` are the gaps between consecutive streamed chunks
of each request (the raw material of the step-time fit in :mod:`optplace.calibration.runs_fit`).
Pure Python and NumPy: nothing here needs vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KIND", "RunError", "RunServer", "SavedRun", "load_run", "save_run"]

KIND = "optplace-vllm-run"


class RunError(ValueError):
    """A run folder is missing or not in the format above."""


@dataclass(frozen=True, slots=True)
class RunServer:
    """One server of a run: its vLLM knobs and what its start-up log said."""

    gpu: int
    max_loras: int
    max_cpu_loras: int | None
    max_lora_rank: int | None
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    adapters: tuple[str, ...]
    kv_cache_tokens: int | None = None
    status: str = "ok"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SavedRun:
    """A run as read back: arrays per request, servers, the measured result and optional probes."""

    label: str
    window_s: float
    seed: int
    adapter_names: tuple[str, ...]
    adapter_ranks: Mapping[str, int]
    servers: tuple[RunServer, ...]
    result: Mapping[str, Any]
    adapter: np.ndarray
    gpu: np.ndarray
    sent_s: np.ndarray
    first_s: np.ndarray  # NaN: no token seen
    done_s: np.ndarray  # NaN: not completed in the window
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    status: tuple[str, ...]
    gaps_ms: tuple[np.ndarray, ...]
    arrival_s: np.ndarray  # scheduled arrival (the workload's), s
    max_tokens: np.ndarray  # requested output length
    probes: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def server(self, gpu: int) -> RunServer:
        """The server of GPU ``gpu``."""
        for s in self.servers:
            if s.gpu == gpu:
                return s
        raise KeyError(gpu)


def save_run(doc: Mapping[str, Any], out_dir: Path) -> Path:
    """Write ``run.json`` into ``out_dir`` (created); return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run.json"
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def load_run(path: Path) -> SavedRun:
    """Read a run folder (or its ``run.json``); raise :class:`RunError` saying what is wrong."""
    p = Path(path)
    f = p / "run.json" if p.is_dir() else p
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RunError(f"{f}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RunError(f"{f}: not a run.json ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise RunError(f"{f}: not a run written by optplace (kind != {KIND!r})")
    try:
        rq = doc["requests"]
        n = len(rq["adapter"])
        cols = ("gpu", "sent_s", "first_s", "done_s", "input_tokens", "output_tokens", "status", "gaps_ms")
        if any(len(rq[c]) != n for c in cols):
            raise RunError(f"{f}: request columns differ in length")
        servers = tuple(
            RunServer(
                gpu=int(s["gpu"]),
                max_loras=int(s["max_loras"]),
                max_cpu_loras=s.get("max_cpu_loras"),
                max_lora_rank=s.get("max_lora_rank"),
                max_num_seqs=s.get("max_num_seqs"),
                max_num_batched_tokens=s.get("max_num_batched_tokens"),
                adapters=tuple(s["adapters"]),
                kv_cache_tokens=s.get("kv_cache_tokens"),
                status=str(s.get("status", "ok")),
                reason=str(s.get("reason", "")),
            )
            for s in doc["servers"]
        )
        return SavedRun(
            label=str(doc.get("label", f.parent.name)),
            window_s=float(doc["window_s"]),
            seed=int(doc.get("seed", 0)),
            adapter_names=tuple(doc["adapter_names"]),
            adapter_ranks={k: int(v) for k, v in doc["adapter_ranks"].items()},
            servers=servers,
            result=doc.get("result") or {},
            adapter=np.asarray(rq["adapter"], dtype=np.int64),
            gpu=np.asarray(rq["gpu"], dtype=np.int64),
            sent_s=_floats(rq["sent_s"]),
            first_s=_floats(rq["first_s"]),
            done_s=_floats(rq["done_s"]),
            input_tokens=np.asarray(rq["input_tokens"], dtype=np.int64),
            output_tokens=np.asarray(rq["output_tokens"], dtype=np.int64),
            status=tuple(map(str, rq["status"])),
            gaps_ms=tuple(np.asarray(g, dtype=np.float64) for g in rq["gaps_ms"]),
            arrival_s=_floats(rq.get("arrival_s", rq["sent_s"])),
            max_tokens=np.maximum(np.asarray(rq.get("max_tokens", rq["output_tokens"]), dtype=np.int64), 1),
            probes=doc.get("probes") or {},
            path=f.parent,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, RunError):
            raise
        raise RunError(f"{f}: malformed run ({type(exc).__name__}: {exc})") from None
