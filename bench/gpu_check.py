"""The paper-scale checks for a machine with a GPU, in one table (runs on a CPU too, slowly).

    python bench/gpu_check.py [--checkpoint resources/weights/eg3d/ffhqrebalanced512-128.pkl]
                              [--plane-axes original] [--nvlabs-eg3d PATH/TO/eg3d/eg3d]
                              [--device cuda] [--batch 2] [--frames 16]

1. EG3D checkpoint: our loader on a real NVlabs pickle (when ``--checkpoint`` exists) and, when
   NVlabs' own code is importable (``--nvlabs-eg3d``: the folder holding legacy.py, dnnlib and
   torch_utils), the largest pixel difference between its render and ours of the same z and camera.
2. Framing: w_avg rendered at the frontal camera, its 68 landmarks (mediapipe) against the crop
   template the preprocessing aligns to (mean pixel distance of the five alignment points).
3. One training step at the paper sizes and batch (2 windows x 2 frames), without and with the
   lip-sync expert term on those windows (a random expert: the cost does not depend on its
   weights), its time and peak memory.
4. Render speed at 512 px: frames/s of the full model (P_ID + deltaplanes + SR) and peak memory.

A row that cannot run here says why ("unavailable: ...") instead of a number.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from heads import AUDIO_DIM, AUDIO_WINDOW, frontal_cameras, random_conditions, random_head, random_targets

from talk3d_core.camera import eg3d_camera
from talk3d_core.crop import alignment_points, canonical_template
from talk3d_core.model.subject import FrameConditions, face_box_pixels
from talk3d_core.nets.lipsync_expert import SYNC_FRAMES, SyncNetColor, sync_expert_loss
from talk3d_core.nets.optional import OptionalNets
from talk3d_core.render import render_batches
from talk3d_core.train import TrainConfig, deltaplane_losses, sync_window_faces
from talk3d_core.util.weights import sha256_file

Row = tuple[str, str, str]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> float:
    """Start a peak-memory measurement; returns the baseline (peak RSS in MB on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_text(device: torch.device, baseline: float) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB CUDA peak"
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
    return f"{grown:.0f} MB peak RSS growth"


def check_checkpoint(
    path: Path | None, plane_axes: str, nvlabs: Path | None, device: torch.device
) -> list[Row]:
    from talk3d_core.model.eg3d.checkpoint import generator_from_checkpoint, load_eg3d_checkpoint

    if path is None or not path.is_file():
        return [("EG3D checkpoint", "unavailable", f"no pickle at {path} (snakemake --cores 1 weights)")]
    start = time.perf_counter()
    ours = generator_from_checkpoint(load_eg3d_checkpoint(path), plane_axes=plane_axes).to(device)
    rows = [
        (
            "EG3D checkpoint",
            f"loaded in {time.perf_counter() - start:.1f} s",
            f"{path.name}, {plane_axes} axes",
        )
    ]
    if nvlabs is None:
        rows.append(("parity with NVlabs", "unavailable", "give --nvlabs-eg3d (NVlabs' eg3d/eg3d folder)"))
        return rows
    sys.path.insert(0, str(nvlabs))
    try:
        import legacy  # NVlabs' loader (runs the pickle's code: use a trusted file)

        with open(path, "rb") as fh:
            theirs = legacy.load_network_pkl(fh)["G_ema"].to(device).eval()
    except Exception as exc:  # NVlabs' code needs its CUDA extensions and old dependencies
        rows.append(("parity with NVlabs", "unavailable", f"NVlabs' loader failed: {exc!r}"[:200]))
        return rows
    # NVlabs jitters its ray samples even in evaluation, so whole images cannot match bit for bit:
    # compare the deterministic parts, the styles, the tri-planes and the super-resolution.
    torch.manual_seed(0)
    z = torch.randn(1, ours.config.z_dim, device=device)
    camera = torch.tensor(
        eg3d_camera(np.zeros(1), np.zeros(1), np.zeros(1)), dtype=torch.float32, device=device
    )
    with torch.no_grad():
        ws_ours, ws_theirs = ours.mapping(z, camera), theirs.mapping(z, camera)
        planes_ours = ours.planes(ws_ours, "const").flatten(1, 2)
        planes_theirs = theirs.backbone.synthesis(ws_theirs, noise_mode="const")
        h = ours.config.neural_rendering_resolution
        feats = torch.randn(1, ours.config.decoder_output_dim, h, h, device=device)
        sr_ours = ours.superresolution(feats[:, :3], feats, ws_ours, "const")
        sr_theirs = theirs.superresolution(feats[:, :3], feats, ws_theirs, noise_mode="const")
    for part, a, b in (("ws", ws_ours, ws_theirs), ("tri-planes", planes_ours, planes_theirs),
                       ("super-resolution", sr_ours, sr_theirs)):  # fmt: skip
        diff = float((a.float() - b.float()).abs().max())
        scale = float(b.float().abs().max())
        rows.append((f"parity with NVlabs: {part}", f"max |diff| {diff:.2e}", f"largest value {scale:.2f}"))
    return rows


def check_framing(path: Path | None, plane_axes: str, device: torch.device) -> list[Row]:
    from talk3d_core.face.landmark_backends import open_backend
    from talk3d_core.model.eg3d.checkpoint import generator_from_checkpoint, load_eg3d_checkpoint

    if path is None or not path.is_file():
        return [("w_avg framing", "unavailable", "needs the real EG3D pickle (a random one has no face)")]
    generator = generator_from_checkpoint(load_eg3d_checkpoint(path), plane_axes=plane_axes).to(device)
    camera = torch.tensor(
        eg3d_camera(np.zeros(1), np.zeros(1), np.zeros(1)), dtype=torch.float32, device=device
    )
    with torch.no_grad():
        ws = generator.backbone.mapping.w_avg.reshape(1, 1, -1).expand(1, generator.num_ws, -1)
        image = generator.synthesis(ws, camera, noise_mode="const")["image"][0]
    rgb = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    faces = open_backend("mediapipe").detect(rgb, None)
    if not faces or faces[0].lm68 is None:
        return [("w_avg framing", "no face found", "the render of w_avg has no detectable face")]
    found = alignment_points(faces[0].lm68[None])[0]
    error = np.linalg.norm(found - canonical_template(rgb.shape[0]), axis=1).mean()
    return [
        (
            "w_avg framing",
            f"{error:.1f} px",
            f"mean distance of 5 alignment points to the crop template at {rgb.shape[0]} px",
        )
    ]


def check_training(device: torch.device, batch: int, with_sync_term: bool) -> list[Row]:
    head = random_head("paper", device).train()
    optimizer = torch.optim.Adam(head.net.parameters(), lr=5e-4)
    s = head.generator.config.image_resolution
    cond = random_conditions(batch, head.net_config.audio_frames, device)
    cams = frontal_cameras(batch, device)
    target, face, mouth = random_targets(batch, s, device)
    cfg = TrainConfig(
        weight_lpips=0, weight_identity=0, batch_size=batch, window_positions=(1, 3), mouth_image="raw"
    )
    with tempfile.TemporaryDirectory() as tmp:  # a random expert, loaded the way training loads one
        path = Path(tmp) / "expert.pth"
        torch.save({"state_dict": SyncNetColor().state_dict()}, path)
        Path(tmp, ".expert.pth.sha256").write_text(sha256_file(path))  # as if installed: no warning
        expert, reason = sync_expert_loss(device, weights=path)
    assert expert is not None, reason
    # Each window's crops at the raw render's size, and a face box as the crops' landmarks give one.
    windows, r = batch // 2, head.generator.config.neural_rendering_resolution
    truth = torch.rand(windows, SYNC_FRAMES, 3, r, r, device=device) * 2 - 1
    box = face_box_pixels(torch.tensor([0.27, 0.42, 0.72, 0.85]), r).to(device)
    boxes = box.expand(windows, SYNC_FRAMES, 4)
    mel = torch.randn(windows, 80, 16, device=device)

    def step(with_sync: bool) -> None:
        out = head(cond, cams, jitter=True)
        loss = deltaplane_losses(out, target, face, mouth, cfg, OptionalNets())["total"]
        if with_sync:  # the official windows: the same renders among ground-truth frames
            faces = sync_window_faces(out["image_raw"], truth, boxes, cfg.window_positions)
            loss = loss + cfg.weight_sync * expert(faces, mel).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rows = []
    for with_sync in (False, True)[: 1 + with_sync_term]:
        step(with_sync)  # warm-up
        baseline = reset_peak(device)
        sync(device)
        start = time.perf_counter()
        step(with_sync)
        sync(device)
        seconds = time.perf_counter() - start
        label = "train step + sync term" if with_sync else "train step"
        rows.append((label, f"{seconds:.2f} s", f"batch {batch} at {s} px; {peak_text(device, baseline)}"))
    if not with_sync_term:
        rows.append(("train step + sync term", "skipped", "--no-sync"))
    return rows


def check_render(device: torch.device, frames: int, batch: int) -> list[Row]:
    head = random_head("paper", device).eval()
    rng = np.random.default_rng(0)
    n = frames + batch
    conditions = FrameConditions(
        audio=rng.standard_normal((n, AUDIO_WINDOW, AUDIO_DIM)).astype(np.float32),
        eye=rng.uniform(0, 2, n).astype(np.float32),
        rotation=rng.normal(0, 5, (n, 3)).astype(np.float32),
        ldm=rng.uniform(-1, 1, (n, 6)).astype(np.float32),
    )
    cameras = frontal_cameras(n, torch.device("cpu")).numpy()
    batches = render_batches(head, conditions, cameras, batch_size=batch)
    next(batches)  # warm-up
    baseline = reset_peak(device)
    sync(device)
    start, done = time.perf_counter(), 0
    for chunk, _ in batches:
        done += len(chunk)
    sync(device)
    fps = done / (time.perf_counter() - start)
    s = head.generator.config.image_resolution
    return [
        (
            "render",
            f"{fps:.2f} frames/s",
            f"{s} px, batch {batch}, {done} frames; {peak_text(device, baseline)}",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=Path("resources/weights/eg3d/ffhqrebalanced512-128.pkl")
    )
    parser.add_argument("--plane-axes", default="original", choices=["original", "fixed"])
    parser.add_argument("--nvlabs-eg3d", type=Path, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4, help="training frames, 2 a window (the paper's: 4)")
    parser.add_argument("--render-batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16, help="frames to time the render on")
    parser.add_argument("--no-sync", action="store_true", help="skip the step with the lip-sync expert term")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    rows: list[Row] = [("device", name, f"torch {torch.__version__}")]
    rows += check_checkpoint(args.checkpoint, args.plane_axes, args.nvlabs_eg3d, device)
    rows += check_framing(args.checkpoint, args.plane_axes, device)
    rows += check_training(device, args.batch, not args.no_sync)
    rows += check_render(device, args.frames, args.render_batch)
    print("| check | result | details |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
