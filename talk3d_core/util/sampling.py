"""Evenly spaced subsets of frames: sample renders, FID references, sheets, metric subsets."""

from __future__ import annotations

import numpy as np


def evenly_spaced(n_items: int, count: int) -> np.ndarray:
    """Indices (M,) int64 of ``min(count, n_items)`` items spread evenly from the first to the last,
    ascending and distinct (all of them when there are no more than ``count``)."""
    return np.linspace(0, n_items - 1, min(count, n_items)).round().astype(np.int64)
