"""Adapter: rule features -> talk3d_core.features.subject_features."""

from talk3d_core.features import subject_features
from talk3d_core.util.io import list_frames
from talk3d_core.util.logs import log_to

OPTIONS = ("audio_backend", "audio_model", "audio_output", "audio_window", "audio_pad", "audio_normalise",
           "audio_silence", "eye_backend", "landmark_token", "test_fraction")  # fmt: skip

with log_to(snakemake.log[0]) as log:
    opts = snakemake.params.features
    meta = subject_features(
        snakemake.input.audio,
        snakemake.input.crop_table,
        snakemake.input.camera,
        snakemake.output[0],
        fps=snakemake.params.fps,
        **{k: opts[k] for k in OPTIONS},
        landmarks_parquet=snakemake.input.landmarks,
        crop_paths=list_frames(snakemake.input.crops),
    )
    log.info(
        "%d frames (%d train, %d test); audio %s: window %d x %d dims, normalised %s; eye %s; "
        "landmark token %s",
        meta["n_frames"], meta["n_train"], meta["n_test"], meta["audio_backend"], meta["audio_window"],
        meta["audio_dim"], meta["audio_normalise"], meta["eye_backend"], meta["landmark_token"],
    )  # fmt: skip
    eye = meta["eye"]
    log.info("eye: %d blinks, %.1f per minute", eye["n_blinks"], eye["blinks_per_minute"])
