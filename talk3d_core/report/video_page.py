"""A self-contained HTML page of a subject's videos and metrics, for ``snakemake --report``.

Snakemake's report offers an ``.mp4`` only as a download; an HTML result is shown in an iframe. So the
videos are embedded in one page as base64 ``data:`` URIs inside ``<video>`` elements (H.264 + AAC with
``+faststart``, which every current browser plays), next to the metric table. The page needs no other
file, so it can also be mailed or opened on its own.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from talk3d_core.util.io import atomic_path

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1rem; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; }
figcaption { font-size: 0.85rem; max-width: 320px; }
video { width: 256px; background: #000; }
table { border-collapse: collapse; font-size: 0.85rem; margin-top: 0.5rem; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.unavailable td { color: #888; }
"""


@dataclass(frozen=True)
class Clip:
    """A video on the page: its section, title, file and a one-line caption."""

    section: str
    title: str
    path: Path
    caption: str = ""


def _video_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<video controls loop playsinline preload="metadata" src="data:video/mp4;base64,{data}"></video>'


def metrics_html(table: pd.DataFrame) -> str:
    """The metric table (metrics.parquet's rows) as an HTML table; unavailable rows show their reason."""
    head = "".join(
        f"<th>{c}</th>" for c in ("setting", "metric", "value", "unit", "frames", "backend", "note")
    )
    rows = []
    for r in table.itertuples(index=False):
        ok = r.status == "ok"
        value = f"{r.value:.4g}" if ok else "unavailable"
        cells = [r.setting, r.metric]
        tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
        tds += f'<td class="num">{value}</td><td>{html.escape(r.unit)}</td><td class="num">{r.frames}</td>'
        tds += f"<td>{html.escape(r.backend)}</td><td>{html.escape(r.reason)}</td>"
        rows.append(f'<tr class="{"ok" if ok else "unavailable"}">{tds}</tr>')
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def video_page(
    title: str, clips: Sequence[Clip], out_html: str | os.PathLike[str], metrics: pd.DataFrame | None = None
) -> None:
    """Write the page: one section per distinct ``Clip.section`` (in order of first appearance), each a
    grid of playable videos with captions, then the metric table."""
    sections: dict[str, list[Clip]] = {}
    for clip in clips:
        if not Path(clip.path).is_file():
            raise FileNotFoundError(f"{out_html}: video {clip.path} does not exist")
        sections.setdefault(clip.section, []).append(clip)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
    for section, items in sections.items():
        parts.append(f"<h2>{html.escape(section)}</h2><div class='grid'>")
        for clip in items:
            parts.append(
                f"<figure>{_video_tag(Path(clip.path))}<figcaption><b>{html.escape(clip.title)}</b>"
                f"{'<br>' + html.escape(clip.caption) if clip.caption else ''}</figcaption></figure>"
            )
        parts.append("</div>")
    if metrics is not None:
        parts.append("<h2>Metrics</h2>" + metrics_html(metrics))
    parts.append("</body></html>")
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text("".join(parts), encoding="utf-8")


def subject_video_page(
    subject: str,
    *,
    video: str | os.PathLike[str],
    depth: str | os.PathLike[str],
    drives: Sequence[str | os.PathLike[str]],
    views: Sequence[str | os.PathLike[str]],
    metrics_parquet: str | os.PathLike[str],
    out_html: str | os.PathLike[str],
) -> int:
    """Rule video_page: one subject's videos (self-driven, depth, driven by other audio, novel views
    named ``{yaw}_{pitch}.mp4``) and its metric table on one page. Returns the number of videos."""
    clips = [
        Clip("Self-driven", "held-out frames", Path(video), "tracked cameras, the clip's own audio"),
        Clip("Self-driven", "depth", Path(depth), "volume-rendered depth, near bright"),
    ]
    clips += [Clip("Driven by other audio", Path(p).stem, Path(p), "held-out eye and pose") for p in drives]
    clips += [Clip("Novel views", f"yaw_pitch {Path(p).stem}", Path(p), "degrees") for p in views]
    video_page(f"Talk3D: {subject}", clips, out_html, pd.read_parquet(metrics_parquet))
    return len(clips)
