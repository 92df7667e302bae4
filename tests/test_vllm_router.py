"""The built-in router (``optplace vllm router``): weighted round robin over replicas, streams passed
through, errors as JSON, the observed split; against stub servers (no vLLM needed)."""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from optplace.cli import app
from optplace.vllm.router import RouteTable, RouterError, SmoothWeighted, make_server


class _Stub(BaseHTTPRequestHandler):
    """A fake vLLM server: JSON completions naming its GPU; ``"stream": true`` answers SSE chunks."""

    protocol_version = "HTTP/1.1"
    gpu = -1

    def log_message(self, *a):
        pass

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if req.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for k in range(3):
                data = f'data: {{"gpu": {self.gpu}, "k": {k}}}\n\n'.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps({"gpu": self.gpu, "model": req["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(server):
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    return server


@pytest.fixture()
def deployment():
    stubs = [_serve(ThreadingHTTPServer(("127.0.0.1", 0), type(f"S{g}", (_Stub,), {"gpu": g}))) for g in range(2)]
    urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in stubs]
    doc = {
        "model": "base",
        "adapters": {
            "hot": [{"gpu": 0, "url": urls[0], "weight": 0.7}, {"gpu": 1, "url": urls[1], "weight": 0.3}],
            "solo": [{"gpu": 1, "url": urls[1], "weight": 1.0}],
            "gone": [{"gpu": 2, "url": "http://127.0.0.1:9", "weight": 1.0}],
        },
        "endpoints": [{"gpu": g, "url": u, "adapters": []} for g, u in enumerate(urls)]
        + [{"gpu": 2, "url": "http://127.0.0.1:9", "adapters": ["gone"]}],
    }
    router = _serve(make_server(RouteTable.from_routes(doc), "127.0.0.1", 0))
    yield router.server_address[1], doc
    for s in (router, *stubs):
        s.shutdown()
        s.server_close()


def _post(port, model, stream=False):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/v1/completions", json.dumps({"model": model, "prompt": "x", "stream": stream}))
    r = c.getresponse()
    chunks = []
    while data := r.read1(65536):
        chunks.append(data)
    c.close()
    return r.status, r.getheader("x-optplace-gpu"), b"".join(chunks), len(chunks)


def _get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


def test_smooth_weighted_round_robin_splits_exactly_and_interleaves():
    sw = SmoothWeighted(["a", "b"], [0.7, 0.3])  # type: ignore[list-item]
    seq = [sw.pick() for _ in range(100)]
    assert seq.count("a") == 70
    for n in range(1, 101):  # every prefix within one request of its share
        assert abs(seq[:n].count("a") - 0.7 * n) <= 1.0, n
    assert "aaaa" not in "".join(seq) and "bb" not in "".join(seq)  # interleaved: at most ⌈0.7/0.3⌉ in a row
    eq = SmoothWeighted(["x", "y", "z"], [1, 1, 1])
    assert [eq.pick() for _ in range(6)] == ["x", "y", "z", "x", "y", "z"]  # equal weights: plain round robin


def test_router_splits_a_replicated_adapter_by_weight_and_counts_it(deployment):
    port, _ = deployment
    gpus = [_post(port, "hot")[1] for _ in range(100)]
    assert gpus.count("0") == 70 and gpus.count("1") == 30
    assert {_post(port, "solo")[1] for _ in range(5)} == {"1"}
    status, body, _ = _post(port, "base")[0], _post(port, "base")[2], None
    assert status == 200 and json.loads(body)["model"] == "base"
    _, stats = _get(port, "/optplace/stats")
    assert stats["hot"] == {"0": 70, "1": 30} and stats["solo"] == {"1": 5}
    assert sum(stats["base"].values()) == 2


def test_router_passes_a_stream_through_chunk_by_chunk(deployment):
    port, _ = deployment
    status, gpu, body, n_chunks = _post(port, "solo", stream=True)
    assert status == 200 and gpu == "1"
    events = [json.loads(x.removeprefix("data: ")) for x in body.decode().split("\n\n") if x]
    assert events == [{"gpu": 1, "k": k} for k in range(3)]
    assert n_chunks >= 1


def test_router_answers_errors_as_json(deployment):
    port, _ = deployment
    status, _, body, _ = _post(port, "nobody")
    assert status == 404 and "not served" in json.loads(body)["error"]
    status, _, body, _ = _post(port, "gone")
    assert status == 502 and "GPU 2" in json.loads(body)["error"]
    assert _get(port, "/health") == (200, {"status": "ok"})
    status, models = _get(port, "/v1/models")
    assert status == 200 and {m["id"] for m in models["data"]} == {"base", "hot", "solo", "gone"}
    for length in ("many", "-5"):  # a malformed length is the client's error, answered, not a dead handler
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.putrequest("POST", "/v1/completions")
        c.putheader("Content-Length", length)
        c.endheaders()
        r = c.getresponse()
        assert r.status == 400 and "Content-Length" in json.loads(r.read())["error"]
        c.close()


@pytest.mark.parametrize(
    "doc, message",
    [
        ([], "not a JSON object"),
        ({"model": "m", "adapters": {}}, "lacks 'endpoints'"),
        (
            {
                "model": "m",
                "adapters": {"a": [{"gpu": 0, "weight": -1}]},
                "endpoints": [{"gpu": 0, "url": "http://h:1"}],
            },
            "must be > 0",
        ),
        ({"model": "m", "adapters": {}, "endpoints": [{"gpu": 0, "url": "ftp://h"}]}, "not an http:// URL"),
    ],
)
def test_bad_routes_are_refused_with_the_reason(doc, message):
    with pytest.raises(RouterError, match=message):
        RouteTable.from_routes(doc)


def test_router_cli_refuses_a_bad_routes_file_in_one_line(tmp_path):
    p = tmp_path / "routes.json"
    p.write_text('{"model": "m"}')
    res = CliRunner().invoke(app, ["vllm", "router", str(p)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "lacks" in lines[0], res.output
    res = CliRunner().invoke(app, ["vllm", "router", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "error:" in res.output
