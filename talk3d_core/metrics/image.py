"""Image similarity measures shared by training losses and the evaluation stage (torch, differentiable).

Images are float tensors (B, C, H, W) in [-1, 1] unless stated; masks are (B, 1, H, W) in {0, 1}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(size: int = 11, sigma: float = 1.5, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1D Gaussian (size,)."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 2.0, window: int = 11) -> torch.Tensor:
    """Per-pixel SSIM (B, C, H, W) of images in a range of width ``data_range`` (Wang et al. 2004).

    Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, reflect padding so the map keeps the image size.
    """
    c = a.shape[1]
    g = gaussian_window(window, device=a.device, dtype=a.dtype)
    kernel_h = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    kernel_v = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    pad = window // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        return F.conv2d(F.conv2d(x, kernel_h, groups=c), kernel_v, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` (B, C, H, W) over the pixels where ``mask`` (B, 1, H, W) is 1, per image: (B,)."""
    if mask is None:
        return x.flatten(1).mean(dim=1)
    weight = mask.expand_as(x)
    return (x * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1).clamp_min(1)


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM per image (B,), optionally over a mask, for images in [-1, 1]."""
    return masked_mean(ssim_map(a, b), mask)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB per image (B,) for images in [-1, 1] (peak-to-peak 2), optionally over a mask."""
    mse = masked_mean((a - b) ** 2, mask)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
