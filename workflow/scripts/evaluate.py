"""Adapter: rule evaluate -> talk3d_core.evaluate.evaluate_stage (metrics.parquet, novel-view plot)."""

from talk3d_core.evaluate import SELF, evaluate_stage
from talk3d_core.util.logs import log_to

with log_to(snakemake.log[0]):
    inp, out, params = snakemake.input, snakemake.output, snakemake.params
    renders = {
        SELF: inp.renders,
        **{f"drive:{a}": f for a, f in zip(params.drives, inp.drive_renders, strict=True)},
        **{f"view:{v}": f for v, f in zip(params.views, inp.view_renders, strict=True)},
    }
    evaluate_stage(
        model_pt=inp.model, features_parquet=inp.features, prior_frames=inp.prior_frames, crops=inp.crops,
        masks=inp.masks, crop_table=inp.crop_table, audio_wav=inp.audio, fid_reference=inp.fid_reference,
        renders=renders,
        drives=dict(zip(params.drives, zip(inp.drive_features, inp.drive_audio, strict=True), strict=True)),
        settings=params.evaluate, views=params.views, fps=params.fps, metrics_parquet=out.metrics,
        views_png=out.views, weights_dir=params.weights["dir"], manifest=params.weights["manifest"],
        subject=snakemake.wildcards.subject, view_convention=params.view_convention,
        truth_json=inp.get("truth"),
    )  # fmt: skip
