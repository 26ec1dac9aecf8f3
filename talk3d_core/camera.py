"""Stage 4, camera: crop-space 68-point landmarks -> head pose -> EG3D camera labels (``camera.parquet``).

Frames and sign conventions (used everywhere in this module, stored in the table's metadata):

- **Head frame** = the generator's world frame (EG3D): x towards the subject's left (image right in a
  frontal view), y up, z out of the face towards a frontal camera. Right-handed.
- **Camera frame** (OpenCV): x right, y down, z forward (into the scene). ``cam2world`` maps camera
  coordinates to head/world coordinates; its columns are the camera's x, y, z axes and its position.
- **Head angles** (degrees) describe how the head appears to the camera, composed as
  ``R = Rz(roll) @ Rx(-pitch) @ Ry(yaw)`` with the rotations about the head frame's axes as seen by the
  camera (x right, y up, z towards the viewer):

  - ``yaw > 0``: the subject turns towards their own left; the nose moves to image right.
  - ``pitch > 0``: the subject looks up; the nose moves up in the image.
  - ``roll > 0``: the head tilts towards the subject's right shoulder, i.e. turns counter-clockwise in
    the image (the subject's left eye, on image right, goes up).

- **EG3D camera**: the head stays fixed in the world; the camera turns the opposite way. For head
  angles (yaw, pitch, roll) the camera looks at ``pivot`` along the direction with azimuth
  ``a = -yaw`` and elevation ``e = -pitch`` (it comes from ``(cos e sin a, sin e, cos e cos a)``: a
  positive head yaw puts it on the subject's right, world -x; looking up puts it below the face),
  with world y up, rolled about its viewing axis by ``roll``. Its position is on EG3D's camera sphere
  ``|origin| = radius`` about the world origin, as with EG3D's ``LookAtPoseSampler`` (frontal:
  (0, 0, radius), 2.5 from EG3D's pivot (0, 0, 0.2)); :func:`eg3d_sampler_angles` converts to that
  sampler's arguments.

The 3D template :data:`MEAN_FACE_68` is the MediaPipe canonical face model
(``mediapipe/modules/face_geometry/data/canonical_face_model.obj``, Apache-2.0; 468 vertices in cm)
sampled at the vertices :data:`MEDIAPIPE_68` that correspond to the iBUG 300-W points, converted to
millimetres and moved so the origin is the mid-eye point (mean of the four eye corners 36, 39, 42,
45). Pose is fitted with PnP against it: a global SQPnP start (and the previous frame's pose when
the two disagree), then a weighted robust (Huber) least-squares refinement of the reprojection
error. The jaw contour is a silhouette that slides over the face as it turns, and the lower lip and
lids move with speech and blinks, so those points get no or little weight (:data:`POSE_WEIGHTS`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.optimize import least_squares

from talk3d_core.crop import smooth_track
from talk3d_core.face.template import MEAN_FACE_68, MEAN_FACE_NAME
from talk3d_core.util.io import atomic_path
from talk3d_core.util.tables import fixed_list_array


def _pose_weights() -> np.ndarray:
    """Per-point weights of the PnP fit: rigid points 1, points that move with expression less."""
    w = np.zeros(68)
    w[17:27] = 0.5  # brows move with expression
    w[27:36] = 1.0  # nose: the most rigid part of the face
    w[[36, 39, 42, 45]] = 1.0  # eye corners
    w[[37, 38, 40, 41, 43, 44, 46, 47]] = 0.25  # lids move with blinks
    w[48:55] = 0.5  # mouth corners and upper lip move less than the lower lip
    return w  # jaw contour (silhouette), lower and inner lips: 0


POSE_WEIGHTS = _pose_weights()

# Huber threshold of the robust fit, as a fraction of the crop side (2.6 px at 256).
HUBER_FRACTION = 0.01
# With EG3D's long focal lengths perspective cues are weak and the reprojection error has local
# minima a few to 20 degrees from the best pose, so each frame starts from a global solver (SQPnP).
# When that lands more than this many degrees from the previous frame's pose, the fit is also run
# from the previous pose and the lower cost wins (keeps tracks continuous in ambiguous frames).
TRACK_DEG = 2.0

# EG3D conventions (FFHQ checkpoints) and the VIVE3D/Talk3D variant.
EG3D_FOCAL = 4.2647
EG3D_RADIUS = 2.7
EG3D_PIVOT = (0.0, 0.0, 0.2)
VIVE3D_FOCAL = 3.6
VIVE3D_PIVOT = (0.0, 0.05, 0.2)

SIGN_CONVENTIONS = {
    "head_frame": "x subject's left, y up, z out of the face (EG3D world)",
    "camera_frame": "OpenCV: x right, y down, z forward; cam2world maps camera to world",
    "euler": "R_head_to_camera = Rz(roll) @ Rx(-pitch) @ Ry(yaw), axes x right, y up, z to viewer",
    "yaw": "positive: subject turns to their left, nose moves to image right",
    "pitch": "positive: subject looks up, nose moves up in the image",
    "roll": "positive: head tilts to the subject's right shoulder, counter-clockwise in the image",
    "translation": "mid-eye point in OpenCV camera coordinates, template millimetres",
    "camera_orbit": "camera looks at pivot from direction (cos e sin a, sin e, cos e cos a), a=-yaw, "
    "e=-pitch, world y up, rolled by roll about its view axis, placed on |origin| = radius",
    "landmark_pixels": "pixel-index coordinates: centre of the top-left pixel is (0, 0)",
}

SCALAR_COLUMNS = ("yaw", "pitch", "roll", "yaw_raw", "pitch_raw", "roll_raw")
VECTOR_COLUMNS = {"translation": 3, "cam2world": 16, "intrinsics": 9, "label": 25}
COLUMNS = ("frame", *SCALAR_COLUMNS, "translation", "reproj_px", "cam2world", "intrinsics", "label")
METADATA_KEY = b"talk3d.camera"

# Head frame <-> OpenCV-aligned head frame (x right, y down, z into the head): a 180 degree turn
# about x. Fitting in the OpenCV-aligned frame keeps the rotation vector of a frontal face near 0.
_FLIP = np.diag([1.0, -1.0, -1.0])


# ---------------------------------------------------------------------------------------------------
# Rotations and angles


def _rot_x(deg: np.ndarray) -> np.ndarray:
    t = np.radians(deg)
    c, s, o, z = np.cos(t), np.sin(t), np.ones_like(t), np.zeros_like(t)
    return np.stack([o, z, z, z, c, -s, z, s, c], axis=-1).reshape(*t.shape, 3, 3)


def _rot_y(deg: np.ndarray) -> np.ndarray:
    t = np.radians(deg)
    c, s, o, z = np.cos(t), np.sin(t), np.ones_like(t), np.zeros_like(t)
    return np.stack([c, z, s, z, o, z, -s, z, c], axis=-1).reshape(*t.shape, 3, 3)


def _rot_z(deg: np.ndarray) -> np.ndarray:
    t = np.radians(deg)
    c, s, o, z = np.cos(t), np.sin(t), np.ones_like(t), np.zeros_like(t)
    return np.stack([c, -s, z, s, c, z, z, z, o], axis=-1).reshape(*t.shape, 3, 3)


def head_rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Rotation (..., 3, 3) taking head-frame vectors to the viewer's frame (x right, y up, z to viewer).

    Angles in degrees, broadcast together; see the module docstring for the signs.
    """
    yaw, pitch, roll = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (yaw, pitch, roll)))
    return _rot_z(roll) @ _rot_x(-pitch) @ _rot_y(yaw)


def head_angles(rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`head_rotation`: (yaw, pitch, roll) in degrees from rotations (..., 3, 3)."""
    r = np.asarray(rotation, dtype=np.float64)
    # Third row of Rz(r) Rx(q) Ry(y) is (-cos q sin y, sin q, cos q cos y); Rz leaves it unchanged.
    pitch = -np.degrees(np.arcsin(np.clip(r[..., 2, 1], -1.0, 1.0)))
    yaw = np.degrees(np.arctan2(-r[..., 2, 0], r[..., 2, 2]))
    roll = np.degrees(np.arctan2(-r[..., 0, 1], r[..., 1, 1]))
    return yaw, pitch, roll


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (degrees) of the relative rotation between rotation matrices ``a`` and ``b`` (..., 3, 3)."""
    rel = np.swapaxes(np.asarray(a), -1, -2) @ np.asarray(b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


# ---------------------------------------------------------------------------------------------------
# Pose from landmarks


def pnp_intrinsics(size: int, focal_norm: float) -> np.ndarray:
    """3x3 pixel intrinsics of a square crop: fx = fy = focal_norm * size, principal point at the centre.

    Landmarks are in pixel-index coordinates (the top-left pixel's centre is (0, 0), as cv2.warpAffine
    produces them), so the image centre is ((size - 1) / 2, (size - 1) / 2).
    """
    f = float(focal_norm) * size
    c = (size - 1) / 2.0
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


def project_template(
    yaw: np.ndarray,
    pitch: np.ndarray,
    roll: np.ndarray,
    translation: np.ndarray,
    size: int,
    focal_norm: float,
    template: np.ndarray = MEAN_FACE_68,
) -> np.ndarray:
    """Project ``template`` (K, 3) head-frame mm posed by the head angles (N,) (degrees) and
    ``translation`` (N, 3) (its origin in OpenCV camera coordinates, mm) into the crop: (N, K, 2) px."""
    rot_view = head_rotation(np.atleast_1d(yaw), np.atleast_1d(pitch), np.atleast_1d(roll))
    rot_cv = _FLIP @ rot_view  # viewer frame -> OpenCV camera frame
    t = np.asarray(translation, dtype=np.float64).reshape(-1, 1, 3)
    cam = np.einsum("nij,kj->nki", rot_cv, np.asarray(template, dtype=np.float64)) + t
    k = pnp_intrinsics(size, focal_norm)
    return cam[..., :2] / cam[..., 2:3] * k[0, 0] + k[:2, 2]


def _refine(
    model: np.ndarray, image: np.ndarray, sqrt_w: np.ndarray, k: np.ndarray, x0: np.ndarray, huber_px: float
) -> tuple[np.ndarray, float]:
    """Weighted robust reprojection fit of rvec ++ tvec (6,) from the start ``x0``, and its cost."""
    sw = np.repeat(sqrt_w, 2)  # projectPoints interleaves u, v per point

    def residual(x: np.ndarray) -> np.ndarray:
        uv, _ = cv2.projectPoints(model, x[:3], x[3:], k, None)
        return (uv.reshape(-1, 2) - image).ravel() * sw

    def jacobian(x: np.ndarray) -> np.ndarray:
        _, jac = cv2.projectPoints(model, x[:3], x[3:], k, None)
        return jac[:, :6] * sw[:, None]  # columns: rvec (3), tvec (3), then intrinsics we hold fixed

    fit = least_squares(residual, x0, jac=jacobian, loss="huber", f_scale=huber_px, method="trf")
    return fit.x, float(fit.cost)


def _rms_px(model: np.ndarray, image: np.ndarray, x: np.ndarray, k: np.ndarray) -> float:
    uv, _ = cv2.projectPoints(model, x[:3], x[3:], k, None)
    return float(np.sqrt(np.mean(np.sum((uv.reshape(-1, 2) - image) ** 2, axis=1))))


def _global_start(model: np.ndarray, image: np.ndarray, k: np.ndarray) -> np.ndarray:
    """SQPnP (globally optimal for its algebraic error), then EPnP, then a frontal pose at the
    distance that matches the face's size, whichever first gives a pose in front of the camera."""
    for flags in (cv2.SOLVEPNP_SQPNP, cv2.SOLVEPNP_EPNP):
        try:
            ok, rvec, tvec = cv2.solvePnP(model, image, k, None, flags=flags)
        except cv2.error:
            continue
        if ok and np.all(np.isfinite(rvec)) and np.all(np.isfinite(tvec)) and tvec[2, 0] > 0:
            return np.concatenate([rvec.ravel(), tvec.ravel()])
    z = k[0, 0] * float(np.ptp(model[:, 0])) / max(float(np.ptp(image[:, 0])), 1e-6)
    centre = (image.mean(axis=0) - k[:2, 2]) * z / k[0, 0]
    return np.array([0.0, 0.0, 0.0, centre[0], centre[1], z])


def _rotation_between_deg(rvec_a: np.ndarray, rvec_b: np.ndarray) -> float:
    return float(rotation_angle_deg(cv2.Rodrigues(rvec_a)[0], cv2.Rodrigues(rvec_b)[0]))


def estimate_pose(
    lm68: np.ndarray,
    size: int,
    focal_norm: float,
    *,
    weights: np.ndarray = POSE_WEIGHTS,
    template: np.ndarray = MEAN_FACE_68,
    what: str = "landmarks",
) -> dict[str, np.ndarray]:
    """Per-frame head pose by PnP of ``template`` against crop-space landmarks.

    Args:
        lm68: (N, 68, 2) landmarks in crop pixels (pixel-index coordinates) of a square crop.
        size: crop side in pixels.
        focal_norm: focal length in units of the crop side (the EG3D/VIVE3D focal, e.g. 4.2647 or 3.6).
        weights: (68,) non-negative fit weights; points with weight 0 are not used.
        template: (68, 3) head-frame template in mm.
        what: name of the source for error messages.

    Returns:
        ``yaw``, ``pitch``, ``roll`` (N,) degrees; ``rotation`` (N, 3, 3) head frame -> viewer frame
        (:func:`head_rotation` of the angles); ``translation`` (N, 3) template origin in OpenCV camera
        coordinates (mm); ``reproj_px`` (N,) RMS reprojection error over the points with weight > 0 (px).
    """
    lm = np.asarray(lm68, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ValueError(f"{what}: expected landmarks of shape (N, 68, 2), got {lm.shape}")
    if len(lm) == 0:
        raise ValueError(f"{what}: no frames")
    if not np.all(np.isfinite(lm)):
        bad = np.flatnonzero(~np.isfinite(lm).all(axis=(1, 2)))
        raise ValueError(f"{what}: non-finite landmarks in frames {bad[:10].tolist()}")
    if size <= 0 or not focal_norm > 0:
        raise ValueError(f"{what}: size and focal must be positive (size={size}, focal={focal_norm})")
    weights = np.asarray(weights, dtype=np.float64)
    used = np.flatnonzero(weights > 0)
    if weights.shape != (68,) or np.any(weights < 0) or used.size < 6:
        raise ValueError(f"{what}: weights must be (68,) non-negative with at least 6 positive")

    model = (np.asarray(template, dtype=np.float64) @ _FLIP)[used]  # OpenCV-aligned head frame
    sqrt_w = np.sqrt(weights[used])
    k = pnp_intrinsics(size, focal_norm)
    huber_px = HUBER_FRACTION * size

    n = len(lm)
    params = np.zeros((n, 6))
    rms = np.zeros(n)
    previous: np.ndarray | None = None
    for i in range(n):
        image = lm[i, used]
        x, cost = _refine(model, image, sqrt_w, k, _global_start(model, image, k), huber_px)
        if previous is not None and _rotation_between_deg(x[:3], previous[:3]) > TRACK_DEG:
            x_track, cost_track = _refine(model, image, sqrt_w, k, previous, huber_px)
            if cost_track < cost:
                x = x_track
        if not np.all(np.isfinite(x)) or x[5] <= 0:
            raise ValueError(f"{what}: head pose fit failed in frame {i} (face behind the camera)")
        params[i], rms[i] = x, _rms_px(model, image, x, k)
        previous = x

    rot_cv = np.stack([cv2.Rodrigues(p[:3])[0] for p in params])
    rotation = _FLIP @ rot_cv @ _FLIP  # head frame -> viewer frame
    yaw, pitch, roll = head_angles(rotation)
    return {
        "yaw": yaw,
        "pitch": pitch,
        "roll": roll,
        "rotation": rotation,
        "translation": params[:, 3:].copy(),
        "reproj_px": rms,
    }


def eg3d_intrinsics(focal: float) -> np.ndarray:
    """EG3D's normalised 3x3 intrinsics: fx = fy = ``focal`` (in image widths), cx = cy = 0.5."""
    return np.array([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]])


def _camera_origin(back: np.ndarray, radius: float, pivot: np.ndarray) -> np.ndarray:
    """Point ``pivot + d * back`` (d > 0) on EG3D's camera sphere ``|origin| = radius``."""
    pb = back @ pivot
    d = -pb + np.sqrt(pb**2 - pivot @ pivot + radius**2)
    return pivot + d[..., None] * back


def _check_orbit(radius: float, pivot: np.ndarray) -> np.ndarray:
    pivot = np.asarray(pivot, dtype=np.float64).reshape(3)
    if not radius > np.linalg.norm(pivot):
        raise ValueError(f"camera radius {radius} must exceed the pivot's distance from the origin {pivot}")
    return pivot


def look_at_cam2world(
    yaw_deg: np.ndarray,
    pitch_deg: np.ndarray,
    radius: float = EG3D_RADIUS,
    pivot: np.ndarray = EG3D_PIVOT,
    *,
    roll_deg: np.ndarray = 0.0,
) -> np.ndarray:
    """Camera (..., 4, 4) cam2world (OpenCV camera axes) under which the fixed head shows the head
    angles ``yaw_deg``, ``pitch_deg``, ``roll_deg`` (degrees, broadcast together).

    The camera looks at ``pivot`` (3,) from the direction given by azimuth -yaw and elevation -pitch
    (the opposite of the head's turn), with world y up, and is rolled about its viewing axis by
    ``roll_deg``. It sits on EG3D's camera sphere ``|origin| = radius`` about the world origin, the
    family of EG3D's ``LookAtPoseSampler`` (frontal: (0, 0, radius)); the angles set its viewing
    direction, so the camera's rotation relative to the head is exactly the inverse head rotation.
    Used for tracked cameras (:func:`eg3d_camera`) and for novel views (e.g. yaw -30..30, pitch -20..20).
    """
    yaw, pitch, roll = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (yaw_deg, pitch_deg, roll_deg))
    )
    if np.any(np.abs(pitch) >= 89.0):
        raise ValueError(f"pitch must be within (-89, 89) degrees, got {pitch.min()}..{pitch.max()}")
    pivot = _check_orbit(radius, pivot)
    az, el = np.radians(-yaw), np.radians(-pitch)
    back = np.stack([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], axis=-1)
    origin = _camera_origin(back, radius, pivot)
    forward = -back
    right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)
    axes = np.stack([right, down, forward], axis=-1)  # columns: camera x, y, z in world coordinates
    # Turning the camera clockwise (about its z, as seen from behind it) by roll turns the image
    # content counter-clockwise by roll.
    axes = axes @ _rot_z(roll)
    cam2world = np.zeros((*yaw.shape, 4, 4))
    cam2world[..., :3, :3] = axes
    cam2world[..., :3, 3] = origin
    cam2world[..., 3, 3] = 1.0
    return cam2world


def eg3d_camera(
    yaw: np.ndarray,
    pitch: np.ndarray,
    roll: np.ndarray,
    *,
    radius: float = EG3D_RADIUS,
    pivot: np.ndarray = EG3D_PIVOT,
    focal: float = EG3D_FOCAL,
) -> np.ndarray:
    """EG3D camera labels (N, 25) for head angles (N,) in degrees: the 4x4 cam2world of
    :func:`look_at_cam2world` flattened row-major (16) ++ :func:`eg3d_intrinsics` flattened (9)."""
    yaw, pitch, roll = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (yaw, pitch, roll))
    if not (yaw.ndim == 1 and yaw.shape == pitch.shape == roll.shape):
        raise ValueError(
            f"yaw, pitch, roll must be (N,) arrays, got {yaw.shape}, {pitch.shape}, {roll.shape}"
        )
    cam2world = look_at_cam2world(yaw, pitch, radius, pivot, roll_deg=roll).reshape(-1, 16)
    intrinsics = np.broadcast_to(eg3d_intrinsics(focal).reshape(1, 9), (len(yaw), 9))
    return np.concatenate([cam2world, intrinsics], axis=1)


def eg3d_sampler_angles(
    yaw_deg: np.ndarray,
    pitch_deg: np.ndarray,
    radius: float = EG3D_RADIUS,
    pivot: np.ndarray = EG3D_PIVOT,
) -> tuple[np.ndarray, np.ndarray]:
    """(horizontal_mean, vertical_mean) in radians for EG3D's ``LookAtPoseSampler(h, v, pivot,
    radius=radius)`` that give the same camera as :func:`look_at_cam2world` (no roll).

    The sampler puts the camera at ``radius * (-sin(phi) cos(h), cos(phi), sin(phi) sin(h))`` with the
    polar angle ``phi = arccos(1 - 2 v / pi)`` (``v`` is not the polar angle itself).
    """
    origin = look_at_cam2world(yaw_deg, pitch_deg, radius, pivot)[..., :3, 3]
    phi = np.arccos(np.clip(origin[..., 1] / radius, -1.0, 1.0))
    return np.arctan2(origin[..., 2], -origin[..., 0]), np.pi / 2 * (1.0 - np.cos(phi))


def head_angles_from_eg3d_sampler(
    horizontal: np.ndarray,
    vertical: np.ndarray,
    radius: float = EG3D_RADIUS,
    pivot: np.ndarray = EG3D_PIVOT,
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`eg3d_sampler_angles`: head (yaw, pitch) in degrees seen by the sampler's camera.

    VIVE3D's/Talk3D's camera offsets (y, p) mean ``horizontal = pi/2 + y``, ``vertical = pi/2 + p``;
    because of the sampler's polar mapping and the pivot, their "pitch 20 degrees" is a smaller head
    pitch (about 15 degrees with the VIVE3D pivot).
    """
    pivot = _check_orbit(radius, pivot)
    h = np.asarray(horizontal, dtype=np.float64)
    phi = np.arccos(1.0 - 2.0 * np.clip(np.asarray(vertical, dtype=np.float64), 0.0, np.pi) / np.pi)
    origin = radius * np.stack([-np.sin(phi) * np.cos(h), np.cos(phi), np.sin(phi) * np.sin(h)], axis=-1)
    back = origin - pivot
    back /= np.linalg.norm(back, axis=-1, keepdims=True)
    azimuth = np.arctan2(back[..., 0], back[..., 2])
    elevation = np.arcsin(np.clip(back[..., 1], -1.0, 1.0))
    return -np.degrees(azimuth), -np.degrees(elevation)


#: How a novel view's two angles are read (config ``render.view_convention``): the head angles the
#: view shows, or EG3D ``LookAtPoseSampler`` offsets as Talk3D and VIVE3D give them.
VIEW_CONVENTIONS = ("head", "lookat")


def view_head_angles(
    yaw_deg: float,
    pitch_deg: float,
    convention: str = "head",
    *,
    radius: float = EG3D_RADIUS,
    pivot: Sequence[float] = EG3D_PIVOT,
) -> tuple[float, float]:
    """Head (yaw, pitch) in degrees (this module's conventions) seen from the novel view given by
    ``yaw_deg``, ``pitch_deg`` in ``convention``:

    - "head": the head angles themselves;
    - "lookat": Talk3D's/VIVE3D's camera offsets, i.e. EG3D's ``LookAtPoseSampler(pi/2 + yaw,
      pi/2 + pitch, pivot, radius)`` with the angles in radians. The sampler places the camera on its
      sphere about the world origin, not about the pivot, and its vertical angle is not the polar
      angle, so the head angles differ: with VIVE3D's pivot (0, 0.05, 0.2) and radius 2.7, "yaw 30,
      pitch 20" shows head yaw -32.33 and pitch 14.79 (EG3D's pivot (0, 0, 0.2): -32.33, 13.70),
      and "0, 0" a head pitch of 1.15 (the camera looks up at the raised pivot).

    Both give the camera exactly: :func:`eg3d_camera` at the returned angles is the sampler's camera.
    """
    yaw, pitch = float(yaw_deg), float(pitch_deg)
    if convention == "head":
        return yaw, pitch
    if convention == "lookat":
        h, v = np.pi / 2 + np.radians(yaw), np.pi / 2 + np.radians(pitch)
        head_yaw, head_pitch = head_angles_from_eg3d_sampler(
            h, v, radius, np.asarray(pivot, dtype=np.float64)
        )
        return float(head_yaw), float(head_pitch)
    raise ValueError(f"view convention must be one of {', '.join(VIEW_CONVENTIONS)}, got {convention!r}")


# ---------------------------------------------------------------------------------------------------
# camera.parquet


def camera_table(
    lm68_crop: np.ndarray,
    size: int,
    *,
    focal: float = EG3D_FOCAL,
    radius: float = EG3D_RADIUS,
    pivot: np.ndarray = EG3D_PIVOT,
    sigma_frames: float = 2.0,
    cuts: Sequence[int] = (),
    frame: np.ndarray | None = None,
    what: str = "crop landmarks",
) -> pd.DataFrame:
    """Head pose and EG3D camera per frame, as the ``camera.parquet`` table.

    Args:
        lm68_crop: (N, 68, 2) landmarks in crop pixels of a square crop of side ``size``.
        focal: EG3D normalised focal, used for the PnP intrinsics too (fx = focal * size px).
        radius, pivot: camera orbit radius and look-at point (EG3D units).
        sigma_frames: Gaussian smoothing of angles and translation along time (frames; 0 = none).
        cuts: first frames of new shots (crop.parquet's ``cuts``); smoothing does not cross them.
        frame: (N,) frame indices; default 0..N-1.

    Returns:
        A DataFrame with :data:`COLUMNS` (vector columns hold float32 arrays per row) and the options
        and conventions in ``attrs["camera"]``. ``yaw``/``pitch``/``roll``, ``translation`` and the
        cameras are smoothed; ``*_raw`` and ``reproj_px`` are the per-frame fit.
    """
    pose = estimate_pose(lm68_crop, size, focal, what=what)
    n = len(pose["yaw"])
    frame = np.arange(n) if frame is None else np.asarray(frame)
    if frame.shape != (n,):
        raise ValueError(f"{what}: frame indices must have shape ({n},), got {frame.shape}")
    # Smoothing stops at shot cuts (found by the crop stage): a cut is a new head pose, not motion.
    angles = smooth_track(np.stack([pose["yaw"], pose["pitch"], pose["roll"]], axis=1), sigma_frames, cuts)
    translation = smooth_track(pose["translation"], sigma_frames, cuts)
    label = eg3d_camera(angles[:, 0], angles[:, 1], angles[:, 2], radius=radius, pivot=pivot, focal=focal)
    label = label.astype(np.float32)

    def rows(a: np.ndarray) -> list[np.ndarray]:
        return list(np.ascontiguousarray(a, dtype=np.float32))

    table = pd.DataFrame(
        {
            "frame": frame.astype(np.int32),
            "yaw": angles[:, 0].astype(np.float32),
            "pitch": angles[:, 1].astype(np.float32),
            "roll": angles[:, 2].astype(np.float32),
            "yaw_raw": pose["yaw"].astype(np.float32),
            "pitch_raw": pose["pitch"].astype(np.float32),
            "roll_raw": pose["roll"].astype(np.float32),
            "translation": rows(translation),
            "reproj_px": pose["reproj_px"].astype(np.float32),
            "cam2world": rows(label[:, :16]),
            "intrinsics": rows(label[:, 16:]),
            "label": rows(label),
        },
        columns=list(COLUMNS),
    )
    table.attrs["camera"] = {
        "focal": float(focal),
        "radius": float(radius),
        "pivot": [float(v) for v in np.asarray(pivot, dtype=np.float64).reshape(3)],
        "sigma_frames": float(sigma_frames),
        "cuts": [int(c) for c in cuts],
        "size": int(size),
        "template": MEAN_FACE_NAME,
        "pnp": "SQPnP/previous-frame start + weighted Huber refinement",
        "conventions": SIGN_CONVENTIONS,
    }
    return table


def vector_column(table: pd.DataFrame, name: str) -> np.ndarray:
    """Stack a vector column of a camera table into an (N, K) float32 array."""
    width = VECTOR_COLUMNS[name]
    if len(table) == 0:
        return np.zeros((0, width), dtype=np.float32)
    return np.stack(table[name].to_numpy()).astype(np.float32, copy=False)


def _arrow_type(name: str) -> pa.DataType:
    if name == "frame":
        return pa.int32()
    if name in VECTOR_COLUMNS:
        return pa.list_(pa.float32(), VECTOR_COLUMNS[name])
    return pa.float32()


def write_camera_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a :func:`camera_table` DataFrame to Parquet atomically, options in the schema metadata."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: camera table lacks columns {missing}")
    arrays = []
    for name in COLUMNS:
        if name in VECTOR_COLUMNS:
            flat = vector_column(table, name)
            if flat.shape[1] != VECTOR_COLUMNS[name]:
                raise ValueError(f"{path}: column {name} has length {flat.shape[1]}")
            arrays.append(fixed_list_array(flat, VECTOR_COLUMNS[name]))
        else:
            arrays.append(pa.array(table[name].to_numpy(), type=_arrow_type(name)))
    meta = json.dumps(table.attrs.get("camera", {}), sort_keys=True).encode()
    arrow = pa.Table.from_arrays(arrays, names=list(COLUMNS)).replace_schema_metadata({METADATA_KEY: meta})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


def read_camera_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``camera.parquet``; raise ValueError naming ``path`` if its schema is not the contract's.

    Checks column names and order, types, vector lengths, the metadata, unique increasing frames,
    finite values and that ``label`` is ``cam2world`` ++ ``intrinsics``.
    """
    try:
        arrow = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from e
    names = tuple(arrow.schema.names)
    if names != COLUMNS:
        raise ValueError(f"{path}: camera table columns {list(names)} differ from {list(COLUMNS)}")
    for name in COLUMNS:
        found, expected = arrow.schema.field(name).type, _arrow_type(name)
        if found != expected:
            raise ValueError(f"{path}: column {name} has type {found}, expected {expected}")
    raw_meta = (arrow.schema.metadata or {}).get(METADATA_KEY)
    try:
        meta: dict[str, Any] = json.loads(raw_meta) if raw_meta is not None else None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: camera metadata is not JSON ({e})") from e
    if not isinstance(meta, dict) or not {"focal", "radius", "pivot", "sigma_frames"} <= meta.keys():
        raise ValueError(f"{path}: camera metadata (focal, radius, pivot, sigma_frames) missing")
    table = arrow.to_pandas()
    frame = table["frame"].to_numpy()
    if len(frame) and np.any(np.diff(frame) <= 0):
        raise ValueError(f"{path}: frame indices are not unique and increasing")
    for name in COLUMNS[1:]:
        values = vector_column(table, name) if name in VECTOR_COLUMNS else table[name].to_numpy()
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{path}: column {name} has non-finite values")
    label = vector_column(table, "label")
    if not (
        np.array_equal(label[:, :16], vector_column(table, "cam2world"))
        and np.array_equal(label[:, 16:], vector_column(table, "intrinsics"))
    ):
        raise ValueError(f"{path}: label is not cam2world ++ intrinsics")
    table.attrs["camera"] = meta
    return table
