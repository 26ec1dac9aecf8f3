"""Adapter: rule ablation -> talk3d_core.ablation.ablation_stage (P_ID alone, no audio, full model)."""

from talk3d_core.ablation import ablation_stage
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]):
    inp, out = snakemake.input, snakemake.output
    ablation_stage(
        model_pt=inp.model, features_parquet=inp.features, prior_frames=inp.prior_frames, crops=inp.crops,
        masks=inp.masks, settings=snakemake.params.ablation, metrics_json=out.metrics, sheet_png=out.sheet,
        truth_json=inp.get("truth"), crop_table=inp.crop_table, fps=snakemake.params.fps,
    )  # fmt: skip
