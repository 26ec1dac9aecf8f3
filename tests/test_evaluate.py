"""Metrics of the evaluation stage against known values, and the metric table's shape and outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from talk3d_core.evaluate import (
    COLUMNS,
    Metric,
    aue_metric,
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
from talk3d_core.nets.optional import OptionalNets
from talk3d_core.report.video_page import Clip, video_page


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
        face_metrics("self", truth, truth, np.ones(truth.shape[:3], bool), OptionalNets(lpips=fake_lpips))
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
    rows = identity_metrics("self", images, b, truth=images)
    assert [(r.backend, r.status, r.reason) for r in rows] == [
        ("dlib", "unavailable", "dlib missing"),
        ("arcface", "unavailable", "no ArcFace weights"),
    ]
    assert fid_metric("self", images, None, b)[0].reason == "no inception"
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
    same = identity_metrics("self", images, b, truth=images)[0]
    assert same.value == pytest.approx(1.0) and same.backend == "toy" and same.unit == "cosine"
    reference = {"toy": Embedder().embed(images[:1])[0]}
    first = identity_metrics("view:30_20", images[:1], b, reference=reference)[0]
    assert first.value == pytest.approx(1.0)


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
