"""Talk3D's audio-guided attention U-Net: identity tri-plane + conditioning tokens -> deltaplane.

The network F predicts a per-frame residual tri-plane dP_n = F(P_ID, t_n); rendering P_ID + dP_n
gives frame n. Shapes: planes (B, 3, C, R, R) in :data:`~talk3d_core.model.eg3d.config.PLANE_AXES` order;
tokens (B, T, token_dim). Two networks share this module; :class:`DeltaplaneConfig` switches between
them field by field.

Common to both:

- Split convolutions: the three planes have their own weights, run as one grouped conv (groups=3) on
  the channel-stacked planes (B, 3 * C, R, R), plane-major; BatchNorm over the stacked channels is
  therefore per plane. Resampling uses the [1, 3, 3, 1] binomial filter.
- Roll-out mixing (Mimic3D / Rodin "3D-aware" convolution): each plane also sees the other two, each
  averaged over the world axes it has and the plane lacks and laid onto the plane's grid
  (:func:`roll_out`), so a split conv reads 3 x its width.
- Bottleneck (R / 2**(levels - 1)) of ``attention_blocks`` transformer blocks: per-plane
  self-attention, cross-attention from all cells of the three planes to the tokens (or a
  token-conditioned affine with ``conditioning="affine"``), a GEGLU feed-forward; pre-LayerNorm and
  residual throughout. The bottleneck is the only place the tokens enter unless
  ``decoder_conditioning`` conditions the decoder levels too.
- The deltaplane is exactly zero at step 0 (a zero-initialised last conv), so training starts from
  rendering P_ID itself.
- Tokens (:class:`ConditioningTokens`): audio (RAD-NeRF's AudioNet + attention over neighbouring
  frames), eye blink, head rotation, 6-number landmark token, a learned null token.

The paper network (:meth:`DeltaplaneConfig.paper`, as the official ``training/networks_diffusers.py``
and the trainer's token encoders):

- ``unet_layout="talk3d"``: no input conv; each down stage is roll-out, conv3x3 + BN + LeakyReLU, conv3x3
  + BN + LeakyReLU at its input resolution, then blur-downsampling; each up stage the same with 2x
  upsampling at the end, the skips added after it. The last up stage is the output head (its second
  conv zero-initialised, then BN, LeakyReLU, upsampling), so the deltaplane has the planes' own
  channels and no final 1x1 conv. LeakyReLU slope 0.01 (``lrelu_slope``). The roll-out is this
  module's, by world axes (the official ``aware3d`` pairs the planes' grid axes by plane index).
- Bottleneck (``bottleneck_input="groupnorm_linear"``, ``plane_weights="per_plane"``,
  ``position_encoding="sinusoidal_3d"``): per-plane GroupNorm(32) and Linear, then the blocks with
  per-plane LayerNorms, self-attention and GEGLU weights (the cross-attention is one module over all
  cells; the tokens enter it unnormalised), an outer residual around the whole transformer. A 3D
  sinusoidal table (:func:`talk3d_position_table`) is added before every block; it starts as that
  fixed table and is trained with the rest, as the official trainer does on a fresh run.
- Tokens (``token_encoders="nerf"``): eye, rotation and landmark values go raw (AU45, degrees in pitch,
  yaw, roll order, [-1, 1]) through NeRF encodings [x, sin(2^k x), cos(2^k x)] and 3-layer ReLU MLPs;
  the audio attention has RAD-NeRF's Linear(S, S) before its softmax (``audio_attention="radnerf"``);
  uniform eye noise of +-``eye_noise`` in training; the null token starts from a unit normal.

The CPU network (:meth:`DeltaplaneConfig.cpu`, ``unet_layout="levels"``): an input conv, then per
resolution level a roll-out conv and a conv (strided conv down, 2x upsampling + blur + conv up, additive
skips), a zero-initialised output conv; LeakyReLU(0.2). Its bottleneck: a sinusoidal encoding of each
cell's world coordinate (its plane's two axes, the third 0) projected and added once, blocks whose
weights are shared by the three planes (the split convs already make the features plane-specific).
Tokens: 2-layer MLPs over scaled sinusoidal encodings (rotation in radians), Gaussian eye noise. With
``decoder_conditioning`` every decoder level also conditions its cells on the tokens (cross-attention,
or the affine of Table 8), as diffusion U-Nets condition every resolution: at the bottleneck alone the
mouth, a cell or two of R / 8, is learnt far more slowly
(docs/decisions.md#decoder-conditioning-of-the-deltaplane-u-net).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talk3d_core.model.eg3d.config import PLANE_AXES
from talk3d_core.model.eg3d.layers import setup_filter, upfirdn2d, upsample2d

TOKEN_NAMES = ("audio", "eye", "rotation", "ldm", "null")
#: Tokens beyond the official five, enabled by listing them in ``DeltaplaneConfig.tokens``.
EXTRA_TOKENS = ("opening",)
CONDITIONING_MODES = ("attention", "affine")
UNET_LAYOUTS = ("levels", "talk3d")
PLANE_WEIGHTS = ("shared", "per_plane")
BOTTLENECK_INPUTS = ("direct", "groupnorm_linear")
POSITION_ENCODINGS = ("projected", "sinusoidal_3d")
AUDIO_ATTENTIONS = ("convs", "radnerf")
TOKEN_ENCODERS = ("fourier", "nerf")
EYE_NOISE_DISTRIBUTIONS = ("gaussian", "uniform")
AUDIO_LRELU_SLOPE = 0.02  # RAD-NeRF's audio networks
EYE_RANGE = (0.0, 2.0)  # AU45 scale: 0 open, ~2 closed
GROUPNORM_GROUPS = 32  # per plane, the official bottleneck's GroupNorm(32)

# What DeltaplaneConfig.paper() sets beyond the sizes: the official network's behaviour.
PAPER_BEHAVIOUR: dict[str, Any] = {
    "unet_layout": "talk3d",
    "lrelu_slope": 0.01,
    "plane_weights": "per_plane",
    "bottleneck_input": "groupnorm_linear",
    "position_encoding": "sinusoidal_3d",
    "audio_attention": "radnerf",
    "token_encoders": "nerf",
    "eye_noise_distribution": "uniform",
    "null_std": 1.0,
}


@dataclass(frozen=True)
class DeltaplaneConfig:
    """Sizes and options of :class:`DeltaplaneNet`.

    The size defaults are the paper's (official code); the behaviour switches from ``unet_layout`` on
    default to the CPU network's choices, which every network had before they existed, so a
    checkpoint's config without them (:meth:`from_dict`) rebuilds the network it was trained as.
    :meth:`paper` sets them to the official behaviour (:data:`PAPER_BEHAVIOUR`).

    ``widths``: encoder widths, ``widths[0]`` at the plane resolution R, each next level at half the
    resolution (4 widths -> an R / 8 bottleneck). ``attention_blocks`` (N_A) bottleneck blocks of
    ``heads`` x ``head_dim`` attention and a GEGLU feed-forward of ``ff_mult`` x width hidden units.
    Tokens are ``token_dim`` wide: audio attends over ``audio_frames`` neighbouring frames; eye,
    rotation and landmark values go through sinusoidal encodings of ``*_frequencies`` octaves;
    ``eye_noise`` is the size of the noise added to the eye value in training mode (the std of
    Gaussian noise, the half-width of uniform noise: ``eye_noise_distribution``). ``tokens``: the
    enabled tokens (paper Table 7 drops some), the official five and :data:`EXTRA_TOKENS`: "opening"
    (:class:`OpeningToken`, whose predictor reads the ``opening_frames`` central frames of the audio
    span); ``conditioning``: "attention" (cross-attention to the
    tokens) or "affine" (per-channel scale and shift from the concatenated tokens, Table 8).
    ``decoder_conditioning``: the decoder levels condition on the tokens too (the same way), not only
    the bottleneck; the paper's network (False) conditions the bottleneck alone.

    Behaviour (CPU value first, then the official one):

    - ``unet_layout``: "levels" (input conv, roll-out conv + conv per level, strided/upsampling convs,
      zero-initialised output conv) or "talk3d" (the official down/up stages, whose last stage is the
      output head; needs ``widths[0]`` = the planes' channels).
    - ``lrelu_slope``: LeakyReLU slope of the U-Net convs, the affine conditioning and the "fourier"
      token MLPs: 0.2 or 0.01 (PyTorch's default, the official U-Net's).
    - ``plane_weights``: the bottleneck blocks' LayerNorms, self-attention and feed-forward: one set
      "shared" by the three planes or one "per_plane" (the tokens then enter the cross-attention
      unnormalised, as in the official block).
    - ``bottleneck_input``: "direct" (the cells enter the blocks as they are) or "groupnorm_linear"
      (per-plane GroupNorm(32) + Linear first, and a residual around the whole transformer).
    - ``position_encoding``: "projected" (a NeRF encoding of each cell's world coordinate through a
      learned Linear, added once) or "sinusoidal_3d" (:func:`talk3d_position_table`, trained from
      there, added before every block).
    - ``audio_attention``: "convs" (the frame logits come straight from the 1D convs) or "radnerf"
      (a LeakyReLU after the last conv and a Linear(S, S) before the softmax, RAD-NeRF's AudioAttNet).
    - ``token_encoders``: "fourier" (scaled encodings, rotation in radians, 2-layer LeakyReLU MLPs) or
      "nerf" (unscaled encodings of the raw values, rotation in degrees as pitch, yaw, roll, 3-layer
      ReLU MLPs).
    - ``eye_noise_distribution``: "gaussian" or "uniform".
    - ``null_std``: the null token starts as ``null_std`` x a standard normal: 0.02 or 1.
    """

    widths: tuple[int, ...] = (32, 64, 128, 256)
    attention_blocks: int = 2
    heads: int = 4
    head_dim: int = 64
    ff_mult: int = 4
    token_dim: int = 64
    audio_frames: int = 8
    eye_frequencies: int = 16
    rotation_frequencies: int = 10
    ldm_frequencies: int = 6
    eye_noise: float = 0.05
    opening_frames: int = 2
    tokens: tuple[str, ...] = TOKEN_NAMES
    conditioning: str = "attention"
    decoder_conditioning: bool = False
    unet_layout: str = "levels"
    lrelu_slope: float = 0.2
    plane_weights: str = "shared"
    bottleneck_input: str = "direct"
    position_encoding: str = "projected"
    audio_attention: str = "convs"
    token_encoders: str = "fourier"
    eye_noise_distribution: str = "gaussian"
    null_std: float = 0.02

    def __post_init__(self) -> None:
        # YAML and JSON give lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "tokens", tuple(self.tokens))
        problems = []
        if len(self.widths) < 2:
            problems.append(f"widths={self.widths} needs at least 2 levels (one downsampling)")
        if any(not isinstance(w, int) or w < 1 for w in self.widths):
            problems.append(f"widths={self.widths} must be positive integers")
        for name in (
            "attention_blocks",
            "heads",
            "head_dim",
            "ff_mult",
            "token_dim",
            "audio_frames",
            "eye_frequencies",
            "rotation_frequencies",
            "ldm_frequencies",
            "opening_frames",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r} must be an integer >= 1")
        if not isinstance(self.decoder_conditioning, bool):
            problems.append(f"decoder_conditioning={self.decoder_conditioning!r} must be true or false")
        for name in ("eye_noise", "lrelu_slope", "null_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                problems.append(f"{name}={value!r} must be a number >= 0")
        if not self.tokens:
            problems.append(f"tokens is empty: enable at least one of {TOKEN_NAMES}")
        unknown = [t for t in self.tokens if t not in TOKEN_NAMES + EXTRA_TOKENS]
        if unknown:
            problems.append(f"unknown tokens {unknown}: choose from {TOKEN_NAMES + EXTRA_TOKENS}")
        if "opening" in self.tokens and "audio" not in self.tokens:
            problems.append("the opening token is predicted from the audio: enable the audio token too")
        if "opening" in self.tokens and self.opening_frames > self.audio_frames:
            problems.append(
                f"opening_frames={self.opening_frames} must be <= audio_frames={self.audio_frames}"
            )
        duplicated = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
        if duplicated:
            problems.append(f"tokens {duplicated} are listed more than once")
        for name, choices in (
            ("conditioning", CONDITIONING_MODES),
            ("unet_layout", UNET_LAYOUTS),
            ("plane_weights", PLANE_WEIGHTS),
            ("bottleneck_input", BOTTLENECK_INPUTS),
            ("position_encoding", POSITION_ENCODINGS),
            ("audio_attention", AUDIO_ATTENTIONS),
            ("token_encoders", TOKEN_ENCODERS),
            ("eye_noise_distribution", EYE_NOISE_DISTRIBUTIONS),
        ):
            if getattr(self, name) not in choices:
                problems.append(f"{name}={getattr(self, name)!r} must be one of {choices}")
        if self.bottleneck_input == "groupnorm_linear" and self.widths and self.widths[-1] % GROUPNORM_GROUPS:
            problems.append(
                f"bottleneck_input='groupnorm_linear' needs widths[-1]={self.widths[-1]} divisible by"
                f" {GROUPNORM_GROUPS} (GroupNorm({GROUPNORM_GROUPS}) per plane)"
            )
        if problems:
            raise ValueError("invalid DeltaplaneConfig: " + "; ".join(problems))

    @property
    def levels(self) -> int:
        """Number of resolution levels (the bottleneck is at R / 2**(levels - 1))."""
        return len(self.widths)

    @classmethod
    def paper(cls, **overrides: Any) -> DeltaplaneConfig:
        """The official Talk3D network: widths 32 -> 256, 2 blocks of 4 x 64 heads, 5 tokens of 64, and
        the official behaviour (:data:`PAPER_BEHAVIOUR`)."""
        return dataclasses.replace(cls(), **{**PAPER_BEHAVIOUR, **overrides})

    @classmethod
    def cpu(cls, **overrides: Any) -> DeltaplaneConfig:
        """A small network for CPU runs: widths 16 -> 128 (8^2 bottleneck for 64^2 planes), 2 x 32 heads,
        tokens conditioning every decoder level as well (what lets a CPU budget learn the mouth)."""
        base = cls(
            widths=(16, 32, 64, 128),
            attention_blocks=2,
            heads=2,
            head_dim=32,
            token_dim=64,
            decoder_conditioning=True,
        )
        return dataclasses.replace(base, **overrides)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DeltaplaneConfig:
        """Config from a mapping (a checkpoint's, YAML's): unknown keys are an error, missing ones default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"DeltaplaneConfig: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**dict(values))


# ---------------------------------------------------------------------------------------------------
# Encodings


def sinusoidal_encoding(x: Tensor, frequencies: int, scale: float) -> Tensor:
    """NeRF-style encoding: x (..., K) -> (..., K * (1 + 2 * frequencies)).

    [x, sin(scale * 2^k * x), cos(scale * 2^k * x)] for k = 0 .. frequencies - 1 (sines of all K
    values for one octave after another, then the cosines; NeRF interleaves them per octave, the same
    features in another order).
    """
    bands = scale * 2.0 ** torch.arange(frequencies, dtype=x.dtype, device=x.device)
    angles = (x[..., None, :] * bands[:, None]).flatten(-2)  # (..., F * K)
    return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


def plane_cell_coordinates(resolution: int, plane_axes: Sequence[tuple[int, int]]) -> Tensor:
    """World coordinates of every cell centre of three ``resolution``^2 planes: (3, resolution^2, 3).

    Cell (h, w) of a plane with axes (u, v) sits at u = (w + 0.5) / R * 2 - 1, v = (h + 0.5) / R * 2 - 1
    (grid_sample's align_corners=False convention, in the planes' [-1, 1] box) and 0 on the third axis.
    Cells are flattened row-major (index h * R + w), as ``x.flatten(-2)`` does.
    """
    centres = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    v, u = torch.meshgrid(centres, centres, indexing="ij")  # rows (height) carry v, columns u
    coords = torch.zeros(len(plane_axes), resolution, resolution, 3)
    for p, (axis_u, axis_v) in enumerate(plane_axes):
        coords[p, :, :, axis_u] = u
        coords[p, :, :, axis_v] = v
    return coords.reshape(len(plane_axes), resolution * resolution, 3)


# The official table's grid dimensions along each plane's (rows, columns); the third sits at the centre.
TALK3D_PLANE_GRID_DIMS = ((0, 1), (1, 2), (0, 2))


def talk3d_position_table(resolution: int, dim: int) -> Tensor:
    """The official bottleneck positional encoding: (3, resolution^2, dim), cells row-major.

    The planes are slices through a resolution^3 grid of 3D sinusoidal encodings (the
    ``positional-encodings`` 6.0.1 package's PositionalEncoding3D): each grid dimension gets
    c = 2 * ceil(dim / 6) channels, interleaved [sin(i f_j), cos(i f_j)] of its integer index i at
    frequencies f_j = 10000^(-2j / c); the three are concatenated and cut to ``dim`` channels. Plane p
    takes grid dimensions :data:`TALK3D_PLANE_GRID_DIMS` [p] along its rows and columns and the mean
    of indices R/2 - 1 and R/2 on the third. This follows the planes' order, not their world axes
    (the official code's choice).
    """
    per_dim = 2 * math.ceil(dim / 6)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, per_dim, 2).float() / per_dim))
    angles = torch.arange(resolution, dtype=torch.float32)[:, None] * inv_freq  # (R, c / 2)
    axis = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (R, c)
    centre = axis[[i for i in (resolution // 2 - 1, resolution // 2) if 0 <= i < resolution]].mean(0)
    r = resolution
    planes = []
    for rows, columns in TALK3D_PLANE_GRID_DIMS:
        parts = []
        for grid_dim in range(3):
            if grid_dim == rows:
                parts.append(axis[:, None].expand(r, r, per_dim))
            elif grid_dim == columns:
                parts.append(axis[None, :].expand(r, r, per_dim))
            else:
                parts.append(centre.expand(r, r, per_dim))
        planes.append(torch.cat(parts, dim=-1)[..., :dim].reshape(r * r, dim))
    return torch.stack(planes)


# ---------------------------------------------------------------------------------------------------
# Roll-out mixing between planes


def project_plane(features: Tensor, source_axes: tuple[int, int], target_axes: tuple[int, int]) -> Tensor:
    """Lay one plane's features onto another plane's grid, through the world axes they share.

    features: (..., H, W) on a plane whose world axes are ``source_axes`` = (u -> width, v -> height).
    The source is averaged over each of its axes that the target plane lacks, and its remaining
    axes are moved to the dimensions where the target has them. Returns (..., H or 1, W or 1): size
    1 along a target axis the source lacks, ready to broadcast. Two planes of a tri-plane always
    share at least one axis; with the "original" axes XZ and ZX share both and the result is the
    transposed plane.
    """
    source_u, source_v = source_axes
    x = features
    if source_u not in target_axes:
        x = x.mean(dim=-1, keepdim=True)
    if source_v not in target_axes:
        x = x.mean(dim=-2, keepdim=True)
    target_u, target_v = target_axes
    if source_u == target_v or source_v == target_u:
        x = x.transpose(-1, -2)
    return x


def roll_out(planes: Tensor, plane_axes: Sequence[tuple[int, int]]) -> Tensor:
    """Each plane concatenated with the other two projected onto it: (B, 3, C, H, W) -> (B, 3, 3C, H, W).

    Plane i's channels are [own, from j, from k] with j < k the other two planes (see
    :func:`project_plane`).
    """
    rows = []
    for i, target_axes in enumerate(plane_axes):
        parts = [planes[:, i]]
        for j, source_axes in enumerate(plane_axes):
            if j != i:
                parts.append(project_plane(planes[:, j], source_axes, target_axes).expand_as(planes[:, i]))
        rows.append(torch.cat(parts, dim=1))
    return torch.stack(rows, dim=1)


# ---------------------------------------------------------------------------------------------------
# Split (per-plane) convolutions


def blur_downsample2d(x: Tensor, f: Tensor) -> Tensor:
    """2x downsampling with the FIR filter ``f`` (4 x 4): blur, keep every other sample.

    (B, C, H, W) -> (B, C, H / 2, W / 2); padded by 1 on each side, as StyleGAN2's downsample2d.
    """
    return upfirdn2d(x, f, pad=(1, 1, 1, 1))[..., ::2, ::2]


class PlaneConv(nn.Module):
    """3x3 conv with separate weights per plane, then BatchNorm + LeakyReLU(``slope``).

    x: (B, 3 * in_channels, H, W) plane-major -> (B, 3 * out_channels, H', W'). ``resample``:
    "none" (H' = H), "down" (blur with [1, 3, 3, 1], stride-2 conv: H' = H / 2) or "up" (2x
    zero-insertion upsampling + blur, then the conv: H' = 2H).
    """

    def __init__(self, in_channels: int, out_channels: int, *, slope: float, resample: str = "none") -> None:
        super().__init__()
        if resample not in ("none", "down", "up"):
            raise ValueError(f"PlaneConv: resample must be 'none', 'down' or 'up', got {resample!r}")
        self.resample, self.slope = resample, slope
        self.conv = nn.Conv2d(
            3 * in_channels,
            3 * out_channels,
            kernel_size=3,
            stride=2 if resample == "down" else 1,
            padding=0 if resample == "down" else 1,
            groups=3,
        )
        self.norm = nn.BatchNorm2d(3 * out_channels)
        self.register_buffer("resample_filter", setup_filter(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            # Pad 2 + blur (4 taps) gives H + 1 samples; the unpadded stride-2 3x3 conv then gives H / 2,
            # centred like StyleGAN2's conv2d_resample.
            x = upfirdn2d(x, self.resample_filter, pad=(2, 2, 2, 2))
        elif self.resample == "up":
            x = upsample2d(x, self.resample_filter)
        return F.leaky_relu(self.norm(self.conv(x)), self.slope)


class RollOutConv(nn.Module):
    """Roll-out mixing then a split conv mapping 3 x ``channels`` to ``out_channels`` per plane.

    x: (B, 3 * channels, H, W) -> (B, 3 * out_channels, H, W); ``out_channels`` defaults to ``channels``.
    """

    def __init__(
        self,
        channels: int,
        plane_axes: Sequence[tuple[int, int]],
        *,
        slope: float,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.plane_axes = tuple(tuple(a) for a in plane_axes)
        self.mix = PlaneConv(3 * channels, out_channels or channels, slope=slope)

    def forward(self, x: Tensor) -> Tensor:
        b, c3, h, w = x.shape
        mixed = roll_out(x.reshape(b, 3, c3 // 3, h, w), self.plane_axes)
        return self.mix(mixed.reshape(b, 3 * c3, h, w))


class EncoderLevel(nn.Module):
    """One encoder resolution of the "levels" layout: [downsample in_channels -> width], roll-out conv,
    conv.

    (B, 3 * in_channels, H, W) -> (B, 3 * width, H / 2 if downsample else H, ...).
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        plane_axes: Sequence[tuple[int, int]],
        *,
        downsample: bool,
        slope: float,
    ) -> None:
        super().__init__()
        if not downsample and in_channels != width:
            raise ValueError(f"EncoderLevel: without downsampling in_channels ({in_channels}) must be width")
        self.down = PlaneConv(in_channels, width, slope=slope, resample="down") if downsample else None
        self.mix = RollOutConv(width, plane_axes, slope=slope)
        self.conv = PlaneConv(width, width, slope=slope)

    def forward(self, x: Tensor) -> Tensor:
        if self.down is not None:
            x = self.down(x)
        return self.conv(self.mix(x))


class DecoderLevel(nn.Module):
    """One decoder resolution of the "levels" layout: upsample in_channels -> width, add the skip,
    roll-out conv, conv.

    x (B, 3 * in_channels, H, W), skip (B, 3 * width, 2H, 2W) -> (B, 3 * width, 2H, 2W).
    """

    def __init__(
        self, in_channels: int, width: int, plane_axes: Sequence[tuple[int, int]], *, slope: float
    ) -> None:
        super().__init__()
        self.up = PlaneConv(in_channels, width, slope=slope, resample="up")
        self.mix = RollOutConv(width, plane_axes, slope=slope)
        self.conv = PlaneConv(width, width, slope=slope)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(self.mix(self.up(x) + skip))


class StageBlock(nn.Module):
    """One stage of the "talk3d" layout (the official down/up blocks): roll-out, split conv3x3 + BN +
    LeakyReLU to ``out_channels``, the same again, then 2x blur down- or upsampling.

    x: (B, 3 * in_channels, H, W) -> (B, 3 * out_channels, H / 2 or 2H, ...). The convs run at the
    input resolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        plane_axes: Sequence[tuple[int, int]],
        *,
        resample: str,
        slope: float,
    ) -> None:
        super().__init__()
        if resample not in ("down", "up"):
            raise ValueError(f"StageBlock: resample must be 'down' or 'up', got {resample!r}")
        self.resample = resample
        self.mix = RollOutConv(in_channels, plane_axes, slope=slope, out_channels=out_channels)
        self.conv = PlaneConv(out_channels, out_channels, slope=slope)
        self.register_buffer("resample_filter", setup_filter(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(self.mix(x))
        if self.resample == "down":
            return blur_downsample2d(x, self.resample_filter)
        return upsample2d(x, self.resample_filter)


# ---------------------------------------------------------------------------------------------------
# Bottleneck transformer


def planewise(module: nn.Module, x: Tensor) -> Tensor:
    """x (B, 3, L, d) through one module shared by the three planes, or through a ModuleList of one
    module per plane: -> (B, 3, L, d')."""
    if isinstance(module, nn.ModuleList):
        return torch.stack([m(x[:, p]) for p, m in enumerate(module)], dim=1)
    b, p, length, d = x.shape
    return module(x.reshape(b * p, length, d)).reshape(b, p, length, -1)


def shared_or_per_plane(per_plane: bool, make: Callable[[], nn.Module]) -> nn.Module:
    """One module (``make()``) shared by the planes, or a ModuleList of three (see :func:`planewise`)."""
    return nn.ModuleList(make() for _ in range(3)) if per_plane else make()


class Attention(nn.Module):
    """Multi-head attention: x (N, L, dim) attends to context (N, M, context_dim) -> (N, L, dim);
    without a context, to itself."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        n, length, _ = x.shape
        return x.reshape(n, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q = self._split_heads(self.to_q(x))
        k = self._split_heads(self.to_k(context))
        v = self._split_heads(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, head_dim)
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLUFeedForward(nn.Module):
    """Linear -> GEGLU (a * gelu(gate)), ``mult`` x dim hidden units -> Linear: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(a * F.gelu(gate))


class ConditionalAffine(nn.Module):
    """x * (1 + scale) + shift, per channel, from the concatenated tokens; the identity at initialisation.

    x: (B, L, dim); tokens (B, T, token_dim) -> flattened (B, T * token_dim) -> MLP -> (scale, shift).
    """

    def __init__(self, dim: int, num_tokens: int, token_dim: int, *, slope: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_tokens * token_dim, dim), nn.LeakyReLU(slope), nn.Linear(dim, 2 * dim)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        scale, shift = self.mlp(tokens.flatten(1)).unsqueeze(1).chunk(2, dim=-1)
        return x * (1 + scale) + shift


class TokenConditioning(nn.Module):
    """Cells conditioned on the tokens: pre-LayerNorm cross-attention from each cell to the tokens,
    added to the cell (``conditioning="attention"``), or the conditional affine (``"affine"``).

    cells (B, 3 * L, dim) of the three planes, plane-major; tokens (B, T, token_dim) -> (B, 3 * L, dim).
    With ``plane_weights="per_plane"`` each plane's cells have their own LayerNorm and the tokens are
    not normalised (the official block); otherwise one LayerNorm for all cells and one for the tokens.
    """

    def __init__(self, dim: int, config: DeltaplaneConfig) -> None:
        super().__init__()
        self.mode = config.conditioning
        if config.conditioning == "attention":
            per_plane = config.plane_weights == "per_plane"
            self.norm_cells = shared_or_per_plane(per_plane, lambda: nn.LayerNorm(dim))
            self.norm_tokens = None if per_plane else nn.LayerNorm(config.token_dim)
            self.cross_attention = Attention(dim, config.token_dim, config.heads, config.head_dim)
        else:
            self.affine = ConditionalAffine(
                dim, len(config.tokens), config.token_dim, slope=config.lrelu_slope
            )

    def forward(self, cells: Tensor, tokens: Tensor) -> Tensor:
        if self.mode == "attention":
            b, n, dim = cells.shape
            normed = planewise(self.norm_cells, cells.reshape(b, 3, n // 3, dim)).reshape(b, n, dim)
            context = tokens if self.norm_tokens is None else self.norm_tokens(tokens)
            return cells + self.cross_attention(normed, context)
        return self.affine(cells, tokens)


class BottleneckBlock(nn.Module):
    """Per-plane self-attention, token conditioning (cross-attention or affine), GEGLU feed-forward.

    x: (B, 3, L, dim) cell features of the three planes; tokens (B, T, token_dim) -> (B, 3, L, dim).
    Self-attention runs within each plane, cross-attention lets every cell of the three planes attend
    to the tokens. The LayerNorms, self-attention and feed-forward weights are shared by the planes
    or one set per plane (``config.plane_weights``).
    """

    def __init__(self, dim: int, config: DeltaplaneConfig) -> None:
        super().__init__()
        per_plane = config.plane_weights == "per_plane"
        self.norm_self = shared_or_per_plane(per_plane, lambda: nn.LayerNorm(dim))
        self.self_attention = shared_or_per_plane(
            per_plane, lambda: Attention(dim, dim, config.heads, config.head_dim)
        )
        self.conditioning = TokenConditioning(dim, config)
        self.norm_ff = shared_or_per_plane(per_plane, lambda: nn.LayerNorm(dim))
        self.feed_forward = shared_or_per_plane(per_plane, lambda: GEGLUFeedForward(dim, config.ff_mult))

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        b, p, length, dim = x.shape
        x = x + planewise(self.self_attention, planewise(self.norm_self, x))
        x = self.conditioning(x.reshape(b, p * length, dim), tokens).reshape(b, p, length, dim)
        return x + planewise(self.feed_forward, planewise(self.norm_ff, x))


class DecoderConditioning(nn.Module):
    """A decoder level's cells, all three planes together, conditioned on the tokens.

    x: (B, 3 * width, H, W) plane-major; tokens (B, T, token_dim) -> (B, 3 * width, H, W).
    """

    def __init__(self, width: int, config: DeltaplaneConfig) -> None:
        super().__init__()
        self.conditioning = TokenConditioning(width, config)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        b, c3, h, w = x.shape
        width = c3 // 3
        cells = x.reshape(b, 3, width, h * w).transpose(2, 3).reshape(b, 3 * h * w, width)
        cells = self.conditioning(cells, tokens)
        return cells.reshape(b, 3, h * w, width).transpose(2, 3).reshape(b, c3, h, w)


# ---------------------------------------------------------------------------------------------------
# Token encoders


class AudioEncoder(nn.Module):
    """RAD-NeRF's AudioNet + AudioAttNet: audio windows (B, S, W, D) -> one token (B, token_dim).

    Per frame: 1D convs over the W window positions (D -> 32 -> 32 -> 64 -> 64 ... channels, each
    stride 2 until one position is left; one unstrided conv when W = 1) and two FC layers -> a code.
    Then attention over the S = ``frames`` neighbouring frames: 1D convs over the S codes (token_dim
    -> 16 -> 8 -> 4 -> 2 -> 1 channels) give one logit per frame (``attention="radnerf"``: with a
    LeakyReLU after the last conv too and a Linear(S, S) across the frames, as RAD-NeRF has it); the
    softmax-weighted sum of the codes is the token, which smooths the audio condition over time.
    """

    def __init__(
        self, audio_dim: int, audio_window: int, token_dim: int, *, frames: int, attention: str
    ) -> None:
        super().__init__()
        if attention not in AUDIO_ATTENTIONS:
            raise ValueError(f"AudioEncoder: attention must be one of {AUDIO_ATTENTIONS}, got {attention!r}")
        strided = (audio_window - 1).bit_length()  # ceil(log2 W): each k3 s2 p1 conv maps L -> ceil(L / 2)
        layers: list[nn.Module] = []
        channels = audio_dim
        for i in range(max(strided, 1)):
            out = 32 if i < 2 else 64
            layers += [
                nn.Conv1d(channels, out, 3, stride=2 if i < strided else 1, padding=1),
                nn.LeakyReLU(AUDIO_LRELU_SLOPE),
            ]
            channels = out
        self.frame_convs = nn.Sequential(*layers)
        self.frame_fc = nn.Sequential(
            nn.Linear(channels, 64), nn.LeakyReLU(AUDIO_LRELU_SLOPE), nn.Linear(64, token_dim)
        )
        widths = (token_dim, 16, 8, 4, 2, 1)
        att: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            att.append(nn.Conv1d(c_in, c_out, 3, padding=1))
            if i < len(widths) - 2 or attention == "radnerf":
                att.append(nn.LeakyReLU(AUDIO_LRELU_SLOPE))
        self.frame_attention = nn.Sequential(*att)
        self.frame_mixing = nn.Linear(frames, frames) if attention == "radnerf" else None

    def forward(self, audio: Tensor) -> Tensor:
        b, s, w, d = audio.shape
        x = self.frame_convs(audio.reshape(b * s, w, d).transpose(1, 2))  # (B * S, channels, 1)
        codes = self.frame_fc(x.squeeze(-1)).reshape(b, s, -1)  # (B, S, token_dim)
        logits = self.frame_attention(codes.transpose(1, 2)).squeeze(1)  # (B, S)
        if self.frame_mixing is not None:
            logits = self.frame_mixing(logits)
        return (logits.softmax(dim=-1).unsqueeze(-1) * codes).sum(dim=1)


class FourierTokenEncoder(nn.Module):
    """Values (B, K) -> sinusoidal encoding (``frequencies`` octaves from ``scale``) -> MLP (B, token_dim).

    The MLP has ``layers`` Linear layers (token_dim wide) with ``activation`` between them.
    """

    def __init__(
        self,
        in_features: int,
        frequencies: int,
        scale: float,
        token_dim: int,
        *,
        layers: int,
        activation: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        self.in_features, self.frequencies, self.scale = in_features, frequencies, scale
        modules: list[nn.Module] = [nn.Linear(in_features * (1 + 2 * frequencies), token_dim)]
        for _ in range(layers - 1):
            modules += [activation(), nn.Linear(token_dim, token_dim)]
        self.mlp = nn.Sequential(*modules)

    def forward(self, values: Tensor) -> Tensor:
        return self.mlp(sinusoidal_encoding(values, self.frequencies, self.scale))


class OpeningToken(nn.Module):
    """The mouth's inner-lip opening as a token: a value (B,) -> (B, token_dim), and the predictor of that
    value from the audio that stands in for it wherever the footage's opening is not to be used.

    Not in the official network. The audio token alone leaves the rendered mouth in a narrow band,
    neither shut in pauses nor wide in speech, though it holds the opening
    (docs/decisions.md#opening-token): an explicit opening is a condition the U-Net follows. In training
    the token reads the footage's opening (teacher forcing); in eval mode, and whenever no opening is
    given, it reads :meth:`predict`'s, an :class:`AudioEncoder` over the ``frames`` central frames of the
    audio span and a Linear head, fitted before the deltaplane training (:func:`fit_opening_predictor`)
    and frozen. Openings are in pixels of a 256 crop; ``mean`` and ``std`` (buffers, the training
    frames') standardise them, and a third of the standardised value, clipped to [-1, 1], is encoded.
    """

    def __init__(
        self,
        audio_dim: int,
        audio_window: int,
        token_dim: int,
        *,
        frames: int,
        attention: str,
        encoder: nn.Module,
    ) -> None:
        super().__init__()
        self.frames = frames
        self.predictor = AudioEncoder(audio_dim, audio_window, token_dim, frames=frames, attention=attention)
        self.head = nn.Linear(token_dim, 1)
        self.encoder = encoder
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def central(self, audio: Tensor) -> Tensor:
        """The predictor's frames (B, frames, W, D) of an audio span (B, S, W, D) centred at S // 2."""
        start = audio.shape[1] // 2 - self.frames // 2
        return audio[:, start : start + self.frames]

    def predict_standardised(self, audio: Tensor) -> Tensor:
        """The predictor's output (B,): the opening standardised by ``mean`` and ``std``."""
        return self.head(self.predictor(self.central(audio))).squeeze(-1)

    def predict(self, audio: Tensor) -> Tensor:
        """Opening (B,) in pixels of a 256 crop predicted from audio spans (B, S, W, D)."""
        return self.predict_standardised(audio) * self.std + self.mean

    def forward(self, audio: Tensor, opening: Tensor | None) -> Tensor:
        """Token (B, token_dim) of the ``opening`` (B,) px, or of the predicted one when it is None."""
        if opening is None:
            with torch.no_grad():
                opening = self.predict(audio)
        return self.encoder((((opening - self.mean) / self.std) / 3).clamp(-1, 1)[:, None])


def fit_opening_predictor(
    token: OpeningToken, audio: Tensor, opening: Tensor, *, steps: int, batch_size: int = 16, lr: float = 5e-4
) -> list[float]:
    """Fit ``token``'s predictor (and set its ``mean``/``std``) to training frames' openings (N,) px from
    their audio spans (N, S, W, D): MSE on the standardised opening, Adam; then freeze it. Draws from the
    global torch generator (seed it first). Returns the loss of every step."""
    if len(audio) != len(opening) or len(opening) < 2:
        raise ValueError(
            f"fit_opening_predictor: {len(audio)} audio spans for {len(opening)} openings (>= 2)"
        )
    opening = opening.to(token.mean)
    token.mean.copy_(opening.mean())
    token.std.copy_(opening.std().clamp_min(1e-3))
    target = (opening - token.mean) / token.std
    params = [*token.predictor.parameters(), *token.head.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        batch = torch.randint(len(audio), (min(batch_size, len(audio)),))
        loss = (token.predict_standardised(audio[batch]) - target[batch]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    for p in params:
        p.requires_grad_(False)
    return losses


# The official rotation token reads (pitch, yaw, roll); the features table gives (yaw, pitch, roll).
PITCH_YAW_ROLL = (1, 0, 2)


class ConditioningTokens(nn.Module):
    """The conditioning tokens t_n of one frame: (B, T, token_dim) in ``config.tokens`` order.

    ``token_encoders="fourier"``: each sinusoidal encoding's lowest octave spans at most half a period
    over its value's range (so it is monotonic there): eye in [0, 2] at pi / 2, rotation in radians at
    1 (|angle| <= 90 deg), landmarks in [-1, 1] at pi / 2; 2-layer LeakyReLU MLPs. ``"nerf"`` (the
    official encoders): the raw values at scale 1 (AU45, degrees as pitch, yaw, roll, landmarks),
    3-layer ReLU MLPs.
    """

    def __init__(self, config: DeltaplaneConfig, audio_dim: int, audio_window: int) -> None:
        super().__init__()
        if audio_dim < 1 or audio_window < 1:
            raise ValueError(
                f"ConditioningTokens: audio_dim={audio_dim} and audio_window={audio_window} must be >= 1"
            )
        self.config = config
        self.audio_dim, self.audio_window = audio_dim, audio_window
        names, dim = config.tokens, config.token_dim
        self.audio = (
            AudioEncoder(
                audio_dim, audio_window, dim, frames=config.audio_frames, attention=config.audio_attention
            )
            if "audio" in names
            else None
        )
        nerf = config.token_encoders == "nerf"
        fourier_scales = {"eye": math.pi / 2, "rotation": 1.0, "ldm": math.pi / 2}  # see the class docstring

        def encoder(name: str, in_features: int, frequencies: int) -> FourierTokenEncoder | None:
            if name not in names:
                return None
            return FourierTokenEncoder(
                in_features,
                frequencies,
                1.0 if nerf else fourier_scales[name],
                dim,
                layers=3 if nerf else 2,
                activation=nn.ReLU if nerf else lambda: nn.LeakyReLU(config.lrelu_slope),
            )

        self.eye = encoder("eye", 1, config.eye_frequencies)
        self.rotation = encoder("rotation", 3, config.rotation_frequencies)
        self.ldm = encoder("ldm", 6, config.ldm_frequencies)
        self.opening = (
            OpeningToken(
                audio_dim, audio_window, dim, frames=config.opening_frames, attention=config.audio_attention,
                encoder=FourierTokenEncoder(1, config.ldm_frequencies, math.pi / 2, dim, layers=2,
                                            activation=lambda: nn.LeakyReLU(config.lrelu_slope)),
            )
            if "opening" in names
            else None
        )  # fmt: skip
        self.null = nn.Parameter(config.null_std * torch.randn(dim)) if "null" in names else None

    def _expected_shape(self, name: str) -> str:
        return {
            "audio": f"(B, S={self.config.audio_frames}, W={self.audio_window}, D={self.audio_dim})",
            "eye": "(B,)",
            "rotation": "(B, 3) yaw/pitch/roll degrees",
            "ldm": "(B, 6)",
        }[name]

    def _value(self, cond: Mapping[str, Tensor], name: str) -> Tensor:
        if name not in cond:
            raise KeyError(
                f"cond has no {name!r} entry (expected {self._expected_shape(name)}); got {sorted(cond)}"
            )
        value = torch.as_tensor(cond[name])
        shape = tuple(value.shape)
        expected = {
            "audio": (self.config.audio_frames, self.audio_window, self.audio_dim),
            "eye": (),
            "rotation": (3,),
            "ldm": (6,),
        }[name]
        if name == "eye" and value.ndim == 2 and shape[1] == 1:
            value = value[:, 0]
        if value.ndim != 1 + len(expected) or tuple(value.shape[1:]) != expected:
            raise ValueError(f"cond[{name!r}] must be {self._expected_shape(name)}, got shape {shape}")
        return value

    def _eye_noise(self, eye: Tensor) -> Tensor:
        """Training-mode noise on the eye values: N(0, eye_noise^2) or U(-eye_noise, eye_noise)."""
        if self.config.eye_noise_distribution == "uniform":
            return self.config.eye_noise * (2 * torch.rand_like(eye) - 1)
        return self.config.eye_noise * torch.randn_like(eye)

    def forward(
        self, cond: Mapping[str, Tensor], drop: Collection[str] = (), *, batch_size: int | None = None
    ) -> Tensor:
        """cond: "audio" (B, S, W, D) float: the audio feature windows of S = config.audio_frames
        neighbouring frames centred on the frame (position S // 2 is the frame itself), each a window
        of W per-frame features of D dims; "eye" (B,) AU45 scale; "rotation" (B, 3) yaw/pitch/roll
        degrees; "ldm" (B, 6) in [-1, 1]; "opening" (B,) px of a 256 crop, optional, read in training
        mode only (:class:`OpeningToken`). Returns tokens (B, T, token_dim), T = len(config.tokens), in
        config.tokens order. Tokens named in ``drop`` are replaced by zeros (ablation at evaluation:
        "the audio token zeroed"; dropping "audio" drops "opening" too). Only the cond entries of
        enabled, not dropped tokens are required.
        ``batch_size`` gives B when no cond entry is read (e.g. only the null token).
        """
        drop = set(drop)
        unknown = sorted(drop - set(TOKEN_NAMES + EXTRA_TOKENS))
        if unknown:
            raise ValueError(f"drop names unknown tokens {unknown}: choose from {TOKEN_NAMES + EXTRA_TOKENS}")
        if "audio" in drop:  # the opening token is the audio's reading (the ablation's "no audio")
            drop.add("opening")
        param = next(self.parameters())
        dtype, device = param.dtype, param.device
        nerf = self.config.token_encoders == "nerf"
        encoded: dict[str, Tensor] = {}
        for name in self.config.tokens:
            if name in drop or name == "null":
                continue
            value = self._value(cond, "audio" if name == "opening" else name).to(device=device, dtype=dtype)
            if name == "audio":
                encoded[name] = self.audio(value)
            elif name == "eye":
                eye = value.clamp(*EYE_RANGE)
                if self.training and self.config.eye_noise > 0:
                    eye = eye + self._eye_noise(eye)
                encoded[name] = self.eye(eye[:, None])
            elif name == "rotation":
                encoded[name] = self.rotation(value[:, PITCH_YAW_ROLL] if nerf else torch.deg2rad(value))
            elif name == "opening":
                # The footage's opening in training only: in eval mode the audio's reading, always.
                given = cond.get("opening") if self.training else None
                if given is not None:
                    given = torch.as_tensor(given).to(device=device, dtype=dtype)
                    if tuple(given.shape) != (len(value),):
                        raise ValueError(
                            f"cond['opening'] must be (B,) = ({len(value)},), got {tuple(given.shape)}"
                        )
                encoded[name] = self.opening(value, given)
            else:
                encoded[name] = self.ldm(value)
        sizes = {name: t.shape[0] for name, t in encoded.items()}
        if batch_size is not None:
            sizes["batch_size"] = batch_size
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch sizes disagree (cond entries; batch_size, from the planes): {sizes}")
        if not sizes:
            raise ValueError(
                "ConditioningTokens: no cond entry is read (all dropped or null); pass batch_size"
            )
        b = next(iter(sizes.values()))
        tokens = []
        for name in self.config.tokens:
            if name in drop:
                tokens.append(torch.zeros(b, self.config.token_dim, dtype=dtype, device=device))
            elif name == "null":
                tokens.append(self.null.expand(b, -1))
            else:
                tokens.append(encoded[name])
        return torch.stack(tokens, dim=1)


# ---------------------------------------------------------------------------------------------------
# The U-Net


class DeltaplaneNet(nn.Module):
    """F(P_ID, t_n): identity tri-plane (B, 3, C, R, R) + conditioning -> deltaplane (B, 3, C, R, R).

    ``plane_axes`` names the tri-plane convention (a key of
    :data:`~talk3d_core.model.eg3d.config.PLANE_AXES`: "original" or "fixed"); it decides how planes are
    rolled out onto each other and where the bottleneck cells sit in the world (``position_encoding=
    "projected"``). R must be divisible by 2**(levels - 1); the "talk3d" layout also needs
    ``widths[0]`` = C. The output is exactly zero at initialisation (zero last conv).
    """

    def __init__(
        self,
        config: DeltaplaneConfig,
        *,
        plane_channels: int,
        plane_resolution: int,
        plane_axes: str,
        audio_dim: int,
        audio_window: int,
    ) -> None:
        super().__init__()
        problems = []
        if plane_axes not in PLANE_AXES:
            problems.append(f"plane_axes={plane_axes!r} must be one of {sorted(PLANE_AXES)}")
        if plane_channels < 1:
            problems.append(f"plane_channels={plane_channels} must be >= 1")
        stride = 2 ** (config.levels - 1)
        if plane_resolution < stride or plane_resolution % stride:
            problems.append(
                f"plane_resolution={plane_resolution} must be a multiple of 2**(levels - 1) = {stride}"
                f" for {config.levels} widths {config.widths}"
            )
        if config.unet_layout == "talk3d" and config.widths[0] != plane_channels:
            problems.append(
                f"unet_layout='talk3d' works on the planes' own channels: widths[0]={config.widths[0]}"
                f" must equal plane_channels={plane_channels}"
            )
        if problems:
            raise ValueError("invalid DeltaplaneNet: " + "; ".join(problems))
        self.config = config
        self.plane_channels, self.plane_resolution = plane_channels, plane_resolution
        self.plane_axes_name = plane_axes
        axes = PLANE_AXES[plane_axes]
        widths, slope = config.widths, config.lrelu_slope
        talk3d = config.unet_layout == "talk3d"

        self.tokens = ConditioningTokens(config, audio_dim, audio_window)
        if talk3d:
            self.input_conv = None
            self.encoder = nn.ModuleList(
                StageBlock(widths[level - 1], widths[level], axes, resample="down", slope=slope)
                for level in range(1, config.levels)
            )
        else:
            self.input_conv = PlaneConv(plane_channels, widths[0], slope=slope)
            self.encoder = nn.ModuleList(
                EncoderLevel(
                    widths[max(level - 1, 0)], widths[level], axes, downsample=level > 0, slope=slope
                )
                for level in range(config.levels)
            )

        dim = widths[-1]
        bottleneck_resolution = plane_resolution // stride
        if config.bottleneck_input == "groupnorm_linear":
            # GroupNorm over the stacked planes with 32 groups per plane = GroupNorm(32) on each plane;
            # the grouped 1x1 conv is a Linear per plane.
            self.bottleneck_norm = nn.GroupNorm(3 * GROUPNORM_GROUPS, 3 * dim)
            self.bottleneck_proj_in = nn.Conv2d(3 * dim, 3 * dim, 1, groups=3)
        else:
            self.bottleneck_norm = self.bottleneck_proj_in = None
        if config.position_encoding == "projected":
            pe_frequencies = max(
                1, (bottleneck_resolution - 1).bit_length()
            )  # finest octave: 2 cells a period
            cells = plane_cell_coordinates(bottleneck_resolution, axes)
            self.register_buffer(
                "cell_encoding", sinusoidal_encoding(cells, pe_frequencies, math.pi), persistent=False
            )  # (3, L, 3 * (1 + 2 * pe_frequencies))
            self.position_projection = nn.Linear(self.cell_encoding.shape[-1], dim)
            self.position_table = None
        else:
            self.cell_encoding = self.position_projection = None
            # Trained from the fixed table: the official trainer switches requires_grad on for every
            # U-Net parameter, this one included, on a fresh run.
            self.position_table = nn.Parameter(talk3d_position_table(bottleneck_resolution, dim))
        self.blocks = nn.ModuleList(BottleneckBlock(dim, config) for _ in range(config.attention_blocks))

        if talk3d:
            self.decoder = nn.ModuleList(
                StageBlock(widths[level + 1], widths[level], axes, resample="up", slope=slope)
                for level in reversed(range(config.levels - 1))
            )
            conditioned = widths[1:-1]  # every up stage's output but the deltaplane itself
        else:
            self.decoder = nn.ModuleList(
                DecoderLevel(widths[level + 1], widths[level], axes, slope=slope)
                for level in reversed(range(config.levels - 1))
            )
            conditioned = widths[:-1]
        self.decoder_conditioning = (
            nn.ModuleList(DecoderConditioning(width, config) for width in reversed(conditioned))
            if config.decoder_conditioning
            else None
        )
        # dP = 0 exactly at step 0: training starts from rendering the identity tri-plane itself.
        if talk3d:
            # The official output head: the last up stage's second conv is zero, so its BatchNorm,
            # LeakyReLU and upsampling give zero.
            self.output_conv = None
            last = self.decoder[-1].conv.conv
        else:
            self.output_conv = nn.Conv2d(3 * widths[0], 3 * plane_channels, 3, padding=1, groups=3)
            last = self.output_conv
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def _bottleneck(self, x: Tensor, tokens: Tensor) -> Tensor:
        """x (B, 3 * dim, r, r) -> (B, 3 * dim, r, r) through the transformer blocks."""
        b, c3, r, _ = x.shape
        h = x if self.bottleneck_norm is None else self.bottleneck_proj_in(self.bottleneck_norm(x))
        h = h.reshape(b, 3, c3 // 3, r * r).transpose(2, 3)  # (B, 3, L, dim)
        if self.position_projection is not None:
            h = h + self.position_projection(self.cell_encoding)
        for block in self.blocks:
            if self.position_table is not None:
                h = h + self.position_table
            h = block(h, tokens)
        h = h.transpose(2, 3).reshape(b, c3, r, r)
        return h if self.bottleneck_norm is None else x + h

    def forward(self, planes: Tensor, cond: Mapping[str, Tensor], drop: Collection[str] = ()) -> Tensor:
        """planes (B, 3, C, R, R) -> deltaplane (B, 3, C, R, R); exactly zero at initialisation.

        cond and drop: see :meth:`ConditioningTokens.forward`.
        """
        c, r = self.plane_channels, self.plane_resolution
        if planes.ndim != 5 or tuple(planes.shape[1:]) != (3, c, r, r):
            raise ValueError(
                f"DeltaplaneNet: planes must be (B, 3, {c}, {r}, {r}), got {tuple(planes.shape)}"
            )
        b = planes.shape[0]
        tokens = self.tokens(cond, drop, batch_size=b)
        x = planes.reshape(b, 3 * c, r, r)
        if self.input_conv is not None:
            x = self.input_conv(x)
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        skips.pop()  # the deepest level feeds the bottleneck directly
        x = self._bottleneck(x, tokens)
        for i, level in enumerate(self.decoder):
            if self.output_conv is None:  # "talk3d": upsample, then add the skip
                x = level(x)
                if skips:
                    x = x + skips.pop()
            else:
                x = level(x, skips.pop())
            if self.decoder_conditioning is not None and i < len(self.decoder_conditioning):
                x = self.decoder_conditioning[i](x, tokens)
        if self.output_conv is not None:
            x = self.output_conv(x)
        return x.reshape(b, 3, c, r, r)
