"""Every size of the EG3D tri-plane generator, in one frozen dataclass.

``GeneratorConfig.paper()`` is NVlabs' FFHQ 512-128 generator (ffhqrebalanced512-128.pkl and the
fixed-triplane variant); ``GeneratorConfig.cpu()`` is a small model for CPU experiments and tests. Both
build the same modules through the same code path; only the numbers differ.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Which two world coordinates index each of the three planes, as (grid u -> width, grid v -> height).
# "original": the projection NVlabs' released FFHQ checkpoints were trained with (XY, XZ, ZX: the third
# plane was meant to be ZY). "fixed": the corrected XY, XZ, ZY of ffhq-fixed-triplane512-128.pkl.
PLANE_AXES = {
    "original": ((0, 1), (0, 2), (2, 0)),
    "fixed": ((0, 1), (0, 2), (2, 1)),
}
NOISE_MODES = ("random", "const", "none")


def _is_power_of_two(n: int) -> bool:
    return n >= 4 and (n & (n - 1)) == 0


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes and rendering options of :class:`~talk3d_core.model.eg3d.generator.TriPlaneGenerator`.

    Mapping: ``z_dim`` latent -> ``w_dim`` style through ``mapping_layers`` fully connected layers
    (camera label of ``c_dim`` numbers embedded and concatenated). Backbone: a StyleGAN2 synthesis
    network from 4^2 to ``plane_resolution``^2 producing ``3 * plane_channels`` channels; block
    widths ``min(channel_base // res, channel_max)``. Decoder: mean of the three plane features ->
    FC(plane_channels -> decoder_hidden) -> softplus -> FC(-> 1 + decoder_output_dim). Rendering:
    rays at ``neural_rendering_resolution``^2 pixels, ``depth_resolution`` stratified plus
    ``depth_resolution_importance`` importance samples between ``ray_start`` and ``ray_end`` (world
    units; the camera sits at radius 2.7), world coordinates scaled by ``2 / box_warp`` into the
    planes' [-1, 1] square. Super-resolution: feature image -> ``image_resolution``^2 RGB through two
    StyleGAN2 blocks of ``sr_channels`` widths.
    """

    z_dim: int = 512
    c_dim: int = 25
    w_dim: int = 512
    mapping_layers: int = 2
    mapping_lr_mul: float = 0.01
    w_avg_beta: float = 0.998
    # Backbone (tri-plane) size.
    plane_resolution: int = 256
    plane_channels: int = 32
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = None
    # OSG decoder.
    decoder_hidden: int = 64
    decoder_output_dim: int = 32
    decoder_lr_mul: float = 1.0
    # Volume rendering.
    neural_rendering_resolution: int = 128
    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    ray_start: float = 2.25
    ray_end: float = 3.3
    box_warp: float = 1.0
    # NVlabs' renderer lets points outside the tri-plane box through: the planes' zero padding then
    # extrudes each plane's content along its missing axis (ghosts above and beside the head). Fitting
    # from scratch, we can declare space outside the box empty; a released checkpoint keeps False.
    empty_outside_box: bool = False
    white_back: bool = False
    disparity_space_sampling: bool = False
    plane_axes: str = "original"
    # Camera conditioning of the mapping network.
    c_gen_conditioning_zero: bool = False
    c_scale: float = 1.0
    # Super-resolution.
    image_resolution: int = 512
    sr_channels: tuple[int, int] = (256, 128)
    sr_conv_clamp: float | None = 256.0
    # NVlabs runs the super-resolution blocks in float16 on CUDA, clamped at 256, exactly when
    # sr_num_fp16_res > 0 (its FFHQ checkpoints); on a CPU both it and this code stay in float32.
    sr_fp16: bool = True
    sr_antialias: bool = True
    sr_noise_mode: str = "none"

    def __post_init__(self) -> None:
        problems = []
        for name in ("plane_resolution", "neural_rendering_resolution", "image_resolution"):
            if not _is_power_of_two(getattr(self, name)):
                problems.append(f"{name}={getattr(self, name)} must be a power of two >= 4")
        for name in ("z_dim", "w_dim", "mapping_layers", "plane_channels", "decoder_hidden"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.c_dim not in (0, 25):
            problems.append(f"c_dim={self.c_dim} must be 25 (EG3D camera label) or 0")
        if self.decoder_output_dim < 3:
            problems.append(f"decoder_output_dim={self.decoder_output_dim} must be >= 3 (RGB first)")
        if self.plane_axes not in PLANE_AXES:
            problems.append(f"plane_axes={self.plane_axes!r} must be one of {sorted(PLANE_AXES)}")
        if self.sr_noise_mode not in NOISE_MODES:
            problems.append(f"sr_noise_mode={self.sr_noise_mode!r} must be one of {NOISE_MODES}")
        if self.image_resolution // self.neural_rendering_resolution not in (2, 4, 8):
            problems.append(
                f"image_resolution / neural_rendering_resolution = {self.image_resolution}"
                f" / {self.neural_rendering_resolution} must be 2, 4 or 8"
            )
        if len(self.sr_channels) != 2 or min(self.sr_channels) < 1:
            problems.append(f"sr_channels={self.sr_channels} must be two positive widths")
        if self.depth_resolution < 2 or self.depth_resolution_importance < 0:
            problems.append("depth_resolution must be >= 2 and depth_resolution_importance >= 0")
        if not 0 < self.ray_start < self.ray_end:
            problems.append(f"need 0 < ray_start < ray_end, got {self.ray_start}, {self.ray_end}")
        if self.box_warp <= 0:
            problems.append(f"box_warp={self.box_warp} must be > 0")
        if problems:
            raise ValueError("invalid GeneratorConfig: " + "; ".join(problems))

    # -- derived sizes -------------------------------------------------------------------------------
    @property
    def block_resolutions(self) -> list[int]:
        """Backbone block resolutions 4, 8, ..., plane_resolution."""
        return [2**i for i in range(2, self.plane_resolution.bit_length())]

    def block_channels(self, resolution: int) -> int:
        """Width of the backbone block at ``resolution`` (StyleGAN2's rule)."""
        return min(self.channel_base // resolution, self.channel_max)

    @property
    def num_ws(self) -> int:
        """Number of style vectors: one per backbone conv (1 at 4^2, 2 per later block) + final ToRGB."""
        return 1 + 2 * (len(self.block_resolutions) - 1) + 1

    @property
    def sr_input_resolution(self) -> int:
        """Resolution the super-resolution blocks expect; other feature images are resized to it.

        EG3D's SR modules take 128^2 for a 512 output and 64^2 for 128/256 outputs (4x and 2x);
        feature images rendered at another size are resized bilinearly first.
        """
        return self.image_resolution // 4 if self.image_resolution >= 512 else self.image_resolution // 2

    @property
    def rendering_kwargs(self) -> dict[str, Any]:
        """The rendering options under NVlabs' ``rendering_kwargs`` names (for logs and loaders)."""
        return {
            "depth_resolution": self.depth_resolution,
            "depth_resolution_importance": self.depth_resolution_importance,
            "ray_start": self.ray_start,
            "ray_end": self.ray_end,
            "box_warp": self.box_warp,
            "white_back": self.white_back,
            "disparity_space_sampling": self.disparity_space_sampling,
            "clamp_mode": "softplus",
            "c_gen_conditioning_zero": self.c_gen_conditioning_zero,
            "c_scale": self.c_scale,
            "sr_antialias": self.sr_antialias,
            "superresolution_noise_mode": self.sr_noise_mode,
            "decoder_lr_mul": self.decoder_lr_mul,
            "decoder_output_dim": self.decoder_output_dim,
        }

    # -- presets -------------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: Any) -> GeneratorConfig:
        """EG3D FFHQ 512-128 (14 ws, 3 x 32 x 256^2 planes, 48 + 48 samples, SR 128 -> 512).

        ``plane_axes="original"`` matches ffhqrebalanced512-128.pkl; pass ``plane_axes="fixed"`` for
        ffhq-fixed-triplane512-128.pkl (the checkpoint Talk3D uses).
        """
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def cpu(cls, **overrides: Any) -> GeneratorConfig:
        """A small generator for CPU runs: 3 x 16 x 64^2 planes, w 128, 32^2 rays x (16 + 16), 64 px."""
        base = cls(
            z_dim=128,
            w_dim=128,
            plane_resolution=64,
            plane_channels=16,
            channel_base=4096,
            channel_max=128,
            decoder_hidden=64,
            decoder_output_dim=16,
            neural_rendering_resolution=32,
            depth_resolution=16,
            depth_resolution_importance=16,
            image_resolution=64,
            sr_channels=(64, 32),
            plane_axes="fixed",
        )
        return dataclasses.replace(base, **overrides)
