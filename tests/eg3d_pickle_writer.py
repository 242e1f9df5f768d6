"""Test helper: write files in the byte structure of NVIDIA's official EG3D network pickles.

The real ``ffhq512-128.pkl`` cannot ship with the tests, so this module writes look-alikes
whose opcodes and global names match what EG3D's training loop produces with
``pickle.dump(snapshot_data, f)`` (protocol 4):

* the top level is ``{"training_set_kwargs": dict, "G", "D", "G_ema", "augment_pipe"}``;
* ``@persistence.persistent_class`` modules reduce to
  ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
  ``meta = {"type": "class", "version": 6, "module_src": str, "class_name": str, "state": __dict__}``;
* undecorated modules (``ImportanceRenderer``, ``MipRayMarcher2``, ``RaySampler``, ``OSGDecoder``,
  ``torch.nn.Sequential``, ``torch.nn.Softplus``) reduce to NEWOBJ of their import path + BUILD;
* parameters/tensors reduce to ``torch._utils._rebuild_parameter`` /
  ``_rebuild_tensor_v2(torch.storage._load_from_bytes(blob), ...)`` where ``blob`` is a legacy
  ``torch.save`` of the storage that records its device (``cuda:0`` for ``plane_axes``);
* ``dnnlib.util.EasyDict`` and ``numpy.core.multiarray.scalar`` appear by those names.

To make pickle emit those global names without EG3D installed, stand-in modules are put into
``sys.modules`` only while dumping and removed afterwards. Nothing here is shipped.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import copyreg
import io
import math
import os
import pickle
import re
import shlex
import sys
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.serialization

PERSISTENCE_VERSION = 6  # torch_utils.persistence._version in EG3D / StyleGAN2-ADA / StyleGAN3
MARKER_ATTRIBUTE = "_hfgi3d_eg3d_module_src_executed"
OFFICIAL_NUMPY_SCALAR_MODULE = "numpy.core.multiarray"  # numpy 1.x spelling, as in NVIDIA's files
# State-dict leaf names that EG3D registers as buffers (everything else is a parameter).
BUFFER_NAMES = frozenset({"resample_filter", "noise_const", "w_avg", "dataset_label_std", "p", "Hz_geom", "Hz_fbank"})
EASYDICT_INIT_KWARGS = ("mapping_kwargs", "sr_kwargs")  # train.py passes these as dnnlib.EasyDict

_STYLEGAN2 = "training.networks_stylegan2"
_SUPERRES = "training.superresolution"
_NO_UP_SUPERRES = {"SuperresolutionHybrid4X", "SuperresolutionHybrid2X", "SuperresolutionHybridDeepfp32"}
_BLOCK = re.compile(r"b\d+")
_FC = re.compile(r"fc\d+")


@dataclass(frozen=True)
class ClassRef:
    """Where a module's class lives and whether EG3D decorates it with ``persistent_class``."""

    module: str
    name: str
    persistent: bool


# ----------------------------------------------------------------------------------------------
# Records that the pickler below turns into the official reductions.


@dataclass(eq=False)
class TensorRecord:
    """A tensor (or Parameter) to emit on ``device`` via the legacy storage blob."""

    value: torch.Tensor
    parameter: bool = False
    device: str = "cpu"


@dataclass(eq=False)
class _StorageRecord:
    blob: bytes


@dataclass(eq=False)
class PersistentRecord:
    """A ``persistent_class`` instance: emitted as ``_reconstruct_persistent_obj(meta)``."""

    class_name: str
    module_src: str
    state: dict[str, Any]

    def meta(self) -> dict[str, Any]:
        return {
            "type": "class",
            "version": PERSISTENCE_VERSION,
            "module_src": self.module_src,
            "class_name": self.class_name,
            "state": self.state,
        }


@dataclass(eq=False)
class RawReduce:
    """An arbitrary ``(callable, args)`` reduction, used to build malicious files."""

    func: Callable[..., Any]
    args: tuple[Any, ...]


# ----------------------------------------------------------------------------------------------
# Stand-in modules so that pickle writes EG3D's global names.


def _stand_in_function(module: str, name: str) -> Callable[..., Any]:
    def stand_in(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{module}.{name} is a pickle-writer stand-in and must never be called")

    stand_in.__module__ = module
    stand_in.__name__ = stand_in.__qualname__ = name
    return stand_in


@dataclass
class _StandIns:
    """Stand-in modules, classes and functions for one file, plus the undecorated objects."""

    modules: dict[str, types.ModuleType] = field(default_factory=dict)
    plain_states: dict[int, tuple[object, dict[str, Any]]] = field(default_factory=dict)

    def module(self, name: str) -> types.ModuleType:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # parents first, so `import a.b` finds `a` too
            dotted = ".".join(parts[:i])
            if dotted not in self.modules and not dotted.startswith("numpy"):
                self.modules[dotted] = types.ModuleType(dotted, "pickle-writer stand-in")
        if name not in self.modules:
            self.modules[name] = types.ModuleType(name, "pickle-writer stand-in")
        return self.modules[name]

    def function(self, module: str, name: str) -> Callable[..., Any]:
        target = self.module(module)
        if not hasattr(target, name):
            setattr(target, name, _stand_in_function(module, name))
        function: Callable[..., Any] = getattr(target, name)
        return function

    def cls(self, module: str, name: str, bases: tuple[type, ...] = ()) -> type:
        if module.startswith("torch."):  # real torch classes pickle under their own names
            real = getattr(sys.modules[module], name)
            assert isinstance(real, type)
            return real
        target = self.module(module)
        if not hasattr(target, name):
            setattr(target, name, type(name, bases, {"__module__": module, "__qualname__": name}))
        stand_in: type = getattr(target, name)
        return stand_in

    def plain(self, ref: ClassRef, state: dict[str, Any]) -> object:
        """An instance of the (stand-in) class whose pickled form is NEWOBJ + BUILD(state)."""
        cls = self.cls(ref.module, ref.name)
        obj: object = object.__new__(cls)  # no __init__: the state comes from the BUILD opcode
        self.plain_states[id(obj)] = (obj, state)
        return obj

    def easydict(self, value: Mapping[str, Any]) -> dict[str, Any]:
        easydict_cls = self.cls("dnnlib.util", "EasyDict", (dict,))
        easydict: dict[str, Any] = easydict_cls(value)
        return easydict

    @contextlib.contextmanager
    def registered(self) -> Iterator[None]:
        """Put the stand-in modules into ``sys.modules`` for the duration of a dump."""
        saved = {name: sys.modules.get(name) for name in self.modules}
        sys.modules.update(self.modules)
        try:
            yield
        finally:
            for name, previous in saved.items():
                if previous is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = previous


@contextlib.contextmanager
def _location_tag_as(location: str) -> Iterator[None]:
    """Make legacy ``torch.save`` record ``location`` (e.g. ``cuda:0``) for every storage."""
    if location == "cpu":
        yield
        return
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: location  # looked up at call time by _legacy_save
    try:
        yield
    finally:
        torch.serialization.location_tag = original


def legacy_storage_blob(tensor: torch.Tensor, location: str = "cpu") -> bytes:
    """The bytes ``torch.storage._load_from_bytes`` receives: a legacy torch.save of the storage."""
    compact = tensor.detach().to("cpu").clone().contiguous()  # a storage holding exactly this tensor
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        storage = torch.storage.TypedStorage(
            wrap_storage=compact.untyped_storage(), dtype=compact.dtype, _internal=True
        )
        buffer = io.BytesIO()
        with _location_tag_as(location):
            torch.save(storage, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


class _OfficialPickler(pickle.Pickler):
    """Protocol-4 pickler that reduces the records above the way NVIDIA's files do."""

    def __init__(self, file: Any, stand_ins: _StandIns, numpy_scalar_module: str, protocol: int = 4) -> None:
        super().__init__(file, protocol=protocol)
        self._stand_ins = stand_ins
        self._reconstruct = stand_ins.function("torch_utils.persistence", "_reconstruct_persistent_obj")
        self._numpy_scalar = None
        if numpy_scalar_module != "numpy._core.multiarray":  # that one is numpy 2's native spelling
            self._numpy_scalar = stand_ins.function(numpy_scalar_module, "scalar")

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, PersistentRecord):
            return self._reconstruct, (obj.meta(),)
        if isinstance(obj, TensorRecord):
            if obj.parameter:
                data = TensorRecord(obj.value, parameter=False, device=obj.device)
                return torch._utils._rebuild_parameter, (data, False, OrderedDict())
            value = obj.value.detach()
            storage = _StorageRecord(legacy_storage_blob(value, obj.device))
            return torch._utils._rebuild_tensor_v2, (
                storage,
                0,
                tuple(value.shape),
                value.contiguous().stride(),
                False,
                OrderedDict(),
            )
        if isinstance(obj, _StorageRecord):
            return torch.storage._load_from_bytes, (obj.blob,)
        if isinstance(obj, RawReduce):
            return obj.func, obj.args
        if isinstance(obj, np.generic) and self._numpy_scalar is not None:
            return self._numpy_scalar, (obj.dtype, obj.tobytes())
        plain = self._stand_ins.plain_states.get(id(obj))
        if plain is not None and plain[0] is obj:
            return copyreg.__newobj__, (type(obj),), plain[1]  # type: ignore[attr-defined]
        return NotImplemented


# ----------------------------------------------------------------------------------------------
# From a flat state dict to EG3D's module tree.


@dataclass(eq=False)
class _Node:
    path: str
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    children: dict[str, _Node] = field(default_factory=dict)

    def child(self, name: str) -> _Node:
        if name not in self.children:
            self.children[name] = _Node(f"{self.path}.{name}" if self.path else name)
        return self.children[name]

    def state_dict_keys(self, prefix: str = "") -> list[str]:
        keys = [prefix + n for n in (*self.params, *self.buffers)]
        for name, node in self.children.items():
            keys += node.state_dict_keys(f"{prefix}{name}.")
        return keys


def module_tree(state_dict: Mapping[str, torch.Tensor], buffer_names: frozenset[str] = BUFFER_NAMES) -> _Node:
    """Rebuild the module tree from state-dict keys (registration order = first appearance)."""
    root = _Node("")
    for key, value in state_dict.items():
        *module_path, leaf = key.split(".")
        node = root
        for name in module_path:
            node = node.child(name)
        (node.buffers if leaf in buffer_names else node.params)[leaf] = value
    keys = root.state_dict_keys()
    if keys != list(state_dict):
        mismatch = next(i for i, (a, b) in enumerate(zip(keys, state_dict, strict=True)) if a != b)
        raise ValueError(
            f"state_dict order is not nn.Module.state_dict order (own parameters, own buffers, then children): "
            f"entry {mismatch} is {list(state_dict)[mismatch]!r}, expected {keys[mismatch]!r}"
        )
    return root


def class_for_path(path: str, superresolution: str, decoder_persistent: bool = False) -> ClassRef:
    """EG3D's class for the module at ``path`` inside ``TriPlaneGenerator`` (see module doc)."""
    parts = path.split(".") if path else []
    leaf, parent = (parts[-1] if parts else ""), ".".join(parts[:-1])
    fixed = {
        "": ClassRef("training.triplane", "TriPlaneGenerator", True),
        "renderer": ClassRef("training.volumetric_rendering.renderer", "ImportanceRenderer", False),
        "renderer.ray_marcher": ClassRef("training.volumetric_rendering.ray_marcher", "MipRayMarcher2", False),
        "ray_sampler": ClassRef("training.volumetric_rendering.ray_sampler", "RaySampler", False),
        "decoder": ClassRef("training.triplane", "OSGDecoder", decoder_persistent),
        "decoder.net": ClassRef("torch.nn.modules.container", "Sequential", False),
        "backbone": ClassRef(_STYLEGAN2, "Generator", True),
        "backbone.synthesis": ClassRef(_STYLEGAN2, "SynthesisNetwork", True),
        "backbone.mapping": ClassRef(_STYLEGAN2, "MappingNetwork", True),
        "superresolution": ClassRef(_SUPERRES, superresolution, True),
        "superresolution.block0": (
            ClassRef(_SUPERRES, "SynthesisBlockNoUp", True)
            if superresolution in _NO_UP_SUPERRES
            else ClassRef(_STYLEGAN2, "SynthesisBlock", True)
        ),
        "superresolution.block1": ClassRef(_STYLEGAN2, "SynthesisBlock", True),
    }
    if path.startswith("superresolution") and not superresolution:
        raise ValueError("superresolution keys need rendering_kwargs['superresolution_module'] to name the class")
    if path in fixed:
        return fixed[path]
    if parent == "decoder.net" and leaf.isdigit():
        return (
            ClassRef("torch.nn.modules.activation", "Softplus", False)
            if int(leaf) % 2
            else ClassRef(_STYLEGAN2, "FullyConnectedLayer", True)
        )
    if parent == "backbone.synthesis" and _BLOCK.fullmatch(leaf):
        return ClassRef(_STYLEGAN2, "SynthesisBlock", True)
    if leaf in ("conv0", "conv1"):
        return ClassRef(_STYLEGAN2, "SynthesisLayer", True)
    if leaf == "torgb":
        return ClassRef(_STYLEGAN2, "ToRGBLayer", True)
    if leaf in ("affine", "embed") or (parent == "backbone.mapping" and _FC.fullmatch(leaf)):
        return ClassRef(_STYLEGAN2, "FullyConnectedLayer", True)
    raise ValueError(f"no EG3D class is known for the module path {path!r}")


def _add_keyless_modules(root: _Node) -> None:
    """Insert the modules that own no state-dict entries, in EG3D's registration order."""
    front = {"renderer": _Node("renderer"), "ray_sampler": _Node("ray_sampler")}
    front["renderer"].children["ray_marcher"] = _Node("renderer.ray_marcher")
    root.children = {**front, **root.children}
    net = root.children.get("decoder", _Node("decoder")).children.get("net")
    if net is not None:  # Sequential(FC, Softplus, FC): the activation holds no tensors
        count = max(int(k) for k in net.children) + 1
        net.children = {str(i): net.children.get(str(i)) or _Node(f"decoder.net.{i}") for i in range(count)}


def _attributes(ref: ClassRef, node: _Node, rendering_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A few plain attributes per class, as EG3D's __init__ sets them (numpy floats included)."""
    weight = node.params.get("weight")
    if ref.name == "FullyConnectedLayer" and weight is not None:
        in_features = int(weight.shape[1])
        return {
            "in_features": in_features,
            "out_features": int(weight.shape[0]),
            "activation": "linear",
            "weight_gain": np.float64(1.0 / math.sqrt(in_features)),
            "bias_gain": 1,
        }
    if ref.name in ("SynthesisLayer", "ToRGBLayer") and weight is not None:
        in_channels = int(weight.shape[1])
        attrs: dict[str, Any] = {"in_channels": in_channels, "out_channels": int(weight.shape[0]), "w_dim": 512}
        if ref.name == "SynthesisLayer":
            noise = node.buffers.get("noise_const")
            attrs |= {"resolution": int(noise.shape[-1]) if noise is not None else 0, "use_noise": True}
            attrs |= {"activation": "lrelu", "padding": 1, "act_gain": np.float64(math.sqrt(2))}
        else:
            attrs["weight_gain"] = np.float64(1.0 / math.sqrt(in_channels))
        return attrs | {"conv_clamp": None}
    if ref.name in ("SynthesisBlock", "SynthesisBlockNoUp"):
        return {"architecture": "skip", "use_fp16": False, "channels_last": False}
    if ref.name.startswith("Superresolution"):
        return {"sr_antialias": bool(rendering_kwargs.get("sr_antialias", True))}
    if ref.name == "OSGDecoder":
        return {"hidden_dim": 64}
    if ref.name == "Softplus":
        return {"beta": 1, "threshold": 20}
    if ref.name == "RaySampler":
        return dict.fromkeys(("ray_origins_h", "ray_directions", "depths", "image_coords", "rendering_options"))
    return {}


def _torch_module_state(
    params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor], children: Mapping[str, object]
) -> dict[str, Any]:
    """The ``nn.Module.__dict__`` entries every module has (torch 1.11 layout), in eval() mode."""
    return {
        "training": False,
        "_parameters": OrderedDict((n, TensorRecord(t, parameter=True)) for n, t in params.items()),
        "_buffers": OrderedDict((n, TensorRecord(t)) for n, t in buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": OrderedDict(),
        "_is_full_backward_hook": None,
        "_forward_hooks": OrderedDict(),
        "_forward_pre_hooks": OrderedDict(),
        "_state_dict_hooks": OrderedDict(),
        "_load_state_dict_pre_hooks": OrderedDict(),
        "_modules": OrderedDict(children),
    }


@dataclass
class _TreeOptions:
    stand_ins: _StandIns
    module_src: Callable[[str], str]
    superresolution: str
    decoder_persistent: bool
    rendering_kwargs: dict[str, Any]
    root_init_kwargs: dict[str, Any]
    root_attributes: dict[str, Any]
    plane_axes: TensorRecord


def _build_module(node: _Node, options: _TreeOptions) -> object:
    """Turn a tree node (and its children) into persistent records / stand-in instances."""
    ref = class_for_path(node.path, options.superresolution, options.decoder_persistent)
    children = {name: _build_module(child, options) for name, child in node.children.items()}
    state = _torch_module_state(node.params, node.buffers, children)
    state |= _attributes(ref, node, options.rendering_kwargs)
    if node.path == "":
        state |= options.root_attributes
    if node.path == "renderer":
        state["plane_axes"] = options.plane_axes
    if not ref.persistent:
        return options.stand_ins.plain(ref, state)
    if node.path == "":
        state |= {"_init_args": (), "_init_kwargs": copy.deepcopy(options.root_init_kwargs)}
    else:
        plain_attrs = {k: v for k, v in state.items() if not k.startswith("_") and k != "training"}
        state |= {"_init_args": (), "_init_kwargs": {k: v for k, v in plain_attrs.items() if isinstance(v, int | str)}}
    return PersistentRecord(ref.name, options.module_src(ref.module), state)


def _discriminator(stand_ins: _StandIns, module_src: Callable[[str], str]) -> PersistentRecord:
    """A small ``DualDiscriminator``: one buffer and one block with a 1x1 fromrgb conv."""
    generator = torch.Generator().manual_seed(7)
    fromrgb_state = _torch_module_state(
        {"weight": torch.randn([4, 6, 1, 1], generator=generator), "bias": torch.zeros([4])}, {}, {}
    )
    fromrgb_state |= {
        "in_channels": 6,
        "out_channels": 4,
        "activation": "lrelu",
        "_init_args": (6, 4),
        "_init_kwargs": {},
    }
    fromrgb = PersistentRecord("Conv2dLayer", module_src(_STYLEGAN2), fromrgb_state)
    block_state = _torch_module_state({}, {"resample_filter": torch.full([4, 4], 1 / 16)}, {"fromrgb": fromrgb})
    block_state |= {"resolution": 128, "architecture": "resnet", "_init_args": (0, 8, 4), "_init_kwargs": {}}
    block = PersistentRecord("DiscriminatorBlock", module_src(_STYLEGAN2), block_state)
    state = _torch_module_state({}, {"resample_filter": torch.full([4, 4], 1 / 16)}, {"b128": block})
    state |= {"c_dim": 25, "img_resolution": 128, "img_channels": 6, "disc_c_noise": 0.0}
    state |= {"_init_args": (), "_init_kwargs": {"c_dim": 25, "img_resolution": 128, "img_channels": 3}}
    return PersistentRecord("DualDiscriminator", module_src("training.dual_discriminator"), state)


def _augment_pipe(module_src: Callable[[str], str]) -> PersistentRecord:
    state = _torch_module_state({}, {"p": torch.zeros([])}, {})
    state |= {"xflip": 1.0, "rotate90": 1.0, "_init_args": (), "_init_kwargs": {"xflip": 1, "rotate90": 1}}
    return PersistentRecord("AugmentPipe", module_src("training.augment"), state)


def default_module_src(marker_path: str | os.PathLike[str], module: str = "training.triplane") -> str:
    """Stand-in module source with a detectable side effect if it is ever executed.

    Running it appends ``module`` to ``marker_path`` and sets ``builtins.<MARKER_ATTRIBUTE>``.
    """
    return (
        f'"""Stand-in for the source of {module}, written by tests/eg3d_pickle_writer.py.\n\n'
        "NVIDIA's files embed the full module source here. If a reader ever executes this text it\n"
        'leaves a marker file and a builtins attribute behind, so tests can prove that it never ran."""\n\n'
        "import builtins\n\n"
        f"builtins.{MARKER_ATTRIBUTE} = True\n"
        f"with open({os.fspath(marker_path)!r}, 'a', encoding='utf-8') as _marker:\n"
        f"    _marker.write({module!r} + '\\n')\n"
    )


def marker_path_for(path: str | os.PathLike[str]) -> Path:
    """Where the default ``module_src`` of the file at ``path`` would leave its marker."""
    return Path(os.fspath(path) + ".module_src_executed")


@dataclass
class Snapshot:
    """The top-level dict to pickle, and the stand-ins needed to pickle it."""

    entries: dict[str, Any]
    stand_ins: _StandIns
    numpy_scalar_module: str = OFFICIAL_NUMPY_SCALAR_MODULE

    def dumps(self) -> bytes:
        buffer = io.BytesIO()
        pickler = _OfficialPickler(buffer, self.stand_ins, self.numpy_scalar_module)  # creates its stand-ins
        with self.stand_ins.registered():
            pickler.dump(self.entries)
        return buffer.getvalue()


def build_snapshot(
    state_dict: Mapping[str, torch.Tensor],
    init_kwargs: Mapping[str, Any],
    rendering_kwargs: Mapping[str, Any],
    neural_rendering_resolution: int,
    *,
    module_src: str | Callable[[str], str],
    plane_axes_device: str = "cuda:0",
    separate_g: bool = True,
    decoder_persistent: bool = False,
    augment_pipe: bool = False,
    numpy_scalar_module: str = OFFICIAL_NUMPY_SCALAR_MODULE,
) -> Snapshot:
    """The records of an official-looking snapshot (see :func:`write_official_pickle`)."""
    stand_ins = _StandIns()
    source_of = module_src if callable(module_src) else (lambda module: module_src)
    sources: dict[str, str] = {}

    def shared_source(module: str) -> str:  # one str object per module, as persistence shares it
        return sources.setdefault(module, source_of(module))

    root_init_kwargs = {
        k: stand_ins.easydict(v) if k in EASYDICT_INIT_KWARGS and isinstance(v, Mapping) else copy.deepcopy(v)
        for k, v in init_kwargs.items()
    }
    superresolution = str(rendering_kwargs.get("superresolution_module", "")).rpartition(".")[2]

    def generator() -> object:
        tree = module_tree(state_dict)
        _add_keyless_modules(tree)
        root_attributes = {
            k: init_kwargs[k] for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels") if k in init_kwargs
        }
        root_attributes |= {
            "neural_rendering_resolution": neural_rendering_resolution,
            "rendering_kwargs": copy.deepcopy(dict(rendering_kwargs)),
            "_last_planes": None,
        }
        options = _TreeOptions(
            stand_ins=stand_ins,
            module_src=shared_source,
            superresolution=superresolution,
            decoder_persistent=decoder_persistent,
            rendering_kwargs=dict(rendering_kwargs),
            root_init_kwargs=root_init_kwargs,
            root_attributes=root_attributes,
            plane_axes=TensorRecord(_plane_axes(), device=plane_axes_device),
        )
        return _build_module(tree, options)

    g_ema = generator()
    entries = {
        # EG3D's training loop stores dict(training_set_kwargs): a plain dict, not an EasyDict.
        "training_set_kwargs": {
            "class_name": "training.dataset.ImageFolderDataset",
            "path": "/data/FFHQ_512.zip",
            "use_labels": True,
            "max_size": 140000,
            "xflip": True,
            "resolution": int(init_kwargs.get("img_resolution", 512)),
            "random_seed": 0,
        },
        "G": generator() if separate_g else g_ema,
        "D": _discriminator(stand_ins, shared_source),
        "G_ema": g_ema,
        "augment_pipe": _augment_pipe(shared_source) if augment_pipe else None,
    }
    return Snapshot(entries, stand_ins, numpy_scalar_module)


def _plane_axes() -> torch.Tensor:
    """``generate_planes()`` of EG3D's renderer: the axes of the xy, xz and zx planes."""
    return torch.tensor(
        [[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]], [[0, 0, 1], [1, 0, 0], [0, 1, 0]]],
        dtype=torch.float32,
    )


PLANE_AXES = _plane_axes()


def write_official_pickle(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    init_kwargs: Mapping[str, Any],
    rendering_kwargs: Mapping[str, Any],
    neural_rendering_resolution: int,
    *,
    module_src: str | None = None,
    plane_axes_device: str = "cuda:0",
    extra_globals: Mapping[str, object] | None = None,
    separate_g: bool = True,
    decoder_persistent: bool = False,
    augment_pipe: bool = False,
    numpy_scalar_module: str = OFFICIAL_NUMPY_SCALAR_MODULE,
) -> Path:
    """Write ``path`` in the byte structure of NVIDIA's EG3D network pickles.

    Args:
        state_dict: ``G_ema.state_dict()`` entries in state-dict order; leaf names in
            :data:`BUFFER_NAMES` become buffers, the rest parameters. The module classes follow
            from the key paths (:func:`class_for_path`).
        init_kwargs: ``TriPlaneGenerator`` constructor kwargs; ``mapping_kwargs``/``sr_kwargs``
            are written as ``dnnlib.util.EasyDict`` like EG3D's train.py passes them.
        rendering_kwargs: the generator's ``rendering_kwargs`` attribute.
        neural_rendering_resolution: the generator's plain attribute of that name.
        module_src: source text stored for every persistent module; by default a stand-in that
            leaves a marker (see :func:`default_module_src`) if anything ever executes it.
        plane_axes_device: device string recorded for ``renderer.plane_axes`` (``cuda:0`` in
            the released files, where it is a plain attribute that ``.cpu()`` does not move).
        extra_globals: extra top-level entries pickled as they are, e.g. ``{"hook": os.system}``
            emits a bare GLOBAL reference that a safe reader must refuse.
        separate_g: ``G`` is a separate copy (as in the released files) or the G_ema object.
        decoder_persistent: write ``OSGDecoder`` as a persistent class (EG3D does not decorate it).
        augment_pipe: write a persistent ``AugmentPipe`` instead of None.
        numpy_scalar_module: module name of numpy's ``scalar`` global (numpy 1.x: numpy.core...).

    Returns:
        The marker path that the default ``module_src`` would create if executed.
    """
    marker = marker_path_for(path)
    source: str | Callable[[str], str] = (
        module_src if module_src is not None else (lambda module: default_module_src(marker, module))
    )
    snapshot = build_snapshot(
        state_dict,
        init_kwargs,
        rendering_kwargs,
        neural_rendering_resolution,
        module_src=source,
        plane_axes_device=plane_axes_device,
        separate_g=separate_g,
        decoder_persistent=decoder_persistent,
        augment_pipe=augment_pipe,
        numpy_scalar_module=numpy_scalar_module,
    )
    snapshot.entries.update(extra_globals or {})
    Path(path).write_bytes(snapshot.dumps())
    return marker


def dumps_official(obj: Any, protocol: int = 4) -> bytes:
    """Pickle one object (e.g. a :class:`TensorRecord`) with the official reductions."""
    stand_ins = _StandIns()
    buffer = io.BytesIO()
    pickler = _OfficialPickler(buffer, stand_ins, OFFICIAL_NUMPY_SCALAR_MODULE, protocol)  # creates its stand-ins
    with stand_ins.registered():
        pickler.dump(obj)
    return buffer.getvalue()


def raw_parameter(blob: bytes, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> object:
    """A Parameter record over an arbitrary storage ``blob`` and view, for corrupt-file tests."""
    tensor = RawReduce(
        torch._utils._rebuild_tensor_v2, (_StorageRecord(blob), offset, size, stride, False, OrderedDict())
    )
    return RawReduce(torch._utils._rebuild_parameter, (tensor, False, OrderedDict()))


def decoder_layer(snapshot: Snapshot, index: str, entry: str = "G_ema") -> PersistentRecord:
    """The persistent ``FullyConnectedLayer`` record ``decoder.net.<index>`` of a snapshot entry."""
    generator = snapshot.entries[entry]
    assert isinstance(generator, PersistentRecord)
    decoder = snapshot.stand_ins.plain_states[id(generator.state["_modules"]["decoder"])][1]
    net = snapshot.stand_ins.plain_states[id(decoder["_modules"]["net"])][1]
    layer = net["_modules"][index]
    assert isinstance(layer, PersistentRecord)
    return layer


# ----------------------------------------------------------------------------------------------
# Malicious files.

_SMALL_STATE = {
    "decoder.net.0.weight": torch.ones([4, 32]),
    "decoder.net.0.bias": torch.zeros([4]),
    "decoder.net.2.weight": torch.ones([33, 4]),
    "decoder.net.2.bias": torch.zeros([33]),
}


def code_running_reduction(marker: Path, how: Literal["exec", "system"] = "exec") -> object:
    """A reduction that, if called by an unpickler, creates ``marker``."""
    if how == "exec":
        return RawReduce(builtins.exec, (f"open({os.fspath(marker)!r}, 'w').write('pwned')",))
    return RawReduce(os.system, (f"touch {shlex.quote(os.fspath(marker))}",))


def write_malicious_pickle(
    path: str | os.PathLike[str],
    *,
    how: Literal["exec", "system"] = "exec",
    where: Literal["state", "storage"] = "state",
) -> Path:
    """Write an official-looking EG3D pickle with a code-running reduction hidden inside.

    ``how="exec"`` calls ``builtins.exec``; ``how="system"`` calls ``os.system`` (pickled as
    ``posix.system`` on Linux). ``where="state"`` nests the call inside ``G_ema``'s
    ``rendering_kwargs``; ``where="storage"`` makes it the nested torch.save blob of a tensor
    (which only a weights_only torch.load of that blob would refuse).

    Returns:
        The marker path the payload creates if it is ever executed.
    """
    marker = Path(os.fspath(path) + ".pwned")
    rendering_kwargs = {"superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC"}
    snapshot = build_snapshot(_SMALL_STATE, {"z_dim": 512}, rendering_kwargs, 128, module_src="pass\n")
    g_ema = snapshot.entries["G_ema"]
    assert isinstance(g_ema, PersistentRecord)
    if where == "state":
        g_ema.state["rendering_kwargs"]["evil"] = {"nested": [code_running_reduction(marker, how)]}
    else:
        # The first tensor of G_ema (decoder.net.0.weight) gets a blob that is itself a pickle
        # calling the payload; only torch.load(weights_only=True) of that blob keeps it inert.
        blob = dumps_official(code_running_reduction(marker, how), protocol=2)  # legacy torch.save blobs are protocol 2
        decoder_layer(snapshot, "0").state["_parameters"]["weight"] = raw_parameter(blob, (4, 32), (32, 1))
    Path(path).write_bytes(snapshot.dumps())
    return marker
