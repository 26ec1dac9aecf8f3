"""Tests of the deltaplane U-Net (talk3d_core.model.deltaplane): shapes, zero start, gradients to every token
encoder, token dropping, roll-out axis bookkeeping for both plane conventions, validation; the paper
network's parameter counts and pieces against the official code, the CPU network pinned to its checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math

import pytest
import torch

from talk3d_core.model.deltaplane import (
    PAPER_BEHAVIOUR,
    TOKEN_NAMES,
    AudioEncoder,
    ConditionalAffine,
    ConditioningTokens,
    DeltaplaneConfig,
    DeltaplaneNet,
    PlaneConv,
    blur_downsample2d,
    fit_opening_predictor,
    plane_cell_coordinates,
    project_plane,
    roll_out,
    sinusoidal_encoding,
    talk3d_position_table,
)
from talk3d_core.model.eg3d.config import PLANE_AXES
from talk3d_core.model.eg3d.layers import setup_filter
from talk3d_core.model.eg3d.renderer import sample_triplane

MEL_DIM, MEL_WINDOW = 320, 16  # the CPU pipeline's log-mel windows
# Behaviour tests run a tiny network on 3 x 4 x 16^2 planes; the sizes have their own tests.
TINY = {"widths": (8, 16, 32), "heads": 2, "head_dim": 8, "token_dim": 16}
TINY_PLANES = (2, 3, 4, 16, 16)
# The paper network at the same tiny size: its layout works on the planes' own 4 channels, and its
# GroupNorm(32) per plane needs a bottleneck width divisible by 32.
TINY_PAPER = {"widths": (4, 16, 32), "heads": 2, "head_dim": 8, "token_dim": 16}
PRESETS = {
    "cpu": lambda **kw: DeltaplaneConfig.cpu(**TINY, **kw),
    "paper": lambda **kw: DeltaplaneConfig.paper(**TINY_PAPER, **kw),
}


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
    assert net.position_table.shape == (3, 32 * 32, 256)  # a 32^2 bottleneck
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 256, 256), make_cond(1, config, audio_dim=44, audio_window=16))
    assert out.shape == (1, 3, 32, 256, 256)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("attention", ["convs", "radnerf"])
@pytest.mark.parametrize(("dim", "window", "frames"), [(320, 16, 8), (44, 8, 8), (7, 1, 1), (5, 3, 2)])
def test_audio_encoder_any_window(dim, window, frames, attention):
    encoder = AudioEncoder(dim, window, token_dim=24, frames=frames, attention=attention)
    out = encoder(torch.randn(3, frames, window, dim))
    assert out.shape == (3, 24)
    assert torch.isfinite(out).all()


def test_plane_conv_resampling_and_separate_planes():
    x = torch.randn(2, 3 * 4, 16, 16)
    assert PlaneConv(4, 8, slope=0.2, resample="down")(x).shape == (2, 24, 8, 8)
    assert PlaneConv(4, 8, slope=0.2, resample="up")(x).shape == (2, 24, 32, 32)
    conv = PlaneConv(4, 8, slope=0.2).eval()
    y = x.clone()
    y[:, :4] += 1.0  # change plane 0 only
    a, b = conv(x), conv(y)
    assert not torch.allclose(a[:, :8], b[:, :8])
    assert torch.equal(a[:, 8:], b[:, 8:])  # planes 1 and 2 have their own weights


# ---------------------------------------------------------------------------------------------------
# Zero start, gradients, token dropping


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_zero_at_init_and_nonzero_after_one_step(preset):
    config = PRESETS[preset]()
    net = make_net(config)
    planes, cond = torch.randn(TINY_PLANES), make_cond(2, config)
    with torch.no_grad():
        assert torch.count_nonzero(net.eval()(planes, cond)) == 0
    out = net.train()(planes, cond)
    assert torch.count_nonzero(out) == 0
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    (out - torch.randn_like(out)).square().mean().backward()
    optimiser.step()
    assert torch.count_nonzero(net(planes, cond)) > 0


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("decoder_conditioning", [False, True])
@pytest.mark.parametrize("conditioning", ["attention", "affine"])
def test_gradient_reaches_every_token_encoder(conditioning, decoder_conditioning, preset):
    config = PRESETS[preset](conditioning=conditioning, decoder_conditioning=decoder_conditioning)
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


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("conditioning", ["attention", "affine"])
def test_decoder_conditioning_carries_the_tokens_past_the_bottleneck(conditioning, preset):
    """With the bottleneck's token path cut, the audio still changes dP through the decoder levels
    (and only through them: without decoder_conditioning it no longer does)."""
    changes = {}
    for decoder_conditioning in (False, True):
        config = PRESETS[preset](conditioning=conditioning, decoder_conditioning=decoder_conditioning)
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


def test_opening_token_reads_the_footage_in_training_and_the_audio_otherwise():
    config = DeltaplaneConfig.cpu(**TINY, tokens=("audio", "opening"), audio_frames=4, opening_frames=2)
    tokens = ConditioningTokens(config, audio_dim=MEL_DIM, audio_window=MEL_WINDOW)
    cond = make_cond(3, config) | {"opening": torch.tensor([0.5, 3.0, 8.0])}
    tokens.train()
    taught = tokens(cond)[:, 1]
    assert not torch.allclose(taught, tokens({**cond, "opening": torch.tensor([8.0, 3.0, 0.5])})[:, 1])
    unknown = tokens({k: v for k, v in cond.items() if k != "opening"})[:, 1]  # none given: predicted
    tokens.eval()  # eval mode: the footage's opening is never read, the prediction from the audio is
    predicted = tokens(cond)[:, 1]
    assert torch.equal(predicted, tokens({**cond, "opening": torch.zeros(3)})[:, 1])
    assert not torch.allclose(predicted, taught) and torch.equal(predicted, unknown)
    # The predictor reads only the opening_frames central frames of the audio span (S // 2 - 1, S // 2).
    outer = dict(cond, audio=cond["audio"].clone())
    outer["audio"][:, [0, 3]] += 1.0
    assert torch.equal(tokens(outer)[:, 1], predicted)
    inner = dict(cond, audio=cond["audio"].clone())
    inner["audio"][:, 2] += 1.0
    assert not torch.allclose(tokens(inner)[:, 1], predicted)
    # No audio drops the opening too: it is the audio's reading.
    assert torch.count_nonzero(tokens(cond, drop=("audio",), batch_size=3)) == 0
    with pytest.raises(ValueError, match=r"cond\['opening'\] must be \(B,\)"):
        tokens.train()(cond | {"opening": torch.zeros(2)})


def test_opening_predictor_fits_the_openings_and_is_frozen():
    config = DeltaplaneConfig.cpu(**TINY, tokens=("audio", "opening"), audio_frames=2, opening_frames=2)
    tokens = ConditioningTokens(config, audio_dim=8, audio_window=4)
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(64, 2, 4, 8, generator=g)
    opening = 4.0 + 2.0 * audio[:, 1, :, 0].mean(dim=1) + 0.1 * torch.randn(64, generator=g)  # px
    torch.manual_seed(0)
    losses = fit_opening_predictor(tokens.opening, audio, opening, steps=300)
    assert sum(losses[-30:]) < 0.3 * sum(losses[:30])
    assert tokens.opening.mean == pytest.approx(float(opening.mean())) and tokens.opening.std > 0
    with torch.no_grad():
        predicted = tokens.opening.predict(audio)
    assert torch.corrcoef(torch.stack([predicted, opening]))[0, 1] > 0.8  # px, not standardised
    assert not any(p.requires_grad for p in tokens.opening.predictor.parameters())
    with pytest.raises(ValueError, match="3 audio spans for 2 openings"):
        fit_opening_predictor(tokens.opening, audio[:3], opening[:2], steps=1)


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
    affine = ConditionalAffine(dim=8, num_tokens=5, token_dim=4, slope=0.2)
    x = torch.randn(2, 10, 8)
    assert torch.equal(affine(x, torch.randn(2, 5, 4)), x)


# ---------------------------------------------------------------------------------------------------
# The paper network against the official code (cvlab-kaist/Talk3D training/networks_diffusers.py,
# talk3d_helper.py; counts from instantiating those modules)

OFFICIAL_TRANSFORMER = 7_629_568  # Transformer2DModel(256, 256, n_layers=2): "7.63 M", with its 3D PE table
OFFICIAL_PE_TABLE = 1024 * 768  # that table, a Parameter built with requires_grad=False
OFFICIAL_DOWN, OFFICIAL_UP = 5_814_144, 4_068_288  # Synthesis_Distributed_Down / _Up
# "16.73 M": Deltaplane_Predictor's parameters requiring grad when built, i.e. without the PE table
# (the trainer then switches it on too) and without the token encoders.
OFFICIAL_UNET_WITHOUT_TABLE = 16_725_568
# AudioNet(44, 64) + AudioAttNet(64), Blinkencoder(16, 64, 3), Cameraencoder(16, 64, 3), the null token.
OFFICIAL_TOKENS = {"audio": 34_240 + 3_685, "eye": 10_496, "rotation": 12_416, "ldm": 13_376, "null": 64}


def count(*modules) -> int:
    return sum(
        p.numel() for m in modules for p in ([m] if isinstance(m, torch.nn.Parameter) else m.parameters())
    )


def test_paper_parameter_counts_match_the_official_network():
    torch.manual_seed(0)
    net = DeltaplaneNet(
        DeltaplaneConfig.paper(),
        plane_channels=32,
        plane_resolution=256,
        plane_axes="original",
        audio_dim=44,  # wav2vec2 "esperanto" logits in 16-frame windows, the official audio features
        audio_window=16,
    )
    bottleneck = count(net.bottleneck_norm, net.bottleneck_proj_in, net.position_table, net.blocks)
    assert net.position_table.numel() == OFFICIAL_PE_TABLE
    assert bottleneck == OFFICIAL_TRANSFORMER and abs(bottleneck / 7.63e6 - 1) < 0.01
    assert count(net.encoder) == OFFICIAL_DOWN and count(net.decoder) == OFFICIAL_UP
    unet = count(net) - count(net.tokens)
    assert unet == OFFICIAL_DOWN + OFFICIAL_UP + OFFICIAL_TRANSFORMER
    assert (
        unet - OFFICIAL_PE_TABLE == OFFICIAL_UNET_WITHOUT_TABLE
        and abs(unet - OFFICIAL_PE_TABLE - 16.73e6) < 0.01 * 16.73e6
    )
    assert {name: count(getattr(net.tokens, name)) for name in TOKEN_NAMES} == OFFICIAL_TOKENS
    assert all(p.requires_grad for p in net.parameters())  # the PE table trains, as on a fresh official run


def test_talk3d_position_table_is_the_official_3d_encoding():
    r, dim = 6, 32
    table = talk3d_position_table(r, dim)
    assert table.shape == (3, r * r, dim)
    c = 2 * math.ceil(dim / 6)  # 12 channels a grid dimension, the third cut to dim - 2c = 8
    freqs = 1.0 / 10000 ** (torch.arange(0, c, 2).float() / c)

    def enc(i):  # interleaved sin, cos of an integer grid index
        return torch.stack([(i * freqs).sin(), (i * freqs).cos()], dim=-1).flatten()

    centre = (enc(r // 2 - 1) + enc(r // 2)) / 2
    h, w = 4, 1
    cell = table[:, h * r + w].reshape(3, dim)
    # Plane 0: rows on grid dim 0, columns on dim 1; plane 1: dims 1, 2; plane 2: dims 0, 2.
    torch.testing.assert_close(cell[0], torch.cat([enc(h), enc(w), centre])[:dim])
    torch.testing.assert_close(cell[1], torch.cat([centre, enc(h), enc(w)])[:dim])
    torch.testing.assert_close(cell[2], torch.cat([enc(h), centre, enc(w)])[:dim])
    assert torch.equal(
        talk3d_position_table(1, 12)[:, 0, :4], torch.tensor([0.0, 1.0, 0.0, 1.0]).expand(3, 4)
    )


def test_paper_bottleneck_input_residual_and_position_table():
    """GroupNorm + Linear in, the table before every block, a residual around it all: with the blocks
    passing their input through, the bottleneck returns x + proj(GN(x)) + N_A x table."""

    class PassThrough(torch.nn.Module):
        def forward(self, x, tokens):
            return x

    net = make_net(PRESETS["paper"](attention_blocks=3)).eval()
    perturb(net)
    net.blocks = torch.nn.ModuleList(PassThrough() for _ in range(3))
    x, tokens = torch.randn(2, 3 * 32, 4, 4), torch.randn(2, 5, 16)
    cells = net.bottleneck_proj_in(net.bottleneck_norm(x)).reshape(2, 3, 32, 16).transpose(2, 3)
    expected = x + (cells + 3 * net.position_table).transpose(2, 3).reshape(x.shape)
    with torch.no_grad():
        torch.testing.assert_close(net._bottleneck(x, tokens), expected)
        # GroupNorm per plane: shifting one plane by a constant shifts the output by that constant only.
        shift = torch.zeros_like(x)
        shift[:, 32:64] = 3.0
        torch.testing.assert_close(net._bottleneck(x + shift, tokens), expected + shift, atol=1e-4, rtol=0)


def test_paper_bottleneck_weights_are_per_plane():
    """Self-attention and feed-forward act within a plane and the cross-attention only reads the tokens, so
    with per-plane weights moving plane 1's weights leaves plane 0's bottleneck output unchanged."""
    outputs = {}
    for plane_weights in ("shared", "per_plane"):
        net = make_net(PRESETS["paper"](plane_weights=plane_weights)).eval()
        perturb(net)
        x, tokens = torch.randn(2, 3 * 32, 4, 4), torch.randn(2, 5, 16)
        with torch.no_grad():
            before = net._bottleneck(x, tokens)
            block = net.blocks[0]
            moved = block.feed_forward[1] if plane_weights == "per_plane" else block.feed_forward
            moved.proj_out.bias.add_(1.0)
            after = net._bottleneck(x, tokens)
        outputs[plane_weights] = [
            (after - before)[:, p * 32 : (p + 1) * 32].abs().max().item() for p in range(3)
        ]
    assert outputs["per_plane"][0] == 0.0 and outputs["per_plane"][2] == 0.0 and outputs["per_plane"][1] > 0.1
    assert min(outputs["shared"]) > 0.1


def test_paper_output_head_is_bn_leaky_relu_upsampling():
    """The last up stage ends in BatchNorm, LeakyReLU(0.01) and 2x upsampling: no output conv, and
    the stage's convs run at half the plane resolution."""
    config = PRESETS["paper"]()
    net = make_net(config)
    assert net.output_conv is None and net.input_conv is None
    head = net.decoder[-1]
    assert torch.count_nonzero(head.conv.conv.weight) == 0 and torch.count_nonzero(head.conv.conv.bias) == 0
    assert all(m.slope == 0.01 for m in net.modules() if isinstance(m, PlaneConv))
    seen = {}
    head.conv.register_forward_hook(lambda module, args, out: seen.update(pre=args[0], out=out))
    perturb(net)
    net.eval()
    with torch.no_grad():
        dp = net(torch.randn(TINY_PLANES), make_cond(2, config))
        assert seen["out"].shape[-1] == 8  # convs at R / 2
        bn = head.conv.norm(head.conv.conv(seen["pre"]))
        torch.testing.assert_close(seen["out"], torch.nn.functional.leaky_relu(bn, 0.01))
    assert dp.shape == TINY_PLANES


def test_blur_downsample_keeps_a_constant_inside_and_halves_the_size():
    x = torch.ones(1, 2, 8, 8)
    y = blur_downsample2d(x, setup_filter())
    assert y.shape == (1, 2, 4, 4)
    torch.testing.assert_close(
        y[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2)
    )  # the zero padding shows at the border


def test_paper_token_encoders():
    """NeRF encodings of the raw values (rotation as pitch, yaw, roll degrees) through 3-layer ReLU MLPs;
    RAD-NeRF's Linear(8, 8) before the audio softmax; a unit-normal null token."""
    config = PRESETS["paper"]()
    torch.manual_seed(0)
    tokens = ConditioningTokens(config, audio_dim=MEL_DIM, audio_window=MEL_WINDOW).eval()
    cond = make_cond(3, config)
    t = tokens(cond)
    rotation = config.tokens.index("rotation")
    yaw, pitch, roll = cond["rotation"].unbind(-1)
    encoded = sinusoidal_encoding(torch.stack([pitch, yaw, roll], -1), config.rotation_frequencies, 1.0)
    torch.testing.assert_close(t[:, rotation], tokens.rotation.mlp(encoded))
    eye = config.tokens.index("eye")
    torch.testing.assert_close(t[:, eye], tokens.eye.mlp(sinusoidal_encoding(cond["eye"][:, None], 16, 1.0)))
    for name in ("eye", "rotation", "ldm"):
        layers = list(getattr(tokens, name).mlp)
        assert [type(m) for m in layers] == [torch.nn.Linear, torch.nn.ReLU] * 2 + [torch.nn.Linear]
    assert (
        tokens.audio.frame_mixing.in_features == tokens.audio.frame_mixing.out_features == config.audio_frames
    )
    assert isinstance(tokens.audio.frame_attention[-1], torch.nn.LeakyReLU)
    assert 0.6 < tokens.null.std().item() < 1.5  # randn, not 0.02 * randn
    cpu = ConditioningTokens(DeltaplaneConfig.cpu(**TINY), audio_dim=MEL_DIM, audio_window=MEL_WINDOW)
    assert cpu.audio.frame_mixing is None and cpu.null.std().item() < 0.05


@pytest.mark.parametrize(("distribution", "inside"), [("uniform", True), ("gaussian", False)])
def test_eye_noise_distribution(distribution, inside):
    config = DeltaplaneConfig.cpu(**TINY, eye_noise=0.05, eye_noise_distribution=distribution)
    tokens = ConditioningTokens(config, audio_dim=MEL_DIM, audio_window=MEL_WINDOW)
    torch.manual_seed(0)
    noise = tokens._eye_noise(torch.ones(10_000))
    assert (noise.abs().max().item() <= 0.05) == inside
    assert noise.abs().max().item() > 0.045


# ---------------------------------------------------------------------------------------------------
# The CPU network pinned: results/german's deltaplane.pt and other CPU checkpoints must still load


# Keys and shapes of DeltaplaneConfig.cpu() on the CPU preset's planes (3 x 16 x 64^2, "fixed" axes) and
# audio (4-frame windows of 320 mel features); the sum of |parameters| at seed 0 pins the init order.
CPU_NET = {"parameters": 4_157_245, "keys": 253, "init_abs_sum": 78975.06028190287}
CPU_KEYS_SHA256 = "2bd428f473ff9d39f90172b5c82b767975284e6f72e1992d2fd0c52adafc0ae6"
# A perturbed tiny CPU network's output for fixed inputs (sum, sum of |.|), as before the paper switches.
CPU_TINY_OUTPUT = (41.825527230103035, 575.925260947377)


def test_cpu_network_is_pinned():
    torch.manual_seed(0)
    net = DeltaplaneNet(
        DeltaplaneConfig.cpu(),
        plane_channels=16,
        plane_resolution=64,
        plane_axes="fixed",
        audio_dim=320,
        audio_window=4,
    )
    state = net.state_dict()
    listing = "\n".join(f"{k} {tuple(v.shape)}" for k, v in state.items())
    assert count(net) == CPU_NET["parameters"] and len(state) == CPU_NET["keys"]
    assert hashlib.sha256(listing.encode()).hexdigest() == CPU_KEYS_SHA256, listing
    init_abs_sum = sum(p.double().abs().sum().item() for p in net.parameters())
    assert init_abs_sum == pytest.approx(CPU_NET["init_abs_sum"], rel=1e-9)

    config = DeltaplaneConfig.cpu(**TINY)
    tiny = make_net(config, axes="fixed")
    perturb(tiny)
    g = torch.Generator().manual_seed(1)
    cond = {
        "audio": torch.randn(2, 8, MEL_WINDOW, MEL_DIM, generator=g),
        "eye": 2 * torch.rand(2, generator=g),
        "rotation": 20 * torch.randn(2, 3, generator=g),
        "ldm": 2 * torch.rand(2, 6, generator=g) - 1,
    }
    planes = torch.randn(TINY_PLANES, generator=g)
    with torch.no_grad():
        out = tiny.eval()(planes, cond).double()
    assert (out.sum().item(), out.abs().sum().item()) == pytest.approx(CPU_TINY_OUTPUT, rel=1e-5)


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
        ({"unet_layout": "resnet"}, "unet_layout"),
        ({"plane_weights": "tied"}, "plane_weights"),
        ({"bottleneck_input": "conv"}, "bottleneck_input"),
        ({"position_encoding": "learned"}, "position_encoding"),
        ({"audio_attention": "mean"}, "audio_attention"),
        ({"token_encoders": "mlp"}, "token_encoders"),
        ({"eye_noise_distribution": "laplace"}, "eye_noise_distribution"),
        ({"lrelu_slope": -0.1}, "lrelu_slope"),
        ({"null_std": "1"}, "null_std"),
        ({"widths": (32, 64, 128, 240)}, "divisible by 32"),
        ({"tokens": ("eye", "opening")}, "enable the audio token too"),
        ({"tokens": ("audio", "opening"), "audio_frames": 2, "opening_frames": 4}, "opening_frames=4"),
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
    assert all(getattr(paper, k) == v for k, v in PAPER_BEHAVIOUR.items())
    assert DeltaplaneConfig.paper(unet_layout="levels").unet_layout == "levels"  # overrides win
    # A checkpoint from before the behaviour switches (its config has none of them) is the CPU network.
    old = {k: v for k, v in dataclasses.asdict(DeltaplaneConfig.cpu()).items() if k not in PAPER_BEHAVIOUR}
    assert DeltaplaneConfig.from_dict(old) == DeltaplaneConfig.cpu()
    with pytest.raises(ValueError, match="unknown keys"):
        DeltaplaneConfig.from_dict({"width": (8, 16)})


def test_net_and_cond_validation():
    config = DeltaplaneConfig.cpu(**TINY)
    with pytest.raises(ValueError, match="plane_axes"):
        make_net(config, axes="buggy")
    with pytest.raises(ValueError, match="multiple of 2"):
        make_net(config, resolution=18)
    with pytest.raises(ValueError, match=r"widths\[0\]=4 must equal plane_channels=8"):
        make_net(PRESETS["paper"](), channels=8)
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
