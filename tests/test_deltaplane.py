"""Tests of the deltaplane U-Net (talk3d_core.model.deltaplane): shapes, zero start, gradients to every token
encoder, token dropping, roll-out axis bookkeeping for both plane conventions, validation."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from talk3d_core.model.deltaplane import (
    TOKEN_NAMES,
    AudioEncoder,
    ConditionalAffine,
    ConditioningTokens,
    DeltaplaneConfig,
    DeltaplaneNet,
    PlaneConv,
    plane_cell_coordinates,
    project_plane,
    roll_out,
    sinusoidal_encoding,
)
from talk3d_core.model.eg3d.config import PLANE_AXES
from talk3d_core.model.eg3d.renderer import sample_triplane

MEL_DIM, MEL_WINDOW = 320, 16  # the CPU pipeline's log-mel windows
# Behaviour tests run a tiny network on 3 x 4 x 16^2 planes; the sizes have their own tests.
TINY = {"widths": (8, 16, 32), "heads": 2, "head_dim": 8, "token_dim": 16}
TINY_PLANES = (2, 3, 4, 16, 16)


def make_cond(batch: int, config: DeltaplaneConfig, audio_dim: int = MEL_DIM, audio_window: int = MEL_WINDOW):
    g = torch.Generator().manual_seed(1)
    return {
        "audio": torch.randn(batch, config.audio_frames, audio_window, audio_dim, generator=g),
        "eye": 2 * torch.rand(batch, generator=g),
        "rotation": 20 * torch.randn(batch, 3, generator=g),
        "ldm": 2 * torch.rand(batch, 6, generator=g) - 1,
    }


def make_net(config: DeltaplaneConfig, *, channels: int = 4, resolution: int = 16, axes: str = "fixed"):
    torch.manual_seed(0)
    return DeltaplaneNet(
        config,
        plane_channels=channels,
        plane_resolution=resolution,
        plane_axes=axes,
        audio_dim=MEL_DIM,
        audio_window=MEL_WINDOW,
    )


def perturb(net: torch.nn.Module, std: float = 0.05) -> None:
    """Stand-in for training: move every parameter, the zero-initialised ones included."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("axes", sorted(PLANE_AXES))
def test_shapes_at_cpu_size(axes):
    config = DeltaplaneConfig.cpu()
    net = make_net(config, channels=16, resolution=64, axes=axes)
    planes = torch.randn(2, 3, 16, 64, 64)
    out = net(planes, make_cond(2, config))
    assert out.shape == planes.shape and out.dtype == planes.dtype
    assert net.tokens(make_cond(2, config)).shape == (2, len(TOKEN_NAMES), config.token_dim)


def test_paper_size_forward():
    config = DeltaplaneConfig.paper()
    torch.manual_seed(0)
    net = DeltaplaneNet(
        config, plane_channels=32, plane_resolution=256, plane_axes="fixed", audio_dim=44, audio_window=16
    ).eval()
    assert net.cell_encoding.shape[:2] == (3, 32 * 32)  # a 32^2 bottleneck
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 256, 256), make_cond(1, config, audio_dim=44, audio_window=16))
    assert out.shape == (1, 3, 32, 256, 256)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize(("dim", "window", "frames"), [(320, 16, 8), (44, 8, 8), (7, 1, 1), (5, 3, 2)])
def test_audio_encoder_any_window(dim, window, frames):
    encoder = AudioEncoder(dim, window, token_dim=24)
    out = encoder(torch.randn(3, frames, window, dim))
    assert out.shape == (3, 24)
    assert torch.isfinite(out).all()


def test_plane_conv_resampling_and_separate_planes():
    x = torch.randn(2, 3 * 4, 16, 16)
    assert PlaneConv(4, 8, resample="down")(x).shape == (2, 24, 8, 8)
    assert PlaneConv(4, 8, resample="up")(x).shape == (2, 24, 32, 32)
    conv = PlaneConv(4, 8).eval()
    y = x.clone()
    y[:, :4] += 1.0  # change plane 0 only
    a, b = conv(x), conv(y)
    assert not torch.allclose(a[:, :8], b[:, :8])
    assert torch.equal(a[:, 8:], b[:, 8:])  # planes 1 and 2 have their own weights


# ---------------------------------------------------------------------------------------------------
# Zero start, gradients, token dropping


def test_zero_at_init_and_nonzero_after_one_step():
    config = DeltaplaneConfig.cpu(**TINY)
    net = make_net(config)
    planes, cond = torch.randn(TINY_PLANES), make_cond(2, config)
    out = net(planes, cond)
    assert torch.count_nonzero(out) == 0
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    (out - torch.randn_like(out)).square().mean().backward()
    optimiser.step()
    assert torch.count_nonzero(net(planes, cond)) > 0


@pytest.mark.parametrize("decoder_conditioning", [False, True])
@pytest.mark.parametrize("conditioning", ["attention", "affine"])
def test_gradient_reaches_every_token_encoder(conditioning, decoder_conditioning):
    config = DeltaplaneConfig.cpu(
        **TINY, conditioning=conditioning, decoder_conditioning=decoder_conditioning
    )
    net = make_net(config)
    perturb(net)
    out = net(torch.randn(TINY_PLANES), make_cond(2, config))
    out.square().mean().backward()
    if decoder_conditioning:
        for level, module in enumerate(net.decoder_conditioning):
            for pname, p in module.named_parameters():
                assert p.grad is not None and torch.count_nonzero(p.grad) > 0, f"decoder {level}: {pname}"
    else:
        assert net.decoder_conditioning is None
    for name in TOKEN_NAMES:
        encoder = getattr(net.tokens, name)
        params = [encoder] if isinstance(encoder, torch.nn.Parameter) else list(encoder.named_parameters())
        for param in params:
            pname, p = param if isinstance(param, tuple) else (name, param)
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, f"no gradient to {name}.{pname}"


@pytest.mark.parametrize("conditioning", ["attention", "affine"])
def test_decoder_conditioning_carries_the_tokens_past_the_bottleneck(conditioning):
    """With the bottleneck's token path cut, the audio still changes dP through the decoder levels
    (and only through them: without decoder_conditioning it no longer does)."""
    changes = {}
    for decoder_conditioning in (False, True):
        config = DeltaplaneConfig.cpu(
            **TINY, conditioning=conditioning, decoder_conditioning=decoder_conditioning
        )
        net = make_net(config).eval()
        perturb(net)
        with torch.no_grad():
            for block in net.blocks:  # cut the bottleneck's conditioning
                if conditioning == "attention":
                    block.conditioning.cross_attention.to_out.weight.zero_()
                    block.conditioning.cross_attention.to_out.bias.zero_()
                else:
                    block.conditioning.affine.mlp[-1].weight.zero_()
                    block.conditioning.affine.mlp[-1].bias.zero_()
            planes, cond = torch.randn(TINY_PLANES), make_cond(2, config)
            other = cond | {"audio": torch.randn_like(cond["audio"])}
            changes[decoder_conditioning] = (net(planes, cond) - net(planes, other)).abs().max().item()
    assert changes[False] == 0.0
    assert changes[True] > 1e-4


def test_drop_audio_changes_output_and_needs_no_audio():
    config = DeltaplaneConfig.cpu(**TINY)
    net = make_net(config)
    perturb(net)
    net.eval()
    planes, cond = torch.randn(TINY_PLANES), make_cond(2, config)
    with torch.no_grad():
        full = net(planes, cond)
        dropped = net(planes, cond, drop=("audio",))
        without = net(planes, {k: v for k, v in cond.items() if k != "audio"}, drop=("audio",))
    assert not torch.allclose(full, dropped)
    assert torch.equal(dropped, without)


def test_config_without_audio_needs_no_audio_entry():
    config = DeltaplaneConfig.cpu(**TINY, tokens=("eye", "rotation", "null"))
    net = make_net(config)
    assert net.tokens.audio is None and net.tokens.ldm is None
    cond = {k: v for k, v in make_cond(2, config).items() if k in ("eye", "rotation")}
    assert net(torch.randn(TINY_PLANES), cond).shape == TINY_PLANES
    assert net.tokens(cond).shape == (2, 3, config.token_dim)


def test_tokens_order_drop_and_eye_noise():
    config = DeltaplaneConfig.cpu(**TINY, tokens=("null", "eye", "ldm"))
    tokens = ConditioningTokens(config, audio_dim=MEL_DIM, audio_window=MEL_WINDOW)
    cond = make_cond(3, config)
    tokens.eval()
    t = tokens(cond)
    assert t.shape == (3, 3, config.token_dim)
    assert torch.equal(t[:, 0], tokens.null.expand(3, -1))
    assert torch.equal(t, tokens(cond))  # eval: no eye noise
    dropped = tokens(cond, drop=("eye",))
    assert torch.count_nonzero(dropped[:, 1]) == 0 and torch.equal(dropped[:, 2], t[:, 2])
    tokens.train()
    a, b = tokens(cond), tokens(cond)
    assert not torch.equal(a[:, 1], b[:, 1]) and torch.equal(a[:, 2], b[:, 2])  # noise on the eye only
    # Eye values are clipped to [0, 2]
    tokens.eval()
    clipped = tokens({**cond, "eye": torch.tensor([-1.0, 2.0, 5.0])})
    reference = tokens({**cond, "eye": torch.tensor([0.0, 2.0, 2.0])})
    assert torch.equal(clipped, reference)


def test_conditional_affine_starts_as_identity():
    affine = ConditionalAffine(dim=8, num_tokens=5, token_dim=4)
    x = torch.randn(2, 10, 8)
    assert torch.equal(affine(x, torch.randn(2, 5, 4)), x)


# ---------------------------------------------------------------------------------------------------
# Roll-out axis bookkeeping


def world_of_cell(axes: tuple[int, int], h: int, w: int) -> dict[int, int]:
    return {axes[0]: w, axes[1]: h}  # u -> width, v -> height


def reference_roll_out(planes: torch.Tensor, plane_axes) -> torch.Tensor:
    """Brute force: plane j's contribution to cell (h, w) of plane i is the mean of plane j's cells whose
    world coordinates agree with the cell's on the axes the two planes share."""
    b, _, c, r, _ = planes.shape
    out = torch.zeros(b, 3, 3 * c, r, r)
    for i, axes_i in enumerate(plane_axes):
        order = [i] + [j for j in range(3) if j != i]
        for slot, j in enumerate(order):
            shared = set(axes_i) & set(plane_axes[j])
            for h, w in itertools.product(range(r), repeat=2):
                world = world_of_cell(axes_i, h, w)
                cells = [
                    planes[:, j, :, hj, wj]
                    for hj, wj in itertools.product(range(r), repeat=2)
                    if all(world_of_cell(plane_axes[j], hj, wj)[a] == world[a] for a in shared)
                ]
                out[:, i, slot * c : (slot + 1) * c, h, w] = torch.stack(cells).mean(0)
    return out


@pytest.mark.parametrize("axes", sorted(PLANE_AXES))
def test_roll_out_matches_brute_force(axes):
    planes = torch.randn(2, 3, 2, 4, 4)
    expected = reference_roll_out(planes, PLANE_AXES[axes])
    torch.testing.assert_close(roll_out(planes, PLANE_AXES[axes]), expected)


@pytest.mark.parametrize("axes", sorted(PLANE_AXES))
def test_roll_out_profile_lands_on_the_shared_world_axis(axes):
    """A plane j varying only along a shared world axis appears in plane i as a profile along that same
    axis, where the renderer's sampler (sample_triplane) reads it at plane i's cell centres."""
    plane_axes = PLANE_AXES[axes]
    r = 6
    profile = torch.arange(1.0, r + 1) ** 2  # distinct, not symmetric
    cells = plane_cell_coordinates(r, plane_axes)  # (3, r^2, 3), world coordinates in [-1, 1]
    for i, j in itertools.permutations(range(3), 2):
        for axis in set(plane_axes[i]) & set(plane_axes[j]):
            planes = torch.zeros(1, 3, 1, r, r)
            # Plane j's value = profile[index along the world axis], whatever its other axis.
            planes[0, j, 0] = profile[None, :] if plane_axes[j][0] == axis else profile[:, None]
            slot = 1 + [k for k in range(3) if k != i].index(j)
            seen = roll_out(planes, plane_axes)[0, i, slot]
            expected = profile[None, :] if plane_axes[i][0] == axis else profile[:, None]
            assert torch.equal(seen, expected.expand(r, r)), f"{axes}: plane {j} -> plane {i}, axis {axis}"
            # The same values, read by the renderer at plane i's cell centres (box_warp 2: world = grid).
            sampled = sample_triplane(planes, cells[i][None], plane_axes, box_warp=2.0)[0, j, :, 0]
            torch.testing.assert_close(sampled.reshape(r, r), seen)


def test_project_plane_transposes_a_plane_with_both_axes_shared():
    x = torch.randn(2, 5, 5)
    assert torch.equal(project_plane(x, (0, 2), (2, 0)), x.transpose(-1, -2))
    assert torch.equal(project_plane(x, (0, 1), (0, 1)), x)
    assert project_plane(x, (0, 1), (0, 2)).shape == (2, 1, 5)  # x along width, y averaged out
    assert project_plane(x, (2, 1), (0, 1)).shape == (2, 5, 1)  # y along height, z averaged out


def test_cell_coordinates_and_encoding():
    coords = plane_cell_coordinates(4, PLANE_AXES["fixed"])
    # Plane 2 (ZY) cell (h=0, w=3): z = u = (3 + 0.5) / 4 * 2 - 1, y = v = -0.75, x = 0.
    torch.testing.assert_close(coords[2, 3], torch.tensor([0.0, -0.75, 0.75]))
    enc = sinusoidal_encoding(torch.tensor([[0.5, -1.0]]), frequencies=2, scale=math.pi)
    expected = [0.5, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0, 1.0]  # x, sin(pi x), sin(2 pi x), cos...
    torch.testing.assert_close(enc[0], torch.tensor(expected), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tokens": ("audio", "lips")}, "unknown tokens"),
        ({"tokens": ()}, "tokens is empty"),
        ({"tokens": ("eye", "eye")}, "more than once"),
        ({"widths": (32,)}, "at least 2 levels"),
        ({"widths": (32, 0)}, "positive integers"),
        ({"conditioning": "film"}, "conditioning"),
        ({"heads": 0}, "heads"),
        ({"attention_blocks": 0}, "attention_blocks"),
        ({"eye_noise": -0.1}, "eye_noise"),
        ({"decoder_conditioning": "yes"}, "decoder_conditioning"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        DeltaplaneConfig.paper(**overrides)


def test_config_presets_and_from_dict():
    paper = DeltaplaneConfig.paper()
    assert paper.widths == (32, 64, 128, 256) and paper.heads == 4 and paper.head_dim == 64
    assert DeltaplaneConfig.cpu().widths == (16, 32, 64, 128)
    # The paper conditions the bottleneck alone; the CPU preset conditions the decoder levels too.
    assert not paper.decoder_conditioning and DeltaplaneConfig.cpu().decoder_conditioning
    assert not DeltaplaneConfig.from_dict({"widths": [8, 16]}).decoder_conditioning  # older checkpoints
    config = DeltaplaneConfig.from_dict({"widths": [8, 16], "tokens": ["audio", "null"]})
    assert config.widths == (8, 16) and config.tokens == ("audio", "null")
    assert DeltaplaneConfig.from_dict(dataclasses.asdict(paper)) == paper
    with pytest.raises(ValueError, match="unknown keys"):
        DeltaplaneConfig.from_dict({"width": (8, 16)})


def test_net_and_cond_validation():
    config = DeltaplaneConfig.cpu(**TINY)
    with pytest.raises(ValueError, match="plane_axes"):
        make_net(config, axes="buggy")
    with pytest.raises(ValueError, match="multiple of 2"):
        make_net(config, resolution=18)
    net = make_net(config)
    cond = make_cond(2, config)
    with pytest.raises(ValueError, match=r"planes must be \(B, 3, 4, 16, 16\)"):
        net(torch.randn(2, 3, 4, 32, 32), cond)
    with pytest.raises(KeyError, match="no 'rotation' entry"):
        net(torch.randn(TINY_PLANES), {k: v for k, v in cond.items() if k != "rotation"})
    with pytest.raises(ValueError, match=r"cond\['audio'\] must be"):
        net(torch.randn(TINY_PLANES), {**cond, "audio": cond["audio"][:, :4]})
    with pytest.raises(ValueError, match="batch size"):
        net(torch.randn(1, 3, 4, 16, 16), cond)
    with pytest.raises(ValueError, match="unknown tokens"):
        net(torch.randn(TINY_PLANES), cond, drop=("mouth",))
