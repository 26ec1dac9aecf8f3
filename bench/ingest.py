"""Ingest throughput: frames written per second and seconds of video ingested per second of wall time.

    python bench/ingest.py [--video PATH] [--max-side N] [--threads N] [--png-levels 0,1,3,6]

Ingests the clip (default ../shared/data/videos/cnn.mp4) into a temporary folder once per frame
format (png at the library's compression level, then jpg) and prints one line per run.
``--png-levels`` adds png runs at other zlib levels, to re-check the speed/size trade-off behind
``talk3d_core.ingest.PNG_COMPRESSION_LEVEL``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from talk3d_core import ingest

DEFAULT_VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos" / "cnn.mp4"


def run_once(video: Path, image_format: str, max_side: int | None, threads: int) -> tuple[float, dict, int]:
    """Ingest into a fresh temp folder: (wall seconds, meta, bytes of frames on disk)."""
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        meta = ingest.ingest_video(
            video,
            out / "frames",
            out / "audio.wav",
            out / "meta.json",
            max_side=max_side,
            image_format=image_format,
            threads=threads,
        )
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (out / "frames").iterdir())
    return seconds, meta, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="clip to ingest (default: cnn.mp4)")
    parser.add_argument("--max-side", type=int, default=None, help="downscale so the longest side is <= N")
    parser.add_argument("--threads", type=int, default=2, help="ffmpeg threads (default 2)")
    parser.add_argument("--png-levels", default="", help="extra png zlib levels to time, e.g. 0,3,6")
    args = parser.parse_args()
    if not args.video.is_file():
        parser.error(f"{args.video}: not found (pass --video PATH)")

    runs = [("png", ingest.PNG_COMPRESSION_LEVEL), ("jpg", None)]
    runs += [("png", int(level)) for level in args.png_levels.split(",") if level.strip()]
    print(f"video: {args.video}  max_side: {args.max_side}  threads: {args.threads}  cpus: {os.cpu_count()}")
    default_level = ingest.PNG_COMPRESSION_LEVEL
    for image_format, level in runs:
        if level is not None:
            ingest.PNG_COMPRESSION_LEVEL = level
        try:
            seconds, meta, size = run_once(args.video, image_format, args.max_side, args.threads)
        finally:
            ingest.PNG_COMPRESSION_LEVEL = default_level
        label = image_format if level is None else f"png(level {level})"
        n = meta["n_frames"]
        w, h = meta["frame_size"]
        print(
            f"{label:<14} {n} frames {w}x{h} in {seconds:6.2f} s: {n / seconds:7.1f} frames/s, "
            f"{n / meta['fps'] / seconds:6.2f} s of video per s, {size / n / 1024:6.1f} KiB/frame"
        )


if __name__ == "__main__":
    main()
