"""Lip-sync metric that needs no ground truth: SyncNet's LSE-C / LSE-D (mouth motion: metrics.motion).

**SyncNet v2** (Chung & Zisserman, "Out of time: automated lip sync in the wild", ACCV workshops
2016) embeds 0.2 s of mouth video and 0.2 s of speech into one 1024-d space where matching pairs lie
close. The lip-sync literature (Wav2Lip's ``evaluation/scores_LSE``; Talk3D's "Sync" column) reports:

- **LSE-D**: the mean distance between the video and audio embeddings at the best audio/video offset
  (lower is better);
- **LSE-C**: the median over offsets of that mean distance minus its minimum (higher is better);
- the **offset** in 25 fps frames at which the distance is smallest.

Everything below follows ``SyncNetModel.S`` and ``SyncNetInstance.evaluate`` of
github.com/joonson/syncnet_python (and Wav2Lip's copy, ``SyncNetInstance_calc_scores.py``), rewritten:

- network: an audio branch of 2-D convs over an MFCC "image" of 13 coefficients x 20 steps
  (0.2 s at 100 Hz) and a video branch of 3-D convs over 5 stacked 224x224 frames (0.2 s at 25 fps),
  each followed by two linear layers into 1024 dimensions. Module names are those of the published
  ``syncnet_v2.model`` state dict (``netcnnaud.*``, ``netfcaud.*``, ``netcnnlip.*``, ``netfclip.*``).
- audio: 16 kHz mono as 16-bit integers (``scipy.io.wavfile.read`` of ffmpeg's ``pcm_s16le``, no
  scaling to [-1, 1]) through ``python_speech_features.mfcc`` with its defaults (25 ms rectangular
  windows every 10 ms, 512-point FFT, 26 mel filters, 13 cepstra, lifter 22, c0 replaced by the
  log frame energy, pre-emphasis 0.97). The integer scale matters: the energy coefficient is a log.
- video: face-track crops resized to 224x224 (``cv2.resize``, bilinear), **BGR** (``cv2.imread``)
  as floats 0-255 without normalisation, 25 fps.
- windows: video window ``v`` is frames ``v..v+4``; its audio window is MFCC steps ``4v..4v+19``
  (4 MFCC steps per video frame). ``min_length = min(frames, floor(samples / 640))`` and windows
  ``v = 0 .. min_length - 6`` are scored (``lastframe = min_length - 5``, as the original).
- evaluation: for each video window ``i`` and each shift ``j`` in ``0..2 vshift`` the Euclidean
  distance (``torch.nn.functional.pairwise_distance``) to audio window ``i + j - vshift``, where
  audio windows outside the clip are zero vectors (the original pads with zeros); the mean over ``i``
  per shift gives ``mdist`` (2 vshift + 1,); LSE-D = ``min(mdist)``, LSE-C = ``median(mdist) -
  min(mdist)``, offset = ``vshift - argmin(mdist)``, with ``vshift = 15`` (``run_syncnet.py``).
  Sign: offset ``k > 0`` means the video is late: the mouth of frame ``i + k`` goes with the sound
  of frame ``i``.

**Our crops versus SyncNet's.** syncnet_python tracks the S3FD face box (half side ``bs``, the
larger half extent) and cuts ``[cx - 1.4 bs, cx + 1.4 bs] x [cy - bs, cy + 1.8 bs]`` (``crop_scale``
0.4): a square 2.8 bs wide whose top is the face box's top, the extra height going below the chin;
beyond the frame it pads with grey 110. Our crops (:mod:`talk3d_core.crop`) frame the whole head:
the eye centres are ``TEMPLATE_EYE_DISTANCE`` (0.2) of the side apart at ``TEMPLATE_EYE_HEIGHT``
(0.475) of the height. Taking the S3FD box as 2.5 eye distances (ED) high (mid-forehead to chin;
the chin is ~1.8 ED below the eye line in our crops) and centred 0.5 ED below the eye line gives
``bs = 1.25 ED`` and SyncNet's window as the fractions of our crop returned by
:func:`syncnet_window` (about x 0.15-0.85, y 0.325-1.025 for the fixed template; the last 2.5% of its rows lie
below our crop and are filled with grey 110 as syncnet_python does). The face box estimate is ours,
not a measurement of S3FD; it only sets the scale of the face in the 224 px input, which SyncNet
tolerates within the spread of its training tracks. The window is then resized to 224x224 with
bilinear interpolation like the original (so a 64 px render, a ~45 px window, is upsampled 5x).
Pass ``window=None`` for frames that already are SyncNet face-track crops.

The SyncNet weights are the manifest entry syncnet_v2 (fetched by the weights rule);
:func:`sync_scorer` never downloads anything.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from talk3d_core.face.template import TEMPLATE_EYE_DISTANCE, TEMPLATE_EYE_HEIGHT, FaceFraming
from talk3d_core.util.weights import DEFAULT_WEIGHTS_DIR, read_state_dict, state_dict_problems

#: Video frame rate SyncNet was trained at (frames per second).
SYNCNET_FPS = 25
#: Audio sample rate SyncNet's MFCC front end expects (Hz).
SYNCNET_RATE = 16000
#: Audio samples per video frame (16 kHz / 25 fps).
SAMPLES_PER_FRAME = SYNCNET_RATE // SYNCNET_FPS
#: Side of SyncNet's square face input (pixels).
SYNCNET_SIZE = 224
#: Video frames per window (0.2 s).
WINDOW_FRAMES = 5
#: MFCC steps per video frame (100 Hz / 25 fps) and per window.
MFCC_PER_FRAME = 4
MFCC_STEPS = 20
#: Cepstral coefficients per MFCC step.
MFCC_COEFFS = 13
#: Size of both embeddings.
EMBEDDING_DIM = 1024
#: Offsets searched, -VSHIFT..+VSHIFT video frames (syncnet_python's run_syncnet.py default).
VSHIFT = 15
#: Grey level syncnet_python pads frames with where the crop leaves the image.
PAD_VALUE = 110

#: Where ``syncnet_v2.model`` goes, relative to the weights folder (the manifest entry syncnet_v2's dest).
SYNCNET_V2_FILE = "syncnet/syncnet_v2.model"
_WEIGHTS_SOURCE = (
    f"fetch it with: snakemake --cores 1 resources/weights/{SYNCNET_V2_FILE} (manifest entry syncnet_v2, "
    "syncnet_python's model)"
)

# Face box assumed for our crops, in eye distances (ED): S3FD's box from mid-forehead to the chin.
_FACE_BOX_HEIGHT_ED = 2.5
_FACE_BOX_CENTRE_BELOW_EYES_ED = 0.5
# syncnet_python's run_pipeline.py --crop_scale.
_CROP_SCALE = 0.4


# ---------------------------------------------------------------------------------------------
# The network


class SyncNetV2(nn.Module):
    """SyncNet v2 (syncnet_python's ``SyncNetModel.S``), module names as in ``syncnet_v2.model``.

    ``forward_aud(mfcc)``: (B, 1, 13, 20) MFCC windows -> (B, 1024) audio embeddings.
    ``forward_lip(video)``: (B, 3, 5, 224, 224) BGR frames in 0-255 (channels, time, height, width)
    -> (B, 1024) video embeddings. Embeddings are not normalised; LSE compares them by Euclidean
    distance as they come.
    """

    def __init__(self, embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        # MFCC 13x20 -> 13x20 -> 11x9 -> 11x9 -> 5x4 -> 1x1 (512 channels).
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            nn.Conv2d(64, 192, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)),
            nn.BatchNorm2d(192),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(384),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=(3, 3), padding=(1, 1)),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)),
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding_dim)
        )
        self.netfclip = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding_dim)
        )
        # Video 5x224x224 -> 1x109x109 -> 1x54x54 -> 1x26x26 -> 1x13x13 -> 1x6x6 -> 1x1x1 (512 channels).
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
            nn.BatchNorm3d(96),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),
            nn.BatchNorm3d(512),
            nn.ReLU(inplace=True),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) MFCC windows -> (B, 1024) audio embeddings."""
        if mfcc.ndim != 4 or tuple(mfcc.shape[1:]) != (1, MFCC_COEFFS, MFCC_STEPS):
            raise ValueError(
                f"SyncNetV2: MFCC windows must be (B, 1, {MFCC_COEFFS}, {MFCC_STEPS}), "
                f"got {tuple(mfcc.shape)}"
            )
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) BGR frames in 0-255 -> (B, 1024) video embeddings."""
        expected = (3, WINDOW_FRAMES, SYNCNET_SIZE, SYNCNET_SIZE)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"SyncNetV2: video windows must be (B, {', '.join(map(str, expected))}), "
                f"got {tuple(video.shape)}"
            )
        return self.netfclip(self.netcnnlip(video).flatten(1))

    def forward(self, mfcc: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio and video embeddings, (B, 1024) each: :meth:`forward_aud`, :meth:`forward_lip`."""
        return self.forward_aud(mfcc), self.forward_lip(video)


def load_syncnet_v2(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> SyncNetV2:
    """SyncNet v2 with the weights of ``path`` (``syncnet_v2.model``), frozen, in eval mode.

    The file is a bare state dict (syncnet_python's ``loadParameters`` copies its items into
    ``SyncNetModel.S``), read with ``torch.load(weights_only=True)``. The load is strict: missing or
    unexpected keys and shape mismatches raise :class:`ValueError` naming the file; only BatchNorm's
    ``num_batches_tracked`` counters may be absent (files saved before PyTorch 0.4.1 have none, and
    eval mode never reads them). A missing file raises :class:`FileNotFoundError`.
    """
    state = read_state_dict(
        path, what="SyncNet v2 (syncnet_python's syncnet_v2.model)", source=_WEIGHTS_SOURCE
    )
    model = SyncNetV2()
    expected = model.state_dict()
    counters = [k for k in expected if k.endswith(".num_batches_tracked")]
    problems = state_dict_problems(state, expected, optional=counters)
    if problems:
        raise ValueError(f"{path} is not a SyncNet v2 state dict: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)  # strictness checked above, counters aside
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------
# Front ends


def syncnet_mfcc(audio: np.ndarray, rate: int = SYNCNET_RATE) -> np.ndarray:
    """SyncNet's MFCC of a mono waveform: (13, T) float32, T = MFCC steps at 100 Hz.

    ``audio``: (S,) float in [-1, 1] at ``rate`` Hz, resampled to 16 kHz when ``rate`` differs
    (polyphase, :func:`scipy.signal.resample_poly`). It is quantised to 16-bit integers as ffmpeg's
    ``pcm_s16le`` would (x 32768, rounded, clipped), which is what syncnet_python passes to
    ``python_speech_features.mfcc`` (default settings). T = 1 + ceil((S16 - 400) / 160).
    """
    import python_speech_features

    x = check_waveform(audio, rate, "syncnet_mfcc")
    if int(rate) != SYNCNET_RATE:
        from scipy.signal import resample_poly

        common = math.gcd(SYNCNET_RATE, int(rate))
        x = resample_poly(x, SYNCNET_RATE // common, int(rate) // common)
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    return python_speech_features.mfcc(pcm, SYNCNET_RATE).T.astype(np.float32)


def syncnet_window(framing: FaceFraming | None = None) -> tuple[float, float, float, float]:
    """SyncNet's face-track crop inside our aligned crop, as fractions of its side ``(x0, y0, x1, y1)``.

    Pixel-edge fractions (0 = top/left edge, 1 = bottom/right); ``framing``: where the crops put the
    face (default: the fixed template's; see the module docstring for the face box assumed).
    May extend past [0, 1]; :func:`syncnet_face_crops` pads with grey there.
    """
    ed = TEMPLATE_EYE_DISTANCE
    half_box = _FACE_BOX_HEIGHT_ED / 2.0 * ed
    cx, cy = 0.5, TEMPLATE_EYE_HEIGHT + _FACE_BOX_CENTRE_BELOW_EYES_ED * ed
    box = (
        cx - half_box * (1 + _CROP_SCALE),
        cy - half_box,
        cx + half_box * (1 + _CROP_SCALE),
        cy + half_box * (1 + 2 * _CROP_SCALE),
    )
    return (framing or FaceFraming()).box(box)


#: SyncNet's window in crops of the fixed template.
DEFAULT_WINDOW = syncnet_window()


def syncnet_face_crops(
    frames: np.ndarray, window: tuple[float, float, float, float] | None = DEFAULT_WINDOW
) -> np.ndarray:
    """Face crops (N, H, W, 3) RGB uint8 -> SyncNet's input frames (N, 224, 224, 3) **BGR** uint8.

    ``window``: the part of each crop SyncNet sees, pixel-edge fractions ``(x0, y0, x1, y1)``
    (:func:`syncnet_window`); None takes the whole frame. Pixels of the window outside the frame are
    grey 110 (syncnet_python's padding). The window is resized to 224x224 with bilinear
    interpolation (``cv2.resize``'s default, which syncnet_python uses whether it enlarges or shrinks).
    """
    frames = _check_frames(frames)
    n, h, w, _ = frames.shape
    if window is not None:
        x0f, y0f, x1f, y1f = (float(v) for v in window)
        if not (x1f > x0f and y1f > y0f):
            raise ValueError(f"syncnet_face_crops: window must have x1 > x0 and y1 > y0, got {window}")
        x0, y0 = round(x0f * w), round(y0f * h)
        x1, y1 = x0 + max(1, round((x1f - x0f) * w)), y0 + max(1, round((y1f - y0f) * h))
        pad = ((0, 0), (max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)), (0, 0))
        if any(p for pair in pad for p in pair):
            frames = np.pad(frames, pad, mode="constant", constant_values=PAD_VALUE)
        top, left = y0 + pad[1][0], x0 + pad[2][0]
        frames = frames[:, top : top + (y1 - y0), left : left + (x1 - x0)]
    out = np.empty((n, SYNCNET_SIZE, SYNCNET_SIZE, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(np.ascontiguousarray(frame[..., ::-1]), (SYNCNET_SIZE, SYNCNET_SIZE))
    return out


# ---------------------------------------------------------------------------------------------
# Offsets and scores


def sync_distances(video_embeddings: Any, audio_embeddings: Any, vshift: int = VSHIFT) -> np.ndarray:
    """Distances (N, 2 vshift + 1) of each video window to the audio windows around it.

    ``video_embeddings`` (N, D), ``audio_embeddings`` (N, D), one row per window (arrays or tensors).
    Column ``j`` holds ``|| video[i] - audio[i + j - vshift] + 1e-6 ||`` (torch's
    ``pairwise_distance``), with zero vectors for audio windows outside 0..N-1, as syncnet_python's
    ``calc_pdist``.
    """
    video = torch.as_tensor(np.asarray(video_embeddings), dtype=torch.float32)
    audio = torch.as_tensor(np.asarray(audio_embeddings), dtype=torch.float32)
    if video.ndim != 2 or video.shape != audio.shape:
        raise ValueError(
            f"sync_distances: video and audio embeddings must be (N, D) of equal shapes, got "
            f"{tuple(video.shape)} and {tuple(audio.shape)}"
        )
    if isinstance(vshift, bool) or int(vshift) != vshift or vshift < 0:
        raise ValueError(f"sync_distances: vshift must be a non-negative integer, got {vshift!r}")
    vshift = int(vshift)
    n = video.shape[0]
    padded = F.pad(audio, (0, 0, vshift, vshift))
    columns = [F.pairwise_distance(video, padded[j : j + n]) for j in range(2 * vshift + 1)]
    return torch.stack(columns, dim=1).numpy()


def sync_offset_scores(video_embeddings: Any, audio_embeddings: Any, vshift: int = VSHIFT) -> dict[str, Any]:
    """LSE-D, LSE-C and the offset from per-window embeddings (N, D) each (see :func:`sync_distances`).

    Returns ``{"lse_d": min(mdist), "lse_c": median(mdist) - min(mdist), "offset": vshift - argmin}``
    where ``mdist`` (2 vshift + 1,) is the distance averaged over the windows. Offset ``k > 0``: the
    mouth of frame ``i + k`` goes with the sound of frame ``i`` (the video is late). The median of an
    odd count (2 vshift + 1) is its middle value, as ``torch.median``; ties in the minimum go to the
    first (most positive offset), as ``torch.min``.
    """
    distances = sync_distances(video_embeddings, audio_embeddings, vshift)
    if distances.shape[0] == 0:
        raise ValueError("sync_offset_scores: no windows to score")
    mean_distance = distances.mean(axis=0, dtype=np.float64)
    best = int(np.argmin(mean_distance))
    lse_d = float(mean_distance[best])
    return {
        "lse_d": lse_d,
        "lse_c": float(np.median(mean_distance)) - lse_d,
        "offset": int(vshift) - best,
    }


class SyncScorer:
    """Scores lip sync of face-crop videos with SyncNet v2 (see the module docstring).

    ``model``: a loaded :class:`SyncNetV2` (:func:`load_syncnet_v2`); ``window``: SyncNet's crop in our
    frames (:func:`syncnet_window`; None: the frames are SyncNet crops already); ``vshift``: offsets
    searched; ``batch_size``: windows per forward pass (syncnet_python's default 20).
    """

    name = "syncnet-v2"

    def __init__(
        self,
        model: SyncNetV2,
        *,
        window: tuple[float, float, float, float] | None = DEFAULT_WINDOW,
        vshift: int = VSHIFT,
        batch_size: int = 20,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"SyncScorer: batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.window = window
        self.vshift = int(vshift)
        self.batch_size = int(batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed(
        self, frames: np.ndarray, audio: np.ndarray, *, rate: int = SYNCNET_RATE
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-window embeddings ``(video, audio)``, each (K, 1024) float32.

        ``frames`` (N, H, W, 3) RGB uint8 at 25 fps; ``audio`` (S,) float mono in [-1, 1] at ``rate``
        Hz starting with frame 0. K = min(N, floor(S16 / 640)) - 5 windows (S16: samples at 16 kHz),
        window ``v`` covering frames ``v..v+4``. Raises :class:`ValueError` when K < 1.
        """
        frames = _check_frames(frames)
        mfcc = syncnet_mfcc(audio, rate)
        samples = _samples_16k(audio, rate)
        used = min(len(frames), samples // SAMPLES_PER_FRAME)
        windows = used - WINDOW_FRAMES
        if windows < 1:
            raise ValueError(
                f"SyncNet needs at least {WINDOW_FRAMES + 1} frames with audio (0.24 s at 25 fps); got "
                f"{len(frames)} frames and {samples / SYNCNET_RATE:.3f} s of audio"
            )
        crops = syncnet_face_crops(frames[:used], self.window)
        # (3, N, 224, 224), syncnet_python's layout after cv2.imread and its transpose; kept as uint8
        # (a quarter of the memory) and made floats 0-255 one batch at a time.
        video = torch.from_numpy(crops).permute(3, 0, 1, 2)
        cepstra = torch.from_numpy(mfcc).float()[None]  # (1, 13, T)
        device = self.device
        video_parts, audio_parts = [], []
        with torch.inference_mode():
            for start in range(0, windows, self.batch_size):
                stop = min(windows, start + self.batch_size)
                lips = torch.stack([video[:, v : v + WINDOW_FRAMES] for v in range(start, stop)]).float()
                first = [v * MFCC_PER_FRAME for v in range(start, stop)]
                steps = torch.stack([cepstra[:, :, s : s + MFCC_STEPS] for s in first])
                video_parts.append(self.model.forward_lip(lips.to(device)).float().cpu())
                audio_parts.append(self.model.forward_aud(steps.to(device)).float().cpu())
        return torch.cat(video_parts).numpy(), torch.cat(audio_parts).numpy()

    def score(self, frames: np.ndarray, audio: np.ndarray, *, rate: int = SYNCNET_RATE) -> dict[str, Any]:
        """LSE of one clip: ``{"lse_c", "lse_d", "offset", "frames", "windows"}``.

        ``frames`` (N, H, W, 3) uint8 RGB face crops at 25 fps; ``audio`` (S,) float mono in [-1, 1]
        at ``rate`` Hz (16 kHz expected), aligned with frame 0. ``frames``: video frames used (those
        with audio under them); ``windows``: 5-frame windows scored; ``offset`` in frames (see
        :func:`sync_offset_scores` for its sign).
        """
        video_embeddings, audio_embeddings = self.embed(frames, audio, rate=rate)
        scores = sync_offset_scores(video_embeddings, audio_embeddings, self.vshift)
        windows = len(video_embeddings)
        return {**scores, "frames": windows + WINDOW_FRAMES, "windows": windows}


def sync_scorer(
    path: str | os.PathLike[str] | None = None,
    *,
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    device: str | torch.device = "cpu",
    window: tuple[float, float, float, float] | None = DEFAULT_WINDOW,
) -> tuple[SyncScorer | None, str]:
    """A :class:`SyncScorer` with the weights of ``path`` (default :data:`SYNCNET_V2_FILE` in
    ``weights_dir``, ``resources/weights/syncnet/syncnet_v2.model``), or ``(None, reason)`` when the
    file is missing or unusable; the reason names the file and where to get it. Nothing is downloaded.
    """
    path = Path(path) if path is not None else Path(weights_dir) / SYNCNET_V2_FILE
    if not path.is_file():
        return None, f"no SyncNet v2 weights at {path} ({_WEIGHTS_SOURCE}, and place the file there)"
    try:
        model = load_syncnet_v2(path, device)
    except (ValueError, OSError) as exc:  # a broken file is reported, not raised
        return None, f"SyncNet v2 could not be loaded ({type(exc).__name__}: {exc})"
    return SyncScorer(model, window=window), ""


# ---------------------------------------------------------------------------------------------
# Input checks


def check_waveform(audio: np.ndarray, rate: int, name: str) -> np.ndarray:
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"{name} needs a mono (S,) waveform, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} needs a float waveform in [-1, 1], got dtype {x.dtype}")
    if isinstance(rate, bool) or int(rate) != rate or rate <= 0:
        raise ValueError(f"{name}: sample rate must be a positive integer in Hz, got {rate!r}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: the waveform contains NaN or infinite samples")
    return x.astype(np.float64)


def _samples_16k(audio: np.ndarray, rate: int) -> int:
    """Length of ``audio`` once resampled to 16 kHz (what :func:`resample_poly` returns)."""
    common = math.gcd(SYNCNET_RATE, int(rate))
    up, down = SYNCNET_RATE // common, int(rate) // common
    return -(-len(audio) * up // down)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected face crops of shape (N, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 face crops, got dtype {frames.dtype}")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise ValueError(f"face crops must be at least 2x2 pixels, got {frames.shape[1]}x{frames.shape[2]}")
    return frames
