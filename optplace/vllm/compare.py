"""Twin versus real engine: per-GPU errors and verdicts, and the table ``validate --engine vllm`` prints.

Both sides use the per-GPU ``simulate --json`` schema (twin: :class:`optplace.twin.simulate.GpuReport`
as JSON; real: :class:`optplace.vllm.loadgen.GpuResult` as JSON), so this module works on plain
dicts and never imports the twin or vLLM. Compared per GPU, as the issue's acceptance asks:

- ``engine_tok_s``: prefill + decode tokens processed in the window (real: the server's own
  prompt/generation token counters; twin: the work its engine did);
- ``throughput_tok_s``: tokens of requests completed inside the window (both sides);
- the starvation verdict (``starved``, or ``oom`` for a server that did not start);
- the set of adapters that had offered load and completed nothing (slot stickiness shows here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optplace.calibration.runs_fit import rel_error

__all__ = ["GpuComparison", "compare_gpu", "compare_runs", "rel_error", "render_comparison"]


def zero_completion_adapters(gpu: Mapping[str, Any]) -> tuple[str, ...]:
    """Adapters of a GPU result with offered load and no request completed in the window."""
    return tuple(
        sorted(
            p["name"]
            for p in gpu.get("per_adapter", ())
            if (p.get("offered_tok_s") or 0) > 0 and int(p.get("completed") or 0) == 0
        )
    )


@dataclass(frozen=True, slots=True)
class GpuComparison:
    """One GPU: the twin's and the real engine's figures, their relative errors and verdicts."""

    index: int
    max_loras: int | None
    adapters: int
    offered_tok_s: float
    twin_engine_tok_s: float | None
    real_engine_tok_s: float | None
    twin_throughput_tok_s: float
    real_throughput_tok_s: float
    twin_starved: bool
    real_starved: bool
    twin_oom: bool
    real_oom: bool
    twin_zero: tuple[str, ...]
    real_zero: tuple[str, ...]

    @property
    def engine_error(self) -> float | None:
        """Relative error of the twin's engine token rate (None when the server exposed no counters)."""
        return rel_error(self.twin_engine_tok_s, self.real_engine_tok_s)

    @property
    def throughput_error(self) -> float | None:
        """Relative error of the twin's completed-token throughput."""
        return rel_error(self.twin_throughput_tok_s, self.real_throughput_tok_s)

    @property
    def same_verdict(self) -> bool:
        """Both sides agree on starved and on failing at start."""
        return self.twin_starved == self.real_starved and self.twin_oom == self.real_oom

    @property
    def same_zero_set(self) -> bool:
        """Both sides name the same adapters as completing nothing."""
        return self.twin_zero == self.real_zero

    def within(self, tolerance: float) -> bool:
        """Token rates within ``tolerance`` (relative), same verdict and same zero-completion set.

        A GPU that failed to start on both sides passes on the verdicts alone (no rates to compare).
        """
        if self.twin_oom and self.real_oom:
            return True
        errs = [self.engine_error, self.throughput_error]
        return all(e is not None and abs(e) <= tolerance for e in errs) and self.same_verdict and self.same_zero_set

    def to_json(self) -> dict[str, Any]:
        """Plain-dict form (``comparison`` entries of ``validate --engine vllm --json``)."""

        def num(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else round(x, 4)

        return {
            "index": self.index,
            "max_loras": self.max_loras,
            "adapters": self.adapters,
            "offered_tok_s": num(self.offered_tok_s),
            "engine_tok_s": {
                "twin": num(self.twin_engine_tok_s),
                "real": num(self.real_engine_tok_s),
                "error": num(self.engine_error),
            },
            "throughput_tok_s": {
                "twin": num(self.twin_throughput_tok_s),
                "real": num(self.real_throughput_tok_s),
                "error": num(self.throughput_error),
            },
            "starved": {"twin": self.twin_starved, "real": self.real_starved},
            "oom": {"twin": self.twin_oom, "real": self.real_oom},
            "zero_completion_adapters": {"twin": list(self.twin_zero), "real": list(self.real_zero)},
            "same_verdict": self.same_verdict,
            "same_zero_set": self.same_zero_set,
        }


def compare_gpu(twin: Mapping[str, Any], real: Mapping[str, Any]) -> GpuComparison:
    """Compare one GPU's twin result with its measured result (both ``simulate --json`` GPU dicts)."""
    return GpuComparison(
        index=int(real.get("index", twin.get("index", 0))),
        max_loras=real.get("max_loras", twin.get("max_loras")),
        adapters=len(real.get("adapters") or twin.get("adapters") or ()),
        offered_tok_s=float(real.get("offered_tok_s") or twin.get("offered_tok_s") or 0.0),
        twin_engine_tok_s=twin.get("engine_tok_s"),
        real_engine_tok_s=real.get("engine_tok_s"),
        twin_throughput_tok_s=float(twin.get("throughput_tok_s") or 0.0),
        real_throughput_tok_s=float(real.get("throughput_tok_s") or 0.0),
        twin_starved=bool(twin.get("starved")),
        real_starved=bool(real.get("starved")),
        twin_oom=bool(twin.get("oom")),
        real_oom=bool(real.get("oom")),
        twin_zero=zero_completion_adapters(twin),
        real_zero=zero_completion_adapters(real),
    )


def compare_runs(
    twin_gpus: Sequence[Mapping[str, Any]], real_gpus: Sequence[Mapping[str, Any]]
) -> tuple[GpuComparison, ...]:
    """Pair GPUs by position (both come from the same plan, in plan order) and compare each."""
    if len(twin_gpus) != len(real_gpus):
        raise ValueError(f"twin has {len(twin_gpus)} GPUs but the real run has {len(real_gpus)}")
    return tuple(compare_gpu(t, r) for t, r in zip(twin_gpus, real_gpus))


def _pct(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if not math.isfinite(x) else f"{x * 100:+.1f}%"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def render_comparison(
    rows: Sequence[GpuComparison], labels: Sequence[str] | None = None, tolerance: float = 0.15
) -> str:
    """A compact fixed-width table (one line per GPU) for terminals and ``pytest -s`` logs."""
    head = (
        f"{'config':<14} {'slots':>5} {'ad':>3} {'offered':>8} {'engine twin/real':>17} {'err':>7} "
        f"{'thr twin/real':>14} {'err':>7} {'starved t/r':>11} {'zero-completion twin | real':<30} ok"
    )
    lines = [head, "-" * len(head)]
    for k, c in enumerate(rows):
        label = labels[k] if labels is not None else f"gpu{c.index}"
        zero = f"{','.join(c.twin_zero) or '-'} | {','.join(c.real_zero) or '-'}"
        verdict = f"{'oom' if c.twin_oom else c.twin_starved!s:.5}/{'oom' if c.real_oom else c.real_starved!s:.5}"
        lines.append(
            f"{label[:14]:<14} {c.max_loras if c.max_loras is not None else '-':>5} {c.adapters:>3} "
            f"{c.offered_tok_s:>8.0f} {_rate(c.twin_engine_tok_s) + '/' + _rate(c.real_engine_tok_s):>17} "
            f"{_pct(c.engine_error):>7} {_rate(c.twin_throughput_tok_s) + '/' + _rate(c.real_throughput_tok_s):>14} "
            f"{_pct(c.throughput_error):>7} {verdict:>11} {zero:<30} {'yes' if c.within(tolerance) else 'NO'}"
        )
    return "\n".join(lines)
