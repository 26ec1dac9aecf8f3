"""GFPGAN v1.3 (train.sr gfpgan): the release file's names and shapes, its loader, the forward pass, and
the talking head that renders, trains, saves and resumes with it (tiny random networks)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import NET, REPO_ROOT, talking_disc, tiny_prior

from talk3d_core.model.gfpgan import GFPGAN, GFPGAN_FILE, GFPGAN_WEIGHTS, GFPGANConfig, load_gfpgan
from talk3d_core.model.talking_head import TalkingHead, load_talking_head
from talk3d_core.train import TrainConfig, train_deltaplane
from talk3d_core.util.config import load_schema, validate_config
from talk3d_core.util.weights import DEFAULT_MANIFEST, WeightsError, require

#: A GFPGAN at the tiny generator's 32 px, 1/16 of v1.3's widths.
SMALL = GFPGANConfig(out_size=32, narrow=1 / 16, style_dim=16, mlp_layers=2)
NO_EXTRAS = dict(weight_lpips=0.0, weight_identity=0.0, weight_sync=0.0)


def small_gfpgan(seed: int = 0) -> GFPGAN:
    """A random :data:`SMALL` net whose noise strengths are nonzero (the init leaves them 0)."""
    torch.manual_seed(seed)
    net = GFPGAN(SMALL)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".weight") and p.shape == (1,):
                p.fill_(0.1)
    return net


def v13_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of ``params_ema`` in GFPGANv1.3.pth, derived from TencentARC's GFPGANv1Clean(out_size
    512, channel_multiplier 2, different_w, sft_half, num_mlp 8) and StyleGAN2GeneratorClean."""
    res = [8, 16, 32, 64, 128, 256, 512]
    unet = {4: 256, 8: 256, 16: 256, 32: 256, 64: 256, 128: 128, 256: 64, 512: 32}  # int(c * 0.5)
    dec = {r: 2 * c for r, c in unet.items()}  # StyleGAN2 table, channel multiplier 2
    s: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out: int, inp: int, k: int, bias: bool = True) -> None:
        s[f"{name}.weight"] = (out, inp, k, k)
        if bias:
            s[f"{name}.bias"] = (out,)

    def modconv(name: str, out: int, inp: int, k: int) -> None:
        s[f"{name}.weight"] = (1, out, inp, k, k)
        s[f"{name}.modulation.weight"], s[f"{name}.modulation.bias"] = (inp, 512), (inp,)

    def block(name: str, inp: int, out: int) -> None:
        (
            conv(f"{name}.conv1", inp, inp, 3),
            conv(f"{name}.conv2", out, inp, 3),
            conv(f"{name}.skip", out, inp, 1, False),
        )

    conv("conv_body_first", 32, 3, 1)
    for i, r in enumerate(reversed(res)):
        block(f"conv_body_down.{i}", unet[r], unet[r // 2])
    conv("final_conv", 256, 256, 3)
    for i, r in enumerate(res):
        block(f"conv_body_up.{i}", unet[r // 2], unet[r])
    for i, r in enumerate(res):
        conv(f"toRGB.{i}", 3, unet[r], 1)
    s["final_linear.weight"], s["final_linear.bias"] = (16 * 512, 256 * 16), (16 * 512,)
    d = "stylegan_decoder"
    for i in range(1, 16, 2):
        s[f"{d}.style_mlp.{i}.weight"], s[f"{d}.style_mlp.{i}.bias"] = (512, 512), (512,)
    s[f"{d}.constant_input.weight"] = (1, 512, 4, 4)
    style_convs = [("style_conv1", 512, 512)] + [
        (f"style_convs.{2 * i + j}", dec[r // 2] if j == 0 else dec[r], dec[r])
        for i, r in enumerate(res)
        for j in (0, 1)
    ]
    for name, inp, out in style_convs:
        modconv(f"{d}.{name}.modulated_conv", out, inp, 3)
        s[f"{d}.{name}.weight"], s[f"{d}.{name}.bias"] = (1,), (1, out, 1, 1)
    for name, inp in [("to_rgb1", 512)] + [(f"to_rgbs.{i}", dec[r]) for i, r in enumerate(res)]:
        modconv(f"{d}.{name}.modulated_conv", 3, inp, 1)
        s[f"{d}.{name}.bias"] = (1, 3, 1, 1)
    for i, r in enumerate([4] + [r for r in res for _ in (0, 1)]):
        s[f"{d}.noises.noise{i}"] = (1, 1, r, r)
    for branch in ("condition_scale", "condition_shift"):
        for i, r in enumerate(res):
            conv(f"{branch}.{i}.0", unet[r], unet[r], 3), conv(f"{branch}.{i}.2", unet[r], unet[r], 3)
    return s


def test_the_v1_3_network_has_the_release_files_names_and_shapes():
    with torch.device("meta"):  # 87 M values: shapes only
        net = GFPGAN()
    state = net.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == v13_shapes()
    assert len(state) == 285
    assert sum(p.numel() for p in net.parameters()) == 86_444_252
    assert sum(b.numel() for b in net.buffers()) == 699_024  # 15 noise maps, 4^2 ... 512^2
    # The release file (348,632,874 bytes, manifest) is these 87.1 M float32 values and its pickle.
    assert 0 < 348_632_874 - 4 * sum(v.numel() for v in state.values()) < 100_000


def test_a_release_format_file_loads_strictly_and_bad_files_are_named(tmp_path):
    net = small_gfpgan()
    path = tmp_path / "GFPGANv1.3.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    loaded = load_gfpgan(path, SMALL)
    expected, got = net.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(net(x, randomize_noise=False)[0], loaded(x, randomize_noise=False)[0])
    with pytest.raises(ValueError, match=r"GFPGANv1\.3\.pth does not fit GFPGAN.*shape mismatch"):
        load_gfpgan(path, GFPGANConfig(out_size=32, narrow=1 / 8, style_dim=16, mlp_layers=2))
    with pytest.raises(ValueError, match=r"missing key"):
        load_gfpgan(path, GFPGANConfig(out_size=64, narrow=1 / 16, style_dim=16, mlp_layers=2))
    torch.save({"params": net.state_dict()}, path)  # the training file's layout, not the release's
    with pytest.raises(ValueError, match=r"GFPGANv1\.3\.pth: no 'params_ema'"):
        load_gfpgan(path, SMALL)
    with pytest.raises(
        FileNotFoundError, match=r"snakemake --cores 1 resources/weights/gfpgan/GFPGANv1\.3\.pth"
    ):
        load_gfpgan(tmp_path / "absent.pth")
    # Through the manifest (as the train stage asks for it): a missing file names the fetch command.
    with pytest.raises(WeightsError, match=r"snakemake --cores 1 .*gfpgan/GFPGANv1\.3\.pth"):
        require(GFPGAN_WEIGHTS, tmp_path / "weights", DEFAULT_MANIFEST)
    assert GFPGAN_FILE == "gfpgan/GFPGANv1.3.pth"


def test_forward_returns_the_image_and_on_request_the_unet_rgbs():
    net = small_gfpgan()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    image, rgbs = net(x, randomize_noise=False)
    assert image.shape == (2, 3, 32, 32) and rgbs == []
    same, rgbs = net(x, return_rgb=True, randomize_noise=False)
    assert torch.equal(image, same) and [tuple(r.shape) for r in rgbs] == [(2, 3, r, r) for r in (8, 16, 32)]
    assert not torch.equal(net(x)[0], net(x)[0])  # fresh noise per call (GFPGAN's default)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        net(torch.zeros(1, 3, 16, 16))
    # Talk3D's input: the raw render bilinearly resized to the output size.
    raw = torch.rand(2, 3, 8, 8) * 2 - 1
    up = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.equal(net.upscale(raw, randomize_noise=False), net(up, randomize_noise=False)[0])
    # The image uses everything but StyleGAN2's mapping network and the U-Net's RGB heads.
    image.square().mean().backward()
    unused = {n for n, p in net.named_parameters() if p.grad is None}
    assert unused == {n for n, _ in net.named_parameters() if ".style_mlp." in n or n.startswith("toRGB.")}


def test_the_head_renders_its_final_image_with_gfpgan_from_the_raw_render():
    data, prior, gfpgan = talking_disc(), tiny_prior(), small_gfpgan()
    head = TalkingHead(
        prior.generator, prior.identity_planes, prior.w_id, NET, audio_dim=4, audio_window=2, gfpgan=gfpgan
    ).eval()
    cond = data.conditions.gather([0, 1], NET.audio_frames, torch.device("cpu"))
    eg3d = head(cond, data.cameras[:2], jitter=False)
    assert (
        head.sr == "eg3d"
        and head.sr_module is gfpgan
        and not any(p.requires_grad for p in gfpgan.parameters())
    )
    head.sr = "gfpgan"
    calls = []
    hook = head.generator.superresolution.register_forward_hook(lambda *args: calls.append(1))
    out = head(cond, data.cameras[:2], jitter=False)
    hook.remove()
    assert not calls  # EG3D's super-resolution is not run for an image GFPGAN replaces
    assert out["image"].shape == (2, 3, 32, 32) and torch.equal(out["image_raw"], eg3d["image_raw"])
    assert torch.equal(out["image"], gfpgan.upscale(out["image_raw"], randomize_noise=False))
    assert torch.equal(out["image"], head(cond, data.cameras[:2], jitter=False)["image"])  # eval: fixed noise
    head.gfpgan.train()  # while tuned: fresh noise, as the official code
    assert not torch.equal(out["image"], head(cond, data.cameras[:2], jitter=False)["image"])
    plain = TalkingHead(prior.generator, prior.identity_planes, prior.w_id, NET, audio_dim=4, audio_window=2)
    with pytest.raises(ValueError, match="'gfpgan' needs a GFPGAN network"):
        plain.sr = "gfpgan"
    with pytest.raises(ValueError, match="GFPGAN makes 64 px images, the generator 32 px"):
        TalkingHead(
            prior.generator, prior.identity_planes, prior.w_id, NET, audio_dim=4, audio_window=2,
            gfpgan=GFPGAN(GFPGANConfig(out_size=64, narrow=1 / 16, style_dim=16, mlp_layers=0)),
        )  # fmt: skip


def test_the_sr_stage_tunes_only_gfpgan_and_the_model_file_keeps_it(tmp_path):
    data, prior, gfpgan = talking_disc(), tiny_prior(), small_gfpgan()
    generator_before = {k: v.clone() for k, v in prior.generator.state_dict().items()}
    gfpgan_before = {k: v.clone() for k, v in gfpgan.state_dict().items()}
    cfg = TrainConfig(steps=3, sr_steps=2, sr="gfpgan", checkpoint_every=100, sample_every=100, **NO_EXTRAS)
    seen, noise = {}, []

    def look(head, step, stage):
        seen[stage] = (head.sr, {k: v.clone() for k, v in head.state_dict().items()})

    def upscale(raw, *, randomize_noise=True, real=gfpgan.upscale):
        noise.append(randomize_noise)
        return real(raw, randomize_noise=randomize_noise)

    gfpgan.upscale = upscale
    head = train_deltaplane(
        data, prior, tmp_path, net_config=NET, train_config=cfg, gfpgan=gfpgan, on_checkpoint=look
    )
    assert noise == [True, True, False]  # fresh noise in the 2 sr steps, fixed in the final sample sheet
    assert seen["main"][0] == "eg3d" and seen["sr"][0] == "gfpgan" and head.sr == "gfpgan"
    main_end, final = seen["main"][1], head.state_dict()
    assert all(torch.equal(v, final[f"generator.{k}"]) for k, v in generator_before.items())
    assert all(torch.equal(v, main_end[f"gfpgan.{k}"]) for k, v in gfpgan_before.items())  # main: untouched
    changed = {k for k in final if not torch.equal(main_end[k], final[k])}
    assert changed and all(k.startswith("gfpgan.") for k in changed)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["main"] * 3 + ["sr"] * 2
    # The model file: GFPGAN and the choice saved, the same renders after loading.
    torch.save(head.to_dict(), tmp_path / "deltaplane.pt")
    again = load_talking_head(tmp_path / "deltaplane.pt")
    assert again.sr == "gfpgan" and again.gfpgan.config == SMALL
    cond = data.conditions.gather([9, 10], NET.audio_frames, torch.device("cpu"))
    a = head(cond, data.cameras[9:11], jitter=False)["image"]
    assert torch.equal(a, again(cond, data.cameras[9:11], jitter=False)["image"])
    # A finished run resumed (its model file deleted) still ends with the tuned GFPGAN.
    resumed = train_deltaplane(
        data, tiny_prior(), tmp_path, net_config=NET, train_config=cfg, gfpgan=small_gfpgan()
    )
    assert resumed.sr == "gfpgan" and torch.equal(a, resumed(cond, data.cameras[9:11], jitter=False)["image"])
    with pytest.raises(ValueError, match="train.sr is gfpgan but a GFPGAN network was not given"):
        train_deltaplane(data, tiny_prior(), tmp_path / "x", net_config=NET, train_config=cfg)


def test_untuned_gfpgan_is_not_used_and_old_model_files_load_as_eg3d(tmp_path):
    data = talking_disc()
    cfg = TrainConfig(steps=2, sr_steps=0, sr="gfpgan", checkpoint_every=100, sample_every=100, **NO_EXTRAS)
    head = train_deltaplane(
        data, tiny_prior(), tmp_path, net_config=NET, train_config=cfg, gfpgan=small_gfpgan()
    )
    assert head.sr == "eg3d"  # no tuning stage: EG3D's image, as the official trainer without its switch
    saved = head.to_dict()
    assert saved["sr"] == "eg3d" and "gfpgan" not in saved
    del saved["sr"]  # a file written before train.sr existed
    torch.save(saved, tmp_path / "old.pt")
    old = load_talking_head(tmp_path / "old.pt")
    assert old.sr == "eg3d" and old.gfpgan is None
    cond = data.conditions.gather([9], NET.audio_frames, torch.device("cpu"))
    assert torch.equal(
        head(cond, data.cameras[9:10], jitter=False)["image"], old(cond, data.cameras[9:10])["image"]
    )


def test_the_paper_preset_tunes_gfpgan_and_the_cpu_preset_eg3d():
    schema = load_schema(REPO_ROOT / "workflow/schemas/config.schema.yaml")
    paper = validate_config(yaml.safe_load((REPO_ROOT / "config/paper.yaml").read_text()), schema)
    cpu = validate_config(yaml.safe_load((REPO_ROOT / "config/config.yaml").read_text()), schema)
    assert paper["train"]["sr"] == "gfpgan" and cpu["train"]["sr"] == "eg3d"
    manifest = yaml.safe_load(DEFAULT_MANIFEST.read_text())["weights"]
    entry = next(e for e in manifest if e["name"] == GFPGAN_WEIGHTS)
    assert entry["dest"] == GFPGAN_FILE and "gfpgan" in entry["used_by"]  # the train rule's input
