"""Surrogate recipes and the load-time refusals.

A tiny recipe (twin runs of 30 s on up to 8 adapters) is built end to end, re-run (nothing new is
evaluated, same bytes), continued from a truncated sweep, and built without its held-out sweeps (same
model files). Loading a surrogate trained under another twin semantics version, on a recalibrated
profile of the same name, or of another file format is refused in one line naming the rebuild
command; ``make_oracle("auto")`` then uses the twin and says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from optplace.specs import bundled_profiles, load_scenario_text
from optplace.surrogate.execution import LocalExecutor
from optplace.surrogate.provenance import (
    LEGACY_TWIN_VERSIONS,
    evaluator_identity,
    profile_hash,
    same_labels,
)
from optplace.surrogate.recipe import build_recipe, load_recipe
from optplace.surrogate.runtime import (
    MODELS_DIR,
    RECIPES_DIR,
    SurrogateRefused,
    check_compatible,
    load_shipped,
    load_surrogate,
    shipped_model_path,
)

PROFILE = "llama-3.1-8b-instruct@h100-64gb"
MODEL_FILES = ("throughput", "itl", "ttft_p99", "starved")

TINY = """
recipe_version: 1
profile: llama-3.1-8b-instruct@h100-64gb
sweeps:
  - {name: t_1, seed: 11, design: {n_points: 24, n_chains: 4, chain_steps: 2, duration_s: 30.0, max_adapters: 8}}
  - {name: t_2, seed: 12, design: {n_points: 12, n_chains: 2, chain_steps: 2, duration_s: 30.0, max_adapters: 8}}
replicates:
  - {name: t_1_n1, of: t_1, salt: 1, subset: noisy}
holdout:
  sweeps:
    - {name: t_test, seed: 13, design: {n_points: 8, n_chains: 1, chain_steps: 2, duration_s: 30.0, max_adapters: 8}}
  replicates:
    - {name: t_test_r1, of: t_test, salt: 1}
training: {seed: 0, rounds_cap: {throughput: 30, starved: 20, itl: 20, ttft_p99: 20}}
note: tiny recipe of the tests
"""


def _models(d: Path) -> dict[str, bytes]:
    return {m: (d / f"{PROFILE}.{m}.txt").read_bytes() for m in MODEL_FILES}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipe")
    (d / "tiny.yaml").write_text(TINY)
    rec = load_recipe(d / "tiny.yaml")
    rep = build_recipe(rec, d / "out", executor=LocalExecutor(1), progress=False)
    return rec, rep, d


def test_build_writes_the_shipped_layout_and_records_its_origin(built) -> None:
    rec, rep, d = built
    out = d / "out"
    assert rep.rows_new == sum(s.rows_total for s in rep.steps) > 50
    for m in MODEL_FILES:
        assert (out / f"{PROFILE}.{m}.txt").stat().st_size > 0
    meta = json.loads(rep.model_json.read_text())
    assert meta["recipe_hash"] == rec.hash
    assert meta["twin_semantics_version"] == 1
    assert meta["profile"] == PROFILE
    assert meta["profile_hash"] == profile_hash(bundled_profiles()[PROFILE].model_dump(mode="json"))
    assert meta["note"] == "tiny recipe of the tests"
    assert meta["n_test"] == 10 and meta["metrics"]["n"] == 10.0
    assert meta["params"]["rounds_cap"]["throughput"] == 30
    sur = load_surrogate(rep.model_json)
    check_compatible(sur.meta, PROFILE, meta["profile_hash"])  # accepted for the profile it was built on
    assert {s.name for s in rep.steps} == {"t_1", "t_2", "t_1_n1", "t_test", "t_test_r1"}


def test_rebuild_reuses_every_sweep_and_gives_the_same_bytes(built) -> None:
    rec, rep, d = built
    before = _models(d / "out")
    threshold = json.loads(rep.model_json.read_text())["starved_threshold"]
    again = build_recipe(rec, d / "out", executor=LocalExecutor(1), progress=False)
    assert again.rows_new == 0  # resume: no new twin run
    assert _models(d / "out") == before
    assert json.loads(again.model_json.read_text())["starved_threshold"] == threshold


def test_partial_sweep_is_continued_and_held_out_sweeps_do_not_shape_the_models(built, tmp_path: Path) -> None:
    rec, rep, d = built
    sweeps = tmp_path / "sweeps"
    shutil.copytree(d / "out" / "sweeps", sweeps)
    csv = sweeps / "t_1.csv"
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines[:10]) + lines[10][:15])  # 9 rows and a torn line, as after an interrupt
    again = build_recipe(
        rec, tmp_path / "out", sweeps_dir=sweeps, executor=LocalExecutor(1), progress=False, with_holdout=False
    )
    assert again.rows_new == len(lines) - 10  # only the missing rows of t_1 ran
    assert _models(tmp_path / "out") == _models(d / "out")
    meta = json.loads(again.model_json.read_text())
    assert meta["split"] == "none" and meta["metrics"] == {}


def test_a_sweep_file_of_another_design_is_refused(built, tmp_path: Path) -> None:
    rec, rep, d = built
    sweeps = tmp_path / "sweeps"
    shutil.copytree(d / "out" / "sweeps", sweeps)
    (tmp_path / "other.yaml").write_text(
        TINY.replace("seed: 12,", "seed: 99,")
        .replace("name: t_2, ", "name: t_1, ")
        .replace("{name: t_1, seed: 11", "{name: t_0, seed: 11")
    )
    with pytest.raises(ValueError, match="cannot resume"):
        build_recipe(
            load_recipe(tmp_path / "other.yaml"),
            tmp_path / "out",
            sweeps_dir=sweeps,
            executor=LocalExecutor(1),
            progress=False,
        )


def test_a_recipe_asking_for_other_training_options_is_refused(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        TINY.replace(
            "training: {seed: 0,", "training: {seed: 0, threshold: {rule: group-cv-macro-f1, folds: 3, grid: [0.5]},"
        )
    )
    with pytest.raises(ValueError, match="training.threshold"):
        build_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", progress=False)


def test_recipe_hash_ignores_comments_and_layout(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(TINY)
    (tmp_path / "b.yaml").write_text("# a comment\n" + TINY.replace("training: {seed: 0,", "training: {seed:   0,"))
    (tmp_path / "c.yaml").write_text(TINY.replace("seed: 13", "seed: 14"))
    a, b, c = (load_recipe(tmp_path / f"{x}.yaml").hash for x in "abc")
    assert a == b != c


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
def test_shipped_models_record_their_recipe_twin_version_and_profile(name: str) -> None:
    rec = load_recipe(RECIPES_DIR / f"{name}.yaml")
    meta = json.loads(shipped_model_path(rec.profile).read_text())
    assert meta["recipe_hash"] == rec.hash, "recipe edited: rebuild the shipped model (or restore the recipe)"
    assert meta["twin_semantics_version"] == 1
    assert meta["profile_hash"] == profile_hash(bundled_profiles()[rec.profile].model_dump(mode="json"))
    # the recipe's training sweeps are the ones the model records, the sweeps in the same order (row ids)
    reps = {r.name for r in rec.replicates}
    assert [p for p in meta["dataset"]["path"] if p not in reps] == [s.name for s in rec.sweeps]
    assert set(meta["dataset"]["path"]) == {s.name for s in (*rec.sweeps, *rec.replicates)}
    assert meta["split"]["holdout"] == [s.name for s in rec.holdout_sweeps]
    assert meta["split"]["replicates"] == [s.name for s in rec.holdout_replicates]
    assert meta["params"]["rounds_cap"] == rec.training["rounds_cap"]
    assert load_shipped(rec.profile).meta["recipe_hash"] == rec.hash


def test_profile_hash_is_over_numbers_not_source_texts() -> None:
    prof = bundled_profiles()[PROFILE].model_dump(mode="json")
    reworded = json.loads(json.dumps(prof))
    reworded["source"] = "another description"
    reworded["step_time"]["source"] = "another description"
    changed = json.loads(json.dumps(prof))
    changed["step_time"]["coef"]["c0"] *= 1.01
    assert profile_hash(reworded) == profile_hash(prof) != profile_hash(changed)
    assert profile_hash(prof) == json.loads(shipped_model_path(PROFILE).read_text())["profile_hash"]


def test_legacy_twin_versions_read_as_semantics_version_1() -> None:
    new = {"evaluator": "twin", "twin_semantics_version": 1, "profile": PROFILE, "profile_hash": "560d1ac227a2"}
    for legacy in LEGACY_TWIN_VERSIONS:
        old = {"evaluator": "twin", "version": legacy, "profile": PROFILE, "profile_hash": "560d1ac227a2"}
        assert evaluator_identity(old) == new and same_labels(old, new)
    unknown = {"evaluator": "twin", "version": "0.1.0+000000000000", "profile": PROFILE, "profile_hash": "560d1ac227a2"}
    assert not same_labels(unknown, new)
    assert not same_labels(new, {**new, "profile_hash": "ffffffffffff"})
    assert not same_labels(new, {**new, "twin_semantics_version": 2})


def test_surrogate_of_another_twin_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import optplace.twin.version as version

    monkeypatch.setattr(version, "TWIN_SEMANTICS_VERSION", 2)
    with pytest.raises(SurrogateRefused) as e:
        load_shipped(PROFILE)
    msg = str(e.value)
    assert "\n" not in msg and "twin semantics version 1" in msg and "at 2" in msg
    assert f"optplace surrogate build optplace/surrogate/recipes/{PROFILE}.yaml" in msg


def _recalibrated(tmp_path: Path, factor: float, source: str | None = None) -> Path:
    d = json.loads(
        (Path(__file__).resolve().parent.parent / "optplace" / "specs" / "profiles" / f"{PROFILE}.json").read_text()
    )
    d["step_time"]["coef"]["c0"] *= factor
    if source is not None:
        d["source"] = source
    p = tmp_path / "recal.json"
    p.write_text(json.dumps(d))
    return p


SPEC = """
name: recal
model: llama-3.1-8b-instruct
gpu: h100-64gb
profile: recal.json
adapters:
  - {group: a, count: 20, rank: 8, rate_rps: 0.4}
seed: 1
"""


def test_recalibrated_profile_of_the_same_name_does_not_get_the_shipped_model(tmp_path: Path, capsys) -> None:
    from optplace.solver import compile_problem, make_oracle
    from optplace.specs import load_profile_file

    prof = load_profile_file(_recalibrated(tmp_path, 1.05))
    assert prof.name == PROFILE
    with pytest.raises(SurrogateRefused) as e:
        load_shipped(prof)
    assert "\n" not in str(e.value) and "other numbers" in str(e.value) and "surrogate build" in str(e.value)

    problem = compile_problem(load_scenario_text(SPEC, "s.yaml", tmp_path), tmp_path)
    oracle = make_oracle(problem, "auto")
    assert oracle.name == "twin"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: shipped surrogate") and "using the twin" in err[0]


def test_reworded_profile_keeps_the_shipped_model(tmp_path: Path, capsys) -> None:
    from optplace.solver import compile_problem, make_oracle

    _recalibrated(tmp_path, 1.0, source="re-described, same numbers")
    problem = compile_problem(load_scenario_text(SPEC, "s.yaml", tmp_path), tmp_path)
    assert make_oracle(problem, "auto").name == "surrogate+slo"
    assert capsys.readouterr().err == ""


def test_surrogate_file_of_another_format_is_refused_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from optplace.solver import compile_problem, make_oracle
    from optplace.surrogate import runtime

    for f in MODELS_DIR.glob(f"{PROFILE}.*"):
        shutil.copy(f, tmp_path / f.name)
    meta_path = tmp_path / f"{PROFILE}.surrogate.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(SurrogateRefused, match="surrogate format 1, this optplace reads format 2"):
        load_surrogate(meta_path)
    meta_path.write_text("{not json")
    with pytest.raises(SurrogateRefused, match="not a readable surrogate") as e:
        load_surrogate(meta_path)
    assert "\n" not in str(e.value)

    monkeypatch.setattr(runtime, "MODELS_DIR", tmp_path)
    problem = compile_problem(
        load_scenario_text(SPEC.replace("profile: recal.json\n", ""), "s.yaml", tmp_path), tmp_path
    )
    assert make_oracle(problem, "auto").name == "twin"
    assert "not a readable surrogate" in capsys.readouterr().err
    with pytest.raises(SurrogateRefused):
        make_oracle(problem, "surrogate")  # asked for explicitly: an error, not a fallback


def test_build_command_resumes_and_refuses_in_one_line(built, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from optplace.app.surrogate_commands import app

    rec, rep, d = built
    r = CliRunner().invoke(app, ["build", str(d / "tiny.yaml"), "--out", str(d / "out"), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert '"twin_runs_new": 0' in r.output and f"hash {rec.hash}" in r.output
    (tmp_path / "bad.yaml").write_text(TINY.replace("recipe_version: 1", "recipe_version: 7"))
    r = CliRunner().invoke(app, ["build", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a surrogate recipe" in r.output
    (tmp_path / "other.yaml").write_text(TINY.replace("seed: 11,", "seed: 98,"))
    r = CliRunner().invoke(
        app,
        [
            "build",
            str(tmp_path / "other.yaml"),
            "--out",
            str(tmp_path / "o"),
            "--sweeps",
            str(d / "out" / "sweeps"),
            "--workers",
            "1",
        ],
    )
    assert r.exit_code == 2 and "cannot resume" in r.output
