"""Conversions between the generator's image range and bytes."""

from __future__ import annotations

import numpy as np
import torch


def to_unit(crops: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1], the generator's range."""
    return crops.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (..., 3, H, W) in [-1, 1] (clamped) -> (..., H, W, 3) uint8, for saving and detectors."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()
