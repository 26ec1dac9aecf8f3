"""Render stage (talk3d_core.render): browser-ready mp4 writing, atomicity, camera paths and view
names, driving conditions, paste-back, the depth video and the lossless renders the evaluate stage
scores, on a tiny untrained talking head."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import ORBIT, REPO_ROOT, decode_video

from talk3d_core.camera import eg3d_camera, view_head_angles
from talk3d_core.crop import CropTable, read_crop_table, write_crop_table
from talk3d_core.model.deltaplane import DeltaplaneConfig
from talk3d_core.model.eg3d import GeneratorConfig, TriPlaneGenerator
from talk3d_core.model.personalized import training_record
from talk3d_core.model.subject import FrameConditions, SubjectData
from talk3d_core.model.talking_head import TalkingHead
from talk3d_core.render import (
    PasteBack,
    camera_path,
    drive_clip,
    drive_conditions,
    fixed_cameras,
    novel_view_cameras,
    parse_view,
    ping_pong,
    render_batches,
    render_target,
    render_video,
    scale_affine,
    tracked_cameras,
    view_cameras,
    view_name,
)
from talk3d_core.report.depth import depth_to_uint8
from talk3d_core.util.images import to_uint8
from talk3d_core.util.media import probe, read_video

FPS = 25.0
# Smaller than the CPU preset: 16^2 neural rendering, 32^2 output, 8 + 8 samples per ray.
GEN = GeneratorConfig.cpu(
    z_dim=16, w_dim=16, plane_resolution=16, plane_channels=4, channel_base=256, channel_max=16,
    decoder_hidden=8, decoder_output_dim=4, neural_rendering_resolution=16, depth_resolution=8,
    depth_resolution_importance=8, image_resolution=32, sr_channels=(8, 8), empty_outside_box=True,
)  # fmt: skip
NET = DeltaplaneConfig.cpu(
    widths=(4, 8, 8), heads=1, head_dim=8, token_dim=8, attention_blocks=1, audio_frames=3
)
AUDIO_WINDOW, AUDIO_DIM = 2, 4


@pytest.fixture(scope="module")
def head() -> TalkingHead:
    torch.manual_seed(0)
    generator = TriPlaneGenerator(GEN).eval()
    with torch.no_grad():
        w = generator.mapping(torch.randn(1, GEN.z_dim), torch.zeros(1, 25))
        planes = generator.planes(w, noise_mode="const")
    training = training_record("scratch", "black", ORBIT)  # the prior's camera geometry
    return TalkingHead(
        generator, planes, w, NET, audio_dim=AUDIO_DIM, audio_window=AUDIO_WINDOW, training=training
    )


def conditions(n: int, seed: int = 0) -> FrameConditions:
    rng = np.random.default_rng(seed)
    return FrameConditions(
        audio=rng.normal(size=(n, AUDIO_WINDOW, AUDIO_DIM)).astype(np.float32),
        eye=rng.uniform(0, 2, n).astype(np.float32),
        rotation=rng.normal(0, 5, (n, 3)).astype(np.float32),
        ldm=rng.uniform(-1, 1, (n, 6)).astype(np.float32),
    )


# ---------------------------------------------------------------------------------- camera paths


def test_view_names_round_trip_and_bad_names_fail():
    import yaml

    grid = yaml.safe_load((REPO_ROOT / "config/config.yaml").read_text())["render"]
    views = [view_name(yaw, pitch) for yaw in grid["views"]["yaw"] for pitch in grid["views"]["pitch"]]
    assert views == [f"{yaw}_{pitch}" for yaw in grid["views"]["yaw"] for pitch in grid["views"]["pitch"]]
    assert len(views) == len(set(views)) == 16 and "-30_20" in views and "15_-10" in views
    for name in views + ["0_0", "7.5_-2.5"]:
        assert view_name(*parse_view(name)) == name
    assert parse_view("-30_20") == (-30.0, 20.0)
    for bad in ["", "abc", "30", "30_", "_20", "30_20_1", "30x20", "30_20.mp4"]:
        with pytest.raises(ValueError, match="yaw"):
            parse_view(bad)
    for bad, canonical in [("+15_10", "15_10"), ("015_10", "15_10"), ("15.0_10", "15_10"), ("-0_0", "0_0")]:
        with pytest.raises(ValueError, match=f"'{canonical}'"):
            parse_view(bad)
    with pytest.raises(ValueError, match="yaw must be within"):
        parse_view("120_0")
    with pytest.raises(ValueError, match="pitch must be within"):
        parse_view("0_89")


def test_camera_paths():
    fixed = fixed_cameras(4, **ORBIT)
    assert fixed.shape == (4, 25) and fixed.dtype == np.float32
    np.testing.assert_allclose(fixed[0, :16].reshape(4, 4)[:3, 3], [0, 0.05, 2.7], atol=0.01)
    view = view_cameras(30, 20, 5, **ORBIT)
    assert (view == view[0]).all()  # constant over the clip
    expected = eg3d_camera([30.0], [20.0], [0.0], radius=2.7, pivot=np.array(ORBIT["pivot"]), focal=3.6)
    np.testing.assert_allclose(view[0], expected[0], atol=1e-6)
    origin = view[0, :16].reshape(4, 4)[:3, 3]
    assert origin[0] < 0 and origin[1] < 0  # yaw > 0: on the subject's right; pitch > 0: from below
    np.testing.assert_array_equal(camera_path("30_20", 5, **ORBIT), view)
    np.testing.assert_array_equal(camera_path("fixed", 4, **ORBIT), fixed)
    tracked = eg3d_camera(np.arange(3.0), np.zeros(3), np.zeros(3), focal=3.6)
    np.testing.assert_array_equal(
        camera_path("tracked", 3, tracked=tracked, **ORBIT), tracked.astype(np.float32)
    )
    with pytest.raises(ValueError, match="3 cameras for 4 frames"):
        camera_path("tracked", 4, tracked=tracked, **ORBIT)
    with pytest.raises(ValueError, match="unknown camera path 'orbit'"):
        camera_path("orbit", 4, **ORBIT)
    with pytest.raises(ValueError, match=r"\(N>0, 25\)"):
        tracked_cameras(np.zeros((3, 16)))
    # Talk3D's LookAt offsets: the same name is another camera, the one at the converted head angles.
    lookat = camera_path("30_20", 2, view_convention="lookat", **ORBIT)
    yaw, pitch = view_head_angles(30, 20, "lookat", radius=ORBIT["radius"], pivot=ORBIT["pivot"])
    np.testing.assert_array_equal(lookat, view_cameras(yaw, pitch, 2, **ORBIT))
    assert yaw < -30 and 14 < pitch < 16
    with pytest.raises(ValueError, match="view convention must be one of"):
        view_cameras(30, 20, 1, convention="sampler", **ORBIT)


# ---------------------------------------------------------------------------- driving conditions


def test_ping_pong_never_jumps():
    order = ping_pong([2, 3, 4], 9)
    assert order.tolist() == [2, 3, 4, 3, 2, 3, 4, 3, 2]
    assert ping_pong([7], 3).tolist() == [7, 7, 7]
    long = ping_pong(np.arange(10, 20), 100)
    assert np.abs(np.diff(long)).max() == 1 and long.min() == 10 and long.max() == 19


def test_drive_conditions_borrow_subject_tokens():
    subject = conditions(6)
    audio = np.random.default_rng(1).normal(size=(8, AUDIO_WINDOW, AUDIO_DIM)).astype(np.float32)
    drive = drive_conditions(subject, audio, [3, 4, 5])
    assert len(drive) == 8
    np.testing.assert_array_equal(drive.audio, audio)
    order = [3, 4, 5, 4, 3, 4, 5, 4]
    np.testing.assert_array_equal(drive.eye, subject.eye[order])
    np.testing.assert_array_equal(drive.rotation, subject.rotation[order])
    np.testing.assert_array_equal(drive.ldm, subject.ldm[order])
    with pytest.raises(ValueError, match=r"\(8, 2, 5\).*\(6, 2, 4\)"):
        drive_conditions(subject, np.zeros((8, 2, 5), np.float32), [0])
    with pytest.raises(ValueError, match="within 0..5"):
        drive_conditions(subject, audio, [4, 6])


# ------------------------------------------------------------------------------------- rendering


def test_render_video_with_audio_and_depth(tmp_path, head, speech_wav):
    cond = conditions(10)
    cams = eg3d_camera(np.linspace(-10, 10, 10), np.zeros(10), np.zeros(10), **ORBIT)
    head.train()
    summary = render_video(
        head, cond, cams, tmp_path / "video.mp4", frames=range(2, 9), audio=speech_wav,
        audio_offset_s=2 / FPS, batch_size=3, output_size=48, depth_mp4=tmp_path / "depth.mp4",
        progress=False,
    )  # fmt: skip
    assert head.training  # the model's mode is restored
    assert summary["frames"] == 7 and summary["size"] == [48, 48] and summary["render_fps"] > 0
    near, far = summary["depth_range"]
    assert GEN.ray_start - 0.2 < near < far < GEN.ray_end + 0.2
    info = probe(tmp_path / "video.mp4")
    assert info.video.codec == "h264" and info.audio.codec == "aac" and info.video.fps == FPS
    assert abs(info.duration_s - 7 / FPS) < 0.1
    assert decode_video(tmp_path / "video.mp4").shape == (7, 48, 48, 3)
    depth = decode_video(tmp_path / "depth.mp4")
    assert depth.shape == (7, 48, 48, 3) and depth.std() > 1  # a picture, not a flat frame
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.mp4", "video.mp4"]


def test_render_video_failure_leaves_nothing(tmp_path, head):
    cond = conditions(6)
    with pytest.raises(ValueError, match=r"cameras must be \(6, 25\)"):
        render_video(head, cond, fixed_cameras(5, **ORBIT), tmp_path / "v.mp4", progress=False)
    with pytest.raises(ValueError, match="within 0..5"):
        render_video(head, cond, fixed_cameras(6, **ORBIT), tmp_path / "v.mp4", frames=[4, 6], progress=False)

    class Broken(torch.nn.Module):  # renders one batch, then fails
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.calls = head, 0
            self.generator, self.net_config = head.generator, head.net_config

        @property
        def device(self) -> torch.device:
            return head.device

        def forward(self, *args, **kwargs):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("out of memory")
            return self.inner(*args, **kwargs)

    with pytest.raises(RuntimeError, match="out of memory"):
        render_video(
            Broken(), cond, fixed_cameras(6, **ORBIT), tmp_path / "v.mp4", batch_size=2,
            depth_mp4=tmp_path / "d.mp4", renders=tmp_path / "r.mkv", progress=False,
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def gradient_frame(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return np.stack([40 + xx * 2, 60 + yy * 2, np.full_like(xx, 120)], axis=-1).astype(np.uint8)


def paste_subject(root: Path, n: int, crop_size: int = 40) -> tuple[Path, Path, Path, np.ndarray]:
    """n full frames (90 x 70), a crop table whose crops cover a 40 x 40 box at (10, 10) scaled to
    ``crop_size``, and masks labelling only the crop's central square as skin."""
    (root / "frames").mkdir()
    (root / "masks").mkdir()
    frame = gradient_frame(70, 90)
    k = crop_size / 40
    affine = np.array([[k, 0, -10 * k + (k - 1) / 2], [0, k, -10 * k + (k - 1) / 2]])  # pixel centres
    mask = np.zeros((crop_size, crop_size), np.uint8)
    mask[crop_size // 4 : 3 * crop_size // 4, crop_size // 4 : 3 * crop_size // 4] = 1
    for i in range(n):
        cv2.imwrite(str(root / "frames" / f"{i:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{i:06d}.png"), mask)
    table = CropTable(
        frame=np.arange(n, dtype=np.int32),
        affine=np.repeat(affine[None], n, 0).astype(np.float32),
        inverse=np.zeros((n, 2, 3), np.float32),
        lm68=np.zeros((n, 68, 2), np.float32),
        align=np.zeros((n, 5, 2), np.float32),
        meta={"size": crop_size},
    )
    write_crop_table(table, root / "crop.parquet")
    return root / "frames", root / "crop.parquet", root / "masks", frame


def test_paste_back_composite_keeps_the_frame_outside_the_crop(tmp_path):
    frames_dir, crop_parquet, masks_dir, frame = paste_subject(tmp_path, 3, crop_size=40)
    white = np.full((32, 32, 3), 255, np.uint8)  # a render at another side than the crop
    outside = np.ones(frame.shape[:2], bool)
    outside[5:55, 5:55] = False
    square = PasteBack.from_files(frames_dir, crop_parquet, feather_px=0)
    out = square.composite(1, white)
    assert out.shape == frame.shape
    np.testing.assert_array_equal(out[outside], frame[outside])
    assert (out[12:48, 12:48] > 250).all()  # the whole crop box is the render
    masked = PasteBack.from_files(frames_dir, crop_parquet, masks_dir, feather_px=0).composite(1, white)
    np.testing.assert_array_equal(masked[outside], frame[outside])
    assert (masked[22:38, 22:38] > 250).all() and np.array_equal(masked[12:18, 12:48], frame[12:18, 12:48])
    # A model drawn on black: only where the render is opaque is pasted (here its centre quarter).
    by_opacity = PasteBack.from_files(frames_dir, crop_parquet, feather_px=0, use_opacity=True)
    opacity = np.zeros((8, 8), np.float32)
    opacity[2:6, 2:6] = 1.0
    centre = by_opacity.composite(1, white, opacity)
    np.testing.assert_array_equal(centre[outside], frame[outside])
    assert (centre[25:35, 25:35] > 250).all() and np.array_equal(centre[10:16, 10:50], frame[10:16, 10:50])
    with pytest.raises(ValueError, match="needs the render's opacity"):
        by_opacity.composite(1, white)
    picked = square.select([2, 0, 0, 1])
    assert len(picked) == 4 and picked.frames[0].name == "000002.png"
    table = read_crop_table(crop_parquet)
    short = CropTable(
        *(getattr(table, k)[:2] for k in ("frame", "affine", "inverse", "lm68", "align")), table.meta
    )
    write_crop_table(short, tmp_path / "short.parquet")
    with pytest.raises(ValueError, match="2 crop rows for 3 frames"):
        PasteBack.from_files(frames_dir, tmp_path / "short.parquet")


def test_scale_affine_maps_the_same_crop_point():
    affine = np.array([[0.8, -0.1, 5.0], [0.1, 0.8, -3.0]])
    source = np.array([31.0, 47.0])
    crop_point = affine[:, :2] @ source + affine[:, 2]
    scaled = scale_affine(affine, 40, 100)
    np.testing.assert_allclose(scaled[:, :2] @ source + scaled[:, 2], (crop_point + 0.5) * 2.5 - 0.5)


def test_render_video_pasted_into_full_frames(tmp_path, head):
    frames_dir, crop_parquet, _, frame = paste_subject(tmp_path, 4)
    paste = PasteBack.from_files(frames_dir, crop_parquet)
    out = tmp_path / "pasted.mp4"
    summary = render_video(
        head, conditions(4), fixed_cameras(4, **ORBIT), out, frames=[3, 1, 2], paste=paste, progress=False
    )
    assert summary["size"] == [90, 70]
    video = decode_video(out)
    assert video.shape == (3, 70, 90, 3)
    far = np.ones(frame.shape[:2], bool)
    far[:60, :60] = False  # the crop box (10..50) and its seam, with room for chroma subsampling
    assert np.abs(video[:, far].astype(float) - frame[far]).mean() < 3
    assert np.abs(video[:, 15:45, 15:45].astype(float) - frame[15:45, 15:45]).mean() > 10  # the render


def test_depth_pictures_near_is_bright():
    depth = np.array([[[2.3, 2.5], [2.7, 9.0]]], np.float32)
    grey = depth_to_uint8(depth, 2.3, 2.7)
    assert grey.shape == (2, 2, 3) and grey[0, 0, 0] == 255 and grey[1, 0, 0] == 0 and grey[1, 1, 0] == 0
    assert 120 < grey[0, 1, 0] < 135
    faded = depth_to_uint8(depth, 2.3, 2.7, opacity=np.array([[[0.0, 1.0], [1.0, 1.0]]]))
    assert faded[0, 0].tolist() == [0, 0, 0] and faded[0, 1, 0] == grey[0, 1, 0]
    turbo = depth_to_uint8(torch.tensor(depth)[None], 2.3, 2.7, colormap="turbo")
    assert turbo.shape == (1, 2, 2, 3) and turbo[0, 0, 0, 0] > turbo[0, 0, 0, 2]  # near: red
    with pytest.raises(ValueError, match="far > near"):
        depth_to_uint8(depth, 2.7, 2.3)


def test_workflow_targets_use_the_models_camera_geometry(tmp_path, head):
    n = 8
    tracked = eg3d_camera(np.linspace(-5, 5, n), np.zeros(n), np.zeros(n), **ORBIT)
    data = SubjectData(torch.tensor(tracked, dtype=torch.float32), np.arange(n) < 5, conditions(n))
    # A novel view replaces the held-out frames' cameras only, with the model's geometry.
    cams = novel_view_cameras(head, data, "30_-20")
    np.testing.assert_array_equal(cams[:5], tracked[:5].astype(np.float32))
    np.testing.assert_allclose(cams[5:], view_cameras(30, -20, 3, **ORBIT))
    lookat = novel_view_cameras(head, data, "30_-20", "lookat")
    np.testing.assert_array_equal(lookat[5:], view_cameras(30, -20, 3, convention="lookat", **ORBIT))
    assert not np.allclose(lookat[5:], cams[5:])
    # Driving audio of 7 frames borrows the held-out frames, played back and forth.
    cond, drive_cams, order = drive_clip(head, data, np.zeros((7, AUDIO_WINDOW, AUDIO_DIM), np.float32))
    assert len(cond) == len(drive_cams) == len(order) == 7 and set(order) <= {5, 6, 7}
    np.testing.assert_array_equal(drive_cams, tracked[order].astype(np.float32))
    summary = render_target(head, data, tmp_path / "v.mp4", mode="view", view="30_-20", progress=False)
    assert summary["frames"] == 3
    with pytest.raises(ValueError, match="render mode must be one of"):
        render_target(head, data, tmp_path / "x.mp4", mode="orbit")
    with pytest.raises(ValueError, match="needs a view name"):
        render_target(head, data, tmp_path / "x.mp4", mode="view")
    with pytest.raises(ValueError, match="needs the driving audio"):
        render_target(head, data, tmp_path / "x.mp4", mode="drive")
    assert not (tmp_path / "x.mp4").exists()


def test_stored_renders_are_the_frames_the_evaluate_stage_scored(tmp_path, head):
    """The renders each render target stores losslessly are, bit for bit, the frames the evaluate stage
    rendered for itself before it read them instead: the held-out frames from their tracked cameras,
    the driving clip (drive_clip, with the drive camera), the held-out frames at a novel view (in the
    view convention); at the model's resolution, before any resize to the video's size."""
    n = 8
    tracked = eg3d_camera(np.linspace(-5, 5, n), np.zeros(n), np.zeros(n), **ORBIT)
    data = SubjectData(torch.tensor(tracked, dtype=torch.float32), np.arange(n) < 5, conditions(n))
    drive_audio = conditions(7, seed=1).audio

    def evaluate_rendered(cond: FrameConditions, cams: np.ndarray, frames: np.ndarray) -> np.ndarray:
        batches = render_batches(head, cond, cams, frames, batch_size=2)
        return np.concatenate([to_uint8(out["image"]) for _, out in batches])

    drive_cond, drive_cams, _ = drive_clip(head, data, drive_audio, "fixed")
    expected = {
        "video": evaluate_rendered(data.conditions, data.cameras.numpy(), data.test),
        "drive": evaluate_rendered(drive_cond, drive_cams, np.arange(len(drive_cond))),
        "view": evaluate_rendered(
            data.conditions, novel_view_cameras(head, data, "30_-20", "lookat"), data.test
        ),
    }
    options = {
        "video": {},
        "drive": {"drive_audio_features": drive_audio, "drive_camera": "fixed"},
        "view": {"view": "30_-20", "view_convention": "lookat"},
    }
    for mode, extra in options.items():
        summary = render_target(
            head, data, tmp_path / f"{mode}.mp4", mode=mode, renders=tmp_path / f"{mode}.mkv",
            batch_size=2, output_size=48, progress=False, **extra,
        )  # fmt: skip
        assert summary["renders"] == str(tmp_path / f"{mode}.mkv") and summary["size"] == [48, 48]
        stored, total = read_video(tmp_path / f"{mode}.mkv")
        assert total == len(expected[mode]) and stored.shape[1:] == (GEN.image_resolution,) * 2 + (3,)
        np.testing.assert_array_equal(stored, expected[mode], err_msg=mode)


def test_the_model_files_say_their_image_size_and_background(tmp_path, head):
    from talk3d_core.model.subject import model_image_format

    torch.save(head.to_dict(), tmp_path / "deltaplane.pt")
    assert model_image_format(tmp_path / "deltaplane.pt") == (GEN.image_resolution, "black")
    torch.save({"config": {"image_resolution": 64}, "training": {"background": "keep"}}, tmp_path / "g.pt")
    assert model_image_format(tmp_path / "g.pt") == (64, "keep")  # a prior's generator.pt
    torch.save({"net": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: no generator config and training record"):
        model_image_format(tmp_path / "other.pt")
