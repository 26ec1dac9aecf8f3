"""Does audio drive the mouth, across seeds and step budgets? The audio ablation of rule ablation
(P_ID alone, audio token zeroed, full model) on a subject the workflow has prepared, for several
training seeds, scored on a validation stretch held out of the training frames and on the test frames
at a series of steps of the main stage, then after the super-resolution fine-tune.

    python bench/audio_ablation.py --subject german --seeds 1 2 [--validation 45] [--fit 45] [--only 45]
        [--snapshots 1000,2000,3000,4000] [--set train.steps=3000 ...] [--out DIR]

Reads results/<subject>/{prior,crops,masks,features.parquet,audio.wav} (run the workflow up to the prior
first) and the train settings of config/config.yaml (the subject's overrides applied, then ``--set``).
The validation stretch is the last ``--validation`` training frames (the ones just before the test
block); they are left out of training, so a step budget can be chosen on them without looking at the
test frames. ``--fit N`` also scores the first N training frames: how well the mouth is fitted where it
was seen, beside how well it generalises; ``--only N`` trains on those N frames alone (with ``--fit N``:
can the network fit a few frames' mouths when it sees each of them often?). Snapshots are taken when the
run checkpoints, so they must be multiples of train.checkpoint_every (or the end of the main stage).
``--set`` values are validated against the config schema, as the workflow would. Prints one line per
(seed, step, split) and writes them to DIR/<subject>_seed<N>.jsonl (the trained model to
DIR/<subject>_seed<N>/deltaplane.pt, for bench/mouth_limits.py --model), then the mean over seeds of
each setting and the paired difference full - no_audio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
import yaml

from talk3d_core.ablation import SETTINGS, audio_ablation
from talk3d_core.features import read_features
from talk3d_core.metrics.motion import silent_frames
from talk3d_core.model.subject import SubjectData, read_subject_data
from talk3d_core.model.talking_head import Prior, load_prior
from talk3d_core.train import configs_from_settings, train_deltaplane
from talk3d_core.util.config import load_schema, subject_config, validate_config
from talk3d_core.util.media import read_wav_float

METRICS = ("face_psnr", "lmd", "opening_correlation", "opening_mae")


def subject_settings(subject: str, assignments: list[str]) -> dict:
    """The subject's config (config/config.yaml with its overrides), then ``train.KEY=VALUE``
    assignments, validated against the schema."""
    schema = load_schema("workflow/schemas/config.schema.yaml")
    config = yaml.safe_load(Path("config/config.yaml").read_text())
    config = subject_config(validate_config(config, schema), subject, schema)
    for item in assignments:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section != "train" or not name:
            raise SystemExit(f"--set {item}: expected train.KEY=VALUE")
        config["train"][name] = yaml.safe_load(value)
    return validate_config(config, schema, source="--set")


def subject_prior_and_data(subject: str, mouth_zoom: int = 0) -> tuple[Prior, SubjectData]:
    """The prepared subject's prior and training data (results/<subject>/), at the prior's image size
    and background; ``mouth_zoom`` > 0 also reads the mouth patches the zoomed mouth term needs."""
    root = Path("results") / subject
    prior = load_prior(root / "prior/generator.pt", root / "prior/P_id.pt")
    data = read_subject_data(
        read_features(root / "features.parquet"), root / "prior/frames.parquet", crops=root / "crops",
        masks=root / "masks", size=prior.generator.config.image_resolution,
        background=prior.training["background"],
        mouth_zoom=mouth_zoom,
    )  # fmt: skip
    return prior, data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subject", default="german")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--validation", type=int, default=45, help="training frames held out (0: none)")
    parser.add_argument("--fit", type=int, default=0, help="also score the first N training frames (0: no)")
    parser.add_argument("--only", type=int, default=0, help="train on the first N training frames (0: all)")
    parser.add_argument("--snapshots", default="1000,2000,3000,4000", help="main-stage steps to score")
    parser.add_argument("--set", action="append", default=[], help="train.KEY=VALUE over config.yaml")
    parser.add_argument("--out", default="bench/out/audio_ablation")
    args = parser.parse_args()

    config = subject_settings(args.subject, args.set)
    net_config, train_config = configs_from_settings(config["train"])
    root = Path("results") / args.subject
    mouth_zoom = train_config.mouth_zoom if train_config.weight_mouth_zoom > 0 else 0
    prior, data = subject_prior_and_data(args.subject, mouth_zoom)
    splits = {"test": np.flatnonzero(~data.train).tolist()}
    if args.validation:
        validation = np.flatnonzero(data.train)[-args.validation :]
        data = dataclasses.replace(data, train=data.train.copy())
        data.train[validation] = False
        splits = {"validation": validation.tolist(), **splits}
    if args.fit:  # trained-on frames: is the mouth fitted at all, or only poorly generalised?
        splits = {"fit": np.flatnonzero(data.train)[: args.fit].tolist(), **splits}
    if args.only:
        kept = np.flatnonzero(data.train)[: args.only]
        data = dataclasses.replace(data, train=np.zeros_like(data.train))
        data.train[kept] = True
    silent = None
    if train_config.silence_share > 0:
        wav, rate = read_wav_float(root / "audio.wav")
        silent = silent_frames(wav, rate, len(data.train), config["fps"])
    snapshots = {int(s) for s in args.snapshots.split(",") if s}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def score(head, seed: int, step: int | str) -> None:
        for split, frames in splits.items():
            result = audio_ablation(head, data, frames=frames)
            row = {"seed": seed, "step": step, "split": split, "frames": len(frames)}
            for name, scores in result["settings"].items():  # None (not computable) -> NaN
                row |= {f"{name}/{m}": math.nan if scores[m] is None else scores[m] for m in METRICS}
            rows.append(row)
            with open(out_dir / f"{args.subject}_seed{seed}.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    for seed in args.seeds:
        seeded = dataclasses.replace(train_config, seed=seed)

        def at_checkpoint(head, step: int, stage: str, seed: int = seed) -> None:
            if stage == "main" and step in snapshots:
                score(head, seed, step)

        head = train_deltaplane(
            data, prior, out_dir / f"{args.subject}_seed{seed}", net_config=net_config,
            train_config=seeded, progress=False, restart_on_mismatch=True, on_checkpoint=at_checkpoint,
            silent=silent,
        )  # fmt: skip
        score(head, seed, f"{seeded.steps}+sr{seeded.sr_steps}")
        torch.save(head.to_dict(), out_dir / f"{args.subject}_seed{seed}" / "deltaplane.pt")

    print("\nmean over seeds", args.seeds)
    for step, split in dict.fromkeys((r["step"], r["split"]) for r in rows):
        sel = [r for r in rows if r["step"] == step and r["split"] == split]
        parts = [f"step={step} split={split} n={len(sel)}"]
        for name in SETTINGS:
            parts.append(
                name + " " + " ".join(f"{m}={np.mean([r[f'{name}/{m}'] for r in sel]):.3f}" for m in METRICS)
            )
        diff = [r["full/lmd"] - r["no_audio/lmd"] for r in sel]
        parts.append(
            f"LMD full-no_audio {np.mean(diff):+.3f} (per seed {', '.join(f'{d:+.3f}' for d in diff)})"
        )
        print(" | ".join(parts))


if __name__ == "__main__":
    main()
