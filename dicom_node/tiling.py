"""Padding to the generator's size multiple, and overlapping tiles with blending.

The generator needs H and W to be multiples of its ``size_multiple`` (256 for
a unet_256). :func:`pad_to_multiple` reflect-pads, :func:`crop` undoes it
exactly. Images too large to run whole are processed by :func:`run_tiled`:
overlapping tiles whose outputs are blended with weights that ignore the
outer quarter of each overlap (where a tile's border affects the generator)
and ramp linearly across the middle, so seams do not show and memory stays
bounded by the tile size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]
"""Runs the model on a (rows, cols) float32 array whose sides are valid sizes."""


@dataclass(frozen=True)
class Padding:
    """Rows/columns added on each side by :func:`pad_to_multiple`."""

    top: int
    bottom: int
    left: int
    right: int


def _reflect_axis(array: np.ndarray, before: int, after: int, axis: int) -> np.ndarray:
    # np.pad's "reflect" needs pad < size; repeat in steps for tiny images.
    while before > 0 or after > 0:
        size = array.shape[axis]
        step_before = min(before, size - 1) if size > 1 else 0
        step_after = min(after, size - 1) if size > 1 else 0
        if step_before == 0 and step_after == 0:
            widths = [(0, 0)] * array.ndim
            widths[axis] = (before, after)
            return np.pad(array, widths, mode="edge")
        widths = [(0, 0)] * array.ndim
        widths[axis] = (step_before, step_after)
        array = np.pad(array, widths, mode="reflect")
        before -= step_before
        after -= step_after
    return array


def padded_size(size: int, multiple: int, minimum: int = 0) -> int:
    """Smallest multiple of `multiple` that is at least `size` and `minimum`."""
    target = max(size, minimum)
    return -(-target // multiple) * multiple


def pad_to_multiple(
    image: np.ndarray, multiple: int, minimum: int = 0
) -> tuple[np.ndarray, Padding]:
    """Reflect-pad a 2-D image so both sides are multiples of `multiple`.

    The padding is split evenly between the two sides so the image content
    stays centred (the generator's borders behave like its centre).

    Returns
    -------
    tuple[numpy.ndarray, Padding]
        The padded image and the padding to give to :func:`crop`.
    """
    rows, cols = image.shape
    extra_rows = padded_size(rows, multiple, minimum) - rows
    extra_cols = padded_size(cols, multiple, minimum) - cols
    pad = Padding(
        extra_rows // 2, extra_rows - extra_rows // 2, extra_cols // 2, extra_cols - extra_cols // 2
    )
    out = _reflect_axis(image, pad.top, pad.bottom, 0)
    out = _reflect_axis(out, pad.left, pad.right, 1)
    return out, pad


def crop(image: np.ndarray, pad: Padding) -> np.ndarray:
    """Remove the padding added by :func:`pad_to_multiple`."""
    rows, cols = image.shape
    return image[pad.top : rows - pad.bottom, pad.left : cols - pad.right]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering `length`, overlapping by ≥ `overlap`."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    weights = np.ones(length, dtype=np.float32)
    if overlap <= 0:
        return weights
    # Zero over the outer quarter of the overlap (where the generator sees the tile
    # border), linear across the middle half, one beyond: the two tiles' weights
    # sum to one over an overlap of exactly `overlap` pixels.
    ramp = np.clip(
        (np.arange(overlap, dtype=np.float32) + 0.5 - overlap / 4) / (overlap / 2), 0.0, 1.0
    )
    if not at_start:
        weights[:overlap] = ramp
    if not at_end:
        weights[-overlap:] = ramp[::-1]
    return weights


def run_tiled(image: np.ndarray, runner: Runner, tile: int, overlap: int) -> np.ndarray:
    """Run `runner` over overlapping `tile`×`tile` tiles and blend the outputs.

    Parameters
    ----------
    image : numpy.ndarray
        float32 (rows, cols), both at least `tile` and multiples of the
        generator's size multiple (see :func:`pad_to_multiple`).
    runner : callable
        Runs the model on one tile.
    tile : int
        Tile side, a multiple of the size multiple.
    overlap : int
        Overlap between neighbouring tiles, less than half a tile.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.
    """
    rows, cols = image.shape
    if rows < tile or cols < tile:
        raise ValueError(f"Image {rows}x{cols} is smaller than the tile size {tile}.")
    if not 0 <= 2 * overlap < tile:
        raise ValueError(f"Overlap {overlap} must be at least 0 and less than half of {tile}.")
    out = np.zeros((rows, cols), dtype=np.float32)
    total = np.zeros((rows, cols), dtype=np.float32)
    row_starts = tile_starts(rows, tile, overlap)
    col_starts = tile_starts(cols, tile, overlap)
    for i, r0 in enumerate(row_starts):
        wr = _ramp(tile, overlap, i == 0, i == len(row_starts) - 1)
        for j, c0 in enumerate(col_starts):
            wc = _ramp(tile, overlap, j == 0, j == len(col_starts) - 1)
            weight = np.outer(wr, wc)
            result = runner(np.ascontiguousarray(image[r0 : r0 + tile, c0 : c0 + tile]))
            out[r0 : r0 + tile, c0 : c0 + tile] += weight * result
            total[r0 : r0 + tile, c0 : c0 + tile] += weight
    out /= total
    return out
