"""Reading the input photos and their cameras.

A camera is given as a JSON file holding the 25 numbers (a list, or ``{"c25": [...]}``), a
``.npy`` file with 25 values, or an EG3D ``dataset.json`` (``{"labels": [[name, c25], ...]}``)
in which the entry is found by the image's file name.

Several photos (:func:`list_photos`, ``data.images``) come as an EG3D ``dataset.json`` with the
photos beside it, a folder holding one (what ``preprocess`` writes), or a folder of photos each
with its camera beside it (``face.png`` + ``face.json`` or ``face.npy``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from hfgi3d.errors import InputError

SAMPLE = "sample"
"""The name that picks the bundled photo (only ``configs/demo.yaml`` uses it)."""
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "sample_face.png"
"""A bundled FFHQ-aligned portrait (NASA astronaut photo from scikit-image, public domain): the
original 256² crop upscaled 2× (Lanczos) to 512², the FFHQ-512 generator's input size, so that
the speed benchmarks can run the real-size architecture on it."""
SAMPLE_CAMERA = SAMPLE_IMAGE.with_suffix(".json")


def resolve_input(image: str, camera: str | None) -> tuple[Path, str | None]:
    """The photo's path and its camera's: ``sample`` is the bundled photo with its camera."""
    if image == SAMPLE:
        return SAMPLE_IMAGE, camera or str(SAMPLE_CAMERA)
    return Path(image), camera


PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Photo extensions :func:`list_photos` picks up in a folder."""
DATASET_JSON = "dataset.json"


def list_photos(images: str | Path) -> list[tuple[Path, str]]:
    """The photos of ``data.images`` and each one's camera file, sorted by file name.

    Raises:
        InputError: nothing there, no photo in it, a photo without camera, a label whose photo is
            missing, or two photos with the same name (their result folders would clash).
    """
    path = Path(images)
    if not path.exists():
        raise InputError(f"data.images: {path} does not exist (pass a folder of photos or an EG3D dataset.json)")
    dataset = path if path.is_file() else path / DATASET_JSON
    if path.is_file() and path.suffix != ".json":
        raise InputError(f"data.images: {path} is a file but not a dataset.json; for one photo use data.image")
    if dataset.is_file():
        try:
            labels = json.loads(dataset.read_text())["labels"]
            names = [str(name) for name, _ in labels]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            raise InputError(f"{dataset} is not an EG3D dataset.json ({{'labels': [[name, c25], ...]}})") from None
        photos = [(dataset.parent / name, str(dataset)) for name in names]
        missing = [str(photo) for photo, _ in photos if not photo.is_file()]
        if missing:
            raise InputError(f"{dataset} labels {len(missing)} photo(s) that are not there, e.g. {missing[0]}")
    else:
        photos = []
        for photo in sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES):
            camera = next((c for c in (photo.with_suffix(".json"), photo.with_suffix(".npy")) if c.is_file()), None)
            if camera is None:
                raise InputError(
                    f"no camera for {photo}: put {photo.stem}.json (25 numbers) beside it, or a dataset.json in {path}"
                )
            photos.append((photo, str(camera)))
    if not photos:
        raise InputError(f"data.images: no photo in {path} ({', '.join(PHOTO_SUFFIXES)})")
    photos.sort(key=lambda item: item[0].name)
    stems = [photo.stem for photo, _ in photos]
    clash = next((stem for stem in stems if stems.count(stem) > 1), None)
    if clash is not None:
        raise InputError(f"data.images: two photos are named {clash!r}; their result folders would clash")
    return photos


PREPROCESS_HINT = (
    "align it with `python -m hfgi3d preprocess PHOTO --output_dir OUT/`, which writes the crop and its camera"
)


def open_photo(path: str | Path) -> tuple[Image.Image, list[str]]:
    """The photo as an RGB image (EXIF orientation applied) and notes on conversions made.

    Raises:
        InputError: missing, a folder, not an image, truncated or corrupt.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a photo: pass an image file")
    if not path.is_file():
        raise InputError(f"photo not found: {path}")
    try:
        with Image.open(path) as handle:
            handle.load()  # decodes every pixel: a truncated file fails here, not later
            mode = handle.mode
            image = ImageOps.exif_transpose(handle).convert("RGB")
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image file (no known image format): pass a PNG or JPEG photo") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"cannot read the photo {path}: {error} (the file is truncated or corrupt)") from None
    notes = []
    if mode not in ("RGB",):
        kind = {"L": "grayscale", "LA": "grayscale with alpha", "RGBA": "RGBA", "P": "palette", "I;16": "16-bit"}
        notes.append(f"{path.name} is {kind.get(mode, mode)} ({mode}): converted to RGB")
    return image, notes


def read_photo(path: str | Path, resolution: int | None) -> tuple[Image.Image, list[str]]:
    """The photo (see :func:`open_photo`), refused unless square and at least ``resolution`` px
    (the generator's output, when known); returns it with notes on conversions."""
    image, notes = open_photo(path)
    if image.width != image.height:
        raise InputError(
            f"{path} is {image.width}×{image.height} px: hfgi3d needs a square FFHQ-aligned crop; {PREPROCESS_HINT}"
        )
    if resolution is not None and image.width < resolution:
        raise InputError(
            f"{path} is {image.width}×{image.height} px, smaller than the generator's {resolution}×{resolution}; "
            f"{PREPROCESS_HINT}"
        )
    return image, notes


def load_image(path: str | Path, resolution: int) -> Tensor:
    """``1×3×R×R`` image in ``[-1, 1]`` from a square, aligned photo (EXIF orientation applied).

    Raises:
        InputError: see :func:`read_photo`.
    """
    image, _ = read_photo(path, resolution)
    if image.width != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # H×W×3
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def load_camera(path: str | Path | None, image_path: str | Path) -> Tensor:
    """``1×25`` camera label for ``image_path`` (see the module docstring for the formats).

    Raises:
        InputError: no camera given, missing file, unreadable, or not 25 finite numbers.
    """
    if path is None:
        raise InputError(
            f"no camera for {image_path}: pass --data.camera (a 25-vector .json/.npy or an EG3D "
            "dataset.json), or align the photo with the preprocessing command, which writes one"
        )
    path = Path(path)
    if path.is_dir():
        raise InputError(f"the camera {path} is a folder: pass its .json, .npy or dataset.json file")
    if not path.is_file():
        raise InputError(f"camera file not found: {path}")
    if path.suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read the camera {path} as a .npy array: {error}") from None
    else:
        try:
            content = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"the camera {path} is not valid JSON: {error}") from None
        values = _camera_from_json(content, path, Path(image_path).name)
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"the camera in {path} is not a list of numbers") from None
    if array.size != 25:
        raise InputError(f"the camera in {path} has {array.size} numbers, expected 25 (cam2world 4×4 + intrinsics 3×3)")
    if not np.isfinite(array).all():
        bad = ", ".join(str(i) for i in np.flatnonzero(~np.isfinite(array))[:5])
        raise InputError(f"the camera in {path} holds NaN or infinite values (at index {bad})")
    return torch.from_numpy(array.astype(np.float32)).reshape(1, 25)


def _camera_from_json(content: object, path: Path, image_name: str) -> object:
    if isinstance(content, list):
        return content
    if isinstance(content, dict) and "c25" in content:
        return content["c25"]
    if isinstance(content, dict) and "labels" in content:
        try:
            labels = dict((Path(name).name, label) for name, label in content["labels"])
        except (TypeError, ValueError):
            raise InputError(f"{path} is not an EG3D dataset.json: 'labels' must be [[name, c25], ...]") from None
        if image_name not in labels:
            raise InputError(f"{path} has no label for {image_name} (it lists {len(labels)} images)")
        return labels[image_name]
    raise InputError(f"{path}: expected a list of 25 numbers, {{'c25': [...]}} or an EG3D dataset.json")
