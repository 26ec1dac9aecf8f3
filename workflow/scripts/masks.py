"""Adapter: rule masks -> talk3d_core.masks.masks_clip."""

from talk3d_core.crop import read_crop_table
from talk3d_core.masks import masks_clip
from talk3d_core.util.io import list_frames
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    crops = read_crop_table(snakemake.input.table)
    summary = masks_clip(
        list_frames(snakemake.input.crops),
        crops.lm68,
        snakemake.output[0],
        backend=snakemake.params.masks["backend"],
        weights_dir=snakemake.params.weights_dir,
        manifest=snakemake.params.manifest,
        threads=snakemake.threads,
    )
    log.info("masks: %s", summary)
