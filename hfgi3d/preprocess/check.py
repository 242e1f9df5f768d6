"""Pictures to check a preprocessing run by eye: each crop with its landmarks and estimated head pose.

Per crop (:func:`pose_tile`): the detected five landmarks (green dots), the canonical face's five
landmarks seen by the estimated camera (red rings: they sit on the dots when the camera is right),
and the head's axes drawn from the nose tip with that camera — x to the face's left (red), y up
(green), z out of the face (blue), each 0.2 world units (a fifth of the head's width). A frontal
face shows a short blue axis; a face turned to the viewer's right swings it to the right. The
caption (two lines: the name; yaw and pitch in radians and the estimator) is red when the report has
warnings for the photo.

:func:`contact_sheets` lays the tiles out in pages of :data:`PAGE_TILES`; :mod:`hfgi3d.preprocess`
writes them as ``pose_check.png`` (``pose_check_2.png``, … for more pages) next to the crops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from hfgi3d.faces import NOSE
from hfgi3d.pose import canonical_landmarks_world, pixel_positions

CHECK_PNG = "pose_check.png"
TILE_PX = 256
"""Side of one crop on the sheet."""
CAPTION_PX = 36
"""Two caption lines under each crop."""
GAP_PX = 4
COLUMNS = 6
PAGE_TILES = 48
"""Tiles per sheet (8 rows of 6): a large folder gets several sheets."""
AXIS_LENGTH = 0.2
"""World units (the generator's head is about 1 wide)."""
AXIS_COLOURS = ((230, 40, 40), (40, 200, 40), (60, 110, 255))
LANDMARK_COLOUR = (40, 230, 40)
MODEL_COLOUR = (255, 60, 60)
WARNING_COLOUR = (255, 90, 90)
TEXT_COLOUR = (235, 235, 235)
BACKGROUND = (24, 24, 24)


def check_page_name(page: int) -> str:
    """``pose_check.png`` for the first sheet, ``pose_check_<page + 1>.png`` after it."""
    return CHECK_PNG if page == 0 else CHECK_PNG.replace(".png", f"_{page + 1}.png")


def head_axes_world() -> Tensor:
    """``4×3`` world points: the canonical nose tip and the ends of the three axes drawn from it."""
    nose = canonical_landmarks_world(torch.float64)[NOSE]
    return torch.stack([nose, *(nose + AXIS_LENGTH * torch.eye(3, dtype=torch.float64))])


def pose_tile(crop: np.ndarray, landmarks_px: Tensor, c25: Tensor, caption: str, warned: bool = False) -> Image.Image:
    """One crop (``S×S×3`` uint8) with its ``5×2`` landmarks, the posed canonical landmarks and the head
    axes of camera ``c25`` (``1×25``), scaled to :data:`TILE_PX` with ``caption`` below (module docstring)."""
    size = crop.shape[0]
    scale = TILE_PX / size
    tile = Image.new("RGB", (TILE_PX + GAP_PX, TILE_PX + CAPTION_PX), BACKGROUND)
    tile.paste(Image.fromarray(crop).resize((TILE_PX, TILE_PX), Image.Resampling.LANCZOS))
    draw = ImageDraw.Draw(tile)
    camera = c25.detach().to(torch.float64).reshape(1, 25)
    model = pixel_positions(canonical_landmarks_world(torch.float64), camera, size)[0] * scale  # 5×2
    axes = pixel_positions(head_axes_world(), camera, size)[0] * scale  # 4×2: origin, x, y, z ends
    detected = landmarks_px.detach().to(torch.float64).reshape(-1, 2) * scale
    origin = tuple(axes[0].tolist())
    for end, colour in zip(axes[1:], AXIS_COLOURS, strict=True):
        draw.line([origin, tuple(end.tolist())], fill=colour, width=3)
    for x, y in model.tolist():
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=MODEL_COLOUR, width=2)
    for x, y in detected.tolist():
        draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=LANDMARK_COLOUR)
    draw.multiline_text(
        (4, TILE_PX + 3), caption, fill=WARNING_COLOUR if warned else TEXT_COLOUR, font=_font(), spacing=2
    )
    return tile


def contact_sheets(tiles: Sequence[Image.Image]) -> list[Image.Image]:
    """The tiles in rows of :data:`COLUMNS`, :data:`PAGE_TILES` per sheet."""
    sheets = []
    for first in range(0, len(tiles), PAGE_TILES):
        page = tiles[first : first + PAGE_TILES]
        columns = min(COLUMNS, len(page))
        rows = math.ceil(len(page) / columns)
        width, height = page[0].size
        sheet = Image.new("RGB", (columns * width, rows * height), BACKGROUND)
        for index, tile in enumerate(page):
            sheet.paste(tile, ((index % columns) * width, (index // columns) * height))
        sheets.append(sheet)
    return sheets


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=12)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()
