"""Adapter: rule video_page -> talk3d_core.report_page.video_page (videos that play inside the report)."""

from pathlib import Path

import pandas as pd

from talk3d_core.logs import log_to
from talk3d_core.report_page import Clip, video_page

with log_to(snakemake.log[0]) as log:
    inp, subject = snakemake.input, snakemake.wildcards.subject
    clips = [
        Clip("Self-driven", "held-out frames", Path(inp.video), "tracked cameras, the clip's own audio"),
        Clip("Self-driven", "depth", Path(inp.depth), "volume-rendered depth, near bright"),
    ]
    clips += [
        Clip("Driven by other audio", Path(p).stem, Path(p), "held-out eye and pose") for p in inp.drive
    ]
    clips += [Clip("Novel views", f"yaw_pitch {Path(p).stem}", Path(p), "degrees") for p in inp.views]
    video_page(f"Talk3D: {subject}", clips, snakemake.output[0], pd.read_parquet(inp.metrics))
    log.info("%s: %d videos", snakemake.output[0], len(clips))
