"""Stage 7, prior (pretrained mode): VIVE3D personalization of a pretrained EG3D generator, as
Talk3D drives it (``personalize_generator.py`` then ``invert_video.py``).

Five stages, each a plain function, all settings in :class:`PretrainedConfig`:

1. :func:`select_pivots`: M pivot frames from the training split, chosen for diverse head pose and
   expression (yaw, pitch, roll, mouth and eye opening; most neutral frame first, then farthest-point
   sampling), so nothing is hand-picked (Talk3D's script names 3 frames by hand).
2. :func:`refine_cameras`: a yaw and pitch correction of an EG3D camera label, orbiting the look-at
   pivot (VIVE3D refines these two angles only).
3. :func:`invert_pivots`: joint inversion of one identity latent ``w`` in W (a single 512-d vector
   repeated over the ws, started from the mean of mapped samples at the frontal camera), one W
   offset per pivot and the pivots' yaw/pitch, generator frozen; StyleGAN2 projector schedule
   (learning-rate ramps, decaying w-noise), L1 + LPIPS on the raw image, a face-region term and a
   decaying penalty on the offsets' norm.
4. :func:`pivotal_tuning`: latents and cameras fixed, the backbone and decoder fine-tuned on the
   pivots (super-resolution frozen) with PTI's locality regulariser, stopped early once LPIPS is tiny.
5. :func:`invert_frames`: every frame of the clip (training and test: the test split needs refined
   cameras too) in order, each warm-started from the previous frame's W+ offset and camera correction
   (frame 0 from the mean pivot offset), tuned generator frozen, with a pull towards that start, so
   the cameras stay temporally coherent.

:func:`personalize` runs them with checkpoints (atomic, every ``checkpoint_every`` steps and at
stage ends), per-step seeding (a resumed run ends bit-identical to an uninterrupted one) and a
JSON-lines log, and returns a :class:`~talk3d_core.prior.PersonalizedGenerator`, so that the scratch
mode's evaluation, contact sheet and outputs work unchanged.

Loss normalisations follow the official code: L1 terms are sums over the batch's pixels and channels
divided by one image's pixel count, LPIPS terms are summed over the batch. The face region is this
project's mask labels eyes (dilated), lips and mouth interior, united over the pivots (the official
BiSeNet region also holds brows and nose, which these labels count as skin).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from talk3d_core.camera import eg3d_camera
from talk3d_core.face.regions import LABELS
from talk3d_core.model.eg3d import TriPlaneGenerator
from talk3d_core.model.eg3d.generator import W_AVG_FOCAL, W_AVG_PIVOT, mapped_w_statistics
from talk3d_core.model.personalized import PersonalizedGenerator
from talk3d_core.model.subject import SubjectData
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

# Fixed parts of the official recipe (VIVE3D inset_pipeline.py), not settings:
# StyleGAN2 projector schedule of the pivot inversion (fractions of pivot_steps) and its w-noise.
LR_RAMPUP, LR_RAMPDOWN, LR_FLOOR = 0.05, 0.25, 1e-4
W_NOISE, W_NOISE_RAMP = 0.02, 0.75  # x w_std, decaying as max(0, 1 - t / ramp)^2
OFFSET_INIT = 0.02  # pivot offsets start as randn x this
OFFSET_DECAY, OFFSET_DECAY_AFTER = 0.99, 100  # offset-norm weight x0.99 per step after step 100
FACE_L2 = 0.75  # weight of the L2 inside the pivots' face term (LPIPS has 1)
# PTI locality regulariser: a psi-0.5 sample; each pivot latent moved 0.1 towards it (a step of 0.1
# along the unit direction); L2 (sum) and LPIPS (mean) between the frozen and the tuned renders.
LOCALITY_PSI, LOCALITY_STEP, LOCALITY_L2, LOCALITY_LPIPS = 0.5, 0.1, 0.05, 0.05
# Face region dilations, in pixels of a 512 label image (scaled to the masks' size): the eyes alone,
# then the pivots' union once more for the frame inversion.
EYE_DILATION, FRAME_DILATION = 24, 8


@dataclass(frozen=True)
class PretrainedConfig:
    """Settings of the VIVE3D personalization (the generator's sizes come from its checkpoint).

    Defaults are the official values (Talk3D's ``personalize_generator.py`` and ``invert_video.py``
    arguments over VIVE3D's defaults). Learning rates are Adam's, over latents in W and camera
    angles in radians, as VIVE3D optimises them. Steps are optimiser steps; the frame inversion
    spends ``frame_first_steps`` on frame 0 and at most ``frame_steps`` on each later frame.
    """

    n_pivots: int = 5
    w_avg_samples: int = 10_000
    weight_lpips: float = 1.0
    # 3. pivot inversion
    pivot_steps: int = 600
    pivot_lr: float = 0.01
    pivot_weight_l1: float = 0.05
    pivot_weight_face: float = 2.0
    weight_offset: float = 0.05
    weight_offset_final: float = 0.005
    # 4. pivotal tuning
    tune_steps: int = 400
    tune_lr: float = 1e-3
    tune_weight_l1: float = 1.0
    weight_locality: float = 1e-4
    tune_stop_lpips: float = 0.006
    # 5. frame inversion
    frame_first_steps: int = 200
    frame_steps: int = 50
    frame_lr: float = 0.01
    frame_weight_l1: float = 0.25
    frame_weight_face: float = 1.2
    frame_weight_offset: float = 0.01
    frame_weight_prev: float = 0.02
    frame_stop_loss: float = 0.2
    # renderer: jittered depth samples while optimising (EG3D's renderer always jitters)
    jitter: bool = True
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("n_pivots", "w_avg_samples", "checkpoint_every")
        problems = [f"{name} must be >= 1" for name in positive if getattr(self, name) < 1]
        counts = ("pivot_steps", "tune_steps", "frame_first_steps", "frame_steps")
        problems += [f"{name} must be >= 0" for name in counts if getattr(self, name) < 0]
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


def refine_cameras(labels: torch.Tensor, delta: torch.Tensor, *, pivot: Sequence[float]) -> torch.Tensor:
    """Apply yaw and pitch corrections ``delta`` (B, 2) in degrees to EG3D labels (B, 25); differentiable.

    The corrections are head angles composed after the label's own, in the head frame: the camera
    orbits ``pivot`` (the look-at point, world units) the opposite way and keeps its distance from
    the world origin (EG3D's camera sphere), as VIVE3D's yaw and pitch move its look-at camera. A pure
    yaw correction d turns ``camera.eg3d_camera(yaw, ...)`` exactly into ``eg3d_camera(yaw + d, ...)``;
    pitch composes the same way from a frontal camera. Intrinsics are unchanged; a zero delta
    returns the labels (up to rounding).
    """
    if labels.ndim != 2 or labels.shape[1] != 25 or delta.shape != (labels.shape[0], 2):
        raise ValueError(
            f"need labels (B, 25) and delta (B, 2), got {tuple(labels.shape)} and {tuple(delta.shape)}"
        )
    cam2world = labels[:, :16].reshape(-1, 4, 4)
    rotation, origin = cam2world[:, :3, :3], cam2world[:, :3, 3]
    # Head angles compose on the right of R_head; cam2world's rotation is R_head^T (up to the OpenCV
    # axis flip), so the camera turns by R_delta^T in the world frame.
    angles = F.pad(delta.to(labels.dtype), (0, 1))  # no roll
    turn = _head_rotation(angles).transpose(1, 2)
    p = torch.as_tensor(pivot, dtype=labels.dtype, device=labels.device).reshape(1, 3)
    back = F.normalize(((origin - p)[:, None] @ turn.transpose(1, 2))[:, 0], dim=-1)
    # Distance along the new viewing ray that puts the camera back on its sphere |origin| = radius.
    radius_sq = (origin * origin).sum(dim=-1)
    pb = (p * back).sum(dim=-1)
    along = -pb + torch.sqrt(pb * pb - (p * p).sum() + radius_sq)
    new_origin = p + along[:, None] * back
    top = torch.cat([turn @ rotation, new_origin[:, :, None]], dim=2)  # (B, 3, 4)
    refined = torch.cat([top, cam2world[:, 3:]], dim=1).reshape(-1, 16)
    return torch.cat([refined, labels[:, 16:]], dim=1)


# ---------------------------------------------------------------------------------------------------
# Face region, starting latent, schedules


def _dilate(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Binary dilation of (B, 1, H, W) 0/1 masks by a ``size`` x ``size`` square whose origin is at
    (size // 2, size // 2), as kornia's ``dilation`` that VIVE3D uses."""
    if size <= 1:
        return mask
    before, after = size // 2, size - 1 - size // 2
    return F.max_pool2d(F.pad(mask, (before, after, before, after)), size, stride=1)


def face_region(labels: np.ndarray, size: int, dilation: int = 0) -> torch.Tensor:
    """The face term's mask (1, 1, size, size), 0/1 float, from label images (M, H, H) (stage masks).

    Union over the M images of lips, mouth interior and the eyes dilated by :data:`EYE_DILATION`
    (VIVE3D's ``get_eyes_mouth_BiSeNet``; its brows and nose are skin in these labels), then dilated
    by ``dilation``; dilations are pixels at 512, scaled to H. Resized to ``size``, a pixel is in the
    region when any part of it is.
    """
    labels = torch.as_tensor(np.asarray(labels))
    if labels.ndim != 3:
        raise ValueError(f"label images must be (M, H, W), got {tuple(labels.shape)}")

    def scaled(pixels_at_512: int) -> int:
        return max(1, round(pixels_at_512 * labels.shape[-1] / 512))

    eyes = (labels == LABELS["eyes"]).float()[:, None]
    mouth = ((labels == LABELS["lips"]) | (labels == LABELS["mouth_interior"])).float()[:, None]
    region = torch.maximum(_dilate(eyes, scaled(EYE_DILATION)), mouth).amax(dim=0, keepdim=True)
    region = _dilate(region, scaled(dilation)) if dilation else region
    return (F.interpolate(region, size=(size, size), mode="area") > 0).float()


def frontal_camera(camera: Mapping[str, Any]) -> torch.Tensor:
    """EG3D label (1, 25) of the frontal view in ``camera``'s geometry (focal, radius, pivot)."""
    label = eg3d_camera(
        [0.0], [0.0], [0.0], radius=camera["radius"], pivot=camera["pivot"], focal=camera["focal"]
    )
    return torch.as_tensor(label, dtype=torch.float32)


def pivot_learning_rate(step: int, cfg: PretrainedConfig) -> float:
    """StyleGAN2 projector schedule at pivot step ``step`` (0-based): ``pivot_lr`` with a linear
    ramp-up over the first 5% and a cosine ramp-down over the last 25%; Talk3D's floor where it is 0."""
    t = step / max(cfg.pivot_steps, 1)
    ramp = 0.5 - 0.5 * math.cos(min(1.0, (1.0 - t) / LR_RAMPDOWN) * math.pi)
    lr = cfg.pivot_lr * ramp * min(1.0, t / LR_RAMPUP)
    return lr if lr > 0 else LR_FLOOR


def w_noise_scale(step: int, cfg: PretrainedConfig, w_std: float) -> float:
    """Standard deviation of the w-noise at pivot step ``step``: w_std x 0.02 x max(0, 1 - t/0.75)^2."""
    t = step / max(cfg.pivot_steps, 1)
    return w_std * W_NOISE * max(0.0, 1.0 - t / W_NOISE_RAMP) ** 2


def offset_weight(step: int, cfg: PretrainedConfig) -> float:
    """Weight of the offsets' norm at pivot step ``step`` (0-based): ``weight_offset``, multiplied by
    0.99 after each step past step 100 while the product stays above ``weight_offset_final``."""
    weight = cfg.weight_offset
    for _ in range(OFFSET_DECAY_AFTER + 1, step):
        if weight * OFFSET_DECAY <= cfg.weight_offset_final:
            break
        weight *= OFFSET_DECAY
    return weight


# ---------------------------------------------------------------------------------------------------
# Losses and the optimisation loop's plumbing


def _downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, 3, S, S) bicubic-downsampled (antialiased) to ``size`` (the raw render's size)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def _l1(a: torch.Tensor, b: torch.Tensor, pixels: float | torch.Tensor) -> torch.Tensor:
    """Sum of |a - b| over the batch, channels and pixels, divided by ``pixels`` (official normalisation)."""
    return (a - b).abs().sum() / pixels


def _weighted(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> dict[str, torch.Tensor]:
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


def _face_terms(
    image: torch.Tensor, target: torch.Tensor, region: torch.Tensor, losses: OptionalNets, *, squared: bool
) -> dict[str, torch.Tensor]:
    """The face term's parts on the region-masked images: LPIPS (batch sum, when available) and the
    L2 (``squared``, pivots) or L1 (frames) sum divided by the region's pixel count over the batch."""
    face, face_target = image * region, target * region
    diff = face - face_target
    pixels = region.sum() * len(image)
    terms = {"face_l2" if squared else "face_l1": (diff.pow(2) if squared else diff.abs()).sum() / pixels}
    if losses.lpips is not None:
        terms["face_lpips"] = losses.lpips(face, face_target).sum()
    return terms


def pivot_terms(
    out: dict[str, torch.Tensor],
    target: torch.Tensor,
    region: torch.Tensor,
    offsets: torch.Tensor,
    step: int,
    cfg: PretrainedConfig,
    losses: OptionalNets,
) -> dict[str, torch.Tensor]:
    """Pivot inversion loss terms and their weighted ``total``: L1 and LPIPS on the raw render against
    the target downsampled to it, the face term on the final image (LPIPS + 0.75 L2) and the offsets'
    Frobenius norm (weight :func:`offset_weight`). target (M, 3, S, S) in [-1, 1], region (1, 1, S, S)."""
    raw = out["image_raw"]
    target_raw = _downsample(target, raw.shape[-1])
    terms = {"l1_raw": _l1(raw, target_raw, raw.shape[-1] ** 2)}
    weights = {"l1_raw": cfg.pivot_weight_l1}
    if losses.lpips is not None:
        terms["lpips_raw"], weights["lpips_raw"] = losses.lpips(raw, target_raw).sum(), cfg.weight_lpips
    face = _face_terms(out["image"], target, region, losses, squared=True)
    terms |= face
    weights |= {"face_l2": cfg.pivot_weight_face * FACE_L2, "face_lpips": cfg.pivot_weight_face}
    terms["offset"], weights["offset"] = torch.linalg.norm(offsets), offset_weight(step, cfg)
    return _weighted(terms, weights)


def frame_terms(
    out: dict[str, torch.Tensor],
    target: torch.Tensor,
    region: torch.Tensor,
    offset: torch.Tensor,
    start: torch.Tensor | None,
    cfg: PretrainedConfig,
    losses: OptionalNets,
) -> dict[str, torch.Tensor]:
    """Frame inversion loss terms and their weighted ``total``: L1 and LPIPS on the final image, the
    face term (LPIPS + L1), the offset's norm and, with ``start`` (the previous frame's offset),
    the norm of the offset's change from it. target (B, 3, S, S) in [-1, 1], region (1, 1, S, S)."""
    image = out["image"]
    terms = {"l1": _l1(image, target, image.shape[-1] ** 2)}
    weights = {"l1": cfg.frame_weight_l1}
    if losses.lpips is not None:
        terms["lpips"], weights["lpips"] = losses.lpips(image, target).sum(), cfg.weight_lpips
    terms |= _face_terms(image, target, region, losses, squared=False)
    weights |= {"face_l1": cfg.frame_weight_face, "face_lpips": cfg.frame_weight_face}
    terms["offset"], weights["offset"] = torch.linalg.norm(offset), cfg.frame_weight_offset
    if start is not None:
        terms["prev"], weights["prev"] = torch.linalg.norm(offset - start), cfg.frame_weight_prev
    return _weighted(terms, weights)


def _seed_step(seed: int, stage: str, step: int) -> None:
    """Seed torch from (seed, stage, step): a resumed run repeats each step exactly."""
    seed_step(seed, step, STAGES.index(stage))


def _render(
    generator: TriPlaneGenerator, ws: torch.Tensor, cameras: torch.Tensor, cfg: PretrainedConfig
) -> dict[str, torch.Tensor]:
    # Constant backbone noise: the personalized generator is rendered with it afterwards (eval mode).
    return generator.synthesis(ws, cameras, noise_mode="const", jitter=cfg.jitter)


def _adam(params: list[torch.Tensor], lr: float, resume: dict[str, Any] | None) -> torch.optim.Adam:
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
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


# ---------------------------------------------------------------------------------------------------
# 3.-5. The optimisation stages


@dataclass
class PivotFit:
    """Result of :func:`invert_pivots`: the identity w (1, w_dim), per-pivot offsets (M, w_dim), both
    in W, and the pivots' yaw/pitch corrections (M, 2) in degrees (see :func:`refine_cameras`)."""

    w: torch.Tensor
    offsets: torch.Tensor
    camera_delta: torch.Tensor


def invert_pivots(
    generator: TriPlaneGenerator,
    targets: torch.Tensor,
    cameras: torch.Tensor,
    region: torch.Tensor,
    w_start: torch.Tensor,
    w_std: float,
    cfg: PretrainedConfig,
    *,
    losses: OptionalNets,
    pivot: Sequence[float],
    resume: dict[str, Any] | None = None,
    hook: StepHook | None = None,
) -> PivotFit:
    """Fit w, per-pivot W offsets and yaw/pitch corrections to all pivots at every step, generator frozen.

    targets (M, 3, S, S) in [-1, 1], cameras (M, 25), region (1, 1, S, S) (:func:`face_region`) and
    w_start (1, w_dim) (``mapped_w_statistics`` of model/eg3d) on the generator's device. Offsets
    start as randn x 0.02, corrections at 0. Each step renders w + w-noise + offset (repeated over
    the ws) through the corrected cameras. ``resume`` is a snapshot given to ``hook``.
    """
    device = targets.device
    m, num_ws, w_dim = len(targets), generator.num_ws, generator.config.w_dim
    generator.requires_grad_(False)
    init = torch.Generator().manual_seed(cfg.seed + 1)
    w = torch.nn.Parameter(w_start.detach().reshape(1, w_dim).clone())
    offsets = torch.nn.Parameter((torch.randn(m, w_dim, generator=init) * OFFSET_INIT).to(device))
    angles = torch.nn.Parameter(torch.zeros(m, 2, device=device))  # yaw, pitch in radians
    params = {"w": w, "offsets": offsets, "angles": angles}
    if resume is not None:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(resume[name])
    optimizer = _adam(list(params.values()), cfg.pivot_lr, resume)
    step = resume["step"] if resume is not None else 0

    def snapshot() -> dict[str, Any]:
        return {"step": step, "optimizer": optimizer.state_dict()} | {
            k: p.detach().clone() for k, p in params.items()
        }

    while step < cfg.pivot_steps:
        _seed_step(cfg.seed, "pivots", step)
        for group in optimizer.param_groups:
            group["lr"] = pivot_learning_rate(step, cfg)
        noise = torch.randn_like(offsets) * w_noise_scale(step, cfg, w_std)
        ws = (w + noise + offsets)[:, None].expand(m, num_ws, w_dim)
        out = _render(generator, ws, refine_cameras(cameras, torch.rad2deg(angles), pivot=pivot), cfg)
        values = _descend(optimizer, pivot_terms(out, targets, region, offsets, step, cfg, losses))
        step += 1
        if hook is not None:
            hook("pivots", step, values, snapshot)
    return PivotFit(w.detach().clone(), offsets.detach().clone(), torch.rad2deg(angles.detach()))


def tunable_parameters(generator: TriPlaneGenerator) -> list[torch.nn.Parameter]:
    """What pivotal tuning trains: backbone synthesis and decoder. The super-resolution stays frozen
    (VIVE3D) and the mapping network gets no gradient (inversion in W bypasses it)."""
    frozen = ("backbone.mapping.", "superresolution.")
    return [p for name, p in generator.named_parameters() if not name.startswith(frozen)]


def locality_term(
    tuned: TriPlaneGenerator,
    frozen: TriPlaneGenerator,
    ws: torch.Tensor,
    conditioning: torch.Tensor,
    cfg: PretrainedConfig,
    losses: OptionalNets,
) -> torch.Tensor:
    """PTI's locality regulariser: per pivot latent ws (M, w_dim) a z ~ N(0, I) mapped at psi 0.5
    (``frozen``'s mapping, conditioning (1, 25) the frontal label, which is also the render camera);
    the pivot latent moved 0.1 along the unit direction to it; 0.05 x L2 (sum) + 0.05 x LPIPS
    between ``frozen``'s and ``tuned``'s final renders of it, averaged over the pivots. Uses the
    global torch generator."""
    m = len(ws)
    z = torch.randn(m, frozen.config.z_dim, device=ws.device)
    cameras = conditioning.expand(m, -1)
    with torch.no_grad():
        samples = frozen.mapping(z, cameras, truncation_psi=LOCALITY_PSI)  # (M, num_ws, w_dim)
    direction = samples - ws[:, None]
    moved = ws[:, None] + LOCALITY_STEP * direction / direction.flatten(1).norm(dim=1)[:, None, None]
    new = _render(tuned, moved, cameras, cfg)["image"]
    with torch.no_grad():
        old = _render(frozen, moved, cameras, cfg)["image"]
    loss = LOCALITY_L2 * (old - new).pow(2).sum() / m
    if losses.lpips is not None:
        loss = loss + LOCALITY_LPIPS * losses.lpips(old, new).mean()
    return loss


def pivotal_tuning(
    generator: TriPlaneGenerator,
    original: TriPlaneGenerator,
    targets: torch.Tensor,
    ws: torch.Tensor,
    cameras: torch.Tensor,
    conditioning: torch.Tensor,
    cfg: PretrainedConfig,
    *,
    losses: OptionalNets,
    resume: dict[str, Any] | None = None,
    hook: StepHook | None = None,
) -> TriPlaneGenerator:
    """Fine-tune ``generator`` in place on all pivots at every step, latents ws (M, w_dim) and refined
    cameras (M, 25) fixed; targets (M, 3, S, S) in [-1, 1]; ``original`` (frozen) anchors the locality
    regulariser at the frontal label ``conditioning`` (1, 25). Loss: L1 on the raw render (sum over
    the final image's pixel count, as VIVE3D), LPIPS on the final image, :func:`locality_term`. Stops
    before an update once the pivots' summed LPIPS is at most ``tune_stop_lpips``. Returns the
    generator, frozen again."""
    if resume is not None:
        generator.load_state_dict(resume["generator"])
    params = tunable_parameters(generator)
    generator.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    original.requires_grad_(False)
    optimizer = _adam(params, cfg.tune_lr, resume)
    step = resume["step"] if resume is not None else 0

    def snapshot() -> dict[str, Any]:
        return {"step": step, "optimizer": optimizer.state_dict(), "generator": generator.state_dict()}

    ws, cameras = ws.detach(), cameras.detach()
    ws_all = ws[:, None].expand(-1, generator.num_ws, -1)
    while step < cfg.tune_steps:
        _seed_step(cfg.seed, "tune", step)
        out = _render(generator, ws_all, cameras, cfg)
        size = out["image"].shape[-1]
        terms = {"l1_raw": _l1(out["image_raw"], _downsample(targets, out["image_raw"].shape[-1]), size**2)}
        weights = {"l1_raw": cfg.tune_weight_l1}
        if losses.lpips is not None:
            terms["lpips"], weights["lpips"] = losses.lpips(out["image"], targets).sum(), cfg.weight_lpips
            if terms["lpips"].item() <= cfg.tune_stop_lpips:
                log.info("pivotal tuning: LPIPS %.4f <= %g after %d steps", terms["lpips"].item(),
                         cfg.tune_stop_lpips, step)  # fmt: skip
                break
        terms["locality"] = locality_term(generator, original, ws, conditioning, cfg, losses)
        weights["locality"] = cfg.weight_locality
        values = _descend(optimizer, _weighted(terms, weights))
        step += 1
        if hook is not None:
            hook("tune", step, values, snapshot)
    return generator.requires_grad_(False)


@dataclass
class FrameFit:
    """Result of :func:`invert_frames` (CPU): W+ offsets (N, num_ws, w_dim), yaw/pitch corrections
    (N, 2) in degrees, and the optimiser steps each frame took (N,) (fewer when it stopped early)."""

    offsets: torch.Tensor
    camera_delta: torch.Tensor
    steps: torch.Tensor


def frame_inversion_steps(n_frames: int, cfg: PretrainedConfig) -> int:
    """Most optimiser steps :func:`invert_frames` takes for ``n_frames`` frames (none stopping early)."""
    return cfg.frame_first_steps + (n_frames - 1) * cfg.frame_steps if n_frames else 0


def invert_frames(
    generator: TriPlaneGenerator,
    crops: torch.Tensor,
    cameras: torch.Tensor,
    w_id: torch.Tensor,
    start_offset: torch.Tensor,
    region: torch.Tensor,
    cfg: PretrainedConfig,
    *,
    losses: OptionalNets,
    pivot: Sequence[float],
    resume: dict[str, Any] | None = None,
    hook: StepHook | None = None,
) -> FrameFit:
    """Per-frame W+ offsets and yaw/pitch corrections for every frame in clip order, generator and
    w_id frozen (VIVE3D's ``inversion_video``).

    crops (N, 3, S, S) uint8 and cameras (N, 25) stay where they are (CPU) and move a frame at a time
    to w_id's device; w_id and start_offset (1, num_ws, w_dim); region (1, 1, S, S). Frame 0 starts
    from start_offset with no correction and runs ``frame_first_steps``; every later frame starts
    from the previous frame's offset and correction (the tracked camera of its own frame plus the
    previous correction) and runs at most ``frame_steps``, pulled towards that start by
    ``frame_weight_prev``. A frame stops early after a step whose loss was below ``frame_stop_loss``.
    Each frame has a fresh Adam (constant ``frame_lr``) over its offset and angles (radians).
    """
    device = w_id.device
    n, num_ws, w_dim = len(crops), generator.num_ws, generator.config.w_dim
    generator.requires_grad_(False)
    w_id, start_offset = w_id.detach(), start_offset.detach().cpu().reshape(1, num_ws, w_dim)
    if resume is not None:
        offsets_all, angles_all = resume["offsets"].cpu().clone(), resume["angles"].cpu().clone()
        steps_all = resume["steps"].cpu().clone()
        step, frame, inner = resume["step"], resume["frame"], resume["inner"]
    else:
        offsets_all, angles_all = torch.zeros(n, num_ws, w_dim), torch.zeros(n, 2)
        steps_all = torch.zeros(n, dtype=torch.int64)
        step = frame = inner = 0
    optimizer: torch.optim.Adam | None = None

    def snapshot() -> dict[str, Any]:
        state = {"step": step, "frame": frame, "inner": inner, "steps": steps_all.clone()}
        state |= {"offsets": offsets_all.clone(), "angles": angles_all.clone()}
        return state | {"optimizer": None if optimizer is None else optimizer.state_dict()}

    while frame < n:
        budget = cfg.frame_first_steps if frame == 0 else cfg.frame_steps
        start = start_offset if frame == 0 else offsets_all[frame - 1 : frame].clone()
        if inner == 0:  # warm start (a resumed frame holds its own progress)
            offsets_all[frame] = start[0]
            angles_all[frame] = angles_all[frame - 1] if frame > 0 else 0.0
        if budget == 0:
            frame += 1
            continue
        offset = torch.nn.Parameter(offsets_all[frame : frame + 1].to(device))
        angles = torch.nn.Parameter(angles_all[frame : frame + 1].to(device))
        optimizer = _adam(
            [offset, angles], cfg.frame_lr, resume if resume is not None and inner > 0 else None
        )
        resume = None
        target = to_unit(crops[frame : frame + 1].to(device))
        label = cameras[frame : frame + 1].to(device)
        previous = None if frame == 0 else start.to(device)
        finished = False
        while not finished:
            _seed_step(cfg.seed, "frames", step)
            refined = refine_cameras(label, torch.rad2deg(angles), pivot=pivot)
            out = _render(generator, w_id + offset, refined, cfg)
            values = _descend(optimizer, frame_terms(out, target, region, offset, previous, cfg, losses))
            record = values | {"frame": frame}
            step, inner = step + 1, inner + 1
            offsets_all[frame], angles_all[frame] = offset.detach()[0].cpu(), angles.detach()[0].cpu()
            steps_all[frame] = inner
            finished = inner >= budget or values["total"] < cfg.frame_stop_loss
            if finished:  # the snapshot resumes at the next frame
                frame, inner = frame + 1, 0
            if hook is not None:
                hook("frames", step, record, snapshot)
    return FrameFit(offsets_all, torch.rad2deg(angles_all), steps_all)


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
    masks: Sequence[str | os.PathLike[str]],
    camera: Mapping[str, Any],
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
        masks: the N label images (stage masks); the pivots' eyes, lips and mouth make the face region.
        camera: focal, radius and pivot the labels were made with (camera table metadata): the
            refinement orbits the pivot, and the frontal label conditions the mapping network.
        out_dir: ``checkpoint.pt`` (atomic; every ``checkpoint_every`` steps and at stage ends) and
            ``train_log.jsonl`` (one line per step: stage, step, global_step, loss terms, seconds).
        run_id: e.g. a code hash; with the settings, data, poses, face region and the starting
            generator's weights it keys the checkpoint. A checkpoint keyed otherwise is an error, or
            with ``restart_on_mismatch`` is parked in ``checkpoints/`` by its settings.
        nets: the optional LPIPS loss (default: loaded when ``weight_lpips`` > 0, from ``weights_dir``
            and ``manifest``, by default resources/weights; with ``required_nets`` a failure is an
            error). Without it the LPIPS terms, the tuning's early stop and the locality LPIPS drop.
        max_steps: run at most this many optimiser steps in this call, then checkpoint and raise
            :class:`StepBudgetExhausted` (time-sliced jobs; the next call resumes).

    Returns:
        (prior, refined_cameras (N, 25), offsets (N, num_ws, w_dim)): ``prior`` is a
        PersonalizedGenerator on ``device`` with the tuned generator, w_id (the identity w repeated
        over the ws) and the training frames' W+ offsets in the order of ``np.flatnonzero(data.train)``;
        cameras and offsets (CPU) cover every frame, test frames too.
    """
    from talk3d_core.masks import read_mask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(data.train)
    if not (len(data.crops) == len(data.cameras) == len(masks) == n):
        raise ValueError(
            f"{out_dir}: {len(data.crops)} crops, {len(data.cameras)} cameras, {len(masks)} masks, "
            f"{n} split flags"
        )
    size = generator.config.image_resolution
    if tuple(data.crops.shape[1:]) != (3, size, size):
        raise ValueError(f"{out_dir}: crops are {tuple(data.crops.shape[1:])}, the generator makes {size} px")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    features = pivot_features(head_angles, landmarks, data.train)
    pivots = select_pivots(features, data.train, cfg.n_pivots)
    labels = np.stack([read_mask(masks[i]) for i in pivots])
    regions = {"pivots": face_region(labels, size), "frames": face_region(labels, size, FRAME_DILATION)}
    if not regions["pivots"].any():
        raise ValueError(
            f"masks {', '.join(str(masks[i]) for i in pivots)} (the pivot frames) hold no eyes, lips "
            "or mouth pixels, which the face term needs; check the masks stage"
        )
    device = pick_device(device)
    if nets is None:
        where = {k: v for k, v in (("weights_dir", weights_dir), ("manifest", manifest)) if v is not None}
        factories = {"lpips": lambda: lpips_loss(device, **where)}
        builders = {name: factories[name] for name in needed_nets(dataclasses.asdict(cfg))}
        nets = OptionalNets.load(builders, purpose="personalization", required=required_nets)
    losses = nets
    original = copy.deepcopy(generator).to(device).eval().requires_grad_(False)
    generator = copy.deepcopy(original)
    geometry = {"focal": float(camera["focal"]), "radius": float(camera["radius"])}
    geometry["pivot"] = pivot = [float(v) for v in camera["pivot"]]
    conditioning = frontal_camera(geometry).to(device)
    regions = {k: v.to(device) for k, v in regions.items()}
    meta = {
        "gen_config": dataclasses.asdict(generator.config),
        "pretrained_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_every"},
        "run_id": run_id,
        "data": data.fingerprint(),
        "poses": fingerprint(np.asarray(head_angles, np.float64), np.asarray(landmarks, np.float64)),
        "region": fingerprint(*regions.values()),
        "generator": module_fingerprint(generator),
        "camera": geometry,
        "lpips": losses.lpips is not None,
    }
    stage_steps = {"pivots": cfg.pivot_steps, "tune": cfg.tune_steps, "frames": frame_inversion_steps(n, cfg)}
    run = Run(
        out_dir, meta, total=sum(stage_steps.values()), device=device,
        restart_on_mismatch=restart_on_mismatch, step_key="global_step", desc="personalize",
        progress=progress,
    )  # fmt: skip
    saved = run.state or {"stage": "pivots", "global_step": 0, "progress": None}
    log.info("pivot frames: %s", pivots.tolist())
    results: dict[str, Any] = {k: saved.get(k) for k in ("pivot_fit", "generator", "frame_fit")}
    # Steps that ran (early stops make it less than the stages' sums): the log's and checkpoint's count.
    global_step = int(saved["global_step"])

    def save(stage: str, progress_state: dict[str, Any] | None) -> None:
        run.save({"stage": stage, "global_step": global_step, "progress": progress_state} | results)

    done_here = 0
    started = time.perf_counter()

    with run:

        def hook(stage: str, step: int, values: dict[str, float], snapshot: Callable[[], dict]) -> None:
            nonlocal done_here, started, global_step
            done_here += 1
            global_step += 1
            record = {"stage": stage, "step": step, "global_step": global_step}
            record |= {k: round(v, 6) for k, v in values.items()}
            record["seconds"] = round(time.perf_counter() - started, 4)
            run.step(record)
            out_of_budget = max_steps is not None and done_here >= max_steps
            if (step % cfg.checkpoint_every == 0 and run.due()) or out_of_budget:
                save(stage, snapshot())
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
            # VIVE3D's start, at its generator's default frontal camera (the crop template's w_avg too).
            w_avg_camera = frontal_camera(
                {"focal": W_AVG_FOCAL, "radius": geometry["radius"], "pivot": W_AVG_PIVOT}
            )
            w_start, w_std = mapped_w_statistics(generator, w_avg_camera, n_samples=cfg.w_avg_samples)
            fit = invert_pivots(
                generator, targets, pivot_cameras, regions["pivots"], w_start, w_std, cfg,
                losses=losses, pivot=pivot, resume=resume, hook=hook,
            )  # fmt: skip
            results["pivot_fit"] = dataclasses.asdict(fit)
            stage, resume = "tune", None
            save(stage, None)
        fit = PivotFit(**{k: v.to(device) for k, v in results["pivot_fit"].items()})
        if stage == "tune":
            refined = refine_cameras(pivot_cameras, fit.camera_delta, pivot=pivot)
            pivotal_tuning(
                generator, original, targets, fit.w + fit.offsets, refined, conditioning, cfg,
                losses=losses, resume=resume, hook=hook,
            )  # fmt: skip
            results["generator"] = generator.state_dict()
            stage, resume = "frames", None
            save(stage, None)
        generator.load_state_dict(results["generator"])
        w_id = fit.w[:, None].expand(1, generator.num_ws, -1)
        if stage == "frames":
            start = fit.offsets.mean(dim=0, keepdim=True)[:, None].expand(1, generator.num_ws, -1)
            frames = invert_frames(
                generator, data.crops, data.cameras, w_id, start, regions["frames"], cfg,
                losses=losses, pivot=pivot, resume=resume, hook=hook,
            )  # fmt: skip
            results["frame_fit"] = dataclasses.asdict(frames)
            save("done", None)
            budgets = torch.full((n,), cfg.frame_steps)
            budgets[0] = cfg.frame_first_steps
            stopped = int((frames.steps < budgets).sum())
            log.info(
                "personalization done: %d pivots, %d frames inverted (%d stopped early), %d steps",
                len(pivots), n, stopped, global_step,
            )  # fmt: skip

    frames = FrameFit(**{k: v.cpu() for k, v in results["frame_fit"].items()})
    cameras = refine_cameras(data.cameras, frames.camera_delta, pivot=pivot).detach()
    with torch.random.fork_rng(devices=[]):  # PersonalizedGenerator seeds the global generator
        prior = PersonalizedGenerator(generator.config, len(train_index), cfg.seed)
    prior.generator = generator
    with torch.no_grad():
        prior.w_id.copy_(w_id.cpu())
        prior.offsets.copy_(frames.offsets[torch.as_tensor(train_index)])
    prior.steps_run = global_step
    return prior.to(device).requires_grad_(False), cameras, frames.offsets
