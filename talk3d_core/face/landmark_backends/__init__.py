"""Face landmark backends behind one small interface (used by :mod:`talk3d_core.landmarks`).

A backend looks at one RGB frame and returns the faces it finds as :class:`Face` records: a box,
a confidence in 0..1, the 68 iBUG 300-W points and the backend's own ("native") points. Backends:

- ``mediapipe`` (:mod:`.mediapipe_mesh`): MediaPipe face mesh, 478 points, tracking mode; offline.
- ``dlib`` (:mod:`.dlib_hog`): dlib HOG face detector + 68-point shape predictor; offline.
- ``face_alignment`` (:mod:`.fan`): the FAN 2DFAN4 heatmap network (TorchScript from the weights
  rule) on boxes from MediaPipe's face detector or the previous frame's landmarks.

Pixel convention shared by every backend: coordinates are in stored-frame pixels with the centre of
the top-left pixel at (0, 0) (the convention of ``cv2.warpAffine`` and dlib), x to the right, y down.

Backend modules import their heavy dependencies (mediapipe, dlib, torch) only when a backend is
opened, so importing this package is cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

#: Backend names accepted by :func:`open_backend` (and by the ``landmarks.backend`` config key).
BACKENDS = ("mediapipe", "dlib", "face_alignment")

#: A candidate face overlapping the previous frame's main face by at least this IoU continues the track.
TRACK_MIN_IOU = 0.1


@dataclass(frozen=True)
class Face:
    """One face found in one frame.

    ``box``: (4,) float x0, y0, x1, y1 in source pixels (what the box encloses is backend specific:
    the mesh extent for mediapipe, the detector window for dlib, the landmark extent for FAN).
    ``score``: backend confidence in 0..1. ``lm68``: (68, 2) iBUG points or None when the backend
    located the face without fitting it (FAN fits only the face it follows). ``native``: (K, 2)
    backend points or None together with ``lm68``.
    """

    box: np.ndarray
    score: float
    lm68: np.ndarray | None = None
    native: np.ndarray | None = None


class LandmarkBackend(Protocol):
    """What :func:`talk3d_core.landmarks.detect_landmarks` needs from a backend."""

    name: str
    #: Number of native points K per face.
    n_native: int

    def detect(self, image: np.ndarray, prior_box: np.ndarray | None) -> list[Face]:
        """Faces in one RGB uint8 frame (H, W, 3), in frames of one clip given in order.

        ``prior_box`` is the box (4,) of the face followed in the previous frame where it was found,
        or None. At least the face :func:`select_main` would pick carries landmarks.
        """
        ...

    def options(self) -> dict[str, Any]:
        """Settings that change the output, recorded in the landmarks table's metadata."""
        ...

    def close(self) -> None:
        """Release models and native resources."""
        ...


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas (...,) of boxes (..., 4) given as x0, y0, x1, y1 (0 for degenerate boxes)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Intersection over union (N,) of boxes (N, 4) with one box (4,)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    box = np.asarray(box, dtype=np.float64)
    x0 = np.maximum(boxes[:, 0], box[0])
    y0 = np.maximum(boxes[:, 1], box[1])
    x1 = np.minimum(boxes[:, 2], box[2])
    y1 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = box_area(boxes) + box_area(box) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def select_main(boxes: np.ndarray, prior_box: np.ndarray | None) -> int:
    """Index of the face to follow among ``boxes`` (N >= 1, 4).

    The face overlapping the previous main face most (IoU >= :data:`TRACK_MIN_IOU`) continues the
    track; without a previous face, or when none overlaps it, the largest face is taken.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        raise ValueError("select_main needs at least one box")
    if prior_box is not None:
        iou = box_iou(boxes, prior_box)
        best = int(np.argmax(iou))
        if iou[best] >= TRACK_MIN_IOU:
            return best
    return int(np.argmax(box_area(boxes)))


def points_box(points: np.ndarray) -> np.ndarray:
    """Bounding box (4,) x0, y0, x1, y1 of points (K, 2)."""
    points = np.asarray(points, dtype=np.float64)
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def open_backend(
    name: str,
    *,
    weights_dir: str | os.PathLike[str] = "resources/weights",
    manifest: str | os.PathLike[str] | None = None,
    **options: Any,
) -> LandmarkBackend:
    """Create the backend called ``name`` (see :data:`BACKENDS`) with its keyword ``options``.

    ``weights_dir`` and ``manifest`` (default ``<weights_dir>/manifest.yaml``) are only used by
    backends that need downloaded weights (``face_alignment``); a missing file raises
    :class:`talk3d_core.util.weights.WeightsError` naming the command that fetches it.
    """
    if name == "mediapipe":
        from talk3d_core.face.landmark_backends.mediapipe_mesh import MediapipeMeshBackend

        return MediapipeMeshBackend(**options)
    if name == "dlib":
        from talk3d_core.face.landmark_backends.dlib_hog import DlibBackend

        return DlibBackend(**options)
    if name == "face_alignment":
        from talk3d_core.face.landmark_backends.fan import FanBackend

        manifest = manifest if manifest is not None else os.path.join(weights_dir, "manifest.yaml")
        return FanBackend(weights_dir=weights_dir, manifest=manifest, **options)
    raise ValueError(f"unknown landmark backend {name!r}; choose one of {', '.join(BACKENDS)}")
