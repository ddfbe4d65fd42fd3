"""Checks of real pairs: size mismatch and misregistration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dicom_node.pixels import NormalizedImage
from training.errors import PairSourceError
from training.pair_checks import check_pair


def _texture(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random((rows, cols)), 3.0)


def _unit(array: np.ndarray) -> NormalizedImage:
    return NormalizedImage(array.astype(np.float32), 16, 0.0, 1.0, False)


def test_pair_check_finds_size_mismatch_and_misregistration() -> None:
    base = _texture(256, 256, 0)
    noisy = base + np.random.default_rng(1).normal(0, 0.002, base.shape)
    good = check_pair(_unit(base), _unit(noisy))
    assert not good.misregistered and good.correlation > 0.95
    shifted = check_pair(_unit(base), _unit(np.roll(noisy, (0, 6), axis=(0, 1))))
    assert shifted.misregistered
    assert abs(shifted.shift[1]) == pytest.approx(6.0, abs=1.0)
    with pytest.raises(PairSourceError, match="different sizes"):
        check_pair(_unit(base), _unit(base[:200]))
