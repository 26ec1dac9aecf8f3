"""Mouth-motion statistics without ground truth (talk3d_core.metrics.motion): energy, speech, lags."""

from __future__ import annotations

import numpy as np
import pytest

from talk3d_core.metrics.motion import (
    ENERGY_FLOOR_DB,
    audio_energy,
    closed_threshold,
    mouth_motion_stats,
    speech_mask,
)


def test_energy_of_a_sine_is_its_rms_level() -> None:
    rate, amplitude = 16000, 0.5
    t = np.arange(rate) / rate
    wav = amplitude * np.sin(2 * np.pi * 250.0 * t)  # 80 ms windows hold whole periods
    energy = audio_energy(wav, rate, 25)
    assert energy.shape == (25,)
    np.testing.assert_allclose(energy, 20 * np.log10(amplitude / np.sqrt(2)), atol=1e-6)
    # Frames past the end of the audio, and silence, sit at the floor.
    assert audio_energy(wav, rate, 30)[-1] == ENERGY_FLOOR_DB
    assert (audio_energy(np.zeros(rate), rate, 25) == ENERGY_FLOOR_DB).all()


def test_energy_window_is_centred_on_the_frame() -> None:
    rate = 16000
    wav = np.zeros(rate)
    wav[10 * 640 : 11 * 640] = 0.5  # a burst during frame 10 only
    energy = audio_energy(wav, rate, 25)
    assert energy[10] == energy.max()
    assert energy[9] == pytest.approx(energy[11]) and energy[9] < energy[10]  # each window holds half
    assert energy[8] == ENERGY_FLOOR_DB and energy[12] == ENERGY_FLOOR_DB


def test_speech_mask_thresholds_and_closes_short_gaps() -> None:
    energy = np.full(60, -90.0)
    energy[10:20] = -20.0
    energy[20:23] = -70.0  # a 3-frame pause inside a phrase: closed
    energy[23:30] = -25.0
    energy[45:55] = -22.0  # after a 15-frame pause: kept apart
    speech = speech_mask(energy)
    assert speech[10:30].all() and speech[45:55].all()
    assert not speech[:10].any() and not speech[30:45].any() and not speech[55:].any()
    # Relative threshold: -45 dB is more than 30 dB below the loud level here.
    energy[40] = -55.0
    assert not speech_mask(energy)[40]
    # A clip that is quiet throughout has no speech (absolute floor), however its levels vary.
    assert not speech_mask(np.linspace(-100, -65, 50)).any()


def _smooth_curve(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.convolve(rng.standard_normal(n + 4), np.ones(5) / 5, mode="valid")


def test_opening_that_follows_energy_correlates_at_the_right_lag() -> None:
    energy = -30 + 10 * _smooth_curve(80, 5)
    speech = np.ones(80, dtype=bool)
    stats = mouth_motion_stats(3.0 * (energy - energy.min()), energy, speech)
    assert stats["energy_r"] == pytest.approx(1.0) and stats["energy_lag"] == 0
    assert stats["energy_r_lag0"] == pytest.approx(1.0)

    late = np.full(80, np.nan)  # the mouth follows the sound 2 frames late; no landmarks at first
    late[2:] = 3.0 * (energy[:-2] - energy.min())
    stats = mouth_motion_stats(late, energy, speech)
    assert stats["energy_lag"] == 2 and stats["energy_r"] == pytest.approx(1.0)
    assert stats["energy_r_lag0"] < 0.99
    # No silence: nothing to say about the mouth in silence.
    assert stats["opening_silence"] is None and stats["silence_closed_fraction"] is None
    assert stats["frames_silence"] == 0 and stats["frames_speech"] == 78


def test_closed_mouth_in_silence() -> None:
    energy = np.full(50, -90.0)
    energy[10:40] = -20.0 + _smooth_curve(30, 6)
    speech = speech_mask(energy)
    opening = np.where(speech, 4.0 + _smooth_curve(50, 7), 0.0)
    opening[45] = np.nan  # a frame without landmarks is left out, not counted as open or closed
    stats = mouth_motion_stats(opening, energy, speech)
    assert stats["silence_closed_fraction"] == 1.0
    assert stats["opening_silence"] == 0.0 and stats["opening_speech"] > 3
    assert stats["frames_silence"] == 19 and stats["frames_speech"] == 30

    opening[~speech] = 4.0  # an open mouth throughout the pauses
    assert mouth_motion_stats(opening, energy, speech)["silence_closed_fraction"] == 0.0
    # ... unless judged by another clip's measure of closed (a footage that opens wider when it talks).
    judged = mouth_motion_stats(opening, energy, speech, closed_below=5.0)
    assert judged["silence_closed_fraction"] == 1.0 and judged["closed_threshold"] == 5.0
    with pytest.raises(ValueError, match="closed_below must be > 0"):
        mouth_motion_stats(opening, energy, speech, closed_below=0.0)


def test_closed_threshold_is_a_quarter_of_the_wide_speech_opening() -> None:
    openings = np.arange(1.0, 11.0)  # 90th percentile 9.1
    assert closed_threshold(openings) == pytest.approx(0.25 * 9.1)
    assert closed_threshold(openings, closed_ratio=0.5, open_percentile=100) == pytest.approx(5.0)
    assert closed_threshold(np.zeros(0)) is None and closed_threshold(np.zeros(4)) is None


def test_motion_stats_are_none_when_not_computable() -> None:
    energy, speech = np.zeros(10), np.zeros(10, dtype=bool)
    stats = mouth_motion_stats(np.full(10, np.nan), energy, speech)
    assert stats["energy_r"] is None and stats["energy_lag"] is None
    assert stats["opening_silence"] is None and stats["opening_speech"] is None
    assert stats["closed_threshold"] is None and stats["silence_closed_fraction"] is None
    # A mouth that never opens while speaking gives no reference for "closed".
    speech[:5] = True
    stats = mouth_motion_stats(np.zeros(10), np.arange(10.0), speech)
    assert stats["closed_threshold"] is None and stats["silence_closed_fraction"] is None
    assert stats["energy_r"] is None  # a constant opening has no correlation
    with pytest.raises(ValueError, match="one length"):
        mouth_motion_stats(np.zeros(3), np.zeros(4), np.zeros(3, dtype=bool))
