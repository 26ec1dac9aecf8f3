"""What each loss net needs beyond the default install, checked before a strict stage runs.

A stage that must not lose a paper loss quietly (``allow_missing_nets: false``, config/paper.yaml)
asks :func:`required_net_files` while the workflow is planned: a missing Python package stops the
run there, naming the install command, and the weight files come back as the rule's inputs, so
Snakemake fetches them from the manifest first. This module imports neither torch nor the nets.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from talk3d_core.util.weights import WeightEntry

# The manifest entries the loss nets load (the nets' modules import these names from here, so the
# check and the loaders cannot drift apart).
ARCFACE_WEIGHTS = "arcface_ir_se50"
SYNC_EXPERT_WEIGHTS = "lipsync_expert_wav2lip"


def lpips_weights(net: str) -> tuple[str, str]:
    """The manifest entries (trunk, linear heads) of LPIPS with trunk ``net``."""
    return f"lpips_{net}_trunk", f"lpips_{net}_heads"


# net -> (Python packages it imports, manifest entries it loads)
NET_REQUIREMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "lpips": (("lpips", "torchvision"), lpips_weights("alex")),
    "identity": (("facexlib", "torchvision", "filterpy", "numba"), (ARCFACE_WEIGHTS,)),
    "sync_expert": ((), (SYNC_EXPERT_WEIGHTS,)),
}
INSTALL_HINT = 'make install-paper (or: pip install -e ".[paper]" && pip install --no-deps facexlib==0.3.0)'


class MissingNetsError(ValueError):
    """A strict stage needs loss nets this installation cannot load; the message says how to fix it."""


def needed_nets(settings: Mapping[str, Any]) -> list[str]:
    """The loss nets that a stage's settings (``train``, or ``prior.pretrained``) give a nonzero
    weight: LPIPS (of the final or the raw image, in either training stage, or the mouth term's), the
    ArcFace identity loss, the lip-sync expert."""
    names = []
    lpips_keys = ("weight_lpips", "weight_lpips_raw", "weight_lpips_sr", "weight_mouth")
    if any(settings.get(key, 0) > 0 for key in lpips_keys):
        names.append("lpips")
    if settings.get("weight_identity", 0) > 0:
        names.append("identity")
    if settings.get("weight_sync", 0) > 0:
        names.append("sync_expert")
    return names


def required_net_files(
    nets: Iterable[str],
    weights_dir: str | os.PathLike[str],
    manifest: Sequence[WeightEntry],
    *,
    sync_weights: str | os.PathLike[str] | None = None,
    what: str = "this stage",
) -> list[str]:
    """The weight files the ``nets`` load (``weights_dir``/dest of their manifest entries; the
    lip-sync expert at ``sync_weights`` when given), for a rule's inputs.

    Raises :class:`MissingNetsError` listing every missing Python package (with the install command),
    manifest entry, or given file, so nothing runs without them.
    """
    by_name = {entry.name: entry for entry in manifest}
    files: list[str] = []
    problems: list[str] = []
    for net in nets:
        packages, entries = NET_REQUIREMENTS[net]
        absent = [p for p in packages if importlib.util.find_spec(p) is None]
        if absent:
            problems.append(f"{net}: Python package(s) {', '.join(absent)} not installed")
        if net == "sync_expert" and sync_weights is not None:
            if not Path(sync_weights).is_file():
                problems.append(f"{net}: the lip-sync expert file {sync_weights} does not exist")
            files.append(str(sync_weights))
            continue
        for name in entries:
            if name not in by_name:
                problems.append(f"{net}: the weights manifest has no entry {name!r}")
            else:
                files.append(str(Path(weights_dir) / by_name[name].dest))
    if problems:
        if any("not installed" in p for p in problems):
            problems.append(f"install the packages with: {INSTALL_HINT}")
        raise MissingNetsError(
            f"{what} needs loss networks this installation lacks (allow_missing_nets: false):\n  "
            + "\n  ".join(problems)
            + "\n  or set allow_missing_nets: true to run without them"
        )
    return files
