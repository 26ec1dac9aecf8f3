"""VIVE3D personalization (pretrained mode): pivots, camera refinement, face region, schedules,
checkpoint loading, fitting, resume.

The EG3D pickles here are written in NVlabs' persistence layout (as in test_eg3d_checkpoint.py) from a
tiny generator of our own, so a "pretrained" network exists without any download.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from conftest import EG3D_FFHQ512_128_G_SHAPES, TINY, nvlabs_kwargs, random_generator, write_snapshot

# The NVlabs persistence-layout pickler is shared with the loader's own tests.
from talk3d_core.camera import eg3d_camera, rotation_angle_deg
from talk3d_core.face.regions import LABELS
from talk3d_core.model.eg3d import GeneratorConfig, TriPlaneGenerator
from talk3d_core.model.eg3d.checkpoint import CheckpointError, generator_from_checkpoint, load_eg3d_checkpoint
from talk3d_core.model.eg3d.generator import mapped_w_statistics
from talk3d_core.model.subject import SubjectData
from talk3d_core.nets.optional import OptionalNets
from talk3d_core.personalize import (
    LR_FLOOR,
    PretrainedConfig,
    StepBudgetExhausted,
    face_region,
    frontal_camera,
    offset_weight,
    personalize,
    pivot_features,
    pivot_learning_rate,
    refine_cameras,
    select_pivots,
    tunable_parameters,
    w_noise_scale,
)
from talk3d_core.prior import evaluate_prior

PIVOT = (0.0, 0.05, 0.2)
RADIUS, FOCAL = 2.7, 3.6
CAMERA = {"focal": FOCAL, "radius": RADIUS, "pivot": PIVOT}
NO_EXTRA_LOSSES = OptionalNets(reasons={"lpips": "not in this test", "identity": "not in this test"})


def render(generator: TriPlaneGenerator, ws: torch.Tensor, cameras: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return generator.synthesis(ws, cameras, noise_mode="const", jitter=False)


# --------------------------------------------------------------------------------------------------
# 1. Pivot selection


def synthetic_landmarks(mouth: np.ndarray, eyes: np.ndarray) -> np.ndarray:
    """68 points with the outer eye corners 10 px apart, inner lips ``mouth`` px apart and each eyelid
    pair ``eyes`` px apart (everything else at the origin: only these points are read)."""
    n = len(mouth)
    lm = np.zeros((n, 68, 2))
    lm[:, 36], lm[:, 45] = (10.0, 20.0), (20.0, 20.0)
    lm[:, 62] = (15.0, 30.0)
    lm[:, 66, 0], lm[:, 66, 1] = 15.0, 30.0 + mouth
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        lm[:, upper] = (12.0, 19.0)
        lm[:, lower, 0], lm[:, lower, 1] = 12.0, 19.0 + eyes
    return lm


def pose_table(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Head angles (N, 3) and landmarks of a mostly neutral clip with small jitter."""
    rng = np.random.default_rng(seed)
    angles = rng.normal(0, 1.0, (n, 3))
    landmarks = synthetic_landmarks(1.0 + rng.normal(0, 0.1, n), 3.0 + rng.normal(0, 0.1, n))
    return angles, landmarks


def test_pivot_features_are_standardised_and_scale_free():
    angles, lm = pose_table()
    train = np.arange(20) < 16
    features = pivot_features(angles, lm, train)
    assert features.shape == (20, 5)
    np.testing.assert_allclose(features[train].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(features[train].std(axis=0), 1, atol=1e-12)
    # Mouth and eye opening are relative to the eye distance: scaling the face changes nothing.
    np.testing.assert_allclose(pivot_features(angles, lm * 3.0, train), features, atol=1e-9)
    with pytest.raises(ValueError, match=r"landmarks must have shape \(20, 68, 2\)"):
        pivot_features(angles, lm[:, :60], train)
    with pytest.raises(ValueError, match=r"head angles must have shape \(20, 3\)"):
        pivot_features(angles[:, :2], lm, train)


def test_select_pivots_picks_the_extremes_from_the_training_frames():
    # A near-still clip (tiny jitter) with a few distinct moments; standardising puts every feature
    # on the scale of its own spread, so each feature's extreme frame stands out.
    rng = np.random.default_rng(1)
    n = 20
    angles = np.zeros((n, 3))
    angles[:, :2] = rng.normal(0, 0.01, (n, 2))
    angles[4, 0], angles[9, 0] = 30.0, -25.0  # turns to the left and to the right
    angles[2, 1] = 15.0  # looking up
    mouth = 1.0 + rng.normal(0, 0.01, n)
    mouth[13] = 6.0  # an open mouth
    angles[18, 1] = 40.0  # the most extreme pose of all, but a test frame
    train = np.arange(n) < 16
    features = pivot_features(angles, synthetic_landmarks(mouth, np.full(n, 3.0)), train)

    pivots = select_pivots(features, train, 5)

    assert pivots.tolist() == sorted(pivots.tolist())
    assert {2, 4, 9, 13} < set(pivots.tolist())  # plus one neutral frame
    assert train[pivots].all()  # frame 18 is never a pivot
    np.testing.assert_array_equal(pivots, select_pivots(features, train, 5))  # deterministic
    assert select_pivots(features, train, 1)[0] not in (2, 4, 9, 13)  # it starts from a neutral frame


def test_select_pivots_never_repeats_a_frame_and_rejects_bad_counts():
    features = np.zeros((6, 5))  # all frames alike
    train = np.array([True, True, True, False, True, True])
    pivots = select_pivots(features, train, 5)
    assert sorted(pivots.tolist()) == [0, 1, 2, 4, 5]
    for bad in (0, 6):
        with pytest.raises(ValueError, match="n_pivots must be between 1 and the 5 training frames"):
            select_pivots(features, train, bad)


# --------------------------------------------------------------------------------------------------
# 2. Camera refinement


def test_zero_delta_is_the_identity():
    labels = torch.tensor(eg3d_camera([-20.0, 0.0, 15.0], [5.0, 0.0, -10.0], [0.0, 3.0, -2.0], pivot=PIVOT))
    refined = refine_cameras(labels, torch.zeros(3, 2, dtype=labels.dtype), pivot=PIVOT)
    torch.testing.assert_close(refined, labels, atol=1e-12, rtol=0)


@pytest.mark.parametrize("delta", [4.0, -7.5])
def test_a_yaw_delta_equals_the_tracked_camera_at_that_yaw(delta: float):
    yaw, pitch, roll = np.array([-20.0, 0.0, 15.0]), np.array([5.0, 0.0, -10.0]), np.array([0.0, 3.0, -2.0])
    labels = torch.tensor(eg3d_camera(yaw, pitch, roll, radius=RADIUS, pivot=PIVOT, focal=FOCAL))
    correction = torch.zeros(3, 2, dtype=labels.dtype)
    correction[:, 0] = delta
    expected = eg3d_camera(yaw + delta, pitch, roll, radius=RADIUS, pivot=PIVOT, focal=FOCAL)

    refined = refine_cameras(labels, correction, pivot=PIVOT)

    np.testing.assert_allclose(refined.numpy(), expected, atol=1e-12)
    # From a frontal camera, a pitch correction composes the same way; intrinsics stay.
    frontal = torch.tensor(eg3d_camera([0.0], [0.0], [0.0], radius=RADIUS, pivot=PIVOT))
    pitched = refine_cameras(frontal, torch.tensor([[0.0, delta]], dtype=frontal.dtype), pivot=PIVOT)
    np.testing.assert_allclose(
        pitched.numpy(), eg3d_camera([0.0], [delta], [0.0], radius=RADIUS, pivot=PIVOT), atol=1e-12
    )
    torch.testing.assert_close(pitched[0, 16:], frontal[0, 16:])


def test_refinement_is_differentiable_and_checks_shapes():
    labels = torch.tensor(eg3d_camera([10.0], [-5.0], [0.0], pivot=PIVOT))
    delta = torch.full((1, 2), 0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d: refine_cameras(labels, d, pivot=PIVOT), (delta,))
    with pytest.raises(ValueError, match=r"delta \(B, 2\)"):
        refine_cameras(labels, torch.zeros(1, 6, dtype=labels.dtype), pivot=PIVOT)


# --------------------------------------------------------------------------------------------------
# 3.-5. Face region, starting latent, schedules


def test_face_region_unites_dilated_eyes_and_the_mouth_over_the_pivots():
    labels = np.full((2, 64, 64), LABELS["skin"], np.uint8)
    labels[0, 20, 20] = LABELS["eyes"]
    labels[1, 40:42, 30:36] = LABELS["lips"]
    labels[1, 42, 32] = LABELS["mouth_interior"]
    labels[1, 5:9, 5:9] = LABELS["hair"]

    region = face_region(labels, 64)

    assert region.shape == (1, 1, 64, 64) and set(region.unique().tolist()) == {0.0, 1.0}
    # 24 px at 512 is a 3 x 3 square at 64 px around the eye pixel (kornia's origin: size // 2).
    eye = region[0, 0, 17:24, 17:24]
    assert eye[2:5, 2:5].all() and eye.sum() == 9
    assert region[0, 0, 40:42, 30:36].all() and region[0, 0, 42, 32] == 1  # lips and mouth, undilated
    assert region.sum() == 9 + 12 + 1  # nothing else: skin and hair are not in it
    # The frame inversion's region is that union dilated once more (8 px at 512: 1 px at 64, none).
    torch.testing.assert_close(face_region(labels, 64, 8), region)
    assert face_region(labels, 64, 16).sum() > region.sum()  # 2 px at 64
    # Resized to the generator's size a pixel counts when any part of it is in the region.
    half = face_region(labels, 32)
    assert half[0, 0, 10, 10] == 1 and half[0, 0, 20, 15:18].all()
    assert not face_region(np.full((1, 8, 8), LABELS["skin"], np.uint8), 8).any()


def test_mapped_w_statistics_averages_mapped_samples_at_the_frontal_camera():
    generator = random_generator()
    conditioning = frontal_camera(CAMERA)
    torch.testing.assert_close(conditioning, torch.tensor(eg3d_camera([0.0], [0.0], [0.0], **CAMERA)).float())

    mean, std = mapped_w_statistics(generator, conditioning, n_samples=2500, seed=4)

    z = torch.as_tensor(
        np.random.RandomState(4).randn(2500, TINY.z_dim), dtype=torch.float32
    )  # VIVE3D's draw
    with torch.no_grad():
        ws = generator.mapping(z, conditioning.expand(2500, -1))
    assert mean.shape == (1, TINY.w_dim)
    torch.testing.assert_close(mean, ws[:, 0].mean(0, keepdim=True), atol=1e-5, rtol=0)
    expected_std = (ws[:, 0].double() - mean.double()).pow(2).sum(dim=1).mean().sqrt()
    assert std == pytest.approx(float(expected_std), rel=1e-4)
    assert not torch.allclose(mean, generator.backbone.mapping.w_avg[None], atol=1e-3)  # not the buffer
    other, _ = mapped_w_statistics(generator, conditioning, n_samples=2500, seed=5, batch_size=700)
    assert not torch.allclose(mean, other)


def test_pivot_schedules_follow_the_stylegan2_projector():
    cfg = PretrainedConfig(pivot_steps=600, pivot_lr=0.01)
    lrs = np.array([pivot_learning_rate(s, cfg) for s in range(600)])
    assert lrs[0] == LR_FLOOR  # Talk3D's floor where the ramp-up gives 0
    assert lrs[15] == pytest.approx(0.005)  # linear ramp-up over the first 5% (30 steps)
    assert np.all(lrs[30:450] == pytest.approx(0.01))
    assert np.all(np.diff(lrs[450:]) < 0) and lrs[-1] < 1e-4  # cosine ramp-down over the last 25%
    assert lrs[525] == pytest.approx(0.005)
    assert w_noise_scale(0, cfg, 2.0) == pytest.approx(0.04)  # w_std x 0.02
    assert w_noise_scale(225, cfg, 2.0) == pytest.approx(0.04 * 0.5**2)
    assert w_noise_scale(450, cfg, 2.0) == 0.0 and w_noise_scale(599, cfg, 2.0) == 0.0
    weights = np.array([offset_weight(s, cfg) for s in range(600)])
    assert np.all(weights[:102] == 0.05) and weights[102] == pytest.approx(0.05 * 0.99)
    assert np.all(np.diff(weights) <= 0) and weights[-1] > 0.005 and weights[-1] * 0.99 <= 0.005


# --------------------------------------------------------------------------------------------------
# Loading a generator from an NVlabs pickle


def test_generator_from_checkpoint_round_trips(tmp_path: Path):
    source = random_generator()
    path = write_snapshot(tmp_path / "tiny.pkl", source)

    loaded = generator_from_checkpoint(load_eg3d_checkpoint(path), plane_axes="fixed")

    assert loaded.config == TINY
    assert not loaded.training
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    z, c = torch.randn(2, TINY.z_dim), torch.tensor(eg3d_camera([-10.0, 10.0], [0.0, 5.0], [0.0, 0.0]))
    c = c.float()
    with torch.no_grad():
        ours = source(z, c, noise_mode="const", jitter=False)
        theirs = loaded(z, c, noise_mode="const", jitter=False)
    for key in ("image", "image_raw", "image_depth"):
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    [
        ("init", "architecture", "resnet", "unsupported init kwarg 'architecture'"),
        ("init", "img_channels", 4, "img_channels=4"),
        ("mapping", "layer_features", 64, "unsupported mapping_kwargs entry 'layer_features'"),
        ("rendering", "ray_start", "auto", "'auto'"),
        ("rendering", "clamp_mode", "relu", "clamp_mode='relu' is not supported"),
        ("rendering", "superresolution_module", "training.superresolution.SuperresolutionHybridDeepfp32",
         "unsupported superresolution_module"),
        ("rendering", "superresolution_module", "training.superresolution.SuperresolutionHybrid8XDC",
         "upsamples 4x in its blocks"),
        ("rendering", "sr_antialias", None, "rendering_kwargs lacks 'sr_antialias'"),
    ],
)  # fmt: skip
def test_generator_from_checkpoint_rejects_what_it_cannot_build(
    tmp_path: Path, table: str, key: str, value: Any, message: str
):
    generator = random_generator()
    init, rendering = nvlabs_kwargs(TINY)
    target = {"init": init, "mapping": init["mapping_kwargs"], "rendering": rendering}[table]
    if value is None:
        del target[key]
    else:
        target[key] = value
    init["rendering_kwargs"] = rendering
    path = write_snapshot(tmp_path / "odd.pkl", generator, init=init, rendering=rendering)

    with pytest.raises(CheckpointError, match=message) as info:
        generator_from_checkpoint(load_eg3d_checkpoint(path), plane_axes="fixed")
    assert str(path) in str(info.value)


# What NVlabs' train.py records for the FFHQ 512 generators (--cfg=ffhq --gpc_reg_prob=0.8 ...).
FFHQ_512_RENDERING = {
    "image_resolution": 512, "disparity_space_sampling": False, "clamp_mode": "softplus",
    "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
    "c_gen_conditioning_zero": False, "gpc_reg_prob": 0.8, "c_scale": 1.0,
    "superresolution_noise_mode": "none",
    "density_reg": 0.25, "density_reg_p_dist": 0.004, "reg_type": "l1", "decoder_lr_mul": 1.0,
    "sr_antialias": True, "depth_resolution": 48, "depth_resolution_importance": 48, "ray_start": 2.25,
    "ray_end": 3.3, "box_warp": 1, "avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2],
}  # fmt: skip
FFHQ_512_INIT = {
    "z_dim": 512, "c_dim": 25, "w_dim": 512, "img_resolution": 512, "img_channels": 3, "sr_num_fp16_res": 4,
    "mapping_kwargs": {"num_layers": 2}, "rendering_kwargs": FFHQ_512_RENDERING,
    "sr_kwargs": {"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only"},
    "channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only", "num_fp16_res": 0,
    "conv_clamp": None,
}  # fmt: skip


def test_generator_from_checkpoint_reads_the_ffhq_512_128_kwargs():
    """The kwargs and tensor shapes of ffhq(-fixed-triplane)512-128.pkl give the paper's generator."""
    from talk3d_core.model.eg3d.checkpoint import EG3DCheckpoint

    ckpt = EG3DCheckpoint(
        path=Path("ffhq-fixed-triplane512-128.pkl"),
        network="G_ema",
        class_name="TriPlaneGenerator",
        state_dict={name: torch.zeros(shape) for name, shape in EG3D_FFHQ512_128_G_SHAPES.items()},
        init_args=(),
        init_kwargs=FFHQ_512_INIT,
        rendering_kwargs=FFHQ_512_RENDERING,
        neural_rendering_resolution=128,
        training_set_kwargs=None,
    )
    generator = generator_from_checkpoint(ckpt, plane_axes="fixed")
    assert generator.config == GeneratorConfig.paper(plane_axes="fixed")
    assert FFHQ_512_INIT["mapping_kwargs"] == {"num_layers": 2}  # the checkpoint's kwargs are not consumed


def test_generator_from_checkpoint_needs_valid_plane_axes(tmp_path: Path):
    path = write_snapshot(tmp_path / "tiny.pkl", random_generator())
    with pytest.raises(CheckpointError, match="plane_axes='sideways'"):
        generator_from_checkpoint(load_eg3d_checkpoint(path), plane_axes="sideways")


@pytest.mark.parametrize("recorded", ["original", "fixed"])
def test_the_plane_axes_a_pickle_records_must_match_the_setting(tmp_path: Path, recorded: str):
    """A fixed-triplane pickle loaded as 'original' (or the reverse) renders silently wrong: refuse it."""
    generator = TriPlaneGenerator(dataclasses.replace(random_generator().config, plane_axes=recorded))
    ckpt = load_eg3d_checkpoint(write_snapshot(tmp_path / f"{recorded}.pkl", generator))
    assert ckpt.plane_axes == recorded
    other = "fixed" if recorded == "original" else "original"
    with pytest.raises(
        CheckpointError, match=rf"projects the tri-planes as '{recorded}'.*prior.plane_axes: {recorded}"
    ):
        generator_from_checkpoint(ckpt, plane_axes=other)
    assert generator_from_checkpoint(ckpt, plane_axes=recorded).config.plane_axes == recorded


# --------------------------------------------------------------------------------------------------
# The whole personalization on a teacher generator


@dataclasses.dataclass(frozen=True)
class Scene:
    data: SubjectData
    angles: np.ndarray  # tracked (perturbed) head angles
    landmarks: np.ndarray
    masks: list[Path]
    true_cameras: torch.Tensor
    snapshot: Path


def write_masks(folder: Path, n: int, size: int = 32) -> list[Path]:
    """Label images with two eyes and a mouth where the teacher's face sits."""
    folder.mkdir()
    labels = np.full((size, size), LABELS["skin"], np.uint8)
    labels[:4] = LABELS["background"]
    labels[12, 10:13] = labels[12, 19:22] = LABELS["eyes"]
    labels[22:24, 13:19] = LABELS["lips"]
    paths = [folder / f"{i:06d}.png" for i in range(n)]
    for path in paths:
        cv2.imwrite(str(path), labels)
    return paths


def teacher_scene(tmp_path: Path, n: int = 8, camera_noise_deg: float = 3.0) -> Scene:
    """A random teacher renders a known identity with small per-frame offsets at known cameras; the
    tracked cameras given to personalize are off by a few degrees of yaw and pitch."""
    teacher = random_generator(seed=3)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        # Identity near where the inversion starts (the mean of mapped samples; the tests run too few
        # steps to search W), expressions as W offsets.
        start = mapped_w_statistics(teacher, frontal_camera(CAMERA), n_samples=2000, seed=7)[0]
        w_id = start + 0.05 * torch.randn(1, TINY.w_dim)
        ws = (w_id + 0.05 * torch.randn(n, TINY.w_dim))[:, None].expand(n, teacher.num_ws, -1)
    yaw, pitch, roll = np.linspace(-20, 20, n), rng.uniform(-8, 8, n), np.zeros(n)
    true = torch.tensor(eg3d_camera(yaw, pitch, roll, radius=RADIUS, pivot=PIVOT, focal=FOCAL)).float()
    images = render(teacher, ws, true)["image"]
    noise = rng.normal(0, camera_noise_deg, (n, 2))
    tracked = np.column_stack([yaw + noise[:, 0], pitch + noise[:, 1], roll])
    cameras = torch.tensor(eg3d_camera(*tracked.T, radius=RADIUS, pivot=PIVOT, focal=FOCAL)).float()
    data = SubjectData(
        crops=((images.clamp(-1, 1) + 1) * 127.5).round().byte(),
        face=torch.ones(n, 1, 32, 32, dtype=torch.bool),
        cameras=cameras,
        train=np.arange(n) < n - 2,
    )
    landmarks = synthetic_landmarks(rng.uniform(0.5, 3.0, n), rng.uniform(2.0, 3.5, n))
    masks = write_masks(tmp_path / "masks", n)
    return Scene(data, tracked, landmarks, masks, true, write_snapshot(tmp_path / "teacher.pkl", teacher))


def rotation_error_deg(cameras: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    def rotations(c: torch.Tensor) -> np.ndarray:
        return c[:, :16].reshape(-1, 4, 4)[:, :3, :3].double().numpy()

    return rotation_angle_deg(rotations(cameras), rotations(reference))


def student(scene: Scene) -> TriPlaneGenerator:
    return generator_from_checkpoint(load_eg3d_checkpoint(scene.snapshot), plane_axes="fixed")


def read_log(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


def stand_in_lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A differentiable (B,) distance in LPIPS's place (the real one needs downloaded weights)."""
    return (a - b).pow(2).flatten(1).mean(dim=1)


def test_personalize_recovers_cameras_of_a_teacher(tmp_path: Path):
    scene = teacher_scene(tmp_path)
    cfg = PretrainedConfig(
        n_pivots=4, w_avg_samples=500, pivot_steps=60, tune_steps=10, frame_first_steps=40, frame_steps=25,
        frame_stop_loss=0.0, jitter=False, checkpoint_every=50,
    )  # fmt: skip
    generator = student(scene)
    before = {k: v.clone() for k, v in generator.state_dict().items()}

    prior, cameras, offsets = personalize(
        scene.data, scene.angles, scene.landmarks, generator, tmp_path / "run", masks=scene.masks,
        camera=CAMERA, cfg=cfg, nets=NO_EXTRA_LOSSES, device="cpu",
    )  # fmt: skip

    n, num_ws = len(scene.data.train), generator.num_ws
    assert cameras.shape == (n, 25) and offsets.shape == (n, num_ws, TINY.w_dim)
    assert prior.offsets.shape == (6, num_ws, TINY.w_dim)
    torch.testing.assert_close(prior.offsets, offsets[:6])  # training frames in slot order
    # One identity w in W, repeated over the ws; per-frame offsets in W+.
    assert prior.w_id.shape == (1, num_ws, TINY.w_dim) and torch.equal(
        prior.w_id, prior.w_id[:, :1].expand_as(prior.w_id)
    )
    assert not torch.equal(offsets[:, :1].expand_as(offsets), offsets)
    assert all(torch.equal(generator.state_dict()[k], v) for k, v in before.items())  # input untouched
    tuned = prior.generator.state_dict()
    changed = {k for k in before if not torch.equal(tuned[k], before[k])}
    assert changed and all(k.startswith(("backbone.synthesis.", "decoder.")) for k in changed)  # SR frozen

    log = read_log(tmp_path / "run")
    assert [r["global_step"] for r in log] == list(range(1, 60 + 10 + 40 + 7 * 25 + 1))
    pivots = [r["total"] for r in log if r["stage"] == "pivots"]
    assert np.mean(pivots[-5:]) < 0.8 * np.mean(pivots[:5]), pivots
    frames = [r for r in log if r["stage"] == "frames"]
    assert [r["frame"] for r in frames] == [0] * 40 + [f for f in range(1, n) for _ in range(25)]
    first = [r["total"] for r in frames if r["frame"] == 0]
    assert np.mean(first[-5:]) < np.mean(first[:5]), first
    # Sequential warm start: each later frame starts at the previous frame's offset (no pull yet).
    assert "prev" not in frames[0]
    for f in range(1, n):
        steps = [r for r in frames if r["frame"] == f]
        assert steps[0]["prev"] == 0.0 and steps[-1]["prev"] > 0.0

    error_tracked = rotation_error_deg(scene.data.cameras, scene.true_cameras).mean()
    error_refined = rotation_error_deg(cameras, scene.true_cameras).mean()
    assert error_refined < 0.5 * error_tracked, (error_tracked, error_refined)

    # The scratch mode's evaluation works on the result, with the refined cameras.
    metrics = evaluate_prior(prior, dataclasses.replace(scene.data, cameras=cameras))
    assert metrics["n_train"] == 6 and np.isfinite(metrics["train_psnr"])


# 4 pivot + 3 tune steps, then frames of 3 (frame 0) and 2 steps, some stopping early at a loss
# below 1.15; random renderer jitter (seeded per step) and a stand-in LPIPS, so every term runs.
TINY_RUN = PretrainedConfig(
    n_pivots=3, w_avg_samples=200, pivot_steps=4, tune_steps=3, frame_first_steps=3, frame_steps=2,
    frame_stop_loss=1.15, checkpoint_every=2,
)  # fmt: skip
WITH_LPIPS = OptionalNets(lpips=stand_in_lpips)


def run(scene: Scene, out_dir: Path, **kwargs: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
    kwargs = dict(masks=scene.masks, camera=CAMERA, cfg=TINY_RUN, nets=WITH_LPIPS, device="cpu") | kwargs
    return personalize(scene.data, scene.angles, scene.landmarks, student(scene), out_dir, **kwargs)


def test_resume_is_exact(tmp_path: Path):
    scene = teacher_scene(tmp_path, n=6)
    straight = run(scene, tmp_path / "a")
    log_a = read_log(tmp_path / "a")
    frames = [r["frame"] for r in log_a if r["stage"] == "frames"]
    assert set(frames) == set(range(6)) and len(frames) < 3 + 5 * 2  # some frames stopped early
    assert {"lpips", "face_lpips", "face_l1", "prev"} <= set(log_a[-1])
    assert {"lpips_raw", "face_lpips", "face_l2", "offset"} <= set(log_a[0])
    # Stop inside pivotal tuning, then inside frame 0, then run to the end.
    for budget in (5, 3):
        with pytest.raises(StepBudgetExhausted, match="run again to resume"):
            run(scene, tmp_path / "b", max_steps=budget)
    with open(tmp_path / "b" / "train_log.jsonl", "a") as fh:  # a line logged after the checkpoint
        fh.write(json.dumps({"stage": "frames", "step": 9, "global_step": 99}) + "\n")
    resumed = run(scene, tmp_path / "b")

    (prior_a, cameras_a, offsets_a), (prior_b, cameras_b, offsets_b) = straight, resumed
    for name, tensor in prior_a.state_dict().items():
        assert torch.equal(tensor, prior_b.state_dict()[name]), name
    assert torch.equal(cameras_a, cameras_b) and torch.equal(offsets_a, offsets_b)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in log_a]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in read_log(tmp_path / "b")] == strip

    # A finished run is read back, not repeated.
    again = run(scene, tmp_path / "b")
    assert torch.equal(again[1], cameras_a) and torch.equal(again[2], offsets_a)
    assert len(read_log(tmp_path / "b")) == len(log_a)


def test_tuning_and_frames_stop_early(tmp_path: Path):
    scene = teacher_scene(tmp_path, n=6)
    cfg = dataclasses.replace(TINY_RUN, tune_stop_lpips=1e9, frame_stop_loss=1e9)
    generator = student(scene)
    prior, _, _ = run(scene, tmp_path / "e", cfg=cfg)
    log = read_log(tmp_path / "e")
    assert [r["stage"] for r in log] == ["pivots"] * 4 + ["frames"] * 6  # no tuning step; 1 step a frame
    assert [r["frame"] for r in log[4:]] == list(range(6))
    for name, tensor in generator.state_dict().items():
        assert torch.equal(prior.generator.state_dict()[name], tensor), name


def test_tunable_parameters_leave_out_mapping_and_super_resolution():
    generator = random_generator()
    names = {id(p): n for n, p in generator.named_parameters()}
    tuned = [names[id(p)] for p in tunable_parameters(generator)]
    assert tuned and all(n.startswith(("backbone.synthesis.", "decoder.")) for n in tuned)
    assert len(tuned) == sum(1 for n in names.values() if n.startswith(("backbone.synthesis.", "decoder.")))


def test_checkpoint_of_other_settings_is_refused_or_set_aside(tmp_path: Path):
    scene = teacher_scene(tmp_path, n=6)
    with pytest.raises(StepBudgetExhausted):
        run(scene, tmp_path / "c", max_steps=2)
    with pytest.raises(ValueError, match="written with other settings"):
        run(scene, tmp_path / "c", cfg=dataclasses.replace(TINY_RUN, pivot_lr=0.02))
    with pytest.raises(StepBudgetExhausted):
        run(scene, tmp_path / "c", max_steps=1, run_id="new code", restart_on_mismatch=True)
    assert len(list((tmp_path / "c" / "checkpoints").glob("*-000000002.pt"))) == 1
    assert len((tmp_path / "c" / "train_log.jsonl").read_text().splitlines()) == 1


def test_personalize_rejects_mismatched_inputs(tmp_path: Path):
    scene = teacher_scene(tmp_path, n=6)
    with pytest.raises(ValueError, match="landmarks must have shape"):
        personalize(
            scene.data, scene.angles, scene.landmarks[:5], student(scene), tmp_path / "d", masks=scene.masks,
            camera=CAMERA, cfg=TINY_RUN, nets=NO_EXTRA_LOSSES,
        )  # fmt: skip
    small = dataclasses.replace(scene.data, crops=scene.data.crops[:, :, :16, :16])
    with pytest.raises(ValueError, match="the generator makes 32 px"):
        run(dataclasses.replace(scene, data=small), tmp_path / "d")
    with pytest.raises(ValueError, match="5 masks"):
        run(scene, tmp_path / "d", masks=scene.masks[:5])
    cv2.imwrite(str(scene.masks[0]), np.full((32, 32), LABELS["skin"], np.uint8))
    for path in scene.masks[1:]:
        path.write_bytes(scene.masks[0].read_bytes())
    with pytest.raises(ValueError, match="hold no eyes, lips or mouth pixels"):
        run(scene, tmp_path / "d")
