"""Adapter: rule train -> talk3d_core.train (deltaplane U-Net, then the super-resolution fine-tune)."""

from pathlib import Path

import torch

from talk3d_core.io import atomic_path
from talk3d_core.logs import log_to
from talk3d_core.media import read_wav_float
from talk3d_core.train import (
    configs_from_settings,
    load_prior,
    load_training_data,
    plot_loss_curves,
    train_deltaplane,
)

with log_to(snakemake.log[0]) as log:
    opts = snakemake.params.train
    out_dir = Path(snakemake.output.model).parent
    prior = load_prior(snakemake.input.generator, snakemake.input.identity)
    data, conditions = load_training_data(
        snakemake.input.crops, snakemake.input.masks, snakemake.input.prior_frames, snakemake.input.features,
        prior[0].config.image_resolution, background=snakemake.params.background,
    )  # fmt: skip
    net_config, train_config = configs_from_settings(opts)
    log.info(
        "training on %d frames (%d held out): %d + %d steps, tokens %s, %s conditioning of the %s",
        int(data.train.sum()), int((~data.train).sum()), train_config.steps, train_config.sr_steps,
        ", ".join(net_config.tokens), net_config.conditioning,
        "bottleneck and decoder" if net_config.decoder_conditioning else "bottleneck",
    )  # fmt: skip
    sync_audio = None
    if train_config.weight_sync > 0 and Path(opts["sync_weights"]).is_file():
        from talk3d_core.syncnet import wav2lip_mel

        wav, rate = read_wav_float(snakemake.input.audio)
        sync_audio = (wav2lip_mel(wav, rate), snakemake.params.fps)
    head = train_deltaplane(
        data, conditions, prior, out_dir, net_config=net_config, train_config=train_config,
        sync_audio=sync_audio, sync_weights=opts["sync_weights"], run_id=snakemake.params.code,
        restart_on_mismatch=True,
    )  # fmt: skip
    with atomic_path(snakemake.output.model) as tmp:
        torch.save(head.to_dict(), tmp)
    plot_loss_curves(out_dir / "train_log.jsonl", snakemake.output.curves)
