"""Framing of the crops: the fixed template against EG3D's average face at VIVE3D's reference camera.

    python bench/crop_template.py [--size 512]
    python bench/crop_template.py --checkpoint resources/weights/eg3d/ffhqrebalanced512-128.pkl \
        --plane-axes original [--landmarks face_alignment] [--device cuda]

    python bench/crop_template.py --track results/german/landmarks.parquet [--track ...]

Without a checkpoint it prints the framing predicted from the geometry of EG3D's FFHQ crops (no
weights needed); with one (and the landmark backend's weights) it measures it as the crop_template
rule does, on a GPU in seconds, and prints measured against fixed and against predicted. With
``--track`` it compares the alignment point sets on a clip's landmarks (see the end).

Prediction. EG3D's FFHQ crops (dataset_preprocessing/ffhq, crop_images_in_the_wild.py) fit the five
detected points (eye centres, nose tip, mouth corners) to Deep3DFaceRecon's standard 3D landmarks
``lm3d_std`` (BFM, below) with a weak-perspective fit, rescale so one BFM unit spans 300 px of a 1024
image, centre-crop 700 px and resize to 512. Their cameras (3dface2idr_mat.py,
preprocess_face_cameras.py) put the world at 0.27 BFM units per world unit, the frontal camera 10 BFM
units (2.7) from the face, focal 2985.29 / 700 = 4.2647. Taken together: the average face's five points
sit at ``0.27 * lm3d_std`` in the world (plus the 0.006 y offset of the released cameras, scaled by
2.7 / 2.861 when they were put on the 2.7 sphere), and projecting them through a camera label gives
where EG3D draws them. Assumed: the generator's average face has FFHQ's average five-point geometry,
and lm3d_std's origin is the point the crops centre. The first line checks the model against the 2D
crop geometry (EG3D's own frontal camera); the second is VIVE3D's reference view.

Alignment points (``--track``). VIVE3D aligns the six keypoints 30, 8, 45, 36, 64, 60 (nose tip, chin,
outer eye corners, inner mouth corners) with a Procrustes fit (scale = ratio of the point sets' spreads);
the crop stage aligns five (eye centres, nose tip, mouth corners) by least squares. Per clip and
smoothing sigma (frames), each set is fitted to its own median over the clip, and the crop scale's
fast part (log scale minus a 0.5 s Gaussian: not head motion) is reported as its RMS and its Pearson
r with the mouth opening's fast part (inner-lip gap 62-66 over the outer eye-corner distance), away
from shot cuts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from talk3d_core.camera import EG3D_FOCAL, EG3D_PIVOT, VIVE3D_FOCAL, VIVE3D_PIVOT
from talk3d_core.crop import alignment_points, canonical_template
from talk3d_core.crop_template import REFERENCE_SAMPLER_OFFSETS, framing_difference, sampler_camera
from talk3d_core.model.head_proxy import project_points

ROOT = Path(__file__).resolve().parents[1]
RADIUS = 2.7
# Deep3DFaceRecon_pytorch util/load_mats.py load_lm3d (BFM/similarity_Lm3D_all.mat): eye centres
# (means of the corners), nose tip, mouth corners, image-left first; x right, y up, z to the viewer.
LM3D_STD = np.array(
    [
        [-0.3115, 0.2904, 0.1338],
        [0.3098, 0.2897, 0.1318],
        [0.0033, -0.0462, 0.5524],
        [-0.2522, -0.3813, 0.2241],
        [0.2485, -0.3813, 0.2224],
    ]
)
WORLD_PER_BFM = 0.27
WORLD_OFFSET = np.array([0.0, 0.006 * 2.7 / 2.861, 0.0])
# The 2D crop: BFM unit -> 300 px of 1024, centre 700 px of it resized to 512.
CROP_PX_PER_BFM = 300 * 512 / 700


def predicted_points(label: np.ndarray, size: int, nearer: float = 0.0) -> np.ndarray:
    """(5, 2) pixel positions (centres at integers) of the average face's five points under an EG3D
    label (1, 25) in a ``size`` image. ``nearer``: the face slid this far (world units) along the
    rays of the dataset's frontal camera towards it, i.e. smaller and nearer, so that camera sees
    the same image (depth is what the 2D crops do not pin down)."""
    world = WORLD_PER_BFM * LM3D_STD + WORLD_OFFSET
    frontal = np.array([0.0, WORLD_OFFSET[1], RADIUS])
    world = frontal + (world - frontal) * (RADIUS - nearer) / RADIUS
    uv, _ = project_points(world, label)
    return uv[0] * size - 0.5


def crop_geometry_points(size: int) -> np.ndarray:
    """(5, 2) the five points of the 2D crop model (orthographic lm3d_std about the crop centre)."""
    return (size / 2 + LM3D_STD[:, :2] * np.array([1.0, -1.0]) * CROP_PX_PER_BFM * size / 512) - 0.5


def procrustes_scale(src: np.ndarray, dst: np.ndarray) -> float:
    """VIVE3D's similarity scale of points (K, 2) onto (K, 2): the ratio of their spreads about
    their means (aligner.py ``get_alignment_matrix``)."""
    return float((dst - dst.mean(axis=0)).std() / (src - src.mean(axis=0)).std())


def alignment_breathing(lm68: np.ndarray, sigma: float) -> dict[str, tuple[float, float]]:
    """(fast scale RMS %, r with the mouth opening) of each alignment (see the module docstring)."""
    from scipy.ndimage import gaussian_filter1d

    from talk3d_core.crop import affine_scale, find_cuts, fit_similarity, smooth_track

    def fast(x: np.ndarray) -> np.ndarray:
        return x - gaussian_filter1d(x, 12.5, mode="nearest")

    ocular = np.linalg.norm(lm68[:, 45] - lm68[:, 36], axis=1)
    mouth = fast(np.linalg.norm(lm68[:, 62] - lm68[:, 66], axis=1) / ocular)
    cuts = find_cuts(alignment_points(lm68))
    # Shots are smoothed on their own; frames within 1 s of a cut are left out of the figures.
    keep = np.ones(len(lm68), bool)
    for cut in cuts:
        keep[max(0, cut - 25) : cut + 25] = False
    five = smooth_track(alignment_points(lm68), sigma, cuts)
    six = smooth_track(lm68[:, [30, 8, 45, 36, 64, 60]], sigma, cuts)
    scales = {
        "5 points, least squares": np.array(
            [affine_scale(fit_similarity(p, np.median(five, axis=0))) for p in five]
        ),
        "6 points, Procrustes": np.array([procrustes_scale(p, np.median(six, axis=0)) for p in six]),
    }
    out = {}
    for name, scale in scales.items():
        log_fast = fast(np.log(scale))
        out[name] = (100 * float(log_fast[keep].std()), float(np.corrcoef(log_fast[keep], mouth[keep])[0, 1]))
    return out


def row(name: str, diff: dict) -> str:
    d = diff["derived"]
    return (
        f"{name:46s} scale {diff['scale']:.3f}  offset {diff['offset_px']} px  "
        f"rot {diff['rotation_deg']:+.2f} deg  shape RMS {diff['residual_px']:.1f} px  "
        f"| ED {d['eye_distance']:.3f}  eye height {d['eye_height']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image side for the prediction (px)")
    parser.add_argument("--checkpoint", type=Path, help="EG3D pickle: measure (render w_avg, find landmarks)")
    parser.add_argument("--plane-axes", default="original", choices=["original", "fixed"])
    parser.add_argument(
        "--landmarks", default="face_alignment", help="landmark backend (config landmarks.backend)"
    )
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "resources/weights")
    parser.add_argument(
        "--out", type=Path, default=Path("crop_template_bench"), help="folder for the JSON and PNG"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--track", type=Path, action="append", default=[], help="a clip's landmarks.parquet")
    args = parser.parse_args()

    if args.track:
        from talk3d_core.landmarks import read_landmarks

        for path in args.track:
            lm68 = read_landmarks(path).lm68.astype(np.float64)
            for sigma in (1.0, 2.0):
                figures = alignment_breathing(lm68, sigma)
                text = "; ".join(f"{k}: {v[0]:.2f}% r {v[1]:+.2f}" for k, v in figures.items())
                print(f"{path} ({len(lm68)} frames), sigma {sigma:g}: fast scale RMS {text}")
        return

    size = args.size
    fixed = canonical_template(size)
    print(f"fixed template at {size} px: ED {np.linalg.norm(fixed[1] - fixed[0]) / size:.3f} of the side, "
          f"eye height {(fixed[:2, 1].mean() + 0.5) / size:.3f}")  # fmt: skip
    print("similarity fixed template -> the framing named (scale > 1: that face is bigger):")
    eg3d_label, _ = sampler_camera(0.0, 0.0, focal=EG3D_FOCAL, radius=RADIUS, pivot=EG3D_PIVOT)
    vive_label, angles = sampler_camera(
        *REFERENCE_SAMPLER_OFFSETS, focal=VIVE3D_FOCAL, radius=RADIUS, pivot=VIVE3D_PIVOT
    )
    print(
        row("EG3D FFHQ crop (2D crop geometry)", framing_difference(fixed, crop_geometry_points(size), size))
    )
    print(
        row(
            "predicted: EG3D frontal camera (4.2647)",
            framing_difference(fixed, predicted_points(eg3d_label, size), size),
        )
    )
    predicted = predicted_points(vive_label, size)
    print(row("predicted: VIVE3D reference (3.6, pitch -0.1)", framing_difference(fixed, predicted, size)))
    nearer = predicted_points(vive_label, size, nearer=0.2)
    print(row("  the same, face 0.2 nearer (at the pivot)", framing_difference(fixed, nearer, size)))
    print(f"  (VIVE3D reference view = head yaw {angles[0]:+.2f}, pitch {angles[1]:+.2f} degrees)")
    if args.checkpoint is None:
        return

    from talk3d_core.crop_template import crop_template_stage
    from talk3d_core.face.template import read_crop_template

    camera = {"focal": VIVE3D_FOCAL, "radius": RADIUS, "pivot": list(VIVE3D_PIVOT)}
    started = time.perf_counter()
    crop_template_stage(
        checkpoint=args.checkpoint, plane_axes=args.plane_axes, camera=camera,
        landmark_backend=args.landmarks, weights_dir=args.weights_dir,
        manifest=args.weights_dir / "manifest.yaml", out_json=args.out / "crop_template.json",
        out_png=args.out / "crop_template.png", device=args.device,
    )  # fmt: skip
    template = read_crop_template(args.out / "crop_template.json")
    measured = alignment_points(template.lm68[None])[0]
    rendered = template.size
    print(f"measured on {args.checkpoint.name} in {time.perf_counter() - started:.1f} s "
          f"({rendered} px render, {args.landmarks}; {args.out / 'crop_template.png'}):")  # fmt: skip
    print(
        row(
            "measured: VIVE3D reference", framing_difference(canonical_template(rendered), measured, rendered)
        )
    )
    pred = predicted_points(vive_label, rendered)
    print(row("  measured against predicted", framing_difference(pred, measured, rendered)))


if __name__ == "__main__":
    main()
