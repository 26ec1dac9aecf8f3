"""Speech features aligned to video frames: log-mel (in-house), wav2vec2 and HuBERT (transformers).

Every backend turns 16 kHz mono audio into *feature frames* at a fixed hop and groups them so that
video frame n (time span [n / fps, (n + 1) / fps) seconds) gets exactly K feature frames whose
analysis windows are centred inside that span, at ``(n + (k + 0.5) / K) / fps`` seconds for
k = 0..K-1. The K frames are concatenated in time order: per-frame vector ``[f_0 | f_1 | ... ]``,
so feature frame k of video frame n sits at ``[k * C:(k + 1) * C]`` of the row (C dims each).

Backends (:data:`AUDIO_BACKENDS`):

- ``mel`` (default, no download): log-mel spectrogram computed here with numpy. 25 ms Hann window
  (400 samples), 10 ms hop (160 samples) -> K = 4 at 25 fps; 512-point FFT; 80 triangular bands
  on the HTK mel scale from 20 Hz to 7600 Hz (unit-peak triangles). Values are band power in
  dB relative to digital full scale, ``10 * log10(max(P, 1e-10))``: the one-sided power spectrum
  is scaled so that its bins sum to the windowed signal's mean square, and the overlapping
  triangles sum to 1 between band centres, so the bands' powers add up to the mean square of the
  20-7600 Hz content (a full-scale sine: -3 dB in total, split over its two nearest bands; white
  noise of RMS 0.1: about -20 dB in total). Digital silence sits at the floor, -100 dB.
  D = 4 x 80 = 320 at 25 fps.
- ``wav2vec2`` / ``hubert``: a pretrained self-supervised speech model (``Wav2Vec2Model`` /
  ``HubertModel`` from transformers). Its convolutional encoder has a 400-sample receptive field
  and a 320-sample stride (20 ms, 50 Hz) -> K = 2 at 25 fps. The waveform is normalised to zero
  mean and unit variance over the whole clip (what these checkpoints' feature extractors do:
  ``do_normalize`` in ``preprocessor_config.json``, read when present), padded with zeros by
  (400 - 320) / 2 = 40 samples at both ends so that feature frame j is centred at sample
  ``320 * j + 160``, and run in pieces of :data:`SSL_CHUNK_S` seconds with :data:`SSL_CONTEXT_S`
  seconds of overlap on each side (the overlap is discarded) so memory stays bounded on long audio.
  ``output="hidden"`` (default) gives the last hidden state (1024 dims for the large models, as
  ER-NeRF/GeneFace take from HuBERT); ``output="logits"`` gives the CTC head's logits (the
  checkpoint must have one), which is what Talk3D and RAD-NeRF use.

Checkpoints the paper family uses (load them from a local folder or the local Hugging Face cache;
nothing is downloaded here):

- Talk3D (cvlab-kaist/Talk3D, ``preprocess_utils/data_utils/nerf/asr.py``, RAD-NeRF's script):
  ``cpierse/wav2vec2-large-xlsr-53-esperanto`` through ``AutoModelForCTC``; the features are the
  CTC **logits** (44 dims, the Esperanto character vocabulary) at 50 Hz, stored as ``aud_eo.npy``
  as 16-frame windows (stride 2) per video frame; the data loader then takes 8 video frames
  (index - 4 .. index + 3, zero padded). The script is RAD-NeRF's ``nerf/asr.py``
  (ashawkey/RAD-NeRF runs it the same way, ``--wav aud.wav --save_feats``);
  ``facebook/wav2vec2-large-960h-lv60-self`` is its commented-out alternative. It normalises
  each 1.4 s streaming piece on its own; here the whole clip is normalised once.
- ER-NeRF (Fictionarry/ER-NeRF): DeepSpeech features in its paper; ``--asr_model esperanto``
  (the same ``cpierse/wav2vec2-large-xlsr-53-esperanto`` logits) or ``hubert``:
  ``facebook/hubert-large-ls960-ft``, **last hidden state** (1024 dims) reshaped to 2 per video
  frame, borrowed from GeneFace (yerfor/GeneFace), which uses the same checkpoint.

So :data:`DEFAULT_CHECKPOINTS` names ``cpierse/wav2vec2-large-xlsr-53-esperanto`` for ``wav2vec2``
(use ``output="logits"`` to match Talk3D exactly) and ``facebook/hubert-large-ls960-ft`` for
``hubert``. On a machine with internet, ``hf download <name>`` fills the Hugging Face cache, or
``hf download <name> --local-dir <folder>`` makes a folder to give as ``model_path``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from talk3d_core.util.weights import WeightsError

#: Backend names accepted by :func:`frame_features` (and the ``features.audio_backend`` config key).
AUDIO_BACKENDS = ("mel", "wav2vec2", "hubert")

#: Sample rate (Hz) every backend expects; ingest writes audio.wav at this rate.
AUDIO_RATE = 16000

#: Checkpoint looked up in the local Hugging Face cache when ``model_path`` is None.
DEFAULT_CHECKPOINTS = {
    "wav2vec2": "cpierse/wav2vec2-large-xlsr-53-esperanto",
    "hubert": "facebook/hubert-large-ls960-ft",
}

#: What a self-supervised backend returns per feature frame: last hidden state, or CTC logits.
SSL_OUTPUTS = ("hidden", "logits")

# Log-mel parameters (samples at 16 kHz).
MEL_WINDOW = 400  # 25 ms
MEL_HOP = 160  # 10 ms
MEL_FFT = 512
MEL_BANDS = 80
MEL_FMIN_HZ = 20.0
MEL_FMAX_HZ = 7600.0
MEL_FLOOR_DB = -100.0

#: Seconds of audio per model call for wav2vec2/HuBERT, and seconds of context kept on each side.
SSL_CHUNK_S = 20.0
SSL_CONTEXT_S = 1.0

#: Padding modes of :func:`frame_windows`.
WINDOW_PADS = ("edge", "zero")

# A constant dimension (std below this) is centred but not scaled: dividing by a near-zero std
# would blow small differences in driving audio up to huge values.
_MIN_STD = 1e-6
# Samples a waveform may differ from n_frames video frames by (in video frames) before it is an error.
_LENGTH_TOLERANCE_FRAMES = 2


# ---------------------------------------------------------------------------------------------
# Public API


def frame_features(
    wav: np.ndarray,
    rate: int,
    *,
    backend: str,
    n_frames: int,
    fps: float,
    model_path: str | os.PathLike[str] | None = None,
    output: str = "hidden",
) -> np.ndarray:
    """Per-video-frame speech features (n_frames, D), float32, D = K x C (see the module docstring).

    ``wav``: (S,) float waveform in [-1, 1] at ``rate`` Hz (must be :data:`AUDIO_RATE`). It is cut
    or zero-padded at the end to exactly ``n_frames * rate / fps`` samples; a difference of more
    than two video frames is an error. ``fps``: the pipeline frame rate; ``rate / fps`` must be a
    whole multiple of the backend's hop (160 samples for mel, 320 for wav2vec2/HuBERT), e.g. 25 or
    50 fps. ``model_path``: for wav2vec2/HuBERT, a local folder (``save_pretrained`` layout) or a
    Hugging Face model name present in the local cache; None means :data:`DEFAULT_CHECKPOINTS`.
    ``output``: ``"hidden"`` (last hidden state) or ``"logits"`` (CTC head); mel ignores both.

    Raises:
        ValueError: unknown backend/output, wrong rate, fps incompatible with the hop, bad shape.
        WeightsError: the model is not available locally (the message says how to fetch it).
    """
    if backend not in AUDIO_BACKENDS:
        raise ValueError(f"unknown audio backend {backend!r}; expected one of {', '.join(AUDIO_BACKENDS)}")
    wav = _check_waveform(wav, rate, n_frames, fps)
    if backend == "mel":
        k = _features_per_frame(MEL_HOP, rate, fps, backend)
        feats = log_mel(wav)
    else:
        if output not in SSL_OUTPUTS:
            raise ValueError(
                f"unknown audio feature output {output!r}; expected one of {', '.join(SSL_OUTPUTS)}"
            )
        name = str(model_path) if model_path is not None else DEFAULT_CHECKPOINTS[backend]
        model = _load_ssl_model(backend, name, output)
        k = _features_per_frame(model.hop, rate, fps, backend)
        feats = model.features(wav)
    if len(feats) != n_frames * k:
        raise AssertionError(f"{backend}: {len(feats)} feature frames for {n_frames} x {k}")  # alignment bug
    return feats.reshape(n_frames, -1).astype(np.float32, copy=False)


def fit_normalisation(features: np.ndarray) -> dict[str, Any]:
    """Per-dimension statistics of a subject's features (N, D), JSON-serialisable.

    Returns ``{"dims": D, "frames": N, "mean": [D floats], "std": [D floats]}``; a dimension whose
    standard deviation is below 1e-6 gets std 1 (it is centred, not scaled).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features to normalise must be a non-empty (N, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features to normalise contain NaN or infinite values")
    std = x.std(axis=0)
    std[std < _MIN_STD] = 1.0
    mean = x.mean(axis=0)
    return {"dims": int(x.shape[1]), "frames": int(x.shape[0]), "mean": mean.tolist(), "std": std.tolist()}


def apply_normalisation(features: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """``(features - mean) / std`` with the statistics of :func:`fit_normalisation`; (N, D) float32.

    Used on the subject's own features and on driving audio with the subject's statistics.
    Raises ValueError when the statistics' dimension count does not match the features'.
    """
    x = np.asarray(features, dtype=np.float32)
    try:
        mean = np.asarray(stats["mean"], dtype=np.float64)
        std = np.asarray(stats["std"], dtype=np.float64)
    except (KeyError, TypeError) as err:
        raise ValueError(f"normalisation statistics need 'mean' and 'std' lists, got {stats!r:.200}") from err
    if x.ndim != 2:
        raise ValueError(f"features to normalise must be (N, D), got shape {x.shape}")
    if mean.shape != (x.shape[1],) or std.shape != mean.shape:
        raise ValueError(
            f"normalisation statistics have {mean.size} mean / {std.size} std dims, but the features "
            f"have {x.shape[1]} dims (statistics from another backend, model or fps?)"
        )
    return ((x - mean) / std).astype(np.float32)


def frame_windows(per_frame: np.ndarray, window: int, pad: str = "edge") -> np.ndarray:
    """Windows of neighbouring frames (N, window, D) from per-frame features (N, D).

    Row w of frame n's window is frame ``n - window // 2 + w``, so the window covers frames
    ``n - window // 2 .. n + window - window // 2 - 1`` and frame n itself sits at row
    ``window // 2`` (for window 8: n-4 .. n+3, as Talk3D's loader). Frames before 0 / after N-1 are
    copies of the first / last frame (``pad="edge"``) or zeros (``pad="zero"``).
    """
    x = np.asarray(per_frame)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"per-frame features must be a non-empty (N, D) array, got shape {x.shape}")
    if int(window) != window or window < 1:
        raise ValueError(f"audio window must be a positive integer, got {window!r}")
    if pad not in WINDOW_PADS:
        raise ValueError(f"unknown window padding {pad!r}; expected one of {', '.join(WINDOW_PADS)}")
    before, after = window // 2, window - window // 2 - 1
    mode = "edge" if pad == "edge" else "constant"
    padded = np.pad(x, ((before, after), (0, 0)), mode=mode)
    # (N, D, window) view -> (N, window, D) copy
    return np.lib.stride_tricks.sliding_window_view(padded, window, axis=0).transpose(0, 2, 1).copy()


def log_mel(wav: np.ndarray) -> np.ndarray:
    """Log-mel spectrogram (S / 160, 80) in dB re full scale of a 16 kHz waveform (S,) in [-1, 1].

    Feature frame j is centred at sample ``160 * j + 80`` (the middle of its 10 ms hop); the
    waveform is zero-padded by (400 - 160) / 2 samples at both ends. S must be a multiple of 160.
    """
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim != 1 or len(x) % MEL_HOP:
        raise ValueError(f"log_mel needs a (S,) waveform with S a multiple of {MEL_HOP}, got shape {x.shape}")
    side = (MEL_WINDOW - MEL_HOP) // 2
    padded = np.pad(x, (side, MEL_WINDOW - MEL_HOP - side))
    frames = np.lib.stride_tricks.sliding_window_view(padded, MEL_WINDOW)[::MEL_HOP]
    window = _hann(MEL_WINDOW)
    filters = _mel_filters()
    # one-sided power spectrum scaled so that the bins sum to the windowed signal's mean square
    scale = 2.0 / (MEL_FFT * float(np.sum(window**2)))
    out = np.empty((len(frames), MEL_BANDS), dtype=np.float32)
    block = 4096  # frames per FFT batch: bounds memory on long audio
    for start in range(0, len(frames), block):
        spec = np.fft.rfft(frames[start : start + block] * window, n=MEL_FFT, axis=1)
        power = (spec.real**2 + spec.imag**2) * scale
        out[start : start + block] = power @ filters
    np.maximum(out, 10.0 ** (MEL_FLOOR_DB / 10.0), out=out)
    # clamp again after the log: float32 rounding would put silence a hair below the floor
    return np.maximum(10.0 * np.log10(out), MEL_FLOOR_DB).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Checks and helpers


def _check_waveform(wav: np.ndarray, rate: int, n_frames: int, fps: float) -> np.ndarray:
    x = np.asarray(wav)
    if x.ndim != 1:
        raise ValueError(f"audio must be a mono (S,) waveform, got shape {x.shape}")
    if rate != AUDIO_RATE:
        raise ValueError(
            f"audio is {rate} Hz; audio features need {AUDIO_RATE} Hz (talk3d_core.ingest resamples to it)"
        )
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if int(n_frames) != n_frames or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    if not np.isfinite(x).all():
        raise ValueError("audio contains NaN or infinite samples")
    per_frame = rate / fps
    if abs(per_frame - round(per_frame)) > 1e-6:
        raise ValueError(f"{fps} fps does not give a whole number of audio samples per frame at {rate} Hz")
    target = int(n_frames) * round(per_frame)
    if abs(len(x) - target) > _LENGTH_TOLERANCE_FRAMES * per_frame:
        raise ValueError(
            f"audio has {len(x)} samples ({len(x) / rate:.3f} s) but {n_frames} frames at {fps} fps need "
            f"{target} ({target / rate:.3f} s)"
        )
    x = x.astype(np.float32, copy=False)[:target]
    return np.pad(x, (0, target - len(x)))


def _features_per_frame(hop: int, rate: int, fps: float, backend: str) -> int:
    """K = samples per video frame / hop; must be a positive integer."""
    k = rate / fps / hop
    if k < 1 or abs(k - round(k)) > 1e-6:
        raise ValueError(
            f"{backend}: {rate / fps:g} audio samples per video frame at {fps} fps is not a whole multiple "
            f"of the backend's {hop}-sample hop; use a pipeline fps such as 25 or 50"
        )
    return round(k)


def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (n,), float32 (the STFT convention)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@functools.cache
def _mel_filters() -> np.ndarray:
    """Triangular HTK-mel filter bank (MEL_FFT // 2 + 1, MEL_BANDS), unit peak, float32."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(MEL_FMIN_HZ), _hz_to_mel(MEL_FMAX_HZ), MEL_BANDS + 2))
    bins = np.arange(MEL_FFT // 2 + 1) * AUDIO_RATE / MEL_FFT
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).T.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# wav2vec2 / HuBERT


class _SslModel:
    """A loaded wav2vec2/HuBERT model with the framing facts :func:`frame_features` needs."""

    def __init__(self, net: Any, *, hop: int, receptive_field: int, normalize: bool, output: str) -> None:
        self.net = net
        self.hop = hop
        self.receptive_field = receptive_field
        self.normalize = normalize
        self.output = output

    def features(self, wav: np.ndarray) -> np.ndarray:
        """Feature frames (S / hop, C) float32 of a waveform (S,), S a multiple of the hop."""
        import torch

        x = np.asarray(wav, dtype=np.float64)
        if self.normalize:
            # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm, over the whole clip
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        total = len(x) // self.hop
        left = (self.receptive_field - self.hop) // 2
        padded = np.pad(x, (left, self.receptive_field - self.hop - left)).astype(np.float32)
        chunk = max(1, round(SSL_CHUNK_S * AUDIO_RATE / self.hop))
        context = max(0, round(SSL_CONTEXT_S * AUDIO_RATE / self.hop))
        device = next(self.net.parameters()).device
        pieces = []
        with torch.inference_mode():
            for a in range(0, total, chunk):
                b = min(total, a + chunk)
                lo, hi = max(0, a - context), min(total, b + context)
                # feature frames lo..hi-1 are read from these samples of the padded waveform
                piece = torch.from_numpy(padded[lo * self.hop : (hi - 1) * self.hop + self.receptive_field])
                result = self.net(piece[None].to(device))
                out = result.logits if self.output == "logits" else result.last_hidden_state
                if out.shape[1] != hi - lo:
                    raise AssertionError(f"model gave {out.shape[1]} frames for {hi - lo}")  # framing bug
                pieces.append(out[0, a - lo : b - lo].float().cpu().numpy())
        return np.concatenate(pieces, axis=0)


def _conv_framing(config: Any) -> tuple[int, int]:
    """(hop, receptive field) in samples of the model's convolutional feature encoder."""
    hop, field = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        field += (kernel - 1) * hop
        hop *= stride
    return hop, field


def _missing_model_error(backend: str, name: str, why: str, *, hub_name: str | None) -> WeightsError:
    hub = hub_name or DEFAULT_CHECKPOINTS[backend]
    return WeightsError(
        f"{backend} audio features: model {name!r} is not available locally ({why}). Nothing is downloaded "
        f"at run time. On a machine with internet run `hf download {hub}` (fills the Hugging Face cache; "
        f"copy ~/.cache/huggingface/hub to this machine) or `hf download {hub} --local-dir "
        f"resources/weights/{hub.split('/')[-1]}` and set features.audio_model to that folder. "
        f"Checkpoints of the paper family: {DEFAULT_CHECKPOINTS['wav2vec2']} (Talk3D/RAD-NeRF, CTC logits), "
        f"{DEFAULT_CHECKPOINTS['hubert']} (ER-NeRF/GeneFace, last hidden state)."
    )


def _read_do_normalize(path: Path | None) -> bool:
    """``do_normalize`` of a checkpoint's preprocessor_config.json (``path``); True when there is none.

    All the checkpoints named in this module normalise; a folder written by ``save_pretrained`` of
    the model alone has no preprocessor file.
    """
    if path is None or not path.is_file():
        return True
    try:
        return bool(json.loads(path.read_text()).get("do_normalize", True))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the feature extractor settings: {err}") from err


@functools.lru_cache(maxsize=2)
def _load_ssl_model(backend: str, name: str, output: str) -> _SslModel:
    """Load a wav2vec2/HuBERT model from a local folder or the local HF cache (never downloads).

    ``name`` is a folder when it is absolute, starts with ``.`` or ``~``, or exists; otherwise a
    Hugging Face model name looked up with ``local_files_only=True``. The model runs on CUDA when
    torch sees a GPU, else on the CPU.
    """
    import torch
    from transformers import AutoConfig

    folder = Path(name).expanduser()
    is_folder = folder.is_absolute() or name.startswith((".", "~")) or folder.exists()
    hub_name = None if is_folder else name
    if is_folder and not (folder / "config.json").is_file():
        why = "no such folder" if not folder.exists() else "the folder has no config.json"
        raise _missing_model_error(backend, name, why, hub_name=hub_name)
    source = str(folder) if is_folder else name
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError as err:
        why = "not in the local Hugging Face cache"
        raise _missing_model_error(backend, name, why, hub_name=hub_name) from err
    if config.model_type != backend:
        raise ValueError(
            f"{name}: is a {config.model_type!r} model, but the audio backend is {backend!r} "
            f"(set features.audio_backend to match the model)"
        )
    if output == "logits" and not any(arch.endswith("ForCTC") for arch in config.architectures or ()):
        raise ValueError(f"{name}: has no CTC head ({config.architectures}); use output='hidden'")
    try:
        net = _network_class(backend, output).from_pretrained(source, local_files_only=True)
    except OSError as err:
        raise _missing_model_error(backend, name, f"weights missing: {err}", hub_name=hub_name) from err
    net.eval()
    if torch.cuda.is_available():
        net.to("cuda")
    if is_folder:
        preprocessor: Path | None = folder / "preprocessor_config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "preprocessor_config.json")
        preprocessor = Path(cached) if isinstance(cached, str) else None
    hop, field = _conv_framing(config)
    normalize = _read_do_normalize(preprocessor)
    return _SslModel(net, hop=hop, receptive_field=field, normalize=normalize, output=output)


def _network_class(backend: str, output: str) -> Any:
    from transformers import HubertForCTC, HubertModel, Wav2Vec2ForCTC, Wav2Vec2Model

    classes = {
        ("wav2vec2", "hidden"): Wav2Vec2Model,
        ("wav2vec2", "logits"): Wav2Vec2ForCTC,
        ("hubert", "hidden"): HubertModel,
        ("hubert", "logits"): HubertForCTC,
    }
    return classes[backend, output]
