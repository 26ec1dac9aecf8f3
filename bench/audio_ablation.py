"""Does audio drive the mouth, across seeds and step budgets? The audio ablation of rule ablation
(P_ID alone, audio token zeroed, full model) on a subject the workflow has prepared, for several
training seeds, scored on a validation stretch held out of the training frames and on the test frames
at a series of steps of the main stage, then after the super-resolution fine-tune.

    python bench/audio_ablation.py --subject german --seeds 1 2 [--validation 45]
        [--snapshots 1000,2000,3000,4000] [--set train.steps=3000 ...] [--out DIR]

Reads results/<subject>/{prior,crops,masks,features.parquet} (run the workflow up to the prior first)
and the train settings of config/config.yaml (the subject's overrides applied, then ``--set``). The
validation stretch is the last ``--validation`` training frames (the ones just before the test block);
they are left out of training, so a step budget can be chosen on them without looking at the test
frames. Snapshots are taken when the run checkpoints, so they must be multiples of
train.checkpoint_every (or the end of the main stage). Prints one line per (seed, step, split) and
writes them to DIR/<subject>_seed<N>.jsonl, then the mean over seeds of each setting and the paired
difference full - no_audio.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import yaml

import talk3d_core.train as train_module
from talk3d_core.ablation import audio_ablation
from talk3d_core.deltaplane import DeltaplaneConfig
from talk3d_core.train import TrainConfig, load_prior, load_training_data, train_deltaplane

METRICS = ("face_psnr", "lmd", "opening_correlation", "opening_mae")


def nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def train_settings(subject: str, overrides: list[str]) -> tuple[dict, str]:
    config = yaml.safe_load(Path("config/config.yaml").read_text())
    train = copy.deepcopy(config["train"])
    train.update(config.get("overrides", {}).get(subject, {}).get("train", {}))
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        if section != "train":
            raise SystemExit(f"--set {item}: only train.* settings can be changed here")
        train[name] = yaml.safe_load(value)
    return train, config["prior"]["background"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subject", default="german")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--validation", type=int, default=45, help="training frames held out (0: none)")
    parser.add_argument("--snapshots", default="1000,2000,3000,4000", help="main-stage steps to score")
    parser.add_argument("--set", action="append", default=[], help="train.KEY=VALUE over config.yaml")
    parser.add_argument("--out", default="bench/out/audio_ablation")
    args = parser.parse_args()

    opts, background = train_settings(args.subject, args.set)
    root = Path("results") / args.subject
    prior = load_prior(root / "prior/generator.pt", root / "prior/P_id.pt")
    data, conditions = load_training_data(
        root / "crops", root / "masks", root / "prior/frames.parquet", root / "features.parquet",
        prior[0].config.image_resolution, background=background,
    )  # fmt: skip
    test = np.flatnonzero(~data.train)
    train_index = np.flatnonzero(data.train)
    validation = train_index[len(train_index) - args.validation :] if args.validation else train_index[:0]
    data = dataclasses.replace(data, train=data.train.copy())
    data.train[validation] = False
    splits = {"validation": validation.tolist(), "test": test.tolist()}
    if not len(validation):
        del splits["validation"]
    net_config = getattr(DeltaplaneConfig, opts["net"])(
        tokens=tuple(opts["tokens"]), conditioning=opts["conditioning"], audio_frames=opts["audio_frames"],
        decoder_conditioning=opts["decoder_conditioning"],
    )  # fmt: skip
    snapshots = {int(s) for s in args.snapshots.split(",") if s}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def score(head, seed: int, step: int | str) -> None:
        was_training = head.training
        head.eval()
        for split, frames in splits.items():
            result = audio_ablation(head, data, conditions, frames=frames)
            row = {"seed": seed, "step": step, "split": split, "frames": len(frames)}
            row |= {
                f"{k}/{m}": nan_if_none(result["settings"][k][m]) for k in result["settings"] for m in METRICS
            }
            rows.append(row)
            with open(out_dir / f"{args.subject}_seed{seed}.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        head.train(was_training)

    for seed in args.seeds:
        opts_seed = dict(opts, seed=seed)
        train_config = TrainConfig(**{f.name: opts_seed[f.name] for f in dataclasses.fields(TrainConfig)})
        save = train_module._save

        def save_and_score(path, head, optimizer, step, stage, meta, seed=seed, save=save):
            save(path, head, optimizer, step, stage, meta)
            if stage == "main" and step in snapshots:
                score(head, seed, step)

        train_module._save = save_and_score
        try:
            head = train_deltaplane(
                data, conditions, prior, out_dir / f"{args.subject}_seed{seed}", net_config=net_config,
                train_config=train_config, progress=False, restart_on_mismatch=True,
            )  # fmt: skip
        finally:
            train_module._save = save
        score(head, seed, f"{train_config.steps}+sr{train_config.sr_steps}")

    print("\nmean over seeds", args.seeds)
    keys = sorted({(r["step"], r["split"]) for r in rows}, key=lambda k: (str(k[0]), k[1]))
    for step, split in keys:
        sel = [r for r in rows if r["step"] == step and r["split"] == split]
        line = [f"step={step} split={split} n={len(sel)}"]
        for setting in ("identity", "no_audio", "full"):
            line.append(
                setting
                + " "
                + " ".join(f"{m}={np.mean([r[f'{setting}/{m}'] for r in sel]):.3f}" for m in METRICS)
            )
        diff = [r["full/lmd"] - r["no_audio/lmd"] for r in sel]
        line.append(
            f"LMD full-no_audio {np.mean(diff):+.3f} (per seed {', '.join(f'{d:+.3f}' for d in diff)})"
        )
        print(" | ".join(line) if not any(math.isnan(x) for x in diff) else " | ".join(line) + " (nan)")


if __name__ == "__main__":
    main()
