"""Test helpers for optplace.vllm: a fake OpenAI/vLLM server (asyncio) and a fake server process.

``FakeVllm`` speaks just enough HTTP/1.1 for the load generator: ``/health``, ``/v1/models``,
``/metrics`` (vLLM metric names) and streaming ``/v1/completions`` that emits one SSE chunk per
token after ``ttft_s`` and then every ``token_s``; a client disconnect aborts the request.

Run as a script, it is a stand-in for ``vllm serve`` that the launcher tests start:
``python vllm_helpers.py MODE PORT`` with MODE ``ok`` (serves /health), ``oom`` (prints vLLM's KV-cache
error and exits 1), ``fail`` (prints a traceback and exits 1), ``hang`` (never listens), ``openai`` (a
``FakeVllm`` serving the adapters named after the port, ``--lora-modules`` style ``name=path`` also
accepted).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

KV_OOM_LINE = (
    "ValueError: To serve at least one request with the models's max seq len (4096), (0.50 GiB KV cache "
    "is needed, which is larger than the available KV cache memory (0.01 GiB). Try increasing "
    "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
)


@dataclass(frozen=True, slots=True)
class ArrayWorkload:
    """Same fields as optplace.twin.workload.Workload, for tests that need no twin."""

    arrival_s: np.ndarray
    adapter: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    duration_s: float


def poisson_workload(rates_rps, duration_s, input_tokens, output_tokens, seed) -> ArrayWorkload:
    """Independent Poisson streams per adapter with fixed lengths, merged and sorted."""
    rng = np.random.default_rng(seed)
    arr, ad = [], []
    for i, rate in enumerate(rates_rps):
        t = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * duration_s * 2 + 20)))
        t = t[t < duration_s]
        arr.append(t)
        ad.append(np.full(len(t), i, dtype=np.int32))
    a = np.concatenate(arr)
    order = np.argsort(a, kind="stable")
    n = len(a)
    return ArrayWorkload(
        a[order],
        np.concatenate(ad)[order],
        np.full(n, input_tokens, np.int32),
        np.full(n, output_tokens, np.int32),
        float(duration_s),
    )


@dataclass
class FakeVllm:
    """In-process fake server; ``await start()`` returns its base URL."""

    adapters: tuple[str, ...]
    ttft_s: float = 0.02
    token_s: float = 0.005
    model: str = "fake-base"
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: int = 0
    aborted: int = 0
    received: list = field(default_factory=list)
    broken_metrics: bool = False
    _server: asyncio.base_events.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server = await asyncio.start_server(self._handle, host, port)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def metrics_page(self) -> str:
        if self.broken_metrics:
            return 'vllm:num_requests_running{engine="0" 1\n'
        lab = 'engine="0",model_name="fake-base"'
        return "\n".join(
            [
                "# TYPE vllm:num_requests_running gauge",
                f"vllm:num_requests_running{{{lab}}} 0.0",
                "# TYPE vllm:num_requests_waiting gauge",
                f"vllm:num_requests_waiting{{{lab}}} 0.0",
                "# TYPE vllm:prompt_tokens counter",
                f"vllm:prompt_tokens_total{{{lab}}} {float(self.prompt_tokens)}",
                "# TYPE vllm:generation_tokens counter",
                f"vllm:generation_tokens_total{{{lab}}} {float(self.generation_tokens)}",
                "# TYPE vllm:num_preemptions counter",
                f"vllm:num_preemptions_total{{{lab}}} 0.0",
                "",
            ]
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            method, path, _ = line.decode().split(" ", 2)
            headers = {}
            while (h := await reader.readline()) not in (b"\r\n", b""):
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            if method == "GET" and path == "/health":
                await self._send(writer, 200, b"")
            elif method == "GET" and path == "/v1/models":
                data = [{"id": m} for m in (self.model, *self.adapters)]
                await self._send(writer, 200, json.dumps({"data": data}).encode())
            elif method == "GET" and path == "/metrics":
                await self._send(writer, 200, self.metrics_page().encode())
            elif method == "POST" and path == "/v1/completions":
                await self._complete(json.loads(body), writer)
            else:
                await self._send(writer, 404, b"{}")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _send(self, writer, status: int, body: bytes) -> None:
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()

    async def _complete(self, req: dict, writer: asyncio.StreamWriter) -> None:
        if req["model"] not in self.adapters:
            await self._send(writer, 404, b'{"error": "model not found"}')
            return
        self.received.append((req["model"], len(req["prompt"]), req["max_tokens"], time.monotonic()))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")

        def chunk(payload: bytes) -> bytes:
            return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"

        try:
            await asyncio.sleep(self.ttft_s)
            self.prompt_tokens += len(req["prompt"])
            for k in range(req["max_tokens"]):
                if k:
                    await asyncio.sleep(self.token_s)
                self.generation_tokens += 1
                msg = {"choices": [{"index": 0, "text": "x", "finish_reason": None}]}
                writer.write(chunk(b"data: " + json.dumps(msg).encode() + b"\n\n"))
                await writer.drain()
            usage = {
                "choices": [],
                "usage": {"prompt_tokens": len(req["prompt"]), "completion_tokens": req["max_tokens"]},
            }
            writer.write(
                chunk(b"data: " + json.dumps(usage).encode() + b"\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
            )
            await writer.drain()
            self.finished += 1
        except (ConnectionError, asyncio.CancelledError):
            self.aborted += 1
            raise


def _serve_health(port: int) -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    HTTPServer(("127.0.0.1", port), H).serve_forever()


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    print(f"fake server mode={mode} port={port}", flush=True)
    if mode == "ok":
        _serve_health(port)
    elif mode == "oom":
        print("INFO loading model", flush=True)
        print(KV_OOM_LINE, flush=True)
        sys.exit(1)
    elif mode == "fail":
        print("Traceback (most recent call last):\nRuntimeError: Engine core initialization failed.", flush=True)
        sys.exit(1)
    elif mode == "hang":
        time.sleep(3600)
    elif mode == "openai":

        async def serve() -> None:
            fake = FakeVllm(adapters=tuple(a.split("=")[0] for a in sys.argv[3:]), ttft_s=0.005, token_s=0.002)
            await fake.start(port=port)
            await asyncio.Event().wait()

        asyncio.run(serve())
