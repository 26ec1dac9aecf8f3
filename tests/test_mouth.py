"""Mouth metrics: opening, LMD, correlation and score rescaling on hand-made landmarks; landmark
detection on small images (coordinate mapping with a stand-in backend, mediapipe on the synthetic
demo clip and on face crops of a reference clip shrunk to render size)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA, face_landmarks

import talk3d_core.metrics.mouth as mouth
from talk3d_core.crop import crop_affines, warp_crop
from talk3d_core.face.landmark_backends import Face
from talk3d_core.metrics.mouth import (
    MOUTH_POINTS,
    REFERENCE_SIZE,
    MouthScores,
    correlation,
    landmark_distance,
    landmarks_of_images,
    mouth_opening,
    mouth_scores,
    paired_differences,
)
from talk3d_core.util.io import read_rgb
from talk3d_core.util.media import run_ffmpeg

needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "videos").is_dir(), reason=f"reference clips not found at {SHARED_DATA}/videos"
)


# ------------------------------------------------------------------------------ opening, LMD, r


def test_mouth_opening_of_closed_open_and_missing_mouths():
    lm = np.concatenate([face_landmarks(0.0), face_landmarks(6.0), face_landmarks(6.0)])
    lm[2, 66] = np.nan
    opening = mouth_opening(lm)
    assert opening.shape == (3,)
    assert opening[0] == 0.0 and opening[1] == pytest.approx(6.0) and np.isnan(opening[2])
    # A slanted gap: the lower lip 3 px right and 4 px down of the upper lip on all three pairs -> 5.
    tilted = face_landmarks(0.0)
    tilted[:, [67, 66, 65]] += (3.0, 4.0)
    assert mouth_opening(tilted)[0] == pytest.approx(5.0)
    # Only the inner-lip pairs count: moving the outer lips changes nothing.
    moved = face_landmarks(6.0)
    moved[:, 48:60] += 10.0
    assert mouth_opening(moved)[0] == pytest.approx(6.0)
    with pytest.raises(ValueError, match=r"mouth_opening: expected landmarks of shape \(N, 68, 2\)"):
        mouth_opening(np.zeros((2, 20, 2)))


def test_landmark_distance_counts_only_the_mouth():
    target = face_landmarks(4.0, n=3)
    pred = target.copy()
    pred[:, list(MOUTH_POINTS)] += (3.0, 4.0)
    pred[1, :48] += 50.0  # the rest of the face is not part of LMD
    pred[2] = np.nan  # no face on this frame
    lmd = landmark_distance(pred, target)
    np.testing.assert_allclose(lmd[:2], 5.0)
    assert np.isnan(lmd[2])
    # Other point sets: only the moved points of the set count.
    assert landmark_distance(pred[:1], target[:1], points=(48, 0, 1, 2))[0] == pytest.approx(5.0 / 4)
    with pytest.raises(ValueError, match="differ in shape"):
        landmark_distance(pred, target[:2])
    with pytest.raises(ValueError, match="subset of 0..67"):
        landmark_distance(pred, target, points=(67, 68))


def test_correlation_ignores_missing_pairs_and_is_nan_when_undefined():
    t = np.linspace(0.0, 1.0, 20)
    signal = np.sin(6 * t)
    assert correlation(signal, 3 * signal + 1) == pytest.approx(1.0)
    assert correlation(signal, -signal) == pytest.approx(-1.0)
    assert math.isnan(correlation(signal, np.full(20, 0.1)))  # constant: rounding must not decide
    assert math.isnan(correlation(signal[:2], signal[:2]))  # fewer than 3 pairs
    noisy = signal.copy()
    wild = noisy.copy()
    wild[[3, 7]] = [np.nan, 40.0]
    other = noisy.copy()
    other[7] = np.inf  # pair 7 goes, and so does its outlier
    assert correlation(wild, other) == pytest.approx(1.0)
    partner = np.cos(6 * t)
    expected = np.corrcoef(signal[2:], partner[2:])[0, 1]
    assert correlation(np.r_[np.nan, 1.0, signal[2:]], np.r_[0.0, np.nan, partner[2:]]) == pytest.approx(
        expected
    )
    assert math.isnan(correlation([1.0, np.nan, 2.0, np.nan], [1.0, 2.0, np.nan, 3.0]))
    with pytest.raises(ValueError, match="different lengths"):
        correlation(signal, signal[:5])


def test_mouth_scores_are_in_pixels_of_a_256_crop():
    openings = np.array([0.0, 2.0, 4.0, 1.0, 3.0, 2.0])
    target = np.concatenate([face_landmarks(o) for o in openings])
    pred = np.concatenate([face_landmarks(o + 0.5) for o in openings])
    pred[:, list(MOUTH_POINTS)] += (0.3, 0.4)  # on top of the wider opening
    pred[4] = np.nan  # not detected on the render
    target[5] = np.nan  # not detected on the ground truth
    size = 64
    scores = mouth_scores(pred, target, size)
    both = [0, 1, 2, 3]
    scale = REFERENCE_SIZE / size
    lmd = landmark_distance(pred[both], target[both]).mean()
    assert scores.lmd == pytest.approx(lmd * scale)
    assert scores.opening_mae == pytest.approx(0.5 * scale)
    assert scores.opening_correlation == pytest.approx(1.0)
    assert scores.detected == pytest.approx(5 / 6) and scores.n_frames == 6
    # The same landmarks in a 2x larger frame give the same scores.
    double = mouth_scores(2 * pred, 2 * target, 2 * size)
    assert double.lmd == pytest.approx(scores.lmd) and double.opening_mae == pytest.approx(scores.opening_mae)
    # JSON-friendly: nothing computable -> None, not NaN.
    none = mouth_scores(np.full((3, 68, 2), np.nan), target[:3], size)
    as_dict = none.as_dict()
    assert as_dict == {
        "lmd": None,
        "opening_correlation": None,
        "opening_mae": None,
        "detected": 0.0,
        "n_frames": 3,
    }
    assert json.loads(json.dumps(scores.as_dict(), allow_nan=False))["n_frames"] == 6
    assert isinstance(scores, MouthScores)
    with pytest.raises(ValueError, match="size must be a positive"):
        mouth_scores(pred, target, 0)
    with pytest.raises(ValueError, match="differ in shape"):
        mouth_scores(pred, target[:3], size)


# ------------------------------------------------------------------------------ detection plumbing


class DotBackend:
    """Stand-in backend: the 'face' is the bright blob of an image; all 68 points at its centre."""

    name = "dot"
    n_native = 1

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []
        self.priors: list[np.ndarray | None] = []
        self.closed = False

    def detect(self, image: np.ndarray, prior_box: np.ndarray | None) -> list[Face]:
        self.sizes.append(image.shape[:2])
        self.priors.append(prior_box)
        gray = image.astype(np.float64).mean(axis=2)
        if gray.max() < 128:
            return []
        ys, xs = np.nonzero(gray >= 0.5 * gray.max())  # half-maximum region, symmetric about the dot
        centre = np.array([xs.mean(), ys.mean()])
        box = np.r_[centre - 5, centre + 5]
        return [Face(box=box, score=1.0, lm68=np.tile(centre, (68, 1)), native=centre[None])]

    def options(self) -> dict:
        return {}

    def close(self) -> None:
        self.closed = True


def test_paired_differences_match_the_scores_and_bracket_them():
    rng = np.random.default_rng(1)
    openings = 2 + 2 * np.sin(np.arange(60) / 3)
    target = np.concatenate([face_landmarks(o) for o in openings])
    good = np.concatenate(
        [face_landmarks(o + e) for o, e in zip(openings, rng.normal(0, 0.3, 60), strict=True)]
    )
    bad = np.concatenate([face_landmarks(o) for o in rng.permutation(openings)])  # right range, wrong time
    good[7] = np.nan  # a frame missing from one setting drops out of every score
    size = 64
    d = paired_differences(good, bad, target, size)
    keep = np.isfinite(good[:, 0, 0])
    assert d["frames"] == 59 and d["block_frames"] == mouth.BOOTSTRAP_BLOCK
    a, b = mouth_scores(good[keep], target[keep], size), mouth_scores(bad[keep], target[keep], size)
    assert d["lmd"]["difference"] == pytest.approx(a.lmd - b.lmd)
    assert d["opening_mae"]["difference"] == pytest.approx(a.opening_mae - b.opening_mae)
    assert d["opening_correlation"]["difference"] == pytest.approx(
        a.opening_correlation - b.opening_correlation
    )
    for key in ("lmd", "opening_mae", "opening_correlation"):
        lo, hi = d[key]["ci95"]
        assert lo <= d[key]["difference"] <= hi
    # The better setting's advantage is clear of zero on every score.
    assert (
        d["lmd"]["ci95"][1] < 0
        and d["opening_mae"]["ci95"][1] < 0
        and d["opening_correlation"]["ci95"][0] > 0
    )
    # Deterministic; a setting against itself differs by exactly 0 with a zero-width interval.
    assert paired_differences(good, bad, target, size) == d
    same = paired_differences(bad, bad, target, size)
    assert same["lmd"] == {"difference": 0.0, "ci95": [0.0, 0.0]}
    # Too few frames: nothing is made up.
    few = paired_differences(good[:2], bad[:2], target[:2], size)
    assert few["frames"] == 2 and few["lmd"] == {"difference": None, "ci95": None}
    with pytest.raises(ValueError, match="shapes differ"):
        paired_differences(good, bad[:10], target, size)


def test_landmarks_of_images_maps_back_to_the_input_pixel_frame(monkeypatch):
    fake = DotBackend()
    opened = {}

    def open_backend(name, **options):
        opened.update(name=name, options=options)
        return fake

    monkeypatch.setattr(mouth, "open_backend", open_backend)
    dots = [(10, 20), (50, 3), (31, 40)]  # (x, y) pixel centres in a 64 x 48 image
    images = []
    for x, y in dots:
        image = np.zeros((48, 64, 3), np.uint8)
        image[y, x] = 255
        images.append(image)
    images.insert(1, np.zeros((48, 64, 3), np.uint8))  # no face in the second image
    big = np.zeros((300, 400, 3), np.uint8)
    big[100, 250] = 255
    images.append(big)  # already large enough: not resampled

    lm = landmarks_of_images(iter(images), backend="dot", backend_options={"k": 1}, upscale_to=256)
    assert opened == {"name": "dot", "options": {"k": 1}} and fake.closed
    assert lm.shape == (5, 68, 2)
    assert np.isnan(lm[1]).all()
    for row, (x, y) in zip(lm[[0, 2, 3]], dots, strict=True):
        np.testing.assert_allclose(row, np.tile((x, y), (68, 1)), atol=0.1)
    np.testing.assert_allclose(lm[4], np.tile((250, 100), (68, 1)), atol=1e-9)
    # Short side 48 -> 256: the width keeps the aspect ratio.
    assert fake.sizes[:4] == [(256, 341)] * 4 and fake.sizes[4] == (300, 400)
    # The previous frame's face box (upsampled frame) is passed on; none after a miss.
    assert fake.priors[0] is None and fake.priors[1] is not None and fake.priors[2] is None

    with pytest.raises(ValueError, match=r"image 1 must be RGB uint8 of shape \(H, W, 3\), got float64"):
        landmarks_of_images([images[0], images[0].astype(np.float64)], backend="dot")
    assert landmarks_of_images(np.zeros((0, 8, 8, 3), np.uint8), backend="dot").shape == (0, 68, 2)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown landmark backend 'openface'"):
        landmarks_of_images([np.zeros((8, 8, 3), np.uint8)], backend="openface")


# ------------------------------------------------------------------------------ mediapipe, small faces


# Measured on all 150 frames: r 0.98 at 256 (the clip's size) and 128 px, 0.84 at 64 px, where the
# mouth is 10 px wide and opens by at most ~2 px.
@pytest.mark.parametrize(("size", "min_r"), [(64, 0.65), (128, 0.93)])
def test_demo_mouth_opening_is_read_from_render_sized_frames(talking_face, size, min_r):
    """The synthetic clip's drawn mouth opening is recovered from its frames shrunk to render size."""
    paths = sorted(talking_face.frames.glob("*.png"))[::2]
    truth = np.array(talking_face.truth["mouth_open"])[::2]
    small = [cv2.resize(read_rgb(p), (size, size), interpolation=cv2.INTER_AREA) for p in paths]
    lm = landmarks_of_images([*small, np.full((size, size, 3), 128, np.uint8)])  # + a blank image
    assert np.isfinite(lm[:-1]).all() and np.isnan(lm[-1]).all()
    r = correlation(mouth_opening(lm[:-1]), truth)
    assert r > min_r, r


def _frames(video: Path, out: Path, *, seconds: float, fps: float) -> list[np.ndarray]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["-v", "error", "-i", str(video), "-t", str(seconds), "-vf", f"fps={fps}"]
    run_ffmpeg([*args, "-start_number", "0", str(out / "%06d.png")], what=str(video))
    return [read_rgb(p) for p in sorted(out.glob("*.png"))]


@pytest.mark.shared
@needs_shared
def test_inner_lips_at_render_size_match_the_full_size_crop(tmp_path):
    """Face crops of german.mp4 (256 px) shrunk to 64 px, as small as a render: the inner lips land
    within a few pixels of where they are found on the 256 px crop, the opening follows it."""
    frames = _frames(SHARED_DATA / "videos" / "german.mp4", tmp_path, seconds=4.0, fps=6)
    lm_full = landmarks_of_images(frames)
    assert np.isfinite(lm_full).all()
    affine = crop_affines(lm_full, size=256, sigma_frames=0)[0]
    crops = [warp_crop(f, a, 256) for f, a in zip(frames, affine, strict=True)]
    lm_256 = landmarks_of_images(crops)
    assert np.isfinite(lm_256).all()
    for size in (64, 128):
        small = [cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops]
        lm = landmarks_of_images(small)
        assert np.isfinite(lm).all(), f"{size} px: face missed"
        # 256 px crop frame -> the render's frame (pixel centres at integers).
        target = (lm_256 + 0.5) * size / 256 - 0.5
        inner = np.linalg.norm(lm[:, 60:68] - target[:, 60:68], axis=-1)
        scores = mouth_scores(lm, target, size)
        # Measured here: inner lips within 0.6 (64 px) and 0.5 (128 px) render pixels, LMD 0.80 and
        # 0.34 px of 256, opening r 0.90 and 0.97. Detecting without upsampling gives LMD 2.5 at 64 px.
        assert inner.max() < 1.5, (size, inner.max())
        assert scores.lmd < {64: 1.5, 128: 0.7}[size] and scores.detected == 1.0, (size, scores)
        assert scores.opening_correlation > 0.8, (size, scores)
