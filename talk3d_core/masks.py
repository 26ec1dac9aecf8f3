"""Region masks of face crops: one label image per crop (background, skin, lips, mouth, eyes, hair, torso).

Two backends produce the same label layout (:data:`LABELS`):

``landmarks`` (default, no weights)
    Geometry from the 68 crop landmarks plus small per-frame colour models:

    - lips and mouth interior: the outer lip contour (48-59) drawn as a smooth closed curve through
      the points bounds both. Inside it, the interior is what does not look like lip (colour from
      the outer half of the lips): much darker (the gap) or much less red (teeth), plus the inner
      lip region (60-67) when the inner lips are apart. Structures thinner than ~3 px at 256 px are
      removed, so the seam of a closed mouth is not interior. Lips are the rest of the outer region,
      so ``lips | interior`` never leaves the outer lip curve.
    - eyes: the eye contours (36-41, 42-47), dilated by ~6 % of the eye width (1 px at 256 px).
    - face outline: the jaw contour (0-16) closed over the forehead by an elliptic arc through a point
      ``FOREHEAD_PER_BROW_NOSE`` x the brow-to-nose distance above the brows.
    - skin: the inner face (the outline shrunk by 8 % of the face width, up to the brows) whatever
      its colour (beard, shadows), the outline's border below the eyes where it is person, and,
      on the forehead, temples, above the outline (high foreheads) and beside it (ears), pixels
      that a skin Gaussian (fitted to the cheeks and nose) explains better than a hair Gaussian
      (fitted to person pixels above the forehead) and that connect to the inner face.
    - person vs background: ``cv2.grabCut`` at 96 px, initialised from the landmarks (sure person:
      inner face, neck and chest under the chin, a patch above the forehead; sure background: the
      top border and the side borders down to the chin, away from the head), two iterations; the
      mask is upsampled and pixels near its edge re-decided with grabCut's colour models.
    - hair: person pixels above the jaw line that are not skin; neck/torso: person pixels below the
      jaw contour (points 3-13) and its sideways extension at ear-lobe height.

    About 20 ms of CPU per 256 px crop, half of it in grabCut.

``bisenet``
    The CelebAMask-HQ face parser (:mod:`talk3d_core.face.bisenet`, weights ``79999_iter.pth``); its 19
    classes are mapped to ours by :data:`talk3d_core.face.bisenet.CELEBAMASK_TO_LABEL`.

Crops are RGB uint8 ``(S, S, 3)``; landmarks are crop pixels ``(68, 2)`` (x, y) in the iBUG 300-W
layout. Label images are uint8 ``(S, S)``, written as single-channel PNGs ``masks/000000.png``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from talk3d_core.face.regions import LABELS
from talk3d_core.util.io import atomic_dir, read_rgb

#: RGB colour per label for contact sheets (index = label value).
PALETTE = np.array(
    [
        (40, 150, 60),  # background
        (240, 190, 150),  # skin
        (220, 30, 60),  # lips
        (90, 0, 140),  # mouth interior
        (40, 220, 240),  # eyes
        (170, 100, 20),  # hair
        (60, 110, 230),  # neck/torso
    ],
    dtype=np.uint8,
)

BACKENDS = ("landmarks", "bisenet")

#: Forehead height above the brow centre, as a fraction of the brow-centre-to-nose-tip distance.
FOREHEAD_PER_BROW_NOSE = 1.0

_N_LANDMARKS = 68


# ------------------------------------------------------------------------------------------ small helpers


def _check_inputs(crop: np.ndarray, lm68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    crop = np.asarray(crop)
    lm68 = np.asarray(lm68, dtype=np.float64)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1] or crop.dtype != np.uint8:
        raise ValueError(f"crop must be a square (S, S, 3) uint8 RGB image, got {crop.shape} {crop.dtype}")
    if lm68.shape != (_N_LANDMARKS, 2):
        raise ValueError(f"lm68 must have shape (68, 2) in crop pixels, got {lm68.shape}")
    if not np.isfinite(lm68).all():
        raise ValueError("lm68 has non-finite coordinates")
    return crop, lm68


def _closed_curve(points: np.ndarray, samples_per_segment: int = 6) -> np.ndarray:
    """Closed Catmull-Rom curve through ``points`` (K, 2): a smooth outline instead of a polygon."""
    p = np.asarray(points, dtype=np.float64)
    k = len(p)
    t = np.linspace(0.0, 1.0, samples_per_segment, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    out = []
    for i in range(k):
        p0, p1, p2, p3 = p[i - 1], p[i], p[(i + 1) % k], p[(i + 2) % k]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t3
            )
        )
    return np.concatenate(out)


def _fill(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """Boolean mask of a filled polygon (float crop pixels, sub-pixel accurate via 4 fractional bits)."""
    mask = np.zeros(shape, np.uint8)
    pts = np.round(np.asarray(polygon) * 16).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _disk(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius <= 0:
        return mask
    return cv2.dilate(mask.astype(np.uint8), _disk(radius)).astype(bool)


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius <= 0:
        return mask
    return cv2.erode(mask.astype(np.uint8), _disk(radius)).astype(bool)


# ------------------------------------------------------------------------------------------ face geometry


class FaceGeometry:
    """Landmark-derived frame of one face in crop pixels.

    Attributes: ``right`` (unit vector from the image-left eye to the image-right eye), ``up`` (unit
    vector towards the forehead), ``face_width`` (jaw point 0 to 16, px), ``forehead_top`` (2,),
    ``face_outline`` (jaw contour closed over the forehead, (K, 2)).
    """

    def __init__(self, lm68: np.ndarray) -> None:
        lm = np.asarray(lm68, dtype=np.float64)
        self.lm = lm
        eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
        right = eye_l - eye_r
        norm = float(np.hypot(*right))
        if norm < 1e-6:
            raise ValueError("lm68: the two eye centres coincide; landmarks are degenerate")
        self.right = right / norm
        self.up = np.array([self.right[1], -self.right[0]])  # image y points down
        self.face_width = float(np.hypot(*(lm[16] - lm[0])))
        if self.face_width < 4:
            raise ValueError(f"lm68: face width (jaw point 0 to 16) is {self.face_width:.1f} px, too small")
        brow_centre = lm[17:27].mean(0)
        self.brow_nose = float(np.hypot(*(brow_centre - lm[30])))
        self.forehead_top = brow_centre + self.up * FOREHEAD_PER_BROW_NOSE * self.brow_nose
        self.face_outline = self.outline(FOREHEAD_PER_BROW_NOSE)

    def outline(self, forehead_per_brow_nose: float) -> np.ndarray:
        """Jaw contour (points 0-16) closed by an elliptic arc through the point
        ``forehead_per_brow_nose`` x the brow-to-nose distance above the brow centre, (K, 2) px."""
        lm = self.lm
        top = lm[17:27].mean(0) + self.up * forehead_per_brow_nose * self.brow_nose
        # Arc from jaw point 16 over the top to jaw point 0 (conjugate semi-axes of an ellipse).
        centre = 0.5 * (lm[0] + lm[16])
        a, b = lm[16] - centre, top - centre
        theta = np.linspace(0.0, np.pi, 25)[1:-1, None]
        return np.concatenate([lm[0:17], centre + np.cos(theta) * a + np.sin(theta) * b])

    def below_jaw(self, shape: tuple[int, int]) -> np.ndarray:
        """Pixels under the jaw contour (points 3-13) and under its sideways extension at the height of
        points 3 and 13 (ear lobes): where neck, shoulders and clothes are."""
        lm, far = self.lm, 4.0 * max(shape)
        down = -self.up
        outline = np.concatenate(
            [
                lm[3:14],
                [lm[13] + self.right * far, lm[13] + self.right * far + down * far],
                [lm[3] - self.right * far + down * far, lm[3] - self.right * far],
            ]
        )
        return _fill(shape, outline)

    def head_region(self, shape: tuple[int, int], scale: float) -> np.ndarray:
        """The face outline scaled by ``scale`` about its centre, shifted up so it covers the hair."""
        centre = self.face_outline.mean(0)
        outline = (
            centre + scale * (self.face_outline - centre) + self.up * 0.15 * (scale - 1) * self.face_width
        )
        return _fill(shape, outline)


# ------------------------------------------------------------------------------------------ mouth and eyes


def _mouth_gap(lm: np.ndarray, up: np.ndarray) -> float:
    """Largest opening between the inner lips (pairs 61-67, 62-66, 63-65) along ``up``, px."""
    return max(float(np.dot(lm[a] - lm[b], up)) for a, b in ((61, 67), (62, 66), (63, 65)))


def mouth_regions(
    crop: np.ndarray, lm68: np.ndarray, *, geometry: FaceGeometry | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Lips and mouth-interior masks, both (S, S) bool, disjoint; their union is the outer lip region.

    The outer region is the smooth curve through the outer lip points 48-59. Inside it, the interior
    is what does not look like lip: pixels much darker than the lips (the gap, the throat) or much
    less red at lip brightness (teeth), plus the inner lip region (60-67) where it is not lip
    coloured (the tongue) when the inner lips are apart. Lip colour comes from the outer half of
    the lips. Structures thinner than ~3 px at 256 px (the seam of closed lips) are removed, so a
    closed mouth has (nearly) no interior. Lips are the outer region minus the interior.
    """
    crop, lm = _check_inputs(crop, lm68)
    geo = geometry or FaceGeometry(lm)
    shape = crop.shape[:2]
    outer = _fill(shape, _closed_curve(lm[48:60]))
    if not outer.any():
        return outer, np.zeros(shape, bool)
    mouth_width = float(np.hypot(*(lm[54] - lm[48])))
    unit = max(1.0, mouth_width / 40.0)  # ~1 px for a 256 px crop

    # Work in the bounding box of the outer lips (cheap colour conversion and morphology).
    ys, xs = np.nonzero(outer)
    y0, y1 = max(ys.min() - 2, 0), min(ys.max() + 3, shape[0])
    x0, x1 = max(xs.min() - 2, 0), min(xs.max() + 3, shape[1])
    off = np.array([x0, y0], np.float64)
    sub = (y1 - y0, x1 - x0)
    lab = cv2.cvtColor(np.ascontiguousarray(crop[y0:y1, x0:x1]), cv2.COLOR_RGB2LAB).astype(np.float32)
    o = outer[y0:y1, x0:x1]
    inner = _fill(sub, _closed_curve(lm[60:68] - off)) & o
    gap = _mouth_gap(lm, geo.up)
    open_inner = inner if gap >= max(1.0, 0.04 * mouth_width) else np.zeros(sub, bool)

    # Lip colour from the outer half of the lips (the part least likely to be anything else).
    depth = cv2.distanceTransform(o.astype(np.uint8), cv2.DIST_L2, 3)
    band = (depth >= 1.0) & ~_dilate(inner, unit)
    if band.sum() < 8:
        band = o
    lip_l = float(np.median(lab[band, 0]))
    lip_red = max(float(np.median(lab[band, 1])) - 128.0, 4.0)
    light, red = lab[..., 0], lab[..., 1] - 128.0
    dark = light < 0.65 * lip_l
    teeth = (red < 0.6 * lip_red) & (light > lip_l - 10.0)
    lip_like = ~dark & ~teeth

    candidates = (dark | teeth) & (depth >= 1.0)
    # Dark mouth corners belong to the lips/skin fold, not the interior, unless the inner lips say so.
    for corner in (lm[48] - off, lm[54] - off):
        near = np.zeros(sub, np.uint8)
        cv2.circle(
            near, (int(round(corner[0])), int(round(corner[1]))), int(round(0.12 * mouth_width)), 1, -1
        )
        candidates &= ~near.astype(bool) | open_inner
    interior = candidates | (open_inner & ~(lip_like & (depth < 1.5 * unit)))
    # Square kernels: an opening with a 3x3 square removes every structure thinner than 3 px.
    r = int(round(unit))
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    interior = cv2.morphologyEx(interior.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    interior = cv2.morphologyEx(interior, cv2.MORPH_OPEN, kernel) & o.astype(np.uint8)
    # Drop specks (a dark pore or lip crease): keep components of at least two kernel areas.
    n, comp, stats, _ = cv2.connectedComponentsWithStats(interior, connectivity=8)
    big = np.zeros(n, bool)
    big[1:] = stats[1:, cv2.CC_STAT_AREA] >= 2 * kernel.size
    out = np.zeros(shape, bool)
    out[y0:y1, x0:x1] = big[comp]
    return outer & ~out, out


def eye_regions(shape: tuple[int, int], lm68: np.ndarray) -> np.ndarray:
    """Both eye openings (smooth contours 36-41 and 42-47) dilated by ~6 % of the eye width, bool (S, S)."""
    lm = np.asarray(lm68, dtype=np.float64)
    mask = np.zeros(shape, bool)
    for sl, (a, b) in ((slice(36, 42), (36, 39)), (slice(42, 48), (42, 45))):
        width = float(np.hypot(*(lm[b] - lm[a])))
        mask |= _dilate(_fill(shape, _closed_curve(lm[sl])), max(1.0, 0.06 * width))
    return mask


# ------------------------------------------------------------------------------------------ colour models


def _skin_samples(shape: tuple[int, int], geo: FaceGeometry) -> np.ndarray:
    """Cheeks (between jaw and nose, under the eyes) and the nose bridge: skin in nearly every face."""
    lm = geo.lm
    r = 0.06 * geo.face_width
    mask = np.zeros(shape, np.uint8)
    for p in (0.5 * (lm[2] + lm[31]), 0.5 * (lm[14] + lm[35]), 0.5 * (lm[28] + lm[29]), lm[29]):
        cv2.circle(mask, (int(round(p[0])), int(round(p[1]))), max(1, int(round(r))), 1, -1)
    return mask.astype(bool)


def skin_distances(crop: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every pixel to the skin colour of ``samples`` (bool (S, S), e.g. the cheeks).

    Returns ``(chroma, luma)``, float32 (S, S): the Mahalanobis distance of (Cr, Cb) to a Gaussian
    fitted to the samples (in standard deviations, with a floor of 2 levels so a very uniform sample
    does not make the model brittle) and the signed z-score of the luminance Y. Chroma separates
    skin from hair and background; luminance only gets loose bounds because shading varies.
    """
    ycc = cv2.cvtColor(crop, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    ref = ycc[samples]
    if len(ref) < 10:
        raise ValueError(f"only {len(ref)} skin sample pixels (face too small in the crop?)")
    mean = ref.mean(0)
    chroma = ref[:, 1:] - mean[1:]
    cov = chroma.T @ chroma / len(chroma) + np.eye(2, dtype=np.float32) * 4.0
    inv = np.linalg.inv(cov)
    d0, d1 = ycc[..., 1] - mean[1], ycc[..., 2] - mean[2]
    m2 = inv[0, 0] * d0 * d0 + (inv[0, 1] + inv[1, 0]) * d0 * d1 + inv[1, 1] * d1 * d1
    y_std = max(float(ref[:, 0].std()), 8.0)
    return np.sqrt(m2), (ycc[..., 0] - mean[0]) / y_std


class ColourGaussian:
    """A Gaussian colour model in YCrCb with per-channel standard-deviation floors (levels)."""

    def __init__(self, samples: np.ndarray, floor: tuple[float, float, float] = (15.0, 2.0, 2.0)) -> None:
        x = np.asarray(samples, np.float64).reshape(-1, 3)
        if len(x) < 10:
            raise ValueError(f"only {len(x)} colour samples; cannot fit a colour model")
        self.mean = x.mean(0)
        cov = np.cov(x, rowvar=False) + np.diag(np.square(floor))
        self.inv = np.linalg.inv(cov)
        self.logdet = float(np.linalg.slogdet(cov)[1])

    def nll(self, x: np.ndarray) -> np.ndarray:
        """Negative log-likelihood (up to a constant) of colours ``x`` (..., 3)."""
        d = np.asarray(x, np.float64) - self.mean
        return 0.5 * (np.einsum("...i,ij,...j->...", d, self.inv, d) + self.logdet)


# ------------------------------------------------------------------------------------------ person matting


def person_mask(
    crop: np.ndarray, geo: FaceGeometry, *, work_size: int = 96, iterations: int = 2
) -> np.ndarray:
    """Person (head, hair, neck, torso) vs background, bool (S, S).

    ``cv2.grabCut`` runs on the crop shrunk to ``work_size`` px (``iterations`` rounds), initialised
    from the landmarks: sure person = inner face, neck and chest under the chin, a patch of hair
    above the forehead; probable person = the head enlarged for hair and the shoulders; sure
    background = the top border and the side borders down to the chin, away from the head;
    everything else probable background. The result is upsampled and pixels near its edge are
    re-decided at full resolution with grabCut's colour models.
    """
    s = crop.shape[0]
    work_size = min(work_size, s)
    k = work_size / s
    small = cv2.resize(crop, (work_size, work_size), interpolation=cv2.INTER_AREA)
    shape = (work_size, work_size)
    lm = geo.lm * k
    sgeo = FaceGeometry(lm)
    face = _fill(shape, sgeo.face_outline)
    head = sgeo.head_region(shape, 1.45)
    below = sgeo.below_jaw(shape)
    w = sgeo.face_width

    chin, down = lm[8], -sgeo.up
    # Probable person: the head (with room for hair) and shoulders widening under the chin.
    shoulders = np.array(
        [
            lm[4],
            lm[12],
            chin + sgeo.right * 1.7 * w + down * 0.6 * w,
            chin + sgeo.right * 1.7 * w + down * 4 * w,
            chin - sgeo.right * 1.7 * w + down * 4 * w,
            chin - sgeo.right * 1.7 * w + down * 0.6 * w,
        ]
    )
    init = np.full(shape, cv2.GC_PR_BGD, np.uint8)
    init[head | (_fill(shape, shoulders) & below)] = cv2.GC_PR_FGD
    # Sure background: border strips at the top and at the sides down to the chin, away from the head.
    strip = max(2, int(round(0.07 * work_size)))
    border = np.zeros(shape, bool)
    border[:strip] = True
    side_bottom = int(min(work_size, max(0.0, lm[8, 1] + 0.05 * w)))
    border[:side_bottom, :strip] = True
    border[:side_bottom, -strip:] = True
    border &= ~sgeo.head_region(shape, 1.7)
    init[border] = cv2.GC_BGD
    # Sure foreground: inner face, and the neck and chest under the chin (shoulders are ~3 face widths
    # wide, so +-1.1 face widths under the chin is body in any upright portrait).
    init[_erode(face, 0.08 * w)] = cv2.GC_FGD
    chest = np.array(
        [
            chin - sgeo.right * 0.25 * w + down * 0.05 * w,
            chin + sgeo.right * 0.25 * w + down * 0.05 * w,
            chin + sgeo.right * 1.1 * w + down * 1.0 * w,
            chin + sgeo.right * 1.1 * w + down * 4 * w,
            chin - sgeo.right * 1.1 * w + down * 4 * w,
            chin - sgeo.right * 1.1 * w + down * 1.0 * w,
        ]
    )
    init[_fill(shape, chest)] = cv2.GC_FGD
    # ... and the hair (or high forehead) just above the forehead top: seeds the hair colours.
    top = sgeo.forehead_top
    crown = np.array(
        [
            top - sgeo.right * 0.2 * w,
            top + sgeo.right * 0.2 * w,
            top + sgeo.right * 0.15 * w + sgeo.up * 0.12 * w,
            top - sgeo.right * 0.15 * w + sgeo.up * 0.12 * w,
        ]
    )
    init[_fill(shape, crown)] = cv2.GC_FGD
    # grabCut fits 5-component colour mixtures to each side; with (almost) no pixels on one side the
    # answer is that side's absence.
    n_bg = int(((init == cv2.GC_BGD) | (init == cv2.GC_PR_BGD)).sum())
    if n_bg < 20:
        return np.ones((s, s), bool)
    if init.size - n_bg < 20:
        return np.zeros((s, s), bool)

    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    bgr = np.ascontiguousarray(small[..., ::-1])
    # grabCut seeds its colour mixtures with k-means on OpenCV's (per-thread) random generator: fix it
    # so a crop always gets the same mask.
    cv2.setRNGSeed(0)
    cv2.grabCut(bgr, init, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = ((init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)).astype(np.float32)
    soft = cv2.resize(fg, (s, s), interpolation=cv2.INTER_LINEAR)
    return _refine_edge(crop, soft, fgd, bgd, band=1.5 / k)


def _gmm_log_likelihood(model: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Log density of pixels ``x`` (M, 3) under an OpenCV grabCut GMM (1, 65): 5 weights, 5 means (3),
    5 covariances (3x3)."""
    m = model.ravel()
    weights, means, covs = m[:5], m[5:20].reshape(5, 3), m[20:65].reshape(5, 3, 3)
    dens = np.zeros(len(x))
    for wk, mu, cov in zip(weights, means, covs, strict=True):
        if wk <= 0:
            continue
        cov = cov + np.eye(3) * 1e-2
        d = x - mu
        m2 = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
        dens += wk * np.exp(-0.5 * m2) / np.sqrt((2 * np.pi) ** 3 * max(np.linalg.det(cov), 1e-12))
    return np.log(dens + 1e-300)


def _refine_edge(
    crop: np.ndarray, soft: np.ndarray, fgd: np.ndarray, bgd: np.ndarray, band: float
) -> np.ndarray:
    """Full-resolution person mask from the upsampled low-resolution one: pixels within ``band`` px of
    its edge are re-decided by the grabCut colour models, with the upsampled mask as a prior."""
    hard = soft > 0.5
    edge = _dilate(hard, band) & ~_erode(hard, band)
    if not edge.any():
        return hard
    x = crop[edge][:, ::-1].astype(np.float64)  # the models were fitted on BGR
    prior = np.clip(soft[edge], 0.02, 0.98)
    logit = _gmm_log_likelihood(fgd, x) - _gmm_log_likelihood(bgd, x) + 2.0 * np.log(prior / (1 - prior))
    out = hard.copy()
    out[edge] = logit > 0
    return cv2.medianBlur(out.astype(np.uint8), 3).astype(bool)


# ------------------------------------------------------------------------------------------ labelling


def _skin_vs_hair(
    crop: np.ndarray, geo: FaceGeometry, where: np.ndarray, hair_samples: np.ndarray
) -> np.ndarray:
    """Bool (S, S), True where a pixel of ``where`` looks more like this face's skin than its hair.

    Skin colour comes from the cheeks and nose, hair colour from ``hair_samples`` (person pixels
    well above the forehead). Both are Gaussians in YCrCb; a pixel is skin when the skin model
    explains it better and its chroma is within 6 standard deviations of the skin's. Without
    enough hair pixels (bald head, tight crop) or when hair and skin colours coincide, chroma
    and brightness bounds around the skin colour decide alone.
    """
    ycc = cv2.cvtColor(crop, cv2.COLOR_RGB2YCrCb)
    skin_samples = _skin_samples(crop.shape[:2], geo)
    chroma, luma = skin_distances(crop, skin_samples)
    out = np.zeros(crop.shape[:2], bool)
    x = ycc[where]
    near_skin = (chroma[where] < 6.0) & (luma[where] > -6.0)
    skin = ColourGaussian(ycc[skin_samples])
    hair_x = ycc[hair_samples]
    if len(hair_x) >= 30:
        hair = ColourGaussian(hair_x)
        if skin.nll(hair.mean[None])[0] - skin.nll(skin.mean[None])[0] > 2.0:
            out[where] = near_skin & (skin.nll(x) < hair.nll(x))
            return out
    out[where] = (chroma[where] < 4.0) & (luma[where] > -3.0) & (luma[where] < 3.5)
    return out


def _landmark_labels(crop: np.ndarray, lm: np.ndarray) -> np.ndarray:
    shape = crop.shape[:2]
    geo = FaceGeometry(lm)
    w = geo.face_width
    face = _fill(shape, geo.face_outline)
    # Brows, eyes and nose are always inside the face even for an odd jaw contour.
    face |= _fill(shape, cv2.convexHull(lm[17:48].astype(np.float32))[:, 0])
    lips, interior = mouth_regions(crop, lm, geometry=geo)
    eyes = eye_regions(shape, lm)
    person = person_mask(crop, geo)
    below = geo.below_jaw(shape)
    far = 4 * w
    above_eyes = _fill(
        shape,
        np.array(
            [
                lm[36] - geo.right * far,
                lm[45] + geo.right * far,
                lm[45] + geo.right * far + geo.up * far,
                lm[36] - geo.right * far + geo.up * far,
            ]
        ),
    )
    # Brows count as skin: the core reaches from the eyes up to just above the brow points.
    brow_top = lm[17:27] + geo.up * 0.05 * w
    above_brows = _fill(
        shape, np.concatenate([brow_top, [brow_top[-1] + geo.up * far, brow_top[0] + geo.up * far]])
    )
    # Where skin may meet hair: the forehead and temples inside the outline, a high forehead up to
    # half a brow-to-nose distance above it, and the ears beside the face above the jaw line.
    higher = _fill(shape, geo.outline(FOREHEAD_PER_BROW_NOSE + 0.5))
    forehead = (face | (higher & person)) & above_brows
    ears = _dilate(face, 0.15 * w) & ~face & ~above_brows & ~below & person
    contested = forehead | ears | (face & above_eyes)
    skin_like = _skin_vs_hair(crop, geo, contested, hair_samples=person & ~higher & ~below & above_brows)

    # The core of the face is skin whatever its colour (beard, shadows); below the eyes the border band
    # of the outline is skin where it is person (a loose jaw contour may reach into the background).
    core = _erode(face, 0.08 * w) & ~above_brows
    skin = face & (core | (~above_eyes & person))
    # Contested pixels are skin when they look like skin and connect to the rest of the skin (a
    # skin-coloured strand of blond hair, or a highlight in it, does not).
    n, comp = cv2.connectedComponents((skin | (contested & skin_like)).astype(np.uint8), connectivity=4)
    keep = np.zeros(n, bool)
    keep[np.unique(comp[core])] = True
    keep[0] = False
    skin = keep[comp]

    labels = np.zeros(shape, np.uint8)
    labels[person & ~below] = LABELS["hair"]
    labels[person & below] = LABELS["neck_torso"]
    labels[face & ~skin & person] = LABELS["hair"]  # fringe, sideburns; non-person stays background
    labels[skin] = LABELS["skin"]
    labels[eyes] = LABELS["eyes"]
    labels[lips] = LABELS["lips"]
    labels[interior] = LABELS["mouth_interior"]
    return labels


def region_masks(
    crop: np.ndarray, lm68: np.ndarray, *, backend: str = "landmarks", model: Any = None
) -> np.ndarray:
    """Label image (S, S) uint8 of one crop (values in :data:`LABELS`).

    Args:
        crop: RGB uint8 (S, S, 3).
        lm68: (68, 2) landmarks in crop pixels (x, y), iBUG 300-W layout.
        backend: ``"landmarks"`` (polygons + colour models) or ``"bisenet"`` (needs ``model``, a
            :class:`talk3d_core.face.bisenet.BiSeNet` with loaded weights).
    """
    crop, lm = _check_inputs(crop, lm68)
    if backend == "landmarks":
        return _landmark_labels(crop, lm)
    if backend == "bisenet":
        if model is None:
            raise ValueError("backend 'bisenet' needs a loaded model (talk3d_core.face.bisenet.load_bisenet)")
        from talk3d_core.face.bisenet import parse_labels

        return parse_labels(model, crop)
    raise ValueError(f"unknown mask backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def colorize(labels: np.ndarray) -> np.ndarray:
    """RGB uint8 (S, S, 3) picture of a label image (colours :data:`PALETTE`)."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 or labels.ndim != 2 or labels.max(initial=0) >= len(PALETTE):
        raise ValueError(f"not a label image: shape {labels.shape}, dtype {labels.dtype}")
    return PALETTE[labels]


def mouth_mask(labels: np.ndarray) -> np.ndarray:
    """Bool (S, S): lips or mouth interior (the region of the mouth loss)."""
    labels = np.asarray(labels)
    return (labels == LABELS["lips"]) | (labels == LABELS["mouth_interior"])


# ------------------------------------------------------------------------------------------ clips


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one ``masks/NNNNNN.png`` label image; ValueError naming the file if it is not one."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: cannot read mask image")
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(
            f"{path}: mask must be a single-channel 8-bit PNG, got shape {img.shape} {img.dtype}"
        )
    if img.max() >= len(LABELS):
        raise ValueError(f"{path}: label value {int(img.max())} is not in LABELS (0..{len(LABELS) - 1})")
    return img


def masks_clip(
    crop_paths: Sequence[str | os.PathLike[str]],
    lm68_crop: np.ndarray,
    masks_dir: str | os.PathLike[str],
    *,
    backend: str = "landmarks",
    weights_dir: str | os.PathLike[str] = "resources/weights",
    manifest: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    threads: int = 2,
) -> dict[str, Any]:
    """Write ``masks_dir/000000.png ...`` (one label image per crop, atomically as a folder).

    Args:
        crop_paths: crop PNGs in frame order (frame i -> ``masks_dir/{i:06d}.png``).
        lm68_crop: (N, 68, 2) landmarks in crop pixels.
        backend: ``"landmarks"`` or ``"bisenet"`` (weights ``face_parsing_bisenet`` from
            ``weights_dir``, listed in ``manifest``, default ``weights_dir/manifest.yaml``; a missing
            file raises :class:`talk3d_core.util.weights.WeightsError` naming the fetch command).
        device: torch device of the ``bisenet`` model.
        threads: frames labelled concurrently by the ``landmarks`` backend.
    Returns:
        summary: backend, n_frames, size, seconds, frames_per_s, label_fractions (mean share of each
        label over the clip).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown mask backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    lm_all = np.asarray(lm68_crop, dtype=np.float64)
    paths = [Path(p) for p in crop_paths]
    if lm_all.ndim != 3 or lm_all.shape[1:] != (_N_LANDMARKS, 2):
        raise ValueError(f"{masks_dir}: lm68_crop must have shape (N, 68, 2), got {lm_all.shape}")
    if len(paths) != len(lm_all):
        raise ValueError(f"{masks_dir}: {len(paths)} crops but {len(lm_all)} landmark sets")
    if not paths:
        raise ValueError(f"{masks_dir}: no crops given")
    model = None
    if backend == "bisenet":
        from talk3d_core.face.bisenet import WEIGHTS_NAME, load_bisenet
        from talk3d_core.util.weights import require

        manifest_path = Path(manifest) if manifest is not None else Path(weights_dir) / "manifest.yaml"
        model = load_bisenet(require(WEIGHTS_NAME, weights_dir, manifest_path), device=device)

    def label_one(item: tuple[Path, np.ndarray]) -> tuple[Path, np.ndarray, np.ndarray]:
        path, lm = item
        crop = read_rgb(path)
        try:
            return path, crop, region_masks(crop, lm, backend=backend, model=model)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    counts = np.zeros(len(LABELS), np.float64)
    size = None
    start = time.perf_counter()
    # OpenCV and NumPy release the GIL, so threads overlap frames; the torch model runs one at a time.
    workers = 1 if backend == "bisenet" else max(1, threads)
    with atomic_dir(masks_dir) as tmp, ThreadPoolExecutor(max_workers=workers) as pool:
        items = list(zip(paths, lm_all, strict=True))
        chunk = 8 * workers  # bounded look-ahead: memory stays small and an error stops the clip early
        results = (r for k in range(0, len(items), chunk) for r in pool.map(label_one, items[k : k + chunk]))
        for i, (path, crop, labels) in enumerate(results):
            if size is None:
                size = crop.shape[0]
            elif crop.shape[:2] != (size, size):
                raise ValueError(f"{path}: crop is {crop.shape[1]}x{crop.shape[0]}, expected {size}x{size}")
            counts += np.bincount(labels.ravel(), minlength=len(LABELS))
            if not cv2.imwrite(str(tmp / f"{i:06d}.png"), labels):
                raise OSError(f"{tmp / f'{i:06d}.png'}: cannot write mask image")
    seconds = time.perf_counter() - start
    names = sorted(LABELS, key=LABELS.get)
    return {
        "backend": backend,
        "n_frames": len(paths),
        "size": size,
        "seconds": round(seconds, 3),
        "frames_per_s": round(len(paths) / seconds, 2) if seconds > 0 else None,
        "label_fractions": {n: round(float(counts[LABELS[n]] / counts.sum()), 5) for n in names},
    }
