"""EG3D tri-plane generator: shapes, state-dict names, sampling conventions, rendering, gradients."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from torch import nn

from talk3d_core.camera import EG3D_FOCAL, eg3d_camera
from talk3d_core.model.eg3d import (
    PLANE_AXES,
    GeneratorConfig,
    ImportanceRenderer,
    TriPlaneGenerator,
    camera_rays,
    composite,
    sample_triplane,
)
from talk3d_core.model.eg3d.layers import (
    SynthesisLayer,
    modulated_conv2d,
    setup_filter,
    upfirdn2d,
    upsample2d,
)


def frontal_camera(batch: int = 1, yaw: float = 0.0) -> torch.Tensor:
    label = eg3d_camera(np.full(batch, yaw), np.zeros(batch), np.zeros(batch))
    return torch.tensor(label, dtype=torch.float32)


@pytest.fixture(scope="module")
def paper_generator() -> TriPlaneGenerator:
    torch.manual_seed(0)
    return TriPlaneGenerator(GeneratorConfig.paper()).eval()


def test_cpu_preset_shapes_and_modes():
    cfg = GeneratorConfig.cpu()
    torch.manual_seed(0)
    g = TriPlaneGenerator(cfg)
    z, c = torch.randn(2, cfg.z_dim), frontal_camera(2)
    ws = g.mapping(z, c)
    assert ws.shape == (2, cfg.num_ws, cfg.w_dim) == (2, 10, 128)
    planes = g.planes(ws)
    assert planes.shape == (2, 3, cfg.plane_channels, cfg.plane_resolution, cfg.plane_resolution)
    for mode in (True, False):
        g.train(mode)
        out = g.render(planes, c, ws)
        n, s = cfg.neural_rendering_resolution, cfg.image_resolution
        assert out["image"].shape == (2, 3, s, s)
        assert out["image_raw"].shape == (2, 3, n, n)
        assert out["image_depth"].shape == (2, 1, n, n)
        assert out["feature_image"].shape == (2, cfg.decoder_output_dim, n, n)
        assert out["weights_sum"].shape == (2, 1, n, n)
        assert all(torch.isfinite(v).all() for v in out.values())
        depth = out["image_depth"]
        assert depth.min() >= cfg.ray_start and depth.max() <= cfg.ray_end
    # Another neural resolution: the SR input is resized to what it expects.
    out = g.render(planes, c, ws, neural_rendering_resolution=16)
    assert out["image_raw"].shape[-1] == 16 and out["image"].shape[-1] == cfg.image_resolution


def test_paper_preset_size_names_and_one_forward(paper_generator):
    g, cfg = paper_generator, paper_generator.config
    assert cfg.num_ws == g.num_ws == 14
    n_params = sum(p.numel() for p in g.parameters())
    assert 29e6 < n_params < 33e6, n_params  # NVlabs' G: about 31 M
    keys = set(g.state_dict())
    expected = {
        "backbone.mapping.w_avg",
        "backbone.mapping.embed.weight",
        "backbone.mapping.fc0.weight",
        "backbone.mapping.fc1.bias",
        "backbone.synthesis.b4.const",
        "backbone.synthesis.b4.resample_filter",
        "backbone.synthesis.b4.conv1.affine.weight",
        "backbone.synthesis.b4.conv1.noise_const",
        "backbone.synthesis.b4.conv1.noise_strength",
        "backbone.synthesis.b4.torgb.weight",
        "backbone.synthesis.b256.conv0.resample_filter",
        "backbone.synthesis.b256.torgb.affine.bias",
        "decoder.net.0.weight",
        "decoder.net.2.bias",
        "superresolution.block0.conv0.weight",
        "superresolution.block1.torgb.weight",
    }
    assert expected <= keys, expected - keys
    assert "backbone.mapping.fc2.weight" not in keys and not any(k.startswith("renderer") for k in keys)
    sd = g.state_dict()
    assert sd["backbone.synthesis.b4.const"].shape == (512, 4, 4)
    assert sd["backbone.synthesis.b256.torgb.weight"].shape == (96, 128, 1, 1)
    assert sd["backbone.mapping.fc0.weight"].shape == (512, 1024)
    assert sd["backbone.mapping.embed.weight"].shape == (512, 25)
    assert sd["decoder.net.2.weight"].shape == (33, 64)
    assert sd["superresolution.block0.conv0.weight"].shape == (256, 32, 3, 3)
    assert sd["superresolution.block1.conv1.noise_const"].shape == (512, 512)
    assert sd["backbone.synthesis.b4.resample_filter"].shape == (4, 4)

    torch.manual_seed(1)
    with torch.no_grad():
        out = g(torch.randn(1, 512), frontal_camera())
    assert out["image"].shape == (1, 3, 512, 512)
    assert out["image_raw"].shape == out["image"].shape[:2] + (128, 128)
    assert out["feature_image"].shape == (1, 32, 128, 128)
    assert all(torch.isfinite(v).all() for v in out.values())


def coordinate_planes(resolution: int = 64) -> torch.Tensor:
    """Planes whose channel 0 holds the grid's u and channel 1 its v at every pixel centre."""
    centres = (torch.arange(resolution) + 0.5) / resolution * 2 - 1
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    plane = torch.stack([u, v])  # (2, R, R)
    return plane.expand(1, 3, 2, resolution, resolution).clone()


@pytest.mark.parametrize(
    "convention, expected", [("original", [(0, 1), (0, 2), (2, 0)]), ("fixed", [(0, 1), (0, 2), (2, 1)])]
)
def test_triplane_sampling_reads_the_right_coordinates(convention, expected):
    assert [tuple(a) for a in PLANE_AXES[convention]] == expected
    box_warp = 1.6
    points = (torch.rand(1, 200, 3) - 0.5) * box_warp * 0.9  # inside the box, away from the border
    features = sample_triplane(coordinate_planes(), points, PLANE_AXES[convention], box_warp)
    assert features.shape == (1, 3, 200, 2)
    scaled = points[0] * 2 / box_warp
    for k, (a, b) in enumerate(expected):
        torch.testing.assert_close(features[0, k, :, 0], scaled[:, a], atol=1e-5, rtol=0)
        torch.testing.assert_close(features[0, k, :, 1], scaled[:, b], atol=1e-5, rtol=0)
    # Outside the box: zeros.
    far = sample_triplane(
        coordinate_planes(), torch.full((1, 1, 3), box_warp), PLANE_AXES[convention], box_warp
    )
    assert torch.all(far == 0)


def test_composite_constant_density_matches_analytic():
    near, far, d = 2.25, 3.3, 2.0
    raw = math.log(math.expm1(d)) + 1  # softplus(raw - 1) = d
    depths = torch.linspace(near, far, 4001).reshape(1, 1, -1, 1)
    colors = torch.full_like(depths, 0.25)
    features, depth, weights = composite(colors, torch.full_like(depths, raw), depths)
    length = far - near
    opacity = 1 - math.exp(-d * length)
    mean_depth = near + 1 / d - length * math.exp(-d * length) / opacity
    assert weights.sum().item() == pytest.approx(opacity, abs=1e-4)
    assert depth.item() == pytest.approx(mean_depth, abs=1e-3)
    assert features.item() == pytest.approx(0.25 * opacity * 2 - 1, abs=1e-4)


class SlabDecoder(nn.Module):
    """Density from channel 0 summed over planes; colour from channel 1 (for renderer tests)."""

    def forward(self, features):
        summed = features.sum(dim=1)
        return torch.sigmoid(summed[..., 1:]), summed[..., :1]


def slab_planes(z_surface: float, box_warp: float = 1.0, resolution: int = 256) -> torch.Tensor:
    """Dense (raw sigma 1000: 1 / density = 0.001 world units) behind the plane z = z_surface
    (z < z_surface), empty (-1000) in front.

    Only the XZ plane (axes x, z -> grid u, v) varies, along v = 2 z / box_warp.
    """
    planes = torch.zeros(1, 3, 2, resolution, resolution)
    v = (torch.arange(resolution) + 0.5) / resolution * 2 - 1
    z = v * box_warp / 2
    planes[0, 1, 0] = torch.where(z < z_surface, 1000.0, -1000.0)[:, None].expand(resolution, resolution)
    planes[0, 1, 1] = 2.0
    return planes


def slab_renderer(coarse: int = 48, fine: int = 48) -> ImportanceRenderer:
    return ImportanceRenderer(
        PLANE_AXES["fixed"],
        depth_resolution=coarse,
        depth_resolution_importance=fine,
        ray_start=2.25,
        ray_end=3.3,
        box_warp=1.0,
    ).eval()


def test_rendering_a_slab_gives_its_depth_and_full_opacity():
    resolution = 16
    origins, directions = camera_rays(frontal_camera(), resolution)
    features, depth, opacity = slab_renderer()(slab_planes(0.0), SlabDecoder(), origins, directions)
    # Camera at z = 2.7 looking down -z: the surface z = 0 is 2.7 / |cos| away along each ray.
    expected = 2.7 / directions[0, :, 2].abs()
    torch.testing.assert_close(depth[0, :, 0], expected, atol=0.01, rtol=0)
    assert opacity.min() > 0.999
    torch.testing.assert_close(
        features[0, :, 0], torch.full_like(expected, torch.sigmoid(torch.tensor(2.0)) * 2 - 1)
    )


def test_empty_outside_box_removes_the_extruded_slab():
    """Planes are zero-padded outside the box, so a plane's content extends along its missing axis:
    the dense XZ plane still has density above the box (y = 0.6 > box_warp / 2) by NVlabs' rule, and
    none there with empty_outside_box."""
    renderer = slab_renderer()
    planes = slab_planes(0.0)
    planes[0, 1, 0] = 1000.0  # dense everywhere on the XZ plane: the slab fills the box in z
    points = torch.tensor([[[0.0, 0.6, 0.0], [0.0, 0.3, 0.0]]])  # above the box, inside it
    _, sigma = renderer.decode(planes, SlabDecoder(), points)
    assert sigma[0, 0, 0] > 100 and sigma[0, 1, 0] > 100
    renderer.empty_outside_box = True
    _, sigma = renderer.decode(planes, SlabDecoder(), points)
    assert sigma[0, 0, 0] < -1000 and sigma[0, 1, 0] > 100


def test_importance_samples_concentrate_near_the_surface():
    renderer = slab_renderer(coarse=24, fine=64)
    origins, directions = camera_rays(frontal_camera(), 8)
    depths = renderer.stratified_depths(1, origins.shape[1], jitter=False, device=origins.device)
    colors, densities = renderer.query(slab_planes(0.0), SlabDecoder(), origins, directions, depths)
    _, _, weights = composite(colors, densities, depths)
    fine = renderer.importance_depths(depths, weights, jitter=False)
    assert fine.shape == (1, 64, 64, 1)
    surface = (2.7 / directions[0, :, 2].abs()).reshape(1, -1, 1, 1)
    spacing = (3.3 - 2.25) / 23
    near_surface = ((fine - surface).abs() < 2 * spacing).float().mean().item()
    uniform_share = 4 * spacing / (3.3 - 2.25)
    assert near_surface > 0.8 > 3 * uniform_share
    # Random quantiles in training mode still land near the surface.
    torch.manual_seed(0)
    fine_random = renderer.importance_depths(depths, weights, jitter=True)
    assert ((fine_random - surface).abs() < 2 * spacing).float().mean().item() > 0.8


def test_camera_rays_follow_the_label():
    resolution = 8
    origins, directions = camera_rays(frontal_camera(), resolution)
    torch.testing.assert_close(origins[0, 0], torch.tensor([0.0, 0.0, 2.7]), atol=1e-5, rtol=0)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(1, resolution**2))
    # Row-major pixels, image x right = world +x, image y down = world -y for a frontal camera.
    first, last_of_row = directions[0, 0], directions[0, resolution - 1]
    assert first[0] < 0 < last_of_row[0] and first[1] > 0
    tan = (0.5 - 0.5 / resolution) / EG3D_FOCAL
    assert (first[0] / -first[2]).item() == pytest.approx(-tan, abs=1e-5)
    with pytest.raises(ValueError, match="camera labels"):
        camera_rays(torch.zeros(1, 16), resolution)


def test_gradients_reach_planes_and_ws():
    cfg = GeneratorConfig.cpu()
    torch.manual_seed(0)
    g = TriPlaneGenerator(cfg).train()
    c = frontal_camera()
    ws = g.mapping(torch.randn(1, cfg.z_dim), c).detach().requires_grad_(True)
    identity = g.planes(ws).detach()
    delta = torch.zeros_like(identity, requires_grad=True)  # Talk3D renders P_ID + dP_n
    out = g.render(identity + delta, c, ws)
    (out["image"].square().mean() + out["image_depth"].mean() + out["image_raw"].mean()).backward()
    for grad in (delta.grad, ws.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_eval_mode_is_deterministic():
    cfg = GeneratorConfig.cpu()
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        g = TriPlaneGenerator(cfg).eval()
        z = torch.randn(1, cfg.z_dim)
        with torch.no_grad():
            outputs.append((g(z, frontal_camera(yaw=20.0)), g(z, frontal_camera(yaw=20.0))))
    for key in ("image", "image_depth"):
        assert torch.equal(outputs[0][0][key], outputs[0][1][key])  # same model, called twice
        assert torch.equal(outputs[0][0][key], outputs[1][0][key])  # same seed, new model


def test_truncation_pulls_towards_w_avg():
    cfg = GeneratorConfig.cpu()
    g = TriPlaneGenerator(cfg)
    g.backbone.mapping.w_avg.normal_()
    z, c = torch.randn(2, cfg.z_dim), frontal_camera(2)
    ws = g.mapping(z, c, truncation_psi=0.0)
    torch.testing.assert_close(ws, g.backbone.mapping.w_avg.expand_as(ws))
    full, cut = g.mapping(z, c), g.mapping(z, c, truncation_psi=0.5, truncation_cutoff=4)
    torch.testing.assert_close(cut[:, 4:], full[:, 4:])
    torch.testing.assert_close(cut[:, :4], 0.5 * (full[:, :4] + g.backbone.mapping.w_avg))


def test_modulated_conv_matches_per_sample_plain_conv():
    torch.manual_seed(0)
    x, weight, styles = torch.randn(2, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(2, 4)
    f = setup_filter()
    for demodulate in (True, False):
        for up in (1, 2):
            got = modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, resample_filter=f)
            for i in range(2):
                w = weight * styles[i].reshape(1, 4, 1, 1)
                if demodulate:
                    w = w / w.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
                if up == 1:
                    want = F.conv2d(x[i : i + 1], w, padding=1)
                else:
                    # Transposed stride-2 conv = zero insertion + full conv with the flipped kernel.
                    zeros = torch.zeros(1, 4, 12, 12)
                    zeros[..., ::2, ::2] = x[i : i + 1]
                    full = F.conv2d(F.pad(zeros[..., :11, :11], [2, 2, 2, 2]), w.flip([2, 3]))
                    want = upfirdn2d(full, f, pad=(1, 1, 1, 1), gain=4.0)
                assert got.shape == (2, 5, 6 * up, 6 * up)
                torch.testing.assert_close(got[i : i + 1], want, atol=1e-4, rtol=1e-4)


def test_fir_upsampling_keeps_a_constant_image():
    up = upsample2d(torch.full((1, 2, 8, 8), 3.0), setup_filter())
    assert up.shape == (1, 2, 16, 16)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="plane_resolution"):
        GeneratorConfig.cpu(plane_resolution=48)
    with pytest.raises(ValueError, match="plane_axes"):
        GeneratorConfig.paper(plane_axes="zy")
    with pytest.raises(ValueError, match="ray_start"):
        GeneratorConfig.cpu(ray_start=3.5)
    assert GeneratorConfig.paper(plane_axes="fixed").plane_axes == "fixed"


def test_synthesis_layers_clamp_at_conv_clamp_as_nvlabs_does():
    """NVlabs clamps after the activation gain at conv_clamp itself (256), not at 256 * sqrt(2)."""
    layer = SynthesisLayer(4, 4, 8, 8, conv_clamp=256.0)
    with torch.no_grad():
        layer.bias.fill_(1e4)
        out = layer(torch.randn(1, 4, 8, 8), torch.randn(1, 8), noise_mode="none")
    assert float(out.max()) == 256.0


def test_super_resolution_stays_float32_off_cuda():
    """The float16 super-resolution of NVlabs' checkpoints runs only on CUDA; a CPU render is the same."""
    torch.manual_seed(0)
    fp16 = TriPlaneGenerator(TINY).eval()
    fp32 = TriPlaneGenerator(dataclasses.replace(TINY, sr_fp16=False)).eval()
    fp32.load_state_dict(fp16.state_dict())
    assert fp16.config.sr_fp16
    rgb, feats, ws = torch.randn(1, 3, 16, 16), torch.randn(1, 8, 16, 16), torch.randn(1, fp16.num_ws, 32)
    a = fp16.superresolution(rgb, feats, ws)
    b = fp32.superresolution(rgb, feats, ws)
    assert a.dtype == torch.float32 and torch.equal(a, b)
