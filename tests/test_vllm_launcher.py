"""Launcher: a server that dies at start is a recorded failure (never a hang); ports; stop by PID."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from optplace.vllm.launcher import (
    PortInUseError,
    LaunchError,
    check_port_free,
    classify_startup_failure,
    pick_free_port,
    start_server,
)
from helpers import FAKE_VLLM as FAKE


def fake(mode: str, port: int) -> list[str]:
    return [sys.executable, FAKE, mode, str(port)]


def test_server_dying_with_kv_oom_is_a_measured_oom(tmp_path):
    port = pick_free_port()
    t = time.monotonic()
    res = start_server(fake("oom", port), port=port, log_path=tmp_path / "oom.log", timeout_s=30)
    assert time.monotonic() - t < 10
    assert res.status == "oom" and not res.ok and res.server is None
    assert res.reason.startswith("oom_kv_cache:") and "larger than the available KV cache memory" in res.reason
    assert res.returncode == 1 and "fake server mode=oom" in res.log_path.read_text()


def test_server_dying_otherwise_is_failed_with_last_error_line(tmp_path):
    port = pick_free_port()
    res = start_server(fake("fail", port), port=port, log_path=tmp_path / "f.log", timeout_s=30)
    assert res.status == "failed" and "Engine core initialization failed" in res.reason


def test_server_never_healthy_times_out_and_is_killed(tmp_path):
    port = pick_free_port()
    t = time.monotonic()
    res = start_server(fake("hang", port), port=port, log_path=tmp_path / "h.log", timeout_s=2, poll_s=0.2)
    assert res.status == "timeout" and 2 <= time.monotonic() - t < 20
    assert res.returncode is not None  # the process was stopped, not left behind


def test_healthy_server_starts_and_stops_by_pid(tmp_path):
    port = pick_free_port()
    res = start_server(fake("ok", port), port=port, log_path=tmp_path / "ok.log", timeout_s=30, poll_s=0.1)
    assert res.ok and res.server is not None and res.pid == res.server.pid
    server = res.server
    assert server.alive() and server.url == f"http://127.0.0.1:{port}"
    with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
        start_server(fake("ok", port), port=port, log_path=tmp_path / "dup.log", timeout_s=5)
    t = time.monotonic()
    server.stop(timeout_s=5)
    assert not server.alive() and time.monotonic() - t < 5
    check_port_free(port)  # freed


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUseError, match="already in use"):
            start_server(fake("ok", port), port=port, log_path=tmp_path / "x.log", timeout_s=5)
        assert not (tmp_path / "x.log").exists()  # nothing was started


def test_bad_executable_and_shell_string(tmp_path):
    port = pick_free_port()
    with pytest.raises(LaunchError, match="cannot run"):
        start_server([str(tmp_path / "no-such-binary")], port=port, log_path=tmp_path / "b.log")
    with pytest.raises(TypeError, match="not a shell string"):
        start_server("vllm serve m", port=port, log_path=tmp_path / "b.log")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "log,status,why",
    [
        (
            "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
            "oom",
            "oom_kv_cache",
        ),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "oom", "oom_device"),
        ("INFO start\nRuntimeError: something else\nINFO bye", "failed", "RuntimeError: something else"),
        ("INFO nothing useful", "failed", "no error line"),
        (
            "(Worker pid=1) ERROR [x.py:9] ValueError: invalid literal for int() with base 10: ''\n"
            "Exception: WorkerProc initialization failed due to an exception in a background process. "
            "See stack trace for root cause.\n"
            "RuntimeError: Engine core initialization failed. See root cause above.",
            "failed",
            "ValueError: invalid literal",
        ),
        (
            "(APIServer pid=1) WARNING 11-28 10:22:09 [system_utils.py:255] Found ulimit of 20000 and failed to "
            "increase. This can "
            "cause fd limit errors like `OSError: [Errno 24] Too many open files`. Consider increasing with ulimit -n\n"
            "(Worker pid=2) ERROR 11-28 10:23:11 [multiproc_executor.py:953]     raise NotImplementedError\n"
            "(Worker pid=2) ERROR 11-28 10:23:11 [multiproc_executor.py:953] NotImplementedError\n"
            "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
            "failed",
            "NotImplementedError",
        ),
    ],
)
def test_classify_startup_failure(log, status, why):
    got_status, reason = classify_startup_failure(log)
    assert got_status == status and why in reason
