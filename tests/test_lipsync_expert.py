"""Wav2Lip lip-sync expert: network layout, checkpoint loading, loss factory, mel front end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from talk3d_core.nets import lipsync_expert as syncnet
from talk3d_core.nets.lipsync_expert import (
    FACE_BOX_SIDE,
    MEL_SILENCE,
    MEL_STEPS,
    SYNC_FRAMES,
    SyncNetColor,
    face_box_crops,
    load_sync_expert,
    mel_window,
    sync_expert_loss,
    sync_face_input,
    wav2lip_mel,
)


def _random_expert(seed: int = 0) -> SyncNetColor:
    """A randomly initialised expert whose BatchNorm statistics are not the defaults (so that a
    load which skipped buffers would show)."""
    torch.manual_seed(seed)
    model = SyncNetColor()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    return model.eval()


def _save_wav2lip_checkpoint(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Wav2Lip's save_checkpoint layout, with a DataParallel "module." prefix on every key."""
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": None,
            "global_step": 1000,
            "global_epoch": 3,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def expert_file(tmp_path_factory) -> tuple[Path, SyncNetColor]:
    model = _random_expert()
    path = _save_wav2lip_checkpoint(model.state_dict(), tmp_path_factory.mktemp("syncnet") / "expert.pth")
    return path, model


def _inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mel = torch.rand(batch, 1, 80, MEL_STEPS, generator=g) * 8 - 4
    face = torch.rand(batch, 3 * SYNC_FRAMES, 48, 96, generator=g)
    return mel, face


# ---------------------------------------------------------------------------------------------
# Network


def test_forward_gives_unit_norm_non_negative_embeddings():
    model = _random_expert()
    mel, face = _inputs(batch=3)
    with torch.no_grad():
        audio, video = model(mel, face)
    assert audio.shape == video.shape == (3, 512)
    torch.testing.assert_close(audio.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(video.norm(dim=1), torch.ones(3))
    assert (audio >= 0).all() and (video >= 0).all()  # ReLU embeddings: cosine in [0, 1]


def test_module_names_follow_the_wav2lip_checkpoint():
    keys = SyncNetColor().state_dict().keys()
    assert "face_encoder.0.conv_block.0.weight" in keys
    assert "face_encoder.16.conv_block.1.running_var" in keys
    assert "audio_encoder.13.conv_block.1.num_batches_tracked" in keys
    assert not any(k.startswith(("face_encoder.17.", "audio_encoder.14.")) for k in keys)
    state = SyncNetColor().state_dict()
    assert state["face_encoder.0.conv_block.0.weight"].shape == (32, 15, 7, 7)
    assert state["face_encoder.1.conv_block.0.weight"].shape == (64, 32, 5, 5)
    assert state["audio_encoder.0.conv_block.0.weight"].shape == (32, 1, 3, 3)
    assert state["audio_encoder.13.conv_block.0.weight"].shape == (512, 512, 1, 1)


def test_forward_rejects_wrong_input_sizes():
    model = _random_expert()
    mel, face = _inputs()
    with pytest.raises(ValueError, match=r"face must be \(B, 15, 48, 96\), got \(2, 15, 96, 96\)"):
        model(mel, torch.zeros(2, 15, 96, 96))
    with pytest.raises(ValueError, match=r"mel must be \(B, 1, 80, 16\)"):
        model(mel[..., :8], face)
    with pytest.raises(ValueError, match="1 mel windows for 2 face windows"):
        model(mel[:1], face)


# ---------------------------------------------------------------------------------------------
# Checkpoint loading


def test_wav2lip_checkpoint_loads_back_bit_identically(expert_file):
    path, original = expert_file
    loaded = load_sync_expert(path)

    reference = original.state_dict()
    state = loaded.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    mel, face = _inputs()
    with torch.no_grad():
        for a, b in zip(loaded(mel, face), original(mel, face), strict=True):
            assert torch.equal(a, b)


def test_bad_checkpoints_give_errors_naming_the_file(expert_file, tmp_path: Path):
    _, model = expert_file
    state = model.state_dict()

    missing = dict(state)
    del missing["audio_encoder.3.conv_block.1.running_mean"]
    path = _save_wav2lip_checkpoint(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing.pth") as err:
        load_sync_expert(path)
    assert "1 missing key(s): audio_encoder.3.conv_block.1.running_mean" in str(err.value)

    reshaped = dict(state)
    reshaped["face_encoder.0.conv_block.0.weight"] = torch.zeros(32, 15, 3, 3)
    path = _save_wav2lip_checkpoint(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(ValueError, match="reshaped.pth") as err:
        load_sync_expert(path)
    assert "face_encoder.0.conv_block.0.weight (32, 15, 3, 3) (expected (32, 15, 7, 7))" in str(err.value)

    extra = dict(state) | {"face_encoder.17.conv_block.0.weight": torch.zeros(1)}
    path = _save_wav2lip_checkpoint(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra.pth .*1 unexpected key\(s\): face_encoder.17"):
        load_sync_expert(path)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth: cannot read as a torch checkpoint"):
        load_sync_expert(garbage)

    torch.save({"state_dict": {"x": 1}}, tmp_path / "no_tensors.pth")
    with pytest.raises(ValueError, match="no_tensors.pth: expected a state dict of tensors"):
        load_sync_expert(tmp_path / "no_tensors.pth")

    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_sync_expert(tmp_path / "absent.pth")


# ---------------------------------------------------------------------------------------------
# Loss


def test_loss_without_weights_says_where_they_go(tmp_path: Path):
    loss, reason = sync_expert_loss("cpu", weights=tmp_path / "lipsync_expert.pth")
    assert loss is None
    assert f"no lip-sync expert weights at {tmp_path / 'lipsync_expert.pth'}" in reason
    assert "Wav2Lip" in reason

    # Without a file named, the expert is looked for in the weights folder.
    loss, reason = sync_expert_loss("cpu", weights_dir=tmp_path / "weights")
    assert loss is None and str(tmp_path / "weights" / "syncnet" / "lipsync_expert.pth") in reason


def test_loss_with_a_broken_file_says_why(tmp_path: Path):
    (tmp_path / "lipsync_expert.pth").write_bytes(b"\x00" * 10)
    loss, reason = sync_expert_loss("cpu", weights=tmp_path / "lipsync_expert.pth")
    assert loss is None
    assert "could not be loaded" in reason and str(tmp_path / "lipsync_expert.pth") in reason


def test_loss_is_wav2lip_bce_per_window_with_gradients_to_frames(expert_file):
    path, _ = expert_file
    loss, reason = sync_expert_loss("cpu", weights=path)
    assert loss is not None and reason == ""

    g = torch.Generator().manual_seed(2)
    frames = (torch.rand(2, SYNC_FRAMES, 3, 40, 40, generator=g) * 2 - 1).requires_grad_()
    mel = torch.rand(2, 80, MEL_STEPS, generator=g) * 8 - 4
    value = loss(frames, mel)

    assert value.shape == (2,)
    assert torch.isfinite(value).all() and (value >= 0).all()
    # Wav2Lip's cosine_loss with y = 1: -log(cos(a, v)), per window.
    with torch.no_grad():
        audio, video = load_sync_expert(path)(mel.unsqueeze(1), sync_face_input(frames))
    expected = -torch.log(torch.nn.functional.cosine_similarity(audio, video))
    torch.testing.assert_close(value.detach(), expected)

    # each window's loss depends on its own frames only (BatchNorm in eval mode)
    (first_window,) = torch.autograd.grad(value[0], frames, retain_graph=True)
    assert first_window[1].abs().sum() == 0 and first_window[0].abs().sum() > 0
    value.sum().backward()
    assert frames.grad is not None and torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0

    with pytest.raises(ValueError, match=r"mel must be \(B, 80, 16\)"):
        loss(frames, mel[:, :, :8])


def test_face_input_is_lower_half_bgr_in_unit_range_stacked_by_frame():
    b, size = 2, 64
    values = torch.linspace(-0.9, 0.9, SYNC_FRAMES * 3).reshape(SYNC_FRAMES, 3)  # (frame, RGB)
    frames = torch.full((b, SYNC_FRAMES, 3, size, size), -1.0)  # upper half: black, must be dropped
    frames[:, :, :, size // 2 :] = values[None, :, :, None, None]

    face = sync_face_input(frames)

    assert face.shape == (b, 15, 48, 96)
    for t in range(SYNC_FRAMES):
        for c, rgb_channel in enumerate((2, 1, 0)):  # B, G, R
            expected = (values[t, rgb_channel] + 1) / 2
            torch.testing.assert_close(face[:, 3 * t + c], torch.full((b, 48, 96), float(expected)))
    with pytest.raises(ValueError, match=r"frames must be \(B, 5, 3, H, W\)"):
        sync_face_input(frames[:, :4])


def test_face_boxes_resize_to_the_experts_96_px_face():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 128, 128, generator=g)
    boxes = torch.tensor([[10, 20, 58, 68], [0, 0, 128, 128]])  # a 48 px box, the whole image
    nearest = face_box_crops(images, boxes, "nearest")
    assert nearest.shape == (2, 3, FACE_BOX_SIDE, FACE_BOX_SIDE)
    # Nearest doubles every pixel of the 48 px box (Talk3D's renders); bilinear keeps a flat area flat.
    doubled = images[0, :, 20:68, 10:58].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert torch.equal(nearest[0], doubled)
    flat = face_box_crops(torch.full((1, 3, 64, 64), 0.25), torch.tensor([[5, 7, 40, 50]]), "bilinear")
    torch.testing.assert_close(flat, torch.full((1, 3, 96, 96), 0.25))
    with pytest.raises(ValueError, match="is not inside"):
        face_box_crops(images[:1], torch.tensor([[10, 20, 130, 68]]), "nearest")


def test_face_input_of_96_px_faces_is_their_exact_lower_half():
    g = torch.Generator().manual_seed(4)
    frames = torch.rand(2, SYNC_FRAMES, 3, 96, 96, generator=g) * 2 - 1
    face = sync_face_input(frames)
    expected = ((frames[:, :, [2, 1, 0], 48:] + 1) / 2).reshape(2, 15, 48, 96)
    torch.testing.assert_close(face, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Mel front end


def _reference_signal() -> np.ndarray:
    """1.3 s at 16 kHz: a 150 Hz buzz (40 harmonics) with a 3 Hz envelope plus a faint chirp."""
    t = np.arange(20800) / 16000.0
    buzz = sum((0.4 / k) * np.sin(2 * np.pi * 150 * k * t) for k in range(1, 41))
    x = buzz * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * np.sin(2 * np.pi * (300 + 1500 * t) * t)
    return x.astype(np.float32)


# (band, frame, value) of Wav2Lip's audio.melspectrogram on _reference_signal, computed with
# librosa 0.11 (stft pad_mode="reflect" as in librosa 0.7, mel norm="slaney"), scipy lfilter.
_LIBROSA_REFERENCE = [
    (0, 0, -0.09520), (0, 37, -1.06876), (0, 104, -0.19856),
    (7, 0, 0.00853), (7, 37, -0.24381), (7, 104, -0.92402),
    (19, 0, 0.14707), (19, 37, 0.61625), (19, 104, -0.73013),
    (33, 0, 0.49486), (33, 37, 0.74205), (33, 104, -0.71085),
    (48, 0, -0.19280), (48, 37, -0.07237), (48, 104, -0.81152),
    (61, 0, 0.07190), (61, 37, 0.30740), (61, 104, -0.54169),
    (79, 0, -0.03018), (79, 37, -4.00000), (79, 104, -1.25991),
]  # fmt: skip


def test_mel_matches_wav2lip_reference_values():
    mel = wav2lip_mel(_reference_signal(), 16000)
    assert mel.shape == (80, 1 + 20800 // 200) and mel.dtype == np.float32
    got = np.array([mel[b, f] for b, f, _ in _LIBROSA_REFERENCE])
    np.testing.assert_allclose(got, [v for _, _, v in _LIBROSA_REFERENCE], atol=1e-4)
    assert mel.mean() == pytest.approx(-0.739539, abs=1e-4)


def test_mel_filters_match_librosa_slaney_bank():
    bank = syncnet._slaney_mel_filters()
    assert bank.shape == (80, 401)
    # (band, first and last non-zero FFT bin, peak bin, peak value) from librosa.filters.mel
    for band, first, last, peak_bin, peak in [
        (0, 3, 6, 5, 0.02081245),
        (20, 39, 42, 40, 0.02018143),
        (50, 121, 129, 125, 0.01071759),
        (79, 353, 379, 366, 0.00363534),
    ]:
        nonzero = np.flatnonzero(bank[band])
        assert (nonzero[0], nonzero[-1], int(bank[band].argmax())) == (first, last, peak_bin)
        assert bank[band].max() == pytest.approx(peak, rel=1e-6)


def test_mel_of_one_second_range_silence_and_loudness():
    t = np.arange(16000) / 16000.0
    quiet = wav2lip_mel(0.05 * np.sin(2 * np.pi * 1000 * t), 16000)
    loud = wav2lip_mel(0.5 * np.sin(2 * np.pi * 1000 * t), 16000)
    assert quiet.shape == loud.shape == (80, 81)
    assert quiet.min() >= -4 and loud.max() <= 4
    band = int(loud[:, 40].argmax())
    edges = syncnet._slaney_mel_to_hz(np.linspace(*syncnet._hz_to_slaney_mel(np.array([55.0, 7600.0])), 82))
    assert abs(edges[band + 1] - 1000) < 40  # the loudest band is centred on the tone
    # 10x the amplitude = +20 dB = +1.6 on the [-4, 4] scale (8 units per 100 dB)
    np.testing.assert_allclose(loud[band, 5:-5] - quiet[band, 5:-5], 1.6, atol=0.01)
    assert loud[band].mean() > loud[band + 20].mean() + 1  # energy sits in the tone's band
    np.testing.assert_array_equal(wav2lip_mel(np.zeros(16000), 16000), np.full((80, 81), MEL_SILENCE))


def test_mel_resamples_other_rates():
    tone_48k = 0.3 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)
    tone_16k = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    resampled, native = wav2lip_mel(tone_48k, 48000), wav2lip_mel(tone_16k, 16000)
    assert resampled.shape == native.shape == (80, 81)
    band = int(native[:, 40].argmax())
    np.testing.assert_allclose(resampled[band, 5:-5], native[band, 5:-5], atol=0.02)


def test_mel_rejects_bad_waveforms():
    with pytest.raises(ValueError, match=r"mono \(S,\) waveform, got shape \(2, 16000\)"):
        wav2lip_mel(np.zeros((2, 16000)), 16000)
    with pytest.raises(ValueError, match="float waveform"):
        wav2lip_mel(np.zeros(16000, dtype=np.int16), 16000)
    with pytest.raises(ValueError, match="NaN"):
        wav2lip_mel(np.full(16000, np.nan), 16000)
    with pytest.raises(ValueError, match="more than 400 samples"):
        wav2lip_mel(np.zeros(300), 16000)
    with pytest.raises(ValueError, match="sample rate"):
        wav2lip_mel(np.zeros(16000), 0)


def test_mel_window_follows_wav2lip_crop_and_pads_with_silence_at_the_end():
    mel = np.arange(80 * 50, dtype=np.float32).reshape(80, 50) / 4000 - 0.5
    window = mel_window(mel, 3)  # int(80 * 3 / 25) = 9
    assert window.shape == (80, MEL_STEPS) and window.dtype == np.float32
    np.testing.assert_array_equal(window, mel[:, 9:25])
    np.testing.assert_array_equal(mel_window(mel, 5), mel[:, 16:32])  # 0.2 s -> exactly 16 mel frames
    np.testing.assert_array_equal(mel_window(mel, 6, fps=50.0), mel[:, 9:25])

    end = mel_window(mel, 14)  # starts at int(44.8) = 44: 6 real columns, 10 of silence
    np.testing.assert_array_equal(end[:, :6], mel[:, 44:50])
    np.testing.assert_array_equal(end[:, 6:], np.full((80, 10), MEL_SILENCE))

    with pytest.raises(ValueError, match="past the end of the audio"):
        mel_window(mel, 16)  # int(51.2) = 51 >= 50
    with pytest.raises(ValueError, match="non-negative integer"):
        mel_window(mel, -1)
    with pytest.raises(ValueError, match=r"\(80, T\) mel spectrogram"):
        mel_window(mel.T, 0)
