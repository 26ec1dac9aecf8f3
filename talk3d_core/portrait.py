"""A trained portrait re-driven and re-viewed straight from its files, without the workflow.

What the ``talk3d`` command and its web page use: :meth:`Portrait.open` loads a subject's trained
model and conditions once from ``results/<subject>/`` (read only), then :meth:`Portrait.drive`
renders it driven by any audio file the ingest accepts (features with the subject's recorded backend
and statistics), :meth:`Portrait.view` renders the held-out frames from a novel view, and
:meth:`Portrait.frame` one frame from any yaw/pitch (head angles, or Talk3D's LookAt offsets).
Nothing is retrained and nothing under ``results/`` is written: intermediate files go to a temporary
folder, videos to the path given.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talk3d_core.features import drive_features, read_features, read_features_meta
from talk3d_core.ingest import ingest_audio
from talk3d_core.model.subject import SubjectData, read_subject_data
from talk3d_core.model.talking_head import TalkingHead, load_talking_head
from talk3d_core.render import (
    PasteBack,
    drive_clip,
    render_batches,
    render_target,
    resize_square,
    tracked_cameras,
    view_cameras,
    view_name,
)
from talk3d_core.util.images import to_uint8
from talk3d_core.util.runs import pick_device

#: The ways a driven portrait's camera moves: the held-out frames' head motion, or frontal and still.
DRIVE_CAMERAS = ("tracked", "fixed")


def _check_camera(camera: str) -> None:
    if camera not in DRIVE_CAMERAS:
        raise ValueError(f"camera must be one of {', '.join(DRIVE_CAMERAS)}, got {camera!r}")


class NotTrainedError(FileNotFoundError):
    """A subject whose trained files are not there (yet); the message names the target to make."""


@dataclass(frozen=True)
class PortraitFiles:
    """The files of a trained subject under ``results/<name>/`` that rendering reads."""

    name: str
    model: Path  # train/deltaplane.pt
    prior_frames: Path  # prior/frames.parquet
    features: Path  # features.parquet
    audio: Path  # audio.wav, the clip's own audio
    frames: Path  # frames/, full source frames (paste-back)
    crop_table: Path  # crop.parquet (paste-back)

    @classmethod
    def of(cls, name: str, results: str | os.PathLike[str] = "results") -> PortraitFiles:
        base = Path(results) / name
        return cls(
            name=name,
            model=base / "train" / "deltaplane.pt",
            prior_frames=base / "prior" / "frames.parquet",
            features=base / "features.parquet",
            audio=base / "audio.wav",
            frames=base / "frames",
            crop_table=base / "crop.parquet",
        )

    def check(self) -> None:
        """Raise :class:`NotTrainedError` naming the missing files and the Snakemake target."""
        missing = [
            str(p) for p in (self.model, self.prior_frames, self.features, self.audio) if not p.exists()
        ]
        if missing:
            raise NotTrainedError(
                f"subject '{self.name}' is not trained yet ({', '.join(missing)} missing); train it with "
                f"`talk3d run {self.name}` or `snakemake --cores all {self.model}`"
            )


class Portrait:
    """One trained subject, loaded once: its talking head and its clip's conditions and cameras."""

    def __init__(self, files: PortraitFiles, head: TalkingHead, data: SubjectData, fps: float) -> None:
        self.files = files
        self.head = head
        self.data = data
        self.fps = fps

    @classmethod
    def open(
        cls, name: str, results: str | os.PathLike[str] = "results", device: str | None = None
    ) -> Portrait:
        """Load ``results/<name>/``'s trained model on ``device`` (default: CUDA when present)."""
        files = PortraitFiles.of(name, results)
        files.check()
        head = load_talking_head(files.model, pick_device(device))
        data = read_subject_data(read_features(files.features), files.prior_frames)
        fps = float(read_features_meta(files.features)["fps"])
        return cls(files, head, data, fps)

    @property
    def size(self) -> int:
        """Side of the model's renders in pixels."""
        return int(self.head.generator.config.image_resolution)

    @property
    def held_out(self) -> np.ndarray:
        """Clip frames (K,) a novel view or a driven clip borrows eyes, pose and cameras from."""
        return self.data.test

    def _geometry(self) -> dict[str, Any]:
        camera = self.head.training_record["camera"]
        return {k: camera[k] for k in ("focal", "radius", "pivot")}

    def _paste(self) -> PasteBack:
        # A model drawn on black has its own opacity as its region (else the black square is pasted).
        black = self.head.training_record["background"] == "black"
        return PasteBack.from_files(self.files.frames, self.files.crop_table, use_opacity=black)

    @contextlib.contextmanager
    def _ingested(self, audio: str | os.PathLike[str], audio_rate: int) -> Iterator[tuple[Path, np.ndarray]]:
        """(16 kHz mono WAV of ``audio`` in a temporary folder, its features (M, W, D)) for the block."""
        with tempfile.TemporaryDirectory(prefix="talk3d_drive_") as tmp:
            wav = Path(tmp) / "audio.wav"
            ingest_audio(audio, wav, audio_rate=audio_rate)
            table = Path(tmp) / "features.parquet"
            drive_features(wav, self.files.features, table)
            yield wav, read_features(table, kind="drive").audio

    def drive_features(self, audio: str | os.PathLike[str], audio_rate: int = 16000) -> np.ndarray:
        """Audio features (M, W, D) of ``audio`` (any file the ingest accepts) with the subject's backend
        and statistics, one window per 1/fps s; a file that is not audio raises ValueError naming it."""
        with self._ingested(audio, audio_rate) as (_, features):
            return features

    def drive(
        self,
        audio: str | os.PathLike[str],
        out_mp4: str | os.PathLike[str],
        *,
        camera: str = "tracked",
        paste_back: bool = False,
        size: int | None = None,
        audio_rate: int = 16000,
        batch_size: int = 8,
        crf: int = 18,
        progress: bool = True,
        on_frames: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """The portrait driven by ``audio`` (any file the ingest accepts) into ``out_mp4`` (H.264 + AAC),
        one frame per 1/fps s of audio. ``camera``: one of :data:`DRIVE_CAMERAS`; ``size``: output
        side in pixels (default: the render's, or the crop's with ``paste_back``); ``on_frames(done,
        total)`` after each batch. Returns :func:`talk3d_core.render.render_video`'s summary."""
        _check_camera(camera)
        with self._ingested(audio, audio_rate) as (wav, features):
            return render_target(
                self.head, self.data, out_mp4, mode="drive", drive_audio_features=features, audio=wav,
                drive_camera=camera, paste=self._paste() if paste_back else None, fps=self.fps,
                batch_size=batch_size, output_size=size, crf=crf, progress=progress, on_frames=on_frames,
            )  # fmt: skip

    def drive_frames(
        self, features: np.ndarray, *, camera: str = "tracked", size: int | None = None, batch_size: int = 8
    ) -> Iterator[np.ndarray]:
        """Frames (S, S, 3) uint8 of the portrait driven by ``features`` (:meth:`drive_features`), yielded
        as they are rendered: the first alone (shown soonest), the rest ``batch_size`` at a time."""
        _check_camera(camera)
        conditions, cameras, _ = drive_clip(self.head, self.data, features, camera)
        order = np.arange(len(conditions))
        for frames, batch in ((order[:1], 1), (order[1:], batch_size)):
            for _, out in render_batches(self.head, conditions, cameras, frames, batch_size=batch):
                for image in to_uint8(out["image"]):
                    yield resize_square(image, size or self.size)

    def view(
        self,
        yaw: float,
        pitch: float,
        out_mp4: str | os.PathLike[str],
        *,
        convention: str = "head",
        size: int | None = None,
        batch_size: int = 8,
        crf: int = 18,
        progress: bool = True,
        on_frames: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """The held-out frames with their audio, seen from yaw/pitch (degrees; head angles, or with
        ``convention`` "lookat" Talk3D's LookAt offsets, :func:`talk3d_core.render.view_cameras`),
        into ``out_mp4``."""
        return render_target(
            self.head, self.data, out_mp4, mode="view", view=view_name(yaw, pitch),
            view_convention=convention, audio=self.files.audio, fps=self.fps, batch_size=batch_size,
            output_size=size, crf=crf, progress=progress, on_frames=on_frames,
        )  # fmt: skip

    def frame(
        self,
        yaw: float,
        pitch: float,
        index: int | None = None,
        *,
        convention: str = "head",
        size: int | None = None,
    ) -> np.ndarray:
        """Clip frame ``index`` (default: the first held-out one) seen from yaw/pitch (degrees, read in
        ``convention`` as :meth:`view`): (S, S, 3) uint8, S = ``size`` or the render's side."""
        n = len(self.data.conditions)
        index = int(self.held_out[0]) if index is None else int(index)
        if not 0 <= index < n:
            raise ValueError(f"frame must be within 0..{n - 1} (the clip's frames), got {index}")
        cameras = tracked_cameras(self.data.cameras).copy()
        cameras[index] = view_cameras(yaw, pitch, 1, convention=convention, **self._geometry())[0]
        _, out = next(render_batches(self.head, self.data.conditions, cameras, [index], batch_size=1))
        return resize_square(to_uint8(out["image"])[0], size or self.size)
