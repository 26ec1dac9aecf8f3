"""Stage 10, evaluate: the paper's metric suite on renders of the trained model.

Three settings, as in the paper:

- ``self``: the held-out frames re-rendered from their tracked cameras and their own audio, against
  the ground-truth crops: PSNR and SSIM on the face region, LPIPS (face region), LMD (mouth
  landmarks), mouth-opening correlation, AUE (AU45 from the eye aspect ratio), IDSIM (identity
  embedding of render vs crop, per frame), FID (against the training crops) and Sync (SyncNet LSE-C /
  LSE-D). The ground truth's own Sync and mouth-motion figures are reported as ``ground_truth``.
- ``drive:<audio>``: the subject driven by other audio. No ground truth exists, so: Sync, IDSIM
  against the subject's mean training embedding, FID, and mouth motion against the audio (correlation
  of the mouth opening with the audio energy, whether the mouth is closed in silences).
- ``view:<yaw>_<pitch>``: the held-out frames seen from a novel view: FID and IDSIM (against the mean
  training embedding).

Every metric row names the backend that computed it. A backend whose model is missing gives rows with
status ``unavailable`` and the reason, never a number. The renders scored are the render rules' own,
stored losslessly at the model's resolution (``renders/``, not the resized, compressed videos), so
nothing is rendered twice and compression does not enter the scores; ground truth is the crops at
that resolution, with the background as the model was trained to show it. FID's reference features
come from rule fid_reference (:func:`talk3d_core.fid_reference.fid_reference_stage`), once per subject.
The per-frame nets (Inception, identity embedders, landmarks) run in batches of the evaluate
``batch_size``, and the stage logs its progress at least every 30 s
(:class:`talk3d_core.util.runs.Progress`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from talk3d_core.face.template import FaceFraming
from talk3d_core.metrics.fid import FidReference
from talk3d_core.metrics.image import psnr, ssim
from talk3d_core.metrics.motion import audio_energy, mouth_motion_stats, speech_mask
from talk3d_core.metrics.mouth import (
    REFERENCE_SIZE,
    expected_face_box,
    landmarks_of_images,
    mouth_opening,
    mouth_scores,
)
from talk3d_core.metrics.sync import sync_scorer, syncnet_window
from talk3d_core.metrics.truth import ClipTruth, read_clip_truth, truth_rows
from talk3d_core.model.subject import SubjectData
from talk3d_core.nets.identity import identity_embedder, mean_identity
from talk3d_core.nets.inception import fid_model
from talk3d_core.nets.lpips import lpips_loss
from talk3d_core.nets.optional import OptionalNets
from talk3d_core.render import parse_view
from talk3d_core.util.images import to_uint8, to_unit
from talk3d_core.util.io import atomic_path
from talk3d_core.util.media import read_video
from talk3d_core.util.runs import Progress, map_batches
from talk3d_core.util.weights import DEFAULT_MANIFEST, DEFAULT_WEIGHTS_DIR

log = logging.getLogger(__name__)

COLUMNS = ("setting", "metric", "backend", "value", "unit", "frames", "status", "reason")
SELF, GROUND_TRUTH = "self", "ground_truth"
#: The whole recorded clip (every crop with its own audio): the mouth-motion rows renders compare with.
FOOTAGE = "footage"
# Frames of the clip the Sync score needs at least (SyncNet looks at 5-frame windows).
MIN_SYNC_FRAMES = 6


@dataclass(frozen=True)
class Metric:
    """One row of metrics.parquet: ``value`` is None when ``status`` is "unavailable" (see ``reason``)."""

    setting: str
    metric: str
    backend: str
    value: float | None
    unit: str = ""
    frames: int = 0
    status: str = "ok"
    reason: str = ""


def _ok(setting: str, metric: str, backend: str, value: float | None, unit: str, frames: int) -> Metric:
    """A computed metric; a value that could not be computed (NaN, None) becomes an unavailable row."""
    if value is None or not math.isfinite(float(value)):
        return Metric(
            setting, metric, backend, None, unit, frames, "unavailable", "not computable on these frames"
        )
    return Metric(setting, metric, backend, float(value), unit, frames)


def _missing(
    setting: str, metrics: Sequence[str], backend: str, reason: str, frames: int = 0
) -> list[Metric]:
    return [Metric(setting, m, backend, None, "", frames, "unavailable", reason) for m in metrics]


def scoring_nets(
    device: str | torch.device = "cpu",
    *,
    identity_backends: Sequence[str] = ("dlib", "arcface"),
    syncnet_weights: str | os.PathLike[str] | None = None,
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    manifest: str | os.PathLike[str] = DEFAULT_MANIFEST,
    framing: FaceFraming | None = None,
    batch_size: int = 16,
) -> OptionalNets:
    """The nets behind the metrics (LPIPS, identity embedders, FID's Inception, SyncNet v2), each
    None with a reason where it cannot be loaded (its rows then say "unavailable"); ArcFace and
    SyncNet v2 from ``weights_dir`` (``syncnet_weights``: another SyncNet file). ``framing``: where the
    crops put the face (crop.parquet's template; default the fixed one): SyncNet's window and the
    identity embedders' face regions follow it. ``batch_size``: ArcFace's images per pass."""
    builders: dict[str, Callable[[], tuple[Any, str]]] = {
        "lpips": lambda: lpips_loss(device, weights_dir=weights_dir, manifest=manifest),
        "fid": lambda: fid_model(device=device),
        "syncnet": lambda: sync_scorer(
            syncnet_weights, weights_dir=weights_dir, device=device, window=syncnet_window(framing)
        ),
    }
    for backend in identity_backends:
        where = {"weights_dir": weights_dir, "manifest": manifest} if backend == "arcface" else {}
        builders[f"embedders:{backend}"] = functools.partial(
            identity_embedder, backend, device=device, framing=framing, batch_size=batch_size, **where
        )
    return OptionalNets.load(builders, purpose="evaluation")


# ------------------------------------------------------------------------------------------ metrics


def face_metrics(
    setting: str,
    render: np.ndarray,
    truth: np.ndarray,
    face: np.ndarray,
    nets: OptionalNets,
    batch_size: int = 16,
) -> list[Metric]:
    """PSNR (dB), SSIM and LPIPS (in batches of ``batch_size``) over the face region of renders vs
    ground truth, all (N, S, S, 3) uint8 with face masks (N, S, S) bool."""
    a, t = _to_tensor(render), _to_tensor(truth)
    m = torch.from_numpy(np.asarray(face, bool))[:, None].float()
    n = len(render)
    rows = [
        _ok(setting, "psnr", "face-region", float(psnr(a, t, m).mean()), "dB", n),
        _ok(setting, "ssim", "face-region", float(ssim(a, t, m).mean()), "", n),
    ]
    if nets.lpips is None:
        rows += _missing(setting, ["lpips"], "lpips-alex", nets.reasons.get("lpips", "not loaded"), n)
    else:
        b = batch_size
        with torch.no_grad():
            value = torch.cat(
                [nets.lpips(a[i : i + b] * m[i : i + b], t[i : i + b] * m[i : i + b]) for i in range(0, n, b)]
            )
        rows.append(_ok(setting, "lpips", "lpips-alex (face region)", float(value.mean()), "", n))
    return rows


def mouth_metrics(
    setting: str, render_lm: np.ndarray, truth_lm: np.ndarray, size: int, backend: str
) -> list[Metric]:
    """LMD, mouth-opening correlation and error of landmarks (N, 68, 2) on renders vs ground truth, in
    pixels of a 256 px crop (:func:`talk3d_core.metrics.mouth.mouth_scores`)."""
    s = mouth_scores(render_lm, truth_lm, size)
    n = len(render_lm)
    return [
        _ok(setting, "lmd", backend, s.lmd, f"px@{REFERENCE_SIZE}", n),
        _ok(setting, "mouth_opening_r", backend, s.opening_correlation, "", n),
        _ok(setting, "mouth_opening_mae", backend, s.opening_mae, f"px@{REFERENCE_SIZE}", n),
        _ok(setting, "landmarks_found", backend, s.detected, "fraction", n),
    ]


def au45(lm68: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """AU45 (N,) on OpenFace's scale (0 open .. 2 closed) from landmarks, NaN where there are none."""
    from talk3d_core.face.blink import au45_from_ear, eye_aspect_ratio

    out = np.full(len(lm68), np.nan)
    found = np.isfinite(lm68).all(axis=(1, 2))
    if found.sum() >= 1:
        out[found] = au45_from_ear(eye_aspect_ratio(lm68[found]), calibration)
    return out


def aue_metric(
    setting: str,
    render_lm: np.ndarray,
    truth_lm: np.ndarray,
    calibration: dict[str, Any] | None,
    landmark_backend: str,
) -> list[Metric]:
    """AUE: mean |AU45(render) - AU45(truth)|; the eye-aspect-ratio backend gives AU45 only, with the
    subject's AU45 ``calibration`` (features stage; None: unavailable)."""
    backend = f"ear-au45 ({landmark_backend})"
    if calibration is None:
        reason = "the subject's features carry no AU45 calibration of the ear backend"
        return _missing(setting, ["aue"], backend, reason, len(render_lm))
    error = np.abs(au45(render_lm, calibration) - au45(truth_lm, calibration))
    both = np.isfinite(error)
    return [
        _ok(
            setting,
            "aue",
            backend,
            float(error[both].mean()) if both.any() else None,
            "AU45",
            int(both.sum()),
        )
    ]


def identity_metrics(
    setting: str,
    render: Mapping[str, np.ndarray],
    nets: OptionalNets,
    frames: int,
    *,
    truth: Mapping[str, np.ndarray] | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
) -> list[Metric]:
    """IDSIM per identity backend of ``nets``: cosine of each render's embedding (``render``: backend
    name -> (N, D), :meth:`IdentityEmbedder.embed`) with its ground truth's (``truth``, the same) or
    with the subject's mean training embedding (``reference``: backend name -> (D,)). ``frames``: N."""
    from talk3d_core.nets.identity import identity_similarity

    rows = []
    for name, embedder in nets.embedders.items():
        if embedder is None:
            rows += _missing(setting, ["idsim"], name, nets.reasons[f"embedders:{name}"], frames)
            continue
        emb = render[name]
        other = truth[name] if truth is not None else np.broadcast_to(reference[name], emb.shape)
        sim = identity_similarity(emb, other)
        found = np.isfinite(sim)
        value = float(sim[found].mean()) if found.any() else None
        rows.append(_ok(setting, "idsim", embedder.name, value, "cosine", int(found.sum())))
    return rows


def fid_metric(
    setting: str, features: np.ndarray | None, reference: FidReference, nets: OptionalNets, frames: int
) -> list[Metric]:
    """FID of renders (their Inception ``features`` (N, 2048), None without the Inception; ``frames``:
    N) against the training crops' (``reference``, rule fid_reference)."""
    from talk3d_core.metrics.fid import fid

    inception = nets.fid
    if inception is None or features is None:
        return _missing(setting, ["fid"], "inception", nets.reasons.get("fid", "not loaded"), frames)
    if reference.features is None:
        return _missing(setting, ["fid"], reference.backend, f"no FID reference: {reference.reason}", frames)
    if frames < 2:
        return _missing(setting, ["fid"], inception.name, "fewer than 2 frames", frames)
    value = fid(features, reference.features)
    return [_ok(setting, "fid", inception.name, value, "", frames)]


def sync_metrics(
    setting: str, frames: np.ndarray, audio: np.ndarray, rate: int, nets: OptionalNets
) -> list[Metric]:
    """SyncNet LSE-C (higher is better), LSE-D (lower is better) and the A/V offset in frames."""
    names = ["lse_c", "lse_d", "sync_offset"]
    scorer = nets.syncnet
    if scorer is None:
        return _missing(setting, names, "syncnet-v2", nets.reasons.get("syncnet", "not loaded"), len(frames))
    if len(frames) < MIN_SYNC_FRAMES:
        return _missing(setting, names, scorer.name, f"fewer than {MIN_SYNC_FRAMES} frames", len(frames))
    s = scorer.score(frames, audio, rate=rate)
    n = int(s["frames"])
    return [
        _ok(setting, "lse_c", scorer.name, s["lse_c"], "", n),
        _ok(setting, "lse_d", scorer.name, s["lse_d"], "", n),
        _ok(setting, "sync_offset", scorer.name, s["offset"], "frames", n),
    ]


def motion_metrics(
    setting: str,
    lm68: np.ndarray,
    size: int,
    audio: np.ndarray,
    rate: int,
    fps: float,
    backend: str,
    *,
    closed_below: float | None = None,
) -> list[Metric]:
    """Mouth motion against the audio, no ground truth needed: correlation of the inner-lip opening with
    the audio energy (best lag, frames), the mouth's opening in silence vs speech, and the fraction of
    silent frames whose opening is under ``closed_below`` px@256 (default: a quarter of this clip's
    own wide speech opening, :func:`~talk3d_core.metrics.motion.closed_threshold`)."""
    opening = mouth_opening(lm68) * (REFERENCE_SIZE / size)
    energy = audio_energy(audio, rate, len(lm68), fps)
    stats = mouth_motion_stats(opening, energy, speech_mask(energy), closed_below=closed_below)
    name = f"{backend} + rms energy"
    n = len(lm68)
    return [
        _ok(setting, "mouth_energy_r", name, stats["energy_r"], "", n),
        _ok(setting, "mouth_energy_lag", name, stats["energy_lag"], "frames", n),
        _ok(
            setting,
            "opening_speech",
            name,
            stats["opening_speech"],
            f"px@{REFERENCE_SIZE}",
            stats["frames_speech"],
        ),
        _ok(
            setting,
            "opening_silence",
            name,
            stats["opening_silence"],
            f"px@{REFERENCE_SIZE}",
            stats["frames_silence"],
        ),
        _ok(
            setting,
            "silence_closed_fraction",
            name,
            stats["silence_closed_fraction"],
            "fraction",
            stats["frames_silence"],
        ),
        _ok(setting, "closed_threshold", name, stats["closed_threshold"], f"px@{REFERENCE_SIZE}", n),
    ]


# --------------------------------------------------------------------------------------- the stage


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return to_unit(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


def _segment(wav: np.ndarray, rate: int, first_frame: int, n_frames: int, fps: float) -> np.ndarray:
    start = int(round(first_frame / fps * rate))
    return wav[start : start + int(round(n_frames / fps * rate))]


@dataclass
class DriveInput:
    """A driving audio: its waveform (samples,) float mono at ``rate`` Hz and the number of frames of
    its clip (its features'), which its stored render must have."""

    wav: np.ndarray
    rate: int
    frames: int


def read_render(
    path: str | os.PathLike[str], *, frames: int, size: int, limit: int | None = None
) -> np.ndarray:
    """The first ``limit`` (default all) renders (n, size, size, 3) uint8 of a render rule's lossless
    file of ``frames`` renders (:func:`talk3d_core.render.render_video`'s ``renders``). A missing file,
    or one with another frame count or size, is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no stored render; re-run the render rule that writes it")
    images, total = read_video(path, limit=limit)
    if total != frames:
        raise ValueError(f"{path}: {total} rendered frames, evaluation expects {frames}; re-render it")
    if images.shape[1:3] != (size, size):
        raise ValueError(
            f"{path}: renders of {images.shape[2]}x{images.shape[1]} px, the model renders {size}x{size}; "
            "re-render it"
        )
    return images


def evaluate_subject(
    data: SubjectData,
    wav: np.ndarray,
    rate: int,
    nets: OptionalNets,
    *,
    renders: Mapping[str, str | os.PathLike[str]],
    reference: FidReference,
    landmark_backend: str = "mediapipe",
    au45_calibration: dict[str, Any] | None = None,
    drives: Mapping[str, DriveInput] | None = None,
    views: Sequence[str] = (),
    fps: float = 25.0,
    max_drive_frames: int = 1500,
    batch_size: int = 16,
    name: str = "",
    clip_truth: ClipTruth | None = None,
) -> pd.DataFrame:
    """All metrics of one subject as a table with :data:`COLUMNS` (one row per setting x metric x backend).

    data: every frame of the clip with its crops, masks and conditions (the held-out ones are
    evaluated); wav (samples,) float mono at ``rate`` Hz, the clip's audio; nets: the metrics' nets
    (:func:`scoring_nets`); renders: the stored renders (:func:`read_render`) by setting: "self" (the
    held-out frames from their tracked cameras, with their own audio), "drive:<name>" for each of
    ``drives`` (driving audio by name), "view:<yaw>_<pitch>" for each of ``views``; reference: the FID
    reference of the training crops (rule fid_reference), whose frames also give the mean identity
    embeddings; au45_calibration: the features stage's, for AUE. A driving clip is scored on its first
    ``max_drive_frames`` frames (they are held in memory for SyncNet; the rows' ``frames`` say how
    many were used). The per-frame nets run in batches of ``batch_size``; progress goes to the log as
    "<name>: image n/N" (an image through one net) at least every 30 s (:class:`Progress`).
    clip_truth: a synthetic clip's drawn mouth opening and blinks, which the held-out renders and crops
    are also scored against (:func:`truth_rows`).
    """
    test = data.test
    if len(test) < 2:
        raise ValueError(f"evaluation needs at least 2 held-out frames, the split has {len(test)}")
    if data.crops is None or data.face is None or data.conditions is None:
        raise ValueError("evaluation needs the subject's crops, masks and conditions")
    size = data.crops.shape[-1]
    if reference.size != size:
        raise ValueError(f"the FID reference is of {reference.size} px crops, the model renders {size} px")
    drives = dict(drives or {})
    names = [SELF, *(f"drive:{d}" for d in drives), *(f"view:{v}" for v in views)]
    missing = [setting for setting in names if setting not in renders]
    if missing:
        raise ValueError(f"evaluation has no stored render for {', '.join(missing)}")
    rows: list[Metric] = []

    # Work, in images through one net: landmarks, Inception and each identity embedder.
    embedders = {k: e for k, e in nets.embedders.items() if e is not None}
    per_render = 1 + len(embedders) + (nets.fid is not None)
    drive_frames = {d: min(drive.frames, max_drive_frames) for d, drive in drives.items()}
    identity_frames = reference.frames[:: max(1, len(reference.frames) // 100)]
    total = len(embedders) * len(identity_frames) + len(test) * (1 + len(embedders))  # reference, truth
    total += len(data.crops)  # the footage's landmarks
    total += per_render * (len(test) + sum(drive_frames.values())) + (per_render - 1) * len(test) * len(views)
    progress = Progress(name or "evaluate", total, unit="image")

    def landmarks(images: np.ndarray, doing: str, expected_box: np.ndarray | None = None) -> np.ndarray:
        def ticking() -> Iterator[np.ndarray]:  # one tracking session over the clip, progress per frame
            for image in images:
                yield image
                progress.advance(1, f"{doing}: landmarks")

        return landmarks_of_images(ticking(), backend=landmark_backend, expected_box=expected_box)

    def embed(images: np.ndarray, doing: str) -> dict[str, np.ndarray]:
        return {
            k: map_batches(e.embed, images, batch_size, progress, f"{doing}: {k}")
            for k, e in embedders.items()
        }

    def inception(images: np.ndarray, doing: str) -> np.ndarray | None:
        if nets.fid is None:
            return None
        features = nets.fid.features
        return map_batches(
            lambda b: features(b, batch_size=len(b)), images, batch_size, progress, f"{doing}: inception"
        )

    def at(setting: str) -> str:  # what the progress line says the stage is at
        return f"setting {names.index(setting) + 1}/{len(names)} {setting}"

    # Reference: the training crops' mean identity embeddings (their FID features: rule fid_reference).
    reference_images = to_uint8(to_unit(data.crops[identity_frames]))
    reference_identity = {k: mean_identity(e) for k, e in embed(reference_images, "reference").items()}
    log.info("reference: %d training crops (%d for identity)", len(reference.frames), len(identity_frames))

    # The footage: every crop's mouth against the clip's audio. Its "closed" (a quarter of its wide
    # speech opening) judges every render of this subject, not each render's own quarter:
    # docs/decisions.md#closed-by-the-footages-measure.
    footage = (to_uint8(to_unit(data.crops[i : i + 1]))[0] for i in range(len(data.crops)))
    footage_lm = landmarks(footage, f"{FOOTAGE} ({len(data.crops)} crops)")
    footage_audio = _segment(wav, rate, 0, len(data.crops), fps)
    footage_rows = motion_metrics(FOOTAGE, footage_lm, size, footage_audio, rate, fps, landmark_backend)
    closed_below = next(
        r.value for r in footage_rows if r.metric == "closed_threshold"
    )  # None: not computable
    rows += footage_rows

    # Self-driven: the held-out frames.
    truth = to_uint8(to_unit(data.crops[test]))
    render = read_render(renders[SELF], frames=len(test), size=size)
    truth_lm = landmarks(truth, f"{at(SELF)}, ground truth")
    # Renders are aligned like the crops: the held-out crops' face box says where to look in them.
    face_box = expected_face_box(truth_lm)
    render_lm = landmarks(render, at(SELF), face_box)
    audio = _segment(wav, rate, int(test[0]), len(test), fps)
    rows += face_metrics(SELF, render, truth, data.face[test, 0].numpy(), nets, batch_size)
    rows += mouth_metrics(SELF, render_lm, truth_lm, size, landmark_backend)
    rows += aue_metric(SELF, render_lm, truth_lm, au45_calibration, landmark_backend)
    rows += identity_metrics(
        SELF, embed(render, at(SELF)), nets, len(test), truth=embed(truth, f"{at(SELF)}, ground truth")
    )
    rows += fid_metric(SELF, inception(render, at(SELF)), reference, nets, len(test))
    rows += sync_metrics(SELF, render, audio, rate, nets)
    rows += motion_metrics(
        SELF, render_lm, size, audio, rate, fps, landmark_backend, closed_below=closed_below
    )
    rows += sync_metrics(GROUND_TRUTH, truth, audio, rate, nets)
    rows += motion_metrics(
        GROUND_TRUTH, truth_lm, size, audio, rate, fps, landmark_backend, closed_below=closed_below
    )
    if clip_truth is not None:  # a synthetic clip: scored against what was drawn, with no detector
        rows += [Metric(**r) for r in truth_rows(clip_truth, test, {SELF: render, GROUND_TRUTH: truth})]
    log.info("self-driven: %d held-out frames", len(test))

    # Cross-driven: other audio, eye/pose tokens (and tracked cameras) of the held-out frames.
    for drive_name, drive in drives.items():
        setting = f"drive:{drive_name}"
        n = drive_frames[drive_name]
        images = read_render(renders[setting], frames=drive.frames, size=size, limit=n)
        lm = landmarks(images, at(setting), face_box)
        drive_wav = _segment(drive.wav, drive.rate, 0, n, fps)
        rows += sync_metrics(setting, images, drive_wav, drive.rate, nets)
        rows += motion_metrics(
            setting, lm, size, drive_wav, drive.rate, fps, landmark_backend, closed_below=closed_below
        )
        rows += identity_metrics(setting, embed(images, at(setting)), nets, n, reference=reference_identity)
        rows += fid_metric(setting, inception(images, at(setting)), reference, nets, n)
        log.info("%s: %d frames", setting, n)

    # Novel views of the held-out frames.
    for view in views:
        setting = f"view:{view}"
        images = read_render(renders[setting], frames=len(test), size=size)
        rows += fid_metric(setting, inception(images, at(setting)), reference, nets, len(test))
        rows += identity_metrics(
            setting, embed(images, at(setting)), nets, len(test), reference=reference_identity
        )
    if views:
        log.info("novel views: %d", len(views))
    return pd.DataFrame([asdict(r) for r in rows], columns=list(COLUMNS))


# ------------------------------------------------------------------------------------------ outputs


def write_metrics(table: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """metrics.parquet, atomically."""
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def metrics_text(table: pd.DataFrame) -> str:
    """The table as aligned plain text, one line per row; an unavailable row points to its reason,
    listed once below the table."""
    reasons: dict[str, int] = {}
    lines = [f"{'setting':<16} {'metric':<24} {'value':>14} {'unit':<9} {'frames':>6}  backend"]
    for r in table.itertuples(index=False):
        if r.status == "ok":
            value = f"{r.value:.4g}"
        else:
            value = f"unavailable [{reasons.setdefault(r.reason, len(reasons) + 1)}]"
        lines.append(f"{r.setting:<16} {r.metric:<24} {value:>14} {r.unit:<9} {r.frames:>6}  {r.backend}")
    lines += [f"[{n}] {reason}" for reason, n in reasons.items()]
    return "\n".join(lines)


#: Axis words of the novel-view plot per view convention (render.view_convention).
_VIEW_AXIS = {"head": "head {} (degrees)", "lookat": "LookAt {} offset (degrees)"}


def plot_view_metrics(
    table: pd.DataFrame, out_png: str | os.PathLike[str], view_convention: str = "head"
) -> None:
    """Heat maps of FID and IDSIM over the novel-view grid (yaw x pitch), one panel per metric/backend;
    the axes name the convention the view angles are in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = table[table.setting.str.startswith("view:") & (table.status == "ok")].copy()
    panels = sorted({(m, b) for m, b in zip(views.metric, views.backend, strict=True)})
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.6), squeeze=False)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no novel-view metric available", ha="center", va="center")
        axes[0, 0].set_axis_off()
    for ax, (metric, backend) in zip(axes[0], panels, strict=False):
        sel = views[(views.metric == metric) & (views.backend == backend)]
        angles = [parse_view(s.removeprefix("view:")) for s in sel.setting]
        yaws = sorted({a[0] for a in angles})
        pitches = sorted({a[1] for a in angles})
        grid = np.full((len(pitches), len(yaws)), np.nan)
        for (yaw, pitch), value in zip(angles, sel.value, strict=True):
            grid[pitches.index(pitch), yaws.index(yaw)] = value
        im = ax.imshow(grid, cmap="viridis_r" if metric == "fid" else "viridis", origin="lower")
        ax.set_xticks(range(len(yaws)), [f"{y:g}" for y in yaws])
        ax.set_yticks(range(len(pitches)), [f"{p:g}" for p in pitches])
        ax.set_xlabel(_VIEW_AXIS[view_convention].format("yaw"))
        ax.set_ylabel(_VIEW_AXIS[view_convention].format("pitch"))
        ax.set_title(f"{metric.upper()} ({backend})", fontsize=9)
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def evaluate_stage(
    *,
    model_pt: str | os.PathLike[str],
    features_parquet: str | os.PathLike[str],
    prior_frames: str | os.PathLike[str],
    crops: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    crop_table: str | os.PathLike[str],
    audio_wav: str | os.PathLike[str],
    fid_reference: str | os.PathLike[str],
    renders: Mapping[str, str | os.PathLike[str]],
    drives: Mapping[str, tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    settings: dict[str, Any],
    views: Sequence[str],
    fps: float,
    metrics_parquet: str | os.PathLike[str],
    views_png: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    manifest: str | os.PathLike[str] = DEFAULT_MANIFEST,
    device: str | None = None,
    subject: str = "",
    view_convention: str = "head",
    truth_json: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Rule evaluate: every metric of one subject to ``metrics_parquet`` (and the novel-view heat map),
    the table in the log. model_pt: the trained model, read for the size and background of its renders
    only (the renders are the render rules', ``renders``: setting -> file, see
    :func:`evaluate_subject`); fid_reference: rule fid_reference's file; drives: driving audio name ->
    (its features.parquet, its audio.wav); view_convention: how the view names' angles are read
    (config ``render.view_convention``), for the plot's axes; crop_table: the crop stage's
    ``crop.parquet``, whose template says where the crops put the face; settings: the validated
    ``evaluate`` config section; weights_dir and manifest: where the metrics' nets are (config
    ``weights``); truth_json: a synthetic clip's truth (the demo's,
    :func:`talk3d_core.metrics.truth.read_clip_truth`)."""
    from talk3d_core.crop import read_crop_table
    from talk3d_core.features import read_features, read_features_meta
    from talk3d_core.metrics.fid import read_fid_reference, reference_frames
    from talk3d_core.model.subject import model_image_format, read_subject_data
    from talk3d_core.util.media import read_wav_float
    from talk3d_core.util.runs import pick_device

    crop_rows = read_crop_table(crop_table)  # read once: framing of the metrics and the truth's regions
    nets = scoring_nets(
        pick_device(device), identity_backends=settings["identity_backends"],
        syncnet_weights=settings["sync_weights"], weights_dir=weights_dir, manifest=manifest,
        framing=crop_rows.framing, batch_size=settings["batch_size"],
    )  # fmt: skip
    size, background = model_image_format(model_pt)
    data = read_subject_data(
        read_features(features_parquet), prior_frames, crops=crops, masks=masks, size=size,
        background=background,
    )  # fmt: skip
    reference = read_fid_reference(fid_reference)
    expected = reference_frames(data.train, settings["fid_reference_frames"])
    if (reference.size, reference.background) != (size, background) or not np.array_equal(
        reference.frames, expected
    ):
        raise ValueError(
            f"{fid_reference}: {len(reference.frames)} training crops at {reference.size} px on a "
            f"{reference.background} background, the model ({model_pt}) needs {len(expected)} at {size} px "
            f"on {background}; re-run rule fid_reference"
        )
    if nets.fid is not None and reference.features is not None and reference.backend != nets.fid.name:
        raise ValueError(
            f"{fid_reference}: features of {reference.backend}, evaluation has {nets.fid.name}; "
            "re-run rule fid_reference"
        )
    driving = {}
    for name, (features, audio) in drives.items():
        wav, rate = read_wav_float(audio)
        driving[name] = DriveInput(wav, rate, len(read_features(features, kind="drive").audio))
    wav, rate = read_wav_float(audio_wav)
    clip_truth = (
        read_clip_truth(truth_json, crop_rows, n_frames=len(data.train), fps=fps) if truth_json else None
    )
    table = evaluate_subject(
        data, wav, rate, nets, renders=renders, reference=reference,
        landmark_backend=settings["landmark_backend"],
        au45_calibration=read_features_meta(features_parquet)["eye"].get("calibration"), drives=driving,
        views=views, fps=fps, max_drive_frames=settings["max_drive_frames"],
        batch_size=settings["batch_size"], name=f"evaluate {subject}".strip(), clip_truth=clip_truth,
    )  # fmt: skip
    log.info("metrics of %s:\n%s", subject or model_pt, metrics_text(table))
    write_metrics(table, metrics_parquet)
    plot_view_metrics(table, views_png, view_convention)
    return table
