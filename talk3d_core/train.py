"""Stage 8, train: the audio-guided deltaplane predictor on top of the personalized prior.

Frame n is rendered from the identity tri-plane plus its deltaplane, ``P_ID + F(P_ID, t_n)``, through
the prior's frozen decoder, renderer and super-resolution, from the frame's camera (tracked, or refined
by the pretrained prior), and compared with the crop. Two stages, as in the official code:

1. ``main`` (``steps``): the U-Net and its token encoders learn from L1 on the raw and the final
   image, LPIPS, a mouth loss on the lip/mouth mask, the identity loss and, after a warm-up, the
   lip-sync expert loss. Terms whose model is not installed are skipped with one log line each.
2. ``sr`` (``sr_steps``): the super-resolution module is fine-tuned with reconstruction loss only,
   the deltaplanes fixed.

Adam with a step decay (x ``lr_decay`` every ``decay_every_epochs`` epochs). Batches, eye noise and
renderer jitter are functions of (seed, step) only; checkpoints are atomic and a resumed run ends
with the same weights as an uninterrupted one. Logs: ``train_log.jsonl`` (one line per step),
TensorBoard scalars (``tensorboard/``) and sample renders (``samples/``) every ``sample_every`` steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from talk3d_core.deltaplane import DeltaplaneConfig, DeltaplaneNet
from talk3d_core.eg3d import GeneratorConfig, TriPlaneGenerator, camera_rays
from talk3d_core.features import FeatureTable
from talk3d_core.io import atomic_path
from talk3d_core.prior import SubjectData, open_checkpoint, step_seed, to_uint8, to_unit

log = logging.getLogger(__name__)

STAGES = ("main", "sr")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of the deltaplane stage (the network's sizes are in DeltaplaneConfig).

    Loss weights follow the official code: L1 x16 on the raw and the final image, LPIPS x1, mouth
    x15 (L2 over the mouth pixels, plus LPIPS on the mouth box when LPIPS is available), identity x1
    on the face region, lip-sync expert x0.01 after ``sync_warmup_epochs``.
    """

    steps: int = 20000
    batch_size: int = 2
    lr: float = 5e-4
    lr_decay: float = 0.98
    decay_every_epochs: float = 2.0
    weight_l1: float = 16.0
    weight_l1_raw: float = 16.0
    weight_lpips: float = 1.0
    weight_mouth: float = 15.0
    weight_identity: float = 1.0
    weight_sync: float = 0.01
    sync_warmup_epochs: float = 20.0
    weight_mouth_zoom: float = 0.0
    mouth_zoom: int = 32
    sr_steps: int = 1000
    lr_sr: float = 1e-4
    checkpoint_every: int = 200
    sample_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.sr_steps < 0 or self.batch_size < 1:
            raise ValueError(f"need steps >= 0, sr_steps >= 0, batch_size >= 1; got {self}")
        if self.checkpoint_every < 1 or self.sample_every < 1:
            raise ValueError("checkpoint_every and sample_every must be >= 1")
        if self.mouth_zoom < 4:
            raise ValueError(f"mouth_zoom must be >= 4 rays a side, got {self.mouth_zoom}")


# --------------------------------------------------------------------------------------- conditions


def configs_from_settings(train: dict[str, Any]) -> tuple[DeltaplaneConfig, TrainConfig]:
    """The network and training configs of a validated ``train`` config section (schema in
    workflow/schemas/config.schema.yaml): its ``net`` preset with the section's token and
    conditioning choices, and every :class:`TrainConfig` field."""
    net_config = getattr(DeltaplaneConfig, train["net"])(
        tokens=tuple(train["tokens"]), conditioning=train["conditioning"], audio_frames=train["audio_frames"],
        decoder_conditioning=train["decoder_conditioning"],
    )  # fmt: skip
    return net_config, TrainConfig(**{f.name: train[f.name] for f in dataclasses.fields(TrainConfig)})


@dataclass
class FrameConditions:
    """The per-frame conditioning inputs of the deltaplane predictor (N frames).

    audio (N, W, D) feature windows; eye (N,) AU45 scale; rotation (N, 3) yaw/pitch/roll degrees;
    ldm (N, 6) landmark token in [-1, 1]. A driving clip has its own audio and borrows the rest.
    """

    audio: np.ndarray
    eye: np.ndarray
    rotation: np.ndarray
    ldm: np.ndarray

    @classmethod
    def from_features(cls, table: FeatureTable) -> FrameConditions:
        if table.kind != "subject":
            raise ValueError("FrameConditions.from_features needs a subject features table")
        return cls(table.audio, table.eye, table.rotation, table.ldm)

    def __len__(self) -> int:
        return len(self.audio)

    def gather(self, frames: Sequence[int] | np.ndarray, audio_frames: int, device: torch.device) -> dict:
        """Conditioning of ``frames`` as the predictor takes it: "audio" (B, S, W, D), the windows of
        the S = ``audio_frames`` frames around each frame (the frame at S // 2, clamped at the clip's
        ends), "eye" (B,), "rotation" (B, 3), "ldm" (B, 6)."""
        frames = np.asarray(frames, dtype=np.int64)
        offsets = np.arange(audio_frames) - audio_frames // 2
        around = np.clip(frames[:, None] + offsets[None], 0, len(self) - 1)

        def tensor(x: np.ndarray) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)

        return {
            "audio": tensor(self.audio[around]),
            "eye": tensor(self.eye[frames]),
            "rotation": tensor(self.rotation[frames]),
            "ldm": tensor(self.ldm[frames]),
        }


def load_training_data(
    crops: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    prior_frames: str | os.PathLike[str],
    features: str | os.PathLike[str],
    size: int,
    *,
    background: str = "black",
    mouth_zoom: int = 0,
) -> tuple[SubjectData, FrameConditions]:
    """Crops and masks (resized to ``size``, background as the prior saw it), the prior's frame cameras
    (``prior/frames.parquet``: tracked, or refined by the pretrained prior), the features stage's split
    and each frame's conditioning. ``mouth_zoom`` > 0 also reads each crop's mouth box at the crop's
    full resolution (``data.mouth_patch``, ``data.mouth_box``, see :func:`mouth_patches`)."""
    import pandas as pd

    from talk3d_core.features import read_features
    from talk3d_core.io import list_frames
    from talk3d_core.prior import load_subject

    table = read_features(features)
    frames = pd.read_parquet(prior_frames)
    if len(frames) != len(table.frame) or not np.array_equal(frames["frame"].to_numpy(), table.frame):
        raise ValueError(
            f"{prior_frames}: {len(frames)} frames, {features} has {len(table.frame)}; re-run the prior"
        )
    if not np.array_equal(frames["split"].to_numpy(str), table.split.astype(str)):
        raise ValueError(f"{prior_frames}: its train/test split differs from {features}; re-run the prior")
    cameras = np.stack(frames["camera"].to_numpy()).astype(np.float32)
    crop_paths, mask_paths = list_frames(crops), list_frames(masks)
    data = load_subject(crop_paths, mask_paths, cameras, table.split == "train", size, background=background)
    if mouth_zoom:
        data.mouth_patch, data.mouth_box = mouth_patches(crop_paths, mask_paths, mouth_zoom, background)
    return data, FrameConditions.from_features(table)


def mouth_patches(
    crop_paths: Sequence[str | os.PathLike[str]],
    mask_paths: Sequence[str | os.PathLike[str]],
    zoom: int,
    background: str = "black",
) -> tuple[Tensor, Tensor]:
    """The mouth box of each crop at the crop's own resolution, resampled to ``zoom``^2 pixels.

    Returns patches (N, 3, zoom, zoom) uint8 and boxes (N, 3) float: top, left and side as fractions
    of the crop side (the box of :func:`mouth_boxes`), for :func:`zoom_cameras`.
    """
    from talk3d_core.prior import BACKGROUND_LABEL, MOUTH_LABELS

    patches, boxes = [], []
    for crop_path, mask_path in zip(crop_paths, mask_paths, strict=True):
        with Image.open(crop_path) as im:
            rgb = np.array(im.convert("RGB"))
        with Image.open(mask_path) as im:
            labels = np.asarray(im.resize(rgb.shape[1::-1], Image.Resampling.NEAREST))
        if background == "black":
            rgb[labels == BACKGROUND_LABEL] = 0
        mouth = torch.from_numpy(np.isin(labels, MOUTH_LABELS))[None, None]
        ((top, left, side),) = mouth_boxes(mouth)
        patch = Image.fromarray(rgb[top : top + side, left : left + side])
        patches.append(np.asarray(patch.resize((zoom, zoom), Image.Resampling.BOX)))
        boxes.append(np.array([top, left, side], np.float32) / rgb.shape[0])
    patch_tensor = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous()
    return patch_tensor, torch.from_numpy(np.stack(boxes))


def zoom_cameras(cameras: Tensor, boxes: Tensor) -> Tensor:
    """Cameras (B, 25) whose image is the box (B, 3: top, left, side as fractions of the image side) of
    the given cameras' images: same pose, intrinsics scaled by 1/side and shifted to the box's corner."""
    out = cameras.clone()
    k = out[:, 16:25].view(-1, 3, 3)
    top, left, side = (boxes[:, i].to(out) for i in range(3))
    k[:, 0, 2] = (k[:, 0, 2] - left) / side
    k[:, 1, 2] = (k[:, 1, 2] - top) / side
    k[:, :2, :2] = k[:, :2, :2] / side[:, None, None]
    return out


# -------------------------------------------------------------------------------------------- model


class TalkingHead(nn.Module):
    """The prior's generator (frozen but for its super-resolution in the ``sr`` stage), the identity
    tri-plane and the deltaplane predictor: renders frame conditions from cameras."""

    def __init__(
        self,
        generator: TriPlaneGenerator,
        identity_planes: Tensor,
        w_id: Tensor,
        net_config: DeltaplaneConfig,
        *,
        audio_dim: int,
        audio_window: int,
    ) -> None:
        super().__init__()
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
        Returns the generator's render dict plus ``deltaplanes`` (None with identity_only)."""
        batch = len(cameras)
        planes = self.identity_planes.expand(batch, -1, -1, -1, -1)
        delta = None if identity_only else self.deltaplanes(cond, drop)
        if delta is not None:
            planes = planes + delta
        out = self.generator.render(planes, cameras, self.w_id.expand(batch, -1, -1), jitter=jitter)
        return out | {"deltaplanes": delta}

    def render_raw(
        self, planes: Tensor, cameras: Tensor, resolution: int, jitter: bool | None = None
    ) -> Tensor:
        """Volume-rendered RGB (B, 3, resolution, resolution) of tri-planes (B, 3, C, R, R), without the
        super-resolution (e.g. a zoomed camera on the mouth, see :func:`zoom_cameras`)."""
        gen = self.generator
        origins, directions = camera_rays(cameras.to(planes.dtype), resolution)
        features, _, _ = gen.renderer(planes, gen.decoder, origins, directions, jitter)
        return features[..., :3].transpose(1, 2).reshape(len(planes), 3, resolution, resolution)

    @property
    def device(self) -> torch.device:
        return self.identity_planes.device

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (see :func:`load_talking_head`)."""
        return {
            "generator_config": dataclasses.asdict(self.generator.config),
            "generator": self.generator.state_dict(),
            "identity_planes": self.identity_planes.cpu(),
            "w_id": self.w_id.cpu(),
            "net_config": dataclasses.asdict(self.net_config),
            "net": self.net.state_dict(),
            "audio_dim": self.audio_dim,
            "audio_window": self.audio_window,
        }


def _generator_config(d: dict[str, Any]) -> GeneratorConfig:
    return GeneratorConfig(**{**d, "sr_channels": tuple(d["sr_channels"])})


def load_prior(
    generator_pt: str | os.PathLike[str], identity_pt: str | os.PathLike[str]
) -> tuple[TriPlaneGenerator, Tensor, Tensor]:
    """The prior stage's generator (eval mode), P_ID (1, 3, C, R, R) and w_id (1, num_ws, w_dim)."""
    saved = torch.load(generator_pt, map_location="cpu", weights_only=True)
    for key in ("config", "generator", "w_id"):
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
    return generator.eval(), planes, saved["w_id"]


def load_talking_head(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TalkingHead:
    """Rebuild a trained :class:`TalkingHead` from ``deltaplane.pt`` (eval mode)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"generator_config", "generator", "identity_planes", "w_id", "net_config", "net"} - set(saved)
    if missing:
        raise ValueError(f"{path}: missing {sorted(missing)}; not a deltaplane checkpoint, re-run train")
    generator = TriPlaneGenerator(_generator_config(saved["generator_config"]))
    generator.load_state_dict(saved["generator"])
    head = TalkingHead(
        generator,
        saved["identity_planes"],
        saved["w_id"],
        DeltaplaneConfig.from_dict(saved["net_config"]),
        audio_dim=saved["audio_dim"],
        audio_window=saved["audio_window"],
    )
    head.net.load_state_dict(saved["net"])
    return head.to(device).eval()


# ------------------------------------------------------------------------------------------- losses

ImageLoss = Callable[[Tensor, Tensor], Tensor]
SyncLoss = Callable[[Tensor, Tensor], Tensor]


@dataclass
class LossModels:
    """The optional networks behind some loss terms; None where unavailable (see ``reasons``)."""

    lpips: ImageLoss | None = None
    identity: ImageLoss | None = None
    sync: SyncLoss | None = None
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def available(
        cls, device: torch.device, cfg: TrainConfig, *, sync_weights: str | None = None
    ) -> LossModels:
        """Build every optional loss with a nonzero weight; log one line per missing one."""
        from talk3d_core.perceptual import identity_loss, lpips_loss

        models = cls()
        wanted: dict[str, Callable[[], tuple[Any, str]]] = {}
        if cfg.weight_lpips > 0 or cfg.weight_mouth > 0:
            wanted["lpips"] = lambda: lpips_loss(device)
        if cfg.weight_identity > 0:
            wanted["identity"] = lambda: identity_loss(device)
        if cfg.weight_sync > 0:
            from talk3d_core.syncnet import sync_expert_loss

            wanted["sync"] = lambda: sync_expert_loss(device, weights=sync_weights)
        for name, build in wanted.items():
            loss, reason = build()
            setattr(models, name, loss)
            if loss is None:
                models.reasons[name] = reason
                log.info("%s loss unavailable: %s; training without it", name, reason)
        return models


def mouth_boxes(mouth: Tensor, pad: float = 0.3, min_size: int = 8) -> list[tuple[int, int, int]]:
    """Square boxes (top, left, side) in pixels around each mask's mouth (B, 1, S, S), ``pad`` of the
    side added around; the image centre's lower half where a mask has no mouth pixel."""
    size = mouth.shape[-1]
    boxes = []
    for m in mouth[:, 0].cpu().numpy():
        rows, cols = np.nonzero(m)
        if len(rows) == 0:
            boxes.append((size // 2, size // 4, size // 2))
            continue
        side = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        side = int(min(size, max(min_size, math.ceil(side * (1 + 2 * pad)))))
        cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
        top = int(np.clip(round(cy - side / 2), 0, size - side))
        left = int(np.clip(round(cx - side / 2), 0, size - side))
        boxes.append((top, left, side))
    return boxes


def deltaplane_losses(
    out: dict[str, Tensor],
    target: Tensor,
    face: Tensor,
    mouth: Tensor,
    cfg: TrainConfig,
    models: LossModels,
) -> dict[str, Tensor]:
    """Weighted loss terms of a rendered batch and their ``total``.

    out: the render dict; target (B, 3, S, S) in [-1, 1]; face and mouth (B, 1, S, S) bool masks.
    Terms: l1, l1_raw (vs the area-downsampled target), lpips, mouth (squared error summed over mouth
    pixels / their count, plus LPIPS on the mouth box), identity (on the face region).
    """
    image, raw = out["image"], out["image_raw"]
    terms = {
        "l1": F.l1_loss(image, target),
        "l1_raw": F.l1_loss(raw, F.interpolate(target, size=raw.shape[-2:], mode="area")),
    }
    weights = {"l1": cfg.weight_l1, "l1_raw": cfg.weight_l1_raw}
    if models.lpips is not None and cfg.weight_lpips > 0:
        terms["lpips"], weights["lpips"] = models.lpips(image, target).mean(), cfg.weight_lpips
    if cfg.weight_mouth > 0:
        m = mouth.float()
        # Normalised by the mouth's own pixel count, so a small mouth weighs as much as a wide one.
        mouth_term = ((image - target).pow(2) * m).sum() / (3 * m.sum()).clamp(min=1.0)
        if models.lpips is not None:
            crops = [
                (image[i : i + 1, :, t : t + s, x : x + s], target[i : i + 1, :, t : t + s, x : x + s])
                for i, (t, x, s) in enumerate(mouth_boxes(mouth))
            ]
            a = torch.cat([F.interpolate(c[0], size=(64, 64), mode="bilinear") for c in crops])
            b = torch.cat([F.interpolate(c[1], size=(64, 64), mode="bilinear") for c in crops])
            mouth_term = mouth_term + models.lpips(a, b).mean()
        terms["mouth"], weights["mouth"] = mouth_term, cfg.weight_mouth
    if models.identity is not None and cfg.weight_identity > 0:
        f = face.float()
        terms["identity"] = models.identity(image * f, target * f).mean()
        weights["identity"] = cfg.weight_identity
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


# ----------------------------------------------------------------------------------------- training


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: float) -> float:
    """Adam's rate at main-stage ``step`` (0-based): ``lr`` x ``lr_decay`` per ``decay_every_epochs``."""
    return cfg.lr * cfg.lr_decay ** math.floor(step / (steps_per_epoch * cfg.decay_every_epochs))


def _fingerprint(*arrays: Tensor | np.ndarray | None) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        if a is not None:
            digest.update(np.ascontiguousarray(a.numpy() if isinstance(a, Tensor) else a).tobytes())
    return digest.hexdigest()[:16]


def _save(
    path: Path, head: TalkingHead, optimizer: torch.optim.Optimizer, step: int, stage: str, meta: dict
) -> None:
    """Atomic checkpoint: weights that train, the optimiser of ``stage`` ("main" or "sr"), settings."""
    with atomic_path(path) as tmp:
        torch.save(
            {
                "step": step,
                "stage": stage,
                "net": head.net.state_dict(),
                "superresolution": head.generator.superresolution.state_dict(),
                "optimizer": optimizer.state_dict(),
                "meta": meta,
            },
            tmp,
        )


@torch.no_grad()
def sample_sheet(
    head: TalkingHead,
    data: SubjectData,
    conditions: FrameConditions,
    frames: Sequence[int],
    out_png: str | os.PathLike[str],
) -> None:
    """Crops (top row) over renders (bottom row) of ``frames``, for looking at progress."""
    was_training = head.training
    head.eval()
    cond = conditions.gather(frames, head.net_config.audio_frames, head.device)
    out = head(cond, data.cameras[list(frames)].to(head.device), jitter=False)
    head.train(was_training)
    top = data.crops[list(frames)].permute(0, 2, 3, 1).numpy()
    bottom = to_uint8(out["image"])
    sheet = np.concatenate([np.concatenate(list(top), axis=1), np.concatenate(list(bottom), axis=1)], axis=0)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        Image.fromarray(sheet).save(tmp)


def _sample_frames(data: SubjectData, n: int = 4) -> list[int]:
    """Evenly spaced test frames (training frames when there are none), for the sample renders."""
    pool = np.flatnonzero(~data.train)
    if len(pool) == 0:
        pool = np.flatnonzero(data.train)
    return [int(pool[i]) for i in np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int)]


def train_deltaplane(
    data: SubjectData,
    conditions: FrameConditions,
    prior: tuple[TriPlaneGenerator, Tensor, Tensor],
    out_dir: str | os.PathLike[str],
    *,
    net_config: DeltaplaneConfig,
    train_config: TrainConfig = TrainConfig(),
    sync_audio: tuple[np.ndarray, float] | None = None,
    sync_weights: str | None = None,
    progress: bool | None = None,
    run_id: str = "",
    restart_on_mismatch: bool = False,
    device: str | None = None,
    on_checkpoint: Callable[[TalkingHead, int, str], None] | None = None,
) -> TalkingHead:
    """Train the deltaplane predictor (then fine-tune the super-resolution) on ``data``'s training
    frames; resume from ``out_dir/checkpoint.pt``.

    data: crops, masks and cameras (the prior's frame cameras) of every frame; conditions: the same
    frames' conditioning; prior: (generator, P_ID, w_id) from :func:`load_prior`. ``sync_audio``: the
    Wav2Lip mel (80, T) of the clip and the fps, for the lip-sync expert term. Writes ``checkpoint.pt``
    every ``checkpoint_every`` steps and at the end of each stage, ``train_log.jsonl``,
    ``tensorboard/`` and ``samples/step_XXXXXX.png``. A checkpoint of other settings (or another
    ``run_id``, e.g. the code hash) is an error, or with ``restart_on_mismatch`` set aside.
    ``on_checkpoint(head, step, stage)`` runs after each checkpoint is written (e.g. to score the model
    at chosen steps); the head is in eval mode during the call, and since every step reseeds the random
    generator, what the call draws does not change the training.
    """
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    cfg = train_config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(conditions) != len(data.train):
        raise ValueError(f"{out_dir}: {len(conditions)} frames of conditions for {len(data.train)} frames")
    if data.mouth is None:
        raise ValueError(f"{out_dir}: the training data has no mouth masks")
    patch = data.mouth_patch
    if cfg.weight_mouth_zoom > 0 and (patch is None or patch.shape[-1] != cfg.mouth_zoom):
        raise ValueError(
            f"{out_dir}: weight_mouth_zoom needs mouth patches of {cfg.mouth_zoom} px "
            "(load_training_data(..., mouth_zoom=...))"
        )
    train_index = np.flatnonzero(data.train)
    if len(train_index) == 0:
        raise ValueError(f"{out_dir}: no training frames")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator, planes, w_id = prior
    torch.manual_seed(cfg.seed)
    head = TalkingHead(
        generator,
        planes,
        w_id,
        net_config,
        audio_dim=conditions.audio.shape[2],
        audio_window=conditions.audio.shape[1],
    ).to(device)
    models = LossModels.available(device, cfg, sync_weights=sync_weights)
    if models.sync is not None and sync_audio is None:
        models.sync, models.reasons["sync"] = None, "no audio given for the lip-sync expert"
        log.info("sync loss unavailable: no audio given; training without it")
    meta = {
        # Everything that shapes the result but the sr budget: a finished fine-tune may be extended (the
        # main budget stays: the fine-tune was fitted to that stage's end).
        "train_config": {
            k: v
            for k, v in dataclasses.asdict(cfg).items()
            if k not in ("sr_steps", "checkpoint_every", "sample_every")
        },
        "net_config": dataclasses.asdict(net_config),
        "run_id": run_id,
        "data": _fingerprint(data.crops, data.face, data.mouth, data.cameras, data.train, data.mouth_patch),
        "conditions": _fingerprint(conditions.audio, conditions.eye, conditions.rotation, conditions.ldm),
        "prior": _fingerprint(planes, w_id),
        "losses": sorted(k for k in ("lpips", "identity", "sync") if getattr(models, k) is not None),
    }
    checkpoint, log_path = out_dir / "checkpoint.pt", out_dir / "train_log.jsonl"
    step = 0
    state = open_checkpoint(out_dir, meta, restart_on_mismatch, device, step_key="step")
    if state is None:  # starting over: the last run's curves and samples would mislead
        for folder in ("tensorboard", "samples"):
            shutil.rmtree(out_dir / folder, ignore_errors=True)
    else:
        head.net.load_state_dict(state["net"])
        head.generator.superresolution.load_state_dict(state["superresolution"])
        step = state["step"]
    batch_size = min(cfg.batch_size, len(train_index))
    steps_per_epoch = len(train_index) / batch_size
    sync_after = cfg.sync_warmup_epochs * steps_per_epoch
    total = cfg.steps + cfg.sr_steps
    # Only a run with steps to take opens an event file (a finished run resumed leaves the folder alone).
    writer = (
        SummaryWriter(str(out_dir / "tensorboard"), purge_step=step, flush_secs=30) if step < total else None
    )
    samples = _sample_frames(data)
    bar = tqdm(total=total, initial=step, disable=None if progress is None else not progress, desc="train")
    optimizer: torch.optim.Optimizer | None = None
    with open(log_path, "a") as log_file:
        while step < total:
            stage = "main" if step < cfg.steps else "sr"
            if optimizer is None or optimizer.stage != stage:  # type: ignore[attr-defined]
                optimizer = _stage_optimizer(head, stage, cfg)
                if state is not None and state.get("stage", "main") == stage and state["step"] == step:
                    optimizer.load_state_dict(state["optimizer"])
            started = time.perf_counter()
            torch.manual_seed(step_seed(cfg.seed, step))
            frames = train_index[torch.randint(len(train_index), (batch_size,)).numpy()]
            cameras = data.cameras[frames].to(device)
            cond = conditions.gather(frames, net_config.audio_frames, device)
            target = to_unit(data.crops[frames].to(device))
            head.train(stage == "main")
            if stage == "main":
                lr = learning_rate(cfg, step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                out = head(cond, cameras, jitter=True)
                terms = deltaplane_losses(
                    out, target, data.face[frames].to(device), data.mouth[frames].to(device), cfg, models
                )
                if cfg.weight_mouth_zoom > 0:
                    planes = head.identity_planes + out["deltaplanes"]
                    zoomed = zoom_cameras(cameras, data.mouth_box[frames].to(device))
                    raw = head.render_raw(planes, zoomed, cfg.mouth_zoom, jitter=True)
                    truth = to_unit(data.mouth_patch[frames].to(device))
                    terms["mouth_zoom"] = F.l1_loss(raw, truth)
                    terms["total"] = terms["total"] + cfg.weight_mouth_zoom * terms["mouth_zoom"]
                if models.sync is not None and step >= sync_after:
                    terms["sync"] = _sync_term(
                        head, data, conditions, train_index, sync_audio, models.sync, device
                    )
                    terms["total"] = terms["total"] + cfg.weight_sync * terms["sync"]
            else:
                lr = cfg.lr_sr
                out = head(cond, cameras, jitter=True)  # the U-Net is frozen in this stage
                terms = {"l1": F.l1_loss(out["image"], target)}
                terms["total"] = cfg.weight_l1 * terms["l1"]
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            values = torch.stack([v.detach() for v in terms.values()]).tolist()
            if not np.isfinite(values).all():
                bad = [k for k, v in zip(terms, values, strict=True) if not np.isfinite(v)]
                raise FloatingPointError(
                    f"{out_dir}: training diverged at step {step + 1} (non-finite {', '.join(bad)});"
                    f" {checkpoint} holds the last good state"
                )
            optimizer.step()
            step += 1
            record = {"step": step, "stage": stage, "lr": lr}
            record |= {k: round(v, 6) for k, v in zip(terms, values, strict=True)}
            record["seconds"] = round(time.perf_counter() - started, 4)
            log_file.write(json.dumps(record) + "\n")
            for key, value in [*zip(terms, values, strict=True), ("lr", lr)]:
                writer.add_scalar(f"{stage}/{key}", value, step)
            bar.update(1)
            stage_end = step in (cfg.steps, total)
            if step % cfg.checkpoint_every == 0 or stage_end:
                log_file.flush()
                _save(checkpoint, head, optimizer, step, stage, meta)
                log.info("step %d (%s): loss %.4f, l1 %.4f", step, stage, record["total"], record["l1"])
                if on_checkpoint is not None:
                    was_training = head.training
                    on_checkpoint(head.eval(), step, stage)
                    head.train(was_training)
            if step % cfg.sample_every == 0 or stage_end:
                sample_sheet(head, data, conditions, samples, out_dir / "samples" / f"step_{step:06d}.png")
    bar.close()
    if writer is not None:
        writer.close()
    return head.eval()


def _stage_optimizer(head: TalkingHead, stage: str, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over the deltaplane predictor (main) or the super-resolution module (sr)."""
    sr = head.generator.superresolution
    sr.requires_grad_(stage == "sr")
    head.net.requires_grad_(stage == "main")
    params = list(head.net.parameters()) if stage == "main" else list(sr.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr if stage == "main" else cfg.lr_sr)
    optimizer.stage = stage  # type: ignore[attr-defined]
    return optimizer


def _sync_term(
    head: TalkingHead,
    data: SubjectData,
    conditions: FrameConditions,
    train_index: np.ndarray,
    sync_audio: tuple[np.ndarray, float],
    sync: SyncLoss,
    device: torch.device,
) -> Tensor:
    """Lip-sync expert loss of one window of consecutive training frames (uses the torch RNG)."""
    from talk3d_core.syncnet import SYNC_FRAMES, mel_window

    mel, fps = sync_audio
    # Windows that lie entirely inside the training frames.
    starts = [
        f for f in train_index if f + SYNC_FRAMES - 1 < len(data.train) and data.train[f + SYNC_FRAMES - 1]
    ]
    start = int(starts[int(torch.randint(len(starts), ()).item())])
    frames = np.arange(start, start + SYNC_FRAMES)
    cond = conditions.gather(frames, head.net_config.audio_frames, device)
    out = head(cond, data.cameras[frames].to(device), jitter=True)
    window = torch.as_tensor(mel_window(mel, start, fps), dtype=torch.float32, device=device)
    return sync(out["image"][None], window[None]).mean()


def plot_loss_curves(
    log_path: str | os.PathLike[str], out_png: str | os.PathLike[str], window: int = 50
) -> None:
    """Every loss term of ``train_log.jsonl`` against the step (moving average over ``window`` steps,
    log scale), the super-resolution stage after a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line]
    terms = [k for k in (records[0] if records else {}) if k not in ("step", "stage", "lr", "seconds")]
    for r in records:
        terms += [k for k in r if k not in terms and k not in ("step", "stage", "lr", "seconds")]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for stage, style in zip(STAGES, ("-", ":"), strict=True):
        rows = [r for r in records if r["stage"] == stage]
        for i, term in enumerate(terms):
            points = [(r["step"], r[term]) for r in rows if term in r and r[term] > 0]
            if len(points) < 2:
                continue
            steps, values = np.array(points).T
            k = max(1, min(window, len(values) // 4))  # short runs still get a curve
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            label = term if stage == "main" else f"{term} (sr)"
            ax.plot(steps[k - 1 :], smooth, style, color=f"C{i}", label=label)
    sr_start = next((r["step"] for r in records if r["stage"] == "sr"), None)
    if sr_start is not None:
        ax.axvline(sr_start - 0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (moving average, {window} steps)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, ncol=2)
    else:
        ax.text(0.5, 0.5, "no training steps logged", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
