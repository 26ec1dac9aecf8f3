"""Stage 7, prior (pretrained mode): VIVE3D personalization of a pretrained EG3D generator.

Five stages, each a plain function, all settings in :class:`PretrainedConfig`:

1. :func:`select_pivots`: M pivot frames from the training split, chosen for diverse head pose and
   expression (yaw, pitch, roll, mouth and eye opening; most neutral frame first, then farthest-point
   sampling), so nothing is hand-picked.
2. :func:`refine_cameras`: a small differentiable correction of an EG3D camera label (3 angles about
   the look-at pivot, 3 translation numbers), used by the inversions below.
3. :func:`invert_pivots`: joint optimisation of the identity latent ``w_id`` (from the generator's
   ``w_avg``), one offset ``o_m`` per pivot (small, L2 penalty) and the pivots' camera corrections,
   generator frozen.
4. :func:`pivotal_tuning`: latents and cameras fixed, the generator (backbone, decoder,
   super-resolution) fine-tuned on the pivots.
5. :func:`invert_frames`: every frame of the clip (training and test: the test split needs refined
   cameras too) gets its own offset (starting from the nearest pivot's) and camera correction,
   tuned generator frozen, a fixed number of steps per batch of frames.

:func:`personalize` runs them with checkpoints (atomic, every ``checkpoint_every`` steps and at
stage ends), per-step seeding (a resumed run ends bit-identical to an uninterrupted one) and a
JSON-lines log, and returns a :class:`~talk3d_core.prior.PersonalizedGenerator`, so that the scratch mode's
evaluation, contact sheet and outputs work unchanged.

Losses: L1 on the final and on the raw (neural-rendered) image, LPIPS and an ArcFace identity term
when :mod:`talk3d_core.nets.lpips` finds them, and the offsets' L2 penalty.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from talk3d_core.camera import EG3D_PIVOT
from talk3d_core.model.eg3d import TriPlaneGenerator
from talk3d_core.model.personalized import PersonalizedGenerator
from talk3d_core.model.subject import SubjectData
from talk3d_core.nets.arcface import identity_loss
from talk3d_core.nets.lpips import lpips_loss
from talk3d_core.nets.optional import OptionalNets
from talk3d_core.nets.requirements import needed_nets
from talk3d_core.util.images import to_unit
from talk3d_core.util.runs import Run, fingerprint, module_fingerprint, pick_device, seed_step

log = logging.getLogger(__name__)

STAGES = ("pivots", "tune", "frames")
FEATURE_NAMES = ("yaw", "pitch", "roll", "mouth_open", "eye_open")
# 68-point (iBUG) indices: inner lips (upper/lower centre), eyelid pairs, outer eye corners.
INNER_LIPS = (62, 66)
EYELID_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))
OUTER_EYE_CORNERS = (36, 45)
# LPIPS compares at most this size (EG3D's projector downsamples 512 renders to 256 for VGG too).
LPIPS_MAX_SIZE = 256


@dataclass(frozen=True)
class PretrainedConfig:
    """Settings of the VIVE3D personalization (the generator's sizes come from its checkpoint).

    Learning rates are per parameter unit: latents in W, rotations in degrees, translations in
    world units (the camera sits 2.7 from the origin). Steps are optimiser steps per stage; the frame
    inversion spends ``frame_steps`` on each batch of ``frame_batch_size`` frames.
    """

    n_pivots: int = 5
    # 3. pivot inversion
    pivot_steps: int = 500
    pivot_batch_size: int = 4
    lr_latent: float = 1e-2
    lr_rotation: float = 0.05
    lr_translation: float = 5e-4
    # 4. pivotal tuning
    tune_steps: int = 350
    tune_batch_size: int = 4
    lr_generator: float = 3e-4
    # 5. per-frame inversion
    frame_steps: int = 100
    frame_batch_size: int = 4
    lr_frame_offset: float = 5e-3
    # loss weights
    weight_l1: float = 1.0
    weight_l1_raw: float = 1.0
    weight_lpips: float = 1.0
    weight_identity: float = 0.1
    weight_offset: float = 1e-2
    # renderer: jittered depth samples while optimising (EG3D trains and renders that way)
    jitter: bool = True
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("n_pivots", "pivot_batch_size", "tune_batch_size", "frame_batch_size", "checkpoint_every")
        problems = [f"{name} must be >= 1" for name in positive if getattr(self, name) < 1]
        problems += [
            f"{name} must be >= 0"
            for name in ("pivot_steps", "tune_steps", "frame_steps")
            if getattr(self, name) < 0
        ]
        if problems:
            raise ValueError("invalid PretrainedConfig: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------
# 1. Pivot frames


def pivot_features(head_angles: np.ndarray, landmarks: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Standardised pose-and-expression features (N, 5) = :data:`FEATURE_NAMES`.

    head_angles (N, 3): yaw, pitch, roll in degrees (the camera table's columns); landmarks
    (N, 68, 2): iBUG points in any pixel frame. Mouth opening = inner-lip gap (62-66), eye opening =
    mean eyelid gap, both divided by the outer-corner inter-ocular distance. Each feature is shifted
    and scaled by its mean and standard deviation over the training frames (a constant feature stays 0).
    """
    angles = np.asarray(head_angles, dtype=np.float64)
    lm = np.asarray(landmarks, dtype=np.float64)
    train = np.asarray(train, dtype=bool)
    n = len(train)
    if angles.shape != (n, 3):
        raise ValueError(f"head angles must have shape ({n}, 3) (yaw, pitch, roll), got {angles.shape}")
    if lm.shape != (n, 68, 2):
        raise ValueError(f"landmarks must have shape ({n}, 68, 2), got {lm.shape}")
    if not (np.isfinite(angles).all() and np.isfinite(lm).all()):
        raise ValueError("head angles and landmarks must be finite")
    if not train.any():
        raise ValueError("no training frames to choose pivots from")

    def gap(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(lm[:, a] - lm[:, b], axis=-1)

    ocular = gap(*OUTER_EYE_CORNERS)
    if np.any(ocular <= 0):
        raise ValueError(f"frames {np.flatnonzero(ocular <= 0)[:10].tolist()} have coincident eye corners")
    mouth = gap(*INNER_LIPS) / ocular
    eyes = np.mean([gap(a, b) for a, b in EYELID_PAIRS], axis=0) / ocular
    raw = np.column_stack([angles, mouth, eyes])
    mean, std = raw[train].mean(axis=0), raw[train].std(axis=0)
    return (raw - mean) / np.where(std > 0, std, 1.0)


def select_pivots(features: np.ndarray, train: np.ndarray, n_pivots: int = 5) -> np.ndarray:
    """Sorted indices of ``n_pivots`` training frames spread over the feature space.

    features (N, F) from :func:`pivot_features`. The first pivot is the most neutral training frame
    (nearest to the features' median over the training frames); each next one is the training frame
    farthest from all chosen so far. Ties go to the lower frame index, so the choice is deterministic.
    """
    features = np.asarray(features, dtype=np.float64)
    train = np.asarray(train, dtype=bool)
    if features.ndim != 2 or len(features) != len(train):
        raise ValueError(f"features must be (N, F) with N = {len(train)}, got {features.shape}")
    candidates = np.flatnonzero(train)
    if not 1 <= n_pivots <= len(candidates):
        raise ValueError(
            f"n_pivots must be between 1 and the {len(candidates)} training frames, got {n_pivots}"
        )
    points = features[candidates]
    chosen = [int(np.argmin(np.linalg.norm(points - np.median(points, axis=0), axis=1)))]
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(n_pivots - 1):
        distance[chosen] = -1.0  # never pick a frame twice, even among duplicates
        pick = int(np.argmax(distance))
        chosen.append(pick)
        distance = np.minimum(distance, np.linalg.norm(points - points[pick], axis=1))
    return np.sort(candidates[chosen])


def nearest_pivot(features: np.ndarray, pivots: np.ndarray) -> np.ndarray:
    """For every frame, the position in ``pivots`` (not the frame index) of its nearest pivot (N,)."""
    features = np.asarray(features, dtype=np.float64)
    distance = np.linalg.norm(features[:, None] - features[np.asarray(pivots)][None], axis=-1)
    return np.argmin(distance, axis=1)


# ---------------------------------------------------------------------------------------------------
# 2. Camera refinement


def _head_rotation(angles_deg: torch.Tensor) -> torch.Tensor:
    """camera.head_rotation in torch: (B, 3) yaw, pitch, roll degrees -> Rz(roll) Rx(-pitch) Ry(yaw)."""
    yaw, pitch, roll = torch.deg2rad(angles_deg).unbind(dim=-1)
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)

    def matrix(*rows: torch.Tensor) -> torch.Tensor:
        return torch.stack(rows, dim=-1).reshape(*yaw.shape, 3, 3)

    tilt = -pitch  # looking up turns the head about -x in the viewer's frame
    cy, sy, ct, st, cr, sr = yaw.cos(), yaw.sin(), tilt.cos(), tilt.sin(), roll.cos(), roll.sin()
    r_yaw = matrix(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    r_pitch = matrix(one, zero, zero, zero, ct, -st, zero, st, ct)
    r_roll = matrix(cr, -sr, zero, sr, cr, zero, zero, zero, one)
    return r_roll @ r_pitch @ r_yaw


def refine_cameras(
    labels: torch.Tensor, delta: torch.Tensor, *, pivot: Sequence[float] = EG3D_PIVOT
) -> torch.Tensor:
    """Apply camera corrections ``delta`` (B, 6) to EG3D labels (B, 25); differentiable.

    delta[:, :3] are head angles (yaw, pitch, roll, degrees) composed after the label's own, in the
    head frame: the camera orbits ``pivot`` (the look-at point, world units) the opposite way and
    keeps its distance from the world origin (EG3D's camera sphere). A pure yaw correction d turns
    ``camera.eg3d_camera(yaw, ...)`` exactly into ``eg3d_camera(yaw + d, ...)``; pitch and roll compose
    the same way from a frontal camera. delta[:, 3:] then moves the camera in world units.
    Intrinsics are unchanged. A zero delta returns the labels (up to rounding).
    """
    if labels.ndim != 2 or labels.shape[1] != 25 or delta.shape != (labels.shape[0], 6):
        raise ValueError(
            f"need labels (B, 25) and delta (B, 6), got {tuple(labels.shape)} and {tuple(delta.shape)}"
        )
    cam2world = labels[:, :16].reshape(-1, 4, 4)
    rotation, origin = cam2world[:, :3, :3], cam2world[:, :3, 3]
    # Head angles compose on the right of R_head; cam2world's rotation is R_head^T (up to the OpenCV
    # axis flip), so the camera turns by R_delta^T in the world frame.
    turn = _head_rotation(delta[:, :3].to(labels.dtype)).transpose(1, 2)
    p = torch.as_tensor(pivot, dtype=labels.dtype, device=labels.device).reshape(1, 3)
    back = F.normalize(((origin - p)[:, None] @ turn.transpose(1, 2))[:, 0], dim=-1)
    # Distance along the new viewing ray that puts the camera back on its sphere |origin| = radius.
    radius_sq = (origin * origin).sum(dim=-1)
    pb = (p * back).sum(dim=-1)
    along = -pb + torch.sqrt(pb * pb - (p * p).sum() + radius_sq)
    new_origin = p + along[:, None] * back + delta[:, 3:].to(labels.dtype)
    top = torch.cat([turn @ rotation, new_origin[:, :, None]], dim=2)  # (B, 3, 4)
    refined = torch.cat([top, cam2world[:, 3:]], dim=1).reshape(-1, 16)
    return torch.cat([refined, labels[:, 16:]], dim=1)


# ---------------------------------------------------------------------------------------------------
# Losses and the optimisation loop's plumbing


def reconstruction_terms(
    out: dict[str, torch.Tensor],
    target: torch.Tensor,
    cfg: PretrainedConfig,
    losses: OptionalNets,
    offsets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Loss terms and their weighted ``total``: L1 (final, raw), LPIPS, identity (when available),
    offsets' mean square (when given). ``target`` (B, 3, S, S) in [-1, 1] at the final size."""
    image, raw = out["image"], out["image_raw"]
    terms = {
        "l1": F.l1_loss(image, target),
        "l1_raw": F.l1_loss(raw, F.interpolate(target, size=raw.shape[-2:], mode="area")),
    }
    weights = {"l1": cfg.weight_l1, "l1_raw": cfg.weight_l1_raw}
    if losses.lpips is not None:
        a, b = image, target
        if image.shape[-1] > LPIPS_MAX_SIZE:
            a = F.interpolate(image, size=(LPIPS_MAX_SIZE, LPIPS_MAX_SIZE), mode="area")
            b = F.interpolate(target, size=(LPIPS_MAX_SIZE, LPIPS_MAX_SIZE), mode="area")
        terms["lpips"], weights["lpips"] = losses.lpips(a, b).mean(), cfg.weight_lpips
    if losses.identity is not None:
        terms["identity"], weights["identity"] = losses.identity(image, target).mean(), cfg.weight_identity
    if offsets is not None:
        terms["offset"], weights["offset"] = offsets.pow(2).mean(), cfg.weight_offset
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


def _seed_step(seed: int, stage: str, step: int) -> None:
    """Seed torch from (seed, stage, step): a resumed run repeats each step exactly."""
    seed_step(seed, step, STAGES.index(stage))


def _render(
    generator: TriPlaneGenerator, ws: torch.Tensor, cameras: torch.Tensor, cfg: PretrainedConfig
) -> dict[str, torch.Tensor]:
    # Constant backbone noise: the personalized generator is rendered with it afterwards (eval mode).
    return generator.synthesis(ws, cameras, noise_mode="const", jitter=cfg.jitter)


def _adam(groups: list[dict[str, Any]], resume: dict[str, Any] | None) -> torch.optim.Adam:
    optimizer = torch.optim.Adam(groups)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
    return optimizer


def _descend(optimizer: torch.optim.Optimizer, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    values = torch.stack([v.detach() for v in terms.values()]).tolist()  # one device sync
    return dict(zip(terms, values, strict=True))


# Called after every step with (stage, step done, loss values, snapshot): the snapshot function
# returns the stage's resumable state (parameters, optimiser, step) for a checkpoint.
StepHook = Callable[[str, int, dict[str, float], Callable[[], dict[str, Any]]], None]


def _pick(n: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """Indices of this step's batch: all n items, or a random subset (drawn after _seed_step)."""
    if batch_size >= n:
        return torch.arange(n, device=device)
    return torch.randperm(n)[:batch_size].to(device)


# ---------------------------------------------------------------------------------------------------
# 3.-5. The optimisation stages


@dataclass
class PivotFit:
    """Result of :func:`invert_pivots`: w_id (1, num_ws, w_dim), offsets (M, num_ws, w_dim),
    camera corrections (M, 6) (see :func:`refine_cameras`)."""

    w_id: torch.Tensor
    offsets: torch.Tensor
    camera_delta: torch.Tensor


def invert_pivots(
    generator: TriPlaneGenerator,
    targets: torch.Tensor,
    cameras: torch.Tensor,
    cfg: PretrainedConfig,
    *,
    losses: OptionalNets,
    pivot: Sequence[float] = EG3D_PIVOT,
    resume: dict[str, Any] | None = None,
    hook: StepHook | None = None,
) -> PivotFit:
    """Fit w_id, per-pivot offsets and camera corrections to the pivots, generator frozen.

    targets (M, 3, S, S) in [-1, 1] and cameras (M, 25) on the generator's device. w_id starts at the
    generator's ``w_avg``, offsets and corrections at 0. ``resume`` is a snapshot given to ``hook``.
    """
    device = targets.device
    n, num_ws, w_dim = len(targets), generator.num_ws, generator.config.w_dim
    generator.requires_grad_(False)
    w_avg = generator.backbone.mapping.w_avg
    w_id = torch.nn.Parameter(w_avg.reshape(1, 1, w_dim).repeat(1, num_ws, 1).clone())
    offsets = torch.nn.Parameter(torch.zeros(n, num_ws, w_dim, device=device))
    rotation = torch.nn.Parameter(torch.zeros(n, 3, device=device))
    translation = torch.nn.Parameter(torch.zeros(n, 3, device=device))
    params = {"w_id": w_id, "offsets": offsets, "rotation": rotation, "translation": translation}
    if resume is not None:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(resume[name])
    optimizer = _adam(
        [
            {"params": [w_id, offsets], "lr": cfg.lr_latent},
            {"params": [rotation], "lr": cfg.lr_rotation},
            {"params": [translation], "lr": cfg.lr_translation},
        ],
        resume,
    )
    step = resume["step"] if resume is not None else 0

    def snapshot() -> dict[str, Any]:
        return {"step": step, "optimizer": optimizer.state_dict()} | {
            k: p.detach().clone() for k, p in params.items()
        }

    while step < cfg.pivot_steps:
        _seed_step(cfg.seed, "pivots", step)
        pick = _pick(n, cfg.pivot_batch_size, device)
        delta = torch.cat([rotation[pick], translation[pick]], dim=1)
        out = _render(generator, w_id + offsets[pick], refine_cameras(cameras[pick], delta, pivot=pivot), cfg)
        values = _descend(optimizer, reconstruction_terms(out, targets[pick], cfg, losses, offsets[pick]))
        step += 1
        if hook is not None:
            hook("pivots", step, values, snapshot)
    return PivotFit(
        w_id.detach().clone(), offsets.detach().clone(), torch.cat([rotation, translation], dim=1).detach()
    )


def tunable_parameters(generator: TriPlaneGenerator) -> list[torch.nn.Parameter]:
    """What pivotal tuning trains: backbone synthesis, decoder, super-resolution (not the mapping
    network, which inversion in W bypasses)."""
    return [p for name, p in generator.named_parameters() if not name.startswith("backbone.mapping.")]


def pivotal_tuning(
    generator: TriPlaneGenerator,
    targets: torch.Tensor,
    ws: torch.Tensor,
    cameras: torch.Tensor,
    cfg: PretrainedConfig,
    *,
    losses: OptionalNets,
    resume: dict[str, Any] | None = None,
    hook: StepHook | None = None,
) -> TriPlaneGenerator:
    """Fine-tune ``generator`` in place on the pivots, latents ws (M, num_ws, w_dim) and refined
    cameras (M, 25) fixed; targets (M, 3, S, S) in [-1, 1]. Returns the generator, frozen again."""
    device = targets.device
    if resume is not None:
        generator.load_state_dict(resume["generator"])
    params = tunable_parameters(generator)
    generator.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = _adam([{"params": params, "lr": cfg.lr_generator}], resume)
    step = resume["step"] if resume is not None else 0

    def snapshot() -> dict[str, Any]:
        return {"step": step, "optimizer": optimizer.state_dict(), "generator": generator.state_dict()}

    ws, cameras = ws.detach(), cameras.detach()
    while step < cfg.tune_steps:
        _seed_step(cfg.seed, "tune", step)
        pick = _pick(len(targets), cfg.tune_batch_size, device)
        out = _render(generator, ws[pick], cameras[pick], cfg)
        values = _descend(optimizer, reconstruction_terms(out, targets[pick], cfg, losses))
        step += 1
        if hook is not None:
            hook("tune", step, values, snapshot)
    return generator.requires_grad_(False)


@dataclass
class FrameFit:
    """Result of :func:`invert_frames`: offsets (N, num_ws, w_dim) and camera corrections (N, 6), CPU."""

    offsets: torch.Tensor
    camera_delta: torch.Tensor


def frame_inversion_steps(n_frames: int, cfg: PretrainedConfig) -> int:
    """Total optimiser steps of :func:`invert_frames` for ``n_frames`` frames."""
    return math.ceil(n_frames / cfg.frame_batch_size) * cfg.frame_steps


def invert_frames(
    generator: TriPlaneGenerator,
    crops: torch.Tensor,
    cameras: torch.Tensor,
    w_id: torch.Tensor,
    init_offsets: torch.Tensor,
    cfg: PretrainedConfig,
    *,
    losses: OptionalNets,
    pivot: Sequence[float] = EG3D_PIVOT,
    resume: dict[str, Any] | None = None,
    hook: StepHook | None = None,
) -> FrameFit:
    """Per-frame offsets and camera corrections for every frame, generator and w_id frozen.

    crops (N, 3, S, S) uint8 and cameras (N, 25) stay where they are (CPU) and move per batch to
    w_id's device; init_offsets (N, num_ws, w_dim) (the nearest pivot's). Frames are taken in order,
    ``frame_batch_size`` at a time, each batch optimised for ``frame_steps`` steps with a fresh Adam.
    """
    device = w_id.device
    n = len(crops)
    total = frame_inversion_steps(n, cfg)
    generator.requires_grad_(False)
    w_id = w_id.detach()
    if resume is not None:
        offsets_all, delta_all = resume["offsets"].cpu().clone(), resume["camera_delta"].cpu().clone()
        step = resume["step"]
    else:
        offsets_all = init_offsets.detach().cpu().clone()
        delta_all = torch.zeros(n, 6)
        step = 0
    optimizer: torch.optim.Adam | None = None

    def snapshot() -> dict[str, Any]:
        state = {"step": step, "offsets": offsets_all.clone(), "camera_delta": delta_all.clone()}
        return state | {"optimizer": optimizer.state_dict()}

    while step < total:
        first, inner = divmod(step, cfg.frame_steps)
        index = torch.arange(first * cfg.frame_batch_size, min(n, (first + 1) * cfg.frame_batch_size))
        offset = torch.nn.Parameter(offsets_all[index].to(device))
        rotation = torch.nn.Parameter(delta_all[index, :3].to(device))
        translation = torch.nn.Parameter(delta_all[index, 3:].to(device))
        # Mid-batch resume: the batch's optimiser state was checkpointed with it.
        optimizer = _adam(
            [
                {"params": [offset], "lr": cfg.lr_frame_offset},
                {"params": [rotation], "lr": cfg.lr_rotation},
                {"params": [translation], "lr": cfg.lr_translation},
            ],
            resume if resume is not None and inner > 0 else None,
        )
        resume = None
        target = to_unit(crops[index].to(device))
        labels = cameras[index].to(device)
        for _ in range(inner, cfg.frame_steps):
            _seed_step(cfg.seed, "frames", step)
            delta = torch.cat([rotation, translation], dim=1)
            out = _render(generator, w_id + offset, refine_cameras(labels, delta, pivot=pivot), cfg)
            values = _descend(optimizer, reconstruction_terms(out, target, cfg, losses, offset))
            step += 1
            offsets_all[index] = offset.detach().cpu()
            delta_all[index] = torch.cat([rotation, translation], dim=1).detach().cpu()
            if hook is not None:
                hook("frames", step, values, snapshot)
    return FrameFit(offsets_all, delta_all)


# ---------------------------------------------------------------------------------------------------
# 6. The whole personalization, checkpointed


class StepBudgetExhausted(RuntimeError):
    """:func:`personalize` used up its ``max_steps`` for this call; its state is checkpointed."""


def personalize(
    data: SubjectData,
    head_angles: np.ndarray,
    landmarks: np.ndarray,
    generator: TriPlaneGenerator,
    out_dir: str | os.PathLike[str],
    *,
    pivot: Sequence[float],
    cfg: PretrainedConfig = PretrainedConfig(),
    run_id: str = "",
    restart_on_mismatch: bool = False,
    progress: bool | None = None,
    device: str | None = None,
    nets: OptionalNets | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    max_steps: int | None = None,
    required_nets: bool = False,
) -> tuple[PersonalizedGenerator, torch.Tensor, torch.Tensor]:
    """VIVE3D personalization of a pretrained ``generator`` (not modified; a copy is tuned).

    Args:
        data: crops at the generator's output size, tracked cameras (N, 25), the train split.
        head_angles: (N, 3) yaw, pitch, roll in degrees (camera table); landmarks: (N, 68, 2).
        pivot: the look-at point the camera labels were made with (camera table metadata).
        out_dir: ``checkpoint.pt`` (atomic; every ``checkpoint_every`` steps and at stage ends) and
            ``train_log.jsonl`` (one line per step: stage, step, global_step, loss terms, seconds).
        run_id: e.g. a code hash; with the settings, data, poses and the starting generator's weights
            it keys the checkpoint. A checkpoint keyed otherwise is an error, or with
            ``restart_on_mismatch`` is parked in ``checkpoints/`` by its settings.
        nets: the optional LPIPS and identity losses (default: those with a nonzero weight that load
            here, from ``weights_dir`` and ``manifest``, by default resources/weights; with
            ``required_nets`` one that does not load is an error).
        max_steps: run at most this many optimiser steps in this call, then checkpoint and raise
            :class:`StepBudgetExhausted` (time-sliced jobs; the next call resumes).

    Returns:
        (prior, refined_cameras (N, 25), offsets (N, num_ws, w_dim)): ``prior`` is a
        PersonalizedGenerator on
        ``device`` with the tuned generator, w_id and the training frames' offsets in the order of
        ``np.flatnonzero(data.train)``; cameras and offsets (CPU) cover every frame, test frames too.
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(data.train)
    if not (len(data.crops) == len(data.cameras) == n):
        raise ValueError(f"{out_dir}: {len(data.crops)} crops, {len(data.cameras)} cameras, {n} split flags")
    size = generator.config.image_resolution
    if tuple(data.crops.shape[1:]) != (3, size, size):
        raise ValueError(f"{out_dir}: crops are {tuple(data.crops.shape[1:])}, the generator makes {size} px")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    features = pivot_features(head_angles, landmarks, data.train)
    pivots = select_pivots(features, data.train, cfg.n_pivots)
    nearest = nearest_pivot(features, pivots)
    device = pick_device(device)
    if nets is None:
        where = {k: v for k, v in (("weights_dir", weights_dir), ("manifest", manifest)) if v is not None}
        factories = {
            "lpips": lambda: lpips_loss(device, **where),
            "identity": lambda: identity_loss(device, **where),
        }
        builders = {name: factories[name] for name in needed_nets(dataclasses.asdict(cfg))}
        nets = OptionalNets.load(builders, purpose="personalization", required=required_nets)
    losses = nets
    generator = copy.deepcopy(generator).to(device).eval().requires_grad_(False)
    pivot = [float(v) for v in pivot]
    meta = {
        "gen_config": dataclasses.asdict(generator.config),
        "pretrained_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_every"},
        "run_id": run_id,
        "data": data.fingerprint(),
        "poses": fingerprint(np.asarray(head_angles, np.float64), np.asarray(landmarks, np.float64)),
        "generator": module_fingerprint(generator),
        "pivot": pivot,
        "lpips": losses.lpips is not None,
        "identity": losses.identity is not None,
    }
    stage_steps = {
        "pivots": cfg.pivot_steps,
        "tune": cfg.tune_steps,
        "frames": frame_inversion_steps(n, cfg),
    }
    first_step = {s: sum(stage_steps[t] for t in STAGES[: STAGES.index(s)]) for s in STAGES}
    total = sum(stage_steps.values())
    run = Run(
        out_dir, meta, total=total, device=device, restart_on_mismatch=restart_on_mismatch,
        step_key="global_step", desc="personalize", progress=progress,
    )  # fmt: skip
    saved = run.state or {"stage": "pivots", "global_step": 0, "progress": None}
    log.info("pivot frames: %s", pivots.tolist())
    results: dict[str, Any] = {k: saved.get(k) for k in ("pivot_fit", "generator", "frame_fit")}

    def save(stage: str, global_step: int, progress_state: dict[str, Any] | None) -> None:
        run.save({"stage": stage, "global_step": global_step, "progress": progress_state} | results)

    done_here = 0
    started = time.perf_counter()

    with run:

        def hook(stage: str, step: int, values: dict[str, float], snapshot: Callable[[], dict]) -> None:
            nonlocal done_here, started
            done_here += 1
            global_step = first_step[stage] + step
            record = {"stage": stage, "step": step, "global_step": global_step}
            record |= {k: round(v, 6) for k, v in values.items()}
            record["seconds"] = round(time.perf_counter() - started, 4)
            run.step(record)
            out_of_budget = max_steps is not None and done_here >= max_steps
            if (step % cfg.checkpoint_every == 0 and run.due()) or out_of_budget:
                save(stage, global_step, snapshot())
            if step % cfg.checkpoint_every == 0:
                log.info("%s step %d/%d: loss %.4f", stage, step, stage_steps[stage], values["total"])
            if out_of_budget:
                raise StepBudgetExhausted(
                    f"{out_dir}: stopped after {done_here} steps at {stage} step {step}; run again to resume"
                )
            started = time.perf_counter()

        stage = saved["stage"]
        resume = saved["progress"]
        train_index = np.flatnonzero(data.train)
        targets = to_unit(data.crops[pivots]).to(device)
        pivot_cameras = data.cameras[pivots].to(device)
        if stage == "pivots":
            fit = invert_pivots(
                generator, targets, pivot_cameras, cfg, losses=losses, pivot=pivot, resume=resume, hook=hook
            )
            results["pivot_fit"] = dataclasses.asdict(fit)
            stage, resume = "tune", None
            save(stage, first_step[stage], None)
        fit = PivotFit(**{k: v.to(device) for k, v in results["pivot_fit"].items()})
        if stage == "tune":
            refined = refine_cameras(pivot_cameras, fit.camera_delta, pivot=pivot)
            pivotal_tuning(
                generator,
                targets,
                fit.w_id + fit.offsets,
                refined,
                cfg,
                losses=losses,
                resume=resume,
                hook=hook,
            )
            results["generator"] = generator.state_dict()
            stage, resume = "frames", None
            save(stage, first_step[stage], None)
        generator.load_state_dict(results["generator"])
        if stage == "frames":
            init_offsets = fit.offsets[torch.as_tensor(nearest)].cpu()
            frames = invert_frames(
                generator, data.crops, data.cameras, fit.w_id, init_offsets, cfg,
                losses=losses, pivot=pivot, resume=resume, hook=hook,
            )  # fmt: skip
            results["frame_fit"] = dataclasses.asdict(frames)
            save("done", total, None)
            log.info("personalization done: %d pivots, %d frames inverted", len(pivots), n)

    frames = FrameFit(**{k: v.cpu() for k, v in results["frame_fit"].items()})
    cameras = refine_cameras(data.cameras, frames.camera_delta, pivot=pivot).detach()
    with torch.random.fork_rng(devices=[]):  # PersonalizedGenerator seeds the global generator
        prior = PersonalizedGenerator(generator.config, len(train_index), cfg.seed)
    prior.generator = generator
    with torch.no_grad():
        prior.w_id.copy_(fit.w_id.cpu())
        prior.offsets.copy_(frames.offsets[torch.as_tensor(train_index)])
    prior.steps_run = total
    return prior.to(device).requires_grad_(False), cameras, frames.offsets
