"""Adapter: rule demo_clip -> talk3d_core.demo.make_demo_clip."""

from talk3d_core.demo import make_demo_clip
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]) as log:
    demo = snakemake.params.demo
    truth = make_demo_clip(
        snakemake.output.video,
        duration_s=demo["duration_s"],
        fps=snakemake.params.fps,
        size=demo["size"],
        seed=demo["seed"],
        truth_json=snakemake.output.truth,
    )
    log.info(
        "wrote %s: %d frames, %.1f s (synthetic)",
        snakemake.output.video,
        truth["n_frames"],
        truth["duration_s"],
    )
