"""Adapter: rules render_video, render_drive, render_view -> talk3d_core.render.render_stage."""

from talk3d_core.render import render_stage
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]):
    inp, out, params = snakemake.input, snakemake.output, snakemake.params
    render_stage(
        mode=params.mode, model_pt=inp.model, features_parquet=inp.features, prior_frames=inp.prior_frames,
        audio=inp.audio, settings=params.render, fps=params.fps, video_mp4=out.video,
        depth_mp4=out.get("depth"), renders_mkv=out.renders, view=params.view,
        drive_features=inp.get("drive_features"), frames=inp.get("frames"),
        crop_parquet=inp.get("crop_table"),
    )  # fmt: skip
