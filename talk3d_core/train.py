"""Stage 8, train: the audio-guided deltaplane predictor on top of the personalized prior.

Frame n is rendered from the identity tri-plane plus its deltaplane, ``P_ID + F(P_ID, t_n)``, through
the prior's frozen decoder, renderer and super-resolution, from the frame's camera (tracked, or refined
by the pretrained prior), and compared with the crop. Two stages, as in the official code:

1. ``main`` (``steps``): the U-Net and its token encoders learn from L1 on the raw and the final
   image, LPIPS, a mouth loss on the lip/mouth mask, the identity loss and, after a warm-up, the
   lip-sync expert loss. Terms whose model is not installed are skipped with one log line each.
2. ``sr`` (``sr_steps``): the super-resolution module is fine-tuned with L1 (and LPIPS) on the final
   image, the deltaplanes fixed.

Batches: ``batch_size`` random training frames a step, or, with ``window_positions`` (the official
sync loader), windows of 5 consecutive training frames of which only those positions are rendered;
the lip-sync expert sees each window's face boxes, its rendered frames among ground-truth ones, so
the term costs no extra render. Adam with a step decay (x ``lr_decay`` every ``decay_every_epochs``
epochs). Batches, eye noise and renderer jitter are functions of (seed, step) only; checkpoints are
atomic and a resumed run ends with the same weights as an uninterrupted one. Logs:
``train_log.jsonl`` (one line per step), TensorBoard scalars (``tensorboard/``) and sample renders
(``samples/``) every ``sample_every`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from talk3d_core.metrics.motion import silent_frames
from talk3d_core.model.deltaplane import TOKEN_NAMES, DeltaplaneConfig, fit_opening_predictor
from talk3d_core.model.gfpgan import GFPGAN, GFPGAN_WEIGHTS, load_gfpgan
from talk3d_core.model.subject import (
    SubjectData,
    face_box_pixels,
    face_boxes,
    mouth_boxes,
    window_batch,
    window_starts,
)
from talk3d_core.model.talking_head import SR_NETWORKS, Prior, TalkingHead
from talk3d_core.nets.arcface import identity_loss
from talk3d_core.nets.lipsync_expert import SYNC_FRAMES, face_box_crops, mel_window, sync_expert_loss
from talk3d_core.nets.lpips import lpips_loss
from talk3d_core.nets.optional import OptionalNets
from talk3d_core.nets.requirements import needed_nets
from talk3d_core.util.config import from_settings
from talk3d_core.util.images import to_uint8, to_unit
from talk3d_core.util.io import atomic_path
from talk3d_core.util.runs import Run, check_finite, fingerprint, pick_device, seed_step
from talk3d_core.util.sampling import evenly_spaced
from talk3d_core.util.weights import DEFAULT_MANIFEST, DEFAULT_WEIGHTS_DIR, require

log = logging.getLogger(__name__)

STAGES = ("main", "sr")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of the deltaplane stage (the network's sizes are in DeltaplaneConfig).

    Loss weights follow the official code: L1 x16 on the raw and the final image, LPIPS x1, mouth
    x15 (L2 over the mouth pixels, plus LPIPS when available), identity x1 on the face region,
    lip-sync expert x0.01 after ``sync_warmup_epochs``. The defaults are the CPU preset's; the
    official recipe (config/paper.yaml) also sets ``window_positions`` (1, 3) with ``batch_size`` 4,
    ``weight_lpips_raw`` 1, ``lpips_reduction`` "sum", ``mouth_image`` "raw", ``identity_crop``
    False and ``weight_lpips_sr`` 1 (workflow/schemas/config.schema.yaml says why each).
    """

    steps: int = 3000
    batch_size: int = 2
    window_positions: tuple[int, ...] | None = None
    sr_batch_size: int = 2
    lr: float = 5e-4
    lr_decay: float = 0.98
    decay_every_epochs: float = 2.0
    weight_l1: float = 16.0
    weight_l1_raw: float = 16.0
    weight_lpips: float = 1.0
    weight_lpips_raw: float = 0.0
    lpips_reduction: str = "mean"
    weight_mouth: float = 15.0
    mouth_image: str = "final"
    weight_identity: float = 1.0
    identity_crop: bool = True
    weight_sync: float = 0.01
    sync_warmup_epochs: float = 21.0
    weight_mouth_zoom: float = 0.0
    mouth_zoom: int = 32
    token_dropout: Mapping[str, float] = field(default_factory=dict)
    silence_share: float = 0.0
    opening_steps: int = 2000
    sr_steps: int = 300
    lr_sr: float = 1e-4
    weight_lpips_sr: float = 0.0
    sr: str = "eg3d"
    checkpoint_every: int = 200
    sample_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.sr_steps < 0 or self.batch_size < 1 or self.sr_batch_size < 1:
            raise ValueError(f"need steps >= 0, sr_steps >= 0, batch sizes >= 1; got {self}")
        if self.window_positions is not None:
            positions = tuple(int(p) for p in self.window_positions)
            object.__setattr__(self, "window_positions", positions)
            increasing = sorted(set(positions)) == list(positions)
            if not positions or not increasing or positions[0] < 0 or positions[-1] >= SYNC_FRAMES:
                raise ValueError(
                    f"window_positions must be increasing positions in 0..{SYNC_FRAMES - 1}, got {positions}"
                )
            if self.batch_size % len(positions):
                raise ValueError(
                    f"batch_size {self.batch_size} is not a whole number of windows of "
                    f"{len(positions)} frames (window_positions {list(positions)})"
                )
        if self.lpips_reduction not in ("mean", "sum"):
            raise ValueError(f"lpips_reduction must be 'mean' or 'sum', got {self.lpips_reduction!r}")
        if self.mouth_image not in ("final", "raw"):
            raise ValueError(f"mouth_image must be 'final' or 'raw', got {self.mouth_image!r}")
        if self.checkpoint_every < 1 or self.sample_every < 1:
            raise ValueError("checkpoint_every and sample_every must be >= 1")
        if self.mouth_zoom < 4:
            raise ValueError(f"mouth_zoom must be >= 4 rays a side, got {self.mouth_zoom}")
        if self.sr not in SR_NETWORKS:
            raise ValueError(f"sr must be one of {SR_NETWORKS}, got {self.sr!r}")
        if self.opening_steps < 0:
            raise ValueError(f"opening_steps must be >= 0, got {self.opening_steps}")
        if not 0 <= self.silence_share < 1:
            raise ValueError(f"silence_share must be in [0, 1), got {self.silence_share}")
        if self.silence_share > 0 and self.window_positions is not None:
            raise ValueError("silence_share draws single frames; it cannot be combined with window_positions")
        droppable = [name for name in TOKEN_NAMES if name != "null"]
        for name, p in self.token_dropout.items():
            if name not in droppable or not 0 <= p <= 1:
                raise ValueError(
                    f"token_dropout maps tokens {droppable} to probabilities in [0, 1], got {name}: {p}"
                )


def configs_from_settings(train: dict[str, Any]) -> tuple[DeltaplaneConfig, TrainConfig]:
    """The network and training configs of a validated ``train`` config section (schema in
    workflow/schemas/config.schema.yaml): its ``net`` preset with the section's token and
    conditioning choices, and every :class:`TrainConfig` field."""
    net_config = getattr(DeltaplaneConfig, train["net"])(
        tokens=tuple(train["tokens"]), conditioning=train["conditioning"], audio_frames=train["audio_frames"],
        decoder_conditioning=train["decoder_conditioning"], opening_frames=train["opening_frames"],
    )  # fmt: skip
    return net_config, from_settings(TrainConfig, train)


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


# ------------------------------------------------------------------------------------------- losses


def loss_nets(
    cfg: TrainConfig,
    device: torch.device,
    sync_weights: str | os.PathLike[str] | None = None,
    *,
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    manifest: str | os.PathLike[str] = DEFAULT_MANIFEST,
    required: bool = False,
) -> OptionalNets:
    """The optional nets behind the loss terms with a nonzero weight (:func:`needed_nets`: LPIPS also
    serves the mouth term), ArcFace and the lip-sync expert from ``weights_dir`` (``sync_weights``:
    another expert file); each missing one is logged and its term skipped, or with ``required``
    (``allow_missing_nets: false``) it is an error. The lip-sync term needs window batches
    (``window_positions``): without them the expert is not loaded and the log says so."""
    factories: dict[str, Callable[[], tuple[Any, str]]] = {
        "lpips": lambda: lpips_loss(device, weights_dir=weights_dir, manifest=manifest),
        "identity": lambda: identity_loss(
            device, weights_dir=weights_dir, manifest=manifest, crop=cfg.identity_crop
        ),
        "sync_expert": lambda: sync_expert_loss(device, weights=sync_weights, weights_dir=weights_dir),
    }
    names = needed_nets(dataclasses.asdict(cfg))
    no_windows = "sync_expert" in names and cfg.window_positions is None
    if no_windows and required:
        raise ValueError(
            "train.weight_sync > 0 with allow_missing_nets: false needs train.window_positions (the "
            "lip-sync expert scores windows of consecutive frames)"
        )
    builders = {name: factories[name] for name in names if not (name == "sync_expert" and no_windows)}
    nets = OptionalNets.load(builders, purpose="training", required=required)
    if no_windows:
        nets.missing("sync_expert", "the lip-sync term needs window batches (train.window_positions)")
    return nets


def deltaplane_losses(
    out: dict[str, Tensor],
    target: Tensor,
    face: Tensor,
    mouth: Tensor,
    cfg: TrainConfig,
    nets: OptionalNets,
) -> dict[str, Tensor]:
    """Weighted loss terms of a rendered batch and their ``total``.

    out: the render dict; target (B, 3, S, S) in [-1, 1]; face and mouth (B, 1, S, S) bool masks.
    Terms: l1 and l1_raw (means; the raw image against the area-downsampled target), lpips and
    lpips_raw (LPIPS of the final and the raw image, per frame, then ``lpips_reduction`` over the
    batch), mouth (:func:`mouth_loss`), identity (ArcFace on the face region, mean over the batch).
    """
    image, raw = out["image"], out["image_raw"]
    target_raw = F.interpolate(target, size=raw.shape[-2:], mode="area")
    reduce = torch.sum if cfg.lpips_reduction == "sum" else torch.mean
    terms = {"l1": F.l1_loss(image, target), "l1_raw": F.l1_loss(raw, target_raw)}
    weights = {"l1": cfg.weight_l1, "l1_raw": cfg.weight_l1_raw}
    if nets.lpips is not None and cfg.weight_lpips > 0:
        terms["lpips"], weights["lpips"] = reduce(nets.lpips(image, target)), cfg.weight_lpips
    if nets.lpips is not None and cfg.weight_lpips_raw > 0:
        terms["lpips_raw"], weights["lpips_raw"] = reduce(nets.lpips(raw, target_raw)), cfg.weight_lpips_raw
    if cfg.weight_mouth > 0:
        if cfg.mouth_image == "raw":
            terms["mouth"] = mouth_loss(raw, target_raw, mouth, nets, cfg.lpips_reduction)
        else:
            terms["mouth"] = mouth_loss(image, target, mouth, nets, cfg.lpips_reduction, box=True)
        weights["mouth"] = cfg.weight_mouth
    if nets.identity is not None and cfg.weight_identity > 0:
        f = face.float()
        terms["identity"] = nets.identity(image * f, target * f).mean()
        weights["identity"] = cfg.weight_identity
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


def mouth_loss(
    image: Tensor, target: Tensor, mouth: Tensor, nets: OptionalNets, reduction: str, *, box: bool = False
) -> Tensor:
    """The mouth term of images (B, 3, H, W) against targets, both in [-1, 1].

    ``mouth`` (B, 1, S, S) bool, at the crop resolution: area-downsampled to H and rounded when H is
    smaller (Talk3D's 128 px mouth mask). Squared error summed over the mouth pixels / (3 x their
    count over the batch), so a small mouth weighs as much as a wide one; plus, with LPIPS, LPIPS of
    the mouth-masked images (``box``: of the mouth box of each image, resampled to 64^2) reduced
    over the batch by ``reduction`` ("mean" or "sum").
    """
    m = mouth.float()
    if m.shape[-2:] != image.shape[-2:]:
        m = F.interpolate(m, size=image.shape[-2:], mode="area").round()
    term = ((image - target).pow(2) * m).sum() / (3 * m.sum()).clamp(min=1.0)
    if nets.lpips is None:
        return term
    if box:
        crops = [
            (image[i : i + 1, :, t : t + s, x : x + s], target[i : i + 1, :, t : t + s, x : x + s])
            for i, (t, x, s) in enumerate(mouth_boxes(mouth))
        ]
        a = torch.cat([F.interpolate(c[0], size=(64, 64), mode="bilinear") for c in crops])
        b = torch.cat([F.interpolate(c[1], size=(64, 64), mode="bilinear") for c in crops])
    else:
        a, b = image * m, target * m
    reduce = torch.sum if reduction == "sum" else torch.mean
    return term + reduce(nets.lpips(a, b))


def sr_losses(
    out: dict[str, Tensor], target: Tensor, cfg: TrainConfig, nets: OptionalNets
) -> dict[str, Tensor]:
    """Weighted loss terms of the super-resolution fine-tune and their ``total``: l1 (mean) and, with
    ``weight_lpips_sr``, lpips (``lpips_reduction`` over the batch) of the final image (B, 3, S, S)
    against the target, both in [-1, 1]."""
    image = out["image"]
    terms = {"l1": F.l1_loss(image, target)}
    weights = {"l1": cfg.weight_l1}
    if nets.lpips is not None and cfg.weight_lpips_sr > 0:
        per_frame = nets.lpips(image, target)
        terms["lpips"] = per_frame.sum() if cfg.lpips_reduction == "sum" else per_frame.mean()
        weights["lpips"] = cfg.weight_lpips_sr
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


def sync_window_faces(raw: Tensor, truth: Tensor, boxes: Tensor, positions: Sequence[int]) -> Tensor:
    """The lip-sync expert's windows: (W, 5, 3, 96, 96) face boxes in [-1, 1], RGB.

    raw (W * P, 3, R, R): the renders of each window's ``positions`` (P of them, window-major), the
    same renders as the reconstruction losses'; truth (W, 5, 3, R, R): the windows' crops at the
    render's resolution; boxes (W, 5, 4) int face boxes x1, y1, x2, y2 in pixels of R. As Talk3D: the
    rendered positions hold the renders' boxes (nearest resampling, with gradients), the others the
    crops' boxes (bilinear).
    """
    w, t = truth.shape[:2]
    positions = list(positions)
    if raw.shape[0] != w * len(positions) or boxes.shape != (w, t, 4):
        raise ValueError(
            f"sync windows: {raw.shape[0]} renders, {w} windows of {t} crops, positions {positions}, "
            f"boxes {tuple(boxes.shape)}"
        )
    real_positions = [p for p in range(t) if p not in positions]
    real = face_box_crops(
        truth[:, real_positions].flatten(0, 1), boxes[:, real_positions].flatten(0, 1), "bilinear"
    )
    fake = face_box_crops(raw, boxes[:, positions].flatten(0, 1), "nearest")
    real, fake = real.unflatten(0, (w, len(real_positions))), fake.unflatten(0, (w, len(positions)))
    frames = [
        fake[:, positions.index(p)] if p in positions else real[:, real_positions.index(p)] for p in range(t)
    ]
    return torch.stack(frames, dim=1)


def _window_sync_loss(
    raw: Tensor,
    data: SubjectData,
    window: np.ndarray,
    positions: Sequence[int],
    sync_audio: tuple[np.ndarray, float],
    sync: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """Lip-sync expert loss (mean over the windows) of the step's windows (W, 5 frames), whose
    ``positions`` were rendered as ``raw`` (W * P, 3, R, R): the other frames' crops are
    area-downsampled to R (Talk3D resizes its 512 crops to the 128 render's size), every frame's face
    box is scaled to R, and each window's mel starts at its first frame."""
    size = raw.shape[-1]
    flat = window.reshape(-1)
    crops = F.interpolate(to_unit(data.crops[flat].to(raw.device)), size=(size, size), mode="area")
    boxes = face_box_pixels(data.face_box[flat], size).view(*window.shape, 4)
    faces = sync_window_faces(raw, crops.unflatten(0, window.shape), boxes, positions)
    mel, fps = sync_audio
    mels = torch.as_tensor(np.stack([mel_window(mel, int(f), fps) for f in window[:, 0]]), device=raw.device)
    return sync(faces, mels).mean()


# ----------------------------------------------------------------------------------------- training


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: float) -> float:
    """Adam's rate at main-stage ``step`` (0-based): ``lr`` x ``lr_decay`` per ``decay_every_epochs``."""
    return cfg.lr * cfg.lr_decay ** math.floor(step / (steps_per_epoch * cfg.decay_every_epochs))


@torch.no_grad()
def sample_sheet(
    head: TalkingHead,
    data: SubjectData,
    frames: Sequence[int],
    out_png: str | os.PathLike[str],
) -> None:
    """Crops (top row) over renders (bottom row) of ``frames``, for looking at progress."""
    was_training = head.training
    head.eval()
    cond = data.conditions.gather(frames, head.net_config.audio_frames, head.device)
    out = head(cond, data.cameras[list(frames)].to(head.device), jitter=False)
    head.train(was_training)
    top = data.crops[list(frames)].permute(0, 2, 3, 1).numpy()
    bottom = to_uint8(out["image"])
    sheet = np.concatenate([np.concatenate(list(top), axis=1), np.concatenate(list(bottom), axis=1)], axis=0)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        Image.fromarray(sheet).save(tmp)


def draw_frames(pool: np.ndarray, silent: np.ndarray, n: int, silence_share: float) -> np.ndarray:
    """``n`` random frames (n,) of ``pool``, each taken instead from ``silent`` with probability
    ``silence_share`` (when it is not empty), from torch's generator (reseeded every step).

    A clip's pauses are few (german: 28 of 455 training frames), so uniform batches seldom show the
    mouth shut; docs/decisions.md#silence-share measures what drawing them more often does."""
    frames = pool[torch.randint(len(pool), (n,)).numpy()]
    if silence_share > 0 and len(silent):
        quiet = (torch.rand(n) < silence_share).numpy()
        frames[quiet] = silent[torch.randint(len(silent), (int(quiet.sum()),)).numpy()]
    return frames


def _sample_frames(data: SubjectData, n: int = 4) -> list[int]:
    """Evenly spaced test frames (training frames when there are none), for the sample renders."""
    pool = np.flatnonzero(~data.train)
    if len(pool) == 0:
        pool = np.flatnonzero(data.train)
    return pool[evenly_spaced(len(pool), n)].tolist()


def train_deltaplane(
    data: SubjectData,
    prior: Prior,
    out_dir: str | os.PathLike[str],
    *,
    net_config: DeltaplaneConfig,
    train_config: TrainConfig,
    sync_audio: tuple[np.ndarray, float] | None = None,
    nets: OptionalNets | None = None,
    progress: bool | None = None,
    run_id: str = "",
    restart_on_mismatch: bool = False,
    device: str | None = None,
    on_checkpoint: Callable[[TalkingHead, int, str], None] | None = None,
    gfpgan: GFPGAN | None = None,
    silent: np.ndarray | None = None,
) -> TalkingHead:
    """Train the deltaplane predictor (then fine-tune the super-resolution) on ``data``'s training
    frames; resume from ``out_dir/checkpoint.pt``.

    data: crops, masks, cameras (the prior's frame cameras) and conditions of every frame; prior: the
    prior stage's model (:func:`talk3d_core.model.talking_head.load_prior`). ``sync_audio``: the
    Wav2Lip mel (80, T) of the clip and the fps, for the lip-sync expert term, which also needs
    window batches (``window_positions``) and ``data.face_box``; ``nets``: the loss nets (default
    :func:`loss_nets` with no lip-sync expert weights). Writes ``checkpoint.pt`` every
    ``checkpoint_every`` steps and at the end of each stage, ``train_log.jsonl``, ``tensorboard/`` and
    ``samples/step_XXXXXX.png``. A checkpoint of other settings (or another ``run_id``, e.g. the code
    hash) is an error, or with ``restart_on_mismatch`` parked in ``checkpoints/``.
    ``on_checkpoint(head, step, stage)`` runs every ``checkpoint_every`` steps and at stage ends, after
    the checkpoint (if one was due, see :meth:`Run.due`) is written (e.g. to score the model at chosen
    steps); the head is in eval mode during the call, and since every step reseeds the
    random generator, what the call draws does not change the training. ``gfpgan``: with
    ``train_config.sr`` gfpgan, the GFPGAN v1.3 network (:func:`talk3d_core.model.gfpgan.load_gfpgan`)
    that the sr stage fine-tunes in place of EG3D's super-resolution and that then makes the final image.
    ``silent``: (N,) bool, the frames without speech (:func:`silent_frames`), which
    ``train_config.silence_share`` draws from.
    """
    from tensorboardX import SummaryWriter

    cfg = train_config
    out_dir = Path(out_dir)
    conditions = data.conditions
    if conditions is None or len(conditions) != len(data.train):
        got = "no" if conditions is None else len(conditions)
        raise ValueError(f"{out_dir}: {got} frames of conditions for {len(data.train)} frames")
    if data.crops is None or data.mouth is None or data.face is None:
        raise ValueError(f"{out_dir}: the training data has no crops or masks")
    patch = data.mouth_patch
    if cfg.weight_mouth_zoom > 0 and (patch is None or patch.shape[-1] != cfg.mouth_zoom):
        raise ValueError(
            f"{out_dir}: weight_mouth_zoom needs mouth patches of {cfg.mouth_zoom} px "
            "(read_subject_data(..., mouth_zoom=...))"
        )
    train_index = np.flatnonzero(data.train)
    if len(train_index) == 0:
        raise ValueError(f"{out_dir}: no training frames")
    if "opening" in net_config.tokens and conditions.opening is None:
        raise ValueError(f"{out_dir}: the opening token needs the footage's openings (features.parquet)")
    silent_index = np.zeros(0, dtype=np.int64)
    if cfg.silence_share > 0:
        if silent is None or np.shape(silent) != data.train.shape:
            raise ValueError(
                f"{out_dir}: train.silence_share needs the (N,) silent-frame mask of the {len(data.train)} "
                f"frames, got {None if silent is None else np.shape(silent)}"
            )
        silent_index = np.flatnonzero(np.asarray(silent, dtype=bool) & data.train)
        log.info(
            "%d of %d training frames are silent; %.0f%% of each batch is drawn from them",
            len(silent_index), len(train_index), 100 * cfg.silence_share * (len(silent_index) > 0),
        )  # fmt: skip
    positions = cfg.window_positions
    if positions is None:  # independent random frames; an epoch is one pass over them
        batch_size = min(cfg.batch_size, len(train_index))
        steps_per_epoch = len(train_index) / batch_size
    else:  # the official sync loader: an epoch is windows / windows a step, the remainder dropped
        windows = cfg.batch_size // len(positions)
        starts = window_starts(data.train, SYNC_FRAMES)
        if len(starts) < windows:
            raise ValueError(
                f"{out_dir}: {len(starts)} windows of {SYNC_FRAMES} consecutive training frames, "
                f"a step takes {windows} (train.batch_size / len(train.window_positions))"
            )
        steps_per_epoch = len(starts) // windows
    sync_after = cfg.sync_warmup_epochs * steps_per_epoch
    sr_batch_size = min(cfg.sr_batch_size, len(train_index))
    device = pick_device(device)
    torch.manual_seed(cfg.seed)
    if (cfg.sr == "gfpgan") != (gfpgan is not None):
        raise ValueError(
            f"{out_dir}: train.sr is {cfg.sr} but a GFPGAN network was {'not ' * (gfpgan is None)}given"
        )
    head = TalkingHead(
        prior.generator, prior.identity_planes, prior.w_id, net_config, audio_dim=conditions.audio.shape[2],
        audio_window=conditions.audio.shape[1], training=prior.training, gfpgan=gfpgan,
    ).to(device)  # fmt: skip
    nets = nets if nets is not None else loss_nets(cfg, device, None)
    if nets.sync_expert is not None and sync_audio is None:
        nets.missing("sync_expert", "no audio given for the lip-sync expert")
    if nets.sync_expert is not None and (positions is None or data.face_box is None):
        raise ValueError(
            f"{out_dir}: the lip-sync expert term needs window batches (train.window_positions) and the "
            "crops' face boxes (read_subject_data(..., face_box=...))"
        )
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
        "data": fingerprint(
            data.crops, data.face, data.mouth, data.cameras, data.train, data.mouth_patch, data.face_box
        ),
        "conditions": fingerprint(conditions.audio, conditions.eye, conditions.rotation, conditions.ldm),
        "prior": fingerprint(prior.identity_planes, prior.w_id),
        **({"silent": fingerprint(silent_index)} if cfg.silence_share > 0 else {}),
        **({"opening": fingerprint(conditions.opening)} if "opening" in net_config.tokens else {}),
        "losses": sorted(k for k in ("lpips", "identity", "sync_expert") if getattr(nets, k) is not None),
    }
    total = cfg.steps + cfg.sr_steps
    run = Run(
        out_dir, meta, total=total, device=device, restart_on_mismatch=restart_on_mismatch, desc="train",
        progress=progress,
    )  # fmt: skip
    state = run.state
    if state is None:  # starting over: the last run's curves and samples would mislead
        for folder in ("tensorboard", "samples"):
            shutil.rmtree(out_dir / folder, ignore_errors=True)
    else:
        head.net.load_state_dict(state["net"])
        head.sr_module.load_state_dict(state["superresolution"])
    opening = head.net.tokens.opening
    if opening is not None and state is None:
        # The predictor's own span: the central opening_frames of an audio_frames span are these.
        spans = conditions.gather(train_index, net_config.opening_frames, device)["audio"]
        target = torch.as_tensor(conditions.opening[train_index], device=device)
        losses = fit_opening_predictor(opening, spans, target, steps=cfg.opening_steps)
        if losses:
            log.info(
                "opening predictor: loss %.3f -> %.3f (last 100 steps)", losses[0], np.mean(losses[-100:])
            )
    step = run.start
    # Only a run with steps to take opens an event file (a finished run resumed leaves the folder alone).
    writer = (
        SummaryWriter(str(out_dir / "tensorboard"), purge_step=step, flush_secs=30) if step < total else None
    )
    samples = _sample_frames(data)
    optimizer: torch.optim.Optimizer | None = None
    with run:
        while step < total:
            stage = "main" if step < cfg.steps else "sr"
            if optimizer is None or optimizer.stage != stage:  # type: ignore[attr-defined]
                optimizer = _stage_optimizer(head, stage, cfg)
                if state is not None and state.get("stage", "main") == stage and state["step"] == step:
                    optimizer.load_state_dict(state["optimizer"])
            started = time.perf_counter()
            seed_step(cfg.seed, step)
            window = None  # (W, 5) frames of the step's sync windows
            if stage == "sr":
                frames = train_index[torch.randint(len(train_index), (sr_batch_size,)).numpy()]
            elif positions is None:
                frames = draw_frames(train_index, silent_index, batch_size, cfg.silence_share)
            else:
                window = window_batch(starts, step, windows, cfg.seed)[:, None] + np.arange(SYNC_FRAMES)
                frames = window[:, list(positions)].reshape(-1)
            cameras = data.cameras[frames].to(device)
            cond = conditions.gather(frames, net_config.audio_frames, device)
            target = to_unit(data.crops[frames].to(device))
            head.train(stage == "main")
            head.sr_module.train(stage == "sr")  # GFPGAN draws fresh noise while tuned, as officially
            if stage == "main":
                lr = learning_rate(cfg, step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # Each step drops (zeroes) the listed tokens with their probabilities, so the mouth cannot
                # be recalled from them alone (docs/decisions.md#mouth-at-128-px).
                drop = [name for name, p in sorted(cfg.token_dropout.items()) if float(torch.rand(())) < p]
                out = head(cond, cameras, drop=drop, jitter=True)
                terms = deltaplane_losses(
                    out, target, data.face[frames].to(device), data.mouth[frames].to(device), cfg, nets
                )
                if cfg.weight_mouth_zoom > 0:
                    planes = head.identity_planes + out["deltaplanes"]
                    zoomed = zoom_cameras(cameras, data.mouth_box[frames].to(device))
                    raw = head.render_raw(planes, zoomed, cfg.mouth_zoom, jitter=True)
                    truth = to_unit(data.mouth_patch[frames].to(device))
                    terms["mouth_zoom"] = F.l1_loss(raw, truth)
                    terms["total"] = terms["total"] + cfg.weight_mouth_zoom * terms["mouth_zoom"]
                if nets.sync_expert is not None and step >= sync_after:
                    terms["sync"] = _window_sync_loss(
                        out["image_raw"], data, window, positions, sync_audio, nets.sync_expert
                    )
                    terms["total"] = terms["total"] + cfg.weight_sync * terms["sync"]
            else:
                lr = cfg.lr_sr
                out = head(cond, cameras, jitter=True)  # the U-Net is frozen in this stage
                terms = sr_losses(out, target, cfg, nets)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            values = torch.stack([v.detach() for v in terms.values()]).tolist()
            check_finite(terms, values, f"{out_dir}: training", step + 1, run.checkpoint)
            optimizer.step()
            step += 1
            record = {"step": step, "stage": stage, "lr": lr}
            record |= {k: round(v, 6) for k, v in zip(terms, values, strict=True)}
            record["seconds"] = round(time.perf_counter() - started, 4)
            run.step(record)
            for key, value in [*zip(terms, values, strict=True), ("lr", lr)]:
                writer.add_scalar(f"{stage}/{key}", value, step)
            stage_end = step in (cfg.steps, total)
            if step % cfg.checkpoint_every == 0 or stage_end:
                if run.due() or stage_end:
                    run.save(
                        {
                            "step": step,
                            "stage": stage,
                            "net": head.net.state_dict(),
                            "superresolution": head.sr_module.state_dict(),
                            "optimizer": optimizer.state_dict(),
                        }
                    )
                log.info("step %d (%s): loss %.4f, l1 %.4f", step, stage, record["total"], record["l1"])
                if on_checkpoint is not None:
                    was_training = head.training
                    on_checkpoint(head.eval(), step, stage)
                    head.train(was_training)
            if step % cfg.sample_every == 0 or stage_end:
                sample_sheet(head, data, samples, out_dir / "samples" / f"step_{step:06d}.png")
    if writer is not None:
        writer.close()
    head.steps_run = {"main": min(step, cfg.steps), "sr": max(0, step - cfg.steps)}
    if gfpgan is not None:  # GFPGAN makes the final image once tuned (also when a finished run resumes)
        head.sr = "gfpgan" if head.steps_run["sr"] > 0 else "eg3d"
    return head.eval()


def _stage_optimizer(head: TalkingHead, stage: str, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over the deltaplane predictor (main) or the super-resolution module (sr): EG3D's, or with
    train.sr gfpgan all of GFPGAN's parameters, GFPGAN then making the final image from the raw render
    (the official tuning stage; the main stage's final image is EG3D's there too)."""
    sr = head.sr_module
    sr.requires_grad_(stage == "sr")
    head.net.requires_grad_(stage == "main")
    if head.net.tokens.opening is not None:  # fitted before the main stage, then frozen
        head.net.tokens.opening.predictor.requires_grad_(False)
        head.net.tokens.opening.head.requires_grad_(False)
    head.sr = "gfpgan" if stage == "sr" and head.gfpgan is not None else "eg3d"
    params = [p for p in (head.net if stage == "main" else sr).parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr if stage == "main" else cfg.lr_sr)
    optimizer.stage = stage  # type: ignore[attr-defined]
    return optimizer


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


def _face_boxes(crop_table: str | os.PathLike[str], frames: np.ndarray) -> np.ndarray:
    """The lip-sync expert's face box (N, 4) of every frame of ``frames`` (the features' frame
    column), from ``crop.parquet``'s crop landmarks."""
    from talk3d_core.crop import read_crop_table

    table = read_crop_table(crop_table)
    if not np.array_equal(table.frame, frames):
        raise ValueError(f"{crop_table}: its frames are not the features'; re-run the features stage")
    return face_boxes(table.lm68, table.size)


def train_stage(
    *,
    generator_pt: str | os.PathLike[str],
    identity_pt: str | os.PathLike[str],
    crops: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    crop_table: str | os.PathLike[str],
    prior_frames: str | os.PathLike[str],
    features_parquet: str | os.PathLike[str],
    audio_wav: str | os.PathLike[str],
    settings: dict[str, Any],
    fps: float,
    model_pt: str | os.PathLike[str],
    curves_png: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    manifest: str | os.PathLike[str] = DEFAULT_MANIFEST,
    run_id: str = "",
    device: str | None = None,
) -> TalkingHead:
    """Rule train: the deltaplane predictor and the super-resolution fine-tune of one subject, saved to
    ``model_pt`` (``deltaplane.pt``) with the loss curves; the checkpoint, step log, TensorBoard events
    and samples go beside it. settings: the validated ``train`` config section; crop_table: the crop
    stage's ``crop.parquet`` (its landmarks give the lip-sync expert's face boxes, read with window
    batches only); weights_dir and manifest: where the loss nets' weights are (config ``weights``)."""
    from talk3d_core.features import read_features
    from talk3d_core.model.subject import read_subject_data
    from talk3d_core.model.talking_head import load_prior

    out_dir = Path(model_pt).parent
    prior = load_prior(generator_pt, identity_pt)
    net_config, cfg = configs_from_settings(settings)
    features = read_features(features_parquet)
    face_box = _face_boxes(crop_table, features.frame) if cfg.window_positions is not None else None
    data = read_subject_data(
        features, prior_frames, crops=crops, masks=masks,
        size=prior.generator.config.image_resolution, background=prior.training["background"],
        mouth_zoom=cfg.mouth_zoom if cfg.weight_mouth_zoom > 0 else 0, face_box=face_box,
    )  # fmt: skip
    log.info(
        "training on %d frames (%d held out): %d + %d steps, tokens %s, %s conditioning of the %s",
        int(data.train.sum()), int((~data.train).sum()), cfg.steps, cfg.sr_steps,
        ", ".join(net_config.tokens), net_config.conditioning,
        "bottleneck and decoder" if net_config.decoder_conditioning else "bottleneck",
    )  # fmt: skip
    device_ = pick_device(device)
    nets = loss_nets(
        cfg, device_, settings["sync_weights"], weights_dir=weights_dir, manifest=manifest,
        required=not settings["allow_missing_nets"],
    )  # fmt: skip
    gfpgan = None
    if cfg.sr == "gfpgan":  # a missing file is an error naming the command that fetches it
        gfpgan = load_gfpgan(require(GFPGAN_WEIGHTS, weights_dir, manifest))
    sync_audio, silent = None, None
    if nets.sync_expert is not None or cfg.silence_share > 0:  # the clip's audio, read once
        from talk3d_core.util.media import read_wav_float

        wav, rate = read_wav_float(audio_wav)
        if nets.sync_expert is not None:  # the expert's own mel of the clip's audio
            from talk3d_core.nets.lipsync_expert import wav2lip_mel

            sync_audio = (wav2lip_mel(wav, rate), fps)
        if cfg.silence_share > 0:
            silent = silent_frames(wav, rate, len(data.train), fps)
    head = train_deltaplane(
        data, prior, out_dir, net_config=net_config, train_config=cfg, sync_audio=sync_audio, nets=nets,
        run_id=run_id, restart_on_mismatch=True, device=device, gfpgan=gfpgan, silent=silent,
    )  # fmt: skip
    log.info("trained %d main + %d super-resolution steps", head.steps_run["main"], head.steps_run["sr"])
    with atomic_path(model_pt) as tmp:
        torch.save(head.to_dict(), tmp)
    plot_loss_curves(out_dir / "train_log.jsonl", curves_png)
    return head
