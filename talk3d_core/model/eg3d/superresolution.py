"""EG3D's hybrid super-resolution: feature image + raw RGB -> final RGB, two StyleGAN2 blocks.

Both blocks are styled by the generator's last w (repeated). The running RGB image starts as the
volume-rendered RGB and each block adds its ToRGB output (skip architecture), so the network learns
a residual on an upsampled raw image. Configurations of NVlabs' modules:

- SuperresolutionHybrid8XDC (FFHQ 512): input 128^2; block0 up to 256^2 (256 ch), block1 up to 512^2
  (128 ch): ``sr_channels=(256, 128)``.
- SuperresolutionHybrid2X / 4X (128 / 256 outputs): input at half the output; block0 keeps the
  resolution ("NoUp"), block1 upsamples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talk3d_core.model.eg3d.layers import SynthesisBlock


class SuperResolution(nn.Module):
    """rgb (B, 3, r, r), features (B, C, r, r), ws (B, num_ws, w_dim) -> image (B, 3, out, out).

    Inputs whose size r differs from ``input_resolution`` are first resized bilinearly (with
    antialiasing when ``antialias``). ``out / input_resolution`` must be 2 or 4.
    """

    def __init__(
        self,
        in_channels: int,
        w_dim: int,
        input_resolution: int,
        output_resolution: int,
        channels: tuple[int, int],
        *,
        conv_clamp: float | None = 256.0,
        antialias: bool = True,
        fp16: bool = False,
    ) -> None:
        super().__init__()
        factor = output_resolution // input_resolution
        if factor not in (2, 4) or factor * input_resolution != output_resolution:
            raise ValueError(
                f"super-resolution {input_resolution} -> {output_resolution}: factor must be 2 or 4"
            )
        self.input_resolution, self.antialias, self.fp16 = input_resolution, antialias, fp16
        block0_up = 2 if factor == 4 else 1
        self.block0 = SynthesisBlock(
            in_channels,
            channels[0],
            w_dim,
            input_resolution * block0_up,
            img_channels=3,
            up=block0_up,
            conv_clamp=conv_clamp,
        )
        self.block1 = SynthesisBlock(
            channels[0], channels[1], w_dim, output_resolution, img_channels=3, up=2, conv_clamp=conv_clamp
        )

    def forward(self, rgb: Tensor, features: Tensor, ws: Tensor, noise_mode: str = "none") -> Tensor:
        ws = ws[:, -1:].expand(-1, 3, -1)
        if features.shape[-1] != self.input_resolution:
            size = (self.input_resolution, self.input_resolution)
            features = F.interpolate(
                features, size=size, mode="bilinear", align_corners=False, antialias=self.antialias
            )
            rgb = F.interpolate(
                rgb, size=size, mode="bilinear", align_corners=False, antialias=self.antialias
            )
        # float16 only on CUDA, as NVlabs' blocks force float32 elsewhere; the image leaves in float32.
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16 and features.is_cuda):
            x, img = self.block0(features, rgb, ws, noise_mode)
            _, img = self.block1(x, img, ws, noise_mode)
        return img.float()
