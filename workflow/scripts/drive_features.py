"""Adapter: rule drive_features -> talk3d_core.features.drive_features."""

from talk3d_core.features import drive_features
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    meta = drive_features(snakemake.input.audio, snakemake.input.subject, snakemake.output[0])
    log.info("%s: %d frames of %s features", snakemake.input.audio, meta["n_frames"], meta["audio_backend"])
