"""Mouth-motion statistics that need no model and no ground truth.

For audio that drives a subject it was not recorded with there is no ground-truth video, but the
mouth should still open with the sound and close in the pauses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from talk3d_core.metrics.mouth import correlation
from talk3d_core.metrics.sync import check_waveform

#: Level given to windows with no signal (digital silence, or frames past the end of the audio), dBFS.
ENERGY_FLOOR_DB = -120.0


def audio_energy(wav: np.ndarray, rate: int, n_frames: int, fps: float = 25.0) -> np.ndarray:
    """RMS level per video frame (n_frames,) float64, in dB relative to full scale (1.0).

    ``wav`` (S,) float mono in [-1, 1] at ``rate`` Hz, sample 0 at the start of frame 0. Frame ``i``
    spans ``[i, i + 1) / fps`` s; its window is two frames long and centred on it,
    ``[i - 0.5, i + 1.5) / fps`` s, cut to the samples that exist. A sine of amplitude A gives
    ``20 log10(A / sqrt(2))``. Windows with no samples (past the end) or no signal give
    :data:`ENERGY_FLOOR_DB`.
    """
    x = check_waveform(wav, rate, "audio_energy")
    if isinstance(n_frames, bool) or int(n_frames) != n_frames or n_frames < 0:
        raise ValueError(f"audio_energy: n_frames must be a non-negative integer, got {n_frames!r}")
    if not fps > 0:
        raise ValueError(f"audio_energy: fps must be positive, got {fps!r}")
    centre = (np.arange(int(n_frames)) + 0.5) / fps * rate  # frame centres in samples
    half = rate / fps  # one frame either side
    start = np.clip(np.round(centre - half), 0, len(x)).astype(np.int64)
    stop = np.clip(np.round(centre + half), 0, len(x)).astype(np.int64)
    power_sum = np.concatenate([[0.0], np.cumsum(x * x)])
    count = stop - start
    mean_power = np.where(count > 0, (power_sum[stop] - power_sum[start]) / np.maximum(count, 1), 0.0)
    floor_power = 10.0 ** (ENERGY_FLOOR_DB / 10.0)
    return 10.0 * np.log10(np.maximum(mean_power, floor_power))


def speech_mask(
    energy_db: np.ndarray,
    *,
    relative_db: float = 30.0,
    floor_db: float = -60.0,
    loud_percentile: float = 95.0,
    max_gap_frames: int = 5,
) -> np.ndarray:
    """Speech (True) versus silence (False) per frame (N,) bool, from :func:`audio_energy` levels.

    The clip's loud level is the ``loud_percentile`` (95th) percentile of ``energy_db``; a frame is
    speech when its level is above both ``loud level - relative_db`` (30 dB: pauses, breaths and
    room noise of a speech recording sit well below that, voiced speech within it) and the absolute
    ``floor_db`` (-60 dBFS: a clip that is all near-silent has no speech at all). Silent runs of at
    most ``max_gap_frames`` (5 frames, 0.2 s at 25 fps) with speech on both sides are closed (the
    stops and short pauses inside a phrase), runs at the clip's ends are kept.
    """
    energy = np.asarray(energy_db, dtype=np.float64)
    if energy.ndim != 1:
        raise ValueError(f"speech_mask: energy must be (N,), got shape {energy.shape}")
    if np.isnan(energy).any():
        raise ValueError("speech_mask: energy contains NaN")
    if not 0 <= loud_percentile <= 100:
        raise ValueError(f"speech_mask: loud_percentile must be within [0, 100], got {loud_percentile}")
    if max_gap_frames < 0:
        raise ValueError(f"speech_mask: max_gap_frames must be >= 0, got {max_gap_frames}")
    if energy.size == 0:
        return np.zeros(0, dtype=bool)
    loud = float(np.percentile(energy, loud_percentile))
    speech = energy > max(loud - relative_db, floor_db)
    voiced = np.flatnonzero(speech)
    if voiced.size >= 2:
        gaps = np.diff(voiced) - 1  # silent frames between consecutive speech frames
        for left, gap in zip(voiced[:-1], gaps, strict=True):
            if 0 < gap <= max_gap_frames:
                speech[left + 1 : left + 1 + gap] = True
    return speech


def silent_frames(wav: np.ndarray, rate: int, n_frames: int, fps: float = 25.0) -> np.ndarray:
    """(n_frames,) bool: the frames without speech by evaluate's rule, ``~speech_mask(audio_energy(...))``
    of ``wav`` (S,) at ``rate`` Hz (train.silence_share, features.audio_silence)."""
    return ~speech_mask(audio_energy(wav, rate, n_frames, fps))


def closed_threshold(
    speech_openings: np.ndarray, *, closed_ratio: float = 0.25, open_percentile: float = 90.0
) -> float | None:
    """The opening below which a mouth counts as closed: ``closed_ratio`` x the ``open_percentile``
    percentile of ``speech_openings`` (M,) (finite openings during speech), i.e. a quarter of how wide
    the mouth opens when it talks. None when there are none or that percentile is 0."""
    speech_openings = np.asarray(speech_openings, dtype=np.float64)
    if speech_openings.size == 0:
        return None
    reference = float(np.percentile(speech_openings, open_percentile))
    return closed_ratio * reference if reference > 0 else None


def mouth_motion_stats(
    opening: np.ndarray,
    energy_db: np.ndarray,
    speech: np.ndarray,
    *,
    lag_frames: int = 3,
    closed_ratio: float = 0.25,
    open_percentile: float = 90.0,
    closed_below: float | None = None,
) -> dict[str, Any]:
    """Does the mouth move with the sound? Statistics (N,) series that need no ground-truth video.

    ``opening``: inner-lip opening per frame (e.g. :func:`talk3d_core.metrics.mouth.mouth_opening`; NaN where
    no landmarks were found), 0 for a closed mouth; ``energy_db``: :func:`audio_energy`;
    ``speech``: :func:`speech_mask`. Returns (None wherever a statistic cannot be computed):

    - ``energy_r``, ``energy_lag``: the largest Pearson r of opening and energy over lags
      ``-lag_frames..lag_frames`` (lag ``k`` pairs ``opening[t + k]`` with ``energy[t]``: ``k > 0``
      means the mouth follows the sound ``k`` frames late; ties go to the smaller ``|k|``), over the
      frames where both are finite; ``energy_r_lag0``: r at lag 0. None with fewer than 3 such pairs
      or a constant series.
    - ``opening_silence``, ``opening_speech``: mean opening over silent / speech frames with landmarks.
    - ``closed_threshold``: ``closed_below`` when given (a render is judged by its subject's footage:
      docs/decisions.md#closed-by-the-footages-measure), else ``closed_ratio`` (0.25) x the
      ``open_percentile`` (90th) percentile of the openings during speech, i.e. a quarter of how wide
      this clip's mouth opens when it talks; None when there are no speech openings or they are all 0.
    - ``silence_closed_fraction``: fraction of silent frames with landmarks whose opening is below
      ``closed_threshold``.
    - ``frames_silence``, ``frames_speech``: counts of silent / speech frames with landmarks.
    """
    opening = np.asarray(opening, dtype=np.float64)
    energy = np.asarray(energy_db, dtype=np.float64)
    speech = np.asarray(speech)
    if opening.ndim != 1 or energy.shape != opening.shape or speech.shape != opening.shape:
        raise ValueError(
            f"mouth_motion_stats: opening, energy and speech must be (N,) of one length, got "
            f"{opening.shape}, {energy.shape} and {speech.shape}"
        )
    if speech.dtype != bool:
        raise ValueError(f"mouth_motion_stats: speech must be a bool mask, got dtype {speech.dtype}")
    if isinstance(lag_frames, bool) or int(lag_frames) != lag_frames or lag_frames < 0:
        raise ValueError(f"mouth_motion_stats: lag_frames must be a non-negative integer, got {lag_frames!r}")
    if not closed_ratio > 0 or not 0 <= open_percentile <= 100:
        raise ValueError(
            f"mouth_motion_stats: need closed_ratio > 0 and open_percentile in [0, 100], got "
            f"{closed_ratio} and {open_percentile}"
        )

    n = opening.size
    best_r, best_lag, r_lag0 = None, None, None
    for lag in sorted(range(-int(lag_frames), int(lag_frames) + 1), key=lambda k: (abs(k), k)):
        if abs(lag) >= n:
            continue
        mouth = opening[lag:] if lag >= 0 else opening[: n + lag]
        sound = energy[: n - lag] if lag >= 0 else energy[-lag:]
        r = correlation(mouth, sound)
        if math.isnan(r):
            continue
        if lag == 0:
            r_lag0 = r
        if best_r is None or r > best_r:
            best_r, best_lag = r, lag

    seen = np.isfinite(opening)
    silent_open = opening[seen & ~speech]
    speech_open = opening[seen & speech]
    threshold = closed_threshold(speech_open, closed_ratio=closed_ratio, open_percentile=open_percentile)
    if closed_below is not None:
        if not closed_below > 0:
            raise ValueError(f"mouth_motion_stats: closed_below must be > 0, got {closed_below}")
        threshold = float(closed_below)
    closed_fraction = None
    if threshold is not None and silent_open.size:
        closed_fraction = float(np.mean(silent_open < threshold))
    return {
        "energy_r": best_r,
        "energy_lag": best_lag,
        "energy_r_lag0": r_lag0,
        "opening_silence": float(silent_open.mean()) if silent_open.size else None,
        "opening_speech": float(speech_open.mean()) if speech_open.size else None,
        "closed_threshold": threshold,
        "silence_closed_fraction": closed_fraction,
        "frames_silence": int(silent_open.size),
        "frames_speech": int(speech_open.size),
    }
