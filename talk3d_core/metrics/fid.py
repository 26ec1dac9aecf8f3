"""Fréchet Inception Distance (FID) between two image sets (the network: :mod:`talk3d_core.nets.inception`).

FID is ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` over the features' means and
covariances (``np.cov``, ddof 1), as pytorch-fid computes it (:func:`frechet_distance`).

A subject's renders are compared with its training crops, whose features rule fid_reference computes
once per subject (:class:`FidReference`, :mod:`talk3d_core.fid_reference`), not once per model.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from talk3d_core.util.sampling import evenly_spaced

# pytorch-fid's diagonal offset when (S1 S2)^(1/2) comes out singular / non-finite.
_SQRTM_EPS = 1e-6
# pytorch-fid's tolerance on the imaginary part of the diagonal of (S1 S2)^(1/2).
_IMAG_ATOL = 1e-3


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (ddof 1, as pytorch-fid) of features (N >= 2, D)."""
    feats = _check_features(feats, "feature_stats")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _check_features(feats: np.ndarray, what: str) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"{what}: expected features of shape (N, D), got {feats.shape}")
    if len(feats) < 2:
        raise ValueError(f"{what}: a covariance needs at least 2 feature rows, got {len(feats)}")
    if not np.isfinite(feats).all():
        raise ValueError(f"{what}: features hold NaN or inf")
    return feats


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians.

    ``mu``: (D,) means; ``sigma``: (D, D) covariances. The matrix square root is scipy's ``sqrtm``;
    as in pytorch-fid, a non-finite root is retried with ``1e-6`` added to both diagonals, and an
    imaginary part (round-off on a near-singular product) is dropped when the diagonal's is below
    1e-3 and is an error otherwise. Cost: ~45 s for D = 2048 on 2 cores; :func:`fid` on the
    features themselves is exact and much faster when the sets are small.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            "frechet_distance: expected means (D,) and covariances (D, D) of one D, got "
            f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    for label, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"frechet_distance: {label} holds NaN or inf")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Fewer samples than dimensions make the product singular; handled below as pytorch-fid does.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * _SQRTM_EPS
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > _IMAG_ATOL:
            raise ValueError(f"frechet_distance: (S1 S2)^(1/2) has an imaginary component {imag:.3g} > 1e-3")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)  # a distance: a tiny negative value is round-off of identical inputs


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets (Na >= 2, D) and (Nb >= 2, D); equals
    ``frechet_distance(*feature_stats(feats_a), *feature_stats(feats_b))``.

    With centred features A, B the covariances are ``A^T A / (Na - 1)`` and ``B^T B / (Nb - 1)``, and
    the nonzero eigenvalues of their product are the squared singular values of ``A B^T``, so
    ``tr (S1 S2)^(1/2) = ||A B^T||_* / sqrt((Na - 1)(Nb - 1))`` (nuclear norm). That is exact, needs no
    matrix square root of a (D, D) product, and costs O(Na Nb D): milliseconds for evaluation sets of
    a few hundred frames, where the ``sqrtm`` route takes ~45 s at D = 2048. Sets larger than D fall
    back to :func:`frechet_distance`.
    """
    feats_a, feats_b = _check_features(feats_a, "fid"), _check_features(feats_b, "fid")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"fid: feature sets differ in width: {feats_a.shape[1]} vs {feats_b.shape[1]}")
    n_a, n_b, d = len(feats_a), len(feats_b), feats_a.shape[1]
    if max(n_a, n_b) > d:
        return frechet_distance(*feature_stats(feats_a), *feature_stats(feats_b))
    mu_a, mu_b = feats_a.mean(axis=0), feats_b.mean(axis=0)
    a, b = feats_a - mu_a, feats_b - mu_b
    trace_a = float((a * a).sum()) / (n_a - 1)
    trace_b = float((b * b).sum()) / (n_b - 1)
    tr_covmean = float(np.linalg.svd(a @ b.T, compute_uv=False).sum()) / np.sqrt((n_a - 1) * (n_b - 1))
    diff = mu_a - mu_b
    return max(float(diff @ diff) + trace_a + trace_b - 2.0 * tr_covmean, 0.0)


# ------------------------------------------------------------------------------ a subject's reference


@dataclass(frozen=True)
class FidReference:
    """The FID reference set of a subject: Inception pool3 features (N, 2048) float32 (the network's
    own precision) of N training crops, clip ``frames`` (N,), shown as the model sees them (``size``
    pixels, ``background`` "black" or "keep"); ``features`` None when the Inception (``backend``)
    was unavailable, with the ``reason``.

    Features rather than their mean and covariance: :func:`fid` on features is exact and takes
    milliseconds, the covariances would need :func:`frechet_distance`'s 45 s square root per setting
    (and 32 MB of float64 where 500 frames of features are 4 MB).
    """

    features: np.ndarray | None
    frames: np.ndarray
    size: int
    background: str
    backend: str
    reason: str = ""


def reference_frames(train: np.ndarray, n: int) -> np.ndarray:
    """The FID reference frames: ``n`` training frames (of ``train`` (N,) bool) spread evenly over the
    clip (all of them when there are fewer), ascending (M,) int64."""
    frames = np.flatnonzero(np.asarray(train, bool))
    if len(frames) == 0:
        raise ValueError("the FID reference needs training frames; the split has none")
    return frames[evenly_spaced(len(frames), n)]


_REFERENCE_KEYS = ("features", "frames", "size", "background", "backend", "reason", "available")


def write_fid_reference(reference: FidReference, path: str | os.PathLike[str]) -> None:
    """``reference`` as an uncompressed ``.npz`` (float features barely compress), atomically."""
    from talk3d_core.util.io import atomic_path

    features = np.zeros((0, 0), np.float32) if reference.features is None else reference.features
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh, features=features.astype(np.float32), frames=reference.frames.astype(np.int64),
            size=reference.size, background=reference.background, backend=reference.backend,
            reason=reference.reason, available=reference.features is not None,
        )  # fmt: skip


def read_fid_reference(path: str | os.PathLike[str]) -> FidReference:
    """A reference written by :func:`write_fid_reference`; ValueError naming ``path`` otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            f = {k: z[k] for k in _REFERENCE_KEYS}
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not an FID reference ({exc}); re-run rule fid_reference") from None
    available = bool(f["available"])
    if available and (f["features"].ndim != 2 or len(f["features"]) != len(f["frames"])):
        raise ValueError(
            f"{path}: {f['features'].shape} features for {len(f['frames'])} frames; re-run rule fid_reference"
        )
    return FidReference(
        features=f["features"] if available else None, frames=f["frames"], size=int(f["size"]),
        background=str(f["background"]), backend=str(f["backend"]), reason=str(f["reason"]),
    )  # fmt: skip
