"""Crop geometry of the evaluation: the scored window and the context around it.

Every method is scored on the same central window of an image
(:func:`central_window`); the classical baselines see that window plus a
margin (:func:`context_window`) that is cut away afterwards
(:meth:`Window.inside`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """A rectangle of an image: first row and column, height and width."""

    top: int
    left: int
    rows: int
    cols: int

    def cut(self, image: np.ndarray) -> np.ndarray:
        """The part of `image` inside the window."""
        return image[self.top : self.top + self.rows, self.left : self.left + self.cols]

    def inside(self, outer: Window) -> tuple[slice, slice]:
        """Slices that cut this window out of an array covering `outer`."""
        top, left = self.top - outer.top, self.left - outer.left
        return slice(top, top + self.rows), slice(left, left + self.cols)

    def as_list(self) -> list[int]:
        """``[top, left, rows, cols]`` (as written to ``evaluation.json``)."""
        return [self.top, self.left, self.rows, self.cols]


def central_window(shape: tuple[int, ...], crop: int) -> Window:
    """The central `crop` × `crop` window of an image (whole for crop 0 or a smaller image)."""
    rows, cols = int(shape[0]), int(shape[1])
    height = rows if crop == 0 else min(crop, rows)
    width = cols if crop == 0 else min(crop, cols)
    return Window((rows - height) // 2, (cols - width) // 2, height, width)


def context_window(shape: tuple[int, ...], window: Window, margin: int) -> Window:
    """`window` grown by `margin` on every side, within the image."""
    top, left = max(window.top - margin, 0), max(window.left - margin, 0)
    bottom = min(window.top + window.rows + margin, int(shape[0]))
    right = min(window.left + window.cols + margin, int(shape[1]))
    return Window(top, left, bottom - top, right - left)


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central `size` × `size` part of `image` (0: all of it; a shorter side is kept whole)."""
    return central_window(image.shape, size).cut(image)
