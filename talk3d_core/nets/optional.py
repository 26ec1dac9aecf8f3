"""One holder for the pretrained networks that some losses and metrics need and that may be missing.

Each net is loaded only when asked for; one that cannot be loaded (weights absent, package missing,
file broken) is None with a sentence saying why in ``reasons``, so a stage can run without it and
say so, and a metric can be reported as unavailable. Nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: The nets :meth:`OptionalNets.load` knows, with what each is for.
NETS = {
    "lpips": "LPIPS(alex) distance, (a, b) -> (B,) for images in [-1, 1]",
    "identity": "ArcFace identity loss 1 - cos, (a, b) -> (B,)",
    "sync_expert": "Wav2Lip's lip-sync expert loss, (frames (B, 5, 3, H, W), mel (B, 80, 16)) -> (B,)",
    "embedders": "identity embedders by backend name (dlib, arcface), for IDSIM",
    "fid": "the TF Inception of FID",
    "syncnet": "SyncNet v2 scorer (LSE-C / LSE-D)",
}


@dataclass
class OptionalNets:
    """The loaded nets (None where not asked for or unavailable) and, per missing one, why."""

    lpips: PairLoss | None = None
    identity: PairLoss | None = None
    sync_expert: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    embedders: dict[str, Any] = field(default_factory=dict)
    fid: Any = None
    syncnet: Any = None
    reasons: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        builders: Mapping[str, Callable[[], tuple[Any, str]]],
        *,
        purpose: str = "",
        required: bool = False,
    ) -> OptionalNets:
        """Build each net with its factory (``name -> () -> (net or None, reason)``; names of
        :data:`NETS`, or "embedders:<backend>" for an identity embedder); log one line for each that is
        missing (``purpose``, e.g. "training", says what goes on without it), or with ``required``
        raise RuntimeError naming every one. The callers import the factories, so each stage's code
        hash covers only the nets it uses."""
        nets = cls()
        for name, build in builders.items():
            kind, _, backend = name.partition(":")
            if kind not in NETS or (kind == "embedders") != bool(backend):
                raise ValueError(f"unknown net {name!r}; known: {', '.join(NETS)} (embedders:<backend>)")
            net, reason = build()
            if backend:
                nets.embedders[backend] = net
            else:
                setattr(nets, name, net)
            if net is None:
                nets.reasons[name] = reason
        if required and nets.reasons:
            lines = "\n  ".join(f"{name}: {reason}" for name, reason in nets.reasons.items())
            raise RuntimeError(
                f"{purpose or 'this stage'} needs these nets and they cannot be loaded "
                f"(allow_missing_nets: false):\n  {lines}"
            )
        for name, reason in nets.reasons.items():
            goes_on = f"; {purpose} goes on without it" if purpose else ""
            log.info("%s unavailable: %s%s", name, reason, goes_on)
        return nets

    def missing(self, name: str, reason: str) -> None:
        """Mark ``name`` unavailable (e.g. a loss that lacks an input it needs)."""
        setattr(self, name, None)
        self.reasons[name] = reason
        log.info("%s unavailable: %s", name, reason)


def error_text(exc: BaseException) -> str:
    """``Type: message`` on one line (a multi-line message, e.g. a fetch hint, joined with '; ')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {'; '.join(lines)}".rstrip(": ")


def frozen(module: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    module = module.to(device).eval()
    module.requires_grad_(False)
    return module
