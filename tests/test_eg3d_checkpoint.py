"""Safe EG3D pickle loading: NVlabs persistence layout, refusal of code, strict state loading.

The test pickles are written here in the layout of NVlabs' ``torch_utils.persistence``: every
network class pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` and
``dnnlib.EasyDict`` / ``training.triplane.OSGDecoder`` / ``torch.nn.Sequential`` are named by
reference. A pickler that spells chosen stand-in objects under those global names writes them, so
no fake module is ever put into ``sys.modules``.
"""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import (
    EG3D_FFHQ512_128_G_SHAPES,
    NVLABS_PLANE_MATRICES,
    EasyDictStandIn,
    ImportanceRendererStandIn,
    MipRayMarcher2StandIn,
    NVlabsStylePickler,
    OSGDecoderStandIn,
    PersistentStandIn,
    RaySamplerStandIn,
    SequentialStandIn,
    SoftplusStandIn,
    plain_stand_in,
    shape_table_counts,
)

from talk3d_core.model.eg3d.checkpoint import (
    CheckpointError,
    PersistentRecord,
    UnsafePickleError,
    load_eg3d_checkpoint,
    load_state_into,
    safe_load_pickle,
)

_BUFFER_NAMES = ("resample_filter", "noise_const", "w_avg")


# --------------------------------------------------------------------------------------------------
# Writing pickles in the NVlabs layout


def _module_dict(**attrs: Any) -> dict[str, Any]:
    """The __dict__ of a torch.nn.Module as pickled (hooks and bookkeeping included)."""
    state: dict[str, Any] = dict(
        training=False,
        _parameters=OrderedDict(),
        _buffers=OrderedDict(),
        _non_persistent_buffers_set=set(),
        _backward_hooks=OrderedDict(),
        _forward_hooks=OrderedDict(),
        _forward_pre_hooks=OrderedDict(),
        _state_dict_hooks=OrderedDict(),
        _load_state_dict_pre_hooks=OrderedDict(),
        _modules=OrderedDict(),
    )
    state.update(attrs)
    return state


def _module_tree(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Nest flat state_dict names into module __dict__ states (params vs buffers by leaf name)."""
    root = _module_dict()
    for name, tensor in tensors.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            node = node["_modules"].setdefault(part, _module_dict())
        group = "_buffers" if leaf in _BUFFER_NAMES else "_parameters"
        node[group][leaf] = (
            torch.nn.Parameter(tensor, requires_grad=False) if group == "_parameters" else tensor
        )
    return root


def _wrap_tree(state: dict[str, Any], name: str) -> Any:
    """Turn nested __dict__ states into pickled objects: plain classes where EG3D has them."""
    if not isinstance(state, dict):  # already a stand-in (the Softplus)
        return state
    state["_modules"] = OrderedDict((k, _wrap_tree(v, k)) for k, v in state["_modules"].items())
    if "weight" in state["_parameters"] and state["_parameters"]["weight"].ndim == 2:
        fan_in = state["_parameters"]["weight"].shape[1]
        state["weight_gain"] = np.float64(1.0 / np.sqrt(fan_in))  # numpy scalars, as in NVlabs' layers
    if name == "decoder":
        return plain_stand_in(OSGDecoderStandIn, state)
    if name == "net":
        return plain_stand_in(SequentialStandIn, state)
    return PersistentStandIn(f"Stand-in{name.capitalize()}", state)


_RENDERING_KWARGS = {
    "image_resolution": 512,
    "disparity_space_sampling": False,
    "clamp_mode": "softplus",
    "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
    "c_gen_conditioning_zero": False,
    "gpc_reg_prob": 0.8,
    "c_scale": 1.0,
    "superresolution_noise_mode": "none",
    "density_reg": 0.25,
    "density_reg_p_dist": 0.004,
    "reg_type": "l1",
    "decoder_lr_mul": 1.0,
    "sr_antialias": True,
    "depth_resolution": 48,
    "depth_resolution_importance": 48,
    "ray_start": 2.25,
    "ray_end": 3.3,
    "box_warp": 1,
    "avg_camera_radius": 2.7,
    "avg_camera_pivot": [0, 0, 0.2],
}


def _generator(tensors: dict[str, torch.Tensor], *, source: str = "") -> PersistentStandIn:
    """A TriPlaneGenerator as NVlabs pickles it, holding ``tensors`` under their state_dict names."""
    root = _module_tree(tensors)
    modules = root["_modules"]
    if "decoder" in modules:  # the Softplus between the two FC layers has no tensors
        net = modules["decoder"]["_modules"]["net"]["_modules"]
        net["1"] = plain_stand_in(SoftplusStandIn, _module_dict(beta=1.0, threshold=20.0))
        net = OrderedDict(sorted(net.items()))
        modules["decoder"]["_modules"]["net"]["_modules"] = net
    wrapped = OrderedDict(
        renderer=plain_stand_in(
            ImportanceRendererStandIn,
            _module_dict(
                _modules=OrderedDict(ray_marcher=plain_stand_in(MipRayMarcher2StandIn, _module_dict())),
                plane_axes=NVLABS_PLANE_MATRICES["original"],  # a plain attribute, not in state_dict()
            ),
        ),
        ray_sampler=plain_stand_in(RaySamplerStandIn, _module_dict()),
    )
    wrapped.update((k, _wrap_tree(v, k)) for k, v in modules.items())
    root["_modules"] = wrapped
    init_kwargs = EasyDictStandIn(
        z_dim=512,
        c_dim=25,
        w_dim=512,
        img_resolution=512,
        img_channels=3,
        sr_num_fp16_res=4,
        mapping_kwargs=EasyDictStandIn(num_layers=2),
        rendering_kwargs=dict(_RENDERING_KWARGS),
        sr_kwargs=EasyDictStandIn(
            channel_base=32768, channel_max=512, fused_modconv_default="inference_only"
        ),
        channel_base=32768,
        channel_max=512,
        fused_modconv_default="inference_only",
        num_fp16_res=0,
        conv_clamp=None,
    )
    root.update(
        _init_args=(),
        _init_kwargs=init_kwargs,
        z_dim=512,
        c_dim=25,
        w_dim=512,
        img_resolution=512,
        img_channels=3,
        neural_rendering_resolution=128,
        rendering_kwargs=dict(_RENDERING_KWARGS),
        _last_planes=None,
    )
    return PersistentStandIn("TriPlaneGenerator", root, source)


def _write_snapshot(path: Path, g_ema: Any, **extra: Any) -> Path:
    snapshot = dict(
        training_set_kwargs=dict(
            class_name="training.dataset.ImageFolderDataset", path="ffhq.zip", xflip=True
        ),
        G=None,
        D=None,
        G_ema=g_ema,
        augment_pipe=None,
    )
    snapshot.update(extra)
    with path.open("wb") as f:
        NVlabsStylePickler(f, protocol=4).dump(snapshot)
    return path


def _tensors(names: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Tensors of the given shapes, each filled with its index so that values can be checked."""
    return {name: torch.full(shape, float(i)) for i, (name, shape) in enumerate(names.items())}


# --------------------------------------------------------------------------------------------------
# The shape table


def _stylegan2_block(prefix: str, cin: int, cout: int, res: int, img_channels: int) -> dict:
    """One StyleGAN2 SynthesisBlock (architecture 'skip') from first principles."""

    def fc(p: str, fan_in: int, fan_out: int) -> dict:
        return {p + "weight": (fan_out, fan_in), p + "bias": (fan_out,)}

    def modulated_conv(p: str, fan_in: int, fan_out: int) -> dict:
        # weight, noise strength, bias; FIR buffer + fixed noise map; affine W -> styles (fan_in)
        out = {p + "weight": (fan_out, fan_in, 3, 3), p + "noise_strength": (), p + "bias": (fan_out,)}
        out |= {p + "resample_filter": (4, 4), p + "noise_const": (res, res)}
        return out | fc(p + "affine.", 512, fan_in)

    table: dict = {prefix + "const": (cout, res, res)} if cin == 0 else {}
    table[prefix + "resample_filter"] = (4, 4)
    if cin:
        table |= modulated_conv(prefix + "conv0.", cin, cout)
    table |= modulated_conv(prefix + "conv1.", cout, cout)
    table |= {prefix + "torgb.weight": (img_channels, cout, 1, 1), prefix + "torgb.bias": (img_channels,)}
    return table | fc(prefix + "torgb.affine.", 512, cout)


def test_shape_table_matches_stylegan2_layer_structure():
    channels = {res: min(32768 // res, 512) for res in (4, 8, 16, 32, 64, 128, 256)}
    expected: dict = {}
    for res, cout in channels.items():
        cin = channels[res // 2] if res > 4 else 0
        expected |= _stylegan2_block(f"backbone.synthesis.b{res}.", cin, cout, res, 96)
    expected["backbone.mapping.w_avg"] = (512,)
    for name, (fan_in, fan_out) in {"embed": (25, 512), "fc0": (1024, 512), "fc1": (512, 512)}.items():
        expected |= {
            f"backbone.mapping.{name}.weight": (fan_out, fan_in),
            f"backbone.mapping.{name}.bias": (fan_out,),
        }
    expected |= _stylegan2_block("superresolution.block0.", 32, 256, 256, 3)
    expected |= _stylegan2_block("superresolution.block1.", 256, 128, 512, 3)
    expected |= {"decoder.net.0.weight": (64, 32), "decoder.net.0.bias": (64,)}
    expected |= {"decoder.net.2.weight": (33, 64), "decoder.net.2.bias": (33,)}

    assert list(EG3D_FFHQ512_128_G_SHAPES.items()) == list(expected.items())  # names, shapes and order
    assert shape_table_counts(EG3D_FFHQ512_128_G_SHAPES) == (176, 31_493_160)
    buffers = {k: v for k, v in EG3D_FFHQ512_128_G_SHAPES.items() if k.endswith(_BUFFER_NAMES)}
    assert shape_table_counts(buffers) == (44, 831_024)


# --------------------------------------------------------------------------------------------------
# Loading


@pytest.fixture(scope="module")
def full_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot whose G_ema holds every tensor of the real 512-128 generator (~126 MB)."""
    path = tmp_path_factory.mktemp("eg3d") / "ffhqrebalanced512-128.pkl"
    return _write_snapshot(path, _generator(_tensors(EG3D_FFHQ512_128_G_SHAPES)))


def test_loads_complete_512_128_generator(full_snapshot: Path):
    ckpt = load_eg3d_checkpoint(full_snapshot)

    assert ckpt.class_name == "TriPlaneGenerator"
    assert list(ckpt.state_dict) == list(
        EG3D_FFHQ512_128_G_SHAPES
    )  # renderer.plane_axes is not a tensor entry
    for i, (name, tensor) in enumerate(ckpt.state_dict.items()):
        assert tuple(tensor.shape) == EG3D_FFHQ512_128_G_SHAPES[name], name
        assert type(tensor) is torch.Tensor and not tensor.requires_grad
        assert tensor.numel() == 0 or float(tensor.reshape(-1)[0]) == float(i), name
    assert ckpt.num_elements == 31_493_160
    assert ckpt.neural_rendering_resolution == 128
    assert ckpt.rendering_kwargs == _RENDERING_KWARGS
    assert ckpt.training_set_kwargs == {
        "class_name": "training.dataset.ImageFolderDataset",
        "path": "ffhq.zip",
        "xflip": True,
    }


def test_easydict_kwargs_survive_as_plain_dicts(tmp_path: Path):
    path = _write_snapshot(tmp_path / "g.pkl", _generator(_tensors({"decoder.net.0.bias": (64,)})))
    ckpt = load_eg3d_checkpoint(path)

    kwargs = ckpt.init_kwargs
    assert kwargs["mapping_kwargs"] == {"num_layers": 2}
    assert kwargs["sr_kwargs"] == {
        "channel_base": 32768,
        "channel_max": 512,
        "fused_modconv_default": "inference_only",
    }
    assert kwargs["rendering_kwargs"]["superresolution_module"].endswith("SuperresolutionHybrid8XDC")
    assert (kwargs["z_dim"], kwargs["w_dim"], kwargs["c_dim"], kwargs["img_resolution"]) == (
        512,
        512,
        25,
        512,
    )
    assert kwargs["conv_clamp"] is None
    assert type(kwargs) is dict and type(kwargs["mapping_kwargs"]) is dict
    assert ckpt.init_args == ()


def test_none_entries_and_non_persistent_buffers_are_skipped(tmp_path: Path):
    layer = _module_dict(
        _parameters=OrderedDict(weight=torch.ones(2, 3), bias=None),
        _buffers=OrderedDict(kept=torch.zeros(2), scratch=torch.zeros(5), absent=None),
        _non_persistent_buffers_set={"scratch"},
    )
    root = _module_dict(
        _modules=OrderedDict(layer=PersistentStandIn("Layer", layer), empty=None), _init_kwargs={}
    )
    path = _write_snapshot(tmp_path / "g.pkl", PersistentStandIn("Net", root))

    assert list(load_eg3d_checkpoint(path).state_dict) == ["layer.weight", "layer.kept"]


@pytest.mark.parametrize("protocol", [2, 3])  # 2 spells bytes via _codecs.encode, 3 natively
def test_numpy_1x_scalars_and_arrays_load(tmp_path: Path, protocol: int):
    # EG3D was pickled with numpy 1.x, whose private module is numpy.core (numpy 2: numpy._core).
    payload = {"gain": np.float64(0.125), "table": np.arange(6, dtype=np.float32).reshape(2, 3)}
    # Protocols below 4 name globals as newline-terminated text, so the module can be respelled.
    data = pickle.dumps(payload, protocol=protocol).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray"
    )
    assert b"numpy.core.multiarray" in data and b"numpy._core" not in data
    path = tmp_path / "np.pkl"
    path.write_bytes(data)

    loaded = safe_load_pickle(path)
    assert loaded["gain"] == np.float64(0.125)
    np.testing.assert_array_equal(loaded["table"], payload["table"])


# --------------------------------------------------------------------------------------------------
# Refusing code


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.mark.parametrize(("payload", "global_name"), [(_RunsShell, "system"), (_RunsEval, "builtins.eval")])
def test_code_in_a_pickle_is_refused_without_running(tmp_path: Path, payload: type, global_name: str):
    marker = tmp_path / "executed"
    # Hidden inside the generator state, as a tampered checkpoint would do it.
    g = _generator(_tensors({"decoder.net.0.bias": (64,)}))
    g.meta["state"]["rendering_kwargs"] = {"box_warp": payload(marker)}
    path = _write_snapshot(tmp_path / "evil.pkl", g)

    with pytest.raises(UnsafePickleError, match=global_name) as info:
        load_eg3d_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_unknown_global_is_refused(tmp_path: Path):
    path = tmp_path / "unknown.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Path("x")}))  # pathlib is nowhere near the allow-list

    with pytest.raises(UnsafePickleError, match=r"pathlib\.(_local\.)?PosixPath"):
        load_eg3d_checkpoint(path)


def _snapshot_bytes(g_ema: Any) -> bytes:
    """A protocol-2 snapshot (no frames), so opcodes can be spliced into it."""
    buffer = io.BytesIO()
    NVlabsStylePickler(buffer, protocol=2, fix_imports=False).dump({"G_ema": g_ema})
    return buffer.getvalue()


def test_a_deeply_nested_pickle_is_a_checkpoint_error(tmp_path: Path):
    g = _generator(_tensors({"decoder.net.0.bias": (64,)}))
    g.meta["state"]["rendering_kwargs"] = {"box_warp": "NEST_HERE"}
    data = _snapshot_bytes(g)
    marker = b"X\x09\x00\x00\x00NEST_HERE"  # BINUNICODE of the string, as it sits in the file
    assert data.count(marker) == 1
    depth = 200_000  # far past Python's recursion limit, tiny on disk
    path = tmp_path / "deep.pkl"
    path.write_bytes(data.replace(marker, b"]" * depth + b"a" * (depth - 1)))
    with pytest.raises(CheckpointError, match=r"deep\.pkl: nested too deeply"):
        load_eg3d_checkpoint(path)


def test_an_array_larger_than_the_file_is_refused_before_allocating(tmp_path: Path):
    data = pickle.dumps({"G_ema": np.zeros(3)}, protocol=2)
    empty_shape = b"K\x00\x85"  # the (0,) shape numpy's _reconstruct is called with
    assert data.count(empty_shape) == 1
    path = tmp_path / "huge.pkl"  # declares 8 PiB
    path.write_bytes(data.replace(empty_shape, b"\x8a\x07" + (2**53).to_bytes(7, "little") + b"\x85"))
    with pytest.raises(CheckpointError, match=r"huge\.pkl: .*larger than the file"):
        load_eg3d_checkpoint(path)


def test_nested_storage_bytes_are_loaded_weights_only(tmp_path: Path):
    marker = tmp_path / "executed"

    class _EvilStorage:
        def __reduce__(self) -> tuple[Any, ...]:
            return (torch.storage._load_from_bytes, (pickle.dumps(_RunsShell(marker), protocol=2),))

    path = tmp_path / "nested.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _EvilStorage()}, protocol=4))

    with pytest.raises(CheckpointError, match=r"(?s)nested\.pkl: .*Weights only load failed.*system"):
        load_eg3d_checkpoint(path)
    assert not marker.exists()


def test_embedded_module_source_is_never_executed(tmp_path: Path):
    marker = tmp_path / "executed"
    source = f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('module source was executed')\n"
    path = _write_snapshot(
        tmp_path / "g.pkl", _generator(_tensors({"decoder.net.0.bias": (64,)}), source=source)
    )

    ckpt = load_eg3d_checkpoint(path)
    assert ckpt.module_source == source
    assert not marker.exists()
    record = safe_load_pickle(path)["G_ema"]
    assert isinstance(record, PersistentRecord) and record.class_name == "TriPlaneGenerator"


# --------------------------------------------------------------------------------------------------
# Bad files


def test_missing_file_and_missing_network_are_named(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_eg3d_checkpoint(tmp_path / "absent.pkl")
    path = _write_snapshot(tmp_path / "g.pkl", _generator(_tensors({"decoder.net.0.bias": (64,)})))
    with pytest.raises(CheckpointError, match=r"no network 'G'.*G_ema"):
        load_eg3d_checkpoint(path, network="G")


def test_non_snapshot_and_truncated_files_are_rejected(tmp_path: Path):
    listing = tmp_path / "list.pkl"
    listing.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match=r"list\.pkl: top level is a list"):
        load_eg3d_checkpoint(listing)

    full = _write_snapshot(tmp_path / "g.pkl", _generator(_tensors({"decoder.net.0.bias": (64,)})))
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(full.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="truncated.pkl: not a readable EG3D pickle"):
        load_eg3d_checkpoint(truncated)


# --------------------------------------------------------------------------------------------------
# Strict loading into a module


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.register_buffer("w_avg", torch.zeros(2))
        self.register_buffer("scratch", torch.zeros(4), persistent=False)


def test_load_state_into_copies_exact_fit_with_rename():
    module = _Tiny()
    state = {"net.0.weight": torch.ones(2, 3), "fc.bias": torch.full((2,), 2.0), "w_avg": torch.arange(2.0)}

    load_state_into(module, state, what="tiny.pkl [G_ema]", rename={"net.0.weight": "fc.weight"})

    assert torch.equal(module.fc.weight, torch.ones(2, 3))
    assert torch.equal(module.fc.bias, torch.full((2,), 2.0))
    assert torch.equal(module.w_avg, torch.arange(2.0))


def test_load_state_into_lists_every_problem_by_name():
    module = _Tiny()
    before = module.fc.weight.detach().clone()
    state = {
        "fc.weight": torch.zeros(2, 4),  # wrong shape
        "extra.a": torch.zeros(1),  # leftovers
        "extra.b": torch.zeros(1),
    }  # fc.bias and w_avg missing

    with pytest.raises(CheckpointError) as info:
        load_state_into(module, state, what="tiny.pkl [G_ema]")
    message = str(info.value)
    assert message.startswith("tiny.pkl [G_ema]")
    assert "2 leftover" in message and "extra.a" in message and "extra.b" in message
    assert "2 missing" in message and "fc.bias" in message and "w_avg" in message
    assert "1 shape mismatches" in message and "fc.weight: checkpoint (2, 4) vs module (2, 3)" in message
    assert "scratch" not in message  # non-persistent buffers are not part of the contract
    assert torch.equal(module.fc.weight, before)  # nothing copied on failure


def test_load_state_into_rejects_a_stale_rename_table():
    state = {"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2), "w_avg": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"rename entries name no checkpoint tensor:\n  old\.name"):
        load_state_into(_Tiny(), state, what="tiny", rename={"old.name": "fc.weight"})


def _module_from_table(table: dict[str, tuple[int, ...]]) -> torch.nn.Module:
    """Nested torch modules whose state_dict() has exactly the table's names and shapes."""
    root = torch.nn.Module()
    for name, shape in table.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        if leaf in _BUFFER_NAMES:
            node.register_buffer(leaf, torch.empty(shape))
        else:
            node.register_parameter(leaf, torch.nn.Parameter(torch.empty(shape)))
    return root


def test_real_table_loads_strictly_into_modules_with_those_names(full_snapshot: Path):
    module = _module_from_table(EG3D_FFHQ512_128_G_SHAPES)
    ckpt = load_eg3d_checkpoint(full_snapshot)

    load_state_into(module, ckpt.state_dict, what=f"{full_snapshot} [G_ema]")

    assert float(module.backbone.synthesis.b4.const.detach()[0, 0, 0]) == 0.0
    assert float(getattr(module.decoder.net, "2").bias.detach()[0]) == float(
        len(EG3D_FFHQ512_128_G_SHAPES) - 1
    )
    assert float(module.backbone.mapping.w_avg[0]) == float(
        list(ckpt.state_dict).index("backbone.mapping.w_avg")
    )


def test_names_follow_torch_state_dict_for_real_modules(tmp_path: Path):
    # Real torch modules pickle by reference as torch.nn.modules.*, like EG3D's decoder does.
    body = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Softplus()
    )
    module = torch.nn.Sequential(OrderedDict(body=body, head=torch.nn.Linear(4, 2)))
    module.register_buffer("scratch", torch.ones(3), persistent=False)
    torch.nn.init.normal_(module.head.weight)
    path = tmp_path / "real.pkl"
    with path.open("wb") as f:
        pickle.dump({"G_ema": module}, f, protocol=4)

    ckpt = load_eg3d_checkpoint(path)

    expected = module.state_dict()
    assert list(ckpt.state_dict) == list(expected)  # with body.1.num_batches_tracked, without scratch
    for name, tensor in expected.items():
        assert torch.equal(ckpt.state_dict[name], tensor) and ckpt.state_dict[name].dtype == tensor.dtype
    assert ckpt.class_name == "torch.nn.modules.container.Sequential"


def test_snapshot_loads_into_our_paper_size_generator(full_snapshot: Path):
    """The loader and talk3d_core.model.eg3d agree on every name and shape of the 512-128 generator."""
    from talk3d_core.model.eg3d import GeneratorConfig, TriPlaneGenerator

    generator = TriPlaneGenerator(GeneratorConfig.paper())
    ours = {name: tuple(t.shape) for name, t in generator.state_dict().items()}
    assert ours == dict(EG3D_FFHQ512_128_G_SHAPES)
    ckpt = load_eg3d_checkpoint(full_snapshot)
    load_state_into(generator, ckpt.state_dict, what=f"{full_snapshot} [G_ema]")
    index = list(ckpt.state_dict).index("backbone.synthesis.b4.const")
    assert float(generator.backbone.synthesis.b4.const.detach()[0, 0, 0]) == float(index)
