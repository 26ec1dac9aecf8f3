"""The personalized generator of the prior stage (scratch or pretrained mode)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from talk3d_core.model.eg3d import GeneratorConfig, TriPlaneGenerator


class PersonalizedGenerator(torch.nn.Module):
    """A generator personalized to one subject: the generator, the identity latent w_id (1, num_ws,
    w_dim) and per-training-frame offsets o_n (N_train, num_ws, w_dim), so training frame n renders
    from w_id + o_n and P_ID = planes(w_id). The prior stage fits it from scratch or, in pretrained
    mode, builds it from the VIVE3D personalization of an EG3D checkpoint."""

    def __init__(self, gen_config: GeneratorConfig, n_train: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.generator = TriPlaneGenerator(gen_config)
        with torch.no_grad():
            z = torch.randn(1, gen_config.z_dim)
            c = torch.zeros(1, gen_config.c_dim)
            w = self.generator.mapping(z, c)
        self.w_id = torch.nn.Parameter(w.clone())
        self.offsets = torch.nn.Parameter(torch.zeros(n_train, *w.shape[1:]))
        self.steps_run = 0  # optimiser steps that made it (recorded in the prior's outputs)

    def ws(self, index: torch.Tensor | None) -> torch.Tensor:
        """Latents (B, num_ws, w_dim): w_id plus the offsets of training frames ``index`` (None: identity)."""
        if index is None:
            return self.w_id
        return self.w_id + self.offsets[index]

    def forward(self, index: torch.Tensor | None, cameras: torch.Tensor) -> dict[str, torch.Tensor]:
        """Render training frames ``index`` (their own latents), or with None the identity tri-plane
        (computed once and shared by every camera). The output also holds the ``planes`` rendered."""
        ws = self.ws(index)
        planes = self.generator.planes(ws)
        if index is None:
            ws, planes = ws.expand(len(cameras), -1, -1), planes.expand(len(cameras), -1, -1, -1, -1)
        return self.generator.render(planes, cameras, ws) | {"planes": planes}

    def occupancy(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Opacity (B, M) of one coarse ray interval at world points (M, 3) of tri-planes (B, 3, C, R, R).

        The density a ray sample sees, turned into the alpha of an interval of the coarse spacing
        (ray length / depth_resolution), so "solid" and "empty" mean what they mean to the renderer.
        """
        cfg = self.generator.config
        _, sigma = self.generator.renderer.decode(
            planes, self.generator.decoder, points.expand(len(planes), -1, -1)
        )
        spacing = (cfg.ray_end - cfg.ray_start) / cfg.depth_resolution
        return 1 - torch.exp(-F.softplus(sigma[..., 0] - 1) * spacing)

    @property
    def device(self) -> torch.device:
        return self.w_id.device


def training_record(mode: str, background: str, camera: dict[str, Any]) -> dict[str, Any]:
    """How a prior was made, stored in generator.pt and deltaplane.pt: ``mode`` ("scratch" or
    "pretrained"), ``background`` ("black": painted out, the model draws the person on black;
    "keep") and ``camera``: focal (normalised), radius and pivot of its camera labels."""
    if background not in ("black", "keep"):
        raise ValueError(f"background must be 'black' or 'keep', got {background!r}")
    geometry = {"focal": float(camera["focal"]), "radius": float(camera["radius"])}
    geometry["pivot"] = [float(v) for v in camera["pivot"]]
    return {"mode": mode, "background": background, "camera": geometry}
