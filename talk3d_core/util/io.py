"""Atomic file and directory writes, so a killed job never leaves a half file that looks complete."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as an input file ("does not exist", "is a directory, ...", "is
    empty"), or None when it is a non-empty regular file."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(mode):
        kind = "a character device" if stat.S_ISCHR(mode) else "a pipe, socket or device"
        return f"is {kind}, not a regular file"
    if info.st_size == 0:
        return "is empty (0 bytes)"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; outputs should get the usual permissions.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


def _remove_stale(folder: Path, prefix: str, suffix: str) -> None:
    """Remove what a killed earlier write of the same target left: the temporaries beside it named
    ``prefix`` + 8 random characters (tempfile's) + ``suffix``."""
    stale = re.compile(re.escape(prefix) + r"[A-Za-z0-9_]{8}" + re.escape(suffix) + "$")
    for leftover in folder.iterdir():
        if not stale.match(leftover.name):
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the suffix of ``path`` so tools that pick a format from the extension
    (ffmpeg, PIL) still work. Temporaries of ``path`` left by a killed earlier write are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path.parent, f".{path.stem}.", f".tmp{path.suffix}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; it replaces ``path`` if the block succeeds.
    Temporary directories of ``path`` left by a killed earlier write are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path.parent, f".{path.name}.", ".tmp")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, _DIR_MODE)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


FRAME_SUFFIXES = (".png", ".jpg")


def list_frames(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files of a per-frame folder (frames/, crops/, masks/) in frame order.

    Names are the 0-based frame index zero-padded to six digits, so sorting by name is frame order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of frames")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no frames (png/jpg) found")
    return paths


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file (frame, crop) as an RGB uint8 array (H, W, 3); ValueError naming a bad file."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot read image (missing or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
