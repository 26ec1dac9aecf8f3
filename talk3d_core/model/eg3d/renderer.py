"""Tri-plane sampling, the OSG decoder, camera rays and EG3D's importance-sampled volume renderer.

World frame: EG3D's (x subject's left, y up, z out of the face), head near the origin, camera at
radius 2.7. A point p is looked up in three axis-aligned feature planes at ``(2 / box_warp) * p``
projected onto each plane (:data:`~talk3d_core.model.eg3d.config.PLANE_AXES`), bilinearly, with zeros
outside [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talk3d_core.model.eg3d.layers import FullyConnectedLayer

# Sigmoid slightly widened so that exact 0 and 1 colours are reachable with finite logits.
RGB_PAD = 1e-3


def sample_triplane(
    planes: Tensor, points: Tensor, plane_axes: Sequence[tuple[int, int]], box_warp: float
) -> Tensor:
    """Bilinear features of ``points`` on each plane.

    planes: (B, 3, C, R, R); points: (B, M, 3) world coordinates; plane_axes: for each plane the
    world axes (u, v) read as grid_sample's (x -> width, y -> height). Returns (B, 3, M, C).
    """
    batch, n_planes, channels, height, width = planes.shape
    coords = points * (2.0 / box_warp)
    grids = torch.stack([coords[..., list(axes)] for axes in plane_axes], dim=1)  # (B, 3, M, 2)
    features = F.grid_sample(
        planes.reshape(batch * n_planes, channels, height, width),
        grids.reshape(batch * n_planes, 1, -1, 2).to(planes.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (B * 3, C, 1, M)
    return features.reshape(batch, n_planes, channels, -1).transpose(2, 3)


class OSGDecoder(nn.Module):
    """Plane features (B, 3, M, C) -> rgb (B, M, out_dim) in [-1e-3, 1 + 1e-3] and raw sigma (B, M, 1).

    Mean over the three planes, FC -> softplus -> FC. "rgb" holds all ``out_dim`` feature channels
    (the first three are the colour); sigma is the raw density logit (the renderer applies softplus).
    """

    def __init__(self, in_features: int, hidden: int = 64, out_dim: int = 32, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            FullyConnectedLayer(in_features, hidden, lr_mul=lr_mul),
            nn.Softplus(),
            FullyConnectedLayer(hidden, 1 + out_dim, lr_mul=lr_mul),
        )

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        x = self.net(features.mean(dim=1))
        rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * RGB_PAD) - RGB_PAD
        return rgb, x[..., :1]


def camera_rays(c: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """World-space rays through the pixel centres of a ``resolution``^2 image, row-major.

    c: (B, 25) EG3D camera labels: 4x4 cam2world (OpenCV: x right, y down, z forward) row-major,
    then 3x3 intrinsics normalised by the image size (fx, skew, cx / fy, cy / 0 0 1).
    Returns origins (B, R*R, 3) and unit directions (B, R*R, 3).
    """
    if c.ndim != 2 or c.shape[1] != 25:
        raise ValueError(f"camera labels must have shape (B, 25), got {tuple(c.shape)}")
    cam2world = c[:, :16].reshape(-1, 4, 4)
    k = c[:, 16:25].reshape(-1, 3, 3)
    fx, fy, cx, cy, skew = (
        k[:, 0, 0, None],
        k[:, 1, 1, None],
        k[:, 0, 2, None],
        k[:, 1, 2, None],
        k[:, 0, 1, None],
    )
    centres = (torch.arange(resolution, device=c.device, dtype=c.dtype) + 0.5) / resolution
    v, u = torch.meshgrid(centres, centres, indexing="ij")  # v: rows (image y), u: columns (image x)
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    # Invert the normalised pinhole projection (with skew) at depth 1 along the optical axis.
    y_cam = (v - cy) / fy
    x_cam = (u - cx - skew * y_cam) / fx
    points_cam = torch.stack([x_cam, y_cam, torch.ones_like(x_cam)], dim=-1)  # (B, R*R, 3)
    directions = F.normalize(points_cam @ cam2world[:, :3, :3].transpose(1, 2), dim=-1)
    origins = cam2world[:, None, :3, 3].expand_as(directions)
    return origins, directions


def composite(
    colors: Tensor, densities: Tensor, depths: Tensor, white_back: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha-composite samples sorted by depth along each ray (EG3D's mip ray marcher).

    colors (B, N, S, C), densities (B, N, S, 1) raw logits, depths (B, N, S, 1). Intervals between
    consecutive samples take the mean colour and density of their ends; density = softplus(sigma - 1).
    Returns features (B, N, C) scaled from [0, 1] to [-1, 1], depth (B, N, 1) (weighted mean depth,
    inf for an empty ray, clamped to the sampled range) and per-interval weights (B, N, S - 1, 1).
    """
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    alpha = 1 - torch.exp(-densities_mid * deltas)
    transmittance = torch.cumprod(
        torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], dim=2), dim=2
    )[:, :, :-1]
    weights = alpha * transmittance
    weight_total = weights.sum(dim=2)
    rgb = (weights * colors_mid).sum(dim=2)
    # An empty ray has no depth: it goes to the far end. The ratio uses a floored denominator so
    # that its gradient stays finite where torch.where discards it (0/0 would poison backward).
    ratio = (weights * depths_mid).sum(dim=2) / weight_total.clamp_min(1e-10)
    depth = torch.where(weight_total > 1e-10, ratio, torch.full_like(ratio, float("inf")))
    depth = depth.clamp(depths.min(), depths.max())
    if white_back:
        rgb = rgb + 1 - weight_total
    return rgb * 2 - 1, depth, weights


def sample_pdf(
    bins: Tensor, weights: Tensor, n_samples: int, deterministic: bool, eps: float = 1e-5
) -> Tensor:
    """Inverse-CDF sampling of a piecewise-constant density.

    bins: (N, K + 1) bin edges; weights: (N, K) non-negative. Returns (N, n_samples) positions,
    uniform quantiles when ``deterministic`` (u = linspace(0, 1)) else random ones.
    """
    weights = weights + eps
    pdf = weights / weights.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)  # (N, K + 1)
    n_rays, n_bins = weights.shape
    if deterministic:
        u = torch.linspace(0, 1, n_samples, device=bins.device, dtype=bins.dtype).expand(n_rays, n_samples)
    else:
        u = torch.rand(n_rays, n_samples, device=bins.device, dtype=bins.dtype)
    index = torch.searchsorted(cdf, u.contiguous(), right=True)
    below = (index - 1).clamp_min(0)
    above = index.clamp_max(n_bins)
    both = torch.stack([below, above], dim=-1).reshape(n_rays, 2 * n_samples)
    cdf_pair = cdf.gather(1, both).reshape(n_rays, n_samples, 2)
    bins_pair = bins.gather(1, both).reshape(n_rays, n_samples, 2)
    denom = cdf_pair[..., 1] - cdf_pair[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    t = (u - cdf_pair[..., 0]) / denom
    return bins_pair[..., 0] + t * (bins_pair[..., 1] - bins_pair[..., 0])


class ImportanceRenderer(nn.Module):
    """Two-pass volume rendering of a tri-plane: stratified samples, then importance samples.

    Holds no parameters (NVlabs' G_ema has none here); all options come from the constructor.
    """

    def __init__(
        self,
        plane_axes: Sequence[tuple[int, int]],
        *,
        depth_resolution: int,
        depth_resolution_importance: int,
        ray_start: float,
        ray_end: float,
        box_warp: float,
        empty_outside_box: bool = False,
        white_back: bool = False,
        disparity_space_sampling: bool = False,
    ) -> None:
        super().__init__()
        self.plane_axes = tuple(tuple(a) for a in plane_axes)
        self.depth_resolution = depth_resolution
        self.depth_resolution_importance = depth_resolution_importance
        self.ray_start, self.ray_end = ray_start, ray_end
        self.box_warp = box_warp
        self.empty_outside_box = empty_outside_box
        self.white_back = white_back
        self.disparity_space_sampling = disparity_space_sampling

    def stratified_depths(self, batch: int, n_rays: int, jitter: bool, device: torch.device) -> Tensor:
        """(B, N, S, 1) depths evenly spaced in [ray_start, ray_end] (or in disparity), jittered
        forward by up to one spacing when ``jitter``."""
        steps = self.depth_resolution
        t = torch.linspace(0, 1, steps, device=device).reshape(1, 1, steps, 1).repeat(batch, n_rays, 1, 1)
        if jitter:
            t = t + torch.rand_like(t) / (steps - 1)
        if self.disparity_space_sampling:
            return 1.0 / (1.0 / self.ray_start * (1 - t) + 1.0 / self.ray_end * t)
        return self.ray_start + t * (self.ray_end - self.ray_start)

    def importance_depths(self, depths: Tensor, weights: Tensor, jitter: bool) -> Tensor:
        """(B, N, n_importance, 1) depths drawn where the coarse pass put its weight.

        depths (B, N, S, 1) coarse samples, weights (B, N, S - 1, 1) their interval weights. The
        weights are smoothed (max then mean filter over neighbours) and floored so that every bin
        keeps some probability.
        """
        batch, n_rays, steps, _ = depths.shape
        with torch.no_grad():
            z = depths.reshape(batch * n_rays, steps)
            w = weights.reshape(batch * n_rays, 1, steps - 1).float()
            w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
            z_mid = (z[:, :-1] + z[:, 1:]) / 2
            fine = sample_pdf(z_mid, w[:, 1:-1], self.depth_resolution_importance, deterministic=not jitter)
        return fine.reshape(batch, n_rays, -1, 1)

    def query(self, planes: Tensor, decoder: OSGDecoder, origins: Tensor, directions: Tensor, depths: Tensor):
        """Decoder outputs at the points ``origins + depths * directions``: colours (B, N, S, C) and
        raw densities (B, N, S, 1)."""
        batch, n_rays, steps, _ = depths.shape
        points = (origins.unsqueeze(2) + depths * directions.unsqueeze(2)).reshape(batch, -1, 3)
        rgb, sigma = self.decode(planes, decoder, points)
        return rgb.reshape(batch, n_rays, steps, -1), sigma.reshape(batch, n_rays, steps, 1)

    def decode(self, planes: Tensor, decoder: OSGDecoder, points: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder outputs at world points (B, M, 3): colours (B, M, C) and raw densities (B, M, 1),
        the latter forced empty outside the box when ``empty_outside_box``."""
        rgb, sigma = decoder(sample_triplane(planes, points, self.plane_axes, self.box_warp))
        if self.empty_outside_box:
            outside = (points.abs() > self.box_warp / 2).any(dim=-1, keepdim=True)
            sigma = sigma.masked_fill(outside, -1e4)  # softplus(-1e4 - 1) == 0: no density, no gradient
        return rgb, sigma

    def forward(
        self,
        planes: Tensor,
        decoder: OSGDecoder,
        origins: Tensor,
        directions: Tensor,
        jitter: bool | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Render rays (B, N, 3) through ``planes`` (B, 3, C, R, R).

        ``jitter`` (default: ``self.training``) randomises the stratified depths and the importance
        quantiles; without it rendering is deterministic. (NVlabs jitters in evaluation too.)
        Returns features (B, N, C) in about [-1, 1], depth (B, N, 1), opacity = weights sum (B, N, 1).
        """
        jitter = self.training if jitter is None else jitter
        batch, n_rays, _ = origins.shape
        depths = self.stratified_depths(batch, n_rays, jitter, origins.device).to(origins.dtype)
        colors, densities = self.query(planes, decoder, origins, directions, depths)
        if self.depth_resolution_importance > 0:
            _, _, weights = composite(colors, densities, depths, self.white_back)
            fine = self.importance_depths(depths, weights, jitter)
            fine_colors, fine_densities = self.query(planes, decoder, origins, directions, fine)
            depths, order = torch.sort(torch.cat([depths, fine], dim=2), dim=2)
            colors = torch.cat([colors, fine_colors], dim=2)
            colors = colors.gather(2, order.expand(-1, -1, -1, colors.shape[-1]))
            densities = torch.cat([densities, fine_densities], dim=2).gather(2, order)
        features, depth, weights = composite(colors, densities, depths, self.white_back)
        return features, depth, weights.sum(dim=2)
