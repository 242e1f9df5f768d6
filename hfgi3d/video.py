"""Writing frames as H.264 mp4 or GIF, and image grids as PNG/JPEG.

Convention:
    Frames and images are ``N×3×H×W`` tensors with values in ``[-1, 1]`` (the generator's
    range); they are clamped and rounded to ``uint8``. Every file is written atomically
    (:func:`hfgi3d.io.atomic_path`), so a reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor
from torchvision.utils import make_grid

from hfgi3d.io import atomic_path

VIDEO_SUFFIXES = (".mp4", ".gif")


def to_uint8(images: Tensor) -> np.ndarray:
    """``N×3×H×W`` in ``[-1, 1]`` → ``N×H×W×3`` uint8."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected N×3×H×W images, got shape {tuple(images.shape)}")
    scaled = (images.detach().float().clamp(-1, 1) + 1) * 127.5
    return scaled.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_video(frames: Tensor, path: str | os.PathLike[str], fps: float = 30) -> None:
    """Write ``N×3×H×W`` frames in ``[-1, 1]`` as an H.264 ``.mp4`` (even H and W) or a looping ``.gif``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"cannot write video {path}: the extension must be one of {', '.join(VIDEO_SUFFIXES)}")
    pixels = to_uint8(frames)  # N×H×W×3
    n, h, w, _ = pixels.shape
    if n == 0:
        raise ValueError(f"cannot write video {path}: no frames")
    if suffix == ".mp4" and (h % 2 or w % 2):
        raise ValueError(f"cannot write {path}: H.264 needs even frame sizes, got {h}×{w}; crop or pad the frames")
    with atomic_path(path) as temporary:  # keeps the suffix: ffmpeg and pillow pick the container from it
        if suffix == ".mp4":
            # macro_block_size=2: keep the exact size (yuv420p only needs it even)
            iio.imwrite(
                temporary, pixels, plugin="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p", quality=8,
                macro_block_size=2,
            )  # fmt: skip
        else:
            iio.imwrite(temporary, pixels, plugin="pillow", duration=1000 / fps, loop=0)  # duration in ms


def save_image_grid(images: Tensor, path: str | os.PathLike[str], nrow: int = 8) -> None:
    """Tile ``N×3×H×W`` images in ``[-1, 1]`` into a grid of ``nrow`` per row and write it (format from suffix)."""
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=0)[None]  # 1×3×H'×W'
    with atomic_path(path) as temporary:
        iio.imwrite(temporary, to_uint8(grid)[0])
