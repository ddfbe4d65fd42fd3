"""The visible AI label of a derived image: where it goes, its pixels, burned in or as an overlay.

A reader must see that an image is AI-derived even on a screenshot, a printed
film or in a viewer that hides the series name. The label is two lines,
``AI-ENHANCED  NOT FOR PRIMARY DIAGNOSIS`` and the model's name and version,
rendered with Pillow's built-in scalable font at a height proportional to the
image (:data:`LINE_HEIGHT_FRACTION` of the shorter side, at least
:data:`MIN_LINE_HEIGHT` pixels), in the corner with the least anatomy: the
corner whose label-sized box holds the least anatomy by two measures taken
from the image itself: structure (mean absolute gradient, relative to the
whole image's) plus brightness (mean percentile rank; the image is given in
display orientation, MONOCHROME2, where the body is brighter than the direct
exposure around it).

Two ways to show it:

* ``burned_in`` (:func:`burn_in`): the text is written into the pixels at the
  bright end of the image's display window with a one-pixel-wide dark outline
  at the dark end, so it is legible at the default window on any background.
  The derived object then says ``BurnedInAnnotation = YES``.
* ``overlay`` (:func:`overlay_attributes`): the same mask as an Overlay Plane
  (group 6000) that viewers draw on top; the pixels are untouched.

Everything here is a pure function of its inputs: the same image and text
give the same label, so derived images stay deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits

WARNING_TEXT = "AI-ENHANCED  NOT FOR PRIMARY DIAGNOSIS"
"""The first line of every label."""

LINE_HEIGHT_FRACTION = 0.022
"""Height of a text line as a fraction of the image's shorter side (≈ 40 px at 1841 px)."""

MIN_LINE_HEIGHT = 8
"""No line is smaller than this many pixels (small images still carry a readable label)."""

MARGIN_FRACTION = 0.015
"""Distance of the label from the image's edges, as a fraction of the shorter side."""

OVERLAY_GROUP = 0x6000
"""The overlay group the label uses (the first of the 16 repeating groups)."""


class LabelMode(StrEnum):
    """``[output] label``: how the derived image shows that it is AI-derived."""

    BURNED_IN = "burned_in"
    OVERLAY = "overlay"
    NONE = "none"


class Corner(StrEnum):
    """A corner of the image (rows from the top, columns from the left)."""

    TOP_LEFT = "top-left"
    TOP_RIGHT = "top-right"
    BOTTOM_LEFT = "bottom-left"
    BOTTOM_RIGHT = "bottom-right"


@dataclass(frozen=True)
class Label:
    """A rendered label: its text mask, its outline mask and where they sit in the image.

    Attributes
    ----------
    text : numpy.ndarray
        Boolean mask of the glyphs, the size of the label box.
    outline : numpy.ndarray
        Boolean mask of the one-pixel ring around the glyphs (not the glyphs).
    top, left : int
        Position of the box in the image.
    corner : Corner
        The corner it was placed in.
    """

    text: np.ndarray
    outline: np.ndarray
    top: int
    left: int
    corner: Corner

    @property
    def box(self) -> tuple[slice, slice]:
        """The image region the label covers."""
        rows, cols = self.text.shape
        return slice(self.top, self.top + rows), slice(self.left, self.left + cols)

    def full_mask(self, shape: tuple[int, int], with_outline: bool = True) -> np.ndarray:
        """The label as a boolean mask the size of the image."""
        mask = np.zeros(shape, dtype=bool)
        mask[self.box] = self.text | self.outline if with_outline else self.text
        return mask


def label_lines(model_name: str, model_version: str) -> tuple[str, str]:
    """The two lines of the label: the warning, then the model that made the image."""
    return WARNING_TEXT, f"{model_name} {model_version}".strip()


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render_text(lines: tuple[str, ...], line_height: int) -> np.ndarray:
    """The glyphs of `lines` as a boolean mask, one line under the other.

    Parameters
    ----------
    lines : tuple of str
        The lines, top to bottom.
    line_height : int
        Font size in pixels (cap height plus descenders); at least 1.

    Returns
    -------
    numpy.ndarray
        A tight boolean mask with a one-pixel empty border (room for the outline).
    """
    if line_height < 1:
        raise ValueError(f"The label's line height must be at least 1 pixel, not {line_height}.")
    font = _font(line_height)
    gap = max(1, line_height // 4)
    widths = [int(np.ceil(font.getlength(line))) for line in lines]
    width = max(widths) + 4
    height = len(lines) * (line_height + gap) + 4
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for index, line in enumerate(lines):
        draw.text((2, 2 + index * (line_height + gap)), line, fill=255, font=font)
    mask = np.asarray(canvas) >= 128
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("The label text renders to no pixels.")
    tight = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return np.pad(tight, 1)


def wrapped(lines: tuple[str, ...]) -> tuple[str, ...]:
    """The same label one or two words per line, for images too narrow for its long lines."""
    short: list[str] = []
    for line in lines:
        words = line.split()
        short.extend(" ".join(words[i : i + 2]) for i in range(0, len(words), 2))
    return tuple(short)


def _fit(lines: tuple[str, ...], line_height: int, max_width: int) -> np.ndarray:
    """The largest rendering of `lines` (or of :func:`wrapped` lines) at most `max_width` wide.

    Starts at `line_height`, shrinks down to :data:`MIN_LINE_HEIGHT`, then wraps;
    what still does not fit is returned as is (the caller checks the size).
    """
    text = np.zeros((0, 0), dtype=bool)
    for candidate in (lines, wrapped(lines)):
        size = line_height
        text = render_text(candidate, size)
        while text.shape[1] > max_width and size > MIN_LINE_HEIGHT:
            size = max(MIN_LINE_HEIGHT, min(size - 1, size * max_width // text.shape[1]))
            text = render_text(candidate, size)
        if text.shape[1] <= max_width:
            return text
    return text


def _outline(text: np.ndarray) -> np.ndarray:
    grown = text.copy()
    grown[1:, :] |= text[:-1, :]
    grown[:-1, :] |= text[1:, :]
    grown[:, 1:] |= text[:, :-1]
    grown[:, :-1] |= text[:, 1:]
    return grown & ~text


def _structure(image: np.ndarray) -> np.ndarray:
    values = image.astype(np.float32)
    gradient = np.zeros_like(values)
    gradient[:, 1:] += np.abs(np.diff(values, axis=1))
    gradient[1:, :] += np.abs(np.diff(values, axis=0))
    return gradient


def place(image: np.ndarray, lines: tuple[str, ...]) -> Label:
    """Render `lines` at a size proportional to `image` in its corner with the least anatomy.

    Parameters
    ----------
    image : numpy.ndarray
        The 2-D image the label goes on, in display orientation (MONOCHROME2:
        higher values are brighter).
    lines : tuple of str
        The label's lines (:func:`label_lines`).

    Returns
    -------
    Label
        The rendered label and its position. Ties go to the first corner of
        :class:`Corner` (top-left).

    Raises
    ------
    ValueError
        If the image is not 2-D or too small to hold the label.
    """
    if image.ndim != 2:
        raise ValueError(f"A label goes on a 2-D image, not one of shape {image.shape}.")
    rows, cols = image.shape
    short = min(rows, cols)
    margin = max(2, round(short * MARGIN_FRACTION))
    text = _fit(lines, max(MIN_LINE_HEIGHT, round(short * LINE_HEIGHT_FRACTION)), cols - 2 * margin)
    height, width = text.shape
    if height > rows - 2 * margin or width > cols - 2 * margin:
        raise ValueError(
            f"The image ({rows} x {cols}) is too small for its AI label "
            f"({height} x {width} pixels with a {margin}-pixel margin)."
        )
    positions = {
        Corner.TOP_LEFT: (margin, margin),
        Corner.TOP_RIGHT: (margin, cols - margin - width),
        Corner.BOTTOM_LEFT: (rows - margin - height, margin),
        Corner.BOTTOM_RIGHT: (rows - margin - height, cols - margin - width),
    }
    structure = _structure(image)
    structure /= max(float(structure.mean()), 1e-12)
    # Percentile rank of each value: anatomy is brighter than the direct exposure
    # around the body (MONOCHROME2), so dark, flat corners hold the least of it.
    levels = np.percentile(image[:: max(1, rows // 256), :: max(1, cols // 256)], np.arange(101))
    scores = {}
    for corner, (top, left) in positions.items():
        box = (slice(top, top + height), slice(left, left + width))
        rank = np.interp(image[box].astype(np.float64), levels, np.arange(101)) / 100.0
        scores[corner] = float(structure[box].mean()) + float(rank.mean())
    corner = min(Corner, key=lambda c: scores[c])
    top, left = positions[corner]
    return Label(text=text, outline=_outline(text), top=top, left=left, corner=corner)


def burn_in(pixels: np.ndarray, label: Label, bright: int, dark: int) -> np.ndarray:
    """A copy of `pixels` with the label written in: glyphs at `bright`, outline at `dark`.

    Parameters
    ----------
    pixels : numpy.ndarray
        The stored pixel values (2-D, integer).
    label : Label
        From :func:`place`.
    bright, dark : int
        Stored values that display as white and black at the image's default
        window (MONOCHROME2), clipped to the pixel type's range.
    """
    info = np.iinfo(pixels.dtype)
    out = pixels.copy()
    region = out[label.box]
    region[label.outline] = np.clip(dark, info.min, info.max)
    region[label.text] = np.clip(bright, info.min, info.max)
    return out


def overlay_attributes(ds: Dataset, label: Label, shape: tuple[int, int], text: str) -> None:
    """Write the label as Overlay Plane group 6000 of `ds` (graphics overlay, origin 1\\1).

    The glyphs and their outline are both drawn (viewers draw overlay bits in
    one colour; the outline keeps the glyphs apart on a bright background).
    """
    mask = label.full_mask(shape)
    group = OVERLAY_GROUP
    ds.add_new((group, 0x0010), "US", shape[0])  # Overlay Rows
    ds.add_new((group, 0x0011), "US", shape[1])  # Overlay Columns
    ds.add_new((group, 0x0022), "LO", text[:64])  # Overlay Description
    ds.add_new((group, 0x0040), "CS", "G")  # Overlay Type: graphics
    ds.add_new((group, 0x0050), "SS", [1, 1])  # Overlay Origin
    ds.add_new((group, 0x0100), "US", 1)  # Overlay Bits Allocated
    ds.add_new((group, 0x0102), "US", 0)  # Overlay Bit Position
    ds.add_new((group, 0x1500), "LO", "AI LABEL")  # Overlay Label
    ds.add_new((group, 0x3000), "OW", pack_bits(mask.ravel()))  # Overlay Data
