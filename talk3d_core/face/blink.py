"""Eye token input (issue 4): a per-frame blink value on OpenFace's AU45 scale, clipped to 0..2.

Talk3D conditions the deltaplane on ``t_eye = clip(AU45, 0, 2)``, OpenFace's AU45 ("blink") intensity:
0 with the eyes open, rising as the lids close; a full blink reaches 2 or more before the clip.
Two backends produce it:

``ear`` (default, needs no download)
    The eye aspect ratio (EAR, Soukupova & Cech 2016) of the iBUG 68 landmarks, per eye
    ``(|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|)`` over points 36-41 and 42-47: lid gap over eye width,
    so it does not change with face size, in-plane rotation or translation. The two eyes are
    averaged weighted by their widths, so under yaw the foreshortened far eye (whose landmarks are
    also the least reliable) counts less. A running median over the frames is available but off by
    default: at 25 fps a fast blink is fully closed in a single frame, which a 3-frame median
    flattens, and a lone glitch frame is not counted as a blink anyway (blinks must span 2 frames).
    Measured rationale: docs/decisions.md#ear-running-median-off-by-default. The open-eye level is a
    running high percentile of the EAR over a few seconds (eyes are open most of the time), which
    follows slow changes of the open-eye EAR with head pitch, yaw and gaze instead of reading them
    as partial closure. The relative closure ``1 - EAR / open level``
    is mapped linearly to 0..2 so that the subject's typical blink (median depth of the clear blinks
    in the clip) reaches 2, then clipped. The calibration (:func:`calibrate_au45`) is a small JSON
    dict that :func:`au45_from_ear` reuses on other footage of the same subject.

``pyfeat``
    AU probabilities of py-feat (``Detectorv1``: RetinaFace, MobileFaceNet landmarks, HOG + XGBoost
    AU classifiers) when py-feat and its models are installed locally; nothing is downloaded. py-feat
    2.x's classifiers have no AU45 column but AU43 ("eyes closed", the same lid closure held longer):
    AU45 is read when present, else AU43. They are presence probabilities 0..1, not OpenFace's
    0..5 intensities, and are scaled by 2 so that a certain closure reaches the token's ceiling.

Blinks (:func:`detect_blinks`) are short peaks of the AU45 value: reaching ``threshold`` (half of a
full blink) and spanning 2-12 frames at 25 fps (0.08-0.5 s) above a quarter of their rise; longer closures
(eyes shut) are not counted as blinks.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, signal

#: iBUG 68 eye contours, 0-based, each p1..p6 = outer/inner corner, upper lid, corner, lower lid:
#: the subject's right eye (image left) 36 outer corner, 37-38 upper lid, 39 inner corner, 40-41
#: lower lid; the left eye 42 inner corner, 43-44 upper lid, 45 outer corner, 46-47 lower lid.
RIGHT_EYE = (36, 37, 38, 39, 40, 41)
LEFT_EYE = (42, 43, 44, 45, 46, 47)
#: The token's ceiling: Talk3D feeds clip(AU45, 0, 2).
AU45_MAX = 2.0
BACKENDS = ("ear", "pyfeat")
CALIBRATION_VERSION = "talk3d.blink_calibration/1"

# Relative closure (1 - EAR / open level) of a typical full blink, used when a clip has too few clear
# blinks to measure it. Measured rationale: docs/decisions.md#default-blink-depth
DEFAULT_FULL_CLOSURE = 0.75
# Fewest clear blinks from which the full-blink depth is measured instead of taking the default.
MIN_CALIBRATION_BLINKS = 3

# py-feat 2.x Detectorv1(face_model="retinaface", landmark_model="mobilefacenet", au_model="xgb"):
# the Hugging Face repositories and files it loads (first name, else the fallback it also accepts).
PYFEAT_MODELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("py-feat/retinaface_r34", ("model.safetensors", "retinaface_r34.safetensors")),
    ("py-feat/mobilefacenet", ("mobilefacenet_model_best.pth.tar",)),
    ("py-feat/xgb_au", ("xgb_au_classifier_v2.skops", "xgb_au_classifier.skops")),
)
_PYFEAT_INSTALL = (
    "install it with `pip install 'py-feat>=2'` (it brings torchvision, xgboost, skops and timm, "
    "which must match the installed torch), then put its models in py-feat's model cache: "
    + ", ".join(f"{repo} ({names[0]})" for repo, names in PYFEAT_MODELS)
    + ", e.g. `hf download py-feat/xgb_au xgb_au_classifier_v2.skops --cache-dir <py-feat resources>`; "
    "or use the default eye backend 'ear', which needs no download"
)


class BlinkBackendError(RuntimeError):
    """An eye backend cannot run here: its package or its model files are not installed."""


# ------------------------------------------------------------------------------------ eye ratio


def _check_lm68(lm68: np.ndarray, what: str) -> np.ndarray:
    points = np.asarray(lm68, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (68, 2) or len(points) == 0:
        raise ValueError(f"{what}: landmarks have shape {points.shape}, expected (N, 68, 2) with N >= 1")
    bad = np.flatnonzero(~np.isfinite(points[:, 36:48]).all(axis=(1, 2)))
    if len(bad):
        raise ValueError(f"{what}: eye landmarks are not finite in {len(bad)} frames (first: frame {bad[0]})")
    return points


def _eye_ratios_and_widths(points: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    ratios, widths = [], []
    for eye in (RIGHT_EYE, LEFT_EYE):
        p = points[:, eye]
        gap = np.linalg.norm(p[:, 1] - p[:, 5], axis=1) + np.linalg.norm(p[:, 2] - p[:, 4], axis=1)
        width = np.linalg.norm(p[:, 0] - p[:, 3], axis=1)
        flat = np.flatnonzero(width < 1e-6)
        if len(flat):
            raise ValueError(
                f"{what}: eye corners {eye[0]} and {eye[3]} coincide in {len(flat)} frames "
                f"(first: frame {flat[0]}); the eye aspect ratio is undefined"
            )
        ratios.append(gap / (2.0 * width))
        widths.append(width)
    return np.stack(ratios, axis=1), np.stack(widths, axis=1)


def eye_aspect_ratio(lm68: np.ndarray, *, per_eye: bool = False, what: str = "landmarks") -> np.ndarray:
    """Eye aspect ratio per frame from iBUG 68 landmarks.

    Args:
        lm68: (N, 68, 2) landmark coordinates in any pixel frame.
        per_eye: return both eyes, (N, 2): subject's right eye (36-41), then left (42-47).
        what: the landmarks' source in error messages.

    Returns:
        (N,) float64 EAR (unitless; ~0.25-0.4 open, ~0.05-0.1 closed), the two eyes averaged with
        weights proportional to their widths |p1 - p4|; or (N, 2) with ``per_eye``.

    Raises:
        ValueError: wrong shape, non-finite eye points, or an eye of zero width.
    """
    ratios, widths = _eye_ratios_and_widths(_check_lm68(lm68, what), what)
    if per_eye:
        return ratios
    return (ratios * widths).sum(axis=1) / widths.sum(axis=1)


# ------------------------------------------------------------------------------------ AU45 scale


def _check_ear(ear: np.ndarray, what: str) -> np.ndarray:
    ear = np.asarray(ear, dtype=np.float64)
    if ear.ndim != 1 or len(ear) == 0:
        raise ValueError(f"{what}: eye aspect ratio has shape {ear.shape}, expected (N,) with N >= 1")
    bad = np.flatnonzero(~np.isfinite(ear) | (ear < 0))
    if len(bad):
        raise ValueError(f"{what}: eye aspect ratio is negative or not finite at frame {bad[0]}")
    return ear


def _median(ear: np.ndarray, frames: int) -> np.ndarray:
    return ndimage.median_filter(ear, size=frames, mode="nearest") if frames > 1 else ear


def open_eye_level(ear: np.ndarray, *, fps: float, window_s: float | None, percentile: float) -> np.ndarray:
    """The open-eye EAR per frame: the ``percentile`` of the EAR over a centred window.

    Args:
        ear: (N,) eye aspect ratio.
        fps: frames per second.
        window_s: window length in seconds; None (or a window longer than the clip) uses the whole clip.
        percentile: 0..100; high (e.g. 80) because the eyes are open most of the time.

    Returns:
        (N,) float64, same unit as ``ear``.
    """
    n = len(ear)
    size = n + 1 if window_s is None else 2 * int(round(window_s * fps / 2)) + 1
    if size >= n:
        return np.full(n, np.percentile(ear, percentile))
    # Reflection at the ends keeps the window's share of blinks typical even in the first frames.
    return ndimage.percentile_filter(ear, percentile, size=size, mode="reflect")


def _closure(ear: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Relative lid closure 0 (open level) .. 1 (EAR 0) per frame, (N,)."""
    smooth = _median(ear, int(calibration["median_frames"]))
    level = open_eye_level(
        smooth,
        fps=float(calibration["fps"]),
        window_s=calibration["baseline_window_s"],
        percentile=float(calibration["open_percentile"]),
    )
    return np.clip(1.0 - smooth / np.maximum(level, 1e-9), 0.0, 1.0)


def calibrate_au45(
    ear: np.ndarray,
    *,
    fps: float = 25.0,
    median_frames: int = 1,
    baseline_window_s: float | None = 4.0,
    open_percentile: float = 80.0,
    what: str = "eye aspect ratio",
) -> dict[str, Any]:
    """Per-subject calibration of the EAR -> AU45 mapping, from one clip's raw EAR.

    The open level is the running ``open_percentile`` of the (median-filtered) EAR over
    ``baseline_window_s`` seconds; the full-blink depth is the median relative closure at the peaks
    of the clip's clear blinks (default :data:`DEFAULT_FULL_CLOSURE` with fewer than
    :data:`MIN_CALIBRATION_BLINKS`), so the subject's typical blink reaches AU45 = 2.

    Args:
        ear: (N,) raw per-frame EAR (:func:`eye_aspect_ratio`).
        fps: frames per second of ``ear``.
        median_frames: running-median length in frames (1 = off).
        baseline_window_s: open-level window in seconds; None for one level over the whole clip.
        open_percentile: percentile of the EAR taken as the open-eye level.
        what: the clip's name in error messages.

    Returns:
        JSON-serialisable dict: ``schema``, ``backend`` ("ear"), the settings above, ``ear_open``
        (open EAR over the whole clip at ``open_percentile``), ``full_closure`` (relative closure of
        a full blink, 0..1), ``ear_closed`` (the EAR of a full blink at ``ear_open``),
        ``n_calibration_blinks`` and ``frames``.
    """
    ear = _check_ear(ear, what)
    if fps <= 0 or median_frames < 1 or not 0 < open_percentile <= 100:
        raise ValueError(
            f"{what}: need fps > 0, median_frames >= 1 and 0 < open_percentile <= 100; got "
            f"{fps}, {median_frames}, {open_percentile}"
        )
    if baseline_window_s is not None and baseline_window_s <= 0:
        raise ValueError(f"{what}: baseline_window_s must be positive or None, got {baseline_window_s}")
    calibration: dict[str, Any] = {
        "schema": CALIBRATION_VERSION,
        "backend": "ear",
        "fps": float(fps),
        "median_frames": int(median_frames),
        "baseline_window_s": None if baseline_window_s is None else float(baseline_window_s),
        "open_percentile": float(open_percentile),
        "full_closure": DEFAULT_FULL_CLOSURE,
    }
    closure = _closure(ear, calibration)
    # Clear blinks on the provisional scale: short peaks beyond half of a default-depth blink.
    peaks = [p for _, p, _ in detect_blinks(AU45_MAX * closure / DEFAULT_FULL_CLOSURE, fps)]
    if len(peaks) >= MIN_CALIBRATION_BLINKS:
        calibration["full_closure"] = float(np.median(closure[peaks]))
    ear_open = float(np.percentile(_median(ear, median_frames), open_percentile))
    calibration.update(
        ear_open=ear_open,
        ear_closed=ear_open * (1.0 - calibration["full_closure"]),
        n_calibration_blinks=len(peaks),
        frames=len(ear),
    )
    return calibration


def _check_calibration(calibration: dict[str, Any], what: str) -> None:
    if not isinstance(calibration, dict) or calibration.get("schema") != CALIBRATION_VERSION:
        found = calibration.get("schema") if isinstance(calibration, dict) else type(calibration).__name__
        raise ValueError(f"{what}: not a {CALIBRATION_VERSION} blink calibration (schema {found!r})")
    if calibration.get("backend") != "ear":
        raise ValueError(
            f"{what}: blink calibration is for backend {calibration.get('backend')!r}, not 'ear'"
        )
    missing = [
        k for k in ("fps", "median_frames", "baseline_window_s", "open_percentile") if k not in calibration
    ]
    if missing:
        raise ValueError(f"{what}: blink calibration lacks {', '.join(missing)}")
    full = calibration.get("full_closure")
    if not isinstance(full, int | float) or not 0 < full <= 1:
        raise ValueError(f"{what}: blink calibration full_closure {full!r} is not in (0, 1]")


def au45_from_ear(
    ear: np.ndarray, calibration: dict[str, Any], *, what: str = "eye aspect ratio"
) -> np.ndarray:
    """Map raw EAR to the AU45 scale with a calibration from :func:`calibrate_au45`.

    Args:
        ear: (N,) raw per-frame EAR (the calibration's median filter and open level are applied here).
        calibration: the subject's calibration (may come from another clip of the same subject).
        what: the clip's name in error messages.

    Returns:
        (N,) float32 in [0, 2]: ``2 * closure / full_closure`` clipped, 0 = open, 2 = full blink.
    """
    ear = _check_ear(ear, what)
    _check_calibration(calibration, what)
    closure = _closure(ear, calibration)
    return np.clip(AU45_MAX * closure / calibration["full_closure"], 0.0, AU45_MAX).astype(np.float32)


# ------------------------------------------------------------------------------------ blinks


def detect_blinks(
    au45: np.ndarray,
    fps: float,
    threshold: float = 1.0,
    *,
    min_prominence: float | None = None,
    min_duration_s: float = 0.08,
    max_duration_s: float = 0.5,
) -> list[tuple[int, int, int]]:
    """Blinks as short peaks of an AU45 trace.

    A blink is a local maximum of at least ``threshold`` that rises at least ``min_prominence``
    (default ``threshold / 2``) above the higher of the minima on either side within
    ``max_duration_s``, and whose frames above a quarter of that rise span ``min_duration_s`` to
    ``max_duration_s`` (2-12 frames at 25 fps; a fast blink is above half its height for a single
    frame at 25 fps, so the span is taken lower down). Measuring against the local minima finds a
    blink on top of a longer partial closure (eyes narrowed while looking down) and splits a double
    blink; a closure held longer than ``max_duration_s`` is not a blink. The clip is taken as open outside
    its ends, so a blink cut by the first or last frame still counts.

    Args:
        au45: (N,) AU45 values (0 open .. 2 closed).
        fps: frames per second.
        threshold: peak height a blink must reach (1.0 = half of a full blink).
        min_prominence: rise above the local minima a blink must have.
        min_duration_s, max_duration_s: allowed span in seconds, measured at a quarter of the rise.

    Returns:
        ``[(start, peak, end), ...]`` frame indices (``end`` inclusive; start..end is the span above a
        quarter of the rise), in time order.
    """
    au45 = np.asarray(au45, dtype=np.float64)
    if au45.ndim != 1 or not np.isfinite(au45).all():
        raise ValueError(f"AU45 trace must be a finite (N,) array, got shape {au45.shape}")
    if fps <= 0 or not 0 < min_duration_s <= max_duration_s:
        raise ValueError(
            f"need fps > 0 and 0 < min <= max duration; got {fps}, {min_duration_s}, {max_duration_s}"
        )
    min_prominence = threshold / 2.0 if min_prominence is None else min_prominence
    min_frames = max(1, math.ceil(min_duration_s * fps - 1e-9))
    max_frames = math.floor(max_duration_s * fps + 1e-9)
    padded = np.concatenate([[0.0], au45, [0.0]])
    with warnings.catch_warnings():
        # A closure held flat over the whole window has prominence 0 there: dropped, no need to warn.
        warnings.filterwarnings("ignore", message="some peaks have a prominence of 0")
        peaks, props = signal.find_peaks(
            padded,
            height=threshold,
            prominence=min_prominence,
            wlen=2 * max_frames + 1,
            rel_height=0.75,
            width=0,
        )
    blinks = []
    for peak, left, right in zip(peaks, props["left_ips"], props["right_ips"], strict=True):
        # Frames strictly inside the quarter-rise crossings, shifted back to unpadded indices.
        start, end = max(math.floor(left), 0), min(math.ceil(right) - 2, len(au45) - 1)
        if min_frames <= end - start + 1 <= max_frames:
            blinks.append((int(start), int(peak - 1), int(end)))
    return blinks


# ------------------------------------------------------------------------------------ py-feat


def _hub_cached(cache_dir: Path, repo_id: str, names: Sequence[str]) -> Path | None:
    """The file of a Hugging Face cache (``models--org--name/snapshots/<rev>/<file>``), if present."""
    snapshots = cache_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    for name in names:
        found = sorted(snapshots.glob(f"*/{name}"))
        if found and found[-1].is_file():
            return found[-1]
    return None


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub answer from its cache only (py-feat calls hf_hub_download while loading)."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    flag = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # read at import time; set it for an already imported hub
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = flag
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _open_pyfeat(device: str) -> Any:
    try:
        import feat
        from feat.utils.io import get_resource_path
    except ImportError as err:
        raise BlinkBackendError(
            f"eye backend 'pyfeat' needs py-feat, which is not importable ({err}): {_PYFEAT_INSTALL}"
        ) from err
    detector_class = getattr(feat, "Detectorv1", None)
    if detector_class is None:
        raise BlinkBackendError(
            f"eye backend 'pyfeat' is written for py-feat 2.x (feat.Detectorv1); the installed py-feat "
            f"{getattr(feat, '__version__', '?')} has none: {_PYFEAT_INSTALL}"
        )
    cache = Path(get_resource_path())
    missing = [
        f"{repo}/{names[0]}" for repo, names in PYFEAT_MODELS if _hub_cached(cache, repo, names) is None
    ]
    if missing:
        raise BlinkBackendError(
            f"eye backend 'pyfeat': model files not found in py-feat's model cache {cache}: "
            f"{', '.join(missing)} (nothing is downloaded); {_PYFEAT_INSTALL}"
        )
    with _hub_offline():
        return detector_class(
            face_model="retinaface",
            landmark_model="mobilefacenet",
            au_model="xgb",
            emotion_model=None,
            identity_model=None,
            gaze_model=None,
            device=device,
        )


def pyfeat_au45(
    frames: Sequence[str | os.PathLike[str]],
    lm68: np.ndarray | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 8,
    max_missing_fraction: float = 0.05,
    what: str = "frames",
) -> np.ndarray:
    """AU45 per frame from py-feat's AU classifiers (see the module docstring).

    Args:
        frames: N image files in frame order (same size).
        lm68: (N, 68, 2) landmarks of the followed face in the frames' pixels; where py-feat finds
            several faces, the one whose box centre is nearest to the landmarks' centre is used
            (without landmarks: the highest face score).
        device: torch device for py-feat.
        batch_size: frames per py-feat batch.
        max_missing_fraction: frames without a face are filled by linear interpolation up to this
            fraction of the clip.
        what: the clip's name in messages.

    Returns:
        (N,) float32 in [0, 2]: 2 x py-feat's closure probability (AU45 if present, else AU43).

    Raises:
        BlinkBackendError: py-feat or its models are not installed.
        ValueError: no eye-closure column, or too many frames without a face.
    """
    paths = [str(p) for p in frames]
    if not paths:
        raise ValueError(f"{what}: no frames given to the pyfeat eye backend")
    if lm68 is not None:
        lm68 = _check_lm68(lm68, what)
        if len(lm68) != len(paths):
            raise ValueError(f"{what}: {len(paths)} frames but landmarks for {len(lm68)}")
    detector = _open_pyfeat(device)
    with _hub_offline():
        fex = detector.detect(paths, data_type="image", batch_size=batch_size, progress_bar=False)
    column = next((c for c in ("AU45", "AU43") if c in fex.columns), None)
    if column is None:
        raise ValueError(f"{what}: py-feat output has no AU45 or AU43 column (columns: {list(fex.columns)})")
    box = fex[["FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight"]].to_numpy(dtype=np.float64)
    valid = np.isfinite(box).all(axis=1) & np.isfinite(fex[column].to_numpy(dtype=np.float64))
    fex = fex[valid]
    centre = box[valid, :2] + box[valid, 2:] / 2.0
    value = np.full(len(paths), np.nan)
    for frame, rows in fex.groupby("frame").indices.items():
        if lm68 is not None:
            target = lm68[int(frame)].mean(axis=0)
            best = rows[np.argmin(np.linalg.norm(centre[rows] - target, axis=1))]
        else:
            best = rows[np.argmax(fex["FaceScore"].to_numpy()[rows])]
        value[int(frame)] = fex[column].to_numpy(dtype=np.float64)[best]
    missing = np.flatnonzero(~np.isfinite(value))
    if len(missing) > max_missing_fraction * len(paths) or len(missing) == len(paths):
        raise ValueError(
            f"{what}: py-feat found no face in {len(missing)} of {len(paths)} frames "
            f"(first: frame {missing[0]}), more than {max_missing_fraction:.0%}"
        )
    if len(missing):
        found = np.flatnonzero(np.isfinite(value))
        value[missing] = np.interp(missing, found, value[found])
    return np.clip(AU45_MAX * value, 0.0, AU45_MAX).astype(np.float32)


# ------------------------------------------------------------------------------------ interface


def blink_signal(
    lm68: np.ndarray,
    *,
    backend: str = "ear",
    fps: float,
    frames: Sequence[str | os.PathLike[str]] | None = None,
    calibration: dict[str, Any] | None = None,
    threshold: float = 1.0,
    what: str = "landmarks",
    options: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The eye token input of a clip: AU45 per frame, and what was measured on the way.

    Args:
        lm68: (N, 68, 2) landmarks (talk3d_core.landmarks.LandmarkTrack.lm68).
        backend: ``ear`` or ``pyfeat``.
        fps: frames per second.
        frames: N frame files (needed by ``pyfeat``, unused by ``ear``).
        calibration: ``ear`` only: reuse this subject calibration instead of calibrating on the clip.
        threshold: AU45 peak height of a blink (:func:`detect_blinks`).
        what: the clip's name in messages.
        options: backend keyword options (``ear``: :func:`calibrate_au45`'s settings; ``pyfeat``:
            :func:`pyfeat_au45`'s ``device``, ``batch_size``, ``max_missing_fraction``).

    Returns:
        ``au45`` (N,) float32 in [0, 2], and a JSON-serialisable dict: ``backend``,
        ``calibration`` (``ear``: see :func:`calibrate_au45`; ``pyfeat``: the column scale),
        ``blinks`` [[start, peak, end], ...], ``n_blinks``, ``duration_s``, ``blinks_per_minute``,
        ``threshold``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown eye backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if fps <= 0:
        raise ValueError(f"{what}: fps must be positive, got {fps}")
    options = dict(options or {})
    if backend == "ear":
        ear = eye_aspect_ratio(lm68, what=what)
        if calibration is None:
            calibration = calibrate_au45(ear, fps=fps, what=what, **options)
        elif options:
            raise ValueError(f"{what}: ear options {sorted(options)} conflict with a given calibration")
        au45 = au45_from_ear(ear, calibration, what=what)
    else:
        if frames is None:
            raise ValueError(f"{what}: eye backend 'pyfeat' needs the frame files (frames=...)")
        au45 = pyfeat_au45(frames, lm68, what=what, **options)
        calibration = {"backend": "pyfeat", "scale": AU45_MAX, "columns": ["AU45", "AU43"]}
    blinks = detect_blinks(au45, fps, threshold)
    duration_s = len(au45) / fps
    info = {
        "backend": backend,
        "calibration": calibration,
        "blinks": [list(b) for b in blinks],
        "n_blinks": len(blinks),
        "duration_s": duration_s,
        "blinks_per_minute": 60.0 * len(blinks) / duration_s,
        "threshold": float(threshold),
    }
    return au45, info
