"""Deltaplane training speed: steps/s and peak memory of one training step, CPU and paper sizes.

    python bench/train.py [--sizes cpu,paper] [--repeat N] [--devices cpu,cuda] [--threads T] [--batch B]
        [--generator KEY=VALUE ...]

A training step as rule train runs it (train mode, renderer jitter, the U-Net forward, rendering of
P_ID + dP, L1 + raw L1 + mouth losses, backward through the U-Net, Adam), on a random generator and
random crops (speed only; weights do not change the cost). Also the U-Net's share: its forward +
backward alone. Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the growth of the
process's peak RSS during the size's steps (sizes run smallest first, so each figure is an upper bound
for that size). Median of ``--repeat`` steps after one warm-up. ``--generator`` sets GeneratorConfig
fields over the size's (config/config.yaml's CPU preset: neural_rendering_resolution=64
image_resolution=128 depth_resolution=8 depth_resolution_importance=8).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import yaml
from heads import frontal_cameras, random_conditions, random_head, random_targets

from talk3d_core.nets.optional import OptionalNets
from talk3d_core.train import TrainConfig, deltaplane_losses


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(size: str, device: torch.device, repeat: int, batch: int, generator: dict) -> None:
    head = random_head(size, device, **generator)
    head.train()
    gen_cfg = head.generator.config
    optimizer = torch.optim.Adam(head.net.parameters(), lr=5e-4)
    cfg = TrainConfig(weight_lpips=0, weight_identity=0, weight_sync=0)
    s = gen_cfg.image_resolution
    cond = random_conditions(batch, head.net_config.audio_frames, device)
    cams = frontal_cameras(batch, device)
    target, face, mouth = random_targets(batch, s, device)

    def step() -> None:
        out = head(cond, cams, jitter=True)
        loss = deltaplane_losses(out, target, face, mouth, cfg, OptionalNets())["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def unet_only() -> None:
        delta = head.deltaplanes(cond)
        optimizer.zero_grad(set_to_none=True)
        delta.square().mean().backward()

    rss_before = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_step = median_seconds(step, device, repeat)
    t_unet = median_seconds(unet_only, device, repeat)
    if device.type == "cuda":
        memory = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB (CUDA peak allocated)"
    else:
        memory = f"{peak_rss_mb() - rss_before:.0f} MB (growth of peak RSS)"
    n_params = sum(p.numel() for p in head.net.parameters())
    print(
        f"{size:5s} {device.type:4s} batch {batch}: "
        f"planes 3x{gen_cfg.plane_channels}x{gen_cfg.plane_resolution}^2, "
        f"U-Net {n_params / 1e6:.2f} M params, output {s} px"
    )
    print(
        f"    step {t_step * 1000:8.1f} ms = {1 / t_step:6.2f} steps/s = {batch / t_step:6.2f} frames/s; "
        f"U-Net fwd+bwd {t_unet * 1000:8.1f} ms ({100 * t_unet / t_step:.0f}% of the step); peak {memory}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="cpu,paper")
    parser.add_argument("--devices", default="cpu" + (",cuda" if torch.cuda.is_available() else ""))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--generator", action="append", default=[], help="GeneratorConfig KEY=VALUE")
    args = parser.parse_args()
    generator = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.generator)}
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for device in args.devices.split(","):
        for size in args.sizes.split(","):
            repeat = args.repeat if (device == "cuda" or size == "cpu") else max(1, args.repeat // 5)
            bench(size, torch.device(device), repeat, args.batch, generator)


if __name__ == "__main__":
    main()
