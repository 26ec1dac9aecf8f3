"""Lip-sync expert loss: Wav2Lip's pretrained "SyncNet_color" expert, its mel front end and its loss.

Talk3D adds this loss (weight 0.01, after a warm-up) because it renders whole images: the expert
scores whether 5 consecutive mouth crops (0.2 s at 25 fps) match a 0.2 s mel window. The network,
the mel settings and the input conventions below are those of Wav2Lip (Prajwal et al., ACM MM
2020; ``models/syncnet.py``, ``models/conv.py``, ``hparams.py``, ``audio.py``,
``color_syncnet_train.py`` and ``wav2lip_train.py`` of github.com/Rudrabha/Wav2Lip), rewritten here.

Input conventions of the expert, as Wav2Lip trained it:

- faces: frames read with ``cv2.imread`` (so **BGR**), each face detector box resized to 96x96
  (:func:`face_box_crops`), divided by 255 (so [0, 1]); the lower half (rows 48:96, i.e. 48x96,
  H x W) of each of the 5 frames, stacked on channels frame-major: ``[B0 G0 R0 B1 G1 R1 ...]`` ->
  (B, 15, 48, 96). Our renders are RGB in [-1, 1]: :func:`sync_face_input` flips the channels and
  rescales.
- audio: the (80, 16) window of Wav2Lip's normalised log-mel (80 mel frames per second) that starts
  at the window's first video frame, as (B, 1, 80, 16).
- every conv block ends in a ReLU, so both embeddings are non-negative and their cosine similarity
  lies in [0, 1]: Wav2Lip feeds it straight into a binary cross-entropy as a probability of "in sync".

The weights (``lipsync_expert.pth``, research / non-commercial terms of Wav2Lip) cannot be downloaded
automatically; users who have the file place it at :data:`SYNC_EXPERT_FILE` in the weights folder. Like
:mod:`talk3d_core.nets.lpips`, :func:`sync_expert_loss` returns ``(loss, "")`` or ``(None, reason)``
and never downloads anything.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from talk3d_core.nets.requirements import SYNC_EXPERT_WEIGHTS
from talk3d_core.util.weights import DEFAULT_WEIGHTS_DIR, read_state_dict, state_dict_problems

SyncLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Video frames per sync window (0.2 s at 25 fps).
SYNC_FRAMES = 5
#: Mel frames per sync window (0.2 s at 80 mel frames per second).
MEL_STEPS = 16
#: Mel bands of Wav2Lip's spectrogram.
MEL_BANDS = 80
#: Face input of the expert: lower half of a 96x96 face, (H, W).
FACE_SIZE = (48, 96)
#: Side of the square face the expert was trained on: Wav2Lip resizes every face box to it.
FACE_BOX_SIDE = 96
#: Embedding size of both encoders.
EMBEDDING_DIM = 512

#: Where the expert goes, relative to the weights folder (config weights.dir): the manifest entry
#: SYNC_EXPERT_WEIGHTS installs it there.
SYNC_EXPERT_FILE = "syncnet/lipsync_expert.pth"
_WEIGHTS_SOURCE = (
    f"fetch it with: snakemake --cores 1 resources/weights/{SYNC_EXPERT_FILE} (manifest entry "
    f"{SYNC_EXPERT_WEIGHTS}; Wav2Lip's research / non-commercial terms)"
)

# Wav2Lip hparams.py / audio.py: 16 kHz, 50 ms Hann window, 12.5 ms hop (80 mel frames per second).
MEL_RATE = 16000
MEL_FFT = 800
MEL_HOP = 200
MEL_FMIN_HZ = 55.0
MEL_FMAX_HZ = 7600.0
MEL_PREEMPHASIS = 0.97
MEL_REF_DB = 20.0
MEL_MIN_DB = -100.0
MEL_MAX_ABS = 4.0
#: Mel frames per second.
MEL_FPS = MEL_RATE / MEL_HOP
#: Value of silent audio in the normalised mel (the -100 dB floor minus the 20 dB reference, clipped).
MEL_SILENCE = -MEL_MAX_ABS


# ---------------------------------------------------------------------------------------------
# Audio front end


def wav2lip_mel(wav: np.ndarray, rate: int) -> np.ndarray:
    """Normalised log-mel spectrogram (80, T), float32 in [-4, 4], as Wav2Lip's ``audio.melspectrogram``.

    ``wav``: mono waveform (S,) in [-1, 1] at ``rate`` Hz; resampled to 16 kHz first when ``rate``
    differs (polyphase, :func:`scipy.signal.resample_poly`). Then: pre-emphasis 0.97; STFT with an
    800-sample periodic Hann window, hop 200, the signal reflect-padded by 400 samples at both ends
    (librosa 0.7's ``center=True``, the version Wav2Lip pins), so T = 1 + S16 // 200 for S16 samples
    at 16 kHz (81 for one second); magnitudes through 80 Slaney mel filters (55-7600 Hz, area
    normalised, librosa's default bank); 20 log10 with a -100 dB floor, minus the 20 dB reference;
    mapped linearly from [-100, 0] dB to [-4, 4] and clipped. Silence gives -4 everywhere.
    """
    x = np.asarray(wav)
    if x.ndim != 1:
        raise ValueError(f"wav2lip_mel needs a mono (S,) waveform, got shape {x.shape}")
    if isinstance(rate, bool) or int(rate) != rate or rate <= 0:
        raise ValueError(f"sample rate must be a positive integer in Hz, got {rate!r}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"wav2lip_mel needs a float waveform in [-1, 1], got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("wav2lip_mel: the waveform contains NaN or infinite samples")
    x = x.astype(np.float64)
    rate = int(rate)
    if rate != MEL_RATE:
        from scipy.signal import resample_poly

        common = math.gcd(MEL_RATE, rate)
        x = resample_poly(x, MEL_RATE // common, rate // common)
    half = MEL_FFT // 2
    if len(x) <= half:
        raise ValueError(
            f"wav2lip_mel needs more than {half} samples at 16 kHz ({half / MEL_RATE * 1000:.0f} ms), "
            f"got {len(x)}"
        )

    emphasised = x.copy()
    emphasised[1:] -= MEL_PREEMPHASIS * x[:-1]  # y[n] = x[n] - 0.97 x[n-1], as scipy's lfilter([1, -k])
    padded = np.pad(emphasised, half, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, MEL_FFT)[::MEL_HOP]
    magnitude = np.abs(np.fft.rfft(frames * _periodic_hann(MEL_FFT), axis=1))  # (T, 401)
    mel = _slaney_mel_filters() @ magnitude.T  # (80, T)
    floor = 10.0 ** (MEL_MIN_DB / 20.0)
    level_db = 20.0 * np.log10(np.maximum(mel, floor)) - MEL_REF_DB
    normalised = 2.0 * MEL_MAX_ABS * (level_db - MEL_MIN_DB) / -MEL_MIN_DB - MEL_MAX_ABS
    return np.clip(normalised, -MEL_MAX_ABS, MEL_MAX_ABS).astype(np.float32)


def mel_window(mel: np.ndarray, frame: int, fps: float = 25.0) -> np.ndarray:
    """The (80, 16) window of ``mel`` (80, T) that goes with the sync window starting at video ``frame``.

    As Wav2Lip's ``crop_audio_window``: the window starts at mel frame ``int(80 * (frame / fps))``
    (80 mel frames per second) and spans 16 mel frames, i.e. 0.2 s = 5 video frames at 25 fps, the
    rate the expert was trained at. Where the clip's audio ends first, the window is padded with the
    value of silence (:data:`MEL_SILENCE`, what :func:`wav2lip_mel` gives for zero samples), which
    keeps padded columns meaning "no sound" rather than a mid-level sound. Wav2Lip itself skips
    such windows; padding lets the last frames of a clip still get a window.
    """
    m = np.asarray(mel)
    if m.ndim != 2 or m.shape[0] != MEL_BANDS:
        raise ValueError(f"mel_window needs an ({MEL_BANDS}, T) mel spectrogram, got shape {m.shape}")
    if isinstance(frame, bool) or int(frame) != frame or frame < 0:
        raise ValueError(f"frame must be a non-negative integer, got {frame!r}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    start = int(MEL_FPS * (int(frame) / float(fps)))  # same operation order as Wav2Lip (rounding)
    if start >= m.shape[1]:
        raise ValueError(
            f"video frame {frame} at {fps:g} fps starts at mel frame {start}, past the end of the "
            f"audio ({m.shape[1]} mel frames, {m.shape[1] / MEL_FPS:.3f} s)"
        )
    window = np.full((MEL_BANDS, MEL_STEPS), MEL_SILENCE, dtype=np.float32)
    part = m[:, start : start + MEL_STEPS]
    window[:, : part.shape[1]] = part
    return window


def _periodic_hann(n: int) -> np.ndarray:
    """Periodic Hann window (n,), float64 (``scipy.signal.get_window('hann', n)``, librosa's window)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _hz_to_slaney_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    linear = f / (200.0 / 3.0)
    log_step = math.log(6.4) / 27.0
    with np.errstate(divide="ignore"):
        logarithmic = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / log_step
    return np.where(f >= 1000.0, logarithmic, linear)


def _slaney_mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(log_step * (m - 15.0)), m * (200.0 / 3.0))


@functools.cache
def _slaney_mel_filters() -> np.ndarray:
    """Wav2Lip's mel bank (80, 401): triangles between consecutive Slaney-mel-spaced edges, each
    scaled by 2 / (upper - lower edge in Hz) so that every filter has the same area."""
    edges = _slaney_mel_to_hz(
        np.linspace(_hz_to_slaney_mel(MEL_FMIN_HZ), _hz_to_slaney_mel(MEL_FMAX_HZ), MEL_BANDS + 2)
    )
    bins = np.linspace(0.0, MEL_RATE / 2, MEL_FFT // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (upper - lower))


# ---------------------------------------------------------------------------------------------
# The expert network


class _ConvBN(nn.Module):
    """Conv2d + BatchNorm2d (+ the input when ``residual``) then ReLU: Wav2Lip's ``Conv2d`` block.

    The conv and the norm live in ``conv_block`` (indices 0 and 1) so that parameter names match
    the checkpoint (``...conv_block.0.weight``, ``...conv_block.1.running_mean``).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return F.relu(out)


# (in, out, kernel, stride, padding, residual) per block, Wav2Lip's models/syncnet.py (master).
# Face: 48x96 -> 48x96 -> 46x47 -> 23x24 -> 12x12 -> 6x6 -> 3x3 -> 1x1.
_FACE_LAYERS: tuple[tuple[int, int, int, int | tuple[int, int], int, bool], ...] = (
    (15, 32, 7, 1, 3, False),
    (32, 64, 5, (1, 2), 1, False),
    *[(64, 64, 3, 1, 1, True)] * 2,
    (64, 128, 3, 2, 1, False),
    *[(128, 128, 3, 1, 1, True)] * 3,
    (128, 256, 3, 2, 1, False),
    *[(256, 256, 3, 1, 1, True)] * 2,
    (256, 512, 3, 2, 1, False),
    *[(512, 512, 3, 1, 1, True)] * 2,
    (512, 512, 3, 2, 1, False),
    (512, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
)
# Mel: 80x16 -> 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1.
_AUDIO_LAYERS: tuple[tuple[int, int, int, int | tuple[int, int], int, bool], ...] = (
    (1, 32, 3, 1, 1, False),
    *[(32, 32, 3, 1, 1, True)] * 2,
    (32, 64, 3, (3, 1), 1, False),
    *[(64, 64, 3, 1, 1, True)] * 2,
    (64, 128, 3, 3, 1, False),
    *[(128, 128, 3, 1, 1, True)] * 2,
    (128, 256, 3, (3, 2), 1, False),
    *[(256, 256, 3, 1, 1, True)] * 2,
    (256, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
)


class SyncNetColor(nn.Module):
    """Wav2Lip's lip-sync expert ("SyncNet_color"): two conv encoders into a shared 512-d space.

    ``forward(mel, face)`` (Wav2Lip's argument order): ``mel`` (B, 1, 80, 16) normalised log-mel
    window, ``face`` (B, 15, 48, 96) = lower halves of 5 consecutive 96x96 faces, BGR in [0, 1],
    stacked frame-major on channels. Returns ``(audio_embedding, face_embedding)``, each (B, 512),
    non-negative and L2-normalised; their dot product is the expert's probability of "in sync".
    Module names (``face_encoder.*``, ``audio_encoder.*``) match ``lipsync_expert.pth``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder = nn.Sequential(*[_ConvBN(*spec) for spec in _FACE_LAYERS])
        self.audio_encoder = nn.Sequential(*[_ConvBN(*spec) for spec in _AUDIO_LAYERS])

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        face_shape = (3 * SYNC_FRAMES, *FACE_SIZE)
        if face.ndim != 4 or tuple(face.shape[1:]) != face_shape:
            expected = ", ".join(map(str, face_shape))
            raise ValueError(f"SyncNetColor: face must be (B, {expected}), got {tuple(face.shape)}")
        if mel.ndim != 4 or tuple(mel.shape[1:]) != (1, MEL_BANDS, MEL_STEPS):
            raise ValueError(
                f"SyncNetColor: mel must be (B, 1, {MEL_BANDS}, {MEL_STEPS}), got {tuple(mel.shape)}"
            )
        if len(mel) != len(face):
            raise ValueError(f"SyncNetColor: {len(mel)} mel windows for {len(face)} face windows")
        audio_embedding = self.audio_encoder(mel).flatten(1)
        face_embedding = self.face_encoder(face).flatten(1)
        return F.normalize(audio_embedding, p=2, dim=1), F.normalize(face_embedding, p=2, dim=1)


def load_sync_expert(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> SyncNetColor:
    """Wav2Lip's expert with the weights of ``path`` (``lipsync_expert.pth``), frozen, in eval mode.

    The file is read with ``torch.load(weights_only=True)``: a dict whose ``"state_dict"`` holds the
    network's tensors (Wav2Lip's checkpoint layout; a bare state dict is accepted too), keys optionally
    prefixed ``module.`` (a DataParallel save). The load is strict: missing or unexpected keys and
    shape mismatches raise :class:`ValueError` naming the file. A missing file raises
    :class:`FileNotFoundError`.

    Eval mode means BatchNorm uses its running statistics. Wav2Lip's generator training never calls
    ``syncnet.eval()`` (its expert normalises with batch statistics); here every window is scored on
    its own, so a loss value does not depend on what else is in the batch (Talk3D's batch is 2).
    """
    state = read_state_dict(path, what="Wav2Lip SyncNet_color lip-sync expert", source=_WEIGHTS_SOURCE)
    model = SyncNetColor()
    problems = state_dict_problems(state, model.state_dict())
    if problems:
        raise ValueError(f"{path} is not a Wav2Lip SyncNet_color checkpoint: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------
# The loss


def sync_face_input(frames: torch.Tensor) -> torch.Tensor:
    """Face crops (B, 5, 3, H, W), RGB in [-1, 1] -> the expert's face input (B, 15, 48, 96).

    Keeps the lower half of each crop (rows H // 2 onwards, the mouth), resizes it to 48x96 (H x W;
    bilinear, antialiased when shrinking so a 512 render does not alias), maps [-1, 1] to [0, 1],
    flips RGB to BGR (Wav2Lip read its training frames with OpenCV) and stacks the 5 frames on
    channels in time order. Differentiable; values are not clamped so that gradients still flow.
    """
    if frames.ndim != 5 or frames.shape[1] != SYNC_FRAMES or frames.shape[2] != 3:
        raise ValueError(f"frames must be (B, {SYNC_FRAMES}, 3, H, W), got {tuple(frames.shape)}")
    b, t, c, h, w = frames.shape
    if h < 2 or w < 1:
        raise ValueError(f"frames must be at least 2 pixels high, got {h}x{w}")
    lower = frames[:, :, :, h // 2 :].reshape(b * t, c, h - h // 2, w).float()
    lower = F.interpolate(lower, size=FACE_SIZE, mode="bilinear", align_corners=False, antialias=True)
    bgr = (lower.flip(1) + 1.0) / 2.0
    return bgr.reshape(b, t * c, *FACE_SIZE)


def face_box_crops(images: torch.Tensor, boxes: torch.Tensor, mode: str) -> torch.Tensor:
    """Each image's face box, resized to the expert's square face: (B, 3, 96, 96).

    images (B, 3, H, W); boxes (B, 4) integer pixels x1, y1, x2, y2 (ends exclusive, inside the
    image); ``mode``: the resampling (:func:`torch.nn.functional.interpolate`'s, no antialiasing,
    half-pixel centres). Talk3D resizes its renders' boxes with "nearest" (F.interpolate's default)
    and the dataset's real frames with OpenCV's bilinear, which is "bilinear" here. Differentiable.
    """
    if images.ndim != 4 or boxes.shape != (len(images), 4):
        raise ValueError(
            f"need images (B, 3, H, W) and boxes (B, 4), got {tuple(images.shape)}, {tuple(boxes.shape)}"
        )
    crops = []
    for image, (x1, y1, x2, y2) in zip(images, boxes.tolist(), strict=True):
        if not (0 <= x1 < x2 <= image.shape[-1] and 0 <= y1 < y2 <= image.shape[-2]):
            raise ValueError(f"face box {(x1, y1, x2, y2)} is not inside a {tuple(image.shape[-2:])} image")
        box = image[None, :, y1:y2, x1:x2]
        align = None if mode == "nearest" else False
        crops.append(F.interpolate(box, size=(FACE_BOX_SIDE, FACE_BOX_SIDE), mode=mode, align_corners=align))
    return torch.cat(crops)


def sync_expert_loss(
    device: str | torch.device = "cpu",
    *,
    weights: str | os.PathLike[str] | None = None,
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
) -> tuple[SyncLoss | None, str]:
    """Wav2Lip's lip-sync expert loss ``loss(frames, mel) -> (B,)``, or ``(None, reason)``.

    ``weights``: the expert checkpoint, by default :data:`SYNC_EXPERT_FILE` in ``weights_dir``
    (``resources/weights/syncnet/lipsync_expert.pth``). A missing or unusable file gives ``None`` and
    a sentence naming it; nothing is downloaded.

    ``frames``: (B, 5, 3, H, W) rendered face crops, RGB in [-1, 1], 5 consecutive video frames;
    ``mel``: (B, 80, 16) windows of :func:`wav2lip_mel` from :func:`mel_window` for the first of
    them. The loss is Wav2Lip's: ``BCE(cos(audio_emb, face_emb), 1) = -log(cos)`` per window (cos
    clamped to [0, 1] against rounding; torch's BCE caps -log at 100 when cos is 0). The network is
    frozen; gradients flow to ``frames``.
    """
    path = Path(weights) if weights is not None else Path(weights_dir) / SYNC_EXPERT_FILE
    if not path.is_file():
        return None, f"no lip-sync expert weights at {path} ({_WEIGHTS_SOURCE} and place it there)"
    try:
        model = load_sync_expert(path, device)
    except (ValueError, OSError) as exc:  # a broken file is reported, not raised
        return None, f"the lip-sync expert could not be loaded ({type(exc).__name__}: {exc})"
    model_device = next(model.parameters()).device

    def loss(frames: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        mel = torch.as_tensor(mel, dtype=torch.float32, device=model_device)
        if mel.ndim != 3 or tuple(mel.shape[1:]) != (MEL_BANDS, MEL_STEPS):
            raise ValueError(f"mel must be (B, {MEL_BANDS}, {MEL_STEPS}), got {tuple(mel.shape)}")
        if len(mel) != len(frames):
            raise ValueError(f"{len(mel)} mel windows for {len(frames)} frame windows")
        audio_embedding, face_embedding = model(mel.unsqueeze(1), sync_face_input(frames.to(model_device)))
        similarity = F.cosine_similarity(audio_embedding, face_embedding, dim=1).clamp(0.0, 1.0)
        return F.binary_cross_entropy(similarity, torch.ones_like(similarity), reduction="none")

    return loss, ""
