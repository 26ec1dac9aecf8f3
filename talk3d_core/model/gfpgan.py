"""GFPGAN v1.3, the super-resolution network of the official Talk3D release (``train.sr: gfpgan``).

The released scripts (``do_train.sh``, ``demo.sh`` pass ``--use_GFPGAN``) fine-tune TencentARC's
GFPGAN v1.3 in place of EG3D's super-resolution in the tuning stage: the raw 128 px neural render,
bilinearly upsampled to 512 px, goes straight into the network (no face detection, no paste-back),
and its image is the final frame. Its weights start from ``params_ema`` of ``GFPGANv1.3.pth``.

The architecture is GFPGAN's "clean" one (``GFPGANv1Clean`` with ``StyleGAN2GeneratorClean``, no
compiled ops) as GFPGAN's restorer builds it for v1.3: channel multiplier 2, a W+ code from the encoder
fed straight to the decoder (``input_is_latent``, ``different_w``), SFT on half of the decoder's
channels (``sft_half``), bilinear resampling. It is rewritten here; module and parameter names follow
the release file so that its state dict loads strictly. At 512 px: 86,444,252 parameters and 699,024
noise-buffer values (15 buffers), 285 state-dict tensors.

- Encoder (a U-Net's down path, half the decoder's widths): 1x1 conv, then residual blocks that halve
  the resolution down to 4x4; a 3x3 conv; a linear layer maps the 4x4 features to the W+ code
  (B, 2 log2(S) - 2, style_dim).
- U-Net up path: residual blocks that double the resolution, each adding the encoder's features of
  the same size first; at every level two small conv nets give the SFT scale and shift, and a 1x1
  conv an intermediate RGB image (used only by GFPGAN's own training losses).
- Decoder: a StyleGAN2 generator from a learnt 4x4 constant, two modulated 3x3 convs per level
  (the first upsamples bilinearly), with per-pixel noise; after a level's first conv the second
  half of its channels is scaled and shifted by the SFT maps (``x * scale + shift``). RGB is summed
  over the levels (skip architecture).

StyleGAN2's mapping network (``stylegan_decoder.style_mlp``) is in the release file but never runs:
the encoder gives W+ directly. Images are RGB in [-1, 1] in and out (the output is not clamped).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talk3d_core.util.weights import state_dict_problems

#: The manifest entry of the release file, and where it is installed in the weights folder.
GFPGAN_WEIGHTS = "gfpgan_v1_3"
GFPGAN_FILE = "gfpgan/GFPGANv1.3.pth"
LRELU_SLOPE = 0.2


@dataclass(frozen=True)
class GFPGANConfig:
    """Sizes of :class:`GFPGAN`; the defaults are v1.3's (512 px, channel multiplier 2).

    ``out_size``: output side S (a power of two >= 8; the input is the same size). Decoder widths are
    ``512 * narrow`` up to 32 px and ``16384 / res * channel_multiplier * narrow`` above, the U-Net's
    half of that. ``style_dim``: width of each W+ vector; ``mlp_layers``: depth of the (unused) mapping
    network. Tests use small ``out_size``/``narrow``/``style_dim`` with the same code.
    """

    out_size: int = 512
    channel_multiplier: int = 2
    narrow: float = 1.0
    style_dim: int = 512
    mlp_layers: int = 8

    def __post_init__(self) -> None:
        if self.out_size < 8 or self.out_size & (self.out_size - 1):
            raise ValueError(f"GFPGANConfig: out_size={self.out_size} must be a power of two >= 8")
        if self.channel_multiplier < 1 or self.style_dim < 1 or self.mlp_layers < 0:
            raise ValueError(
                f"GFPGANConfig: need channel_multiplier, style_dim >= 1, mlp_layers >= 0: {self}"
            )
        if min(self.unet_channels(r) for r in self.resolutions(4)) < 2:
            raise ValueError(f"GFPGANConfig: narrow={self.narrow} leaves a level under 2 channels")

    @property
    def levels(self) -> int:
        """log2(out_size)."""
        return self.out_size.bit_length() - 1

    @property
    def num_latents(self) -> int:
        """W+ vectors: one per decoder conv and ToRGB (2 log2(S) - 2)."""
        return 2 * self.levels - 2

    def resolutions(self, start: int = 8) -> list[int]:
        """start, 2 start, ..., out_size."""
        return [2**i for i in range(start.bit_length() - 1, self.levels + 1)]

    def decoder_channels(self, resolution: int) -> int:
        """StyleGAN2's width at ``resolution`` (its channel table)."""
        return int(self._table(resolution) * self.narrow)

    def unet_channels(self, resolution: int) -> int:
        """The encoder / U-Net width at ``resolution``: the decoder's table at half ``narrow``."""
        return int(self._table(resolution) * self.narrow * 0.5)

    def _table(self, resolution: int) -> int:
        return 512 if resolution <= 32 else 16384 // resolution * self.channel_multiplier


# --------------------------------------------------------------------------------- StyleGAN2 decoder


class PixelNorm(nn.Module):
    """x / rms(x) over dim 1: StyleGAN2's normalisation of the mapping network's input."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class ModulatedConv(nn.Module):
    """StyleGAN2's modulated conv (no bias): the weight (1, out, in, k, k) is scaled per input channel by
    an affine map of the style (``modulation``, bias initialised to 1), optionally demodulated to unit
    norm per output channel; ``upsample`` doubles the input bilinearly before the conv."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, style_dim: int, *, demodulate: bool, upsample: bool
    ) -> None:
        super().__init__()
        self.out_ch, self.kernel, self.demodulate, self.upsample = out_ch, kernel, demodulate, upsample
        self.modulation = nn.Linear(style_dim, in_ch)
        nn.init.kaiming_normal_(self.modulation.weight, nonlinearity="linear")
        nn.init.ones_(self.modulation.bias)
        self.weight = nn.Parameter(
            torch.randn(1, out_ch, in_ch, kernel, kernel) / math.sqrt(in_ch * kernel**2)
        )

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """x (B, in, H, W), style (B, style_dim) -> (B, out, H', W'), H' = 2H with upsample."""
        b, c = x.shape[:2]
        weight = self.weight * self.modulation(style).view(b, 1, c, 1, 1)  # (B, out, in, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        # One grouped conv runs every sample with its own weight.
        out = F.conv2d(
            x.reshape(1, b * c, h, w),
            weight.reshape(b * self.out_ch, c, self.kernel, self.kernel),
            padding=self.kernel // 2,
            groups=b,
        )
        return out.view(b, self.out_ch, h, w)


class StyleConv(nn.Module):
    """Modulated 3x3 conv (x sqrt 2), + ``weight`` x noise (one learnt strength), + ``bias``, LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, *, upsample: bool) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv(in_ch, out_ch, 3, style_dim, demodulate=True, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None) -> Tensor:
        """x (B, in, H, W), style (B, style_dim), noise (B or 1, 1, H', W') or None (fresh N(0, 1))."""
        out = self.modulated_conv(x, style) * math.sqrt(2)
        if noise is None:
            noise = out.new_empty(out.shape[0], 1, *out.shape[2:]).normal_()
        return F.leaky_relu(out + self.weight * noise + self.bias, LRELU_SLOPE)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (not demodulated) + ``bias``, plus the previous level's RGB
    (bilinearly doubled when ``upsample``)."""

    def __init__(self, in_ch: int, style_dim: int, *, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv(in_ch, 3, 1, style_dim, demodulate=False, upsample=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            if self.upsample:
                skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
            out = out + skip
        return out


class ConstantInput(nn.Module):
    """The decoder's learnt 4x4 input (1, C, 4, 4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, 4, 4))

    def forward(self, batch: int) -> Tensor:
        return self.weight.expand(batch, -1, -1, -1)


class SFTStyleDecoder(nn.Module):
    """StyleGAN2 generator whose levels are spatially modulated (SFT) on half of their channels.

    Buffers ``noises.noise{i}`` (1, 1, r, r), one per style conv in order (4, 8, 8, 16, 16, ...), are the
    fixed noise (``randomize_noise=False``).
    """

    def __init__(self, cfg: GFPGANConfig) -> None:
        super().__init__()
        style = cfg.style_dim
        layers: list[nn.Module] = [PixelNorm()]
        for _ in range(cfg.mlp_layers):
            layers += [nn.Linear(style, style), nn.LeakyReLU(LRELU_SLOPE)]
        self.style_mlp = nn.Sequential(*layers)  # in the release file; W+ comes from the encoder
        for m in self.style_mlp:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, a=LRELU_SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        ch4 = cfg.decoder_channels(4)
        self.constant_input = ConstantInput(ch4)
        self.style_conv1 = StyleConv(ch4, ch4, style, upsample=False)
        self.to_rgb1 = ToRGB(ch4, style, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = ch4
        for res in cfg.resolutions(8):
            out_ch = cfg.decoder_channels(res)
            self.style_convs.append(StyleConv(in_ch, out_ch, style, upsample=True))
            self.style_convs.append(StyleConv(out_ch, out_ch, style, upsample=False))
            self.to_rgbs.append(ToRGB(out_ch, style, upsample=True))
            in_ch = out_ch
        self.noises = nn.Module()
        sizes = [4] + [r for r in cfg.resolutions(8) for _ in range(2)]
        for i, r in enumerate(sizes):
            self.noises.register_buffer(f"noise{i}", torch.randn(1, 1, r, r))
        self.num_noises = len(sizes)

    def forward(self, latent: Tensor, sft: list[tuple[Tensor, Tensor]], *, randomize_noise: bool) -> Tensor:
        """latent (B, num_latents, style_dim) W+; sft: per level 8..S the (scale, shift) maps
        (B, C_level / 2, r, r) for the second half of the level's channels -> RGB (B, 3, S, S)."""
        noise = [
            None if randomize_noise else getattr(self.noises, f"noise{i}") for i in range(self.num_noises)
        ]
        x = self.style_conv1(self.constant_input(len(latent)), latent[:, 0], noise[0])
        rgb = self.to_rgb1(x, latent[:, 1])
        for level, (scale, shift) in enumerate(sft):
            i = 2 * level + 1  # latent and noise index of the level's first conv
            x = self.style_convs[2 * level](x, latent[:, i], noise[i])
            kept, modulated = x.split(x.shape[1] // 2, dim=1)
            x = torch.cat([kept, modulated * scale + shift], dim=1)
            x = self.style_convs[2 * level + 1](x, latent[:, i + 1], noise[i + 1])
            rgb = self.to_rgbs[level](x, latent[:, i + 2], rgb)
        return rgb


# ------------------------------------------------------------------------------------- U-Net, GFPGAN


class ResampleBlock(nn.Module):
    """Residual block that halves (``down``) or doubles the resolution bilinearly: conv3x3, LReLU,
    resample, conv3x3, LReLU; plus the resampled input through a 1x1 conv (no bias)."""

    def __init__(self, in_ch: int, out_ch: int, *, down: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.factor = 0.5 if down else 2.0

    def forward(self, x: Tensor) -> Tensor:
        def resample(t: Tensor) -> Tensor:
            return F.interpolate(t, scale_factor=self.factor, mode="bilinear", align_corners=False)

        out = F.leaky_relu(self.conv1(x), LRELU_SLOPE)
        out = F.leaky_relu(self.conv2(resample(out)), LRELU_SLOPE)
        return out + self.skip(resample(x))


def _sft_branch(channels: int) -> nn.Sequential:
    """conv3x3, LReLU, conv3x3 at one level's U-Net width (SFT on half the decoder's channels, which
    is the U-Net's width)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.LeakyReLU(LRELU_SLOPE),
        nn.Conv2d(channels, channels, 3, padding=1),
    )


class GFPGAN(nn.Module):
    """GFPGAN v1.3 ("clean" architecture): U-Net encoder + SFT-modulated StyleGAN2 decoder.

    Input and output RGB (B, 3, S, S) in [-1, 1], S = ``config.out_size``. Submodule and parameter names
    are the release file's (``params_ema`` of ``GFPGANv1.3.pth``).
    """

    def __init__(self, config: GFPGANConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or GFPGANConfig()
        size = cfg.out_size
        self.conv_body_first = nn.Conv2d(3, cfg.unet_channels(size), 1)
        self.conv_body_down = nn.ModuleList(
            ResampleBlock(cfg.unet_channels(r), cfg.unet_channels(r // 2), down=True)
            for r in reversed(cfg.resolutions(8))
        )
        ch4 = cfg.unet_channels(4)
        self.final_conv = nn.Conv2d(ch4, ch4, 3, padding=1)
        self.conv_body_up = nn.ModuleList(
            ResampleBlock(cfg.unet_channels(r // 2), cfg.unet_channels(r), down=False)
            for r in cfg.resolutions(8)
        )
        self.toRGB = nn.ModuleList(nn.Conv2d(cfg.unet_channels(r), 3, 1) for r in cfg.resolutions(8))
        self.final_linear = nn.Linear(ch4 * 4 * 4, cfg.num_latents * cfg.style_dim)
        self.stylegan_decoder = SFTStyleDecoder(cfg)
        self.condition_scale = nn.ModuleList(_sft_branch(cfg.unet_channels(r)) for r in cfg.resolutions(8))
        self.condition_shift = nn.ModuleList(_sft_branch(cfg.unet_channels(r)) for r in cfg.resolutions(8))

    def forward(
        self, x: Tensor, *, return_rgb: bool = False, randomize_noise: bool = True
    ) -> tuple[Tensor, list[Tensor]]:
        """x (B, 3, S, S) -> (image (B, 3, S, S), rgbs).

        ``rgbs``: with ``return_rgb`` the U-Net's intermediate RGB images (B, 3, r, r) for r = 8..S (its
        ``toRGB`` convs; GFPGAN's own training puts a pyramid loss on them), else []. GFPGAN's forward
        returns them by default; Talk3D calls it with ``return_rgb=False`` and uses the image only.
        ``randomize_noise``: fresh N(0, 1) noise per call (GFPGAN's default, train and test), else the
        stored ``noises`` buffers.
        """
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (cfg.out_size, cfg.out_size):
            raise ValueError(
                f"GFPGAN takes (B, 3, {cfg.out_size}, {cfg.out_size}) images, got {tuple(x.shape)}"
            )
        feat = F.leaky_relu(self.conv_body_first(x), LRELU_SLOPE)
        skips = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = F.leaky_relu(self.final_conv(feat), LRELU_SLOPE)
        latent = self.final_linear(feat.flatten(1)).view(len(x), cfg.num_latents, cfg.style_dim)
        sft, rgbs = [], []
        for level, skip in enumerate(reversed(skips)):
            feat = self.conv_body_up[level](feat + skip)
            sft.append((self.condition_scale[level](feat), self.condition_shift[level](feat)))
            if return_rgb:
                rgbs.append(self.toRGB[level](feat))
        image = self.stylegan_decoder(latent, sft, randomize_noise=randomize_noise)
        return image, rgbs

    def upscale(self, raw: Tensor, *, randomize_noise: bool = True) -> Tensor:
        """Talk3D's use: a raw render (B, 3, h, h) in [-1, 1], bilinearly resized to S (no antialias,
        as ``F.interpolate``'s default) -> the restored image (B, 3, S, S)."""
        size = self.config.out_size
        x = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False)
        return self(x, return_rgb=False, randomize_noise=randomize_noise)[0]


def load_gfpgan(path: str | os.PathLike[str], config: GFPGANConfig | None = None) -> GFPGAN:
    """GFPGAN with the ``params_ema`` weights of a release file (``GFPGANv1.3.pth``: a dict whose
    ``params_ema`` is the state dict), read with ``torch.load(weights_only=True)`` and loaded strictly.

    ``config``: the architecture the file holds (default v1.3's). Raises FileNotFoundError for a missing
    file (naming the fetch command) and ValueError naming the file when it is not such a checkpoint or
    does not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GFPGAN weights not found: {path}; fetch them with: snakemake --cores 1 "
            f"resources/weights/{GFPGAN_FILE} (manifest entry {GFPGAN_WEIGHTS})"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; all mean "not a usable file"
        raise ValueError(f"{path}: cannot read as a torch checkpoint ({type(exc).__name__}: {exc})") from exc
    state = saved.get("params_ema") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        keys = list(saved)[:6] if isinstance(saved, dict) else type(saved).__name__
        raise ValueError(f"{path}: no 'params_ema' state dict (found {keys}); not a GFPGAN release file")
    model = GFPGAN(config)
    problems = state_dict_problems(state, model.state_dict())
    if problems:
        raise ValueError(
            f"{path} does not fit GFPGAN {dataclasses.asdict(model.config)}: " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)
    return model
