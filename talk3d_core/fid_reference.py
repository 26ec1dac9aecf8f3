"""Rule fid_reference: FID's reference set of a subject, the Inception features of its training crops
(:class:`talk3d_core.metrics.fid.FidReference`), computed once per subject rather than by every
evaluation: it depends on the crops, the split, the prior's image size and background and
``evaluate.fid_reference_frames``, not on the trained model.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from talk3d_core.features import read_features
from talk3d_core.metrics.fid import FidReference, reference_frames, write_fid_reference
from talk3d_core.model.subject import model_image_format, read_subject_data
from talk3d_core.nets.inception import fid_model
from talk3d_core.util.images import to_uint8, to_unit
from talk3d_core.util.runs import Progress, map_batches, pick_device

log = logging.getLogger(__name__)


def fid_reference_stage(
    *,
    generator_pt: str | os.PathLike[str],
    features_parquet: str | os.PathLike[str],
    prior_frames: str | os.PathLike[str],
    crops: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    frames: int,
    batch_size: int,
    out_npz: str | os.PathLike[str],
    device: str | None = None,
) -> FidReference:
    """Rule fid_reference: the Inception features of ``frames`` training crops (the features stage's
    split, :func:`reference_frames`), at the size and with the background of the prior
    (``generator_pt``, as the evaluate stage shows the crops), in batches of ``batch_size``; written
    once per subject, so a retrained model is scored against the same set without recomputing it."""
    inception, reason = fid_model(device=pick_device(device))
    size, background = model_image_format(generator_pt)
    data = read_subject_data(
        read_features(features_parquet), prior_frames, crops=crops, masks=masks, size=size,
        background=background,
    )  # fmt: skip
    pick = reference_frames(data.train, frames)
    features = None
    if inception is not None:
        images = to_uint8(to_unit(data.crops[pick]))
        progress = Progress("fid reference", len(pick), unit="crop")
        features = map_batches(
            lambda batch: inception.features(batch, batch_size=len(batch)), images, batch_size, progress
        ).astype(np.float32)
        log.info("FID reference: %d training crops at %d px (%s background)", len(pick), size, background)
    else:
        log.info("FID reference unavailable: %s", reason)
    backend = inception.name if inception is not None else "inception"
    reference = FidReference(features, pick, size, background, backend, reason)
    write_fid_reference(reference, out_npz)
    return reference
