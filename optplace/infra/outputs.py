"""Atomic outputs: everything under ``--out`` is written to a temporary name and renamed into place at
the end, so an interrupted run (SIGINT/SIGTERM, an error, a time limit) leaves the previous complete
output or none.

* :func:`atomic_dir` — a whole output folder (``solve --out``, ``deploy --out``, ``make-adapters --out``):
  a temporary sibling folder replaces the target in one rename; a non-empty target is refused
  unless ``force``.
* :func:`atomic_file` / :func:`write_text_atomic` / :func:`write_json` — one file (a profile JSON, a
  sweep's provenance): a temporary sibling ``.<name>.tmp-<pid>`` then ``os.replace``; an existing
  file is refused unless ``force``.
* :func:`atomic_files` — several files in a shared folder that must change together (a surrogate's
  model files and its ``surrogate.json``, a calibration's profiles): each is written to a temporary
  name, and all are renamed at the end, in the order they were asked for (write the index last).
* Append-only files that are resumable (a surrogate sweep's CSV) are not swapped: each row is one
  complete line, flushed as it is written, and a resumed run cuts a torn last line first
  (``optplace.surrogate.execution._drop_torn_tail``) — atomic per row, which keeps resume working.

Renames are done with SIGTERM/SIGINT held, so a signal cannot fall between them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class OutputExists(Exception):
    """``--out`` names a non-empty folder and ``--force`` was not given."""


class Terminated(BaseException):
    """SIGTERM received: unwinds like KeyboardInterrupt so temporary outputs are removed."""


_SIGTERM_SEEN = False
_COMMITTED: list[Path] = []


_STAGING: list[Path] = []  # temporary folders of the atomic_dir calls under way


def committed_outputs() -> list[Path]:
    """Outputs this process has renamed into place so far, in order. A signal held during a swap is
    delivered right after it, so "interrupted" does not always mean "nothing was written"; the CLI
    reads this to say which. Files renamed inside an :func:`atomic_dir`'s temporary folder are not
    outputs (the folder is discarded when the run is interrupted); the folder's own swap is."""
    return list(_COMMITTED)


def _commit(path: Path) -> None:
    if not any(path.is_relative_to(d) for d in _STAGING):
        _COMMITTED.append(path)


def _on_sigterm(signum: int, frame: object) -> None:
    global _SIGTERM_SEEN
    _SIGTERM_SEEN = True
    raise Terminated()


def sigterm_seen() -> bool:
    """Whether SIGTERM arrived in this process. A library may swallow the :class:`Terminated` raised
    inside it (e.g. during an extension import) and fail later with an unrelated error; the CLI then
    still reports the termination rather than an internal error."""
    return _SIGTERM_SEEN


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
    _STAGING.append(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _STAGING.remove(tmp)
    # A signal between the two renames would leave the target missing and the old output aside:
    # hold SIGTERM/SIGINT until the swap is done (they are delivered right after).
    with signals_held():
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        _commit(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM/SIGINT blocked inside the block and delivered as it ends (processes forked inside it
    inherit the block: stop them with SIGKILL)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _tmp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}"


def check_file_target(path: Path, force: bool) -> None:
    """Refuse an existing file (or a folder in its place) unless ``force``."""
    if path.is_dir():
        raise OutputExists(f"{path}: is a folder, not a file")
    if path.exists() and not force:
        raise OutputExists(f"{path}: exists (use --force to replace it)")


@contextmanager
def atomic_file(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename, on any
    exception (or signal) it is removed and ``path`` is left as it was."""
    path = Path(path)
    check_file_target(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with signals_held():
        os.replace(tmp, path)
        _commit(path)


def write_text_atomic(path: Path, text: str, force: bool = True) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_file` (``force``: replace an existing file)."""
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, doc: Any, force: bool = True) -> None:
    """``doc`` as indented JSON, atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n", force=force)


@contextmanager
def atomic_files(folder: Path, force: bool = True) -> Iterator[Callable[[str], Path]]:
    """Yield ``tmp(name)``: the temporary path to write file ``name`` of ``folder`` to. On success every
    file asked for is renamed into place in the order asked (write the index/meta file last, so a
    reader that finds the new index finds the new files); on failure every temporary file is removed
    and the folder is unchanged. ``force=False`` refuses names that exist already."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[Path, Path]] = []

    def tmp(name: str) -> Path:
        final = folder / name
        if final.parent != folder:
            raise ValueError(f"{name!r}: atomic_files writes plain file names inside {folder}")
        check_file_target(final, force)
        t = _tmp_name(final)
        t.unlink(missing_ok=True)
        pending.append((t, final))
        return t

    try:
        yield tmp
    except BaseException:
        for t, _ in pending:
            t.unlink(missing_ok=True)
        raise
    missing = [str(t) for t, _ in pending if not t.exists()]
    if missing:
        for t, _ in pending:
            t.unlink(missing_ok=True)
        raise FileNotFoundError(f"atomic_files: asked for but not written: {', '.join(missing)}")
    with signals_held():
        for t, final in pending:
            os.replace(t, final)
        _commit(folder)
