"""StyleGAN2 building blocks of the EG3D backbone and super-resolution, in plain PyTorch.

Parameters are stored unscaled and multiplied by constant gains at run time ("equalized learning
rate"): a fully connected layer by ``lr_mul / sqrt(fan_in)``, a ToRGB conv by ``1 / sqrt(fan_in)``
(folded into its styles); modulated convs are demodulated, which makes their gain irrelevant.
Attribute names follow NVlabs' modules so that a checkpoint's tensors map by name.

Shapes: feature maps (B, C, H, W); styles w (B, w_dim); ``ws`` (B, num_ws, w_dim).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps the activations' second moment through a leaky ReLU


# ---------------------------------------------------------------------------------------------------
# FIR resampling


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> Tensor:
    """2D low-pass filter (K, K): the outer product of ``taps`` with itself, normalised to sum 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(
    x: Tensor, f: Tensor, up: int = 1, pad: Sequence[int] = (0, 0, 0, 0), gain: float = 1.0
) -> Tensor:
    """Upsample by zero insertion, pad, then convolve every channel with the 2D FIR filter ``f``.

    x: (B, C, H, W); f: (K, K); pad: (left, right, top, bottom) >= 0. Output (B, C, H', W') with
    H' = H * up + top + bottom - K + 1. ``gain`` multiplies the filter (``up**2`` keeps the mean of an
    upsampled image, since zero insertion leaves one sample in ``up**2``).
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, list(pad))
    # A true convolution (flipped kernel); [1, 3, 3, 1] is symmetric but other taps need not be.
    kernel = (f * gain).flip([0, 1]).to(x.dtype)
    kernel = kernel[None, None].expand(c, 1, *f.shape)
    return F.conv2d(x, kernel, groups=c)


def upsample2d(x: Tensor, f: Tensor) -> Tensor:
    """2x upsampling with the FIR filter ``f`` (K, K): (B, C, H, W) -> (B, C, 2H, 2W)."""
    k = f.shape[0]
    pad0, pad1 = (k + 1) // 2, (k - 2) // 2
    return upfirdn2d(x, f, up=2, pad=(pad0, pad1, pad0, pad1), gain=4.0)


# ---------------------------------------------------------------------------------------------------
# Convolutions and fully connected layers


def bias_act(x: Tensor, bias: Tensor, lrelu: bool, gain: float = 1.0, clamp: float | None = None) -> Tensor:
    """Add a per-channel ``bias`` (dim 1), apply leaky ReLU (optional), scale by ``gain``, clamp."""
    x = x + bias.reshape([1, -1] + [1] * (x.ndim - 2))
    if lrelu:
        x = F.leaky_relu(x, LRELU_SLOPE)
    if gain != 1.0:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    *,
    demodulate: bool = True,
    up: int = 1,
    resample_filter: Tensor | None = None,
) -> Tensor:
    """StyleGAN2 modulated convolution, one weight per sample (a grouped conv over the batch).

    x: (B, I, H, W); weight: (O, I, k, k); styles: (B, I). Each sample's weight is scaled by its
    styles along the input channels and, with ``demodulate``, renormalised to unit norm per output
    channel. ``up=2`` upsamples: a stride-2 transposed conv followed by the FIR ``resample_filter``
    (the order NVlabs uses, cheaper than filtering first). Returns (B, O, H * up, W * up).
    """
    batch, in_ch, height, width = x.shape
    out_ch, _, k, _ = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, in_ch, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    x = x.reshape(1, batch * in_ch, height, width)
    if up == 1:
        x = F.conv2d(x, w.reshape(batch * out_ch, in_ch, k, k), padding=k // 2, groups=batch)
    elif up == 2:
        if resample_filter is None:
            raise ValueError("modulated_conv2d: up=2 needs a resample_filter")
        # conv_transpose2d wants (in, out / groups, k, k) per group.
        w = w.transpose(1, 2).reshape(batch * in_ch, out_ch, k, k)
        x = F.conv_transpose2d(x, w, stride=2, groups=batch)
        # The transposed conv gives 2H + k - 2 samples; padding then a K-tap filter trims to 2H.
        fk = resample_filter.shape[0]
        pad0 = k // 2 + (fk + 1) // 2 - (k - 1)
        pad1 = k // 2 + (fk - 2) // 2 - (k - 2)
        x = upfirdn2d(x, resample_filter, pad=(pad0, pad1, pad0, pad1), gain=4.0)
    else:
        raise ValueError(f"modulated_conv2d: up must be 1 or 2, got {up}")
    return x.reshape(batch, out_ch, x.shape[2], x.shape[3])


class FullyConnectedLayer(nn.Module):
    """y = act(x @ (weight * lr_mul / sqrt(in)).T + bias * lr_mul); x: (..., in) -> (..., out).

    ``weight`` is initialised N(0, 1 / lr_mul^2) so the effective weight starts N(0, 1 / in) and a
    small ``lr_mul`` slows its learning (the mapping network uses 0.01).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        lrelu: bool = False,
        lr_mul: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.lrelu = lrelu
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)) / lr_mul)
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN if self.lrelu else x


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each row of x (B, D) to unit mean square."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# ---------------------------------------------------------------------------------------------------
# Mapping network


class MappingNetwork(nn.Module):
    """z (B, z_dim), c (B, c_dim) -> ws (B, num_ws, w_dim), with a running average ``w_avg``.

    z and the embedded camera label are each normalised to unit second moment, concatenated, and
    passed through ``num_layers`` leaky-ReLU FC layers with learning-rate multiplier ``lr_mul``.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int,
        lr_mul: float = 0.01,
        w_avg_beta: float = 0.998,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        embed_dim = w_dim if c_dim > 0 else 0
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_dim)
        features = [z_dim + embed_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(
                self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], lrelu=True, lr_mul=lr_mul)
            )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: Tensor,
        c: Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> Tensor:
        x = normalize_2nd_moment(z.float())
        if self.c_dim > 0:
            x = torch.cat([x, normalize_2nd_moment(self.embed(c.float()))], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_emas:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            # Pull (the first ``truncation_cutoff``) styles towards the average: less variety, fewer flaws.
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            truncated = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
            ws = torch.cat([truncated, ws[:, cutoff:]], dim=1)
        return ws


# ---------------------------------------------------------------------------------------------------
# Synthesis


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + noise + bias + leaky ReLU.

    x (B, in, H, W), w (B, w_dim) -> (B, out, R, R) with R = ``resolution``. ``noise_mode``:
    "random" (fresh per call), "const" (the stored ``noise_const``), "none".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        *,
        up: int = 1,
        conv_clamp: float | None = None,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("resample_filter", setup_filter())

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random") -> Tensor:
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, up=self.up, resample_filter=self.resample_filter)
        if noise_mode == "random":
            x = (
                x
                + torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device)
                * self.noise_strength
            )
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        # NVlabs clamps at conv_clamp itself, after the activation gain (not conv_clamp * gain).
        return bias_act(x, self.bias, lrelu=True, gain=LRELU_GAIN, clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated (not demodulated) 1x1 conv to ``out_channels`` image channels + bias."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, lrelu=False, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of a skip-architecture StyleGAN2 generator.

    in_channels = 0: the first block, starting from a learned constant (B, out, R, R) and one conv
    (``conv1``). Otherwise ``conv0`` (upsampling 2x when ``up=2``) then ``conv1``. A ToRGB layer adds
    its output to the (upsampled) running image. Consumes ``num_conv + 1`` styles of which the last
    is shared with the next block's first conv, as in NVlabs' code.
    Returns x (B, out, R, R) and img (B, img_channels, R, R).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        *,
        up: int = 2,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.up = in_channels, resolution, up
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=up, conv_clamp=conv_clamp
            )
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.register_buffer("resample_filter", setup_filter())
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(
        self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str = "random"
    ) -> tuple[Tensor, Tensor]:
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        if img is not None and self.up == 2:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, ws[:, self.num_conv])
        img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """StyleGAN2 synthesis, skip architecture: ws (B, num_ws, w_dim) -> image (B, img_channels, R, R).

    Blocks ``b4``, ``b8``, ..., ``b{R}``, widths ``min(channel_base // res, channel_max)``.
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int,
        channel_max: int,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.block_resolutions = [2**i for i in range(2, img_resolution.bit_length())]
        self.num_ws = 0
        in_channels = 0
        for res in self.block_resolutions:
            out_channels = min(channel_base // res, channel_max)
            block = SynthesisBlock(in_channels, out_channels, w_dim, res, img_channels, conv_clamp=conv_clamp)
            setattr(self, f"b{res}", block)
            self.num_ws += block.num_conv
            in_channels = out_channels
        self.num_ws += 1  # the last ToRGB

    def forward(self, ws: Tensor, noise_mode: str = "random") -> Tensor:
        x = img = None
        w_index = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws[:, w_index : w_index + block.num_conv + 1], noise_mode)
            w_index += block.num_conv
        return img


class StyleGAN2Backbone(nn.Module):
    """The tri-plane backbone: ``mapping`` (z, c -> ws) and ``synthesis`` (ws -> stacked planes)."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        *,
        mapping_layers: int,
        mapping_lr_mul: float,
        w_avg_beta: float,
        channel_base: int,
        channel_max: int,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.synthesis = SynthesisNetwork(
            w_dim, img_resolution, img_channels, channel_base, channel_max, conv_clamp
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim, c_dim, w_dim, self.num_ws, mapping_layers, lr_mul=mapping_lr_mul, w_avg_beta=w_avg_beta
        )
