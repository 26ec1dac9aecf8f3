"""ArcFace (facexlib's IR-SE50): the identity embedding of aligned face crops and the identity loss.

Needs facexlib (which imports torchvision) and the manifest's ArcFace weights; each factory returns
``(net, reason)``, None and a sentence saying what is missing when it cannot be built. Nothing is
downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from talk3d_core.face.template import FaceFraming
from talk3d_core.nets.optional import PairLoss, error_text, frozen
from talk3d_core.nets.requirements import ARCFACE_WEIGHTS
from talk3d_core.util.weights import DEFAULT_MANIFEST, DEFAULT_WEIGHTS_DIR

# ArcFace IR-SE50 sees a 112^2 face; pSp/PTI crop the aligned 256^2 FFHQ face to rows 35:223 and
# columns 32:220 first. The same fractions (x0, y0, x1, y1) are used here for any input size, on the
# fixed template's framing, and moved with the face for another (FaceFraming.box).
_ARCFACE_BOX = (32 / 256, 35 / 256, 220 / 256, 223 / 256)


def arcface_embedder(
    device: str | torch.device = "cpu",
    *,
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    manifest: str | os.PathLike[str] = DEFAULT_MANIFEST,
    crop: bool = True,
    framing: FaceFraming | None = None,
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """ArcFace identity embedding ``embed(x) -> (B, 512)`` unit vectors, or ``(None, reason)``.

    The network is facexlib's IR-SE50 ArcFace; its weights are the manifest entry
    :data:`ARCFACE_WEIGHTS` installed under ``weights_dir`` (found with
    :func:`talk3d_core.util.weights.require`, which never downloads). Inputs ``x`` are aligned face crops
    (B, 3, H, W) in [-1, 1]; with ``crop`` the central face region is cut out as pSp/PTI do (where
    ``framing``, default the fixed template's, puts the face), without it the whole image is used
    (Talk3D's identity loss pools its whole 512 crop), then resized to 112^2
    (area averaging when shrinking, i.e. adaptive average pooling). ``embed`` keeps the autograd
    graph (the identity loss back-propagates through it).
    """
    from talk3d_core.util.weights import WeightsError, require

    problems = []
    path = None
    try:
        path = require(ARCFACE_WEIGHTS, weights_dir, manifest)
    except (WeightsError, OSError) as exc:
        problems.append(f"ArcFace weights unavailable ({error_text(exc)})")
    try:
        from facexlib.recognition.arcface_arch import Backbone  # imports torchvision via facexlib
    except Exception as exc:  # any import failure means "not available"
        problems.append(f"facexlib does not import ({error_text(exc)})")
    if problems:
        return None, "; ".join(problems)
    try:
        model = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except Exception as exc:  # a broken file is reported, not raised
        return None, f"ArcFace could not be loaded from {path} ({error_text(exc)})"
    model = frozen(model, device)
    box = (framing or FaceFraming()).box(_ARCFACE_BOX)

    def embed(x: torch.Tensor) -> torch.Tensor:
        face = x
        if crop:
            size = x.shape[-1]
            left, top, right, bottom = (min(max(round(f * size), 0), size) for f in box)
            face = x[:, :, top:bottom, left:right]
        face = F.interpolate(face, size=(112, 112), mode="area" if face.shape[-1] > 112 else "bilinear")
        # Images permuted from (N, H, W, 3) arrays are channels-last, which the convolutions keep and
        # facexlib's Flatten (a .view) cannot take: give the network the standard layout.
        return F.normalize(model(face.contiguous()), dim=1)

    return embed, ""


def identity_loss(
    device: str | torch.device = "cpu",
    *,
    weights_dir: str | os.PathLike[str] = DEFAULT_WEIGHTS_DIR,
    manifest: str | os.PathLike[str] = DEFAULT_MANIFEST,
    crop: bool = True,
) -> tuple[PairLoss | None, str]:
    """ArcFace identity loss ``1 - cos(emb(a), emb(b))`` or ``(None, reason)``.

    The embedding is :func:`arcface_embedder`'s (same weights lookup; ``crop``: the same face crop,
    or the whole image); inputs are face crops in [-1, 1].
    """
    embed, reason = arcface_embedder(device, weights_dir=weights_dir, manifest=manifest, crop=crop)
    if embed is None:
        return None, reason

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = embed(b)
        return 1 - (embed(a) * target).sum(dim=1)

    return loss, ""
