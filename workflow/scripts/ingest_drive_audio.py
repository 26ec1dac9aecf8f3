"""Adapter: rule ingest_drive_audio -> talk3d_core.ingest.ingest_audio."""

from talk3d_core.ingest import ingest_audio
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    meta = ingest_audio(snakemake.input[0], snakemake.output[0], audio_rate=snakemake.params.audio_rate)
    log.info("%s -> %s: %s", snakemake.input[0], snakemake.output[0], meta)
