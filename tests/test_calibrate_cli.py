"""`optplace calibrate --reference` reproduces the bundled profiles exactly (same fit, re-runnable)."""

from __future__ import annotations

from typer.testing import CliRunner

from optplace.cli import app
from optplace.specs import bundled_profiles, load_profile_file

runner = CliRunner()


def test_calibrate_reproduces_bundled_profiles(ref_dir, tmp_path):
    res = runner.invoke(app, ["calibrate", "--reference", str(ref_dir), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    written = sorted(tmp_path.glob("*.json"))
    assert [p.stem for p in written] == ["llama-3.1-8b-instruct@h100-64gb", "qwen-2.5-7b-instruct@h100-64gb"]
    for p in written:
        assert load_profile_file(p) == bundled_profiles()[p.stem], p.stem


def test_calibrate_needs_reference_files(tmp_path):
    res = runner.invoke(app, ["calibrate", "--reference", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "kv_capacity_v1.csv" in res.stderr


def test_calibrate_out_refuses_a_non_empty_folder_unless_forced(ref_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    res = runner.invoke(app, ["calibrate", "--reference", str(ref_dir), "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.stderr, res.output
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    res = runner.invoke(app, ["calibrate", "--reference", str(ref_dir), "--out", str(out), "--force"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "llama-3.1-8b-instruct@h100-64gb.json",
        "mine.txt",
        "qwen-2.5-7b-instruct@h100-64gb.json",
    ]  # no temporary left


def test_calibrate_sweep_refuses_an_existing_profile_before_measuring(tmp_path):
    out = tmp_path / "p.json"
    out.write_text("{}")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    res = runner.invoke(
        app, ["calibrate", "--sweep", "--engine", "vllm", "--model-dir", str(model_dir), "--out", str(out)]
    )
    assert res.exit_code == 2 and "exists (use --force" in res.stderr, res.output
    assert out.read_text() == "{}" and not any(model_dir.iterdir())  # nothing built, nothing measured
