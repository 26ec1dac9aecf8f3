"""Stage 3, crop: VIVE3D-style stable face crops with paste-back.

Per frame, five alignment points (the two eye centres, the nose tip and the two mouth corners of the
68-point layout) are smoothed along time with a Gaussian (shot by shot: jump cuts found from the
landmarks are not smoothed across), a least-squares similarity maps them onto a template, and the
frame is warped to a square crop at the model resolution. The template is the fixed canonical one
(:func:`canonical_template`, the scratch prior's framing) or, for a pretrained prior, the same five
points measured on the generator's own average face (a :class:`~talk3d_core.face.template.CropTemplate`
from :mod:`talk3d_core.crop_template`), so the crops frame faces as the generator draws them. The
2x3 affine (source -> crop) and its inverse are kept so renders can be composited back into the
full source frame (:func:`paste_back`).

Coordinates: pixel centres sit at integer coordinates (OpenCV's convention) in both the source
frame and the crop, x to the right, y down. An affine ``A`` (2, 3) maps a source point ``p`` to
crop pixels as ``A[:, :2] @ p + A[:, 2]``.

Outputs of :func:`crop_clip` (the contract later stages rely on):

- ``crops/000000.png ...``: RGB crops of ``size`` x ``size`` pixels, one per frame (0-based).
- ``crop.parquet``: one row per frame with ``frame`` int32, ``affine`` float32[6] (source -> crop,
  row-major 2x3), ``inverse`` float32[6] (crop -> source), ``lm68`` float32[136] (the landmarks in
  crop pixels, x0, y0, x1, y1, ...), ``align`` float32[10] (the five smoothed alignment points in
  source pixels); the schema metadata key ``talk3d`` holds JSON with the size, smoothing, cuts,
  template and the jitter figures (see :func:`crop_jitter`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.ndimage import gaussian_filter1d

from talk3d_core.face.template import (
    CROP_TEMPLATE_NAME,
    TEMPLATE_ED,
    TEMPLATE_EYE_DISTANCE,
    TEMPLATE_EYE_HEIGHT,
    CropTemplate,
    FaceFraming,
)
from talk3d_core.util.io import atomic_dir, atomic_path
from talk3d_core.util.tables import fixed_list_array, fixed_list_values

ALIGN_POINTS = (
    "right eye centre (subject's right, image left): mean of points 36-41",
    "left eye centre (image right): mean of points 42-47",
    "nose tip: point 30",
    "right mouth corner (image left): point 48",
    "left mouth corner (image right): point 54",
)


META_KEY = b"talk3d"
_VECTOR_COLUMNS = {"affine": 6, "inverse": 6, "lm68": 136, "align": 10}
_COLUMNS = ("frame", *_VECTOR_COLUMNS)
# zlib level 1 with "up" prediction, as for the ingested frames: faster, files barely larger.
# Measured rationale: docs/decisions.md#frame-png-compression
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
JITTER_REFERENCE_SIZE = 512


def alignment_points(lm68: np.ndarray) -> np.ndarray:
    """The five alignment points (see :data:`ALIGN_POINTS`) of (N, 68, 2) landmarks -> (N, 5, 2)."""
    lm68 = np.asarray(lm68, dtype=np.float64)
    if lm68.ndim != 3 or lm68.shape[1:] != (68, 2):
        raise ValueError(f"alignment_points: expected landmarks of shape (N, 68, 2), got {lm68.shape}")
    return np.stack(
        [lm68[:, 36:42].mean(axis=1), lm68[:, 42:48].mean(axis=1), lm68[:, 30], lm68[:, 48], lm68[:, 54]],
        axis=1,
    )


# A jump cut moves the face farther in one frame than a head does; the track is smoothed shot by shot.
# Measured rationale: docs/decisions.md#shot-cut-threshold
CUT_THRESHOLD_ED = 0.12


def find_cuts(align: np.ndarray, threshold_ed: float | None = CUT_THRESHOLD_ED) -> np.ndarray:
    """Frames that start a new shot: where the eye midpoint jumps more than ``threshold_ed`` eye
    distances from the previous frame.

    Args:
        align: (N, 5, 2) alignment points (:func:`alignment_points`) in source pixels.
        threshold_ed: jump threshold in eye distances; None or 0 disables cut detection.

    Returns:
        (K,) int64 frame indices (each >= 1), increasing.
    """
    align = np.asarray(align, dtype=np.float64)
    if align.ndim != 3 or align.shape[1:] != (5, 2):
        raise ValueError(f"find_cuts: expected alignment points of shape (N, 5, 2), got {align.shape}")
    if not threshold_ed or len(align) < 2:
        return np.zeros(0, dtype=np.int64)
    eyes = align[:, :2]
    mid = eyes.mean(axis=1)
    eye_distance = np.linalg.norm(eyes[:, 1] - eyes[:, 0], axis=-1)
    step = np.linalg.norm(np.diff(mid, axis=0), axis=-1)
    ref = np.maximum(np.minimum(eye_distance[1:], eye_distance[:-1]), 1e-6)
    return (np.flatnonzero(step > threshold_ed * ref) + 1).astype(np.int64)


def _segments(n: int, cuts: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) frame ranges of the shots between ``cuts`` (frames that start a shot)."""
    bounds = sorted({int(c) for c in cuts if 0 < int(c) < n})
    edges = [0, *bounds, n]
    return list(zip(edges[:-1], edges[1:], strict=True))


def smooth_track(
    points: np.ndarray, sigma_frames: float, cuts: Sequence[int] | np.ndarray = ()
) -> np.ndarray:
    """Gaussian smoothing of a point track along time (axis 0); same shape as ``points`` (N, ..., 2).

    ``sigma_frames`` is the standard deviation in frames; 0 returns an unsmoothed copy. Each shot
    between ``cuts`` (frames that start a new shot, see :func:`find_cuts`) is smoothed on its own,
    its ends padded by repeating the first/last frame, so a still face stays exactly still.
    """
    points = np.asarray(points, dtype=np.float64)
    if not (np.isfinite(sigma_frames) and sigma_frames >= 0):
        raise ValueError(f"smooth_track: sigma_frames must be a finite number >= 0, got {sigma_frames}")
    out = points.copy()
    if sigma_frames == 0:
        return out
    for start, stop in _segments(len(points), cuts):
        if stop - start > 1:
            out[start:stop] = gaussian_filter1d(points[start:stop], sigma_frames, axis=0, mode="nearest")
    return out


def canonical_template(size: int, zoom: float = 1.0) -> np.ndarray:
    """Target crop-pixel positions (5, 2) of the alignment points for a ``size`` x ``size`` crop.

    ``zoom`` scales the face about the crop centre: 1 is the default EG3D-like framing (see the
    module constants), > 1 a tighter crop (bigger face), < 1 a wider one.
    """
    if size < 8:
        raise ValueError(f"canonical_template: crop size must be >= 8 pixels, got {size}")
    if not zoom > 0:
        raise ValueError(f"canonical_template: zoom must be > 0, got {zoom}")
    frac = TEMPLATE_ED * TEMPLATE_EYE_DISTANCE + np.array([0.5, TEMPLATE_EYE_HEIGHT])
    frac = 0.5 + (frac - 0.5) * zoom
    return frac * size - 0.5  # pixel-edge fractions -> pixel-centre coordinates


def template_points(size: int, zoom: float = 1.0, template: CropTemplate | None = None) -> np.ndarray:
    """Target crop-pixel positions (5, 2) of the alignment points for a ``size`` x ``size`` crop.

    Without ``template`` the canonical template (:func:`canonical_template`); with one, its five
    alignment points (:func:`alignment_points` of its 68) rescaled from its image size to ``size``
    (pixel edges scale, centres at integers) and zoomed about the crop centre like the canonical one.
    """
    if template is None:
        return canonical_template(size, zoom)
    if size < 8:
        raise ValueError(f"template_points: crop size must be >= 8 pixels, got {size}")
    if not zoom > 0:
        raise ValueError(f"template_points: zoom must be > 0, got {zoom}")
    points = (alignment_points(template.lm68[None])[0] + 0.5) * (size / template.size) - 0.5
    centre = (size - 1) / 2.0
    return centre + (points - centre) * zoom


def _fit_similarity_batch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarities (N, 2, 3) mapping src (N, K, 2) onto dst (N, K, 2) or (K, 2).

    In complex numbers a similarity without reflection is ``z -> a z + b``; minimising
    ``sum |a s_k + b - d_k|^2`` gives ``a = sum(conj(s_c) d_c) / sum |s_c|^2`` on centred points,
    the 2D case of Umeyama's solution with the reflection excluded.
    """
    zs = src[..., 0] + 1j * src[..., 1]
    zd = dst[..., 0] + 1j * dst[..., 1]
    zd = np.broadcast_to(zd, zs.shape)
    ms, md = zs.mean(axis=-1, keepdims=True), zd.mean(axis=-1, keepdims=True)
    sc, dc = zs - ms, zd - md
    energy = (np.abs(sc) ** 2).sum(axis=-1)
    if np.any(~(energy > 1e-12)):
        bad = np.flatnonzero(~(energy > 1e-12))
        raise ValueError(
            f"fit_similarity: source points coincide (or are not finite) at rows {bad[:10].tolist()}"
        )
    a = (np.conj(sc) * dc).sum(axis=-1) / energy
    b = md[..., 0] - a * ms[..., 0]
    out = np.empty(zs.shape[:-1] + (2, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 0, 2] = a.real, -a.imag, b.real
    out[..., 1, 0], out[..., 1, 1], out[..., 1, 2] = a.imag, a.real, b.imag
    return out


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) src -> dst.

    ``src`` and ``dst`` are (K, 2) corresponding points (K >= 2); returns the (2, 3) affine.
    """
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(
            f"fit_similarity: expected two (K>=2, 2) point sets, got {src.shape} and {dst.shape}"
        )
    return _fit_similarity_batch(src[None], dst[None])[0]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of one (2, 3) or a stack (..., 2, 3) of invertible 2D affines."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape[-2:] != (2, 3):
        raise ValueError(f"invert_affine: expected (..., 2, 3) affines, got {affine.shape}")
    lin_inv = np.linalg.inv(affine[..., :2])
    return np.concatenate([lin_inv, -lin_inv @ affine[..., 2:]], axis=-1)


def affine_scale(affine: np.ndarray) -> np.ndarray:
    """Isotropic scale sqrt|det| of (..., 2, 3) affines (for source -> crop: crop px per source px)."""
    affine = np.asarray(affine, dtype=np.float64)
    return np.sqrt(np.abs(np.linalg.det(affine[..., :2])))


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points (..., K, 2) through affines (..., 2, 3) (broadcast over the leading axes)."""
    affine, points = np.asarray(affine, dtype=np.float64), np.asarray(points, dtype=np.float64)
    return points @ np.swapaxes(affine[..., :2], -1, -2) + affine[..., None, :, 2]


def crop_affines(
    lm68: np.ndarray,
    *,
    size: int,
    sigma_frames: float = 2.0,
    zoom: float = 1.0,
    cut_threshold_ed: float | None = CUT_THRESHOLD_ED,
    template: CropTemplate | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame crop transforms from a landmark track.

    Args:
        lm68: (N, 68, 2) landmarks in source pixels, all finite.
        size: crop side in pixels.
        sigma_frames: Gaussian smoothing of the alignment points along time (frames; 0 = off).
        zoom: framing zoom, see :func:`canonical_template`.
        cut_threshold_ed: jump cuts are found with :func:`find_cuts` at this threshold (None or 0:
            off) and the smoothing does not cross them.
        template: the measured template to align to; None for the canonical one (see
            :func:`template_points`).

    Returns:
        ``(affine, inverse, align)``: (N, 2, 3) source -> crop, (N, 2, 3) crop -> source, and the
        (N, 5, 2) smoothed alignment points in source pixels.
    """
    lm68 = np.asarray(lm68, dtype=np.float64)
    if lm68.ndim != 3 or lm68.shape[1:] != (68, 2) or len(lm68) == 0:
        raise ValueError(f"crop_affines: expected landmarks of shape (N>0, 68, 2), got {lm68.shape}")
    if not np.isfinite(lm68).all():
        bad = np.flatnonzero(~np.isfinite(lm68).all(axis=(1, 2)))
        raise ValueError(f"crop_affines: landmarks are missing (NaN/inf) in frames {bad[:10].tolist()}")
    raw = alignment_points(lm68)
    align = smooth_track(raw, sigma_frames, find_cuts(raw, cut_threshold_ed))
    affine = _fit_similarity_batch(align, template_points(size, zoom, template))
    return affine, invert_affine(affine), align


# Anti-aliasing before shrinking: a Gaussian of ANTIALIAS_SIGMA output pixels (less aliasing than a
# box filter for nearly the same contrast). Measured rationale: docs/decisions.md#crop-anti-aliasing
ANTIALIAS_SIGMA = 0.4


def _antialias_sigma(scale: float) -> float:
    """Gaussian pre-filter sigma (input px) before resampling at ``scale`` output px per input px.

    The input is taken to be band-limited already at about ANTIALIAS_SIGMA of its own pixels, so
    only the difference up to ANTIALIAS_SIGMA output pixels is added; 0 when not shrinking.
    """
    return ANTIALIAS_SIGMA * float(np.sqrt(max(0.0, 1.0 / scale**2 - 1.0)))


def _covering_box(corners: np.ndarray, pad: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer box (x0, y0, x1, y1) around points, padded, clipped to the image, never empty."""
    x0 = int(np.clip(np.floor(corners[:, 0].min()) - pad, 0, width - 1))
    y0 = int(np.clip(np.floor(corners[:, 1].min()) - pad, 0, height - 1))
    x1 = int(np.clip(np.ceil(corners[:, 0].max()) + pad + 1, x0 + 1, width))
    y1 = int(np.clip(np.ceil(corners[:, 1].max()) + pad + 1, y0 + 1, height))
    return x0, y0, x1, y1


def _square_corners(size: int) -> np.ndarray:
    return np.array([[-1.0, -1.0], [size, -1.0], [-1.0, size], [size, size]])


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name}: expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    return image


def _check_affine(affine: np.ndarray, name: str) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (2, 3) or not np.isfinite(affine).all() or not affine_scale(affine) > 1e-9:
        raise ValueError(f"{name}: expected a finite, invertible (2, 3) affine, got {affine.tolist()}")
    return affine


def warp_crop(frame: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """Warp a frame (H, W, C) uint8 to a (size, size, C) crop with the source -> crop ``affine``.

    When the crop shrinks the face (scale < 1) the part of the frame the crop reads is low-pass
    filtered first (see ANTIALIAS_SIGMA), so hair, stubble and textures do not alias; resampling is
    bicubic; pixels outside the frame repeat its border.
    """
    frame = _check_image(frame, "warp_crop")
    affine = _check_affine(affine, "warp_crop")
    height, width = frame.shape[:2]
    sigma = _antialias_sigma(float(affine_scale(affine)))
    # Work on the part of the frame the crop reads (plus room for the filter and the cubic kernel):
    # a face crop of an HD frame touches a fraction of it.
    corners = apply_affine(invert_affine(affine), _square_corners(size))
    x0, y0, x1, y1 = _covering_box(corners, int(np.ceil(3 * sigma)) + 3, width, height)
    region = frame[y0:y1, x0:x1]
    if sigma > 0.05:
        region = cv2.GaussianBlur(region, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    shifted = affine.copy()
    shifted[:, 2] += affine[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return cv2.warpAffine(
        np.ascontiguousarray(region),
        shifted,
        (size, size),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REPLICATE,
    )


def default_feather_px(size: int) -> float:
    """Default seam width of :func:`paste_back`: 3% of the crop side (~8 px at 256, ~15 px at 512)."""
    return max(1.0, 0.03 * size)


def feathered_alpha(size: int, mask: np.ndarray | None = None, feather_px: float | None = None) -> np.ndarray:
    """Blend weights (size, size) float32 in 0..1 for pasting a crop back.

    The weight ramps (smoothstep) from 0 at the edge of ``mask`` (> 0.5 counts as inside; the crop
    square when None) to full weight ``feather_px`` crop pixels inside it, times the mask's own
    soft value, so the seam never reaches past the mask.
    """
    feather = default_feather_px(size) if feather_px is None else float(feather_px)
    if not feather >= 0:
        raise ValueError(f"paste_back: feather_px must be >= 0, got {feather_px}")
    if mask is None:
        soft = np.ones((size, size), np.float32)
    else:
        soft = np.asarray(mask, dtype=np.float32)
        if soft.shape != (size, size):
            raise ValueError(f"paste_back: mask shape {soft.shape} does not match the crop ({size}, {size})")
        soft = np.clip(np.nan_to_num(soft), 0.0, 1.0)
    if feather == 0:
        return soft
    # Distance (crop px) from each inside pixel to the nearest outside one; a zero border makes
    # the edge of the crop square count as outside.
    inside = np.pad((soft > 0.5).astype(np.uint8), 1)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ramp = np.clip((dist - 0.5) / feather, 0.0, 1.0)
    return (soft * ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)


def paste_back(
    render: np.ndarray,
    frame: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    feather_px: float | None = None,
) -> np.ndarray:
    """Composite a (re-rendered) crop into its full source frame with a feathered seam.

    Args:
        render: (S, S, C) uint8 crop, in the crop frame defined by ``affine``.
        frame: (H, W, C) uint8 full source frame.
        affine: (2, 3) source -> crop affine of that crop (as stored in crop.parquet).
        mask: optional (S, S) float 0..1 region of the render to paste (e.g. a face mask); None
            pastes the whole crop square.
        feather_px: seam width in crop pixels (see :func:`feathered_alpha`); None for
            :func:`default_feather_px`.

    Returns:
        (H, W, C) uint8: the frame with the render blended in. Each frame pixel samples the crop at
        ``affine @ pixel`` (bicubic; low-pass filtered first when the crop is larger than its
        footprint in the frame), so an unmodified crop pastes back onto itself up to resampling.
    """
    render = _check_image(render, "paste_back render")
    frame = _check_image(frame, "paste_back frame")
    affine = _check_affine(affine, "paste_back")
    if render.dtype != np.uint8 or frame.dtype != np.uint8:
        raise ValueError(f"paste_back: render and frame must be uint8, got {render.dtype} and {frame.dtype}")
    size = render.shape[0]
    if render.shape[1] != size or render.shape[2:] != frame.shape[2:]:
        raise ValueError(
            f"paste_back: render must be a square crop with the frame's channels, got {render.shape} "
            f"for a frame of shape {frame.shape}"
        )
    alpha = feathered_alpha(size, mask, feather_px)
    height, width = frame.shape[:2]
    # Only the frame pixels the crop covers are touched.
    corners = apply_affine(invert_affine(affine), _square_corners(size))
    x0, y0, x1, y1 = _covering_box(corners, 2, width, height)
    shifted = affine.copy()
    shifted[:, 2] += affine[:, :2] @ np.array([x0, y0], dtype=np.float64)
    sigma = _antialias_sigma(1.0 / float(affine_scale(affine)))
    source = render
    if sigma > 0.05:
        source = cv2.GaussianBlur(render, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    roi = (x1 - x0, y1 - y0)
    inv_flags = cv2.WARP_INVERSE_MAP
    pasted = cv2.warpAffine(
        np.ascontiguousarray(source),
        shifted,
        roi,
        flags=cv2.INTER_CUBIC | inv_flags,
        borderMode=cv2.BORDER_REPLICATE,
    )
    weight = cv2.warpAffine(
        alpha,
        shifted,
        roi,
        flags=cv2.INTER_LINEAR | inv_flags,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    if pasted.ndim == 2:
        pasted = pasted[..., None]
    weight = weight[..., None]
    out = frame.copy()
    region = out[y0:y1, x0:x1].reshape(pasted.shape).astype(np.float32)
    blended = region + weight * (pasted.astype(np.float32) - region)
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8).reshape(out[y0:y1, x0:x1].shape)
    return out


def crop_jitter(
    affines: np.ndarray,
    size: int,
    cuts: Sequence[int] | np.ndarray = (),
    template: CropTemplate | None = None,
) -> dict[str, Any]:
    """Frame-to-frame stability of a crop track, in crop pixels at JITTER_REFERENCE_SIZE (512).

    The crop window is followed through two anchors: the template eye centres mapped back into the
    source frame (crop -> source). Their motion between frames, converted to crop pixels (times the
    crop scale and 512 / size), is reported as the RMS first difference ``motion_rms_px`` (all
    motion of the window: head motion plus shake) and the RMS second difference ``accel_rms_px``
    (acceleration: small for smooth head motion, large for frame-to-frame shake). Differences that
    span a cut are left out. Either figure is None when no difference is left.

    Args:
        affines: (N, 2, 3) source -> crop affines.
        size: crop side in pixels the affines were made for.
        cuts: frames that start a new shot (see :func:`find_cuts`).
        template: the template the affines align to (None: the canonical one), whose eye centres
            are the anchors.
    """
    affines = np.asarray(affines, dtype=np.float64)
    if affines.ndim != 3 or affines.shape[1:] != (2, 3):
        raise ValueError(f"crop_jitter: expected (N, 2, 3) affines, got {affines.shape}")
    eyes = template_points(size, template=template)[None, :2]
    anchors = apply_affine(invert_affine(affines), eyes)  # (N, 2, 2) source px
    to_ref = affine_scale(affines) * (JITTER_REFERENCE_SIZE / size)  # source px -> crop px at 512
    motions, accels = [], []
    for start, stop in _segments(len(affines), cuts):
        a, k = anchors[start:stop], to_ref[start:stop]
        motions.append(np.diff(a, axis=0) * (0.5 * (k[1:] + k[:-1]))[:, None, None])
        accels.append((a[2:] - 2 * a[1:-1] + a[:-2]) * k[1:-1, None, None])
    out: dict[str, Any] = {
        "reference_size": JITTER_REFERENCE_SIZE,
        "n_frames": int(len(affines)),
        "n_cuts": len(_segments(len(affines), cuts)) - 1,
    }
    for key, steps in (("motion_rms_px", motions), ("accel_rms_px", accels)):
        step = np.concatenate(steps) if steps else np.zeros((0, 2, 2))
        out[key] = float(np.sqrt(np.mean(np.sum(step**2, axis=-1)))) if len(step) else None
    return out


@dataclasses.dataclass(frozen=True)
class CropTable:
    """Contents of crop.parquet as arrays (N rows, one per frame).

    frame (N,) int32; affine (N, 2, 3) source -> crop; inverse (N, 2, 3) crop -> source; lm68
    (N, 68, 2) landmarks in crop pixels; align (N, 5, 2) smoothed alignment points in source pixels
    (all float32); meta: the JSON metadata (size, sigma_frames, zoom, template, jitter, ...).
    """

    frame: np.ndarray
    affine: np.ndarray
    inverse: np.ndarray
    lm68: np.ndarray
    align: np.ndarray
    meta: dict[str, Any]

    @property
    def size(self) -> int:
        """Crop side in pixels."""
        return int(self.meta["size"])

    @property
    def framing(self) -> FaceFraming:
        """Where these crops put the face (:class:`~talk3d_core.face.template.FaceFraming`): from the
        template points the table records, or for a table written before it did, the fixed template
        at the table's zoom."""
        template = self.meta.get("template")
        points = (
            np.asarray(template["points_px"])
            if template is not None
            else template_points(self.size, float(self.meta.get("zoom", 1.0)))
        )
        return FaceFraming.of_points(points, self.size)


_SHAPES = {"affine": (2, 3), "inverse": (2, 3), "lm68": (68, 2), "align": (5, 2)}


def write_crop_table(table: CropTable, path: str | os.PathLike[str]) -> None:
    """Write ``table`` to ``path`` (Parquet, atomically); vectors as fixed-length float32 lists."""
    n = len(table.frame)
    columns: dict[str, pa.Array] = {"frame": pa.array(np.asarray(table.frame, dtype=np.int32))}
    for name, width in _VECTOR_COLUMNS.items():
        values = np.asarray(getattr(table, name), dtype=np.float32)
        if values.shape != (n, *_SHAPES[name]):
            raise ValueError(
                f"{path}: column {name} has shape {values.shape}, expected {(n, *_SHAPES[name])}"
            )
        columns[name] = fixed_list_array(values, width)
    if "size" not in table.meta:
        raise ValueError(f"{path}: crop table metadata needs the crop 'size'")
    schema = pa.schema([pa.field(k, v.type) for k, v in columns.items()])
    schema = schema.with_metadata({META_KEY: json.dumps(table.meta, sort_keys=True).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_arrays(list(columns.values()), schema=schema), tmp)


def read_crop_table(path: str | os.PathLike[str]) -> CropTable:
    """Read crop.parquet, checking its schema; a stale or damaged file raises ValueError naming it."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: cannot read crop table: {exc}") from exc
    if tuple(table.column_names) != _COLUMNS:
        raise ValueError(f"{path}: crop table columns are {table.column_names}, expected {list(_COLUMNS)}")
    if table.schema.field("frame").type != pa.int32():
        raise ValueError(f"{path}: column frame has type {table.schema.field('frame').type}, expected int32")
    raw_meta = (table.schema.metadata or {}).get(META_KEY)
    try:
        meta = json.loads(raw_meta) if raw_meta is not None else None
    except ValueError as exc:
        raise ValueError(f"{path}: crop table metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("size"), int):
        raise ValueError(
            f"{path}: crop table metadata ({META_KEY.decode()}) is missing or has no integer 'size'"
        )
    n = table.num_rows
    arrays: dict[str, np.ndarray] = {}
    for name in _COLUMNS:
        column = table.column(name)
        if column.null_count:
            raise ValueError(f"{path}: column {name} has {column.null_count} missing values")
        if name == "frame":
            arrays[name] = column.to_numpy()
            continue
        width = _VECTOR_COLUMNS[name]
        kind = column.type
        if (
            not (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind))
            or kind.value_type != pa.float32()
        ):
            raise ValueError(f"{path}: column {name} has type {kind}, expected a list of float32")
        try:
            arrays[name] = fixed_list_values(column, _SHAPES[name])
        except ValueError:
            raise ValueError(f"{path}: column {name} must hold {width} values per row") from None
    frame = arrays.pop("frame")
    if n and (frame[0] < 0 or np.any(np.diff(frame) <= 0)):
        raise ValueError(f"{path}: column frame must be non-negative and strictly increasing")
    return CropTable(frame=frame, meta=meta, **arrays)


def _crop_one(src: Path, dst: Path, affine: np.ndarray, size: int, expect_shape: tuple[int, ...]) -> None:
    image = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{src}: cannot read frame image")
    if image.shape != expect_shape:
        raise ValueError(f"{src}: frame has shape {image.shape}, the clip's first frame has {expect_shape}")
    # Channel order does not matter to the warp: OpenCV's BGR goes back out as BGR.
    if not cv2.imwrite(str(dst), warp_crop(image, affine, size), _PNG_PARAMS):
        raise ValueError(f"{dst}: cannot write crop image")


def _template_meta(size: int, zoom: float, template: CropTemplate | None) -> dict[str, Any]:
    """What crop.parquet records of the template: its name, provenance and points at this size."""
    points = template_points(size, zoom, template).round(4).tolist()
    if template is None:
        return {
            "name": CROP_TEMPLATE_NAME,
            "eye_distance": TEMPLATE_EYE_DISTANCE,
            "eye_height": TEMPLATE_EYE_HEIGHT,
            "points_px": points,
        }
    return {"name": template.name, "source": template.source, "points_px": points}


def crop_clip(
    frame_paths: Sequence[str | os.PathLike[str]],
    lm68: np.ndarray,
    crops_dir: str | os.PathLike[str],
    crop_parquet: str | os.PathLike[str],
    *,
    size: int = 256,
    sigma_frames: float = 2.0,
    zoom: float = 1.0,
    cut_threshold_ed: float | None = CUT_THRESHOLD_ED,
    template: CropTemplate | None = None,
    threads: int = 2,
) -> dict[str, Any]:
    """Crop a whole clip: ``crops/{frame:06d}.png`` and ``crop.parquet``, both written atomically.

    Args:
        frame_paths: the N full frames in frame order (frame index = position, 0-based).
        lm68: (N, 68, 2) landmarks in source pixels (landmarks.parquet's ``lm68``).
        crops_dir: output folder of the square RGB crops.
        crop_parquet: output table (see the module docstring).
        size: crop side in pixels.
        sigma_frames: Gaussian smoothing of the alignment points along time, in frames (0 = off).
        zoom: framing zoom (see :func:`canonical_template`).
        cut_threshold_ed: jump-cut threshold (see :func:`find_cuts`; None or 0: off); smoothing
            does not cross cuts.
        template: the measured template to align to (a pretrained prior's, see
            :mod:`talk3d_core.crop_template`); None for the canonical template.
        threads: frames cropped in parallel (reading, warping and PNG coding release the GIL).

    Returns:
        The metadata stored in the table (size, smoothing, cuts, template, frame size, and the
        jitter figures of :func:`crop_jitter` for these settings and for no smoothing).
    """
    frame_paths = [Path(p) for p in frame_paths]
    lm68 = np.asarray(lm68, dtype=np.float64)
    crops_dir = Path(crops_dir)
    if not frame_paths:
        raise ValueError(f"{crops_dir}: no frames to crop")
    if lm68.shape != (len(frame_paths), 68, 2):
        raise ValueError(
            f"{crops_dir}: {len(frame_paths)} frames (first {frame_paths[0]}) "
            f"but landmarks of shape {lm68.shape}"
        )
    if size < 8:
        raise ValueError(f"{crops_dir}: crop size must be >= 8 pixels, got {size}")
    try:
        affine, inverse, align = crop_affines(
            lm68, size=size, sigma_frames=sigma_frames, zoom=zoom, cut_threshold_ed=cut_threshold_ed,
            template=template,
        )  # fmt: skip
        cuts = find_cuts(alignment_points(lm68), cut_threshold_ed)
    except ValueError as exc:
        raise ValueError(f"{crops_dir}: {exc}") from exc
    first = cv2.imread(str(frame_paths[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise ValueError(f"{frame_paths[0]}: cannot read frame image")
    with atomic_dir(crops_dir) as tmp:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            jobs = [
                pool.submit(_crop_one, src, tmp / f"{i:06d}.png", affine[i], size, first.shape)
                for i, src in enumerate(frame_paths)
            ]
            for job in jobs:
                job.result()  # re-raises the first failure
    unsmoothed = (
        crop_affines(lm68, size=size, sigma_frames=0.0, zoom=zoom, template=template)[0]
        if sigma_frames
        else affine
    )
    jitter = {
        "smoothed": crop_jitter(affine, size, cuts, template),
        "unsmoothed": crop_jitter(unsmoothed, size, cuts, template),
    }
    meta = {
        "stage": "crop",
        "size": int(size),
        "sigma_frames": float(sigma_frames),
        "zoom": float(zoom),
        "cut_threshold_ed": float(cut_threshold_ed or 0.0),
        "cuts": cuts.tolist(),
        "template": _template_meta(size, zoom, template),
        "align_points": list(ALIGN_POINTS),
        "antialias_sigma": ANTIALIAS_SIGMA,
        "frame_size": [int(first.shape[1]), int(first.shape[0])],
        "n_frames": len(frame_paths),
        "jitter": jitter,
    }
    table = CropTable(
        frame=np.arange(len(frame_paths), dtype=np.int32),
        affine=affine,
        inverse=inverse,
        lm68=apply_affine(affine, lm68),
        align=align,
        meta=meta,
    )
    write_crop_table(table, crop_parquet)
    return meta
