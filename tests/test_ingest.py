"""Ingest stage: any clip -> 0-based frames at the pipeline fps, exact-length 16 kHz audio, meta.json."""

import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from talk3d_core.ingest import ingest_audio, ingest_video
from talk3d_core.util.media import MediaError, ffmpeg_version, read_wav

needs_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"reference clips not found at {SHARED_DATA}"
)


def ingest(src, out, **kwargs):
    return ingest_video(src, out / "frames", out / "audio.wav", out / "meta.json", **kwargs)


def check_outputs(out: Path, meta: dict, *, fps=25, rate=16000, image_format="png") -> np.ndarray:
    """The contract every later stage relies on; returns the audio samples."""
    assert sorted(p.name for p in out.iterdir()) == ["audio.wav", "frames", "meta.json"]  # no temp leftovers
    names = sorted(p.name for p in (out / "frames").iterdir())
    assert names == [f"{i:06d}.{image_format}" for i in range(meta["n_frames"])]
    samples, sample_rate = read_wav(out / "audio.wav")
    assert sample_rate == rate and samples.ndim == 1
    assert samples.size == meta["audio_samples"] == round(meta["n_frames"] * rate / fps)
    assert json.loads((out / "meta.json").read_text()) == meta
    return samples


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


def peak_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / samples.size)


def grey_level(path: Path) -> float:
    return float(np.asarray(Image.open(path), dtype=np.float64).mean())


@pytest.mark.parametrize("container", ["mp4", "mov", "mkv", "webm", "avi"])
@pytest.mark.parametrize("rate", ["24", "30", "30000/1001"])
def test_containers_and_frame_rates(make_clip, tmp_path, container, rate):
    clip = make_clip(container=container, rate=rate, duration=3.0)
    meta = ingest(clip, tmp_path)
    samples = check_outputs(tmp_path, meta)
    assert abs(meta["n_frames"] - round(3.0 * 25)) <= 1
    assert meta["fps"] == 25 and meta["frame_size"] == [160, 120] and meta["scale"] == 1.0
    assert meta["source_fps"] == pytest.approx(float(Fraction(rate)), abs=0.01)
    assert meta["source_size"] == [160, 120] and meta["rotation"] == 0.0
    assert meta["duration_s"] == pytest.approx(3.0, abs=0.1)
    assert abs(meta["source_frames_estimate"] - 3.0 * Fraction(rate)) <= 2
    assert meta["audio_source"] == str(clip) and meta["audio_source_channels"] == 2
    # The decoded soundtrack itself spans the video to within one frame (640 samples at 25 fps).
    assert abs(meta["audio_decoded_samples"] - meta["audio_samples"]) <= 640
    assert peak_hz(samples) == pytest.approx(440, abs=2)
    assert meta["ffmpeg_version"] == ffmpeg_version() and Path(meta["ffmpeg"]).is_file()
    with Image.open(tmp_path / "frames" / "000000.png") as first:
        assert first.size == (160, 120) and first.mode == "RGB"


@pytest.mark.parametrize(
    ("rate", "vfr", "max_gap_s"),
    [
        pytest.param("24", False, 1 / 48, id="24fps"),
        pytest.param("30", False, 1 / 60, id="30fps"),
        pytest.param("30000/1001", False, 1000 / 60000, id="29.97fps"),
        pytest.param("30", True, 3 / 30, id="vfr"),
    ],
)
def test_resampling_shows_the_right_instant(make_clip, tmp_path, rate, vfr, max_gap_s):
    """Each source frame is a flat grey of level 60 * t, so a stored frame's level tells its time."""
    clip = make_clip(rate=rate, duration=4.0, ramp=True, vfr=vfr)
    meta = ingest(clip, tmp_path)
    check_outputs(tmp_path, meta)
    assert abs(meta["n_frames"] - 100) <= 1
    shown_s = np.array([grey_level(p) / 60 for p in sorted((tmp_path / "frames").iterdir())])
    wanted_s = np.arange(meta["n_frames"]) / 25
    # Nearest source frame (within half a source frame, or the gap for VFR), level rounding 1/60 s.
    assert np.abs(shown_s - wanted_s).max() <= max_gap_s + 1 / 60 + 1e-3


def test_audio_starting_late_stays_in_sync(make_clip, tmp_path):
    """A soundtrack that starts 0.5 s into the clip is padded with silence at the start, not shifted."""
    meta = ingest(make_clip(container="mkv", audio_delay=0.5), tmp_path)
    samples = check_outputs(tmp_path, meta).astype(np.float64)
    assert np.abs(samples[:7800]).max() < 100
    assert np.sqrt(np.mean(samples[8400:12000] ** 2)) > 1000
    assert meta["audio_trimmed_s"] == pytest.approx(0.5, abs=0.01)  # the track runs on past the video


def test_rotation_is_applied(make_clip, tmp_path):
    meta = ingest(make_clip(rotation=90), tmp_path)
    check_outputs(tmp_path, meta)
    assert meta["rotation"] == 90.0 and meta["source_size"] == [120, 160] and meta["frame_size"] == [120, 160]
    with Image.open(tmp_path / "frames" / "000000.png") as first:
        assert first.size == (120, 160)


@pytest.mark.parametrize(("max_side", "size"), [(64, [64, 48]), (100, [100, 74]), (1000, [160, 120])])
def test_max_side(make_clip, tmp_path, max_side, size):
    meta = ingest(make_clip(), tmp_path, max_side=max_side)
    check_outputs(tmp_path, meta)
    assert meta["frame_size"] == size and meta["source_size"] == [160, 120]
    assert meta["scale"] == pytest.approx(size[0] / 160)
    with Image.open(tmp_path / "frames" / "000010.png") as frame:
        assert list(frame.size) == size


def test_jpg_frames(make_clip, tmp_path):
    meta = ingest(make_clip(), tmp_path, image_format="jpg")
    check_outputs(tmp_path, meta, image_format="jpg")
    assert meta["image_format"] == "jpg"
    with Image.open(tmp_path / "frames" / "000000.jpg") as first:
        assert first.format == "JPEG" and first.size == (160, 120)


def test_other_pipeline_rate(make_clip, tmp_path):
    meta = ingest(make_clip(rate="30000/1001"), tmp_path, fps=30000 / 1001)
    check_outputs(tmp_path, meta, fps=30000 / 1001)
    assert abs(meta["n_frames"] - 90) <= 1


@pytest.mark.parametrize("audio_fmt", ["wav", "mp3"])
def test_separate_audio(make_clip, make_audio, tmp_path, audio_fmt):
    audio = make_audio(fmt=audio_fmt, duration=3.0, tone=1000.0)
    meta = ingest(make_clip(audio=False), tmp_path, audio=audio)
    samples = check_outputs(tmp_path, meta)
    assert meta["audio_source"] == str(audio) and meta["audio_source_rate"] == 44100
    assert peak_hz(samples) == pytest.approx(1000, abs=2)
    # A separate file also replaces a soundtrack the video has (440 Hz here).
    meta = ingest(make_clip(), tmp_path, audio=audio)
    assert peak_hz(check_outputs(tmp_path, meta)) == pytest.approx(1000, abs=2)


@pytest.mark.parametrize(
    ("audio_s", "limit", "padded_s", "trimmed_s"),
    [(3.02, 0.5, 0.0, 0.02), (3.3, 0.5, 0.0, 0.3), (2.75, 0.5, 0.25, 0.0), (2.4, None, 0.6, 0.0)],
)
def test_audio_of_another_length_is_fitted_logged_and_recorded(
    make_clip, make_audio, tmp_path, caplog, audio_s, limit, padded_s, trimmed_s
):
    """Within a frame: silent. More: padded or trimmed at the end, with a warning and meta.json figures."""
    audio = make_audio(duration=audio_s)
    meta = ingest(make_clip(audio=False), tmp_path, audio=audio, max_audio_mismatch_s=limit)
    check_outputs(tmp_path, meta)
    assert meta["audio_padded_s"] == pytest.approx(padded_s, abs=0.01)
    assert meta["audio_trimmed_s"] == pytest.approx(trimmed_s, abs=0.01)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if padded_s + trimmed_s > 1 / 25:
        assert len(warned) == 1 and f"{padded_s or trimmed_s:.2f} s" in warned[0], warned
    else:
        assert not warned
    if padded_s:
        first = meta["audio_padded_from_frame"]
        assert first == int(audio_s * 25) and meta["n_frames"] - first == pytest.approx(padded_s * 25, abs=1)
        samples, _ = read_wav(tmp_path / "audio.wav")
        assert not samples[round((first + 1) * 16000 / 25) :].any()  # silence from there on
    else:
        assert meta["audio_padded_from_frame"] is None


@pytest.mark.parametrize("audio_s", [2.0, 4.0], ids=["cut audio", "another take"])
def test_audio_far_from_the_video_length_is_an_error(make_clip, make_audio, tmp_path, audio_s):
    out = tmp_path / "out"
    pattern = r"audio\d+\.wav: .* 1\.00 s apart, more than ingest\.max_audio_mismatch_s"
    with pytest.raises(MediaError, match=pattern):
        ingest(make_clip(audio=False), out, audio=make_audio(duration=audio_s))
    assert_nothing_written(out)


def test_awkward_paths(make_clip, tmp_path):
    """Colons (ffmpeg protocol syntax) and percent signs (image2 patterns) in file and folder names."""
    odd = tmp_path / "sub:ject %d 50%"
    odd.mkdir()
    clip = odd / "take:1 %03d.mp4"
    shutil.copy(make_clip(), clip)
    meta = ingest(clip, odd / "out")
    check_outputs(odd / "out", meta)
    assert meta["source"] == str(clip) and abs(meta["n_frames"] - 75) <= 1
    assert ingest_audio(clip, odd / "drive:1.wav")["samples"] > 0


def test_rerun_replaces_outputs(make_clip, tmp_path):
    ingest(make_clip(), tmp_path)
    meta = ingest(make_clip(), tmp_path, fps=10)
    check_outputs(tmp_path, meta, fps=10)  # no stale frames from the 25 fps run
    assert abs(meta["n_frames"] - 30) <= 1


def truncated_copy(clip: Path, dest: Path, keep: float = 0.6) -> Path:
    data = clip.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("missing", r"missing\.mp4: file not found"),
        ("text", r"notes\.mp4: cannot be opened as a video or audio file"),
        ("audio_only", r"audio\d+\.mp3: has no video stream"),
        ("no_audio", r"clip\d+\.mp4: has no audio stream; .*`audio`.*config/subjects\.tsv"),
        ("cut_index_at_end", r"cut\.mp4: cannot be opened .* truncated"),
        ("cut_faststart", r"cut\.mp4: (decode errors|truncated)"),
        ("too_short", r"clip\d+\.mp4: clip is 2\.\d+ s long, shorter than the minimum 3\.0 s"),
        ("short_audio", r"audio\d+\.wav: its audio decodes to 1\.00 s but .* 3\.\d+ s, 2\.00 s apart"),
        ("missing_audio", r"gone\.wav: file not found"),
        ("still_image", r"photo\.mp4: is a still image \(JPEG\), not a video"),
        ("directory", r"in: is a directory, not a file"),
    ],
)
def test_bad_inputs(make_clip, make_audio, tmp_path, case, pattern):
    src, audio = tmp_path / "in" / "missing.mp4", None
    src.parent.mkdir()
    if case == "text":
        src = src.with_name("notes.mp4")
        src.write_text("not a video\n" * 100)
    elif case == "audio_only":
        src = make_audio(fmt="mp3")
    elif case == "no_audio":
        src = make_clip(audio=False)
    elif case == "cut_index_at_end":
        src = truncated_copy(make_clip(duration=4.0), src.with_name("cut.mp4"))
    elif case == "cut_faststart":
        src = truncated_copy(make_clip(duration=4.0, faststart=True), src.with_name("cut.mp4"))
    elif case == "too_short":
        src = make_clip(duration=2.0)
    elif case == "short_audio":
        src, audio = make_clip(audio=False), make_audio(duration=1.0)
    elif case == "missing_audio":
        src, audio = make_clip(audio=False), tmp_path / "gone.wav"
    elif case == "still_image":
        src = src.with_name("photo.mp4")
        Image.new("RGB", (64, 64)).save(src, format="JPEG")
    elif case == "directory":
        src = src.parent
    out = tmp_path / "out"
    with pytest.raises(MediaError, match=pattern):
        ingest(src, out, audio=audio)
    assert_nothing_written(out)


def test_bad_options(make_clip, tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        ingest(make_clip(), tmp_path / "out", image_format="bmp")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("fmt", ["wav", "mp3", "m4a", "flac"])
def test_ingest_audio_formats(make_audio, tmp_path, fmt):
    src = make_audio(fmt=fmt, duration=3.0, tone=440.0)
    out = tmp_path / "drive" / "audio.wav"
    meta = ingest_audio(src, out)
    samples, rate = read_wav(out)
    assert rate == 16000 and samples.ndim == 1 and samples.size == meta["samples"]
    assert abs(samples.size - 48000) <= 160  # encoder padding is removed by the decoders
    assert meta["duration_s"] == pytest.approx(samples.size / 16000)
    assert meta["source"] == str(src) and meta["source_rate"] == 44100 and meta["source_channels"] == 2
    assert meta["source_codec"] == {"wav": "pcm_s16le", "m4a": "aac"}.get(fmt, fmt)
    assert peak_hz(samples) == pytest.approx(440, abs=2)
    assert sorted(p.name for p in out.parent.iterdir()) == ["audio.wav"]


def test_ingest_audio_from_a_video(make_clip, tmp_path):
    meta = ingest_audio(make_clip(container="webm"), tmp_path / "a.wav")
    assert meta["source_codec"] == "opus" and abs(meta["samples"] - 48000) <= 160


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("missing", r"nothing\.mp3: file not found"),
        ("text", r"notes\.m4a: cannot be opened as a video or audio file"),
        ("no_audio", r"clip\d+\.mp4: has no audio stream"),
        ("too_short", r"audio\d+\.wav: audio is 0\.30 s long, shorter than the minimum 0\.5 s"),
    ],
)
def test_ingest_audio_bad_inputs(make_clip, make_audio, tmp_path, case, pattern):
    src = tmp_path / "nothing.mp3"
    if case == "text":
        src = tmp_path / "notes.m4a"
        src.write_text("not audio\n" * 100)
    elif case == "no_audio":
        src = make_clip(audio=False)
    elif case == "too_short":
        src = make_audio(duration=0.3)
    out = tmp_path / "out"
    with pytest.raises(MediaError, match=pattern):
        ingest_audio(src, out / "audio.wav")
    assert_nothing_written(out)


# ---------------------------------------------------------------------------------------------
# The reference clips


@pytest.fixture(scope="module")
def german(tmp_path_factory):
    out = tmp_path_factory.mktemp("german")
    return out, ingest(SHARED_DATA / "videos" / "german.mp4", out)


@pytest.mark.parametrize("name", ["cnn", "german"])
@pytest.mark.shared
@needs_data
def test_reference_clips(request, tmp_path, name):
    if name == "german":
        out, meta = request.getfixturevalue("german")
        expected = 500
    else:
        out, meta = tmp_path, ingest(SHARED_DATA / "videos" / "cnn.mp4", tmp_path)
        expected = 1779
    check_outputs(out, meta)
    assert meta["n_frames"] == expected and meta["frame_size"] == [512, 512]
    assert meta["source_fps"] == 25.0 and meta["video_codec"] == "h264"
    # The soundtrack as decoded spans the video to within one frame.
    assert abs(meta["audio_decoded_samples"] - meta["audio_samples"]) <= 16000 / 25
    assert meta["audio_source_channels"] == 2 and meta["audio_source_rate"] == 44100


@pytest.mark.shared
@needs_data
def test_reference_clip_at_30fps_is_resampled(german, tmp_path, ffmpeg):
    """A 30 fps re-encode of german.mp4's first 4 s comes back as the original 25 fps frames."""
    original_dir, _ = german
    clip = tmp_path / "german30.mp4"
    encode = "-vf fps=30 -c:v libx264 -preset ultrafast -crf 12 -c:a aac".split()
    ffmpeg("-t", "4", "-i", str(SHARED_DATA / "videos" / "german.mp4"), *encode, str(clip))
    out = tmp_path / "out"
    meta = ingest(clip, out)
    check_outputs(out, meta)
    assert meta["source_fps"] == 30.0 and abs(meta["n_frames"] - 100) <= 1

    def small_grey(path):
        with Image.open(path) as img:
            return np.asarray(img.convert("L").reduce(4), dtype=np.float32)

    resampled = [small_grey(p) for p in sorted((out / "frames").iterdir())]
    original = [small_grey(original_dir / "frames" / f"{i:06d}.png") for i in range(len(resampled) + 2)]
    best = []
    for k, frame in enumerate(resampled):
        candidates = range(max(0, k - 2), k + 3)
        errors = [np.abs(frame - original[j]).mean() for j in candidates]
        best.append(candidates[int(np.argmin(errors))] - k)
    assert all(offset == 0 for offset in best), best


@pytest.mark.shared
@needs_data
def test_reference_clip_without_face_is_a_valid_video(tmp_path):
    """no_face.mp4 (24 fps nominal, 960x540): ingest does not look for faces, later stages do."""
    meta = ingest(SHARED_DATA / "videos" / "no_face.mp4", tmp_path)
    check_outputs(tmp_path, meta)
    assert abs(meta["n_frames"] - round(3.9 * 25)) <= 1
    assert meta["source_fps"] == 24.0 and meta["frame_size"] == [960, 540]


@pytest.mark.shared
@needs_data
def test_reference_driving_audio(tmp_path):
    meta = ingest_audio(SHARED_DATA / "audio" / "obama_5s.wav", tmp_path / "obama.wav")
    samples, rate = read_wav(tmp_path / "obama.wav")
    assert rate == 16000 and samples.ndim == 1 and samples.size == meta["samples"]
    assert meta["source_channels"] == 2 and meta["duration_s"] == pytest.approx(5.0, abs=0.02)
    assert meta["source_codec"] == "pcm_s16le"
