"""Camera jitter of the personalization's frame inversion: per batch (before) vs sequential (now).

    python bench/camera_jitter.py [--subject results/german] [--frames 60] [--steps 50]
                                  [--first-steps 200] [--threads 1] [--variants old,batch,sequential]

Inverts the first ``--frames`` frames of a subject's clip with a generator that already knows the
subject: the scratch prior in ``<subject>/prior/generator.pt`` (its generator and identity latent
w_id), with that subject's crops, masks, tracked cameras and landmarks. No EG3D checkpoint is needed;
what it measures is the frame inversion's schedule, at the CPU preset's scale (64 px, 32^2 rays), not
the paper's (EG3D 512). The variants, each with ``--steps`` optimiser steps per frame:

- ``old``: the code before this change (``talk3d_core/personalize.py`` at git revision ``--old-rev``):
  batches of 4 consecutive frames, each batch from the same start, its own L1 (final + raw) and
  offset losses and a 6-number camera correction (3 angles, 3 translations) at its default rates.
- ``batch``: the same batches of 4, with the current frame loss, learning rate and yaw/pitch-only
  correction (no previous frame, so no pull towards it): the schedule alone differs from ``sequential``.
- ``sequential``: :func:`talk3d_core.personalize.invert_frames` (frame 0 for ``--first-steps``, every
  later frame warm-started from the previous one and pulled towards it).

Every variant starts from the prior's identity with a zero offset and the tracked cameras; early
stopping is off (``frame_stop_loss`` 0: its 0.2 assumes the LPIPS terms) and LPIPS is not used
(its weights are not downloaded here), so the frame loss is L1 + face L1 + offset norms. Renderer
jitter is on while optimising (EG3D's default) and off for the reconstruction error.

Printed per variant: frame-to-frame camera jitter of the refined yaw and pitch (head angles in
degrees, from the refined labels): mean |first difference| and mean |second difference|, also for
the tracked cameras; the first differences across the 4-frame batch boundaries and inside batches;
the mean change from the tracked angles; the reconstruction error of the final image (mean |error|
in 0..255 over the image, PSNR in the face region) and the seconds taken.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from talk3d_core.camera import head_angles, read_camera_table, vector_column
from talk3d_core.crop import read_crop_table
from talk3d_core.features import read_features_meta, split_by_time
from talk3d_core.masks import read_mask
from talk3d_core.metrics.image import psnr
from talk3d_core.model.eg3d import GeneratorConfig, TriPlaneGenerator
from talk3d_core.model.subject import load_subject
from talk3d_core.nets.optional import OptionalNets
from talk3d_core.personalize import (
    FRAME_DILATION,
    PretrainedConfig,
    face_region,
    frame_terms,
    invert_frames,
    pivot_features,
    refine_cameras,
    select_pivots,
)
from talk3d_core.util.images import to_unit
from talk3d_core.util.io import list_frames
from talk3d_core.util.runs import seed_step

REPO = Path(__file__).resolve().parents[1]
BATCH = 4  # the old frame_batch_size
NO_LPIPS = OptionalNets(reasons={"lpips": "its weights are not downloaded on this machine"})
# OpenCV camera axes vs the head frame's: cam2world's rotation times this is R_head^T.
FLIP = np.diag([1.0, -1.0, -1.0])


def refined_angles(labels: torch.Tensor) -> np.ndarray:
    """(N, 2) yaw, pitch in degrees of the head as EG3D labels (N, 25) show it."""
    rotation = labels[:, :16].reshape(-1, 4, 4)[:, :3, :3].double().numpy()
    yaw, pitch, _ = head_angles(FLIP @ np.swapaxes(rotation, 1, 2))
    return np.column_stack([yaw, pitch])


def jitter(angles: np.ndarray, tracked: np.ndarray) -> dict[str, float]:
    """Mean |first| and |second| frame-to-frame differences of yaw and pitch (degrees), the first
    differences across batch boundaries (frame 4k-1 -> 4k) and inside batches, and the mean |change|
    from the tracked angles."""
    d1 = np.abs(np.diff(angles, axis=0))
    boundary = (np.arange(1, len(angles)) % BATCH) == 0
    return {
        "change": np.abs(angles - tracked).mean(),
        "yaw_d1": d1[:, 0].mean(),
        "pitch_d1": d1[:, 1].mean(),
        "yaw_d2": np.abs(np.diff(angles[:, 0], 2)).mean(),
        "pitch_d2": np.abs(np.diff(angles[:, 1], 2)).mean(),
        "d1_boundary": d1[boundary].mean(),
        "d1_inside": d1[~boundary].mean(),
    }


def load_old_module(rev: str):
    """talk3d_core/personalize.py as it was at git revision ``rev`` (it imports only modules that
    still exist)."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:talk3d_core/personalize.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("personalize_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:talk3d_core/personalize.py", "exec"), module.__dict__)
    return module


def per_batch(
    generator, crops, cameras, w_id, start, region, cfg, pivot
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches of 4 consecutive frames, each from ``start`` with no correction and a fresh Adam,
    ``cfg.frame_steps`` steps of the current frame loss (no previous frame); returns W+ offsets
    (N, num_ws, w_dim) and yaw/pitch corrections (N, 2) in degrees."""
    n = len(crops)
    offsets, delta = start.repeat(n, 1, 1), torch.zeros(n, 2)
    step = 0
    for first in range(0, n, BATCH):
        index = slice(first, min(n, first + BATCH))
        offset = torch.nn.Parameter(offsets[index].clone())
        angles = torch.nn.Parameter(torch.zeros(len(offset), 2))
        optimizer = torch.optim.Adam([offset, angles], lr=cfg.frame_lr)
        target, labels = to_unit(crops[index]), cameras[index]
        for _ in range(cfg.frame_steps):
            seed_step(cfg.seed, step, 2)
            refined = refine_cameras(labels, torch.rad2deg(angles), pivot=pivot)
            out = generator.synthesis(w_id + offset, refined, noise_mode="const", jitter=cfg.jitter)
            terms = frame_terms(out, target, region, offset, None, cfg, NO_LPIPS)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            step += 1
        offsets[index], delta[index] = offset.detach(), torch.rad2deg(angles.detach())
    return offsets, delta


@torch.no_grad()
def reconstruction(generator, ws, cameras, crops, face) -> tuple[float, float]:
    """Mean |error| (0..255) of the final image and face-region PSNR (dB), renders without jitter."""
    errors, psnrs = [], []
    for start in range(0, len(crops), 8):
        part = slice(start, start + 8)
        image = generator.synthesis(ws[part], cameras[part], noise_mode="const", jitter=False)["image"]
        target = to_unit(crops[part])
        errors.append(((image.clamp(-1, 1) - target).abs() * 127.5).mean(dim=(1, 2, 3)))
        psnrs.append(psnr(image.clamp(-1, 1), target, face[part].float()))
    return float(torch.cat(errors).mean()), float(torch.cat(psnrs).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subject", type=Path, default=REPO / "results/german")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--steps", type=int, default=50, help="steps per frame (the official 50)")
    parser.add_argument("--first-steps", type=int, default=200, help="steps of frame 0, sequential")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default="old,batch,sequential")
    parser.add_argument("--old-rev", default="3182c09", help="git revision of the per-batch code")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    subject = args.subject

    saved = torch.load(subject / "prior/generator.pt", map_location="cpu", weights_only=True)
    config = GeneratorConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()}
    )
    generator = TriPlaneGenerator(config).eval().requires_grad_(False)
    generator.load_state_dict(saved["generator"])
    w_id = saved["w_id"].float()  # (1, num_ws, w_dim)
    background = saved["training"]["background"]

    table = read_camera_table(subject / "camera.parquet")
    camera = table.attrs["camera"]
    meta = read_features_meta(subject / "features.parquet")
    train = np.asarray(split_by_time(meta["n_frames"], meta["test_fraction"])) == "train"
    masks = list_frames(subject / "masks")
    labels = vector_column(table, "label")
    # The face region from the pivots personalize would choose on the whole clip.
    features = pivot_features(
        table[["yaw", "pitch", "roll"]].to_numpy(), read_crop_table(subject / "crop.parquet").lm68, train
    )
    pivots = select_pivots(features, train, 5)
    size = config.image_resolution
    region = face_region(np.stack([read_mask(masks[i]) for i in pivots]), size, FRAME_DILATION)

    n = args.frames
    data = load_subject(
        list_frames(subject / "crops")[:n], masks[:n], labels[:n], train[:n], size, background=background
    )
    pivot = camera["pivot"]
    cfg = PretrainedConfig(frame_first_steps=args.first_steps, frame_steps=args.steps, frame_stop_loss=0.0)
    start = torch.zeros_like(w_id)
    tracked = refined_angles(data.cameras)
    print(
        f"{subject.name}: frames 0..{n - 1}, scratch prior {size} px ({config.neural_rendering_resolution}^2 "
        f"rays), {args.steps} steps a frame ({args.first_steps} for frame 0 in sequential), "
        f"{args.threads} thread(s), pivots {pivots.tolist()} for the face region ({int(region.sum())} px)"
    )
    rows = {"tracked": jitter(tracked, tracked) | {"mae": float("nan"), "psnr": float("nan"), "seconds": 0.0}}
    for variant in args.variants.split(","):
        started = time.perf_counter()
        if variant == "old":
            old = load_old_module(args.old_rev)
            old_cfg = old.PretrainedConfig(frame_steps=args.steps, frame_batch_size=BATCH)
            fit = old.invert_frames(
                generator, data.crops, data.cameras, w_id, start.repeat(n, 1, 1), old_cfg,
                losses=NO_LPIPS, pivot=pivot,
            )  # fmt: skip
            offsets = fit.offsets
            cameras = old.refine_cameras(data.cameras, fit.camera_delta, pivot=pivot)
        elif variant == "batch":
            offsets, delta = per_batch(generator, data.crops, data.cameras, w_id, start, region, cfg, pivot)
            cameras = refine_cameras(data.cameras, delta, pivot=pivot)
        elif variant == "sequential":
            fit = invert_frames(
                generator, data.crops, data.cameras, w_id, start, region, cfg, losses=NO_LPIPS, pivot=pivot
            )
            offsets = fit.offsets
            cameras = refine_cameras(data.cameras, fit.camera_delta, pivot=pivot)
        else:
            sys.exit(f"unknown variant {variant!r}: old, batch or sequential")
        seconds = time.perf_counter() - started
        mae, face_psnr = reconstruction(generator, w_id + offsets, cameras.detach(), data.crops, data.face)
        rows[variant] = jitter(refined_angles(cameras.detach()), tracked) | {
            "mae": mae,
            "psnr": face_psnr,
            "seconds": seconds,
        }

    print(
        f"{'':11s} {'yaw d1':>7s} {'pitch d1':>8s} {'yaw d2':>7s} {'pitch d2':>8s} "
        f"{'d1 bound':>8s} {'d1 in':>6s} {'change':>6s} {'MAE':>6s} {'face PSNR':>9s} {'s':>6s}"
    )
    for name, r in rows.items():
        print(
            f"{name:11s} {r['yaw_d1']:7.3f} {r['pitch_d1']:8.3f} {r['yaw_d2']:7.3f} {r['pitch_d2']:8.3f} "
            f"{r['d1_boundary']:8.3f} {r['d1_inside']:6.3f} {r['change']:6.2f} {r['mae']:6.2f} "
            f"{r['psnr']:9.2f} {r['seconds']:6.0f}"
        )
    print("degrees (d1, d2: mean |first|, |second| difference of the refined head angles; d1 bound/in:")
    print("yaw and pitch first differences across and inside 4-frame batches; change: mean |refined -")
    print("tracked|); MAE 0..255; PSNR dB")


if __name__ == "__main__":
    main()
