"""Stage 2, landmarks: full frames -> per-frame face box, score and 68 iBUG points -> landmarks.parquet.

One interface, backends chosen by name (:mod:`talk3d_core.face.landmark_backends`): ``mediapipe``
(default, offline), ``dlib`` (offline) and ``face_alignment`` (FAN 2DFAN4, weights from the weights
rule). Every backend yields the iBUG 300-W 68-point layout, 0-based: jaw 0-16, brows 17-26, nose
27-35 (tip 30), eyes 36-41 (subject's right eye, image left) and 42-47, outer lips 48-59 (corners 48,
54), inner lips 60-67 (inner top 62, bottom 66); plus the backend's own points. Coordinates are
stored-frame pixels with the centre of the top-left pixel at (0, 0).

Following one face: in each frame the face overlapping the previous frame's face continues the
track, else the largest face is taken (:func:`talk3d_core.face.landmark_backends.select_main`).

Gaps: runs of at most ``max_gap_frames`` frames without the face are filled by linear
interpolation between the frames around them (held constant at the clip's ends) and flagged
(``detected`` False, ``interpolated`` True, ``score`` NaN). The clip is rejected with
:class:`FaceTrackError` naming the frame ranges when the face is missing for a longer run, in more
than ``max_missing_fraction`` of the frames, or when a second face of comparable size (box area at
least ``competing_area_ratio`` times the followed face's, and not overlapping it, which would be
the same face found twice) is present in more than ``max_competing_frames`` frames.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talk3d_core.face.landmark_backends import BACKENDS, Face, box_area, box_iou, open_backend, select_main
from talk3d_core.util.io import atomic_path, list_frames, read_rgb
from talk3d_core.util.tables import fixed_list_array, fixed_list_values

log = logging.getLogger(__name__)

N_LANDMARKS = 68
#: iBUG 300-W regions (0-based point indices).
REGIONS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),
    "brows": tuple(range(17, 27)),
    "nose": tuple(range(27, 36)),
    "eyes": tuple(range(36, 48)),
    "outer_lips": tuple(range(48, 60)),
    "inner_lips": tuple(range(60, 68)),
}
#: Outer eye corners, whose distance normalises landmark errors (the 300-W convention).
OUTER_EYE_CORNERS = (36, 45)

SCHEMA_VERSION = "talk3d.landmarks/1"
_METADATA_KEY = b"talk3d"
_MAX_RANGES_SHOWN = 8
_LOG_EVERY_S = 15.0
#: Two face boxes overlapping this much are one face found twice.
DUPLICATE_IOU = 0.5

Detect = Callable[[Any, "np.ndarray | None"], list[Face]]


class FaceTrackError(ValueError):
    """The face could not be followed through a clip (missing too long or too often, or two faces)."""


@dataclass
class LandmarkTrack:
    """Per-frame landmarks of one clip (N frames, K native points per frame).

    Arrays: ``frame`` (N,) int32 0-based; ``detected`` (N,) bool, the backend found the face;
    ``interpolated`` (N,) bool, filled by gap interpolation; ``score`` (N,) float32 backend
    confidence 0..1, NaN where interpolated; ``n_faces`` (N,) int16 faces the backend found;
    ``box`` (N, 4) float32 x0, y0, x1, y1; ``lm68`` (N, 68, 2) float32; ``native`` (N, K, 2)
    float32; all in source (stored-frame) pixels. ``frame_size`` is (W, H); ``meta`` holds the
    backend's options and the gap settings.
    """

    frame: np.ndarray
    detected: np.ndarray
    interpolated: np.ndarray
    score: np.ndarray
    n_faces: np.ndarray
    box: np.ndarray
    lm68: np.ndarray
    native: np.ndarray
    backend: str
    frame_size: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.frame)
        expected = {
            "frame": (n,),
            "detected": (n,),
            "interpolated": (n,),
            "score": (n,),
            "n_faces": (n,),
            "box": (n, 4),
            "lm68": (n, N_LANDMARKS, 2),
        }
        for name, shape in expected.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(
                    f"LandmarkTrack.{name} has shape {np.shape(getattr(self, name))}, expected {shape}"
                )
        if np.ndim(self.native) != 3 or np.shape(self.native)[0] != n or np.shape(self.native)[2] != 2:
            raise ValueError(f"LandmarkTrack.native has shape {np.shape(self.native)}, expected ({n}, K, 2)")

    def __len__(self) -> int:
        return len(self.frame)


# ------------------------------------------------------------------------------------------ frames


def _frame_list(frames: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[Path]:
    """Frame files in order: a folder's frames (see :func:`talk3d_core.util.io.list_frames`) or the
    given paths."""
    if isinstance(frames, str | os.PathLike):
        return list_frames(frames)
    paths = [Path(p) for p in frames]
    if not paths:
        raise ValueError("no frames given")
    return paths


def _read_ahead(paths: Sequence[Path], depth: int = 3) -> Iterator[np.ndarray]:
    """Frames in order, decoded in a background thread a few frames ahead of the consumer."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque = deque()
        it = iter(paths)
        for path in it:
            pending.append(pool.submit(read_rgb, path))
            if len(pending) >= depth:
                break
        while pending:
            image = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(read_rgb, nxt))
            yield image


# ------------------------------------------------------------------------------------------ tracking


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) index pairs of the runs of True in a 1-D bool array."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def format_ranges(runs: Sequence[tuple[int, int]], fps: float) -> str:
    """``frames 120-164 (1.8 s), frame 200 (0.04 s)``; long lists are cut after a few ranges."""
    parts = []
    for start, end in runs[:_MAX_RANGES_SHOWN]:
        seconds = (end - start + 1) / fps
        label = f"frame {start}" if start == end else f"frames {start}-{end}"
        parts.append(f"{label} ({seconds:.2g} s)" if seconds < 10 else f"{label} ({seconds:.0f} s)")
    if len(runs) > _MAX_RANGES_SHOWN:
        parts.append(f"and {len(runs) - _MAX_RANGES_SHOWN} more range(s)")
    return ", ".join(parts)


def _fill(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Fill rows of ``values`` (N, ...) where ``found`` is False: linear between the found rows
    around them, constant beyond the first and last found row."""
    idx = np.flatnonzero(found)
    missing = np.flatnonzero(~found)
    out = values.astype(np.float64, copy=True)
    if missing.size == 0:
        return out
    flat = out.reshape(len(out), -1)
    for col in range(flat.shape[1]):
        flat[missing, col] = np.interp(missing, idx, flat[idx, col])
    return out


def track_landmarks(
    images: Iterable[Any],
    detect: Detect,
    *,
    n_native: int,
    frame_size: tuple[int, int],
    backend: str,
    fps: float = 25.0,
    max_gap_frames: int = 5,
    max_missing_fraction: float = 0.05,
    competing_area_ratio: float = 0.5,
    max_competing_frames: int = 5,
    what: str = "clip",
    meta: dict[str, Any] | None = None,
    progress: bool = False,
    n_frames: int | None = None,
) -> LandmarkTrack:
    """Follow one face through ``images`` with the per-frame step ``detect(image, prior_box)``.

    ``detect`` returns the faces of one frame (:class:`~talk3d_core.face.landmark_backends.Face`);
    ``prior_box`` is the followed face's box in the last frame where it was found. ``images`` may be
    anything ``detect`` understands (arrays, or frame indices for a synthetic ``detect``). Gap
    settings as in :func:`detect_landmarks`; raises :class:`FaceTrackError` naming ``what`` and the
    frame ranges when the clip is rejected.
    """
    _check_settings(fps, max_gap_frames, max_missing_fraction, competing_area_ratio, max_competing_frames)
    from tqdm import tqdm

    found_rows: list[Face | None] = []
    n_faces: list[int] = []
    competing: list[bool] = []
    prior_box: np.ndarray | None = None
    started = last_log = time.monotonic()
    bar = tqdm(
        images, total=n_frames, desc=f"landmarks {what}", unit="frame", disable=None if progress else True
    )
    for i, image in enumerate(bar):
        faces = detect(image, prior_box)
        fitted = [f for f in faces if f.lm68 is not None]
        main = fitted[select_main(np.array([f.box for f in fitted]), prior_box)] if fitted else None
        if main is not None:
            _check_face(main, n_native, what, i)
            prior_box = np.asarray(main.box, dtype=np.float64)
            competing.append(_has_rival(main, faces, competing_area_ratio))
        else:
            competing.append(False)
        found_rows.append(main)
        n_faces.append(len(faces))
        now = time.monotonic()
        if now - last_log >= _LOG_EVERY_S:
            log.info("%s: %d frames, %.1f frames/s", what, i + 1, (i + 1) / (now - started))
            last_log = now
    n = len(found_rows)
    if n == 0:
        raise ValueError(f"{what}: no frames to find landmarks in")
    elapsed = time.monotonic() - started
    log.info("%s: %d frames in %.1f s (%.1f frames/s)", what, n, elapsed, n / max(elapsed, 1e-9))

    found = np.array([f is not None for f in found_rows])
    _check_track(
        found,
        np.array(competing),
        what=what,
        backend=backend,
        fps=fps,
        max_gap_frames=max_gap_frames,
        max_missing_fraction=max_missing_fraction,
        competing_area_ratio=competing_area_ratio,
        max_competing_frames=max_competing_frames,
    )

    box = np.full((n, 4), np.nan)
    lm68 = np.full((n, N_LANDMARKS, 2), np.nan)
    native = np.full((n, n_native, 2), np.nan)
    score = np.full(n, np.nan)
    for i, face in enumerate(found_rows):
        if face is not None:
            box[i], lm68[i], native[i], score[i] = face.box, face.lm68, face.native, face.score
    settings = {
        "fps": fps,
        "max_gap_frames": max_gap_frames,
        "max_missing_fraction": max_missing_fraction,
        "competing_area_ratio": competing_area_ratio,
        "max_competing_frames": max_competing_frames,
    }
    return LandmarkTrack(
        frame=np.arange(n, dtype=np.int32),
        detected=found,
        interpolated=~found,
        score=score.astype(np.float32),
        n_faces=np.array(n_faces, dtype=np.int16),
        box=_fill(box, found).astype(np.float32),
        lm68=_fill(lm68, found).astype(np.float32),
        native=_fill(native, found).astype(np.float32),
        backend=backend,
        frame_size=(int(frame_size[0]), int(frame_size[1])),
        meta={"gaps": settings, **(meta or {})},
    )


def _has_rival(main: Face, faces: Sequence[Face], area_ratio: float) -> bool:
    """Another face at least ``area_ratio`` times as large as ``main``; a box overlapping ``main``
    by IoU >= :data:`DUPLICATE_IOU` is the same face found twice, not a rival."""
    main_box = np.asarray(main.box, dtype=np.float64)
    threshold = area_ratio * box_area(main_box)
    return any(
        f is not main
        and box_area(np.asarray(f.box)) >= threshold
        and box_iou(np.asarray(f.box)[None], main_box)[0] < DUPLICATE_IOU
        for f in faces
    )


def _check_settings(
    fps: float,
    max_gap_frames: int,
    max_missing_fraction: float,
    competing_area_ratio: float,
    max_competing: int,
) -> None:
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if max_gap_frames < 0:
        raise ValueError(f"max_gap_frames must be >= 0, got {max_gap_frames}")
    if not 0.0 <= max_missing_fraction <= 1.0:
        raise ValueError(f"max_missing_fraction must be in [0, 1], got {max_missing_fraction}")
    if not competing_area_ratio > 0:
        raise ValueError(f"competing_area_ratio must be > 0, got {competing_area_ratio}")
    if max_competing < 0:
        raise ValueError(f"max_competing_frames must be >= 0, got {max_competing}")


def _check_face(face: Face, n_native: int, what: str, index: int) -> None:
    """A backend's face record has the promised shapes and finite values."""
    shapes = {"box": (4,), "lm68": (N_LANDMARKS, 2), "native": (n_native, 2)}
    for name, shape in shapes.items():
        value = getattr(face, name)
        if value is None or np.shape(value) != shape or not np.all(np.isfinite(value)):
            raise ValueError(
                f"{what}: frame {index}: the landmark backend returned {name} of shape "
                f"{np.shape(value) if value is not None else None} (expected finite values of shape {shape})"
            )


def _check_track(
    found: np.ndarray,
    competing: np.ndarray,
    *,
    what: str,
    backend: str,
    fps: float,
    max_gap_frames: int,
    max_missing_fraction: float,
    competing_area_ratio: float,
    max_competing_frames: int,
) -> None:
    """Raise :class:`FaceTrackError` listing every reason the clip cannot be used."""
    n = len(found)
    if not found.any():
        raise FaceTrackError(
            f"{what}: no face found in any of the {n} frames ({n / fps:.1f} s) by the {backend!r} landmark "
            "backend; the clip needs one visible, roughly frontal face"
        )
    problems = []
    missing_runs = _runs(~found)
    long_runs = [r for r in missing_runs if r[1] - r[0] + 1 > max_gap_frames]
    if long_runs:
        problems.append(
            f"face not found for more than {max_gap_frames} consecutive frames (max_gap_frames) in "
            f"{format_ranges(long_runs, fps)}"
        )
    n_missing = int((~found).sum())
    if n_missing > max_missing_fraction * n:
        problems.append(
            f"face not found in {n_missing} of {n} frames ({100 * n_missing / n:.1f}%, more than "
            f"max_missing_fraction {100 * max_missing_fraction:g}%): {format_ranges(missing_runs, fps)}"
        )
    n_competing = int(competing.sum())
    if n_competing > max_competing_frames:
        problems.append(
            f"two faces compete: a second face with at least {competing_area_ratio:g}x the followed face's "
            f"box area in {n_competing} frames (more than max_competing_frames {max_competing_frames}): "
            f"{format_ranges(_runs(competing), fps)}"
        )
    if problems:
        raise FaceTrackError(f"{what}: cannot follow one face ({backend!r} backend): " + "; ".join(problems))


def detect_landmarks(
    frame_paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    backend: str = "mediapipe",
    weights_dir: str | os.PathLike[str] = "resources/weights",
    manifest: str | os.PathLike[str] | None = None,
    max_gap_frames: int = 5,
    max_missing_fraction: float = 0.05,
    competing_area_ratio: float = 0.5,
    max_competing_frames: int = 5,
    fps: float = 25.0,
    what: str | None = None,
    backend_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> LandmarkTrack:
    """Find the face's landmarks in every frame of a clip, in one pass.

    Args:
        frame_paths: frame files in order, or the ingest ``frames/`` folder.
        backend: one of ``mediapipe``, ``dlib``, ``face_alignment``.
        weights_dir, manifest: where weights of the ``face_alignment`` backend are looked up
            (manifest defaults to ``<weights_dir>/manifest.yaml``); nothing is downloaded.
        max_gap_frames: longest run of frames without the face that is interpolated.
        max_missing_fraction: largest fraction of frames without the face.
        competing_area_ratio, max_competing_frames: a second face with at least this box-area ratio
            to the followed face, in more than this many frames, rejects the clip.
        fps: frame rate, for the durations in messages.
        what: the clip's name in messages and logs (default: the frames' folder).
        backend_options: keyword options of the backend (see its class).
        progress: show a progress bar (only on a terminal).

    Returns:
        The :class:`LandmarkTrack` (every frame filled; see ``detected``/``interpolated``).

    Raises:
        FaceTrackError: no face, or the face missing too long/too often, or two faces compete.
        ValueError: unreadable frames or frames of different sizes; unknown backend.
        talk3d_core.util.weights.WeightsError: the backend's weights are not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown landmark backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    paths = _frame_list(frame_paths)
    what = what if what is not None else str(paths[0].parent)
    first = read_rgb(paths[0])
    height, width = first.shape[:2]

    def checked(images: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for path, image in zip(paths, images, strict=True):
            if image.shape[:2] != (height, width):
                raise ValueError(
                    f"{path}: frame is {image.shape[1]}x{image.shape[0]}, the clip's first frame "
                    f"{paths[0].name} is {width}x{height}"
                )
            yield image

    model = open_backend(backend, weights_dir=weights_dir, manifest=manifest, **(backend_options or {}))
    try:
        return track_landmarks(
            checked(_read_ahead(paths)),
            model.detect,
            n_native=model.n_native,
            frame_size=(width, height),
            backend=backend,
            fps=fps,
            max_gap_frames=max_gap_frames,
            max_missing_fraction=max_missing_fraction,
            competing_area_ratio=competing_area_ratio,
            max_competing_frames=max_competing_frames,
            what=what,
            meta={"backend_options": model.options()},
            progress=progress,
            n_frames=len(paths),
        )
    finally:
        model.close()


# ------------------------------------------------------------------------------------------ metrics


def landmark_error_by_region(points: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean point distance between two sets of 68 points (N, 68, 2) per region, as a fraction of
    the reference's inter-ocular distance (outer eye corners 36-45); key ``all`` for all 68."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, N_LANDMARKS, 2)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, N_LANDMARKS, 2)
    if points.shape != reference.shape:
        raise ValueError(f"point sets differ in shape: {points.shape} vs {reference.shape}")
    a, b = OUTER_EYE_CORNERS
    iod = np.linalg.norm(reference[:, a] - reference[:, b], axis=1)
    err = np.linalg.norm(points - reference, axis=2) / iod[:, None]
    out = {name: float(err[:, list(idx)].mean()) for name, idx in REGIONS.items()}
    out["all"] = float(err.mean())
    return out


# ------------------------------------------------------------------------------------------ parquet


def _schema(n_native: int) -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("frame", pa.int32()),
            ("detected", pa.bool_()),
            ("interpolated", pa.bool_()),
            ("score", pa.float32()),
            ("n_faces", pa.int16()),
            ("box", pa.list_(pa.float32(), 4)),
            ("lm68", pa.list_(pa.float32(), 2 * N_LANDMARKS)),
            ("native", pa.list_(pa.float32(), 2 * n_native)),
        ]
    )


def write_landmarks(track: LandmarkTrack, path: str | os.PathLike[str]) -> None:
    """Write ``track`` as landmarks.parquet (one row per frame, atomically); backend and options
    go to the schema metadata as JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_native = track.native.shape[1]
    meta = {
        "schema": SCHEMA_VERSION,
        "backend": track.backend,
        "frame_size": list(track.frame_size),
        "n_native": n_native,
        **track.meta,
    }
    schema = _schema(n_native).with_metadata({_METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})
    table = pa.Table.from_arrays(
        [
            pa.array(np.asarray(track.frame, dtype=np.int32)),
            pa.array(np.asarray(track.detected, dtype=bool)),
            pa.array(np.asarray(track.interpolated, dtype=bool)),
            pa.array(np.asarray(track.score, dtype=np.float32), from_pandas=False),
            pa.array(np.asarray(track.n_faces, dtype=np.int16)),
            fixed_list_array(track.box, 4),
            fixed_list_array(track.lm68, 2 * N_LANDMARKS),
            fixed_list_array(track.native, 2 * n_native),
        ],
        schema=schema,
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_landmarks(path: str | os.PathLike[str]) -> LandmarkTrack:
    """Read landmarks.parquet; a table that does not match the schema (columns, types, vector
    lengths, frame numbering, metadata) raises ValueError naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"{path}: cannot read landmarks table: {err}") from err
    raw_meta = (table.schema.metadata or {}).get(_METADATA_KEY)
    try:
        meta = json.loads(raw_meta) if raw_meta is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA_VERSION:
        found = meta.get("schema") if isinstance(meta, dict) else None
        raise ValueError(
            f"{path}: not a {SCHEMA_VERSION} landmarks table (metadata schema {found!r}); "
            "delete it so the landmarks stage runs again"
        )
    n_native = meta.get("n_native")
    if not isinstance(n_native, int) or n_native < 1:
        raise ValueError(f"{path}: metadata n_native {n_native!r} is not a positive integer")
    expected = _schema(n_native)
    actual = table.schema.remove_metadata()
    if actual.names != expected.names:
        raise ValueError(f"{path}: columns {actual.names}, expected {expected.names}")
    for want, have in zip(expected, actual, strict=True):
        if want.type != have.type:
            raise ValueError(f"{path}: column {want.name!r} has type {have.type}, expected {want.type}")
    n = table.num_rows
    for name in expected.names:
        if table.column(name).null_count and name != "score":
            raise ValueError(f"{path}: column {name!r} has missing values")

    def column(name: str) -> np.ndarray:
        return table.column(name).to_numpy()

    def vectors(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return fixed_list_values(table.column(name), shape)

    frame = column("frame")
    if not np.array_equal(frame, np.arange(n)):
        raise ValueError(f"{path}: column 'frame' is not 0..{n - 1} in order")
    frame_size = meta.get("frame_size")
    if not (
        isinstance(frame_size, list) and len(frame_size) == 2 and all(isinstance(v, int) for v in frame_size)
    ):
        raise ValueError(f"{path}: metadata frame_size {frame_size!r} is not [W, H]")
    if not isinstance(meta.get("backend"), str):
        raise ValueError(f"{path}: metadata has no backend name")
    extra = {k: v for k, v in meta.items() if k not in ("schema", "backend", "frame_size", "n_native")}
    return LandmarkTrack(
        frame=frame.astype(np.int32),
        detected=column("detected").astype(bool),
        interpolated=column("interpolated").astype(bool),
        score=table.column("score").to_numpy(zero_copy_only=False).astype(np.float32),
        n_faces=column("n_faces").astype(np.int16),
        box=vectors("box", (4,)),
        lm68=vectors("lm68", (N_LANDMARKS, 2)),
        native=vectors("native", (n_native, 2)),
        backend=meta["backend"],
        frame_size=(frame_size[0], frame_size[1]),
        meta=extra,
    )
