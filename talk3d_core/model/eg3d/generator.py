"""EG3D's tri-plane generator: mapping -> planes -> volume rendering -> super-resolution.

State-dict names match NVlabs' ``G_ema`` (``backbone.mapping.*``, ``backbone.synthesis.b{res}.*``,
``decoder.net.{0,2}.*``, ``superresolution.block{0,1}.*``), so checkpoint tensors map by name.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from talk3d_core.model.eg3d.config import NOISE_MODES, PLANE_AXES, GeneratorConfig
from talk3d_core.model.eg3d.layers import StyleGAN2Backbone
from talk3d_core.model.eg3d.renderer import ImportanceRenderer, OSGDecoder, camera_rays
from talk3d_core.model.eg3d.superresolution import SuperResolution


class TriPlaneGenerator(nn.Module):
    """z (B, z_dim) + camera label c (B, 25) -> images; every size from a :class:`GeneratorConfig`.

    Stages, each callable on its own (Talk3D renders an identity tri-plane plus a predicted residual):
    :meth:`mapping` -> ws, :meth:`planes` -> tri-plane, :meth:`render` -> images.
    ``noise_mode`` of the backbone defaults to "random" in training and "const" in eval mode.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = StyleGAN2Backbone(
            config.z_dim,
            config.c_dim,
            config.w_dim,
            config.plane_resolution,
            3 * config.plane_channels,
            mapping_layers=config.mapping_layers,
            mapping_lr_mul=config.mapping_lr_mul,
            w_avg_beta=config.w_avg_beta,
            channel_base=config.channel_base,
            channel_max=config.channel_max,
            conv_clamp=config.conv_clamp,
        )
        self.decoder = OSGDecoder(
            config.plane_channels, config.decoder_hidden, config.decoder_output_dim, config.decoder_lr_mul
        )
        self.renderer = ImportanceRenderer(
            PLANE_AXES[config.plane_axes],
            depth_resolution=config.depth_resolution,
            depth_resolution_importance=config.depth_resolution_importance,
            ray_start=config.ray_start,
            ray_end=config.ray_end,
            box_warp=config.box_warp,
            empty_outside_box=config.empty_outside_box,
            white_back=config.white_back,
            disparity_space_sampling=config.disparity_space_sampling,
        )
        self.superresolution = SuperResolution(
            config.decoder_output_dim,
            config.w_dim,
            config.sr_input_resolution,
            config.image_resolution,
            config.sr_channels,
            conv_clamp=config.sr_conv_clamp,
            antialias=config.sr_antialias,
            fp16=config.sr_fp16,
        )

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    def _noise_mode(self, noise_mode: str | None) -> str:
        if noise_mode is None:
            return "random" if self.training else "const"
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        return noise_mode

    def mapping(
        self,
        z: Tensor,
        c: Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> Tensor:
        """z (B, z_dim), c (B, 25) -> ws (B, num_ws, w_dim); truncation towards ``w_avg`` when psi < 1."""
        if self.config.c_gen_conditioning_zero:
            c = torch.zeros_like(c)
        return self.backbone.mapping(
            z, c * self.config.c_scale, truncation_psi, truncation_cutoff, update_emas
        )

    def planes(self, ws: Tensor, noise_mode: str | None = None) -> Tensor:
        """ws (B, num_ws, w_dim) -> tri-plane (B, 3, C, R, R) (planes in PLANE_AXES order)."""
        stacked = self.backbone.synthesis(ws, self._noise_mode(noise_mode))
        c, r = self.config.plane_channels, self.config.plane_resolution
        return stacked.reshape(ws.shape[0], 3, c, r, r)

    def render(
        self,
        planes: Tensor,
        c: Tensor,
        ws: Tensor,
        *,
        neural_rendering_resolution: int | None = None,
        jitter: bool | None = None,
        sr_noise_mode: str | None = None,
        super_resolve: bool = True,
    ) -> dict[str, Tensor]:
        """Render any tri-plane (B, 3, C, R, R) from cameras c (B, 25); ws styles the super-resolution.

        Returns ``image`` (B, 3, S, S) final RGB in about [-1, 1] (S = config.image_resolution),
        ``image_raw`` (B, 3, H, H) volume-rendered RGB, ``feature_image`` (B, C_out, H, H),
        ``image_depth`` (B, 1, H, H) world units along the ray, ``weights_sum`` (B, 1, H, H) opacity;
        H = ``neural_rendering_resolution`` (default from config). ``jitter`` defaults to training mode.
        ``super_resolve=False`` leaves ``image`` out (a caller that makes its own final image).
        """
        if planes.ndim != 5 or planes.shape[1] != 3:
            raise ValueError(f"planes must have shape (B, 3, C, R, R), got {tuple(planes.shape)}")
        h = neural_rendering_resolution or self.config.neural_rendering_resolution
        origins, directions = camera_rays(c.to(planes.dtype), h)
        features, depth, opacity = self.renderer(planes, self.decoder, origins, directions, jitter)
        batch = planes.shape[0]

        def as_image(x: Tensor) -> Tensor:
            return x.transpose(1, 2).reshape(batch, x.shape[-1], h, h)

        feature_image = as_image(features)
        image_raw = feature_image[:, :3]
        out = {
            "image_raw": image_raw,
            "image_depth": as_image(depth),
            "feature_image": feature_image,
            "weights_sum": as_image(opacity),
        }
        if super_resolve:
            noise = self.config.sr_noise_mode if sr_noise_mode is None else sr_noise_mode
            out["image"] = self.superresolution(image_raw, feature_image, ws, noise)
        return out

    def synthesis(
        self, ws: Tensor, c: Tensor, *, noise_mode: str | None = None, **render_kwargs
    ) -> dict[str, Tensor]:
        """render(planes(ws), c, ws): ws (B, num_ws, w_dim), c (B, 25) -> see :meth:`render`."""
        return self.render(self.planes(ws, noise_mode), c, ws, **render_kwargs)

    def forward(
        self,
        z: Tensor,
        c: Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        **synthesis_kwargs,
    ) -> dict[str, Tensor]:
        """z (B, z_dim), c (B, 25) -> images (see :meth:`render`); c conditions both mapping and camera."""
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, c, **synthesis_kwargs)


#: VIVE3D's ``evaluate_average_w``: 10,000 z from ``np.random.RandomState(123)``, psi 1, one w per z,
#: conditioned on the frontal camera of its generator's defaults (focal 3.5, pivot (0, 0, 0.2)).
W_AVG_SAMPLES = 10_000
W_AVG_SEED = 123
W_AVG_FOCAL = 3.5
W_AVG_PIVOT = (0.0, 0.0, 0.2)


@torch.no_grad()
def mapped_w_statistics(
    generator: TriPlaneGenerator,
    camera: np.ndarray | Tensor,
    *,
    n_samples: int = W_AVG_SAMPLES,
    seed: int = W_AVG_SEED,
    batch_size: int = 1000,
) -> tuple[Tensor, float]:
    """VIVE3D's average face latent: the mean first-layer w (1, w_dim) of ``n_samples`` z ~
    ``RandomState(seed).randn`` mapped with psi 1 under the camera label ``camera`` (1, 25), on the
    generator's device, and w_std, the samples' RMS distance to it (the scale of the pivot inversion's
    w-noise). Not the checkpoint's ``mapping.w_avg`` buffer, a training-time running mean over the
    training cameras."""
    if n_samples < 1:
        raise ValueError(f"mapped_w_statistics: n_samples must be >= 1, got {n_samples}")
    device = next(generator.parameters()).device
    z = np.random.RandomState(seed).randn(n_samples, generator.config.z_dim)
    c = torch.as_tensor(camera, dtype=torch.float32).to(device).reshape(1, -1)
    ws = []
    for start in range(0, n_samples, batch_size):
        chunk = torch.as_tensor(z[start : start + batch_size], dtype=torch.float32, device=device)
        ws.append(generator.mapping(chunk, c.expand(len(chunk), -1))[:, 0].double())
    w = torch.cat(ws)
    mean = w.mean(dim=0, keepdim=True)
    return mean.float(), float((w - mean).pow(2).sum(dim=1).mean().sqrt())
