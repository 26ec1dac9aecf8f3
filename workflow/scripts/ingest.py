"""Adapter: rule ingest -> talk3d_core.ingest.ingest_video."""

from talk3d_core.ingest import ingest_video
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    opts = snakemake.params.ingest
    meta = ingest_video(
        snakemake.input.video,
        snakemake.output.frames,
        snakemake.output.audio,
        snakemake.output.meta,
        fps=snakemake.params.fps,
        audio_rate=opts["audio_rate"],
        audio=snakemake.input.get("audio"),
        min_duration_s=opts["min_duration_s"],
        max_audio_mismatch_s=opts["max_audio_mismatch_s"],
        max_side=opts["max_side"],
        image_format=opts["image_format"],
        threads=snakemake.threads,
    )
    log.info("%s: %d frames at %s fps", snakemake.input.video, meta["n_frames"], meta["fps"])
