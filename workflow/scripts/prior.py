"""Adapter: rule prior -> talk3d_core.prior (scratch mode)."""

from pathlib import Path

import numpy as np

from talk3d_core.camera import read_camera_table, vector_column
from talk3d_core.eg3d import GeneratorConfig
from talk3d_core.features import read_features_meta, split_by_time
from talk3d_core.io import list_frames, write_json
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
    opts = snakemake.params.prior
    gen_config = getattr(GeneratorConfig, opts["generator"])()
    prior_config = PriorConfig(
        **{k: v for k, v in opts.items() if k not in ("mode", "generator", "background")}
    )
    cameras = read_camera_table(snakemake.input.camera)
    camera = cameras.attrs["camera"]  # the focal, radius and pivot the labels were made with
    # The split is the features stage's; it is derived from the recorded fraction, no columns read.
    features = read_features_meta(snakemake.input.features)
    split = split_by_time(features["n_frames"], features["test_fraction"])
    data = load_subject(
        list_frames(snakemake.input.crops),
        list_frames(snakemake.input.masks),
        vector_column(cameras, "label"),
        np.asarray(split) == "train",
        gen_config.image_resolution,
        background=opts["background"],
    )
    model = train_scratch_prior(
        data, Path(snakemake.output.generator).parent, gen_config=gen_config, prior_config=prior_config,
        run_id=snakemake.params.code, restart_on_mismatch=True,
    )  # fmt: skip
    write_prior_outputs(
        model, data, generator_pt=snakemake.output.generator, identity_pt=snakemake.output.identity,
        frames_parquet=snakemake.output.frames,
    )  # fmt: skip
    metrics = evaluate_prior(model, data)
    write_json(snakemake.output.metrics, metrics)
    for split_name in ("train", "test"):
        value = metrics[f"{split_name}_psnr"]
        log.info(
            "face-region PSNR, %s frames: %s", split_name, "no frames" if value is None else f"{value:.2f} dB"
        )
    prior_sheet(
        model, snakemake.output.sheet, radius=camera["radius"], pivot=camera["pivot"], focal=camera["focal"]
    )
