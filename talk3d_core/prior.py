"""Stage 7, prior (scratch mode): a tri-plane generator fitted to one subject as an auto-decoder.

When no pretrained EG3D checkpoint is available, the personalized prior is learned from the
subject's own training crops: a randomly initialised :class:`TriPlaneGenerator`, a learned identity
latent ``w_id`` (1, num_ws, w_dim) and a small per-frame offset ``o_n`` for every training frame,
rendered from the tracked camera of frame n and compared with the crop. Offsets absorb expression so
that ``w_id`` holds the identity; an L2 penalty keeps them small. The identity tri-plane
``P_ID = planes(w_id)`` is what the deltaplane stage builds on.

Training is seeded per step (batch order and renderer jitter are functions of ``seed`` and the step
number), checkpointed atomically every ``checkpoint_every`` steps and resumed from the last
checkpoint, so a killed run continued later ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from talk3d_core.eg3d import GeneratorConfig, TriPlaneGenerator
from talk3d_core.head_proxy import RIGID_POINTS, HeadProxy, project_points
from talk3d_core.image_metrics import psnr, ssim
from talk3d_core.io import atomic_path
from talk3d_core.pictures import depth_to_uint8

log = logging.getLogger(__name__)

# Region labels (talk3d_core.masks.LABELS) that make up the face for PSNR: skin, lips, mouth, eyes.
FACE_LABELS = (1, 2, 3, 4)
MOUTH_LABELS = (2, 3)  # lips and the mouth's inside: the deltaplane stage's mouth loss
BACKGROUND_LABEL = 0


@dataclass(frozen=True)
class PriorConfig:
    """Optimisation settings of the scratch prior (the generator's sizes are in GeneratorConfig)."""

    steps: int = 2000
    batch_size: int = 4
    lr_generator: float = 2e-3
    lr_latent: float = 1e-2
    weight_l1: float = 1.0
    weight_l1_raw: float = 1.0
    weight_ssim: float = 0.5
    weight_offset: float = 1e-2
    # Geometry prior (talk3d_core.head_proxy): rendered depth at the template's rigid landmarks
    # (world units, L1), opacity vs the person mask, solid head core, empty space around the proxy.
    weight_depth: float = 1.0
    weight_opacity: float = 1.0
    weight_solid: float = 0.5
    weight_empty: float = 0.5
    shape_points: int = 2048
    checkpoint_every: int = 200
    seed: int = 0


@dataclass
class SubjectData:
    """Training data of one subject, in memory, indexed by frame (0..N-1).

    crops (N, 3, S, S) uint8 at the generator's output size (kept as bytes: 0.75 MB a frame at 512,
    converted per batch by :func:`to_unit`); face (N, 1, S, S) bool face-region mask; cameras
    (N, 25) float EG3D labels; train (N,) bool; person (N, 1, S, S) bool foreground (every label
    but background) when the background is painted out, else None; proxy: the head proxy placed
    under these cameras (None: no geometry prior); mouth (N, 1, S, S) bool lips and mouth (used by
    the deltaplane stage only, so not part of the prior's fingerprint); mouth_patch (N, 3, Z, Z) uint8
    and mouth_box (N, 3) the mouth box at the crop's full resolution, for the deltaplane stage's
    zoomed mouth loss (None unless asked for).
    """

    crops: torch.Tensor
    face: torch.Tensor
    cameras: torch.Tensor
    train: np.ndarray
    person: torch.Tensor | None = None
    proxy: HeadProxy | None = None
    mouth: torch.Tensor | None = None
    mouth_patch: torch.Tensor | None = None
    mouth_box: torch.Tensor | None = None

    def fingerprint(self) -> str:
        """sha256 of the training data, so a checkpoint is only resumed on the data it was fitted to."""
        digest = hashlib.sha256()
        for array in (self.crops, self.face, self.cameras, torch.as_tensor(self.train), self.person):
            if array is not None:
                digest.update(array.contiguous().numpy().tobytes())
        if self.proxy is not None:
            digest.update(json.dumps(self.proxy.as_dict(), sort_keys=True).encode())
        return digest.hexdigest()[:16]


def to_unit(crops: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1], the generator's range."""
    return crops.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (..., 3, H, W) in [-1, 1] (clamped) -> (..., H, W, 3) uint8, for saving and detectors."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()


def load_subject(
    crop_paths: Sequence[str | os.PathLike[str]],
    mask_paths: Sequence[str | os.PathLike[str]],
    cameras: np.ndarray,
    train: np.ndarray,
    size: int,
    *,
    background: str = "black",
    proxy: HeadProxy | None = None,
) -> SubjectData:
    """Read crops and masks, resized to ``size`` (area for images, nearest for labels).

    ``background="black"`` paints the background label black, what the renderer shows where a ray
    meets no density, so the tri-planes hold the person and not the studio behind them, and keeps
    the person mask for the opacity and empty-space terms; ``"keep"`` fits the crops as they are
    (the studio becomes part of the volume, so only the depth and solid-core terms apply).
    ``proxy`` (from :func:`talk3d_core.head_proxy.fit_head_proxy`) enables the geometry prior.
    """
    if background not in ("keep", "black"):
        raise ValueError(f"background must be 'keep' or 'black', got {background!r}")
    if not (len(crop_paths) == len(mask_paths) == len(cameras) == len(train)):
        raise ValueError(
            f"prior inputs disagree: {len(crop_paths)} crops, {len(mask_paths)} masks, "
            f"{len(cameras)} cameras, {len(train)} split flags"
        )
    crops, faces, people, mouths = [], [], [], []
    for crop_path, mask_path in zip(crop_paths, mask_paths, strict=True):
        with Image.open(crop_path) as im:
            rgb = np.array(im.convert("RGB").resize((size, size), Image.Resampling.BOX))
        with Image.open(mask_path) as im:
            labels = np.asarray(im.resize((size, size), Image.Resampling.NEAREST))
        if background == "black":
            rgb[labels == BACKGROUND_LABEL] = 0
        crops.append(rgb)
        faces.append(np.isin(labels, FACE_LABELS))
        people.append(labels != BACKGROUND_LABEL)
        mouths.append(np.isin(labels, MOUTH_LABELS))
    return SubjectData(
        crops=torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous(),
        face=torch.from_numpy(np.stack(faces))[:, None],
        cameras=torch.as_tensor(np.asarray(cameras, np.float32)),
        train=np.asarray(train, bool),
        person=torch.from_numpy(np.stack(people))[:, None] if background == "black" else None,
        proxy=proxy,
        mouth=torch.from_numpy(np.stack(mouths))[:, None],
    )


class ScratchPrior(torch.nn.Module):
    """Generator + identity latent + per-training-frame offsets, the trainable state of the prior."""

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


def reconstruction_losses(
    out: dict[str, torch.Tensor], target: torch.Tensor, ws_offset: torch.Tensor, cfg: PriorConfig
) -> dict[str, torch.Tensor]:
    """Weighted loss terms and their total: L1 on the final and the raw image, SSIM, offset L2."""
    raw = out["image_raw"]
    target_raw = F.interpolate(target, size=raw.shape[-2:], mode="area")
    terms = {
        "l1": F.l1_loss(out["image"], target),
        "l1_raw": F.l1_loss(raw, target_raw),
        "ssim": 1 - ssim(out["image"], target).mean(),
        "offset": ws_offset.pow(2).mean(),
    }
    weights = {
        "l1": cfg.weight_l1,
        "l1_raw": cfg.weight_l1_raw,
        "ssim": cfg.weight_ssim,
        "offset": cfg.weight_offset,
    }
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


def landmark_depth_error(depth: torch.Tensor, cameras: torch.Tensor, points: np.ndarray) -> torch.Tensor:
    """(B, K) |rendered depth - distance from the camera| (world units) at world points (K, 3)
    projected through cameras (B, 25); depth (B, 1, H, W) as the renderer returns it."""
    anchors = torch.as_tensor(points, dtype=depth.dtype, device=depth.device)
    uv, distance = project_points(anchors, cameras)
    grid = (uv * 2 - 1)[:, None]  # (B, 1, K, 2): grid_sample's [-1, 1] over pixel edges
    sampled = F.grid_sample(depth, grid, mode="bilinear", align_corners=False)[:, 0, 0]
    return (sampled - distance).abs()


def geometry_losses(
    model: ScratchPrior,
    out: dict[str, torch.Tensor],
    cameras: torch.Tensor,
    person: torch.Tensor | None,
    proxy: HeadProxy,
    cfg: PriorConfig,
) -> dict[str, torch.Tensor]:
    """Geometry-prior terms for a rendered batch and their weighted ``total`` (see
    :mod:`talk3d_core.head_proxy`); ``cfg.shape_points`` random points per volume term.

    depth: L1 (world units) between the rendered depth at the rigid template landmarks and their
    distance from the camera; solid: mean missing opacity at random points inside the proxy's core
    (uses the global torch RNG). With the background painted out (``person`` (B, 1, S, S) given),
    also opacity: L1 between the rendered opacity and the person mask, and empty: mean opacity at
    random points outside the proxy's margin (with the studio kept, it lives out there).
    """
    device = cameras.device
    terms = {
        "depth": landmark_depth_error(out["image_depth"], cameras, proxy.landmarks()[RIGID_POINTS]).mean()
    }
    if person is not None:
        opacity = out["weights_sum"]
        target = F.interpolate(person.float(), size=opacity.shape[-2:], mode="area")
        terms["opacity"] = (opacity - target).abs().mean()
    config = model.generator.config
    solid = proxy.sample_solid(cfg.shape_points)
    if config.empty_outside_box:  # the shoulders reach below the box, where nothing can be solid
        solid = solid[(solid.abs() <= config.box_warp / 2).all(dim=-1)]
    # Rays run beyond the tri-plane box, where the planes' zero padding extrudes their content: unless
    # the renderer already empties it (empty_outside_box), a cube 1.5 times the box covers that space.
    empty = proxy.sample_empty(cfg.shape_points, config.box_warp * (1.0 if config.empty_outside_box else 1.5))
    if person is None:
        empty = empty[:0]
    occupancy = model.occupancy(out["planes"], torch.cat([solid, empty]).to(device)[None])
    terms["solid"] = (1 - occupancy[:, : len(solid)]).mean()
    if person is not None:
        terms["empty"] = occupancy[:, len(solid) :].mean()
    weights = {
        "depth": cfg.weight_depth,
        "opacity": cfg.weight_opacity,
        "solid": cfg.weight_solid,
        "empty": cfg.weight_empty,
    }
    terms["total"] = sum(weights[k] * v for k, v in terms.items())
    return terms


def open_checkpoint(
    out_dir: Path, meta: dict[str, Any], restart_on_mismatch: bool, device: torch.device, *, step_key: str
) -> dict[str, Any] | None:
    """The state in ``out_dir/checkpoint.pt`` to resume from, or None to start over.

    A checkpoint resumes only when its ``meta`` equals ``meta`` (settings, code, data); the lines of
    ``train_log.jsonl`` past its ``state[step_key]`` are dropped, as those steps run again. Another
    meta is an error, or with ``restart_on_mismatch`` the file is set aside as
    ``checkpoint.stale.pt``. Without a checkpoint to resume, the log is deleted.
    """
    checkpoint, log_path = out_dir / "checkpoint.pt", out_dir / "train_log.jsonl"
    if not checkpoint.is_file():
        log_path.unlink(missing_ok=True)
        return None
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    if json.dumps(state["meta"], sort_keys=True) != json.dumps(meta, sort_keys=True):
        if not restart_on_mismatch:
            raise ValueError(f"{checkpoint}: written with other settings; delete it to start over")
        log.info("%s was written with other settings or code: starting over", checkpoint)
        os.replace(checkpoint, out_dir / "checkpoint.stale.pt")
        log_path.unlink(missing_ok=True)
        return None
    log.info("resuming from %s at %s %d", checkpoint, step_key, state[step_key])
    if log_path.is_file():
        lines = log_path.read_text().splitlines()
        kept = [r for r in lines if json.loads(r)[step_key] <= state[step_key]]
        if len(kept) < len(lines):
            log_path.write_text("".join(r + "\n" for r in kept))
    return state


def step_seed(seed: int, step: int) -> int:
    """The torch seed of one training step: batches and jitter are functions of (seed, step) only,
    so a resumed run repeats the steps an uninterrupted one would have taken."""
    return (seed * 1_000_003 + step) % (2**63)


def _save_checkpoint(
    path: Path, model: ScratchPrior, optimizer: torch.optim.Optimizer, step: int, meta: dict
) -> None:
    with atomic_path(path) as tmp:
        torch.save(
            {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "meta": meta},
            tmp,
        )


def train_scratch_prior(
    data: SubjectData,
    out_dir: str | os.PathLike[str],
    *,
    gen_config: GeneratorConfig,
    prior_config: PriorConfig = PriorConfig(),
    progress: bool | None = None,
    run_id: str = "",
    restart_on_mismatch: bool = False,
    device: str | None = None,
) -> ScratchPrior:
    """Fit the scratch prior on the training frames of ``data``; resume from ``out_dir/checkpoint.pt``.

    Writes ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end, and one JSON line per
    step to ``train_log.jsonl`` (step, loss terms, seconds). A checkpoint written with other
    settings (or another ``run_id``, e.g. a code hash) is an error, or with ``restart_on_mismatch``
    is set aside as ``checkpoint.stale.pt`` and training starts over. ``device`` defaults to CUDA
    when available; the data stays on the CPU and each batch is moved.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = prior_config
    train_index = np.flatnonzero(data.train)
    if len(train_index) == 0:
        raise ValueError(f"{out_dir}: no training frames")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = ScratchPrior(gen_config, len(train_index), cfg.seed).to(device)
    optimizer = torch.optim.Adam(
        [
            {"params": model.generator.parameters(), "lr": cfg.lr_generator},
            {"params": [model.w_id, model.offsets], "lr": cfg.lr_latent},
        ],
        betas=(0.0, 0.99),
    )
    # Everything that shapes the result except the step budget: a finished run may be extended.
    run_settings = {
        k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("steps", "checkpoint_every")
    }
    meta = {
        "gen_config": dataclasses.asdict(gen_config),
        "prior_config": run_settings,
        "run_id": run_id,
        "data": data.fingerprint(),
    }
    checkpoint, log_path = out_dir / "checkpoint.pt", out_dir / "train_log.jsonl"
    step = 0
    state = open_checkpoint(out_dir, meta, restart_on_mismatch, device, step_key="step")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    model.train()
    train_frames = torch.as_tensor(train_index)
    batch_size = min(cfg.batch_size, len(train_index))
    bar = tqdm(
        total=cfg.steps, initial=step, disable=None if progress is None else not progress, desc="prior"
    )
    with open(log_path, "a") as log_file:
        while step < cfg.steps:
            started = time.perf_counter()
            # Batch and renderer jitter depend on (seed, step) only: resumed runs repeat them exactly.
            torch.manual_seed(step_seed(cfg.seed, step))
            pick = torch.randint(len(train_index), (batch_size,))
            frames = train_frames[pick]
            pick = pick.to(device)
            cameras = data.cameras[frames].to(device)
            out = model(pick, cameras)
            terms = reconstruction_losses(
                out, to_unit(data.crops[frames].to(device)), model.offsets[pick], cfg
            )
            if data.proxy is not None:
                person = None if data.person is None else data.person[frames].to(device)
                geometry = geometry_losses(model, out, cameras, person, data.proxy, cfg)
                terms["total"] = terms["total"] + geometry.pop("total")
                terms.update(geometry)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            values = torch.stack([v.detach() for v in terms.values()]).tolist()  # one device sync
            if not np.isfinite(values).all():
                bad = [k for k, v in zip(terms, values, strict=True) if not np.isfinite(v)]
                raise FloatingPointError(
                    f"{out_dir}: prior training diverged at step {step + 1} (non-finite {', '.join(bad)});"
                    f" {checkpoint} holds the last good state"
                )
            optimizer.step()
            step += 1
            record = {"step": step, **{k: round(v, 6) for k, v in zip(terms, values, strict=True)}}
            record["seconds"] = round(time.perf_counter() - started, 4)
            log_file.write(json.dumps(record) + "\n")
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                log_file.flush()
                _save_checkpoint(checkpoint, model, optimizer, step, meta)
                log.info(
                    "step %d: loss %.4f (l1 %.4f, ssim %.4f)",
                    step,
                    record["total"],
                    record["l1"],
                    record["ssim"],
                )
    bar.close()
    model.eval()
    return model


@torch.no_grad()
def evaluate_prior(model: ScratchPrior, data: SubjectData, batch_size: int = 8) -> dict[str, Any]:
    """Face-region PSNR/SSIM of renders vs crops: training frames with their offsets, test frames
    from the identity latent alone (the deltaplane stage is what adds expression there)."""
    model.eval()
    train_index = np.flatnonzero(data.train)
    slot = {int(f): i for i, f in enumerate(train_index)}
    results: dict[str, list[float]] = {"train_psnr": [], "test_psnr": [], "train_ssim": [], "test_ssim": []}
    for split, frames in (("train", train_index), ("test", np.flatnonzero(~data.train))):
        for start in range(0, len(frames), batch_size):
            chunk = frames[start : start + batch_size]
            index = None
            if split == "train":
                index = torch.as_tensor([slot[int(f)] for f in chunk], device=model.device)
            out = model(index, data.cameras[chunk].to(model.device))
            target = to_unit(data.crops[chunk]).to(model.device)
            face = data.face[chunk].float().to(model.device)
            results[f"{split}_psnr"] += psnr(out["image"].clamp(-1, 1), target, face).tolist()
            results[f"{split}_ssim"] += ssim(out["image"].clamp(-1, 1), target, face).tolist()
    return {k: (float(np.mean(v)) if v else None) for k, v in results.items()} | {
        "n_train": int(len(train_index)),
        "n_test": int((~data.train).sum()),
    }


SHEET_YAWS = (-30.0, 0.0, 30.0)
SHEET_PITCHES = (20.0, 0.0, -20.0)


@torch.no_grad()
def prior_sheet(
    model: ScratchPrior,
    out_png: str | os.PathLike[str],
    *,
    radius: float,
    pivot: Sequence[float],
    focal: float,
    proxy: HeadProxy | None = None,
) -> dict[str, Any]:
    """Renders of the identity tri-plane at yaw -30/0/+30 x pitch +20/0/-20 (head angles, degrees),
    RGB grid on the left, depth grid (near = bright) on the right.

    Returns the depth range used and, per view, how solid the render is: ``semi_transparent`` =
    fraction of pixels whose opacity is between 0.1 and 0.9 (fog is mostly that; a solid head only
    at its outline) and, with a ``proxy``, ``landmark_depth_mm`` = mean distance (template mm)
    between the rendered depth and the template's rigid landmarks that face the camera.
    """
    from talk3d_core.camera import eg3d_camera

    yaw, pitch = np.meshgrid(SHEET_YAWS, SHEET_PITCHES)
    cams = torch.as_tensor(
        eg3d_camera(yaw.ravel(), pitch.ravel(), np.zeros(yaw.size), radius=radius, pivot=pivot, focal=focal),
        dtype=torch.float32,
        device=model.device,
    )
    model.eval()
    out = model(None, cams)
    out = {k: v.cpu() for k, v in out.items()}
    views = []
    for i, (y, p) in enumerate(zip(yaw.ravel(), pitch.ravel(), strict=True)):
        opacity = out["weights_sum"][i]
        view = {"yaw": float(y), "pitch": float(p)}
        view["semi_transparent"] = float(((opacity > 0.1) & (opacity < 0.9)).float().mean())
        if proxy is not None:
            view["landmark_depth_mm"] = _landmark_depth_error(out["image_depth"][i], cams[i].cpu(), proxy, y)
        views.append(view)
    rgb = list(to_uint8(out["image"]))
    depth = F.interpolate(out["image_depth"], size=out["image"].shape[-2:], mode="nearest")
    near, far = float(depth.min()), float(depth.max())
    depth_tiles = list(depth_to_uint8(depth, near, far))
    rows = [np.concatenate(rgb[r * 3 : r * 3 + 3] + depth_tiles[r * 3 : r * 3 + 3], axis=1) for r in range(3)]
    with atomic_path(out_png) as tmp:
        Image.fromarray(np.concatenate(rows, axis=0)).save(tmp)
    return {"depth_range": [near, far], "views": views}


def _landmark_depth_error(depth: torch.Tensor, camera: torch.Tensor, proxy: HeadProxy, yaw: float) -> float:
    """Mean |rendered depth - template distance| in template mm over the rigid landmarks on the
    camera's side of the face (a turned head hides the far eye corner and brow)."""
    points = proxy.landmarks()[RIGID_POINTS]
    # Positive yaw puts the camera on the subject's right (world -x): keep the midline and that half
    # (every point for a frontal view).
    keep = (points[:, 0] - proxy.mideye[0]) * np.sign(yaw) <= 1e-9
    return float(landmark_depth_error(depth[None], camera[None], points[keep]).mean() / proxy.scale)


def write_prior_outputs(
    model: ScratchPrior,
    data: SubjectData,
    *,
    generator_pt: str | os.PathLike[str],
    identity_pt: str | os.PathLike[str],
    frames_parquet: str | os.PathLike[str],
    offsets: torch.Tensor | None = None,
) -> None:
    """Personalized generator (config + weights + w_id + the head proxy's placement, so later stages
    know where the head sits in the world), P_ID (1, 3, C, R, R) and a per-frame table
    (frame, split, offset_norm: L2 norm of the frame's latent offset, from ``offsets`` (N, num_ws,
    w_dim) when given, else the model's training offsets with 0 for test frames; camera: the EG3D
    label used, tracked cameras in scratch mode, refined ones in pretrained mode)."""
    import pandas as pd

    with torch.no_grad():
        planes = model.generator.planes(model.w_id)
    with atomic_path(generator_pt) as tmp:
        torch.save(
            {
                "config": dataclasses.asdict(model.generator.config),
                "generator": model.generator.state_dict(),
                "w_id": model.w_id.data,
                "head_proxy": None if data.proxy is None else data.proxy.as_dict(),
            },
            tmp,
        )
    with atomic_path(identity_pt) as tmp:
        torch.save({"planes": planes, "w_id": model.w_id.data}, tmp)
    if offsets is not None:  # every frame's offset (the pretrained mode inverts test frames too)
        offset_norm = offsets.detach().flatten(1).norm(dim=1).cpu().numpy().astype(np.float32)
    else:
        offset_norm = np.zeros(len(data.train), np.float32)
        offset_norm[np.flatnonzero(data.train)] = model.offsets.detach().flatten(1).norm(dim=1).cpu().numpy()
    table = pd.DataFrame(
        {
            "frame": np.arange(len(data.train), dtype=np.int32),
            "split": np.where(data.train, "train", "test"),
            "offset_norm": offset_norm,
            "camera": list(data.cameras.numpy().astype(np.float32)),
        }
    )
    with atomic_path(frames_parquet) as tmp:
        table.to_parquet(tmp, index=False)
