"""Spec fuzzing (issue 7): ≥ 1,000 mutated scenarios through `optplace check`, a sample of the ones
that load through `solve --out` and `simulate`. Every case ends with exit code 0, 1 or 2, one
`error: …` line per problem on exit 2, never a traceback, never a partial output folder."""

from __future__ import annotations

import copy
import math
import resource
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from optplace.cli import app

from fuzz_helpers import FuzzCase, _mutate_tree, base_docs, generate
from helpers import TESTS

N_CHECK = 1100
SEED = 20261128
OUT_FILES = ("plan.json", "solver.log", "deploy", "report.html")


def _materialise(case: FuzzCase, folder: Path) -> Path:
    p = folder / "spec.yaml"
    folder.mkdir(parents=True)
    if case.kind == "dir":
        p.mkdir()
    elif case.kind == "file":
        p.write_bytes(case.data)
    return p


def _assert_clean(res, case_label: str, spec: Path, allowed=(0, 1, 2)) -> None:
    """The contract every command keeps on any input."""
    ctx = f"[{case_label}] exit={res.exit_code} exc={res.exception!r} stderr={res.stderr[:500]!r}"
    # an exception escaping the command (other than typer's own Exit → SystemExit) is a crash
    assert res.exception is None or isinstance(res.exception, SystemExit), ctx
    assert res.exit_code in allowed, ctx
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, ctx
    if res.exit_code == 2:
        lines = res.stderr.splitlines()
        assert lines, ctx
        assert all(ln.startswith("error: ") for ln in lines), ctx


@pytest.mark.slow
def test_fuzz_check(tmp_path: Path) -> None:
    runner = CliRunner()
    cases = generate(SEED, N_CHECK)
    codes: dict[int, int] = {}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i, case in enumerate(cases):
        spec = _materialise(case, tmp_path / f"c{i:05d}")
        res = runner.invoke(app, ["check", str(spec)])
        _assert_clean(res, case.label, spec, allowed=(0, 2))
        if res.exit_code == 2:
            assert all(ln.startswith(f"error: {spec}") for ln in res.stderr.splitlines()), case.label
        codes[res.exit_code] = codes.get(res.exit_code, 0) + 1
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = len(cases)
    print(
        f"fuzz: {n} specs through `optplace check`: exit codes {dict(sorted(codes.items()))}, "
        f"peak RSS {rss1 / 1024:.0f} MiB (+{(rss1 - rss0) / 1024:.0f} MiB during the run)"
    )
    assert n >= 1000
    # the mutator must exercise both sides: specs that load and specs that are refused
    assert codes.get(0, 0) >= 20 and codes.get(2, 0) >= 500
    # an alias bomb or a 200k-character name must not balloon memory (bound per process)
    assert rss1 - rss0 < 1024 * 1024  # KiB → < 1 GiB growth


def test_fuzz_escaping_paths(tmp_path: Path) -> None:
    """Spec paths that leave the spec's folder are refused unless --allow-path names their folder."""
    runner = CliRunner()
    outside = tmp_path / "outside"
    outside.mkdir()
    trace = outside / "trace.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,10\n0.5,12,8\n")
    specdir = tmp_path / "specs"
    specdir.mkdir()
    _, _, tree = next(d for d in base_docs() if d[0] == "quickstart")
    n = 0
    for rel in ("../outside/trace.csv", str(trace), "../../outside/trace.csv", "sub/../../outside/trace.csv"):
        for where in ("arrivals", "lengths"):
            t = copy.deepcopy(tree)
            t["workload"][where] = {"kind": "trace", "path": rel}
            spec = specdir / f"s{n}.yaml"
            spec.write_text(yaml.safe_dump(t))
            n += 1
            res = runner.invoke(app, ["check", str(spec)])
            _assert_clean(res, rel, spec)
            assert res.exit_code == 2 and "leaves the spec's folder" in res.stderr, res.stderr
            if (specdir / rel).resolve() == trace or Path(rel) == trace:
                ok = runner.invoke(app, ["check", str(spec), "--allow-path", str(outside)])
                assert ok.exit_code == 0, (rel, ok.stderr)
    # a symlink inside the folder that points outside still escapes
    (specdir / "link.csv").symlink_to(trace)
    t = copy.deepcopy(tree)
    t["workload"]["arrivals"] = {"kind": "trace", "path": "link.csv"}
    spec = specdir / "link.yaml"
    spec.write_text(yaml.safe_dump(t))
    res = runner.invoke(app, ["check", str(spec)])
    assert res.exit_code == 2 and "leaves the spec's folder" in res.stderr, res.stderr


def _loadable_mutants(stems: tuple[str, ...], n: int, seed: int, edit) -> list[tuple[str, dict]]:
    """Tree mutants of the given scenarios that still pass `check` after ``edit`` (solve/simulate input)."""
    from optplace.specs import SpecError, load_scenario_text

    rng = np.random.default_rng(seed)
    docs = [d for d in base_docs() if d[0] in stems]
    out: list[tuple[str, dict]] = []
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        stem, _, tree = docs[int(rng.integers(len(docs)))]
        label, t = _mutate_tree(rng, tree) if rng.random() < 0.8 else ("original", copy.deepcopy(tree))
        try:
            edit(t)
            load_scenario_text(yaml.safe_dump(t, allow_unicode=True), base_dir=TESTS)
        except (SpecError, TypeError, AttributeError, KeyError, IndexError):
            continue  # the edit needs the mutated part, or the mutant is refused (covered by test_fuzz_check)
        out.append((f"{stem}:{label}", t))
    return out


def _fast_solver(t: dict) -> None:
    t.setdefault("solver", {})["time_limit_s"] = 2
    t["workload"]["duration_s"] = 60


@pytest.mark.slow
def test_fuzz_solve_out(tmp_path: Path) -> None:
    """Loadable mutants through `solve --out --no-validate`: exit 0/1/2 and a complete folder or none."""
    runner = CliRunner()
    cases = _loadable_mutants(
        ("quickstart", "pool-min-cost", "llama-rank16-high", "qwen-rank32-low", "llama-rank32-low"),
        30,
        SEED + 1,
        _fast_solver,
    )
    assert len(cases) >= 25
    codes: dict[int, int] = {}
    for i, (label, t) in enumerate(cases):
        folder = tmp_path / f"s{i:03d}"
        folder.mkdir()
        spec = folder / "spec.yaml"
        spec.write_text(yaml.safe_dump(t, allow_unicode=True))
        out = folder / "out"
        res = runner.invoke(app, ["solve", str(spec), "--no-validate", "--out", str(out)])
        _assert_clean(res, label, spec)
        codes[res.exit_code] = codes.get(res.exit_code, 0) + 1
        if out.exists():
            assert res.exit_code in (0, 1), label
            assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES), (label, list(out.iterdir()))
            assert (out / "plan.json").stat().st_size > 0 and (out / "report.html").stat().st_size > 0
        else:
            assert res.exit_code != 0, label
        assert not [p for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name], label
    print(f"fuzz: {len(cases)} specs through `optplace solve --out`: exit codes {dict(sorted(codes.items()))}")
    assert codes.get(0, 0) >= 5


def _short_run(t: dict) -> None:
    t["workload"]["duration_s"] = 30


def test_fuzz_simulate(tmp_path: Path) -> None:
    """Loadable mutants of the placed scenario through `simulate --json`: exit 0/1/2, never a crash."""
    runner = CliRunner()
    cases = _loadable_mutants(("quickstart-placed",), 12, SEED + 2, _short_run)
    assert len(cases) >= 8
    codes: dict[int, int] = {}
    for i, (label, t) in enumerate(cases):
        spec = tmp_path / f"p{i:03d}.yaml"
        spec.write_text(yaml.safe_dump(t, allow_unicode=True))
        res = runner.invoke(app, ["simulate", str(spec), "--json", "--workers", "1"])
        _assert_clean(res, label, spec)
        codes[res.exit_code] = codes.get(res.exit_code, 0) + 1
    print(f"fuzz: {len(cases)} specs through `optplace simulate`: exit codes {dict(sorted(codes.items()))}")


def _plan_mutants(plan: dict, n: int, seed: int) -> list[tuple[str, bytes]]:
    """Mutated plan JSON files (`solve` output): tree mutations plus text-level garbage."""
    import json

    rng = np.random.default_rng(seed)
    out: list[tuple[str, bytes]] = [
        ("deep", b"[" * 100_000 + b"]" * 100_000),
        ("deep-obj", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
        ("binary", bytes(range(256)) * 4),
        ("empty", b""),
        ("nan", json.dumps({**plan, "gpus_used": math.nan}).encode()),
        ("top-list", b"[1, 2]"),
        ("spec_dir", json.dumps({**plan, "spec_dir": "/nonexistent/x"}).encode()),
        ("latin1", json.dumps(plan).encode().replace(b'"min_gpus"', b'"caf\xe9"')),
    ]
    while len(out) < n:
        label, t = _mutate_tree(rng, plan)
        if rng.random() < 0.3:
            t["scenario"] = _mutate_tree(rng, plan["scenario"])[1]
            label += "+scenario"
        out.append((label, json.dumps(t, allow_nan=True).encode()))
    return out


def test_fuzz_plan_files_validate_and_deploy(tmp_path: Path) -> None:
    """`validate PLAN.json` and `deploy PLAN.json --out` on mutated plans: exit 0/1/2, never a crash,
    never a partial deploy folder."""
    import json

    runner = CliRunner()
    spec = tmp_path / "quick.yaml"
    _, _, tree = next(d for d in base_docs() if d[0] == "quickstart")
    tree = copy.deepcopy(tree)
    tree["workload"]["duration_s"] = 20
    spec.write_text(yaml.safe_dump(tree))
    res = runner.invoke(app, ["solve", str(spec), "--no-validate", "--json"])
    assert res.exit_code == 0, res.stderr
    plan = json.loads(res.stdout)
    cases = _plan_mutants(plan, 40, SEED + 3)
    codes: dict[str, dict[int, int]] = {"validate": {}, "deploy": {}}
    for i, (label, data) in enumerate(cases):
        f = tmp_path / f"plan{i:03d}.json"
        f.write_bytes(data)
        res = runner.invoke(app, ["validate", str(f), "--json", "--workers", "1"])
        _assert_clean(res, f"validate:{label}", f)
        codes["validate"][res.exit_code] = codes["validate"].get(res.exit_code, 0) + 1
        out = tmp_path / f"dep{i:03d}"
        res = runner.invoke(app, ["deploy", str(f), "--out", str(out)])
        _assert_clean(res, f"deploy:{label}", f)
        codes["deploy"][res.exit_code] = codes["deploy"].get(res.exit_code, 0) + 1
        if res.exit_code != 0:
            assert not out.exists() or not any(out.iterdir()), (label, list(out.iterdir()))
    print(f"fuzz: {len(cases)} plan files through `validate` {codes['validate']} and `deploy` {codes['deploy']}")
    assert codes["validate"].get(2, 0) >= 10 and codes["validate"].get(0, 0) + codes["validate"].get(1, 0) >= 3


def test_fuzz_profile_files(tmp_path: Path) -> None:
    """A spec's `profile:` JSON that is garbage, deep, binary or mistyped is a located input error."""
    import json

    from optplace.specs import bundled_profiles

    runner = CliRunner()
    prof = json.loads(json.dumps(bundled_profiles()["llama-3.1-8b-instruct@h100-64gb"].model_dump(mode="json")))
    rng = np.random.default_rng(SEED + 4)
    blobs = [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b"", b"null", b"[]", json.dumps(prof).encode()]
    blobs += [json.dumps(_mutate_tree(rng, prof)[1], allow_nan=True).encode() for _ in range(25)]
    _, _, tree = next(d for d in base_docs() if d[0] == "quickstart")
    for i, blob in enumerate(blobs):
        (tmp_path / f"p{i}.json").write_bytes(blob)
        t = copy.deepcopy(tree)
        t["profile"] = f"p{i}.json"
        spec = tmp_path / f"s{i}.yaml"
        spec.write_text(yaml.safe_dump(t))
        res = runner.invoke(app, ["check", str(spec)])
        _assert_clean(res, f"profile:{i}", spec, allowed=(0, 2))
    print(f"fuzz: {len(blobs)} profile files through `optplace check`")


def test_fuzz_huge_window_is_refused_before_simulating(tmp_path: Path) -> None:
    """A window with more requests than the twin can hold is an input error, not a MemoryError."""
    runner = CliRunner()
    _, _, tree = next(d for d in base_docs() if d[0] == "quickstart-placed")
    for dur in (1e7, 1e9, 1e308):
        t = copy.deepcopy(tree)
        t["workload"]["duration_s"] = dur
        spec = tmp_path / f"w{dur:g}.yaml"
        spec.write_text(yaml.safe_dump(t))
        for argv in (
            ["check", str(spec)],
            ["simulate", str(spec), "--workers", "1"],
            ["solve", str(spec), "--no-validate"],
        ):
            res = runner.invoke(app, argv)
            _assert_clean(res, f"{argv[0]}:{dur:g}", spec)
            assert res.exit_code == 2 and "workload.duration_s" in res.stderr and "expected requests" in res.stderr


def test_fuzz_capacity(tmp_path: Path) -> None:
    """Loadable mutants through `capacity --json --no-confirm`: exit 0/1/2, never a crash."""
    runner = CliRunner()
    cases = _loadable_mutants(
        ("quickstart", "mixed-ranks-500", "llama-rank32-high", "pool-min-cost"), 10, SEED + 5, lambda t: None
    )
    codes: dict[int, int] = {}
    for i, (label, t) in enumerate(cases):
        spec = tmp_path / f"k{i:03d}.yaml"
        spec.write_text(yaml.safe_dump(t, allow_unicode=True))
        res = runner.invoke(app, ["capacity", str(spec), "--json", "--no-confirm"])
        _assert_clean(res, label, spec)
        codes[res.exit_code] = codes.get(res.exit_code, 0) + 1
        if res.exit_code == 0:
            assert res.stdout.lstrip().startswith("{"), label
    print(f"fuzz: {len(cases)} specs through `optplace capacity`: exit codes {dict(sorted(codes.items()))}")
    assert codes.get(0, 0) >= 5


def test_plan_spec_dir_cannot_widen_file_access(tmp_path: Path) -> None:
    """A plan's `spec_dir` is data from the plan file: files under it need the plan's folder or --allow-path."""
    import json

    runner = CliRunner()
    a, b = tmp_path / "specs", tmp_path / "out"
    a.mkdir()
    rows = "\n".join(f"{i * 0.25:.2f},{50 + i % 7},{20 + i % 5}" for i in range(240))
    (a / "trace.csv").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows + "\n")
    _, _, tree = next(d for d in base_docs() if d[0] == "quickstart")
    t = copy.deepcopy(tree)
    t["workload"] = {
        "duration_s": 30,
        "arrivals": {"kind": "trace", "path": "trace.csv"},
        "lengths": {"kind": "trace", "path": "trace.csv"},
    }
    (a / "s.yaml").write_text(yaml.safe_dump(t))
    res = runner.invoke(app, ["solve", str(a / "s.yaml"), "--no-validate", "--out", str(b)])
    assert res.exit_code in (0, 1), res.stderr
    plan = b / "plan.json"
    res = runner.invoke(app, ["validate", str(plan), "--json", "--workers", "1"])
    _assert_clean(res, "spec_dir", plan)
    assert res.exit_code == 2 and "spec_dir" in res.stderr and "--allow-path" in res.stderr, res.stderr
    res = runner.invoke(app, ["validate", str(plan), "--json", "--workers", "1", "--allow-path", str(a)])
    assert res.exit_code in (0, 1), res.stderr
    # a crafted plan claiming "/" as its spec folder cannot reach other files
    doc = json.loads(plan.read_text())
    doc["spec_dir"] = "/"
    doc["scenario"]["workload"]["arrivals"]["path"] = "etc/passwd"
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps(doc))
    res = runner.invoke(app, ["validate", str(evil), "--json"])
    _assert_clean(res, "evil", evil)
    assert res.exit_code == 2 and "spec_dir" in res.stderr, res.stderr
