"""Adapter: rule crop -> talk3d_core.crop.crop_clip."""

from talk3d_core.crop import crop_clip
from talk3d_core.face.template import read_crop_template
from talk3d_core.landmarks import read_landmarks
from talk3d_core.util.io import list_frames
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    opts = snakemake.params.crop
    track = read_landmarks(snakemake.input.landmarks)
    template = read_crop_template(snakemake.input.template) if snakemake.input.template else None
    meta = crop_clip(
        list_frames(snakemake.input.frames),
        track.lm68,
        snakemake.output.crops,
        snakemake.output.table,
        size=opts["size"],
        sigma_frames=opts["sigma_frames"],
        zoom=opts["zoom"],
        cut_threshold_ed=opts["cut_threshold_ed"],
        template=template,
        threads=snakemake.threads,
    )
    log.info("crops: %d frames at %d px, shot cuts at %s", meta["n_frames"], meta["size"], meta["cuts"])
    log.info("crop template %s: points %s px", meta["template"]["name"], meta["template"]["points_px"])
    log.info("crop jitter (px at 512): %s", meta["jitter"])
