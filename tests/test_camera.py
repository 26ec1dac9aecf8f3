"""Head pose and EG3D cameras: template, PnP round trip, camera conventions, smoothing, camera.parquet."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA

from talk3d_core.camera import (
    COLUMNS,
    EG3D_FOCAL,
    EG3D_PIVOT,
    EG3D_RADIUS,
    VIVE3D_FOCAL,
    VIVE3D_PIVOT,
    camera_table,
    eg3d_camera,
    eg3d_sampler_angles,
    estimate_pose,
    head_angles,
    head_angles_from_eg3d_sampler,
    head_rotation,
    look_at_cam2world,
    pnp_intrinsics,
    project_template,
    read_camera_table,
    vector_column,
    view_head_angles,
    write_camera_table,
)
from talk3d_core.crop import smooth_track
from talk3d_core.face.template import MEAN_FACE_68, MEDIAPIPE_68

# iBUG mirror partner of each point (subject's right <-> left).
MIRROR_68 = np.array(
    list(range(16, -1, -1))
    + list(range(26, 16, -1))
    + [27, 28, 29, 30, 35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]
    + [64, 63, 62, 61, 60, 67, 66, 65]
)
POSE_GRID = np.array(list(itertools.product([-30, -15, 0, 15, 30], [-20, 0, 20], [-10, 0, 10])), float)


def _project_with_cam2world(points: np.ndarray, cam2world: np.ndarray, size: int, focal: float) -> np.ndarray:
    """Pinhole projection (N, K, 2) of world points (K, 3) by cameras (N, 4, 4), crop pixels."""
    world2cam = np.linalg.inv(cam2world)
    cam = np.einsum("nij,kj->nki", world2cam[:, :3, :3], points) + world2cam[:, None, :3, 3]
    k = pnp_intrinsics(size, focal)
    return cam[..., :2] / cam[..., 2:3] * k[0, 0] + k[:2, 2]


def _sampler_cam2world(horizontal: float, vertical: float, pivot, radius: float) -> np.ndarray:
    """EG3D's LookAtPoseSampler + create_cam2world_matrix, written from their published formulas."""
    phi = np.arccos(1 - 2 * vertical / np.pi)
    origin = radius * np.array(
        [np.sin(phi) * np.cos(np.pi - horizontal), np.cos(phi), np.sin(phi) * np.sin(np.pi - horizontal)]
    )
    forward = np.asarray(pivot, float) - origin
    forward /= np.linalg.norm(forward)
    up = np.array([0.0, 1.0, 0.0])
    right = -np.cross(up, forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    up /= np.linalg.norm(up)
    m = np.eye(4)
    m[:3, :3] = np.stack([right, up, forward], axis=-1)
    m[:3, 3] = origin
    return m


# --------------------------------------------------------------------------------------------------
# Template


def test_template_is_a_plausible_symmetric_frontal_face():
    t = MEAN_FACE_68
    assert t.shape == (68, 3)
    np.testing.assert_allclose(t[MIRROR_68] * [-1, 1, 1], t, atol=1e-9)  # left-right symmetric
    np.testing.assert_allclose(t[[36, 39, 42, 45]].mean(axis=0), 0.0, atol=0.01)  # origin: mid-eye
    assert t[30, 2] == t[:, 2].max()  # nose tip is the most forward point
    assert 80 < t[45, 0] - t[36, 0] < 110  # outer eye corners ~90 mm apart (adult mean)
    assert 100 < t[27, 1] - t[8, 1] < 140  # nasion to chin ~120 mm
    assert t[19, 1] > 0 > t[33, 1] > t[51, 1] > t[57, 1] > t[8, 1]  # brow, nose, mouth, chin top-down
    assert t[36, 0] < 0 < t[45, 0]  # subject's right eye at -x (image left)
    assert np.all(t[:17, 2] < t[30, 2] - 30)  # jaw outline behind the nose tip
    assert len(set(MEDIAPIPE_68.tolist())) == 68 and MEDIAPIPE_68.min() >= 0 and MEDIAPIPE_68.max() < 468


def test_head_rotation_signs_and_inverse():
    size, focal, t = 256, EG3D_FOCAL, [[0.0, 0.0, 600.0]]
    base = project_template([0.0], [0.0], [0.0], t, size, focal)[0]
    turned = project_template([20.0], [0.0], [0.0], t, size, focal)[0]
    up = project_template([0.0], [15.0], [0.0], t, size, focal)[0]
    rolled = project_template([0.0], [0.0], [10.0], t, size, focal)[0]
    assert turned[30, 0] - base[30, 0] > 5  # yaw > 0: nose to image right
    assert up[30, 1] - base[30, 1] < -5  # pitch > 0: nose up
    assert rolled[45, 1] < rolled[36, 1] - 5  # roll > 0: the subject's left eye (image right) up
    yaw, pitch, roll = POSE_GRID.T
    back = head_angles(head_rotation(yaw, pitch, roll))
    np.testing.assert_allclose(np.stack(back, axis=1), POSE_GRID, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# Pose round trip


@pytest.mark.parametrize("size,focal", [(256, EG3D_FOCAL), (512, VIVE3D_FOCAL)])
def test_pose_round_trip_recovers_angles_within_2_degrees(size, focal):
    rng = np.random.default_rng(7)
    grid = POSE_GRID[rng.permutation(len(POSE_GRID))]  # jumps between poses exercise the re-seeding
    n = len(grid)
    # Face about 0.45 of the crop wide, off centre by a few percent like a real crop.
    distance = focal * size * 155.0 / (0.45 * size)
    translation = np.column_stack([rng.uniform(-15, 15, n), rng.uniform(-15, 15, n), np.full(n, distance)])
    clean = project_template(grid[:, 0], grid[:, 1], grid[:, 2], translation, size, focal)
    noisy = clean + rng.normal(0.0, 0.5 * size / 256, clean.shape)
    pose = estimate_pose(noisy, size, focal)
    found = np.column_stack([pose["yaw"], pose["pitch"], pose["roll"]])
    assert np.abs(found - grid).max() < 2.0
    np.testing.assert_allclose(pose["translation"], translation, rtol=0.03, atol=3.0)
    assert np.all(pose["reproj_px"] < 2.0 * size / 256)
    assert pose["rotation"].shape == (n, 3, 3)

    exact = estimate_pose(clean, size, focal)
    np.testing.assert_allclose(exact["yaw"], grid[:, 0], atol=1e-4)
    assert exact["reproj_px"].max() < 1e-3


@pytest.mark.parametrize("pivot", [EG3D_PIVOT, VIVE3D_PIVOT, (0.0, 0.0, 0.0)])
def test_pose_of_an_eg3d_render_is_the_camera_head_angles(pivot):
    """The template fixed at the pivot, seen by eg3d_camera(angles), gives back those angles."""
    yaw, pitch, roll = POSE_GRID.T
    label = eg3d_camera(yaw, pitch, roll, radius=EG3D_RADIUS, pivot=pivot, focal=EG3D_FOCAL)
    head = MEAN_FACE_68 / 250.0 + np.asarray(pivot)  # a 0.6 unit wide face, as in EG3D's box
    lm = _project_with_cam2world(head, label[:, :16].reshape(-1, 4, 4), 256, EG3D_FOCAL)
    pose = estimate_pose(lm, 256, EG3D_FOCAL)
    found = np.column_stack([pose["yaw"], pose["pitch"], pose["roll"]])
    np.testing.assert_allclose(found, POSE_GRID, atol=1e-6)


def test_estimate_pose_rejects_bad_landmarks():
    good = project_template([0.0], [0.0], [0.0], [[0, 0, 600.0]], 256, EG3D_FOCAL)
    with pytest.raises(ValueError, match=r"clipA.*\(N, 68, 2\)"):
        estimate_pose(good[:, :60], 256, EG3D_FOCAL, what="clipA")
    bad = good.copy()
    bad[0, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"clipB.*non-finite.*\[0\]"):
        estimate_pose(bad, 256, EG3D_FOCAL, what="clipB")
    with pytest.raises(ValueError, match="positive"):
        estimate_pose(good, 256, 0.0)
    with pytest.raises(ValueError, match="clipC: no frames"):
        estimate_pose(good[:0], 256, EG3D_FOCAL, what="clipC")


# --------------------------------------------------------------------------------------------------
# EG3D cameras


def test_cam2world_is_a_proper_camera_on_the_eg3d_sphere():
    yaw, pitch, roll = POSE_GRID.T
    for pivot in (EG3D_PIVOT, VIVE3D_PIVOT):
        label = eg3d_camera(yaw, pitch, roll, radius=EG3D_RADIUS, pivot=pivot, focal=VIVE3D_FOCAL)
        assert label.shape == (len(yaw), 25)
        m = label[:, :16].reshape(-1, 4, 4)
        r = m[:, :3, :3]
        np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
        np.testing.assert_array_equal(m[:, 3], np.broadcast_to([0.0, 0.0, 0.0, 1.0], (len(yaw), 4)))
        np.testing.assert_allclose(np.linalg.norm(m[:, :3, 3], axis=1), EG3D_RADIUS, atol=1e-12)
        to_pivot = np.asarray(pivot) - m[:, :3, 3]
        to_pivot /= np.linalg.norm(to_pivot, axis=1, keepdims=True)
        np.testing.assert_allclose(r[:, :, 2], to_pivot, atol=1e-12)  # camera z looks at the pivot
        intrinsics = [VIVE3D_FOCAL, 0, 0.5, 0, VIVE3D_FOCAL, 0.5, 0, 0, 1]
        np.testing.assert_array_equal(label[:, 16:], np.broadcast_to(intrinsics, (len(yaw), 9)))


def test_frontal_camera_is_eg3d_frontal_camera():
    m = look_at_cam2world(0.0, 0.0, EG3D_RADIUS, EG3D_PIVOT)
    expected = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, EG3D_RADIUS], [0, 0, 0, 1]], float)
    np.testing.assert_allclose(m, expected, atol=1e-12)  # on +z, x right, y down, looking at -z
    np.testing.assert_allclose(
        m, _sampler_cam2world(np.pi / 2, np.pi / 2, EG3D_PIVOT, EG3D_RADIUS), atol=1e-12
    )
    # Frontal with VIVE3D's raised pivot: the camera looks straight along -z at (0, 0.05, 0.2) from the
    # sphere, so the head is seen exactly frontally (the sampler's pi/2, pi/2 camera tilts up instead).
    v = look_at_cam2world(0.0, 0.0, EG3D_RADIUS, VIVE3D_PIVOT)
    np.testing.assert_allclose(v[:3, :3], expected[:3, :3], atol=1e-12)
    np.testing.assert_allclose(v[:2, 3], [0.0, 0.05], atol=1e-12)
    assert np.linalg.norm(v[:3, 3]) == pytest.approx(EG3D_RADIUS)


def test_camera_orbits_opposite_to_the_head():
    radius, pivot = EG3D_RADIUS, EG3D_PIVOT
    turned = look_at_cam2world(20.0, 0.0, radius, pivot)
    assert turned[0, 3] < -0.5  # head turns to its left (+x): camera goes to the subject's right (-x)
    up = look_at_cam2world(0.0, 15.0, radius, pivot)
    assert up[1, 3] < -0.3  # head looks up: camera goes below
    # Roll: a point on the subject's left (world +x of the pivot) rises in the image for roll > 0.
    left_point = np.asarray(pivot) + [[0.3, 0.0, 0.0]]
    cams = look_at_cam2world(np.zeros(2), np.zeros(2), radius, pivot, roll_deg=np.array([0.0, 10.0]))
    uv = _project_with_cam2world(left_point, cams, 256, EG3D_FOCAL)[:, 0]
    assert uv[1, 1] < uv[0, 1] - 3
    with pytest.raises(ValueError, match="radius"):
        look_at_cam2world(0.0, 0.0, 0.1, EG3D_PIVOT)


@pytest.mark.parametrize("pivot", [EG3D_PIVOT, VIVE3D_PIVOT])
def test_sampler_angles_reproduce_eg3d_look_at_pose_sampler(pivot):
    for yaw, pitch in [(0, 0), (30, 0), (-30, 20), (12, -20), (-5, 7)]:
        h, v = eg3d_sampler_angles(yaw, pitch, EG3D_RADIUS, pivot)
        ours = look_at_cam2world(yaw, pitch, EG3D_RADIUS, pivot)
        np.testing.assert_allclose(ours, _sampler_cam2world(h, v, pivot, EG3D_RADIUS), atol=1e-12)
        np.testing.assert_allclose(
            head_angles_from_eg3d_sampler(h, v, EG3D_RADIUS, pivot), (yaw, pitch), atol=1e-9
        )
    # VIVE3D's "+30 degrees" yaw offset moves the camera to +x: the head appears turned to its right.
    yaw, pitch = head_angles_from_eg3d_sampler(np.pi / 2 + np.radians(30), np.pi / 2, EG3D_RADIUS, pivot)
    assert -35 < yaw < -30


def test_talk3d_lookat_view_30_20_shows_head_yaw_minus_32_and_pitch_15():
    # Talk3D's novel view "yaw 30, pitch 20" is LookAtPoseSampler(pi/2 + 30 deg, pi/2 + 20 deg) about
    # VIVE3D's pivot (0, 0.05, 0.2) at radius 2.7. By hand: the polar angle is phi = arccos(1 - 2 v / pi)
    # = arccos(-2/9) and the azimuth term pi - h = 60 deg, so the camera sits at 2.7 (sin phi cos 60,
    # cos phi, sin phi sin 60) = (1.31624, -0.6, 2.27980), 2.54570 from the pivot along
    # (1.31624, -0.65, 2.07980): head yaw -atan2(1.31624, 2.07980) = -32.3285 deg, head pitch
    # asin(0.65 / 2.54570) = 14.7933 deg.
    phi = np.arccos(-2 / 9)
    origin = EG3D_RADIUS * np.array([np.sin(phi) * 0.5, np.cos(phi), np.sin(phi) * np.sqrt(3) / 2])
    back = origin - np.asarray(VIVE3D_PIVOT)
    by_hand = (
        -np.degrees(np.arctan2(back[0], back[2])),
        np.degrees(np.arcsin(-back[1] / np.linalg.norm(back))),
    )
    np.testing.assert_allclose(by_hand, (-32.3285, 14.7933), atol=5e-5)
    yaw, pitch = view_head_angles(30, 20, "lookat", radius=EG3D_RADIUS, pivot=VIVE3D_PIVOT)
    np.testing.assert_allclose((yaw, pitch), by_hand, atol=1e-9)
    # The camera at those head angles is the sampler's camera, and it sees the head turned by them.
    sampler = _sampler_cam2world(
        np.pi / 2 + np.radians(30), np.pi / 2 + np.radians(20), VIVE3D_PIVOT, EG3D_RADIUS
    )
    np.testing.assert_allclose(look_at_cam2world(yaw, pitch, EG3D_RADIUS, VIVE3D_PIVOT), sampler, atol=1e-12)
    seen = head_angles(np.diag([1.0, -1.0, -1.0]) @ sampler[:3, :3].T)  # OpenCV camera -> viewer axes
    np.testing.assert_allclose(seen, (yaw, pitch, 0.0), atol=1e-9)
    # EG3D's own pivot (0, 0, 0.2) gives the same yaw and a smaller pitch; "0, 0" looks up at VIVE3D's.
    np.testing.assert_allclose(
        view_head_angles(30, 20, "lookat", radius=EG3D_RADIUS, pivot=EG3D_PIVOT),
        (-32.3285, 13.6999),
        atol=5e-5,
    )
    np.testing.assert_allclose(
        view_head_angles(0, 0, "lookat", radius=EG3D_RADIUS, pivot=VIVE3D_PIVOT), (0.0, 1.1458), atol=5e-5
    )
    # The head convention is the identity; anything else is named.
    assert view_head_angles(30, 20, "head", pivot=VIVE3D_PIVOT) == (30.0, 20.0)
    with pytest.raises(ValueError, match="view convention must be one of head, lookat"):
        view_head_angles(30, 20, "sampler")


# --------------------------------------------------------------------------------------------------
# Smoothing and the table


def test_smoothing_reduces_noise():
    rng = np.random.default_rng(3)
    t = np.arange(200)
    truth = np.column_stack([10 * np.sin(t / 25.0), 5 * np.cos(t / 40.0)])
    noisy = truth + rng.normal(0.0, 1.0, truth.shape)
    smooth = smooth_track(noisy, 3.0)
    assert np.sqrt(np.mean((smooth - truth) ** 2)) < 0.5 * np.sqrt(np.mean((noisy - truth) ** 2))
    np.testing.assert_array_equal(smooth_track(noisy, 0.0), noisy)
    np.testing.assert_allclose(smooth_track(np.full((30, 3), 7.0), 4.0), 7.0)  # edges not pulled to 0


def _noisy_track(n: int = 60, size: int = 256, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    angles = np.column_stack([15 * np.sin(t / 15.0), 8 * np.sin(t / 23.0), 3 * np.sin(t / 31.0)])
    translation = np.column_stack([np.zeros(n), np.zeros(n), np.full(n, 1500.0)])
    lm = project_template(angles[:, 0], angles[:, 1], angles[:, 2], translation, size, EG3D_FOCAL)
    return lm + rng.normal(0.0, 1.0, lm.shape), angles


def test_camera_table_smooths_and_writes_readable_parquet(tmp_path):
    lm, truth = _noisy_track()
    table = camera_table(lm, 256, focal=EG3D_FOCAL, radius=EG3D_RADIUS, pivot=EG3D_PIVOT, sigma_frames=2.0)
    assert tuple(table.columns) == COLUMNS
    raw = table[["yaw_raw", "pitch_raw", "roll_raw"]].to_numpy(np.float64)
    smooth = table[["yaw", "pitch", "roll"]].to_numpy(np.float64)
    assert np.abs(smooth - truth).mean() < 0.7 * np.abs(raw - truth).mean()
    assert np.abs(smooth - truth)[5:-5].max() < 1.5  # away from the ends, which a Gaussian flattens
    label = vector_column(table, "label")
    expected = eg3d_camera(smooth[:, 0], smooth[:, 1], smooth[:, 2], radius=EG3D_RADIUS, pivot=EG3D_PIVOT)
    np.testing.assert_allclose(label, expected, atol=1e-4)

    path = tmp_path / "camera.parquet"
    write_camera_table(table, path)
    back = read_camera_table(path)
    assert tuple(back.columns) == COLUMNS
    assert back["frame"].dtype == np.int32 and back["yaw"].dtype == np.float32
    np.testing.assert_array_equal(vector_column(back, "label"), label)
    np.testing.assert_array_equal(back["reproj_px"].to_numpy(), table["reproj_px"].to_numpy())
    meta = back.attrs["camera"]
    assert meta["focal"] == EG3D_FOCAL and meta["pivot"] == list(EG3D_PIVOT) and meta["sigma_frames"] == 2.0
    assert "yaw" in meta["conventions"]
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary behind


def _corrupt(table: pa.Table, how: str) -> pa.Table:
    if how == "missing column":
        return table.drop_columns(["roll_raw"])
    if how == "reordered columns":
        return table.select(["yaw", "frame", *COLUMNS[2:]])
    if how == "float64 yaw":
        return table.set_column(1, "yaw", table.column("yaw").cast(pa.float64()))
    if how == "short cam2world":
        flat = vector_column(table.to_pandas(), "cam2world")[:, :15]
        short = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), 15)
        return table.set_column(COLUMNS.index("cam2world"), "cam2world", short)
    if how == "no metadata":
        return table.replace_schema_metadata(None)
    if how == "metadata lacks focal":
        meta = json.loads(table.schema.metadata[b"talk3d.camera"])
        del meta["focal"]
        return table.replace_schema_metadata({b"talk3d.camera": json.dumps(meta).encode()})
    if how == "repeated frames":
        frames = pa.array(np.zeros(table.num_rows, np.int32))
        return table.set_column(0, "frame", frames)
    if how == "label differs":
        flat = vector_column(table.to_pandas(), "label")
        flat[:, 3] += 1.0
        label = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), 25)
        return table.set_column(COLUMNS.index("label"), "label", label)
    if how == "nan pitch":
        pitch = table.column("pitch").to_numpy().copy()
        pitch[2] = np.nan
        return table.set_column(COLUMNS.index("pitch"), "pitch", pa.array(pitch))
    raise AssertionError(how)


CORRUPTIONS = [
    ("missing column", "columns"),
    ("reordered columns", "columns"),
    ("float64 yaw", "yaw has type double"),
    ("short cam2world", "cam2world has type"),
    ("no metadata", "metadata"),
    ("metadata lacks focal", "metadata"),
    ("repeated frames", "unique and increasing"),
    ("label differs", "label is not cam2world"),
    ("nan pitch", "pitch has non-finite"),
]


@pytest.mark.parametrize("how,message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_reader_rejects_corrupt_tables(tmp_path, how, message):
    lm, _ = _noisy_track(n=8)
    good = tmp_path / "good.parquet"
    write_camera_table(camera_table(lm, 256, sigma_frames=1.0), good)
    bad = tmp_path / "camera.parquet"
    pq.write_table(_corrupt(pq.read_table(good), how), bad)
    with pytest.raises(ValueError, match=message) as err:
        read_camera_table(bad)
    assert str(bad) in str(err.value)


def test_reader_rejects_a_file_that_is_not_parquet(tmp_path):
    bad = tmp_path / "camera.parquet"
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(ValueError, match=r"camera\.parquet: not a readable Parquet file"):
        read_camera_table(bad)


# --------------------------------------------------------------------------------------------------
# Integration: MediaPipe landmarks on a real clip


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_DATA / "videos" / "german.mp4").exists(), reason=f"{SHARED_DATA} not present")
def test_pose_of_a_news_reader_is_plausible(tmp_path):
    import imageio_ffmpeg
    import mediapipe as mp

    frames_wanted = 75  # 3 s at 25 fps; the full 512x512 frame serves as the crop
    reader = imageio_ffmpeg.read_frames(str(SHARED_DATA / "videos" / "german.mp4"))
    width, height = next(reader)["size"]
    assert width == height == 512
    lm = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1) as mesh:
        for raw in itertools.islice(reader, frames_wanted):
            image = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
            faces = mesh.process(image).multi_face_landmarks
            assert faces, "no face found in german.mp4"
            points = np.array([(p.x * width, p.y * height) for p in faces[0].landmark]) - 0.5
            lm.append(points[MEDIAPIPE_68])
    reader.close()
    lm = np.stack(lm)

    table = camera_table(
        lm, 512, focal=VIVE3D_FOCAL, radius=EG3D_RADIUS, pivot=VIVE3D_PIVOT, sigma_frames=2.0
    )
    yaw, pitch, roll = (table[c].to_numpy() for c in ("yaw_raw", "pitch_raw", "roll_raw"))
    reproj = table["reproj_px"].to_numpy()
    print(
        f"german.mp4 {len(table)} frames: yaw {yaw.min():.1f}..{yaw.max():.1f}, "
        f"pitch {pitch.min():.1f}..{pitch.max():.1f}, roll {roll.min():.1f}..{roll.max():.1f} deg; "
        f"reprojection RMS median {np.median(reproj):.2f} px, max {reproj.max():.2f} px (512 px frame)"
    )
    assert np.abs(yaw).max() < 20 and np.abs(pitch).max() < 20 and np.abs(roll).max() < 15
    assert np.median(reproj) < 0.015 * 512 and reproj.max() < 0.03 * 512
    jitter_raw = np.abs(np.diff(yaw)).mean()
    jitter_smooth = np.abs(np.diff(table["yaw"].to_numpy())).mean()
    assert jitter_smooth < 0.6 * jitter_raw
    write_camera_table(table, tmp_path / "camera.parquet")
    assert len(read_camera_table(tmp_path / "camera.parquet")) == frames_wanted


def test_smoothing_stops_at_shot_cuts():
    """A cut to a new shot is a jump of pose, which smoothing must not blur across."""
    rng = np.random.default_rng(3)
    lm = np.concatenate(
        [
            project_template(
                np.full(20, -10.0), np.zeros(20), np.zeros(20), np.tile([0, 0, 900.0], (20, 1)), 256, 3.6
            ),
            project_template(
                np.full(20, 15.0), np.zeros(20), np.zeros(20), np.tile([0, 0, 900.0], (20, 1)), 256, 3.6
            ),
        ]
    ) + rng.normal(0, 0.2, (40, 68, 2))
    kw = dict(focal=3.6, radius=2.7, pivot=(0, 0.05, 0.2), sigma_frames=3.0)
    with_cut = camera_table(lm, 256, cuts=[20], **kw)
    without = camera_table(lm, 256, **kw)
    assert abs(with_cut["yaw"][19] + 10) < 1 and abs(with_cut["yaw"][20] - 15) < 1
    assert abs(without["yaw"][19] + 10) > 3  # blurred across the cut
