"""Adapter: rule fid_reference -> talk3d_core.fid_reference.fid_reference_stage (fid_reference.npz)."""

from talk3d_core.fid_reference import fid_reference_stage
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]):
    inp, params = snakemake.input, snakemake.params
    fid_reference_stage(
        generator_pt=inp.generator, features_parquet=inp.features, prior_frames=inp.prior_frames,
        crops=inp.crops, masks=inp.masks, frames=params.frames, batch_size=params.batch_size,
        out_npz=snakemake.output[0],
    )  # fmt: skip
