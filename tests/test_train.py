"""Deltaplane training: losses, the lr schedule, a tiny overfit, exact resume, stages and outputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import NET, REPO_ROOT, talking_disc, tiny_prior

from talk3d_core.camera import eg3d_camera
from talk3d_core.metrics.motion import silent_frames
from talk3d_core.model.deltaplane import TOKEN_NAMES, DeltaplaneConfig
from talk3d_core.model.subject import face_box_pixels, face_boxes, mouth_boxes, window_batch, window_starts
from talk3d_core.model.talking_head import TalkingHead, load_talking_head
from talk3d_core.nets.optional import OptionalNets
from talk3d_core.train import (
    TrainConfig,
    configs_from_settings,
    deltaplane_losses,
    draw_frames,
    learning_rate,
    loss_nets,
    sr_losses,
    sync_window_faces,
    train_deltaplane,
    zoom_cameras,
)

NO_EXTRAS = dict(weight_lpips=0.0, weight_identity=0.0, weight_sync=0.0)


def _log(path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def test_learning_rate_steps_down_every_two_epochs():
    cfg = TrainConfig(lr=1e-3, lr_decay=0.5, decay_every_epochs=2)
    # 10 steps per epoch: rate halves at steps 20, 40, ...
    assert [learning_rate(cfg, s, 10.0) for s in (0, 19, 20, 39, 40)] == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]


def test_mouth_boxes_cover_the_mouth_and_stay_inside():
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    mask[0, 0, 20:24, 12:20] = True  # 4 x 8 mouth
    boxes = mouth_boxes(mask, pad=0.25)
    top, left, side = boxes[0]
    assert top <= 20 and left <= 12 and top + side >= 24 and left + side >= 20 and side == 12
    assert boxes[1] == (16, 8, 16)  # no mouth: the lower centre
    mask[0, 0] = False
    mask[0, 0, 28:32, 0:30] = True  # near the corner: the box is shifted inside the image
    top, left, side = mouth_boxes(mask)[0]
    assert 0 <= top and top + side <= 32 and 0 <= left and left + side <= 32


def test_losses_weigh_the_mouth_by_its_own_pixels():
    data = talking_disc(2)
    target = data.crops[:2].float() / 127.5 - 1
    out = {
        "image": target.clone(),
        "image_raw": torch.nn.functional.interpolate(target, size=16, mode="area"),
    }
    cfg = TrainConfig(**NO_EXTRAS)
    terms = deltaplane_losses(out, target, data.face[:2], data.mouth[:2], cfg, OptionalNets())
    assert float(terms["total"]) == 0.0 and set(terms) == {"l1", "l1_raw", "mouth", "total"}
    wrong = out | {"image": target + data.mouth[:2].float() * 0.5}  # error only inside the mouth
    terms = deltaplane_losses(wrong, target, data.face[:2], data.mouth[:2], cfg, OptionalNets())
    assert float(terms["mouth"]) == pytest.approx(0.25)


def test_tiny_overfit_loss_falls_and_both_stages_log(tmp_path):
    data = talking_disc()
    cfg = TrainConfig(steps=40, sr_steps=6, lr=3e-3, checkpoint_every=20, sample_every=20, **NO_EXTRAS)
    head = train_deltaplane(data, tiny_prior(), tmp_path, net_config=NET, train_config=cfg)
    log = _log(tmp_path)
    assert [r["step"] for r in log] == list(range(1, 47))
    assert [r["stage"] for r in log] == ["main"] * 40 + ["sr"] * 6
    first, last = np.mean([r["total"] for r in log[:8]]), np.mean([r["total"] for r in log[32:40]])
    assert last < 0.8 * first, (first, last)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step_000020.png",
        "step_000040.png",
        "step_000046.png",
    ]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # The saved model renders what the trained one renders.
    torch.save(head.to_dict(), tmp_path / "deltaplane.pt")
    again = load_talking_head(tmp_path / "deltaplane.pt")
    cond = data.conditions.gather([10, 11], NET.audio_frames, torch.device("cpu"))
    a = head.eval()(cond, data.cameras[10:12], jitter=False)["image"]
    b = again(cond, data.cameras[10:12], jitter=False)["image"]
    assert torch.equal(a, b)


def test_sr_stage_changes_only_the_super_resolution(tmp_path):
    data = talking_disc()
    cfg = TrainConfig(steps=4, sr_steps=3, checkpoint_every=100, sample_every=100, **NO_EXTRAS)
    prior = tiny_prior()
    decoder_before = {k: v.clone() for k, v in prior.generator.decoder.state_dict().items()}
    sr_before = {k: v.clone() for k, v in prior.generator.superresolution.state_dict().items()}
    head = train_deltaplane(data, prior, tmp_path, net_config=NET, train_config=cfg)
    assert all(torch.equal(v, head.generator.decoder.state_dict()[k]) for k, v in decoder_before.items())
    changed = [
        not torch.equal(v, head.generator.superresolution.state_dict()[k]) for k, v in sr_before.items()
    ]
    assert any(changed)


class _Killed(Exception):
    pass


def _kill_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the n+1-th optimiser step from now raise, as a kill between two steps would."""
    calls = {"n": 0}
    real = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n:
            raise _Killed
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)


def test_resume_after_a_kill_gives_the_same_weights(tmp_path, monkeypatch):
    data = talking_disc()
    cfg = TrainConfig(steps=10, sr_steps=4, checkpoint_every=3, sample_every=100, **NO_EXTRAS)
    whole = train_deltaplane(data, tiny_prior(), tmp_path / "whole", net_config=NET, train_config=cfg)
    # Killed after 5 steps (last checkpoint: 3), then again inside the sr stage, then left to finish.
    part = tmp_path / "part"
    for allowed in (5, 9, None):
        if allowed is not None:
            _kill_after(monkeypatch, allowed)
        else:
            monkeypatch.undo()
        try:
            resumed = train_deltaplane(data, tiny_prior(), part, net_config=NET, train_config=cfg)
        except _Killed:
            continue
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    def without_time(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert without_time(_log(part)) == without_time(_log(tmp_path / "whole"))


def test_window_batches_with_the_sync_term_resume_to_the_same_weights(tmp_path, monkeypatch):
    weights = tmp_path / "lipsync_expert.pth"
    torch.save({"state_dict": _random_expert_state()}, weights)
    data = talking_disc()
    data.face_box = torch.tensor([[6 / 32, 6 / 32, 26 / 32, 26 / 32]]).expand(len(data.train), 4)
    cfg = TrainConfig(
        steps=4, sr_steps=1, batch_size=4, window_positions=(1, 3), weight_lpips=0.0, weight_identity=0.0,
        sync_warmup_epochs=0, checkpoint_every=2, sample_every=100,
    )  # fmt: skip
    kwargs = dict(net_config=NET, train_config=cfg, sync_audio=(np.full((80, 60), -4.0, np.float32), 25.0))
    nets = loss_nets(cfg, torch.device("cpu"), weights)
    whole = train_deltaplane(data, tiny_prior(), tmp_path / "whole", nets=nets, **kwargs)
    _kill_after(monkeypatch, 3)  # the last checkpoint before the kill: step 2
    with pytest.raises(_Killed):
        train_deltaplane(data, tiny_prior(), tmp_path / "part", nets=nets, **kwargs)
    monkeypatch.undo()
    resumed = train_deltaplane(data, tiny_prior(), tmp_path / "part", nets=nets, **kwargs)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["sync"] for r in _log(tmp_path / "part")[:4]] == [
        r["sync"] for r in _log(tmp_path / "whole")[:4]
    ]


def test_checkpoint_callback_sees_each_checkpoint_and_changes_nothing(tmp_path):
    data = talking_disc()
    cfg = TrainConfig(steps=8, sr_steps=2, checkpoint_every=4, sample_every=100, **NO_EXTRAS)
    plain = train_deltaplane(data, tiny_prior(), tmp_path / "a", net_config=NET, train_config=cfg)
    seen = []

    def look(head, step, stage):
        seen.append((step, stage, head.training))
        torch.rand(100)  # draws from the random generator, and renders (BatchNorm must not update)
        head(data.conditions.gather([0, 1], NET.audio_frames, torch.device("cpu")), data.cameras[:2])

    watched = train_deltaplane(
        data, tiny_prior(), tmp_path / "b", net_config=NET, train_config=cfg, on_checkpoint=look
    )
    assert seen == [(4, "main", False), (8, "main", False), (10, "sr", False)]
    a, b = plain.state_dict(), watched.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_configs_from_settings_follow_the_config_files():
    import yaml

    from talk3d_core.util.config import load_schema, merge_settings, validate_config

    root = REPO_ROOT
    schema = load_schema(root / "workflow/schemas/config.schema.yaml")
    cpu = validate_config(yaml.safe_load((root / "config/config.yaml").read_text()), schema)["train"]
    net, cfg = configs_from_settings(cpu)
    assert net == DeltaplaneConfig.cpu(
        tokens=tuple(cpu["tokens"]),
        audio_frames=cpu["audio_frames"],
        opening_frames=cpu["opening_frames"],
        decoder_conditioning=True,
    )
    assert "opening" in net.tokens and cfg.opening_steps == cpu["opening_steps"]
    assert cfg.steps == cpu["steps"] and cfg.weight_mouth == cpu["weight_mouth"] and cfg.seed == cpu["seed"]
    assert cfg.window_positions is None and cfg.lpips_reduction == "mean" and cfg.mouth_image == "final"
    config = yaml.safe_load((root / "config/config.yaml").read_text())
    # As Snakemake overlays a --configfile: nested mappings merge key by key.
    overlay = yaml.safe_load((root / "config/paper.yaml").read_text())
    paper = validate_config(merge_settings(config, overlay), schema)["train"]
    net, cfg = configs_from_settings(paper)
    assert net.widths == DeltaplaneConfig.paper().widths and not net.decoder_conditioning
    assert net.tokens == TOKEN_NAMES  # the official five, without the CPU preset's opening
    # The official trainer's recipe.
    assert (cfg.steps, cfg.batch_size, cfg.window_positions, cfg.sync_warmup_epochs) == (80000, 4, (1, 3), 21)
    assert (cfg.weight_lpips_raw, cfg.lpips_reduction, cfg.mouth_image, cfg.identity_crop) == (
        1,
        "sum",
        "raw",
        False,
    )
    assert (cfg.sr_steps, cfg.sr_batch_size, cfg.lr_sr, cfg.weight_lpips_sr) == (1000, 2, 2e-4, 1)
    # The CPU preset's mouth aids are not the official trainer's.
    assert cfg.weight_mouth_zoom == 0 and not any(cfg.token_dropout.values()) and cfg.silence_share == 0


def test_other_settings_are_not_resumed_silently(tmp_path):
    data = talking_disc()
    cfg = TrainConfig(steps=2, sr_steps=0, **NO_EXTRAS)
    train_deltaplane(data, tiny_prior(), tmp_path, net_config=NET, train_config=cfg)
    other = TrainConfig(steps=2, sr_steps=0, lr=1e-2, **NO_EXTRAS)
    with pytest.raises(ValueError, match="other settings"):
        train_deltaplane(data, tiny_prior(), tmp_path, net_config=NET, train_config=other)


def test_missing_loss_models_are_logged_once_each(caplog):
    caplog.set_level("INFO")
    cfg = TrainConfig(weight_sync=0.01, batch_size=4, window_positions=(1, 3))
    nets = loss_nets(cfg, torch.device("cpu"), "/nonexistent/lipsync_expert.pth")
    assert nets.lpips is None and nets.identity is None and nets.sync_expert is None
    assert set(nets.reasons) == {"lpips", "identity", "sync_expert"}
    lines = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(lines) == 3 and any("/nonexistent/lipsync_expert.pth" in line for line in lines)


def test_the_lip_sync_term_needs_window_batches(caplog, tmp_path):
    caplog.set_level("INFO")
    weights = tmp_path / "lipsync_expert.pth"  # present: only the random-frame batches stop it
    torch.save({"state_dict": _random_expert_state()}, weights)
    nets = loss_nets(TrainConfig(weight_lpips=0, weight_identity=0), torch.device("cpu"), weights)
    assert nets.sync_expert is None and "window batches" in nets.reasons["sync_expert"]
    with pytest.raises(ValueError, match="needs train.window_positions"):
        loss_nets(TrainConfig(weight_lpips=0, weight_identity=0), torch.device("cpu"), weights, required=True)
    with pytest.raises(ValueError, match="window_positions must be increasing"):
        TrainConfig(batch_size=4, window_positions=(3, 1))
    with pytest.raises(ValueError, match="not a whole number of windows"):
        TrainConfig(batch_size=3, window_positions=(1, 3))


def test_gather_centres_the_audio_window_and_clamps_at_the_ends():
    conditions = talking_disc(6).conditions
    conditions.audio[:, :, 1] = np.arange(6)[:, None]  # frame index in feature 1
    cond = conditions.gather([0, 5], 3, torch.device("cpu"))
    assert cond["audio"].shape == (2, 3, 2, 4)
    assert cond["audio"][0, :, 0, 1].tolist() == [0, 0, 1]
    assert cond["audio"][1, :, 0, 1].tolist() == [4, 5, 5]


def _random_expert_state() -> dict:
    from talk3d_core.nets.lipsync_expert import SyncNetColor

    torch.manual_seed(0)
    return SyncNetColor().state_dict()  # random weights, Wav2Lip's layout


def _fake_lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A stand-in for LPIPS: one distance per frame (B,), differentiable."""
    return (a - b).abs().flatten(1).mean(dim=1)


def test_window_batches_walk_every_window_once_an_epoch():
    train = np.array([True] * 9 + [False] * 2 + [True] * 6)
    starts = window_starts(train, 5)
    assert starts.tolist() == [0, 1, 2, 3, 4, 11, 12]  # no window crosses the held-out frames
    # 7 windows, 3 a step: an epoch is 2 steps, the 7th window of each epoch dropped.
    epoch = np.concatenate([window_batch(starts, s, 3, seed=5) for s in (0, 1)])
    assert len(set(epoch.tolist())) == 6 and set(epoch.tolist()) <= set(starts.tolist())
    again = np.concatenate([window_batch(starts, s, 3, seed=5) for s in (0, 1)])
    assert np.array_equal(epoch, again)  # a function of (seed, step): a resumed run draws the same
    assert not np.array_equal(epoch, np.concatenate([window_batch(starts, s, 3, seed=5) for s in (2, 3)]))
    with pytest.raises(ValueError, match="2 windows of training frames, a step takes 3"):
        window_batch(starts[:2], 0, 3, seed=0)


def test_face_boxes_are_the_landmarks_box_scaled_down_to_the_render():
    lm = np.zeros((2, 68, 2))
    lm[0, :, 0], lm[0, :, 1] = np.linspace(100, 300, 68), np.linspace(150, 410, 68)
    lm[1, :, 0], lm[1, :, 1] = np.linspace(-20, 200, 68), np.linspace(300, 530, 68)  # past the crop
    boxes = face_boxes(lm, 512)
    np.testing.assert_allclose(boxes[0], np.array([100, 150, 300, 410]) / 512)
    np.testing.assert_allclose(boxes[1], np.array([0, 300, 200, 512]) / 512)
    # Scaled to the 128 render as Talk3D's integer division by 4.
    px = face_box_pixels(torch.from_numpy(boxes), 128)
    assert px.tolist() == [[25, 37, 75, 102], [0, 75, 50, 128]]
    assert face_box_pixels(torch.tensor([[0.5, 0.5, 0.5, 0.5]]), 8).tolist() == [[4, 4, 5, 5]]  # >= 1 px


def test_sync_windows_hold_two_renders_among_three_crops():
    w, r = 2, 16
    renders = torch.arange(1.0, w * 2 + 1).view(-1, 1, 1, 1).expand(-1, 3, r, r).clone().requires_grad_()
    truth = -torch.arange(1.0, w * 5 + 1).view(w, 5, 1, 1, 1).expand(-1, -1, 3, r, r) / 10
    boxes = torch.tensor([2, 3, 14, 15]).expand(w, 5, 4)
    faces = sync_window_faces(renders, truth, boxes, [1, 3])
    assert faces.shape == (w, 5, 3, 96, 96)
    values = faces[:, :, 0, 0, 0]
    expected = torch.tensor([[-0.1, 1, -0.3, 2, -0.5], [-0.6, 3, -0.8, 4, -1.0]])  # renders at 1 and 3
    torch.testing.assert_close(values, expected)
    # Each face box of a constant image is constant (to rounding: single-threaded resampling differs).
    torch.testing.assert_close(faces, faces[:, :, :, :1, :1].expand_as(faces))
    faces.sum().backward()  # gradients reach each render through its own face box only
    assert (renders.grad[:, :, 3:15, 2:14] > 0).all() and renders.grad.sum() == renders.grad[
        :, :, 3:15, 2:14
    ].sum()
    with pytest.raises(ValueError, match="sync windows"):
        sync_window_faces(renders[:3], truth, boxes, [1, 3])


def test_lpips_terms_sum_or_average_over_the_batch_and_the_mouth_term_uses_the_raw_image():
    data = talking_disc(4)
    target = data.crops[:4].float() / 127.5 - 1
    target_raw = torch.nn.functional.interpolate(target, size=16, mode="area")
    mouth_raw = torch.nn.functional.interpolate(data.mouth[:4].float(), size=16, mode="area").round()
    torch.manual_seed(0)
    out = {"image": target + 0.1 * torch.randn_like(target), "image_raw": target_raw + 0.5 * mouth_raw}
    nets = OptionalNets(lpips=_fake_lpips)
    cpu = TrainConfig(weight_identity=0.0, weight_sync=0.0)
    paper = dataclasses.replace(cpu, weight_lpips_raw=1.0, lpips_reduction="sum", mouth_image="raw")
    mean_terms = deltaplane_losses(out, target, data.face[:4], data.mouth[:4], cpu, nets)
    sum_terms = deltaplane_losses(out, target, data.face[:4], data.mouth[:4], paper, nets)
    per_frame = _fake_lpips(out["image"], target)
    assert float(mean_terms["lpips"]) == pytest.approx(float(per_frame.mean()))
    assert float(sum_terms["lpips"]) == pytest.approx(float(per_frame.sum()))
    assert "lpips_raw" not in mean_terms  # the CPU preset: LPIPS of the final image only
    assert float(sum_terms["lpips_raw"]) == pytest.approx(
        float(_fake_lpips(out["image_raw"], target_raw).sum())
    )
    # Mouth on the raw render: 0.5 error on every (downsampled, rounded) mouth pixel, L2 0.25, plus
    # the summed LPIPS of the mouth-masked raw frames.
    masked = _fake_lpips(out["image_raw"] * mouth_raw, target_raw * mouth_raw).sum()
    assert float(sum_terms["mouth"]) == pytest.approx(0.25 + float(masked))
    assert float(sum_terms["total"]) == pytest.approx(
        16 * float(sum_terms["l1"] + sum_terms["l1_raw"]) + float(sum_terms["lpips"] + sum_terms["lpips_raw"])
        + 15 * float(sum_terms["mouth"])
    )  # fmt: skip


def test_sr_losses_add_summed_lpips_to_l1():
    target = torch.rand(2, 3, 8, 8) * 2 - 1
    out = {"image": target + 0.25}
    nets = OptionalNets(lpips=_fake_lpips)
    l1_only = sr_losses(out, target, TrainConfig(), nets)
    assert set(l1_only) == {"l1", "total"} and float(l1_only["total"]) == pytest.approx(16 * 0.25)
    cfg = TrainConfig(weight_lpips_sr=1.0, lpips_reduction="sum")
    terms = sr_losses(out, target, cfg, nets)
    assert float(terms["lpips"]) == pytest.approx(2 * 0.25)  # 0.25 per frame, summed over 2
    assert float(terms["total"]) == pytest.approx(16 * 0.25 + 2 * 0.25)


def test_window_batches_feed_the_lip_sync_expert_without_extra_renders(tmp_path, monkeypatch):
    from talk3d_core.nets.lipsync_expert import SyncNetColor

    weights = tmp_path / "lipsync_expert.pth"
    torch.save({"state_dict": _random_expert_state()}, weights)
    data = talking_disc()  # 9 training frames: 5 windows of 5, 2 a step: an epoch is 2 steps
    data.face_box = torch.tensor([[6 / 32, 6 / 32, 26 / 32, 26 / 32]]).expand(len(data.train), 4)
    cfg = TrainConfig(
        steps=5, sr_steps=1, batch_size=4, window_positions=(1, 3), sr_batch_size=2, weight_lpips=0.0,
        weight_identity=0.0, weight_sync=0.5, sync_warmup_epochs=1, sample_every=100, checkpoint_every=100,
    )  # fmt: skip
    prior = tiny_prior()
    renders, expert_inputs = [], []
    render = prior.generator.render

    def counted_render(planes, cameras, *args, **kwargs):
        if torch.is_grad_enabled():  # training renders (the samples render without gradients)
            renders.append(len(cameras))
        return render(planes, cameras, *args, **kwargs)

    expert_forward = SyncNetColor.forward

    def seen_forward(self, mel, face):
        expert_inputs.append((tuple(mel.shape), tuple(face.shape)))
        return expert_forward(self, mel, face)

    monkeypatch.setattr(prior.generator, "render", counted_render)
    monkeypatch.setattr(SyncNetColor, "forward", seen_forward)
    mel = np.full((80, 60), -4.0, np.float32)
    train_deltaplane(
        data, prior, tmp_path / "run", net_config=NET, train_config=cfg, sync_audio=(mel, 25.0),
        nets=loss_nets(cfg, torch.device("cpu"), weights),
    )  # fmt: skip
    log = _log(tmp_path / "run")
    # The term joins after one epoch of floor(5 windows / 2) = 2 steps, not 9 frames / 4 = 2.25.
    assert ["sync" in r for r in log] == [False, False, True, True, True, False]
    assert all(np.isfinite(r["sync"]) and r["sync"] > 0 for r in log[2:5])
    assert renders == [4] * 5 + [2]  # one render a step: 2 windows x 2 frames, then 2 frames (sr)
    assert expert_inputs == [((2, 1, 80, 16), (2, 15, 48, 96))] * 3
    data.face_box = None
    with pytest.raises(ValueError, match="face boxes"):
        train_deltaplane(
            data, tiny_prior(), tmp_path / "b", net_config=NET, train_config=cfg, sync_audio=(mel, 25.0),
            nets=loss_nets(cfg, torch.device("cpu"), weights),
        )  # fmt: skip


def test_zoom_cameras_render_the_box_of_the_full_view():
    prior = tiny_prior()
    head = TalkingHead(prior.generator, prior.identity_planes, prior.w_id, NET, audio_dim=4, audio_window=2)
    head.eval()
    cams = eg3d_camera(
        np.array([0.0, 10.0]), np.zeros(2), np.zeros(2), radius=2.7, pivot=(0, 0.05, 0.2), focal=3.6
    )
    cams = torch.tensor(cams, dtype=torch.float32)
    whole = torch.tensor([[0.0, 0.0, 1.0]] * 2)
    assert torch.equal(zoom_cameras(cams, whole), cams)  # the whole image: the same camera
    with torch.no_grad():
        full = head.render_raw(head.identity_planes.expand(2, -1, -1, -1, -1), cams, 16, jitter=False)
        # The lower-right quarter seen at 8 rays a side is that quarter of the 16-ray image.
        quarter = zoom_cameras(cams, torch.tensor([[0.5, 0.5, 0.5]] * 2))
        zoomed = head.render_raw(head.identity_planes.expand(2, -1, -1, -1, -1), quarter, 8, jitter=False)
    torch.testing.assert_close(zoomed, full[:, :, 8:, 8:], atol=1e-4, rtol=1e-4)


def test_zoomed_mouth_loss_trains(tmp_path):
    data = talking_disc()
    # The disc's mouth box, resampled from the crops themselves (the real stage reads full-size crops).
    boxes = torch.tensor(
        [[t / 32, x / 32, s / 32] for t, x, s in mouth_boxes(data.mouth)], dtype=torch.float32
    )
    patches = [
        torch.nn.functional.interpolate(c[None, :, t : t + s, x : x + s].float(), size=8, mode="area")
        for c, (t, x, s) in zip(data.crops, mouth_boxes(data.mouth), strict=True)
    ]
    data.mouth_patch, data.mouth_box = torch.cat(patches).round().byte(), boxes
    cfg = TrainConfig(steps=6, sr_steps=0, weight_mouth_zoom=16.0, mouth_zoom=8, **NO_EXTRAS)
    train_deltaplane(data, tiny_prior(), tmp_path, net_config=NET, train_config=cfg)
    assert all("mouth_zoom" in r and np.isfinite(r["mouth_zoom"]) for r in _log(tmp_path))
    with pytest.raises(ValueError, match="mouth patches of 16 px"):
        bad = TrainConfig(steps=1, sr_steps=0, weight_mouth_zoom=1.0, mouth_zoom=16, **NO_EXTRAS)
        train_deltaplane(data, tiny_prior(), tmp_path / "b", net_config=NET, train_config=bad)


def test_token_dropout_zeroes_tokens_in_training(tmp_path):
    data = talking_disc()
    cfg = TrainConfig(steps=3, sr_steps=0, token_dropout={"rotation": 1.0, "eye": 0.0}, **NO_EXTRAS)
    start = train_deltaplane(
        data, tiny_prior(), tmp_path / "start", net_config=NET, train_config=dataclasses.replace(cfg, steps=0)
    )
    trained = train_deltaplane(data, tiny_prior(), tmp_path / "run", net_config=NET, train_config=cfg)
    before, after = start.net.tokens.state_dict(), trained.net.tokens.state_dict()
    # Always dropped: the rotation encoder never gets a gradient; never dropped: the eye encoder learns.
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("rotation."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("eye."))
    for bad in ({"null": 0.5}, {"rotation": 1.5}):
        with pytest.raises(ValueError, match="token_dropout"):
            TrainConfig(token_dropout=bad)


def test_opening_token_predictor_is_fitted_first_and_kept(tmp_path):
    data = talking_disc()
    net = dataclasses.replace(NET, tokens=(*NET.tokens, "opening"), opening_frames=1)
    cfg = TrainConfig(steps=4, sr_steps=0, opening_steps=300, **NO_EXTRAS)
    head = train_deltaplane(data, tiny_prior(), tmp_path / "a", net_config=net, train_config=cfg)
    opening = head.net.tokens.opening
    train = np.flatnonzero(data.train)
    with torch.no_grad():
        spans = data.conditions.gather(train, net.audio_frames, torch.device("cpu"))["audio"]
        predicted = opening.predict(spans).numpy()
    assert np.corrcoef(predicted, data.conditions.opening[train])[0, 1] > 0.9
    assert not any(p.requires_grad for p in opening.predictor.parameters())
    # Saved and loaded, the predictor and its standardisation come back.
    torch.save(head.to_dict(), tmp_path / "head.pt")
    reloaded = load_talking_head(tmp_path / "head.pt").net.tokens.opening
    with torch.no_grad():
        assert np.array_equal(reloaded.predict(spans).numpy(), predicted)
    bare = dataclasses.replace(data, conditions=dataclasses.replace(data.conditions, opening=None))
    with pytest.raises(ValueError, match="needs the footage's openings"):
        train_deltaplane(bare, tiny_prior(), tmp_path / "b", net_config=net, train_config=cfg)


def test_silence_share_draws_silent_frames_that_often():
    pool, silent = np.arange(100), np.array([3, 7])
    torch.manual_seed(0)
    uniform = draw_frames(pool, silent, 4000, 0.0)
    torch.manual_seed(0)
    assert np.array_equal(draw_frames(pool, np.zeros(0, np.int64), 4000, 0.5), uniform)  # no pauses: uniform
    torch.manual_seed(0)
    shared = draw_frames(pool, silent, 4000, 0.25)
    # 0.25 of the draws from the two silent frames, plus their uniform share 2% of the rest
    assert np.isin(shared, silent).mean() == pytest.approx(0.25 + 0.75 * 0.02, abs=0.02)
    assert np.isin(uniform, silent).mean() == pytest.approx(0.02, abs=0.01)


def test_silent_frames_follow_the_audio_energy():
    rate, fps = 16000, 25.0
    t = np.arange(rate * 2) / rate
    wav = np.where(t < 1.0, 0.3 * np.sin(2 * np.pi * 220 * t), 0.0)  # 1 s of tone, then 1 s of silence
    silent = silent_frames(wav, rate, 50, fps)
    assert silent.shape == (50,) and not silent[:24].any() and silent[26:].all()


def test_silence_share_needs_the_silent_mask(tmp_path):
    data = talking_disc()
    cfg = TrainConfig(steps=2, sr_steps=0, silence_share=0.5, **NO_EXTRAS)
    with pytest.raises(ValueError, match="silent-frame mask"):
        train_deltaplane(data, tiny_prior(), tmp_path / "a", net_config=NET, train_config=cfg)
    silent = np.zeros(len(data.train), dtype=bool)
    silent[:2] = True
    train_deltaplane(data, tiny_prior(), tmp_path / "b", net_config=NET, train_config=cfg, silent=silent)
    assert len(_log(tmp_path / "b")) == 2
    for bad in (dict(silence_share=1.0), dict(silence_share=0.5, window_positions=(1, 3), batch_size=4)):
        with pytest.raises(ValueError, match="silence_share"):
            TrainConfig(**bad)


def test_fewer_sr_steps_than_a_finished_run_start_over_and_are_recorded(tmp_path):
    data = talking_disc()
    longer = TrainConfig(steps=4, sr_steps=3, checkpoint_every=100, sample_every=100, **NO_EXTRAS)
    shorter = dataclasses.replace(longer, sr_steps=1)
    head = train_deltaplane(data, tiny_prior(), tmp_path / "run", net_config=NET, train_config=longer)
    assert head.steps_run == {"main": 4, "sr": 3}
    again = train_deltaplane(
        data, tiny_prior(), tmp_path / "run", net_config=NET, train_config=shorter, restart_on_mismatch=True
    )
    fresh = train_deltaplane(data, tiny_prior(), tmp_path / "fresh", net_config=NET, train_config=shorter)
    assert again.steps_run == fresh.steps_run == {"main": 4, "sr": 1}
    a, b = again.state_dict(), fresh.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The saved model says how it was trained.
    torch.save(again.to_dict(), tmp_path / "deltaplane.pt")
    assert load_talking_head(tmp_path / "deltaplane.pt").steps_run == {"main": 4, "sr": 1}
