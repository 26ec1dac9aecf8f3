"""Adapter: rule train -> talk3d_core.train.train_stage (deltaplane U-Net, then the SR fine-tune)."""

from talk3d_core.train import train_stage
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]):
    inp = snakemake.input
    train_stage(
        generator_pt=inp.generator,
        identity_pt=inp.identity,
        crops=inp.crops,
        masks=inp.masks,
        prior_frames=inp.prior_frames,
        features_parquet=inp.features,
        audio_wav=inp.audio,
        settings=snakemake.params.train,
        fps=snakemake.params.fps,
        model_pt=snakemake.output.model,
        curves_png=snakemake.output.curves,
        weights_dir=snakemake.params.weights["dir"],
        manifest=snakemake.params.weights["manifest"],
        run_id=snakemake.params.code,
    )
