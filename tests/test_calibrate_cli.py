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
