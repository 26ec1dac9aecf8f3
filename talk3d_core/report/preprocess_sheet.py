"""Contact sheet of the face preprocessing: crops with landmarks and head axes over their region masks.

A person checks at a glance that heads are whole and centred, lips are tightly labelled and the
head angles are plausible.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from talk3d_core.camera import project_template
from talk3d_core.face.template import MEAN_FACE_68
from talk3d_core.masks import colorize, read_mask
from talk3d_core.report.ingest_preview import LABEL_H
from talk3d_core.util.io import atomic_path, read_rgb
from talk3d_core.util.sampling import evenly_spaced


def _head_axes_px(yaw: float, pitch: float, roll: float, translation: np.ndarray, size: int, focal: float):
    """Crop-pixel positions of the nose tip and of 60 mm head axes drawn from it: (4, 2)."""
    nose = MEAN_FACE_68[30]
    points = np.stack([nose, nose + [60.0, 0, 0], nose + [0, 60.0, 0], nose + [0, 0, 60.0]])
    return project_template(
        np.array([yaw]), np.array([pitch]), np.array([roll]), translation[None], size, focal, template=points
    )[0]


def preprocess_sheet(
    crop_paths: list[Path],
    mask_paths: list[Path],
    lm68_crop: np.ndarray,
    camera: dict[str, np.ndarray],
    out_png: str | os.PathLike[str],
    *,
    focal: float,
    columns: int = 4,
    rows: int = 2,
    tile: int = 256,
) -> dict:
    """Write the preprocessing contact sheet PNG; return which frames it shows.

    ``columns`` x ``rows`` frames evenly spaced over the clip. Each frame is a pair of ``tile``-px
    squares: the crop with its 68 landmarks (green; lips red) and the head axes from the nose tip
    (x red, y green, z blue, 60 mm, posed by yaw/pitch/roll and the translation), above the crop
    blended with its colourised region labels. ``lm68_crop`` is (N, 68, 2) crop pixels; ``camera``
    holds (N,) arrays yaw, pitch, roll (degrees) and (N, 3) translation (mm); ``focal`` is the
    normalised focal length the pose was solved with.
    """
    if not (len(crop_paths) == len(mask_paths) == len(lm68_crop) == len(camera["yaw"])):
        raise ValueError(
            f"{out_png}: crops ({len(crop_paths)}), masks ({len(mask_paths)}), landmarks "
            f"({len(lm68_crop)}) and cameras ({len(camera['yaw'])}) disagree on the frame count"
        )
    shown = evenly_spaced(len(crop_paths), columns * rows).tolist()
    grid_rows = -(-len(shown) // columns)  # only the rows that hold frames
    sheet = np.full((2 * grid_rows * (tile + LABEL_H), columns * tile, 3), 255, np.uint8)
    for k, idx in enumerate(shown):
        crop = read_rgb(crop_paths[idx])
        size = crop.shape[0]
        labels = read_mask(mask_paths[idx])
        s = tile / size
        small = cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_AREA)
        top = small.copy()
        for i, (x, y) in enumerate(lm68_crop[idx] * s):
            colour = (230, 40, 40) if i >= 48 else (40, 220, 40)
            cv2.circle(top, (round(x), round(y)), 2, colour, -1, cv2.LINE_AA)
        yaw, pitch, roll = (float(camera[a][idx]) for a in ("yaw", "pitch", "roll"))
        axes = _head_axes_px(yaw, pitch, roll, np.asarray(camera["translation"][idx]), size, focal) * s
        origin = tuple(int(v) for v in axes[0].round())
        for end, colour in zip(axes[1:], [(255, 0, 0), (0, 200, 0), (0, 90, 255)], strict=True):
            cv2.arrowedLine(
                top, origin, tuple(int(v) for v in end.round()), colour, 2, cv2.LINE_AA, tipLength=0.2
            )
        colours = cv2.resize(colorize(labels), (tile, tile), interpolation=cv2.INTER_NEAREST)
        bottom = (0.45 * small + 0.55 * colours).astype(np.uint8)
        r, c = divmod(k, columns)
        y0, x0 = 2 * r * (tile + LABEL_H), c * tile
        sheet[y0 + LABEL_H : y0 + LABEL_H + tile, x0 : x0 + tile] = top
        sheet[y0 + 2 * LABEL_H + tile : y0 + 2 * (LABEL_H + tile), x0 : x0 + tile] = bottom
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    for k, idx in enumerate(shown):
        r, c = divmod(k, columns)
        y0, x0 = 2 * r * (tile + LABEL_H), c * tile
        angles = ", ".join(f"{a} {float(camera[a][idx]):+.1f}" for a in ("yaw", "pitch", "roll"))
        draw.text((x0 + 4, y0 + 3), f"frame {idx}: {angles}", fill=(0, 0, 0))
        draw.text((x0 + 4, y0 + tile + LABEL_H + 3), "regions", fill=(0, 0, 0))
    with atomic_path(out_png) as tmp:
        image.save(tmp)
    return {"frames": shown}
