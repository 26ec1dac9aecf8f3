"""Adapter: rule crop_template -> talk3d_core.crop_template.crop_template_stage."""

from talk3d_core.crop_template import crop_template_stage
from talk3d_core.util.logs import log_to

with log_to(snakemake.log.log):
    params = snakemake.params
    crop_template_stage(
        checkpoint=snakemake.input.checkpoint,
        plane_axes=params.prior["plane_axes"],
        camera=params.camera,
        landmark_backend=params.landmarks["backend"],
        weights_dir=params.weights["dir"],
        manifest=params.weights["manifest"],
        out_json=snakemake.output[0],
        out_png=snakemake.log.render,
    )
