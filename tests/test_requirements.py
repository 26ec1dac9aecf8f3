"""Which loss nets a strict stage needs, and the check that stops a run before any job without them."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO_ROOT

from talk3d_core.nets.optional import OptionalNets
from talk3d_core.nets.requirements import MissingNetsError, needed_nets, required_net_files
from talk3d_core.util.weights import load_manifest

MANIFEST = load_manifest(REPO_ROOT / "resources/weights/manifest.yaml")


def test_needed_nets_follow_the_nonzero_weights():
    train = {"weight_lpips": 1.0, "weight_mouth": 15.0, "weight_identity": 1.0, "weight_sync": 0.01}
    assert needed_nets(train) == ["lpips", "identity", "sync_expert"]
    assert needed_nets(train | {"weight_lpips": 0.0}) == ["lpips", "identity", "sync_expert"]  # mouth LPIPS
    assert needed_nets({"weight_lpips": 0.0, "weight_identity": 0.1}) == ["identity"]  # personalization
    assert needed_nets({}) == []
    assert needed_nets({"weight_lpips": 0.0, "weight_lpips_raw": 1.0}) == ["lpips"]  # the raw image's
    assert needed_nets({"weight_lpips": 0.0, "weight_lpips_sr": 1.0}) == ["lpips"]  # the SR fine-tune's


def test_with_the_packages_the_weights_become_inputs(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # every package "installed"
    files = required_net_files(["lpips", "identity", "sync_expert"], "resources/weights", MANIFEST)
    assert files == [
        "resources/weights/lpips/alexnet-owt-7be5be79.pth",
        "resources/weights/lpips/v0.1/alex.pth",
        "resources/weights/arcface/model_ir_se50.pth",
        "resources/weights/syncnet/lipsync_expert.pth",
    ]
    expert = tmp_path / "my_expert.pth"
    expert.write_bytes(b"x")
    assert required_net_files(["sync_expert"], "w", MANIFEST, sync_weights=expert) == [str(expert)]


def test_missing_packages_files_and_entries_are_named_at_once(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "facexlib" else object())
    with pytest.raises(MissingNetsError) as info:
        required_net_files(
            ["lpips", "identity", "sync_expert"], "w", [e for e in MANIFEST if e.name != "lpips_alex_heads"],
            sync_weights=tmp_path / "gone.pth", what="train of subject 'alice'",
        )  # fmt: skip
    message = str(info.value)
    assert message.startswith("train of subject 'alice' needs loss networks")
    assert "identity: Python package(s) facexlib not installed" in message and "make install-paper" in message
    assert "lpips: the weights manifest has no entry 'lpips_alex_heads'" in message
    assert f"sync_expert: the lip-sync expert file {tmp_path / 'gone.pth'} does not exist" in message
    assert "allow_missing_nets: true" in message


def test_a_required_net_that_does_not_load_is_an_error():
    builders = {"lpips": lambda: (None, "no weights"), "identity": lambda: (object(), "")}
    nets = OptionalNets.load(builders, purpose="training")
    assert nets.lpips is None and nets.reasons == {"lpips": "no weights"}
    with pytest.raises(RuntimeError, match=r"training needs these nets .*\n  lpips: no weights"):
        OptionalNets.load(builders, purpose="training", required=True)


def test_every_net_requirement_names_a_manifest_entry():
    from talk3d_core.nets.requirements import NET_REQUIREMENTS

    names = {entry.name for entry in MANIFEST}
    assert all(set(entries) <= names for _, entries in NET_REQUIREMENTS.values())
