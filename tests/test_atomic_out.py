"""Atomic `--out` (issue 7): a `solve --out D` killed with SIGTERM at any moment leaves D either as
the previous complete output or absent, no temporary siblings, and exits 143 with one line; `--out`
refuses a non-empty folder unless `--force`."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optplace.cli import app
from helpers import REPO, short_quickstart

QUICKSTART = REPO / "scenarios" / "quickstart.yaml"
SLOW = REPO / "scenarios" / "mixed-ranks-500.yaml"  # ~80 s on 2 cores, most of it the twin validating its GPUs
COMPLETE = {"plan.json", "twin.json", "solver.log", "deploy", "report.html"}


def _digest(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# HiGHS prints its banner from C on construction (optplace/solver, reported); everything else on
# stderr must be the one termination line.
_BANNER = ("Running HiGHS ", "Includes third-party software components")


def _message_lines(err: str) -> list[str]:
    return [ln for ln in err.strip().splitlines() if not ln.startswith(_BANNER)]


def _complete_line(out: Path) -> str:
    """The CLI's line for a signal delivered after ``out`` was renamed into place (held during the swap)."""
    return f"terminated; written completely before the signal: {out.resolve()}"


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def _solve_and_kill(spec: Path, out: Path, delay_s: float, force: bool, sig: int = signal.SIGTERM) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "optplace.cli", "solve", str(spec), "--out", str(out), "--workers", "1"]
    if force:
        cmd.append("--force")
    proc = subprocess.Popen(cmd, cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay_s)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"solve did not stop within 60 s of SIGTERM (sent {delay_s} s after start)")
    return proc.returncode, err


@pytest.fixture(scope="module")
def previous_output(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A complete output folder from an uninterrupted run (the "previous output" to protect; a short
    window: the runs killed over it solve the hour-long quickstart, and finish long after their signal)."""
    base = tmp_path_factory.mktemp("atomic")
    out = base / "D"
    res = subprocess.run(
        [sys.executable, "-m", "optplace.cli", "solve", str(short_quickstart(base)), "--out", str(out)],
        cwd=base,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert {p.name for p in out.iterdir()} == COMPLETE
    return out, _digest(out)


@pytest.mark.parametrize("delay_s", [0.3, 1.0, 2.0, 4.0])
def test_sigterm_keeps_previous_output(previous_output, delay_s: float) -> None:
    out, _ = previous_output
    before = _digest(out)  # an earlier case may have finished and replaced it: compare with what is there now
    rc, err = _solve_and_kill(QUICKSTART, out, delay_s, force=True)
    assert not _leftovers(out.parent, out.name), _leftovers(out.parent, out.name)
    assert out.is_dir() and {p.name for p in out.iterdir()} == COMPLETE
    if rc in (0, -15):
        # finished before the signal, or signalled during interpreter shutdown (Python restores the
        # default handler then): a complete new output
        return
    assert rc == 143, (rc, err)
    lines = _message_lines(err)
    if lines == [_complete_line(out)]:
        return  # the signal landed during the final rename: held, then delivered after it; D is complete
    assert lines == ["terminated: no output was written"], err
    assert _digest(out) == before  # untouched, byte for byte


@pytest.mark.parametrize("delay_s", [0.5, 2.5, 6.0])
def test_sigterm_fresh_target(tmp_path: Path, delay_s: float) -> None:
    """No previous output: D is absent after the kill (or complete if the run had finished)."""
    out = tmp_path / "D"
    rc, err = _solve_and_kill(QUICKSTART, out, delay_s, force=False)
    assert not _leftovers(tmp_path, "D")
    if rc == -15 and not out.exists():
        return  # killed while the interpreter was still starting, before the handler existed: nothing written
    if rc in (0, -15):  # finished (see above)
        assert {p.name for p in out.iterdir()} == COMPLETE
        return
    assert rc == 143, (rc, err)
    lines = _message_lines(err)
    if out.exists():  # signalled during the final rename (see above): complete, and said so
        assert {p.name for p in out.iterdir()} == COMPLETE
        assert lines == [_complete_line(out)], err
        return
    assert lines == ["terminated: no output was written"], err
    assert not out.exists()


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc; the twin's worker pool is the only source of them)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the command name (field 2) may hold spaces; the parent pid is the 2nd field after its ')'
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
    return kids


def test_sigterm_during_slow_validation(tmp_path: Path) -> None:
    """Killed while the twin validates a 500-adapter plan: with two workers the validation is the only
    phase that starts worker processes, so the kill is sent as soon as the first one appears — inside
    the validation however fast the solver or the machine is (a timed kill missed it on a CI machine
    whose validation took under a second)."""
    out = tmp_path / "D"
    cmd = [sys.executable, "-m", "optplace.cli", "solve", str(SLOW), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (workers := _children(proc.pid)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers, f"the validation never started worker processes (rc {proc.poll()})"
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    stop_s = time.perf_counter() - t0
    assert proc.returncode == 143, (proc.returncode, err)
    assert _message_lines(err) == ["terminated: no output was written"], err
    assert not out.exists() and not _leftovers(tmp_path, "D")
    assert stop_s < 30, f"took {stop_s:.1f} s to stop after SIGTERM"


def test_out_refuses_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "D"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    runner = CliRunner()
    res = runner.invoke(app, ["solve", str(QUICKSTART), "--no-validate", "--out", str(out)])
    assert res.exit_code == 2, res.stderr
    assert res.stderr.strip().splitlines() == [f"error: --out {out}: folder is not empty (use --force to replace it)"]
    assert _digest(out) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()}
    # a file where the folder should be is refused too, even with --force
    f = tmp_path / "F"
    f.write_text("x")
    res = runner.invoke(app, ["solve", str(QUICKSTART), "--no-validate", "--out", str(f), "--force"])
    assert res.exit_code == 2 and f.read_text() == "x", res.stderr

    res = runner.invoke(app, ["solve", str(QUICKSTART), "--no-validate", "--out", str(out), "--force"])
    assert res.exit_code == 0, res.stderr
    assert {p.name for p in out.iterdir()} == COMPLETE - {"twin.json"}
    assert not _leftovers(tmp_path, "D")


def test_out_empty_folder_is_used(tmp_path: Path) -> None:
    out = tmp_path / "D"
    out.mkdir()
    res = CliRunner().invoke(app, ["solve", str(QUICKSTART), "--no-validate", "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    assert {p.name for p in out.iterdir()} == COMPLETE - {"twin.json"}
    assert os.listdir(tmp_path) == ["D"]


def test_sigint_keeps_previous_output(previous_output) -> None:
    """Ctrl-C (SIGINT) mid-run: exit 130, one line, previous output untouched."""
    out, _ = previous_output
    before = _digest(out)
    rc, err = _solve_and_kill(QUICKSTART, out, 1.5, force=True, sig=signal.SIGINT)
    assert not _leftovers(out.parent, out.name)
    if rc in (0, -2):  # finished first (see test_sigterm_keeps_previous_output)
        assert {p.name for p in out.iterdir()} == COMPLETE
        return
    assert rc == 130, (rc, err)
    assert _message_lines(err) == ["interrupted: no output was written"], err
    assert _digest(out) == before


def test_deploy_out_refuses_non_empty_folder_and_replaces_with_force(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["solve", str(QUICKSTART), "--no-validate", "--json"])
    assert res.exit_code == 0, res.stderr
    plan = tmp_path / "plan.json"
    plan.write_text(res.stdout)
    out = tmp_path / "dep"
    out.mkdir()
    (out / "gpu7.cmd").write_text("stale")
    res = runner.invoke(app, ["deploy", str(plan), "--out", str(out)])
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        f"error: --out {out}: folder is not empty (use --force to replace it)"
    ], res.stderr
    assert [p.name for p in out.iterdir()] == ["gpu7.cmd"]
    res = runner.invoke(app, ["deploy", str(plan), "--out", str(out), "--force"])
    assert res.exit_code == 0, res.stderr
    names = {p.name for p in out.iterdir()}
    assert "gpu7.cmd" not in names and {"servers.json", "routes.json", "nginx.conf", "launch.sh"} <= names
    assert not _leftovers(tmp_path, "dep")


# --- the single-file and file-set writers (outputs.atomic_file / write_text_atomic / atomic_files) ----


def test_atomic_file_replaces_in_one_rename_and_refuses_without_force(tmp_path: Path) -> None:
    from optplace.infra.outputs import OutputExists, atomic_file, write_text_atomic

    target = tmp_path / "prof.json"
    write_text_atomic(target, "old\n", force=False)
    assert target.read_text() == "old\n"
    with pytest.raises(OutputExists, match="exists"):
        write_text_atomic(target, "new\n", force=False)
    with pytest.raises(RuntimeError):
        with atomic_file(target, force=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted mid-write")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["prof.json"]
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n" and os.listdir(tmp_path) == ["prof.json"]
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OutputExists, match="is a folder"):
        write_text_atomic(tmp_path / "dir.json", "x", force=True)


def test_atomic_files_all_or_nothing(tmp_path: Path) -> None:
    from optplace.infra.outputs import atomic_files

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "other-profile.txt").write_text("keep")
    (folder / "a.txt").write_text("a0")
    with pytest.raises(KeyboardInterrupt):
        with atomic_files(folder) as tmp:
            tmp("a.txt").write_text("a1")
            tmp("meta.json").write_text("{}")
            raise KeyboardInterrupt
    assert sorted(os.listdir(folder)) == ["a.txt", "other-profile.txt"] and (folder / "a.txt").read_text() == "a0"
    with pytest.raises(FileNotFoundError, match="not written"):
        with atomic_files(folder) as tmp:
            tmp("a.txt").write_text("a1")
            tmp("b.txt")  # asked for, never written: nothing may change
    assert (folder / "a.txt").read_text() == "a0" and not (folder / "b.txt").exists()
    with atomic_files(folder) as tmp:
        tmp("a.txt").write_text("a1")
        tmp("meta.json").write_text('{"v": 1}')
    assert sorted(os.listdir(folder)) == ["a.txt", "meta.json", "other-profile.txt"]
    assert (folder / "a.txt").read_text() == "a1" and (folder / "other-profile.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="plain file names"):
        with atomic_files(folder) as tmp:
            tmp("../escape.txt")


_WRITER = """
import sys, time
from pathlib import Path
from optplace.infra.outputs import atomic_file, install_sigterm_handler
install_sigterm_handler()
with atomic_file(Path(sys.argv[1]), force=True) as tmp:
    with tmp.open("w") as fh:
        fh.write("partial ")
        fh.flush()
        print("writing", flush=True)
        time.sleep(30)
        fh.write("never")
"""


def test_sigterm_during_a_single_file_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "profile.json"
    target.write_text("previous complete file\n")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert target.read_text() == "previous complete file\n"
    assert os.listdir(tmp_path) == ["profile.json"]


_RACE = """
import os, signal, sys
from pathlib import Path
from optplace.infra.outputs import atomic_dir, install_sigterm_handler, Terminated
from optplace.cli import _stopped
install_sigterm_handler()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
try:
    with atomic_dir(Path(sys.argv[1]), force=True) as tmp:
        (tmp / "a.txt").write_text("new")
        os.kill(os.getpid(), signal.SIGTERM)  # pending: arrives while the swap is under way
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
except Terminated:
    print(_stopped("terminated"))
"""


def test_signal_during_final_rename_is_reported_as_complete(tmp_path: Path) -> None:
    """A SIGTERM that arrives during the swap is held and delivered just after it: the new output is
    complete and the message says so (it once said "no output was written" over a fresh output)."""
    out = tmp_path / "D"
    out.mkdir()
    (out / "a.txt").write_text("old")
    res = subprocess.run([sys.executable, "-c", _RACE, str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == _complete_line(out)
    assert (out / "a.txt").read_text() == "new"
    assert not _leftovers(tmp_path, "D")


_INSIDE = """
import os, signal, sys
from pathlib import Path
from optplace.infra.outputs import atomic_dir, install_sigterm_handler, write_json, Terminated
from optplace.cli import _stopped
install_sigterm_handler()
try:
    with atomic_dir(Path(sys.argv[1]), force=True) as tmp:
        write_json(tmp / "plan.json", {"a": 1})  # an atomic file write inside the staging folder
        os.kill(os.getpid(), signal.SIGTERM)
except Terminated:
    print(_stopped("terminated"))
"""


def test_files_written_inside_the_staging_folder_are_not_reported_as_outputs(tmp_path: Path) -> None:
    """Killed while ``solve --out`` writes its files (each atomically, inside the temporary folder):
    the folder is discarded, so the line says nothing was written (CI once printed the staging
    folder's plan.json and twin.json as "written completely")."""
    out = tmp_path / "D"
    res = subprocess.run([sys.executable, "-c", _INSIDE, str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "terminated: no output was written"
    assert not out.exists() and not _leftovers(tmp_path, "D")
