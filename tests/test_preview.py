"""The ingest contact sheet: right frames, right size, waveform and ticks drawn."""

import wave

import numpy as np
import pytest
from PIL import Image

from talk3d_core.report.ingest_preview import ingest_preview
from talk3d_core.util.media import read_wav_float


def write_wav(path, samples, rate=16000, channels=1):
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(channels)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


@pytest.fixture
def ingested(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(50):  # 2 s at 25 fps, each frame a flat grey level equal to its index
        Image.new("RGB", (64, 48), (i * 5, i * 5, i * 5)).save(frames / f"{i:06d}.png")
    t = np.arange(32000) / 16000
    write_wav(tmp_path / "audio.wav", 0.5 * np.sin(2 * np.pi * 220 * t) * (t > 1))  # silent first second
    return tmp_path


def test_contact_sheet(ingested):
    out = ingested / "sheet.png"
    info = ingest_preview(
        ingested / "frames", ingested / "audio.wav", out, fps=25, columns=3, rows=2, tile=64
    )
    assert info["frames"] == [0, 10, 20, 29, 39, 49]
    assert info["audio_s"] == pytest.approx(2.0) and info["video_s"] == pytest.approx(2.0)
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (2 * (48 + 18) + 96, 3 * 64, 3)
    # The last tile shows frame 49 (grey 245); the first shows frame 0 (black).
    assert sheet[66 + 18 + 24, 2 * 64 + 32].tolist() == [245, 245, 245]
    assert sheet[18 + 24, 32].tolist() == [0, 0, 0]
    # Waveform: flat in the silent first half, full swing in the second half.
    strip = sheet[-96:].astype(int)
    blue = (strip[..., 2] - strip[..., 0]) > 60
    assert blue[:, 10:80].sum() < blue[:, 110:180].sum() / 10


def test_read_wav_stereo_downmix(tmp_path):
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.5)], axis=1).reshape(-1)
    write_wav(tmp_path / "s.wav", stereo, channels=2)
    samples, rate = read_wav_float(tmp_path / "s.wav")
    assert rate == 16000 and samples.shape == (100,) and np.abs(samples).max() < 1e-3


def test_empty_frames_dir_is_an_error(tmp_path):
    (tmp_path / "frames").mkdir()
    with pytest.raises(ValueError, match="no frames"):
        ingest_preview(tmp_path / "frames", tmp_path / "a.wav", tmp_path / "o.png", fps=25)
