"""Pictures for people: labelled contact sheets and side-by-side GIFs whose views are big enough to read.

Every view is enlarged by nearest neighbour (each pixel becomes a ``k × k`` block, nothing is smoothed or invented)
by the smallest integer factor ``k`` that makes its shorter side at least :data:`MIN_VIEW_SIDE` pixels. Labels are
black text on white strips in PIL's built-in font (no font file to download). Files are written atomically
(:mod:`csd2d.io`).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from .io import check_same_size, save_image, save_video

__all__ = ["MIN_VIEW_SIDE", "upscale_factor", "upscale", "label_strip", "contact_sheet", "side_by_side",
           "write_contact_sheet", "write_side_by_side_gif"]

MIN_VIEW_SIDE = 256
"""Shorter side, in pixels, that every view is enlarged to at least (a 64 px view becomes 256 px: 4 × 4 blocks)."""
LABEL_FONT_SIZE = 16
"""Label text height in pixels (PIL's built-in font; Pillow < 10.1 has only its 11 px bitmap font)."""
LABEL_PAD = 6
"""Blank pixels around a label's text."""
GUTTER = 4
"""White pixels between neighbouring views, so that one view's edge is seen where it ends."""


@functools.lru_cache(maxsize=None)
def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=LABEL_FONT_SIZE)
    except TypeError:  # Pillow < 10.1: no size, the bitmap font
        return ImageFont.load_default()


def _text_size(text: str) -> Tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=_font())
    return right, bottom


def _band_height() -> int:
    """Height of a column-label strip: the font's tallest glyphs (ascenders and descenders) plus padding."""
    return _text_size("Ag|y")[1] + 2 * LABEL_PAD


def upscale_factor(size: Tuple[int, int], min_side: int = MIN_VIEW_SIDE) -> int:
    """The smallest integer ``k ≥ 1`` with ``k · min(width, height) ≥ min_side``."""
    return max(1, math.ceil(min_side / max(1, min(size))))


def upscale(image: Image.Image, factor: int) -> Image.Image:
    """``image`` enlarged ``factor`` times by nearest neighbour (each pixel a ``factor × factor`` block), as RGB."""
    image = image.convert("RGB")
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def label_strip(text: str, width: int, height: Optional[int] = None) -> Image.Image:
    """A white ``width × height`` strip (height: one line of text) with ``text`` in black, left-aligned and
    vertically centred; text wider than the strip is cut off at its right edge."""
    height = _band_height() if height is None else height
    strip = Image.new("RGB", (width, height), "white")
    _, text_h = _text_size(text)
    ImageDraw.Draw(strip).text((LABEL_PAD, (height - text_h) // 2), text, fill="black", font=_font())
    return strip


def _views(images: Sequence[Image.Image], arg: str, min_side: int) -> List[Image.Image]:
    if not images:
        raise ValueError(f"{arg}: expected at least one image, got none")
    check_same_size(images, arg)
    factor = upscale_factor(images[0].size, min_side)
    return [upscale(image, factor) for image in images]


def contact_sheet(rows: Mapping[str, Sequence[Image.Image]], column_labels: Optional[Sequence[str]] = None,
                  min_side: int = MIN_VIEW_SIDE) -> Image.Image:
    """A grid with one row per entry of ``rows`` (its key written at the row's left) and, when given, a label
    above each column; views :data:`GUTTER` px apart. All images must share one size; each is enlarged by
    :func:`upscale_factor`. Rows whose keys are all empty get no label margin (:func:`side_by_side`)."""
    names = list(rows)
    if not names:
        raise ValueError("rows: expected at least one row, got none")
    count = len(rows[names[0]])
    for name in names:
        if len(rows[name]) != count:
            raise ValueError(f"rows: expected {count} images in every row (as in {names[0]!r}), got "
                             f"{len(rows[name])} in {name!r}")
    if column_labels is not None and len(column_labels) != count:
        raise ValueError(f"column_labels: expected {count} labels (one per column), got {len(column_labels)}")
    cells = _views([image for name in names for image in rows[name]], "rows", min_side)
    w, h = cells[0].size
    left = max(_text_size(name)[0] for name in names) + 2 * LABEL_PAD if any(names) else 0
    top = 0 if column_labels is None else _band_height()
    step_x, step_y = w + GUTTER, h + GUTTER
    sheet = Image.new("RGB", (left + step_x * count - GUTTER, top + step_y * len(names) - GUTTER), "white")
    for c, text in enumerate(column_labels or ()):
        sheet.paste(label_strip(text, w, top), (left + c * step_x, 0))
    for r, name in enumerate(names):
        if left:
            sheet.paste(label_strip(name, left, h), (0, top + r * step_y))
        for c in range(count):
            sheet.paste(cells[r * count + c], (left + c * step_x, top + r * step_y))
    return sheet


def side_by_side(columns: Mapping[str, Image.Image], min_side: int = MIN_VIEW_SIDE) -> Image.Image:
    """The images of ``columns`` side by side (:data:`GUTTER` px apart), each under a strip holding its key; all
    of one size, each enlarged by :func:`upscale_factor` (a one-row :func:`contact_sheet` without row labels)."""
    if not columns:
        raise ValueError("columns: expected at least one image, got none")
    check_same_size(list(columns.values()), "columns")
    return contact_sheet({"": list(columns.values())}, list(columns), min_side)


def write_contact_sheet(path: Path, rows: Mapping[str, Sequence[Image.Image]],
                        column_labels: Optional[Sequence[str]] = None, min_side: int = MIN_VIEW_SIDE) -> Path:
    """:func:`contact_sheet` written to ``path`` atomically."""
    return save_image(contact_sheet(rows, column_labels, min_side), Path(path))


def write_side_by_side_gif(path: Path, columns: Mapping[str, Sequence[Image.Image]], fps: float,
                           min_side: int = MIN_VIEW_SIDE) -> List[Image.Image]:
    """A looping GIF at ``fps`` whose frame ``k`` is :func:`side_by_side` of every column's ``k``-th image (as many
    frames as the shortest column), written atomically; returns the frames."""
    n = min(len(images) for images in columns.values())
    frames = [side_by_side({name: images[k] for name, images in columns.items()}, min_side) for k in range(n)]
    save_video(frames, Path(path), fps=fps)
    return frames
