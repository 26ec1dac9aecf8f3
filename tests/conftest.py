"""Shared fixtures and builders: tiny synthetic media made with ffmpeg's lavfi sources (cached for the
session), the tiny generator and deltaplane sizes, and tiny subjects, priors and landmarks.

Clips are small (160x120, 2-4 s) so that making and ingesting one takes a fraction of a second.
Test modules import the builders with ``from conftest import ...``; no test module imports another.
"""

from __future__ import annotations

import math
import pickle
import shutil
import subprocess
import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from talk3d_core.camera import eg3d_camera
from talk3d_core.model.deltaplane import DeltaplaneConfig
from talk3d_core.model.eg3d import GeneratorConfig, TriPlaneGenerator
from talk3d_core.model.eg3d.layers import setup_filter
from talk3d_core.model.personalized import training_record
from talk3d_core.model.subject import FrameConditions, SubjectData
from talk3d_core.model.talking_head import Prior
from talk3d_core.util.media import ffmpeg_exe, probe, write_wav

#: The repository's root folder.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The reference clips (../shared/data); tests that use them skip when it is absent.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

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


@pytest.fixture(autouse=True)
def checkpoint_every_time(monkeypatch):
    """Tests checkpoint at every checkpoint_every step (no time throttle); the variable reaches the
    workflow's script processes too. test_prior checks the throttle itself."""
    monkeypatch.setenv("TALK3D_CHECKPOINT_INTERVAL_S", "0")


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
        opening=(6.0 * opening).astype(np.float32),  # px of a 256 crop
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


def brightness_landmarks(images, backend: str = "mediapipe", **_) -> np.ndarray:
    """A stand-in landmark detector (landmarks_of_images' signature) whose mouth opens with the
    brightness of the image's lower half, so ablation scores can be checked without a real one."""
    images = np.asarray(list(images), dtype=np.float64)
    opening = images[:, images.shape[1] // 2 :].mean(axis=(1, 2, 3)) / 8
    return np.concatenate([face_landmarks(o) for o in opening])


def moving_head():
    """A TalkingHead of :func:`tiny_prior` whose zero-initialised deltaplane layers are randomised,
    so that its settings (identity only, no audio, full) render different images; eval mode."""
    from talk3d_core.model.talking_head import TalkingHead

    torch.manual_seed(0)
    prior = tiny_prior()
    head = TalkingHead(prior.generator, prior.identity_planes, prior.w_id, NET, audio_dim=4, audio_window=2)
    with torch.no_grad():
        for p in head.net.parameters():
            if not p.any():
                p.normal_(0, 0.5)
    return head.eval()


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


# --------------------------------------------------------------------------------------------------
# NVlabs-layout EG3D pickles (torch_utils.persistence records; plain modules pickled by reference)


def persistence_hook(meta: dict[str, Any]) -> Any:
    """Pickled as torch_utils.persistence._reconstruct_persistent_obj; the loader under test must
    reconstruct records itself, so this is never called."""
    raise AssertionError("the stand-in persistence hook must never be called")


class EasyDictStandIn(dict):
    """Pickles as dnnlib.util.EasyDict."""


class PlainModuleStandIn:
    """A non-persistent torch.nn.Module subclass, pickled by reference with its __dict__ state."""


def stand_in_class(module: str, name: str) -> type:
    """A :class:`PlainModuleStandIn` subclass that pickles as the global ``module.name``."""
    cls = type(name, (PlainModuleStandIn,), {})
    PICKLED_NAMES[cls] = (module, name)
    return cls


PICKLED_NAMES: dict[Any, tuple[str, str]] = {
    persistence_hook: ("torch_utils.persistence", "_reconstruct_persistent_obj"),
    EasyDictStandIn: ("dnnlib.util", "EasyDict"),
}
OSGDecoderStandIn = stand_in_class("training.triplane", "OSGDecoder")
SequentialStandIn = stand_in_class("torch.nn.modules.container", "Sequential")
SoftplusStandIn = stand_in_class("torch.nn.modules.activation", "Softplus")
ImportanceRendererStandIn = stand_in_class("training.volumetric_rendering.renderer", "ImportanceRenderer")
MipRayMarcher2StandIn = stand_in_class("training.volumetric_rendering.ray_marcher", "MipRayMarcher2")
RaySamplerStandIn = stand_in_class("training.volumetric_rendering.ray_sampler", "RaySampler")


class NVlabsStylePickler(pickle._Pickler):  # the pure-Python pickler lets us spell globals
    """Writes the stand-ins of :data:`PICKLED_NAMES` under the NVlabs module and class names."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        spelled = PICKLED_NAMES.get(obj)
        if spelled is None:
            super().save_global(obj, name)
            return
        self.save(spelled[0])
        self.save(spelled[1])
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)

    # The dispatch table holds the base class's function for plain functions; route them here too.
    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = save_global


class PersistentStandIn:
    """Pickles exactly like a torch_utils.persistence-decorated module instance."""

    def __init__(self, class_name: str, state: dict[str, Any], source: str = "") -> None:
        self.meta = dict(
            type="class",
            version=6,
            module_src=source or f"class {class_name}:\n    pass\n",
            class_name=class_name,
            state=state,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (persistence_hook, (self.meta,))


def plain_stand_in(cls: type, state: dict[str, Any]) -> Any:
    """An instance of ``cls`` with ``state`` as its __dict__ (pickled by reference, state as dict)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


PLAIN_STAND_INS = {
    "OSGDecoder": OSGDecoderStandIn,
    "Sequential": SequentialStandIn,
    "Softplus": SoftplusStandIn,
    "ImportanceRenderer": ImportanceRendererStandIn,
}


def pickled_module(module: torch.nn.Module, **extra: Any) -> Any:
    """``module`` as NVlabs pickles it: its __dict__ (tensors, children) in a persistence record,
    or by reference for the classes EG3D does not decorate."""
    state = dict(
        training=False,
        _parameters=OrderedDict((k, v.detach().clone()) for k, v in module._parameters.items()),
        _buffers=OrderedDict((k, v.clone()) for k, v in module._buffers.items()),
        _non_persistent_buffers_set=set(module._non_persistent_buffers_set),
        _modules=OrderedDict((k, pickled_module(v)) for k, v in module._modules.items()),
        _forward_hooks=OrderedDict(),
    )
    state.update(extra)
    name = type(module).__name__
    if name in PLAIN_STAND_INS:
        return plain_stand_in(PLAIN_STAND_INS[name], state)
    return PersistentStandIn(name, state)


def nvlabs_kwargs(config: GeneratorConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(init kwargs, rendering kwargs) of NVlabs' TriPlaneGenerator for ``config``."""
    factor = config.image_resolution // config.sr_input_resolution
    rendering = dict(config.rendering_kwargs)
    del rendering["decoder_output_dim"]  # NVlabs fixes it in code (32); the tensors tell ours
    rendering |= {
        "image_resolution": config.image_resolution,
        "superresolution_module": "training.superresolution.SuperresolutionHybrid"
        + ("8XDC" if factor == 4 else "2X"),
        "gpc_reg_prob": 0.8,
        "density_reg": 0.25,
        "density_reg_p_dist": 0.004,
        "reg_type": "l1",
        "avg_camera_radius": 2.7,
        "avg_camera_pivot": [0, 0, 0.2],
    }
    init = EasyDictStandIn(
        z_dim=config.z_dim,
        c_dim=config.c_dim,
        w_dim=config.w_dim,
        img_resolution=config.image_resolution,
        img_channels=3,
        sr_num_fp16_res=4 if config.sr_fp16 else 0,
        mapping_kwargs=EasyDictStandIn(num_layers=config.mapping_layers),
        rendering_kwargs=rendering,
        sr_kwargs=EasyDictStandIn(
            channel_base=32768, channel_max=512, fused_modconv_default="inference_only"
        ),
        channel_base=config.channel_base,
        channel_max=config.channel_max,
        fused_modconv_default="inference_only",
        num_fp16_res=0,
        conv_clamp=config.conv_clamp,
    )
    return init, rendering


# NVlabs' generate_planes() as its renderer pickles it: the released code ("original") and the
# corrected projection of the fixed-triplane checkpoints ("fixed", third plane ZY).
_XY, _XZ = [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
NVLABS_PLANE_MATRICES = {
    "original": torch.tensor([_XY, _XZ, [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32),
    "fixed": torch.tensor([_XY, _XZ, [[0, 0, 1], [0, 1, 0], [1, 0, 0]]], dtype=torch.float32),
}


def write_snapshot(
    path: Path,
    generator: TriPlaneGenerator,
    *,
    init: dict[str, Any] | None = None,
    rendering: dict[str, Any] | None = None,
) -> Path:
    """Pickle ``generator`` as the G_ema of an NVlabs EG3D snapshot at ``path``."""
    default_init, default_rendering = nvlabs_kwargs(generator.config)
    init = default_init if init is None else init
    rendering = default_rendering if rendering is None else rendering
    g_ema = pickled_module(
        generator,
        _init_args=(),
        _init_kwargs=init,
        rendering_kwargs=rendering,
        neural_rendering_resolution=generator.config.neural_rendering_resolution,
    )
    records = g_ema.meta["state"]["_modules"]
    records["renderer"].__dict__["plane_axes"] = NVLABS_PLANE_MATRICES[generator.config.plane_axes].clone()
    if not rendering["superresolution_module"].endswith("8XDC"):
        records["superresolution"].meta["state"]["_buffers"]["resample_filter"] = setup_filter()
    snapshot = dict(training_set_kwargs=dict(path="ffhq.zip"), G=None, D=None, G_ema=g_ema, augment_pipe=None)
    with path.open("wb") as f:
        NVlabsStylePickler(f, protocol=4).dump(snapshot)
    return path


def random_generator(seed: int = 0) -> TriPlaneGenerator:
    """TINY with random weights and buffers (w_avg a mapped latent, random noise maps and strengths).

    Two layers are rescaled so that renders look like a trained generator's rather than a fresh one's:
    the planes' output layers x10 (fresh ones make near-constant planes, i.e. flat images) and the
    super-resolution's ToRGB layers x0.1 (so the final image stays near the raw one, inside [-1, 1]).
    """
    torch.manual_seed(seed)
    generator = TriPlaneGenerator(TINY).eval()
    with torch.no_grad():
        for name, tensor in generator.state_dict().items():
            if name.endswith("noise_const"):
                tensor.normal_()
            if name.endswith("noise_strength"):
                tensor.normal_(0, 0.01)
            if name.endswith("torgb.weight"):
                tensor.mul_(10.0 if name.startswith("backbone") else 0.1)
        w = generator.mapping(torch.randn(1, TINY.z_dim), torch.zeros(1, TINY.c_dim))
        generator.backbone.mapping.w_avg.copy_(w[0, 0])
    return generator


# --------------------------------------------------------------------------------------------------
# The generator of EG3D's FFHQ 512-128 checkpoints, as a name -> shape table


def shape_table_counts(table: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """(number of tensors, number of elements) of a name -> shape table."""
    return len(table), sum(math.prod(shape) for shape in table.values())


# NVlabs TriPlaneGenerator as trained for FFHQ 512 with 128^2 neural rendering
# (ffhqrebalanced512-128.pkl, ffhq512-128.pkl, ffhq-fixed-triplane512-128.pkl): state_dict names and
# shapes in state_dict order. Backbone: StyleGAN2 at 256^2 with 96 = 3 x 32 output channels,
# channel_base 32768, channel_max 512, 2 mapping layers, 25-number camera label; super-resolution:
# SuperresolutionHybrid8XDC (128 -> 256 -> 512, 256/128 channels); decoder: OSGDecoder 32 -> 64 -> 33.
# Buffers: resample_filter (4x4 FIR), noise_const, mapping.w_avg. 176 tensors, 31,493,160 elements
# (132 parameters with 30,662,136 elements; 44 buffers with 831,024 elements).
EG3D_FFHQ512_128_G_SHAPES: dict[str, tuple[int, ...]] = {
    "backbone.synthesis.b4.const": (512, 4, 4),
    "backbone.synthesis.b4.resample_filter": (4, 4),
    "backbone.synthesis.b4.conv1.weight": (512, 512, 3, 3),
    "backbone.synthesis.b4.conv1.noise_strength": (),
    "backbone.synthesis.b4.conv1.bias": (512,),
    "backbone.synthesis.b4.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b4.conv1.noise_const": (4, 4),
    "backbone.synthesis.b4.conv1.affine.weight": (512, 512),
    "backbone.synthesis.b4.conv1.affine.bias": (512,),
    "backbone.synthesis.b4.torgb.weight": (96, 512, 1, 1),
    "backbone.synthesis.b4.torgb.bias": (96,),
    "backbone.synthesis.b4.torgb.affine.weight": (512, 512),
    "backbone.synthesis.b4.torgb.affine.bias": (512,),
    "backbone.synthesis.b8.resample_filter": (4, 4),
    "backbone.synthesis.b8.conv0.weight": (512, 512, 3, 3),
    "backbone.synthesis.b8.conv0.noise_strength": (),
    "backbone.synthesis.b8.conv0.bias": (512,),
    "backbone.synthesis.b8.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b8.conv0.noise_const": (8, 8),
    "backbone.synthesis.b8.conv0.affine.weight": (512, 512),
    "backbone.synthesis.b8.conv0.affine.bias": (512,),
    "backbone.synthesis.b8.conv1.weight": (512, 512, 3, 3),
    "backbone.synthesis.b8.conv1.noise_strength": (),
    "backbone.synthesis.b8.conv1.bias": (512,),
    "backbone.synthesis.b8.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b8.conv1.noise_const": (8, 8),
    "backbone.synthesis.b8.conv1.affine.weight": (512, 512),
    "backbone.synthesis.b8.conv1.affine.bias": (512,),
    "backbone.synthesis.b8.torgb.weight": (96, 512, 1, 1),
    "backbone.synthesis.b8.torgb.bias": (96,),
    "backbone.synthesis.b8.torgb.affine.weight": (512, 512),
    "backbone.synthesis.b8.torgb.affine.bias": (512,),
    "backbone.synthesis.b16.resample_filter": (4, 4),
    "backbone.synthesis.b16.conv0.weight": (512, 512, 3, 3),
    "backbone.synthesis.b16.conv0.noise_strength": (),
    "backbone.synthesis.b16.conv0.bias": (512,),
    "backbone.synthesis.b16.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b16.conv0.noise_const": (16, 16),
    "backbone.synthesis.b16.conv0.affine.weight": (512, 512),
    "backbone.synthesis.b16.conv0.affine.bias": (512,),
    "backbone.synthesis.b16.conv1.weight": (512, 512, 3, 3),
    "backbone.synthesis.b16.conv1.noise_strength": (),
    "backbone.synthesis.b16.conv1.bias": (512,),
    "backbone.synthesis.b16.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b16.conv1.noise_const": (16, 16),
    "backbone.synthesis.b16.conv1.affine.weight": (512, 512),
    "backbone.synthesis.b16.conv1.affine.bias": (512,),
    "backbone.synthesis.b16.torgb.weight": (96, 512, 1, 1),
    "backbone.synthesis.b16.torgb.bias": (96,),
    "backbone.synthesis.b16.torgb.affine.weight": (512, 512),
    "backbone.synthesis.b16.torgb.affine.bias": (512,),
    "backbone.synthesis.b32.resample_filter": (4, 4),
    "backbone.synthesis.b32.conv0.weight": (512, 512, 3, 3),
    "backbone.synthesis.b32.conv0.noise_strength": (),
    "backbone.synthesis.b32.conv0.bias": (512,),
    "backbone.synthesis.b32.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b32.conv0.noise_const": (32, 32),
    "backbone.synthesis.b32.conv0.affine.weight": (512, 512),
    "backbone.synthesis.b32.conv0.affine.bias": (512,),
    "backbone.synthesis.b32.conv1.weight": (512, 512, 3, 3),
    "backbone.synthesis.b32.conv1.noise_strength": (),
    "backbone.synthesis.b32.conv1.bias": (512,),
    "backbone.synthesis.b32.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b32.conv1.noise_const": (32, 32),
    "backbone.synthesis.b32.conv1.affine.weight": (512, 512),
    "backbone.synthesis.b32.conv1.affine.bias": (512,),
    "backbone.synthesis.b32.torgb.weight": (96, 512, 1, 1),
    "backbone.synthesis.b32.torgb.bias": (96,),
    "backbone.synthesis.b32.torgb.affine.weight": (512, 512),
    "backbone.synthesis.b32.torgb.affine.bias": (512,),
    "backbone.synthesis.b64.resample_filter": (4, 4),
    "backbone.synthesis.b64.conv0.weight": (512, 512, 3, 3),
    "backbone.synthesis.b64.conv0.noise_strength": (),
    "backbone.synthesis.b64.conv0.bias": (512,),
    "backbone.synthesis.b64.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b64.conv0.noise_const": (64, 64),
    "backbone.synthesis.b64.conv0.affine.weight": (512, 512),
    "backbone.synthesis.b64.conv0.affine.bias": (512,),
    "backbone.synthesis.b64.conv1.weight": (512, 512, 3, 3),
    "backbone.synthesis.b64.conv1.noise_strength": (),
    "backbone.synthesis.b64.conv1.bias": (512,),
    "backbone.synthesis.b64.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b64.conv1.noise_const": (64, 64),
    "backbone.synthesis.b64.conv1.affine.weight": (512, 512),
    "backbone.synthesis.b64.conv1.affine.bias": (512,),
    "backbone.synthesis.b64.torgb.weight": (96, 512, 1, 1),
    "backbone.synthesis.b64.torgb.bias": (96,),
    "backbone.synthesis.b64.torgb.affine.weight": (512, 512),
    "backbone.synthesis.b64.torgb.affine.bias": (512,),
    "backbone.synthesis.b128.resample_filter": (4, 4),
    "backbone.synthesis.b128.conv0.weight": (256, 512, 3, 3),
    "backbone.synthesis.b128.conv0.noise_strength": (),
    "backbone.synthesis.b128.conv0.bias": (256,),
    "backbone.synthesis.b128.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b128.conv0.noise_const": (128, 128),
    "backbone.synthesis.b128.conv0.affine.weight": (512, 512),
    "backbone.synthesis.b128.conv0.affine.bias": (512,),
    "backbone.synthesis.b128.conv1.weight": (256, 256, 3, 3),
    "backbone.synthesis.b128.conv1.noise_strength": (),
    "backbone.synthesis.b128.conv1.bias": (256,),
    "backbone.synthesis.b128.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b128.conv1.noise_const": (128, 128),
    "backbone.synthesis.b128.conv1.affine.weight": (256, 512),
    "backbone.synthesis.b128.conv1.affine.bias": (256,),
    "backbone.synthesis.b128.torgb.weight": (96, 256, 1, 1),
    "backbone.synthesis.b128.torgb.bias": (96,),
    "backbone.synthesis.b128.torgb.affine.weight": (256, 512),
    "backbone.synthesis.b128.torgb.affine.bias": (256,),
    "backbone.synthesis.b256.resample_filter": (4, 4),
    "backbone.synthesis.b256.conv0.weight": (128, 256, 3, 3),
    "backbone.synthesis.b256.conv0.noise_strength": (),
    "backbone.synthesis.b256.conv0.bias": (128,),
    "backbone.synthesis.b256.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b256.conv0.noise_const": (256, 256),
    "backbone.synthesis.b256.conv0.affine.weight": (256, 512),
    "backbone.synthesis.b256.conv0.affine.bias": (256,),
    "backbone.synthesis.b256.conv1.weight": (128, 128, 3, 3),
    "backbone.synthesis.b256.conv1.noise_strength": (),
    "backbone.synthesis.b256.conv1.bias": (128,),
    "backbone.synthesis.b256.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b256.conv1.noise_const": (256, 256),
    "backbone.synthesis.b256.conv1.affine.weight": (128, 512),
    "backbone.synthesis.b256.conv1.affine.bias": (128,),
    "backbone.synthesis.b256.torgb.weight": (96, 128, 1, 1),
    "backbone.synthesis.b256.torgb.bias": (96,),
    "backbone.synthesis.b256.torgb.affine.weight": (128, 512),
    "backbone.synthesis.b256.torgb.affine.bias": (128,),
    "backbone.mapping.w_avg": (512,),
    "backbone.mapping.embed.weight": (512, 25),
    "backbone.mapping.embed.bias": (512,),
    "backbone.mapping.fc0.weight": (512, 1024),
    "backbone.mapping.fc0.bias": (512,),
    "backbone.mapping.fc1.weight": (512, 512),
    "backbone.mapping.fc1.bias": (512,),
    "superresolution.block0.resample_filter": (4, 4),
    "superresolution.block0.conv0.weight": (256, 32, 3, 3),
    "superresolution.block0.conv0.noise_strength": (),
    "superresolution.block0.conv0.bias": (256,),
    "superresolution.block0.conv0.resample_filter": (4, 4),
    "superresolution.block0.conv0.noise_const": (256, 256),
    "superresolution.block0.conv0.affine.weight": (32, 512),
    "superresolution.block0.conv0.affine.bias": (32,),
    "superresolution.block0.conv1.weight": (256, 256, 3, 3),
    "superresolution.block0.conv1.noise_strength": (),
    "superresolution.block0.conv1.bias": (256,),
    "superresolution.block0.conv1.resample_filter": (4, 4),
    "superresolution.block0.conv1.noise_const": (256, 256),
    "superresolution.block0.conv1.affine.weight": (256, 512),
    "superresolution.block0.conv1.affine.bias": (256,),
    "superresolution.block0.torgb.weight": (3, 256, 1, 1),
    "superresolution.block0.torgb.bias": (3,),
    "superresolution.block0.torgb.affine.weight": (256, 512),
    "superresolution.block0.torgb.affine.bias": (256,),
    "superresolution.block1.resample_filter": (4, 4),
    "superresolution.block1.conv0.weight": (128, 256, 3, 3),
    "superresolution.block1.conv0.noise_strength": (),
    "superresolution.block1.conv0.bias": (128,),
    "superresolution.block1.conv0.resample_filter": (4, 4),
    "superresolution.block1.conv0.noise_const": (512, 512),
    "superresolution.block1.conv0.affine.weight": (256, 512),
    "superresolution.block1.conv0.affine.bias": (256,),
    "superresolution.block1.conv1.weight": (128, 128, 3, 3),
    "superresolution.block1.conv1.noise_strength": (),
    "superresolution.block1.conv1.bias": (128,),
    "superresolution.block1.conv1.resample_filter": (4, 4),
    "superresolution.block1.conv1.noise_const": (512, 512),
    "superresolution.block1.conv1.affine.weight": (128, 512),
    "superresolution.block1.conv1.affine.bias": (128,),
    "superresolution.block1.torgb.weight": (3, 128, 1, 1),
    "superresolution.block1.torgb.bias": (3,),
    "superresolution.block1.torgb.affine.weight": (128, 512),
    "superresolution.block1.torgb.affine.bias": (128,),
    "decoder.net.0.weight": (64, 32),
    "decoder.net.0.bias": (64,),
    "decoder.net.2.weight": (33, 64),
    "decoder.net.2.bias": (33,),
}


# --------------------------------------------------------------------------------------------------
# Decoding videos and audio tracks; a short speech-like WAV


def decode_video(path: Path) -> np.ndarray:
    """Every frame of a video as uint8 RGB (N, H, W, 3)."""
    info = probe(path).video
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(path)]
    raw = subprocess.run([*args, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True)
    return np.frombuffer(raw.stdout, np.uint8).reshape(-1, info.height, info.width, 3)


def decode_audio(path: Path, rate: int = 16000) -> np.ndarray:
    """The audio track as float mono samples at ``rate`` Hz."""
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a"]
    raw = subprocess.run(
        [*args, "-f", "s16le", "-ac", "1", "-ar", str(rate), "-"], capture_output=True, check=True
    )
    return np.frombuffer(raw.stdout, "<i2").astype(np.float32) / 32768


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """3 s at 16 kHz: 1 s of silence, then a 440 Hz tone (so an audio offset shows)."""
    t = np.arange(3 * 16000) / 16000
    samples = np.where(t >= 1.0, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0)
    path = tmp_path_factory.mktemp("audio") / "audio.wav"
    write_wav(path, (samples * 32767).astype(np.int16), 16000)
    return path


def colour_frames(n: int, height: int, width: int) -> np.ndarray:
    """Flat frames of distinct colours with a brightness ramp, so decoding can be checked."""
    colours = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200), (128, 128, 128), (230, 210, 50)])
    ramp = np.linspace(0.6, 1.0, width)[None, :, None]
    return np.stack([(colours[i % 5] * ramp).astype(np.uint8).repeat(height, 0) for i in range(n)])


def make_workflow_project(root: Path) -> Path:
    """A copy of the workflow, library and config in ``root``, with one subject ``clip`` (a 3.2 s
    synthetic talking face at 256 px) and a driving audio ``voice.mp3`` (1.5 s)."""
    from talk3d_core.demo import make_demo_clip

    for name in ["workflow", "talk3d_core", "config"]:
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "resources/weights").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "resources/weights/manifest.yaml", root / "resources/weights/manifest.yaml")
    # A short synthetic talking face (the demo generator) so every preprocessing stage has a face.
    make_demo_clip(root / "clip.mp4", duration_s=3.2, size=256, seed=3)
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi",
         "-i", "sine=frequency=220:duration=1.5", "-c:a", "libmp3lame", str(root / "voice.mp3")],
        check=True,
    )  # fmt: skip
    (root / "config/subjects.tsv").write_text(
        "name\tvideo\taudio\tdrive\tnotes\nclip\tclip.mp4\t\tvoice.mp3\tsynthetic face\n"
    )
    return root
