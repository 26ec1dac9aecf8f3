"""Randomly initialised talking heads at the CPU and paper sizes, shared by the benchmarks (the
weights do not change the cost)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from talk3d_core.camera import eg3d_camera
from talk3d_core.model.deltaplane import DeltaplaneConfig
from talk3d_core.model.eg3d import GeneratorConfig, TriPlaneGenerator
from talk3d_core.model.talking_head import TalkingHead

PRESETS = {
    "cpu": (GeneratorConfig.cpu, DeltaplaneConfig.cpu),
    "paper": (
        lambda **overrides: GeneratorConfig.paper(**{"plane_axes": "fixed", **overrides}),
        DeltaplaneConfig.paper,
    ),
}
AUDIO_DIM, AUDIO_WINDOW = 44, 8  # wav2vec2 CTC logits over 8 frames, the paper's features


def random_head(size: str, device: torch.device, **generator: Any) -> TalkingHead:
    """A TalkingHead of preset ``size`` ("cpu" or "paper") with a random generator and identity;
    ``generator``: GeneratorConfig fields over the preset's (e.g. plane_resolution=128)."""
    gen_preset, net_preset = PRESETS[size]
    gen_cfg, net_cfg = gen_preset(**generator), net_preset()
    torch.manual_seed(0)
    generator = TriPlaneGenerator(gen_cfg)
    with torch.no_grad():
        w = generator.mapping(torch.randn(1, gen_cfg.z_dim), torch.zeros(1, 25))
        planes = generator.planes(w, noise_mode="const")
    head = TalkingHead(generator, planes, w, net_cfg, audio_dim=AUDIO_DIM, audio_window=AUDIO_WINDOW)
    return head.to(device)


def random_conditions(batch: int, audio_frames: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Conditioning tokens of ``batch`` frames as FrameConditions.gather gives them."""
    return {
        "audio": torch.randn(batch, audio_frames, AUDIO_WINDOW, AUDIO_DIM, device=device),
        "eye": torch.rand(batch, device=device),
        "rotation": torch.randn(batch, 3, device=device),
        "ldm": torch.rand(batch, 6, device=device) * 2 - 1,
    }


def random_targets(batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A training batch's targets: random crops (B, 3, S, S) in [-1, 1], an all-face mask and a mouth
    box mask (B, 1, S, S) bool where a mouth would be."""
    target = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    face = torch.ones(batch, 1, size, size, dtype=torch.bool, device=device)
    mouth = torch.zeros_like(face)
    mouth[:, :, size * 5 // 8 : size * 3 // 4, size * 3 // 8 : size * 5 // 8] = True
    return target, face, mouth


def frontal_cameras(batch: int, device: torch.device) -> torch.Tensor:
    """(batch, 25) cameras a few degrees of yaw apart."""
    yaw = np.linspace(-5, 5, batch)
    return torch.tensor(
        eg3d_camera(yaw, np.zeros(batch), np.zeros(batch)), dtype=torch.float32, device=device
    )
