"""The pixel pipeline: decoding, Modality LUT, MONOCHROME1, bit depth, file formats."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import RG1, ct, gradient_image, rgb_secondary_capture, save, xray
from PIL import Image
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicom_node.pixels import (
    PixelDataError,
    effective_bits,
    normalize_dataset,
    quantize,
    read_any,
    read_image_file,
)


@pytest.mark.parametrize("bits", [8, 10, 12, 15, 16])
def test_full_bit_depth_is_kept(bits: int) -> None:
    stored = gradient_image(120, 97, bits)
    image = normalize_dataset(xray(bits=bits, pixels=stored))
    top = 2**bits - 1
    assert image.bits_stored == bits
    assert image.pixels.dtype == np.float32
    np.testing.assert_allclose(image.pixels, stored / top, atol=1e-6)
    # Quantising back at the source depth gives back every stored value: nothing was
    # truncated to 8 bits on the way.
    np.testing.assert_array_equal(quantize(image.pixels, bits), stored)
    if bits > 8:
        assert len(np.unique(quantize(image.pixels, bits))) > 256


def test_monochrome1_is_inverted_and_round_trips() -> None:
    stored = gradient_image(80, 64, 12)
    m1 = normalize_dataset(xray(bits=12, photometric="MONOCHROME1", pixels=stored))
    m2 = normalize_dataset(xray(bits=12, photometric="MONOCHROME2", pixels=4095 - stored))
    assert m1.inverted and not m2.inverted
    np.testing.assert_allclose(m1.pixels, 1.0 - stored / 4095.0, atol=1e-6)
    # The same anatomy stored either way looks the same to the model.
    np.testing.assert_allclose(m1.pixels, m2.pixels, atol=1e-6)
    # ...and maps back to the source's stored values.
    back = np.rint(m1.high - m1.pixels * (m1.high - m1.low)).astype(np.uint16)
    np.testing.assert_array_equal(back, stored)


def test_rescale_slope_and_intercept_are_applied() -> None:
    stored = gradient_image(50, 40, 12)
    plain = normalize_dataset(xray(bits=12, pixels=stored))
    rescaled = normalize_dataset(
        xray(bits=12, pixels=stored, RescaleSlope=2.5, RescaleIntercept=-1000, RescaleType="US")
    )
    assert (rescaled.low, rescaled.high) == (-1000.0, 2.5 * 4095 - 1000)
    np.testing.assert_allclose(rescaled.pixels, plain.pixels, atol=1e-6)
    # A window given in rescaled units maps to the same place as in stored units.
    assert rescaled.to_unit(2.5 * 2000 - 1000) == pytest.approx(plain.to_unit(2000))


def test_non_linear_modality_lut_sequence() -> None:
    stored = gradient_image(40, 30, 8)
    ds = xray(bits=8, pixels=stored)
    item = pydicom.Dataset()
    lut = (np.sqrt(np.arange(256) / 255.0) * 1000).astype(np.uint16)
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = lut.tolist()
    ds.ModalityLUTSequence = [item]
    image = normalize_dataset(ds)
    np.testing.assert_allclose(image.pixels, lut[stored] / lut.max(), atol=1e-6)


def test_rg1_real_cr_monochrome1() -> None:
    ds = pydicom.dcmread(RG1)
    image = normalize_dataset(ds)
    stored = ds.pixel_array
    assert image.shape == (1955, 1841)
    assert image.bits_stored == 15 and image.inverted
    np.testing.assert_allclose(image.pixels, 1.0 - stored / 32767.0, atol=1e-6)
    # MONOCHROME1: bone (high attenuation, low stored values) must come out bright.
    assert image.pixels[stored < 3000].mean() > image.pixels[stored > 20000].mean() + 0.5


def _dcmtk(tool: str, *args: str) -> None:
    subprocess.run([f"/usr/bin/{tool}", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def rg1_reference() -> np.ndarray:
    return normalize_dataset(pydicom.dcmread(RG1)).pixels


@pytest.mark.parametrize(
    ("label", "make"),
    [
        ("jpeg-lossless-dcmcjpeg", lambda src, dst: _dcmtk("dcmcjpeg", "+e1", str(src), str(dst))),
        ("jpeg-ls-dcmcjpls", lambda src, dst: _dcmtk("dcmcjpls", str(src), str(dst))),
        ("rle-dcmcrle", lambda src, dst: _dcmtk("dcmcrle", str(src), str(dst))),
        ("deflate-dcmconv", lambda src, dst: _dcmtk("dcmconv", "+td", str(src), str(dst))),
        ("implicit-dcmconv", lambda src, dst: _dcmtk("dcmconv", "+ti", str(src), str(dst))),
        ("big-endian-dcmconv", lambda src, dst: _dcmtk("dcmconv", "+tb", str(src), str(dst))),
    ],
)
def test_lossless_transfer_syntaxes_decode_identically(
    tmp_path: Path, rg1_reference: np.ndarray, label: str, make: object
) -> None:
    target = tmp_path / f"{label}.dcm"
    make(RG1, target)  # type: ignore[operator]
    ds = pydicom.dcmread(target)
    image = normalize_dataset(ds)
    np.testing.assert_array_equal(image.pixels, rg1_reference)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless])
def test_pydicom_encoded_syntaxes_decode_identically(
    tmp_path: Path, rg1_reference: np.ndarray, syntax: str
) -> None:
    ds = pydicom.dcmread(RG1)
    ds.compress(syntax)
    path = save(ds, tmp_path / "c.dcm")
    np.testing.assert_array_equal(read_any(path).pixels, rg1_reference)


def test_jpeg_baseline_8bit_decodes_close_to_source(tmp_path: Path) -> None:
    stored = gradient_image(128, 96, 8)
    source = save(xray(bits=8, pixels=stored), tmp_path / "src.dcm")
    target = tmp_path / "baseline.dcm"
    # +sr: keep the value range (the default +sp stretches min..max to 0..255).
    _dcmtk("dcmcjpeg", "+eb", "+sr", "+q", "95", str(source), str(target))
    assert str(pydicom.dcmread(target).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.50"
    image = read_any(target)
    assert np.abs(image.pixels - stored / 255.0).mean() < 0.01


def test_unsupported_images_are_refused() -> None:
    with pytest.raises(PixelDataError, match="RGB"):
        normalize_dataset(rgb_secondary_capture())
    multi = xray(bits=8, rows=8, cols=8)
    multi.NumberOfFrames = 2
    multi.PixelData = bytes(128)
    with pytest.raises(PixelDataError, match="2 frames"):
        normalize_dataset(multi)
    no_pixels = xray()
    del no_pixels.PixelData
    with pytest.raises(PixelDataError, match="no Pixel Data"):
        normalize_dataset(no_pixels)


def test_corrupt_compressed_pixel_data_is_a_pixel_data_error(tmp_path: Path) -> None:
    ds = pydicom.dcmread(RG1)
    ds.compress(RLELossless)
    raw = bytearray(ds.PixelData)
    raw[len(raw) // 3 : len(raw) // 3 + 4000] = b"\xff" * 4000
    ds.PixelData = bytes(raw[: len(raw) // 2])
    with pytest.raises(PixelDataError, match="cannot be decoded"):
        normalize_dataset(ds)


def test_signed_ct_normalises_into_unit_range() -> None:
    image = normalize_dataset(ct())
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
    assert image.low == -32768 and image.high == 32767


def test_png_8_and_16_bit(tmp_path: Path) -> None:
    eight = gradient_image(50, 70, 8)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    image, raw = read_image_file(tmp_path / "eight.png")
    assert image.bits_stored == 8 and raw.dtype == np.uint8
    np.testing.assert_allclose(image.pixels, eight / 255.0, atol=1e-6)

    fifteen = gradient_image(50, 70, 15)
    Image.fromarray(fifteen).save(tmp_path / "fifteen.png")
    image, raw = read_image_file(tmp_path / "fifteen.png")
    assert image.bits_stored == 15 and raw.dtype == np.uint16
    np.testing.assert_array_equal(quantize(image.pixels, 15), fifteen)

    Image.fromarray(fifteen).save(tmp_path / "fifteen.tif")
    tif, _ = read_image_file(tmp_path / "fifteen.tif")
    np.testing.assert_array_equal(tif.pixels, image.pixels)


def test_effective_bits_of_16_bit_files() -> None:
    assert effective_bits(np.array([0, 255], dtype=np.uint8)) == 8
    assert effective_bits(np.array([0, 4095], dtype=np.uint16)) == 12
    assert effective_bits(np.array([0, 100], dtype=np.uint16)) == 12
    assert effective_bits(np.array([0, 32767], dtype=np.uint16)) == 15
    assert effective_bits(np.array([0, 65535], dtype=np.uint16)) == 16


def test_colour_png_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(PixelDataError, match="mode RGB"):
        read_image_file(tmp_path / "rgb.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(PixelDataError, match="cannot read"):
        read_image_file(tmp_path / "junk.png")
