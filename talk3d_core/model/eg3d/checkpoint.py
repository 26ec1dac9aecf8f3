"""Safe reading of NVlabs EG3D network pickles (``ffhqrebalanced512-128.pkl`` and relatives).

An EG3D snapshot is a plain pickle of ``{G, D, G_ema, training_set_kwargs, augment_pipe}``. Each
network class was decorated by NVlabs' ``torch_utils.persistence``, so it pickles as a call to
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, where ``meta`` holds the class name,
the full source text of the defining module and the instance ``__dict__`` (``_parameters``,
``_buffers``, ``_modules``, ``_init_args``, ``_init_kwargs``, ...). The stock loader ``exec()``s that
source. :class:`SafeUnpickler` instead resolves only an explicit allow-list of globals:

- tensor rebuilding (``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``) and storages
  (``torch.storage._load_from_bytes``, replaced by a ``torch.load(..., weights_only=True)`` call);
- ``collections.OrderedDict``, ``builtins.set`` / ``frozenset``, numpy dtypes, scalars and arrays,
  and the pickle-protocol helpers ``copyreg._reconstructor`` / ``_codecs.encode`` (restricted);
- ``dnnlib.EasyDict`` -> :class:`KwargsDict`, a plain dict subclass;
- the persistence hook -> :class:`PersistentRecord`, an inert record whose source is never run;
- plain ``torch.nn.Module`` subclasses that EG3D pickles by reference (``OSGDecoder``,
  ``torch.nn.Sequential``, the renderer, ...) -> :class:`InertModule` stand-ins. Their own code is
  never imported, so naming any class inside ``training.*`` or ``torch.nn.modules.*`` is harmless.

Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, unknown globals) raises
:class:`UnsafePickleError` naming the global and the file, before anything is called.

:func:`load_eg3d_checkpoint` walks the inert records into a flat ``state_dict`` whose names are
exactly those ``module.state_dict()`` gives in NVlabs' code (``backbone.mapping.fc0.weight``,
``superresolution.block0.conv0.noise_const``, ``decoder.net.0.weight``, ...), plus the generator's
init kwargs. :func:`load_state_into` copies it into our own modules, strictly.
"""

from __future__ import annotations

import functools
import io
import math
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from talk3d_core.model.eg3d.config import NOISE_MODES, PLANE_AXES, GeneratorConfig
from talk3d_core.model.eg3d.generator import TriPlaneGenerator
from talk3d_core.model.eg3d.layers import setup_filter

#: Where NVlabs' persistence hook lives; pickles call it to rebuild every decorated network class.
PERSISTENCE_HOOK = ("torch_utils", "persistence", "_reconstruct_persistent_obj")

# Module prefixes whose classes become inert stand-ins (never imported, never instantiated for real).
_INERT_MODULE_PREFIXES = ("training.", "torch.nn.modules.")


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed, or does not fit the module it is loaded into."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list; nothing from it was called."""


class KwargsDict(dict):
    """Stand-in for ``dnnlib.EasyDict``: a plain dict (no attribute access, no code from dnnlib)."""


@dataclass
class PersistentRecord:
    """Inert result of ``torch_utils.persistence._reconstruct_persistent_obj(meta)``.

    ``module_source`` is the text of the Python module that defined the class. It is kept for
    inspection only and is never compiled or executed. ``state`` is the instance ``__dict__``.
    """

    class_name: str
    module_source: str
    state: dict[str, Any]
    version: int | None = None


class InertModule:
    """Stand-in for a plain (non-persistent) ``torch.nn.Module`` subclass named in the pickle.

    Subclasses are made per qualified name by :class:`SafeUnpickler`; pickle's NEWOBJ/BUILD
    opcodes only create the object and hand it its ``__dict__`` state, which is stored as-is.
    """

    qualified_name: str = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"__state__": state}

    def __repr__(self) -> str:
        return f"InertModule({self.qualified_name})"


def _persistent_record(meta: Any) -> PersistentRecord:
    """Replacement for the persistence hook: record ``meta`` without executing its source."""
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise pickle.UnpicklingError("persistent object meta is not a dict with a 'state' dict")
    if meta.get("type", "class") != "class":
        raise pickle.UnpicklingError(f"persistent object of unsupported type {meta.get('type')!r}")
    return PersistentRecord(
        class_name=str(meta.get("class_name", "?")),
        module_source=str(meta.get("module_src", "")),
        state=dict(meta["state"]),
        version=meta.get("version"),
    )


def _storage_from_bytes(data: Any) -> Any:
    """Replacement for ``torch.storage._load_from_bytes``: the nested load is weights-only too."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage payload is not bytes")
    return torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """Replacement for ``numpy.core.multiarray.scalar``: numeric scalars from raw bytes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError(f"refusing numpy scalar of dtype {dtype!r}")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _numpy_empty_array(cls: Any, shape: Any, dtype_code: Any, *, max_bytes: int = 0) -> np.ndarray:
    """Replacement for ``numpy.core.multiarray._reconstruct``; BUILD then fills the array, from bytes
    of the file, so an array larger than ``max_bytes`` (the file's size) is a lie, refused before
    anything is allocated."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing numpy array subclass {cls!r}")
    dtype = np.dtype(dtype_code)
    dims = tuple(shape) if isinstance(shape, tuple | list) else (shape,)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        raise pickle.UnpicklingError(f"refusing numpy array of shape {shape!r}")
    if math.prod(dims) * dtype.itemsize > max_bytes:
        raise pickle.UnpicklingError(f"a numpy array of shape {dims} is larger than the file")
    return np.ndarray(dims, dtype=dtype)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Replacement for ``_codecs.encode``, which protocol-2 pickles use to spell ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _inert_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Replacement for ``copyreg._reconstructor`` (pickle protocols 0/1): stand-ins only."""
    if not (isinstance(cls, type) and issubclass(cls, (InertModule, KwargsDict))) or base is not object:
        raise pickle.UnpicklingError(f"refusing copyreg reconstruction of {cls!r} from {base!r}")
    return cls.__new__(cls)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _inert_reconstructor,
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    # numpy 1.x (the EG3D release) and numpy 2.x spell the private module differently.
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_empty_array,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_empty_array,
    ("dnnlib.util", "EasyDict"): KwargsDict,
    ("dnnlib", "EasyDict"): KwargsDict,
    (".".join(PERSISTENCE_HOOK[:2]), PERSISTENCE_HOOK[2]): _persistent_record,
}


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the allow-list above; ``source`` names the file."""

    def __init__(self, file: BinaryIO, *, source: str | Path, max_bytes: int) -> None:
        super().__init__(file)
        self.source = str(source)
        self.max_bytes = max_bytes  # no array can hold more bytes than the file
        self._stand_ins: dict[str, type[InertModule]] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _SAFE_GLOBALS.get((module, name))
        if found is _numpy_empty_array:
            return functools.partial(_numpy_empty_array, max_bytes=self.max_bytes)
        if found is not None:
            return found
        if module.startswith(_INERT_MODULE_PREFIXES) and name.isidentifier():
            qualified = f"{module}.{name}"
            if qualified not in self._stand_ins:
                self._stand_ins[qualified] = type(name, (InertModule,), {"qualified_name": qualified})
            return self._stand_ins[qualified]
        raise UnsafePickleError(
            f"{self.source}: refusing to load global {module}.{name} (not on the EG3D checkpoint "
            "allow-list; the file may be corrupt or malicious)"
        )


def safe_load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`; a missing, truncated or malformed file (nesting
    too deep, arrays larger than the file) -> CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with path.open("rb") as f:
        try:
            return SafeUnpickler(f, source=path, max_bytes=path.stat().st_size).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, RuntimeError, MemoryError) as exc:
            raise CheckpointError(
                f"{path}: not a readable EG3D pickle ({type(exc).__name__}: {exc})"
            ) from exc


def _plain(value: Any) -> Any:
    """Deep-convert KwargsDict/OrderedDict/tuples-of-them into plain dicts and lists (for kwargs)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _module_state(record: Any, where: str) -> dict[str, Any]:
    if isinstance(record, PersistentRecord):
        return record.state
    if isinstance(record, InertModule):
        # pickle's NEWOBJ skips __init__; a stand-in that never got a BUILD has no state at all.
        return getattr(record, "state", {})
    raise CheckpointError(f"{where} is a {type(record).__name__}, not a pickled torch module")


def collect_state_dict(record: Any, *, where: str) -> dict[str, torch.Tensor]:
    """Flatten an inert module tree into ``module.state_dict()`` order and names.

    Per module: its own parameters, then its persistent buffers, then each child under
    ``<child>.`` (``None`` entries, e.g. a layer without bias, are skipped as torch does).
    ``where`` names the file and network for error messages. Tensors are detached CPU tensors.
    """
    out: dict[str, torch.Tensor] = {}

    def visit(node: Any, prefix: str) -> None:
        state = _module_state(node, f"{where}: {prefix.rstrip('.') or '<root>'}")
        non_persistent = set(state.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for name, tensor in (state.get(group) or {}).items():
                if tensor is None or (group == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(tensor, torch.Tensor):
                    raise CheckpointError(
                        f"{where}: {prefix}{name} is a {type(tensor).__name__}, not a tensor"
                    )
                out[prefix + name] = tensor.detach()
        for name, child in (state.get("_modules") or {}).items():
            if child is not None:
                visit(child, f"{prefix}{name}.")

    visit(record, "")
    return out


@dataclass
class EG3DCheckpoint:
    """One network of an EG3D snapshot, read without running any of its code.

    ``state_dict``: NVlabs ``state_dict()`` names -> CPU tensors (float32 in the released files).
    ``init_kwargs``: the constructor kwargs (z_dim, c_dim, w_dim, img_resolution, img_channels,
    rendering_kwargs, sr_num_fp16_res, sr_kwargs, mapping_kwargs, channel_base, ...), as plain dicts.
    ``rendering_kwargs``: the network's ``rendering_kwargs`` attribute (falls back to init kwargs).
    ``neural_rendering_resolution``: the attribute saved with the network (128 for ``*-128`` files).
    ``plane_axes``: the name (a key of PLANE_AXES) of the projection the renderer's ``plane_axes``
    matrices record, or None when the pickle holds none.
    """

    path: Path
    network: str
    class_name: str
    state_dict: dict[str, torch.Tensor]
    init_args: tuple[Any, ...]
    init_kwargs: dict[str, Any]
    rendering_kwargs: dict[str, Any]
    neural_rendering_resolution: int | None
    training_set_kwargs: dict[str, Any] | None
    module_source: str = field(repr=False, default="")
    plane_axes: str | None = None  # the renderer's recorded projection (a PLANE_AXES name), if any

    @property
    def num_elements(self) -> int:
        """Total number of tensor elements (parameters and buffers)."""
        return sum(t.numel() for t in self.state_dict.values())


def load_eg3d_checkpoint(path: str | Path, network: str = "G_ema") -> EG3DCheckpoint:
    """Read one network (``G_ema`` by default) of an NVlabs EG3D snapshot pickle, safely.

    Raises :class:`UnsafePickleError` for a pickle that names a global outside the allow-list and
    :class:`CheckpointError` for a missing file, a non-EG3D layout or a missing network.
    """
    path = Path(path)
    data = safe_load_pickle(path)
    try:
        return _read_network(path, data, network)
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be an EG3D snapshot") from None


def _read_network(path: Path, data: Any, network: str) -> EG3DCheckpoint:
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: top level is a {type(data).__name__}, expected the EG3D snapshot dict"
        )
    record = data.get(network)
    if record is None:
        present = sorted(str(k) for k, v in data.items() if v is not None)
        raise CheckpointError(f"{path}: no network {network!r} in the snapshot (present: {present})")
    where = f"{path} [{network}]"
    state = _module_state(record, where)
    init_kwargs = _plain(dict(state.get("_init_kwargs") or {}))
    rendering = state.get("rendering_kwargs", init_kwargs.get("rendering_kwargs")) or {}
    resolution = state.get("neural_rendering_resolution")
    training_set = data.get("training_set_kwargs")
    return EG3DCheckpoint(
        path=path,
        network=network,
        class_name=record.class_name if isinstance(record, PersistentRecord) else record.qualified_name,
        state_dict=collect_state_dict(record, where=where),
        init_args=tuple(_plain(list(state.get("_init_args") or ()))),
        init_kwargs=init_kwargs,
        rendering_kwargs=_plain(dict(rendering)),
        neural_rendering_resolution=int(resolution) if resolution is not None else None,
        training_set_kwargs=_plain(dict(training_set)) if isinstance(training_set, dict) else None,
        module_source=record.module_source if isinstance(record, PersistentRecord) else "",
        plane_axes=_recorded_plane_axes(state, where),
    )


def plane_axes_name(matrices: Any) -> str:
    """The PLANE_AXES name of NVlabs' ``generate_planes()`` matrices (3, 3, 3): a point p lands on
    plane i at the first two coordinates of ``p @ inv(matrices[i])``; each must be one world axis."""
    planes = torch.as_tensor(matrices, dtype=torch.float64)
    if planes.shape != (3, 3, 3):
        raise ValueError(f"plane axes of shape {tuple(planes.shape)}, expected (3, 3, 3)")
    axes = []
    for inverse in torch.linalg.inv(planes):
        pair = []
        for column in (0, 1):
            picks = inverse[:, column]
            if int((picks.abs() > 1e-6).sum()) != 1 or float(picks.abs().max()) != 1.0:
                raise ValueError(f"plane axes {planes.tolist()} do not project onto world axes")
            pair.append(int(picks.abs().argmax()))
        axes.append(tuple(pair))
    found = [name for name, table in PLANE_AXES.items() if tuple(axes) == table]
    if not found:
        raise ValueError(f"plane axes {axes} are none of {sorted(PLANE_AXES)}")
    return found[0]


def _recorded_plane_axes(state: dict[str, Any], where: str) -> str | None:
    """The projection NVlabs' renderer pickles as its ``plane_axes`` attribute, by name."""
    renderer = (state.get("_modules") or {}).get("renderer")
    if renderer is None:
        return None
    matrices = _module_state(renderer, f"{where}: renderer").get("plane_axes")
    if matrices is None:
        return None
    try:
        return plane_axes_name(matrices)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: renderer.plane_axes: {exc}") from None


def _format_names(title: str, names: list[str]) -> str:
    return f"{len(names)} {title}:\n  " + "\n  ".join(names)


def load_state_into(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    what: str,
    rename: Mapping[str, str] | None = None,
) -> None:
    """Copy ``state_dict`` into ``module`` strictly (parameters and persistent buffers).

    ``rename`` maps checkpoint names to module names for the entries whose names differ; a rename
    source absent from ``state_dict`` is an error too (a stale table). Before anything is copied,
    every leftover tensor (in the checkpoint, not in the module), missing tensor (in the module, not
    in the checkpoint) and shape mismatch is collected and reported together by name in one
    :class:`CheckpointError` prefixed with ``what`` (e.g. the file and network). Values are cast to
    the module's dtypes and devices.
    """
    rename = dict(rename or {})
    problems: list[str] = []
    stale = sorted(k for k in rename if k not in state_dict)
    if stale:
        problems.append(_format_names("rename entries name no checkpoint tensor", stale))
    source = {rename.get(k, k): v for k, v in state_dict.items()}
    if len(source) != len(state_dict):
        problems.append("the rename table maps two checkpoint tensors onto one name")
    target = module.state_dict()
    leftover = [k for k in source if k not in target]
    missing = [k for k in target if k not in source]
    mismatched = [
        f"{k}: checkpoint {tuple(source[k].shape)} vs module {tuple(target[k].shape)}"
        for k in target
        if k in source and tuple(source[k].shape) != tuple(target[k].shape)
    ]
    if leftover:
        problems.append(_format_names("leftover checkpoint tensors (no such module entry)", leftover))
    if missing:
        problems.append(_format_names("missing tensors (module entries absent from the checkpoint)", missing))
    if mismatched:
        problems.append(_format_names("shape mismatches", mismatched))
    if problems:
        raise CheckpointError(
            f"{what}: checkpoint does not fit {type(module).__name__}:\n" + "\n".join(problems)
        )
    with torch.no_grad():
        for name, tensor in target.items():
            tensor.copy_(source[name])


# NVlabs super-resolution modules by name: whether block0 upsamples (8X: 4x in two steps) or keeps the
# input size (2X / 4X: "NoUp" block0), and whether the module holds a top-level resample_filter buffer
# that its forward pass never reads.
_SR_MODULES = {
    "training.superresolution.SuperresolutionHybrid8XDC": {"factor": 4, "spare_filter": False},
    "training.superresolution.SuperresolutionHybrid8X": {"factor": 4, "spare_filter": True},
    "training.superresolution.SuperresolutionHybrid4X": {"factor": 2, "spare_filter": True},
    "training.superresolution.SuperresolutionHybrid2X": {"factor": 2, "spare_filter": True},
}
_REQUIRED = object()
# Generator kwargs that only choose a precision or a kernel implementation (we compute in float32 with
# one implementation), and rendering kwargs read only by training losses or NVlabs' viewer.
_PRECISION_KWARGS = frozenset({"num_fp16_res", "fused_modconv_default"})
_TRAINING_RENDERING_KWARGS = frozenset(
    {
        "gpc_reg_prob",
        "gpc_reg_fade_kimg",
        "density_reg",
        "density_reg_every",
        "density_reg_p_dist",
        "reg_type",
        "avg_camera_radius",
        "avg_camera_pivot",
    }
)


def generator_from_checkpoint(ckpt: EG3DCheckpoint, *, plane_axes: str) -> TriPlaneGenerator:
    """A :class:`~talk3d_core.model.eg3d.TriPlaneGenerator` (eval mode) holding the tensors of ``ckpt``.

    The :class:`~talk3d_core.model.eg3d.GeneratorConfig` comes from the checkpoint's init kwargs (z/w/c
    dims, output size, backbone widths, mapping layers), its rendering kwargs (samples, ray range,
    box warp, camera conditioning, super-resolution options) and its neural rendering resolution. The
    sizes NVlabs' code fixes instead of taking as kwargs (256^2 x 3 x 32 planes, the 64-wide decoder,
    32 feature channels, the super-resolution widths) are read from the tensor shapes. ``plane_axes``
    ("original" or "fixed") must name the projection the checkpoint was trained with: NVlabs'
    renderer records it, and a different setting is refused (it would render silently wrong). Tensors
    are loaded strictly (:func:`load_state_into`). A kwarg this implementation does not support, or
    one whose value it cannot reproduce, raises :class:`CheckpointError`.
    """
    what = f"{ckpt.path} [{ckpt.network}]"
    if ckpt.plane_axes is not None and plane_axes in PLANE_AXES and ckpt.plane_axes != plane_axes:
        raise CheckpointError(
            f"{what}: its renderer projects the tri-planes as {ckpt.plane_axes!r} "
            f"{PLANE_AXES[ckpt.plane_axes]}, but plane_axes {plane_axes!r} was asked for: set "
            f"prior.plane_axes: {ckpt.plane_axes} for this checkpoint"
        )
    state = dict(ckpt.state_dict)
    problems: list[str] = []
    kwargs = dict(ckpt.init_kwargs)
    rendering = dict(ckpt.rendering_kwargs or kwargs.get("rendering_kwargs") or {})

    def take(table: dict[str, Any], key: str, where: str, default: Any = _REQUIRED) -> Any:
        """Pop ``key`` from ``table`` (so leftovers are the unsupported ones); a missing required key
        is a problem, a missing optional one gives NVlabs' default."""
        if key in table:
            return table.pop(key)
        if default is _REQUIRED:
            problems.append(f"{where} lacks {key!r}")
            return None
        return default

    # -- init kwargs ---------------------------------------------------------------------------------
    if ckpt.init_args:
        problems.append(f"positional init args are not supported: {ckpt.init_args!r}")
    dims = {k: take(kwargs, k, "init kwargs") for k in ("z_dim", "c_dim", "w_dim", "img_resolution")}
    img_channels = take(kwargs, "img_channels", "init kwargs", 3)
    if img_channels != 3:
        problems.append(f"img_channels={img_channels} (only RGB generators are supported)")
    sr_num_fp16_res = take(kwargs, "sr_num_fp16_res", "init kwargs", 0)
    kwargs.pop("rendering_kwargs", None)
    mapping = dict(take(kwargs, "mapping_kwargs", "init kwargs", {}) or {})
    mapping_layers = take(mapping, "num_layers", "mapping_kwargs", 8)  # NVlabs' MappingNetwork default
    mapping_lr_mul = take(mapping, "lr_multiplier", "mapping_kwargs", 0.01)
    w_avg_beta = take(mapping, "w_avg_beta", "mapping_kwargs", 0.998)
    problems += [f"unsupported mapping_kwargs entry {k!r}={v!r}" for k, v in mapping.items()]
    sr_kwargs = dict(take(kwargs, "sr_kwargs", "init kwargs", {}) or {})
    # NVlabs' super-resolution modules accept and ignore these (their widths are fixed in code).
    for key in ("channel_base", "channel_max", "conv_clamp", *_PRECISION_KWARGS):
        sr_kwargs.pop(key, None)
    problems += [f"unsupported sr_kwargs entry {k!r}={v!r}" for k, v in sr_kwargs.items()]
    channel_base = take(kwargs, "channel_base", "init kwargs", 32768)
    channel_max = take(kwargs, "channel_max", "init kwargs", 512)
    conv_clamp = take(kwargs, "conv_clamp", "init kwargs", None)
    for key in _PRECISION_KWARGS:
        kwargs.pop(key, None)
    problems += [f"unsupported init kwarg {k!r}={v!r}" for k, v in kwargs.items()]

    # -- rendering kwargs ----------------------------------------------------------------------------
    sr_module = take(rendering, "superresolution_module", "rendering_kwargs")
    sr = _SR_MODULES.get(sr_module) if isinstance(sr_module, str) else None
    if sr_module is not None and sr is None:
        problems.append(f"unsupported superresolution_module {sr_module!r} (known: {sorted(_SR_MODULES)})")
    image_resolution = take(rendering, "image_resolution", "rendering_kwargs", dims["img_resolution"])
    if image_resolution != dims["img_resolution"]:
        problems.append(f"rendering image_resolution {image_resolution} != img_resolution")
    for key, expected in (("clamp_mode", "softplus"), ("density_noise", 0)):
        value = take(rendering, key, "rendering_kwargs", expected)
        if value != expected:
            problems.append(f"rendering {key}={value!r} is not supported (only {expected!r})")
    ray_start = take(rendering, "ray_start", "rendering_kwargs")
    ray_end = take(rendering, "ray_end", "rendering_kwargs")
    if "auto" in (ray_start, ray_end):
        problems.append("ray_start/ray_end 'auto' (box-intersection ray limits) is not supported")
    noise = take(rendering, "superresolution_noise_mode", "rendering_kwargs")
    if noise is not None and noise not in NOISE_MODES:
        problems.append(f"superresolution_noise_mode={noise!r} (supported: {NOISE_MODES})")
    options = {
        "depth_resolution": take(rendering, "depth_resolution", "rendering_kwargs"),
        "depth_resolution_importance": take(rendering, "depth_resolution_importance", "rendering_kwargs"),
        "box_warp": take(rendering, "box_warp", "rendering_kwargs"),
        "white_back": take(rendering, "white_back", "rendering_kwargs", False),
        "disparity_space_sampling": take(rendering, "disparity_space_sampling", "rendering_kwargs"),
        "c_gen_conditioning_zero": take(rendering, "c_gen_conditioning_zero", "rendering_kwargs"),
        "c_scale": take(rendering, "c_scale", "rendering_kwargs", 0.0),  # NVlabs' default when absent
        "sr_antialias": take(rendering, "sr_antialias", "rendering_kwargs"),
        "decoder_lr_mul": take(rendering, "decoder_lr_mul", "rendering_kwargs", 1.0),
    }
    decoder_output_dim = take(rendering, "decoder_output_dim", "rendering_kwargs", None)
    for key in _TRAINING_RENDERING_KWARGS:
        rendering.pop(key, None)
    problems += [f"unsupported rendering kwarg {k!r}={v!r}" for k, v in rendering.items()]
    if ckpt.neural_rendering_resolution is None:
        problems.append("no neural_rendering_resolution attribute")

    # -- sizes NVlabs fixes in code: read them off the tensors ---------------------------------------
    def shape(name: str) -> tuple[int, ...]:
        if name not in state:
            problems.append(f"cannot size the generator: no tensor {name}")
            return (0, 0)
        return tuple(state[name].shape)

    blocks = sorted(
        int(k.split(".")[2][1:])
        for k in state
        if k.startswith("backbone.synthesis.b") and k.endswith(".torgb.weight")
    )
    plane_resolution = blocks[-1] if blocks else 0
    plane_out = shape(f"backbone.synthesis.b{plane_resolution}.torgb.weight")[0]
    if plane_out % 3:
        problems.append(f"backbone outputs {plane_out} channels, not 3 planes' worth")
    decoder_hidden = shape("decoder.net.0.weight")[0]
    decoder_dim = shape("decoder.net.2.weight")[0] - 1
    if decoder_output_dim is not None and decoder_output_dim != decoder_dim:
        problems.append(f"decoder_output_dim={decoder_output_dim} but decoder.net.2 gives {decoder_dim}")
    sr_channels = (
        shape("superresolution.block0.conv0.weight")[0],
        shape("superresolution.block1.conv0.weight")[0],
    )
    if problems:
        raise CheckpointError(f"{what}: cannot build a generator:\n  " + "\n  ".join(problems))

    try:
        config = GeneratorConfig(
            z_dim=dims["z_dim"],
            c_dim=dims["c_dim"],
            w_dim=dims["w_dim"],
            image_resolution=dims["img_resolution"],
            mapping_layers=int(mapping_layers),
            mapping_lr_mul=float(mapping_lr_mul),
            w_avg_beta=float(w_avg_beta),
            plane_resolution=plane_resolution,
            plane_channels=plane_out // 3,
            channel_base=int(channel_base),
            channel_max=int(channel_max),
            conv_clamp=conv_clamp,
            decoder_hidden=decoder_hidden,
            decoder_output_dim=decoder_dim,
            decoder_lr_mul=float(options["decoder_lr_mul"]),
            neural_rendering_resolution=int(ckpt.neural_rendering_resolution),
            depth_resolution=int(options["depth_resolution"]),
            depth_resolution_importance=int(options["depth_resolution_importance"]),
            ray_start=float(ray_start),
            ray_end=float(ray_end),
            box_warp=float(options["box_warp"]),
            white_back=bool(options["white_back"]),
            disparity_space_sampling=bool(options["disparity_space_sampling"]),
            plane_axes=plane_axes,
            c_gen_conditioning_zero=bool(options["c_gen_conditioning_zero"]),
            c_scale=float(options["c_scale"]),
            sr_channels=sr_channels,
            # NVlabs clamps the super-resolution convs exactly when they run in float16.
            sr_conv_clamp=256.0 if sr_num_fp16_res > 0 else None,
            sr_fp16=sr_num_fp16_res > 0,
            sr_antialias=bool(options["sr_antialias"]),
            sr_noise_mode=noise,
        )
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{what}: cannot build a generator: {exc}") from exc
    factor = config.image_resolution // config.sr_input_resolution
    if factor != sr["factor"]:
        raise CheckpointError(
            f"{what}: {sr_module} upsamples {sr['factor']}x in its blocks, but a {config.image_resolution}"
            f" px generator here upsamples {factor}x (input {config.sr_input_resolution} px)"
        )
    if sr["spare_filter"] and "superresolution.resample_filter" in state:
        spare = state.pop("superresolution.resample_filter")
        if spare.shape != (4, 4) or not torch.allclose(spare.float(), setup_filter()):
            raise CheckpointError(f"{what}: superresolution.resample_filter is not the [1, 3, 3, 1] filter")
    generator = TriPlaneGenerator(config)
    load_state_into(generator, state, what=what)
    return generator.eval()


def load_verified_generator(
    checkpoint: str | Path,
    plane_axes: str,
    weights_dir: str | Path,
    manifest: str | Path,
) -> TriPlaneGenerator:
    """The generator of an EG3D snapshot pickle, checked against its digest first (the manifest's, or
    the one recorded at its first download) at every load, not only when fetched; a missing or
    altered file is an error naming the command that fetches it."""
    from talk3d_core.util.weights import pinned_sha256, verify_weights

    pinned = pinned_sha256(checkpoint, weights_dir, manifest)
    path = verify_weights(checkpoint, pinned, fetch_hint=f"snakemake --cores 1 {checkpoint}")
    return generator_from_checkpoint(load_eg3d_checkpoint(path), plane_axes=plane_axes)
