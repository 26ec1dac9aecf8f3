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


def _numpy_empty_array(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """Replacement for ``numpy.core.multiarray._reconstruct``; BUILD then fills the array."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing numpy array subclass {cls!r}")
    return np.ndarray(shape, dtype=np.dtype(dtype_code))


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

    def __init__(self, file: BinaryIO, *, source: str | Path) -> None:
        super().__init__(file)
        self.source = str(source)
        self._stand_ins: dict[str, type[InertModule]] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _SAFE_GLOBALS.get((module, name))
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
    """Unpickle ``path`` with :class:`SafeUnpickler`; a missing or truncated file -> CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with path.open("rb") as f:
        try:
            return SafeUnpickler(f, source=path).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, RuntimeError) as exc:
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
    )


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


def shape_table_counts(table: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
    """(number of tensors, number of elements) of a name -> shape table."""
    return len(table), sum(math.prod(shape) for shape in table.values())


# NVlabs TriPlaneGenerator as trained for FFHQ 512 with 128^2 neural rendering
# (ffhqrebalanced512-128.pkl, ffhq512-128.pkl, ffhq-fixed-triplane512-128.pkl): state_dict names and
# shapes in state_dict order. Backbone: StyleGAN2 at 256^2 with 96 = 3 x 32 output channels,
# channel_base 32768, channel_max 512, 2 mapping layers, 25-number camera label; super-resolution:
# SuperresolutionHybrid8XDC (128 -> 256 -> 512, 256/128 channels); decoder: OSGDecoder 32 -> 64 -> 33.
# Buffers: resample_filter (4x4 FIR), noise_const, mapping.w_avg. 176 tensors, 31,493,160 elements
# (132 parameters with 30,662,136 elements; 44 buffers with 831,024 elements).
EG3D_FFHQ512_128_G_SHAPES: dict[str, tuple[int, ...]] = {
    "backbone.synthesis.b4.const": (512, 4, 4),
    "backbone.synthesis.b4.resample_filter": (4, 4),
    "backbone.synthesis.b4.conv1.weight": (512, 512, 3, 3),
    "backbone.synthesis.b4.conv1.noise_strength": (),
    "backbone.synthesis.b4.conv1.bias": (512,),
    "backbone.synthesis.b4.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b4.conv1.noise_const": (4, 4),
    "backbone.synthesis.b4.conv1.affine.weight": (512, 512),
    "backbone.synthesis.b4.conv1.affine.bias": (512,),
    "backbone.synthesis.b4.torgb.weight": (96, 512, 1, 1),
    "backbone.synthesis.b4.torgb.bias": (96,),
    "backbone.synthesis.b4.torgb.affine.weight": (512, 512),
    "backbone.synthesis.b4.torgb.affine.bias": (512,),
    "backbone.synthesis.b8.resample_filter": (4, 4),
    "backbone.synthesis.b8.conv0.weight": (512, 512, 3, 3),
    "backbone.synthesis.b8.conv0.noise_strength": (),
    "backbone.synthesis.b8.conv0.bias": (512,),
    "backbone.synthesis.b8.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b8.conv0.noise_const": (8, 8),
    "backbone.synthesis.b8.conv0.affine.weight": (512, 512),
    "backbone.synthesis.b8.conv0.affine.bias": (512,),
    "backbone.synthesis.b8.conv1.weight": (512, 512, 3, 3),
    "backbone.synthesis.b8.conv1.noise_strength": (),
    "backbone.synthesis.b8.conv1.bias": (512,),
    "backbone.synthesis.b8.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b8.conv1.noise_const": (8, 8),
    "backbone.synthesis.b8.conv1.affine.weight": (512, 512),
    "backbone.synthesis.b8.conv1.affine.bias": (512,),
    "backbone.synthesis.b8.torgb.weight": (96, 512, 1, 1),
    "backbone.synthesis.b8.torgb.bias": (96,),
    "backbone.synthesis.b8.torgb.affine.weight": (512, 512),
    "backbone.synthesis.b8.torgb.affine.bias": (512,),
    "backbone.synthesis.b16.resample_filter": (4, 4),
    "backbone.synthesis.b16.conv0.weight": (512, 512, 3, 3),
    "backbone.synthesis.b16.conv0.noise_strength": (),
    "backbone.synthesis.b16.conv0.bias": (512,),
    "backbone.synthesis.b16.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b16.conv0.noise_const": (16, 16),
    "backbone.synthesis.b16.conv0.affine.weight": (512, 512),
    "backbone.synthesis.b16.conv0.affine.bias": (512,),
    "backbone.synthesis.b16.conv1.weight": (512, 512, 3, 3),
    "backbone.synthesis.b16.conv1.noise_strength": (),
    "backbone.synthesis.b16.conv1.bias": (512,),
    "backbone.synthesis.b16.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b16.conv1.noise_const": (16, 16),
    "backbone.synthesis.b16.conv1.affine.weight": (512, 512),
    "backbone.synthesis.b16.conv1.affine.bias": (512,),
    "backbone.synthesis.b16.torgb.weight": (96, 512, 1, 1),
    "backbone.synthesis.b16.torgb.bias": (96,),
    "backbone.synthesis.b16.torgb.affine.weight": (512, 512),
    "backbone.synthesis.b16.torgb.affine.bias": (512,),
    "backbone.synthesis.b32.resample_filter": (4, 4),
    "backbone.synthesis.b32.conv0.weight": (512, 512, 3, 3),
    "backbone.synthesis.b32.conv0.noise_strength": (),
    "backbone.synthesis.b32.conv0.bias": (512,),
    "backbone.synthesis.b32.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b32.conv0.noise_const": (32, 32),
    "backbone.synthesis.b32.conv0.affine.weight": (512, 512),
    "backbone.synthesis.b32.conv0.affine.bias": (512,),
    "backbone.synthesis.b32.conv1.weight": (512, 512, 3, 3),
    "backbone.synthesis.b32.conv1.noise_strength": (),
    "backbone.synthesis.b32.conv1.bias": (512,),
    "backbone.synthesis.b32.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b32.conv1.noise_const": (32, 32),
    "backbone.synthesis.b32.conv1.affine.weight": (512, 512),
    "backbone.synthesis.b32.conv1.affine.bias": (512,),
    "backbone.synthesis.b32.torgb.weight": (96, 512, 1, 1),
    "backbone.synthesis.b32.torgb.bias": (96,),
    "backbone.synthesis.b32.torgb.affine.weight": (512, 512),
    "backbone.synthesis.b32.torgb.affine.bias": (512,),
    "backbone.synthesis.b64.resample_filter": (4, 4),
    "backbone.synthesis.b64.conv0.weight": (512, 512, 3, 3),
    "backbone.synthesis.b64.conv0.noise_strength": (),
    "backbone.synthesis.b64.conv0.bias": (512,),
    "backbone.synthesis.b64.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b64.conv0.noise_const": (64, 64),
    "backbone.synthesis.b64.conv0.affine.weight": (512, 512),
    "backbone.synthesis.b64.conv0.affine.bias": (512,),
    "backbone.synthesis.b64.conv1.weight": (512, 512, 3, 3),
    "backbone.synthesis.b64.conv1.noise_strength": (),
    "backbone.synthesis.b64.conv1.bias": (512,),
    "backbone.synthesis.b64.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b64.conv1.noise_const": (64, 64),
    "backbone.synthesis.b64.conv1.affine.weight": (512, 512),
    "backbone.synthesis.b64.conv1.affine.bias": (512,),
    "backbone.synthesis.b64.torgb.weight": (96, 512, 1, 1),
    "backbone.synthesis.b64.torgb.bias": (96,),
    "backbone.synthesis.b64.torgb.affine.weight": (512, 512),
    "backbone.synthesis.b64.torgb.affine.bias": (512,),
    "backbone.synthesis.b128.resample_filter": (4, 4),
    "backbone.synthesis.b128.conv0.weight": (256, 512, 3, 3),
    "backbone.synthesis.b128.conv0.noise_strength": (),
    "backbone.synthesis.b128.conv0.bias": (256,),
    "backbone.synthesis.b128.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b128.conv0.noise_const": (128, 128),
    "backbone.synthesis.b128.conv0.affine.weight": (512, 512),
    "backbone.synthesis.b128.conv0.affine.bias": (512,),
    "backbone.synthesis.b128.conv1.weight": (256, 256, 3, 3),
    "backbone.synthesis.b128.conv1.noise_strength": (),
    "backbone.synthesis.b128.conv1.bias": (256,),
    "backbone.synthesis.b128.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b128.conv1.noise_const": (128, 128),
    "backbone.synthesis.b128.conv1.affine.weight": (256, 512),
    "backbone.synthesis.b128.conv1.affine.bias": (256,),
    "backbone.synthesis.b128.torgb.weight": (96, 256, 1, 1),
    "backbone.synthesis.b128.torgb.bias": (96,),
    "backbone.synthesis.b128.torgb.affine.weight": (256, 512),
    "backbone.synthesis.b128.torgb.affine.bias": (256,),
    "backbone.synthesis.b256.resample_filter": (4, 4),
    "backbone.synthesis.b256.conv0.weight": (128, 256, 3, 3),
    "backbone.synthesis.b256.conv0.noise_strength": (),
    "backbone.synthesis.b256.conv0.bias": (128,),
    "backbone.synthesis.b256.conv0.resample_filter": (4, 4),
    "backbone.synthesis.b256.conv0.noise_const": (256, 256),
    "backbone.synthesis.b256.conv0.affine.weight": (256, 512),
    "backbone.synthesis.b256.conv0.affine.bias": (256,),
    "backbone.synthesis.b256.conv1.weight": (128, 128, 3, 3),
    "backbone.synthesis.b256.conv1.noise_strength": (),
    "backbone.synthesis.b256.conv1.bias": (128,),
    "backbone.synthesis.b256.conv1.resample_filter": (4, 4),
    "backbone.synthesis.b256.conv1.noise_const": (256, 256),
    "backbone.synthesis.b256.conv1.affine.weight": (128, 512),
    "backbone.synthesis.b256.conv1.affine.bias": (128,),
    "backbone.synthesis.b256.torgb.weight": (96, 128, 1, 1),
    "backbone.synthesis.b256.torgb.bias": (96,),
    "backbone.synthesis.b256.torgb.affine.weight": (128, 512),
    "backbone.synthesis.b256.torgb.affine.bias": (128,),
    "backbone.mapping.w_avg": (512,),
    "backbone.mapping.embed.weight": (512, 25),
    "backbone.mapping.embed.bias": (512,),
    "backbone.mapping.fc0.weight": (512, 1024),
    "backbone.mapping.fc0.bias": (512,),
    "backbone.mapping.fc1.weight": (512, 512),
    "backbone.mapping.fc1.bias": (512,),
    "superresolution.block0.resample_filter": (4, 4),
    "superresolution.block0.conv0.weight": (256, 32, 3, 3),
    "superresolution.block0.conv0.noise_strength": (),
    "superresolution.block0.conv0.bias": (256,),
    "superresolution.block0.conv0.resample_filter": (4, 4),
    "superresolution.block0.conv0.noise_const": (256, 256),
    "superresolution.block0.conv0.affine.weight": (32, 512),
    "superresolution.block0.conv0.affine.bias": (32,),
    "superresolution.block0.conv1.weight": (256, 256, 3, 3),
    "superresolution.block0.conv1.noise_strength": (),
    "superresolution.block0.conv1.bias": (256,),
    "superresolution.block0.conv1.resample_filter": (4, 4),
    "superresolution.block0.conv1.noise_const": (256, 256),
    "superresolution.block0.conv1.affine.weight": (256, 512),
    "superresolution.block0.conv1.affine.bias": (256,),
    "superresolution.block0.torgb.weight": (3, 256, 1, 1),
    "superresolution.block0.torgb.bias": (3,),
    "superresolution.block0.torgb.affine.weight": (256, 512),
    "superresolution.block0.torgb.affine.bias": (256,),
    "superresolution.block1.resample_filter": (4, 4),
    "superresolution.block1.conv0.weight": (128, 256, 3, 3),
    "superresolution.block1.conv0.noise_strength": (),
    "superresolution.block1.conv0.bias": (128,),
    "superresolution.block1.conv0.resample_filter": (4, 4),
    "superresolution.block1.conv0.noise_const": (512, 512),
    "superresolution.block1.conv0.affine.weight": (256, 512),
    "superresolution.block1.conv0.affine.bias": (256,),
    "superresolution.block1.conv1.weight": (128, 128, 3, 3),
    "superresolution.block1.conv1.noise_strength": (),
    "superresolution.block1.conv1.bias": (128,),
    "superresolution.block1.conv1.resample_filter": (4, 4),
    "superresolution.block1.conv1.noise_const": (512, 512),
    "superresolution.block1.conv1.affine.weight": (128, 512),
    "superresolution.block1.conv1.affine.bias": (128,),
    "superresolution.block1.torgb.weight": (3, 128, 1, 1),
    "superresolution.block1.torgb.bias": (3,),
    "superresolution.block1.torgb.affine.weight": (128, 512),
    "superresolution.block1.torgb.affine.bias": (128,),
    "decoder.net.0.weight": (64, 32),
    "decoder.net.0.bias": (64,),
    "decoder.net.2.weight": (33, 64),
    "decoder.net.2.bias": (33,),
}
