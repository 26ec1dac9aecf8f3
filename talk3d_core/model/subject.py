"""One subject's data as the models see it: per-frame cameras, the train/test split, the deltaplane
predictor's conditioning and, where a stage needs them, the crops and their region masks.

:func:`read_subject_data` assembles it from the stage outputs (features, the prior's frame cameras,
crops, masks); :func:`load_subject` reads the images alone, for the prior, which runs before the
prior's cameras exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from talk3d_core.face.regions import BACKGROUND_LABEL, FACE_LABELS, MOUTH_LABELS
from talk3d_core.model.head_proxy import HeadProxy

if TYPE_CHECKING:
    from talk3d_core.features import FeatureTable


@dataclass
class FrameConditions:
    """The per-frame conditioning inputs of the deltaplane predictor (N frames).

    audio (N, W, D) feature windows; eye (N,) AU45 scale; rotation (N, 3) yaw/pitch/roll degrees;
    ldm (N, 6) landmark token in [-1, 1]; opening (N,) the footage's inner-lip opening, px of a 256
    crop (the opening token's training value; None for a driving clip). A driving clip has its own
    audio and borrows the rest.
    """

    audio: np.ndarray
    eye: np.ndarray
    rotation: np.ndarray
    ldm: np.ndarray
    opening: np.ndarray | None = None

    @classmethod
    def from_features(cls, table: FeatureTable) -> FrameConditions:
        if table.kind != "subject":
            raise ValueError("FrameConditions.from_features needs a subject features table")
        return cls(table.audio, table.eye, table.rotation, table.ldm, table.opening)

    def __len__(self) -> int:
        return len(self.audio)

    def gather(self, frames: Sequence[int] | np.ndarray, audio_frames: int, device: torch.device) -> dict:
        """Conditioning of ``frames`` as the predictor takes it: "audio" (B, S, W, D), the windows of
        the S = ``audio_frames`` frames around each frame (the frame at S // 2, clamped at the clip's
        ends), "eye" (B,), "rotation" (B, 3), "ldm" (B, 6), and "opening" (B,) when known."""
        frames = np.asarray(frames, dtype=np.int64)
        offsets = np.arange(audio_frames) - audio_frames // 2
        around = np.clip(frames[:, None] + offsets[None], 0, len(self) - 1)

        def tensor(x: np.ndarray) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)

        return {
            "audio": tensor(self.audio[around]),
            "eye": tensor(self.eye[frames]),
            "rotation": tensor(self.rotation[frames]),
            "ldm": tensor(self.ldm[frames]),
        } | ({} if self.opening is None else {"opening": tensor(self.opening[frames])})


@dataclass
class SubjectData:
    """One subject's frames, indexed 0..N-1.

    cameras (N, 25) float EG3D labels; train (N,) bool, the rest held out; conditions: the deltaplane
    predictor's inputs (None for the prior, which needs none). Images, None where not loaded: crops
    (N, 3, S, S) uint8 at the generator's output size (kept as bytes: 0.75 MB a frame at 512,
    converted per batch by :func:`talk3d_core.util.images.to_unit`); face (N, 1, S, S) bool
    face-region mask; person (N, 1, S, S) bool foreground (every label but background) when the
    background is painted out; mouth (N, 1, S, S) bool lips and mouth; mouth_patch (N, 3, Z, Z) uint8
    and mouth_box (N, 3) the mouth box at the crop's full resolution, for the zoomed mouth loss;
    face_box (N, 4) float32 the lip-sync expert's face box, x1, y1, x2, y2 as fractions of the crop
    side (:func:`face_boxes`). proxy: the head proxy placed under these cameras (None: no geometry
    prior).
    """

    cameras: Tensor
    train: np.ndarray
    conditions: FrameConditions | None = None
    crops: Tensor | None = None
    face: Tensor | None = None
    person: Tensor | None = None
    proxy: HeadProxy | None = None
    mouth: Tensor | None = None
    mouth_patch: Tensor | None = None
    mouth_box: Tensor | None = None
    face_box: Tensor | None = None

    @property
    def test(self) -> np.ndarray:
        """Indices of the held-out frames."""
        return np.flatnonzero(~self.train)

    def fingerprint(self) -> str:
        """sha256 of what the prior fits (images, cameras, split, person masks, proxy), so a checkpoint
        is only resumed on the data it was fitted to."""
        digest = hashlib.sha256()
        for array in (self.crops, self.face, self.cameras, torch.as_tensor(self.train), self.person):
            if array is not None:
                digest.update(array.contiguous().numpy().tobytes())
        if self.proxy is not None:
            digest.update(json.dumps(self.proxy.as_dict(), sort_keys=True).encode())
        return digest.hexdigest()[:16]


# Frames held in RAM up to this many bytes; a larger clip's crops and masks go to memory-mapped files
# (unlinked at once, so the OS pages them in and out and nothing is left behind): a 5-minute clip at
# 512 px is about 13 GB. $TALK3D_FRAMES_IN_RAM_BYTES overrides it; the files go to $TMPDIR.
FRAMES_IN_RAM_BYTES = 2 * 2**30
_IN_RAM_ENV = "TALK3D_FRAMES_IN_RAM_BYTES"


def frame_arrays(n: int, size: int, with_person: bool) -> dict[str, np.ndarray]:
    """Empty per-frame arrays for ``n`` frames of ``size``^2: crops (N, 3, S, S) uint8 and the face,
    person (when ``with_person``) and mouth masks (N, 1, S, S) bool, in RAM or memory-mapped (see
    :data:`FRAMES_IN_RAM_BYTES`)."""
    shapes = {"crops": ((n, 3, size, size), np.uint8), "face": ((n, 1, size, size), np.bool_)}
    if with_person:
        shapes["person"] = ((n, 1, size, size), np.bool_)
    shapes["mouth"] = ((n, 1, size, size), np.bool_)
    total = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes.values())
    if total <= int(os.environ.get(_IN_RAM_ENV, FRAMES_IN_RAM_BYTES)):
        return {name: np.empty(shape, dtype) for name, (shape, dtype) in shapes.items()}
    arrays = {}
    with tempfile.TemporaryDirectory(prefix="talk3d-frames-") as folder:
        for name, (shape, dtype) in shapes.items():
            arrays[name] = np.lib.format.open_memmap(os.path.join(folder, f"{name}.npy"), "w+", dtype, shape)
    return arrays  # the files are gone; their pages live as long as the arrays


def load_subject(
    crop_paths: Sequence[str | os.PathLike[str]],
    mask_paths: Sequence[str | os.PathLike[str]],
    cameras: np.ndarray,
    train: np.ndarray,
    size: int,
    *,
    background: str = "black",
    proxy: HeadProxy | None = None,
) -> SubjectData:
    """Read crops and masks, resized to ``size`` (area for images, nearest for labels); a long clip's
    arrays are memory-mapped rather than held in RAM (:func:`frame_arrays`).

    ``background="black"`` paints the background label black, what the renderer shows where a ray
    meets no density, so the tri-planes hold the person and not the studio behind them, and keeps
    the person mask for the opacity and empty-space terms; ``"keep"`` fits the crops as they are
    (the studio becomes part of the volume, so only the depth and solid-core terms apply).
    ``proxy`` (from :func:`talk3d_core.model.head_proxy.fit_head_proxy`) enables the geometry prior.
    """
    if background not in ("keep", "black"):
        raise ValueError(f"background must be 'keep' or 'black', got {background!r}")
    if not (len(crop_paths) == len(mask_paths) == len(cameras) == len(train)):
        raise ValueError(
            f"subject inputs disagree: {len(crop_paths)} crops, {len(mask_paths)} masks, "
            f"{len(cameras)} cameras, {len(train)} split flags"
        )
    arrays = frame_arrays(len(crop_paths), size, with_person=background == "black")
    for i, (crop_path, mask_path) in enumerate(zip(crop_paths, mask_paths, strict=True)):
        with Image.open(crop_path) as im:
            rgb = np.array(im.convert("RGB").resize((size, size), Image.Resampling.BOX))
        with Image.open(mask_path) as im:
            labels = np.asarray(im.resize((size, size), Image.Resampling.NEAREST))
        if background == "black":
            rgb[labels == BACKGROUND_LABEL] = 0
            arrays["person"][i, 0] = labels != BACKGROUND_LABEL
        arrays["crops"][i] = rgb.transpose(2, 0, 1)
        arrays["face"][i, 0] = np.isin(labels, FACE_LABELS)
        arrays["mouth"][i, 0] = np.isin(labels, MOUTH_LABELS)
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    return SubjectData(
        cameras=torch.as_tensor(np.asarray(cameras, np.float32)),
        train=np.asarray(train, bool),
        crops=tensors["crops"],
        face=tensors["face"],
        person=tensors.get("person"),
        proxy=proxy,
        mouth=tensors["mouth"],
    )


def read_subject_data(
    features: FeatureTable,
    prior_frames: str | os.PathLike[str],
    *,
    crops: str | os.PathLike[str] | None = None,
    masks: str | os.PathLike[str] | None = None,
    size: int | None = None,
    background: str = "black",
    mouth_zoom: int = 0,
    face_box: np.ndarray | None = None,
) -> SubjectData:
    """A trained subject's data from the stage outputs: the features stage's split and conditioning
    (its table, :func:`talk3d_core.features.read_features`), the prior's frame cameras
    (``prior/frames.parquet``: tracked, or refined by the pretrained prior) and, with ``crops`` and
    ``masks`` folders, the images resized to ``size`` with the background as the prior saw it.
    ``mouth_zoom`` > 0 also reads each crop's mouth box at the crop's full resolution (``mouth_patch``,
    ``mouth_box``; see :func:`mouth_patches`); ``face_box`` (N, 4): the lip-sync expert's face box of
    every frame (:func:`face_boxes` of the crop table's landmarks)."""
    import pandas as pd

    from talk3d_core.util.io import list_frames

    table = features
    frames = pd.read_parquet(prior_frames)
    n = len(table.frame)
    if len(frames) != n or not np.array_equal(frames["frame"].to_numpy(), table.frame):
        raise ValueError(f"{prior_frames}: {len(frames)} frames, the features have {n}; re-run the prior")
    if not np.array_equal(frames["split"].to_numpy(str), table.split.astype(str)):
        raise ValueError(f"{prior_frames}: its train/test split is not the features'; re-run the prior")
    cameras = np.stack(frames["camera"].to_numpy()).astype(np.float32)
    train = table.split == "train"
    conditions = FrameConditions.from_features(table)
    if crops is None:
        return SubjectData(torch.as_tensor(cameras), np.asarray(train, bool), conditions)
    if masks is None or size is None:
        raise ValueError("read_subject_data: crops need masks and a size")
    crop_paths, mask_paths = list_frames(crops), list_frames(masks)
    data = load_subject(crop_paths, mask_paths, cameras, train, size, background=background)
    data.conditions = conditions
    if mouth_zoom:
        data.mouth_patch, data.mouth_box = mouth_patches(crop_paths, mask_paths, mouth_zoom, background)
    if face_box is not None:
        if face_box.shape != (n, 4):
            raise ValueError(f"read_subject_data: face boxes of shape {face_box.shape}, expected ({n}, 4)")
        data.face_box = torch.as_tensor(face_box, dtype=torch.float32)
    return data


def model_image_format(model_pt: str | os.PathLike[str]) -> tuple[int, str]:
    """(side in pixels, background "black" or "keep") of the images a model renders, as
    :func:`read_subject_data` needs them to show the crops as the model saw them; read from a prior's
    ``generator.pt`` or a ``deltaplane.pt`` (memory-mapped: the weights are not loaded)."""
    saved = torch.load(model_pt, map_location="cpu", weights_only=True, mmap=True)
    config = saved.get("config", saved.get("generator_config")) if isinstance(saved, dict) else None
    training = saved.get("training") if isinstance(saved, dict) else None
    if not isinstance(config, dict) or not isinstance(training, dict) or "background" not in training:
        raise ValueError(
            f"{model_pt}: no generator config and training record; not a prior generator.pt or a "
            "deltaplane.pt, re-run the prior"
        )
    return int(config["image_resolution"]), str(training["background"])


def face_boxes(lm68: np.ndarray, size: int) -> np.ndarray:
    """The lip-sync expert's face box of each crop: the bounding box of its 68 landmarks (jaw line
    and brows: cheek to cheek, brows to chin), clipped to the crop.

    Wav2Lip trained its expert, and Talk3D feeds it, on S3FD detector boxes, which span about the same
    region (the brows to the chin; no padding, no smoothing); the landmarks every preset already has
    give that box without running a second detector. lm68 (N, 68, 2) in pixels of a ``size``^2 crop.
    Returns (N, 4) float32 x1, y1, x2, y2 as fractions of the crop side (scaled to any resolution by
    :func:`face_box_pixels`).
    """
    lm68 = np.asarray(lm68, dtype=np.float64)
    if lm68.ndim != 3 or lm68.shape[1:] != (68, 2) or not np.isfinite(lm68).all():
        raise ValueError(f"face_boxes: needs finite (N, 68, 2) landmarks, got shape {lm68.shape}")
    box = np.concatenate([lm68.min(axis=1), lm68.max(axis=1)], axis=1)
    return (np.clip(box, 0, size) / size).astype(np.float32)


def face_box_pixels(boxes: Tensor, size: int) -> Tensor:
    """Boxes (..., 4) of x1, y1, x2, y2 fractions -> int64 pixels of a ``size``^2 image, rounded down
    as Talk3D scales its 512 px boxes to the 128 px render (integer division), at least 1 px wide
    and high."""
    x1, y1, x2, y2 = (boxes.double() * size).floor().long().unbind(-1)
    x1, y1 = x1.clamp(0, size - 1), y1.clamp(0, size - 1)
    x2, y2 = torch.maximum(x2.clamp(max=size), x1 + 1), torch.maximum(y2.clamp(max=size), y1 + 1)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def window_starts(train: np.ndarray, length: int) -> np.ndarray:
    """First frames (ascending) of the windows of ``length`` consecutive frames that are all
    training frames (``train`` (N,) bool)."""
    train = np.asarray(train, bool)
    if len(train) < length:
        return np.zeros(0, np.int64)
    inside = np.lib.stride_tricks.sliding_window_view(train, length).all(axis=1)
    return np.flatnonzero(inside)


def window_batch(starts: np.ndarray, step: int, windows: int, seed: int) -> np.ndarray:
    """The ``windows`` window starts of (0-based) ``step``: every epoch walks a fresh permutation of
    ``starts`` (seeded by ``seed`` and the epoch), ``windows`` at a time, the remainder dropped.
    An epoch is ``len(starts) // windows`` steps. A function of (seed, step) only, so a resumed run
    sees the batches an uninterrupted one sees."""
    per_epoch = len(starts) // windows
    if per_epoch < 1:
        raise ValueError(f"{len(starts)} windows of training frames, a step takes {windows}")
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(starts))
    return np.asarray(starts)[order[index * windows : (index + 1) * windows]]


def mouth_boxes(mouth: Tensor, pad: float = 0.3, min_size: int = 8) -> list[tuple[int, int, int]]:
    """Square boxes (top, left, side) in pixels around each mask's mouth (B, 1, S, S), ``pad`` of the
    side added around; the image centre's lower half where a mask has no mouth pixel."""
    import math

    size = mouth.shape[-1]
    boxes = []
    for m in mouth[:, 0].cpu().numpy():
        rows, cols = np.nonzero(m)
        if len(rows) == 0:
            boxes.append((size // 2, size // 4, size // 2))
            continue
        side = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        side = int(min(size, max(min_size, math.ceil(side * (1 + 2 * pad)))))
        cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
        top = int(np.clip(round(cy - side / 2), 0, size - side))
        left = int(np.clip(round(cx - side / 2), 0, size - side))
        boxes.append((top, left, side))
    return boxes


def mouth_patches(
    crop_paths: Sequence[str | os.PathLike[str]],
    mask_paths: Sequence[str | os.PathLike[str]],
    zoom: int,
    background: str = "black",
) -> tuple[Tensor, Tensor]:
    """The mouth box of each crop at the crop's own resolution, resampled to ``zoom``^2 pixels.

    Returns patches (N, 3, zoom, zoom) uint8 and boxes (N, 3) float: top, left and side as fractions
    of the crop side (the box of :func:`mouth_boxes`), for :func:`talk3d_core.train.zoom_cameras`.
    """
    patches, boxes = [], []
    for crop_path, mask_path in zip(crop_paths, mask_paths, strict=True):
        with Image.open(crop_path) as im:
            rgb = np.array(im.convert("RGB"))
        with Image.open(mask_path) as im:
            labels = np.asarray(im.resize(rgb.shape[1::-1], Image.Resampling.NEAREST))
        if background == "black":
            rgb[labels == BACKGROUND_LABEL] = 0
        mouth = torch.from_numpy(np.isin(labels, MOUTH_LABELS))[None, None]
        ((top, left, side),) = mouth_boxes(mouth)
        patch = Image.fromarray(rgb[top : top + side, left : left + side])
        patches.append(np.asarray(patch.resize((zoom, zoom), Image.Resampling.BOX)))
        boxes.append(np.array([top, left, side], np.float32) / rgb.shape[0])
    patch_tensor = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous()
    return patch_tensor, torch.from_numpy(np.stack(boxes))
