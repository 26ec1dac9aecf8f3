"""Adapter: rule evaluate -> talk3d_core.evaluate (metrics.parquet, novel-view plot, table in the log)."""

from pathlib import Path

from talk3d_core.evaluate import (
    Backends,
    DriveInput,
    evaluate_subject,
    metrics_text,
    plot_view_metrics,
    write_metrics,
)
from talk3d_core.features import read_features, read_features_meta
from talk3d_core.logs import log_to
from talk3d_core.media import read_wav_float
from talk3d_core.train import load_talking_head, load_training_data

with log_to(snakemake.log[0]) as log:
    opts, inp = snakemake.params.evaluate, snakemake.input
    head = load_talking_head(inp.model)
    data, conditions = load_training_data(
        inp.crops, inp.masks, inp.prior_frames, inp.features, head.generator.config.image_resolution,
        background=snakemake.params.background,
    )  # fmt: skip
    eye = read_features_meta(inp.features)["eye"]
    backends = Backends.open(
        landmark=opts["landmark_backend"], identity_backends=opts["identity_backends"],
        sync_weights=opts["sync_weights"], au45_calibration=eye.get("calibration"),
    )  # fmt: skip
    drives = {}
    for features, audio in zip(inp.drive_features, inp.drive_audio, strict=True):
        wav, rate = read_wav_float(audio)
        drives[Path(audio).parent.name] = DriveInput(read_features(features, kind="drive").audio, wav, rate)
    wav, rate = read_wav_float(inp.audio)
    table = evaluate_subject(
        head, data, conditions, wav, rate, backends, drives=drives, views=snakemake.params.views,
        camera=snakemake.params.camera, drive_camera=snakemake.params.drive_camera,
        fps=snakemake.params.fps, fid_reference_frames=opts["fid_reference_frames"],
        max_drive_frames=opts["max_drive_frames"],
        batch_size=opts["batch_size"],
    )  # fmt: skip
    log.info("metrics of %s:\n%s", snakemake.wildcards.subject, metrics_text(table))
    write_metrics(table, snakemake.output.metrics)
    plot_view_metrics(table, snakemake.output.views)
