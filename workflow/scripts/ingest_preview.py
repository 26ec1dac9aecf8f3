"""Adapter: rule ingest_preview -> talk3d_core.report.ingest_preview.ingest_preview."""

from talk3d_core.report.ingest_preview import ingest_preview
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    opts = snakemake.params.preview
    shown = ingest_preview(
        snakemake.input.frames,
        snakemake.input.audio,
        snakemake.output[0],
        fps=snakemake.params.fps,
        columns=opts["columns"],
        rows=opts["rows"],
        tile=opts["tile"],
    )
    log.info("contact sheet of frames %s", shown["frames"])
