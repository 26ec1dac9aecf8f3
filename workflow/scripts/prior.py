"""Adapter: rule prior -> talk3d_core.prior (scratch mode)."""

import json

import numpy as np

from talk3d_core.camera import read_camera_table, vector_column
from talk3d_core.eg3d import GeneratorConfig
from talk3d_core.features import read_features
from talk3d_core.io import atomic_path, list_frames
from talk3d_core.logs import log_to
from talk3d_core.prior import (
    PriorConfig,
    evaluate_prior,
    load_subject,
    prior_sheet,
    train_scratch_prior,
    write_prior_outputs,
)

with log_to(snakemake.log[0]) as log:
    opts, cam = snakemake.params.prior, snakemake.params.camera
    gen_config = getattr(GeneratorConfig, opts["generator"])()
    prior_config = PriorConfig(
        **{k: v for k, v in opts.items() if k not in ("mode", "generator", "background")}
    )
    split = read_features(snakemake.input.features).split
    cameras = vector_column(read_camera_table(snakemake.input.camera), "label")
    data = load_subject(
        list_frames(snakemake.input.crops),
        list_frames(snakemake.input.masks),
        cameras,
        np.asarray(split) == "train",
        gen_config.image_resolution,
        background=opts["background"],
    )
    out_dir = snakemake.output.generator.rsplit("/", 1)[0]
    model = train_scratch_prior(
        data, out_dir, gen_config=gen_config, prior_config=prior_config,
        run_id=snakemake.params.code, restart_on_mismatch=True,
    )  # fmt: skip
    write_prior_outputs(
        model, data, generator_pt=snakemake.output.generator, identity_pt=snakemake.output.identity,
        frames_parquet=snakemake.output.frames, gen_config=gen_config,
    )  # fmt: skip
    metrics = evaluate_prior(model, data)
    with atomic_path(snakemake.output.metrics) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info(
        "face-region PSNR: train %.2f dB, test %.2f dB (identity only)",
        metrics["train_psnr"],
        metrics["test_psnr"],
    )
    prior_sheet(model, snakemake.output.sheet, radius=cam["radius"], pivot=cam["pivot"], focal=cam["focal"])
