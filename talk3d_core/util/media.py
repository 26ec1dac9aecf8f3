"""Locating ffmpeg, running it with errors that name the file, reading media metadata, and
writing browser-playable H.264/AAC videos (:class:`VideoWriter`).

A system ffmpeg on PATH wins (conda installs one); otherwise the static binary shipped by
imageio-ffmpeg is used. That binary has no ffprobe, so metadata is parsed from the stream summary
that ``ffmpeg -i FILE`` prints on stderr (:func:`probe`). Commands are plain argument lists:
ffmpeg-python's graph builder would add nothing here, and its probe needs ffprobe.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import re
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np

from talk3d_core.util.io import atomic_path, file_problem


class MediaError(ValueError):
    """A media file cannot be used; the message names the file and the problem."""


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: ``$TALK3D_FFMPEG``, then ffmpeg on PATH, then imageio-ffmpeg's."""
    override = os.environ.get("TALK3D_FFMPEG")
    if override:
        return override
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def ffmpeg_version() -> str:
    """Version string of :func:`ffmpeg_exe` as it reports itself (``ffmpeg version <this> ...``)."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True)
    first = proc.stdout.splitlines()[0] if proc.stdout else ""
    match = re.match(r"ffmpeg version (\S+)", first)
    return match.group(1) if match else first.strip()


def _check_disk_full(err: str, what: str) -> None:
    """A full disk is the output's problem, not the input's: raise it as such (ENOSPC)."""
    if "No space left on device" in err:
        raise OSError(
            errno.ENOSPC,
            f"no space left on device while ffmpeg wrote the output for {what} (the input is fine; "
            "free some disk space and run again)",
        )


def run_ffmpeg(args: Sequence[str], *, what: str) -> str:
    """Run ``ffmpeg -hide_banner -nostdin <args>`` and return its stderr text.

    ``what`` names the file being processed; a non-zero exit raises :class:`MediaError` with the
    last lines of ffmpeg's own message, or ``OSError(ENOSPC)`` when the disk is full.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    proc = subprocess.run(cmd, capture_output=True)
    err = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        _check_disk_full(err, what)
        tail = "\n".join(line for line in err.strip().splitlines()[-6:])
        raise MediaError(f"{what}: ffmpeg failed (exit {proc.returncode}):\n{tail}")
    return err


# Signatures of still-image files, which ffmpeg opens as a one-frame "video" without sound.
_IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def still_image_kind(path: str | os.PathLike[str]) -> str | None:
    """ "PNG", "JPEG", "GIF", "BMP", "TIFF" or "WEBP" when ``path`` starts like a still-image file,
    else None (also for files that cannot be read)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and int.from_bytes(head[14:16], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "BMP"  # "BM" alone is too short a signature: the DIB header size follows at byte 14
    return next((kind for magic, kind in _IMAGE_MAGIC.items() if head.startswith(magic)), None)


def file_url(path: str | os.PathLike[str]) -> str:
    """``path`` as an ffmpeg ``file:`` URL, so names with a colon are not taken for a protocol."""
    return f"file:{os.fspath(path)}"


# ---------------------------------------------------------------------------------------------
# Metadata from `ffmpeg -i`


@dataclass(frozen=True)
class StreamInfo:
    """One stream of a media file as ``ffmpeg -i`` describes it.

    ``fps`` is the nominal frame rate (ffmpeg's ``tbr``, like ffprobe's ``r_frame_rate``; the
    ``fps`` figure when no ``tbr`` is printed); ``avg_fps`` is ffmpeg's ``fps`` figure (frames over
    duration, like ``avg_frame_rate``), which is the better frame-count estimate for variable
    frame rate phone clips. ``width``/``height`` are the coded size in pixels; ``rotation`` is the
    display-matrix rotation in degrees counter-clockwise (as ffmpeg prints it; a portrait phone clip
    typically has -90), and :attr:`display_size` is the size after ffmpeg's autorotation.
    """

    index: int
    kind: str  # "video", "audio", "subtitle", "data" or "attachment"
    codec: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    avg_fps: float | None = None
    rotation: float = 0.0
    sample_rate: int | None = None  # Hz
    channels: int | None = None
    channel_layout: str | None = None
    start_s: float | None = None
    attached_pic: bool = False  # cover art in audio files: a "video" stream that is not a video

    @property
    def display_size(self) -> tuple[int, int] | None:
        """(width, height) in pixels of frames as decoded with autorotation, or None for non-video."""
        if self.width is None or self.height is None:
            return None
        if round(abs(self.rotation)) % 180 == 90:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class MediaInfo:
    """Container-level facts of a media file plus its streams (see :func:`probe`)."""

    path: Path
    format: str  # ffmpeg demuxer names, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    duration_s: float | None  # None when the container does not say ("Duration: N/A")
    start_s: float
    bitrate_kbps: float | None
    streams: tuple[StreamInfo, ...]

    @property
    def video(self) -> StreamInfo | None:
        """First real video stream (cover art excluded), or None."""
        return next((s for s in self.streams if s.kind == "video" and not s.attached_pic), None)

    @property
    def audio(self) -> StreamInfo | None:
        """First audio stream, or None."""
        return next((s for s in self.streams if s.kind == "audio"), None)


_INPUT_RE = re.compile(r"^Input #0, (.+?), from '")
_DURATION_RE = re.compile(r"^\s*Duration: (N/A|(\d+):(\d+):(\d+(?:\.\d+)?))(.*)$")
_STREAM_RE = re.compile(r"^\s*Stream #0:(\d+)(?:\[0x[0-9a-fA-F]+\])?(?:\([^)]*\))?: (\w+): (.*)$")
_ROTATION_RE = re.compile(r"display ?matrix: rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)
_ROTATE_TAG_RE = re.compile(r"^\s*rotate\s*: (-?\d+(?:\.\d+)?)\s*$")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)\b")
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(k?) (fps|tbr)$")
_NAMED_LAYOUTS = {
    "mono": 1,
    "stereo": 2,
    "downmix": 2,
    "binaural": 2,
    "quad": 4,
    "hexagonal": 6,
    "octagonal": 8,
    "cube": 8,
    "hexadecagonal": 16,
}


def _split_top_level(text: str) -> list[str]:
    """Split ffmpeg's comma-separated stream summary, keeping ``yuv420p(tv, bt709)`` in one piece."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _layout_channels(layout: str) -> int | None:
    """Channel count of an ffmpeg channel layout name: mono, stereo, 5.1(side), "3 channels", ..."""
    base = layout.split("(")[0].strip()
    if base in _NAMED_LAYOUTS:
        return _NAMED_LAYOUTS[base]
    match = re.fullmatch(r"(\d+) channels", base)
    if match:
        return int(match.group(1))
    match = re.fullmatch(r"(\d+)\.(\d+)", base)  # "5.1" = 5 full-range + 1 LFE
    if match:
        return int(match.group(1)) + int(match.group(2))
    return None


def _parse_stream(index: int, kind: str, body: str) -> dict:
    parts = _split_top_level(body)
    fields: dict = {"index": index, "kind": kind.lower(), "codec": parts[0].split()[0] if parts else "?"}
    if "(attached pic)" in body:
        fields["attached_pic"] = True
    start = re.search(r"\bstart (-?\d+(?:\.\d+)?)", body)
    if start:
        fields["start_s"] = float(start.group(1))
    for i, part in enumerate(parts[1:], start=1):
        part = re.sub(r"\s*\((default|attached pic|forced|dub|original|comment|lyrics)\)", "", part)
        if fields["kind"] == "video":
            size = _SIZE_RE.match(part)
            rate = _RATE_RE.match(part)
            if size and "width" not in fields:
                fields["width"], fields["height"] = int(size.group(1)), int(size.group(2))
            elif rate:
                value = float(rate.group(1)) * (1000.0 if rate.group(2) else 1.0)
                fields["fps" if rate.group(3) == "tbr" else "avg_fps"] = value
        elif fields["kind"] == "audio":
            hz = re.fullmatch(r"(\d+) Hz", part)
            if hz:
                fields["sample_rate"] = int(hz.group(1))
                if i + 1 < len(parts):
                    layout = parts[i + 1]
                    fields["channel_layout"] = layout
                    fields["channels"] = _layout_channels(layout)
    if fields["kind"] == "video" and "fps" not in fields and "avg_fps" in fields:
        fields["fps"] = fields["avg_fps"]
    return fields


def parse_ffmpeg_info(text: str, path: str | os.PathLike[str]) -> MediaInfo:
    """Parse the ``Input #0`` summary that ``ffmpeg -i`` writes to stderr into a :class:`MediaInfo`.

    Raises :class:`MediaError` (naming ``path``) when the text has no input summary, i.e. ffmpeg
    could not open the file as media.
    """
    fmt = None
    duration = bitrate = None
    start = 0.0
    streams: list[dict] = []
    in_input = False
    for line in text.splitlines():
        if fmt is None:
            match = _INPUT_RE.match(line)
            if match:
                fmt, in_input = match.group(1), True
            continue
        if in_input and not line.startswith(" "):  # "Input #1", "Output #0", "At least one output..."
            break
        match = _DURATION_RE.match(line)
        if match:
            if match.group(1) != "N/A":
                h, m, s = int(match.group(2)), int(match.group(3)), float(match.group(4))
                duration = 3600 * h + 60 * m + s
            rest = match.group(5)
            found = re.search(r"start: (-?\d+(?:\.\d+)?)", rest)
            start = float(found.group(1)) if found else 0.0
            found = re.search(r"bitrate: (\d+(?:\.\d+)?) kb/s", rest)
            bitrate = float(found.group(1)) if found else None
            continue
        match = _STREAM_RE.match(line)
        if match:
            streams.append(_parse_stream(int(match.group(1)), match.group(2), match.group(3)))
            continue
        if streams and streams[-1]["kind"] == "video":
            # Side data and tags are indented under their stream; the display matrix is the modern
            # way to store rotation, the "rotate" tag (clockwise degrees) the legacy one.
            found = _ROTATION_RE.search(line)
            if found:
                streams[-1]["rotation"] = float(found.group(1))
            tag = _ROTATE_TAG_RE.match(line)
            if tag and "rotation" not in streams[-1]:
                streams[-1]["rotation"] = -float(tag.group(1))
    if fmt is None:
        raise MediaError(f"{path}: not a readable media file ({_ffmpeg_reason(text)})")
    for fields in streams:
        if "rotation" in fields:
            rot = (fields["rotation"] + 180.0) % 360.0 - 180.0  # into [-180, 180)
            fields["rotation"] = 0.0 if rot == 0 else rot
    return MediaInfo(
        path=Path(path),
        format=fmt,
        duration_s=duration,
        start_s=start,
        bitrate_kbps=bitrate,
        streams=tuple(StreamInfo(**fields) for fields in streams),
    )


def _ffmpeg_reason(text: str) -> str:
    """ffmpeg's own complaint in a few words: its error lines without the ``[in#0 @ 0x..]`` prefixes."""
    lines = []
    for line in text.strip().splitlines():
        line = re.sub(r"^\[[^\]]*\]\s*", "", line.strip())
        if line and line not in lines and not line.startswith("At least one output"):
            lines.append(line)
    return "; ".join(lines[-3:]) or "ffmpeg printed nothing"


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Metadata of a media file (container duration and start, per-stream codec, size, frame rate,
    rotation, sample rate, channels) read from ``ffmpeg -i`` -- no ffprobe needed.

    Raises :class:`MediaError` naming ``path`` when it is missing, not a file, or not media ffmpeg
    can open (e.g. a text file, or an mp4 cut before its index).
    """
    path = Path(path)
    problem = file_problem(path)
    if problem == "does not exist":
        raise MediaError(f"{path}: file not found")
    if problem is not None:
        raise MediaError(f"{path}: {problem}")
    # `-i` alone exits 1 ("At least one output file must be specified") after printing the summary.
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", file_url(path)], capture_output=True
    )
    text = proc.stderr.decode("utf-8", errors="replace")
    try:
        return parse_ffmpeg_info(text, path)
    except MediaError:
        raise MediaError(
            f"{path}: cannot be opened as a video or audio file; it may be truncated, corrupt or "
            f"not media at all (ffmpeg: {_ffmpeg_reason(text)})"
        ) from None


# ---------------------------------------------------------------------------------------------
# 16-bit PCM WAV


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, rate: int) -> None:
    """Write int16 ``samples`` of shape (n,) (mono) or (n, channels) as a PCM s16 WAV at ``rate`` Hz.

    Not atomic by itself: wrap in :func:`talk3d_core.util.io.atomic_path` for pipeline outputs.
    """
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        raise TypeError(f"{path}: write_wav expects int16 samples, got {samples.dtype}")
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(channels)
        wf.setsampwidth(2)
        wf.setframerate(int(rate))
        wf.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a PCM s16 WAV: int16 samples of shape (n,) for mono or (n, channels), and the rate in Hz."""
    try:
        with wave.open(str(path), "rb") as wf:
            width, channels, rate = wf.getsampwidth(), wf.getnchannels(), wf.getframerate()
            raw = wf.readframes(wf.getnframes())
    except (wave.Error, EOFError) as exc:
        raise MediaError(f"{path}: not a PCM WAV file ({exc})") from None
    if width != 2:
        raise MediaError(f"{path}: expected 16-bit PCM samples, got {8 * width}-bit")
    data = np.frombuffer(raw, dtype="<i2").astype(np.int16)
    return (data if channels == 1 else data.reshape(-1, channels)), rate


def read_wav_float(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a PCM s16 WAV as float32 mono samples in [-1, 1] (channels averaged) and its rate in Hz."""
    pcm, rate = read_wav(path)
    return pcm.reshape(len(pcm), -1).mean(axis=1, dtype=np.float32) / 32768.0, rate


# ------------------------------------------------------------------------------------ video writer

_STDERR_TAIL_LINES = 8


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
    ffmpeg failures raise :class:`~talk3d_core.util.media.MediaError` naming ``path`` with the tail of
    ffmpeg's stderr.

    ``lossless``: the frames exactly, for later measurement rather than for viewing: RGB H.264
    (libx264rgb, ``-qp 0``, 4:4:4, any size, no colour conversion) in a Matroska file, read back
    bit-exact by :func:`read_video`; ``crf`` and ``audio`` do not apply.

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
        lossless: bool = False,
    ) -> None:
        self.path = Path(path)
        if lossless and audio is not None:
            raise ValueError(f"{self.path}: a lossless video holds frames only, no audio")
        self.lossless = bool(lossless)
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
        # yuv420p needs even sides; lossless RGB (4:4:4) takes any.
        self.size = (width, height) if self.lossless else (width + width % 2, height + height % 2)
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
        ]  # fmt: skip
        if self.lossless:
            args += [
                "-c:v", "libx264rgb", "-preset", self.preset, "-qp", "0", "-pix_fmt", "rgb24",
                "-f", "matroska", file_url(out),
            ]  # fmt: skip
        else:
            args += [
                # RGB -> limited-range BT.709 YUV, tagged as such so players convert back the same way.
                "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p",
                "-c:v", self.codec, "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
                "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
                "-color_range", "tv",
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
        text = self._stderr_text()
        _check_disk_full(text, str(self.path))
        return MediaError(f"{self.path}: ffmpeg failed {when} (exit {code}):\n{_tail(text)}")

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


def read_video(path: str | os.PathLike[str], *, limit: int | None = None) -> tuple[np.ndarray, int]:
    """Decode a video's frames as uint8 RGB (n, H, W, 3): the first ``limit`` (default all), and the
    number of frames in the file (all of them are decoded to count them; only ``limit`` are kept).

    Exact for :class:`VideoWriter`'s lossless files. Raises :class:`MediaError` naming ``path`` when
    it is missing, not a video, or cannot be decoded.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"{path}: limit must be >= 0 frames, got {limit}")
    info = probe(path)
    if info.video is None or info.video.width is None or info.video.height is None:
        raise MediaError(f"{path}: has no video stream")
    width, height = info.video.width, info.video.height
    frame_bytes = width * height * 3
    args = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-noautorotate",
        "-i", file_url(path), "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr)
        assert proc.stdout is not None
        keep = None if limit is None else frame_bytes * limit
        kept, rest = bytearray(), 0  # a bytearray grows in place and gives a writable array
        while chunk := proc.stdout.read(1 << 24):
            room = len(chunk) if keep is None else max(0, keep - len(kept))
            kept += chunk[:room]
            rest += len(chunk) - min(room, len(chunk))  # frames past the limit: counted, not kept
        code = proc.wait()
        if code != 0:
            stderr.seek(0)
            raise MediaError(
                f"{path}: ffmpeg could not decode it (exit {code}):\n"
                f"{_tail(stderr.read().decode('utf-8', errors='replace'))}"
            )
    total, partial = divmod(len(kept) + rest, frame_bytes)
    if partial:
        raise MediaError(f"{path}: decoded {len(kept) + rest} bytes, not whole {width}x{height} frames")
    frames = np.frombuffer(kept, dtype=np.uint8).reshape(-1, height, width, 3)
    return frames, total
