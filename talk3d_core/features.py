"""Stage 6, features: every conditioning input of the deltaplane predictor in one table per subject.

``features.parquet`` has one row per video frame (join key ``frame``, 0-based at the pipeline fps):

==========  ===============  ==================================================================
column      type             meaning
==========  ===============  ==================================================================
frame       int32            video frame index, 0..N-1 with no gaps
split       string           "train" or "test": the last ``test_fraction`` of the clip is test
time_s      float32          start time of the frame, frame / fps (seconds)
audio       float32[W*D]     window of W per-frame audio features (D dims each), frame-major,
                             normalised with the subject's statistics (``audio_normalise``) or as
                             the backend gives them; the frame itself sits at position W // 2
eye         float32          blink value on the AU45 scale, clip(AU45, 0, 2): 0 open, ~2 closed
yaw         float32          head rotation in degrees (camera.parquet, smoothed)
pitch       float32
roll        float32
ldm         float32[6]       landmark token, three (x, y) points (``landmark_token``): "crop" -
                             nose tip, right-eye centre, left-eye centre in the aligned crop,
                             to [-1, 1]; "frame" - nose tip, left and right outer eye corners in
                             the full source frame, both axes divided by the frame width
opening     float32          inner-lip opening of the crop's landmarks, pixels of a 256 crop
                             (the opening token's training value and its predictor's target)
==========  ===============  ==================================================================

A driving-audio table (``drive/{audio}/features.parquet``) has only ``frame``, ``time_s`` and
``audio``, made with the subject's backend, window and normalisation (its statistics, so a new voice
lands in the same range). Driving audio has no frames of its own: the eye, rotation and landmark
tokens of a driven clip are those of the subject's frames it borrows
(:func:`talk3d_core.render.drive_conditions`), the same frames whose cameras it is rendered from.

The Parquet schema metadata (key ``talk3d.features``) records the kind of table, the feature
backends, window, dims, normalisation (``audio_normalise``, ``audio_stats``), landmark token kind,
blink calibration and split; :func:`read_features` checks columns, types, lengths, frame order, NaNs
and, when asked, that the recorded settings match the current ones, so a stale or corrupted cache is
an error rather than silent garbage.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from talk3d_core.camera import read_camera_table
from talk3d_core.crop import CropTable, read_crop_table, smooth_track
from talk3d_core.face.blink import blink_signal
from talk3d_core.landmarks import read_landmarks
from talk3d_core.metrics.motion import silent_frames
from talk3d_core.metrics.mouth import REFERENCE_SIZE, mouth_opening
from talk3d_core.nets.audio_features import (
    MEL_FLOOR_DB,
    apply_normalisation,
    fit_normalisation,
    frame_features,
    frame_windows,
)
from talk3d_core.util.io import atomic_path
from talk3d_core.util.media import read_wav_float
from talk3d_core.util.tables import fixed_list_array, fixed_list_values

SCHEMA_VERSION = 2  # 2: the opening column
METADATA_KEY = b"talk3d.features"
SPLITS = ("train", "test")
#: What the landmark token describes (config ``features.landmark_token``).
LANDMARK_TOKENS = ("crop", "frame")
#: What the audio token sees in a pause (config ``features.audio_silence``).
AUDIO_SILENCE = ("keep", "floor")

# Crop token points (iBUG 68 indices): nose tip, right-eye centre, left-eye centre.
NOSE_TIP = 30
RIGHT_EYE = tuple(range(36, 42))
LEFT_EYE = tuple(range(42, 48))
# Frame token points, in Talk3D's order: nose tip, left and right outer eye corners (its loaders keep
# VIVE3D's keypoints 0, 2, 3 of [30, 8, 45, 36, 64, 60]).
FRAME_TOKEN_POINTS = (30, 45, 36)
# Tables written before these settings were recorded were all made this way.
_LEGACY_META = {
    "subject": {"landmark_token": "crop", "audio_normalise": True, "audio_silence": "keep"},
    "drive": {"audio_normalise": True, "audio_silence": "keep"},
}


def floor_silence(per_frame: np.ndarray, wav: np.ndarray, rate: int, fps: float, backend: str) -> np.ndarray:
    """Per-frame log-mel features (N, D) with the frames of a pause (:func:`silent_frames`) set to the
    mel floor (digital silence), so that every recording's pauses reach the network as the same input
    rather than as that room's noise (docs/decisions.md#silence-share). Mel only."""
    if backend != "mel":
        raise ValueError(f"features.audio_silence 'floor' needs audio_backend 'mel', got {backend!r}")
    out = np.array(per_frame, copy=True)
    out[silent_frames(wav, rate, len(out), fps)] = MEL_FLOOR_DB
    return out


@dataclass
class FeatureTable:
    """Contents of a features table as arrays (N rows).

    frame (N,) int32; time_s (N,) float32; audio (N, W, D) float32. Subject tables also have
    split (N,) str, eye (N,) float32, rotation (N, 3) float32 yaw/pitch/roll degrees, ldm (N, 6)
    float32 and opening (N,) float32 px of a 256 crop; for driving audio they are None. meta: the
    recorded settings.
    """

    frame: np.ndarray
    time_s: np.ndarray
    audio: np.ndarray
    meta: dict[str, Any]
    split: np.ndarray | None = None
    eye: np.ndarray | None = None
    rotation: np.ndarray | None = None
    ldm: np.ndarray | None = None
    opening: np.ndarray | None = None

    @property
    def kind(self) -> str:
        """ "subject" or "drive", as recorded in the metadata."""
        return self.meta["kind"]


def split_by_time(n_frames: int, test_fraction: float) -> np.ndarray:
    """ "train" for the first frames and "test" for the last ``test_fraction`` of them, (N,) str.

    The split is by time (as the official code: the last 1/11 is test) so that test frames are
    unseen speech, not neighbours of training frames.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_train = n_frames - int(round(n_frames * test_fraction))
    split = np.full(n_frames, "train", dtype=object)
    split[n_train:] = "test"
    return split


def crop_landmark_token(lm68_crop: np.ndarray, size: int) -> np.ndarray:
    """(N, 68, 2) crop-pixel landmarks -> (N, 6) token: nose tip, right eye, left eye (x, y) in [-1, 1].

    Pixel centres are at integer coordinates, so pixel i maps to (i + 0.5) / size * 2 - 1.
    """
    lm = np.asarray(lm68_crop, dtype=np.float64)
    points = np.stack([lm[:, NOSE_TIP], lm[:, RIGHT_EYE].mean(axis=1), lm[:, LEFT_EYE].mean(axis=1)], axis=1)
    return ((points + 0.5) / size * 2.0 - 1.0).reshape(len(lm), 6).astype(np.float32)


def frame_landmark_token(
    lm68_frame: np.ndarray, frame_width: int, sigma_frames: float, cuts: np.ndarray | list[int] = ()
) -> np.ndarray:
    """(N, 68, 2) source-frame landmarks (pixels) -> (N, 6) token: nose tip, left and right outer eye
    corners (x, y), smoothed over time as the crop alignment is, x and y both divided by the frame
    width (as Talk3D), then mapped to [-1, 1] with the crop token's pixel-centre convention.

    So the token says where the head sits in the frame: x spans [-1, 1]; y spans [-1, 2 H / W - 1]
    (e.g. [-1, 0.125] for a 16:9 frame). ``sigma_frames`` (frames) and ``cuts`` (frames that start a
    shot) are the crop stage's (:func:`talk3d_core.crop.smooth_track`).
    """
    lm = np.asarray(lm68_frame, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ValueError(f"frame_landmark_token: expected landmarks of shape (N, 68, 2), got {lm.shape}")
    if not frame_width > 0:
        raise ValueError(f"frame_landmark_token: frame width must be positive, got {frame_width}")
    points = smooth_track(lm[:, FRAME_TOKEN_POINTS], sigma_frames, cuts)
    return ((points + 0.5) / frame_width * 2.0 - 1.0).reshape(len(lm), 6).astype(np.float32)


def _n_frames_of(samples: int, rate: int, fps: float) -> int:
    return int(round(samples * fps / rate))


def subject_features(
    audio_wav: str | os.PathLike[str],
    crop_parquet: str | os.PathLike[str],
    camera_parquet: str | os.PathLike[str],
    out_parquet: str | os.PathLike[str],
    *,
    fps: float,
    audio_backend: str = "mel",
    audio_model: str | None = None,
    audio_output: str = "hidden",
    audio_window: int = 16,
    audio_pad: str = "edge",
    audio_normalise: bool = True,
    audio_silence: str = "keep",
    eye_backend: str = "ear",
    landmark_token: str = "crop",
    landmarks_parquet: str | os.PathLike[str] | None = None,
    crop_paths: list[Path] | None = None,
    test_fraction: float = 1 / 11,
) -> dict[str, Any]:
    """Build and write a subject's ``features.parquet``; return its metadata.

    The audio of ``audio_wav`` must span exactly the frames of the crop table (ingest guarantees
    it). ``audio_normalise``: scale each audio dimension with the clip's statistics (else the
    backend's values as they are). ``audio_silence``: "keep" the pauses' features, or "floor" them
    (:func:`floor_silence`, mel only; driving audio then gets the same). ``landmark_token`` "crop"
    (:func:`crop_landmark_token`) or "frame" (:func:`frame_landmark_token`, which needs
    ``landmarks_parquet``, the full-frame landmarks). ``crop_paths`` is only needed by image-based
    eye backends (pyfeat).
    """
    if audio_silence not in AUDIO_SILENCE:
        raise ValueError(
            f"features.audio_silence must be one of {', '.join(AUDIO_SILENCE)}, got {audio_silence!r}"
        )
    if landmark_token not in LANDMARK_TOKENS:
        raise ValueError(
            f"features.landmark_token must be one of {', '.join(LANDMARK_TOKENS)}, got {landmark_token!r}"
        )
    crops = read_crop_table(crop_parquet)
    cameras = read_camera_table(camera_parquet)
    n = len(crops.frame)
    if len(cameras) != n:
        raise ValueError(f"{camera_parquet}: {len(cameras)} frames, but {crop_parquet} has {n}")
    wav, rate = read_wav_float(audio_wav)
    if abs(_n_frames_of(len(wav), rate, fps) - n) > 1:
        raise ValueError(
            f"{audio_wav}: {len(wav) / rate:.2f} s of audio does not span the {n} frames "
            f"({n / fps:.2f} s) of {crop_parquet}; re-run ingest"
        )
    per_frame = frame_features(
        wav, rate, backend=audio_backend, n_frames=n, fps=fps, model_path=audio_model, output=audio_output
    )
    if audio_silence == "floor":
        per_frame = floor_silence(per_frame, wav, rate, fps, audio_backend)
    stats = fit_normalisation(per_frame) if audio_normalise else None
    audio = frame_windows(_normalised(per_frame, audio_normalise, stats), audio_window, pad=audio_pad)
    if landmark_token == "frame":
        ldm = _frame_token_of(landmarks_parquet, crops, crop_parquet)
    else:
        ldm = crop_landmark_token(crops.lm68, crops.size)
    eye, eye_info = blink_signal(crops.lm68, backend=eye_backend, fps=fps, frames=crop_paths)
    split = split_by_time(n, test_fraction)
    meta = {
        "kind": "subject",
        "version": SCHEMA_VERSION,
        "fps": fps,
        "n_frames": n,
        "audio_backend": audio_backend,
        "audio_model": audio_model,
        "audio_output": audio_output,
        "audio_window": audio_window,
        "audio_pad": audio_pad,
        "audio_dim": int(per_frame.shape[1]),
        "audio_normalise": bool(audio_normalise),
        "audio_stats": stats,
        "audio_silence": audio_silence,
        "eye_backend": eye_backend,
        "landmark_token": landmark_token,
        "eye": eye_info,
        "test_fraction": test_fraction,
        "n_train": int((split == "train").sum()),
        "n_test": int((split == "test").sum()),
    }
    table = FeatureTable(
        frame=np.arange(n, dtype=np.int32),
        time_s=(np.arange(n) / fps).astype(np.float32),
        audio=audio.astype(np.float32),
        meta=meta,
        split=split,
        eye=np.asarray(eye, dtype=np.float32),
        rotation=cameras[["yaw", "pitch", "roll"]].to_numpy(np.float32),
        ldm=ldm,
        opening=(mouth_opening(crops.lm68) * REFERENCE_SIZE / crops.size).astype(np.float32),
    )
    write_features(table, out_parquet)
    return meta


def _normalised(per_frame: np.ndarray, normalise: bool, stats: dict[str, Any] | None) -> np.ndarray:
    """Per-frame features (N, D) scaled with ``stats`` (:func:`fit_normalisation`) when ``normalise``,
    else as they are (Talk3D feeds the wav2vec2 logits unscaled)."""
    return apply_normalisation(per_frame, stats) if normalise else per_frame


def _frame_token_of(
    landmarks_parquet: str | os.PathLike[str] | None, crops: CropTable, crop_parquet: str | os.PathLike[str]
) -> np.ndarray:
    """The frame landmark token (N, 6) from landmarks.parquet, smoothed with the crop stage's
    recorded smoothing and shot cuts, so it follows the same track that placed the crops."""
    if landmarks_parquet is None:
        raise ValueError("features.landmark_token 'frame' needs the full-frame landmarks (landmarks.parquet)")
    track = read_landmarks(landmarks_parquet)
    if len(track) != len(crops.frame):
        raise ValueError(
            f"{landmarks_parquet}: {len(track)} frames, but {crop_parquet} has {len(crops.frame)}; "
            "re-run the crop stage"
        )
    missing = [k for k in ("sigma_frames", "cuts") if k not in crops.meta]
    if missing:
        raise ValueError(f"{crop_parquet}: crop table metadata lacks {missing}; re-run the crop stage")
    return frame_landmark_token(
        track.lm68, track.frame_size[0], float(crops.meta["sigma_frames"]), crops.meta["cuts"]
    )


def drive_features(
    audio_wav: str | os.PathLike[str],
    subject_parquet: str | os.PathLike[str],
    out_parquet: str | os.PathLike[str],
) -> dict[str, Any]:
    """Audio features of a driving audio file, with the subject's backend, window and normalisation
    (its statistics, or none when the subject's features are unnormalised)."""
    m = read_features_meta(subject_parquet, kind="subject")  # the settings only, not the whole table
    wav, rate = read_wav_float(audio_wav)
    n = _n_frames_of(len(wav), rate, m["fps"])
    if n < 1:
        raise ValueError(f"{audio_wav}: shorter than one video frame")
    per_frame = frame_features(
        wav,
        rate,
        backend=m["audio_backend"],
        n_frames=n,
        fps=m["fps"],
        model_path=m["audio_model"],
        output=m["audio_output"],
    )
    if m["audio_silence"] == "floor":
        per_frame = floor_silence(per_frame, wav, rate, m["fps"], m["audio_backend"])
    normalised = _normalised(per_frame, m["audio_normalise"], m["audio_stats"])
    audio = frame_windows(normalised, m["audio_window"], pad=m["audio_pad"])
    keys = ("fps", "audio_backend", "audio_model", "audio_output", "audio_window", "audio_pad", "audio_dim")
    keys += ("audio_normalise", "audio_stats", "audio_silence")
    meta = {
        "kind": "drive",
        "version": SCHEMA_VERSION,
        "n_frames": n,
        "subject_features": str(subject_parquet),
    }
    meta.update({k: m[k] for k in keys})
    table = FeatureTable(
        frame=np.arange(n, dtype=np.int32),
        time_s=(np.arange(n) / m["fps"]).astype(np.float32),
        audio=audio.astype(np.float32),
        meta=meta,
    )
    write_features(table, out_parquet)
    return meta


def write_features(table: FeatureTable, path: str | os.PathLike[str]) -> None:
    """Write a :class:`FeatureTable` atomically (schema in the module docstring)."""
    n, w, d = table.audio.shape
    columns: dict[str, pa.Array] = {
        "frame": pa.array(table.frame, pa.int32()),
        "time_s": pa.array(table.time_s, pa.float32()),
        "audio": fixed_list_array(table.audio, w * d),
    }
    if table.kind == "subject":
        columns = {
            "frame": columns["frame"],
            "split": pa.array(table.split.astype(str), pa.string()),
            "time_s": columns["time_s"],
            "audio": columns["audio"],
            "eye": pa.array(table.eye, pa.float32()),
            "yaw": pa.array(table.rotation[:, 0], pa.float32()),
            "pitch": pa.array(table.rotation[:, 1], pa.float32()),
            "roll": pa.array(table.rotation[:, 2], pa.float32()),
            "ldm": fixed_list_array(table.ldm, 6),
            "opening": pa.array(table.opening, pa.float32()),
        }
    arrow = pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(table.meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


def _expected_types(kind: str, meta: dict[str, Any]) -> dict[str, pa.DataType]:
    audio = pa.list_(pa.float32(), meta["audio_window"] * meta["audio_dim"])
    if kind == "drive":
        return {"frame": pa.int32(), "time_s": pa.float32(), "audio": audio}
    return {
        "frame": pa.int32(),
        "split": pa.string(),
        "time_s": pa.float32(),
        "audio": audio,
        "eye": pa.float32(),
        "yaw": pa.float32(),
        "pitch": pa.float32(),
        "roll": pa.float32(),
        "ldm": pa.list_(pa.float32(), 6),
        "opening": pa.float32(),
    }


def read_features_meta(path: str | os.PathLike[str], *, kind: str = "subject") -> dict[str, Any]:
    """The recorded settings of a features table (backends, window, statistics, split), read from the
    Parquet footer without loading the columns; checked like :func:`read_features` does."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: not a readable Parquet table ({exc}); re-run the features stage") from None
    return _check_meta(path, schema, kind)


def _check_meta(
    path: str | os.PathLike[str], schema: pa.Schema, kind: str, expect: dict[str, Any] | None = None
) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise _stale(path, "no talk3d.features metadata (not a features table)")
    meta = json.loads(raw)
    if meta.get("kind") != kind:
        raise _stale(path, f"a '{meta.get('kind')}' features table where a '{kind}' one was expected")
    meta = {**_LEGACY_META[kind], **meta}
    if meta.get("version") != SCHEMA_VERSION:
        raise _stale(path, f"schema version {meta.get('version')}, this code reads version {SCHEMA_VERSION}")
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise _stale(path, f"stale cache: recorded {key}={meta.get(key)!r}, expected {value!r}")
    return meta


def _stale(path: str | os.PathLike[str], problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}; delete it and re-run the features stage")


def read_features(
    path: str | os.PathLike[str], *, kind: str = "subject", expect: dict[str, Any] | None = None
) -> FeatureTable:
    """Read and check a features table; raise ValueError naming ``path`` on any mismatch.

    ``expect`` maps metadata keys to the values the caller relies on (e.g. the configured
    ``audio_backend`` and ``audio_window``); a different recorded value means a stale cache.
    """

    def bad(problem: str) -> ValueError:
        return _stale(path, problem)

    try:
        arrow = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise bad(f"not a readable Parquet table ({exc})") from None
    meta = _check_meta(path, arrow.schema, kind, expect)
    expected = _expected_types(kind, meta)
    actual = {f.name: f.type for f in arrow.schema}
    if list(actual) != list(expected):
        raise bad(f"columns {list(actual)}, expected {list(expected)}")
    for name, typ in expected.items():
        if actual[name] != typ:
            raise bad(f"column '{name}' has type {actual[name]}, expected {typ}")
    n = arrow.num_rows
    if n != meta["n_frames"]:
        raise bad(f"{n} rows, but the metadata says {meta['n_frames']} frames")

    def floats(name: str, width: int = 1) -> np.ndarray:
        col = arrow.column(name).combine_chunks()
        if col.null_count:
            raise bad(f"column '{name}' has {col.null_count} missing values")
        if width > 1:
            values = fixed_list_values(col, (width,))
        else:
            values = col.to_numpy(zero_copy_only=False).astype(np.float32)
        if not np.isfinite(values).all():
            raise bad(f"column '{name}' has NaN or infinite values")
        return values

    frame = arrow.column("frame").to_numpy()
    if not np.array_equal(frame, np.arange(n)):
        raise bad("frames are not 0..N-1 in order")
    w, d = meta["audio_window"], meta["audio_dim"]
    table = FeatureTable(
        frame=frame.astype(np.int32),
        time_s=floats("time_s"),
        audio=floats("audio", w * d).reshape(n, w, d),
        meta=meta,
    )
    if kind == "subject":
        split = np.asarray(arrow.column("split").to_pylist(), dtype=object)
        unknown = set(split) - set(SPLITS)
        if unknown:
            raise bad(f"unknown split values {sorted(map(str, unknown))}")
        table.split = split
        table.eye = floats("eye")
        table.rotation = np.stack([floats("yaw"), floats("pitch"), floats("roll")], axis=1)
        table.ldm = floats("ldm", 6)
        table.opening = floats("opening")
    return table
