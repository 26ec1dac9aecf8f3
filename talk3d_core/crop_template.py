"""Crop template of a pretrained prior (rule crop_template): where the generator draws its average face.

VIVE3D, and Talk3D's preprocessing with it, aligns every frame to landmarks found on a reference
render of the generator's own average face, so the training crops frame a face the way EG3D draws one
at the camera the cameras are labelled with. This module makes that reference for a checkpoint
(:func:`crop_template_stage`, the rule's entry):

1. ``w_avg``: the mean first-layer w of :data:`W_AVG_SAMPLES` z drawn with numpy's
   ``RandomState(W_AVG_SEED)``, mapped without truncation and conditioned on VIVE3D's frontal
   camera (``mapped_w_statistics`` of model/eg3d; VIVE3D's ``evaluate_average_w``, which runs in its
   generator's constructor, before the scripts set their camera: focal 3.5, pivot (0, 0, 0.2),
   radius 2.7).
2. Render: w_avg in every layer, constant noise, no depth jitter, at the reference view
   :data:`REFERENCE_SAMPLER_OFFSETS` (LookAtPoseSampler offsets yaw 0, pitch -0.1 rad; Talk3D's
   ``vive3d_cropping.py`` takes the middle one of yaws (0.6, 0, -0.6)) with the camera stage's focal,
   radius and pivot (the official ones: 3.6, 2.7, (0, 0.05, 0.2)), the final (super-resolved) image.
3. Landmarks: the configured landmark backend on the render, :data:`LANDMARK_PASSES` times in a row
   as frames of a clip, so box-fitting backends (FAN) end on the box of their own landmarks, as they
   do on every frame of a clip after the first. The first pass starts from where the fixed template
   expects the face (:func:`expected_face_box`); a backend that finds nothing there looks with its
   detector. No face, or an implausible one (:func:`check_template`), is an error naming the
   checkpoint; the render is written first, for a look.

The template keeps all 68 points in render pixels (:class:`~talk3d_core.face.template.CropTemplate`);
the crop stage aligns the same five points as with the fixed template, rescaled to the crop size. The
JSON also holds the similarity that takes the fixed template onto this one (scale, rotation, offset;
:func:`framing_difference`), the framing change the pretrained prior's crops get.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from talk3d_core.camera import eg3d_camera, head_angles_from_eg3d_sampler
from talk3d_core.crop import affine_scale, alignment_points, apply_affine, canonical_template, fit_similarity
from talk3d_core.face.landmark_backends import points_box
from talk3d_core.face.template import MEAN_FACE_68, CropTemplate, write_crop_template
from talk3d_core.model.eg3d import TriPlaneGenerator
from talk3d_core.model.eg3d.generator import (
    W_AVG_FOCAL,
    W_AVG_PIVOT,
    W_AVG_SAMPLES,
    W_AVG_SEED,
    mapped_w_statistics,
)
from talk3d_core.util.images import to_uint8
from talk3d_core.util.io import atomic_path
from talk3d_core.util.runs import pick_device

log = logging.getLogger(__name__)

#: Name of the templates this module makes.
TEMPLATE_NAME = "eg3d-average-face"
#: The reference view as LookAtPoseSampler offsets (yaw, pitch) in radians from (pi/2, pi/2).
REFERENCE_SAMPLER_OFFSETS = (0.0, -0.1)
#: Landmark passes over the render (the first from the expected box, then from its own landmarks).
LANDMARK_PASSES = 3
#: Plausibility of the detected face (:func:`check_template`): largest eye-line tilt (degrees) and
#: eye-centre distance as a fraction of the image side (the fixed template has 0.2).
MAX_ROLL_DEG = 10.0
EYE_DISTANCE_RANGE = (0.08, 0.45)


def sampler_camera(
    yaw_offset: float, pitch_offset: float, *, focal: float, radius: float, pivot: Sequence[float]
) -> tuple[np.ndarray, tuple[float, float]]:
    """EG3D label (1, 25) of ``LookAtPoseSampler(pi/2 + yaw_offset, pi/2 + pitch_offset, pivot, radius)``
    with intrinsics ``focal``, and the head angles (yaw, pitch) in degrees it shows (camera.py's
    convention)."""
    yaw, pitch = head_angles_from_eg3d_sampler(
        np.pi / 2 + yaw_offset, np.pi / 2 + pitch_offset, radius, np.asarray(pivot, dtype=np.float64)
    )
    label = eg3d_camera(
        np.atleast_1d(yaw), np.atleast_1d(pitch), np.zeros(1), radius=radius, pivot=pivot, focal=focal
    )
    return label, (float(yaw), float(pitch))


@torch.no_grad()
def render_average_face(generator: TriPlaneGenerator, w_avg: torch.Tensor, camera: np.ndarray) -> np.ndarray:
    """The final image (S, S, 3) uint8 RGB of ``w_avg`` (1, w_dim) in every layer at ``camera``
    (1, 25): constant backbone noise, no depth jitter (the generator in eval mode)."""
    generator.eval()
    device = w_avg.device
    ws = w_avg.reshape(1, 1, -1).expand(1, generator.num_ws, -1)
    c = torch.as_tensor(camera, dtype=torch.float32, device=device).reshape(1, -1)
    return to_uint8(generator.synthesis(ws, c, noise_mode="const", jitter=False)["image"])[0]


def expected_face_box(size: int) -> np.ndarray:
    """Box (4,) x0, y0, x1, y1 that the 68 points of a frontal mean face span when its alignment
    points sit on the fixed template of a ``size`` crop: where a landmark backend looks first."""
    frontal = MEAN_FACE_68[:, :2] * np.array([1.0, -1.0])  # head frame (y up) -> image (y down)
    to_crop = fit_similarity(alignment_points(frontal[None])[0], canonical_template(size))
    return points_box(apply_affine(to_crop, frontal))


def detect_template_landmarks(
    image: np.ndarray,
    *,
    backend: str,
    weights_dir: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    passes: int = LANDMARK_PASSES,
) -> tuple[np.ndarray, float]:
    """68 points (68, 2) of the face in ``image`` (S, S, 3) uint8 (NaN when none is found) by the
    landmark ``backend`` over ``passes`` passes, and how far the last pass moved them (mean px)."""
    from talk3d_core.metrics.mouth import landmarks_of_images

    if passes < 1:
        raise ValueError(f"detect_template_landmarks: passes must be >= 1, got {passes}")
    found = landmarks_of_images(
        [image] * passes,
        backend=backend,
        backend_options={"weights_dir": weights_dir, "manifest": manifest},
        expected_box=expected_face_box(image.shape[0]),
    )
    moved = float(np.linalg.norm(found[-1] - found[-2], axis=1).mean()) if passes > 1 else 0.0
    return found[-1], moved


def check_template(lm68: np.ndarray, size: int, what: str) -> None:
    """Raise ValueError naming ``what`` unless ``lm68`` (68, 2) is a plausible upright frontal face
    in a ``size`` image: found (finite), alignment points inside the image, eye line within
    :data:`MAX_ROLL_DEG`, eye distance within :data:`EYE_DISTANCE_RANGE` of the side, and eyes above
    the nose tip above the mouth corners."""
    lm68 = np.asarray(lm68, dtype=np.float64)
    if lm68.shape != (68, 2) or not np.isfinite(lm68).all():
        raise ValueError(f"{what}: no face found on the render of the generator's average face")
    points = alignment_points(lm68[None])[0]
    eyes, nose, mouth = np.split(points, [2, 3])
    problems = []
    if not ((points >= -0.5) & (points <= size - 0.5)).all():
        problems.append("alignment points outside the image")
    eye_line = eyes[1] - eyes[0]
    distance = float(np.linalg.norm(eye_line)) / size
    roll = float(np.degrees(np.arctan2(eye_line[1], eye_line[0])))
    if abs(roll) > MAX_ROLL_DEG:
        problems.append(f"eye line tilted {roll:+.1f} degrees (at most {MAX_ROLL_DEG})")
    if not EYE_DISTANCE_RANGE[0] <= distance <= EYE_DISTANCE_RANGE[1]:
        problems.append(f"eye distance {distance:.3f} of the side (expected {EYE_DISTANCE_RANGE})")
    if not eyes[:, 1].max() < nose[0, 1] < mouth[:, 1].min():
        problems.append("eyes, nose tip and mouth corners are not in that order from the top")
    if problems:
        raise ValueError(
            f"{what}: the face found on the average-face render is implausible: {'; '.join(problems)}"
        )


def framing_difference(fixed: np.ndarray, derived: np.ndarray, size: int) -> dict[str, Any]:
    """How ``derived`` alignment points (5, 2) differ from ``fixed`` ones (5, 2) in a ``size`` image.

    ``scale``: the least-squares similarity fixed -> derived's scale (above 1: the generator's face
    is bigger than the fixed template's); ``rotation_deg``; ``offset_px``: how far the point's mean
    moves (x, y; px at ``size``); ``residual_px``: RMS distance left after the similarity (shape
    difference); ``eye_distance`` and ``eye_height``: both templates' eye-centre distance and height as
    fractions of the side.
    """
    fixed, derived = np.asarray(fixed, dtype=np.float64), np.asarray(derived, dtype=np.float64)
    affine = fit_similarity(fixed, derived)
    residual = float(np.sqrt(np.mean(np.sum((apply_affine(affine, fixed) - derived) ** 2, axis=1))))

    def framing(points: np.ndarray) -> dict[str, float]:
        return {
            "eye_distance": round(float(np.linalg.norm(points[1] - points[0])) / size, 4),
            "eye_height": round(float((points[:2, 1].mean() + 0.5) / size), 4),
        }

    return {
        "size": int(size),
        "scale": round(float(affine_scale(affine)), 4),
        "rotation_deg": round(float(np.degrees(np.arctan2(affine[1, 0], affine[0, 0]))), 3),
        "offset_px": (derived.mean(axis=0) - fixed.mean(axis=0)).round(2).tolist(),
        "residual_px": round(residual, 2),
        "fixed": framing(fixed),
        "derived": framing(derived),
    }


def _write_render(image: np.ndarray, lm68: np.ndarray | None, path: str | os.PathLike[str]) -> None:
    """The render as PNG, with the landmarks (green) and the alignment points (red) drawn when found."""
    canvas = np.ascontiguousarray(image[..., ::-1])  # OpenCV writes BGR
    if lm68 is not None and np.isfinite(lm68).all():
        radius = max(1, image.shape[0] // 256)
        for x, y in np.asarray(lm68):
            cv2.circle(canvas, (round(x), round(y)), radius, (0, 255, 0), -1)
        for x, y in alignment_points(np.asarray(lm68)[None])[0]:
            cv2.circle(canvas, (round(x), round(y)), 2 * radius, (0, 0, 255), -1)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), canvas):
            raise ValueError(f"{path}: cannot write the average-face render")


def crop_template_stage(
    *,
    checkpoint: str | os.PathLike[str],
    plane_axes: str,
    camera: dict[str, Any],
    landmark_backend: str,
    weights_dir: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    device: str | None = None,
) -> dict[str, Any]:
    """Rule crop_template: the average-face template of an EG3D ``checkpoint`` (see the module docstring).

    camera: the validated ``camera`` config section (focal, radius, pivot of the labels);
    landmark_backend: the ``landmarks.backend`` of the frames; weights_dir and manifest: where the
    checkpoint's digest and the backend's weights are found. Writes the template JSON to ``out_json``
    (:func:`~talk3d_core.face.template.write_crop_template`, with the difference from the fixed
    template under ``framing``) and the render with its points to ``out_png``. Returns the JSON's
    ``source`` and ``framing``.
    """
    from talk3d_core.model.eg3d.checkpoint import load_verified_generator
    from talk3d_core.util.weights import sha256_file

    started = time.perf_counter()
    generator = load_verified_generator(checkpoint, plane_axes, weights_dir, manifest)
    generator = generator.to(pick_device(device)).eval().requires_grad_(False)
    focal, radius, pivot = (
        float(camera["focal"]),
        float(camera["radius"]),
        [float(v) for v in camera["pivot"]],
    )
    conditioning, _ = sampler_camera(0.0, 0.0, focal=W_AVG_FOCAL, radius=radius, pivot=W_AVG_PIVOT)
    w_avg, _ = mapped_w_statistics(generator, conditioning)
    reference, (head_yaw, head_pitch) = sampler_camera(
        *REFERENCE_SAMPLER_OFFSETS, focal=focal, radius=radius, pivot=pivot
    )
    image = render_average_face(generator, w_avg, reference)
    size = image.shape[0]
    log.info("rendered w_avg of %s at %d px in %.1f s", checkpoint, size, time.perf_counter() - started)
    lm68, moved = detect_template_landmarks(
        image, backend=landmark_backend, weights_dir=weights_dir, manifest=manifest
    )
    _write_render(image, lm68, out_png)
    what = f"prior.checkpoint {checkpoint} ({plane_axes} axes; render: {out_png})"
    check_template(lm68, size, what)
    source = {
        "checkpoint": str(checkpoint),
        "sha256": sha256_file(Path(checkpoint)),
        "plane_axes": plane_axes,
        "w_avg": {
            "samples": W_AVG_SAMPLES,
            "seed": W_AVG_SEED,
            "conditioning": {"focal": W_AVG_FOCAL, "radius": radius, "pivot": list(W_AVG_PIVOT)},
        },
        "camera": {
            "sampler_offsets_rad": list(REFERENCE_SAMPLER_OFFSETS),
            "head_yaw_deg": round(head_yaw, 4),
            "head_pitch_deg": round(head_pitch, 4),
            "focal": focal,
            "radius": radius,
            "pivot": pivot,
        },
        "landmarks": {
            "backend": landmark_backend,
            "passes": LANDMARK_PASSES,
            "last_pass_moved_px": round(moved, 3),
        },
    }
    template = CropTemplate(name=TEMPLATE_NAME, size=size, lm68=lm68, source=source)
    framing = framing_difference(canonical_template(size), alignment_points(lm68[None])[0], size)
    write_crop_template(template, out_json, framing=framing)
    log.info(
        "crop template: the generator's face is %.3fx the fixed template's, shifted %s px at %d px "
        "(eye distance %.3f vs %.3f of the side, eye height %.3f vs %.3f)",
        framing["scale"], framing["offset_px"], size, framing["derived"]["eye_distance"],
        framing["fixed"]["eye_distance"], framing["derived"]["eye_height"], framing["fixed"]["eye_height"],
    )  # fmt: skip
    return {"source": source, "framing": framing}
