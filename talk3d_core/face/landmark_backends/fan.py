"""FAN backend (the paper's landmarks): 2DFAN4 heatmap regression from face-alignment's TorchScript release.

The network comes from the weights rule (manifest entry :data:`WEIGHTS_NAME`, the TorchScript file
face-alignment 1.x downloads, ``2DFAN4-cd938726ad.zip``); the face-alignment package itself is not
used (it would pull torchvision and download at run time). Its processing is reproduced here:

- box -> crop: centre of the box moved up by 0.12 box heights, side ``200 * (w + h) / 195`` pixels,
  resampled to 256 x 256, RGB scaled to 0..1 (face-alignment's ``crop`` and reference scale 195).
  FAN was trained on boxes spanning the 68 landmarks, so boxes are in those units here.
- heatmaps (68, 64, 64) -> the arg-max of each, moved a quarter pixel towards the higher
  neighbour on each axis, mapped back through the crop to source pixels (kept sub-pixel, where
  face-alignment rounds to integers). Score: mean of the 68 heatmap peaks.

Boxes: the face followed in the previous frame gives the next crop (its landmark extent, as FAN's
video use does); when there is none, or FAN's score on it falls below ``min_score``, MediaPipe's
full-range BlazeFace detector finds the faces and its box is converted to landmark-extent units with
the factors in :data:`DETECTION_TO_LANDMARK_BOX`. The detector runs on every frame so that other
faces are counted.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from talk3d_core.face.landmark_backends import Face, box_iou, points_box, select_main
from talk3d_core.util.weights import require

#: Manifest entry of the 2DFAN4 TorchScript file.
WEIGHTS_NAME = "fan_2dfan4"
INPUT_SIZE = 256
HEATMAP_SIZE = 64
#: face-alignment: scale = (box width + box height) / REFERENCE_SCALE; crop side = 200 * scale.
REFERENCE_SCALE = 195.0
CROP_SIDE_PER_SCALE = 200.0
#: face-alignment moves the crop centre up by this fraction of the box height.
CENTER_SHIFT = 0.12
#: MediaPipe full-range detector box -> box of the 68 landmarks: centre shift (fractions of the
#: detector box width, height) and size factors (docs/decisions.md#fan-detection-box).
DETECTION_TO_LANDMARK_BOX = {"dx": -0.01, "dy": 0.10, "width": 0.89, "height": 0.82}
#: Largest spread of the 68 points, as a fraction of the crop side, accepted as a face.
MAX_EXTENT_PER_CROP = 0.75
#: A detection overlapping the followed face by at least this IoU is that face, not another one.
SAME_FACE_IOU = 0.3

FaceBoxes = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def crop_transform(box: np.ndarray) -> np.ndarray:
    """2x3 affine (source px -> 256 crop px) that face-alignment's crop applies for ``box`` (4,)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx = (x0 + x1) / 2.0
    cy = (y0 + y1) / 2.0 - CENTER_SHIFT * (y1 - y0)
    side = CROP_SIDE_PER_SCALE * ((x1 - x0) + (y1 - y0)) / REFERENCE_SCALE
    if not side > 0:
        raise ValueError(f"degenerate face box {box}")
    s = INPUT_SIZE / side
    half = (INPUT_SIZE - 1) / 2.0  # the crop's centre in pixel-centre coordinates
    return np.array([[s, 0.0, half - s * cx], [0.0, s, half - s * cy]])


def heatmap_peaks(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peaks of heatmaps (N, H, W): points (N, 2) as continuous (x, y) heatmap coordinates
    (pixel j spans [j, j + 1)) and peak values (N,).

    As face-alignment does: the arg-max pixel's centre, moved 0.25 pixel towards the higher of its
    two neighbours along each axis (not at the border).
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    n, height, width = heatmaps.shape
    flat = heatmaps.reshape(n, -1)
    idx = flat.argmax(axis=1)
    peaks = flat[np.arange(n), idx]
    py, px = np.divmod(idx, width)
    points = np.stack([px, py], axis=1).astype(np.float64) + 0.5
    rows = np.arange(n)
    inner_x = (px > 0) & (px < width - 1)
    inner_y = (py > 0) & (py < height - 1)
    dx = heatmaps[rows, py, np.minimum(px + 1, width - 1)] - heatmaps[rows, py, np.maximum(px - 1, 0)]
    dy = heatmaps[rows, np.minimum(py + 1, height - 1), px] - heatmaps[rows, np.maximum(py - 1, 0), px]
    points[:, 0] += np.where(inner_x, 0.25 * np.sign(dx), 0.0)
    points[:, 1] += np.where(inner_y, 0.25 * np.sign(dy), 0.0)
    return points, peaks


def heatmap_to_source(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Continuous heatmap coordinates (N, 2) -> source pixels through the crop ``affine`` (2x3)."""
    stride = INPUT_SIZE / HEATMAP_SIZE
    crop_px = points * stride - 0.5  # continuous -> pixel-centre coordinates of the 256 crop
    inverse = cv2.invertAffineTransform(affine)
    return crop_px @ inverse[:, :2].T + inverse[:, 2]


def detection_to_landmark_box(box: np.ndarray) -> np.ndarray:
    """A detector box (4,) converted to the box the face's 68 landmarks would span (4,)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    c = DETECTION_TO_LANDMARK_BOX
    cx = (x0 + x1) / 2 + c["dx"] * w
    cy = (y0 + y1) / 2 + c["dy"] * h
    hw, hh = c["width"] * w / 2, c["height"] * h / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh])


def _plausible(lm68: np.ndarray, box: np.ndarray) -> bool:
    """The 68 points span at most :data:`MAX_EXTENT_PER_CROP` of the crop they were found in.

    A face fitted in its own landmark box spans about half of the crop (side = 200 (w + h) / 195).
    Guards the box -> landmarks -> next box loop: points scattered over the crop would give a box
    twice as large in the next frame, and so on.
    """
    side = INPUT_SIZE / crop_transform(box)[0, 0]
    extent = points_box(lm68)
    return bool(max(extent[2] - extent[0], extent[3] - extent[1]) <= MAX_EXTENT_PER_CROP * side)


def mediapipe_face_boxes(min_confidence: float = 0.5) -> FaceBoxes:
    """MediaPipe's full-range BlazeFace detector as ``image -> (boxes (N, 4) source px, scores (N,))``."""
    import mediapipe as mp

    detector = mp.solutions.face_detection.FaceDetection(
        model_selection=1, min_detection_confidence=min_confidence
    )

    def face_boxes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        result = detector.process(np.ascontiguousarray(image, dtype=np.uint8))
        boxes, scores = [], []
        for detection in result.detections or []:
            b = detection.location_data.relative_bounding_box
            boxes.append(
                [
                    b.xmin * width - 0.5,
                    b.ymin * height - 0.5,
                    (b.xmin + b.width) * width - 0.5,
                    (b.ymin + b.height) * height - 0.5,
                ]
            )
            scores.append(float(detection.score[0]))
        return np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(scores, dtype=np.float64)

    return face_boxes


class FanBackend:
    """2DFAN4 (TorchScript) on boxes from the previous frame's landmarks or MediaPipe's detector.

    Args:
        weights_dir, manifest: where :func:`talk3d_core.util.weights.require` finds :data:`WEIGHTS_NAME`.
        min_score: mean heatmap peak below which a fit is rejected (the face is then looked for
            with the detector, and counted as not found if that fails too).
        detector_confidence: BlazeFace score needed for a detection.
        face_boxes: replaces the MediaPipe detector: ``image -> (boxes (N, 4), scores (N,))`` in
            detector-box units (converted with :func:`detection_to_landmark_box`).
        device: torch device for the network.
    """

    name = "face_alignment"
    n_native = 68

    def __init__(
        self,
        *,
        weights_dir: str | os.PathLike[str],
        manifest: str | os.PathLike[str],
        min_score: float = 0.2,
        detector_confidence: float = 0.5,
        face_boxes: FaceBoxes | None = None,
        device: str = "cpu",
    ) -> None:
        import torch

        self._path = Path(require(WEIGHTS_NAME, weights_dir, manifest))
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated in torch 2.x, but it is the only form the weights come in.
                warnings.simplefilter("ignore", DeprecationWarning)
                self._model = torch.jit.load(str(self._path), map_location=device).eval()
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{self._path}: not a loadable TorchScript 2DFAN4 model: {err}") from err
        self._torch = torch
        self._device = device
        self._min_score = float(min_score)
        self._detector_confidence = float(detector_confidence)
        self._face_boxes = face_boxes if face_boxes is not None else mediapipe_face_boxes(detector_confidence)

    def options(self) -> dict[str, Any]:
        return {
            "model": self._path.name,
            "min_score": self._min_score,
            "detector_confidence": self._detector_confidence,
            "reference_scale": REFERENCE_SCALE,
            "detection_to_landmark_box": DETECTION_TO_LANDMARK_BOX,
        }

    def fit(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        """68 points (68, 2) in source px and the mean heatmap peak for the face in ``box`` (4,)."""
        affine = crop_transform(box)
        crop = cv2.warpAffine(
            np.asarray(image, dtype=np.uint8),
            affine,
            (INPUT_SIZE, INPUT_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        )
        torch = self._torch
        tensor = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div_(255.0)
        with torch.inference_mode():
            out = self._model(tensor.unsqueeze(0).to(self._device))
        if isinstance(out, list | tuple):  # FAN variants return one heatmap tensor per hourglass stack
            out = out[-1]
        heatmaps = out.detach().to("cpu", torch.float32).numpy()
        if heatmaps.shape != (1, 68, HEATMAP_SIZE, HEATMAP_SIZE):
            raise ValueError(
                f"{self._path}: model returned heatmaps of shape {heatmaps.shape}, "
                f"expected (1, 68, {HEATMAP_SIZE}, {HEATMAP_SIZE})"
            )
        points, peaks = heatmap_peaks(heatmaps[0])
        return heatmap_to_source(points, affine), float(peaks.mean())

    def detect(self, image: np.ndarray, prior_box: np.ndarray | None) -> list[Face]:
        """The followed face fitted by FAN, plus the other detected faces (without landmarks)."""
        det_boxes, det_scores = self._face_boxes(image)
        boxes = [detection_to_landmark_box(b) for b in det_boxes]
        main: Face | None = None
        tries = [prior_box] if prior_box is not None else []
        if boxes:
            tries.append(boxes[select_main(np.array(boxes), prior_box)])
        for fit_box in tries:
            lm68, score = self.fit(image, fit_box)
            if score >= self._min_score and _plausible(lm68, fit_box):
                main = Face(box=points_box(lm68), score=float(np.clip(score, 0, 1)), lm68=lm68, native=lm68)
                break
        faces = [main] if main is not None else []
        # Detections of the fitted face (by its landmark extent or the box it was fitted in) are it.
        fitted_boxes = [main.box, fit_box] if main is not None else []
        for box, score in zip(boxes, det_scores, strict=True):
            if not any(box_iou(box[None], b)[0] >= SAME_FACE_IOU for b in fitted_boxes):
                faces.append(Face(box=box, score=float(score)))
        return faces

    def close(self) -> None:
        self._model = None
