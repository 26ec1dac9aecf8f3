"""Optional LPIPS: missing packages or weights give (None, reason), never a download; trunk renaming."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from talk3d_core.nets.lpips import _LPIPS_SLICES, _lpips_trunk_state, lpips_loss


def test_lpips_without_weights_or_package_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # as if the package were not installed
    loss, reason = lpips_loss("cpu", weights_dir=tmp_path / "weights")

    assert loss is None
    # The trunk comes from the manifest (fetched by the weights rule), never from a download here.
    assert "model weights 'lpips_alex_trunk'" in reason and "are missing" in reason
    assert "snakemake --cores 1" in reason and "alexnet-owt-7be5be79.pth" in reason
    assert (
        "the lpips package does not import (ModuleNotFoundError" in reason and "make install-paper" in reason
    )


def test_lpips_trunks_without_a_manifest_entry_say_so(tmp_path: Path):
    loss, reason = lpips_loss("cpu", net="vgg", weights_dir=tmp_path)
    assert loss is None and "no weights entry named 'lpips_vgg_trunk'" in reason
    with pytest.raises(ValueError, match="LPIPS trunk must be one of"):
        lpips_loss("cpu", net="resnet")


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_torchvision_trunk_tensors_are_renamed_to_lpips_slices(tmp_path: Path, net: str):
    ends = _LPIPS_SLICES[net]
    # A torchvision-style state: features.<i>.weight/bias for some layers, plus a classifier.
    layers = [0, ends[0], ends[-1] - 1]
    state = {f"features.{i}.weight": torch.full((2,), float(i)) for i in layers}
    state |= {f"features.{i}.bias": torch.zeros(2) for i in layers}
    state["classifier.1.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "trunk.pth")

    renamed = _lpips_trunk_state(tmp_path / "trunk.pth", net)

    last = len(ends)
    assert sorted(renamed) == sorted(
        [
            "slice1.0.weight", "slice1.0.bias", f"slice2.{ends[0]}.weight", f"slice2.{ends[0]}.bias",
            f"slice{last}.{ends[-1] - 1}.weight", f"slice{last}.{ends[-1] - 1}.bias",
        ]
    )  # fmt: skip
    assert float(renamed[f"slice2.{ends[0]}.weight"][0]) == ends[0]
