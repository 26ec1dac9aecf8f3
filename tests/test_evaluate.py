"""Metrics of the evaluation stage against known values, the metric table's shape and outputs, and
the stage scoring the render rules' stored renders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import talking_disc

from talk3d_core.evaluate import (
    COLUMNS,
    DriveInput,
    Metric,
    aue_metric,
    evaluate_subject,
    face_metrics,
    fid_metric,
    identity_metrics,
    metrics_text,
    motion_metrics,
    mouth_metrics,
    plot_view_metrics,
    sync_metrics,
    write_metrics,
)
from talk3d_core.metrics.fid import FidReference, fid, reference_frames
from talk3d_core.nets.optional import OptionalNets
from talk3d_core.report.video_page import Clip, video_page
from talk3d_core.util import runs
from talk3d_core.util.images import to_uint8, to_unit
from talk3d_core.util.media import VideoWriter


def by_metric(rows: list[Metric]) -> dict[str, Metric]:
    return {r.metric: r for r in rows}


def face_images(n: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_identical_images_score_perfectly_and_noise_lowers_them():
    truth = face_images()
    face = np.ones(truth.shape[:3], bool)
    b = OptionalNets(reasons={"lpips": "no lpips here"})
    same = by_metric(face_metrics("self", truth, truth, face, b))
    assert same["psnr"].value > 90 and same["ssim"].value == pytest.approx(1.0, abs=1e-6)
    assert same["psnr"].unit == "dB" and same["psnr"].frames == 3
    # LPIPS without its weights: a row that says so, no number.
    assert same["lpips"].status == "unavailable" and same["lpips"].value is None
    assert same["lpips"].reason == "no lpips here"

    noisy = np.clip(truth.astype(int) + np.random.default_rng(1).normal(0, 8, truth.shape), 0, 255)
    scored = by_metric(face_metrics("self", noisy.astype(np.uint8), truth, face, b))
    assert 25 < scored["psnr"].value < 40 and scored["ssim"].value < 0.99


def test_psnr_counts_only_the_face_region():
    truth = face_images()
    render = truth.copy()
    render[:, :16] = 0  # wrong only outside the face region
    face = np.zeros(truth.shape[:3], bool)
    face[:, 16:] = True
    rows = by_metric(face_metrics("self", render, truth, face, OptionalNets(reasons={"lpips": "x"})))
    assert rows["psnr"].value > 90


def test_lpips_row_uses_the_backend_when_present():
    calls = []

    def fake_lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(a.shape)
        return (a - b).abs().flatten(1).mean(1)

    truth = face_images(n=10)
    rows = by_metric(
        face_metrics("self", truth, truth, np.ones(truth.shape[:3], bool), OptionalNets(lpips=fake_lpips), 8)
    )
    assert rows["lpips"].status == "ok" and rows["lpips"].value == pytest.approx(0.0)
    assert [s[0] for s in calls] == [8, 2]  # in batches


def mouth_landmarks(n: int = 20, opening: np.ndarray | None = None) -> np.ndarray:
    """68 points on a 64 px crop with an inner-lip gap that follows ``opening`` (pixels)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(10, 50, (68, 2))
    lm = np.repeat(base[None], n, axis=0)
    gap = np.linspace(0.5, 3, n) if opening is None else opening
    lm[:, [61, 62, 63], 0] = lm[:, [67, 66, 65], 0] = [28.0, 32.0, 36.0]
    lm[:, 61:64, 1] = 40 - gap[:, None] / 2  # upper inner lip
    lm[:, 65:68, 1] = 40 + gap[:, None] / 2  # lower inner lip
    return lm


def test_mouth_metrics_of_shifted_landmarks():
    truth = mouth_landmarks()
    shifted = truth + np.array([1.0, 0.0])  # 1 px of a 64 px crop = 4 px of a 256 px one
    rows = by_metric(mouth_metrics("self", shifted, truth, 64, "mediapipe"))
    assert rows["lmd"].value == pytest.approx(4.0)
    assert rows["lmd"].unit == "px@256" and rows["lmd"].backend == "mediapipe"
    assert rows["mouth_opening_r"].value == pytest.approx(1.0)
    assert rows["mouth_opening_mae"].value == pytest.approx(0.0, abs=1e-9)
    # No face found on any render: the scores cannot be computed and say so.
    missing = by_metric(mouth_metrics("self", np.full_like(truth, np.nan), truth, 64, "mediapipe"))
    assert missing["lmd"].status == "unavailable" and missing["landmarks_found"].value == 0.0


def eye_landmarks(closure: np.ndarray) -> np.ndarray:
    """68 points whose eyes close by ``closure`` (0 open .. 1 shut) per frame."""
    lm = np.zeros((len(closure), 68, 2))
    for start, x0 in ((36, 10.0), (42, 40.0)):
        lm[:, start] = [x0, 20]
        lm[:, start + 3] = [x0 + 12, 20]
        half = 2.0 * (1 - closure)
        for k, dx in ((1, 4), (2, 8)):
            lm[:, start + k] = np.stack([np.full_like(half, x0 + dx), 20 - half], 1)
        for k, dx in ((5, 4), (4, 8)):
            lm[:, start + k] = np.stack([np.full_like(half, x0 + dx), 20 + half], 1)
    return lm


def test_aue_is_zero_for_the_same_eyes_and_grows_with_a_missed_blink():
    from talk3d_core.face.blink import calibrate_au45, eye_aspect_ratio

    closure = np.zeros(100)
    for start in (20, 50, 80):
        closure[start : start + 3] = [0.5, 0.9, 0.5]
    truth = eye_landmarks(closure)
    calibration = calibrate_au45(eye_aspect_ratio(truth))
    assert aue_metric("self", truth, truth, calibration, "mp")[0].value == pytest.approx(0.0, abs=1e-6)
    open_eyes = eye_landmarks(np.zeros(100))
    missed = aue_metric("self", open_eyes, truth, calibration, "mp")[0]
    assert missed.value > 0.05 and missed.unit == "AU45" and missed.backend == "ear-au45 (mp)"
    no_calibration = aue_metric("self", truth, truth, None, "mp")[0]
    assert no_calibration.status == "unavailable" and "no AU45 calibration" in no_calibration.reason


def test_motion_metrics_follow_the_audio():
    fps, rate = 25, 16000
    n = 100
    t = np.arange(n * rate // fps) / rate
    envelope = np.repeat((np.arange(n) // 10) % 2 == 1, rate // fps).astype(float)  # 0.4 s on/off
    wav = 0.3 * envelope * np.sin(2 * np.pi * 220 * t)
    speaking = (np.arange(n) // 10) % 2 == 1
    lm = mouth_landmarks(n, opening=np.where(speaking, 3.0, 0.0))
    rows = by_metric(motion_metrics("drive:x", lm, 64, wav, rate, fps, "mediapipe"))
    assert rows["mouth_energy_r"].value > 0.8
    assert rows["silence_closed_fraction"].value == pytest.approx(1.0)
    assert rows["opening_speech"].value > rows["opening_silence"].value
    # A render that opens only 6 px@256 in speech (1.5 px of the 64 px crop) and keeps a 3.2 px seam in
    # the pauses: open by its own quarter (1.5 px), closed by a footage's that opens 16 px (4 px).
    shy = np.where(speaking, 1.5, 0.8)
    own = by_metric(motion_metrics("drive:x", mouth_landmarks(n, shy), 64, wav, rate, fps, "mp"))
    assert own["silence_closed_fraction"].value == 0.0 and own["closed_threshold"].value == pytest.approx(1.5)
    judged = motion_metrics("drive:x", mouth_landmarks(n, shy), 64, wav, rate, fps, "mp", closed_below=4.0)
    judged = by_metric(judged)
    assert judged["silence_closed_fraction"].value == 1.0 and judged["closed_threshold"].value == 4.0
    # A mouth that never moves: no correlation, reported as unavailable, not as a number.
    still = by_metric(motion_metrics("drive:x", mouth_landmarks(n, np.ones(n)), 64, wav, rate, fps, "mp"))
    assert still["mouth_energy_r"].status == "unavailable"


def test_missing_models_give_unavailable_rows_with_reasons():
    b = OptionalNets(
        embedders={"dlib": None, "arcface": None},
        reasons={"embedders:dlib": "dlib missing", "embedders:arcface": "no ArcFace weights",
                 "fid": "no inception", "syncnet": "no syncnet_v2.model"},
    )  # fmt: skip
    images = face_images()
    rows = identity_metrics("self", {}, b, 3, truth={})
    assert [(r.backend, r.status, r.reason) for r in rows] == [
        ("dlib", "unavailable", "dlib missing"),
        ("arcface", "unavailable", "no ArcFace weights"),
    ]
    reference = FidReference(np.zeros((4, 2048), np.float32), np.arange(4), 32, "black", "inception")
    assert fid_metric("self", None, reference, b, 3)[0].reason == "no inception"
    no_reference = FidReference(None, np.arange(4), 32, "black", "inception", "not installed")
    with_inception = OptionalNets(fid=ToyInception())
    missing = fid_metric("self", np.zeros((3, 2048)), no_reference, with_inception, 3)[0]
    assert missing.status == "unavailable" and missing.reason == "no FID reference: not installed"
    sync = sync_metrics("self", images, np.zeros(16000), 16000, b)
    assert {r.metric for r in sync} == {"lse_c", "lse_d", "sync_offset"}
    assert all(r.value is None and r.reason == "no syncnet_v2.model" for r in sync)


def test_identity_metric_with_a_backend():
    class Embedder:
        name = "toy"

        def embed(self, images: np.ndarray) -> np.ndarray:
            v = images.reshape(len(images), -1)[:, :8].astype(np.float32) + 1
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    images = face_images()
    b = OptionalNets(embedders={"toy": Embedder()})
    emb = {"toy": Embedder().embed(images)}
    same = identity_metrics("self", emb, b, 3, truth=emb)[0]
    assert same.value == pytest.approx(1.0) and same.backend == "toy" and same.unit == "cosine"
    reference = {"toy": emb["toy"][0]}
    first = identity_metrics("view:30_20", {"toy": emb["toy"][:1]}, b, 1, reference=reference)[0]
    assert first.value == pytest.approx(1.0) and first.frames == 1


def table() -> pd.DataFrame:
    rows = [
        Metric("self", "psnr", "face-region", 28.5, "dB", 45),
        Metric("self", "lpips", "lpips-alex", None, "", 45, "unavailable", "no weights"),
    ]
    for yaw in (-30, 30):
        for pitch in (-20, 20):
            rows.append(Metric(f"view:{yaw}_{pitch}", "fid", "inception", 100.0 + yaw + pitch, "", 45))
    return pd.DataFrame([r.__dict__ for r in rows], columns=list(COLUMNS))


def test_outputs_table_text_plot_and_page(tmp_path):
    t = table()
    write_metrics(t, tmp_path / "metrics.parquet")
    back = pd.read_parquet(tmp_path / "metrics.parquet")
    assert list(back.columns) == list(COLUMNS) and len(back) == 6
    assert back.value.isna().sum() == 1
    text = metrics_text(t)
    assert "unavailable [1]" in text and text.endswith("[1] no weights") and "28.5" in text
    plot_view_metrics(t, tmp_path / "views.png")
    assert (tmp_path / "views.png").stat().st_size > 1000
    plot_view_metrics(t, tmp_path / "lookat.png", "lookat")  # axes name the LookAt offsets instead
    assert (tmp_path / "lookat.png").read_bytes() != (tmp_path / "views.png").read_bytes()

    video = tmp_path / "v.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    video_page("Talk3D: x", [Clip("Self-driven", "held-out", video, "caption")], tmp_path / "p.html", t)
    page = (tmp_path / "p.html").read_text()
    assert page.count("<video") == 1 and "data:video/mp4;base64," in page
    assert "<table>" in page and "no weights" in page
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        video_page("x", [Clip("a", "b", tmp_path / "missing.mp4")], tmp_path / "q.html")


# ------------------------------------------------------------------------------- the stored renders


class ToyInception:
    """Stands in for the FID Inception: 8 colour statistics per image; records the images it saw."""

    name = "toy-inception"

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def features(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        assert len(images) <= batch_size
        self.seen.append(images)
        x = images.reshape(len(images), -1, 3).astype(np.float64)
        return np.concatenate([x.mean(1), x.std(1), x[:, :2, 0]], axis=1)


class ToyEmbedder:
    name = "toy-id"
    last_fallback = np.zeros(0, bool)

    def embed(self, images: np.ndarray) -> np.ndarray:
        v = images.reshape(len(images), -1)[:, :16].astype(np.float32) + 1
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def store(path: Path, images: np.ndarray) -> Path:
    with VideoWriter(path, lossless=True) as video:
        for image in images:
            video.write(image)
    return path


@pytest.fixture
def stored(tmp_path):
    """A 12-frame talking disc (3 held out), an FID reference of its training crops, and stored
    renders: the held-out crops a little darker, a 9-frame driving clip, one novel view."""
    data = talking_disc(12)
    crops = to_uint8(to_unit(data.crops))
    test = data.test
    renders = {
        "self": store(tmp_path / "video.mkv", (crops[test] * 0.9).astype(np.uint8)),
        "drive:voice": store(tmp_path / "voice.mkv", crops[np.arange(9) % 12]),
        "view:30_-20": store(tmp_path / "30_-20.mkv", crops[test][::-1].copy()),
    }
    inception = ToyInception()
    frames = reference_frames(data.train, 6)
    reference = FidReference(inception.features(crops[frames]), frames, 32, "black", inception.name)
    inception.seen.clear()
    nets = OptionalNets(fid=inception, embedders={"toy": ToyEmbedder()}, reasons={"lpips": "none here"})
    drives = {"voice": DriveInput(np.zeros(16000, np.float32), 16000, 9)}
    return data, crops, renders, reference, nets, drives


def run_stage(stored, **options) -> pd.DataFrame:
    data, _, renders, reference, nets, drives = stored
    kwargs = dict(
        renders=renders, reference=reference, drives=drives, views=["30_-20"], max_drive_frames=7,
        batch_size=2,
    ) | options  # fmt: skip
    return evaluate_subject(data, np.zeros(16000, np.float32), 16000, nets, **kwargs)


def test_the_stage_scores_the_stored_renders(stored, monkeypatch, caplog):
    data, crops, renders, reference, nets, _ = stored
    monkeypatch.setattr(runs, "PROGRESS_EVERY_S", 0.0)  # a progress line at every step
    with caplog.at_level(logging.INFO, logger="talk3d_core.util.runs"):
        table = run_stage(stored, name="evaluate disc")
    assert {"footage", "self", "ground_truth", "drive:voice", "view:30_-20"} == set(table.setting)
    rows = table.set_index(["setting", "metric"])
    assert rows.loc[("footage", "mouth_energy_r"), "frames"] == 12  # every crop of the clip
    assert rows.loc[("self", "psnr"), "value"] > 15 and rows.loc[("self", "psnr"), "frames"] == 3
    # The Inception saw the stored renders, in batches, the driving clip cut to max_drive_frames.
    seen = np.concatenate(nets.fid.seen)
    test = data.test
    expected = [(crops[test] * 0.9).astype(np.uint8), crops[np.arange(7)], crops[test][::-1]]
    np.testing.assert_array_equal(seen, np.concatenate(expected))
    assert max(len(batch) for batch in nets.fid.seen) == 2
    for setting, images in zip(["self", "drive:voice", "view:30_-20"], expected, strict=True):
        value = fid(ToyInception().features(images), reference.features)
        assert rows.loc[(setting, "fid"), "value"] == pytest.approx(value)
        assert rows.loc[(setting, "fid"), "frames"] == len(images)
    assert rows.loc[("drive:voice", "idsim"), "frames"] == 7
    # The progress lines count every image through a net, up to the total, and say what is done.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluate disc: image")]
    assert lines and "min left" in lines[-1] and "setting 3/3 view:30_-20" in lines[-1]
    done, total = lines[-1].split(" image ")[1].split(",")[0].split("/")
    assert done == total


def test_a_stored_render_that_does_not_fit_is_a_clear_error(stored, tmp_path):
    _, crops, renders, _, _, _ = stored
    with pytest.raises(ValueError, match="no stored render for view:30_-20"):
        run_stage(stored, renders={k: v for k, v in renders.items() if k != "view:30_-20"})
    with pytest.raises(ValueError, match=r"gone.mkv: no stored render; re-run the render rule"):
        run_stage(stored, renders=renders | {"view:30_-20": tmp_path / "gone.mkv"})
    short = store(tmp_path / "short.mkv", crops[:2])
    with pytest.raises(ValueError, match=r"short.mkv: 2 rendered frames, evaluation expects 3"):
        run_stage(stored, renders=renders | {"self": short})
    with pytest.raises(ValueError, match=r"voice.mkv: 9 rendered frames, evaluation expects 10"):
        run_stage(stored, drives={"voice": DriveInput(np.zeros(16000, np.float32), 16000, 10)})
    large = store(tmp_path / "large.mkv", np.zeros((3, 48, 48, 3), np.uint8))
    with pytest.raises(ValueError, match=r"large.mkv: renders of 48x48 px, the model renders 32x32"):
        run_stage(stored, renders=renders | {"view:30_-20": large})
