"""Atomic output folders: everything under ``--out`` is written to a temporary sibling folder and
renamed into place at the end, so an interrupted run leaves the previous complete output or none."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class OutputExists(Exception):
    """``--out`` names a non-empty folder and ``--force`` was not given."""


class Terminated(BaseException):
    """SIGTERM received: unwinds like KeyboardInterrupt so temporary outputs are removed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def install_sigterm_handler() -> None:
    """Turn SIGTERM into an exception in the main thread (worker pools are shut down by unwinding)."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def check_target(target: Path, force: bool) -> None:
    """Refuse a non-empty target folder (or a file in its place) unless ``force``."""
    if target.exists() and not target.is_dir():
        raise OutputExists(f"--out {target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise OutputExists(f"--out {target}: folder is not empty (use --force to replace it)")


@contextmanager
def atomic_dir(target: Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``target`` in one rename."""
    target = target.resolve()
    check_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # A signal between the two renames would leave the target missing and the old output aside:
    # hold SIGTERM/SIGINT until the swap is done (they are delivered right after).
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
