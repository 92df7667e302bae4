"""The real engine judged by the twin's SLO rule (``optplace.vllm.slo``) and the SLO comparison twin vs real
(``optplace.vllm.compare``): synthetic request records, no vLLM needed."""

from __future__ import annotations

import numpy as np
import pytest

from optplace.twin.simulate import SloRule, judge_slo
from optplace.vllm.compare import compare_gpu, mean_of_runs, render_slo
from optplace.vllm.loadgen import RequestRecord, window_latency_of
from optplace.vllm.slo import judge_records, verdict_json

WINDOW = 20.0
BOUNDS = (("ttft_p99_ms", 200.0), ("tpot_p99_ms", 50.0))


def _req(i: int, adapter: int, arrival: float, ttft: float, tpot: float = 0.02, out: int = 5, done: bool = True):
    """A request sent at its arrival, first token after ``ttft`` s, then one token every ``tpot`` s."""
    first = arrival + ttft
    last = first + tpot * (out - 1)
    return RequestRecord(
        index=i,
        adapter=adapter,
        gpu=0,
        arrival_s=arrival,
        sent_s=arrival,
        input_tokens=10,
        max_tokens=out,
        status="ok" if done else "cancelled",
        first_token_s=first if done else None,
        done_s=last + 0.001 if done else None,
        output_tokens=out if done else 0,
        chunk_gaps_s=(tpot,) * (out - 1) if done else (),
        last_token_s=last if done else None,
    )


def _records() -> list[RequestRecord]:
    """Adapter 0 (index 2 in the run's adapter list): fast. Adapter 1 (index 0): a slow first token after the
    warm-up. Adapter 2 (index 1): offered load, nothing served. A slow request of adapter 0 arrives in the
    warm-up only, so it must not count."""
    recs = [_req(i, 2, 1.0 + i, 0.05) for i in range(15)]
    recs.append(_req(99, 2, 0.5, 1.5))  # warm-up: left out of the steady state
    recs += [_req(100 + i, 0, 2.5 + i, 0.5 if i == 3 else 0.05) for i in range(10)]
    recs += [_req(200 + i, 1, 3.0 + i, 0.0, done=False) for i in range(4)]
    return recs


def test_real_verdicts_are_the_twins_rule_on_the_measured_requests():
    names = ["fast", "slow", "unserved"]
    index = {"fast": 2, "slow": 0, "unserved": 1}
    rule = SloRule("adapter", 2.0, BOUNDS, (BOUNDS, BOUNDS, BOUNDS))
    recs = _records()
    gpu, per = judge_records(recs, names, index, WINDOW, rule)
    fast, slow, unserved = per
    assert fast.ok and fast.arrived == 14 and fast.checks[0].value == pytest.approx(50.0)
    assert not slow.ok and slow.stable and not slow.checks[0].ok and slow.checks[0].value > 200.0
    assert slow.checks[1].ok and slow.checks[1].value == pytest.approx(20.0)
    assert not unserved.ok and unserved.served_nothing and unserved.arrived == 4
    assert not gpu.ok and gpu.violating_adapters == ("slow", "unserved") and gpu.arrived == 28
    # the GPU's TTFT check is its worst adapter's
    assert gpu.checks[0].adapter == "slow" and gpu.checks[0].value == slow.checks[0].value
    # exactly judge_slo on the records' steady-state latency (the twin's definitions), nothing re-derived
    mine = [[r for r in recs if r.adapter == index[n]] for n in names]
    lat = [window_latency_of(rs, WINDOW, 0.1) for rs in mine]
    arrived = np.array([sum(r.arrival_s >= 2.0 for r in rs) for rs in mine])
    finished = np.array([sum(r.status == "ok" and r.done_s > 2.0 for r in rs) for rs in mine])

    # the allowance's requests in service: steady arrival rate x mean decode time of the completed ones
    def decoding(rs):
        done = [r.done_s - r.first_token_s for r in rs if r.status == "ok" and r.arrival_s >= 2.0]
        return (sum(done) / len(done) if done else 0.0) * sum(r.arrival_s >= 2.0 for r in rs) / (WINDOW - 2.0)

    serving = np.array([decoding(rs) for rs in mine])
    assert serving[0] > 0 and serving[2] == 0.0  # "unserved" completed nothing
    twin_rule = judge_slo(rule, names, window_latency_of(recs, WINDOW, 0.1), lat, arrived, finished, serving)
    assert twin_rule == (gpu, per)
    # a longer warm-up leaves the slow request out too: the steady state follows the rule's warm-up
    _, per_late = judge_records(recs, names, index, WINDOW, SloRule("adapter", 6.0, BOUNDS, (BOUNDS,) * 3))
    assert per_late[1].ok


def test_a_growing_backlog_fails_the_real_verdict():
    # requests keep arriving and few finish: the backlog grows past its allowance even though the few
    # completed ones were fast
    recs = [_req(i, 0, 2.0 + 0.1 * i, 0.05, done=i < 5) for i in range(100)]
    rule = SloRule("adapter", 1.0, BOUNDS, (BOUNDS,))
    gpu, (ad,) = judge_records(recs, ["a"], {"a": 0}, WINDOW, rule)
    assert not ad.stable and not ad.ok and ad.backlog_growth == 95 and all(c.ok for c in ad.checks)
    assert not gpu.ok and not gpu.stable


def _side(verdicts: list[tuple[str, bool, float]]) -> dict:
    """A simulate --json GPU dict with per-adapter SLO verdicts (name, ok, TTFT p99)."""
    per = []
    for name, ok, ttft in verdicts:
        checks = [{"metric": "ttft_p99_ms", "value": ttft, "bound": 200.0, "ok": ttft <= 200.0, "adapter": None}]
        per.append({"name": name, "offered_tok_s": 1.0, "completed": 3, "slo": {"ok": ok, "checks": checks}})
    return {"index": 0, "adapters": [v[0] for v in verdicts], "per_adapter": per, "offered_tok_s": 2.0}


def test_slo_comparison_pairs_verdicts_and_values_per_adapter():
    twin = _side([("a", True, 120.0), ("b", False, 250.0)])
    real = _side([("a", True, 100.0), ("b", True, 190.0)])
    c = compare_gpu(twin, real)
    a, b = c.adapter_slo
    assert a.agree and a.error("ttft_p99_ms") == pytest.approx(0.2) and a.error("tpot_p99_ms") is None
    assert not b.agree and not c.same_slo_verdicts
    assert c.to_json()["per_adapter_slo"][0]["ttft_p99_ms"] == {
        "bound": 200.0,
        "twin": 120.0,
        "real": 100.0,
        "error": 0.2,
    }
    table = render_slo([c], ["cfg"])
    assert "True/True" in table and "False/True" in table and "NO" in table and "+20.0%" in table
    # one side without a verdict (slo: none): nothing compared, and nothing to disagree on
    del real["per_adapter"][1]["slo"]
    assert [x.name for x in compare_gpu(twin, real).adapter_slo] == ["a"]
    assert compare_gpu(twin, real).same_slo_verdicts


def test_verdict_json_is_the_twins_shape():
    rule = SloRule("adapter", 2.0, BOUNDS, (BOUNDS,))
    gpu, (ad,) = judge_records([_req(i, 0, 3.0 + i, 0.05) for i in range(5)], ["a"], {"a": 0}, WINDOW, rule)
    d = verdict_json(gpu)
    assert (
        d["ok"]
        and d["violating_adapters"] == []
        and [c["metric"] for c in d["checks"]] == ["ttft_p99_ms", "tpot_p99_ms"]
    )
    assert set(verdict_json(ad)) == set(d)


def test_repeated_runs_meet_an_slo_only_if_every_run_does():
    met, missed = _side([("a", True, 120.0)]), _side([("a", False, 260.0)])
    met["starved"], missed["starved"] = False, True
    m = mean_of_runs([met, missed])
    assert m["starved"] and not m["per_adapter"][0]["slo"]["ok"]
    assert m["per_adapter"][0]["slo"]["checks"][0]["value"] == 190.0
    assert mean_of_runs([met, met])["per_adapter"][0]["slo"]["ok"]
