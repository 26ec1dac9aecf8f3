"""Does the audio drive the mouth? Held-out frames rendered three ways and scored.

Settings (the issue's point 5): ``identity`` renders the identity tri-plane alone (dP = 0), ``no_audio``
the trained model with the audio token zeroed, ``full`` the trained model. Each is scored on the
face region (PSNR, SSIM) and on the mouth: the landmark backend is run on the renders and on the
ground-truth crops at the same resolution, and the inner-lip opening series are correlated over time,
with LMD over the mouth landmarks (:mod:`talk3d_core.mouth`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from talk3d_core.image_metrics import psnr, ssim
from talk3d_core.io import atomic_path
from talk3d_core.mouth import landmarks_of_images, mouth_scores, paired_differences
from talk3d_core.prior import SubjectData, to_uint8, to_unit
from talk3d_core.render import render_batches
from talk3d_core.train import FrameConditions, TalkingHead, mouth_boxes

SETTINGS = {
    "identity": {"identity_only": True},
    "no_audio": {"drop": ("audio",)},
    "full": {},
}


def audio_ablation(
    head: TalkingHead,
    data: SubjectData,
    conditions: FrameConditions,
    *,
    frames: Sequence[int] | None = None,
    landmark_backend: str = "mediapipe",
    sheet_png: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Scores of the three settings on ``frames`` (default: the test frames).

    Returns {"frames": n, "landmark_backend": name, "ground_truth": {"detected": fraction},
    "settings": {name: {"face_psnr", "face_ssim", "lmd", "opening_correlation", "opening_mae",
    "detected"}}, "differences": {"full-no_audio" | "full-identity": the full model's mouth scores
    minus the other setting's, with block-bootstrap 95% intervals (:func:`paired_differences`)}}; LMD
    and opening in pixels of a 256-pixel crop (see :func:`mouth_scores`).
    ``sheet_png``: ground truth over the three settings for six frames, with the mouth enlarged.
    """
    frames = list(np.flatnonzero(~data.train) if frames is None else frames)
    if len(frames) < 3:
        raise ValueError(f"audio ablation needs at least 3 frames, got {len(frames)}")
    target = to_unit(data.crops[frames])
    face = data.face[frames].float()
    size = target.shape[-1]
    truth_lm = landmarks_of_images(to_uint8(target), backend=landmark_backend)
    results: dict[str, Any] = {
        "frames": len(frames),
        "landmark_backend": landmark_backend,
        "ground_truth": {"detected": float(np.isfinite(truth_lm[:, 0, 0]).mean())},
        "settings": {},
    }
    renders, landmarks = {}, {}
    for name, setting in SETTINGS.items():
        batches = render_batches(head, conditions, data.cameras, frames, **setting)
        images = torch.cat([out["image"].clamp(-1, 1) for _, out in batches])
        renders[name] = images
        landmarks[name] = landmarks_of_images(to_uint8(images), backend=landmark_backend)
        scores = mouth_scores(landmarks[name], truth_lm, size)
        results["settings"][name] = {
            "face_psnr": float(psnr(images, target, face).mean()),
            "face_ssim": float(ssim(images, target, face).mean()),
        } | scores.as_dict()
    results["differences"] = {
        f"full-{other}": paired_differences(landmarks["full"], landmarks[other], truth_lm, size)
        for other in ("no_audio", "identity")
    }
    if sheet_png is not None:
        _ablation_sheet(target, renders, data.mouth[frames], sheet_png)
    return results


def _ablation_sheet(
    target: torch.Tensor,
    renders: dict[str, torch.Tensor],
    mouth: torch.Tensor,
    out_png: str | os.PathLike[str],
    n: int = 6,
) -> None:
    """Rows: ground truth, then each setting; per frame the crop and its mouth box enlarged beside it."""
    pick = np.linspace(0, len(target) - 1, min(n, len(target))).round().astype(int)
    size = target.shape[-1]
    boxes = mouth_boxes(mouth[pick])
    rows = []
    for images in [target, *renders.values()]:
        tiles = []
        for (top, left, side), i in zip(boxes, pick, strict=True):
            full = to_uint8(images[i : i + 1])[0]
            zoom = np.asarray(
                Image.fromarray(full[top : top + side, left : left + side]).resize(
                    (size, size), Image.Resampling.NEAREST
                )
            )
            tiles.append(np.concatenate([full, zoom], axis=1))
        rows.append(np.concatenate(tiles, axis=1))
    with atomic_path(out_png) as tmp:
        Image.fromarray(np.concatenate(rows, axis=0)).save(tmp)
