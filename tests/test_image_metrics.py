"""PSNR and SSIM against known values."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from talk3d_core.metrics.image import psnr, ssim


def test_psnr_known_values():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.2  # uniform error 0.2 on a peak-to-peak range of 2 -> 10 log10(4 / 0.04) = 20 dB
    b[1, :, :4] += 0.02  # error only in the top half
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 4:] = 1
    assert psnr(a, b)[0].item() == pytest.approx(20.0, abs=1e-4)
    assert psnr(a, b, mask)[1].item() > 99  # the masked region is identical
    assert psnr(a, b)[1].item() == pytest.approx(10 * np.log10(4 / (0.0004 / 2)), abs=1e-3)


def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (32, 32)).astype(np.float32)
    noisy = np.clip(img + rng.normal(0, 0.2, img.shape), -1, 1).astype(np.float32)
    ours = ssim(torch.from_numpy(img)[None, None], torch.from_numpy(noisy)[None, None]).item()
    ref = structural_similarity(img, noisy, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)  # fmt: skip
    # Border handling differs (reflect padding vs cropping), so agree to a tolerance.
    assert ours == pytest.approx(ref, abs=0.03)
    assert ssim(torch.from_numpy(img)[None, None], torch.from_numpy(img)[None, None]).item() == pytest.approx(
        1.0
    )
