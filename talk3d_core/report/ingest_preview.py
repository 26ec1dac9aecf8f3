"""Contact sheet of an ingested clip: a grid of frames above the audio waveform.

It lets a person check at a glance that the right clip was ingested, that frames are upright and
that the audio lines up with the video (the sampled frames are marked on the waveform).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from talk3d_core.util.io import atomic_path, list_frames
from talk3d_core.util.media import read_wav_float
from talk3d_core.util.sampling import evenly_spaced

LABEL_H = 18  # height of the text strip above each tile of a contact sheet, pixels


def _waveform_strip(samples: np.ndarray, width: int, height: int) -> Image.Image:
    """Min/max envelope of ``samples`` drawn into a ``width`` x ``height`` image."""
    strip = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(strip)
    mid = height / 2
    if samples.size:
        bins = np.array_split(samples, width)
        for x, chunk in enumerate(bins):
            lo, hi = (float(chunk.min()), float(chunk.max())) if chunk.size else (0.0, 0.0)
            draw.line([(x, mid - hi * mid), (x, mid - lo * mid)], fill=(40, 90, 160))
    draw.line([(0, mid), (width, mid)], fill=(180, 180, 180))
    return strip


def ingest_preview(
    frames_dir: str | os.PathLike[str],
    audio_wav: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    fps: float,
    columns: int = 4,
    rows: int = 2,
    tile: int = 256,
) -> dict:
    """Write the contact sheet PNG; return which frames it shows.

    ``columns`` x ``rows`` frames evenly spaced over the clip, each ``tile`` pixels wide and
    labelled with its frame index and time (s); below them the whole clip's waveform with a red
    tick at each shown frame's time.
    """
    paths = list_frames(frames_dir)
    shown = evenly_spaced(len(paths), columns * rows).tolist()
    n_show = len(shown)
    with Image.open(paths[0]) as first:
        tile_h = max(1, round(tile * first.height / first.width))
    label_h, wave_h = LABEL_H, 96
    sheet_w = columns * tile
    grid_rows = -(-n_show // columns)
    sheet = Image.new("RGB", (sheet_w, grid_rows * (tile_h + label_h) + wave_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, idx in enumerate(shown):
        r, c = divmod(k, columns)
        x, y = c * tile, r * (tile_h + label_h)
        with Image.open(paths[idx]) as im:
            sheet.paste(im.convert("RGB").resize((tile, tile_h), Image.Resampling.BILINEAR), (x, y + label_h))
        draw.text((x + 4, y + 3), f"frame {idx}  t={idx / fps:.2f}s", fill=(0, 0, 0))
    samples, rate = read_wav_float(audio_wav)
    wave_top = grid_rows * (tile_h + label_h)
    sheet.paste(_waveform_strip(samples, sheet_w, wave_h), (0, wave_top))
    duration = len(paths) / fps
    for idx in shown:
        x = round((idx / fps) / duration * (sheet_w - 1))
        draw.line([(x, wave_top), (x, wave_top + 10)], fill=(220, 30, 30), width=2)
    with atomic_path(out_png) as tmp:
        sheet.save(tmp)
    return {"frames": shown, "n_frames": len(paths), "audio_s": len(samples) / rate, "video_s": duration}
