"""EG3D tri-plane generator speed: per-stage forward time and volume-rendering throughput.

    python bench/prior.py [--sizes cpu,paper] [--repeat N] [--devices cpu,cuda] [--threads T]

Randomly initialised generators (speed only; weights do not change the cost), batch 1, eval mode,
no autograd. Stages: mapping (z, c -> ws), planes (ws -> tri-plane), volume render (rays at the
neural rendering resolution, coarse + importance samples, compositing), super-resolution, and the
whole forward. Throughput: rays/s and frames/s of the volume renderer at the neural resolution.
On CUDA (when torch sees a GPU) also the peak memory of a full forward. Median of ``--repeat``
runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from talk3d_core.camera import eg3d_camera
from talk3d_core.model.eg3d import GeneratorConfig, TriPlaneGenerator, camera_rays

PRESETS = {"cpu": GeneratorConfig.cpu, "paper": GeneratorConfig.paper}


def timed(fn, device: torch.device, repeat: int) -> tuple[float, object]:
    """Median seconds of ``fn()`` over ``repeat`` runs after a warm-up, and its last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


@torch.no_grad()
def bench(size: str, device: torch.device, repeat: int) -> None:
    cfg = PRESETS[size]()
    torch.manual_seed(0)
    g = TriPlaneGenerator(cfg).eval().to(device)
    n_params = sum(p.numel() for p in g.parameters())
    z = torch.randn(1, cfg.z_dim, device=device)
    c = torch.tensor(eg3d_camera(np.zeros(1), np.zeros(1), np.zeros(1)), dtype=torch.float32, device=device)
    h = cfg.neural_rendering_resolution

    t_map, ws = timed(lambda: g.mapping(z, c), device, repeat)
    t_planes, planes = timed(lambda: g.planes(ws), device, repeat)

    def volume():
        origins, directions = camera_rays(c, h)
        return g.renderer(planes, g.decoder, origins, directions)

    t_volume, (features, _, _) = timed(volume, device, repeat)
    feature_image = features.transpose(1, 2).reshape(1, -1, h, h)
    t_sr, _ = timed(lambda: g.superresolution(feature_image[:, :3], feature_image, ws), device, repeat)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_total, _ = timed(lambda: g(z, c), device, repeat)

    samples = cfg.depth_resolution + cfg.depth_resolution_importance
    print(
        f"[{size} @ {device.type}] params {n_params / 1e6:.2f} M; planes 3 x {cfg.plane_channels} x "
        f"{cfg.plane_resolution}^2; rays {h}^2 x ({cfg.depth_resolution} + "
        f"{cfg.depth_resolution_importance}); output {cfg.image_resolution}^2"
    )
    for name, t in (
        ("mapping", t_map),
        ("planes", t_planes),
        ("volume render", t_volume),
        ("super-resolution", t_sr),
        ("full forward", t_total),
    ):
        print(f"  {name:<17s} {t * 1e3:10.2f} ms")
    print(
        f"  renderer throughput: {h * h / t_volume:,.0f} rays/s "
        f"({h * h * samples / t_volume:,.0f} samples/s), {1 / t_volume:.2f} frames/s at {h}^2; "
        f"full forward {1 / t_total:.2f} frames/s"
    )
    if device.type == "cuda":
        print(f"  peak memory (full forward): {torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="cpu,paper", help="comma-separated presets: cpu, paper")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per stage (median reported)")
    parser.add_argument("--devices", default="cpu,cuda", help="cpu and/or cuda (cuda skipped when absent)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = sorted(set(sizes) - set(PRESETS))
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {sorted(PRESETS)}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}"
    )
    for device_name in args.devices.split(","):
        if device_name == "cuda" and not torch.cuda.is_available():
            print("CUDA not available: GPU timings skipped")
            continue
        if device_name == "cuda":
            print(f"GPU: {torch.cuda.get_device_name(0)}")
        for size in sizes:
            bench(size, torch.device(device_name), args.repeat)


if __name__ == "__main__":
    main()
