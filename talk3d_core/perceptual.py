"""Optional image-level losses: LPIPS (perceptual) and an ArcFace identity loss.

Both need third-party code and pretrained weights that the default install does not have (the
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
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# torchvision's ImageNet trunk files, as its model builders name them in the torch hub cache.
LPIPS_TRUNK_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
# lpips' trunk wrappers copy torchvision's ``features.<i>`` layers into slices; which slice holds i.
_LPIPS_SLICES = {
    "alex": (2, 5, 8, 10, 12),
    "vgg": (4, 9, 16, 23, 30),
    "squeeze": (2, 5, 8, 10, 11, 12, 13),
}

ARCFACE_WEIGHTS = "arcface_ir_se50"
_REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS_DIR = _REPO_ROOT / "resources" / "weights"
DEFAULT_MANIFEST = DEFAULT_WEIGHTS_DIR / "manifest.yaml"
# ArcFace IR-SE50 sees a 112^2 face; pSp/PTI crop the aligned 256^2 FFHQ face to rows 35:223 and
# columns 32:220 first. The same fractions are used here for any input size.
_ARCFACE_CROP = (35 / 256, 223 / 256, 32 / 256, 220 / 256)


def _reason(exc: BaseException) -> str:
    """``Type: message`` on one line (a multi-line message, e.g. a fetch hint, joined with '; ')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {'; '.join(lines)}".rstrip(": ")


def _frozen(module: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    module = module.to(device).eval()
    module.requires_grad_(False)
    return module


def _lpips_trunk_state(path: Path, net: str) -> dict[str, torch.Tensor]:
    """torchvision ``features.<i>.*`` tensors renamed to lpips' ``slice<k>.<i>.*`` (k from 1)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
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
    trunk_weights: str | os.PathLike[str] | None = None,
) -> tuple[PairLoss | None, str]:
    """LPIPS distance (the ``lpips`` package, v0.1 linear heads) or ``(None, reason)``.

    ``trunk_weights``: torchvision's ImageNet weights of the trunk ``net`` ("alex", "vgg",
    "squeeze"); by default the file torchvision itself would read from the torch hub cache. The trunk
    is built untrained and these weights are loaded into it, so no download can happen.
    Returns ``loss(a, b) -> (B,)`` for images in [-1, 1], and "" as the reason.
    """
    if net not in LPIPS_TRUNK_FILES:
        raise ValueError(f"LPIPS trunk must be one of {sorted(LPIPS_TRUNK_FILES)}, got {net!r}")
    if trunk_weights is None:
        trunk_weights = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_TRUNK_FILES[net]
    trunk_weights = Path(trunk_weights)
    problems = []
    if not trunk_weights.is_file():
        problems.append(f"no ImageNet {net} trunk weights at {trunk_weights}")
    try:
        import lpips  # the package imports torchvision, which may be absent or broken
    except Exception as exc:  # any import failure means "not available"
        problems.append(f"the lpips package does not import ({_reason(exc)})")
    if problems:
        return None, "; ".join(problems)
    try:
        model = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False)
        missing, unexpected = model.net.load_state_dict(_lpips_trunk_state(trunk_weights, net), strict=False)
        if missing or unexpected:
            return None, f"{trunk_weights} does not fit the LPIPS {net} trunk (missing {missing[:3]})"
    except Exception as exc:  # a broken install or file is reported, not raised
        return None, f"LPIPS could not be built ({_reason(exc)})"
    model = _frozen(model, device)

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return model(a, b).reshape(len(a))

    return loss, ""


def arcface_embedder(
    device: str | torch.device = "cpu",
    *,
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    manifest: str | os.PathLike[str] = DEFAULT_MANIFEST,
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """ArcFace identity embedding ``embed(x) -> (B, 512)`` unit vectors, or ``(None, reason)``.

    The network is facexlib's IR-SE50 ArcFace; its weights are the manifest entry
    :data:`ARCFACE_WEIGHTS` installed under ``weights_dir`` (found with
    :func:`talk3d_core.weights.require`, which never downloads). Inputs ``x`` are aligned face crops
    (B, 3, H, W) in [-1, 1]; the central face region is cut out as pSp/PTI do and resized to 112^2.
    ``embed`` keeps the autograd graph (the identity loss back-propagates through it).
    """
    from talk3d_core.weights import WeightsError, require

    problems = []
    path = None
    try:
        path = require(ARCFACE_WEIGHTS, weights_dir, manifest)
    except (WeightsError, OSError) as exc:
        problems.append(f"ArcFace weights unavailable ({_reason(exc)})")
    try:
        from facexlib.recognition.arcface_arch import Backbone  # imports torchvision via facexlib
    except Exception as exc:  # any import failure means "not available"
        problems.append(f"facexlib does not import ({_reason(exc)})")
    if problems:
        return None, "; ".join(problems)
    try:
        model = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except Exception as exc:  # a broken file is reported, not raised
        return None, f"ArcFace could not be loaded from {path} ({_reason(exc)})"
    model = _frozen(model, device)

    def embed(x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        top, bottom, left, right = (round(f * size) for f in _ARCFACE_CROP)
        face = x[:, :, top:bottom, left:right]
        face = F.interpolate(face, size=(112, 112), mode="area" if face.shape[-1] > 112 else "bilinear")
        return F.normalize(model(face), dim=1)

    return embed, ""


def identity_loss(
    device: str | torch.device = "cpu",
    *,
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    manifest: str | os.PathLike[str] = DEFAULT_MANIFEST,
) -> tuple[PairLoss | None, str]:
    """ArcFace identity loss ``1 - cos(emb(a), emb(b))`` or ``(None, reason)``.

    The embedding is :func:`arcface_embedder`'s (same weights lookup, same face crop); inputs are face
    crops in [-1, 1].
    """
    embed, reason = arcface_embedder(device, weights_dir=weights_dir, manifest=manifest)
    if embed is None:
        return None, reason

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = embed(b)
        return 1 - (embed(a) * target).sum(dim=1)

    return loss, ""
