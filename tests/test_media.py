"""ffmpeg helpers: metadata from `ffmpeg -i` (no ffprobe), WAV I/O, errors that name the file, the
streaming H.264/AAC VideoWriter, and its lossless mode read back exactly by read_video."""

import errno
import os
import subprocess

import numpy as np
import pytest
from conftest import colour_frames, decode_audio, decode_video

from talk3d_core.util.media import (
    MediaError,
    VideoWriter,
    ffmpeg_exe,
    ffmpeg_version,
    parse_ffmpeg_info,
    probe,
    read_video,
    read_wav,
    run_ffmpeg,
    still_image_kind,
    write_wav,
)


@pytest.mark.parametrize("container", ["mp4", "mov", "mkv", "webm", "avi"])
@pytest.mark.parametrize(("rate", "fps"), [("24", 24.0), ("30000/1001", 29.97)])
def test_probe_video_containers(make_clip, container, rate, fps):
    path = make_clip(container=container, rate=rate, duration=3.0)
    info = probe(path)
    assert info.path == path
    assert info.duration_s == pytest.approx(3.0, abs=0.1)
    video, audio = info.video, info.audio
    assert video.kind == "video" and audio.kind == "audio"
    assert video.index != audio.index
    assert (video.width, video.height) == (160, 120) and video.display_size == (160, 120)
    assert video.fps == pytest.approx(fps, abs=0.01)
    assert video.rotation == 0.0
    expected_codec = {"webm": "vp9", "avi": "mpeg4"}.get(container, "h264")
    assert video.codec == expected_codec
    assert audio.sample_rate in (44100, 48000)  # opus always decodes at 48 kHz
    assert audio.channels == 2


@pytest.mark.parametrize(
    ("fmt", "codec"), [("wav", "pcm_s16le"), ("mp3", "mp3"), ("m4a", "aac"), ("flac", "flac")]
)
def test_probe_audio_files(make_audio, fmt, codec):
    info = probe(make_audio(fmt=fmt, duration=2.0, channels=1))
    assert info.video is None
    assert info.audio.codec == codec
    assert info.audio.sample_rate == 44100 and info.audio.channels == 1
    assert info.duration_s == pytest.approx(2.0, abs=0.1)


def test_probe_rotation(make_clip):
    info = probe(make_clip(rotation=90))
    assert info.video.rotation == 90.0
    assert (info.video.width, info.video.height) == (160, 120)
    assert info.video.display_size == (120, 160)


def test_probe_errors(tmp_path):
    with pytest.raises(MediaError, match=r"missing\.mp4: file not found"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="is a directory, not a file"):
        probe(tmp_path)
    with pytest.raises(MediaError, match=r"/dev/null: is a character device, not a regular file"):
        probe("/dev/null")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(MediaError, match=r"notes\.mp4: cannot be opened as a video or audio file"):
        probe(text)


# ffmpeg summaries from other versions and sources, to pin the parser without making such files.
OLD_PHONE_CLIP = """\
Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'IMG_0001.MOV':
  Metadata:
    major_brand     : qt
    creation_time   : 2021-05-01T10:00:00.000000Z
  Duration: 00:01:02.50, start: 0.000000, bitrate: 12000 kb/s
    Stream #0:0(und): Video: hevc (Main) (hvc1 / 0x31637668), yuv420p(tv, bt709), 1920x1080, \
11800 kb/s, 29.98 fps, 30 tbr, 600 tbn, 600 tbc (default)
    Metadata:
      rotate          : 90
      handler_name    : Core Media Video
    Side data:
      displaymatrix: rotation of -90.00 degrees
    Stream #0:1(und): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, 5.1(side), fltp, 256 kb/s (default)
    Stream #0:2(und): Data: none (mebx / 0x7862656D), 0 kb/s (default)
At least one output file must be specified
"""

LEGACY_ROTATE_TAG = """\
Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'old.mp4':
  Duration: 00:00:05.00, start: 0.000000, bitrate: 900 kb/s
  Stream #0:0(eng): Video: h264 (Baseline), yuv420p, 640x480, 800 kb/s, 30 fps, 30 tbr, 90k tbn
    Metadata:
      rotate          : 270
  Stream #0:1(eng): Audio: amr_nb (samr / 0x726D6173), 8000 Hz, mono, flt, 12 kb/s
"""

SONG_WITH_COVER = """\
[mp3 @ 0x1] Estimating duration from bitrate, this may be inaccurate
Input #0, mp3, from 'song.mp3':
  Metadata:
    title           : A song
  Duration: N/A, start: -0.011995, bitrate: N/A
  Stream #0:0: Audio: mp3 (mp3float), 22050 Hz, 3 channels, fltp, 64 kb/s
  Stream #0:1: Video: mjpeg (Baseline), yuvj420p(pc, bt470bg/unknown/unknown), 300x300, 90k tbr, \
90k tbn (attached pic)
"""


def test_parse_phone_clip_summary():
    info = parse_ffmpeg_info(OLD_PHONE_CLIP, "IMG_0001.MOV")
    assert info.format == "mov,mp4,m4a,3gp,3g2,mj2"
    assert info.duration_s == pytest.approx(62.5) and info.bitrate_kbps == 12000
    assert [s.kind for s in info.streams] == ["video", "audio", "data"]
    video = info.video
    assert video.codec == "hevc" and (video.width, video.height) == (1920, 1080)
    assert video.fps == 30.0 and video.avg_fps == pytest.approx(29.98)
    assert video.rotation == -90.0 and video.display_size == (1080, 1920)  # tag and matrix agree
    assert info.audio.sample_rate == 48000 and info.audio.channels == 6
    assert info.audio.channel_layout == "5.1(side)"


def test_parse_legacy_rotate_tag_and_k_suffix():
    info = parse_ffmpeg_info(LEGACY_ROTATE_TAG, "old.mp4")
    assert info.video.rotation == 90.0  # clockwise tag 270 == counter-clockwise 90
    assert info.video.display_size == (480, 640)
    assert info.audio.codec == "amr_nb" and info.audio.channels == 1 and info.audio.sample_rate == 8000


def test_parse_cover_art_is_not_a_video():
    info = parse_ffmpeg_info(SONG_WITH_COVER, "song.mp3")
    assert info.duration_s is None and info.start_s == pytest.approx(-0.011995)
    assert info.streams[1].kind == "video" and info.streams[1].attached_pic
    assert info.streams[1].fps == 90000.0
    assert info.video is None
    assert info.audio.channels == 3


def test_parse_without_input_summary():
    with pytest.raises(MediaError, match=r"x\.mp4: not a readable media file \(moov atom not found"):
        parse_ffmpeg_info("[in#0 @ 0x2] moov atom not found\n", "x.mp4")


def test_ffmpeg_version():
    out = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout
    version = ffmpeg_version()
    assert version and out.startswith(f"ffmpeg version {version} ")


def test_run_ffmpeg_error_names_file(tmp_path):
    with pytest.raises(MediaError, match=r"my clip: ffmpeg failed \(exit"):
        run_ffmpeg(["-i", str(tmp_path / "none.mp4"), "-f", "null", "-"], what="my clip")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_reported_as_such_not_as_the_inputs_fault(make_clip):
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    args = ["-y", "-i", str(make_clip()), "-f", "wav", "file:/dev/full"]
    with pytest.raises(OSError, match=r"no space left on device .* for my clip \(the input is fine") as info:
        run_ffmpeg(args, what="my clip")
    assert info.value.errno == errno.ENOSPC and not isinstance(info.value, MediaError)


def test_still_images_are_recognised(tmp_path):
    from PIL import Image

    for fmt, kind in [("PNG", "PNG"), ("JPEG", "JPEG"), ("GIF", "GIF"), ("BMP", "BMP"), ("WEBP", "WEBP")]:
        Image.new("RGB", (8, 8)).save(tmp_path / "still.mp4", format=fmt)
        assert still_image_kind(tmp_path / "still.mp4") == kind
    (tmp_path / "text.mp4").write_text("hello")
    assert still_image_kind(tmp_path / "text.mp4") is None and still_image_kind(tmp_path) is None
    (tmp_path / "notes.mp4").write_text("BMW dashcam clips, to be sorted\n")  # "BM" alone is no bitmap
    assert still_image_kind(tmp_path / "notes.mp4") is None


def test_wav_round_trip(tmp_path, ffmpeg):
    mono = (np.arange(1000) - 500).astype(np.int16)
    write_wav(tmp_path / "m.wav", mono, 16000)
    back, rate = read_wav(tmp_path / "m.wav")
    assert rate == 16000 and back.dtype == np.int16 and np.array_equal(back, mono)
    stereo = np.stack([mono, -mono], axis=1)
    write_wav(tmp_path / "s.wav", stereo, 44100)
    back, rate = read_wav(tmp_path / "s.wav")
    assert rate == 44100 and back.shape == (1000, 2) and np.array_equal(back, stereo)
    # ffmpeg agrees with the header we wrote.
    ffmpeg("-i", str(tmp_path / "s.wav"), "-c:a", "pcm_s16le", str(tmp_path / "copy.wav"))
    assert np.array_equal(read_wav(tmp_path / "copy.wav")[0], stereo)


def test_wav_errors(tmp_path):
    with pytest.raises(TypeError, match="int16"):
        write_wav(tmp_path / "f.wav", np.zeros(10, dtype=np.float32), 16000)
    (tmp_path / "bad.wav").write_bytes(b"RIFF1234notawave")
    with pytest.raises(MediaError, match=r"bad\.wav: not a PCM WAV file"):
        read_wav(tmp_path / "bad.wav")


# ---------------------------------------------------------------------------------- video writer

FPS = 25.0


def test_writer_makes_browser_ready_h264_aac(tmp_path, speech_wav):
    frames = colour_frames(13, 30, 40)
    out = tmp_path / "clip.mp4"
    with VideoWriter(out, fps=FPS, audio=speech_wav, audio_offset_s=1.0) as video:
        for frame in frames:
            video.write(frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp files left
    info = probe(out)
    assert info.video.codec == "h264" and info.audio.codec == "aac"
    assert (info.video.width, info.video.height, info.video.fps) == (40, 30, FPS)
    decoded = decode_video(out)
    assert len(decoded) == 13
    assert np.abs(decoded.astype(float) - frames).mean() < 4
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: the index comes first
    sound = decode_audio(out)
    assert abs(len(sound) / 16000 - 13 / FPS) < 0.05  # trimmed to the video
    # The offset skips the silent second: the tone is there from the start.
    assert np.sqrt(np.mean(sound[800:2400] ** 2)) > 0.2


def test_writer_pads_odd_sizes_and_checks_frames(tmp_path):
    frames = colour_frames(3, 17, 31)
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, crf=10) as video:
        for frame in frames:
            video.write(frame)
        with pytest.raises(ValueError, match="17x31|31x17"):
            video.write(frames[0][:, :30])
        with pytest.raises(ValueError, match="uint8"):
            video.write(frames[0].astype(np.float32))
    assert video.size == (32, 18) and probe(out).audio is None
    decoded = decode_video(out)
    assert decoded.shape == (3, 18, 32, 3)
    assert np.abs(decoded[:, :17, :31].astype(float) - frames).mean() < 4


def test_failing_ffmpeg_leaves_no_file(tmp_path):
    out = tmp_path / "bad.mp4"
    with pytest.raises(MediaError, match="bad.mp4.*ffmpeg failed(.|\n)*no_such_encoder"):
        with VideoWriter(out, codec="no_such_encoder") as video:
            for frame in colour_frames(40, 64, 64):
                video.write(frame)
    assert list(tmp_path.iterdir()) == []


def test_exception_mid_stream_kills_ffmpeg_and_leaves_no_file(tmp_path, speech_wav):
    out = tmp_path / "half.mp4"
    with pytest.raises(RuntimeError, match="renderer broke"):
        with VideoWriter(out, audio=speech_wav) as video:
            for frame in colour_frames(3, 16, 16):
                video.write(frame)
            raise RuntimeError("renderer broke")
    assert video._proc.poll() is not None
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_empty_videos_and_bad_audio(tmp_path, speech_wav):
    with pytest.raises(MediaError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4"):
            pass
    with pytest.raises(MediaError, match="missing.wav"):
        VideoWriter(tmp_path / "x.mp4", audio=tmp_path / "missing.wav")
    with pytest.raises(MediaError, match="past its end"):
        VideoWriter(tmp_path / "x.mp4", audio=speech_wav, audio_offset_s=5.0)
    assert list(tmp_path.iterdir()) == []


def test_lossless_videos_read_back_exactly(tmp_path, speech_wav):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 17, 31, 3), dtype=np.uint8)  # noise, odd sides: no padding
    out = tmp_path / "renders.mkv"
    with VideoWriter(out, lossless=True) as video:
        for frame in frames:
            video.write(frame)
    assert video.size == (31, 17) and probe(out).video.codec == "h264"
    back, total = read_video(out)
    assert total == 7 and back.flags.writeable
    np.testing.assert_array_equal(back, frames)
    first, total = read_video(out, limit=3)  # the first frames kept, all counted
    assert total == 7
    np.testing.assert_array_equal(first, frames[:3])
    with pytest.raises(ValueError, match="no audio"):
        VideoWriter(tmp_path / "x.mkv", lossless=True, audio=speech_wav)
    with pytest.raises(MediaError, match="missing.mkv: file not found"):
        read_video(tmp_path / "missing.mkv")
    with pytest.raises(MediaError, match="audio.wav: has no video stream"):
        read_video(speech_wav)
