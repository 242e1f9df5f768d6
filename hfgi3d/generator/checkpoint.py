"""Loading and saving generators: NVIDIA's network pickles and hfgi3d's own checkpoints.

hfgi3d checkpoints are ``torch.save`` zip files holding ``{"format", "version", "config",
"state_dict"}``; they load with ``torch.load(weights_only=True)``, so no code runs. EG3D
pickles are read by :mod:`hfgi3d.generator.eg3d_pickle`, which never executes the source
code embedded in them.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import torch
import yaml

from hfgi3d.errors import InputError
from hfgi3d.generator.config import GeneratorConfig, config_from_eg3d, tiny_config
from hfgi3d.generator.eg3d_pickle import is_eg3d_pickle
from hfgi3d.generator.triplane import TriPlaneGenerator
from hfgi3d.io import atomic_path

CHECKPOINT_FORMAT = "hfgi3d.generator"
CHECKPOINT_VERSION = 1
EG3D_DOWNLOAD_HINT = (
    "download the official weights (e.g. ffhq512-128.pkl) from NVIDIA's EG3D model page "
    "(NGC catalog: nvidia/research/models/eg3d), or convert them with "
    "`python -m hfgi3d convert-eg3d ffhq512-128.pkl --output ffhq512-128.pt`"
)
_BLOCK_KEY = re.compile(r"^backbone\.synthesis\.b(\d+)\.")
TINY_GENERATOR = "tiny"


class GeneratorLoadError(ValueError):
    """A generator file is missing, corrupt or of an unknown kind; the message names it."""


def save_generator(
    generator: TriPlaneGenerator, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> None:
    """Write an hfgi3d checkpoint (config + state dict), atomically; floating-point tensors are
    stored as ``dtype`` (``torch.float16`` halves the file; loading casts back to float32)."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": generator.config.to_dict(),
        "state_dict": {
            k: v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu()
            for k, v in generator.state_dict().items()
        },
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


@torch.no_grad()
def round_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round ``module``'s floating-point parameters and buffers to ``dtype`` in place (kept in their
    own dtype): renders of the rounded module are those of its checkpoint saved as ``dtype``."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            tensor.copy_(tensor.to(dtype))


def load_generator(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TriPlaneGenerator:
    """Load an EG3D network pickle (its ``G_ema``) or an hfgi3d checkpoint, in eval mode.

    Raises:
        GeneratorLoadError: the file is missing, truncated, or neither kind of file.
    """
    path = Path(path)
    if not path.is_file():
        raise GeneratorLoadError(f"generator file not found: {path}; {EG3D_DOWNLOAD_HINT}")
    if zipfile.is_zipfile(path):
        generator = _load_hfgi3d_checkpoint(path)
    else:
        generator = _load_eg3d_pickle(path)
    return generator.eval().to(device)


def open_generator(spec: str, seed: int = 0) -> TriPlaneGenerator:
    """A generator from a weights file, or randomly initialised from an architecture.

    ``spec`` is an EG3D ``.pkl`` or hfgi3d ``.pt`` file (see :func:`load_generator`), a
    :class:`GeneratorConfig` ``.yaml`` (e.g. configs/generator/ffhq512.yaml), or ``"tiny"``
    (configs/generator/tiny.yaml). Random weights are drawn with ``seed`` without touching
    the global RNG.
    """
    if spec == TINY_GENERATOR:
        config = tiny_config()
    elif spec.endswith((".yaml", ".yml")):
        config = GeneratorConfig.from_yaml(spec)
    else:
        return load_generator(spec)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TriPlaneGenerator(config).eval()


def generator_resolution(spec: str) -> int | None:
    """The output resolution of the generator ``spec`` names, found without building it.

    ``None`` for an EG3D pickle (its configuration sits behind the weights: it is known once
    the file is read). Used to check inputs before anything heavy happens.

    Raises:
        InputError: the file is missing, a folder, or neither kind of generator file.
    """
    if spec == TINY_GENERATOR:
        return tiny_config().img_resolution
    path = Path(spec)
    if path.is_dir():
        raise InputError(f"the generator {path} is a folder: pass the .pkl or .pt file itself")
    if not path.is_file():
        raise InputError(f"generator file not found: {path}; {EG3D_DOWNLOAD_HINT}")
    if path.suffix in (".yaml", ".yml"):
        try:
            return GeneratorConfig.from_yaml(path).img_resolution
        except (TypeError, ValueError, yaml.YAMLError) as error:
            raise InputError(f"{path} is not a generator config: {error}") from None
    if zipfile.is_zipfile(path):
        try:
            # mmap: only the small index is read, not the weights
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return int(payload["config"]["img_resolution"])
        except Exception as error:  # torch raises many types for files that are not its checkpoints
            raise InputError(f"{path} is a zip file but not an hfgi3d generator checkpoint ({error})") from None
    if not is_eg3d_pickle(path):
        raise InputError(f"{path} is neither an EG3D network pickle nor an hfgi3d checkpoint; {EG3D_DOWNLOAD_HINT}")
    return None


def plane_resolution_of(state_dict: dict[str, torch.Tensor]) -> int:
    """Tri-plane resolution implied by the backbone's block names (``b4`` … ``b256``)."""
    resolutions = [int(m.group(1)) for key in state_dict if (m := _BLOCK_KEY.match(key))]
    if not resolutions:
        raise KeyError("no backbone.synthesis.b<res> entries")
    return max(resolutions)


def _load_hfgi3d_checkpoint(path: Path) -> TriPlaneGenerator:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt zips
        raise GeneratorLoadError(f"{path} is not a readable hfgi3d checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise GeneratorLoadError(
            f"{path} is a torch file but not an hfgi3d generator checkpoint "
            f"(expected format {CHECKPOINT_FORMAT!r}); {EG3D_DOWNLOAD_HINT}"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise GeneratorLoadError(
            f"{path} has checkpoint version {payload.get('version')}, expected {CHECKPOINT_VERSION}"
        )
    generator = TriPlaneGenerator(GeneratorConfig.from_dict(payload["config"]))
    _load_state(generator, payload["state_dict"], path)
    return generator


def _load_eg3d_pickle(path: Path) -> TriPlaneGenerator:
    from hfgi3d.generator.eg3d_pickle import CheckpointError, read_eg3d_pickle

    try:
        network = read_eg3d_pickle(path)
    except CheckpointError as error:
        raise GeneratorLoadError(str(error)) from error
    try:
        config = config_from_eg3d(
            network.init_kwargs,
            network.rendering_kwargs,
            network.neural_rendering_resolution,
            plane_resolution=plane_resolution_of(network.state_dict),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise GeneratorLoadError(f"{path}: unsupported EG3D generator configuration: {error}") from error
    generator = TriPlaneGenerator(config)
    _load_state(generator, network.state_dict, path)
    return generator


def _load_state(generator: TriPlaneGenerator, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    expected = generator.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise GeneratorLoadError(
            f"{path}: weights do not fit the generator architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]})"
        )
    generator.load_state_dict(state_dict, strict=True)
