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
status ``unavailable`` and the reason, never a number. Renders are made here at the model's resolution
(not decoded from the videos), so compression does not enter the scores; ground truth is the crops at
that resolution, with the background as the model was trained to show it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from talk3d_core.face.template import FaceFraming
from talk3d_core.metrics.image import psnr, ssim
from talk3d_core.metrics.mouth import (
    REFERENCE_SIZE,
    expected_face_box,
    landmarks_of_images,
    mouth_opening,
    mouth_scores,
)
from talk3d_core.metrics.sync import sync_scorer, syncnet_window
from talk3d_core.metrics.truth import ClipTruth, read_clip_truth, truth_rows
from talk3d_core.model.subject import FrameConditions, SubjectData
from talk3d_core.model.talking_head import TalkingHead
from talk3d_core.nets.identity import identity_embedder
from talk3d_core.nets.inception import fid_model
from talk3d_core.nets.lpips import lpips_loss
from talk3d_core.nets.optional import OptionalNets
from talk3d_core.render import drive_clip, novel_view_cameras, parse_view, render_batches
from talk3d_core.util.images import to_uint8, to_unit
from talk3d_core.util.io import atomic_path
from talk3d_core.util.weights import DEFAULT_MANIFEST, DEFAULT_WEIGHTS_DIR

log = logging.getLogger(__name__)

COLUMNS = ("setting", "metric", "backend", "value", "unit", "frames", "status", "reason")
SELF, GROUND_TRUTH = "self", "ground_truth"
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
) -> OptionalNets:
    """The nets behind the metrics (LPIPS, identity embedders, FID's Inception, SyncNet v2), each
    None with a reason where it cannot be loaded (its rows then say "unavailable"); ArcFace and
    SyncNet v2 from ``weights_dir`` (``syncnet_weights``: another SyncNet file). ``framing``: where the
    crops put the face (crop.parquet's template; default the fixed one): SyncNet's window and the
    identity embedders' face regions follow it."""
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
            identity_embedder, backend, device=device, framing=framing, **where
        )
    return OptionalNets.load(builders, purpose="evaluation")


# ------------------------------------------------------------------------------------------ metrics


def face_metrics(
    setting: str, render: np.ndarray, truth: np.ndarray, face: np.ndarray, nets: OptionalNets
) -> list[Metric]:
    """PSNR (dB), SSIM and LPIPS over the face region of renders vs ground truth, all (N, S, S, 3) uint8
    with face masks (N, S, S) bool."""
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
        with torch.no_grad():
            value = torch.cat(
                [nets.lpips(a[i : i + 8] * m[i : i + 8], t[i : i + 8] * m[i : i + 8]) for i in range(0, n, 8)]
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
    render: np.ndarray,
    nets: OptionalNets,
    *,
    truth: np.ndarray | None = None,
    reference: dict | None = None,
) -> list[Metric]:
    """IDSIM per identity backend: cosine of each render's embedding with its ground truth's (``truth``)
    or with the subject's mean training embedding (``reference``: backend name -> (D,))."""
    from talk3d_core.nets.identity import identity_similarity

    rows = []
    for name, embedder in nets.embedders.items():
        if embedder is None:
            rows += _missing(setting, ["idsim"], name, nets.reasons[f"embedders:{name}"], len(render))
            continue
        emb = embedder.embed(render)
        if truth is not None:
            other = embedder.embed(truth)
        else:
            other = np.broadcast_to(reference[name], emb.shape)
        sim = identity_similarity(emb, other)
        found = np.isfinite(sim)
        value = float(sim[found].mean()) if found.any() else None
        rows.append(_ok(setting, "idsim", embedder.name, value, "cosine", int(found.sum())))
    return rows


def fid_metric(
    setting: str, render: np.ndarray, reference_features: np.ndarray | None, nets: OptionalNets
) -> list[Metric]:
    """FID of renders against the training crops' Inception features."""
    from talk3d_core.metrics.fid import fid

    inception = nets.fid
    if inception is None or reference_features is None:
        return _missing(setting, ["fid"], "inception", nets.reasons.get("fid", "not loaded"), len(render))
    if len(render) < 2:
        return _missing(setting, ["fid"], inception.name, "fewer than 2 frames", len(render))
    value = fid(inception.features(render), reference_features)
    return [_ok(setting, "fid", inception.name, value, "", len(render))]


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
    setting: str, lm68: np.ndarray, size: int, audio: np.ndarray, rate: int, fps: float, backend: str
) -> list[Metric]:
    """Mouth motion against the audio, no ground truth needed: correlation of the inner-lip opening with
    the audio energy (best lag, frames), and the mouth's opening in silence vs speech."""
    from talk3d_core.metrics.motion import audio_energy, mouth_motion_stats, speech_mask

    opening = mouth_opening(lm68) * (REFERENCE_SIZE / size)
    energy = audio_energy(audio, rate, len(lm68), fps)
    stats = mouth_motion_stats(opening, energy, speech_mask(energy))
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
    ]


# --------------------------------------------------------------------------------------- the stage


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return to_unit(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


def render_uint8(
    head: TalkingHead,
    conditions: FrameConditions,
    cameras: np.ndarray,
    frames: Sequence[int],
    batch_size: int,
) -> np.ndarray:
    """Renders (N, S, S, 3) uint8 of clip ``frames`` (deterministic), see :func:`render_batches`."""
    return np.concatenate(
        [
            to_uint8(out["image"])
            for _, out in render_batches(head, conditions, cameras, frames, batch_size=batch_size)
        ]
    )


def _segment(wav: np.ndarray, rate: int, first_frame: int, n_frames: int, fps: float) -> np.ndarray:
    start = int(round(first_frame / fps * rate))
    return wav[start : start + int(round(n_frames / fps * rate))]


@dataclass
class DriveInput:
    """A driving audio: its features (M, W, D) (normalised with the subject's statistics) and waveform."""

    audio_features: np.ndarray
    wav: np.ndarray
    rate: int


def evaluate_subject(
    head: TalkingHead,
    data: SubjectData,
    wav: np.ndarray,
    rate: int,
    nets: OptionalNets,
    *,
    landmark_backend: str = "mediapipe",
    au45_calibration: dict[str, Any] | None = None,
    drives: dict[str, DriveInput] | None = None,
    views: Sequence[str] = (),
    view_convention: str = "head",
    drive_camera: str = "tracked",
    fps: float = 25.0,
    fid_reference_frames: int = 500,
    max_drive_frames: int = 1500,
    batch_size: int = 8,
    clip_truth: ClipTruth | None = None,
) -> pd.DataFrame:
    """All metrics of one subject as a table with :data:`COLUMNS` (one row per setting x metric x backend).

    data: every frame of the clip with its crops, masks and conditions (the held-out ones are
    evaluated); wav (samples,) float mono at ``rate`` Hz, the clip's audio; nets: the metrics' nets
    (:func:`scoring_nets`); au45_calibration: the features stage's, for AUE; drives: driving audio by
    name; views: view names "{yaw}_{pitch}" (cameras of the model's geometry, angles read in
    ``view_convention``, :func:`talk3d_core.render.view_cameras`); drive_camera: "tracked"
    (held-out cameras played forward and back) or "fixed" (frontal). A driving clip is scored on its
    first ``max_drive_frames`` frames (the renders are held in memory for SyncNet; the rows'
    ``frames`` say how many were used). clip_truth: a synthetic clip's drawn mouth opening and blinks,
    which the held-out renders and crops are also scored against (:func:`truth_rows`).
    """
    test = data.test
    if len(test) < 2:
        raise ValueError(f"evaluation needs at least 2 held-out frames, the split has {len(test)}")
    if data.crops is None or data.face is None or data.conditions is None:
        raise ValueError("evaluation needs the subject's crops, masks and conditions")
    size = data.crops.shape[-1]
    cameras = data.cameras.numpy()
    conditions = data.conditions
    rows: list[Metric] = []

    def landmarks(images: np.ndarray, expected_box: np.ndarray | None = None) -> np.ndarray:
        return landmarks_of_images(images, backend=landmark_backend, expected_box=expected_box)

    # Reference statistics of the training crops: FID features and mean identity embeddings.
    train = np.flatnonzero(data.train)
    pick = train[np.linspace(0, len(train) - 1, min(fid_reference_frames, len(train))).round().astype(int)]
    reference_images = to_uint8(to_unit(data.crops[pick]))
    reference_features = nets.fid.features(reference_images) if nets.fid is not None else None
    reference_identity = {}
    if any(e is not None for e in nets.embedders.values()):
        from talk3d_core.nets.identity import mean_identity

        for name, embedder in nets.embedders.items():
            if embedder is not None:
                reference_identity[name] = mean_identity(
                    embedder.embed(reference_images[:: max(1, len(pick) // 100)])
                )
    log.info("reference: %d training crops", len(pick))

    # Self-driven: the held-out frames.
    truth = to_uint8(to_unit(data.crops[test]))
    render = render_uint8(head, conditions, cameras, test, batch_size)
    truth_lm = landmarks(truth)
    # Renders are aligned like the crops: the held-out crops' face box says where to look in them.
    face_box = expected_face_box(truth_lm)
    render_lm = landmarks(render, face_box)
    audio = _segment(wav, rate, int(test[0]), len(test), fps)
    rows += face_metrics(SELF, render, truth, data.face[test, 0].numpy(), nets)
    rows += mouth_metrics(SELF, render_lm, truth_lm, size, landmark_backend)
    rows += aue_metric(SELF, render_lm, truth_lm, au45_calibration, landmark_backend)
    rows += identity_metrics(SELF, render, nets, truth=truth)
    rows += fid_metric(SELF, render, reference_features, nets)
    rows += sync_metrics(SELF, render, audio, rate, nets)
    rows += motion_metrics(SELF, render_lm, size, audio, rate, fps, landmark_backend)
    rows += sync_metrics(GROUND_TRUTH, truth, audio, rate, nets)
    rows += motion_metrics(GROUND_TRUTH, truth_lm, size, audio, rate, fps, landmark_backend)
    if clip_truth is not None:  # a synthetic clip: scored against what was drawn, with no detector
        rows += [Metric(**r) for r in truth_rows(clip_truth, test, {SELF: render, GROUND_TRUTH: truth})]
    log.info("self-driven: %d held-out frames", len(test))

    # Cross-driven: other audio, eye/pose tokens (and tracked cameras) of the held-out frames.
    for name, drive in (drives or {}).items():
        setting = f"drive:{name}"
        cond, cams, _ = drive_clip(head, data, drive.audio_features, drive_camera)
        n = min(len(cond), max_drive_frames)
        images = render_uint8(head, cond, cams, np.arange(n), batch_size)
        lm = landmarks(images, face_box)
        wav = _segment(drive.wav, drive.rate, 0, n, fps)
        rows += sync_metrics(setting, images, wav, drive.rate, nets)
        rows += motion_metrics(setting, lm, size, wav, drive.rate, fps, landmark_backend)
        rows += identity_metrics(setting, images, nets, reference=reference_identity)
        rows += fid_metric(setting, images, reference_features, nets)
        log.info("%s: %d frames", setting, n)

    # Novel views of the held-out frames.
    for view in views:
        cams = novel_view_cameras(head, data, view, view_convention)
        images = render_uint8(head, conditions, cams, test, batch_size)
        setting = f"view:{view}"
        rows += fid_metric(setting, images, reference_features, nets)
        rows += identity_metrics(setting, images, nets, reference=reference_identity)
    if views:
        log.info("novel views: %d (%s convention)", len(views), view_convention)
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
    drives: dict[str, tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    settings: dict[str, Any],
    views: Sequence[str],
    drive_camera: str,
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
    the table in the log. drives: driving audio name -> (its features.parquet, its audio.wav);
    view_convention: how the view names' angles are read (config ``render.view_convention``);
    crop_table: the crop stage's ``crop.parquet``, whose template says where the crops put the face;
    settings: the validated ``evaluate`` config section; weights_dir and manifest: where the metrics'
    nets are (config ``weights``); truth_json: a synthetic clip's truth (the demo's,
    :func:`talk3d_core.metrics.truth.read_clip_truth`)."""
    from talk3d_core.crop import read_crop_table
    from talk3d_core.features import read_features, read_features_meta
    from talk3d_core.model.subject import read_subject_data
    from talk3d_core.model.talking_head import load_talking_head
    from talk3d_core.util.media import read_wav_float
    from talk3d_core.util.runs import pick_device

    device_ = pick_device(device)
    head = load_talking_head(model_pt, device_)
    data = read_subject_data(
        read_features(features_parquet), prior_frames, crops=crops, masks=masks,
        size=head.generator.config.image_resolution, background=head.training_record["background"],
    )  # fmt: skip
    framing = read_crop_table(crop_table).framing
    nets = scoring_nets(
        device_, identity_backends=settings["identity_backends"], syncnet_weights=settings["sync_weights"],
        weights_dir=weights_dir, manifest=manifest, framing=framing,
    )  # fmt: skip
    driving = {}
    for name, (features, audio) in drives.items():
        wav, rate = read_wav_float(audio)
        driving[name] = DriveInput(read_features(features, kind="drive").audio, wav, rate)
    wav, rate = read_wav_float(audio_wav)
    clip_truth = (
        read_clip_truth(truth_json, read_crop_table(crop_table), n_frames=len(data.train), fps=fps)
        if truth_json
        else None
    )
    table = evaluate_subject(
        head, data, wav, rate, nets, landmark_backend=settings["landmark_backend"],
        au45_calibration=read_features_meta(features_parquet)["eye"].get("calibration"), drives=driving,
        views=views, view_convention=view_convention, drive_camera=drive_camera, fps=fps,
        fid_reference_frames=settings["fid_reference_frames"], max_drive_frames=settings["max_drive_frames"],
        batch_size=settings["batch_size"],
        clip_truth=clip_truth,
    )  # fmt: skip
    log.info("metrics of %s:\n%s", subject or model_pt, metrics_text(table))
    write_metrics(table, metrics_parquet)
    plot_view_metrics(table, views_png, view_convention)
    return table
