"""Optional ArcFace identity loss: missing packages or weights give (None, reason), never a download."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import write_arcface_manifest

from talk3d_core.nets.arcface import ARCFACE_WEIGHTS, identity_loss


def test_identity_loss_without_weights_or_package_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "facexlib", None)
    monkeypatch.setitem(sys.modules, "facexlib.recognition", None)
    monkeypatch.setitem(sys.modules, "facexlib.recognition.arcface_arch", None)
    loss, reason = identity_loss("cpu", weights_dir=tmp_path)  # the shipped manifest, nothing fetched

    assert loss is None
    assert f"model weights {ARCFACE_WEIGHTS!r}" in reason and "arcface/model_ir_se50.pth" in reason
    assert "facexlib does not import (ModuleNotFoundError" in reason


def test_identity_loss_names_the_command_that_fetches_missing_weights(tmp_path: Path):
    manifest = write_arcface_manifest(tmp_path, "arcface/arcface.pth")
    loss, reason = identity_loss("cpu", weights_dir=tmp_path / "weights", manifest=manifest)

    assert loss is None
    assert "are missing" in reason and "snakemake --cores 1" in reason
    assert str(Path("weights") / "arcface" / "arcface.pth") in reason


@pytest.fixture
def random_arcface(tmp_path: Path) -> dict[str, Path]:
    """weights_dir and manifest of a random IR-SE50 ArcFace in the release format."""
    arch = pytest.importorskip("facexlib.recognition.arcface_arch", reason="facexlib: make install-paper")
    import torch
    import yaml

    from talk3d_core.util.weights import sha256_file

    path = tmp_path / "arcface" / "model_ir_se50.pth"
    path.parent.mkdir()
    torch.manual_seed(0)
    torch.save(arch.Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se").state_dict(), path)
    entry = {"name": ARCFACE_WEIGHTS, "url": "https://example.org/a.pth", "sha256": sha256_file(path),
             "license": "test", "dest": "arcface/model_ir_se50.pth"}  # fmt: skip
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump({"weights": [entry]}))
    return {"weights_dir": tmp_path, "manifest": tmp_path / "manifest.yaml"}


def test_arcface_embeds_images_in_any_memory_layout(random_arcface: dict[str, Path]):
    import torch

    from talk3d_core.nets.arcface import arcface_embedder

    embed, reason = arcface_embedder(**random_arcface)
    assert embed is not None, reason
    # Frames permuted from (N, H, W, 3) arrays, as evaluate passes them, are channels-last in memory.
    images = torch.rand(2, 128, 128, 3).permute(0, 3, 1, 2) * 2 - 1
    out = embed(images)
    assert out.shape == (2, 512)
    torch.testing.assert_close(out, embed(images.contiguous()))


def test_arcface_without_the_crop_pools_the_whole_image(random_arcface: dict[str, Path]):
    import torch

    from talk3d_core.face.template import FaceFraming
    from talk3d_core.nets.arcface import arcface_embedder

    cropped, _ = arcface_embedder(**random_arcface)
    whole, _ = arcface_embedder(**random_arcface, crop=False)
    image = torch.rand(2, 3, 256, 256) * 2 - 1
    face = image[:, :, 35:223, 32:220]  # pSp/PTI's face region of a 256 crop
    torch.testing.assert_close(whole(face), cropped(image))
    assert not torch.allclose(whole(image), cropped(image))
    # Crops whose face is 1.25x larger about the same eyes (a generator's template): the region follows.
    framed, _ = arcface_embedder(**random_arcface, framing=FaceFraming(eye_distance=0.25))
    top, left = round(256 * (0.475 + (35 / 256 - 0.475) * 1.25)), round(256 * (0.5 + (32 / 256 - 0.5) * 1.25))
    bottom, right = (
        round(256 * (0.475 + (223 / 256 - 0.475) * 1.25)),
        round(256 * (0.5 + (220 / 256 - 0.5) * 1.25)),
    )
    torch.testing.assert_close(framed(image), whole(image[:, :, top:bottom, left:right]))
