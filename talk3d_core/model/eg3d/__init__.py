"""EG3D tri-plane generator (NVlabs' architecture, re-implemented in plain PyTorch)."""

from talk3d_core.model.eg3d.config import PLANE_AXES, GeneratorConfig
from talk3d_core.model.eg3d.generator import TriPlaneGenerator
from talk3d_core.model.eg3d.renderer import (
    ImportanceRenderer,
    OSGDecoder,
    camera_rays,
    composite,
    sample_triplane,
)

__all__ = [
    "PLANE_AXES",
    "GeneratorConfig",
    "ImportanceRenderer",
    "OSGDecoder",
    "TriPlaneGenerator",
    "camera_rays",
    "composite",
    "sample_triplane",
]
