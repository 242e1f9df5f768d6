"""Reading the input photo and its camera.

A camera is given as a JSON file holding the 25 numbers (a list, or ``{"c25": [...]}``), a
``.npy`` file with 25 values, or an EG3D ``dataset.json`` (``{"labels": [[name, c25], ...]}``)
in which the entry is found by the image's file name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

SAMPLE = "sample"
"""The name that picks the bundled photo (only ``configs/demo.yaml`` uses it)."""
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "sample_face.png"
"""A bundled FFHQ-aligned portrait (NASA astronaut photo from scikit-image, public domain)."""
SAMPLE_CAMERA = SAMPLE_IMAGE.with_suffix(".json")


def resolve_input(image: str, camera: str | None) -> tuple[Path, str | None]:
    """The photo's path and its camera's: ``sample`` is the bundled photo with its camera."""
    if image == SAMPLE:
        return SAMPLE_IMAGE, camera or str(SAMPLE_CAMERA)
    return Path(image), camera


def load_image(path: str | Path, resolution: int) -> Tensor:
    """``1×3×R×R`` image in ``[-1, 1]`` from a square, aligned photo (EXIF orientation applied).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable or not square (run the preprocessing command first).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input image not found: {path}")
    try:
        with Image.open(path) as handle:
            image = ImageOps.exif_transpose(handle).convert("RGB")
    except OSError as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from error
    if image.width != image.height:
        raise ValueError(
            f"{path} is {image.width}×{image.height}; hfgi3d needs a square FFHQ-aligned crop "
            "(align the photo with the preprocessing command first)"
        )
    if image.width != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # H×W×3
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def load_camera(path: str | Path | None, image_path: str | Path) -> Tensor:
    """``1×25`` camera label for ``image_path`` (see the module docstring for the formats)."""
    if path is None:
        raise ValueError(
            f"no camera for {image_path}: pass --data.camera (a 25-vector .json/.npy or an EG3D "
            "dataset.json), or align the photo with the preprocessing command, which writes one"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"camera file not found: {path}")
    if path.suffix == ".npy":
        values = np.load(path, allow_pickle=False)
    else:
        try:
            content = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        values = _camera_from_json(content, path, Path(image_path).name)
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if array.size != 25 or not np.isfinite(array).all():
        raise ValueError(f"{path}: expected 25 finite numbers (cam2world 4×4 + intrinsics 3×3), got {array.size}")
    return torch.from_numpy(array).reshape(1, 25)


def _camera_from_json(content: object, path: Path, image_name: str) -> object:
    if isinstance(content, list):
        return content
    if isinstance(content, dict) and "c25" in content:
        return content["c25"]
    if isinstance(content, dict) and "labels" in content:
        labels = dict((Path(name).name, label) for name, label in content["labels"])
        if image_name not in labels:
            raise ValueError(f"{path} has no label for {image_name} (it lists {len(labels)} images)")
        return labels[image_name]
    raise ValueError(f"{path}: expected a list of 25 numbers, {{'c25': [...]}} or an EG3D dataset.json")
