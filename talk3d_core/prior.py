"""Stage 7, prior: the personalized generator of one subject (:func:`prior_stage`, the rule's entry),
fitted from scratch here or personalized from an EG3D checkpoint (:mod:`talk3d_core.personalize`).

Scratch mode: when no pretrained EG3D checkpoint is available, the personalized prior is learned from the
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

from talk3d_core.metrics.image import psnr, ssim
from talk3d_core.model.eg3d import GeneratorConfig
from talk3d_core.model.head_proxy import RIGID_POINTS, HeadProxy, project_points
from talk3d_core.model.personalized import PersonalizedGenerator, training_record
from talk3d_core.model.subject import SubjectData, load_subject
from talk3d_core.report.depth import depth_to_uint8
from talk3d_core.util.images import to_uint8, to_unit
from talk3d_core.util.io import atomic_path
from talk3d_core.util.runs import Run, check_finite, pick_device, seed_step
from talk3d_core.util.sampling import evenly_spaced
from talk3d_core.util.weights import DEFAULT_MANIFEST, DEFAULT_WEIGHTS_DIR

log = logging.getLogger(__name__)

#: prior settings that override the generator preset's sizes for a scratch prior (null: the preset's).
SCRATCH_SIZES = (
    "neural_rendering_resolution",
    "image_resolution",
    "depth_resolution",
    "depth_resolution_importance",
)


@dataclass(frozen=True)
class PriorConfig:
    """Optimisation settings of the scratch prior (the generator's sizes are in GeneratorConfig)."""

    steps: int = 1500
    batch_size: int = 4
    lr_generator: float = 2e-3
    lr_latent: float = 1e-2
    weight_l1: float = 1.0
    weight_l1_raw: float = 1.0
    weight_ssim: float = 0.5
    weight_offset: float = 1e-2
    # Geometry prior (talk3d_core.model.head_proxy): rendered depth at the template's rigid landmarks
    # (world units, L1), opacity vs the person mask, solid head core, empty space around the proxy.
    weight_depth: float = 1.0
    weight_opacity: float = 1.0
    weight_solid: float = 0.5
    weight_empty: float = 0.5
    shape_points: int = 2048
    checkpoint_every: int = 200
    seed: int = 0


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
    model: PersonalizedGenerator,
    out: dict[str, torch.Tensor],
    cameras: torch.Tensor,
    person: torch.Tensor | None,
    proxy: HeadProxy,
    cfg: PriorConfig,
) -> dict[str, torch.Tensor]:
    """Geometry-prior terms for a rendered batch and their weighted ``total`` (see
    :mod:`talk3d_core.model.head_proxy`); ``cfg.shape_points`` random points per volume term.

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
) -> PersonalizedGenerator:
    """Fit the scratch prior on the training frames of ``data``; resume from ``out_dir/checkpoint.pt``.

    Writes ``checkpoint.pt`` every ``checkpoint_every`` steps and at the end, and one JSON line per
    step to ``train_log.jsonl`` (step, loss terms, seconds). A checkpoint written with other
    settings (or another ``run_id``, e.g. a code hash) is an error, or with ``restart_on_mismatch``
    is parked in ``checkpoints/`` (see :func:`~talk3d_core.util.runs.open_checkpoint`) and training
    starts over (these settings again resume it). ``device`` defaults to CUDA when available; the data
    stays on the CPU and each batch is moved.
    """
    cfg = prior_config
    train_index = np.flatnonzero(data.train)
    if len(train_index) == 0:
        raise ValueError(f"{out_dir}: no training frames")
    device = pick_device(device)
    model = PersonalizedGenerator(gen_config, len(train_index), cfg.seed).to(device)
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
    run = Run(
        out_dir, meta, total=cfg.steps, device=device, restart_on_mismatch=restart_on_mismatch, desc="prior",
        progress=progress,
    )  # fmt: skip
    if run.state is not None:
        model.load_state_dict(run.state["model"])
        optimizer.load_state_dict(run.state["optimizer"])
    step = run.start
    model.train()
    train_frames = torch.as_tensor(train_index)
    batch_size = min(cfg.batch_size, len(train_index))
    with run:
        while step < cfg.steps:
            started = time.perf_counter()
            seed_step(cfg.seed, step)  # batch and renderer jitter: resumed runs repeat them exactly
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
            check_finite(terms, values, f"{out_dir}: prior training", step + 1, run.checkpoint)
            optimizer.step()
            step += 1
            record = {"step": step, **{k: round(v, 6) for k, v in zip(terms, values, strict=True)}}
            record["seconds"] = round(time.perf_counter() - started, 4)
            run.step(record)
            if (step % cfg.checkpoint_every == 0 and run.due()) or step == cfg.steps:
                run.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()})
                log.info(
                    "step %d: loss %.4f (l1 %.4f, ssim %.4f)",
                    step,
                    record["total"],
                    record["l1"],
                    record["ssim"],
                )
    model.steps_run = step
    model.eval()
    return model


@torch.no_grad()
def evaluate_prior(
    model: PersonalizedGenerator, data: SubjectData, batch_size: int = 8, max_frames: int = 100
) -> dict[str, Any]:
    """Face-region PSNR/SSIM of renders vs crops: training frames with their offsets, test frames
    from the identity latent alone (the deltaplane stage is what adds expression there). Each split
    is scored on at most ``max_frames`` evenly spaced frames: rendering every frame of a
    long clip costs minutes for a mean that 100 frames pin within a fraction of a dB."""
    model.eval()
    train_index = np.flatnonzero(data.train)
    slot = {int(f): i for i, f in enumerate(train_index)}
    splits = {"train": train_index, "test": np.flatnonzero(~data.train)}
    splits = {k: v[evenly_spaced(len(v), max_frames)] for k, v in splits.items()}
    results: dict[str, list[float]] = {"train_psnr": [], "test_psnr": [], "train_ssim": [], "test_ssim": []}
    total, said = sum(len(v) for v in splits.values()), time.monotonic()
    for split, frames in splits.items():
        for start in range(0, len(frames), batch_size):
            if time.monotonic() - said > 60:  # a long clip at 512 px renders for minutes: say so
                done = len(results["train_psnr"]) + len(results["test_psnr"])
                log.info("prior metrics: %d/%d frames rendered", done, total)
                said = time.monotonic()
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
        "n_train_scored": int(len(splits["train"])),
        "n_test_scored": int(len(splits["test"])),
    }


SHEET_YAWS = (-30.0, 0.0, 30.0)
SHEET_PITCHES = (20.0, 0.0, -20.0)


@torch.no_grad()
def prior_sheet(
    model: PersonalizedGenerator,
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
    model: PersonalizedGenerator,
    data: SubjectData,
    *,
    generator_pt: str | os.PathLike[str],
    identity_pt: str | os.PathLike[str],
    frames_parquet: str | os.PathLike[str],
    training: dict[str, Any],
    offsets: torch.Tensor | None = None,
) -> None:
    """Personalized generator (config + weights + w_id + the head proxy's placement, so later stages
    know where the head sits in the world, + ``training``, see
    :func:`talk3d_core.model.talking_head.training_record`), P_ID (1, 3, C, R, R) and a per-frame table
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
                "training": training,
                "steps_run": model.steps_run,
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


def prior_stage(
    *,
    crops: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    camera_parquet: str | os.PathLike[str],
    crop_parquet: str | os.PathLike[str],
    features_parquet: str | os.PathLike[str],
    settings: dict[str, Any],
    outputs: dict[str, str | os.PathLike[str]],
    checkpoint: str | os.PathLike[str] | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    run_id: str = "",
    device: str | None = None,
) -> dict[str, Any]:
    """Rule prior: the personalized generator of one subject, fitted from scratch or personalized from
    an EG3D ``checkpoint`` (``settings["mode"]``), with P_ID, the frame table, the sheet and metrics.

    settings: the validated ``prior`` config section; outputs: paths "generator", "identity",
    "frames", "sheet", "metrics" (the checkpoint and step log go beside "generator"). The split is the
    features stage's; weights_dir and manifest: where pretrained mode finds its LPIPS weights (config
    ``weights``). Returns the metrics written to outputs["metrics"].
    """
    from talk3d_core.camera import read_camera_table, vector_column
    from talk3d_core.crop import read_crop_table
    from talk3d_core.features import read_features_meta, split_by_time
    from talk3d_core.model.head_proxy import fit_head_proxy
    from talk3d_core.util.config import from_settings
    from talk3d_core.util.io import list_frames, write_json

    out_dir = Path(outputs["generator"]).parent
    cameras = read_camera_table(camera_parquet)
    camera = cameras.attrs["camera"]  # the focal, radius and pivot the labels were made with
    meta = read_features_meta(features_parquet)
    train = np.asarray(split_by_time(meta["n_frames"], meta["test_fraction"])) == "train"
    labels = vector_column(cameras, "label")
    landmarks = read_crop_table(crop_parquet).lm68
    proxy = fit_head_proxy(
        landmarks, labels, camera["size"], frames=np.flatnonzero(train), what=str(crop_parquet)
    )
    log.info(
        "head proxy: %.5f world units/mm, mid-eye at %s, landmark RMS %.2f px",
        proxy.scale, [round(v, 4) for v in proxy.mideye], proxy.rms_px,
    )  # fmt: skip
    pretrained = settings["mode"] == "pretrained"
    if pretrained:
        from talk3d_core.model.eg3d.checkpoint import load_verified_generator

        if checkpoint is None:
            raise ValueError("prior mode 'pretrained' needs an EG3D checkpoint (prior.checkpoint)")
        generator = load_verified_generator(
            checkpoint,
            settings["plane_axes"],
            weights_dir or DEFAULT_WEIGHTS_DIR,
            manifest or DEFAULT_MANIFEST,
        )
        gen_config = generator.config
        log.info("pretrained generator: %s (%s axes)", checkpoint, settings["plane_axes"])
    else:
        # Fitted from scratch, nothing outside the tri-plane box is real: render it empty.
        sizes = {k: settings[k] for k in SCRATCH_SIZES if settings.get(k) is not None}
        gen_config = getattr(GeneratorConfig, settings["generator"])(empty_outside_box=True, **sizes)
    mask_paths = list_frames(masks)
    data = load_subject(
        list_frames(crops), mask_paths, labels, train, gen_config.image_resolution,
        background=settings["background"], proxy=None if pretrained else proxy,
    )  # fmt: skip
    if pretrained:
        from talk3d_core.personalize import PretrainedConfig, personalize

        model, refined, offsets = personalize(
            data, cameras[["yaw", "pitch", "roll"]].to_numpy(), landmarks, generator, out_dir,
            masks=mask_paths, camera=camera, cfg=from_settings(PretrainedConfig, settings["pretrained"]),
            run_id=run_id, restart_on_mismatch=True, device=device, weights_dir=weights_dir,
            manifest=manifest, required_nets=not settings["pretrained"]["allow_missing_nets"],
        )  # fmt: skip
        data = dataclasses.replace(data, cameras=refined)
    else:
        offsets = None  # the model's own training-frame offsets
        model = train_scratch_prior(
            data, out_dir, gen_config=gen_config, prior_config=from_settings(PriorConfig, settings),
            run_id=run_id, restart_on_mismatch=True, device=device,
        )  # fmt: skip
    training = training_record(settings["mode"], settings["background"], camera)
    write_prior_outputs(
        model, data, generator_pt=outputs["generator"], identity_pt=outputs["identity"],
        frames_parquet=outputs["frames"], training=training, offsets=offsets,
    )  # fmt: skip
    metrics = evaluate_prior(model, data)
    for split_name in ("train", "test"):
        value = metrics[f"{split_name}_psnr"]
        shown = "no frames" if value is None else f"{value:.2f} dB"
        log.info("face-region PSNR, %s frames: %s", split_name, shown)
    sheet = prior_sheet(
        model, outputs["sheet"], radius=camera["radius"], pivot=camera["pivot"], focal=camera["focal"],
        proxy=proxy,
    )  # fmt: skip
    for view in sheet["views"]:
        log.info(
            "P_ID at yaw %+.0f pitch %+.0f: %.1f%% semi-transparent pixels, landmark depth error %.1f mm",
            view["yaw"], view["pitch"], 100 * view["semi_transparent"], view["landmark_depth_mm"],
        )  # fmt: skip
    metrics |= {"mode": settings["mode"], "steps": model.steps_run, "head_proxy": proxy.as_dict()}
    metrics["views"] = sheet["views"]
    write_json(outputs["metrics"], metrics)
    return metrics
