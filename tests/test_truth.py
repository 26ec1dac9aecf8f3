"""Scores against the demo clip's drawn truth: the dark-area measure on crops made as the workflow
makes them, its regions, the truth file's checks, the ablation's truth section and its verdict, the
metrics rows, and which subjects the workflow gives a truth file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import brightness_landmarks, make_workflow_project, moving_head, talking_disc
from PIL import Image

import talk3d_core.ablation as ablation
from talk3d_core.crop import crop_clip, read_crop_table, warp_crop
from talk3d_core.demo import _Portrait, make_demo_clip
from talk3d_core.evaluate import Metric
from talk3d_core.ingest import ingest_video
from talk3d_core.landmarks import detect_landmarks
from talk3d_core.metrics.truth import (
    BLINK_BACKEND,
    OPENING_BACKEND,
    ClipTruth,
    TruthRegions,
    blur,
    eye_dark_area,
    matching_blur,
    mouth_dark_area,
    read_clip_truth,
    truth_rows,
)
from talk3d_core.util.io import list_frames

FPS, SOURCE, CROP, MODEL = 25, 256, 256, 64  # the workflow's crop size, the CPU preset's model size


def _model_size(crop_paths, size: int = MODEL) -> np.ndarray:
    """Crops resized to the model's size as the subject loader does (box filter), (N, S, S, 3) uint8."""
    return np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BOX))
            for p in crop_paths
        ]
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 2 s demo clip through ingest, landmarks and crop, as the workflow runs them."""
    root = tmp_path_factory.mktemp("truth")
    truth = make_demo_clip(
        root / "clip.mp4", duration_s=2.0, fps=FPS, size=SOURCE, seed=0, truth_json=root / "clip.truth.json"
    )
    ingest_video(
        root / "clip.mp4",
        root / "frames",
        root / "audio.wav",
        root / "meta.json",
        fps=FPS,
        min_duration_s=1.0,
    )
    track = detect_landmarks(list_frames(root / "frames"), backend="mediapipe", fps=FPS)
    crop_clip(list_frames(root / "frames"), track.lm68, root / "crops", root / "crop.parquet", size=CROP)
    return root, truth


def test_the_dark_areas_follow_the_drawn_mouth_and_blinks_at_the_model_size(clip):
    root, drawn = clip
    truth = read_clip_truth(
        root / "clip.truth.json", read_crop_table(root / "crop.parquet"), n_frames=50, fps=FPS
    )
    assert drawn["n_frames"] == 50 and max(drawn["blink"]) == 1.0 and max(drawn["mouth_open"]) > 0.9
    scores = truth.scores(_model_size(list_frames(root / "crops")), np.arange(50))
    assert scores["opening_r"] > 0.97, scores
    assert scores["blink_r"] > 0.9, scores
    assert scores["blink_frames"] == int((np.array(drawn["blink"]) > 0).sum())


def test_the_dark_areas_grow_with_the_opening_and_shrink_as_the_lids_close(clip):
    """Frames drawn at rest with one quantity stepped, cropped with the clip's own framing."""
    root, _ = clip
    table = read_crop_table(root / "crop.parquet")
    regions = TruthRegions.of_landmarks(table.lm68, table.size)
    portrait = _Portrait(SOURCE)
    affine = np.median(table.affine, axis=0)  # the head at rest sits where the clip's crops put it

    def crops(values, key):
        frames = [
            portrait.render(mouth_open=v if key == "mouth" else 0.0, blink=v if key == "blink" else 0.0,
                            roll_deg=0.0, tx=0.0, ty=0.0, scale=1.0)
            for v in values
        ]  # fmt: skip
        return np.stack(
            [
                np.asarray(
                    Image.fromarray(warp_crop(f, affine, CROP)).resize((MODEL, MODEL), Image.Resampling.BOX)
                )
                for f in frames
            ]
        )

    steps = np.linspace(0.0, 1.0, 5)
    assert np.all(np.diff(mouth_dark_area(crops(steps, "mouth"), regions)) > 0)
    assert np.all(np.diff(eye_dark_area(crops(steps, "blink"), regions)) < 0)
    # The mouth's figure does not move with a blink, nor the eyes' with the mouth, beyond noise.
    assert np.ptp(mouth_dark_area(crops(steps, "blink"), regions)) < 0.01
    assert np.ptp(eye_dark_area(crops(steps, "mouth"), regions)) < 0.01


def test_a_truth_of_another_rate_or_length_is_refused_naming_the_file(clip):
    root, _ = clip
    path, table = root / "clip.truth.json", read_crop_table(root / "crop.parquet")
    with pytest.raises(
        ValueError, match=r"clip\.truth\.json: the truth is at 25 fps but the pipeline runs at 30"
    ):
        read_clip_truth(path, table, n_frames=60, fps=30)
    with pytest.raises(
        ValueError, match=r"clip\.truth\.json: the truth has 50 frames but the ingested clip has 49"
    ):
        read_clip_truth(path, table, n_frames=49, fps=FPS)
    broken = root / "broken.truth.json"
    broken.write_text(json.dumps({"fps": FPS, "n_frames": 50}))
    with pytest.raises(
        ValueError, match=r"broken\.truth\.json: the clip's truth lacks \['mouth_open', 'blink'\]"
    ):
        read_clip_truth(broken, table, n_frames=50, fps=FPS)


# ------------------------------------------------------------------- the ablation's truth section


def _disc_truth(n: int) -> ClipTruth:
    """conftest.talking_disc's truth: its mouth's opening, a blink drawn nowhere, regions on the disc."""
    opening = (np.sin(np.arange(n) * 1.3) + 1) / 2
    boxes = {"mouth": (10 / 32, 17 / 32, 22 / 32, 26 / 32), "skin": (12 / 32, 8 / 32, 20 / 32, 14 / 32)}
    eyes = ((9 / 32, 11 / 32, 14 / 32, 14 / 32), (18 / 32, 11 / 32, 23 / 32, 14 / 32))
    return ClipTruth("disc.truth.json", opening, np.zeros(n), TruthRegions(eyes=eyes, **boxes))


def test_the_truth_section_scores_each_setting_and_says_whom_to_trust(tmp_path, monkeypatch):
    """(Without a truth there is no section: test_ablation.)"""
    data = talking_disc(n=20)
    data.train[:] = np.arange(20) < 8  # 12 held-out frames
    monkeypatch.setattr(ablation, "landmarks_of_images", brightness_landmarks)
    result = ablation.audio_ablation(
        moving_head(), data, truth=_disc_truth(20), sheet_png=tmp_path / "sheet.png"
    )
    truth = result["truth"]
    assert truth["frames"] == 12 and truth["blink_frames"] == 0
    assert truth["backends"] == {"opening": OPENING_BACKEND, "blink": BLINK_BACKEND}
    assert set(truth["settings"]) == {"identity", "no_audio", "full"}
    assert truth["ground_truth"]["opening_r"] > 0.95  # the disc's dark mouth is its opening
    assert truth["ground_truth"]["blink_r"] is None  # nothing drawn to follow
    assert set(truth["differences"]) == {"full-no_audio", "full-identity"}
    verdict = truth["verdict"]
    assert verdict["trust"] in {"both", "synthetic truth", "detector", "neither"}
    assert verdict["agree"] == (not verdict["disagreements"]) and verdict["statement"]
    # The sheet carries the verdict below its four rows of frames.
    rows_h = 4 * data.crops.shape[-1]
    assert Image.open(tmp_path / "sheet.png").height > rows_h
    json.dumps(result)  # JSON-ready


def _sections(
    readers: dict[str, tuple[float, float]], full: tuple[float, float], no_audio: tuple[float, float]
):
    """(truth section, detector results): readers' r on the crops as they are and blurred by 1 px,
    {"detector": ..., "truth": ...}; per setting the opening r (detector's, truth's)."""
    settings = {"full": full, "no_audio": no_audio}
    detector = {
        "landmark_backend": "mediapipe",
        "ground_truth": {"detected": 1.0},
        "settings": {n: {"opening_correlation": d, "detected": 1.0} for n, (d, _) in settings.items()},
        "differences": {
            "full-no_audio": {
                "opening_correlation": {"difference": full[0] - no_audio[0], "ci95": [-0.05, 0.05]},
                "lmd": {"difference": 2.35, "ci95": [1.66, 3.09]},  # the full model worse, clearly
            }
        },
    }
    gap = full[1] - no_audio[1]
    (d_crops, d_blurred), (t_crops, t_blurred) = readers["detector"], readers["truth"]
    truth = {
        "ground_truth": {"opening_r": t_crops, "detector_opening_r": d_crops},
        "blurred_ground_truth": {"1": {"opening_r": t_blurred, "detector_opening_r": d_blurred}},
        "blur": {n: {"sigma_px": 1.0} for n in settings},
        "settings": {n: {"opening_r": t, "detector_opening_r": d / 2} for n, (d, t) in settings.items()},
        "differences": {"full-no_audio": {"opening_r": {"difference": gap, "ci95": [gap - 0.1, gap + 0.1]}}},
    }
    return truth, detector


def test_the_verdict_follows_the_numbers():
    # Opposite readings; the detector reads the crops well but not once blurred like the renders.
    readers = {"detector": (0.99, -0.71), "truth": (0.999, 0.997)}
    truth, detector = _sections(readers, full=(-0.71, 0.62), no_audio=(-0.2, 0.05))
    v = ablation.truth_verdict(truth, detector)
    assert not v["agree"] and v["trust"] == "synthetic truth"
    assert v["readers"]["detector"]["worst_known_r"] == -0.71
    assert any(d.startswith("full: mouth-opening r -0.71") for d in v["disagreements"])
    assert any(
        "full-no_audio: by the detector's LMD the full model is worse" in d for d in v["disagreements"]
    )
    assert "+0.99 (blurred by 1 px -0.71)" in v["statement"] and "full - no_audio +0.57" in v["statement"]
    # The same disagreement, but the detector reads the known images better: trust the detector.
    readers = {"detector": (0.95, 0.9), "truth": (0.9, 0.85)}
    truth, detector = _sections(readers, full=(-0.71, 0.62), no_audio=(-0.2, 0.05))
    assert ablation.truth_verdict(truth, detector)["trust"] == "detector"
    # Neither reads them well enough.
    readers = {"detector": (0.95, 0.5), "truth": (0.7, 0.6)}
    truth, detector = _sections(readers, full=(-0.71, 0.62), no_audio=(-0.2, 0.05))
    assert ablation.truth_verdict(truth, detector)["trust"] == "neither"
    # Close figures and no opposite ranking: they agree.
    readers = {"detector": (0.99, -0.71), "truth": (0.999, 0.997)}
    truth, detector = _sections(readers, full=(0.55, 0.6), no_audio=(0.5, 0.58))
    detector["differences"]["full-no_audio"]["lmd"] = {"difference": -0.1, "ci95": [-0.3, 0.1]}
    v = ablation.truth_verdict(truth, detector)
    assert v["agree"] and v["trust"] == "both" and v["disagreements"] == []
    # The detector finds no mouth on the renders: nothing to agree on; the truth, if it reads well.
    for s in detector["settings"].values():
        s["opening_correlation"] = None
    v = ablation.truth_verdict(truth, detector)
    assert not v["agree"] and v["trust"] == "synthetic truth" and v["statement"].startswith("No setting has")


def test_matching_blur_finds_how_blurred_the_renders_are(clip):
    root, _ = clip
    table = read_crop_table(root / "crop.parquet")
    regions = TruthRegions.of_landmarks(table.lm68, table.size)
    crops = _model_size(list_frames(root / "crops")[:10])
    for sigma in (0.0, 1.0, 2.0):
        assert matching_blur(blur(crops, sigma), crops, regions) == sigma


def test_metrics_rows_name_the_truth_backends_and_say_why_one_is_missing():
    data = talking_disc(n=12)
    truth = _disc_truth(12)
    images = data.crops.permute(0, 2, 3, 1).numpy()
    frames = np.arange(6, 12)
    rows = [Metric(**r) for r in truth_rows(truth, frames, {"self": images[6:], "ground_truth": images[6:]})]
    by = {(r.setting, r.metric): r for r in rows}
    assert {r.backend for r in rows} == {OPENING_BACKEND, BLINK_BACKEND}
    assert by[("ground_truth", "mouth_opening_r")].value > 0.95
    blink = by[("self", "blink_r")]
    assert blink.status == "unavailable" and blink.value is None and "drawn lid closure" in blink.reason


# ------------------------------------------------------------------------------ the workflow's input


@pytest.mark.workflow
def test_only_subjects_with_a_truth_file_give_it_to_ablation_and_evaluate(tmp_path):
    """The demo's truth comes from rule demo_clip; another clip's from a .truth.json beside it."""
    make_workflow_project(tmp_path)
    (tmp_path / "config/subjects.tsv").write_text(
        "name\tvideo\tnotes\nclip\tclip.mp4\trecorded\ndemo\tresources/demo/astronaut.mp4\tsynthetic\n"
    )

    def inputs() -> dict[tuple[str, str], str]:
        targets = [
            f"results/{s}/{f}" for s in ("clip", "demo") for f in ("train/ablation.json", "metrics.parquet")
        ]
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--forceall", *targets],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        jobs = {}
        for block in proc.stdout.split("\nrule ")[1:]:
            rule, lines = block.split(":", 1)
            if rule in ("ablation", "evaluate"):
                subject = "demo" if "results/demo/" in lines else "clip"
                jobs[rule, subject] = next(line for line in lines.splitlines() if "input:" in line)
        return jobs

    jobs = inputs()
    for rule in ("ablation", "evaluate"):
        assert "resources/demo/astronaut.truth.json" in jobs[rule, "demo"]
        assert "truth.json" not in jobs[rule, "clip"]
    (tmp_path / "clip.truth.json").write_text("{}")
    jobs = inputs()
    for rule in ("ablation", "evaluate"):
        assert "clip.truth.json" in jobs[rule, "clip"]
