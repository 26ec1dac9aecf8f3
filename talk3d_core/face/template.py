"""Face templates shared by the stages, the models and the metrics.

- :data:`MEAN_FACE_68`: a 3D mean face at the 68 iBUG points (millimetres, head frame, origin at the
  mid-eye point), the model the camera stage fits head pose against and the head proxy is built on.
- The fixed crop template: where the alignment puts the eyes, nose and mouth corners in a crop
  (:data:`TEMPLATE_ED`, :data:`TEMPLATE_EYE_DISTANCE`, :data:`TEMPLATE_EYE_HEIGHT`), the framing of
  the scratch prior.
- :class:`FaceFraming`: where a crop puts the eyes, for metrics that cut a fixed face region.
- :class:`CropTemplate`: a template measured on an image (the pretrained prior's: the generator's
  average face, :mod:`talk3d_core.crop_template`) and its JSON file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talk3d_core.util.io import write_json

# MediaPipe face-mesh vertex for each iBUG point (0-based on both sides). Jaw: the mesh's outline
# vertices spaced evenly by arc length from ear level (127) to the chin (152); brows: upper edge;
# nose: nasion 168 to pronasale 4, nostril bases and subnasale 2; eyes: corners and the lid vertices
# at a third and two thirds; lips: outer corners 61/291, cupid's bow, lower-lip thirds, inner contour.
MEDIAPIPE_68 = np.array(
    [127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356]  # jaw 0-16
    + [70, 63, 105, 66, 107, 336, 296, 334, 293, 300]  # brows 17-26
    + [168, 197, 195, 4, 98, 97, 2, 326, 327]  # nose 27-35
    + [33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380]  # eyes 36-47
    + [61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91]  # outer lips 48-59
    + [78, 81, 13, 311, 308, 402, 14, 178],  # inner lips 60-67
    dtype=np.int64,
)

# (68, 3) mean face in the head frame (x subject's left, y up, z out of the face), millimetres, origin
# at the mid-eye point. Values: canonical_face_model.obj vertices MEDIAPIPE_68 x 10, minus the mean
# of the eye corners (0, 26.25, 34.66) mm; the model is exactly left-right symmetric.
MEAN_FACE_68 = np.array(
    [
        [-77.43, -2.60, -54.71],  # 0 jaw, ear level (subject's right)
        [-76.64, -19.51, -59.02],
        [-75.42, -36.74, -58.97],
        [-72.71, -55.16, -57.18],
        [-67.20, -74.13, -52.11],
        [-50.85, -98.03, -27.51],
        [-40.69, -106.18, -15.41],
        [-23.09, -115.99, 1.43],
        [0.00, -120.28, 7.99],  # 8 chin (menton)
        [23.09, -115.99, 1.43],
        [40.69, -106.18, -15.41],
        [50.85, -98.03, -27.51],
        [67.20, -74.13, -52.11],
        [72.71, -55.16, -57.18],
        [75.42, -36.74, -58.97],
        [76.64, -19.51, -59.02],
        [77.43, -2.60, -54.71],  # 16
        [-57.21, 16.30, -6.35],  # 17 right brow, outer end
        [-49.86, 21.78, 2.86],
        [-39.87, 24.85, 10.01],
        [-27.60, 24.76, 15.50],
        [-13.96, 23.87, 18.50],  # 21 right brow, inner end
        [13.96, 23.87, 18.50],  # 22 left brow, inner end
        [27.60, 24.76, 15.50],
        [39.87, 24.85, 10.01],
        [49.86, 21.78, 2.86],
        [57.21, 16.30, -6.35],  # 26
        [0.00, 6.46, 17.70],  # 27 nasion
        [0.00, -8.96, 28.51],
        [0.00, -15.65, 33.09],
        [0.00, -30.88, 41.21],  # 30 nose tip
        [-14.06, -43.39, 17.75],  # 31 right nostril base
        [-5.97, -46.38, 24.01],
        [0.00, -47.14, 25.93],  # 33 subnasale
        [5.97, -46.38, 24.01],
        [14.06, -43.39, 17.75],  # 35
        [-44.46, 0.39, -2.92],  # 36 right eye, outer corner
        [-36.70, 3.03, 2.59],
        [-27.24, 3.37, 4.06],
        [-18.56, -0.39, 2.92],  # 39 right eye, inner corner
        [-27.24, -3.09, 3.11],
        [-36.70, -2.64, 1.70],
        [18.56, -0.39, 2.92],  # 42 left eye, inner corner
        [27.24, 3.37, 4.06],
        [36.70, 3.03, 2.59],
        [44.46, 0.39, -2.92],  # 45 left eye, outer corner
        [36.70, -2.64, 1.70],
        [27.24, -3.09, 3.11],
        [-24.56, -69.67, 8.18],  # 48 mouth corner (subject's right)
        [-14.32, -61.26, 20.31],
        [-7.11, -59.54, 24.11],
        [0.00, -60.31, 25.14],  # 51 upper lip, top centre
        [7.11, -59.54, 24.11],
        [14.32, -61.26, 20.31],
        [24.56, -69.67, 8.18],  # 54 mouth corner (subject's left)
        [18.39, -74.53, 13.58],
        [7.00, -79.16, 19.83],
        [0.00, -79.90, 20.70],  # 57 lower lip, bottom centre
        [-7.00, -79.16, 19.83],
        [-18.39, -74.53, 13.58],
        [-21.53, -69.01, 5.72],  # 60 inner mouth corner
        [-10.24, -66.14, 14.61],
        [0.00, -66.19, 17.54],  # 62 inner upper lip
        [10.24, -66.14, 14.61],
        [21.53, -69.01, 5.72],
        [10.99, -70.83, 16.55],
        [0.00, -71.67, 19.39],  # 66 inner lower lip
        [-10.99, -70.83, 16.55],
    ],
    dtype=np.float64,
)
MEAN_FACE_NAME = "mediapipe-canonical-68-mm-mideye"


# Canonical alignment points (eye centres, nose tip, mouth corners) in eye-centre distances (ED) from
# the eyes' midpoint, y down. Measured rationale: docs/decisions.md#crop-template-framing
TEMPLATE_ED = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.59], [-0.4, 1.08], [0.4, 1.08]])
# Framing as fractions of the crop side (pixel edges: 0 top/left, 1 bottom/right): FFHQ's alignment
# zoomed out 1.25x, so the whole head shows, like EG3D/VIVE3D crops. See the same decisions.md section.
CROP_TEMPLATE_NAME = "talk3d-eg3d-wide-v1"
TEMPLATE_EYE_DISTANCE = 0.2
TEMPLATE_EYE_HEIGHT = 0.475


@dataclass(frozen=True)
class FaceFraming:
    """Where a crop puts the face, as pixel-edge fractions of its side (0 top/left, 1 bottom/right):
    the midpoint of the eye centres (``eye_x``, ``eye_y``) and the eye-centre distance. The default is
    the fixed template's; a pretrained prior's crops follow the generator's average face instead
    (crop.parquet's ``template.points_px``, :meth:`of_points`).

    Metrics that cut a fixed face region out of the crops (SyncNet's window, ArcFace's pSp box, dlib's
    fallback box) define it on the fixed framing and move it with the face (:meth:`box`).
    """

    eye_x: float = 0.5
    eye_y: float = TEMPLATE_EYE_HEIGHT
    eye_distance: float = TEMPLATE_EYE_DISTANCE

    def __post_init__(self) -> None:
        if not (self.eye_distance > 0 and np.isfinite([self.eye_x, self.eye_y]).all()):
            raise ValueError(f"FaceFraming: needs finite eyes and eye_distance > 0, got {self}")

    @classmethod
    def of_points(cls, points_px: np.ndarray, size: int) -> FaceFraming:
        """The framing of alignment points (5, 2) (eye centres first, then nose tip and mouth corners)
        in pixel-centre coordinates of a ``size`` x ``size`` crop, as the crop stage records them."""
        points = np.asarray(points_px, dtype=np.float64)
        if points.shape != (5, 2) or not np.isfinite(points).all() or size < 1:
            raise ValueError(f"FaceFraming.of_points: needs finite (5, 2) points, got {points.shape}")
        eyes = (points[:2] + 0.5) / size
        mid = eyes.mean(axis=0)
        return cls(float(mid[0]), float(mid[1]), float(np.linalg.norm(eyes[1] - eyes[0])))

    def box(self, fixed_box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A box (x0, y0, x1, y1) drawn on the fixed template's framing, moved and scaled with the face
        to this framing (the identity for the default framing)."""
        fixed = FaceFraming()
        scale = self.eye_distance / fixed.eye_distance
        x0, y0, x1, y1 = (float(v) for v in fixed_box)
        xs = [self.eye_x + (x - fixed.eye_x) * scale for x in (x0, x1)]
        ys = [self.eye_y + (y - fixed.eye_y) * scale for y in (y0, y1)]
        return xs[0], ys[0], xs[1], ys[1]


@dataclass(frozen=True)
class CropTemplate:
    """A crop template measured on an image rather than fixed: the 68 iBUG points of a face.

    ``lm68`` (68, 2) float64 in pixels of a ``size`` x ``size`` image (pixel centres at integer
    coordinates, x right, y down); ``name`` says what the face is, ``source`` (JSON) how it was made
    (for the generator's average face: checkpoint, digest, camera, landmark backend). The crop stage
    aligns to its alignment points rescaled to the crop size (:func:`talk3d_core.crop.template_points`).
    """

    name: str
    size: int
    lm68: np.ndarray
    source: dict[str, Any]


def write_crop_template(template: CropTemplate, path: str | os.PathLike[str], **extra: Any) -> None:
    """Write ``template`` as JSON (atomically), with ``extra`` keys (figures for a reader) beside it."""
    record = {
        "name": template.name,
        "size": int(template.size),
        "lm68": np.asarray(template.lm68, dtype=np.float64).round(4).tolist(),
        "source": template.source,
    }
    write_json(path, extra | record)


def read_crop_template(path: str | os.PathLike[str]) -> CropTemplate:
    """Read a crop template JSON (:func:`write_crop_template`); a bad file raises ValueError naming it."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read crop template: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{path}: crop template is not a JSON object")
    missing = [k for k in ("name", "size", "lm68", "source") if k not in record]
    if missing:
        raise ValueError(f"{path}: crop template lacks {missing}")
    size = record["size"]
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"{path}: crop template size must be an integer >= 8, got {size!r}")
    try:
        lm68 = np.asarray(record["lm68"], dtype=np.float64)
    except (TypeError, ValueError):
        lm68 = np.zeros(0)
    if lm68.shape != (68, 2) or not np.isfinite(lm68).all():
        raise ValueError(f"{path}: crop template lm68 must be 68 finite (x, y) points, got {lm68.shape}")
    if not isinstance(record["source"], dict):
        raise ValueError(f"{path}: crop template source must be a JSON object")
    return CropTemplate(name=str(record["name"]), size=size, lm68=lm68, source=record["source"])
