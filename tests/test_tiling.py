"""Padding to the size multiple, exact cropping, and overlapping tiles."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dicom_node.tiling import crop, pad_to_multiple, padded_size, run_tiled, tile_starts


@pytest.mark.parametrize(
    ("rows", "cols"), [(1, 1), (7, 300), (255, 257), (256, 256), (1955, 1841), (513, 3)]
)
def test_pad_then_crop_is_exact(rows: int, cols: int) -> None:
    image = np.random.default_rng(rows * cols).random((rows, cols), dtype=np.float32)
    padded, pad = pad_to_multiple(image, 256)
    assert padded.shape[0] % 256 == 0 and padded.shape[1] % 256 == 0
    assert padded.shape == (padded_size(rows, 256), padded_size(cols, 256))
    np.testing.assert_array_equal(crop(padded, pad), image)


def test_padding_reflects_and_centres() -> None:
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    padded, pad = pad_to_multiple(image, 8)
    assert (pad.top, pad.bottom, pad.left, pad.right) == (2, 3, 2, 2)
    # Reflection without repeating the edge row: the row above row 0 is row 1.
    np.testing.assert_array_equal(padded[pad.top - 1, pad.left : pad.left + 4], image[1])
    np.testing.assert_array_equal(padded[pad.top : pad.top + 3, pad.left - 1], image[:, 1])


def test_minimum_size() -> None:
    padded, pad = pad_to_multiple(np.zeros((300, 20), dtype=np.float32), 256, minimum=1024)
    assert padded.shape == (1024, 1024)
    assert crop(padded, pad).shape == (300, 20)


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(1024, 1024, 128), (2048, 1024, 128), (4096, 1024, 128), (1280, 512, 64)],
)
def test_tiles_cover_with_enough_overlap(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile
    for a, b in itertools.pairwise(starts):
        assert b - a <= tile - overlap


def _local_filter(image: np.ndarray) -> np.ndarray:
    # A 5x5 box filter with zero padding: its output near a tile border depends on
    # the border, like a generator's.
    padded = np.pad(image, 2)
    out = np.zeros_like(image)
    for dy in range(5):
        for dx in range(5):
            out += padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return out / 25.0


def test_tiled_equals_whole_for_a_local_operator() -> None:
    image = np.random.default_rng(3).random((1536, 1280), dtype=np.float32)
    whole = _local_filter(image)
    calls: list[tuple[int, int]] = []

    def runner(tile: np.ndarray) -> np.ndarray:
        calls.append(tile.shape)
        return _local_filter(tile)

    tiled = run_tiled(image, runner, tile=512, overlap=64)
    assert all(shape == (512, 512) for shape in calls)
    assert len(calls) == len(tile_starts(1536, 512, 64)) * len(tile_starts(1280, 512, 64))
    # Pixels whose neighbourhood crosses a tile border get zero weight from that tile.
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_tiled_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="smaller than the tile"):
        run_tiled(np.zeros((100, 600), dtype=np.float32), lambda t: t, 512, 64)
    with pytest.raises(ValueError, match="less than half"):
        run_tiled(np.zeros((600, 600), dtype=np.float32), lambda t: t, 512, 256)
