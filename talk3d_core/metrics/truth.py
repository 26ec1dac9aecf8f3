"""Scores against a synthetic clip's own truth: the mouth opening and blinks it was drawn with.

The demo clip (:func:`talk3d_core.demo.make_demo_clip`) records per frame how far its mouth is
open (``mouth_open``, 0..1) and how far its lids are closed (``blink``, 0..1). Landmark detectors
misread small synthetic renders (a 64 px smile), so these scores read the opening and the closure
from the pixels instead, with no detector:

- mouth opening: the dark area of the mouth region. The drawn mouth interior (throat, shadow under
  the teeth) is dark and grows with the opening;
- eye closure: the dark area of the two eye regions (iris, pupil and lashes), which the closing
  lids cover with skin, so it shrinks as ``blink`` grows.

Dark area: per pixel, the luminance deficit below the skin (the nose region's luminance, median
over the images scored together), ``clip(1 - L / L_skin, 0, 1)`` (teeth and highlights 0, black 1),
averaged over the region with each pixel weighted by the part of it inside the region: a fraction
of the region. It is linear in the pixels, so a blurred render (the CPU preset's 64 px) spreads the
dark interior without changing its sum much. Measured rationale: docs/decisions.md#synthetic-truth.

The regions are taken from the crop stage, never from detections on the renders: the median over
the clip of crop.parquet's landmarks (detected on the full-size source frames, in crop pixels), as
pixel-edge fractions of the crop side, so renders and crops of any size are read in the same place.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talk3d_core.metrics.mouth import correlation

if TYPE_CHECKING:
    from talk3d_core.crop import CropTable

#: Backend names of the scores in metrics.parquet and ablation.json.
OPENING_BACKEND = "synthetic truth (dark mouth area)"
BLINK_BACKEND = "synthetic truth (dark eye area)"

# Region margins, in units of the landmarks' own extent (see TruthRegions.of_landmarks): the mouth box
# reaches 0.6 mouth widths below the corners because the demo's lower lip drops by up to 0.32 widths
# (demo._MOUTH_GAP_PER_WIDTH) and the lip itself lies below the gap; the eye boxes span the lids and
# lashes. Measured rationale: docs/decisions.md#synthetic-truth
_MOUTH_SIDE, _MOUTH_ABOVE, _MOUTH_BELOW = 0.1, 0.25, 0.6
_EYE_SIDE, _EYE_HALF_HEIGHT = 0.2, 0.5
_LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TruthRegions:
    """Where the mouth, the two eyes and the skin reference (nose) sit in the crops: boxes
    (x0, y0, x1, y1) as pixel-edge fractions of the crop side (0 top/left, 1 bottom/right)."""

    mouth: Box
    eyes: tuple[Box, Box]
    skin: Box

    @classmethod
    def of_landmarks(cls, lm68: np.ndarray, size: int) -> TruthRegions:
        """The regions of crop landmarks (N, 68, 2) (crop.parquet's ``lm68``: pixel centres at integer
        coordinates of a ``size`` px crop), from their median over the N frames."""
        lm68 = np.asarray(lm68, dtype=np.float64)
        if lm68.ndim != 3 or lm68.shape[1:] != (68, 2) or len(lm68) == 0 or size < 1:
            raise ValueError(f"TruthRegions.of_landmarks: expected (N>0, 68, 2) landmarks, got {lm68.shape}")
        found = np.isfinite(lm68).all(axis=(1, 2))
        if not found.any():
            raise ValueError("TruthRegions.of_landmarks: no frame has landmarks")
        p = (np.median(lm68[found], axis=0) + 0.5) / size  # pixel-edge fractions
        width = p[54, 0] - p[48, 0]
        corner_y = (p[48, 1] + p[54, 1]) / 2
        mouth = (
            p[48, 0] - _MOUTH_SIDE * width,
            corner_y - _MOUTH_ABOVE * width,
            p[54, 0] + _MOUTH_SIDE * width,
            corner_y + _MOUTH_BELOW * width,
        )
        eyes = []
        for eye in (p[36:42], p[42:48]):
            x0, x1 = eye[:, 0].min(), eye[:, 0].max()
            side, half = _EYE_SIDE * (x1 - x0), _EYE_HALF_HEIGHT * (x1 - x0)
            cy = eye[:, 1].mean()
            eyes.append((x0 - side, cy - half, x1 + side, cy + half))
        skin = (p[31, 0], p[29, 1], p[35, 0], p[33, 1])  # nose, nostril to nostril, bridge to base
        boxes = [tuple(float(v) for v in b) for b in (mouth, *eyes, skin)]
        if not all(0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1 for b in boxes):
            raise ValueError(f"TruthRegions.of_landmarks: regions {boxes} do not lie inside the crop")
        return cls(mouth=boxes[0], eyes=(boxes[1], boxes[2]), skin=boxes[3])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready boxes, rounded."""
        return {
            "mouth": [round(v, 4) for v in self.mouth],
            "eyes": [[round(v, 4) for v in e] for e in self.eyes],
            "skin": [round(v, 4) for v in self.skin],
        }


def coverage(box: Box, size: int) -> np.ndarray:
    """Weights (size, size) float: the part of each pixel inside ``box`` (pixel-edge fractions)."""
    edges = np.arange(size + 1) / size

    def axis(lo: float, hi: float) -> np.ndarray:
        return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None) * size

    return np.outer(axis(box[1], box[3]), axis(box[0], box[2]))


def _luminance(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"dark area: expected square RGB images (N, S, S, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"dark area: expected uint8 images, got {images.dtype}")
    return images.astype(np.float32) @ _LUMA.astype(np.float32)


def dark_area(images: np.ndarray, boxes: Sequence[Box], skin: Box) -> np.ndarray:
    """Dark area (N,) of RGB uint8 images (N, S, S, 3) over ``boxes`` taken together: the mean
    luminance deficit ``clip(1 - L / L_skin, 0, 1)``, each pixel weighted by its coverage.

    ``L_skin``: the mean luminance of the ``skin`` box, median over the N images. One value for the
    batch (a clip has one lighting; the synthetic clip's is constant), since a per-image reference
    of a few dozen pixels at 64 px moves by about 1% and blurs the eyes' figure (blink r 0.92 instead
    of 0.99 on the demo's crops), while the renders of a setting may still differ from the crops in
    exposure as a whole."""
    luma = _luminance(images)
    size = luma.shape[1]
    weight = np.maximum.reduce([coverage(b, size) for b in boxes])
    skin_weight = coverage(skin, size)
    if weight.sum() == 0 or skin_weight.sum() == 0:
        raise ValueError(f"dark area: the regions cover no pixel of a {size} px image")
    if len(luma) == 0:
        return np.zeros(0)
    reference = float(np.median((luma * skin_weight).sum(axis=(1, 2)) / skin_weight.sum()))
    deficit = np.clip(1.0 - luma / max(reference, 1.0), 0.0, 1.0)
    return (deficit * weight).sum(axis=(1, 2)) / weight.sum()


def mouth_dark_area(images: np.ndarray, regions: TruthRegions) -> np.ndarray:
    """Dark area (N,) of the mouth region: grows with the mouth opening (0..1 of the region)."""
    return dark_area(images, [regions.mouth], regions.skin)


def eye_dark_area(images: np.ndarray, regions: TruthRegions) -> np.ndarray:
    """Dark area (N,) of the two eye regions: shrinks as the lids close (0..1 of the regions)."""
    return dark_area(images, regions.eyes, regions.skin)


#: Gaussian blurs (sigma, pixels of the image's own size) tried by :func:`matching_blur`.
BLUR_SIGMAS_PX = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def blur(images: np.ndarray, sigma_px: float) -> np.ndarray:
    """RGB uint8 images (N, S, S, 3) blurred by a Gaussian of ``sigma_px`` pixels (0: unchanged)."""
    import cv2

    if sigma_px <= 0:
        return np.asarray(images)
    return np.stack([cv2.GaussianBlur(np.ascontiguousarray(im), (0, 0), sigma_px) for im in images])


def sharpness(images: np.ndarray, regions: TruthRegions) -> float:
    """Mean luminance gradient magnitude (luminance levels per pixel) over the face's inner box, the
    box around the mouth, eye and nose regions, averaged over the N images (N, S, S, 3) uint8."""
    luma = _luminance(images)
    boxes = [regions.mouth, *regions.eyes, regions.skin]
    inner = (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
    weight = coverage(inner, luma.shape[1])[1:-1, 1:-1]
    gy, gx = np.gradient(luma, axis=(1, 2))
    magnitude = np.hypot(gx, gy)[:, 1:-1, 1:-1]
    return float((magnitude * weight).sum(axis=(1, 2)).mean() / weight.sum())


def matching_blur(renders: np.ndarray, crops: np.ndarray, regions: TruthRegions) -> float:
    """The blur (sigma in pixels, from :data:`BLUR_SIGMAS_PX`) that makes ``crops`` as sharp as
    ``renders`` (:func:`sharpness`), both (N, S, S, 3) uint8: how blurred the renders are, so a reader
    of the opening can be checked on the known crops degraded the same way."""
    target = sharpness(renders, regions)
    gaps = [abs(sharpness(blur(crops, s), regions) - target) for s in BLUR_SIGMAS_PX]
    return BLUR_SIGMAS_PX[int(np.argmin(gaps))]


@dataclass(frozen=True)
class ClipTruth:
    """A synthetic clip's truth on the pipeline's frames: ``mouth_open`` and ``blink`` (N,) 0..1 at
    frame index 0..N-1 (the ingested clip's), where to read them (``regions``), and its file."""

    path: str
    mouth_open: np.ndarray
    blink: np.ndarray
    regions: TruthRegions

    def scores(self, images: np.ndarray, frames: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """How the renders (or crops) ``images`` (N, S, S, 3) uint8 of clip ``frames`` (N,) follow the
        truth: {"frames": N, "opening_r": Pearson r of the mouth's dark area with ``mouth_open``,
        "blink_r": r of the eyes' lid cover (minus their dark area) with ``blink``, "blink_frames":
        frames with a blink, "opening": the dark areas (N,)}; an r that cannot be computed (a constant
        series, e.g. no blink in these frames) is None."""
        frames = np.asarray(frames, dtype=np.int64)
        if len(images) != len(frames):
            raise ValueError(f"{self.path}: {len(images)} images for {len(frames)} frames")
        if len(frames) and (frames.min() < 0 or frames.max() >= len(self.mouth_open)):
            raise ValueError(f"{self.path}: frames outside the truth's 0..{len(self.mouth_open) - 1}")
        opening = mouth_dark_area(images, self.regions)
        eyes = eye_dark_area(images, self.regions)
        blink = self.blink[frames]
        return {
            "frames": len(frames),
            "opening_r": finite_or_none(correlation(opening, self.mouth_open[frames])),
            "blink_r": finite_or_none(correlation(-eyes, blink)),
            "blink_frames": int((blink > 0).sum()),
            "opening": opening,
        }


def finite_or_none(value: float) -> float | None:
    """A figure for JSON: NaN (not computable) becomes None."""
    return float(value) if math.isfinite(value) else None


def read_clip_truth(
    truth_json: str | os.PathLike[str],
    crops: CropTable,
    *,
    n_frames: int,
    fps: float,
) -> ClipTruth:
    """The truth of a synthetic clip (``make_demo_clip``'s JSON) on the ingested clip's frames, with its
    regions from the crop stage's table (crop.parquet, :func:`talk3d_core.crop.read_crop_table`).
    ``n_frames``: frames of the ingested clip; ``fps``: the pipeline's frame rate (config ``fps``).
    Ingest resamples a clip to ``fps``, so frame i of the pipeline is frame i of the truth only when
    the truth was made at that rate with that many frames: anything else raises ValueError naming the
    file and what to re-run."""
    path = Path(truth_json)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the clip's truth: {exc}") from exc
    keys = ("fps", "n_frames", "mouth_open", "blink")
    missing = [k for k in keys if k not in record] if isinstance(record, dict) else list(keys)
    if missing:
        raise ValueError(f"{path}: the clip's truth lacks {missing} (is it make_demo_clip's truth JSON?)")
    if not math.isclose(float(record["fps"]), float(fps), rel_tol=1e-6):
        raise ValueError(
            f"{path}: the truth is at {record['fps']} fps but the pipeline runs at {fps} fps (config fps); "
            f"ingest resampled the clip, so its frames are not the truth's. Make the clip at {fps} fps "
            "(rule demo_clip does, from config fps) and re-run ingest."
        )
    if int(record["n_frames"]) != n_frames:
        raise ValueError(
            f"{path}: the truth has {record['n_frames']} frames but the ingested clip has {n_frames}; the "
            "truth belongs to another clip. Re-run rule demo_clip and ingest together."
        )
    series = {}
    for key in ("mouth_open", "blink"):
        values = np.asarray(record[key], dtype=np.float64)
        if values.shape != (n_frames,) or not np.isfinite(values).all():
            raise ValueError(f"{path}: {key} must hold {n_frames} finite numbers, got shape {values.shape}")
        series[key] = values
    if len(crops.frame) != n_frames:
        raise ValueError(
            f"crop.parquet: {len(crops.frame)} frames, the ingested clip has {n_frames}; re-run crop"
        )
    return ClipTruth(
        str(path), series["mouth_open"], series["blink"], TruthRegions.of_landmarks(crops.lm68, crops.size)
    )


def truth_rows(
    truth: ClipTruth, frames: Sequence[int] | np.ndarray, images: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    """metrics.parquet rows (setting, metric, backend, value, unit, frames, status, reason) of the
    truth scores: ``mouth_opening_r`` and ``blink_r`` for each setting's images (N, S, S, 3) uint8
    of clip ``frames``; a score that cannot be computed is an unavailable row with the reason."""
    frames = np.asarray(frames, dtype=np.int64)
    rows = []
    for setting, batch in images.items():
        s = truth.scores(batch, frames)
        for metric, key, backend, drawn, what in (
            ("mouth_opening_r", "opening_r", OPENING_BACKEND, truth.mouth_open, "mouth opening"),
            ("blink_r", "blink_r", BLINK_BACKEND, truth.blink, "lid closure"),
        ):
            value = s[key]
            reason = ""
            if value is None:  # a constant series: which one says why
                changes = np.ptp(drawn[frames]) > 0
                reason = f"the {'rendered' if changes else 'drawn'} {what} does not change in these frames"
            rows.append(
                {
                    "setting": setting, "metric": metric, "backend": backend, "value": value, "unit": "",
                    "frames": s["frames"], "status": "ok" if value is not None else "unavailable",
                    "reason": reason,
                }
            )  # fmt: skip
    return rows
