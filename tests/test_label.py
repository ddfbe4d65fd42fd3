"""The AI label: its size, its corner, burning it in and writing it as an overlay plane."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import unpack_bits

from dicom_node.label import (
    OVERLAY_GROUP,
    WARNING_TEXT,
    Corner,
    burn_in,
    label_lines,
    overlay_attributes,
    place,
    render_text,
)

LINES = label_lines("cxr-pix2pix", "2.0.0")


def _busy(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A bright, textured image (anatomy everywhere)."""
    rng = np.random.default_rng(seed)
    return (3000 + 500 * rng.standard_normal(shape)).clip(0, 4095).astype(np.uint16)


@pytest.mark.parametrize("corner", list(Corner))
def test_the_label_goes_to_the_flat_dark_corner(corner: Corner) -> None:
    image = _busy((600, 800))
    rows = slice(0, 150) if corner.startswith("top") else slice(450, 600)
    cols = slice(0, 400) if corner.endswith("left") else slice(400, 800)
    image[rows, cols] = 100  # direct exposure: dark and flat
    label = place(image, LINES)
    assert label.corner == corner
    # The whole label lies in the flat region.
    assert np.all(image[label.box] == 100)


def test_the_label_grows_with_the_image_and_stays_inside_it() -> None:
    small = place(np.zeros((500, 500)), LINES)
    large = place(np.zeros((2500, 2500)), LINES)
    assert large.text.shape[0] > 3 * small.text.shape[0]
    for label, size in ((small, 500), (large, 2500)):
        rows, cols = label.box
        assert rows.start > 0 and rows.stop < size and cols.start > 0 and cols.stop < size


def test_a_narrow_image_gets_the_label_wrapped_and_a_tiny_one_is_refused() -> None:
    narrow = place(np.zeros((128, 128)), LINES)
    assert narrow.text.shape[1] < 128
    with pytest.raises(ValueError, match="too small for its AI label"):
        place(np.zeros((40, 40)), LINES)


def test_the_first_line_is_the_warning_and_renders_to_pixels() -> None:
    assert LINES == (WARNING_TEXT, "cxr-pix2pix 2.0.0")
    mask = render_text(LINES, 20)
    assert mask.any() and not mask[0].any() and not mask[-1].any()  # empty border for the outline


def test_burn_in_writes_glyphs_bright_and_outline_dark_only_inside_the_box() -> None:
    image = _busy((400, 600))
    label = place(image, LINES)
    out = burn_in(image, label, bright=4095, dark=0)
    changed = out != image
    inside = label.full_mask(image.shape)
    assert changed.any() and not (changed & ~inside).any()
    region = out[label.box]
    assert np.all(region[label.text] == 4095) and np.all(region[label.outline] == 0)
    # Deterministic, and the input is not modified.
    assert np.array_equal(out, burn_in(image, place(image, LINES), bright=4095, dark=0))
    assert not np.array_equal(out, image)


def test_the_overlay_plane_carries_the_same_mask() -> None:
    image = _busy((300, 500))
    label = place(image, LINES)
    ds = Dataset()
    overlay_attributes(ds, label, image.shape, WARNING_TEXT)
    assert ds[OVERLAY_GROUP, 0x0040].value == "G"
    assert (ds[OVERLAY_GROUP, 0x0010].value, ds[OVERLAY_GROUP, 0x0011].value) == image.shape
    bits = unpack_bits(ds[OVERLAY_GROUP, 0x3000].value)[: image.size].reshape(image.shape)
    assert np.array_equal(bits.astype(bool), label.full_mask(image.shape))
