"""Rendering speed of a trained talking head, and the workflow's wall time per stage.

    python bench/render.py [--sizes cpu,paper] [--devices cpu,cuda] [--frames N] [--batch B] [--threads T]
    python bench/render.py --benchmarks results/demo/benchmarks [--sizes ""]

Rendering: frames/s of :func:`talk3d_core.render.render_batches` (eval mode, no ray jitter: U-Net,
volume rendering and super-resolution of each frame), on a random head of each size (the weights do
not change the cost), and the same with the U-Net skipped (P_ID alone), so the U-Net's share shows.
The first batch is a warm-up and is not timed. Peak memory: torch.cuda.max_memory_allocated on CUDA.

``--benchmarks DIR``: reads Snakemake's benchmark files (one .tsv per job, ``s`` = wall seconds,
``max_rss`` MB) and prints each job's time and share of the total, largest first, with the sum.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from heads import AUDIO_DIM, AUDIO_WINDOW, frontal_cameras, random_head

from talk3d_core.model.subject import FrameConditions
from talk3d_core.render import render_batches


def bench(size: str, device: torch.device, frames: int, batch: int) -> None:
    head = random_head(size, device).eval()
    rng = np.random.default_rng(0)
    conditions = FrameConditions(
        audio=rng.standard_normal((frames + batch, AUDIO_WINDOW, AUDIO_DIM)).astype(np.float32),
        eye=rng.uniform(0, 2, frames + batch).astype(np.float32),
        rotation=rng.normal(0, 5, (frames + batch, 3)).astype(np.float32),
        ldm=rng.uniform(-1, 1, (frames + batch, 6)).astype(np.float32),
    )
    cameras = frontal_cameras(frames + batch, torch.device("cpu")).numpy()
    results = {}
    for label, identity_only in (("full", False), ("P_ID alone", True)):
        batches = render_batches(head, conditions, cameras, batch_size=batch, identity_only=identity_only)
        next(batches)  # warm-up batch
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start, done = time.perf_counter(), 0
        for chunk, _ in batches:
            done += len(chunk)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        results[label] = done / (time.perf_counter() - start)
    gen = head.generator.config
    memory = ""
    if device.type == "cuda":
        memory = f"; peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB (CUDA allocated)"
    print(
        f"{size:5s} {device.type:4s} batch {batch}: {gen.image_resolution} px output, "
        f"{gen.neural_rendering_resolution}^2 rays x "
        f"{gen.depth_resolution}+{gen.depth_resolution_importance} samples"
    )
    print(
        f"    full model {results['full']:7.2f} frames/s; P_ID alone {results['P_ID alone']:7.2f} frames/s "
        f"(the U-Net costs {100 * (1 - results['full'] / results['P_ID alone']):.0f}% of a frame){memory}"
    )


def stage_times(folder: Path) -> None:
    rows = []
    for tsv in sorted(folder.glob("*.tsv")):
        table = pd.read_csv(tsv, sep="\t")
        rows.append((tsv.stem, float(table["s"].iloc[-1]), float(table["max_rss"].iloc[-1])))
    if not rows:
        raise SystemExit(f"{folder}: no benchmark .tsv files")
    total = sum(s for _, s, _ in rows)
    print(f"{folder}: {len(rows)} jobs, {total:.0f} s ({total / 60:.1f} min) of job wall time in all")
    for name, seconds, rss in sorted(rows, key=lambda r: -r[1]):
        print(f"    {name:28s} {seconds:8.1f} s  {100 * seconds / total:5.1f}%   peak RSS {rss:7.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="cpu,paper")
    parser.add_argument("--devices", default="cpu" + (",cuda" if torch.cuda.is_available() else ""))
    parser.add_argument(
        "--frames", type=int, default=None, help="frames timed (default 64 cpu, 4 paper on CPU)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--benchmarks", type=Path, default=None, help="a results/<name>/benchmarks folder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.benchmarks is not None:
        stage_times(args.benchmarks)
    sizes = [s for s in args.sizes.split(",") if s]
    if sizes:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    with torch.no_grad():
        for device in args.devices.split(","):
            for size in sizes:
                slow = size == "paper" and device == "cpu"
                frames = args.frames or (4 if slow else 64)
                bench(size, torch.device(device), frames, min(args.batch, 2) if slow else args.batch)


if __name__ == "__main__":
    main()
