"""Safe reading of NVIDIA's EG3D network pickles (hfgi3d.generator.eg3d_pickle).

The real ``ffhq512-128.pkl`` is not available to the tests, so files are written in its byte
structure by ``tests/eg3d_pickle_writer.py`` with the state-dict keys of the official tiny
configuration (``tests/data/eg3d_reference/tiny/manifest.json``).
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import pickletools
import re
import sys
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hfgi3d.generator.eg3d_pickle import (
    CheckpointError,
    CheckpointNotFoundError,
    EG3DNetwork,
    is_eg3d_pickle,
    read_eg3d_pickle,
)
from tests.eg3d_pickle_writer import (
    MARKER_ATTRIBUTE,
    PLANE_AXES,
    RawReduce,
    TensorRecord,
    build_snapshot,
    code_running_reduction,
    decoder_layer,
    default_module_src,
    dumps_official,
    legacy_storage_blob,
    raw_parameter,
    write_malicious_pickle,
    write_official_pickle,
)

# The lead copies the manifest into tests/data; until then the shared reference folder is used.
_MANIFEST_CANDIDATES = (
    Path(__file__).parent / "data" / "eg3d_reference" / "tiny" / "manifest.json",
    Path("/work/shared/eg3d_reference/tiny/manifest.json"),
)
_STAND_IN_PACKAGES = ("training", "torch_utils", "dnnlib")
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
OFFICIAL_GLOBALS = {
    ("collections", "OrderedDict"),
    ("dnnlib.util", "EasyDict"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch.nn.modules.activation", "Softplus"),
    ("torch.nn.modules.container", "Sequential"),
    ("torch.storage", "_load_from_bytes"),
    ("torch_utils.persistence", "_reconstruct_persistent_obj"),
    ("training.triplane", "OSGDecoder"),
    ("training.volumetric_rendering.ray_marcher", "MipRayMarcher2"),
    ("training.volumetric_rendering.ray_sampler", "RaySampler"),
    ("training.volumetric_rendering.renderer", "ImportanceRenderer"),
}
_SR_8XDC = {"superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC", "sr_antialias": True}


def tiny_manifest() -> dict[str, Any]:
    """The tiny reference manifest, preferring the copy inside the repository."""
    for candidate in _MANIFEST_CANDIDATES:
        if candidate.is_file():
            manifest: dict[str, Any] = json.loads(candidate.read_text())
            return manifest
    pytest.skip("tiny EG3D reference manifest not found (copy it to tests/data/eg3d_reference/tiny/)")


@pytest.fixture(scope="module")
def tiny() -> dict[str, Any]:
    """Random weights under the official tiny state-dict keys, plus EG3D's constructor kwargs."""
    manifest = tiny_manifest()
    generator = torch.Generator().manual_seed(0)
    state_dict = {
        t["name"]: torch.randn(t["shape"], generator=generator, dtype=torch.float32)
        for t in manifest["weights"]["tensors"]
    }
    g_kwargs = manifest["config"]["G_kwargs"]
    init_kwargs = {k: v for k, v in g_kwargs.items() if k != "class_name"} | manifest["config"]["common_kwargs"]
    return {
        "state_dict": state_dict,
        "init_kwargs": init_kwargs,
        "rendering_kwargs": dict(g_kwargs["rendering_kwargs"]),
        "neural_rendering_resolution": int(manifest["config"]["neural_rendering_resolution"]),
    }


@pytest.fixture(scope="module")
def written(tiny: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(pickle path, marker path) of one official-structure file with the tiny weights."""
    path = tmp_path_factory.mktemp("eg3d") / "ffhq512-128.pkl"
    marker = write_official_pickle(path, **tiny)
    return path, marker


@pytest.fixture(scope="module")
def network(written: tuple[Path, Path]) -> EG3DNetwork:
    return read_eg3d_pickle(written[0])


_STRING_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE")
_GET_OPS = ("BINGET", "LONG_BINGET", "GET")


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """(module, name) of every GLOBAL / STACK_GLOBAL in a pickle, following the memo."""
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # what each opcode left on top of the stack (None: not a string)
    found: set[tuple[str, str]] = set()
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in _STRING_OPS:
            pushed.append(arg)
        elif opcode.name in _GET_OPS and isinstance(arg, int):
            pushed.append(memo.get(arg))
        elif opcode.name == "MEMOIZE":  # stores the top of the stack, pushes nothing
            memo[len(memo)] = pushed[-1] if pushed else None
        else:
            if opcode.name == "STACK_GLOBAL":
                found.add((pushed[-2], pushed[-1]))
            elif opcode.name == "GLOBAL" and isinstance(arg, str):
                module, name = arg.split(" ")
                found.add((module, name))
            pushed.append(None)
    return found


def pickle_strings(data: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str) and "UNICODE" in op.name}


def storage_blobs(data: bytes) -> list[bytes]:
    """The nested legacy torch.save blobs (they start with torch's magic number)."""
    return [
        arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, bytes) and arg.startswith(_TORCH_LEGACY_MAGIC)
    ]


def no_stand_in_modules() -> bool:
    return not [m for m in sys.modules if m.split(".")[0] in _STAND_IN_PACKAGES]


@pytest.fixture
def clean_builtins() -> Iterator[None]:
    yield
    if hasattr(builtins, MARKER_ATTRIBUTE):
        delattr(builtins, MARKER_ATTRIBUTE)


# ----------------------------------------------------------------------------------------------
# Round trip.


def test_round_trip_keeps_keys_order_and_bits(network: EG3DNetwork, tiny: dict[str, Any]) -> None:
    expected = tiny["state_dict"]
    assert list(network.state_dict) == list(expected)
    assert len(network.state_dict) == 178
    for key, tensor in network.state_dict.items():
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu", key
        assert tensor.shape == expected[key].shape, key
        assert torch.equal(tensor, expected[key]), key


def test_round_trip_keeps_configuration(network: EG3DNetwork, tiny: dict[str, Any]) -> None:
    assert network.class_name == "training.triplane.TriPlaneGenerator"
    assert network.init_kwargs == tiny["init_kwargs"]
    # EasyDict comes back as a plain dict.
    assert type(network.init_kwargs["mapping_kwargs"]) is dict
    assert type(network.init_kwargs["sr_kwargs"]) is dict
    assert network.rendering_kwargs == tiny["rendering_kwargs"]
    assert network.neural_rendering_resolution == 32


def test_plane_axes_recorded_on_cuda_load_on_cpu(network: EG3DNetwork, written: tuple[Path, Path]) -> None:
    blobs = storage_blobs(written[0].read_bytes())
    cuda_blobs = [b for b in blobs if b"cuda:0" in b]
    assert len(cuda_blobs) == 2  # renderer.plane_axes of G and of G_ema
    assert len(blobs) == 2 * 178 + 2 + 4  # G and G_ema tensors, both plane_axes, D's 4 tensors
    assert all(b"cpu" in b for b in blobs if b not in cuda_blobs)
    assert network.plane_axes is not None
    assert network.plane_axes.device.type == "cpu"
    assert torch.equal(network.plane_axes, PLANE_AXES)


def test_written_file_uses_only_official_global_names(written: tuple[Path, Path]) -> None:
    data = written[0].read_bytes()
    assert data[:2] == b"\x80\x04"  # protocol 4, as pickle.dump writes on Python 3.8+
    found = pickle_globals(data)
    assert found == OFFICIAL_GLOBALS
    assert not [m for m, _ in found if m.split(".")[0] in ("hfgi3d", "tests", "__main__", "eg3d_pickle_writer")]
    # Persistent classes appear only as class-name strings inside their meta dicts.
    strings = pickle_strings(data)
    for class_name in ("TriPlaneGenerator", "SuperresolutionHybrid2X", "SynthesisBlockNoUp", "DualDiscriminator"):
        assert class_name in strings
    assert no_stand_in_modules()


def test_writer_tensor_reduction_matches_torch() -> None:
    """The writer's tensor/parameter opcodes equal torch's own pickling (blob bytes aside)."""

    def signature(data: bytes) -> list[tuple[str, Any]]:
        return [(op.name, None if isinstance(arg, bytes) else arg) for op, arg, _ in pickletools.genops(data)]

    value = torch.randn(3, 4)
    native = pickle.dumps(torch.nn.Parameter(value.clone(), requires_grad=False), protocol=4)
    assert signature(dumps_official(TensorRecord(value, parameter=True))) == signature(native)
    assert signature(dumps_official(TensorRecord(value))) == signature(pickle.dumps(value, protocol=4))


# ----------------------------------------------------------------------------------------------
# No code from the file runs.


@pytest.mark.usefixtures("clean_builtins")
def test_embedded_module_source_is_never_executed(written: tuple[Path, Path], network: EG3DNetwork) -> None:
    path, marker = written
    assert network.state_dict  # read happened (module fixture)
    read_eg3d_pickle(path, key="D")
    assert not marker.exists()
    assert not hasattr(builtins, MARKER_ATTRIBUTE)
    assert no_stand_in_modules()
    # The detector is live: executing the stand-in source does leave the marker.
    probe = path.with_name("probe_marker")
    exec(compile(default_module_src(probe), "<module_src>", "exec"), {})
    assert probe.exists() and getattr(builtins, MARKER_ATTRIBUTE) is True


@pytest.mark.parametrize("how", ["exec", "system"])
def test_forbidden_global_in_state_is_refused(tmp_path: Path, how: str) -> None:
    path = tmp_path / "evil.pkl"
    marker = write_malicious_pickle(path, how=how, where="state")  # type: ignore[arg-type]
    refused = "builtins.exec" if how == "exec" else f"{os.system.__module__}.system"
    with pytest.raises(CheckpointError, match="refused to load the global") as info:
        read_eg3d_pickle(path)
    assert str(path) in str(info.value) and f"'{refused}'" in str(info.value)
    assert not marker.exists()


def test_forbidden_global_in_storage_blob_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    marker = write_malicious_pickle(path, how="exec", where="storage")
    with pytest.raises(CheckpointError, match="weights-only load refuses") as info:
        read_eg3d_pickle(path)
    # torch names the refused global 'exec' (2.5 on) or 'builtins.exec' (2.4).
    assert str(path) in str(info.value) and re.search(r"'(builtins\.)?exec'", str(info.value))
    assert "weights_only` set to `False`" not in str(info.value)  # torch's unsafe advice is not relayed
    assert not marker.exists()


def test_payload_used_by_malicious_files_is_live(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickle.loads(dumps_official(code_running_reduction(marker)))  # a plain unpickler runs it
    assert marker.exists()


def test_bare_reference_to_code_is_refused(tmp_path: Path, tiny: dict[str, Any]) -> None:
    path = tmp_path / "ref.pkl"
    write_official_pickle(path, **tiny, extra_globals={"hook": os.system})
    with pytest.raises(CheckpointError, match=f"'{os.system.__module__}.system'"):
        read_eg3d_pickle(path)


# ----------------------------------------------------------------------------------------------
# Broken or foreign files.


def _truncated(path: Path, tiny: dict[str, Any]) -> None:
    write_official_pickle(path, **tiny)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _torch_zip(path: Path, tiny: dict[str, Any]) -> None:
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)


def _torch_legacy(path: Path, tiny: dict[str, Any]) -> None:
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)


BROKEN_FILES = {
    "truncated": (_truncated, "truncated"),
    "empty": (lambda path, tiny: path.write_bytes(b""), "empty"),
    "random_bytes": (lambda path, tiny: path.write_bytes(np.random.default_rng(0).bytes(4096)), "not a pickle"),
    "torch_zip": (_torch_zip, "zip archive"),
    "torch_legacy": (_torch_legacy, "legacy torch.save"),
    "plain_dict": (lambda path, tiny: path.write_bytes(pickle.dumps({"foo": 1})), "no 'G_ema' entry"),
    "list": (lambda path, tiny: path.write_bytes(pickle.dumps([1, 2])), "expected a dict"),
    "number_entry": (lambda path, tiny: path.write_bytes(pickle.dumps({"G_ema": 5})), "expected a network module"),
    "dict_entry": (lambda path, tiny: path.write_bytes(pickle.dumps({"G_ema": {"a": 1}})), "expected a network"),
}


@pytest.mark.parametrize("kind", list(BROKEN_FILES))
def test_broken_or_foreign_file_names_the_file(tmp_path: Path, tiny: dict[str, Any], kind: str) -> None:
    make, expected = BROKEN_FILES[kind]
    path = tmp_path / f"{kind}.pkl"
    make(path, tiny)
    with pytest.raises(CheckpointError) as info:
        read_eg3d_pickle(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and info.value.path == str(path)
    assert expected in message
    if kind != "truncated":  # the sniff only looks at the head of the file
        assert not is_eg3d_pickle(path)


def test_missing_file_says_where_to_download(tmp_path: Path) -> None:
    path = tmp_path / "ffhq512-128.pkl"
    with pytest.raises(CheckpointNotFoundError) as info:
        read_eg3d_pickle(path)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, CheckpointError)
    assert str(path) in str(info.value)
    assert "download ffhq512-128.pkl" in str(info.value) and "nvidia/research/models/eg3d" in str(info.value)
    assert not is_eg3d_pickle(path)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="directory"):
        read_eg3d_pickle(tmp_path)


def test_tensor_view_outside_its_storage_is_refused(tmp_path: Path) -> None:
    snapshot = build_snapshot(_small_state(), {}, _SR_8XDC, 128, module_src="pass\n")
    blob = legacy_storage_blob(torch.zeros(4))
    decoder_layer(snapshot, "0").state["_parameters"]["weight"] = raw_parameter(blob, (100,), (1,))
    path = tmp_path / "oob.pkl"
    path.write_bytes(snapshot.dumps())
    with pytest.raises(CheckpointError, match=r"decoder\.net\.0\.weight.*corrupt"):
        read_eg3d_pickle(path)


# ----------------------------------------------------------------------------------------------
# Variants of the structure.


def _small_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    shapes = {
        "dataset_label_std": [25],
        "backbone.mapping.w_avg": [8],
        "backbone.mapping.fc0.weight": [8, 8],
        "superresolution.block0.resample_filter": [4, 4],
        "superresolution.block0.conv0.weight": [4, 2, 3, 3],
        "superresolution.block0.conv0.noise_const": [8, 8],
        "decoder.net.0.weight": [4, 32],
        "decoder.net.0.bias": [4],
        "decoder.net.2.weight": [33, 4],
        "decoder.net.2.bias": [33],
    }
    return {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}


@pytest.mark.parametrize(
    "options",
    [
        {"separate_g": False},
        {"decoder_persistent": True},
        {"augment_pipe": True},
        {"numpy_scalar_module": "numpy._core.multiarray"},
        {"plane_axes_device": "cpu"},
    ],
)
def test_structure_variants_round_trip(tmp_path: Path, options: dict[str, Any]) -> None:
    path = tmp_path / "variant.pkl"
    state = _small_state()
    write_official_pickle(path, state, {"z_dim": 512, "mapping_kwargs": {"num_layers": 1}}, _SR_8XDC, 128, **options)
    for key in ("G_ema", "G"):
        net = read_eg3d_pickle(path, key=key)
        assert list(net.state_dict) == list(state)
        assert all(torch.equal(net.state_dict[k], v) for k, v in state.items())
        assert net.init_kwargs == {"z_dim": 512, "mapping_kwargs": {"num_layers": 1}}
        assert net.plane_axes is not None and torch.equal(net.plane_axes, PLANE_AXES)
    if "numpy_scalar_module" in options:
        assert ("numpy._core.multiarray", "scalar") in pickle_globals(path.read_bytes())


def test_reads_the_discriminator_entry(written: tuple[Path, Path]) -> None:
    net = read_eg3d_pickle(written[0], key="D")
    assert net.class_name == "training.dual_discriminator.DualDiscriminator"
    assert list(net.state_dict) == [
        "resample_filter",
        "b128.resample_filter",
        "b128.fromrgb.weight",
        "b128.fromrgb.bias",
    ]
    assert net.neural_rendering_resolution is None and net.plane_axes is None and net.rendering_kwargs == {}


def test_state_dict_skips_none_entries_and_non_persistent_buffers(tmp_path: Path) -> None:
    state = _small_state()
    snapshot = build_snapshot(state, {}, _SR_8XDC, 128, module_src="pass\n")
    g_ema = snapshot.entries["G_ema"]
    g_ema.state["_non_persistent_buffers_set"] = {"dataset_label_std"}
    layer = decoder_layer(snapshot, "2")
    layer.state["_parameters"] = OrderedDict([("weight", layer.state["_parameters"]["weight"]), ("bias", None)])
    path = tmp_path / "skips.pkl"
    path.write_bytes(snapshot.dumps())
    net = read_eg3d_pickle(path)
    assert list(net.state_dict) == [k for k in state if k not in ("dataset_label_std", "decoder.net.2.bias")]


def test_half_precision_tensors_come_back_as_float32(tmp_path: Path) -> None:
    state = _small_state()
    state["decoder.net.0.weight"] = state["decoder.net.0.weight"].half()
    path = tmp_path / "half.pkl"
    write_official_pickle(path, state, {}, _SR_8XDC, 128)
    weight = read_eg3d_pickle(path).state_dict["decoder.net.0.weight"]
    assert weight.dtype == torch.float32 and torch.equal(weight, state["decoder.net.0.weight"].float())


def test_reading_emits_no_warnings(written: tuple[Path, Path]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_eg3d_pickle(written[0])
    assert [str(w.message) for w in caught] == []


def test_is_eg3d_pickle_accepts_official_structure(written: tuple[Path, Path]) -> None:
    assert is_eg3d_pickle(written[0])
    assert is_eg3d_pickle(str(written[0]))


def test_cyclic_module_tree_is_refused(tmp_path: Path) -> None:
    snapshot = build_snapshot(_small_state(), {}, _SR_8XDC, 128, module_src="pass\n")
    renderer = snapshot.entries["G_ema"].state["_modules"]["renderer"]
    snapshot.stand_ins.plain_states[id(renderer)][1]["_modules"]["loop"] = renderer  # NEWOBJ+BUILD allows cycles
    path = tmp_path / "cycle.pkl"
    path.write_bytes(snapshot.dumps())
    with pytest.raises(CheckpointError, match="cyclic"):
        read_eg3d_pickle(path)


def test_training_names_cannot_be_called_with_arguments(tmp_path: Path) -> None:
    """Names under training.* resolve to inert stub classes; calling one with arguments fails."""
    snapshot = build_snapshot(_small_state(), {}, _SR_8XDC, 128, module_src="pass\n")
    run = snapshot.stand_ins.function("training.evil", "run")
    snapshot.entries["G_ema"].state["rendering_kwargs"]["x"] = RawReduce(run, ("rm -rf /",))
    path = tmp_path / "call.pkl"
    path.write_bytes(snapshot.dumps())
    with pytest.raises(CheckpointError, match="not a valid EG3D network pickle"):
        read_eg3d_pickle(path)


@pytest.mark.parametrize("target", [torch.load, eval, getattr, np.load])
def test_references_outside_the_allow_list_are_refused(tmp_path: Path, target: Any) -> None:
    path = tmp_path / "ref.pkl"
    write_official_pickle(path, _small_state(), {}, _SR_8XDC, 128, extra_globals={"ref": target})
    with pytest.raises(CheckpointError, match="refused to load the global"):
        read_eg3d_pickle(path)
