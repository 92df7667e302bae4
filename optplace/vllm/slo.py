"""The real engine judged by the twin's SLO rule: per-GPU and per-adapter verdicts from a replay's requests.

The twin judges a GPU with :func:`optplace.twin.simulate.judge_slo` on its steady state (requests arriving
at or after the rule's warm-up): each bound against the latency of those requests, the backlog's growth
(steady-state arrivals minus the requests finished in the steady state) against its allowance (which
counts the requests in service, from the completed requests' decode times), and
"offered load, nothing served". :func:`judge_records` feeds the same function with the same figures
measured on the real engine (latency by :func:`optplace.vllm.loadgen.window_latency_of`, the twin's
definitions), so a real verdict and the twin's differ only by what the engine did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from optplace.twin.simulate import SloRule, SloVerdict, in_service, judge_slo

from optplace.vllm.loadgen import RequestRecord, window_latency_of

__all__ = ["judge_records", "verdict_json"]


def judge_records(
    records: Sequence[RequestRecord],
    adapters: Sequence[str],
    index: Mapping[str, int],
    window_s: float,
    rule: SloRule,
) -> tuple[SloVerdict, tuple[SloVerdict, ...]]:
    """The SLO verdict of one real GPU and of each of its ``adapters`` (``rule.adapter_bounds`` in that order).

    ``records``: the GPU's requests (every status); ``index`` maps an adapter name to the ``adapter`` index
    the records carry. Steady state starts at ``rule.warmup_s``, as in the twin."""
    warm_frac = rule.warmup_s / window_s
    mine = [[r for r in records if r.adapter == index[name]] for name in adapters]
    ad_lat = [window_latency_of(rs, window_s, warm_frac) for rs in mine]
    gpu_lat = window_latency_of([r for rs in mine for r in rs], window_s, warm_frac)
    arrived = np.array([sum(1 for r in rs if rule.warmup_s <= r.arrival_s < window_s) for rs in mine])
    finished = np.array(
        [sum(1 for r in rs if r.status == "ok" and r.done_s is not None and r.done_s > rule.warmup_s) for rs in mine]
    )
    done = [
        (k, r)
        for k, rs in enumerate(mine)
        for r in rs
        if r.status == "ok" and r.first_token_s is not None and r.done_s is not None
    ]
    serving = in_service(
        np.array([k for k, _ in done], dtype=int),
        np.array([r.arrival_s for _, r in done]),
        np.array([r.first_token_s for _, r in done]),
        np.array([r.done_s for _, r in done]),
        arrived,
        rule,
        window_s,
    )
    return judge_slo(rule, adapters, gpu_lat, ad_lat, arrived, finished, serving)


def verdict_json(v: SloVerdict) -> dict[str, Any]:
    """A verdict in the shape of the twin's ``slo`` entries of ``simulate --json``."""
    d = asdict(v)
    d["violating_adapters"] = list(v.violating_adapters)
    return d
