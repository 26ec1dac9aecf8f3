"""Offline demo subject: a short, fully synthetic talking clip generated in code.

The clip is NOT a recording of anyone speaking. It is made from scikit-image's ``astronaut``
portrait (``skimage.data.astronaut()``, 512x512 RGB, bundled with scikit-image): NASA's official
portrait of astronaut Eileen Collins, a work of the US federal government and therefore in the
public domain. Everything that moves is synthesised here:

- audio: a speech-like signal (glottal harmonic source with f0 ~100-160 Hz and phrase intonation,
  vowel formant filters that change per syllable, fricative and plosive noise bursts), grouped in
  words and phrases separated by 0.3-0.8 s pauses;
- mouth: the lower lip and chin are warped down by an amount that follows the smoothed RMS of the
  audio per video frame, and the gap is filled with a feathered dark mouth interior;
- blinks: the upper eyelid skin is stretched down over the eye for 3-5 frames every 2-6 s, and
  once just before the end of the clip;
- head motion: slow in-plane rotation, translation and scale (sums of low-frequency sines),
  applied as one similarity warp of the whole frame with reflected borders.

The ground truth of every synthetic quantity is returned so later stages (landmarks, blink and
mouth features) can be checked against it. Everything is deterministic for a seed, needs no
download, and streams raw frames to ffmpeg so memory stays small.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from scipy import signal
from scipy.interpolate import PchipInterpolator

from talk3d_core.util.io import atomic_path, write_json
from talk3d_core.util.media import MediaError, ffmpeg_exe, write_wav

SOURCE = "skimage.data.astronaut, public domain (NASA)"

# Landmarks of the astronaut portrait in its own 512x512 pixel frame, measured once with the
# mediapipe face mesh (0.10.21, refine_landmarks=True); hard-coded so generation needs no detector.
# Lower inner lip, mesh indices 78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308 (corner to corner).
_LOWER_INNER_LIP = (
    (203.3, 139.9), (206.4, 143.2), (209.0, 145.5), (212.6, 147.7), (217.3, 149.3), (223.0, 150.1),
    (228.6, 149.7), (233.3, 148.5), (237.1, 146.6), (239.9, 144.6), (243.4, 141.5),
)  # fmt: skip
_CHIN_Y = 177.4  # mesh index 152
# Eye lids (image-left eye = subject's right eye, then the other), from inner/outer corner to corner.
_EYES = (
    {
        "upper": ((195.2, 100.9), (196.1, 100.1), (197.2, 99.2), (199.4, 98.1), (202.8, 97.6),
                  (206.3, 98.1), (209.7, 99.9), (212.2, 102.3), (213.3, 103.7)),
        "lower": ((195.2, 100.9), (196.5, 102.2), (197.9, 103.0), (200.1, 103.8), (203.4, 104.3),
                  (206.8, 104.3), (210.1, 104.0), (212.2, 103.9), (213.3, 103.7)),
    },
    {
        "upper": ((237.0, 104.9), (238.4, 103.7), (241.2, 101.6), (244.7, 100.0), (248.3, 99.7),
                  (251.9, 100.6), (253.9, 102.1), (255.0, 103.2), (255.8, 104.3)),
        "lower": ((237.0, 104.9), (238.0, 105.3), (240.2, 105.6), (243.3, 106.2), (246.6, 106.7),
                  (250.0, 106.6), (252.5, 106.1), (254.2, 105.4), (255.8, 104.3)),
    },
)  # fmt: skip
_NOSE_TIP = (223.4, 130.0)  # mesh index 1: pivot of the head motion

# Framing in the source image: a square window putting the face (x 179..271) at ~1/3 of the frame
# width with hair above and collar/shoulders below; the margin covers the head motion so the
# similarity warp samples real image content, not padding.
_WINDOW_X0, _WINDOW_Y0, _WINDOW_SIDE, _WINDOW_MARGIN = 81.0, 4.0, 288.0, 16.0

# Largest extra lip gap at mouth_open = 1, as a fraction of the mouth width (corner to corner).
_MOUTH_GAP_PER_WIDTH = 0.32
# Upper-lid skin that is stretched over the eye, as a multiple of the eye's largest lid gap;
# kept below the brow.
_LID_SKIN_PER_GAP = 0.9
# Thickness of the upper lash line, as a fraction of the largest lid gap.
_LASH_PER_GAP = 0.3
# Per-frame lid closure of one blink, by its length in frames (fast close, slower reopening).
_BLINK_PROFILES = {
    3: (0.6, 1.0, 0.45),
    4: (0.5, 1.0, 0.7, 0.3),
    5: (0.4, 0.85, 1.0, 0.6, 0.25),
}
# Vowel formants F1..F4 in Hz and relative loudness (open vowels are louder and open the jaw more).
_VOWELS = {
    "a": ((730.0, 1090.0, 2440.0, 3400.0), 1.0),
    "e": ((530.0, 1840.0, 2480.0, 3500.0), 0.8),
    "i": ((270.0, 2290.0, 3010.0, 3700.0), 0.55),
    "o": ((570.0, 840.0, 2410.0, 3400.0), 0.85),
    "u": ((300.0, 870.0, 2240.0, 3300.0), 0.5),
}
_FORMANT_BANDWIDTHS = (80.0, 100.0, 140.0, 200.0)
_MUXED_AUDIO_RATE = 44100  # AAC at a rate every browser plays

# Independent random streams, so e.g. the audio of a seed does not depend on the video settings.
_STREAM_AUDIO, _STREAM_BLINK, _STREAM_MOTION = 1, 2, 3


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng((int(seed), stream))


# ---------------------------------------------------------------------------------------------
# Audio


def _raised_cosine_envelope(n: int, ramp: int) -> np.ndarray:
    """Window of ``n`` samples that rises and falls over ``ramp`` samples (shape (n,), 0..1)."""
    env = np.ones(n)
    ramp = max(1, min(ramp, n // 2))
    rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
    env[:ramp] = rise
    env[n - ramp :] = rise[::-1]
    return env


def _formant_filter(x: np.ndarray, formants: tuple[float, ...], rate: int) -> np.ndarray:
    """Cascade of two-pole resonators (Klatt style, unit gain at 0 Hz), one per formant."""
    y = x
    for freq, bw in zip(formants, _FORMANT_BANDWIDTHS, strict=True):
        if freq >= 0.48 * rate:
            continue
        r = math.exp(-math.pi * bw / rate)
        b1 = 2.0 * r * math.cos(2.0 * math.pi * freq / rate)
        b2 = -r * r
        y = signal.lfilter([1.0 - b1 - b2], [1.0, -b1, -b2], y)
    return y


def _vowel(f0: np.ndarray, formants: tuple[float, ...], rate: int, rng: np.random.Generator) -> np.ndarray:
    """Voiced vowel for an f0 contour (Hz, shape (n,)): harmonic glottal source through formants."""
    phase = 2.0 * np.pi * np.cumsum(f0) / rate + rng.uniform(0, 2 * np.pi)
    source = np.zeros_like(f0)
    # Band-limited harmonic source with a -6 dB/octave tilt (glottal pulse plus lip radiation).
    for k in range(1, int(0.45 * rate / f0.min()) + 1):
        audible = k * f0 < 0.45 * rate
        source += np.where(audible, np.sin(k * phase) / k, 0.0)
    source += 0.02 * rng.standard_normal(len(f0))  # a little breathiness
    return _formant_filter(source, formants, rate)


def _noise_burst(n: int, band: tuple[float, float], rate: int, rng: np.random.Generator) -> np.ndarray:
    """Band-passed white noise of ``n`` samples, band in Hz, unit RMS."""
    hi = min(band[1], 0.45 * rate)
    sos = signal.butter(4, (band[0], hi), btype="bandpass", fs=rate, output="sos")
    x = signal.sosfilt(sos, rng.standard_normal(n + 256))[256:]
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


@dataclasses.dataclass(frozen=True)
class _Syllable:
    onset: str  # "none", "fricative" or "plosive"
    onset_s: float  # start of the onset consonant
    vowel_s: float  # start of the voiced nucleus
    vowel_len_s: float
    vowel: str
    stressed: bool
    fricative_band: tuple[float, float]  # Hz

    @property
    def end_s(self) -> float:
        return self.vowel_s + self.vowel_len_s


def _plan_word(rng: np.random.Generator, t: float) -> list[_Syllable]:
    """1-3 syllables starting at ``t`` s, one of them stressed (longer, higher pitch)."""
    n_syll = int(rng.integers(1, 4))
    stressed = int(rng.integers(0, n_syll))
    word = []
    for s in range(n_syll):
        onset = str(rng.choice(["none", "fricative", "plosive"], p=[0.4, 0.35, 0.25]))
        # fricative: noise then vowel; plosive: silent closure, 15 ms burst, vowel
        onset_len = {"none": 0.0, "fricative": rng.uniform(0.05, 0.1), "plosive": rng.uniform(0.045, 0.07)}
        band = (rng.uniform(3000.0, 4200.0), 7200.0) if rng.random() < 0.6 else (1800.0, 5000.0)
        vowel_len = rng.uniform(0.09, 0.2) * (1.35 if s == stressed else 1.0)
        vowel_s = t + onset_len[onset]
        vowel = str(rng.choice(list(_VOWELS)))
        word.append(_Syllable(onset, t, vowel_s, vowel_len, vowel, s == stressed, band))
        t = vowel_s + vowel_len
    return word


def synth_speech(
    duration_s: float, rate: int = 16000, seed: int = 0
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Speech-like mono float32 audio in [-1, 1] and the list of (start_s, end_s) voiced segments.

    Phrases of 2-5 words (1-3 syllables each) are separated by 0.3-0.8 s of silence. A syllable
    is an optional onset (fricative noise, or a plosive: short closure plus burst) and a voiced
    vowel whose f0 follows the phrase's declining intonation (~145 -> ~105 Hz) with a rise on
    stressed syllables. The voiced segments are the vowel nuclei (where the glottal source is on),
    merged where they touch. Shape (round(duration_s * rate),); deterministic for a seed.
    """
    if not duration_s > 0:
        raise ValueError(f"synth_speech: duration_s must be positive, got {duration_s}")
    if rate < 8000:
        raise ValueError(f"synth_speech: rate must be at least 8000 Hz, got {rate}")
    rng = _rng(seed, _STREAM_AUDIO)
    n_total = int(round(duration_s * rate))
    out = np.zeros(n_total + rate, dtype=np.float64)  # slack for the last onset, trimmed below
    end_limit = duration_s - 0.2  # keep a little silence at the end

    def add(t0: float, x: np.ndarray) -> None:
        i0 = int(round(t0 * rate))
        out[i0 : i0 + len(x)] += x

    # Plan phrases word by word while they fit.
    phrases: list[list[_Syllable]] = []
    t = rng.uniform(0.25, 0.45)
    while True:
        phrase: list[_Syllable] = []
        for _ in range(int(rng.integers(2, 6))):
            word = _plan_word(rng, t)
            if word[-1].end_s > end_limit:
                break
            phrase += word
            t = word[-1].end_s + rng.uniform(0.0, 0.07)  # words are nearly connected
        if not phrase:
            break
        phrases.append(phrase)
        t = phrase[-1].end_s + rng.uniform(0.3, 0.8)  # pause between phrases

    for phrase in phrases:
        f0_start, f0_end = rng.uniform(135.0, 148.0), rng.uniform(100.0, 112.0)
        t0, t1 = phrase[0].onset_s, phrase[-1].end_s
        for syl in phrase:
            if syl.onset == "fricative":
                n = int((syl.vowel_s - syl.onset_s) * rate)
                noise = _noise_burst(n, syl.fricative_band, rate, rng)
                add(syl.onset_s, 0.06 * noise * _raised_cosine_envelope(n, n // 3))
            elif syl.onset == "plosive":
                n = int(0.015 * rate)
                decay = np.exp(-np.arange(n) / (0.004 * rate))
                add(syl.vowel_s - 0.015, 0.12 * _noise_burst(n, (1500.0, 7000.0), rate, rng) * decay)
            n = int(round(syl.vowel_len_s * rate))
            tt = syl.vowel_s + np.arange(n) / rate
            f0 = f0_start + (f0_end - f0_start) * (tt - t0) / (t1 - t0)  # declination
            if syl.stressed:
                f0 = f0 + rng.uniform(6.0, 14.0) * np.sin(np.pi * np.arange(n) / n)
            f0 = f0 * (1.0 + 0.004 * np.sin(2 * np.pi * 5.5 * (tt - syl.vowel_s)))  # slight vibrato
            formants, loudness = _VOWELS[syl.vowel]
            gain = loudness * (1.0 if syl.stressed else 0.75)
            env = _raised_cosine_envelope(n, int(0.025 * rate))
            add(syl.vowel_s, gain * env * _vowel(f0, formants, rate, rng))

    audio = out[:n_total]
    peak = np.abs(audio).max()
    if peak > 0:
        audio = audio * (0.85 / peak)
    voiced: list[tuple[float, float]] = []
    for syl in (s for phrase in phrases for s in phrase):
        if voiced and syl.vowel_s - voiced[-1][1] < 1e-3:
            voiced[-1] = (voiced[-1][0], syl.end_s)
        else:
            voiced.append((syl.vowel_s, syl.end_s))
    return audio.astype(np.float32), [(round(a, 4), round(b, 4)) for a, b in voiced]


def mouth_open_from_audio(audio: np.ndarray, rate: int, fps: int, n_frames: int) -> np.ndarray:
    """Per-frame mouth opening 0..1 (shape (n_frames,)) from the smoothed RMS of ``audio``.

    RMS over each frame's span is normalised by a high percentile of the speaking frames,
    compressed a little (jaw opening grows slower than loudness), gated to 0 in silence and
    smoothed over ~2 frames like a jaw with inertia.
    """
    hop = rate / fps
    rms = np.zeros(n_frames)
    for i in range(n_frames):
        a, b = int(round(i * hop)), int(round((i + 1) * hop))
        chunk = audio[a:b].astype(np.float64)
        rms[i] = np.sqrt(np.mean(chunk**2)) if len(chunk) else 0.0
    if rms.max() <= 0:
        return np.zeros(n_frames)
    speaking = rms[rms > 0.1 * rms.max()]
    ref = np.percentile(speaking, 90)
    level = np.clip(rms / ref, 0.0, 1.0)
    opening = np.where(level < 0.05, 0.0, level**0.8)
    kernel = np.exp(-0.5 * (np.arange(-2, 3) / 0.8) ** 2)
    kernel /= kernel.sum()
    return np.clip(np.convolve(np.pad(opening, 2, mode="edge"), kernel, mode="valid"), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Blinks and head motion


def blink_track(n_frames: int, fps: int, seed: int = 0) -> np.ndarray:
    """Per-frame eyelid closure 0 (open) .. 1 (closed), shape (n_frames,).

    Blinks last 3-5 frames; the first starts 0.8-2.2 s in (so short clips have one), later ones
    follow every 2-6 s, and a last one ends 0.04-0.2 s before the clip does (unless that is within
    0.3 s of the one before): the features stage holds out the end of the clip (its last 1/11), and
    the renders' blinks can only be scored against this truth where it has one
    (:mod:`talk3d_core.metrics.truth`).
    """
    rng = _rng(seed, _STREAM_BLINK)
    closure = np.zeros(n_frames)
    t = rng.uniform(0.8, 2.2)
    while True:
        profile = _BLINK_PROFILES[int(rng.integers(3, 6))]
        f0 = int(round(t * fps))
        if f0 + len(profile) > n_frames:
            break
        closure[f0 : f0 + len(profile)] = profile
        t += rng.uniform(2.0, 6.0)
    # Drawn after the others, so that the blinks before it are those of the same seed without it.
    profile = _BLINK_PROFILES[int(rng.integers(3, 6))]
    f0 = n_frames - len(profile) - int(round(rng.uniform(0.04, 0.2) * fps))
    before = np.flatnonzero(closure)
    if f0 >= 0 and (before.size == 0 or f0 - before[-1] > 0.3 * fps):
        closure[f0 : f0 + len(profile)] = profile
    return closure


def head_motion(n_frames: int, fps: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Smooth per-frame similarity parameters, each shape (n_frames,).

    ``roll_deg`` (in-plane rotation, within +-2.5 deg), ``tx_px``/``ty_px`` (translation in output
    pixels, within +-4/+-3 px at 512 px) and ``scale`` (within 1 +- 0.012), each a sum of three
    sines of 0.05-0.35 Hz with random phases.
    """
    rng = _rng(seed, _STREAM_MOTION)
    t = np.arange(n_frames) / fps
    px = size / 512.0

    def wander(amplitude: float) -> np.ndarray:
        weights = rng.uniform(0.5, 1.0, 3)
        weights *= amplitude / weights.sum()
        freqs = rng.uniform(0.05, 0.35, 3)
        phases = rng.uniform(0, 2 * np.pi, 3)
        return sum(w * np.sin(2 * np.pi * f * t + p) for w, f, p in zip(weights, freqs, phases, strict=True))

    return {
        "roll_deg": wander(2.5),
        "tx_px": wander(4.0 * px),
        "ty_px": wander(3.0 * px),
        "scale": 1.0 + wander(0.012),
    }


# ---------------------------------------------------------------------------------------------
# Frames


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


class _Portrait:
    """The framed astronaut at output scale plus precomputed mouth and eyelid warp geometry.

    All coordinates here are in the "base" image: the output frame enlarged by a margin on each
    side, before the per-frame similarity warp.
    """

    def __init__(self, size: int) -> None:
        from skimage import data  # bundled with scikit-image; no download

        self.size = size
        self.k = size / _WINDOW_SIDE  # output pixels per source pixel
        self.margin = _WINDOW_MARGIN * self.k
        side = int(math.ceil(size + 2 * self.margin))
        self.origin = np.array([_WINDOW_X0 - _WINDOW_MARGIN, _WINDOW_Y0 - _WINDOW_MARGIN])
        to_base = np.array([[self.k, 0, -self.origin[0] * self.k], [0, self.k, -self.origin[1] * self.k]])
        source = data.astronaut()
        self.base = cv2.warpAffine(
            source, to_base, (side, side), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101
        )
        self.pivot = self._to_base(np.array(_NOSE_TIP))
        self._init_mouth()
        self.eyes = [self._init_eye(eye) for eye in _EYES]

    def _to_base(self, pts: np.ndarray) -> np.ndarray:
        return (np.asarray(pts, dtype=np.float64) - self.origin) * self.k

    def _init_mouth(self) -> None:
        lip = self._to_base(np.array(_LOWER_INNER_LIP))
        chin_y = (_CHIN_Y - self.origin[1]) * self.k
        left, right = lip[0, 0], lip[-1, 0]
        cx, half_w = 0.5 * (left + right), 0.5 * (right - left)
        self.mouth_gap_max = _MOUTH_GAP_PER_WIDTH * (right - left)
        # The split runs just above the lower inner lip, i.e. under the upper teeth: the upper lip
        # and teeth stay, the lower lip and jaw move down.
        split = PchipInterpolator(lip[:, 0], lip[:, 1] - 0.3 * self.k)
        depth_ref = chin_y - split(cx)
        x0, x1 = int(cx - 2.2 * half_w), int(math.ceil(cx + 2.2 * half_w))
        y0 = int(lip[:, 1].min() - 2)
        y1 = int(math.ceil(chin_y + 1.0 * depth_ref + 2))
        xs, ys = np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64)
        split_y = split(np.clip(xs, left, right))
        below = ys[:, None] - split_y[None, :]  # signed distance below the split, output px
        r = np.clip(below, 0, None) / depth_ref  # 0 at the lips, 1 at the chin
        # Lateral profile: lens-shaped between the mouth corners at the lips, widening to the jaw
        # and getting smoother (higher power) further down so the cheeks bend without a crease.
        width = half_w * (1.0 + 0.75 * _smoothstep(r / 0.5))
        power = 0.6 + 1.4 * _smoothstep(r / 0.3)
        u2 = np.clip(((xs[None, :] - cx) / width) ** 2, 0.0, 1.0)
        lateral = (1.0 - u2) ** power
        # Vertical profile: the whole jaw moves (a bit less at the chin), then fades out below it.
        fade = np.clip((r - 1.0) / 0.9, 0.0, 1.0)
        vertical = np.where(r <= 1.0, 1.0 - 0.15 * r, 0.85 * 0.5 * (1.0 + np.cos(np.pi * fade)))
        self.mouth_box = (y0, y1, x0, x1)
        self.mouth_field = np.where(below > 0, lateral * vertical, 0.0).astype(np.float32)
        self.mouth_below = below.astype(np.float32)
        self.mouth_grid = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))

    def _init_eye(self, eye: dict) -> dict:
        upper, lower = self._to_base(np.array(eye["upper"])), self._to_base(np.array(eye["lower"]))
        x_in, x_out = upper[0, 0], upper[-1, 0]
        gap_max = float((PchipInterpolator(lower[:, 0], lower[:, 1])(upper[:, 0]) - upper[:, 1]).max())
        skin = _LID_SKIN_PER_GAP * gap_max
        x0, x1 = int(x_in - 1), int(math.ceil(x_out + 2))
        y0 = int(upper[:, 1].min() - skin - 2)
        y1 = int(math.ceil(lower[:, 1].max() + 2))
        xs, ys = np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64)
        xc = np.clip(xs, x_in, x_out)
        y_up = PchipInterpolator(upper[:, 0], upper[:, 1])(xc)
        y_lo = PchipInterpolator(lower[:, 0], lower[:, 1])(xc)
        gx, gy = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
        return {
            "box": (y0, y1, x0, x1),
            "grid": (gx, gy),
            "upper": y_up.astype(np.float32),
            "gap": np.clip(y_lo - y_up, 0, None).astype(np.float32),
            "skin": np.float32(skin),
            "lash": np.float32(_LASH_PER_GAP * gap_max),
        }

    def _open_mouth(self, img: np.ndarray, mouth_open: float) -> None:
        y0, y1, x0, x1 = self.mouth_box
        gap = mouth_open * self.mouth_gap_max
        gx, gy = self.mouth_grid
        disp = gap * self.mouth_field
        warped = cv2.remap(
            self.base, gx, (gy - disp).astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        ).astype(np.float32)
        below = self.mouth_below
        # The opened mouth spans `below` in (0, disp) in each column; coverage of each pixel row
        # by that span antialiases both lip edges.
        inside = np.clip(np.minimum(below + 0.5, disp) - np.maximum(below - 0.5, 0.0), 0.0, 1.0)
        # Interior: dark throat, a hint of tongue towards the lower lip, shadow under the teeth.
        depth = np.clip(below / np.maximum(disp, 1e-3), 0, 1)
        shadow = np.array([16.0, 5.0, 7.0], dtype=np.float32)
        throat = np.array([38.0, 13.0, 16.0], dtype=np.float32)
        tongue = np.array([120.0, 52.0, 58.0], dtype=np.float32)
        interior = shadow + _smoothstep(depth / 0.5)[..., None] * (throat - shadow)
        t = (0.6 * _smoothstep((depth - 0.5) / 0.5) * min(1.0, 2.0 * mouth_open))[..., None]
        interior = interior + t * (tongue - interior)
        a = inside[..., None]
        img[y0:y1, x0:x1] = _to_uint8(warped * (1 - a) + interior * a)

    def _close_eye(self, img: np.ndarray, eye: dict, closure: float) -> None:
        y0, y1, x0, x1 = eye["box"]
        gx, gy = eye["grid"]
        top = eye["upper"] - eye["skin"]  # per column
        lid = eye["upper"] + closure * eye["gap"]  # where the lid edge is now
        # The lash line just above the lid edge moves down rigidly; the lid skin between `top` and
        # the lashes is stretched to fill the rest (stretching the lashes would smear them).
        lash = eye["lash"]
        stretch = (eye["upper"] - lash - top) / (lid - lash - top)
        src_y = np.where(gy > top, top + (gy - top) * stretch, gy)
        src_y = np.where(gy > lid - lash, gy - (lid - eye["upper"]), src_y)
        lid_img = cv2.remap(self.base, gx, src_y.astype(np.float32), cv2.INTER_LINEAR).astype(np.float32)
        cover = np.clip(lid - gy + 0.5, 0, 1)[..., None]  # antialiased lid edge
        img[y0:y1, x0:x1] = _to_uint8(lid_img * cover + img[y0:y1, x0:x1] * (1 - cover))

    def render(
        self, mouth_open: float, blink: float, roll_deg: float, tx: float, ty: float, scale: float
    ) -> np.ndarray:
        """One uint8 RGB frame, shape (size, size, 3); motion in degrees and output pixels."""
        img = self.base.copy()
        if mouth_open > 0:
            self._open_mouth(img, mouth_open)
        if blink > 0:
            for eye in self.eyes:
                self._close_eye(img, eye, blink)
        # Similarity about the nose tip, then shift the margin out of the frame.
        m = cv2.getRotationMatrix2D((float(self.pivot[0]), float(self.pivot[1])), roll_deg, scale)
        m[:, 2] += (tx - self.margin, ty - self.margin)
        out = cv2.warpAffine(
            img, m, (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        return out


# ---------------------------------------------------------------------------------------------
# Clip


@contextlib.contextmanager
def _ffmpeg_writer(out: Path, wav: Path, size: int, fps: int, what: str) -> Iterator[subprocess.Popen]:
    """ffmpeg reading raw RGB frames on stdin, muxing ``wav`` as AAC into an H.264 yuv420p mp4."""
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}", "-r", str(fps), "-i", "pipe:0",
        "-i", str(wav),
        "-map", "0:v:0", "-map", "1:a:0",
        "-c:v", "libx264", "-preset", "medium", "-crf", "18", "-pix_fmt", "yuv420p",
        "-profile:v", "high", "-c:a", "aac", "-b:a", "128k", "-ar", str(_MUXED_AUDIO_RATE),
        # bitexact: no encoder/version strings or timestamps, so a seed always gives the same bytes
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
        "-movflags", "+faststart", str(out),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
        try:
            yield proc
            with contextlib.suppress(BrokenPipeError):  # ffmpeg already gone: its exit code says why
                proc.stdin.close()
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if rc != 0:
            err.seek(0)
            tail = "\n".join(err.read().decode("utf-8", errors="replace").strip().splitlines()[-6:])
            raise MediaError(f"{what}: ffmpeg failed (exit {rc}):\n{tail}")


def make_demo_clip(
    out_mp4: str | Path,
    *,
    duration_s: float = 20.0,
    fps: int = 25,
    size: int = 512,
    seed: int = 0,
    truth_json: str | Path | None = None,
) -> dict:
    """Write the clip (H.264 yuv420p + AAC, plays in browsers) atomically; return the ground truth.

    The ground truth is also written as JSON to ``truth_json`` when given.
    The clip has ``n_frames = round(duration_s * fps)`` frames of ``size`` x ``size`` pixels and
    exactly ``n_frames / fps`` seconds of audio. The ground truth dict holds the clip settings,
    ``source``, the synthesis ``audio_rate`` (Hz; the AAC stream is resampled to 44.1 kHz), the
    ``voiced_segments`` [(start_s, end_s)], ``pivot_px`` (rest position of the motion pivot, the
    nose tip, in output pixels) and per-frame lists: ``mouth_open`` (0..1, extra lip gap relative
    to its maximum), ``blink`` (0..1 lid closure), ``roll_deg``, ``tx_px``, ``ty_px``, ``scale``
    (the similarity applied about the pivot; there is no out-of-plane yaw or pitch).
    """
    out_mp4 = Path(out_mp4)
    if size < 64 or size % 2:
        raise ValueError(f"{out_mp4}: demo size must be an even number of pixels >= 64, got {size}")
    if fps <= 0 or not duration_s > 0:
        raise ValueError(f"{out_mp4}: demo needs fps > 0 and duration_s > 0, got {fps}, {duration_s}")
    n_frames = int(round(duration_s * fps))
    if n_frames < 1:
        raise ValueError(f"{out_mp4}: duration_s={duration_s} is shorter than one frame at {fps} fps")
    rate = 16000
    audio, voiced = synth_speech(n_frames / fps, rate=rate, seed=seed)
    # Rounded before rendering, so the truth is exactly what was drawn.
    mouth = np.round(mouth_open_from_audio(audio, rate, fps, n_frames), 4)
    blink = np.round(blink_track(n_frames, fps, seed), 4)
    motion = head_motion(n_frames, fps, size, seed)
    motion = {k: np.round(v, 5 if k == "scale" else 4) for k, v in motion.items()}
    portrait = _Portrait(size)
    pivot_out = (portrait.pivot - portrait.margin).round(3)

    with tempfile.TemporaryDirectory(prefix="talk3d_demo_") as tmp, atomic_path(out_mp4) as tmp_mp4:
        wav = Path(tmp) / "speech.wav"
        write_wav(wav, np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16), rate)
        with _ffmpeg_writer(tmp_mp4, wav, size, fps, what=str(out_mp4)) as proc:
            for i in range(n_frames):
                frame = portrait.render(
                    float(mouth[i]),
                    float(blink[i]),
                    float(motion["roll_deg"][i]),
                    float(motion["tx_px"][i]),
                    float(motion["ty_px"][i]),
                    float(motion["scale"][i]),
                )
                try:
                    proc.stdin.write(frame.tobytes())
                except BrokenPipeError:
                    break  # ffmpeg died; its exit status and message are reported on exit

    truth = {
        "source": SOURCE,
        "synthetic": True,
        "fps": fps,
        "size": size,
        "duration_s": n_frames / fps,
        "n_frames": n_frames,
        "audio_rate": rate,
        "seed": seed,
        "pivot_px": [float(v) for v in pivot_out],
        "voiced_segments": [[a, b] for a, b in voiced],
        "mouth_open": mouth.tolist(),
        "blink": blink.tolist(),
        **{k: v.tolist() for k, v in motion.items()},
    }
    if truth_json is not None:
        write_json(truth_json, truth)
    return truth


def make_demo_speech(
    out_wav: str | Path, *, duration_s: float = 8.0, rate: int = 16000, seed: int = 1
) -> list[tuple[float, float]]:
    """Write speech-like audio (:func:`synth_speech`, 16-bit mono WAV) atomically, for re-driving the demo
    subject with audio it was not trained on; returns its voiced segments [(start_s, end_s)]."""
    audio, voiced = synth_speech(duration_s, rate=rate, seed=seed)
    with atomic_path(out_wav) as tmp:
        write_wav(tmp, np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16), rate)
    return voiced
