"""Face-preprocessing throughput at CPU scale: frames/s of landmarks, crop, camera and masks.

    python bench/preprocess.py [--video PATH] [--size 256] [--backends mediapipe,dlib] [--threads 2]

Ingests the clip (default ../shared/data/videos/cnn.mp4) into a temporary folder, then runs each
stage as the workflow does (talk3d_core functions, settings read from config/config.yaml) and prints
one line per stage with frames/s, plus the crop-jitter figures the crop stage stores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from talk3d_core.camera import camera_table
from talk3d_core.crop import crop_clip, read_crop_table
from talk3d_core.ingest import ingest_video
from talk3d_core.landmarks import detect_landmarks
from talk3d_core.masks import masks_clip
from talk3d_core.util.config import load_schema, validate_config
from talk3d_core.util.io import list_frames

ROOT = Path(__file__).resolve().parents[1]
cfg = validate_config(
    yaml.safe_load((ROOT / "config/config.yaml").read_text()),
    load_schema(ROOT / "workflow/schemas/config.schema.yaml"),
)
DEFAULT_VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos" / "cnn.mp4"


def timed(label: str, n_frames: int, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    rate = n_frames / seconds
    print(f"{label:<22} {n_frames:5d} frames in {seconds:7.2f} s: {rate:7.1f} frames/s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument(
        "--size", type=int, default=256, help="crop side in pixels (CPU scale 256, paper 512)"
    )
    parser.add_argument("--backends", default="mediapipe,dlib", help="landmark backends to time")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.video.is_file():
        raise SystemExit(f"{args.video}: no such video (pass --video)")
    print(f"video: {args.video}  crop size: {args.size}  threads: {args.threads}  cpus: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        out = Path(tmp)
        meta = ingest_video(
            args.video, out / "frames", out / "audio.wav", out / "meta.json", min_duration_s=0.5
        )
        frames = list_frames(out / "frames")
        n = meta["n_frames"]
        tracks = {
            backend: timed(
                f"landmarks ({backend})", n, detect_landmarks, frames, backend=backend, what=args.video.name
            )
            for backend in args.backends.split(",")
        }
        track = next(iter(tracks.values()))
        for backend, t in tracks.items():
            print(f"  {backend}: face detected in {int(t.detected.sum())}/{n} frames")
        crop_meta = timed(
            "crop", n, crop_clip, frames, track.lm68, out / "crops", out / "crop.parquet",
            size=args.size, sigma_frames=cfg["crop"]["sigma_frames"], zoom=cfg["crop"]["zoom"],
            cut_threshold_ed=cfg["crop"]["cut_threshold_ed"], threads=args.threads,
        )  # fmt: skip
        for name, j in crop_meta["jitter"].items():
            motion, accel = j["motion_rms_px"], j["accel_rms_px"]
            print(f"  jitter {name:<10}: motion {motion:.2f} px/frame, accel {accel:.2f} px (at 512)")
        crops = read_crop_table(out / "crop.parquet")
        timed(
            "camera", n, camera_table, crops.lm68, crops.size,
            focal=cfg["camera"]["focal"], radius=cfg["camera"]["radius"], pivot=cfg["camera"]["pivot"],
            sigma_frames=cfg["camera"]["sigma_frames"], cuts=crop_meta["cuts"],
        )  # fmt: skip
        timed("masks (landmarks)", n, masks_clip, list_frames(out / "crops"), crops.lm68, out / "masks",
              threads=args.threads)  # fmt: skip


if __name__ == "__main__":
    main()
