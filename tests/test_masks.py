"""Region masks (talk3d_core.masks) and the BiSeNet face parser behind the ``bisenet`` backend.

Unit tests draw a cartoon face with known regions and landmarks; integration tests run dlib's 68-point
predictor on frames of the demo clip and of ../shared/data/videos/german.mp4 (skipped when absent).
The BiSeNet tests use randomly initialised weights: they check plumbing (checkpoint layout, strict
loading, label mapping, the clip writer), not parsing quality.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT, SHARED_DATA
from scipy import ndimage

from talk3d_core.face import bisenet
from talk3d_core.masks import (
    LABELS,
    PALETTE,
    FaceGeometry,
    colorize,
    masks_clip,
    mouth_mask,
    read_mask,
    region_masks,
)
from talk3d_core.util.weights import WeightsError

GERMAN = SHARED_DATA / "videos" / "german.mp4"

BACKGROUND, SKIN, LIPS, INTERIOR, EYES, HAIR, TORSO = range(7)


# ------------------------------------------------------------------------------------------ synthetic face


def _fill(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(pts) * 16).astype(np.int32)], 1, shift=4)
    return mask.astype(bool)


def _ellipse(centre: tuple[float, float], axes: tuple[float, float], n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([centre[0] + axes[0] * np.cos(t), centre[1] + axes[1] * np.sin(t)], 1)


def synthetic_face(gap: float = 8.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A 128 px cartoon portrait: blue background, brown hair, skin face and neck, dark suit, white eyes,
    red lips around a dark mouth opening of ``gap`` px (with teeth when wide, a seam line when 0).

    Returns the RGB crop, its 68 landmarks (iBUG layout, crop px) and the drawn region masks.
    """
    shape = (128, 128)
    img = np.zeros((*shape, 3), np.uint8)
    img[:] = (70, 110, 160)
    drawn: dict[str, np.ndarray] = {}

    def paint(name: str, pts: np.ndarray, colour: tuple[int, int, int]) -> None:
        drawn[name] = _fill(shape, pts)
        img[drawn[name]] = colour

    paint("hair", _ellipse((64, 48), (36, 40)), (80, 55, 35))
    paint(
        "torso", np.array([(6, 128), (16, 108), (48, 101), (80, 101), (112, 108), (122, 128)]), (45, 45, 75)
    )
    paint("neck", np.array([(52, 88), (76, 88), (77, 106), (51, 106)]), (215, 165, 135))
    paint("face", _ellipse((64, 62), (30, 38)), (225, 175, 145))

    lm = np.zeros((68, 2))
    theta = np.deg2rad(190 - 12.5 * np.arange(17))  # jaw: from beside the left eye under the chin
    lm[0:17] = np.stack([64 + 30 * np.cos(theta), 62 + 38 * np.sin(theta)], 1)
    t = np.linspace(0, 1, 5)
    lm[17:22] = np.stack([40 + 18 * t, 44 - 3 * np.sin(np.pi * t)], 1)
    lm[22:27] = np.stack([70 + 18 * t, 44 - 3 * np.sin(np.pi * t)], 1)
    lm[27:31] = np.stack([np.full(4, 64.0), np.linspace(50, 68, 4)], 1)
    lm[31:36] = [(58, 70), (61, 71), (64, 71.5), (67, 71), (70, 70)]
    lm[36:42] = [(42, 52), (46, 49.5), (52, 49.5), (56, 52), (52, 54.5), (46, 54.5)]
    lm[42:48] = [(72, 52), (76, 49.5), (82, 49.5), (86, 52), (82, 54.5), (76, 54.5)]
    h = gap / 2
    lm[48:60] = [
        (52, 82), (55.5, 78.8 - h), (59.5, 77.8 - h), (64, 78.4 - h), (68.5, 77.8 - h), (72.5, 78.8 - h),
        (76, 82), (72.5, 86 + h), (68.5, 87 + h), (64, 87.3 + h), (59.5, 87 + h), (55.5, 86 + h),
    ]  # fmt: skip
    lm[60:68] = [
        (53.5, 82),
        (59, 82 - h),
        (64, 82 - h),
        (69, 82 - h),
        (74.5, 82),
        (69, 82 + h),
        (64, 82 + h),
        (59, 82 + h),
    ]

    for a, b in ((17, 22), (22, 27)):
        cv2.polylines(img, [np.round(lm[a:b] * 16).astype(np.int32)], False, (70, 45, 30), 2, shift=4)
    for a, b in ((36, 42), (42, 48)):
        paint(f"eye{a}", lm[a:b], (240, 240, 235))
        centre = np.round(lm[a:b].mean(0) * 16).astype(int)
        cv2.circle(img, (int(centre[0]), int(centre[1])), 40, (50, 35, 25), -1, shift=4)
    paint("lips", lm[48:60], (185, 75, 85))
    if gap > 0:
        paint("interior", lm[60:68], (35, 12, 18))
        if gap >= 6:
            teeth = drawn["interior"].copy()
            teeth[int(round(82 - h + 0.35 * gap)) :] = False
            img[teeth] = (235, 232, 222)
            drawn["teeth"] = teeth
    else:
        drawn["interior"] = np.zeros(shape, bool)
        seam = np.round(lm[[60, 64]] * 16).astype(int)
        cv2.line(
            img, tuple(int(v) for v in seam[0]), tuple(int(v) for v in seam[1]), (120, 50, 55), 1, shift=4
        )
    drawn["lips"] &= ~drawn["interior"]

    rng = np.random.default_rng(seed)
    noisy = np.clip(img.astype(np.float32) + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(noisy, (3, 3), 0.6), lm.astype(np.float32), drawn


def _inside(mask: np.ndarray, erode: int = 2) -> np.ndarray:
    """The mask shrunk by ``erode`` px: pixels whose label is unambiguous despite blur."""
    return ndimage.binary_erosion(mask, iterations=erode)


def _share(labels: np.ndarray, where: np.ndarray, value: int) -> float:
    return float((labels[where] == value).mean())


def _outer_polygon_dilated(shape: tuple[int, int], lm: np.ndarray, px: int = 2) -> np.ndarray:
    """The outer lip polygon (48-59, straight edges) dilated by ``px``: the tightness bound of the lips."""
    return ndimage.binary_dilation(_fill(shape, lm[48:60]), iterations=px)


# ------------------------------------------------------------------------------------------ unit tests


def test_labels_palette_and_helpers() -> None:
    assert LABELS == {
        "background": 0, "skin": 1, "lips": 2, "mouth_interior": 3, "eyes": 4, "hair": 5, "neck_torso": 6,
    }  # fmt: skip
    labels = np.arange(7, dtype=np.uint8).reshape(1, 7).repeat(3, axis=0)
    rgb = colorize(labels)
    assert rgb.shape == (3, 7, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[0], PALETTE)
    assert len({tuple(c) for c in PALETTE}) == len(LABELS)  # every label has its own colour
    assert np.array_equal(mouth_mask(labels), (labels == LIPS) | (labels == INTERIOR))
    with pytest.raises(ValueError, match="not a label image"):
        colorize(np.full((2, 2), 7, np.uint8))
    with pytest.raises(ValueError, match="not a label image"):
        colorize(np.zeros((2, 2, 3), np.uint8))


@pytest.mark.parametrize("gap", [8.0, 4.0])
def test_synthetic_face_regions(gap: float) -> None:
    crop, lm, drawn = synthetic_face(gap)
    labels = region_masks(crop, lm)
    assert labels.shape == (128, 128) and labels.dtype == np.uint8

    features = drawn["lips"] | drawn["interior"] | drawn["eye36"] | drawn["eye42"]
    skin_only = drawn["face"] & ~ndimage.binary_dilation(features, iterations=2)
    person = drawn["hair"] | drawn["face"] | drawn["torso"] | drawn["neck"]
    assert _share(labels, _inside(skin_only), SKIN) > 0.97
    assert (
        _share(labels, _inside(drawn["hair"] & ~drawn["face"] & ~drawn["torso"] & ~drawn["neck"]), HAIR)
        > 0.95
    )
    assert _share(labels, _inside(~person), BACKGROUND) > 0.98
    assert _share(labels, _inside(drawn["torso"]), TORSO) > 0.95
    assert _share(labels, _inside(drawn["neck"] & ~drawn["face"]), TORSO) > 0.95
    assert _share(labels, _inside(drawn["eye36"] | drawn["eye42"], 1), EYES) > 0.95
    assert _share(labels, _inside(drawn["lips"], 1), LIPS) > 0.9
    assert _share(labels, _inside(drawn["interior"], 1), INTERIOR) > 0.9
    if "teeth" in drawn:
        assert _share(labels, drawn["teeth"], INTERIOR) > 0.9  # teeth are mouth interior
    # Brows are skin (drawn on the face).
    assert labels[43, 49] == SKIN and labels[43, 79] == SKIN


def test_closed_mouth_has_no_interior_and_tight_lips() -> None:
    crop, lm, drawn = synthetic_face(gap=0.0)
    labels = region_masks(crop, lm)
    assert (labels == INTERIOR).sum() <= 0.02 * drawn["lips"].sum()
    assert _share(labels, _inside(drawn["lips"], 1), LIPS) > 0.95
    assert not (mouth_mask(labels) & ~_outer_polygon_dilated(labels.shape, lm)).any()


def test_interior_grows_with_the_opening_and_lips_stay_tight() -> None:
    areas = []
    for gap in (0.0, 3.0, 6.0, 10.0):
        crop, lm, drawn = synthetic_face(gap)
        labels = region_masks(crop, lm)
        areas.append(int((labels == INTERIOR).sum()))
        assert not (mouth_mask(labels) & ~_outer_polygon_dilated(labels.shape, lm)).any(), gap
    assert areas[0] == 0 and all(b > a for a, b in zip(areas, areas[1:], strict=False)), areas


def test_rotated_face() -> None:
    crop, lm, drawn = synthetic_face(8.0)
    rot = cv2.getRotationMatrix2D((64, 64), 25, 1.0)
    crop_r = cv2.warpAffine(crop, rot, (128, 128), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lm_r = lm @ rot[:, :2].T + rot[:, 2]
    labels = region_masks(crop_r, lm_r)
    warp = {
        k: cv2.warpAffine(v.astype(np.uint8), rot, (128, 128), flags=cv2.INTER_NEAREST) > 0
        for k, v in drawn.items()
    }
    assert _share(labels, _inside(warp["interior"], 1), INTERIOR) > 0.9
    assert _share(labels, _inside(warp["eye36"] | warp["eye42"], 1), EYES) > 0.9
    skin_only = warp["face"] & ~ndimage.binary_dilation(
        warp["lips"] | warp["interior"] | warp["eye36"] | warp["eye42"], iterations=2
    )
    assert _share(labels, _inside(skin_only), SKIN) > 0.95
    assert _share(labels, _inside(warp["torso"]), TORSO) > 0.9


def test_bad_inputs_are_clear_errors() -> None:
    crop, lm, _ = synthetic_face()
    with pytest.raises(ValueError, match="square"):
        region_masks(crop[:, :100], lm)
    with pytest.raises(ValueError, match="uint8"):
        region_masks(crop.astype(np.float32), lm)
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        region_masks(crop, lm[:60])
    bad = lm.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        region_masks(crop, bad)
    collapsed = lm.copy()
    collapsed[36:48] = collapsed[36]
    with pytest.raises(ValueError, match="eye centres coincide"):
        region_masks(crop, collapsed)
    with pytest.raises(ValueError, match="unknown mask backend 'mediapipe'"):
        region_masks(crop, lm, backend="mediapipe")
    with pytest.raises(ValueError, match="needs a loaded model"):
        region_masks(crop, lm, backend="bisenet")


def _write_crops(folder: Path, crops: list[np.ndarray]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, crop in enumerate(crops):
        path = folder / f"{i:06d}.png"
        assert cv2.imwrite(str(path), np.ascontiguousarray(crop[..., ::-1]))
        paths.append(path)
    return paths


def test_masks_clip_writes_one_label_png_per_crop(tmp_path: Path) -> None:
    faces = [synthetic_face(gap, seed=i) for i, gap in enumerate((0.0, 5.0, 9.0))]
    paths = _write_crops(tmp_path / "crops", [f[0] for f in faces])
    lms = np.stack([f[1] for f in faces])
    summary = masks_clip(paths, lms, tmp_path / "masks", threads=2)
    assert summary["backend"] == "landmarks" and summary["n_frames"] == 3 and summary["size"] == 128
    assert summary["frames_per_s"] > 0
    assert set(summary["label_fractions"]) == set(LABELS)
    assert abs(sum(summary["label_fractions"].values()) - 1) < 1e-3
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [
        "000000.png",
        "000001.png",
        "000002.png",
    ]
    for i, path in enumerate(paths):
        stored = read_mask(tmp_path / "masks" / f"{i:06d}.png")
        crop = cv2.imread(str(path))[..., ::-1]
        assert np.array_equal(stored, region_masks(np.ascontiguousarray(crop), lms[i]))
    # One worker gives the same images.
    masks_clip(paths, lms, tmp_path / "masks1", threads=1)
    for i in range(3):
        assert np.array_equal(
            read_mask(tmp_path / "masks1" / f"{i:06d}.png"), read_mask(tmp_path / "masks" / f"{i:06d}.png")
        )


def test_masks_clip_errors_name_the_problem_and_leave_no_folder(tmp_path: Path) -> None:
    crop, lm, _ = synthetic_face()
    paths = _write_crops(tmp_path / "crops", [crop, crop])
    lms = np.stack([lm, lm])
    with pytest.raises(ValueError, match="2 crops but 1 landmark sets"):
        masks_clip(paths, lms[:1], tmp_path / "masks")
    with pytest.raises(ValueError, match=r"\(N, 68, 2\)"):
        masks_clip(paths, lms[:, :10], tmp_path / "masks")
    with pytest.raises(ValueError, match="unknown mask backend"):
        masks_clip(paths, lms, tmp_path / "masks", backend="facer")
    paths[1].write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"000001\.png: cannot read image"):
        masks_clip(paths, lms, tmp_path / "masks")
    assert not (tmp_path / "masks").exists()
    assert cv2.imwrite(str(paths[1]), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"000001\.png: crop is 64x64, expected 128x128"):
        masks_clip(paths, lms, tmp_path / "masks")
    assert not (tmp_path / "masks").exists()


def test_read_mask_rejects_non_label_images(tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.png"
    cv2.imwrite(str(rgb), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="rgb.png: mask must be a single-channel"):
        read_mask(rgb)
    out_of_range = tmp_path / "nine.png"
    cv2.imwrite(str(out_of_range), np.full((8, 8), 9, np.uint8))
    with pytest.raises(ValueError, match="nine.png: label value 9"):
        read_mask(out_of_range)
    with pytest.raises(ValueError, match="cannot read"):
        read_mask(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------------ real frames


def _dlib_landmarks():
    dlib = pytest.importorskip("dlib")
    models = pytest.importorskip("face_recognition_models")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(models.pose_predictor_model_location())

    def detect(rgb: np.ndarray) -> np.ndarray:
        faces = detector(rgb, 0)
        assert faces, "dlib found no face"
        box = max(faces, key=lambda r: r.area())
        return np.array([[p.x, p.y] for p in predictor(rgb, box).parts()], np.float64)

    return detect


def _head_crop(frame: np.ndarray, lm: np.ndarray, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A square crop around the head with some shoulders (roughly EG3D framing), and the landmarks in it."""
    eye_r, eye_l, mouth = lm[36:42].mean(0), lm[42:48].mean(0), 0.5 * (lm[48] + lm[54])
    eyes = 0.5 * (eye_r + eye_l)
    across, down = eye_l - eye_r, mouth - eyes
    x = across - np.array([-down[1], down[0]])
    x /= np.hypot(*x)
    y = np.array([-x[1], x[0]])
    side = 2.7 * max(2.0 * np.hypot(*across), 1.8 * np.hypot(*down))
    centre = eyes + 0.35 * down
    src = np.float32([centre - (x + y) * side / 2, centre + (x - y) * side / 2, centre + (y - x) * side / 2])
    affine = cv2.getAffineTransform(src, np.float32([[0, 0], [size, 0], [0, size]]))
    crop = cv2.warpAffine(frame, affine, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    return crop, lm @ affine[:, :2].T + affine[:, 2]


def _frames(video: Path, folder: Path) -> list[Path]:
    from talk3d_core.ingest import ingest_video

    ingest_video(
        video, folder / "frames", folder / "audio.wav", folder / "meta.json", fps=25, min_duration_s=0.5
    )
    return sorted((folder / "frames").glob("*.png"))


@pytest.fixture(scope="module")
def german_crops(tmp_path_factory) -> list[tuple[np.ndarray, np.ndarray]]:
    detect = _dlib_landmarks()
    frames = _frames(GERMAN, tmp_path_factory.mktemp("german"))
    picked = frames[:: max(1, len(frames) // 6)][:6]
    out = []
    for path in picked:
        rgb = np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])
        out.append(_head_crop(rgb, detect(rgb)))
    return out


@pytest.mark.shared
@pytest.mark.skipif(not GERMAN.is_file(), reason=f"reference clip {GERMAN} is absent")
def test_german_frames_look_right(german_crops) -> None:
    for crop, lm in german_crops:
        labels = region_masks(crop, lm)
        shape = labels.shape
        hull = _fill(shape, cv2.convexHull(lm.astype(np.float32))[:, 0])
        face_parts = np.isin(labels, [SKIN, LIPS, INTERIOR, EYES])
        assert _share(labels, hull, SKIN) > 0.75  # skin is the majority inside the face hull
        assert face_parts[_inside(hull, 3)].mean() > 0.98  # and nothing else gets in
        for corner in (labels[:20, :20], labels[:20, -20:]):
            assert (corner == BACKGROUND).mean() > 0.9  # background dominates the top corners
        # Lips sit on the mouth, inside the outer lip polygon (+2 px), and cover most of it.
        outer = _fill(shape, lm[48:60])
        mouth = mouth_mask(labels)
        assert not (mouth & ~_outer_polygon_dilated(shape, lm)).any()
        assert mouth[outer].mean() > 0.9 and (labels == LIPS).sum() > 0.5 * outer.sum()
        # Hair above the forehead (not background), torso at the bottom centre.
        geo = FaceGeometry(lm)
        above = geo.forehead_top + geo.up * 0.15 * geo.face_width
        x, y = int(round(above[0])), int(round(above[1]))
        assert (labels[y - 3 : y + 4, x - 10 : x + 11] == HAIR).mean() > 0.8
        assert (labels[-20:, 96:160] == TORSO).mean() > 0.95
        # Shoulders (the suit at the lower sides) are torso too.
        assert (labels[-12:, :40] == TORSO).mean() > 0.8 and (labels[-12:, -40:] == TORSO).mean() > 0.8


def test_demo_clip_mouth_interior_follows_the_opening(tmp_path: Path) -> None:
    from talk3d_core.demo import make_demo_clip

    detect = _dlib_landmarks()
    truth = make_demo_clip(tmp_path / "demo.mp4", duration_s=2.0, size=256)
    frames = _frames(tmp_path / "demo.mp4", tmp_path)
    opening = np.array(truth["mouth_open"])
    interior, lip_area = [], []
    for path in frames:
        rgb = np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])
        lm = detect(rgb)
        labels = region_masks(rgb, lm)
        assert not (mouth_mask(labels) & ~_outer_polygon_dilated(labels.shape, lm)).any()
        interior.append((labels == INTERIOR).sum())
        lip_area.append((labels == LIPS).sum())
    interior = np.array(interior, float)
    assert np.corrcoef(interior, opening)[0, 1] > 0.8
    assert interior[opening > 0.6].mean() > 1.5 * interior[opening < 0.05].mean()
    assert min(lip_area) > 0


# ------------------------------------------------------------------------------------------ BiSeNet


def _random_bisenet(seed: int = 0) -> bisenet.BiSeNet:
    torch.manual_seed(seed)
    model = bisenet.BiSeNet()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a lost buffer would show
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model.eval()


def test_bisenet_layout_matches_the_face_parsing_checkpoint() -> None:
    """Names and shapes of the 79999_iter.pth layout (zllrunning/face-parsing.PyTorch model.py/resnet.py)."""
    state = bisenet.BiSeNet().state_dict()
    expected = {
        "cp.resnet.conv1.weight": (64, 3, 7, 7),
        "cp.resnet.layer1.1.conv2.weight": (64, 64, 3, 3),
        "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "cp.resnet.layer2.0.downsample.1.running_var": (128,),
        "cp.resnet.layer4.1.bn2.weight": (512,),
        "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
        "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
        "cp.arm32.bn_atten.running_mean": (128,),
        "cp.conv_head32.conv.weight": (128, 128, 3, 3),
        "cp.conv_head16.bn.bias": (128,),
        "cp.conv_avg.conv.weight": (128, 512, 1, 1),
        "ffm.convblk.conv.weight": (256, 256, 1, 1),
        "ffm.conv1.weight": (64, 256, 1, 1),
        "ffm.conv2.weight": (256, 64, 1, 1),
        "conv_out.conv.conv.weight": (256, 256, 3, 3),
        "conv_out.conv_out.weight": (19, 256, 1, 1),
        "conv_out16.conv.conv.weight": (64, 128, 3, 3),
        "conv_out32.conv_out.weight": (19, 64, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("cp.resnet.layer1.0.downsample") for k in state)  # 64 -> 64: identity
    assert not any(".fc." in k or k.startswith("sp.") for k in state)  # no classifier, no separate sp
    assert sum(v.numel() for k, v in state.items() if "num_batches_tracked" not in k) == 13_313_088
    assert len(bisenet.CELEBAMASK_CLASSES) == 19


def test_bisenet_checkpoint_round_trip_consumes_every_key(tmp_path: Path) -> None:
    model = _random_bisenet()
    path = tmp_path / "79999_iter.pth"
    torch.save(model.state_dict(), path)
    loaded = bisenet.load_bisenet(path)
    saved = torch.load(path, weights_only=True)
    assert set(loaded.state_dict()) == set(saved)  # every checkpoint key has a home and vice versa
    for key, value in saved.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
        assert loaded(x).shape == (1, 19, 64, 64)


def test_bisenet_checkpoint_mismatches_fail_loudly(tmp_path: Path) -> None:
    state = _random_bisenet().state_dict()

    def save(name: str, obj) -> Path:
        path = tmp_path / name
        torch.save(obj, path)
        return path

    extra = save("extra.pth", {**state, "sp.conv1.conv.weight": torch.zeros(64, 3, 7, 7)})
    with pytest.raises(ValueError, match=r"extra\.pth: .*1 unexpected key\(s\): sp\.conv1\.conv\.weight"):
        bisenet.load_bisenet(extra)
    missing = save("missing.pth", {k: v for k, v in state.items() if k != "ffm.conv1.weight"})
    with pytest.raises(ValueError, match=r"missing\.pth: .*1 missing key\(s\): ffm\.conv1\.weight"):
        bisenet.load_bisenet(missing)
    wrong = save("wrong.pth", {**state, "conv_out.conv_out.weight": torch.zeros(7, 256, 1, 1)})
    with pytest.raises(
        ValueError,
        match=r"wrong\.pth: .*conv_out\.conv_out\.weight \(7, 256, 1, 1\) \(expected \(19, 256, 1, 1\)\)",
    ):
        bisenet.load_bisenet(wrong)
    not_dict = save("tensor.pth", torch.zeros(3))
    with pytest.raises(ValueError, match=r"tensor\.pth: expected a state dict"):
        bisenet.load_bisenet(not_dict)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth: cannot load BiSeNet weights"):
        bisenet.load_bisenet(garbage)
    with pytest.raises(ValueError, match="not found"):
        bisenet.load_bisenet(tmp_path / "absent.pth")


def test_bisenet_loads_old_counters_and_dataparallel_prefix(tmp_path: Path) -> None:
    model = _random_bisenet(1)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    loaded = bisenet.load_bisenet(path)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_celebamask_classes_map_to_our_labels() -> None:
    table = dict(zip(bisenet.CELEBAMASK_CLASSES, bisenet.CELEBAMASK_TO_LABEL.tolist(), strict=True))
    assert table["background"] == LABELS["background"]
    assert {table[c] for c in ("skin", "l_brow", "r_brow", "nose", "l_ear", "r_ear")} == {LABELS["skin"]}
    assert table["u_lip"] == table["l_lip"] == LABELS["lips"]
    assert table["mouth"] == LABELS["mouth_interior"]
    assert table["l_eye"] == table["r_eye"] == LABELS["eyes"]
    assert table["hair"] == table["hat"] == LABELS["hair"]
    assert {table[c] for c in ("neck", "neck_l", "cloth")} == {LABELS["neck_torso"]}
    assert set(table.values()) == set(LABELS.values())


def _weights_dir_with_bisenet(tmp_path: Path, model: bisenet.BiSeNet | None) -> tuple[Path, Path]:
    weights = tmp_path / "weights"
    dest = weights / bisenet.WEIGHTS_DEST
    dest.parent.mkdir(parents=True)
    digest = "0" * 64
    if model is not None:
        torch.save(model.state_dict(), dest)
        digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    entry = {
        "name": bisenet.WEIGHTS_NAME,
        "url": "https://example.org/79999_iter.pth",
        "sha256": digest,
        "license": "test weights (random)",
        "dest": bisenet.WEIGHTS_DEST,
    }
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"weights": [entry]}))
    return weights, manifest


def test_bisenet_backend_plumbing(tmp_path: Path) -> None:
    """Random weights: checks the loading path, input handling and label mapping, not parsing quality."""
    weights, manifest = _weights_dir_with_bisenet(tmp_path, _random_bisenet(2))
    faces = [synthetic_face(gap) for gap in (0.0, 8.0)]
    paths = _write_crops(tmp_path / "crops", [f[0] for f in faces])
    summary = masks_clip(
        paths,
        np.stack([f[1] for f in faces]),
        tmp_path / "masks",
        backend="bisenet",
        weights_dir=weights,
        manifest=manifest,
    )
    assert summary["backend"] == "bisenet" and summary["n_frames"] == 2
    model = bisenet.load_bisenet(weights / bisenet.WEIGHTS_DEST)
    for i, (_crop, lm, _) in enumerate(faces):
        stored = read_mask(tmp_path / "masks" / f"{i:06d}.png")
        assert stored.shape == (128, 128)
        assert set(np.unique(stored)) <= set(LABELS.values())
        classes = bisenet.parse_classes(model, cv2.imread(str(paths[i]))[..., ::-1].copy())
        assert np.array_equal(stored, bisenet.CELEBAMASK_TO_LABEL[classes])
        assert np.array_equal(
            stored,
            region_masks(cv2.imread(str(paths[i]))[..., ::-1].copy(), lm, backend="bisenet", model=model),
        )


def test_bisenet_missing_weights_name_the_fetch_command(tmp_path: Path) -> None:
    weights, manifest = _weights_dir_with_bisenet(tmp_path, None)
    crop, lm, _ = synthetic_face()
    paths = _write_crops(tmp_path / "crops", [crop])
    with pytest.raises(
        WeightsError, match=r"(?s)face_parsing_bisenet.*missing.*snakemake --cores 1 .*79999_iter\.pth"
    ):
        masks_clip(
            paths, lm[None], tmp_path / "masks", backend="bisenet", weights_dir=weights, manifest=manifest
        )
    # The shipped manifest: either no entry yet or no file; both say which weights are needed.
    with pytest.raises(WeightsError, match="face_parsing_bisenet"):
        masks_clip(
            paths,
            lm[None],
            tmp_path / "masks",
            backend="bisenet",
            weights_dir=REPO_ROOT / "resources" / "weights",
        )
    assert not (tmp_path / "masks").exists()
