"""Does the audio drive the mouth? Held-out frames rendered three ways and scored.

Settings (the issue's point 5): ``identity`` renders the identity tri-plane alone (dP = 0), ``no_audio``
the trained model with the audio token zeroed, ``full`` the trained model. Each is scored on the
face region (PSNR, SSIM) and on the mouth: the landmark backend is run on the renders and on the
ground-truth crops at the same resolution, and the inner-lip opening series are correlated over time,
with LMD over the mouth landmarks (:mod:`talk3d_core.metrics.mouth`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from talk3d_core.metrics.image import psnr, ssim
from talk3d_core.metrics.mouth import expected_face_box, landmarks_of_images, mouth_scores, paired_differences
from talk3d_core.model.subject import SubjectData, mouth_boxes
from talk3d_core.model.talking_head import TalkingHead
from talk3d_core.render import render_batches
from talk3d_core.util.images import to_uint8, to_unit
from talk3d_core.util.io import atomic_path, write_json

log = logging.getLogger(__name__)

SETTINGS = {
    "identity": {"identity_only": True},
    "no_audio": {"drop": ("audio",)},
    "full": {},
}


def audio_ablation(
    head: TalkingHead,
    data: SubjectData,
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
    face_box = expected_face_box(truth_lm)  # renders are aligned like the crops
    results: dict[str, Any] = {
        "frames": len(frames),
        "landmark_backend": landmark_backend,
        "ground_truth": {"detected": float(np.isfinite(truth_lm[:, 0, 0]).mean())},
        "settings": {},
    }
    renders, landmarks = {}, {}
    for name, setting in SETTINGS.items():
        batches = render_batches(head, data.conditions, data.cameras, frames, **setting)
        images = torch.cat([out["image"].clamp(-1, 1) for _, out in batches])
        renders[name] = images
        landmarks[name] = landmarks_of_images(
            to_uint8(images), backend=landmark_backend, expected_box=face_box
        )
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


def ablation_stage(
    *,
    model_pt: str | os.PathLike[str],
    features_parquet: str | os.PathLike[str],
    prior_frames: str | os.PathLike[str],
    crops: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    settings: dict[str, Any],
    metrics_json: str | os.PathLike[str],
    sheet_png: str | os.PathLike[str],
    device: str | None = None,
) -> dict[str, Any]:
    """Rule ablation: :func:`audio_ablation` on the subject's held-out frames, logged and written to
    ``metrics_json`` with its sheet. settings: the validated ``ablation`` config section."""
    from talk3d_core.features import read_features
    from talk3d_core.model.subject import read_subject_data
    from talk3d_core.model.talking_head import load_talking_head
    from talk3d_core.util.runs import pick_device

    head = load_talking_head(model_pt, pick_device(device))
    data = read_subject_data(
        read_features(features_parquet), prior_frames, crops=crops, masks=masks,
        size=head.generator.config.image_resolution, background=head.training_record["background"],
    )  # fmt: skip
    results = audio_ablation(head, data, landmark_backend=settings["landmark_backend"], sheet_png=sheet_png)
    detected = 100 * results["ground_truth"]["detected"]
    log.info("held-out frames: %d (landmarks found on %.0f%% of ground truth)", results["frames"], detected)

    def shown(value: float | None, fmt: str) -> str:  # None: not computable (e.g. a mouth that never moves)
        return "n/a" if value is None else format(value, fmt)

    for name, s in results["settings"].items():
        log.info(
            "%-9s face PSNR %.2f dB, SSIM %.3f, LMD %s px, mouth-opening r %s, landmarks on %.0f%%",
            name, s["face_psnr"], s["face_ssim"], shown(s["lmd"], ".2f"),
            shown(s["opening_correlation"], ".3f"), 100 * s["detected"],
        )  # fmt: skip

    def interval(ci: Sequence[float] | None, fmt: str) -> str:
        return "" if ci is None else f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"

    for pair, d in results["differences"].items():
        lmd, r = d["lmd"], d["opening_correlation"]
        log.info(
            "%s over %d frames: LMD %s px%s, mouth-opening r %s%s (95%% block-bootstrap intervals)",
            pair, d["frames"], shown(lmd["difference"], "+.2f"), interval(lmd["ci95"], "+.2f"),
            shown(r["difference"], "+.3f"), interval(r["ci95"], "+.3f"),
        )  # fmt: skip
    write_json(metrics_json, results)
    return results
