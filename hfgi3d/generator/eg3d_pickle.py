"""Read NVIDIA's official EG3D network pickles without running any code stored in them.

NVIDIA ships EG3D weights (``ffhq512-128.pkl``, ``ffhqrebalanced512-128.pkl``,
``afhqcats512-128.pkl``) as a plain ``pickle.dump`` of ``{"training_set_kwargs", "G", "D",
"G_ema", "augment_pipe"}``. Loading such a file with ``pickle.load`` imports EG3D's ``training``
package and *executes* the Python source embedded by ``torch_utils.persistence`` — arbitrary
code. This module instead unpickles with a short allow-list of globals:

* persistent EG3D modules (``torch_utils.persistence._reconstruct_persistent_obj``) become
  inert records; their ``module_src`` text is never compiled or executed;
* undecorated modules (``training.*``, ``torch.nn.modules.*``) become stub records whose
  ``__setstate__`` only stores the module ``__dict__``; nothing is imported;
* tensors are decoded lazily, only for the requested network, from the nested legacy
  ``torch.save`` blobs with ``torch.load(weights_only=True, map_location="cpu")``, so tensors
  saved on ``cuda:0`` load on a CPU-only machine;
* any other global (``os.system``, ``builtins.eval``, ...) raises :class:`CheckpointError`.

The module tree is then walked like ``nn.Module.state_dict`` (own parameters, own persistent
buffers, then children, in registration order).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
import torch

__all__ = ["CheckpointError", "CheckpointNotFoundError", "EG3DNetwork", "is_eg3d_pickle", "read_eg3d_pickle"]

DOWNLOAD_HINT = "download ffhq512-128.pkl from NVIDIA's EG3D model page (NGC: nvidia/research/models/eg3d)"
EXPECTED_ENTRIES = ("training_set_kwargs", "G", "D", "G_ema", "augment_pipe")

_ZIP_MAGIC = b"PK\x03\x04"
# A legacy (pre-1.6) torch.save file starts with PROTO 2 + LONG1 of torch's magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_SNIFF_BYTES = 1 << 20
_MAX_MODULE_DEPTH = 64
_MAX_DETAIL_CHARS = 300
# torch's weights-only unpickler words its refusal in two ways, depending on the module.
_UNSUPPORTED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")
# Lines of torch's weights-only error that only advise retrying unsafely; never shown to users.
_TORCH_ADVICE = re.compile(r"^(Weights only load failed|\(\d\)|Check the documentation)")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

# Persistent classes store only their bare class name (plus the module's source text), so the
# dotted module path is looked up here; unknown names are reported bare.
_PERSISTENT_CLASS_MODULES = {
    "TriPlaneGenerator": "training.triplane",
    **dict.fromkeys(
        (
            "FullyConnectedLayer",
            "Conv2dLayer",
            "MappingNetwork",
            "SynthesisLayer",
            "ToRGBLayer",
            "SynthesisBlock",
            "SynthesisNetwork",
            "Generator",
            "DiscriminatorBlock",
            "MinibatchStdLayer",
            "DiscriminatorEpilogue",
            "Discriminator",
        ),
        "training.networks_stylegan2",
    ),
    **dict.fromkeys(
        (
            "SuperresolutionHybrid8X",
            "SuperresolutionHybrid8XDC",
            "SuperresolutionHybrid4X",
            "SuperresolutionHybrid2X",
            "SuperresolutionHybridDeepfp32",
            "SynthesisBlockNoUp",
        ),
        "training.superresolution",
    ),
    **dict.fromkeys(
        ("SingleDiscriminator", "DualDiscriminator", "DummyDualDiscriminator"), "training.dual_discriminator"
    ),
    "AugmentPipe": "training.augment",
}
# Undecorated classes pickle by import path; only these package prefixes become stub records.
_STUB_MODULE_PREFIXES = ("training.", "torch.nn.modules.")


def _reduce_function(obj: Any) -> Callable[..., Any]:
    """The reconstruction function numpy itself pickles ``obj`` with."""
    reduced = obj.__reduce__()
    return cast(Callable[..., Any], reduced[0])


# The real numpy helpers, taken from numpy's own reductions so that neither the deprecated
# `numpy.core` nor the private `numpy._core` module has to be imported by name.
_NUMPY_SCALAR = _reduce_function(np.float64(0))
_NUMPY_RECONSTRUCT = _reduce_function(np.empty(0))
_TORCH_DTYPE_NAMES = frozenset(name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype))


class CheckpointError(ValueError):
    """An EG3D network pickle is missing, unreadable, unsafe or not what was expected.

    The message always starts with the file path; ``path`` and ``problem`` hold the parts.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path) if not isinstance(path, bytes) else path.decode(errors="replace")
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __str__(self) -> str:
        # Defined explicitly so that CheckpointNotFoundError does not pick up OSError.__str__.
        return f"{self.path}: {self.problem}"

    def __reduce__(self) -> tuple[Any, ...]:
        # The default would re-create the error from the joined message alone; keep both parts
        # so the error survives multiprocessing (e.g. DataLoader workers).
        return type(self), (self.path, self.problem)


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The pickle path does not exist (also a ``FileNotFoundError`` for callers that catch that)."""


@dataclass(frozen=True)
class EG3DNetwork:
    """One network read from an EG3D pickle, as plain data.

    Attributes:
        class_name: dotted class name, e.g. ``"training.triplane.TriPlaneGenerator"`` (the bare
            name when a persistent class is not one of EG3D's).
        state_dict: exactly the keys of ``G_ema.state_dict()`` in order (parameters and
            persistent buffers); CPU tensors, floating point ones as float32.
        init_kwargs: the constructor keyword arguments (``EasyDict`` turned into ``dict``,
            numpy scalars into Python numbers).
        rendering_kwargs: the network's ``rendering_kwargs`` attribute ({} when it has none).
        neural_rendering_resolution: the plain attribute of that name, or None.
        plane_axes: ``renderer.plane_axes`` (a plain tensor attribute, not in the state dict) on
            the CPU, or None.
    """

    class_name: str
    state_dict: dict[str, torch.Tensor]
    init_kwargs: dict[str, Any]
    rendering_kwargs: dict[str, Any]
    neural_rendering_resolution: int | None
    plane_axes: torch.Tensor | None


# ----------------------------------------------------------------------------------------------
# Inert records produced while unpickling.


class _Inert:
    """Base of records the unpickler builds; a pickle may not BUILD (setstate) them."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"unexpected BUILD opcode on {type(self).__name__}")


class _StorageBlob(_Inert):
    """A tensor storage still in its nested legacy ``torch.save`` form (decoded on demand)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _TensorRef(_Inert):
    """Arguments of ``torch._utils._rebuild_tensor_v2``, kept until the tensor is needed."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage: _StorageBlob, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


class _PersistentRecord(_Inert):
    """A ``@persistence.persistent_class`` object: class name and ``__dict__``, no code."""

    __slots__ = ("class_name", "state", "version")

    def __init__(self, class_name: str, state: dict[str, Any], version: Any) -> None:
        self.class_name = class_name
        self.state = state
        self.version = version


class _StubRecord:
    """Base of the stand-in classes for undecorated modules (e.g. ``ImportanceRenderer``).

    The unpickler creates one subclass per referenced class; ``__setstate__`` only stores the
    pickled ``__dict__`` so that nothing from EG3D is imported or run.
    """

    qualified_name: ClassVar[str] = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots state)
            merged: dict[str, Any] = {}
            for part in state:
                if part is not None:
                    merged.update(part)
            state = merged
        self.state = state


class _NDArrayToken:
    """What the global ``numpy.ndarray`` resolves to; only valid as ``_reconstruct``'s subtype."""


# ----------------------------------------------------------------------------------------------
# Replacements for the allowed globals. They raise UnpicklingError for anything unexpected;
# read_eg3d_pickle turns that into a CheckpointError naming the file.


def _load_from_bytes(data: Any) -> _StorageBlob:
    """Stand-in for ``torch.storage._load_from_bytes`` (which would call an unsafe torch.load)."""
    if not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError(f"tensor storage is a {type(data).__name__}, expected bytes")
    return _StorageBlob(bytes(data))


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise pickle.UnpicklingError(f"tensor {what} {value!r} is not a tuple of non-negative ints")
    return tuple(value)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``; hooks and metadata are dropped."""
    del requires_grad, backward_hooks, metadata  # inference weights: no grad, no hooks
    if not isinstance(storage, _StorageBlob):
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}, expected a storage blob")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise pickle.UnpicklingError(f"tensor storage offset {storage_offset!r} is not a non-negative int")
    size_t, stride_t = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size_t) != len(stride_t):
        raise pickle.UnpicklingError(f"tensor size {size_t} and stride {stride_t} differ in length")
    return _TensorRef(storage, storage_offset, size_t, stride_t)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter(_with_state)``: a Parameter is its data."""
    del requires_grad, backward_hooks, state
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError(f"parameter data is a {type(data).__name__}, expected a tensor")
    return data


def _torch_size(values: Any) -> tuple[int, ...]:
    return _int_tuple(values, "size")


def _numpy_dtype(obj: Any, align: Any = False, copy: Any = True) -> np.dtype[Any]:
    """``numpy.dtype`` limited to plain type codes; always a fresh copy because the pickle's
    BUILD opcode then calls ``__setstate__`` on it (never on numpy's shared singletons)."""
    del copy
    if not isinstance(obj, str) or not isinstance(align, int):  # align: False, or 0 from older numpy
        raise pickle.UnpicklingError(f"numpy dtype spec {obj!r} is not a type-code string")
    dtype = np.dtype(obj, align=bool(align), copy=True)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"numpy dtype {obj!r} holds Python objects; refused")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("numpy scalar is not a plain (dtype, bytes) pair")
    return _NUMPY_SCALAR(dtype, data)


def _numpy_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> Any:
    if subtype is not _NDArrayToken:
        raise pickle.UnpicklingError("numpy array reconstruction of a type other than numpy.ndarray")
    return _NUMPY_RECONSTRUCT(np.ndarray, shape, dtype_code)


def _reconstruct_persistent_obj(meta: Any) -> _PersistentRecord:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``.

    The original ``exec``s ``meta['module_src']``; here the source text is discarded unread.
    """
    if not isinstance(meta, dict):
        raise pickle.UnpicklingError(f"persistent object metadata is a {type(meta).__name__}, expected a dict")
    if meta.get("type") != "class":
        raise pickle.UnpicklingError(f"persistent object of type {meta.get('type')!r}, expected 'class'")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise pickle.UnpicklingError(f"persistent object class name {class_name!r} is not an identifier")
    if not isinstance(meta.get("module_src"), str) or not isinstance(state, dict):
        raise pickle.UnpicklingError(f"persistent object {class_name} lacks its module source or state dict")
    return _PersistentRecord(class_name, state, meta.get("version"))


def _is_stub_class(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, _StubRecord) and cls is not _StubRecord


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """Stand-in for ``copyreg._reconstructor`` (protocol 0/1 object reconstruction)."""
    if _is_stub_class(cls) and base is object and state is None:
        return cls()
    if cls is dict and base is dict:  # an EasyDict (mapped to dict) pickled with protocol < 2
        return dict(state or {})
    raise pickle.UnpicklingError(f"copyreg._reconstructor({cls!r}, {base!r}) is not an allowed construction")


def _newobj(cls: Any, *args: Any) -> Any:
    """Stand-in for ``copyreg.__newobj__`` when it appears as an explicit global."""
    if _is_stub_class(cls) and not args:
        return cls()
    if cls is dict and not args:
        return {}
    raise pickle.UnpicklingError(f"copyreg.__newobj__({cls!r}) is not an allowed construction")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copyreg", "__newobj__"): _newobj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "Size"): _torch_size,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): _NDArrayToken,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("dnnlib.util", "EasyDict"): dict,  # NEWOBJ + SETITEMS then simply fill a dict
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
}


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        self.global_name = f"{module}.{name}"
        super().__init__(self.global_name)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only through the allow-list above."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self._stubs: dict[str, type[_StubRecord]] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and name in _TORCH_DTYPE_NAMES:
            return getattr(torch, name)
        if module.startswith(_STUB_MODULE_PREFIXES) and name.isidentifier():
            return self._stub_class(f"{module}.{name}", name)
        raise _RefusedGlobal(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not used by EG3D network pickles")

    def _stub_class(self, qualified_name: str, name: str) -> type[_StubRecord]:
        stub = self._stubs.get(qualified_name)
        if stub is None:
            stub = type(name, (_StubRecord,), {"qualified_name": qualified_name, "__module__": __name__})
            self._stubs[qualified_name] = stub
        return stub


# ----------------------------------------------------------------------------------------------
# File checks and unpickling.


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 3] + "..."


def _storage_problem(name: str, exc: BaseException) -> str:
    """Explain a failed nested ``torch.load`` without repeating torch's advice to retry it
    with ``weights_only=False`` (which would run the code we just refused)."""
    text = _ANSI_ESCAPE.sub("", str(exc))
    refused = _UNSUPPORTED_GLOBAL.search(text)
    if refused:
        return (
            f"the storage of tensor {name!r} is a pickle that refers to the global '{refused.group(1)}', which a "
            "weights-only load refuses; this is not an unmodified official EG3D pickle and may try to run code — "
            "use the original file from NVIDIA"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _TORCH_ADVICE.match(line.strip())]
    detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if len(detail) > _MAX_DETAIL_CHARS:
        detail = detail[: _MAX_DETAIL_CHARS - 3] + "..."
    return f"the storage of tensor {name!r} could not be loaded ({detail}); the file is corrupt — {DOWNLOAD_HINT} again"


def _check_header(path: str, head: bytes) -> None:
    """Reject files that are plainly not a pickle, with a message saying what they are."""
    if not head:
        raise CheckpointError(
            path, f"the file is empty (0 bytes); the download was probably interrupted — {DOWNLOAD_HINT}"
        )
    if head.startswith(_ZIP_MAGIC):
        raise CheckpointError(
            path,
            "this is a zip archive (a torch.save checkpoint), not an EG3D network pickle; load it with "
            f"torch.load(..., weights_only=True), or {DOWNLOAD_HINT}",
        )
    if head.startswith(_TORCH_LEGACY_MAGIC):
        raise CheckpointError(path, f"this is a legacy torch.save file, not an EG3D network pickle; {DOWNLOAD_HINT}")
    if len(head) < 2 or head[0] != pickle.PROTO[0] or not 2 <= head[1] <= 5:
        raise CheckpointError(
            path,
            "this is not a pickle file (no pickle protocol 2-5 header); expected NVIDIA's EG3D network pickle "
            f"such as ffhq512-128.pkl — {DOWNLOAD_HINT}",
        )


def _unpickle(path: str) -> Any:
    try:
        with open(path, "rb") as file:
            _check_header(path, file.read(2 + len(_TORCH_LEGACY_MAGIC)))
            file.seek(0)
            return _RestrictedUnpickler(file).load()
    except CheckpointError:
        raise
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(path, f"no such file; {DOWNLOAD_HINT} and pass its path") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(path, "this is a directory; pass the .pkl file itself (e.g. ffhq512-128.pkl)") from exc
    except _RefusedGlobal as exc:
        raise CheckpointError(
            path,
            f"refused to load the global '{exc.global_name}': EG3D network pickles only need tensors, "
            "containers and EG3D module records, so this file is not an unmodified official EG3D pickle and may "
            "try to run code. Do not open it with pickle.load or torch.load(weights_only=False); use the "
            "original file from NVIDIA",
        ) from None
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the file ({_describe(exc)})") from exc
    except EOFError as exc:
        raise CheckpointError(
            path, f"the file is truncated (the pickle data ends early); {DOWNLOAD_HINT} again"
        ) from exc
    except pickle.UnpicklingError as exc:
        if "truncated" in str(exc):
            raise CheckpointError(
                path, f"the file is truncated (the pickle data ends early); {DOWNLOAD_HINT} again"
            ) from exc
        raise CheckpointError(path, f"this is not a valid EG3D network pickle ({_describe(exc)})") from exc
    except Exception as exc:  # corrupt opcodes raise many types (incl. MemoryError, RecursionError)
        raise CheckpointError(
            path, f"this is not a valid EG3D network pickle ({_describe(exc)}); the file may be corrupt"
        ) from exc


# ----------------------------------------------------------------------------------------------
# Turning records into tensors and plain data.


class _Materializer:
    """Decodes tensor references for one file, each storage blob once."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._storages: dict[int, tuple[_StorageBlob, torch.UntypedStorage, torch.dtype]] = {}

    def tensor(self, ref: _TensorRef, name: str) -> torch.Tensor:
        untyped, dtype = self._storage(ref.storage, name)
        itemsize = dtype.itemsize
        numel = untyped.nbytes() // itemsize
        # set_() does not bound-check against the storage here, so check before viewing it.
        extent = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride, strict=True)) + 1
        if 0 not in ref.size and extent > numel:
            raise CheckpointError(
                self._path,
                f"tensor {name!r} reaches element {extent} of a storage holding {numel}; the file is corrupt",
            )
        tensor = torch.empty(0, dtype=dtype).set_(untyped, ref.offset, ref.size, ref.stride)
        return tensor.float() if tensor.is_floating_point() and dtype != torch.float32 else tensor

    def _storage(self, blob: _StorageBlob, name: str) -> tuple[torch.UntypedStorage, torch.dtype]:
        cached = self._storages.get(id(blob))
        if cached is not None and cached[0] is blob:
            return cached[1], cached[2]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
                loaded = torch.load(io.BytesIO(blob.data), map_location="cpu", weights_only=True)
                if not isinstance(loaded, torch.storage.TypedStorage):
                    raise TypeError(f"the blob holds a {type(loaded).__name__}, expected a typed storage")
                untyped, dtype = loaded._untyped_storage, loaded.dtype
        except Exception as exc:  # torch.load raises many types for malformed or unsafe blobs
            raise CheckpointError(self._path, _storage_problem(name, exc)) from exc
        self._storages[id(blob)] = (blob, untyped, dtype)
        return untyped, dtype

    def plain(self, value: Any, name: str) -> Any:
        """Recursively turn unpickled attribute values into plain Python data and tensors."""
        if isinstance(value, dict):
            return {k: self.plain(v, f"{name}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.plain(v, f"{name}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return tuple(self.plain(v, f"{name}[{i}]") for i, v in enumerate(value))
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, _TensorRef):
            return self.tensor(value, name)
        return value


def _qualified_class_name(record: _PersistentRecord | _StubRecord) -> str:
    if isinstance(record, _PersistentRecord):
        module = _PERSISTENT_CLASS_MODULES.get(record.class_name)
        return f"{module}.{record.class_name}" if module else record.class_name
    return type(record).qualified_name


def _module_state(path: str, record: Any, where: str) -> dict[str, Any]:
    """The ``__dict__`` of a module record, checked to look like an ``nn.Module``'s."""
    if not isinstance(record, _PersistentRecord | _StubRecord):
        raise CheckpointError(path, f"{where} is a {type(record).__name__}, expected a network module")
    state = record.state
    if not isinstance(state, dict) or not all(
        isinstance(state.get(k), dict) for k in ("_parameters", "_buffers", "_modules")
    ):
        raise CheckpointError(
            path, f"{where} ({_qualified_class_name(record)}) is not a torch module (no _parameters/_buffers/_modules)"
        )
    return state


def _named_tensors(path: str, state: dict[str, Any], attribute: str, where: str) -> Iterable[tuple[str, _TensorRef]]:
    for name, value in state[attribute].items():
        if value is None:  # e.g. a layer built with bias=False registers None
            continue
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise CheckpointError(path, f"{where}.{attribute}[{name!r}] is a {type(value).__name__}, expected a tensor")
        yield name, value


def _collect_state_dict(
    path: str,
    record: Any,
    prefix: str,
    materializer: _Materializer,
    out: dict[str, torch.Tensor],
    ancestors: tuple[int, ...] = (),
) -> None:
    """Append ``record``'s state-dict entries to ``out`` in ``nn.Module.state_dict`` order."""
    where = prefix.rstrip(".") or "the root module"
    if len(ancestors) > _MAX_MODULE_DEPTH or id(record) in ancestors:
        raise CheckpointError(path, f"module tree at {where} is cyclic or too deep; the file is corrupt")
    state = _module_state(path, record, where)
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    if not isinstance(non_persistent, set | frozenset | list | tuple):
        raise CheckpointError(path, f"{where}._non_persistent_buffers_set is a {type(non_persistent).__name__}")
    for name, ref in _named_tensors(path, state, "_parameters", where):
        out[prefix + name] = materializer.tensor(ref, prefix + name)
    for name, ref in _named_tensors(path, state, "_buffers", where):
        if name not in non_persistent:
            out[prefix + name] = materializer.tensor(ref, prefix + name)
    for name, child in state["_modules"].items():
        if child is not None:
            _collect_state_dict(path, child, f"{prefix}{name}.", materializer, out, (*ancestors, id(record)))


def _optional_int(path: str, value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    raise CheckpointError(path, f"{what} is {value!r}, expected an int")


def _plane_axes(path: str, state: dict[str, Any], materializer: _Materializer) -> torch.Tensor | None:
    renderer = state["_modules"].get("renderer")
    if not isinstance(renderer, _PersistentRecord | _StubRecord) or not isinstance(renderer.state, dict):
        return None
    value = renderer.state.get("plane_axes")
    if value is None:
        return None
    if not isinstance(value, _TensorRef):
        raise CheckpointError(path, f"renderer.plane_axes is a {type(value).__name__}, expected a tensor")
    return materializer.tensor(value, "renderer.plane_axes")


def _network_from_record(path: str, record: Any, key: str) -> EG3DNetwork:
    state = _module_state(path, record, f"entry {key!r}")
    materializer = _Materializer(path)
    state_dict: dict[str, torch.Tensor] = {}
    _collect_state_dict(path, record, "", materializer, state_dict)
    init_kwargs = materializer.plain(state.get("_init_kwargs", {}), "_init_kwargs")
    if not isinstance(init_kwargs, dict):
        raise CheckpointError(path, f"{key}._init_kwargs is a {type(init_kwargs).__name__}, expected a dict")
    rendering_kwargs = state.get("rendering_kwargs", init_kwargs.get("rendering_kwargs", {}))
    rendering_kwargs = materializer.plain(rendering_kwargs, "rendering_kwargs")
    if not isinstance(rendering_kwargs, dict):
        raise CheckpointError(path, f"{key}.rendering_kwargs is a {type(rendering_kwargs).__name__}, expected a dict")
    return EG3DNetwork(
        class_name=_qualified_class_name(record),
        state_dict=state_dict,
        init_kwargs=init_kwargs,
        rendering_kwargs=rendering_kwargs,
        neural_rendering_resolution=_optional_int(
            path, state.get("neural_rendering_resolution"), f"{key}.neural_rendering_resolution"
        ),
        plane_axes=_plane_axes(path, state, materializer),
    )


# ----------------------------------------------------------------------------------------------
# Public API.


def read_eg3d_pickle(path: str | os.PathLike[str], key: str = "G_ema") -> EG3DNetwork:
    """Read one network (default ``G_ema``) from an official EG3D network pickle, safely.

    No code from the file runs: only allow-listed globals are resolved (see the module doc).
    Tensors of other entries (``G``, ``D``) are never decoded.

    Raises:
        CheckpointNotFoundError: the path does not exist (a CheckpointError and FileNotFoundError).
        CheckpointError: the file is empty, truncated, not a pickle, a torch.save file, refers to
            a global outside the allow-list, or lacks a network under ``key``. The message names
            the file and says what was expected.
    """
    path_str = os.fspath(path)
    snapshot = _unpickle(path_str)
    if not isinstance(snapshot, dict):
        raise CheckpointError(
            path_str,
            f"the pickle holds a {type(snapshot).__name__}, expected a dict with the entries "
            f"{', '.join(EXPECTED_ENTRIES)} as written by EG3D's training loop",
        )
    if key not in snapshot:
        entries = ", ".join(repr(k) for k in list(snapshot)[:10]) or "none"
        raise CheckpointError(
            path_str,
            f"the pickle has no {key!r} entry (entries: {entries}); expected NVIDIA's EG3D network pickle with "
            f"{', '.join(EXPECTED_ENTRIES)} — {DOWNLOAD_HINT}",
        )
    try:
        return _network_from_record(path_str, snapshot[key], key)
    except CheckpointError:
        raise
    except Exception as exc:  # a malformed module tree can fail in many ways (cycles, odd types)
        raise CheckpointError(
            path_str, f"the network under {key!r} is malformed ({_describe(exc)}); the file is corrupt"
        ) from exc


def is_eg3d_pickle(path: str | os.PathLike[str]) -> bool:
    """Cheap sniff: does ``path`` look like an EG3D network pickle (not a torch.save file)?

    True when the file starts with a pickle protocol 2-5 header, is neither a zip nor a legacy
    ``torch.save`` file, and names ``torch_utils.persistence`` within its first MiB (EG3D's
    training loop pickles ``G`` right after the small ``training_set_kwargs``). Never raises
    for unreadable paths; it returns False.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(_SNIFF_BYTES)
    except OSError:
        return False
    try:
        _check_header(os.fspath(path), head)
    except CheckpointError:
        return False
    return b"torch_utils.persistence" in head
