"""The workflow through Snakemake's Python API, on a copy of the project in a temp directory.

Proves: outputs appear where the contracts say, a second run does nothing, a config change or a
code change re-runs exactly the stage it belongs to (and its dependents), and bad configuration
stops the run before any job, naming the key or file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import (
    REPO_ROOT,
    SHARED_DATA,
    decode_video,
    make_workflow_project,
    random_generator,
    write_snapshot,
)
from PIL import Image
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (
    ConfigSettings,
    DAGSettings,
    OutputSettings,
    Quietness,
    ResourceSettings,
)
from snakemake_interface_common.exceptions import WorkflowError

from talk3d_core.cli import main as talk3d
from talk3d_core.util.media import probe

pytestmark = pytest.mark.workflow


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of the workflow, library and config, with one short subject and a driving audio."""
    make_workflow_project(tmp_path)
    # Parsing the Snakefile puts the project copy on sys.path; keep that inside the test.
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


# Tiny budgets, set through Snakemake's config API like a user's --config (merged key by key over
# config/config.yaml): a few prior and training steps exercise each stage, one novel view and a small
# FID reference set the render and evaluation stages. The zoomed mouth loss is on, so it runs through
# the workflow too. The scratch prior renders 32 rays x (8 + 8) samples to 64 px, below the defaults.
SIZES = {"neural_rendering_resolution": 32, "image_resolution": 64, "depth_resolution": 8,
         "depth_resolution_importance": 8}  # fmt: skip
BUDGETS = {
    "prior": {"steps": 6, **SIZES},
    "train": {"steps": 4, "sr_steps": 2, "weight_mouth_zoom": 1.0, "mouth_zoom": 8},
    "render": {"views": {"yaw": [30], "pitch": [-20]}},
    "evaluate": {"fid_reference_frames": 8},
}


def merged(base: dict, over: dict) -> dict:
    """``over`` merged into ``base`` key by key (nested dicts too), as Snakemake merges --config."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def run(project: Path, targets: list[str], config: dict | None = None, dryrun: bool = False) -> None:
    with SnakemakeApi(OutputSettings(quiet={Quietness.PROGRESS, Quietness.RULES})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=2),
            config_settings=ConfigSettings(config=merged(BUDGETS, config or {})),
            snakefile=project / "workflow/Snakefile",
            workdir=project,
        )
        dag = workflow.dag(DAGSettings(targets=set(targets)))
        dag.execute_workflow(executor="dryrun" if dryrun else "local")


def mtimes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in (root / "results").rglob("*")
        if p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts
    }


def changed(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {k for k in after if before.get(k) != after[k]}


ALL = ["all"]
PRIOR_FILES = ["generator.pt", "P_id.pt", "frames.parquet", "metrics.json", "prior_sheet.png"]
TRAIN_FILES = ["deltaplane.pt", "loss_curves.png", "ablation.json", "ablation_sheet.png"]
# What the render and evaluation stages make of a trained model (with the fixture's one view), and
# the FID reference of the training crops.
RESULT_FILES = ["video.mp4", "depth.mp4", "drive/voice.mp4", "views/30_-20.mp4", "renders/video.mkv",
                "renders/drive/voice.mkv", "renders/views/30_-20.mkv", "metrics.parquet",
                "metrics_views.png", "videos.html", "fid_reference.npz"]  # fmt: skip


def outputs(files: dict[str, int], *stages: str) -> set[str]:
    """The files of the given stages among ``files`` (stage = output name or folder under results/clip)."""
    return {k for k in files if any(k.startswith(f"results/clip/{stage}") for stage in stages)}


def test_reruns_only_what_changed(project, monkeypatch):
    run(project, ALL)
    out = project / "results/clip"
    for path in ["frames/000000.png", "crops/000000.png", "masks/000000.png", "drive/voice/features.parquet",
                 "landmarks.parquet", "crop.parquet", "camera.parquet", "preprocess_sheet.png",
                 "features.parquet", "prior/P_id.pt", "prior/prior_sheet.png", "train/deltaplane.pt",
                 "train/loss_curves.png", "train/ablation.json", "train/samples/step_000006.png",
                 "logs/ingest.log", "benchmarks/ingest.tsv", *RESULT_FILES]:  # fmt: skip
        assert (out / path).is_file(), path
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert {"footage", "self", "ground_truth", "drive:voice", "view:30_-20"} <= set(metrics.setting)
    assert {"psnr", "ssim", "lpips", "lmd", "aue", "idsim", "fid", "lse_c", "lse_d"} <= set(metrics.metric)
    missing = metrics[metrics.status != "ok"]
    assert (missing.reason != "").all() and missing.value.isna().all()
    # The budgets reached the stages, and the zoomed mouth loss trained in the main stage.
    log = [json.loads(line) for line in (out / "train/train_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["main"] * 4 + ["sr"] * 2
    assert all(r["mouth_zoom"] > 0 for r in log if r["stage"] == "main")
    saved = torch.load(out / "prior/generator.pt", map_location="cpu", weights_only=True)["config"]
    assert {k: saved[k] for k in SIZES} == SIZES  # the prior's size settings reached the generator
    first = mtimes(project)

    run(project, ALL)  # nothing changed: nothing runs
    assert mtimes(project) == first

    run(project, ALL, config={"camera": {"sigma_frames": 1.0}})  # a later stage's config value
    second = mtimes(project)
    assert changed(first, second) == outputs(
        second,
        "camera.parquet",
        "preprocess_sheet.png",
        "features.parquet",
        "drive/voice/features.parquet",
        "prior/",
        "train/",
        *RESULT_FILES,
    )

    # Editing the masks module re-runs masks and what shows them, nothing upstream.
    with open(project / "talk3d_core/masks.py", "a") as fh:
        fh.write("\n# edited\n")
    run(project, ALL, config={"camera": {"sigma_frames": 1.0}})
    third = mtimes(project)
    # The prior and the deltaplane stage read the masks, so they re-run too; the masks are unchanged in
    # content, so they resume from their finished checkpoints instead of training again (checkpoints,
    # logs and samples stay untouched).
    prior_outputs = {f"results/clip/prior/{f}" for f in PRIOR_FILES}
    train_outputs = {f"results/clip/train/{f}" for f in TRAIN_FILES}
    result_outputs = {f"results/clip/{f}" for f in RESULT_FILES}
    assert (
        changed(second, third)
        == outputs(third, "masks/", "preprocess_sheet.png") | prior_outputs | train_outputs | result_outputs
    )

    # Editing ingest re-runs everything downstream of it.
    with open(project / "talk3d_core/ingest.py", "a") as fh:
        fh.write("\n# edited\n")
    run(project, ALL, config={"camera": {"sigma_frames": 1.0}})
    fourth = mtimes(project)
    # Re-ingesting gives identical frames, so both trainings resume their finished checkpoints untouched.
    training_state = outputs(
        fourth, "prior/checkpoint", "prior/train_log", "train/checkpoint", "train/train_log",
        "train/samples/", "train/tensorboard/",
    )  # fmt: skip
    assert changed(third, fourth) == set(fourth) - training_state

    # The talk3d command renders from the trained files, without Snakemake: after an edit to the
    # training stage's code it drives, views and draws a frame, and nothing under results/ changes.
    with open(project / "talk3d_core/train.py", "a") as fh:
        fh.write("\n# edited\n")
    monkeypatch.chdir(project)  # talk3d moves into its workflow directory; restored after the test
    made = project.parent / "talk3d"
    for args in (
        ["drive", "clip", "voice.mp3", "-o", str(made / "driven.mp4"), "--camera", "fixed", "--size", "48"],
        ["view", "clip", "--yaw", "-25", "--pitch", "10", "-o", str(made / "view.mp4")],
        ["frame", "clip", "--yaw", "15", "--pitch", "-5", "--frame", "3", "-o", str(made / "frame.png")],
    ):
        result = CliRunner().invoke(talk3d, ["-C", str(project), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    (made / "notes.wav").write_text("this is text, not sound")
    args = ["-C", str(project), "drive", "clip", str(made / "notes.wav"), "-o", str(made / "bad.mp4")]
    result = CliRunner().invoke(talk3d, args, catch_exceptions=False)
    assert result.exit_code == 1 and "notes.wav" in result.output and not (made / "bad.mp4").exists()
    assert mtimes(project) == fourth
    driven = probe(made / "driven.mp4")
    assert driven.video.display_size == (48, 48) and driven.audio is not None
    assert len(decode_video(made / "driven.mp4")) == 38  # 1.5 s of audio at 25 fps
    held_out = pd.read_parquet(out / "features.parquet").query("split == 'test'")
    assert len(decode_video(made / "view.mp4")) == len(held_out)
    assert Image.open(made / "frame.png").size == (64, 64)  # render.output_size null: the model's size

    # The edited training code retrains the model: it is rendered and scored again, against the same
    # FID reference (the training crops' features), which is not recomputed.
    run(project, ALL, config={"camera": {"sigma_frames": 1.0}})
    retrained = changed(fourth, mtimes(project))
    assert "results/clip/fid_reference.npz" not in retrained
    assert "results/clip/train/deltaplane.pt" in retrained
    assert {f"results/clip/{f}" for f in RESULT_FILES if f != "fid_reference.npz"} <= retrained


def test_pretrained_mode_personalizes_an_eg3d_pickle(project):
    """prior.mode pretrained: a missing checkpoint stops before any job, naming the key and file; an
    NVlabs-layout pickle (tiny random generator) is personalized and writes the stage's outputs."""
    settings = {"mode": "pretrained", "checkpoint": "eg3d.pkl", "plane_axes": "fixed"}
    with pytest.raises(Exception, match=r"prior\.checkpoint: eg3d\.pkl does not exist"):
        run(project, ["results/clip/prior/P_id.pt"], config={"prior": settings})
    assert not (project / "results").exists()
    # The NGC pickle of the manifest (config/paper.yaml's prior) is planned: the weights rule fetches it.
    ngc = {"mode": "pretrained", "checkpoint": "resources/weights/eg3d/ffhqrebalanced512-128.pkl"}
    run(
        project,
        ["results/clip/prior/P_id.pt"],
        config={"prior": ngc | {"plane_axes": "original"}},
        dryrun=True,
    )
    write_snapshot(project / "eg3d.pkl", random_generator())
    tiny = {"n_pivots": 2, "pivot_steps": 2, "tune_steps": 2, "frame_first_steps": 1, "frame_steps": 1}
    run(project, ["results/clip/prior/P_id.pt"], config={"prior": settings | {"pretrained": tiny}})
    out = project / "results/clip/prior"
    assert all((out / name).is_file() for name in PRIOR_FILES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "pretrained" and len(metrics["views"]) == 9
    frames = pd.read_parquet(out / "frames.parquet")
    assert (frames["offset_norm"][frames["split"] == "test"] > 0).all()  # test frames are inverted too
    assert "lpips unavailable" in (project / "results/clip/logs/prior.log").read_text()


def test_unknown_config_key_stops_before_any_job(project):
    with pytest.raises(Exception, match=r"key 'ingest\.fsp'.*unknown key"):
        run(project, ALL, config={"ingest": {"fsp": 30}})
    assert not (project / "results").exists()


def test_missing_video_stops_before_any_job(project):
    (project / "clip.mp4").unlink()
    with pytest.raises(Exception, match=r"subject 'clip'.*video file clip.mp4 does not exist"):
        run(project, ALL)
    assert not (project / "results").exists()


def test_demo_subject_end_to_end(project):
    """The demo clip is generated in code by the workflow, then ingested; a short one keeps it quick."""
    (project / "config/subjects.tsv").write_text(
        "name\tvideo\tnotes\ndemo\tresources/demo/astronaut.mp4\tsynthetic\n"
    )
    run(project, ["results/demo/ingest_preview.png"], config={"demo": {"duration_s": 4.0, "size": 256}})
    meta = (project / "results/demo/meta.json").read_text()
    assert '"n_frames": 100' in meta
    assert (project / "resources/demo/astronaut.truth.json").is_file()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def test_lint_is_clean():
    proc = cli("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr


GPU_RULES = {
    "prior",
    "train",
    "ablation",
    "render_video",
    "render_drive",
    "render_view",
    "fid_reference",
    "evaluate",
}


def test_slurm_profile_routes_every_gpu_rule_to_the_gpu_partition():
    proc = cli(
        "--profile",
        "workflow/profiles/slurm",
        "-n",
        "--forceall",  # plan every job even where this checkout already has results/demo
        "results/demo/videos.html",
        "results/demo/train/ablation.json",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for rule in ("demo_clip", "ingest", "landmarks", "crop", "masks", "features", "prior", "train"):
        assert re.search(rf"^{rule}\s+1$", out, re.M), rule  # planned once, in the job table
    jobs = [block.split("\n\n")[0] for block in out.split("\nrule ")[1:]]
    on_gpu = {job.split(":")[0] for job in jobs if re.search(r"\bgpu=1\b", job)}
    assert on_gpu == GPU_RULES
    for job in jobs:
        gpu = re.search(r"\bgpu=1\b", job) is not None
        assert ("slurm_partition=gpu" in job) == gpu, job


def test_the_paper_preset_needs_its_loss_nets_before_any_job():
    """Paper losses never drop out quietly: missing packages stop the plan; weights become inputs."""
    proc = cli(
        "-n", "--forceall", "--configfile", "config/paper.yaml", "--", "results/demo/train/deltaplane.pt"
    )
    out = proc.stdout + proc.stderr
    missing = [p for p in ("lpips", "torchvision", "facexlib", "filterpy", "numba") if find_spec(p) is None]
    if missing:  # the default install: the plan stops, naming each package and the install command
        assert proc.returncode != 0 and "allow_missing_nets: false" in out, out
        assert all(p in out for p in missing) and "make install-paper" in out
    else:  # with the paper extras: the weights are fetched from the manifest before training
        assert proc.returncode == 0, out
        for dest in (
            "lpips/alexnet-owt-7be5be79.pth",
            "arcface/model_ir_se50.pth",
            "syncnet/lipsync_expert.pth",
            "gfpgan/GFPGANv1.3.pth",  # train.sr gfpgan
        ):
            assert f"resources/weights/{dest}" in out


def test_weights_rule_fetches_manifest_entries(project):
    import hashlib

    source = project / "model.bin"
    source.write_bytes(b"pretend weights " * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    (project / "resources/weights/manifest.yaml").write_text(
        "weights:\n"
        "  - name: toy\n"
        f"    url: {source.as_uri()}\n"
        f"    sha256: '{digest}'\n"
        "    license: CC0\n"
        "    dest: toy/model.bin\n"
    )
    run(project, ["weights"])
    fetched = project / "resources/weights/toy/model.bin"
    assert fetched.read_bytes() == source.read_bytes()
    assert (project / "results/logs/weights/toy/model.bin.log").is_file()


@pytest.mark.skipif(not (SHARED_DATA / "videos/no_face.mp4").is_file(), reason="../shared/data not present")
def test_clip_without_a_face_fails_clearly_and_keeps_ingest(project):
    (project / "config/subjects.tsv").write_text(
        f"name\tvideo\nscenery\t{SHARED_DATA / 'videos/no_face.mp4'}\n"
    )
    with pytest.raises(WorkflowError):
        run(project, ["results/scenery/landmarks.parquet"])
    log = (project / "results/scenery/logs/landmarks.log").read_text()
    assert "no face found in any of the 99 frames" in log  # the stage's own message, in its log
    assert (project / "results/scenery/meta.json").is_file()  # the finished ingest is kept
    assert not (project / "results/scenery/landmarks.parquet").exists()


def test_unlisted_driving_audio_comes_from_the_drive_audio_folder(project):
    (project / "resources/audio").mkdir(parents=True)
    shutil.copy(project / "voice.mp3", project / "resources/audio/news.mp3")
    run(project, ["results/clip/drive/news.mp4"], dryrun=True)  # planned from resources/audio/news.mp3
    with pytest.raises(Exception, match="no driving audio 'absent'.*resources/audio/absent"):
        run(project, ["results/clip/drive/absent.mp4"], dryrun=True)
