"""Crop stage: similarity fit, smoothing, framing, warping, paste-back, crop.parquet, crop_clip.

Landmarks for the real-frame tests come straight from mediapipe's face mesh (mapped to the 68-point
layout here), so these tests do not depend on the landmark stage.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA

from talk3d_core import crop
from talk3d_core.demo import make_demo_clip
from talk3d_core.face import template
from talk3d_core.util.media import file_url, run_ffmpeg

needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "videos").is_dir(), reason=f"reference clips not found in {SHARED_DATA / 'videos'}"
)

# Face-mesh vertex for each of the 68 points (jaw, brows, nose, eyes, outer and inner lips).
MESH_TO_68 = (
    [127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356]
    + [70, 63, 105, 66, 107, 336, 296, 334, 293, 300]
    + [168, 197, 5, 4, 75, 97, 2, 326, 305]
    + [33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380]
    + [61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181]
    + [78, 82, 13, 312, 308, 317, 14, 87]
)


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    err = (a.astype(np.float64) - b.astype(np.float64))[where] ** 2
    return float(10 * np.log10(255.0**2 / err.mean()))


def similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def template_face(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 68, 2) landmarks: a fixed random face shape whose alignment points match the template."""
    shape = rng.uniform(-1, 1, (68, 2)) * 60 + [200, 200]
    shape[36:42] = crop.canonical_template(400)[0] + rng.normal(0, 3, (6, 2))
    shape[36:42] += crop.canonical_template(400)[0] - shape[36:42].mean(axis=0)
    shape[42:48] = crop.canonical_template(400)[1] + rng.normal(0, 3, (6, 2))
    shape[42:48] += crop.canonical_template(400)[1] - shape[42:48].mean(axis=0)
    shape[[30, 48, 54]] = crop.canonical_template(400)[2:]
    return np.repeat(shape[None], n, axis=0)


# ---------------------------------------------------------------------------------------------
# Geometry


def test_alignment_points_pick_eye_centres_nose_and_mouth_corners():
    lm = np.arange(68 * 2, dtype=np.float64).reshape(1, 68, 2)
    points = crop.alignment_points(lm)
    assert points.shape == (1, 5, 2) and len(crop.ALIGN_POINTS) == 5
    np.testing.assert_allclose(points[0, 0], lm[0, 36:42].mean(axis=0))
    np.testing.assert_allclose(points[0, 1], lm[0, 42:48].mean(axis=0))
    np.testing.assert_allclose(points[0, 2:], lm[0, [30, 48, 54]])
    with pytest.raises(ValueError, match=r"\(N, 68, 2\)"):
        crop.alignment_points(np.zeros((3, 5, 2)))


def test_fit_similarity_recovers_exact_transform_without_reflection():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, (5, 2))
    for scale, angle, tx, ty in [(0.5, 12.0, -30.0, 40.0), (2.3, -170.0, 5.0, 0.0), (1.0, 0.0, 0.0, 0.0)]:
        truth = similarity(scale, angle, tx, ty)
        fitted = crop.fit_similarity(src, crop.apply_affine(truth, src))
        np.testing.assert_allclose(fitted, truth, atol=1e-9)
    # A mirrored target is fitted by a proper rotation (positive determinant), never a reflection.
    mirrored = src * [-1, 1]
    fitted = crop.fit_similarity(src, mirrored)
    assert np.linalg.det(fitted[:, :2]) > 0
    # With noise the fit is the least-squares optimum: any small change makes the error worse.
    dst = crop.apply_affine(similarity(0.7, 20, 3, 4), src) + rng.normal(0, 2, src.shape)
    fitted = crop.fit_similarity(src, dst)
    best = np.sum((crop.apply_affine(fitted, src) - dst) ** 2)
    for d in np.eye(4) * 1e-3:
        z = complex(fitted[0, 0] + d[0], fitted[1, 0] + d[1])
        moved = np.array([[z.real, -z.imag, fitted[0, 2] + d[2]], [z.imag, z.real, fitted[1, 2] + d[3]]])
        assert np.sum((crop.apply_affine(moved, src) - dst) ** 2) > best
    with pytest.raises(ValueError, match="coincide"):
        crop.fit_similarity(np.ones((5, 2)), dst)


def test_invert_affine_round_trip():
    affine = similarity(0.37, 33.0, 120.0, -40.0)
    points = np.random.default_rng(1).uniform(-100, 600, (10, 2))
    back = crop.apply_affine(crop.invert_affine(affine), crop.apply_affine(affine, points))
    np.testing.assert_allclose(back, points, atol=1e-9)
    stack = np.stack([affine, similarity(2, -5, 1, 2)])
    np.testing.assert_allclose(crop.invert_affine(crop.invert_affine(stack)), stack, atol=1e-12)


def test_canonical_template_scales_with_size_and_zooms_about_the_centre():
    t256, t512 = crop.canonical_template(256), crop.canonical_template(512)
    # Pixel-centre coordinates: (p + 0.5) / size is the same framing at any size.
    np.testing.assert_allclose((t256 + 0.5) / 256, (t512 + 0.5) / 512)
    frac = (t512 + 0.5) / 512
    assert frac[1, 0] - frac[0, 0] == pytest.approx(template.TEMPLATE_EYE_DISTANCE)
    assert frac[:2, 1] == pytest.approx([template.TEMPLATE_EYE_HEIGHT] * 2)
    assert frac[:, 0].mean() == pytest.approx(0.5)  # left-right symmetric
    zoomed = (crop.canonical_template(512, zoom=1.5) + 0.5) / 512
    np.testing.assert_allclose(zoomed - 0.5, 1.5 * (frac - 0.5))
    with pytest.raises(ValueError, match="zoom"):
        crop.canonical_template(256, zoom=0)


def measured_template(size: int, scale: float, shift: tuple[float, float]) -> template.CropTemplate:
    """A CropTemplate whose alignment points are the canonical ones of a ``size`` image scaled by
    ``scale`` about the centre and shifted by ``shift`` px (the other 63 points anywhere)."""
    lm68 = np.random.default_rng(3).uniform(0.3, 0.7, (68, 2)) * size
    points = (size - 1) / 2 + (crop.canonical_template(size) - (size - 1) / 2) * scale + np.asarray(shift)
    for k, index in enumerate(((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47))):
        lm68[list(index)] += points[k] - lm68[list(index)].mean(axis=0)
    lm68[[30, 48, 54]] = points[2:]
    return template.CropTemplate(name="measured", size=size, lm68=lm68, source={"from": "test"})


def test_template_points_of_a_measured_template_rescale_and_zoom_like_the_canonical_ones():
    measured = measured_template(64, 1.12, (0.5, -1.0))
    np.testing.assert_array_equal(crop.template_points(256), crop.canonical_template(256))
    np.testing.assert_allclose(
        crop.template_points(64, template=measured), crop.alignment_points(measured.lm68[None])[0]
    )
    # Pixel edges scale: 64 -> 512 is x8 about the edges; the shift scales with them.
    expected = 255.5 + (crop.canonical_template(512) - 255.5) * 1.12 + np.array([4.0, -8.0])
    np.testing.assert_allclose(crop.template_points(512, template=measured), expected, atol=1e-9)
    zoomed = crop.template_points(512, 1.5, measured)
    np.testing.assert_allclose(zoomed - 255.5, 1.5 * (expected - 255.5), atol=1e-9)
    with pytest.raises(ValueError, match="zoom"):
        crop.template_points(512, 0, measured)


# ---------------------------------------------------------------------------------------------
# Smoothing and jitter


def test_smoothing_reduces_jitter_of_a_noisy_track():
    """A face drifting smoothly, with 1.5 px landmark noise: smoothing removes most of the shake."""
    rng = np.random.default_rng(2)
    n = 200
    t = np.arange(n) / 25
    motion = [
        similarity(1 + 0.02 * np.sin(0.9 * a), 3 * np.sin(0.7 * a), 20 * np.sin(a), 8 * np.cos(a)) for a in t
    ]
    clean = np.stack([crop.apply_affine(m, f) for m, f in zip(motion, template_face(n, rng), strict=True)])
    noisy = clean + rng.normal(0, 1.5, clean.shape)
    true_affine, _, _ = crop.crop_affines(clean, size=256, sigma_frames=0)
    raw = crop.crop_jitter(crop.crop_affines(noisy, size=256, sigma_frames=0)[0], 256)
    affine, inverse, align = crop.crop_affines(noisy, size=256, sigma_frames=2.0)
    smooth = crop.crop_jitter(affine, 256)
    truth = crop.crop_jitter(true_affine, 256)
    assert smooth["accel_rms_px"] < 0.35 * raw["accel_rms_px"]
    assert smooth["motion_rms_px"] < raw["motion_rms_px"]
    assert truth["accel_rms_px"] < smooth["accel_rms_px"]
    # The smoothed crop window is also closer to the noise-free one.
    eyes = crop.canonical_template(256)[:2]
    raw_inverse = crop.crop_affines(noisy, size=256, sigma_frames=0)[1]
    true_window = crop.apply_affine(crop.invert_affine(true_affine), eyes)
    err_raw = np.abs(crop.apply_affine(raw_inverse, eyes) - true_window)
    err_smooth = np.abs(crop.apply_affine(inverse, eyes) - true_window)
    assert err_smooth.mean() < 0.6 * err_raw.mean()
    assert align.shape == (n, 5, 2) and affine.shape == inverse.shape == (n, 2, 3)


def test_smooth_track_keeps_still_points_and_does_not_cross_cuts():
    still = np.tile([[10.0, 20.0]], (30, 5, 1))
    np.testing.assert_allclose(crop.smooth_track(still, 3.0), still, atol=1e-12)
    np.testing.assert_array_equal(
        crop.smooth_track(still + np.arange(30)[:, None, None], 0), still + np.arange(30)[:, None, None]
    )
    step = np.where(np.arange(40)[:, None, None] < 20, 0.0, 50.0) * np.ones((40, 5, 2))
    np.testing.assert_allclose(crop.smooth_track(step, 2.0, cuts=[20]), step, atol=1e-9)
    assert not np.allclose(crop.smooth_track(step, 2.0), step)
    with pytest.raises(ValueError, match="sigma_frames"):
        crop.smooth_track(still, -1)


def test_find_cuts_finds_jumps_of_the_face():
    rng = np.random.default_rng(3)
    lm = template_face(60, rng) + rng.normal(0, 0.5, (60, 68, 2))
    lm[25:] += [40.0, -15.0]  # a jump of ~0.6 eye distances (eye distance 80 px at 400)
    lm[45:] *= 1.01  # a slow zoom step is no cut
    align = crop.alignment_points(lm)
    np.testing.assert_array_equal(crop.find_cuts(align), [25])
    assert crop.find_cuts(align, None).size == 0
    affine = crop.crop_affines(lm, size=128, sigma_frames=3)[0]
    # The crop of the frames next to the cut is not dragged towards the other shot.
    eyes = crop.apply_affine(affine[[23, 24, 25, 26]], crop.alignment_points(lm[[23, 24, 25, 26]])[:, :2])
    np.testing.assert_allclose(eyes, np.broadcast_to(crop.canonical_template(128)[:2], eyes.shape), atol=0.5)
    jitter = crop.crop_jitter(affine, 128, crop.find_cuts(align))
    assert jitter["n_cuts"] == 1 and jitter["motion_rms_px"] < 1.0


def test_crop_affines_rejects_missing_landmarks():
    lm = template_face(5, np.random.default_rng(0))
    lm[3, 10] = np.nan
    with pytest.raises(ValueError, match=r"frames \[3\]"):
        crop.crop_affines(lm, size=64)


# ---------------------------------------------------------------------------------------------
# Warping and paste-back


def grating(shape: tuple[int, int], affine: np.ndarray, cycles_per_crop_px: float) -> np.ndarray:
    """uint8 image of a cosine along the crop's x axis: 127.5 + 100 cos(2 pi f x_crop)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    x_crop = affine[0, 0] * xx + affine[0, 1] * yy + affine[0, 2]
    img = 127.5 + 100 * np.cos(2 * np.pi * cycles_per_crop_px * x_crop)
    return np.repeat(np.round(img).astype(np.uint8)[..., None], 3, axis=2)


def amplitude(crop_img: np.ndarray, cycles_per_px: float) -> float:
    """Amplitude (relative to 100) of the cosine at ``cycles_per_px`` along x in a crop's interior."""
    values = crop_img[8:-8, 8:-8, 0].astype(np.float64) - 127.5
    x = np.arange(values.shape[1]) + 8
    return float(2 * np.abs((values * np.exp(-2j * np.pi * cycles_per_px * x)).mean()) / 100)


def test_warp_crop_keeps_detail_and_suppresses_aliasing_when_shrinking():
    size = 96
    # Shrink 4x with a 7 degree rotation, centred on a 500 px frame.
    affine = similarity(0.25, 7, 0, 0)
    affine[:, 2] = size / 2 - affine[:, :2] @ [250, 250]
    # Detail below the crop's Nyquist limit survives...
    assert amplitude(crop.warp_crop(grating((500, 500), affine, 0.2), affine, size), 0.2) > 0.85
    # ...and detail above it (0.7 cycles/px would alias to 0.3) is mostly filtered out, unlike plain
    # bilinear sampling.
    fine = grating((500, 500), affine, 0.7)
    plain = cv2.warpAffine(fine, affine, (size, size), flags=cv2.INTER_LINEAR)
    assert amplitude(plain, 0.3) > 0.8
    assert amplitude(crop.warp_crop(fine, affine, size), 0.3) < 0.35


def test_warp_crop_identity_and_border():
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    shift = np.array([[1.0, 0, -5], [0, 1.0, -7]])
    out = crop.warp_crop(frame, shift, 20)
    np.testing.assert_array_equal(out, frame[7:27, 5:25])
    # Outside the frame the border repeats.
    corner = crop.warp_crop(frame, np.array([[1.0, 0, 3], [0, 1.0, 3]]), 6)
    np.testing.assert_array_equal(corner[:3, :3], np.broadcast_to(frame[0, 0], (3, 3, 3)))
    with pytest.raises(ValueError, match="affine"):
        crop.warp_crop(frame, np.zeros((2, 3)), 8)


def test_feathered_alpha_ramps_inside_the_mask():
    alpha = crop.feathered_alpha(64, None, feather_px=8)
    assert alpha.dtype == np.float32 and alpha.shape == (64, 64)
    assert alpha[0].max() < 0.02 and alpha[32, 32] == 1.0 and alpha[:, 9:55][9:55].min() == 1.0
    assert 0 < alpha[32, 4] < 1
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1.0
    alpha = crop.feathered_alpha(64, mask, feather_px=4)
    assert alpha[mask == 0].max() == 0.0 and alpha[24:40, 24:40].min() == 1.0
    assert np.array_equal(crop.feathered_alpha(64, mask, feather_px=0), mask)
    with pytest.raises(ValueError, match="mask shape"):
        crop.feathered_alpha(64, np.ones((32, 32)))


def test_paste_back_blends_only_inside_the_crop():
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    affine = similarity(1.3, 10, -40, -20)
    render = np.full((48, 48, 3), 200, np.uint8)
    out = crop.paste_back(render, frame, affine, feather_px=4)
    inv = crop.invert_affine(affine)
    centre = np.round(crop.apply_affine(inv, np.array([[23.5, 23.5]]))[0]).astype(int)
    assert np.all(out[centre[1], centre[0]] == 200)
    footprint = cv2.fillConvexPoly(
        np.zeros(frame.shape[:2], np.uint8),
        np.round(crop.apply_affine(inv, np.array([[-1, -1], [48, -1], [48, 48], [-1, 48]]))).astype(np.int32),
        1,
    )
    np.testing.assert_array_equal(out[footprint == 0], frame[footprint == 0])
    # An empty mask leaves the frame untouched.
    np.testing.assert_array_equal(crop.paste_back(render, frame, affine, mask=np.zeros((48, 48))), frame)
    with pytest.raises(ValueError, match="uint8"):
        crop.paste_back(render.astype(np.float32), frame, affine)


# ---------------------------------------------------------------------------------------------
# Table


def make_table(n: int = 4) -> crop.CropTable:
    rng = np.random.default_rng(6)
    return crop.CropTable(
        frame=np.arange(n, dtype=np.int32),
        affine=rng.normal(size=(n, 2, 3)),
        inverse=rng.normal(size=(n, 2, 3)),
        lm68=rng.normal(size=(n, 68, 2)),
        align=rng.normal(size=(n, 5, 2)),
        meta={"size": 64, "sigma_frames": 2.0},
    )


def test_crop_table_round_trip(tmp_path):
    table = make_table()
    crop.write_crop_table(table, tmp_path / "crop.parquet")
    back = crop.read_crop_table(tmp_path / "crop.parquet")
    assert back.frame.dtype == np.int32 and back.size == 64 and back.meta == table.meta
    for name in ("affine", "inverse", "lm68", "align"):
        got = getattr(back, name)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, getattr(table, name).astype(np.float32))
    schema = pq.read_schema(tmp_path / "crop.parquet")
    assert schema.names == ["frame", "affine", "inverse", "lm68", "align"]
    assert [f.name for f in tmp_path.iterdir()] == ["crop.parquet"]  # no temporary left behind


def test_crop_table_reader_rejects_bad_files(tmp_path):
    path = tmp_path / "crop.parquet"
    crop.write_crop_table(make_table(), path)
    good = pq.read_table(path)

    def write(table):
        pq.write_table(table, path)
        with pytest.raises(ValueError, match=str(path)) as info:
            crop.read_crop_table(path)
        return str(info.value)

    assert "columns" in write(good.drop_columns(["align"]))
    assert "frame has type" in write(good.set_column(0, "frame", pa.array(np.arange(4, dtype=np.int64))))
    short = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4 * 5, np.float32)), 5)
    assert "6 values" in write(good.set_column(1, "affine", short))
    doubles = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4 * 6)), 6)
    assert "float32" in write(good.set_column(1, "affine", doubles))
    assert "metadata" in write(good.replace_schema_metadata({}))
    backwards = good.set_column(0, "frame", pa.array(np.array([0, 2, 1, 3], np.int32)))
    assert "increasing" in write(backwards.replace_schema_metadata(good.schema.metadata))
    path.write_text("not parquet")
    with pytest.raises(ValueError, match="cannot read"):
        crop.read_crop_table(path)


# ---------------------------------------------------------------------------------------------
# Real frames: the demo clip (made here) and the reference clips


def decode_frames(video: Path, out: Path, fps: float, duration_s: float | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    limit = ["-t", str(duration_s)] if duration_s else []
    run_ffmpeg(
        [
            "-v",
            "error",
            *limit,
            "-i",
            file_url(video),
            "-vf",
            f"fps={fps}",
            "-start_number",
            "0",
            str(out / "%06d.png"),
        ],
        what=str(video),
    )
    return sorted(out.glob("*.png"))


def mediapipe_lm68(paths: list[Path], *, video: bool) -> np.ndarray:
    import mediapipe as mp

    out = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=not video, max_num_faces=1) as mesh:
        for path in paths:
            image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            found = mesh.process(image).multi_face_landmarks
            assert found, f"{path}: no face found"
            height, width = image.shape[:2]
            points = np.array([(p.x * width, p.y * height) for p in found[0].landmark])
            out.append(points[MESH_TO_68])
    return np.stack(out)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    truth = make_demo_clip(root / "demo.mp4", duration_s=2.0)
    paths = decode_frames(root / "demo.mp4", root / "frames", 25)
    return paths, mediapipe_lm68(paths, video=True), truth


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Frames spread over cnn.mp4 and german.mp4 (1 and 2 per second) with their landmarks."""
    root = tmp_path_factory.mktemp("reference")
    clips = {}
    for name, fps in (("cnn", 1), ("german", 2)):
        paths = decode_frames(SHARED_DATA / "videos" / f"{name}.mp4", root / name, fps)
        clips[name] = (paths, mediapipe_lm68(paths, video=False))
    return clips


def assert_whole_centred_head(lm68: np.ndarray, affine: np.ndarray, size: int, what: str) -> None:
    """Chin well inside, room for ~2.1 eye distances of head and hair above the eyes, face centred."""
    pts = crop.apply_affine(affine, lm68) / size
    eyes = crop.alignment_points(pts)[:, :2]
    eye_distance = np.linalg.norm(eyes[:, 1] - eyes[:, 0], axis=-1)
    assert pts[:, 8, 1].max() < 0.9, f"{what}: chin too low"
    assert (eyes[:, :, 1].mean(axis=1) - 2.1 * eye_distance).min() > 0.015, f"{what}: top of the head cut"
    assert pts[:, 0, 0].min() > 0.15 and pts[:, 16, 0].max() < 0.85, f"{what}: jaw near the side"
    assert np.abs(eyes[:, :, 0].mean(axis=1) - 0.5).max() < 0.03, f"{what}: face not centred"


def test_demo_crop_framing_and_true_stability(demo):
    """The demo's head motion is known: smoothing makes the true face motion inside the crop smaller."""
    paths, lm68, truth = demo
    size = 128
    pivot = np.array(truth["pivot_px"])

    def motion(n):  # source frame 0 -> source frame n, the similarity the demo applied
        m = [cv2.getRotationMatrix2D(tuple(pivot), truth["roll_deg"][k], truth["scale"][k]) for k in (0, n)]
        for k, mk in zip((0, n), m, strict=True):
            mk[:, 2] += (truth["tx_px"][k], truth["ty_px"][k])
        full = [np.vstack([mk, [0, 0, 1]]) for mk in m]
        return (full[1] @ np.linalg.inv(full[0]))[:2]

    eyes0 = crop.alignment_points(lm68[:1])[0, :2]
    in_crop = {}
    for sigma in (0.0, 2.0):
        affine = crop.crop_affines(lm68, size=size, sigma_frames=sigma)[0]
        assert_whole_centred_head(lm68, affine, size, f"demo sigma {sigma}")
        eyes = np.stack(
            [crop.apply_affine(affine[n], crop.apply_affine(motion(n), eyes0)) for n in range(len(paths))]
        )
        in_crop[sigma] = np.sqrt(np.mean(np.sum(np.diff(eyes, axis=0) ** 2, axis=-1))) * 512 / size
    assert in_crop[2.0] < 0.5 * in_crop[0.0]


def test_crop_clip_writes_crops_and_table(demo, tmp_path):
    paths, lm68, _ = demo
    paths, lm68 = paths[:12], lm68[:12]
    crops_dir, table_path = tmp_path / "crops", tmp_path / "crop.parquet"
    meta = crop.crop_clip(paths, lm68, crops_dir, table_path, size=64, sigma_frames=1.5)
    assert sorted(p.name for p in crops_dir.iterdir()) == [f"{i:06d}.png" for i in range(12)]
    table = crop.read_crop_table(table_path)
    assert table.meta == json.loads(json.dumps(meta)) and table.size == 64
    assert meta["template"]["name"] == template.CROP_TEMPLATE_NAME and meta["frame_size"] == [512, 512]
    fixed_framing = dataclasses.astuple(template.FaceFraming())
    np.testing.assert_allclose(dataclasses.astuple(table.framing), fixed_framing, atol=1e-4)
    # A table from before the template was recorded: the fixed template at its zoom.
    old = dataclasses.replace(
        table, meta={k: v for k, v in table.meta.items() if k != "template"} | {"zoom": 2.0}
    )
    np.testing.assert_allclose(dataclasses.astuple(old.framing), (0.5, 0.45, 0.4), atol=1e-4)
    jitter = meta["jitter"]
    assert jitter["smoothed"]["accel_rms_px"] < jitter["unsmoothed"]["accel_rms_px"]
    np.testing.assert_array_equal(table.frame, np.arange(12))
    affine, inverse, align = crop.crop_affines(lm68, size=64, sigma_frames=1.5)
    np.testing.assert_allclose(table.affine, affine, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(table.inverse, inverse, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(table.align, align, atol=1e-3)
    np.testing.assert_allclose(table.lm68, crop.apply_affine(affine, lm68), atol=1e-3)
    frame = cv2.cvtColor(cv2.imread(str(paths[5])), cv2.COLOR_BGR2RGB)
    stored = cv2.cvtColor(cv2.imread(str(crops_dir / "000005.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(stored, crop.warp_crop(frame, affine[5], 64))

    # Atomic: a failure (an unreadable frame) leaves the previous outputs as they were, and no temporaries.
    before = (table_path.read_bytes(), sorted(crops_dir.iterdir()))
    broken = [*paths[:3], tmp_path / "missing.png", *paths[4:]]
    with pytest.raises(ValueError, match="missing.png"):
        crop.crop_clip(broken, lm68, crops_dir, table_path, size=32)
    assert (table_path.read_bytes(), sorted(crops_dir.iterdir())) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crop.parquet", "crops"]
    with pytest.raises(ValueError, match=r"landmarks of shape \(11, 68, 2\)"):
        crop.crop_clip(paths, lm68[:11], crops_dir, table_path, size=32)


def test_crop_clip_aligns_to_a_measured_template(demo, tmp_path):
    """With a measured template (a pretrained prior's) the alignment points land on its points, the
    table records its name and source, and the jitter anchors are its eyes."""
    paths, lm68, _ = demo
    paths, lm68 = paths[:6], lm68[:6]
    measured = measured_template(512, 1.12, (0.0, -6.0))
    meta = crop.crop_clip(
        paths, lm68, tmp_path / "crops", tmp_path / "crop.parquet", size=64, sigma_frames=0, template=measured
    )
    table = crop.read_crop_table(tmp_path / "crop.parquet")
    targets = crop.template_points(64, template=measured)
    assert meta["template"] == {
        "name": "measured",
        "source": {"from": "test"},
        "points_px": targets.round(4).tolist(),
    }
    fixed = crop.crop_affines(lm68, size=64, sigma_frames=0)[0]
    # Same residual shape as the fixed fit, 1.12x bigger and 0.75 px (6 px at 512) higher.
    np.testing.assert_allclose(crop.affine_scale(table.affine), 1.12 * crop.affine_scale(fixed), rtol=1e-4)
    found = crop.apply_affine(table.affine, table.align).mean(axis=1)
    np.testing.assert_allclose(found, np.broadcast_to(targets.mean(axis=0), found.shape), atol=1e-3)
    affine = crop.crop_affines(lm68, size=64, sigma_frames=0, template=measured)[0]
    assert meta["jitter"]["smoothed"] == crop.crop_jitter(affine, 64, (), measured)
    # Metrics that cut a face region follow the face: 1.12x the fixed eye distance.
    assert table.framing.eye_distance == pytest.approx(1.12 * template.TEMPLATE_EYE_DISTANCE, rel=1e-3)


@pytest.mark.shared
@needs_data
@pytest.mark.parametrize("name", ["cnn", "german"])
def test_reference_crops_show_whole_centred_heads(reference, name):
    paths, lm68 = reference[name]
    affine = crop.crop_affines(lm68, size=256, sigma_frames=0)[0]
    assert_whole_centred_head(lm68, affine, 256, name)


@pytest.mark.shared
@needs_data
@pytest.mark.parametrize("name", ["cnn", "german"])
@pytest.mark.parametrize("size", [256, 512])
def test_paste_back_of_unmodified_crop_is_faithful(reference, name, size):
    """Pasting an unmodified crop into its frame: PSNR > 35 dB on the face at the crop's resolution."""
    paths, lm68 = reference[name]
    affine = crop.crop_affines(lm68, size=size, sigma_frames=0)[0]
    for i in np.linspace(0, len(paths) - 1, 3).astype(int):
        frame = cv2.cvtColor(cv2.imread(str(paths[i])), cv2.COLOR_BGR2RGB)
        original = crop.warp_crop(frame, affine[i], size)
        pasted = crop.paste_back(original, frame, affine[i])
        face = cv2.fillConvexPoly(
            np.zeros((size, size), np.uint8),
            cv2.convexHull(crop.apply_affine(affine[i], lm68[i]).astype(np.float32)).astype(np.int32),
            1,
        ).astype(bool)
        assert psnr(crop.warp_crop(pasted, affine[i], size), original, face) > 35, f"{paths[i]}"
