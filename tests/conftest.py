"""Shared fixtures and builders: tiny synthetic media made with ffmpeg's lavfi sources (cached for the
session), the tiny generator and deltaplane sizes, and tiny subjects, priors and landmarks.

Clips are small (160x120, 2-4 s) so that making and ingesting one takes a fraction of a second.
Test modules import the builders with ``from conftest import ...``; no test module imports another.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from talk3d_core.camera import eg3d_camera
from talk3d_core.model.deltaplane import DeltaplaneConfig
from talk3d_core.model.eg3d import GeneratorConfig, TriPlaneGenerator
from talk3d_core.model.personalized import training_record
from talk3d_core.model.subject import FrameConditions, SubjectData
from talk3d_core.model.talking_head import Prior
from talk3d_core.util.media import ffmpeg_exe

#: The reference clips (../shared/data); tests that use them skip when it is absent.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: A generator far smaller than the CPU preset: 16^2 planes of 8 channels, 16^2 rays, 32 px images.
TINY = GeneratorConfig.cpu(
    z_dim=32, w_dim=32, plane_resolution=16, plane_channels=8, channel_base=512, channel_max=32,
    decoder_hidden=16, decoder_output_dim=8, neural_rendering_resolution=16, depth_resolution=8,
    depth_resolution_importance=8, image_resolution=32, sr_channels=(16, 8),
)  # fmt: skip
#: A deltaplane U-Net to match :data:`TINY`.
NET = DeltaplaneConfig.cpu(
    widths=(8, 16, 32), heads=2, head_dim=8, token_dim=16, attention_blocks=1, audio_frames=3
)
#: The camera geometry of the tiny subjects (VIVE3D's focal and pivot).
ORBIT = dict(focal=3.6, radius=2.7, pivot=(0.0, 0.05, 0.2))


def tiny_subject(n: int = 8) -> SubjectData:
    """A bright disc ('head') on a dark background, seen from slightly different yaws (32 px)."""
    yy, xx = np.mgrid[:32, :32]
    crops, faces = [], []
    for i in range(n):
        cx = 16 + (i - n / 2) * 0.5
        disc = ((xx - cx) ** 2 + (yy - 16) ** 2 < 81).astype(np.float32)
        crops.append(np.stack([disc * 200 + 25, disc * 150 + 25, disc * 100 + 25]).astype(np.uint8))
        faces.append(disc[None])
    yaw = np.linspace(-5, 5, n)
    cams = eg3d_camera(yaw, np.zeros(n), np.zeros(n), **ORBIT)
    return SubjectData(
        cameras=torch.tensor(cams, dtype=torch.float32),
        train=np.arange(n) < n - 2,
        crops=torch.tensor(np.stack(crops)),
        face=torch.tensor(np.stack(faces)).bool(),
    )


def talking_disc(n: int = 12) -> SubjectData:
    """A bright disc ('face') whose dark 'mouth' opens with the first audio feature of the frame."""
    yy, xx = np.mgrid[:32, :32]
    disc = (xx - 16) ** 2 + (yy - 16) ** 2 < 100
    opening = (np.sin(np.arange(n) * 1.3) + 1) / 2  # 0..1
    crops, mouths = [], []
    for o in opening:
        mouth = ((xx - 16) / 5.0) ** 2 + ((yy - 21) / (0.5 + 2.5 * o)) ** 2 < 1
        rgb = np.where(disc, 200, 20) * np.where(mouth, 0.2, 1.0)
        crops.append(np.stack([rgb, rgb * 0.8, rgb * 0.6]).astype(np.uint8))
        mouths.append(mouth[None])
    cams = eg3d_camera(np.zeros(n), np.zeros(n), np.zeros(n), **ORBIT)
    audio = np.zeros((n, 2, 4), np.float32)
    audio[:, :, 0] = opening[:, None] * 2 - 1
    conditions = FrameConditions(
        audio=audio,
        eye=np.zeros(n, np.float32),
        rotation=np.zeros((n, 3), np.float32),
        ldm=np.zeros((n, 6), np.float32),
    )
    return SubjectData(
        cameras=torch.tensor(cams, dtype=torch.float32),
        train=np.arange(n) < n - 3,
        conditions=conditions,
        crops=torch.tensor(np.stack(crops)),
        face=torch.tensor(np.repeat(disc[None, None], n, axis=0)),
        mouth=torch.tensor(np.stack(mouths)),
    )


def tiny_prior(seed: int = 0, background: str = "black") -> Prior:
    """An untrained :data:`TINY` generator with a random identity, as the prior stage would hand it on."""
    torch.manual_seed(seed)
    generator = TriPlaneGenerator(TINY).eval()
    with torch.no_grad():
        w = generator.mapping(torch.randn(1, TINY.z_dim), torch.zeros(1, 25))
        planes = generator.planes(w, noise_mode="const")
    return Prior(generator, planes, w, training_record("scratch", background, ORBIT))


def face_landmarks(opening: float = 0.0, *, n: int = 1) -> np.ndarray:
    """(n, 68, 2) landmarks: scattered points with a mouth whose inner lips are ``opening`` apart."""
    rng = np.random.default_rng(0)
    lm = np.repeat(rng.uniform(0, 100, size=(1, 68, 2)), n, axis=0)
    # Inner lips 60-67: corners 60, 64; upper 61-63 at y = 50, lower 67, 66, 65 straight below.
    xs = np.array([40.0, 45.0, 50.0, 55.0, 60.0])
    lm[:, 60] = (35.0, 50.0 + opening / 2)
    lm[:, 64] = (65.0, 50.0 + opening / 2)
    lm[:, [61, 62, 63], 0] = xs[1:4]
    lm[:, [61, 62, 63], 1] = 50.0
    lm[:, [67, 66, 65], 0] = xs[1:4]
    lm[:, [67, 66, 65], 1] = 50.0 + opening
    return lm


# Per container: video codec options, audio codec options (each a common pairing in the wild).
CONTAINER_CODECS = {
    "mp4": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ["-c:a", "aac"]),
    "mov": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ["-c:a", "aac"]),
    "mkv": (["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"], ["-c:a", "libopus"]),
    "webm": (
        ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-pix_fmt", "yuv420p"],
        ["-c:a", "libopus"],
    ),
    "avi": (["-c:v", "mpeg4", "-q:v", "3"], ["-c:a", "libmp3lame"]),
}
AUDIO_CODECS = {
    "wav": ["-c:a", "pcm_s16le"],
    "mp3": ["-c:a", "libmp3lame"],
    "m4a": ["-c:a", "aac"],
    "flac": ["-c:a", "flac"],
}


def _ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; a failure shows its message in the test output."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"


@pytest.fixture(scope="session")
def ffmpeg() -> Callable[..., None]:
    """``ffmpeg(*args)``: run ffmpeg (-y, errors only) and fail the test with its message if it fails."""
    return _ffmpeg


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def make_clip(media_dir) -> Callable[..., Path]:
    """Factory for test clips: ``make_clip(container="mp4", rate="25", duration=3.0, ...) -> Path``.

    Keyword options:
        container: mp4, mov, mkv, webm or avi (codecs from CONTAINER_CODECS).
        rate: video frame rate as an ffmpeg rational ("24", "30000/1001").
        duration: seconds of video and of audio.
        size: (width, height) in pixels.
        audio: False for a clip with no audio stream.
        tone: sine frequency in Hz of the (stereo) audio track.
        audio_delay: seconds by which the audio track starts after the video.
        ramp: frames show a flat grey of level ``60 * t`` (t = time in s, clipped to 255) instead of
            testsrc2, encoded losslessly, so a stored frame's brightness tells which instant it shows.
        vfr: drop 2 of every 5 source frames with their timestamps kept -> variable frame rate.
        rotation: display-matrix rotation in degrees, as a phone would store it.
        faststart: put the mp4 index (moov atom) before the media data.
    Identical requests return the same file.
    """
    cache: dict[tuple, Path] = {}

    def make(
        *,
        container: str = "mp4",
        rate: str = "25",
        duration: float = 3.0,
        size: tuple[int, int] = (160, 120),
        audio: bool = True,
        tone: float = 440.0,
        audio_delay: float = 0.0,
        ramp: bool = False,
        vfr: bool = False,
        rotation: float = 0.0,
        faststart: bool = False,
    ) -> Path:
        key = (container, rate, duration, size, audio, tone, audio_delay, ramp, vfr, rotation, faststart)
        if key in cache:
            return cache[key]
        path = media_dir / f"clip{len(cache):03d}.{container}"
        vcodec, acodec = CONTAINER_CODECS[container]
        w, h = size
        if ramp:
            level = "min(255,60*T)"
            source = f"color=c=black:s={w}x{h}:r={rate}:d={duration},format=gbrp,"
            source += f"geq=r='{level}':g='{level}':b='{level}'"
            vcodec = ["-c:v", "libx264rgb", "-preset", "ultrafast", "-qp", "0"]  # lossless RGB
        else:
            source = f"testsrc2=s={w}x{h}:r={rate}:d={duration}"
        args = ["-f", "lavfi", "-i", source]
        if audio:
            if audio_delay:
                args += ["-itsoffset", str(audio_delay)]
            args += ["-f", "lavfi", "-i", f"sine=f={tone}:r=44100:d={duration}"]
        vf = ["-vf", "select='not(eq(mod(n,5),2)+eq(mod(n,5),3))'", "-fps_mode", "vfr"] if vfr else []
        args += ["-map", "0:v", *vf, *vcodec]
        if audio:
            args += ["-map", "1:a", *acodec, "-ac", "2"]
        if faststart:
            args += ["-movflags", "+faststart"]
        _ffmpeg(*args, str(path))
        if rotation:
            rotated = path.with_name(f"{path.stem}_rot.{container}")
            _ffmpeg("-display_rotation:v:0", str(rotation), "-i", str(path), "-c", "copy", str(rotated))
            path.unlink()
            path = rotated
        cache[key] = path
        return path

    return make


@pytest.fixture(scope="session")
def make_audio(media_dir) -> Callable[..., Path]:
    """Factory for audio-only files: ``make_audio(fmt="wav", duration=3.0, tone=440.0, channels=2)``
    with ``fmt`` in wav, mp3, m4a, flac (44.1 kHz source)."""
    cache: dict[tuple, Path] = {}

    def make(*, fmt: str = "wav", duration: float = 3.0, tone: float = 440.0, channels: int = 2) -> Path:
        key = (fmt, duration, tone, channels)
        if key not in cache:
            path = media_dir / f"audio{len(cache):03d}.{fmt}"
            source = f"sine=f={tone}:r=44100:d={duration}"
            _ffmpeg("-f", "lavfi", "-i", source, *AUDIO_CODECS[fmt], "-ac", str(channels), str(path))
            cache[key] = path
        return cache[key]

    return make


@dataclass(frozen=True)
class TalkingFace:
    """A synthetic talking clip (the demo generator) ingested and tracked: shared by stage tests."""

    root: Path
    truth: dict
    frames: Path
    audio: Path
    track: object  # talk3d_core.landmarks.LandmarkTrack


@pytest.fixture(scope="session")
def talking_face(tmp_path_factory) -> TalkingFace:
    """6 s, 256 px demo clip (seed 0) -> frames, 16 kHz audio, mediapipe landmarks."""
    from talk3d_core.demo import make_demo_clip
    from talk3d_core.ingest import ingest_video
    from talk3d_core.landmarks import detect_landmarks

    root = tmp_path_factory.mktemp("talking_face")
    truth = make_demo_clip(root / "clip.mp4", duration_s=6.0, size=256, seed=0)
    ingest_video(
        root / "clip.mp4", root / "frames", root / "audio.wav", root / "meta.json", min_duration_s=0.5
    )
    track = detect_landmarks(root / "frames", what="synthetic talking face")
    return TalkingFace(root, truth, root / "frames", root / "audio.wav", track)


def write_arcface_manifest(folder: Path, dest: str) -> Path:
    """A weights manifest with one ArcFace entry (a placeholder URL and checksum) installed at ``dest``."""
    from talk3d_core.nets.arcface import ARCFACE_WEIGHTS

    manifest = folder / "manifest.yaml"
    manifest.write_text(
        "weights:\n"
        f"  - name: {ARCFACE_WEIGHTS}\n"
        "    url: https://example.org/arcface.pth\n"
        f'    sha256: "{"0" * 64}"\n'
        "    license: test entry\n"
        f"    dest: {dest}\n"
    )
    return manifest
