"""Tests of talk3d_core.nets.audio_features: frame alignment (click tests), windows, normalisation, and the
wav2vec2/HuBERT code paths on tiny randomly initialised models (no download)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from talk3d_core.nets import audio_features as af
from talk3d_core.util.weights import WeightsError

RATE = 16000
FPS = 25.0
SPF = 640  # audio samples per video frame at 25 fps


def _click_audio(n_frames: int, click_s: float, burst_s: float = 0.002, seed: int = 0) -> np.ndarray:
    """Near-silence (white noise at -80 dBFS) with a short full-scale noise burst starting at click_s."""
    rng = np.random.default_rng(seed)
    wav = (rng.standard_normal(n_frames * SPF) * 1e-4).astype(np.float32)
    start = round(click_s * RATE)
    burst = rng.uniform(-1.0, 1.0, round(burst_s * RATE)).astype(np.float32)
    wav[start : start + len(burst)] = burst
    return wav


def _frame_energy(per_frame_db: np.ndarray) -> np.ndarray:
    """Total mel power (linear) per video frame from log-mel rows in dB."""
    return (10.0 ** (per_frame_db.astype(np.float64) / 10.0)).sum(axis=1)


# ---------------------------------------------------------------------------------------------
# log-mel: alignment, windows, lengths


@pytest.mark.parametrize("phase", [0.1, 0.5, 0.9])
def test_click_lands_in_the_frame_whose_span_contains_it(phase: float) -> None:
    n_frames, n_click = 40, 23
    click_s = (n_click + phase) / FPS  # inside [n_click / fps, (n_click + 1) / fps)
    feats = af.frame_features(
        _click_audio(n_frames, click_s), RATE, backend="mel", n_frames=n_frames, fps=FPS
    )
    assert feats.shape == (n_frames, 4 * af.MEL_BANDS)
    assert feats.dtype == np.float32
    energy = _frame_energy(feats)
    assert int(np.argmax(energy)) == n_click
    # within the frame, the click is in the feature frame (of 4, 10 ms each) centred nearest to it
    sub = _frame_energy(feats[n_click].reshape(4, af.MEL_BANDS))
    assert int(np.argmax(sub)) == min(3, int(phase * 4))
    # frames well away from the click hold only the quiet noise floor
    assert energy[n_click] > 1e4 * np.median(energy)


@pytest.mark.parametrize("pad", ["edge", "zero"])
@pytest.mark.parametrize("n_click", [1, 20, 38])
def test_click_appears_at_the_expected_window_position(pad: str, n_click: int) -> None:
    n_frames, window = 40, 8
    wav = _click_audio(n_frames, (n_click + 0.5) / FPS)
    per_frame = af.frame_features(wav, RATE, backend="mel", n_frames=n_frames, fps=FPS)
    normalised = af.apply_normalisation(per_frame, af.fit_normalisation(per_frame))
    windows = af.frame_windows(normalised, window, pad=pad)
    assert windows.shape == (n_frames, window, per_frame.shape[1])
    score = windows.mean(axis=2)  # the click row is far above the clip mean, silence below it
    checked = 0
    for n in range(n_frames):
        position = n_click - n + window // 2
        if 0 <= position < window:
            assert int(np.argmax(score[n])) == position, f"frame {n}"
            checked += 1
        else:
            assert score[n].max() < 1.0, f"frame {n} should not see the click"
    first, last = n_click - (window - window // 2 - 1), n_click + window // 2  # frames that see it
    assert checked == min(last, n_frames - 1) - max(first, 0) + 1
    # the padding itself: rows before frame 0 / after frame N-1
    before, after = window // 2, window - window // 2 - 1
    if pad == "edge":
        np.testing.assert_array_equal(windows[0, :before], np.repeat(normalised[:1], before, axis=0))
        np.testing.assert_array_equal(
            windows[-1, window - after :], np.repeat(normalised[-1:], after, axis=0)
        )
    else:
        assert not windows[0, :before].any() and not windows[-1, window - after :].any()
    np.testing.assert_array_equal(windows[:, before], normalised)  # frame n itself at row window // 2


def test_frame_windows_odd_window_and_tiny_clip() -> None:
    per_frame = np.arange(3, dtype=np.float32)[:, None]  # 3 frames, 1 dim: values 0, 1, 2
    w = af.frame_windows(per_frame, 5, pad="edge")[:, :, 0]  # covers n - 2 .. n + 2
    np.testing.assert_array_equal(w, [[0, 0, 0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 2, 2]])
    w = af.frame_windows(per_frame + 1, 4, pad="zero")[:, :, 0]  # covers n - 2 .. n + 1
    np.testing.assert_array_equal(w, [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 0]])
    np.testing.assert_array_equal(af.frame_windows(per_frame, 1)[:, 0], per_frame)
    with pytest.raises(ValueError, match="window padding"):
        af.frame_windows(per_frame, 4, pad="reflect")
    with pytest.raises(ValueError, match="positive integer"):
        af.frame_windows(per_frame, 0)


@pytest.mark.parametrize("extra", [-SPF + 1, -333, -1, 0, 1, 333, SPF + 17])
def test_lengths_of_odd_durations(extra: int) -> None:
    n_frames = 7
    wav = np.full(n_frames * SPF + extra, 0.01, dtype=np.float32)
    feats = af.frame_features(wav, RATE, backend="mel", n_frames=n_frames, fps=FPS)
    assert feats.shape == (n_frames, 4 * af.MEL_BANDS)
    assert np.isfinite(feats).all()


def test_fps_and_input_checks() -> None:
    wav = np.zeros(10 * SPF, dtype=np.float32)
    assert af.frame_features(wav, RATE, backend="mel", n_frames=20, fps=50.0).shape == (20, 2 * af.MEL_BANDS)
    with pytest.raises(ValueError, match="whole number of audio samples"):
        af.frame_features(wav, RATE, backend="mel", n_frames=12, fps=30.0)
    with pytest.raises(ValueError, match="not a whole multiple of the backend's 160-sample hop"):
        af.frame_features(wav, RATE, backend="mel", n_frames=12, fps=31.25)  # 512 samples per frame
    with pytest.raises(ValueError, match="need 16000 Hz"):
        af.frame_features(wav, 22050, backend="mel", n_frames=10, fps=FPS)
    with pytest.raises(ValueError, match=r"6400 samples .* 20 frames"):
        af.frame_features(wav, RATE, backend="mel", n_frames=20, fps=FPS)  # 10 frames of audio for 20
    with pytest.raises(ValueError, match="unknown audio backend 'deepspeech'"):
        af.frame_features(wav, RATE, backend="deepspeech", n_frames=10, fps=FPS)
    with pytest.raises(ValueError, match="mono"):
        af.frame_features(np.zeros((10 * SPF, 2), np.float32), RATE, backend="mel", n_frames=10, fps=FPS)


def test_log_mel_units() -> None:
    """A full-scale 1 kHz sine: -3 dB of power over the bands; digital silence: the -100 dB floor."""
    t = np.arange(RATE) / RATE
    mel = af.log_mel(np.sin(2 * np.pi * 1000.0 * t).astype(np.float32))
    total_db = 10 * np.log10((10 ** (mel[10:-10] / 10)).sum(axis=1))
    np.testing.assert_allclose(total_db, -3.01, atol=0.1)
    np.testing.assert_array_equal(af.log_mel(np.zeros(RATE, np.float32)), af.MEL_FLOOR_DB)


# ---------------------------------------------------------------------------------------------
# normalisation


def test_normalisation_round_trip_through_json() -> None:
    rng = np.random.default_rng(1)
    feats = (rng.standard_normal((50, 6)) * [1, 2, 3, 4, 5, 6] + [10, -3, 0, 7, 1, 2]).astype(np.float32)
    feats[:, 2] = 4.0  # a constant dimension: centred, not scaled
    stats = json.loads(json.dumps(af.fit_normalisation(feats)))
    assert stats["dims"] == 6 and stats["frames"] == 50 and stats["std"][2] == 1.0
    out = af.apply_normalisation(feats, stats)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.delete(out.std(axis=0), 2), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out[:, 2], 0.0)
    # driving audio with the subject's statistics: the same affine map, undone by std and mean
    drive = feats[:7] * 2
    back = af.apply_normalisation(drive, stats) * np.array(stats["std"]) + np.array(stats["mean"])
    np.testing.assert_allclose(back, drive, rtol=1e-5, atol=1e-5)


def test_normalisation_rejects_mismatched_dims() -> None:
    stats = af.fit_normalisation(np.ones((4, 320), np.float32))
    with pytest.raises(ValueError, match=r"320 mean / 320 std dims, but the features have 64 dims"):
        af.apply_normalisation(np.ones((4, 64), np.float32), stats)
    with pytest.raises(ValueError, match="'mean' and 'std'"):
        af.apply_normalisation(np.ones((4, 64), np.float32), {"mean": [0.0] * 64})
    with pytest.raises(ValueError, match="NaN"):
        af.fit_normalisation(np.full((3, 2), np.nan))


# ---------------------------------------------------------------------------------------------
# wav2vec2 / HuBERT: these tests check plumbing (loading offline, framing, chunking, shapes), not
# feature quality: the models are tiny and randomly initialised, built from a config and saved with
# save_pretrained into a temp folder, so nothing is downloaded.


def _tiny_config(kind: str, *, layers: int = 1, pos_kernel: int = 4):
    from transformers import HubertConfig, Wav2Vec2Config

    config_class = HubertConfig if kind == "hubert" else Wav2Vec2Config
    return config_class(
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8,) * 7,  # the real 7-layer conv encoder layout (stride 320, field 400), narrow
        num_conv_pos_embeddings=pos_kernel,
        num_conv_pos_embedding_groups=1,
        feat_extract_norm="layer",  # per-frame norm, as the large checkpoints
        do_stable_layer_norm=True,
        conv_bias=True,
        vocab_size=12,
    )


def _save_tiny(folder, kind: str, *, ctc: bool = False, do_normalize: bool | None = None, **config_kw):
    import torch
    from transformers import (
        HubertForCTC,
        HubertModel,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Model,
    )

    torch.manual_seed(0)
    classes = {("wav2vec2", False): Wav2Vec2Model, ("wav2vec2", True): Wav2Vec2ForCTC}
    classes |= {("hubert", False): HubertModel, ("hubert", True): HubertForCTC}
    classes[kind, ctc](_tiny_config(kind, **config_kw)).save_pretrained(folder)
    if do_normalize is not None:
        Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_ssl_backend_plumbing_from_a_local_folder(tmp_path, kind: str) -> None:
    folder = _save_tiny(tmp_path / kind, kind, do_normalize=True)
    n_frames = 13
    wav = (np.random.default_rng(2).standard_normal(n_frames * SPF + 101) * 0.1).astype(np.float32)
    feats = af.frame_features(wav, RATE, backend=kind, n_frames=n_frames, fps=FPS, model_path=folder)
    assert feats.shape == (n_frames, 2 * 16)  # K = 2 feature frames (50 Hz) x hidden size 16
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    assert af.frame_features(wav, RATE, backend=kind, n_frames=26, fps=50.0, model_path=folder).shape == (
        26,
        16,
    )
    logits_folder = _save_tiny(tmp_path / f"{kind}_ctc", kind, ctc=True)
    logits = af.frame_features(
        wav, RATE, backend=kind, n_frames=n_frames, fps=FPS, model_path=logits_folder, output="logits"
    )
    assert logits.shape == (n_frames, 2 * 12)  # vocabulary size 12
    with pytest.raises(ValueError, match="no CTC head"):
        af.frame_features(
            wav, RATE, backend=kind, n_frames=n_frames, fps=FPS, model_path=folder, output="logits"
        )


def test_ssl_click_lands_in_the_right_feature_frame(tmp_path) -> None:
    """With no transformer layers and a 1-frame positional conv the model is per-frame, so a click
    changes exactly the feature frames whose 400-sample receptive field holds it: frame j reads
    samples 320 j - 40 .. 320 j + 359 (centred on 320 j + 160, the middle of its 20 ms hop)."""
    folder = _save_tiny(tmp_path / "w", "wav2vec2", layers=0, pos_kernel=1, do_normalize=False)
    n_frames, n_click = 12, 5
    silence = np.zeros(n_frames * SPF, dtype=np.float32)
    base = af.frame_features(silence, RATE, backend="wav2vec2", n_frames=n_frames, fps=FPS, model_path=folder)
    for offset in (0, 39, 40, 41, 160, 279, 280, 319, 320, 480, 639):
        sample = n_click * SPF + offset
        clicked = silence.copy()
        clicked[sample] = 1.0
        feats = af.frame_features(
            clicked, RATE, backend="wav2vec2", n_frames=n_frames, fps=FPS, model_path=folder
        )
        changed = np.flatnonzero(np.abs(feats - base).reshape(2 * n_frames, 16).max(axis=1) > 1e-6)
        expected = [j for j in range(2 * n_frames) if 320 * j - 40 <= sample < 320 * j + 360]
        assert changed.tolist() == expected, f"click at sample {sample}"


def test_ssl_chunking_matches_one_pass(tmp_path, monkeypatch) -> None:
    folder = _save_tiny(tmp_path / "w", "wav2vec2", layers=0, pos_kernel=5, do_normalize=True)
    n_frames = 30
    wav = (np.random.default_rng(3).standard_normal(n_frames * SPF) * 0.1).astype(np.float32)
    whole = af.frame_features(wav, RATE, backend="wav2vec2", n_frames=n_frames, fps=FPS, model_path=folder)
    monkeypatch.setattr(af, "SSL_CHUNK_S", 0.26)  # 13 feature frames per piece, uneven last piece
    monkeypatch.setattr(af, "SSL_CONTEXT_S", 0.06)  # 3 frames of overlap: covers the 5-frame pos conv
    pieces = af.frame_features(wav, RATE, backend="wav2vec2", n_frames=n_frames, fps=FPS, model_path=folder)
    np.testing.assert_allclose(pieces, whole, atol=1e-5)


def test_missing_or_wrong_model_is_a_clear_error(tmp_path) -> None:
    wav = np.zeros(5 * SPF, dtype=np.float32)
    missing = tmp_path / "no_such_model"
    with pytest.raises(WeightsError, match=r"no_such_model.*no such folder.*hf download"):
        af.frame_features(wav, RATE, backend="wav2vec2", n_frames=5, fps=FPS, model_path=missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="has no config.json"):
        af.frame_features(wav, RATE, backend="hubert", n_frames=5, fps=FPS, model_path=tmp_path / "empty")
    with pytest.raises(
        WeightsError, match=r"not in the local Hugging Face cache.*hf download talk3d-test/absent"
    ):
        af.frame_features(wav, RATE, backend="hubert", n_frames=5, fps=FPS, model_path="talk3d-test/absent")
    hubert = _save_tiny(tmp_path / "h", "hubert")
    with pytest.raises(ValueError, match="is a 'hubert' model, but the audio backend is 'wav2vec2'"):
        af.frame_features(wav, RATE, backend="wav2vec2", n_frames=5, fps=FPS, model_path=hubert)
