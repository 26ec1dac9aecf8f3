"""Locating ffmpeg and running it with errors that name the file.

A system ffmpeg on PATH wins (conda installs one); otherwise the static binary shipped by
imageio-ffmpeg is used. That binary has no ffprobe, so metadata is read from ``ffmpeg -i``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence


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


def run_ffmpeg(args: Sequence[str], *, what: str, input_bytes: bytes | None = None) -> str:
    """Run ``ffmpeg -hide_banner -nostdin <args>`` and return its stderr text.

    ``what`` names the file being processed; a non-zero exit raises :class:`MediaError` with the
    last lines of ffmpeg's own message.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    proc = subprocess.run(cmd, input=input_bytes, capture_output=True)
    err = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(line for line in err.strip().splitlines()[-6:])
        raise MediaError(f"{what}: ffmpeg failed (exit {proc.returncode}):\n{tail}")
    return err
