"""Stage 9, render: a trained talking head + conditions + a camera path -> an H.264/AAC ``.mp4``.

Pieces, each usable alone:

- :class:`VideoWriter` streams uint8 RGB frames into ffmpeg (libx264, yuv420p, BT.709, ``+faststart``)
  and muxes an audio file as AAC, so the file plays in browsers; it is atomic (a temp file beside the
  target, renamed on a clean close) and never holds the whole video in memory.
- Camera paths (EG3D 25-number labels): ``tracked`` (the prior's per-frame cameras), ``fixed`` (the
  frontal camera) and novel views (:func:`view_cameras`), named ``"{yaw}_{pitch}"`` for the
  workflow's ``views/{yaw}_{pitch}.mp4`` targets (:func:`view_name`, :func:`parse_view`,
  :func:`paper_views`).
- :func:`drive_conditions`: a driving clip's conditions, its own audio with eye/rotation/landmark
  tokens borrowed from subject frames played back and forth (:func:`ping_pong`).
- :class:`PasteBack`: composites each render into its full source frame (crop.parquet affines,
  optional region masks).
- :func:`render_video`: renders in batches (eval mode, no ray jitter), resizes, pastes back,
  and writes the video and, optionally, a depth video of the same length.

Indexing: ``conditions``, ``cameras`` and a :class:`PasteBack` all describe the same N clip frames;
``frames`` picks which of them the video shows, in order (video frame i is clip frame ``frames[i]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import torch
from torch import Tensor

from talk3d_core.camera import eg3d_camera
from talk3d_core.crop import paste_back, read_crop_table
from talk3d_core.io import atomic_path, list_frames, read_rgb
from talk3d_core.masks import LABELS, read_mask
from talk3d_core.media import MediaError, ffmpeg_exe, file_url, probe, run_ffmpeg
from talk3d_core.pictures import depth_to_uint8
from talk3d_core.prior import to_uint8
from talk3d_core.train import FrameConditions, TalkingHead

log = logging.getLogger(__name__)

# The paper's novel-view grid (head angles in degrees; the frontal view is the self-driven video).
PAPER_YAWS = (-30, -15, 15, 30)
PAPER_PITCHES = (-20, -10, 10, 20)
MAX_VIEW_YAW = 90.0  # beyond it the camera sees the back of a head it never saw
MAX_VIEW_PITCH = 89.0  # look_at_cam2world's limit (the camera's up vector degenerates at the poles)

_STDERR_TAIL_LINES = 8


# ------------------------------------------------------------------------------------ video writer


def _rate(fps: float) -> str:
    """``fps`` as an ffmpeg rational: 25 -> "25/1", 30000 / 1001 -> "30000/1001"."""
    rate = Fraction(fps).limit_denominator(1001)
    return f"{rate.numerator}/{rate.denominator}"


def _tail(text: str, lines: int = _STDERR_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(ffmpeg printed nothing)"


class VideoWriter:
    """Streams uint8 RGB frames (H, W, 3) to an H.264 ``.mp4`` through an ffmpeg subprocess.

    Video: libx264 at ``crf`` (0..51, lower is better; 18 is visually lossless), yuv420p with BT.709
    colour tags, ``fps`` frames per second, ``+faststart`` (index first, so browsers start playing
    before the download ends). An odd width or height is made even by repeating the last column or
    row (yuv420p needs even sizes); :attr:`size` is the size written. Frames go to ffmpeg's stdin
    as they come: nothing but one frame is held in memory.

    Audio: ``audio`` (any file ffmpeg reads, e.g. the subject's ``audio.wav``) is muxed as AAC,
    starting ``audio_offset_s`` seconds into the file and cut at the video's length (a shorter audio
    track simply ends early). It is added in a second, copy-only pass once the frame count is known.

    Atomic: ffmpeg writes a temp file beside ``path`` that is renamed onto it by :meth:`close`; an
    exception inside the ``with`` block (or :meth:`abort`) kills ffmpeg and deletes the temp files.
    ffmpeg failures raise :class:`~talk3d_core.media.MediaError` naming ``path`` with the tail of
    ffmpeg's stderr.

    Use as a context manager::

        with VideoWriter("out.mp4", audio="audio.wav") as video:
            for frame in frames:
                video.write(frame)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float = 25.0,
        crf: int = 18,
        audio: str | os.PathLike[str] | None = None,
        audio_offset_s: float = 0.0,
        codec: str = "libx264",
        preset: str = "medium",
        audio_bitrate: str = "128k",
    ) -> None:
        self.path = Path(path)
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"{self.path}: fps must be a positive number, got {fps}")
        if not 0 <= crf <= 51:
            raise ValueError(f"{self.path}: crf must be within 0..51, got {crf}")
        if not (math.isfinite(audio_offset_s) and audio_offset_s >= 0):
            raise ValueError(f"{self.path}: audio_offset_s must be >= 0 seconds, got {audio_offset_s}")
        self.fps, self.crf, self.codec, self.preset = float(fps), int(crf), codec, preset
        self.audio = None if audio is None else Path(audio)
        self.audio_offset_s, self.audio_bitrate = float(audio_offset_s), audio_bitrate
        if self.audio is not None:
            info = probe(self.audio)  # fail before any rendering, naming the file
            if info.audio is None:
                raise MediaError(f"{self.audio}: has no audio stream to mux into {self.path}")
            if info.duration_s is not None and self.audio_offset_s >= info.duration_s:
                raise MediaError(
                    f"{self.audio}: audio offset {self.audio_offset_s:.3f} s is past its end "
                    f"({info.duration_s:.3f} s); nothing to mux into {self.path}"
                )
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height) written, even
        self._input_size: tuple[int, int] | None = None  # (width, height) of the frames given
        self._proc: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None
        self._target: contextlib.AbstractContextManager[Path] | None = None
        self._target_tmp: Path | None = None
        self._video_tmp: Path | None = None
        self._done = False

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def duration_s(self) -> float:
        """Length of the video written so far, frames / fps (seconds)."""
        return self.frames / self.fps

    def _start(self, width: int, height: int) -> None:
        self._input_size = (width, height)
        self.size = (width + width % 2, height + height % 2)
        self._target = atomic_path(self.path)
        self._target_tmp = self._target.__enter__()
        if self.audio is None:
            out = self._target_tmp
        else:  # video-only first pass, muxed with the audio into the target on close
            fd, name = tempfile.mkstemp(
                prefix=f".{self.path.stem}.", suffix=".video.mp4", dir=self.path.parent
            )
            os.close(fd)
            out = self._video_tmp = Path(name)
        w, h = self.size
        args = [
            ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", _rate(self.fps),
            "-i", "pipe:0", "-an",
            # RGB -> limited-range BT.709 YUV, tagged as such so players convert back the same way.
            "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p",
            "-c:v", self.codec, "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
            "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
        ]  # fmt: skip
        if self.audio is None:
            args += ["-movflags", "+faststart"]
        args += ["-f", "mp4", file_url(out)]
        # stderr goes to a file: an unread pipe could fill up and stall ffmpeg.
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
        )

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", errors="replace")

    def _failure(self, when: str) -> MediaError:
        assert self._proc is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.close()  # type: ignore[union-attr]
        code = self._proc.wait()
        return MediaError(f"{self.path}: ffmpeg failed {when} (exit {code}):\n{_tail(self._stderr_text())}")

    def write(self, frame: np.ndarray) -> None:
        """Append one frame: uint8 RGB (H, W, 3), the same size as the first frame."""
        if self._done:
            raise ValueError(f"{self.path}: the video is already closed")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) < 1:
            raise ValueError(
                f"{self.path}: frames must be uint8 RGB (H, W, 3), got {frame.dtype} {frame.shape}"
            )
        height, width = frame.shape[:2]
        if self._proc is None:
            self._start(width, height)
        elif (width, height) != self._input_size:
            raise ValueError(
                f"{self.path}: frame {self.frames} is {width}x{height}, earlier frames are "
                f"{self._input_size[0]}x{self._input_size[1]}"  # type: ignore[index]
            )
        if self.size != self._input_size:
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).data)  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError):  # ffmpeg exited (bad arguments, disk full, ...)
            raise self._failure(f"while encoding frame {self.frames}") from None
        self.frames += 1

    def close(self) -> Path:
        """Finish encoding, mux the audio, move the file into place; returns the target path."""
        if self._done:
            return self.path
        if self._proc is None:
            self.abort()
            raise MediaError(f"{self.path}: no frames were written; refusing to write an empty video")
        try:
            try:
                self._proc.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass  # ffmpeg already exited; its exit status below says why
            if self._proc.wait() != 0:
                raise self._failure("while encoding")
            if self.audio is not None:
                run_ffmpeg(
                    [
                        "-y", "-i", file_url(self._video_tmp),  # type: ignore[arg-type]
                        "-ss", f"{self.audio_offset_s:.6f}", "-t", f"{self.duration_s:.6f}",
                        "-i", file_url(self.audio),
                        "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                        "-c:a", "aac", "-b:a", self.audio_bitrate, "-movflags", "+faststart",
                        "-f", "mp4", file_url(self._target_tmp),  # type: ignore[arg-type]
                    ],
                    what=f"{self.path} (muxing audio from {self.audio})",
                )  # fmt: skip
            target, self._target = self._target, None
            target.__exit__(None, None, None)  # type: ignore[union-attr]  # rename into place
        except BaseException:
            self.abort()
            raise
        self._cleanup()
        return self.path

    def abort(self) -> None:
        """Stop: kill ffmpeg if it runs and delete every temp file; the target is not written."""
        if self._done:
            return
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()  # type: ignore[union-attr]
            self._proc.wait()
        if self._target is not None:
            failed = RuntimeError(f"{self.path}: aborted")
            self._target.__exit__(RuntimeError, failed, None)  # deletes the temp file
            self._target = None
        self._cleanup()

    def _cleanup(self) -> None:
        self._done = True
        if self._video_tmp is not None:
            self._video_tmp.unlink(missing_ok=True)
            self._video_tmp = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


# ------------------------------------------------------------------------------------ camera paths


def _check_count(n: int) -> int:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"a camera path needs n >= 1 frames, got {n}")
    return int(n)


def tracked_cameras(cameras: np.ndarray | Tensor) -> np.ndarray:
    """The per-frame cameras as given (e.g. ``prior/frames.parquet`` column "camera"), checked:
    (N, 25) finite float32 EG3D labels."""
    cams = np.asarray(cameras.cpu() if isinstance(cameras, Tensor) else cameras, dtype=np.float32)
    if cams.ndim != 2 or cams.shape[1] != 25 or len(cams) == 0:
        raise ValueError(f"tracked cameras must be (N>0, 25) EG3D labels, got shape {cams.shape}")
    if not np.isfinite(cams).all():
        bad = np.flatnonzero(~np.isfinite(cams).all(axis=1))
        raise ValueError(f"tracked cameras are not finite in frames {bad[:10].tolist()}")
    return cams


def view_cameras(
    yaw_deg: float, pitch_deg: float, n: int, *, focal: float, radius: float, pivot: Sequence[float]
) -> np.ndarray:
    """(n, 25) float32: the canonical (frontal) camera turned so that the head is seen at ``yaw_deg``,
    ``pitch_deg`` (head angles in degrees, :mod:`talk3d_core.camera` conventions: yaw > 0 shows the
    subject's left cheek, pitch > 0 the head from below), constant over the clip. ``focal`` in
    image widths, ``radius`` and ``pivot`` (3,) in world units, as in the camera stage's config."""
    yaw, pitch = float(yaw_deg), float(pitch_deg)
    _check_view(yaw, pitch)
    n = _check_count(n)
    label = eg3d_camera([yaw], [pitch], [0.0], radius=radius, pivot=np.asarray(pivot), focal=focal)
    return np.repeat(label.astype(np.float32), n, axis=0)


def fixed_cameras(n: int, *, focal: float, radius: float, pivot: Sequence[float]) -> np.ndarray:
    """(n, 25) float32: the frontal camera (head angles 0, 0, 0) repeated."""
    return view_cameras(0.0, 0.0, n, focal=focal, radius=radius, pivot=pivot)


def camera_path(
    name: str,
    n: int,
    *,
    tracked: np.ndarray | Tensor | None = None,
    focal: float,
    radius: float,
    pivot: Sequence[float],
) -> np.ndarray:
    """(n, 25) float32 cameras of a named path: ``"tracked"`` (``tracked`` (n, 25) as given),
    ``"fixed"`` (frontal) or a view name ``"{yaw}_{pitch}"`` (:func:`parse_view`)."""
    if name == "tracked":
        if tracked is None:
            raise ValueError("camera path 'tracked' needs the tracked cameras")
        cams = tracked_cameras(tracked)
        if len(cams) != n:
            raise ValueError(f"camera path 'tracked': {len(cams)} cameras for {n} frames")
        return cams
    if name == "fixed":
        return fixed_cameras(n, focal=focal, radius=radius, pivot=pivot)
    try:
        yaw, pitch = parse_view(name)
    except ValueError as exc:
        raise ValueError(f"unknown camera path {name!r}: use 'tracked', 'fixed' or a view; {exc}") from None
    return view_cameras(yaw, pitch, n, focal=focal, radius=radius, pivot=pivot)


def _check_view(yaw: float, pitch: float) -> None:
    if not (math.isfinite(yaw) and abs(yaw) <= MAX_VIEW_YAW):
        raise ValueError(f"view yaw must be within +-{MAX_VIEW_YAW:g} degrees, got {yaw}")
    if not (math.isfinite(pitch) and abs(pitch) < MAX_VIEW_PITCH):
        raise ValueError(f"view pitch must be within +-{MAX_VIEW_PITCH:g} degrees (exclusive), got {pitch}")


def _angle_text(value: float) -> str:
    value = float(value) + 0.0  # -0.0 -> 0.0
    return str(int(value)) if value.is_integer() else format(value, "g")


def view_name(yaw_deg: float, pitch_deg: float) -> str:
    """Name of the novel view at head yaw/pitch (degrees): "{yaw}_{pitch}", integers without a sign
    for positives, e.g. ``view_name(-30, 20) == "-30_20"``, ``view_name(15, -10) == "15_-10"``."""
    yaw, pitch = float(yaw_deg), float(pitch_deg)
    _check_view(yaw, pitch)
    return f"{_angle_text(yaw)}_{_angle_text(pitch)}"


_VIEW_RE = re.compile(r"([+-]?\d+(?:\.\d+)?)_([+-]?\d+(?:\.\d+)?)")


def parse_view(name: str) -> tuple[float, float]:
    """(yaw, pitch) in degrees of a view name made by :func:`view_name` ("-30_20", "15_-10", "7.5_0").

    Only the canonical spelling is accepted ("+15_10", "015_10", "15.0_10" are errors that say how
    to write it), so each view has exactly one file name.
    """
    match = _VIEW_RE.fullmatch(str(name))
    if match is None:
        raise ValueError(
            f"view name {name!r} is not '{{yaw}}_{{pitch}}' in degrees (e.g. '-30_20', '15_-10')"
        )
    yaw, pitch = float(match.group(1)), float(match.group(2))
    canonical = view_name(yaw, pitch)  # range check
    if canonical != name:
        raise ValueError(f"view name {name!r} is not in canonical form; write it as {canonical!r}")
    return yaw, pitch


def paper_views() -> list[str]:
    """The paper's 16 novel views, yaw -30/-15/+15/+30 x pitch -20/-10/+10/+20, as view names."""
    return [view_name(yaw, pitch) for yaw in PAPER_YAWS for pitch in PAPER_PITCHES]


# ------------------------------------------------------------------------------ driving conditions


def ping_pong(source_frames: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """(n,) int64: ``source_frames`` played forward, then backward, then forward... without repeating
    the turning frames (a, b, c, b, a, b, ...), so a long driving clip never jumps."""
    source = np.asarray(source_frames, dtype=np.int64).reshape(-1)
    if len(source) == 0:
        raise ValueError("ping_pong needs at least one source frame")
    if n < 0:
        raise ValueError(f"ping_pong: n must be >= 0, got {n}")
    if len(source) == 1:
        return np.repeat(source, n)
    period = 2 * (len(source) - 1)
    phase = np.arange(n) % period
    return source[np.where(phase < len(source), phase, period - phase)]


def drive_conditions(
    subject: FrameConditions, audio: np.ndarray, source_frames: Sequence[int] | np.ndarray
) -> FrameConditions:
    """Conditions of M driving frames: ``audio`` (M, W, D) (the driving features, normalised with the
    subject's statistics), with eye, rotation and landmark tokens of the subject's ``source_frames``
    in :func:`ping_pong` order (use the same order for their cameras and paste-back frames)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 3 or len(audio) == 0 or audio.shape[1:] != subject.audio.shape[1:]:
        raise ValueError(
            f"driving audio features of shape {audio.shape} do not fit the subject's {subject.audio.shape}: "
            "need (M>0, W, D) with the subject's window W and feature size D; recompute the driving "
            "features with the subject's settings"
        )
    source = np.asarray(source_frames, dtype=np.int64).reshape(-1)
    if len(source) == 0 or source.min() < 0 or source.max() >= len(subject):
        raise ValueError(
            f"source frames must be a non-empty list within 0..{len(subject) - 1}, "
            f"got {len(source)} frames spanning {source.min(initial=0)}..{source.max(initial=0)}"
        )
    order = ping_pong(source, len(audio))
    return FrameConditions(
        audio=audio, eye=subject.eye[order], rotation=subject.rotation[order], ldm=subject.ldm[order]
    )


# -------------------------------------------------------------------------------------- paste-back


def resize_square(image: np.ndarray, side: int) -> np.ndarray:
    """Resize an (S, S, C) uint8 image to (side, side, C): Lanczos when enlarging, pixel-area averaging
    when shrinking (no aliasing), unchanged when S == side."""
    if image.shape[0] == side and image.shape[1] == side:
        return image
    up = side > image.shape[0]
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_LANCZOS4 if up else cv2.INTER_AREA)


def scale_affine(affine: np.ndarray, crop_size: int, side: int) -> np.ndarray:
    """A source -> crop (2, 3) affine for a ``crop_size`` crop, redone for the same crop at ``side``
    pixels (pixel centres at integer coordinates: x' = (x + 0.5) side / crop_size - 0.5)."""
    k = side / crop_size
    out = np.asarray(affine, dtype=np.float64) * k
    out[..., 2] += 0.5 * k - 0.5
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class PasteBack:
    """What is needed to paste renders back into the full source frames of N clip frames.

    frames: N full-frame image paths (``frames/``); affines: (N, 2, 3) source -> crop affines for
    ``crop_size`` crops (crop.parquet); masks: optional N label images (``masks/``) of those crops,
    of which the ``labels`` regions are pasted (default: all but the background); None pastes the
    whole crop square. feather_px: seam width in ``crop_size`` crop pixels (None: paste_back's
    default). use_opacity: paste only where the render is opaque (its accumulated ray weights), for
    models trained with the background painted black, whose crops are the person on black: without it
    the black square would be pasted too. Entry i is used for clip frame i; :meth:`select` re-indexes
    (e.g. by :func:`ping_pong`).
    """

    frames: tuple[Path, ...]
    affines: np.ndarray
    crop_size: int
    masks: tuple[Path, ...] | None = None
    labels: tuple[int, ...] = tuple(v for k, v in LABELS.items() if k != "background")
    feather_px: float | None = None
    use_opacity: bool = False

    def __post_init__(self) -> None:
        affines = np.asarray(self.affines, dtype=np.float64)
        if affines.ndim != 3 or affines.shape[1:] != (2, 3) or len(affines) != len(self.frames):
            raise ValueError(
                f"PasteBack: {len(self.frames)} frames need ({len(self.frames)}, 2, 3) affines, "
                f"got {affines.shape}"
            )
        if self.masks is not None and len(self.masks) != len(self.frames):
            raise ValueError(f"PasteBack: {len(self.masks)} masks for {len(self.frames)} frames")
        if self.crop_size < 1:
            raise ValueError(f"PasteBack: crop_size must be >= 1, got {self.crop_size}")
        object.__setattr__(self, "affines", affines)
        object.__setattr__(self, "frames", tuple(Path(p) for p in self.frames))
        if self.masks is not None:
            object.__setattr__(self, "masks", tuple(Path(p) for p in self.masks))

    @classmethod
    def from_files(
        cls,
        frames_dir: str | os.PathLike[str],
        crop_parquet: str | os.PathLike[str],
        masks_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> PasteBack:
        """From a subject's ``frames/``, ``crop.parquet`` and optionally ``masks/``; ``options``:
        ``labels``, ``feather_px``. Frame counts must agree (a clear error names the files)."""
        frames = list_frames(frames_dir)
        table = read_crop_table(crop_parquet)
        if len(table.frame) != len(frames) or not np.array_equal(table.frame, np.arange(len(frames))):
            raise ValueError(
                f"{crop_parquet}: {len(table.frame)} crop rows for {len(frames)} frames in {frames_dir};"
                " re-run the crop stage"
            )
        masks = None
        if masks_dir is not None:
            masks = list_frames(masks_dir)
            if len(masks) != len(frames):
                raise ValueError(f"{masks_dir}: {len(masks)} masks for {len(frames)} frames in {frames_dir}")
        return cls(
            tuple(frames), table.affine, table.size, None if masks is None else tuple(masks), **options
        )

    def __len__(self) -> int:
        return len(self.frames)

    def select(self, indices: Sequence[int] | np.ndarray) -> PasteBack:
        """The entries ``indices`` (in that order) as a new PasteBack."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"PasteBack.select: indices must be within 0..{len(self) - 1}")
        return dataclasses.replace(
            self,
            frames=tuple(self.frames[i] for i in idx),
            affines=self.affines[idx],
            masks=None if self.masks is None else tuple(self.masks[i] for i in idx),
        )

    def composite(self, index: int, render: np.ndarray, opacity: np.ndarray | None = None) -> np.ndarray:
        """Clip frame ``index``'s full source frame (H, W, 3) uint8 with ``render`` (R, R, 3) uint8
        (the crop at any side R) blended in over its crop region (mask, feathered seam). ``opacity``:
        the render's (h, h) opacity 0..1 at any resolution, used as its region when ``use_opacity``."""
        side = render.shape[0]
        frame = read_rgb(self.frames[index])
        affine = scale_affine(self.affines[index], self.crop_size, side)
        mask = None
        if self.masks is not None:
            labels = read_mask(self.masks[index])
            if labels.shape != (self.crop_size, self.crop_size):
                raise ValueError(
                    f"{self.masks[index]}: mask is {labels.shape[1]}x{labels.shape[0]}, the crops are "
                    f"{self.crop_size}x{self.crop_size}"
                )
            mask = np.isin(labels, self.labels).astype(np.float32)
            if side != self.crop_size:
                mask = cv2.resize(mask, (side, side), interpolation=cv2.INTER_LINEAR)
        if self.use_opacity:
            if opacity is None:
                raise ValueError("PasteBack(use_opacity=True).composite needs the render's opacity")
            alpha = cv2.resize(np.asarray(opacity, np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
            mask = np.clip(alpha, 0.0, 1.0) if mask is None else mask * np.clip(alpha, 0.0, 1.0)
        feather = None if self.feather_px is None else self.feather_px * side / self.crop_size
        return paste_back(render, frame, affine, mask, feather)


# ------------------------------------------------------------------------------------------- depth


def depth_range_of(depth: Tensor, opacity: Tensor, fallback: tuple[float, float]) -> tuple[float, float]:
    """(near, far) world units for a depth video: the 1st..99th percentile of the depth of pixels with
    opacity > 0.5, widened by 10 % each side; ``fallback`` (e.g. the ray range) when too few."""
    solid = depth[opacity > 0.5].float()
    if solid.numel() < 16:
        return fallback
    lo, hi = torch.quantile(solid, torch.tensor([0.01, 0.99], dtype=solid.dtype)).tolist()
    margin = 0.1 * max(hi - lo, 1e-3)
    return lo - margin, hi + margin


# ---------------------------------------------------------------------------------------- rendering


def _check_frames(frames: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    if frames is None:
        return np.arange(n, dtype=np.int64)
    out = np.asarray(frames, dtype=np.int64).reshape(-1)
    if len(out) == 0:
        raise ValueError("render: no frames to render")
    if out.min() < 0 or out.max() >= n:
        raise ValueError(
            f"render: frames must be within 0..{n - 1} (the clip's frames), got {out.min()}..{out.max()}"
        )
    return out


@torch.no_grad()
def render_batches(
    head: TalkingHead,
    conditions: FrameConditions,
    cameras: np.ndarray | Tensor,
    frames: Sequence[int] | np.ndarray | None = None,
    *,
    batch_size: int = 8,
    drop: Collection[str] = (),
    identity_only: bool = False,
) -> Iterator[tuple[np.ndarray, dict[str, Tensor]]]:
    """Render clip ``frames`` (default all) in batches, deterministically (eval mode, no ray jitter).

    conditions: N clip frames; cameras: (N, 25) EG3D labels of the same frames. Yields (the batch's
    clip frame indices (B,), outputs on the CPU): "image" (B, 3, S, S) in [-1, 1], "image_depth"
    (B, 1, H, H) world units, "weights_sum" (B, 1, H, H) opacity. ``drop``/``identity_only``: as in
    :meth:`TalkingHead.forward`. The model's train/eval mode is restored afterwards.
    """
    cams = torch.as_tensor(
        np.asarray(cameras.cpu() if isinstance(cameras, Tensor) else cameras), dtype=torch.float32
    )
    if cams.ndim != 2 or cams.shape[1] != 25 or len(cams) != len(conditions):
        raise ValueError(
            f"render: cameras must be ({len(conditions)}, 25), one per clip frame, got {tuple(cams.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"render: batch_size must be >= 1, got {batch_size}")
    frames = _check_frames(frames, len(conditions))
    was_training = head.training
    head.eval()
    try:
        for start in range(0, len(frames), batch_size):
            chunk = frames[start : start + batch_size]
            cond = conditions.gather(chunk, head.net_config.audio_frames, head.device)
            out = head(
                cond, cams[chunk].to(head.device), jitter=False, drop=drop, identity_only=identity_only
            )
            yield chunk, {k: out[k].float().cpu() for k in ("image", "image_depth", "weights_sum")}
    finally:
        head.train(was_training)


def render_video(
    head: TalkingHead,
    conditions: FrameConditions,
    cameras: np.ndarray | Tensor,
    out_mp4: str | os.PathLike[str],
    *,
    frames: Sequence[int] | np.ndarray | None = None,
    audio: str | os.PathLike[str] | None = None,
    audio_offset_s: float = 0.0,
    fps: float = 25.0,
    batch_size: int = 8,
    output_size: int | None = None,
    paste: PasteBack | None = None,
    depth_mp4: str | os.PathLike[str] | None = None,
    depth_colormap: str = "grey",
    depth_range: tuple[float, float] | None = None,
    crf: int = 18,
    drop: Collection[str] = (),
    identity_only: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Render clip ``frames`` (default all N) of ``conditions`` from ``cameras`` (N, 25) into
    ``out_mp4`` (H.264, ``fps``), with ``audio`` muxed from ``audio_offset_s`` seconds in.

    Each render (S x S, the generator's image resolution) is resized to ``output_size`` pixels
    (default: S, or the crop size with ``paste``; Lanczos up, area down). With ``paste`` (N entries,
    like ``conditions``) it is composited into its full source frame, so the video has the source
    frames' size. ``depth_mp4``: the depth video of the crops (not pasted back), same frames and
    length, at the crop side above, near bright (see :func:`depth_to_uint8`), over ``depth_range``
    (world units; default: from the first batch's solid pixels, then fixed, so the video does not
    flicker). Outputs are atomic: on any error neither file is left behind.

    Returns {"frames", "fps", "seconds" (wall time), "render_seconds" (the model alone),
    "render_fps", "size" [width, height], "video", "audio", "depth_video", "depth_range"}.
    """
    from tqdm import tqdm

    frames = _check_frames(frames, len(conditions))
    if paste is not None and len(paste) != len(conditions):
        raise ValueError(f"render: paste-back has {len(paste)} frames, the conditions {len(conditions)}")
    if output_size is not None and output_size < 1:
        raise ValueError(f"render: output_size must be >= 1 pixels, got {output_size}")
    side = output_size or (paste.crop_size if paste is not None else head.generator.config.image_resolution)
    gen = head.generator.config
    started = time.perf_counter()
    render_seconds = 0.0
    done = 0
    log_every = max(1, len(frames) // 10)
    with contextlib.ExitStack() as stack:
        video = stack.enter_context(
            VideoWriter(out_mp4, fps=fps, crf=crf, audio=audio, audio_offset_s=audio_offset_s)
        )
        depth_video = (
            None if depth_mp4 is None else stack.enter_context(VideoWriter(depth_mp4, fps=fps, crf=crf))
        )
        batches = render_batches(
            head, conditions, cameras, frames, batch_size=batch_size, drop=drop, identity_only=identity_only
        )
        stack.callback(batches.close)  # restores the model's mode if rendering stops early
        # disable=None: the bar turns itself off when stderr is not a terminal (e.g. a Snakemake log).
        bar = stack.enter_context(
            tqdm(
                total=len(frames),
                desc=f"render {Path(out_mp4).name}",
                unit="frame",
                disable=None if progress else True,
            )
        )
        while True:
            tick = time.perf_counter()
            batch = next(batches, None)
            render_seconds += time.perf_counter() - tick
            if batch is None:
                break
            chunk, out = batch
            images = to_uint8(out["image"])
            opacity = out["weights_sum"][:, 0].numpy()
            for j, i in enumerate(chunk):
                crop = resize_square(images[j], side)
                video.write(crop if paste is None else paste.composite(int(i), crop, opacity[j]))
            if depth_video is not None:
                if depth_range is None:
                    depth_range = depth_range_of(
                        out["image_depth"], out["weights_sum"], (gen.ray_start, gen.ray_end)
                    )
                pictures = depth_to_uint8(
                    out["image_depth"], *depth_range, opacity=out["weights_sum"], colormap=depth_colormap
                )
                for picture in pictures:
                    depth_video.write(resize_square(picture, side))
            bar.update(len(chunk))
            if (done + len(chunk)) // log_every > done // log_every:
                log.info("%s: %d/%d frames rendered", out_mp4, done + len(chunk), len(frames))
            done += len(chunk)
    seconds = time.perf_counter() - started
    summary = {
        "frames": int(len(frames)),
        "fps": float(fps),
        "seconds": round(seconds, 3),
        "render_seconds": round(render_seconds, 3),
        "render_fps": round(len(frames) / max(render_seconds, 1e-9), 3),
        "size": list(video.size),  # type: ignore[arg-type]
        "video": str(out_mp4),
        "audio": None if audio is None else str(audio),
        "depth_video": None if depth_mp4 is None else str(depth_mp4),
        "depth_range": None if depth_mp4 is None else [float(v) for v in depth_range],  # type: ignore[union-attr]
    }
    log.info(
        "%s: %d frames %dx%d in %.1f s (model %.2f frames/s)",
        out_mp4, len(frames), *video.size, seconds, summary["render_fps"],  # type: ignore[misc]
    )  # fmt: skip
    return summary


# ------------------------------------------------------------------------------ workflow targets


@dataclasses.dataclass
class SubjectClip:
    """What the render and evaluation stages read of a trained subject: every frame's conditions, the
    prior's per-frame cameras (N, 25) and the held-out frames (the features' test split)."""

    conditions: FrameConditions
    cameras: np.ndarray
    test: np.ndarray

    @classmethod
    def from_files(
        cls, features_parquet: str | os.PathLike[str], prior_frames_parquet: str | os.PathLike[str]
    ) -> SubjectClip:
        import pandas as pd

        from talk3d_core.features import read_features

        table = read_features(features_parquet)
        cameras = tracked_cameras(np.stack(pd.read_parquet(prior_frames_parquet)["camera"].to_numpy()))
        if len(cameras) != len(table.frame):
            raise ValueError(
                f"{prior_frames_parquet}: {len(cameras)} cameras, {features_parquet} has {len(table.frame)} "
                "frames; re-run the prior"
            )
        test = np.flatnonzero(table.split == "test")
        if len(test) == 0:
            raise ValueError(f"{features_parquet}: no held-out (test) frames to render")
        return cls(FrameConditions.from_features(table), cameras, test)

    def view(self, name: str, camera: dict[str, Any]) -> np.ndarray:
        """Every frame's camera (N, 25), the held-out ones replaced by the novel view ``name``
        ("{yaw}_{pitch}"); camera: the camera stage's settings (focal, radius, pivot)."""
        cams = self.cameras.copy()
        cams[self.test] = camera_path(name, len(self.test), **_geometry(camera))
        return cams

    def drive(
        self, audio_features: np.ndarray, camera: dict[str, Any], drive_camera: str = "tracked"
    ) -> tuple[FrameConditions, np.ndarray, np.ndarray]:
        """A driving clip of M frames: its conditions (:func:`drive_conditions` over the held-out
        frames), cameras (M, 25) ("tracked": the held-out frames' in :func:`ping_pong` order, "fixed":
        frontal) and the source frame of each (M,), for paste-back."""
        cond = drive_conditions(self.conditions, audio_features, self.test)
        order = ping_pong(self.test, len(cond))
        tracked = self.cameras[order] if drive_camera == "tracked" else None
        return cond, camera_path(drive_camera, len(cond), tracked=tracked, **_geometry(camera)), order


def _geometry(camera: dict[str, Any]) -> dict[str, Any]:
    return {k: camera[k] for k in ("focal", "radius", "pivot")}


def render_target(
    head: TalkingHead,
    clip: SubjectClip,
    out_mp4: str | os.PathLike[str],
    *,
    camera: dict[str, Any],
    view: str | None = None,
    drive_audio_features: np.ndarray | None = None,
    audio: str | os.PathLike[str] | None = None,
    drive_camera: str = "tracked",
    paste: PasteBack | None = None,
    depth_mp4: str | os.PathLike[str] | None = None,
    fps: float = 25.0,
    **options: Any,
) -> dict[str, Any]:
    """One of the workflow's videos of a subject:

    - default: the held-out frames from their tracked cameras, ``audio`` (the clip's) from the first
      held-out frame on, optionally pasted back and with a depth video;
    - ``view`` "{yaw}_{pitch}": the same frames and audio seen from that novel view (no paste-back: a
      novel view has no source frame);
    - ``drive_audio_features`` (M, W, D): driven by other audio (``audio``: its file), with eye, pose and
      (``drive_camera`` "tracked") cameras of the held-out frames played back and forth, or the frontal
      camera ("fixed").

    camera: the camera stage's settings (focal, radius, pivot); ``options``: :func:`render_video`'s
    batch_size, output_size, crf, progress. Returns :func:`render_video`'s summary.
    """
    if drive_audio_features is not None:
        cond, cams, order = clip.drive(drive_audio_features, camera, drive_camera)
        return render_video(
            head, cond, cams, out_mp4, audio=audio, paste=None if paste is None else paste.select(order),
            fps=fps, **options,
        )  # fmt: skip
    cams = clip.cameras
    if view is not None:
        cams = clip.view(view, camera)
        paste = depth_mp4 = None
    return render_video(
        head, clip.conditions, cams, out_mp4, frames=clip.test, audio=audio,
        audio_offset_s=float(clip.test[0]) / fps, paste=paste, depth_mp4=depth_mp4, fps=fps, **options,
    )  # fmt: skip
