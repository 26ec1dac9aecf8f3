"""The LPIPS perceptual distance, an optional loss and metric.

It needs third-party code and pretrained weights that the default install does not have (the
``lpips`` package and ``facexlib`` import torchvision, and their backbones are ImageNet / MS1M
weights). Each factory therefore returns ``(loss, reason)``: the loss callable when everything is
present, else ``None`` and a sentence saying what is missing, so that callers can log it and go on
with the terms they have (:func:`arcface_embedder` hands out the ArcFace embedding itself the same
way, for the identity-similarity metric). Nothing is downloaded: weights must already be on disk,
and packages are imported only inside the factories.

A loss callable takes two image batches ``(B, 3, H, W)`` in [-1, 1] (the generator's range), the
first usually a render that needs gradients, and returns one value per image, shape ``(B,)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from talk3d_core.nets.optional import PairLoss, error_text, frozen
from talk3d_core.nets.requirements import lpips_weights
from talk3d_core.util.weights import (
    DEFAULT_MANIFEST,
    DEFAULT_WEIGHTS_DIR,
    WeightsError,
    read_state_dict,
    require,
)

# lpips' trunk wrappers copy torchvision's ``features.<i>`` layers into slices; which slice holds i.
_LPIPS_SLICES = {
    "alex": (2, 5, 8, 10, 12),
    "vgg": (4, 9, 16, 23, 30),
    "squeeze": (2, 5, 8, 10, 11, 12, 13),
}


def _lpips_trunk_state(path: Path, net: str) -> dict[str, torch.Tensor]:
    """torchvision ``features.<i>.*`` tensors renamed to lpips' ``slice<k>.<i>.*`` (k from 1)."""
    source = f"the manifest entry {lpips_weights(net)[0]} (snakemake --cores 1 weights)"
    state = read_state_dict(path, what=f"{net} trunk of LPIPS", source=source)
    ends = _LPIPS_SLICES[net]
    renamed = {}
    for name, tensor in state.items():
        if not name.startswith("features."):
            continue  # the classifier head is not part of LPIPS
        index = int(name.split(".")[1])
        k = next(i for i, end in enumerate(ends) if index < end) + 1
        renamed[f"slice{k}.{name[len('features.') :]}"] = tensor
    return renamed


def lpips_loss(
    device: str | torch.device = "cpu",
    *,
    net: str = "alex",
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    manifest: str | os.PathLike[str] = DEFAULT_MANIFEST,
) -> tuple[PairLoss | None, str]:
    """LPIPS distance (the ``lpips`` package, v0.1 linear heads) or ``(None, reason)``.

    The trunk's ImageNet weights (torchvision's file) and the linear heads are the manifest entries
    ``lpips_<net>_trunk`` and ``lpips_<net>_heads`` under ``weights_dir`` (checked against their
    digests); the trunk is built untrained and these weights are loaded into it, so no download can
    happen. Returns ``loss(a, b) -> (B,)`` for images in [-1, 1], and "" as the reason.
    """
    if net not in _LPIPS_SLICES:
        raise ValueError(f"LPIPS trunk must be one of {sorted(_LPIPS_SLICES)}, got {net!r}")
    problems = []
    try:
        trunk_entry, heads_entry = lpips_weights(net)
        trunk = require(trunk_entry, weights_dir, manifest)
        heads = require(heads_entry, weights_dir, manifest)
    except WeightsError as exc:
        problems.append(error_text(exc))
    try:
        import lpips  # the package imports torchvision, which may be absent or broken
    except Exception as exc:  # any import failure means "not available"
        problems.append(f"the lpips package does not import ({error_text(exc)}; make install-paper)")
    if problems:
        return None, "; ".join(problems)
    try:
        model = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, model_path=str(heads), verbose=False)
        missing, unexpected = model.net.load_state_dict(_lpips_trunk_state(trunk, net), strict=False)
        if missing or unexpected:
            return None, f"{trunk} does not fit the LPIPS {net} trunk (missing {missing[:3]})"
    except Exception as exc:  # a broken install or file is reported, not raised
        return None, f"LPIPS could not be built ({error_text(exc)})"
    model = frozen(model, device)

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return model(a, b).reshape(len(a))

    return loss, ""
