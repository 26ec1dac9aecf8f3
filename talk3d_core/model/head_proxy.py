"""A coarse 3D head proxy in the generator's world frame, the geometry prior of the scratch mode.

A subject filmed from the front gives a volume renderer no parallax: a flat picture or a fog along
each ray reproduces the training crops as well as a head does, and both fall apart at +-30 degrees
of yaw. The proxy supplies what the views cannot:

- **placement**: the 68-point 3D template (:data:`talk3d_core.face.template.MEAN_FACE_68`, millimetres,
  origin between the eyes) placed in the world by a scale and a mid-eye position fitted so that it
  projects onto the crop landmarks through every tracked camera (:func:`fit_head_proxy`). Its rigid
  points give the depth the renderer must reach at those pixels.
- **volume**: a union of ellipsoids (cranium, face and jaw, neck, shoulders) sized in template
  millimetres from adult head measurements. Well inside it the head is solid; well outside it (a
  generous margin leaves room for hair and clothes) space is empty. The band between is left to
  the photometric loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares

from talk3d_core.face.template import MEAN_FACE_68

# Template points whose 3D position does not depend on expression or the silhouette: brows, nose,
# eye corners and lids, mouth corners (the jaw contour slides with pose, the lips move with speech).
RIGID_POINTS = np.r_[17:48, 48, 54]

# Proxy parts: (name, centre, radii), template millimetres in the head frame (x subject's left,
# y up, z out of the face; origin between the eyes). Cranium ~160 x 230 x 200 mm (breadth, height
# above the chin line, glabella to the back); the face ellipsoid holds the jaw and chin; neck and
# shoulders continue down to the bottom of the crop.
PROXY_PARTS: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("cranium", (0.0, 10.0, -80.0), (80.0, 110.0, 100.0)),
    ("face", (0.0, -55.0, -15.0), (68.0, 72.0, 55.0)),
    ("neck", (0.0, -170.0, -60.0), (58.0, 120.0, 62.0)),
    ("shoulders", (0.0, -300.0, -60.0), (190.0, 130.0, 110.0)),
)
# Normalised ellipsoid radius below which the proxy is solid and above which space is empty.
SOLID_RADIUS = 0.8
EMPTY_RADIUS = 1.35


def project_points(points: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor):
    """Project world points through EG3D cameras.

    points (K, 3) or (B, K, 3) world units; labels (B, 25) EG3D labels (OpenCV cam2world ++
    normalised intrinsics). Returns uv (B, K, 2) in image fractions ([0, 1] across the image, the
    renderer's pixel-centre convention: pixel index = uv * size - 0.5) and the distance (B, K) from
    the camera centre, the quantity the renderer's depth map holds. Works on numpy or torch.
    """
    lib = torch if isinstance(labels, torch.Tensor) else np
    cam2world = labels[:, :16].reshape(-1, 4, 4)
    intrinsics = labels[:, 16:].reshape(-1, 3, 3)
    rotation, origin = cam2world[:, :3, :3], cam2world[:, None, :3, 3]
    rel = (points if points.ndim == 3 else points[None]) - origin
    cam = rel @ rotation  # R^T (p - o) for row vectors
    xy = cam[..., :2] / cam[..., 2:3]
    uv = xy * lib.stack([intrinsics[:, 0, 0], intrinsics[:, 1, 1]], -1)[:, None] + intrinsics[:, None, :2, 2]
    return uv, lib.linalg.norm(rel, axis=-1) if lib is np else rel.norm(dim=-1)


@dataclass(frozen=True)
class HeadProxy:
    """The template's placement in the world: ``world = scale * template_mm + mideye``.

    scale: world units per millimetre; mideye (3,) world position of the template origin;
    rms_px: reprojection RMS of the rigid points over the fitted frames (crop pixels).
    """

    scale: float
    mideye: tuple[float, float, float]
    rms_px: float

    def landmarks(self) -> np.ndarray:
        """(68, 3) template points in world units."""
        return MEAN_FACE_68 * self.scale + np.asarray(self.mideye)

    def parts(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """[(name, centre (3,), radii (3,))] of the proxy ellipsoids in world units."""
        return [
            (name, np.asarray(centre) * self.scale + np.asarray(self.mideye), np.asarray(radii) * self.scale)
            for name, centre, radii in PROXY_PARTS
        ]

    def radius(self, points: torch.Tensor) -> torch.Tensor:
        """Normalised proxy radius (...,) of world points (..., 3): min over the parts of the
        ellipsoid radius (< 1 inside a part)."""
        radii = []
        for _, centre, axes in self.parts():
            c = torch.as_tensor(centre, dtype=points.dtype, device=points.device)
            a = torch.as_tensor(axes, dtype=points.dtype, device=points.device)
            radii.append(((points - c) / a).norm(dim=-1))
        return torch.stack(radii).amin(dim=0)

    def sample_solid(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 3) points uniform in the solid cores (radius < SOLID_RADIUS), parts by volume."""
        parts = self.parts()
        volumes = np.array([np.prod(axes) for _, _, axes in parts])
        counts = np.floor(n * volumes / volumes.sum()).astype(int)
        counts[np.argmax(volumes)] += n - counts.sum()
        points = []
        for (_, centre, axes), count in zip(parts, counts, strict=True):
            direction = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
            r = torch.rand(count, 1, generator=generator) ** (1 / 3) * SOLID_RADIUS
            points.append(
                direction * r * torch.as_tensor(axes, dtype=torch.float32) + torch.as_tensor(centre)
            )
        return torch.cat(points).float()

    def sample_empty(self, n: int, extent: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Up to n points (M, 3) uniform in the cube [-extent/2, extent/2]^3 and outside the proxy's
        empty radius (about 90% of a cube of side 1 is)."""
        points = (torch.rand(n, 3, generator=generator) - 0.5) * extent
        return points[self.radius(points) > EMPTY_RADIUS]

    def as_dict(self) -> dict:
        return {"scale": self.scale, "mideye": list(self.mideye), "rms_px": self.rms_px}


def fit_head_proxy(
    lm68_crop: np.ndarray,
    labels: np.ndarray,
    size: int,
    *,
    frames: Sequence[int] | np.ndarray | None = None,
    what: str = "head proxy",
) -> HeadProxy:
    """Fit scale and mid-eye position of the 3D template to crop landmarks under tracked cameras.

    lm68_crop (N, 68, 2) crop pixels of a ``size`` crop (pixel-index coordinates); labels (N, 25)
    EG3D labels of the same frames; ``frames`` optionally restricts the fit (e.g. training frames).
    The cameras already carry each frame's rotation, so the 4 numbers are shared by all frames.
    """
    lm = np.asarray(lm68_crop, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2) or len(lm) != len(labels) or labels.shape[1:] != (25,):
        raise ValueError(
            f"{what}: need landmarks (N, 68, 2) and labels (N, 25), got {lm.shape}, {labels.shape}"
        )
    if frames is not None:
        lm, labels = lm[frames], labels[frames]
    if len(lm) == 0:
        raise ValueError(f"{what}: no frames to fit the head proxy to")
    target = lm[:, RIGID_POINTS]
    template = MEAN_FACE_68[RIGID_POINTS]

    def residuals(x: np.ndarray) -> np.ndarray:
        uv, _ = project_points(template * x[0] * 1e-3 + x[1:], labels)
        return (uv * size - 0.5 - target).ravel()

    # Start: EG3D's face scale (about 2 world units per metre) with the eyes at the look-at point.
    fit = least_squares(residuals, np.array([1.0, 0.0, 0.05, 0.2]), x_scale=[1.0, 0.1, 0.1, 0.1])
    scale, mideye = fit.x[0] * 1e-3, fit.x[1:]
    if not 1e-4 < scale < 1e-2:
        raise ValueError(f"{what}: template fit failed (scale {scale:.2e} world units per mm)")
    rms = float(np.sqrt(np.mean(fit.fun.reshape(-1, 2) ** 2) * 2))
    return HeadProxy(scale=float(scale), mideye=tuple(float(v) for v in mideye), rms_px=rms)
