"""Adapter: rule train -> talk3d_core.train.train_stage (deltaplane U-Net, then the SR fine-tune)."""

from talk3d_core.train import train_stage
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]):
    inp, out, params = snakemake.input, snakemake.output, snakemake.params
    train_stage(
        generator_pt=inp.generator, identity_pt=inp.identity, crops=inp.crops, masks=inp.masks,
        crop_table=inp.crop_table, prior_frames=inp.prior_frames, features_parquet=inp.features,
        audio_wav=inp.audio,
        settings=params.train, fps=params.fps, model_pt=out.model, curves_png=out.curves,
        weights_dir=params.weights["dir"], manifest=params.weights["manifest"], run_id=params.code,
    )  # fmt: skip
