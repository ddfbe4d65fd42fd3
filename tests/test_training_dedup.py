"""Duplicate radiographs: an exact copy is used once, another resolution shares the group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from training.data import load_images, record_paths
from training.dedup import resolve_duplicates
from training.sources import folder_records


def _texture(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random((rows, cols)), 3.0)


def _png(path: Path, array: np.ndarray, bits: int = 8) -> Path:
    scaled = (array - array.min()) / (np.ptp(array) or 1.0)
    if bits == 8:
        Image.fromarray(np.rint(scaled * 255).astype(np.uint8)).save(path)
    else:
        Image.fromarray(np.rint(scaled * (2**bits - 1)).astype(np.uint16)).save(path)
    return path


def test_duplicates_are_used_once_and_rescaled_copies_share_a_group(tmp_path: Path) -> None:
    chest = _texture(200, 180, 7)
    _png(tmp_path / "a_original.png", chest)
    _png(tmp_path / "b_copy.png", chest)  # same size: a duplicate
    small = ndimage.zoom(chest, 0.5, order=1)
    _png(tmp_path / "c_small.png", small, bits=16)  # another resolution: same group
    _png(tmp_path / "d_other.png", _texture(200, 180, 8))
    records = folder_records([tmp_path])
    images = load_images(record_paths(records))
    resolved = resolve_duplicates(records, images)
    names = {r.name: r for r in resolved}
    assert set(names) == {"a_original.png", "c_small.png", "d_other.png"}
    assert names["a_original.png"].group == names["c_small.png"].group
    assert names["d_other.png"].group != names["a_original.png"].group
