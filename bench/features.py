"""Audio feature throughput: seconds of audio per second of compute for each audio backend.

    python bench/features.py [--wav PATH | --video PATH] [--seconds S] [--models base,large] [--repeat N]

Audio: results/cnn/audio.wav when present, else the audio of ../shared/data/videos/cnn.mp4 ingested
into a temporary folder (talk3d_core.ingest.ingest_audio). ``mel`` is timed on the whole clip.
``wav2vec2``/``hubert`` use the real checkpoint when it is in the local Hugging Face cache
(talk3d_core.nets.audio_features.DEFAULT_CHECKPOINTS); otherwise a randomly initialised model with the
real base / large architecture sizes is saved to a temporary folder and timed: SPEED ONLY, its
features are meaningless. Those run on ``--seconds`` of audio (default: the whole clip). The model
runs on CUDA when torch sees a GPU, else on the CPU with torch's default thread count.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from talk3d_core.features import subject_features
from talk3d_core.ingest import ingest_audio
from talk3d_core.nets import audio_features as af
from talk3d_core.util.media import read_wav_float

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WAV = REPO / "results" / "cnn" / "audio.wav"
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "cnn.mp4"
FPS = 25.0

# Architecture sizes of the published checkpoints (their config.json); base = the transformers
# defaults (facebook/wav2vec2-base, facebook/hubert-base-ls960), large = wav2vec2-large-xlsr-53 /
# hubert-large-ls960-ft (24 layers x 1024, layer-norm conv encoder, pre-norm transformer).
LARGE = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
    conv_bias=True,
)


def load_audio(wav_path: Path | None, video: Path) -> tuple[np.ndarray, str]:
    """(float32 waveform in [-1, 1] at 16 kHz, description of where it came from)."""
    if wav_path is not None and wav_path.is_file():
        wav, rate = read_wav_float(wav_path)
        source = str(wav_path)
    else:
        if not video.is_file():
            raise SystemExit(f"{video}: not found (pass --wav PATH or --video PATH)")
        with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
            out = Path(tmp) / "audio.wav"
            ingest_audio(video, out, audio_rate=af.AUDIO_RATE)
            wav, rate = read_wav_float(out)
        source = f"{video} (ingested)"
    if rate != af.AUDIO_RATE:
        raise SystemExit(f"{source}: expected 16 kHz audio, got {rate} Hz")
    return wav, source


def whole_frames(wav: np.ndarray, seconds: float | None) -> tuple[np.ndarray, int]:
    """The waveform cut to ``seconds`` (if given) and to whole video frames, and its frame count."""
    per_frame = round(af.AUDIO_RATE / FPS)
    if seconds is not None:
        wav = wav[: round(seconds * af.AUDIO_RATE)]
    n = len(wav) // per_frame
    return wav[: n * per_frame], n


def time_backend(
    wav: np.ndarray, n: int, backend: str, model_path: str | None, repeat: int
) -> tuple[float, tuple]:
    """Best wall time over ``repeat`` runs (after one untimed warm-up run that also loads the model)."""
    shape = af.frame_features(
        wav, af.AUDIO_RATE, backend=backend, n_frames=n, fps=FPS, model_path=model_path
    ).shape
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        af.frame_features(wav, af.AUDIO_RATE, backend=backend, n_frames=n, fps=FPS, model_path=model_path)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, shape


def report(label: str, audio_s: float, seconds: float, shape: tuple, note: str = "") -> None:
    print(
        f"{label:<34} {audio_s:7.1f} s audio in {seconds:8.3f} s: {audio_s / seconds:9.1f} s audio/s  "
        f"out {shape}{'  ' + note if note else ''}",
        flush=True,
    )


def cached_checkpoint(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def random_model(folder: Path, backend: str, size: str) -> tuple[str, float, int]:
    """Save a randomly initialised model of the real architecture; (folder, save seconds, params)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    config_class, model_class = (
        (HubertConfig, HubertModel) if backend == "hubert" else (Wav2Vec2Config, Wav2Vec2Model)
    )
    config = config_class(**(LARGE if size == "large" else {}))
    start = time.perf_counter()
    torch.manual_seed(0)
    net = model_class(config)
    params = sum(p.numel() for p in net.parameters())
    net.save_pretrained(folder)
    return str(folder), time.perf_counter() - start, params


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--wav", type=Path, default=DEFAULT_WAV, help="16 kHz mono wav (default: results/cnn)"
    )
    parser.add_argument(
        "--video", type=Path, default=DEFAULT_VIDEO, help="clip to ingest when --wav is absent"
    )
    parser.add_argument("--seconds", type=float, default=None, help="audio seconds for wav2vec2/hubert")
    parser.add_argument("--models", default="base,large", help="architecture sizes to time (base,large)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per backend (best is shown)")
    parser.add_argument(
        "--stage-dir",
        type=Path,
        default=DEFAULT_WAV.parent,
        help="subject results folder with audio.wav, crop.parquet, camera.parquet: times the whole stage",
    )
    parser.add_argument("--skip-ssl", action="store_true", help="time mel and the whole stage only")
    args = parser.parse_args()

    wav, source = load_audio(args.wav, args.video)
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu x{torch.get_num_threads()} threads"
    )
    print(
        f"audio: {source}, {len(wav) / af.AUDIO_RATE:.2f} s  fps: {FPS:g}  "
        f"device: {device}  cpus: {os.cpu_count()}"
    )

    clip, n = whole_frames(wav, None)
    seconds, shape = time_backend(clip, n, "mel", None, max(3, args.repeat))
    report("mel (log-mel, numpy)", n / FPS, seconds, shape)

    stage_inputs = [args.stage_dir / f for f in ("audio.wav", "crop.parquet", "camera.parquet")]
    if all(p.is_file() for p in stage_inputs):
        with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
            start = time.perf_counter()
            meta = subject_features(*stage_inputs, Path(tmp) / "features.parquet", fps=FPS)
            seconds = time.perf_counter() - start
        label = f"whole stage ({meta['audio_backend']}, {meta['eye_backend']})"
        print(
            f"{label:<40} {meta['n_frames']:5d} frames in {seconds:6.2f} s: "
            f"{meta['n_frames'] / seconds:8.1f} frames/s  ({args.stage_dir})"
        )
    else:
        print(f"whole stage: skipped, {args.stage_dir} lacks audio.wav, crop.parquet or camera.parquet")
    if args.skip_ssl:
        return

    clip, n = whole_frames(wav, args.seconds)
    for backend in ("wav2vec2", "hubert"):
        name = af.DEFAULT_CHECKPOINTS[backend]
        if cached_checkpoint(name):
            seconds, shape = time_backend(clip, n, backend, None, args.repeat)
            report(f"{backend} ({name})", n / FPS, seconds, shape, "real weights")
            continue
        for size in [s.strip() for s in args.models.split(",") if s.strip()]:
            with tempfile.TemporaryDirectory(prefix=f"bench_{backend}_{size}_") as tmp:
                folder, save_s, params = random_model(Path(tmp), backend, size)
                start = time.perf_counter()
                af.frame_features(
                    clip[: 16 * 640], af.AUDIO_RATE, backend=backend, n_frames=16, fps=FPS, model_path=folder
                )
                load_s = time.perf_counter() - start
                seconds, shape = time_backend(clip, n, backend, folder, args.repeat)
                af._load_ssl_model.cache_clear()  # free the model before the next one
            note = f"RANDOM INIT, speed only ({params / 1e6:.0f} M params; load+1st call {load_s:.1f} s)"
            report(f"{backend} {size} (random weights)", n / FPS, seconds, shape, note)


if __name__ == "__main__":
    main()
