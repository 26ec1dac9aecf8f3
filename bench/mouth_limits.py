"""What limits the rendered mouth? A trained subject's frames rendered with their conditions changed
one at a time, and the inner-lip opening of each measured with the landmark backend.

    python bench/mouth_limits.py --subject german [--model PATH] [--drive WAV ...] [--backend mediapipe]
        [--out bench/out/mouth_limits]

Reads results/<subject>/{train/deltaplane.pt (or --model), prior/frames.parquet, features.parquet,
crops, masks, audio.wav} (run the workflow up to the train stage first). Two sets of frames:

- ``held_out``: the test frames (what evaluate and the ablation score);
- ``silent``: the training frames the clip is silent in (evaluate's speech mask), the only silences
  the model was shown; the question there is whether it learned to close the mouth at all.

Variants of the conditions, each rendered on both sets:

- ``full``: as recorded;
- ``silence``: every audio window replaced by the one of a pause the model was trained on (the silent
  training frame of median level): does the audio alone close the mouth?
- ``still_tokens``: eye, rotation and landmark tokens held at their training mean (how much of the
  mouth rides on the co-speech motion in those tokens rather than on the audio);
- ``no_audio``: the audio token zeroed, as the ablation does.

With ``--drive``, each driving audio also renders the held-out cameras and tokens driven by it (as
rule render_drive does), and its row's ``closed`` is evaluate's silence_closed_fraction over the
driving clip's silent frames (below the footage's threshold, as evaluate), beside the footage's over
the whole clip (evaluate's ``footage`` row).

Per (set, variant): the mean opening in pixels of a 256-pixel crop, its Pearson r with the crops'
opening, and the closed fraction: opening below a quarter of the footage's 90th-percentile opening
in speech (evaluate's silence_closed_fraction threshold, taken from the footage for every row); and
``closed_render``, the render's rows held against the threshold in the render's own units (the
render's opening at the quantile of its training frames, rendered as recorded, where the footage's
threshold sits among the same frames: docs/decisions.md#the-renders-own-units). One line each, and a
JSON file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from talk3d_core.ablation import SETTINGS
from talk3d_core.features import drive_features, read_features
from talk3d_core.metrics.motion import audio_energy, closed_threshold, mouth_motion_stats, speech_mask
from talk3d_core.metrics.mouth import REFERENCE_SIZE, correlation, landmarks_of_images, mouth_opening
from talk3d_core.model.subject import FrameConditions, read_subject_data
from talk3d_core.model.talking_head import load_talking_head
from talk3d_core.render import drive_conditions, ping_pong, render_batches
from talk3d_core.util.images import to_uint8, to_unit
from talk3d_core.util.media import read_wav_float
from talk3d_core.util.sampling import evenly_spaced

#: The variants of the conditions, in the order printed (see the module docstring).
VARIANTS = ("full", "silence", "still_tokens", "no_audio")


def variant_conditions(cond: FrameConditions, train: np.ndarray, pause: int, name: str) -> FrameConditions:
    """The conditions of every frame under variant ``name`` (see the module docstring)."""
    if name == "silence":
        return dataclasses.replace(cond, audio=np.broadcast_to(cond.audio[pause], cond.audio.shape).copy())
    if name == "still_tokens":

        def still(x: np.ndarray) -> np.ndarray:
            return np.broadcast_to(x[train].mean(axis=0), x.shape).copy()

        return dataclasses.replace(
            cond, eye=still(cond.eye), rotation=still(cond.rotation), ldm=still(cond.ldm)
        )
    return cond


def closed_fraction(opening: np.ndarray, threshold: float) -> float:
    """Fraction of the frames with landmarks whose opening is below ``threshold``."""
    seen = opening[np.isfinite(opening)]
    return float(np.mean(seen < threshold)) if seen.size else float("nan")


def openings(images: np.ndarray, backend: str) -> np.ndarray:
    """Inner-lip opening (N,) of uint8 images (N, S, S, 3), in pixels of a 256-pixel crop."""
    lm = landmarks_of_images(images, backend=backend)
    return mouth_opening(lm) * REFERENCE_SIZE / images.shape[1]


def render_units_threshold(render: np.ndarray, footage: np.ndarray, threshold: float) -> float:
    """The render's opening at the quantile of the frames where ``threshold`` sits among the footage's
    openings of the same frames (N,), frames without landmarks in either left out."""
    seen = np.isfinite(render) & np.isfinite(footage)
    if not seen.any():
        raise SystemExit("no frame with landmarks in both the renders and the footage")
    return float(np.quantile(render[seen], np.mean(footage[seen] < threshold)))


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subject", default="german")
    parser.add_argument("--backend", default="mediapipe")
    parser.add_argument("--out", default="bench/out/mouth_limits")
    parser.add_argument("--model", help="deltaplane.pt to render (default results/<subject>/train/)")
    parser.add_argument("--drive", nargs="*", default=[], help="driving audio files (.wav)")
    args = parser.parse_args()

    root = Path("results") / args.subject
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = load_talking_head(args.model or root / "train/deltaplane.pt")
    size = head.generator.config.image_resolution
    data = read_subject_data(
        read_features(root / "features.parquet"), root / "prior/frames.parquet", crops=root / "crops",
        masks=root / "masks", size=size, background=head.training_record["background"],
    )  # fmt: skip
    wav, rate = read_wav_float(root / "audio.wav")
    energy = audio_energy(wav, rate, len(data.train), 25.0)
    speech = speech_mask(energy)
    train = np.asarray(data.train)
    sets = {"held_out": np.flatnonzero(~train), "silent": np.flatnonzero(train & ~speech)}
    if len(sets["silent"]) == 0:
        raise SystemExit(f"{root / 'audio.wav'}: no silent training frame to take a pause's audio from")
    # A typical pause of the clip (the silent training frame of median level), not the digital
    # silence a padded clip start may hold.
    pauses = sets["silent"][np.argsort(energy[sets["silent"]], kind="stable")]
    pause = int(pauses[len(pauses) // 2])
    print(f"{args.subject}: {size} px, pause audio from training frame {pause} ({energy[pause]:.1f} dB); "
          + ", ".join(f"{k} {len(v)} frames" for k, v in sets.items()))  # fmt: skip

    # The footage's openings, measured like the renders' (crops at the render size); "closed" is below
    # a quarter of its 90th-percentile opening in speech, over the whole clip.
    footage = openings(to_uint8(to_unit(data.crops)), args.backend)
    threshold = closed_threshold(footage[speech & np.isfinite(footage)])
    if threshold is None:
        raise SystemExit(f"{root / 'crops'}: no mouth opening found in the footage's speech")
    # The threshold in the render's units, from up to 500 training frames rendered as recorded.
    seen = np.flatnonzero(train)[evenly_spaced(int(train.sum()), 500)]
    batches = render_batches(head, data.conditions, data.cameras, seen)
    own = openings(to_uint8(torch.cat([o["image"] for _, o in batches])), args.backend)
    render_threshold = render_units_threshold(own, footage[seen], threshold)
    print(
        f"closed below {threshold:.2f} px (the footage's), {render_threshold:.2f} px "
        f"(the render's units, from {len(seen)} training frames)"
    )
    rows = []
    for set_name, frames in sets.items():
        if len(frames) < 3:
            print(f"{set_name}: fewer than 3 frames, skipped")
            continue
        truth = footage[frames]
        rows.append({"set": set_name, "variant": "footage", "frames": len(frames),
                     "opening": float(np.nanmean(truth)), "r": 1.0,
                     "closed": closed_fraction(truth, threshold),
                     "closed_render": closed_fraction(truth, threshold)})  # fmt: skip
        for variant in VARIANTS:
            cond = variant_conditions(data.conditions, train, pause, variant)
            options = SETTINGS["no_audio"] if variant == "no_audio" else {}
            batches = render_batches(head, cond, data.cameras, frames, **options)
            images = torch.cat([out["image"] for _, out in batches])
            opening = openings(to_uint8(images), args.backend)
            rows.append({"set": set_name, "variant": variant, "frames": len(frames),
                         "opening": float(np.nanmean(opening)), "r": correlation(opening, truth),
                         "closed": closed_fraction(opening, threshold),
                         "closed_render": closed_fraction(opening, render_threshold)})  # fmt: skip
    held_out = sets["held_out"]
    if args.drive:  # the footage's silences over the whole clip, what every driven row is held against
        whole = mouth_motion_stats(footage, energy, speech)
        rows.append({"set": "driven", "variant": "footage (clip)", "frames": int(whole["frames_silence"]),
                     "opening": _number(whole["opening_silence"]), "r": float("nan"),
                     "closed": _number(whole["silence_closed_fraction"]),
                     "closed_render": _number(whole["silence_closed_fraction"])})  # fmt: skip
    for wav_path in args.drive:
        name = Path(wav_path).stem
        drive_features(wav_path, root / "features.parquet", out / f"drive_{name}.parquet")
        audio = read_features(out / f"drive_{name}.parquet", kind="drive").audio
        cond = drive_conditions(data.conditions, audio, held_out)
        cameras = data.cameras[ping_pong(held_out, len(audio))]
        batches = render_batches(head, cond, cameras, np.arange(len(audio)))
        opening = openings(to_uint8(torch.cat([o["image"] for _, o in batches])), args.backend)
        drive_wav, drive_rate = read_wav_float(wav_path)
        drive_energy = audio_energy(drive_wav, drive_rate, len(audio), 25.0)
        drive_speech = speech_mask(drive_energy)
        stats = mouth_motion_stats(opening, drive_energy, drive_speech, closed_below=threshold)
        own_units = mouth_motion_stats(opening, drive_energy, drive_speech, closed_below=render_threshold)
        rows.append({"set": f"driven:{name}", "variant": "full", "frames": int(stats["frames_silence"]),
                     "opening": _number(stats["opening_silence"]), "r": float("nan"),
                     "closed": _number(stats["silence_closed_fraction"]),
                     "closed_render": _number(own_units["silence_closed_fraction"])})  # fmt: skip
    for row in rows:
        print(
            f"{row['set']:16s} {row['variant']:14s} n={row['frames']:4d} opening {row['opening']:6.2f} "
            f"px@256 r {row['r']:+.2f} closed {row['closed']:.2f} (render units {row['closed_render']:.2f})"
        )
    (out / f"{args.subject}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
