"""Load generator against an in-process fake OpenAI server: window accounting, cancellation, errors."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from optplace.vllm.launcher import pick_free_port
from optplace.vllm.loadgen import Endpoint, LoadgenError, endpoints_from_routes, replay
from helpers import GPU_RESULT_KEYS
from vllm_helpers import ArrayWorkload, FakeVllm

NAMES = ("a0", "a1", "a2")


def workload() -> ArrayWorkload:
    # a0 and a1: short requests early in the window (complete); a2: long outputs (cut at the window end)
    arrival = np.array([0.05, 0.10, 0.20, 0.30, 0.40, 0.50, 1.0])
    adapter = np.array([0, 1, 0, 2, 1, 2, 0], dtype=np.int32)
    inp = np.array([10, 20, 30, 40, 50, 60, 70], dtype=np.int32)
    out = np.array([4, 4, 4, 2000, 4, 2000, 4], dtype=np.int32)
    return ArrayWorkload(arrival, adapter, inp, out, 2.0)


def test_replay_counts_completed_in_window_and_cancels_the_rest():
    pytest.importorskip("prometheus_client")  # the engine rate is read from /metrics (the `vllm` extra)

    async def main():
        f0, f1 = (
            FakeVllm(adapters=("a0", "a1"), ttft_s=0.05, token_s=0.01),
            FakeVllm(adapters=("a2",), ttft_s=0.05, token_s=0.01),
        )
        eps = (Endpoint(0, await f0.start(), ("a0", "a1"), max_loras=2), Endpoint(1, await f1.start(), ("a2",)))
        t = time.monotonic()
        res = await replay(workload(), NAMES, eps, seed=3, token_id_range=(4, 100), sample_every_s=0.5)
        wall = time.monotonic() - t
        await asyncio.sleep(0.1)  # let the fake notice the disconnects
        await f0.stop(), await f1.stop()
        return res, wall, f0, f1

    res, wall, f0, f1 = asyncio.run(main())
    assert 2.0 <= wall < 10.0
    g0, g1 = res.gpus
    assert [r.status for r in sorted(res.requests, key=lambda r: r.index)] == [
        "ok",
        "ok",
        "ok",
        "cancelled",
        "ok",
        "cancelled",
        "ok",
    ]
    # offered = all arrived input+output tokens / window; throughput = completed ones / window
    assert g0.offered_tok_s == pytest.approx((14 + 24 + 34 + 54 + 74) / 2.0)
    assert (
        g0.throughput_tok_s == pytest.approx(g0.offered_tok_s)
        and not g0.starved
        and g0.throughput_loss == pytest.approx(0)
    )
    assert g1.offered_tok_s == pytest.approx((2040 + 2060) / 2.0) and g1.throughput_tok_s == 0.0
    assert g1.starved and g1.starved_adapters == ("a2",) and g0.starved_adapters == ()
    assert {p.name: p.completed for p in g0.per_adapter} == {"a0": 3, "a1": 2}
    assert f1.aborted == 2 and f1.finished == 0 and f0.finished == 5  # cancelled requests were disconnected
    # prompts are token-id lists of the exact length, sent to the right server
    assert sorted((m, n) for m, n, _, _ in f0.received) == [("a0", 10), ("a0", 30), ("a0", 70), ("a1", 20), ("a1", 50)]
    # latencies: TTFT ~ 50 ms, ITL ~ 10 ms
    assert 40 <= g0.ttft_ms_p50 < 1000 and 5 <= g0.itl_ms_mean < 200  # generous: the machine is shared
    # engine counters from /metrics deltas: g1 generated tokens although nothing completed
    assert g1.engine_tok_s is not None and g1.engine_tok_s > 50
    # per second of the window (as the twin counts), not of the slightly longer interval between the scrapes
    assert g0.engine_tok_s == pytest.approx((180 + 20) / 2.0, rel=1e-6) and res.metrics_delta[0]["seconds"] > 2.0
    assert g0.max_loras == 2 and any(s.gpu == 1 for s in res.samples)
    doc = res.to_json()
    assert doc["engine"] == "vllm" and doc["simulated_s"] == 2.0 and doc["requests"]["cancelled"] == 2
    assert set(doc["gpus"][0]) >= GPU_RESULT_KEYS


def test_bad_endpoints_fail_fast_with_clear_errors():
    async def main():
        fake = FakeVllm(adapters=("a0",))
        url = await fake.start()
        dead = f"http://127.0.0.1:{pick_free_port()}"
        wl = workload()
        errs = []
        for eps in [
            (Endpoint(0, url, ("a0", "a1", "a2")),),
            (Endpoint(0, url, ("a0",)), Endpoint(1, dead, ("a1", "a2"))),
        ]:
            with pytest.raises(LoadgenError) as e:
                await replay(wl, NAMES, eps, preflight_timeout_s=2.0)
            errs.append(str(e.value))
        with pytest.raises(LoadgenError, match=r"no endpoint serves adapters \['a1', 'a2'\]"):
            await replay(wl, NAMES, (Endpoint(0, url, ("a0",)),))
        with pytest.raises(LoadgenError, match="only 2 names"):
            await replay(wl, NAMES[:2], (Endpoint(0, url, ("a0",)),))
        await fake.stop()
        return errs, dead, len(fake.received)

    (not_served, unreachable), dead, sent = asyncio.run(main())
    assert "adapters not served there: ['a1', 'a2']" in not_served
    assert dead in unreachable and "unreachable" in unreachable
    assert sent == 0  # nothing was sent before the checks passed


def test_routes_document():
    eps = endpoints_from_routes({"endpoints": [{"gpu": 0, "url": "http://h:1", "adapters": ["x"]}]})
    assert eps == (Endpoint(0, "http://h:1", ("x",)),)
    with pytest.raises(LoadgenError, match="endpoints"):
        endpoints_from_routes({"adapters": {}})


def test_summarise_uses_the_twins_starvation_rules():
    from optplace.vllm.loadgen import RequestRecord, Sample, summarise

    def rec(i, adapter, status, n_in=100, n_out=100):
        return RequestRecord(
            index=i,
            adapter=adapter,
            gpu=0,
            arrival_s=i,
            sent_s=i,
            input_tokens=n_in,
            max_tokens=n_out,
            status=status,
            output_tokens=n_out if status == "ok" else 7,
        )

    # adapter 0: 19 of 19 complete; adapter 1: 1 of 2 -> GPU loss 1/21 < 0.10, adapter 1 loss 0.5
    records = [rec(i, 0, "ok") for i in range(19)] + [rec(19, 1, "ok"), rec(20, 1, "cancelled")]
    ep = Endpoint(0, "http://x", ("a0", "a1"), max_loras=1, gpu_type="cpu")
    samples = [Sample(0, 1.0, 3, 10, 0.5, 0, ("a0",)), Sample(0, 3.0, 5, 4, 0.2, 0, ("a1",))]
    (g,) = summarise(records, ("a0", "a1"), (ep,), 10.0, samples=samples)
    assert g.offered_tok_s == pytest.approx(21 * 200 / 10) and g.throughput_tok_s == pytest.approx(20 * 200 / 10)
    assert g.throughput_loss == pytest.approx(1 / 21) and not g.starved
    assert g.starved_adapters == ("a1",)  # own loss 0.5 >= 0.10
    assert (g.max_running, g.max_waiting, g.gpu_type) == (5, 10, "cpu")
    (g,) = summarise(records, ("a0", "a1"), (ep,), 10.0, max_adapter_loss=0.6)
    assert g.starved_adapters == () and not g.starved
    (g,) = summarise(records, ("a0", "a1"), (ep,), 10.0, max_adapter_loss=0.5)
    assert g.starved_adapters == ("a1",) and g.starved
    (g,) = summarise(records, ("a0", "a1"), (ep,), 10.0, max_throughput_loss=1 / 21)
    assert g.starved  # at the threshold counts as starved, as in the twin


def test_server_dying_mid_replay_gives_errors_not_a_hang():
    async def main():
        fake = FakeVllm(adapters=("a0",), ttft_s=0.01, token_s=0.01)
        url = await fake.start()
        wl = ArrayWorkload(
            np.array([0.1, 0.2, 1.5, 1.6]),
            np.zeros(4, np.int32),
            np.full(4, 8, np.int32),
            np.array([3, 500, 3, 3], np.int32),
            2.5,
        )

        async def kill_later():
            await asyncio.sleep(1.0)
            await fake.stop()  # closes the listener; the long request's stream is cut too

        killer = asyncio.create_task(kill_later())
        t = time.monotonic()
        res = await replay(wl, ("a0",), (Endpoint(0, url, ("a0",)),), sample_every_s=0.3)
        await killer
        return res, time.monotonic() - t

    res, wall = asyncio.run(main())
    assert wall < 15
    status = [r.status for r in sorted(res.requests, key=lambda r: r.index)]
    assert status[0] == "ok" and status[2:] == ["error", "error"]
    assert status[1] in ("error", "cancelled")
    assert all("Connect" in r.error or "refused" in r.error.lower() for r in res.requests[2:])
    (g,) = res.gpus
    assert g.errors >= 2 and g.engine_tok_s is None  # the closing scrape failed: no engine rate, not a crash


def test_real_latency_has_the_twins_keys_and_definitions():
    """TTFT from the send time, mean ITL = Σ(last − first) / Σ(output − 1), ITL percentiles over chunk gaps,
    steady state = requests arriving after 10 % of the window: what the twin reports, computed on records."""
    from dataclasses import fields

    from optplace.twin.simulate import Latency
    from optplace.vllm.loadgen import RequestRecord, records_latency, summarise

    def rec(i, t, ttft, gaps, status="ok"):
        first = t + ttft
        return RequestRecord(
            index=i,
            adapter=i % 2,
            gpu=0,
            arrival_s=t,
            sent_s=t,
            input_tokens=10,
            max_tokens=len(gaps) + 1,
            status=status,
            first_token_s=first,
            done_s=first + sum(gaps) + 0.001 if status == "ok" else None,
            output_tokens=len(gaps) + 1,
            chunk_gaps_s=tuple(gaps),
            last_token_s=first + sum(gaps),
        )

    recs = [
        rec(0, 0.1, 0.5, [0.01, 0.03]),  # in the warm-up (window 10 s: warm-up 1 s)
        rec(1, 2.0, 0.1, [0.02, 0.02, 0.02, 0.06]),
        rec(2, 3.0, 0.2, []),  # one token: a TTFT, no gap
        rec(3, 4.0, 0.3, [0.05], status="cancelled"),  # not completed: not counted
    ]
    st = records_latency(recs)
    ttft = np.array([500.0, 100.0, 200.0])
    gaps = np.array([10.0, 30.0, 20.0, 20.0, 20.0, 60.0])
    assert st.completed == 3
    assert st.ttft_ms_p50 == pytest.approx(np.percentile(ttft, 50)) and st.ttft_ms_p99 == pytest.approx(
        np.percentile(ttft, 99)
    )
    assert st.itl_ms_mean == pytest.approx(gaps.sum() / 6) and st.itl_ms_p99 == pytest.approx(np.percentile(gaps, 99))
    assert st.tpot_ms_mean == pytest.approx((20.0 + 30.0) / 2)  # per request: 40/2 and 120/4
    ep = Endpoint(0, "http://x", ("a0", "a1"), max_loras=2)
    (g,) = summarise(recs, ("a0", "a1"), (ep,), 10.0)
    doc = g.to_json()
    assert set(doc["latency"]["window"]) == {f.name for f in fields(Latency)}
    assert doc["latency"]["warmup_s"] == pytest.approx(1.0)
    assert doc["latency"]["window"]["completed"] == 3 and doc["latency"]["steady"]["completed"] == 2
    assert doc["latency"]["steady"]["ttft_ms_p50"] == pytest.approx(150.0)
    assert doc["latency"]["window"]["loss"] == pytest.approx(g.throughput_loss)
    assert g.itl_ms_mean == pytest.approx(st.itl_ms_mean) and g.ttft_ms_p50 == pytest.approx(st.ttft_ms_p50)
    a0, a1 = doc["per_adapter"]
    assert a0["latency"]["window"]["completed"] == 2 and a1["latency"]["window"]["completed"] == 1
    assert a1["latency"]["window"]["itl_ms_mean"] == pytest.approx(30.0)


def test_replicas_get_the_given_routing_or_their_weights():
    """A replicated adapter's requests go to the GPU ``route_to`` names (the twin's routing); without it,
    by the endpoints' weights; an unrelated adapter stays on its only host."""
    n = 400
    arrival = np.linspace(0.01, 0.8, n)
    adapter = np.zeros(n, dtype=np.int32)
    adapter[::10] = 1  # every tenth request is the single-placed adapter's
    wl = ArrayWorkload(arrival, adapter, np.full(n, 4, dtype=np.int32), np.full(n, 1, dtype=np.int32), 1.5)
    route_to = np.where(np.arange(n) % 3 == 0, 1, 0)

    async def main(**kw):
        f0, f1 = FakeVllm(adapters=("hot", "cold"), ttft_s=0.0, token_s=0.0), FakeVllm(adapters=("hot",), ttft_s=0.0)
        eps = (
            Endpoint(0, await f0.start(), ("hot", "cold"), weights=(0.8, 1.0)),
            Endpoint(1, await f1.start(), ("hot",), weights=(0.2,)),
        )
        res = await replay(wl, ("hot", "cold"), eps, seed=7, token_id_range=(4, 100), sample_every_s=5.0, **kw)
        await f0.stop(), await f1.stop()
        return res

    given = asyncio.run(main(route_to=route_to))
    gpu_of = {r.index: r.gpu for r in given.requests}
    hot = np.flatnonzero(adapter == 0)
    assert all(gpu_of[int(i)] == route_to[i] for i in hot)
    assert all(gpu_of[int(i)] == 0 for i in np.flatnonzero(adapter == 1))  # route_to names GPU 1: not a host
    weighted = asyncio.run(main())
    on1 = sum(1 for r in weighted.requests if r.adapter == 0 and r.gpu == 1)
    # binomial(360, 0.2): 72 +- 5 sigma
    assert abs(on1 - 0.2 * hot.size) < 5 * (hot.size * 0.2 * 0.8) ** 0.5
    assert all(r.gpu == 0 for r in weighted.requests if r.adapter == 1)
    with pytest.raises(LoadgenError, match="routing targets"):
        asyncio.run(main(route_to=route_to[:-1]))


def test_replay_through_a_router_counts_each_request_where_the_router_sent_it():
    """With ``router_url`` every request goes to the router (the built-in one, over a routes document with
    a 70/30 replica): each request counts on the server that received it, as the router's header says,
    the split is the weighted round robin's (within one request), and routing targets given with the
    router only stand in for requests it never answered."""
    from optplace.vllm.router import RouteTable, serving

    n = 100
    arrival = np.linspace(0.01, 0.8, n)
    adapter = np.zeros(n, dtype=np.int32)
    adapter[::10] = 1
    # a window long after the last arrival: every request completes in it, even on a loaded machine
    wl = ArrayWorkload(arrival, adapter, np.full(n, 4, dtype=np.int32), np.full(n, 1, dtype=np.int32), 4.0)

    async def main(**kw):
        f0, f1 = FakeVllm(adapters=("hot", "cold"), ttft_s=0.0, token_s=0.0), FakeVllm(adapters=("hot",), ttft_s=0.0)
        u0, u1 = await f0.start(), await f1.start()
        routes = {
            "model": "fake-base",
            "adapters": {
                "hot": [{"gpu": 0, "url": u0, "weight": 0.7}, {"gpu": 1, "url": u1, "weight": 0.3}],
                "cold": [{"gpu": 0, "url": u0, "weight": 1.0}],
            },
            "endpoints": [
                {"gpu": 0, "url": u0, "adapters": ["hot", "cold"]},
                {"gpu": 1, "url": u1, "adapters": ["hot"]},
            ],
        }
        table = RouteTable.from_routes(routes)
        with serving(table) as url:
            res = await replay(
                wl,
                ("hot", "cold"),
                endpoints_from_routes(routes),
                seed=7,
                token_id_range=(4, 100),
                sample_every_s=5.0,
                router_url=url,
                **kw,
            )
        await f0.stop(), await f1.stop()
        return res, f0, f1, table.stats()

    res, f0, f1, stats = asyncio.run(main())
    assert all(r.status == "ok" for r in res.requests) and len(res.requests) == n
    hot = [r for r in res.requests if r.adapter == 0]
    on = [sum(1 for r in hot if r.gpu == g) for g in (0, 1)]
    # what each server received is what the replay counted there, and what the router says it routed
    assert on == [sum(1 for m, *_ in f.received if m == "hot") for f in (f0, f1)]
    assert stats["hot"] == {"0": on[0], "1": on[1]}
    assert abs(on[0] - 0.7 * len(hot)) <= 1
    assert all(r.gpu == 0 for r in res.requests if r.adapter == 1)
    assert [g.offered_tok_s for g in res.gpus] == pytest.approx(
        [sum(5 for r in res.requests if r.gpu == g) / 4.0 for g in (0, 1)]
    )
    # expected picks are only the fallback for a request the router never answered: every one answered here
    # (route_to names GPU 1 for all: had it routed, every hot request would be there, not 30 %)
    expected, *_ = asyncio.run(main(route_to=np.ones(n, dtype=np.int64)))
    assert [sum(1 for r in expected.requests if r.adapter == 0 and r.gpu == g) for g in (0, 1)] == on


def test_a_router_header_naming_a_dead_or_wrong_server_is_counted_apart():
    """Where a router says a request went decides the GPU it counts on: a GPU the replay does not measure
    (its server did not start) gets a stand-in, so no measured GPU counts the request; a GPU that does
    not host the adapter is named as the request's problem; without a header (the router had not
    answered) the request counts where it was expected to go."""
    from optplace.vllm.loadgen import _served_by

    e0, e1 = Endpoint(0, "http://a", ("hot", "c")), Endpoint(1, "http://b", ("hot",))
    by_gpu = {0: e0, 1: e1}
    assert _served_by("1", e0, (e0, e1), by_gpu) == (e1, None)
    ep, problem = _served_by("2", e0, (e0, e1), by_gpu)
    assert ep.gpu == 2 and ep not in (e0, e1) and "does not measure" in problem
    assert _served_by("1", e0, (e0,), by_gpu) == (e1, "the router sent it to GPU 1, which does not serve its adapter")
    # no answer from the router yet (cancelled at the window's end): where it was expected to go
    for header in (None, "x"):
        ep, problem = _served_by(header, e1, (e0, e1), by_gpu)
        assert ep == e1 and "named no GPU" in problem
