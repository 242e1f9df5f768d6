"""Reading photos: any file PIL understands, as an upright ``H×W×3`` ``uint8`` RGB array.

Policies:
    * Grayscale, palette, CMYK and 16-bit images are converted to 8-bit RGB, transparency is
      composited on white, EXIF orientation is applied, only the first frame of an animation is
      read — each noted in :attr:`Photo.notes`, which the report carries.
    * Corrupt or truncated files and non-images are per-photo errors (:class:`PreprocessError`
      ``unreadable`` / ``not_an_image``). Photos smaller than :data:`MIN_PHOTO_SIDE_PX` are rejected
      before detection by :func:`hfgi3d.preprocess.preprocess`.
    * In a folder (:func:`hfgi3d.io.list_inputs`), only files with an image extension
      (:data:`hfgi3d.io.IMAGE_SUFFIXES`) are read; others are listed as skipped. A single file given
      as input is always tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hfgi3d.preprocess.report import PreprocessError

MIN_PHOTO_SIDE_PX = 64
"""Photos with a shorter side are rejected before detection: no usable face fits in them."""

_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_BIT_DEPTH_OFFSET = 24  # signature (8) + IHDR length and type (8) + width and height (8)
_MAX_8BIT = 255.0
_MAX_16BIT = 65535.0
_WHITE = (255, 255, 255, 255)


class Photo(NamedTuple):
    """An upright photo as ``H×W×3`` ``uint8`` RGB, with what was done to get there."""

    pixels: np.ndarray
    notes: tuple[str, ...]


def load_photo(path: Path) -> Photo:
    """Read any image PIL understands as upright 8-bit RGB (module docstring, policies).

    Raises:
        PreprocessError: ``not_an_image`` (PIL cannot identify it) or ``unreadable`` (corrupt, truncated).
    """
    notes: list[str] = []
    try:
        with Image.open(path) as handle:
            num_frames = getattr(handle, "n_frames", 1)
            if num_frames > 1:
                notes.append(f"{num_frames} frames: used the first")
            orientation = handle.getexif().get(_EXIF_ORIENTATION, 1)
            upright = ImageOps.exif_transpose(handle)  # loads the pixels: truncation surfaces here
    except UnidentifiedImageError as error:
        raise PreprocessError(
            "not_an_image",
            f"{path.name} is not an image (PIL cannot identify it): remove it from the input or re-export it",
        ) from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise PreprocessError(
            "unreadable",
            f"cannot read {path.name} ({error}): the file is corrupt or truncated; re-export or re-download it",
        ) from error
    if orientation not in (None, 1):
        notes.append(f"EXIF orientation {orientation} applied")
    if _png_bit_depth(path) == 16 and upright.mode == "RGB":
        notes.append("16-bit PNG read as 8 bits per channel")
    pixels, conversion_notes = _to_rgb8(upright)
    return Photo(pixels, (*notes, *conversion_notes))


def _png_bit_depth(path: Path) -> int | None:
    """Bits per channel from a PNG's header (PIL silently reads 16-bit RGB PNGs as 8-bit RGB)."""
    with open(path, "rb") as handle:
        header = handle.read(_PNG_BIT_DEPTH_OFFSET + 1)
    if not header.startswith(_PNG_SIGNATURE) or len(header) <= _PNG_BIT_DEPTH_OFFSET:
        return None
    return header[_PNG_BIT_DEPTH_OFFSET]


def _to_rgb8(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    """``H×W×3`` uint8 RGB from any PIL mode, with notes on what changed."""
    notes: list[str] = []
    mode = image.mode
    if mode.startswith("I") or mode == "F":  # 16-bit, 32-bit integer or float grayscale
        values = np.asarray(image, dtype=np.float64)  # H×W
        peak = float(np.nanmax(values)) if values.size else 0.0
        if mode == "F":
            full_scale = 1.0 if peak <= 1.0 else _MAX_8BIT
        else:  # "I" may hold 8-bit data (some TIFFs), 16-bit data or wider; scale to its container
            full_scale = _MAX_8BIT if peak <= _MAX_8BIT else _MAX_16BIT if peak <= _MAX_16BIT else peak
        gray = np.clip(np.rint(np.nan_to_num(values) * (_MAX_8BIT / full_scale)), 0, _MAX_8BIT).astype(np.uint8)
        notes.append(f"{mode} grayscale reduced to 8 bits and converted to RGB")
        return np.repeat(gray[..., None], 3, axis=2), notes
    bands = image.getbands()
    if "A" in bands or "a" in bands or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        composited = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
        notes.append("transparency composited on white" if alpha.min() < _MAX_8BIT else "opaque alpha channel dropped")
        rgb = composited.convert("RGB")
    else:
        rgb = image.convert("RGB")
    if mode in ("1", "L", "LA", "La"):
        notes.append("grayscale converted to RGB")
    elif mode not in ("RGB", "RGBA", "RGBa", "RGBX"):
        notes.append(f"{mode} converted to RGB")
    return np.asarray(rgb, dtype=np.uint8).copy(), notes
