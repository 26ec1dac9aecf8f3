"""Does the audio drive the mouth? Held-out frames rendered three ways and scored.

Settings (the issue's point 5): ``identity`` renders the identity tri-plane alone (dP = 0), ``no_audio``
the trained model with the audio token zeroed, ``full`` the trained model. Each is scored on the
face region (PSNR, SSIM) and on the mouth: the landmark backend is run on the renders and on the
ground-truth crops at the same resolution, and the inner-lip opening series are correlated over time,
with LMD over the mouth landmarks (:mod:`talk3d_core.metrics.mouth`).

A synthetic clip whose mouth opening and blinks are known per frame (the demo) is also scored
against that truth with no detector (:mod:`talk3d_core.metrics.truth`): the ``truth`` section. Where
the detector's figures and the truth's disagree, the section says which to trust and why, from the
numbers (:func:`truth_verdict`), and the sheet and the log say so too.
"""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from talk3d_core.metrics.image import psnr, ssim
from talk3d_core.metrics.mouth import (
    block_resamples,
    correlation,
    correlation_difference,
    expected_face_box,
    landmarks_of_images,
    mouth_opening,
    mouth_scores,
    paired_differences,
)
from talk3d_core.metrics.truth import (
    BLINK_BACKEND,
    OPENING_BACKEND,
    ClipTruth,
    blur,
    finite_or_none,
    matching_blur,
    read_clip_truth,
)
from talk3d_core.model.subject import SubjectData, mouth_boxes
from talk3d_core.model.talking_head import TalkingHead
from talk3d_core.render import render_batches
from talk3d_core.util.images import to_uint8, to_unit
from talk3d_core.util.io import atomic_path, write_json
from talk3d_core.util.sampling import evenly_spaced

log = logging.getLogger(__name__)

SETTINGS = {
    "identity": {"identity_only": True},
    "no_audio": {"drop": ("audio",)},
    "full": {},
}
#: A reader of the mouth opening (the detector, the dark mouth area) is trusted where the figures
#: disagree only if, on the held-out ground-truth crops as they are and blurred like the renders, it
#: follows the drawn opening at least this well (Pearson r). Rationale: docs/decisions.md#synthetic-truth
MIN_READER_R = 0.8
#: The detector's and the truth's mouth-opening r of one setting disagree when they differ by more.
DISAGREEMENT_R = 0.3


def audio_ablation(
    head: TalkingHead,
    data: SubjectData,
    *,
    frames: Sequence[int] | None = None,
    landmark_backend: str = "mediapipe",
    sheet_png: str | os.PathLike[str] | None = None,
    truth: ClipTruth | None = None,
) -> dict[str, Any]:
    """Scores of the three settings on ``frames`` (default: the test frames).

    Returns {"frames": n, "landmark_backend": name, "ground_truth": {"detected": fraction},
    "settings": {name: {"face_psnr", "face_ssim", "lmd", "opening_correlation", "opening_mae",
    "detected"}}, "differences": {"full-no_audio" | "full-identity": the full model's mouth scores
    minus the other setting's, with block-bootstrap 95% intervals (:func:`paired_differences`)}}; LMD
    and opening in pixels of a 256-pixel crop (see :func:`mouth_scores`).
    ``sheet_png``: ground truth over the three settings for six frames, with the mouth enlarged.
    ``truth``: the clip's drawn mouth opening and blinks (a synthetic clip's, indexed like ``data``):
    adds the ``truth`` section (:func:`truth_section`), whose verdict the sheet prints below the rows.
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
    if truth is not None:
        images = {"ground_truth": to_uint8(target)} | {name: to_uint8(r) for name, r in renders.items()}
        landmarks = {"ground_truth": truth_lm} | landmarks
        results["truth"] = truth_section(
            truth, frames, images, landmarks, results,
            detect=lambda x: landmarks_of_images(x, backend=landmark_backend, expected_box=face_box),
        )  # fmt: skip
    if sheet_png is not None:
        notes = _truth_notes(results["truth"]) if truth is not None else []
        _ablation_sheet(target, renders, data.mouth[frames], sheet_png, notes)
    return results


def _r(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def truth_section(
    truth: ClipTruth,
    frames: Sequence[int],
    images: Mapping[str, np.ndarray],
    landmarks: Mapping[str, np.ndarray],
    detector: Mapping[str, Any],
    detect: Callable[[np.ndarray], np.ndarray],
) -> dict[str, Any]:
    """The ``truth`` section of ablation.json: each image set scored against the clip's drawn mouth
    opening and blinks, with no detector, and the detector's reading of the same images against it.

    images: "ground_truth" and each setting's renders, (N, S, S, 3) uint8 of clip ``frames``;
    landmarks: the detector's (N, 68, 2) on each; detector: the ablation's results so far (settings,
    differences, landmark_backend); detect: the detector, images -> landmarks, run again on the
    ground-truth crops blurred as much as each setting's renders are (:func:`matching_blur`), so both
    readers are also checked on known images degraded like the renders.

    Returns {"source", "backends", "regions", "frames", "blink_frames", "ground_truth" and
    "settings": {name: {"opening_r": r of the dark mouth area with mouth_open, "blink_r": r of the
    eyes' lid cover with blink, "detector_opening_r": r of the detector's inner-lip opening with
    mouth_open}}, "blur": {setting: {"sigma_px": its renders' blur}}, "blurred_ground_truth": {sigma
    > 0: {"opening_r", "detector_opening_r"} of the crops blurred by it}, "differences":
    {"full-no_audio" | "full-identity": {"opening_r": {"difference", "ci95"}}} (block bootstrap as for
    the detector's), "verdict": :func:`truth_verdict`}. The ground truth's figures bound what a
    render can reach.
    """
    frames = np.asarray(frames, dtype=np.int64)
    drawn = truth.mouth_open[frames]

    def detector_r(lm68: np.ndarray) -> float | None:
        return finite_or_none(correlation(mouth_opening(lm68), drawn))

    entries, readings = {}, {}
    for name, batch in images.items():
        s = truth.scores(batch, frames)
        readings[name] = s["opening"]
        entries[name] = {
            "opening_r": s["opening_r"],
            "blink_r": s["blink_r"],
            "detector_opening_r": detector_r(landmarks[name]),
        }
    crops = images["ground_truth"]
    blurs = {
        name: matching_blur(batch, crops, truth.regions)
        for name, batch in images.items()
        if name != "ground_truth"
    }
    blurred = {}
    for sigma in sorted({s for s in blurs.values() if s > 0}):  # renders as sharp as the crops: no check
        degraded = blur(crops, sigma)
        blurred[f"{sigma:g}"] = {
            "opening_r": truth.scores(degraded, frames)["opening_r"],
            "detector_opening_r": detector_r(detect(degraded)),
        }
    index = block_resamples(len(frames))
    section = {
        "source": truth.path,
        "backends": {"opening": OPENING_BACKEND, "blink": BLINK_BACKEND},
        "regions": truth.regions.as_dict(),
        "frames": len(frames),
        "blink_frames": int((truth.blink[frames] > 0).sum()),
        "ground_truth": entries.pop("ground_truth"),
        "settings": entries,
        "blur": {name: {"sigma_px": sigma} for name, sigma in blurs.items()},
        "blurred_ground_truth": blurred,
        "differences": {
            f"full-{other}": {
                "opening_r": correlation_difference(readings["full"], readings[other], drawn, index)
            }
            for other in ("no_audio", "identity")
        },
    }
    section["verdict"] = truth_verdict(section, detector)
    return section


def _direction(d: Mapping[str, Any], higher_is_better: bool) -> str | None:
    """The full model's side of a difference ("better" or "worse") where its 95% interval excludes 0."""
    if d.get("ci95") is None:
        return None
    lo, hi = d["ci95"]
    if lo > 0 or hi < 0:
        return "better" if (lo > 0) == higher_is_better else "worse"
    return None


def _difference(d: Mapping[str, Any], fmt: str) -> str:
    lo, hi = d["ci95"]
    return f"{format(d['difference'], fmt)} [{format(lo, fmt)}, {format(hi, fmt)}]"


def truth_verdict(truth: Mapping[str, Any], detector: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the detector's mouth figures and the truth's agree, and if not which to trust and why.

    Disagreement: a setting's mouth-opening r differs by more than :data:`DISAGREEMENT_R` between the
    detector (its landmarks on the renders vs on the crops) and the truth (the dark mouth area vs the
    drawn opening), or the two rank the full model against another setting in opposite directions
    (each difference's 95% interval excluding 0; the detector's opening r and LMD, the truth's
    opening r). Each reader's worth: the lowest r with the drawn opening it reaches on the held-out
    ground-truth crops, as they are and blurred like each setting's renders. Trusted where they
    disagree, or where no setting has both figures (then "agree" is False too): the reader worth
    more, if it reaches :data:`MIN_READER_R`; else neither. Returns {"agree", "trust": "both" |
    "synthetic truth" | "detector" | "neither", "disagreements": [sentences], "readers": {name:
    {"worst_known_r", "ground_truth_r", "blurred_r": {sigma: r}, "renders_r": {setting: r}}, and the
    detector's detection rates}, "statement": a paragraph with the numbers}.
    """
    backend = detector["landmark_backend"]
    names = list(truth["settings"])
    disagreements = []
    for name in names:
        d_r, t_r = detector["settings"][name]["opening_correlation"], truth["settings"][name]["opening_r"]
        if d_r is not None and t_r is not None and abs(d_r - t_r) > DISAGREEMENT_R:
            disagreements.append(
                f"{name}: mouth-opening r {_r(d_r)} by the detector (landmarks on the renders vs on the "
                f"crops), {_r(t_r)} by the truth (dark mouth area vs the drawn opening)"
            )
    for pair, diffs in truth["differences"].items():
        t = diffs["opening_r"]
        t_dir = _direction(t, higher_is_better=True)
        for key, label, higher in (("opening_correlation", "mouth-opening r", True), ("lmd", "LMD", False)):
            d = detector["differences"][pair][key]
            d_dir = _direction(d, higher)
            if t_dir and d_dir and t_dir != d_dir:
                d_shown, t_shown = _difference(d, "+.2f"), _difference(t, "+.2f")
                disagreements.append(
                    f"{pair}: by the detector's {label} the full model is {d_dir} ({d_shown}), "
                    f"by the truth's opening r it is {t_dir} ({t_shown})"
                )
    gt, blurred = truth["ground_truth"], truth["blurred_ground_truth"]
    readers: dict[str, dict[str, Any]] = {}
    for reader, key in (("synthetic truth", "opening_r"), ("detector", "detector_opening_r")):
        known = [gt[key], *(b[key] for b in blurred.values())]
        readers[reader] = {
            "worst_known_r": None if None in known else min(known),
            "ground_truth_r": gt[key],
            "blurred_r": {sigma: b[key] for sigma, b in blurred.items()},
            "renders_r": {n: truth["settings"][n][key] for n in names},
        }
    readers["detector"] |= {
        "backend": backend,
        "detected": {"ground_truth": detector["ground_truth"]["detected"]}
        | {n: detector["settings"][n]["detected"] for n in names},
    }

    def known(reader: str) -> str:
        r = readers[reader]
        shown = ", ".join(
            f"blurred by {sigma} px {_r(v)}" for sigma, v in r["blurred_r"].items() if sigma != "0"
        )
        return f"{_r(r['ground_truth_r'])}" + (f" ({shown})" if shown else "")

    blur_of = ", ".join(f"{n} {truth['blur'][n]['sigma_px']:g} px" for n in names)
    why = (
        f"on the held-out ground-truth crops the dark mouth area follows the drawn opening at r "
        f"{known('synthetic truth')} and the detector ({backend}) at r {known('detector')}, the renders "
        f"being about as sharp as the crops blurred by {blur_of}; on the renders the detector follows it "
        "at r " + ", ".join(f"{n} {_r(readers['detector']['renders_r'][n])}" for n in names)
    )
    by_truth = "By the truth the rendered mouth follows the drawn opening at r " + ", ".join(
        f"{n} {_r(truth['settings'][n]['opening_r'])}" for n in names
    )
    full_vs = truth["differences"].get("full-no_audio", {}).get("opening_r", {})
    if full_vs.get("ci95") is not None:
        by_truth += f" (full - no_audio {_difference(full_vs, '+.2f')})"
    by_truth += "."
    comparable = [
        n
        for n in names
        if detector["settings"][n]["opening_correlation"] is not None
        and truth["settings"][n]["opening_r"] is not None
    ]
    if comparable and not disagreements:
        trust = "both"
        statement = f"The detector's mouth figures and the synthetic truth's agree: {why}. {by_truth}"
    else:
        worth = {k: v["worst_known_r"] for k, v in readers.items() if v["worst_known_r"] is not None}
        valid = {k: v for k, v in worth.items() if v >= MIN_READER_R}
        trust = max(valid, key=valid.get) if valid else "neither"
        if trust == "neither":
            head = f"Trust neither: neither reads the known opening at r {MIN_READER_R} or better"
        else:
            other = "the detector" if trust == "synthetic truth" else "the synthetic truth"
            head = f"Trust the {trust} over {other}, which reads the known opening less well"
        if disagreements:
            listed = "; ".join(disagreements)
            opening = f"The detector's mouth figures and the synthetic truth's disagree ({listed})"
        else:  # the detector found no mouth to measure on the renders (or the truth's series is constant)
            opening = "No setting has both a detector's and a synthetic truth's mouth-opening r to compare"
        statement = f"{opening}. {head}: {why}. {by_truth}"
    return {
        "agree": bool(comparable) and not disagreements,
        "trust": trust,
        "disagreements": disagreements,
        "readers": readers,
        "min_reader_r": MIN_READER_R,
        "disagreement_r": DISAGREEMENT_R,
        "statement": statement,
    }


def _truth_notes(truth: Mapping[str, Any]) -> list[str]:
    """Lines under the sheet: each row's figures against the drawn truth, and the verdict."""
    rows = {"ground truth": truth["ground_truth"]} | truth["settings"]
    figures = "; ".join(
        f"{name} {_r(s['opening_r'])} / {_r(s['blink_r'])} / {_r(s['detector_opening_r'])}"
        for name, s in rows.items()
    )
    return [
        f"Against the drawn truth ({truth['frames']} held-out frames), r of mouth dark area / eye lid "
        f"cover / detector's mouth opening: {figures}.",
        truth["verdict"]["statement"],
    ]


def _ablation_sheet(
    target: torch.Tensor,
    renders: dict[str, torch.Tensor],
    mouth: torch.Tensor,
    out_png: str | os.PathLike[str],
    notes: Sequence[str] = (),
    n: int = 6,
) -> None:
    """Rows: ground truth, then each setting; per frame the crop and its mouth box enlarged beside it;
    ``notes`` printed below (wrapped to the sheet's width)."""
    pick = evenly_spaced(len(target), n)
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
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    if notes:
        sheet = _with_notes(sheet, notes)
    with atomic_path(out_png) as tmp:
        sheet.save(tmp)


def _with_notes(sheet: Image.Image, notes: Sequence[str]) -> Image.Image:
    """``sheet`` with ``notes`` in black on white below it, wrapped to its width (PIL's default font)."""
    draw = ImageDraw.Draw(sheet)
    char_w = max(1.0, draw.textlength("0" * 10) / 10)
    lines = [w for note in notes for w in textwrap.wrap(note, max(20, int((sheet.width - 8) / char_w)))]
    line_h = 12
    out = Image.new("RGB", (sheet.width, sheet.height + 8 + line_h * len(lines)), "white")
    out.paste(sheet, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((4, sheet.height + 4 + i * line_h), line, fill=(0, 0, 0))
    return out


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
    truth_json: str | os.PathLike[str] | None = None,
    crop_table: str | os.PathLike[str] | None = None,
    fps: float = 25.0,
) -> dict[str, Any]:
    """Rule ablation: :func:`audio_ablation` on the subject's held-out frames, logged and written to
    ``metrics_json`` with its sheet. settings: the validated ``ablation`` config section.
    truth_json: a synthetic clip's truth (the demo's), scored with the regions of ``crop_table``
    (crop.parquet) at the pipeline's ``fps`` (:func:`talk3d_core.metrics.truth.read_clip_truth`)."""
    from talk3d_core.features import read_features
    from talk3d_core.model.subject import read_subject_data
    from talk3d_core.model.talking_head import load_talking_head
    from talk3d_core.util.runs import pick_device

    head = load_talking_head(model_pt, pick_device(device))
    data = read_subject_data(
        read_features(features_parquet), prior_frames, crops=crops, masks=masks,
        size=head.generator.config.image_resolution, background=head.training_record["background"],
    )  # fmt: skip
    truth = None
    if truth_json is not None:
        if crop_table is None:
            raise ValueError(f"{truth_json}: scoring against the clip's truth needs the crop table")
        from talk3d_core.crop import read_crop_table

        truth = read_clip_truth(truth_json, read_crop_table(crop_table), n_frames=len(data.train), fps=fps)
    results = audio_ablation(
        head, data, landmark_backend=settings["landmark_backend"], sheet_png=sheet_png, truth=truth
    )
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
    if truth is not None:
        t = results["truth"]
        for name, row in {"ground truth": t["ground_truth"], **t["settings"]}.items():
            log.info(
                "truth     %-12s mouth dark area r %s, eye lid cover r %s, detector's mouth opening r %s",
                name, shown(row["opening_r"], "+.3f"), shown(row["blink_r"], "+.3f"),
                shown(row["detector_opening_r"], "+.3f"),
            )  # fmt: skip
        log.info("truth     %s", t["verdict"]["statement"])
    write_json(metrics_json, results)
    return results
