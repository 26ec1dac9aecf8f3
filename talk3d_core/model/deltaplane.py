"""Talk3D's audio-guided attention U-Net: identity tri-plane + conditioning tokens -> deltaplane.

The network F predicts a per-frame residual tri-plane dP_n = F(P_ID, t_n); rendering P_ID + dP_n
gives frame n. Shapes: planes (B, 3, C, R, R) in :data:`~talk3d_core.model.eg3d.config.PLANE_AXES` order;
tokens (B, T, token_dim).

- Split convolutions: the three planes have their own weights, run as one grouped conv (groups=3) on
  the channel-stacked planes (B, 3 * C, R, R), plane-major; BatchNorm over the stacked channels is
  therefore per plane. Blocks are conv3x3 + BatchNorm + LeakyReLU(0.2); resampling uses the
  [1, 3, 3, 1] binomial filter (blur then stride-2 conv; 2x upsampling then blur).
- Roll-out mixing (Mimic3D / Rodin "3D-aware" convolution): at the start of every resolution level
  each plane also sees the other two, each averaged over the world axes it has and the plane lacks
  and laid onto the plane's grid (:func:`roll_out`); a split conv maps the 3 x width back to width.
- Bottleneck (R / 2**(levels - 1)): a sinusoidal encoding of each cell's world coordinate (its plane's
  two axes, the third 0) projected and added once, then ``attention_blocks`` blocks of per-plane
  self-attention (weights shared by the three planes; the split convs already make the planes'
  features plane-specific), cross-attention from all cells of the three planes to the tokens (or a
  token-conditioned affine with ``conditioning="affine"``), and a GEGLU feed-forward; pre-LayerNorm
  and residual throughout.
- Decoder: mirrors the encoder with additive skips; the last conv is zero-initialised so dP = 0
  exactly at step 0. With ``decoder_conditioning`` every decoder level also conditions its cells on
  the tokens (cross-attention, or the affine of Table 8), as diffusion U-Nets condition every
  resolution: at the bottleneck alone the mouth, a cell or two of R / 8, is learnt far more slowly
  (docs/decisions.md#decoder-conditioning-of-the-deltaplane-u-net).
- Tokens (:class:`ConditioningTokens`): audio (RAD-NeRF's AudioNet + attention over neighbouring
  frames), eye blink, head rotation, 6-number landmark token, a learned null token.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talk3d_core.model.eg3d.config import PLANE_AXES
from talk3d_core.model.eg3d.layers import setup_filter, upfirdn2d, upsample2d

TOKEN_NAMES = ("audio", "eye", "rotation", "ldm", "null")
CONDITIONING_MODES = ("attention", "affine")
LRELU_SLOPE = 0.2
AUDIO_LRELU_SLOPE = 0.02  # RAD-NeRF's audio networks
EYE_RANGE = (0.0, 2.0)  # AU45 scale: 0 open, ~2 closed


@dataclass(frozen=True)
class DeltaplaneConfig:
    """Sizes and options of :class:`DeltaplaneNet` (defaults: the paper's, as in the official code).

    ``widths``: encoder widths, ``widths[0]`` at the plane resolution R, each next level at half the
    resolution (4 widths -> an R / 8 bottleneck). ``attention_blocks`` (N_A) bottleneck blocks of
    ``heads`` x ``head_dim`` attention and a GEGLU feed-forward of ``ff_mult`` x width hidden units.
    Tokens are ``token_dim`` wide: audio attends over ``audio_frames`` neighbouring frames; eye,
    rotation and landmark values go through sinusoidal encodings of ``*_frequencies`` octaves;
    ``eye_noise`` is the std of Gaussian noise added to the eye value in training mode. ``tokens``:
    the enabled tokens (paper Table 7 drops some); ``conditioning``: "attention" (cross-attention to
    the tokens) or "affine" (per-channel scale and shift from the concatenated tokens, Table 8).
    ``decoder_conditioning``: the decoder levels condition on the tokens too (the same way), not only
    the bottleneck; the paper's network (False) conditions the bottleneck alone.
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
    tokens: tuple[str, ...] = TOKEN_NAMES
    conditioning: str = "attention"
    decoder_conditioning: bool = False

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
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r} must be an integer >= 1")
        if not isinstance(self.decoder_conditioning, bool):
            problems.append(f"decoder_conditioning={self.decoder_conditioning!r} must be true or false")
        if not self.eye_noise >= 0:
            problems.append(f"eye_noise={self.eye_noise!r} must be >= 0")
        if not self.tokens:
            problems.append(f"tokens is empty: enable at least one of {TOKEN_NAMES}")
        unknown = [t for t in self.tokens if t not in TOKEN_NAMES]
        if unknown:
            problems.append(f"unknown tokens {unknown}: choose from {TOKEN_NAMES}")
        duplicated = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
        if duplicated:
            problems.append(f"tokens {duplicated} are listed more than once")
        if self.conditioning not in CONDITIONING_MODES:
            problems.append(f"conditioning={self.conditioning!r} must be one of {CONDITIONING_MODES}")
        if problems:
            raise ValueError("invalid DeltaplaneConfig: " + "; ".join(problems))

    @property
    def levels(self) -> int:
        """Number of resolution levels (the bottleneck is at R / 2**(levels - 1))."""
        return len(self.widths)

    @classmethod
    def paper(cls, **overrides: Any) -> DeltaplaneConfig:
        """The official Talk3D sizes: widths 32 -> 256, 2 blocks of 4 x 64 heads, 5 tokens of 64."""
        return dataclasses.replace(cls(), **overrides)

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
    values for one octave after another, then the cosines).
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


class PlaneConv(nn.Module):
    """3x3 conv with separate weights per plane, then BatchNorm + LeakyReLU(0.2).

    x: (B, 3 * in_channels, H, W) plane-major -> (B, 3 * out_channels, H', W'). ``resample``:
    "none" (H' = H), "down" (blur with [1, 3, 3, 1], stride-2 conv: H' = H / 2) or "up" (2x
    zero-insertion upsampling + blur, then the conv: H' = 2H).
    """

    def __init__(self, in_channels: int, out_channels: int, resample: str = "none") -> None:
        super().__init__()
        if resample not in ("none", "down", "up"):
            raise ValueError(f"PlaneConv: resample must be 'none', 'down' or 'up', got {resample!r}")
        self.resample = resample
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
        return F.leaky_relu(self.norm(self.conv(x)), LRELU_SLOPE)


class RollOutConv(nn.Module):
    """Roll-out mixing then a split conv mapping 3 x ``channels`` back to ``channels`` per plane.

    x: (B, 3 * channels, H, W) -> (B, 3 * channels, H, W).
    """

    def __init__(self, channels: int, plane_axes: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.plane_axes = tuple(tuple(a) for a in plane_axes)
        self.mix = PlaneConv(3 * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c3, h, w = x.shape
        mixed = roll_out(x.reshape(b, 3, c3 // 3, h, w), self.plane_axes)
        return self.mix(mixed.reshape(b, 3 * c3, h, w))


class EncoderLevel(nn.Module):
    """One encoder resolution: [downsample in_channels -> width], roll-out conv, conv.

    (B, 3 * in_channels, H, W) -> (B, 3 * width, H / 2 if downsample else H, ...).
    """

    def __init__(
        self, in_channels: int, width: int, plane_axes: Sequence[tuple[int, int]], *, downsample: bool
    ) -> None:
        super().__init__()
        if not downsample and in_channels != width:
            raise ValueError(f"EncoderLevel: without downsampling in_channels ({in_channels}) must be width")
        self.down = PlaneConv(in_channels, width, resample="down") if downsample else None
        self.mix = RollOutConv(width, plane_axes)
        self.conv = PlaneConv(width, width)

    def forward(self, x: Tensor) -> Tensor:
        if self.down is not None:
            x = self.down(x)
        return self.conv(self.mix(x))


class DecoderLevel(nn.Module):
    """One decoder resolution: upsample in_channels -> width, add the skip, roll-out conv, conv.

    x (B, 3 * in_channels, H, W), skip (B, 3 * width, 2H, 2W) -> (B, 3 * width, 2H, 2W).
    """

    def __init__(self, in_channels: int, width: int, plane_axes: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.up = PlaneConv(in_channels, width, resample="up")
        self.mix = RollOutConv(width, plane_axes)
        self.conv = PlaneConv(width, width)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(self.mix(self.up(x) + skip))


# ---------------------------------------------------------------------------------------------------
# Bottleneck transformer


class Attention(nn.Module):
    """Multi-head attention: x (N, L, dim) attends to context (N, M, context_dim) -> (N, L, dim)."""

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

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
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

    def __init__(self, dim: int, num_tokens: int, token_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_tokens * token_dim, dim), nn.LeakyReLU(LRELU_SLOPE), nn.Linear(dim, 2 * dim)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        scale, shift = self.mlp(tokens.flatten(1)).unsqueeze(1).chunk(2, dim=-1)
        return x * (1 + scale) + shift


class TokenConditioning(nn.Module):
    """Cells conditioned on the tokens: pre-LayerNorm cross-attention from each cell to the tokens,
    added to the cell (``conditioning="attention"``), or the conditional affine (``"affine"``).

    cells (B, L, dim), tokens (B, T, token_dim) -> (B, L, dim).
    """

    def __init__(self, dim: int, config: DeltaplaneConfig) -> None:
        super().__init__()
        self.mode = config.conditioning
        if config.conditioning == "attention":
            self.norm_cells = nn.LayerNorm(dim)
            self.norm_tokens = nn.LayerNorm(config.token_dim)
            self.cross_attention = Attention(dim, config.token_dim, config.heads, config.head_dim)
        else:
            self.affine = ConditionalAffine(dim, len(config.tokens), config.token_dim)

    def forward(self, cells: Tensor, tokens: Tensor) -> Tensor:
        if self.mode == "attention":
            return cells + self.cross_attention(self.norm_cells(cells), self.norm_tokens(tokens))
        return self.affine(cells, tokens)


class BottleneckBlock(nn.Module):
    """Per-plane self-attention, token conditioning (cross-attention or affine), GEGLU feed-forward.

    x: (B, 3, L, dim) cell features of the three planes; tokens (B, T, token_dim) -> (B, 3, L, dim).
    Self-attention runs within each plane (weights shared by the planes); cross-attention lets every
    cell of the three planes attend to the tokens.
    """

    def __init__(self, dim: int, config: DeltaplaneConfig) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attention = Attention(dim, dim, config.heads, config.head_dim)
        self.conditioning = TokenConditioning(dim, config)
        self.norm_ff = nn.LayerNorm(dim)
        self.feed_forward = GEGLUFeedForward(dim, config.ff_mult)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        b, p, length, dim = x.shape
        h = self.norm_self(x).reshape(b * p, length, dim)
        x = x + self.self_attention(h, h).reshape(b, p, length, dim)
        x = self.conditioning(x.reshape(b, p * length, dim), tokens)
        x = x + self.feed_forward(self.norm_ff(x))
        return x.reshape(b, p, length, dim)


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
    Then attention over the S neighbouring frames: 1D convs over the S codes (token_dim -> 16 -> 8
    -> 4 -> 2 -> 1 channels) give one logit per frame; the softmax-weighted sum of the codes is the
    token, which smooths the audio condition over time.
    """

    def __init__(self, audio_dim: int, audio_window: int, token_dim: int) -> None:
        super().__init__()
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
            if i < len(widths) - 2:
                att.append(nn.LeakyReLU(AUDIO_LRELU_SLOPE))
        self.frame_attention = nn.Sequential(*att)

    def forward(self, audio: Tensor) -> Tensor:
        b, s, w, d = audio.shape
        x = self.frame_convs(audio.reshape(b * s, w, d).transpose(1, 2))  # (B * S, channels, 1)
        codes = self.frame_fc(x.squeeze(-1)).reshape(b, s, -1)  # (B, S, token_dim)
        weights = self.frame_attention(codes.transpose(1, 2)).squeeze(1).softmax(dim=-1)  # (B, S)
        return (weights.unsqueeze(-1) * codes).sum(dim=1)


class FourierTokenEncoder(nn.Module):
    """Values (B, K) -> sinusoidal encoding (``frequencies`` octaves from ``scale``) -> MLP (B, token_dim)."""

    def __init__(self, in_features: int, frequencies: int, scale: float, token_dim: int) -> None:
        super().__init__()
        self.in_features, self.frequencies, self.scale = in_features, frequencies, scale
        self.mlp = nn.Sequential(
            nn.Linear(in_features * (1 + 2 * frequencies), token_dim),
            nn.LeakyReLU(LRELU_SLOPE),
            nn.Linear(token_dim, token_dim),
        )

    def forward(self, values: Tensor) -> Tensor:
        return self.mlp(sinusoidal_encoding(values, self.frequencies, self.scale))


class ConditioningTokens(nn.Module):
    """The conditioning tokens t_n of one frame: (B, T, token_dim) in ``config.tokens`` order.

    Each sinusoidal encoding's lowest octave spans at most half a period over its value's range (so
    it is monotonic there): eye in [0, 2] at pi / 2, rotation in radians at 1 (|angle| <= 90 deg),
    landmarks in [-1, 1] at pi / 2.
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
        self.audio = AudioEncoder(audio_dim, audio_window, dim) if "audio" in names else None
        self.eye = (
            FourierTokenEncoder(1, config.eye_frequencies, math.pi / 2, dim) if "eye" in names else None
        )
        self.rotation = (
            FourierTokenEncoder(3, config.rotation_frequencies, 1.0, dim) if "rotation" in names else None
        )
        self.ldm = (
            FourierTokenEncoder(6, config.ldm_frequencies, math.pi / 2, dim) if "ldm" in names else None
        )
        self.null = nn.Parameter(0.02 * torch.randn(dim)) if "null" in names else None

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

    def forward(
        self, cond: Mapping[str, Tensor], drop: Collection[str] = (), *, batch_size: int | None = None
    ) -> Tensor:
        """cond: "audio" (B, S, W, D) float: the audio feature windows of S = config.audio_frames
        neighbouring frames centred on the frame (position S // 2 is the frame itself), each a window
        of W per-frame features of D dims; "eye" (B,) AU45 scale; "rotation" (B, 3) yaw/pitch/roll
        degrees; "ldm" (B, 6) in [-1, 1]. Returns tokens (B, T, token_dim), T = len(config.tokens), in
        config.tokens order. Tokens named in ``drop`` are replaced by zeros (ablation at evaluation:
        "the audio token zeroed"). Only the cond entries of enabled, not dropped tokens are required.
        ``batch_size`` gives B when no cond entry is read (e.g. only the null token).
        """
        drop = set(drop)
        unknown = sorted(drop - set(TOKEN_NAMES))
        if unknown:
            raise ValueError(f"drop names unknown tokens {unknown}: choose from {TOKEN_NAMES}")
        param = next(self.parameters())
        dtype, device = param.dtype, param.device
        encoded: dict[str, Tensor] = {}
        for name in self.config.tokens:
            if name in drop or name == "null":
                continue
            value = self._value(cond, name).to(device=device, dtype=dtype)
            if name == "audio":
                encoded[name] = self.audio(value)
            elif name == "eye":
                eye = value.clamp(*EYE_RANGE)
                if self.training and self.config.eye_noise > 0:
                    eye = eye + self.config.eye_noise * torch.randn_like(eye)
                encoded[name] = self.eye(eye[:, None])
            elif name == "rotation":
                encoded[name] = self.rotation(torch.deg2rad(value))
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
    rolled out onto each other and where the bottleneck cells sit in the world. R must be divisible
    by 2**(levels - 1). The output is exactly zero at initialisation (zero last conv).
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
        if problems:
            raise ValueError("invalid DeltaplaneNet: " + "; ".join(problems))
        self.config = config
        self.plane_channels, self.plane_resolution = plane_channels, plane_resolution
        self.plane_axes_name = plane_axes
        axes = PLANE_AXES[plane_axes]
        widths = config.widths

        self.tokens = ConditioningTokens(config, audio_dim, audio_window)
        self.input_conv = PlaneConv(plane_channels, widths[0])
        self.encoder = nn.ModuleList(
            EncoderLevel(widths[max(level - 1, 0)], widths[level], axes, downsample=level > 0)
            for level in range(config.levels)
        )
        dim = widths[-1]
        bottleneck_resolution = plane_resolution // stride
        pe_frequencies = max(1, (bottleneck_resolution - 1).bit_length())  # finest octave: 2 cells a period
        cells = plane_cell_coordinates(bottleneck_resolution, axes)
        self.register_buffer(
            "cell_encoding", sinusoidal_encoding(cells, pe_frequencies, math.pi), persistent=False
        )  # (3, L, 3 * (1 + 2 * pe_frequencies))
        self.position_projection = nn.Linear(self.cell_encoding.shape[-1], dim)
        self.blocks = nn.ModuleList(BottleneckBlock(dim, config) for _ in range(config.attention_blocks))
        self.decoder = nn.ModuleList(
            DecoderLevel(widths[level + 1], widths[level], axes)
            for level in reversed(range(config.levels - 1))
        )
        self.decoder_conditioning = (
            nn.ModuleList(
                DecoderConditioning(widths[level], config) for level in reversed(range(config.levels - 1))
            )
            if config.decoder_conditioning
            else None
        )
        self.output_conv = nn.Conv2d(3 * widths[0], 3 * plane_channels, 3, padding=1, groups=3)
        # dP = 0 exactly at step 0: training starts from rendering the identity tri-plane itself.
        nn.init.zeros_(self.output_conv.weight)
        nn.init.zeros_(self.output_conv.bias)

    def _bottleneck(self, x: Tensor, tokens: Tensor) -> Tensor:
        b, c3, r, _ = x.shape
        h = x.reshape(b, 3, c3 // 3, r * r).transpose(2, 3)  # (B, 3, L, dim)
        h = h + self.position_projection(self.cell_encoding)
        for block in self.blocks:
            h = block(h, tokens)
        return h.transpose(2, 3).reshape(b, c3, r, r)

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
        x = self.input_conv(planes.reshape(b, 3 * c, r, r))
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        skips.pop()  # the deepest level feeds the bottleneck directly
        x = self._bottleneck(x, tokens)
        for i, level in enumerate(self.decoder):
            x = level(x, skips.pop())
            if self.decoder_conditioning is not None:
                x = self.decoder_conditioning[i](x, tokens)
        return self.output_conv(x).reshape(b, 3, c, r, r)
