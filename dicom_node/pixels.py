"""The pixel convention shared by the node and the training package.

Every image, DICOM or PNG/TIFF, becomes a :class:`NormalizedImage`: a
float32 array in [0, 1] where brighter means more attenuating (MONOCHROME2),
at full bit depth. For DICOM the Modality LUT (Rescale Slope/Intercept or a
Modality LUT Sequence) is applied first, then the range of *possible* values
(from Bits Stored, mapped through the Modality LUT) is mapped to [0, 1], and
MONOCHROME1 is inverted. Using the possible range rather than the image's own
minimum and maximum keeps the mapping fixed for a given bit depth, so the
noise level of an exposure maps to the same normalised level in training and
at inference.

The convention is named by :data:`CONVENTION`; exported models record it in
their metadata and the node refuses a model with another convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from dicom_node.errors import PermanentError
from dicom_node.pixel_bounds import DEFAULT_MAX_PIXELS, check_decoded_size

CONVENTION = "cxr-mono2-unit-float32-v1"
"""Model input/output convention: (N, 1, H, W) float32, MONOCHROME2, [0, 1]."""

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
"""Grayscale image files read by :func:`read_image_file` (JPEG: 8-bit baseline only)."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_HEADER_SCAN_LIMIT = 1 << 20
"""Bytes of a PNG scanned for its sBIT chunk (it must come before the image data)."""


class PixelDataError(PermanentError):
    """The pixel data cannot be decoded or is not a supported image."""


@dataclass(frozen=True)
class NormalizedImage:
    """An image in the model's convention, with what is needed to map it back.

    Attributes
    ----------
    pixels : numpy.ndarray
        float32, shape (rows, columns), values in [0, 1], MONOCHROME2.
    bits_stored : int
        Effective bit depth of the source values (8 to 16).
    low, high : float
        Source values (after the Modality LUT) that map to 0 and 1 before
        any inversion.
    inverted : bool
        Whether the source was MONOCHROME1 (and was inverted).
    """

    pixels: np.ndarray
    bits_stored: int
    low: float
    high: float
    inverted: bool

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    def to_unit(self, values: np.ndarray | float) -> np.ndarray:
        """Map source values (after the Modality LUT) to the [0, 1] MONOCHROME2 scale."""
        unit = (np.asarray(values, dtype=np.float64) - self.low) / (self.high - self.low)
        return 1.0 - unit if self.inverted else unit


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _modality_range(ds: Dataset) -> tuple[float, float]:
    """Range of values the Modality LUT can produce for this bit depth."""
    if "ModalityLUTSequence" in ds:
        item = ds.ModalityLUTSequence[0]
        lut = np.asarray(apply_modality_lut(np.asarray(_stored_range(ds)), ds), dtype=np.float64)
        data = item.get("LUTData")
        if data is not None:
            values = np.asarray(data, dtype=np.float64)
            return float(values.min()), float(values.max())
        return float(lut.min()), float(lut.max())
    lo, hi = _stored_range(ds)
    ends = np.asarray(apply_modality_lut(np.asarray([lo, hi]), ds), dtype=np.float64)
    return float(ends.min()), float(ends.max())


def check_grayscale(ds: Dataset) -> None:
    """Raise :class:`PixelDataError` unless `ds` is a single-frame grayscale image."""
    if "PixelData" not in ds:
        raise PixelDataError("The dataset has no Pixel Data.")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PixelDataError(
            f"Photometric Interpretation {photometric or '(none)'} is not supported; "
            "only MONOCHROME1 and MONOCHROME2 images are enhanced."
        )
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise PixelDataError("Only single-sample (grayscale) images are enhanced.")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise PixelDataError(
            f"The image has {frames} frames; only single-frame images are enhanced."
        )
    bits = int(ds.get("BitsStored", 0) or 0)
    if not 1 <= bits <= 16:
        raise PixelDataError(f"Bits Stored {bits} is not supported; expected 1 to 16.")


def decode_pixels(ds: Dataset, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the stored values of a single-frame grayscale DICOM image.

    The size is checked from the header before the decoder runs
    (:func:`dicom_node.pixel_bounds.check_decoded_size`): an image larger
    than `max_pixels`, or whose codestream declares more than its header, is
    never decoded.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image.
    max_pixels : int, optional
        The most pixels decoded (``[model] max_pixels``).

    Returns
    -------
    numpy.ndarray
        The stored values, shape (Rows, Columns), as pydicom decodes them.

    Raises
    ------
    DecodedSizeError
        If the image declares more than `max_pixels` pixels, or its
        codestream more than its header (a :class:`PermanentError`).
    PixelDataError
        If the image is not grayscale, has several frames, or its pixel data
        cannot be decoded.
    """
    check_decoded_size(ds, max_pixels)
    check_grayscale(ds)
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise PixelDataError(f"The pixel data cannot be decoded: {exc}") from exc
    rows, cols = int(ds.Rows), int(ds.Columns)
    if stored.shape != (rows, cols):
        raise PixelDataError(
            f"The decoded pixel data has shape {stored.shape}, expected ({rows}, {cols})."
        )
    return np.asarray(stored)


def normalize_pixels(ds: Dataset, stored: np.ndarray) -> NormalizedImage:
    """Map the decoded stored values of `ds` to the model's convention.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image the values come from (Modality LUT, Bits Stored, Photometric
        Interpretation).
    stored : numpy.ndarray
        Its stored values (:func:`decode_pixels`).

    Returns
    -------
    NormalizedImage

    Raises
    ------
    PixelDataError
        If the Modality LUT cannot be applied or gives an empty value range.
    """
    try:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
        low, high = _modality_range(ds)
    except Exception as exc:
        raise PixelDataError(f"The Modality LUT cannot be applied: {exc}") from exc
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        raise PixelDataError(f"The Modality LUT gives an empty value range [{low}, {high}].")
    inverted = str(ds.PhotometricInterpretation).strip() == "MONOCHROME1"
    unit = np.clip((values - low) / (high - low), 0.0, 1.0)
    if inverted:
        unit = 1.0 - unit
    return NormalizedImage(
        pixels=unit.astype(np.float32),
        bits_stored=int(ds.BitsStored),
        low=low,
        high=high,
        inverted=inverted,
    )


def normalize_dataset(ds: Dataset) -> NormalizedImage:
    """Decode and normalise a DICOM image to the model's convention.

    :func:`decode_pixels` then :func:`normalize_pixels`.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A single-frame MONOCHROME1/2 image in any transfer syntax pydicom
        can decode with the installed plugins.

    Returns
    -------
    NormalizedImage

    Raises
    ------
    PixelDataError
        If the image is not grayscale, has several frames, or its pixel data
        cannot be decoded.
    """
    return normalize_pixels(ds, decode_pixels(ds))


def png_significant_bits(path: Path) -> int | None:
    """The grayscale significant-bits value of a PNG's sBIT chunk, if it has one.

    Only the chunks before the first IDAT are read (the PNG specification
    places sBIT there), and at most :data:`PNG_HEADER_SCAN_LIMIT` bytes.

    Returns
    -------
    int or None
        The number of significant bits (1 to 16), or None when the file has
        no valid sBIT chunk or is not a PNG.
    """
    try:
        with path.open("rb") as handle:
            if handle.read(8) != PNG_SIGNATURE:
                return None
            scanned = 8
            while scanned < PNG_HEADER_SCAN_LIMIT:
                header = handle.read(8)
                if len(header) < 8:
                    return None
                length = int.from_bytes(header[:4], "big")
                kind = header[4:8]
                if kind in (b"IDAT", b"IEND") or length > PNG_HEADER_SCAN_LIMIT:
                    return None
                body = handle.read(length)
                handle.read(4)  # CRC
                scanned += 12 + length
                if kind == b"sBIT":
                    # Grayscale: one byte; grayscale+alpha: two (the first is gray).
                    if len(body) in (1, 2) and 1 <= body[0] <= 16:
                        return int(body[0])
                    return None
    except OSError:
        return None
    return None


def tiff_significant_bits(tags: dict[int, object]) -> int | None:
    """Bit depth declared by a TIFF's tags: MaxSampleValue (281), else BitsPerSample (258)."""
    maximum = tags.get(281)
    if isinstance(maximum, tuple):
        maximum = maximum[0] if maximum else None
    if isinstance(maximum, int) and 0 < maximum <= 65535:
        return max(1, int(maximum).bit_length())
    bits = tags.get(258)
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    if isinstance(bits, int) and 1 <= bits <= 16:
        return int(bits)
    return None


def declared_bits(raw: np.ndarray, declared: int | None) -> int:
    """Bit depth of a grayscale file's values: 8 for uint8, else what the file declares.

    A 16-bit PNG or TIFF is 16-bit unless the file itself says otherwise (the
    PNG sBIT chunk, the TIFF MaxSampleValue or BitsPerSample tags). The bit
    depth is never guessed from the brightest pixel: a dim 16-bit image must
    stay dim. A declared depth that the values exceed is ignored (16 is used).
    """
    if raw.dtype == np.uint8:
        return 8
    if declared is None or not 1 <= declared <= 16:
        return 16
    peak = int(raw.max()) if raw.size else 0
    if peak >= 2**declared:
        return 16
    return int(declared)


def read_image_file(path: Path) -> tuple[NormalizedImage, np.ndarray]:
    """Read a grayscale PNG, TIFF (8 or 16 bit) or JPEG (8 bit) into the model's convention.

    The bit depth of a 16-bit file comes from the file (see
    :func:`declared_bits`), never from its pixel values.

    Returns
    -------
    tuple[NormalizedImage, numpy.ndarray]
        The normalised image and the raw integer array as read.

    Raises
    ------
    PixelDataError
        If the file cannot be read or is not 8/16-bit grayscale.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode not in ("L", "I;16", "I;16B", "I;16L", "I"):
                raise PixelDataError(
                    f"{path.name}: image mode {mode} is not supported; expected 8- or 16-bit "
                    "grayscale."
                )
            raw = np.array(img)
            tiff_tags = dict(getattr(img, "tag_v2", {}) or {}) if img.format == "TIFF" else None
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise PixelDataError(f"{path.name}: cannot read the image: {exc}") from exc
    if raw.ndim != 2:
        raise PixelDataError(f"{path.name}: expected a single-channel image.")
    if raw.dtype != np.uint8:
        if raw.min() < 0 or raw.max() > 65535:
            raise PixelDataError(f"{path.name}: values outside the 16-bit range.")
        raw = raw.astype(np.uint16)
    if raw.dtype == np.uint8:
        declared: int | None = 8
    elif tiff_tags is not None:
        declared = tiff_significant_bits(tiff_tags)
    else:
        declared = png_significant_bits(path)
    bits = declared_bits(raw, declared)
    high = float(2**bits - 1)
    image = NormalizedImage(
        pixels=(raw.astype(np.float32) / np.float32(high)).clip(0.0, 1.0),
        bits_stored=bits,
        low=0.0,
        high=high,
        inverted=False,
    )
    return image, raw


def read_any(path: Path) -> NormalizedImage:
    """Read a DICOM, PNG or TIFF file into the model's convention.

    Raises
    ------
    PixelDataError
        If the file is neither a decodable grayscale DICOM image nor a
        supported PNG/TIFF.
    """
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image_file(path)[0]
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise PixelDataError(f"{path.name}: not a readable DICOM file: {exc}") from exc
    return normalize_dataset(ds)


def quantize(unit: np.ndarray, bits: int) -> np.ndarray:
    """Round [0, 1] values to integers of `bits` bits (uint8 for 8, else uint16)."""
    top = 2**bits - 1
    values = np.rint(np.clip(unit, 0.0, 1.0) * top)
    return values.astype(np.uint8 if bits <= 8 else np.uint16)
