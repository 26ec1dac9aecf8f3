"""SyncNet v2 LSE-C / LSE-D (talk3d_core.metrics.sync): network, strict loading, front ends, scores."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import python_speech_features
import torch

from talk3d_core.face.template import FaceFraming
from talk3d_core.metrics.sync import (
    DEFAULT_WINDOW,
    EMBEDDING_DIM,
    PAD_VALUE,
    SYNCNET_SIZE,
    VSHIFT,
    SyncNetV2,
    SyncScorer,
    load_syncnet_v2,
    sync_distances,
    sync_offset_scores,
    sync_scorer,
    syncnet_face_crops,
    syncnet_mfcc,
    syncnet_window,
)


def _random_syncnet(seed: int = 0) -> SyncNetV2:
    """A randomly initialised SyncNet whose BatchNorm statistics are not the defaults (so that a load
    which skipped buffers would show)."""
    torch.manual_seed(seed)
    model = SyncNetV2()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def reference_model() -> SyncNetV2:
    return _random_syncnet()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory, reference_model: SyncNetV2) -> Path:
    """The model saved like syncnet_v2.model: a bare state dict in torch's legacy (pre-1.6) format,
    without the ``num_batches_tracked`` counters that PyTorch before 0.4.1 did not have."""
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    state = {k: v for k, v in reference_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


def _save_state(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save(state, path)
    return path


# ---------------------------------------------------------------------------------------------- network


def test_state_dict_uses_the_published_key_layout() -> None:
    state = SyncNetV2().state_dict()
    prefixes = {key.split(".")[0] for key in state}
    assert prefixes == {"netcnnaud", "netfcaud", "netfclip", "netcnnlip"}
    # Conv / BatchNorm positions inside nn.Sequential fix the names the file uses.
    assert tuple(state["netcnnaud.0.weight"].shape) == (64, 1, 3, 3)
    assert tuple(state["netcnnaud.18.weight"].shape) == (512, 256, 5, 4)
    assert tuple(state["netcnnlip.0.weight"].shape) == (96, 3, 5, 7, 7)
    assert tuple(state["netcnnlip.18.weight"].shape) == (512, 256, 1, 6, 6)
    assert tuple(state["netfcaud.3.weight"].shape) == (EMBEDDING_DIM, 512)
    assert "netfclip.1.running_var" in state


def test_embeddings_have_the_documented_shapes(reference_model: SyncNetV2) -> None:
    with torch.inference_mode():
        audio = reference_model.forward_aud(torch.randn(3, 1, 13, 20))
        video = reference_model.forward_lip(torch.rand(2, 3, 5, SYNCNET_SIZE, SYNCNET_SIZE) * 255)
    assert audio.shape == (3, EMBEDDING_DIM) and video.shape == (2, EMBEDDING_DIM)
    assert torch.isfinite(audio).all() and torch.isfinite(video).all()
    with pytest.raises(ValueError, match=r"\(B, 1, 13, 20\)"):
        reference_model.forward_aud(torch.randn(1, 1, 13, 16))
    with pytest.raises(ValueError, match="video windows"):
        reference_model.forward_lip(torch.rand(1, 3, 5, 96, 96))


# ---------------------------------------------------------------------------------------------- loading


def test_load_is_strict_and_restores_every_tensor(weights_file: Path, reference_model: SyncNetV2) -> None:
    model = load_syncnet_v2(weights_file)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    loaded = model.state_dict()
    for key, value in reference_model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], value), key


def test_load_accepts_a_file_with_batch_counters(tmp_path: Path, reference_model: SyncNetV2) -> None:
    path = _save_state(tmp_path / "with_counters.model", reference_model.state_dict())
    model = load_syncnet_v2(path)
    assert torch.equal(
        model.state_dict()["netcnnlip.0.weight"], reference_model.state_dict()["netcnnlip.0.weight"]
    )


def test_renamed_key_is_a_clear_error_naming_the_file(tmp_path: Path, reference_model: SyncNetV2) -> None:
    state = dict(reference_model.state_dict())
    state["netcnnaud.0.kernel"] = state.pop("netcnnaud.0.weight")
    path = _save_state(tmp_path / "renamed.model", state)
    with pytest.raises(ValueError) as info:
        load_syncnet_v2(path)
    message = str(info.value)
    assert str(path) in message
    assert "missing key(s): netcnnaud.0.weight" in message
    assert "unexpected key(s): netcnnaud.0.kernel" in message


def test_missing_key_and_wrong_shape_are_clear_errors(tmp_path: Path, reference_model: SyncNetV2) -> None:
    state = dict(reference_model.state_dict())
    del state["netfclip.3.bias"]
    path = _save_state(tmp_path / "missing.model", state)
    with pytest.raises(ValueError, match=r"missing.model.*1 missing key\(s\): netfclip.3.bias"):
        load_syncnet_v2(path)

    state = dict(reference_model.state_dict())
    state["netfcaud.3.weight"] = torch.zeros(512, 512)  # a 512-d embedding head
    path = _save_state(tmp_path / "shape.model", state)
    with pytest.raises(
        ValueError, match=r"shape.model.*netfcaud.3.weight \(512, 512\) \(expected \(1024, 512\)\)"
    ):
        load_syncnet_v2(path)


def test_unreadable_or_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.model: cannot read"):
        load_syncnet_v2(junk)
    not_a_state = _save_state(tmp_path / "list.model", [torch.zeros(1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="list.model: expected a state dict"):
        load_syncnet_v2(not_a_state)
    with pytest.raises(FileNotFoundError, match="absent.model.*snakemake --cores 1 .*syncnet_v2.model"):
        load_syncnet_v2(tmp_path / "absent.model")


def test_sync_scorer_without_weights_gives_a_reason(tmp_path: Path) -> None:
    scorer, reason = sync_scorer(tmp_path / "syncnet_v2.model")
    assert scorer is None
    assert str(tmp_path / "syncnet_v2.model") in reason
    assert "snakemake --cores 1 resources/weights/syncnet/syncnet_v2.model" in reason

    broken = tmp_path / "broken.model"
    broken.write_bytes(b"\x00" * 16)
    scorer, reason = sync_scorer(broken)
    assert scorer is None and "broken.model" in reason


# ---------------------------------------------------------------------------------------------- front ends


def test_mfcc_is_python_speech_features_on_16_bit_samples() -> None:
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    mfcc = syncnet_mfcc(audio)
    assert mfcc.shape == (13, 99)  # 1 + ceil((16000 - 400) / 160) steps at 100 Hz
    pcm = np.clip(np.round(audio.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)
    np.testing.assert_allclose(mfcc, python_speech_features.mfcc(pcm, 16000).T, rtol=1e-5, atol=1e-4)
    # c0 is the log energy of the integer samples: scaling to [-1, 1] instead would shift it by ~20.8.
    assert mfcc[0].mean() > 10
    assert np.isfinite(syncnet_mfcc(np.zeros(4000))).all()
    # Other rates are resampled to 16 kHz first.
    assert syncnet_mfcc(np.zeros(8000), rate=8000).shape == (13, 99)
    with pytest.raises(ValueError, match="float waveform"):
        syncnet_mfcc(np.zeros(1000, dtype=np.int16))


def test_syncnet_window_follows_the_crop_template() -> None:
    x0, y0, x1, y1 = DEFAULT_WINDOW
    assert x1 - x0 == pytest.approx(y1 - y0)  # square, like syncnet_python's crop
    assert (x0 + x1) / 2 == pytest.approx(0.5)
    assert (x0, y0, x1, y1) == pytest.approx((0.15, 0.325, 0.85, 1.025))
    # A face twice as large, its eyes 0.05 lower (a generator's crop template): the window follows.
    framing = FaceFraming(eye_x=0.5, eye_y=0.525, eye_distance=0.4)
    moved = syncnet_window(framing)
    assert moved[2] - moved[0] == pytest.approx(2 * (x1 - x0))
    assert moved[1] - 0.525 == pytest.approx(2 * (y0 - 0.475))
    assert syncnet_window(FaceFraming()) == pytest.approx(DEFAULT_WINDOW)


def test_face_crops_are_bgr_224_with_grey_padding() -> None:
    frames = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    frames[..., 0] = 200  # red in RGB
    crops = syncnet_face_crops(frames)
    assert crops.shape == (2, SYNCNET_SIZE, SYNCNET_SIZE, 3) and crops.dtype == np.uint8
    assert (crops[:, 100, 100] == [0, 0, 200]).all()  # BGR
    # The default window runs ~2.5% of its side past the crop's bottom edge: grey there.
    assert (crops[:, -2, 100] == PAD_VALUE).all()
    # window=None: the frames are SyncNet crops already; only the channel order changes.
    whole = syncnet_face_crops(np.repeat(frames, 4, axis=1).repeat(4, axis=2)[:, :224, :224], None)
    assert (whole == [0, 0, 200]).all()
    with pytest.raises(ValueError, match="uint8"):
        syncnet_face_crops(frames.astype(np.float32))


# ---------------------------------------------------------------------------------------------- scores


def test_distances_match_syncnet_pairing() -> None:
    rng = np.random.default_rng(2)
    video, audio = rng.standard_normal((9, 6)), rng.standard_normal((9, 6))
    distances = sync_distances(video, audio, vshift=3)
    assert distances.shape == (9, 7)
    for i in range(9):
        for j in range(7):
            k = i + j - 3
            partner = audio[k] if 0 <= k < 9 else np.zeros(6)
            assert distances[i, j] == pytest.approx(np.linalg.norm(video[i] - partner + 1e-6), rel=1e-5)


@pytest.mark.parametrize("shift", [0, 2, -4, 15])
def test_offset_search_finds_a_known_shift(shift: int) -> None:
    """Video embeddings equal to the audio embeddings ``shift`` windows later (the mouth is late by
    ``shift`` frames); windows whose partner is outside the clip are zero, like the padding."""
    rng = np.random.default_rng(3)
    n = 40
    audio = rng.standard_normal((n, 32)).astype(np.float32)
    video = np.zeros_like(audio)
    for i in range(n):
        if 0 <= i - shift < n:
            video[i] = audio[i - shift]
    scores = sync_offset_scores(video, audio)
    assert scores["offset"] == shift
    assert scores["lse_d"] < 1e-4
    assert scores["lse_c"] > 1.0


def test_score_on_a_random_clip(weights_file: Path) -> None:
    scorer, reason = sync_scorer(weights_file)
    assert isinstance(scorer, SyncScorer) and reason == ""
    assert scorer.name == "syncnet-v2"
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (14, 64, 64, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(14 * 640 + 100)).astype(np.float32)
    result = scorer.score(frames, audio)
    assert result["frames"] == 14 and result["windows"] == 9
    assert math.isfinite(result["lse_c"]) and math.isfinite(result["lse_d"])
    assert result["lse_c"] >= 0 and result["lse_d"] > 0
    assert -VSHIFT <= result["offset"] <= VSHIFT
    # Window 3, built by hand as syncnet_python does: frames 3..7 (C, T, H, W), MFCC steps 12..31.
    video_embeddings, audio_embeddings = scorer.embed(frames, audio)
    crops = torch.from_numpy(syncnet_face_crops(frames[3:8])).permute(3, 0, 1, 2).float()[None]
    mfcc = torch.from_numpy(syncnet_mfcc(audio)[:, 12:32])[None, None]
    with torch.inference_mode():
        by_hand = scorer.model.forward_lip(crops)[0], scorer.model.forward_aud(mfcc)[0]
    np.testing.assert_allclose(video_embeddings[3], by_hand[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(audio_embeddings[3], by_hand[1], rtol=1e-4, atol=1e-4)
    # Shorter audio limits the frames used, as syncnet_python's min_length.
    assert scorer.score(frames, audio[: 12 * 640])["windows"] == 7
    with pytest.raises(ValueError, match="at least 6 frames"):
        scorer.score(frames[:5], audio)
