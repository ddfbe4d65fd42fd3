"""The pixel pipeline: decoding, Modality LUT, MONOCHROME1, bit depth, file formats."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import RG1, ct, gradient_image, rgb_secondary_capture, save, xray
from PIL import Image, PngImagePlugin
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicom_node.pixels import (
    PixelDataError,
    declared_bits,
    normalize_dataset,
    png_significant_bits,
    quantize,
    read_any,
    read_image_file,
    tiff_significant_bits,
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


def save_png16(values: np.ndarray, path: Path, sbit: int | None = None) -> Path:
    """Write a 16-bit grayscale PNG, with an sBIT chunk when `sbit` is given."""
    info = None
    if sbit is not None:
        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(values.astype(np.uint16)).save(path, pnginfo=info)
    return path


def test_png_8_bit(tmp_path: Path) -> None:
    eight = gradient_image(50, 70, 8)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    image, raw = read_image_file(tmp_path / "eight.png")
    assert image.bits_stored == 8 and raw.dtype == np.uint8
    np.testing.assert_allclose(image.pixels, eight / 255.0, atol=1e-6)
    np.testing.assert_array_equal(quantize(image.pixels, 8), eight)


def test_16_bit_png_with_sbit_is_read_at_the_declared_depth(tmp_path: Path) -> None:
    fifteen = gradient_image(50, 70, 15)
    path = save_png16(fifteen, tmp_path / "fifteen.png", sbit=15)
    assert png_significant_bits(path) == 15
    image, raw = read_image_file(path)
    assert image.bits_stored == 15 and raw.dtype == np.uint16
    assert image.high == 32767.0
    np.testing.assert_allclose(image.pixels, fifteen / 32767.0, atol=1e-6)
    np.testing.assert_array_equal(quantize(image.pixels, 15), fifteen)


def test_dim_16_bit_png_without_sbit_stays_dim(tmp_path: Path) -> None:
    # A dark 16-bit image (brightest pixel 20000 < 2^15): no sBIT, so 16-bit. The
    # old rule took the depth from the brightest pixel and would have read it as
    # 15-bit, i.e. twice as bright.
    dim = (gradient_image(40, 60, 16).astype(np.float64) * (20000 / 65535)).astype(np.uint16)
    dim[0, 0] = 20000
    assert dim.max() == 20000
    path = save_png16(dim, tmp_path / "dim.png")
    assert png_significant_bits(path) is None
    image, raw = read_image_file(path)
    assert image.bits_stored == 16 and image.high == 65535.0
    np.testing.assert_array_equal(raw, dim)
    np.testing.assert_allclose(image.pixels, dim / 65535.0, atol=1e-6)
    assert float(image.pixels.max()) == pytest.approx(20000 / 65535, abs=1e-6)


def test_sbit_that_the_values_exceed_is_ignored(tmp_path: Path) -> None:
    values = gradient_image(20, 30, 16)
    assert values.max() >= 2**12
    image, _ = read_image_file(save_png16(values, tmp_path / "liar.png", sbit=12))
    assert image.bits_stored == 16


def test_16_bit_tiff(tmp_path: Path) -> None:
    sixteen = gradient_image(50, 70, 16)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.tif")
    image, raw = read_image_file(tmp_path / "sixteen.tif")
    assert image.bits_stored == 16 and raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, sixteen)
    np.testing.assert_allclose(image.pixels, sixteen / 65535.0, atol=1e-6)
    # A dim 16-bit TIFF (BitsPerSample 16, no MaxSampleValue) is not brightened either.
    dim = (sixteen // 4).astype(np.uint16)
    Image.fromarray(dim).save(tmp_path / "dim.tif")
    dim_image, _ = read_image_file(tmp_path / "dim.tif")
    assert dim_image.bits_stored == 16
    np.testing.assert_allclose(dim_image.pixels, dim / 65535.0, atol=1e-6)


def test_tiff_significant_bits_from_the_tags() -> None:
    assert tiff_significant_bits({258: (16,)}) == 16
    assert tiff_significant_bits({258: (16,), 281: (4095,)}) == 12  # MaxSampleValue first
    assert tiff_significant_bits({258: 16, 281: 32767}) == 15
    assert tiff_significant_bits({}) is None


def test_declared_bits() -> None:
    assert declared_bits(np.array([0, 255], dtype=np.uint8), 8) == 8
    assert declared_bits(np.array([0, 100], dtype=np.uint16), None) == 16
    assert declared_bits(np.array([0, 100], dtype=np.uint16), 12) == 12
    assert declared_bits(np.array([0, 32767], dtype=np.uint16), 15) == 15
    # Values above what the file declares: the declaration is wrong, use 16.
    assert declared_bits(np.array([0, 5000], dtype=np.uint16), 12) == 16


def test_8_bit_jpeg(tmp_path: Path) -> None:
    eight = gradient_image(64, 80, 8)
    path = tmp_path / "chest.jpg"
    Image.fromarray(eight).save(path, quality=95)
    image, raw = read_image_file(path)
    assert image.bits_stored == 8 and raw.dtype == np.uint8 and raw.shape == (64, 80)
    with Image.open(path) as img:
        assert img.format == "JPEG" and img.mode == "L"
        np.testing.assert_array_equal(raw, np.array(img))
    np.testing.assert_allclose(image.pixels, raw / 255.0, atol=1e-6)
    # Lossy, but close to what was written.
    assert np.abs(raw.astype(int) - eight.astype(int)).mean() < 3
    np.testing.assert_array_equal(read_any(path).pixels, image.pixels)


def test_colour_jpeg_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(tmp_path / "rgb.jpg")
    with pytest.raises(PixelDataError, match="mode RGB"):
        read_image_file(tmp_path / "rgb.jpg")


def test_colour_png_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(PixelDataError, match="mode RGB"):
        read_image_file(tmp_path / "rgb.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(PixelDataError, match="cannot read"):
        read_image_file(tmp_path / "junk.png")
