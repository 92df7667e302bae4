"""``optplace vllm router``: a small weighted router in front of a deployment's servers, for tests and
single-machine use (production routers: ``docs/routing.md``).

It reads the ``routes.json`` that ``optplace vllm deploy`` writes and routes each OpenAI-style request
on the JSON body's ``"model"``: an adapter placed on one GPU goes there; a replicated adapter goes to
its replicas by **smooth weighted round robin** on the plan's weights — the algorithm nginx uses for
weighted upstreams (nginx ``ngx_http_upstream_round_robin.c``, documented behaviour): every pick adds
each replica's weight to its running score, takes the highest, and subtracts the total from it, so
after any n requests each replica has received its share of them to within one request, interleaved
(a 70/30 pair goes A B A A B A A A B …: never more than three A in a row). The base model goes to any
server (plain round robin). Responses, SSE streams included, are passed through as they arrive; each carries an
``x-optplace-gpu`` header naming the GPU that served it (on a 502, the one it could not reach).
``GET /optplace/stats`` returns the requests routed so far per adapter and GPU (the observed split);
``GET /v1/models`` and ``GET /health`` are answered by the router itself.

Standard library only (``http.server`` threads, ``http.client``): one thread per open request.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from optplace.vllm.loadgen import ReplayResult, run_replay, split_http_url

#: Read timeout towards a backend [s]: a long generation streams, but a silent backend is given up.
BACKEND_TIMEOUT_S = 600.0
#: Largest request body accepted [bytes] (the generated nginx config uses the same 1 MiB).
MAX_BODY = 1 << 20
#: Response headers not copied from a backend: the router frames the response itself.
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class RouterError(ValueError):
    """A routes document the router cannot use (the message names what is wrong)."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One server of the deployment."""

    gpu: int
    host: str
    port: int


class SmoothWeighted:
    """Smooth weighted round robin over ``backends`` (see the module docstring). Not thread-safe:
    :class:`RouteTable` holds its lock around :meth:`pick`."""

    def __init__(self, backends: Sequence[Backend], weights: Sequence[float]) -> None:
        self.backends, self.weights = tuple(backends), tuple(float(w) for w in weights)
        self.total = sum(self.weights)
        self.score = [0.0] * len(self.backends)

    def pick(self) -> Backend:
        for i, w in enumerate(self.weights):
            self.score[i] += w
        j = max(range(len(self.score)), key=lambda i: (self.score[i], -i))
        self.score[j] -= self.total
        return self.backends[j]


class RouteTable:
    """Adapter → its replicas' picker, from a ``routes.json`` document; counts what it routed."""

    def __init__(self, model: str, routes: Mapping[str, SmoothWeighted], base: SmoothWeighted) -> None:
        self.model, self.routes, self.base = model, dict(routes), base
        self.counts: dict[str, dict[int, int]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_routes(cls, doc: Any) -> "RouteTable":
        """Build from a ``routes.json`` document; :class:`RouterError` names the first problem."""
        if not isinstance(doc, dict):
            raise RouterError("routes document is not a JSON object")
        try:
            servers = {int(e["gpu"]): _backend(int(e["gpu"]), str(e["url"])) for e in doc["endpoints"]}
            routes = {}
            for name, rs in doc["adapters"].items():
                if not rs:
                    raise RouterError(f"adapters.{name}: no route")
                ws = [float(r.get("weight", 1.0)) for r in rs]
                if not all(w > 0 for w in ws):  # also NaN
                    raise RouterError(f"adapters.{name}: routing weights must be > 0 (got {ws})")
                routes[str(name)] = SmoothWeighted([servers[int(r["gpu"])] for r in rs], ws)
            model = str(doc["model"])
        except KeyError as exc:
            raise RouterError(f"routes document lacks {exc} (model, adapters, endpoints[{{gpu, url}}])") from None
        except (AttributeError, TypeError, ValueError) as exc:
            raise RouterError(f"routes document is malformed: {exc}") from None
        if not servers:
            raise RouterError("routes document has no endpoints")
        base = SmoothWeighted([servers[g] for g in sorted(servers)], [1.0] * len(servers))
        return cls(model, routes, base)

    def pick(self, model: str) -> Backend | None:
        """The backend for a request naming ``model`` (None: not served by this deployment)."""
        picker = self.routes.get(model) or (self.base if model == self.model else None)
        if picker is None:
            return None
        with self._lock:
            b = picker.pick()
            per = self.counts.setdefault(model, {})
            per[b.gpu] = per.get(b.gpu, 0) + 1
        return b

    def pick_all(self, models: Sequence[str]) -> list[int]:
        """The GPU each of ``models`` (requests, in the order they reach the router) is sent to, -1 where
        none serves it: run on a fresh table, what a router started with the same routes will do."""
        out = []
        for m in models:
            b = self.pick(m)
            out.append(-1 if b is None else b.gpu)
        return out

    def stats(self) -> dict[str, dict[str, int]]:
        """Requests routed so far: model → {GPU: count}."""
        with self._lock:
            return {m: {str(g): n for g, n in sorted(c.items())} for m, c in sorted(self.counts.items())}


def _backend(gpu: int, url: str) -> Backend:
    try:
        host, port, _ = split_http_url(url)
    except ValueError as exc:
        raise RouterError(f"endpoint {gpu}: {exc}") from None
    return Backend(gpu, host, port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    table: RouteTable  # set on the subclass :func:`make_server` builds

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # one line per request on stderr would drown a load test

    def _json(self, status: int, doc: Any, gpu: int | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if gpu is not None:
            self.send_header("x-optplace-gpu", str(gpu))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._json(200, {"status": "ok"})
        elif path == "/v1/models":
            names = [self.table.model, *self.table.routes]
            self._json(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})
        elif path == "/optplace/stats":
            self._json(200, self.table.stats())
        else:
            self._json(404, {"error": f"no route for GET {path}"})

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0:
            self._json(400, {"error": "request has no valid Content-Length"})
            return
        if n > MAX_BODY:
            self._json(413, {"error": f"request body over {MAX_BODY} bytes"})
            return
        body = self.rfile.read(n)
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            self._json(400, {"error": "request body is not a JSON object"})
            return
        b = self.table.pick(str(model))
        if b is None:
            self._json(404, {"error": f"model {model!r} is not served by this deployment"})
            return
        try:
            conn = http.client.HTTPConnection(b.host, b.port, timeout=BACKEND_TIMEOUT_S)
            conn.request("POST", self.path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
        except OSError as exc:
            self._json(502, {"error": f"GPU {b.gpu} ({b.host}:{b.port}) unreachable: {exc}"}, b.gpu)
            return
        try:
            self._relay(resp, b)
        except (BrokenPipeError, ConnectionResetError):
            # the client went away (a load test cancels what is running at its window's end): closing the
            # backend connection below makes vLLM abort the request too
            self.close_connection = True
        finally:
            conn.close()

    def _relay(self, resp: http.client.HTTPResponse, b: Backend) -> None:
        """Pass the backend's response through as it arrives (chunked, so a stream stays a stream)."""
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:
                self.send_header(k, v)
        self.send_header("x-optplace-gpu", str(b.gpu))
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        while data := resp.read1(65536):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


def make_server(table: RouteTable, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A router serving ``table`` on host:port (port 0: any free one; see ``server_address``). Call
    ``serve_forever()`` on it (``shutdown()`` from another thread stops it)."""
    handler = type("RouterHandler", (_Handler,), {"table": table})
    # the stdlib's listen backlog of 5 drops connections when a burst of requests arrives at once, and a
    # dropped SYN is retried after a second: a latency step that is the router's, not the servers'
    server_class = type("RouterServer", (ThreadingHTTPServer,), {"request_queue_size": 1024})
    server = server_class((host, port), handler)
    server.daemon_threads = True
    return server


@contextmanager
def serving(table: RouteTable, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run a router over ``table`` in a background thread for the ``with`` block; yields its base URL
    (``validate --router`` sends a replay through it)."""
    server = make_server(table, host, port)
    thread = threading.Thread(target=server.serve_forever, name="optplace-router", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def replay_through(table: RouteTable | None, *args: Any, **kwargs: Any) -> ReplayResult:
    """:func:`~optplace.vllm.loadgen.run_replay` with its requests sent through a router over ``table``
    started for the replay (``None``: straight to the endpoints)."""
    if table is None:
        return run_replay(*args, **kwargs)
    with serving(table) as url:
        return run_replay(*args, router_url=url, **kwargs)
