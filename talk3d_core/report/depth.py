"""Depth pictures of renderer outputs, shared by the prior's contact sheet and the render stage's depth video.

Kept apart from both so that neither stage's code hash (which keys its checkpoints) depends on the other.
"""

from __future__ import annotations

import cv2
import numpy as np
from torch import Tensor

DEPTH_COLORMAPS = ("grey", "turbo")


def depth_to_uint8(
    depth: np.ndarray | Tensor,
    near: float,
    far: float,
    *,
    opacity: np.ndarray | Tensor | None = None,
    colormap: str = "grey",
) -> np.ndarray:
    """Depth maps (..., 1, H, W) or (..., H, W) in world units -> (..., H, W, 3) uint8 pictures over
    [near, far]: near bright, far dark (``"grey"``), or near red, far blue (``"turbo"``). ``opacity``
    (same shape as ``depth``, 0..1: the render's accumulated weights) fades empty space to black."""
    if colormap not in DEPTH_COLORMAPS:
        raise ValueError(f"depth colormap must be one of {DEPTH_COLORMAPS}, got {colormap!r}")
    if not far > near:
        raise ValueError(f"depth range needs far > near, got near={near}, far={far}")
    d = np.asarray(depth.detach().cpu() if isinstance(depth, Tensor) else depth, dtype=np.float32)
    if d.ndim >= 3 and d.shape[-3] == 1:
        d = d[..., 0, :, :]
    value = np.clip((far - d) / (far - near), 0.0, 1.0)
    grey = np.round(value * 255).astype(np.uint8)
    if colormap == "grey":
        rgb = np.repeat(grey[..., None], 3, axis=-1)
    else:
        flat = grey.reshape(-1, grey.shape[-1])
        rgb = cv2.applyColorMap(flat, cv2.COLORMAP_TURBO)[..., ::-1].reshape(*grey.shape, 3)
    if opacity is not None:
        alpha = np.asarray(opacity.detach().cpu() if isinstance(opacity, Tensor) else opacity, np.float32)
        alpha = np.clip(alpha.reshape(d.shape), 0.0, 1.0)[..., None]
        rgb = np.round(rgb * alpha).astype(np.uint8)
    return np.ascontiguousarray(rgb)
