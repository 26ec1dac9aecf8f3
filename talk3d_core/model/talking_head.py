"""The talking head: the personalized generator, the identity tri-plane P_ID and the deltaplane
predictor, rendering ``P_ID + F(P_ID, t_n)`` from a camera; and the loaders of the prior's and the
train stage's model files.

Both model files carry ``training`` (:func:`talk3d_core.model.personalized.training_record`): how the
prior was made, so render and evaluate read its background handling and camera geometry from the model.

The final image comes from EG3D's super-resolution, or (``train.sr: gfpgan``, the official release's
tuning stage) from GFPGAN v1.3 on the raw render (:mod:`talk3d_core.model.gfpgan`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from talk3d_core.model.deltaplane import DeltaplaneConfig, DeltaplaneNet
from talk3d_core.model.eg3d import GeneratorConfig, TriPlaneGenerator, camera_rays
from talk3d_core.model.gfpgan import GFPGAN, GFPGANConfig

SR_NETWORKS = ("eg3d", "gfpgan")


@dataclass
class Prior:
    """The prior stage's model: the personalized generator (eval mode), P_ID (1, 3, C, R, R), w_id
    (1, num_ws, w_dim) and how it was trained (:func:`talk3d_core.model.personalized.training_record`)."""

    generator: TriPlaneGenerator
    identity_planes: Tensor
    w_id: Tensor
    training: dict[str, Any]


class TalkingHead(nn.Module):
    """The prior's generator (frozen but for its super-resolution in the ``sr`` stage), the identity
    tri-plane and the deltaplane predictor: renders frame conditions from cameras.

    ``gfpgan``: GFPGAN v1.3 at the generator's image size, which the ``sr`` stage tunes instead of EG3D's
    super-resolution (frozen until then). :attr:`sr` names the network that makes the final image:
    ``eg3d`` (the default, and GFPGAN's main stage: the official trainer's 512 px losses see EG3D's
    image until the tuning stage) or ``gfpgan``.
    """

    def __init__(
        self,
        generator: TriPlaneGenerator,
        identity_planes: Tensor,
        w_id: Tensor,
        net_config: DeltaplaneConfig,
        *,
        audio_dim: int,
        audio_window: int,
        training: dict[str, Any] | None = None,
        gfpgan: GFPGAN | None = None,
    ) -> None:
        super().__init__()
        self.training_record = dict(training or {})
        self.steps_run: dict[str, int] = {}  # optimiser steps per stage that made it (train)
        gen = generator.config
        self.generator = generator
        self.generator.requires_grad_(False)
        self.register_buffer("identity_planes", identity_planes.detach().clone())  # (1, 3, C, R, R)
        self.register_buffer("w_id", w_id.detach().clone())  # (1, num_ws, w_dim)
        self.net = DeltaplaneNet(
            net_config,
            plane_channels=gen.plane_channels,
            plane_resolution=gen.plane_resolution,
            plane_axes=gen.plane_axes,
            audio_dim=audio_dim,
            audio_window=audio_window,
        )
        self.net_config = net_config
        self.audio_dim, self.audio_window = audio_dim, audio_window
        if gfpgan is not None:
            if gfpgan.config.out_size != gen.image_resolution:
                raise ValueError(
                    f"GFPGAN makes {gfpgan.config.out_size} px images, the generator "
                    f"{gen.image_resolution} px: train.sr gfpgan needs the paper generator (512 px, "
                    "GFPGAN v1.3's size)"
                )
            gfpgan.requires_grad_(False)
        self.gfpgan = gfpgan
        self._sr = "eg3d"

    @property
    def sr(self) -> str:
        """The network that makes the final image: ``eg3d`` or ``gfpgan`` (needs :attr:`gfpgan`)."""
        return self._sr

    @sr.setter
    def sr(self, name: str) -> None:
        if name not in SR_NETWORKS or (name == "gfpgan" and self.gfpgan is None):
            raise ValueError(
                f"sr must be one of {SR_NETWORKS} ('gfpgan' needs a GFPGAN network), got {name!r}"
            )
        self._sr = name

    @property
    def sr_module(self) -> nn.Module:
        """The super-resolution network the ``sr`` stage fine-tunes: GFPGAN when the head has one, else
        the generator's."""
        return self.gfpgan if self.gfpgan is not None else self.generator.superresolution

    def deltaplanes(self, cond: dict[str, Tensor], drop: Collection[str] = ()) -> Tensor:
        """dP (B, 3, C, R, R) for conditions of B frames; ``drop`` zeroes the named tokens."""
        batch = len(next(iter(cond.values())))
        return self.net(self.identity_planes.expand(batch, -1, -1, -1, -1), cond, drop)

    def forward(
        self,
        cond: dict[str, Tensor],
        cameras: Tensor,
        *,
        drop: Collection[str] = (),
        identity_only: bool = False,
        jitter: bool | None = None,
    ) -> dict[str, Tensor]:
        """Render P_ID + dP from cameras (B, 25); ``identity_only`` renders P_ID alone (dP = 0).
        Returns the generator's render dict plus ``deltaplanes`` (None with identity_only); with
        :attr:`sr` ``gfpgan`` its ``image`` is GFPGAN's from ``image_raw``, with fresh noise while GFPGAN
        is in training mode (as the official code, which also draws it at inference) and its stored
        noise in eval mode, so that a frame renders the same every time."""
        batch = len(cameras)
        planes = self.identity_planes.expand(batch, -1, -1, -1, -1)
        delta = None if identity_only else self.deltaplanes(cond, drop)
        if delta is not None:
            planes = planes + delta
        gfpgan = self.sr == "gfpgan"  # EG3D's super-resolution would be thrown away: skip it
        out = self.generator.render(
            planes, cameras, self.w_id.expand(batch, -1, -1), jitter=jitter, super_resolve=not gfpgan
        )
        if gfpgan:
            out["image"] = self.gfpgan.upscale(out["image_raw"], randomize_noise=self.gfpgan.training)
        return out | {"deltaplanes": delta}

    def render_raw(
        self, planes: Tensor, cameras: Tensor, resolution: int, jitter: bool | None = None
    ) -> Tensor:
        """Volume-rendered RGB (B, 3, resolution, resolution) of tri-planes (B, 3, C, R, R), without the
        super-resolution (e.g. a zoomed camera on the mouth, see :func:`talk3d_core.train.zoom_cameras`)."""
        gen = self.generator
        origins, directions = camera_rays(cameras.to(planes.dtype), resolution)
        features, _, _ = gen.renderer(planes, gen.decoder, origins, directions, jitter)
        return features[..., :3].transpose(1, 2).reshape(len(planes), 3, resolution, resolution)

    @property
    def device(self) -> torch.device:
        return self.identity_planes.device

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (see :func:`load_talking_head`); GFPGAN's config and
        weights only when it makes the final image."""
        gfpgan = {}
        if self.sr == "gfpgan":
            gfpgan = {
                "gfpgan_config": dataclasses.asdict(self.gfpgan.config),
                "gfpgan": self.gfpgan.state_dict(),
            }
        return gfpgan | {
            "generator_config": dataclasses.asdict(self.generator.config),
            "generator": self.generator.state_dict(),
            "identity_planes": self.identity_planes.cpu(),
            "w_id": self.w_id.cpu(),
            "net_config": dataclasses.asdict(self.net_config),
            "net": self.net.state_dict(),
            "audio_dim": self.audio_dim,
            "audio_window": self.audio_window,
            "training": self.training_record,
            "steps_run": self.steps_run,
            "sr": self.sr,
        }


def _generator_config(d: dict[str, Any]) -> GeneratorConfig:
    return GeneratorConfig(**{**d, "sr_channels": tuple(d["sr_channels"])})


def load_prior(generator_pt: str | os.PathLike[str], identity_pt: str | os.PathLike[str]) -> Prior:
    """The prior stage's model from its ``generator.pt`` and ``P_id.pt``."""
    saved = torch.load(generator_pt, map_location="cpu", weights_only=True)
    for key in ("config", "generator", "w_id", "training"):
        if key not in saved:
            raise ValueError(f"{generator_pt}: no '{key}' entry; not a prior generator.pt, re-run the prior")
    generator = TriPlaneGenerator(_generator_config(saved["config"]))
    generator.load_state_dict(saved["generator"])
    identity = torch.load(identity_pt, map_location="cpu", weights_only=True)
    planes = identity.get("planes") if isinstance(identity, dict) else None
    cfg = generator.config
    expected = (1, 3, cfg.plane_channels, cfg.plane_resolution, cfg.plane_resolution)
    if planes is None or tuple(planes.shape) != expected:
        got = None if planes is None else tuple(planes.shape)
        raise ValueError(f"{identity_pt}: identity tri-plane of shape {got}, the generator needs {expected}")
    return Prior(generator.eval(), planes, saved["w_id"], saved["training"])


def load_talking_head(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TalkingHead:
    """Rebuild a trained :class:`TalkingHead` from ``deltaplane.pt`` (eval mode). A file from before
    ``train.sr`` existed has EG3D's super-resolution."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    needed = {"generator_config", "generator", "identity_planes", "w_id", "net_config", "net", "training"}
    missing = needed - set(saved)
    if missing:
        raise ValueError(f"{path}: missing {sorted(missing)}; not a deltaplane checkpoint, re-run train")
    generator = TriPlaneGenerator(_generator_config(saved["generator_config"]))
    generator.load_state_dict(saved["generator"])
    sr = saved.get("sr", "eg3d")
    gfpgan = None
    if sr == "gfpgan":
        if "gfpgan" not in saved or "gfpgan_config" not in saved:
            raise ValueError(f"{path}: sr is gfpgan but the file has no GFPGAN weights; re-run train")
        gfpgan = GFPGAN(GFPGANConfig(**saved["gfpgan_config"]))
        gfpgan.load_state_dict(saved["gfpgan"])
    head = TalkingHead(
        generator,
        saved["identity_planes"],
        saved["w_id"],
        DeltaplaneConfig.from_dict(saved["net_config"]),
        audio_dim=saved["audio_dim"],
        audio_window=saved["audio_window"],
        training=saved["training"],
        gfpgan=gfpgan,
    )
    head.sr = sr
    head.net.load_state_dict(saved["net"])
    head.steps_run = dict(saved.get("steps_run", {}))
    return head.to(device).eval()
