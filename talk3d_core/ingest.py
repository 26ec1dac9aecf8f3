"""Stage 1, ingest: a subject's clip -> frames at the pipeline frame rate, 16 kHz mono audio, metadata.

Outputs of :func:`ingest_video` (the contract every later stage relies on):

- ``frames/``: full frames ``000000.png``, ``000001.png``, ... (0-based frame index at ``fps``),
  autorotated, RGB 8-bit, optionally downscaled so the longest side is at most ``max_side``.
- ``audio.wav``: mono PCM s16 at ``audio_rate`` Hz with exactly ``round(n_frames * audio_rate / fps)``
  samples, so the audio and the frames cover the same time span.
- ``meta.json``: source facts (fps, size, rotation, duration, codecs) and what was stored.

The clip is decoded once by a single ffmpeg run that writes the frames and the raw audio together;
ffmpeg's ``fps`` filter resamples any source rate (24, 29.97, 30, variable) to ``fps`` by dropping
or repeating frames on the time axis. Everything is written to temporary names and renamed into
place only when all checks pass, so a failure leaves no partial output behind.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from talk3d_core.util.io import atomic_dir, atomic_path, write_json
from talk3d_core.util.media import (
    MediaError,
    MediaInfo,
    StreamInfo,
    ffmpeg_exe,
    ffmpeg_version,
    file_url,
    probe,
    run_ffmpeg,
    still_image_kind,
    write_wav,
)

log = logging.getLogger(__name__)

IMAGE_FORMATS = ("png", "jpg")
# zlib level 1 with "up" prediction: much faster than level 6 for slightly larger frames.
# Measured rationale: docs/decisions.md#frame-png-compression
PNG_COMPRESSION_LEVEL = 1
PNG_PREDICTION = "up"
JPEG_QSCALE = 2  # ffmpeg's mjpeg quality scale, 2 = best practical quality
# A decoded stream much shorter than the container's duration means a cut or damaged file. Some
# legitimate clips have an audio track running past the video, hence the generous margins.
MIN_DECODED_FRACTION = 0.8
MAX_SHORTFALL_S = 0.5


def _frame_rate_arg(fps: float) -> str:
    """``fps`` as an exact ffmpeg rational, e.g. 29.97 -> "30000/1001", 25 -> "25"."""
    frac = Fraction(fps).limit_denominator(1001)
    return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"


def _stored_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """Frame size after the optional downscale: longest side <= ``max_side``, both sides even."""
    width, height = size
    if max_side is None or max(width, height) <= max_side:
        return width, height
    factor = max_side / max(width, height)
    # Round down to even (yuv encoders need even sizes later) without exceeding max_side.
    return max(2, int(width * factor) // 2 * 2), max(2, int(height * factor) // 2 * 2)


def _audio_filter(audio_rate: int) -> list[str]:
    """ffmpeg output options: mono s16 PCM at ``audio_rate``; ``first_pts=0`` pads with silence when
    the audio starts after the video, keeping sample 0 at frame 0's time."""
    return [
        "-af",
        f"aresample={audio_rate}:first_pts=0",
        "-ac",
        "1",
        "-c:a",
        "pcm_s16le",
        "-f",
        "s16le",
    ]


def _require_audio_stream(info: MediaInfo, what: str) -> StreamInfo:
    stream = info.audio
    if stream is None:
        raise MediaError(f"{info.path}: has no audio stream ({what})")
    return stream


def _check_decode_log(err: str, what: str) -> None:
    """ffmpeg ran at ``-v error``: any line it printed is a decode/demux error of a damaged file."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    if lines:
        shown = "\n".join(lines[:5])
        raise MediaError(
            f"{what}: decode errors, the file is truncated or corrupt (re-encode or replace it):\n{shown}"
        )


def _check_not_truncated(decoded_s: float, info: MediaInfo, stream: str) -> None:
    if info.duration_s is None:
        return
    shortfall = info.duration_s - decoded_s
    if decoded_s < MIN_DECODED_FRACTION * info.duration_s and shortfall > MAX_SHORTFALL_S:
        raise MediaError(
            f"{info.path}: truncated or unreadable: its {stream} decodes to {decoded_s:.2f} s but the "
            f"container says {info.duration_s:.2f} s"
        )


def _audio_fit(
    decoded: int, needed: int, audio_rate: int, fps: float, max_mismatch_s: float | None
) -> dict[str, Any]:
    """How ``decoded`` audio samples are fitted to the ``needed`` ones of the video, and what to say.

    Up to one frame of difference is container rounding and passes silently; more is padded with
    silence at the end (shorter audio) or trimmed (longer audio), with a warning; more than
    ``max_mismatch_s`` seconds and a frame (None: no limit) is an error, as the audio is then cut or
    belongs to another take. Returns padded_s, trimmed_s, padded_from_frame (first frame whose audio is partly
    padding, None without padding), warning and error (texts, empty when there is nothing to say).
    """
    padded, trimmed = max(0, needed - decoded), max(0, decoded - needed)
    fit: dict[str, Any] = {
        "padded_s": round(padded / audio_rate, 4),
        "trimmed_s": round(trimmed / audio_rate, 4),
        "padded_from_frame": int(decoded * fps // audio_rate) if padded else None,
        "warning": "",
        "error": "",
    }
    mismatch_s = (padded + trimmed) / audio_rate
    if mismatch_s * fps <= 1:
        return fit
    what = (
        f"{fit['padded_s']:.2f} s of silence padded at the end (from frame {fit['padded_from_frame']})"
        if padded
        else f"{fit['trimmed_s']:.2f} s trimmed from the end"
    )
    # The frame of slack is the rounding allowed above (encoders pad a track's last packet).
    if max_mismatch_s is not None and mismatch_s > max_mismatch_s + 1 / fps:
        fit["error"] = (
            f"{mismatch_s:.2f} s apart, more than ingest.max_audio_mismatch_s = {max_mismatch_s} s: the "
            "audio is cut or belongs to another take (raise the setting, or null, to accept it with "
            f"{what})"
        )
    else:
        fit["warning"] = f"audio and video differ by {mismatch_s:.2f} s: {what}"
    return fit


def _fit_samples(pcm: np.ndarray, n_samples: int) -> np.ndarray:
    """Zero-pad or trim int16 ``pcm`` (n,) at the end to exactly ``n_samples``."""
    if pcm.size >= n_samples:
        return pcm[:n_samples]
    return np.concatenate([pcm, np.zeros(n_samples - pcm.size, dtype=np.int16)])


def ingest_video(
    video: str | os.PathLike[str],
    frames_dir: str | os.PathLike[str],
    audio_wav: str | os.PathLike[str],
    meta_json: str | os.PathLike[str],
    *,
    fps: float = 25,
    audio_rate: int = 16000,
    audio: str | os.PathLike[str] | None = None,
    min_duration_s: float = 3.0,
    max_audio_mismatch_s: float | None = 0.5,
    max_side: int | None = None,
    image_format: str = "png",
    threads: int = 2,
) -> dict[str, Any]:
    """Decode ``video`` into ``frames_dir`` (frames at ``fps``), ``audio_wav`` and ``meta_json``.

    Args:
        video: any container ffmpeg reads (mp4, mov, mkv, webm, avi, ...) at any frame rate,
            constant or variable; rotation metadata is applied (frames are stored upright).
        frames_dir: folder of ``%06d.<image_format>`` frames, 0-based, replaced atomically.
        audio_wav: mono PCM s16 WAV at ``audio_rate`` Hz with exactly
            ``round(n_frames * audio_rate / fps)`` samples (zero-padded or trimmed at the end).
        meta_json: metadata, written atomically (same dict as returned).
        fps: pipeline frame rate in frames per second.
        audio: a separate audio file (any format, or a video whose first audio stream is used)
            that replaces the video's own sound; required when the video has no audio stream.
        min_duration_s: shorter clips are rejected.
        max_audio_mismatch_s: audio whose length differs from the video's by more than this many
            seconds is an error (None: padded or trimmed with a warning). Differences over one frame
            are logged and recorded in the metadata (audio_padded_s, audio_trimmed_s).
        max_side: downscale (area filter) so the longest stored side is at most this many pixels
            (both sides even); None keeps the source size. Never upscales.
        image_format: "png" (lossless, fast zlib level) or "jpg".
        threads: ffmpeg decoder/encoder threads.

    Returns:
        The metadata dict written to ``meta_json``.

    Raises:
        MediaError: naming the file, when it is missing, not media, has no video stream, has no
            audio and no ``audio`` was given, is truncated or fails to decode, or is too short, or when
            the audio's length is more than ``max_audio_mismatch_s`` from the video's.
    """
    video = Path(video)
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if fps <= 0 or audio_rate <= 0:
        raise ValueError(f"fps and audio_rate must be positive, got fps={fps}, audio_rate={audio_rate}")

    image = still_image_kind(video)
    if image is not None:
        raise MediaError(f"{video}: is a still image ({image}), not a video; a talking clip is needed")
    info = probe(video)
    vstream = info.video
    if vstream is None:
        kinds = ", ".join(s.kind for s in info.streams) or "none"
        raise MediaError(f"{video}: has no video stream (streams: {kinds}); a video clip is needed")
    if vstream.display_size is None:
        raise MediaError(f"{video}: ffmpeg reports no frame size for its video stream")
    if info.duration_s is not None and info.duration_s < min_duration_s:
        raise MediaError(
            f"{video}: clip is {info.duration_s:.2f} s long, shorter than the minimum {min_duration_s} s"
        )

    if audio is None:
        audio_info = info
        if info.audio is None:
            raise MediaError(
                f"{video}: has no audio stream; give the clip's sound as a separate file in the `audio` "
                "column of this subject's row in config/subjects.tsv"
            )
        astream = info.audio
    else:
        audio = Path(audio)
        audio_info = probe(audio)
        astream = _require_audio_stream(audio_info, f"given as the audio of {video}")

    source_size = vstream.display_size
    width, height = _stored_size(source_size, max_side)
    rate_arg = _frame_rate_arg(fps)
    vfilter = f"fps={rate_arg}:start_time=0"
    if (width, height) != source_size:
        vfilter += f",scale={width}:{height}:flags=area"
    if image_format == "png":
        encode = ["-pix_fmt", "rgb24", "-compression_level", str(PNG_COMPRESSION_LEVEL)]
        encode += ["-pred", PNG_PREDICTION]
    else:
        encode = ["-pix_fmt", "yuvj420p", "-q:v", str(JPEG_QSCALE)]
    what = str(video) if audio is None else f"{video} with audio {audio}"

    with atomic_dir(frames_dir) as tmp_frames, atomic_path(audio_wav) as tmp_wav:
        args = ["-v", "error", "-threads", str(threads), "-i", file_url(video)]
        audio_input = 0
        if audio is not None:
            args += ["-i", file_url(audio)]
            audio_input = 1
        args += ["-map", f"0:{vstream.index}", "-vf", vfilter, "-fps_mode", "passthrough"]
        if info.duration_s is not None:
            # The last frame's display time is a guess of the muxer and can run past the clip (e.g.
            # 0.1 s in phone clips); the container's duration is the clip's length.
            args += ["-t", f"{info.duration_s:.6f}"]
        args += ["-threads", str(threads), *encode, "-start_number", "0", "-f", "image2"]
        # image2 expands % in the whole path: escape the folder's own percent signs.
        args += [file_url(tmp_frames).replace("%", "%%") + f"/%06d.{image_format}"]
        args += [
            "-map",
            f"{audio_input}:{astream.index}",
            *_audio_filter(audio_rate),
            "-y",
            file_url(tmp_wav),
        ]
        log.info("decoding %s: %s", what, " ".join(args))
        _check_decode_log(run_ffmpeg(args, what=what), what)

        n_frames = sum(1 for p in tmp_frames.iterdir() if p.suffix == f".{image_format}")
        decoded_s = n_frames / fps
        _check_not_truncated(decoded_s, info, "video")
        if n_frames + 1 < min_duration_s * fps:
            raise MediaError(
                f"{video}: video decodes to {decoded_s:.2f} s, shorter than the minimum {min_duration_s} s"
            )

        pcm = np.fromfile(tmp_wav, dtype="<i2").astype(np.int16)
        n_samples = round(n_frames * audio_rate / fps)
        fit = _audio_fit(pcm.size, n_samples, audio_rate, fps, max_audio_mismatch_s)
        if fit["error"]:
            raise MediaError(
                f"{audio_info.path}: its audio decodes to {pcm.size / audio_rate:.2f} s but the video "
                f"{video} lasts {decoded_s:.2f} s, {fit['error']}"
            )
        write_wav(tmp_wav, _fit_samples(pcm, n_samples), audio_rate)

    meta = {
        "source": str(video),
        "source_fps": vstream.fps,
        "source_avg_fps": vstream.avg_fps,
        "source_size": list(source_size),
        "rotation": vstream.rotation,
        "duration_s": info.duration_s,
        "source_frames_estimate": (
            round(info.duration_s * (vstream.avg_fps or vstream.fps))
            if info.duration_s is not None and (vstream.avg_fps or vstream.fps)
            else None
        ),
        "video_codec": vstream.codec,
        "n_frames": n_frames,
        "fps": fps,
        "frame_size": [width, height],
        "scale": max(width, height) / max(source_size),
        "image_format": image_format,
        "audio_source": str(audio_info.path),
        "audio_source_codec": astream.codec,
        "audio_source_rate": astream.sample_rate,
        "audio_source_channels": astream.channels,
        "audio_decoded_samples": int(pcm.size),
        "audio_samples": n_samples,
        "audio_rate": audio_rate,
        "audio_padded_s": fit["padded_s"],
        "audio_trimmed_s": fit["trimmed_s"],
        "audio_padded_from_frame": fit["padded_from_frame"],
        "ffmpeg": ffmpeg_exe(),
        "ffmpeg_version": ffmpeg_version(),
    }
    write_json(meta_json, meta)
    log.info(
        "%s: %d frames %dx%d at %s fps, %d audio samples", video, n_frames, width, height, fps, n_samples
    )
    if fit["warning"]:
        log.warning("%s: %s", audio_info.path, fit["warning"])
    return meta


def ingest_audio(
    src: str | os.PathLike[str],
    out_wav: str | os.PathLike[str],
    *,
    audio_rate: int = 16000,
    min_duration_s: float = 0.5,
) -> dict[str, Any]:
    """Convert a driving audio file (wav, mp3, m4a, flac, or a video's first audio stream) into a
    mono PCM s16 WAV at ``audio_rate`` Hz, written atomically to ``out_wav``.

    Returns a metadata dict: source path, codec, rate (Hz) and channels, the container duration,
    ``duration_s`` and ``samples`` of the output.

    Raises:
        MediaError: naming ``src``, when it is missing, not media, has no audio stream, is
            truncated or fails to decode, or lasts less than ``min_duration_s`` seconds.
    """
    src = Path(src)
    info = probe(src)
    stream = _require_audio_stream(info, "a driving audio file must contain speech audio")
    if info.duration_s is not None and info.duration_s < min_duration_s:
        raise MediaError(
            f"{src}: audio is {info.duration_s:.2f} s long, shorter than the minimum {min_duration_s} s"
        )
    with atomic_path(out_wav) as tmp_wav:
        args = ["-v", "error", "-i", file_url(src), "-map", f"0:{stream.index}", *_audio_filter(audio_rate)]
        _check_decode_log(run_ffmpeg([*args, "-y", file_url(tmp_wav)], what=str(src)), str(src))
        pcm = np.fromfile(tmp_wav, dtype="<i2").astype(np.int16)
        duration_s = pcm.size / audio_rate
        _check_not_truncated(duration_s, info, "audio")
        if duration_s < min_duration_s:
            raise MediaError(
                f"{src}: audio decodes to {duration_s:.2f} s, shorter than the minimum {min_duration_s} s"
            )
        write_wav(tmp_wav, pcm, audio_rate)
    return {
        "source": str(src),
        "source_codec": stream.codec,
        "source_rate": stream.sample_rate,
        "source_channels": stream.channels,
        "source_duration_s": info.duration_s,
        "duration_s": duration_s,
        "samples": int(pcm.size),
        "audio_rate": audio_rate,
    }
