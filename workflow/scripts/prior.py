"""Adapter: rule prior -> talk3d_core.prior.prior_stage (scratch fit or pretrained personalization)."""

from talk3d_core.prior import prior_stage
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]):
    inp, out, params = snakemake.input, snakemake.output, snakemake.params
    prior_stage(
        crops=inp.crops, masks=inp.masks, camera_parquet=inp.camera, crop_parquet=inp.crop,
        features_parquet=inp.features, checkpoint=inp.checkpoint or None, settings=params.prior,
        outputs={k: out[k] for k in ("generator", "identity", "frames", "sheet", "metrics")},
        weights_dir=params.weights["dir"], manifest=params.weights["manifest"], run_id=params.code,
    )  # fmt: skip
