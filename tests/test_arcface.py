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
