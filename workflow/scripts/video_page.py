"""Adapter: rule video_page -> talk3d_core.report.video_page (videos that play inside the report)."""

from talk3d_core.report.video_page import subject_video_page
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    inp = snakemake.input
    n = subject_video_page(
        snakemake.wildcards.subject, video=inp.video, depth=inp.depth, drives=inp.drive, views=inp.views,
        metrics_parquet=inp.metrics, out_html=snakemake.output[0],
    )  # fmt: skip
    log.info("%s: %d videos", snakemake.output[0], n)
