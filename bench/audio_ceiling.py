"""How much of the mouth opening can the audio features predict at all? The deltaplane net's own audio
encoder, trained directly on the footage's inner-lip opening: a ceiling for the rendered opening's r,
which the full model reaches only through the U-Net, the render and a landmark reader.

    python bench/audio_ceiling.py --subject german [--frames 1 2 4 8] [--seeds 0 1 2] [--steps 2000]
        [--drive WAV ...] [--model DELTAPLANE_PT ...]

Reads results/<subject>/{features.parquet, crop.parquet, audio.wav} and the train settings of
config/config.yaml with the subject's overrides (the net's token width and audio attention). For each
attention span S (``train.audio_frames``: how many neighbouring frames' audio windows the token
attends over) and seed, an :class:`AudioEncoder` and a Linear head fit the standardised opening of
the training frames (the crop table's landmarks, pixels of the crop; MSE, Adam 5e-4, 16 frames a
step). Prints the Pearson r of the prediction with the footage's opening on the training and on the
held-out frames, and, with ``--drive`` (driving audio, through
:func:`talk3d_core.features.drive_features` as rule features_drive makes it), the fraction of the
driving clip's silent frames (evaluate's speech mask) predicted closed, by evaluate's threshold from
the footage's openings in speech; the footage's own silent frames are given for comparison.
Seconds per (S, seed) on one thread.

``--model`` (a trained ``deltaplane.pt`` of this subject, e.g. from bench/audio_ablation.py): how much
of the opening its audio token holds, by a ridge readout (standardised token, lambda 10) fitted on the
training frames, scored by r on the held-out ones. A token that holds the opening beside a render
whose opening does not follow it places the loss between the token and the image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from audio_ablation import subject_settings

from talk3d_core.crop import read_crop_table
from talk3d_core.features import drive_features, read_features
from talk3d_core.metrics.motion import closed_threshold, silent_frames
from talk3d_core.metrics.mouth import mouth_opening
from talk3d_core.model.deltaplane import DeltaplaneConfig, OpeningToken, fit_opening_predictor
from talk3d_core.model.subject import FrameConditions
from talk3d_core.model.talking_head import load_talking_head
from talk3d_core.train import configs_from_settings
from talk3d_core.util.media import read_wav_float


def windows_of(audio: np.ndarray, frames: int) -> torch.Tensor:
    """(N, S, W, D): the audio windows of the S = ``frames`` neighbours of every frame, as training
    gathers them (:meth:`FrameConditions.gather`) from per-frame windows ``audio`` (N, W, D)."""
    n = len(audio)
    conditions = FrameConditions(audio, np.zeros(n), np.zeros((n, 3)), np.zeros((n, 6)))
    return conditions.gather(np.arange(n), frames, torch.device("cpu"))["audio"]


def fit_opening(
    audio: torch.Tensor, opening: np.ndarray, train: np.ndarray, net: DeltaplaneConfig, steps: int, seed: int
) -> Callable[[torch.Tensor], np.ndarray]:
    """The opening token's predictor (:func:`fit_opening_predictor`: an audio encoder over the whole
    span + a Linear head) fitted to the opening (N,) of the ``train`` frames (indices) from their
    windows ``audio`` (N, S, W, D); returns windows (M, S, W, D) -> opening (M,) px."""
    torch.manual_seed(seed)
    frames, window, dim = audio.shape[1:]
    token = OpeningToken(dim, window, net.token_dim, frames=frames, attention=net.audio_attention,
                         encoder=torch.nn.Identity())  # fmt: skip
    target = torch.as_tensor(opening[train], dtype=torch.float32)
    fit_opening_predictor(token, audio[train], target, steps=steps)

    def predict(windows: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return token.predict(windows).numpy()

    return predict


def token_readout(model: Path, audio: np.ndarray, opening: np.ndarray, train: np.ndarray) -> np.ndarray:
    """(N,) opening predicted from a trained model's audio token (:class:`AudioEncoder` output, its own
    span) by ridge regression fitted on the ``train`` frames; ``audio`` (N, W, D) the subject's windows."""
    head = load_talking_head(model)
    with torch.no_grad():
        token = head.net.tokens.audio(windows_of(audio, head.net_config.audio_frames)).double().numpy()
    mean, std = token[train].mean(axis=0), token[train].std(axis=0) + 1e-6
    z = (token - mean) / std
    a, b = z[train], opening[train] - opening[train].mean()
    weights = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ b)
    return z @ weights + opening[train].mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subject", required=True)
    parser.add_argument("--frames", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--drive", nargs="*", default=[], help="driving audio files (wav)")
    parser.add_argument("--model", type=Path, nargs="*", default=[], help="trained deltaplane.pt files")
    args = parser.parse_args()
    torch.set_num_threads(1)

    root = Path("results") / args.subject
    table = read_features(root / "features.parquet")
    crops = read_crop_table(root / "crop.parquet")
    opening = mouth_opening(crops.lm68)
    wav, rate = read_wav_float(root / "audio.wav")
    silent = silent_frames(wav, rate, len(opening), table.meta["fps"])
    train = np.flatnonzero(table.split == "train")
    test = np.flatnonzero(table.split != "train")
    threshold = closed_threshold(opening[~silent & np.isfinite(opening)])
    if threshold is None:
        raise SystemExit(f"{root / 'crop.parquet'}: no open mouth in speech, so no closed threshold")
    net, _ = configs_from_settings(subject_settings(args.subject, [])["train"])
    print(
        f"{args.subject}: {len(train)} training, {len(test)} held-out frames; footage silent frames "
        f"{silent.sum()}, closed {np.mean(opening[silent] < threshold):.2f} (threshold {threshold:.2f} px)"
    )
    for model in args.model:
        predicted = token_readout(model, table.audio, opening, train)
        r_train, r_test = (np.corrcoef(predicted[i], opening[i])[0, 1] for i in (train, test))
        print(f"{model}: audio token readout r train {r_train:.2f} held-out {r_test:.2f}", flush=True)
    drives = {}
    with tempfile.TemporaryDirectory() as folder:
        for wav_path in args.drive:
            out = Path(folder) / f"{Path(wav_path).stem}.parquet"
            drive_features(wav_path, root / "features.parquet", out)
            w, r = read_wav_float(wav_path)
            drive = read_features(out, kind="drive").audio
            drives[Path(wav_path).stem] = (drive, silent_frames(w, r, len(drive), table.meta["fps"]))

    for frames in args.frames:
        audio = windows_of(table.audio, frames)
        rows = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            predict = fit_opening(audio, opening, train, net, args.steps, seed)
            predicted = predict(audio)
            r_train = np.corrcoef(predicted[train], opening[train])[0, 1]
            r_test = np.corrcoef(predicted[test], opening[test])[0, 1]
            line = f"S={frames} seed {seed}: r train {r_train:.2f} held-out {r_test:.2f}"
            closed = []
            for name, (drive_audio, drive_silent) in drives.items():
                q = predict(windows_of(drive_audio, frames))[drive_silent]
                closed.append(np.mean(q < threshold) if len(q) else np.nan)
                line += f"; {name} silence closed {closed[-1]:.2f} ({drive_silent.sum()} frames)"
            print(f"{line}  [{time.perf_counter() - t0:.0f} s]", flush=True)
            rows.append((r_train, r_test, *closed))
        means = np.nanmean(np.asarray(rows, dtype=float), axis=0)
        print(f"S={frames} mean of {len(rows)}: " + " ".join(f"{v:.2f}" for v in means), flush=True)


if __name__ == "__main__":
    main()
