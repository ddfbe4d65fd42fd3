"""How large an image the node decodes: checked from the header, before any decoding.

A few kilobytes of JPEG 2000 can declare an image of gigabytes. The node
therefore refuses, before calling a decoder, an image whose header declares
more than ``[model] max_pixels`` pixels (Rows × Columns × frames), and a
compressed frame whose codestream (JPEG 2000 SIZ, JPEG or JPEG-LS SOF)
declares more pixels or components than the header: a decoder allocates what
the codestream says, so the codestream must not say more than the header.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from dicom_node.errors import PermanentError

__all__ = ["DEFAULT_MAX_PIXELS", "DecodedSizeError", "check_decoded_size", "codestream_size"]

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Default ``[model] max_pixels``: the most pixels (all frames) the node decodes."""

_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0c\x6a\x50\x20\x20"
_JPEG_SOI = b"\xff\xd8"
_JPEG_SOF = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})
"""Start-of-frame markers: JPEG SOF0 to SOF15 (not DHT, JPG, DAC) and JPEG-LS SOF55."""
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
"""Markers without a length (TEM, RST0 to RST7)."""


class DecodedSizeError(PermanentError):
    """The image would decode to more pixels than the node allows or than its header says."""


def _j2k_size(stream: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG 2000 codestream's SIZ marker (or a JP2 file)."""
    offset = 0
    if stream.startswith(_JP2_SIGNATURE):
        offset = 12
        while offset + 8 <= len(stream):
            length = int.from_bytes(stream[offset : offset + 4], "big")
            if stream[offset + 4 : offset + 8] == b"jp2c":
                offset += 8
                break
            if length < 8:
                return None
            offset += length
    if stream[offset : offset + 4] != _J2K_SOC_SIZ or len(stream) < offset + 42:
        return None

    def field(at: int, size: int = 4) -> int:
        return int.from_bytes(stream[offset + at : offset + at + size], "big")

    # SIZ (ISO/IEC 15444-1 A.5.1): Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, ..., Csiz.
    columns, rows = field(8) - field(16), field(12) - field(20)
    return rows, columns, field(40, 2)


def _jpeg_size(stream: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG or JPEG-LS stream's start-of-frame segment."""
    if not stream.startswith(_JPEG_SOI):
        return None
    offset = 2
    while offset + 4 <= len(stream):
        if stream[offset] != 0xFF:
            return None
        marker = stream[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _JPEG_STANDALONE:
            offset += 2
            continue
        if marker in _JPEG_SOF:
            # Lf (2), P (1), Y (2), X (2), Nf (1): ISO/IEC 10918-1 B.2.2.
            if offset + 10 > len(stream):
                return None
            rows = int.from_bytes(stream[offset + 5 : offset + 7], "big")
            columns = int.from_bytes(stream[offset + 7 : offset + 9], "big")
            return rows, columns, stream[offset + 9]
        offset += 2 + int.from_bytes(stream[offset + 2 : offset + 4], "big")
    return None


def codestream_size(stream: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) that a JPEG, JPEG-LS or JPEG 2000 codestream declares.

    Returns None when the stream is none of these or cannot be parsed (RLE
    decoders allocate from the dataset's header, not from the stream).
    """
    size = _j2k_size(stream)
    return size if size is not None else _jpeg_size(stream)


def check_decoded_size(ds: Dataset, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse, before decoding, an image too large or whose codestream exceeds its header.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image (its pixel data is not decoded).
    max_pixels : int, optional
        The most pixels, Rows × Columns × Number of Frames, the node decodes
        (``[model] max_pixels``).

    Raises
    ------
    DecodedSizeError
        If the header declares more than `max_pixels` pixels, or the first
        compressed frame declares a larger image or more components than the
        header.
    """
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    declared = rows * cols * frames
    if declared > max_pixels:
        raise DecodedSizeError(
            f"The image declares {rows} × {cols} pixels × {frames} frame(s) = {declared} "
            f"pixels, more than [model] max_pixels ({max_pixels}); it is not decoded."
        )
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = UID(str(getattr(meta, "TransferSyntaxUID", "") or ""))
    if not transfer_syntax or not transfer_syntax.is_encapsulated or "PixelData" not in ds:
        return
    try:
        first = next(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception:  # noqa: BLE001 - broken encapsulation is the decoder's to refuse
        return
    size = codestream_size(first)
    if size is None:
        return
    stream_rows, stream_cols, components = size
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if stream_rows * stream_cols * components > rows * cols * samples:
        raise DecodedSizeError(
            f"The compressed image declares {stream_rows} × {stream_cols} pixels × "
            f"{components} component(s) but the header says {rows} × {cols} × {samples}; "
            "it is not decoded."
        )
