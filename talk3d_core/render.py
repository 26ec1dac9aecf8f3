"""Stage 9, render: a trained talking head + conditions + a camera path -> an H.264/AAC ``.mp4``.

Pieces, each usable alone:

- Camera paths (EG3D 25-number labels): ``tracked`` (the prior's per-frame cameras), ``fixed`` (the
  frontal camera) and novel views (:func:`view_cameras`, the one place a view's camera is made),
  named ``"{yaw}_{pitch}"`` for the workflow's ``views/{yaw}_{pitch}.mp4`` targets
  (:func:`view_name`, :func:`parse_view`; the grid is the config's ``render.views``, its angles read
  in the convention ``render.view_convention``: head angles, or Talk3D's LookAt offsets, see
  :func:`talk3d_core.camera.view_head_angles`).
- :func:`drive_conditions`: a driving clip's conditions, its own audio with eye/rotation/landmark
  tokens borrowed from subject frames played back and forth (:func:`ping_pong`).
- :class:`PasteBack`: composites each render into its full source frame (crop.parquet affines,
  optional region masks).
- :func:`render_video`: renders in batches (eval mode, no ray jitter), resizes, pastes back,
  and writes the video (:class:`talk3d_core.util.media.VideoWriter`) and, optionally, a depth video
  of the same length and the renders themselves, losslessly at the model's resolution (what the
  evaluate stage scores, :func:`talk3d_core.util.media.read_video` reads them back exactly).

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
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from talk3d_core.camera import eg3d_camera, view_head_angles
from talk3d_core.crop import paste_back, read_crop_table
from talk3d_core.face.regions import LABELS
from talk3d_core.masks import read_mask
from talk3d_core.model.subject import FrameConditions, SubjectData
from talk3d_core.model.talking_head import TalkingHead
from talk3d_core.report.depth import depth_to_uint8
from talk3d_core.util.images import to_uint8
from talk3d_core.util.io import list_frames, read_rgb
from talk3d_core.util.media import VideoWriter

log = logging.getLogger(__name__)

MAX_VIEW_YAW = 90.0  # beyond it the camera sees the back of a head it never saw
MAX_VIEW_PITCH = 89.0  # look_at_cam2world's limit (the camera's up vector degenerates at the poles)
# x264 speed preset of the lossless renders: as small as "medium" within ~10% at 512 px, twice as
# fast, so encoding keeps up with a GPU (docs/decisions.md#stored-renders).
LOSSLESS_PRESET = "veryfast"

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
    yaw_deg: float,
    pitch_deg: float,
    n: int,
    *,
    focal: float,
    radius: float,
    pivot: Sequence[float],
    convention: str = "head",
) -> np.ndarray:
    """(n, 25) float32: the canonical (frontal) camera turned to the novel view ``yaw_deg``,
    ``pitch_deg`` (degrees), constant over the clip. ``convention`` "head": the head angles seen
    (:mod:`talk3d_core.camera` conventions: yaw > 0 shows the subject's left cheek, pitch > 0 the head
    from below); "lookat": Talk3D's EG3D LookAtPoseSampler offsets (:func:`view_head_angles`).
    ``focal`` in image widths, ``radius`` and ``pivot`` (3,) in world units, as in the camera stage's
    config."""
    yaw, pitch = float(yaw_deg), float(pitch_deg)
    _check_view(yaw, pitch)
    n = _check_count(n)
    yaw, pitch = view_head_angles(yaw, pitch, convention, radius=radius, pivot=pivot)
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
    view_convention: str = "head",
) -> np.ndarray:
    """(n, 25) float32 cameras of a named path: ``"tracked"`` (``tracked`` (n, 25) as given),
    ``"fixed"`` (frontal) or a view name ``"{yaw}_{pitch}"`` (:func:`parse_view`) whose angles are
    read in ``view_convention`` (:func:`view_cameras`)."""
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
    return view_cameras(yaw, pitch, n, focal=focal, radius=radius, pivot=pivot, convention=view_convention)


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
    renders: str | os.PathLike[str] | None = None,
    crf: int = 18,
    drop: Collection[str] = (),
    identity_only: bool = False,
    progress: bool = True,
    on_frames: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Render clip ``frames`` (default all N) of ``conditions`` from ``cameras`` (N, 25) into
    ``out_mp4`` (H.264, ``fps``), with ``audio`` muxed from ``audio_offset_s`` seconds in.

    Each render (S x S, the generator's image resolution) is resized to ``output_size`` pixels
    (default: S, or the crop size with ``paste``; Lanczos up, area down). With ``paste`` (N entries,
    like ``conditions``) it is composited into its full source frame, so the video has the source
    frames' size. ``depth_mp4``: the depth video of the crops (not pasted back), same frames and
    length, at the crop side above, near bright (see :func:`depth_to_uint8`), over ``depth_range``
    (world units; default: from the first batch's solid pixels, then fixed, so the video does not
    flicker). ``renders``: a lossless video (``.mkv``, :class:`VideoWriter` ``lossless``) of the
    renders as the model made them (S x S uint8, before resizing and paste-back), same frames.
    Outputs are atomic: on any error no file is left behind. ``on_frames(done, total)`` is called
    after each batch (a progress bar elsewhere, e.g. the web page's).

    Returns {"frames", "fps", "seconds" (wall time), "render_seconds" (the model alone),
    "render_fps", "size" [width, height], "video", "audio", "depth_video", "depth_range", "renders"}.
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
        raw = None
        if renders is not None:
            raw = stack.enter_context(VideoWriter(renders, fps=fps, lossless=True, preset=LOSSLESS_PRESET))
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
                if raw is not None:
                    raw.write(images[j])
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
            if on_frames is not None:
                on_frames(done + len(chunk), len(frames))
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
        "renders": None if renders is None else str(renders),
    }
    log.info(
        "%s: %d frames %dx%d in %.1f s (model %.2f frames/s)",
        out_mp4, len(frames), *video.size, seconds, summary["render_fps"],  # type: ignore[misc]
    )  # fmt: skip
    return summary


# ------------------------------------------------------------------------------ workflow targets

#: The three render rules: the held-out frames (video), driven by other audio (drive), a novel view.
RENDER_MODES = ("video", "drive", "view")


def _geometry(head: TalkingHead) -> dict[str, Any]:
    """The camera geometry (focal, radius, pivot) the model's prior was trained with."""
    camera = head.training_record["camera"]
    return {k: camera[k] for k in ("focal", "radius", "pivot")}


def _held_out(data: SubjectData) -> np.ndarray:
    test = data.test
    if len(test) == 0:
        raise ValueError("the subject has no held-out (test) frames to render")
    return test


def novel_view_cameras(
    head: TalkingHead, data: SubjectData, name: str, convention: str = "head"
) -> np.ndarray:
    """Every frame's camera (N, 25), the held-out ones replaced by the novel view ``name``
    ("{yaw}_{pitch}", read in ``convention``, :func:`view_cameras`) of the model's camera geometry."""
    test = _held_out(data)
    cams = tracked_cameras(data.cameras).copy()  # a view of the tensor's memory otherwise
    cams[test] = camera_path(name, len(test), view_convention=convention, **_geometry(head))
    return cams


def drive_clip(
    head: TalkingHead, data: SubjectData, audio_features: np.ndarray, drive_camera: str = "tracked"
) -> tuple[FrameConditions, np.ndarray, np.ndarray]:
    """A driving clip of M frames: its conditions (:func:`drive_conditions` over the held-out frames),
    cameras (M, 25) ("tracked": the held-out frames' in :func:`ping_pong` order, "fixed": frontal)
    and the source frame of each (M,), for paste-back."""
    test = _held_out(data)
    cond = drive_conditions(data.conditions, audio_features, test)
    order = ping_pong(test, len(cond))
    tracked = tracked_cameras(data.cameras)[order] if drive_camera == "tracked" else None
    return cond, camera_path(drive_camera, len(cond), tracked=tracked, **_geometry(head)), order


def render_target(
    head: TalkingHead,
    data: SubjectData,
    out_mp4: str | os.PathLike[str],
    *,
    mode: str = "video",
    view: str | None = None,
    view_convention: str = "head",
    drive_audio_features: np.ndarray | None = None,
    audio: str | os.PathLike[str] | None = None,
    drive_camera: str = "tracked",
    paste: PasteBack | None = None,
    depth_mp4: str | os.PathLike[str] | None = None,
    fps: float = 25.0,
    **options: Any,
) -> dict[str, Any]:
    """One of the workflow's videos of a subject (``data``: its cameras, split and conditions):

    - mode "video": the held-out frames from their tracked cameras, ``audio`` (the clip's) from the
      first held-out frame on, optionally pasted back and with a depth video;
    - mode "view" (``view`` "{yaw}_{pitch}", read in ``view_convention``, :func:`view_cameras`): the
      same frames and audio seen from that novel view (no paste-back: a novel view has no source
      frame);
    - mode "drive" (``drive_audio_features`` (M, W, D)): driven by other audio (``audio``: its file),
      with eye, pose and (``drive_camera`` "tracked") cameras of the held-out frames played back and
      forth, or the frontal camera ("fixed").

    ``options``: :func:`render_video`'s batch_size, output_size, crf, renders, progress, on_frames.
    Returns :func:`render_video`'s summary.
    """
    if mode not in RENDER_MODES:
        raise ValueError(f"render mode must be one of {', '.join(RENDER_MODES)}, got {mode!r}")
    if mode == "drive":
        if drive_audio_features is None:
            raise ValueError("render mode 'drive' needs the driving audio's features")
        cond, cams, order = drive_clip(head, data, drive_audio_features, drive_camera)
        return render_video(
            head, cond, cams, out_mp4, audio=audio, paste=None if paste is None else paste.select(order),
            fps=fps, **options,
        )  # fmt: skip
    test = _held_out(data)
    cams = tracked_cameras(data.cameras)
    if mode == "view":
        if view is None:
            raise ValueError("render mode 'view' needs a view name '{yaw}_{pitch}'")
        cams = novel_view_cameras(head, data, view, view_convention)
        paste = depth_mp4 = None
    return render_video(
        head, data.conditions, cams, out_mp4, frames=test, audio=audio,
        audio_offset_s=float(test[0]) / fps, paste=paste, depth_mp4=depth_mp4, fps=fps, **options,
    )  # fmt: skip


def render_stage(
    *,
    mode: str,
    model_pt: str | os.PathLike[str],
    features_parquet: str | os.PathLike[str],
    prior_frames: str | os.PathLike[str],
    audio: str | os.PathLike[str],
    settings: dict[str, Any],
    fps: float,
    video_mp4: str | os.PathLike[str],
    depth_mp4: str | os.PathLike[str] | None = None,
    renders_mkv: str | os.PathLike[str] | None = None,
    view: str | None = None,
    drive_features: str | os.PathLike[str] | None = None,
    frames: str | os.PathLike[str] | None = None,
    crop_parquet: str | os.PathLike[str] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Rules render_video, render_drive, render_view (``mode`` "video", "drive", "view"): one video of
    a trained subject, and its renders losslessly at the model's resolution (``renders_mkv``, what the
    evaluate stage scores). settings: the validated ``render`` config section; ``frames`` and
    ``crop_parquet`` (full source frames and their crop affines) enable paste-back where the settings
    ask for it and the mode has source frames. Returns :func:`render_video`'s summary."""
    from talk3d_core.features import read_features
    from talk3d_core.model.subject import read_subject_data
    from talk3d_core.model.talking_head import load_talking_head
    from talk3d_core.util.runs import pick_device

    head = load_talking_head(model_pt, pick_device(device))
    data = read_subject_data(read_features(features_parquet), prior_frames)
    paste = None
    if settings["paste_back"] and mode != "view" and frames is not None and crop_parquet is not None:
        paste = PasteBack.from_files(
            frames, crop_parquet, feather_px=settings["feather_px"],
            # a model drawn on black has its own opacity as its region (else the black square is pasted)
            use_opacity=head.training_record["background"] == "black",
        )  # fmt: skip
    drive = read_features(drive_features, kind="drive").audio if drive_features is not None else None
    summary = render_target(
        head, data, video_mp4, mode=mode, view=view, view_convention=settings["view_convention"],
        drive_audio_features=drive, audio=audio, drive_camera=settings["drive_camera"], paste=paste,
        depth_mp4=depth_mp4, renders=renders_mkv, fps=fps, batch_size=settings["batch_size"],
        output_size=settings["output_size"], crf=settings["crf"], progress=False,
    )  # fmt: skip
    log.info(
        "%s: %d frames at %dx%d, the model renders %.1f frames/s (%.1f s in all)",
        summary["video"], summary["frames"], *summary["size"], summary["render_fps"], summary["seconds"],
    )  # fmt: skip
    return summary
