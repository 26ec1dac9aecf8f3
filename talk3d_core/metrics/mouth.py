"""Mouth metrics on rendered frames: does the audio drive the mouth of the rendered head?

The landmark backend (:mod:`talk3d_core.face.landmark_backends`) is run on the renders and on the
ground-truth crops; the 68-point iBUG mouth (outer lips 48-59, inner lips 60-67) is then compared
frame by frame: the landmark distance (LMD, as the paper reports it: mean distance of points 48-67)
and the inner-lip opening, whose series should follow the ground truth's (correlation, mean error).

Renders are small (64-128 px crops; at 64 px the mouth is about 10 px wide). Their images are
upsampled before detection (:func:`landmarks_of_images`) and the landmarks mapped back to the input
image's pixel frame. Scores are rescaled to a :data:`REFERENCE_SIZE` pixel crop so numbers compare
across render sizes (:func:`mouth_scores`).

Coordinates: pixel centres at integer coordinates (the landmark backends' convention), x right, y down.
Landmark arrays are (N, 68, 2) float with rows of NaN for frames where no face was found.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from talk3d_core.face.landmark_backends import open_backend, points_box, select_main

#: Points of the mouth in the iBUG 68 scheme (outer lips 48-59, inner lips 60-67): the LMD points.
MOUTH_POINTS = tuple(range(48, 68))
#: Inner-lip points facing each other across the mouth: upper 61, 62, 63 over lower 67, 66, 65.
UPPER_INNER_LIP = (61, 62, 63)
LOWER_INNER_LIP = (67, 66, 65)
#: Crop width (pixels) the scores of :func:`mouth_scores` are expressed in.
REFERENCE_SIZE = 256

N_LANDMARKS = 68


def _check_landmarks(lm68: np.ndarray, name: str) -> np.ndarray:
    lm68 = np.asarray(lm68, dtype=np.float64)
    if lm68.ndim != 3 or lm68.shape[1:] != (N_LANDMARKS, 2):
        raise ValueError(f"{name}: expected landmarks of shape (N, 68, 2), got {lm68.shape}")
    return lm68


def _has_face(lm68: np.ndarray) -> np.ndarray:
    """(N,) True where a row holds landmarks (every coordinate finite)."""
    return np.isfinite(lm68).all(axis=(1, 2))


def mouth_opening(lm68: np.ndarray) -> np.ndarray:
    """Inner-lip opening (N,) of landmarks (N, 68, 2): the mean distance of the upper inner-lip points
    61, 62, 63 to the lower ones 67, 66, 65, in the landmarks' units (0 for a closed mouth).

    Rows with NaN points give NaN.
    """
    lm68 = _check_landmarks(lm68, "mouth_opening")
    gap = lm68[:, UPPER_INNER_LIP] - lm68[:, LOWER_INNER_LIP]
    return np.linalg.norm(gap, axis=-1).mean(axis=1)


def landmark_distance(
    pred: np.ndarray, target: np.ndarray, points: Sequence[int] = MOUTH_POINTS
) -> np.ndarray:
    """Landmark distance per frame (N,): the mean Euclidean distance between ``pred`` and ``target``
    (both (N, 68, 2), same units) over ``points`` (default the mouth, i.e. the paper's LMD).

    NaN for frames where either row has NaN points.
    """
    pred = _check_landmarks(pred, "landmark_distance: pred")
    target = _check_landmarks(target, "landmark_distance: target")
    if pred.shape != target.shape:
        raise ValueError(f"landmark_distance: pred {pred.shape} and target {target.shape} differ in shape")
    index = np.asarray(points, dtype=np.int64).reshape(-1)
    if index.size == 0 or index.min() < 0 or index.max() >= N_LANDMARKS:
        raise ValueError(f"landmark_distance: points must be a non-empty subset of 0..67, got {list(points)}")
    return np.linalg.norm(pred[:, index] - target[:, index], axis=-1).mean(axis=1)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two series (N,) over the pairs where both are finite.

    NaN (not an exception) when fewer than 3 pairs remain or either series is constant over them.
    """
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"correlation: series of different lengths {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return math.nan
    a, b = a[keep], b[keep]
    # Tested on the values, not on the centred norm: centring a constant series can leave rounding
    # residue (~1e-17) whose "correlation" would be arbitrary.
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    return float(np.clip(np.dot(a, b) / math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b))), -1.0, 1.0))


# Small renders are enlarged (Lanczos) before detection: closest to the detection on full-size crops.
# Measured rationale: docs/decisions.md#mouth-landmarks-on-small-renders
def _upsample(image: np.ndarray, min_side: int) -> tuple[np.ndarray, float, float]:
    """(image, sx, sy): the image enlarged so its short side is at least ``min_side`` and the scale
    factors (output px per input px) along x and y (1 when it is already large enough)."""
    import cv2

    height, width = image.shape[:2]
    short = min(height, width)
    if short >= min_side:
        return image, 1.0, 1.0
    scale = min_side / short
    out_w, out_h = max(min_side, round(width * scale)), max(min_side, round(height * scale))
    big = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LANCZOS4)
    return big, out_w / width, out_h / height


def _check_image(image: Any, index: int) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(
            f"landmarks_of_images: image {index} must be RGB uint8 of shape (H, W, 3), "
            f"got {image.dtype} {image.shape}"
        )
    return np.ascontiguousarray(image)


def landmarks_of_images(
    images: np.ndarray | Iterable[np.ndarray],
    *,
    backend: str = "mediapipe",
    upscale_to: int = 256,
    backend_options: dict[str, Any] | None = None,
    expected_box: np.ndarray | None = None,
) -> np.ndarray:
    """68-point landmarks (N, 68, 2) of the face in each of N RGB uint8 images (H, W, 3).

    Each image is upsampled (Lanczos) so its short side is at least ``upscale_to`` pixels, since
    detectors miss or misplace tiny faces; the landmarks are mapped back to the INPUT image's pixel
    frame (pixel centres at integer coordinates). Rows are NaN where no face was found.

    The images are taken to be frames of one clip in order: tracking backends (mediapipe's default
    mode) follow the face from frame to frame, and when several faces are found the one overlapping
    the previous frame's face is kept (else the largest). For unrelated images pass
    ``backend_options={"static_image_mode": True}`` (mediapipe). ``images`` may be an array
    (N, H, W, 3) or any iterable of arrays, possibly of different sizes. The backend is closed on
    return.

    ``expected_box`` (4,) x0, y0, x1, y1 in input pixels: where the face's 68 points are expected
    when the previous image gave none (renders are aligned crops, so the training crops' landmarks
    say where). Box-fitting backends (FAN) try it before their detector, so a render the detector
    misses is still measured instead of silently dropped; mediapipe tracks on its own and ignores it.
    """
    if upscale_to < 1:
        raise ValueError(f"landmarks_of_images: upscale_to must be >= 1, got {upscale_to}")
    if expected_box is not None:
        expected_box = np.asarray(expected_box, dtype=np.float64)
        if expected_box.shape != (4,) or not np.isfinite(expected_box).all():
            raise ValueError(f"landmarks_of_images: expected_box must be 4 finite numbers: {expected_box}")
    detector = open_backend(backend, **(backend_options or {}))
    rows: list[np.ndarray] = []
    prior_box: np.ndarray | None = None  # in the upsampled frame of the previous image
    try:
        for index, image in enumerate(images):
            big, sx, sy = _upsample(_check_image(image, index), upscale_to)
            if prior_box is None and expected_box is not None:
                # Pixel edges scale by s: x_big = (x + 0.5) * s - 0.5 (the inverse of the mapping below).
                prior_box = (expected_box + 0.5) * np.array([sx, sy, sx, sy]) - 0.5
            faces = [face for face in detector.detect(big, prior_box) if face.lm68 is not None]
            if not faces:
                prior_box = None
                rows.append(np.full((N_LANDMARKS, 2), np.nan))
                continue
            face = faces[select_main(np.stack([f.box for f in faces]), prior_box)]
            prior_box = np.asarray(face.box, dtype=np.float64)
            # Pixel centres at integers: an input pixel edge u maps to u * s, so x_in = (x + 0.5) / s - 0.5.
            lm68 = np.asarray(face.lm68, dtype=np.float64)
            rows.append((lm68 + 0.5) / np.array([sx, sy]) - 0.5)
    finally:
        detector.close()
    if not rows:
        return np.zeros((0, N_LANDMARKS, 2))
    return np.stack(rows)


def expected_face_box(lm68: np.ndarray) -> np.ndarray | None:
    """Box (4,) of the median landmarks (N, 68, 2) over the frames that have them; None if none do."""
    found = np.isfinite(lm68).all(axis=(1, 2))
    return points_box(np.median(lm68[found], axis=0)) if found.any() else None


@dataclass(frozen=True)
class MouthScores:
    """Mouth agreement of one clip's renders with its ground truth (see :func:`mouth_scores`).

    Distances are in pixels of a :data:`REFERENCE_SIZE` (256) pixel wide crop.
    """

    #: Mean LMD (points 48-67) over the frames where both have landmarks.
    lmd: float
    #: Pearson r of the inner-lip opening series (frames where both have landmarks).
    opening_correlation: float
    #: Mean |opening_pred - opening_gt| over the frames where both have landmarks.
    opening_mae: float
    #: Fraction of frames with landmarks on the prediction (0..1).
    detected: float
    #: Frames compared (rows of the landmark arrays).
    n_frames: int

    def as_dict(self) -> dict[str, float | int | None]:
        """The scores as a JSON-ready dict: NaN (a score that could not be computed) becomes None."""
        out: dict[str, float | int | None] = {}
        for key, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
            else:
                out[key] = value
        return out


def mouth_scores(pred_lm68: np.ndarray, target_lm68: np.ndarray, size: float) -> MouthScores:
    """Mouth scores of predicted landmarks (N, 68, 2) against ground-truth ones (N, 68, 2).

    Both are in the same pixel frame, that of an image ``size`` pixels wide (the render size). LMD
    and the opening error are rescaled by ``REFERENCE_SIZE / size``, i.e. expressed in pixels of a
    256 px wide crop, so numbers compare across render sizes (a 2 px error on a 64 px render reads 8).
    Frames where either side has no landmarks (NaN rows) are left out of LMD, correlation and error;
    ``detected`` counts the prediction's frames with landmarks. Scores that cannot be computed (no
    frame with both) are NaN.
    """
    pred = _check_landmarks(pred_lm68, "mouth_scores: pred_lm68")
    target = _check_landmarks(target_lm68, "mouth_scores: target_lm68")
    if pred.shape != target.shape:
        raise ValueError(f"mouth_scores: pred {pred.shape} and target {target.shape} differ in shape")
    if not (math.isfinite(size) and size > 0):
        raise ValueError(f"mouth_scores: size must be a positive number of pixels, got {size}")
    n = len(pred)
    scale = REFERENCE_SIZE / float(size)
    both = _has_face(pred) & _has_face(target)
    if both.any():
        lmd = float(landmark_distance(pred[both], target[both]).mean() * scale)
        opening_pred, opening_gt = mouth_opening(pred[both]), mouth_opening(target[both])
        mae = float(np.abs(opening_pred - opening_gt).mean() * scale)
        r = correlation(opening_pred, opening_gt)
    else:
        lmd = mae = r = math.nan
    detected = float(_has_face(pred).mean()) if n else math.nan
    return MouthScores(lmd=lmd, opening_correlation=r, opening_mae=mae, detected=detected, n_frames=n)


#: Frames per resampled block of :func:`paired_differences`: 8 frames (320 ms at 25 fps) span a
#: syllable, so neighbouring frames, whose mouths are alike, are resampled together.
BOOTSTRAP_BLOCK = 8


def paired_differences(
    pred_lm68: np.ndarray,
    other_lm68: np.ndarray,
    target_lm68: np.ndarray,
    size: float,
    *,
    block: int = BOOTSTRAP_BLOCK,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mouth scores of ``pred`` minus those of ``other`` against the same ground truth, with 95%
    intervals from a moving-block bootstrap over frames (blocks of ``block`` frames, since
    neighbouring frames are not independent samples).

    Landmarks (N, 68, 2) in the pixel frame of an image ``size`` pixels wide, scores in pixels of a
    256 px crop as in :func:`mouth_scores`; only frames where all three have landmarks count.
    Returns {"frames": n, "block_frames": block, "lmd" | "opening_mae" | "opening_correlation":
    {"difference": d, "ci95": [lo, hi]}}; negative LMD/error and positive correlation differences
    favour ``pred``. Values that cannot be computed (fewer than 3 frames, a constant series) are None.
    Deterministic for a given ``seed``.
    """
    pred = _check_landmarks(pred_lm68, "paired_differences: pred_lm68")
    other = _check_landmarks(other_lm68, "paired_differences: other_lm68")
    target = _check_landmarks(target_lm68, "paired_differences: target_lm68")
    if not pred.shape == other.shape == target.shape:
        raise ValueError(f"paired_differences: shapes differ: {pred.shape}, {other.shape}, {target.shape}")
    if block < 1 or n_boot < 1:
        raise ValueError(f"paired_differences: block ({block}) and n_boot ({n_boot}) must be >= 1")
    scale = REFERENCE_SIZE / float(size)
    both = _has_face(pred) & _has_face(other) & _has_face(target)
    n = int(both.sum())
    out: dict[str, Any] = {"frames": n, "block_frames": block}
    empty = {"difference": None, "ci95": None}
    if n < 3:
        return out | {"lmd": empty, "opening_mae": empty, "opening_correlation": empty}
    pred, other, target = pred[both], other[both], target[both]
    lmd = (landmark_distance(pred, target) - landmark_distance(other, target)) * scale
    opening_t = mouth_opening(target)
    opening_p, opening_o = mouth_opening(pred), mouth_opening(other)
    mae = (np.abs(opening_p - opening_t) - np.abs(opening_o - opening_t)) * scale

    index = block_resamples(n, block, n_boot, seed)
    r = correlation_difference(opening_p, opening_o, opening_t, index)
    return out | {
        "lmd": bootstrap_interval(float(lmd.mean()), lmd[index].mean(axis=1)),
        "opening_mae": bootstrap_interval(float(mae.mean()), mae[index].mean(axis=1)),
        "opening_correlation": r,
    }


def block_resamples(n: int, block: int = BOOTSTRAP_BLOCK, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Moving-block bootstrap of ``n`` frames: indices (n_boot, n), each row ceil(n / L) blocks of
    L = min(block, n) consecutive frames from random starts, cut to n. Deterministic for a ``seed``."""
    if n < 1 or block < 1 or n_boot < 1:
        raise ValueError(f"block_resamples: n ({n}), block ({block}) and n_boot ({n_boot}) must be >= 1")
    length = min(block, n)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - length + 1, size=(n_boot, -(-n // length)))
    return (starts[:, :, None] + np.arange(length)).reshape(n_boot, -1)[:, :n]


def bootstrap_interval(value: float, samples: np.ndarray) -> dict[str, Any]:
    """{"difference": value, "ci95": [lo, hi]} from bootstrap ``samples`` (B,) of it; both None when
    the value is not finite or fewer than half the samples are."""
    finite = samples[np.isfinite(samples)]
    if not math.isfinite(value) or finite.size < len(samples) // 2:
        return {"difference": None, "ci95": None}
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return {"difference": float(value), "ci95": [float(lo), float(hi)]}


def correlation_difference(
    pred: np.ndarray, other: np.ndarray, target: np.ndarray, index: np.ndarray
) -> dict[str, Any]:
    """r(pred, target) - r(other, target) of three series (N,) with its 95% interval over the
    resamples ``index`` (B, N) (:func:`block_resamples`), as :func:`bootstrap_interval` gives it."""
    samples = np.array([correlation(pred[i], target[i]) - correlation(other[i], target[i]) for i in index])
    return bootstrap_interval(correlation(pred, target) - correlation(other, target), samples)
