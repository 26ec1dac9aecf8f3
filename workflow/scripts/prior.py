"""Adapter: rule prior -> talk3d_core.prior (scratch mode) or talk3d_core.personalize (pretrained)."""

import dataclasses
from pathlib import Path

import numpy as np

from talk3d_core.camera import read_camera_table, vector_column
from talk3d_core.crop import read_crop_table
from talk3d_core.eg3d import GeneratorConfig
from talk3d_core.eg3d.checkpoint import generator_from_checkpoint, load_eg3d_checkpoint
from talk3d_core.features import read_features_meta, split_by_time
from talk3d_core.head_proxy import fit_head_proxy
from talk3d_core.io import list_frames, write_json
from talk3d_core.logs import log_to
from talk3d_core.personalize import PretrainedConfig, personalize
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
    out_dir = Path(snakemake.output.generator).parent
    cameras = read_camera_table(snakemake.input.camera)
    camera = cameras.attrs["camera"]  # the focal, radius and pivot the labels were made with
    # The split is the features stage's; it is derived from the recorded fraction, no columns read.
    features = read_features_meta(snakemake.input.features)
    train = np.asarray(split_by_time(features["n_frames"], features["test_fraction"])) == "train"
    labels = vector_column(cameras, "label")
    landmarks = read_crop_table(snakemake.input.crop).lm68
    proxy = fit_head_proxy(
        landmarks, labels, camera["size"], frames=np.flatnonzero(train), what=snakemake.input.crop
    )
    log.info(
        "head proxy: %.5f world units/mm, mid-eye at %s, landmark RMS %.2f px",
        proxy.scale, [round(v, 4) for v in proxy.mideye], proxy.rms_px,
    )  # fmt: skip
    pretrained = opts["mode"] == "pretrained"
    if pretrained:
        checkpoint = load_eg3d_checkpoint(snakemake.input.checkpoint)
        generator = generator_from_checkpoint(checkpoint, plane_axes=opts["plane_axes"])
        gen_config = generator.config
        log.info("pretrained generator: %s (%s axes)", snakemake.input.checkpoint, opts["plane_axes"])
    else:
        # Fitted from scratch, nothing outside the tri-plane box is real: render it empty.
        gen_config = getattr(GeneratorConfig, opts["generator"])(empty_outside_box=True)
    data = load_subject(
        list_frames(snakemake.input.crops), list_frames(snakemake.input.masks), labels, train,
        gen_config.image_resolution, background=opts["background"], proxy=None if pretrained else proxy,
    )  # fmt: skip
    if pretrained:
        model, refined, offsets = personalize(
            data, cameras[["yaw", "pitch", "roll"]].to_numpy(), landmarks, generator, out_dir,
            pivot=camera["pivot"], cfg=PretrainedConfig(**opts["pretrained"]), run_id=snakemake.params.code,
            restart_on_mismatch=True,
        )  # fmt: skip
        data = dataclasses.replace(data, cameras=refined)
    else:
        offsets = None  # the model's own training-frame offsets
        prior_config = PriorConfig(**{f.name: opts[f.name] for f in dataclasses.fields(PriorConfig)})
        model = train_scratch_prior(
            data, out_dir, gen_config=gen_config, prior_config=prior_config, run_id=snakemake.params.code,
            restart_on_mismatch=True,
        )  # fmt: skip
    write_prior_outputs(
        model, data, generator_pt=snakemake.output.generator, identity_pt=snakemake.output.identity,
        frames_parquet=snakemake.output.frames, offsets=offsets,
    )  # fmt: skip
    metrics = evaluate_prior(model, data)
    for split_name in ("train", "test"):
        value = metrics[f"{split_name}_psnr"]
        log.info(
            "face-region PSNR, %s frames: %s", split_name, "no frames" if value is None else f"{value:.2f} dB"
        )
    sheet = prior_sheet(
        model, snakemake.output.sheet, radius=camera["radius"], pivot=camera["pivot"], focal=camera["focal"],
        proxy=proxy,
    )  # fmt: skip
    for view in sheet["views"]:
        log.info(
            "P_ID at yaw %+.0f pitch %+.0f: %.1f%% semi-transparent pixels, landmark depth error %.1f mm",
            view["yaw"], view["pitch"], 100 * view["semi_transparent"], view["landmark_depth_mm"],
        )  # fmt: skip
    metrics |= {"mode": opts["mode"], "head_proxy": proxy.as_dict(), "views": sheet["views"]}
    write_json(snakemake.output.metrics, metrics)
