"""A subject's own mouth-opening reader: a small CNN fitted, before training, to read the inner-lip
opening (crop landmarks) from the footage's zoomed mouth patches; frozen, it scores how far a rendered
mouth patch opens, so the train stage can ask the render to open as wide as the footage and to shut
where it shuts. A photometric loss on a mouth it cannot yet place pulls it towards the average, half
open mouth (docs/decisions.md#opening-reader); this reader measures the opening itself.

Nothing is downloaded: it is fitted in seconds on the clip's own training frames (about 7 s for 455
32 px patches and 1500 steps on one thread).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OpeningReader(nn.Module):
    """Mouth patches (B, 3, Z, Z) in [-1, 1] -> standardised opening (B,): (opening - mean) / std of
    the training frames' openings (``mean``, ``std`` buffers, in the landmarks' pixels)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, 2 * width, 4 * width):  # three stride-2 convolutions: 32 px -> 4 px
            layers += [nn.Conv2d(channels, out, 3, 2, 1), nn.LeakyReLU(0.2)]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, 1)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def forward(self, patches: Tensor) -> Tensor:
        return self.head(self.features(patches)).squeeze(-1)

    def pixels(self, patches: Tensor) -> Tensor:
        """The opening (B,) in the landmarks' pixels."""
        return self(patches) * self.std + self.mean


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Images (B, C, H, W) blurred by a separable Gaussian of ``sigma`` pixels (7 taps, edges
    replicated)."""
    taps = torch.arange(-3, 4, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    rows, cols = kernel.view(1, 1, 1, 7).repeat(c, 1, 1, 1), kernel.view(1, 1, 7, 1).repeat(c, 1, 1, 1)
    out = F.conv2d(F.pad(images, (3, 3, 0, 0), mode="replicate"), rows, groups=c)
    return F.conv2d(F.pad(out, (0, 0, 3, 3), mode="replicate"), cols, groups=c)


def fit_opening_reader(
    patches: Tensor, opening: np.ndarray, frames: np.ndarray, *, steps: int = 1500, seed: int = 0
) -> OpeningReader:
    """An :class:`OpeningReader` fitted (MSE on the standardised opening, Adam 1e-3, 32 patches a step)
    to the mouth patches (N, 3, Z, Z) in [-1, 1] and inner-lip openings (N,) px of the frames
    ``frames`` (indices; NaN openings, frames without landmarks, are left out). Each batch is blurred
    (sigma 0.3-1.5 px, 70% of steps), shifted by up to 2 px and changed in gain and offset, so that the
    reader also reads the softer, slightly misplaced mouths of a render in training. Returned frozen, in
    eval mode, on the patches' device; a function of ``seed`` only."""
    opening = np.asarray(opening, dtype=np.float64)
    frames = np.asarray(frames)[np.isfinite(opening[np.asarray(frames)])]
    if len(frames) < 2 or opening[frames].std() == 0:
        raise ValueError(f"fit_opening_reader: needs two frames of different openings, got {len(frames)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reader = OpeningReader().to(patches.device)
    mean, std = opening[frames].mean(), opening[frames].std()
    reader.mean.fill_(float(mean))
    reader.std.fill_(float(std))
    target = torch.as_tensor((opening - mean) / std, dtype=torch.float32, device=patches.device)
    optimizer = torch.optim.Adam(reader.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        batch = rng.choice(frames, 32)
        images = patches[batch]
        if rng.random() < 0.7:
            images = gaussian_blur(images, float(rng.uniform(0.3, 1.5)))
        dy, dx = (int(v) for v in rng.integers(-2, 3, 2))
        images = torch.roll(images, (dy, dx), (2, 3))
        images = images * float(rng.uniform(0.85, 1.15)) + float(rng.uniform(-0.1, 0.1))
        loss = (reader(images) - target[batch]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    reader.eval()
    reader.requires_grad_(False)
    return reader
