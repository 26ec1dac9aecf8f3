"""The talk3d command: subjects table edits, the workflow run it starts, and its errors.

Rendering from a trained subject (drive, view, frame) is tested in test_workflow.py, on the subject
that test trains.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO_ROOT

from talk3d_core.cli import main


@pytest.fixture
def project(tmp_path, monkeypatch, make_clip, make_audio):
    """A workflow directory with one subject and a clip and an audio file beside it."""
    root = tmp_path / "project"
    (root / "config").mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "workflow", root / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "config/config.yaml", root / "config/config.yaml")
    shutil.copy(make_clip(duration=1.0), root / "clip.mp4")
    shutil.copy(make_audio(duration=1.0), root / "voice.wav")
    (root / "config/subjects.tsv").write_text("name\tvideo\taudio\tdrive\tnotes\nfirst\tclip.mp4\t\t\t\n")
    monkeypatch.chdir(tmp_path)  # the command moves into the workflow directory; this restores the cwd
    return root


def talk3d(*args: str) -> object:
    """One command, as from a shell: it moves into the workflow directory, the shell stays."""
    cwd = Path.cwd()
    try:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(cwd)


def test_add_appends_a_checked_row(project):
    result = talk3d("-C", str(project), "add", "second", "project/clip.mp4", "--drive", "project/voice.wav",
                    "--notes", "a\tnote")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = (project / "config/subjects.tsv").read_text().splitlines()
    # Paths given from the caller's directory are stored relative to the workflow directory.
    assert lines[-1].split("\t") == ["second", "clip.mp4", "", "voice.wav", "a note"]
    assert "talk3d run second" in result.output
    before = (project / "config/subjects.tsv").read_text()
    for args, message in [
        (["first", "project/clip.mp4"], "already there"),
        (["third", "project/nothing.mp4"], "video file .*nothing.mp4 does not exist"),
        (["bad name", "project/clip.mp4"], "column 'name'"),
        (["fourth", "project/clip.mp4", "--drive", "project/config"], "is a directory"),
    ]:
        result = talk3d("-C", str(project), "add", *args)
        assert result.exit_code == 1 and message.split(".*")[0] in result.output, result.output
    assert (project / "config/subjects.tsv").read_text() == before  # a refused row changes nothing
    assert not list((project / "config").glob(".*"))  # and leaves no temporary file


def test_add_creates_the_table(project):
    (project / "config/subjects.tsv").unlink()
    result = talk3d("-C", str(project), "add", "only", str(project / "clip.mp4"))
    assert result.exit_code == 0, result.output
    table = (project / "config/subjects.tsv").read_text()
    assert table == "name\tvideo\taudio\tdrive\tnotes\nonly\tclip.mp4\t\t\t\n"


def test_run_plans_every_output_of_the_subject(project, capfd):
    (project / "talk3d_core").symlink_to(REPO_ROOT / "talk3d_core")
    (project / "resources/weights").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "resources/weights/manifest.yaml", project / "resources/weights")
    talk3d("-C", str(project), "add", "second", "project/clip.mp4", "--drive", "project/voice.wav")
    result = talk3d("-C", str(project), "run", "second", "-n", "--quiet", "rules")
    assert result.exit_code == 0
    planned = capfd.readouterr().out
    # One subject's whole DAG: the 16 default novel views, its driving audio, the report page.
    for rule, count in [("ingest", 1), ("render_drive", 1), ("render_view", 16), ("video_page", 1)]:
        assert re.search(rf"^{rule}\s+{count}$", planned, re.M), rule
    result = talk3d("-C", str(project), "run", "second", "-n", "--not-a-snakemake-flag")
    assert result.exit_code != 0
    result = talk3d("-C", str(project), "run", "nobody")
    assert result.exit_code == 1 and "no subject 'nobody'" in result.output


def test_clear_errors_before_any_work(project, tmp_path):
    result = talk3d("-C", str(project), "drive", "first", "project/voice.wav", "-o", "x.mp4")
    assert result.exit_code == 1
    assert "subject 'first' is not trained yet" in result.output and "talk3d run first" in result.output
    result = talk3d("-C", str(project), "drive", "first", "project/none.wav", "-o", "x.mp4")
    assert result.exit_code == 1 and "audio file" in result.output and "does not exist" in result.output
    result = talk3d("-C", str(project), "frame", "first", "--yaw", "95", "--pitch", "0", "-o", "x.png")
    assert result.exit_code == 1 and "yaw must be within" in result.output
    result = talk3d("-C", str(tmp_path), "drive", "first", "voice.wav", "-o", "x.mp4")
    assert result.exit_code == 1 and "not a Talk3D workflow directory" in result.output
    assert not Path("x.mp4").exists() and not (project / "x.mp4").exists()


def test_every_command_has_help():
    for command in ([], ["add"], ["run"], ["drive"], ["view"], ["frame"], ["serve"]):
        result = talk3d(*command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, command


def test_serve_listens_on_loopback_unless_told(project, monkeypatch):
    import uvicorn

    seen = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: seen.append((host, port)))
    assert talk3d("-C", str(project), "serve").exit_code == 0
    result = talk3d("-C", str(project), "serve", "--host", "0.0.0.0", "--port", "8123")
    assert seen == [("127.0.0.1", 8000), ("0.0.0.0", 8123)]
    assert "other machines can reach the page" in result.output
