"""Start and stop vLLM servers as child processes, with every wait bounded by a timeout.

Servers are started from an argument list (never a shell string) in their own session, so a stop
signal reaches vLLM's engine-core child processes too; stdout and stderr go to one log file. A server
that exits before ``/health`` answers is not an exception: :func:`start_server` returns a
:class:`LaunchResult` with status ``oom`` (the KV cache cannot hold one max-length sequence, or the
device ran out of memory — classified from the log) or ``failed``; one that never becomes healthy
is killed and reported as ``timeout``. A port already taken is a user error and raises
:class:`PortInUseError` before anything is started.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "LaunchError",
    "LaunchResult",
    "PortInUseError",
    "ServerProcess",
    "classify_startup_failure",
    "check_port_free",
    "pick_free_port",
    "start_server",
    "wait_healthy",
]

Status = Literal["ok", "oom", "failed", "timeout"]

# Messages vLLM prints when the KV cache or device memory is too small at start
# (vllm/v1/core/kv_cache_utils.py and torch's allocator); matched case-insensitively.
_OOM_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("oom_kv_cache", re.compile(r"No available memory for the cache blocks", re.I)),
    ("oom_kv_cache", re.compile(r"KV cache is needed, which is larger than the available KV cache memory", re.I)),
    ("oom_kv_cache", re.compile(r"max(imum)?[ _]?(seq|model)[ _]len.{0,80}(larger|greater) than.{0,40}KV cache", re.I)),
    ("oom_kv_cache", re.compile(r"(Insufficient|not enough).{0,40}KV cache", re.I)),
    ("oom_device", re.compile(r"(CUDA|XPU|HIP)?\s*out of memory|OutOfMemoryError|Cannot allocate memory", re.I)),
)
_ERROR_LINE = re.compile(r"(Error|Exception|error:)", re.I)
# an exception line as Python prints it ("ValueError: …" or a bare "NotImplementedError"), possibly
# behind vLLM's log prefix "(Worker pid=1) ERROR 11-28 10:23:11 [file.py:953] "
_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)(: .+)?$")
_LOG_PREFIX = re.compile(r"^\([\w-]+ pid=\d+\) (?:ERROR|CRITICAL)\b.*?\[[^\]]*\] ")
_NOT_ERROR = re.compile(r"\b(INFO|WARNING|DEBUG)\b")
_WRAPPER = re.compile(r"See (root cause|stack trace)", re.I)


class LaunchError(RuntimeError):
    """A server could not be started at all (bad arguments, missing executable, port taken)."""


class PortInUseError(LaunchError):
    """The requested port is already bound by another process."""


@dataclass(frozen=True, slots=True)
class LaunchResult:
    """Outcome of one start attempt: ``server`` is set only when ``status == "ok"``."""

    status: Status
    reason: str
    port: int
    log_path: Path
    start_s: float
    pid: int | None
    returncode: int | None
    server: "ServerProcess | None" = None

    @property
    def ok(self) -> bool:
        """True when the server answered /health."""
        return self.status == "ok"


def pick_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise :class:`PortInUseError` if ``host:port`` cannot be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR mirrors what uvicorn sets, so a port in TIME_WAIT is not reported as taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"port {port} on {host} is already in use ({exc.strerror}); "
                "pick another port or stop the process holding it"
            ) from exc


def classify_startup_failure(log_text: str) -> tuple[Status, str]:
    """Map the log of a server that died at start to ``("oom", why)`` or ``("failed", last error line)``."""
    for kind, pattern in _OOM_PATTERNS:
        m = pattern.search(log_text)
        if m:
            end = log_text.find("\n", m.end())
            line = log_text[log_text.rfind("\n", 0, m.start()) + 1 : len(log_text) if end < 0 else end]
            return "oom", f"{kind}: {line.strip()[:300]}"
    lines = [_LOG_PREFIX.sub("", ln.strip()) for ln in log_text.splitlines() if not _NOT_ERROR.search(ln)]
    raised = [ln for ln in lines if _RAISED.match(ln) and not _WRAPPER.search(ln)]
    if raised:  # the root cause: vLLM re-raises it wrapped ("See root cause above") in the parent processes
        return "failed", raised[-1][:300]
    errors = [ln for ln in lines if _ERROR_LINE.search(ln)]
    return "failed", (errors[-1][:300] if errors else "server exited before it became healthy (no error line in log)")


class ServerProcess:
    """A running server started by :func:`start_server`; stop it with :meth:`stop`."""

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int, log_path: Path):
        self.proc = proc
        self.host = host
        self.port = port
        self.log_path = log_path

    @property
    def pid(self) -> int:
        """Process id of the server (also its process-group id)."""
        return self.proc.pid

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000``."""
        return f"http://{self.host}:{self.port}"

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after ``timeout_s``; return the exit code."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout_s)
        # children that ignored SIGTERM (e.g. an engine core process) must not outlive the server
        _signal_group(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _health_ok(host: str, port: int, timeout_s: float) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_healthy(
    proc: subprocess.Popen[bytes] | None, host: str, port: int, timeout_s: float, poll_s: float = 0.5
) -> Literal["ok", "exited", "timeout"]:
    """Poll ``/health`` until it answers 200, the process exits, or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            return "exited"
        if _health_ok(host, port, timeout_s=min(2.0, max(0.1, deadline - time.monotonic()))):
            return "ok"
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(poll_s)


def start_server(
    argv: Sequence[str],
    *,
    port: int,
    log_path: Path,
    host: str = "127.0.0.1",
    env: Mapping[str, str | None] | None = None,
    timeout_s: float = 180.0,
    poll_s: float = 0.5,
    cwd: Path | None = None,
) -> LaunchResult:
    """Start ``argv`` (which must make the server listen on ``host:port``) and wait until healthy.

    ``env`` entries are added to the current environment (a ``None`` value removes the variable).
    Returns a :class:`LaunchResult`; raises
    :class:`PortInUseError` if the port is taken and :class:`LaunchError` if the executable cannot
    be run at all.
    """
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of arguments, not a shell string")
    argv = [str(a) for a in argv]
    check_port_free(port, host)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **{k: v for k, v in (env or {}).items() if v is not None}}
    for k in [k for k, v in (env or {}).items() if v is None]:
        full_env.pop(k, None)
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise LaunchError(f"cannot run {argv[0]!r}: {exc}") from exc
    outcome = wait_healthy(proc, host, port, timeout_s, poll_s)
    elapsed = time.monotonic() - t0
    if outcome == "ok":
        server = ServerProcess(proc, host, port, log_path)
        return LaunchResult("ok", f"healthy after {elapsed:.1f} s", port, log_path, elapsed, proc.pid, None, server)
    if outcome == "timeout":
        ServerProcess(proc, host, port, log_path).stop()
        return LaunchResult(
            "timeout",
            f"no healthy /health within {timeout_s:.0f} s; killed",
            port,
            log_path,
            elapsed,
            proc.pid,
            proc.returncode,
        )
    _signal_group(proc.pid, signal.SIGKILL)  # the engine-core child may still be alive
    status, reason = classify_startup_failure(log_path.read_text(errors="replace"))
    return LaunchResult(status, reason, port, log_path, elapsed, proc.pid, proc.returncode)
