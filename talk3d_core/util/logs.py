"""Logging for stage scripts: everything a stage says, and its traceback if it fails, goes to its log."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def log_to(path: str | os.PathLike[str], level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Send logging records and stderr to ``path`` (and keep a copy on the console) for the block.

    An exception escaping the block is written to the log with its traceback, then re-raised so
    the job fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    path.write_text("")  # both writers below append, so neither overwrites the other
    file_handler = logging.FileHandler(path, mode="a")
    console = logging.StreamHandler(sys.__stderr__)
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    for handler in (file_handler, console):
        handler.setFormatter(fmt)
    root.handlers = [file_handler, console]
    root.setLevel(level)
    try:
        with open(path, "a", buffering=1) as stream, contextlib.redirect_stderr(stream):
            try:
                yield logging.getLogger("talk3d")
            except BaseException:
                logging.getLogger("talk3d").error("stage failed:\n%s", traceback.format_exc())
                raise
    finally:
        file_handler.close()
        root.setLevel(saved[0])
        root.handlers = saved[1]
