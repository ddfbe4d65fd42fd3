"""``dicom-node enhance``: the node's pipeline on files, without a network.

DICOM in → derived DICOM out, exactly as the node would produce it (same
routing rules, strength, labels and provenance: both run
:func:`dicom_node.pipeline.enhance_instance`); grayscale PNG or TIFF (8 or
16 bit) or JPEG (8 bit) in → PNG of the same size and bit depth out (a bit
depth below 16 in a 16-bit file is written back as the PNG sBIT chunk). The
strength is ``--strength`` when given, else the matching rule's (DICOM) or
``[model] strength``. One summary line per file, with the stage timings of
:class:`~dicom_node.timings.StageTimings`; a file that cannot be processed
gets a one-line reason and the others are still processed.
Outputs never overwrite an input.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np
import pydicom

from dicom_node.config import Config
from dicom_node.dataset_info import info_from_dataset
from dicom_node.errors import NodeError
from dicom_node.inference import Enhancer, get_enhancer
from dicom_node.noise import AppliedStrength
from dicom_node.pipeline import apply_model, enhance_instance
from dicom_node.pixels import IMAGE_SUFFIXES, quantize, read_image_file
from dicom_node.routing import route
from dicom_node.spool import write_atomic
from dicom_node.strength import check_strength, format_strength
from dicom_node.timings import StageTimings, Stopwatch


class UnprocessableFileError(Exception):
    """This file cannot be processed; the message says why."""


def _output_path(source: Path, output_dir: Path, suffix: str | None = None) -> Path:
    name = source.name if suffix is None else source.with_suffix(suffix).name
    target = output_dir / name
    if target.resolve() == source.resolve():
        raise UnprocessableFileError(
            "the output would overwrite the input; choose another --output directory"
        )
    return target


def png_bytes(values: np.ndarray, bits: int) -> bytes:
    """Encode grayscale `values` as a PNG whose bit depth says `bits`.

    uint8 gives an 8-bit PNG; uint16 a 16-bit PNG, with an sBIT chunk when
    `bits` is below 16, so that :func:`~dicom_node.pixels.read_image_file`
    reads the values at the same depth again.
    """
    from PIL import Image, PngImagePlugin

    info = None
    if values.dtype == np.uint16 and bits < 16:
        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([bits]))
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def stage_summary(timings: StageTimings) -> str:
    """The stage timings of a summary line: ``tiles 1, read 12 ms, infer 840 ms, …``."""
    parts = [f"tiles {timings.tiles}"] if timings.tiles is not None else []
    parts += [f"{stage} {ms:.0f} ms" for stage, ms in timings.as_dict().items()]
    return ", ".join(parts)


def enhance_image_file(path: Path, output_dir: Path, enhancer: Enhancer, strength: float) -> str:
    """Enhance a PNG/TIFF/JPEG; write a PNG of the same size and bit depth. Returns a summary."""
    clock = Stopwatch()
    try:
        image, raw = read_image_file(path)
    except NodeError as exc:
        raise UnprocessableFileError(str(exc)) from exc
    # One Pillow call reads, decodes and normalises: all of it is the read stage.
    timings = StageTimings(read_ms=clock.lap())
    enhanced, model_timings, applied = apply_model(enhancer, image.pixels, strength)
    clock.lap()
    # The input's container (8 or 16 bit) and value depth: a 16-bit file that
    # declares 8 bits or fewer stays a 16-bit PNG, with its sBIT.
    values = quantize(enhanced, image.bits_stored).astype(raw.dtype)
    target = _output_path(path, output_dir, ".png")
    data = png_bytes(values, image.bits_stored)
    encode_ms = clock.lap()
    write_atomic(target, data)
    timings = timings.merged(model_timings).merged(
        StageTimings(encode_ms=encode_ms, write_ms=clock.lap())
    )
    rows, cols = raw.shape
    container = 8 if values.dtype == np.uint8 else 16
    return (
        f"{path} -> {target} ({cols}x{rows}, {container}-bit PNG, {image.bits_stored}-bit values, "
        f"{describe_strength(applied)}; {stage_summary(timings)})"
    )


def describe_strength(applied: AppliedStrength) -> str:
    """``strength 0.80``, or ``strength 0.42 (requested 1.00, image noise SD 0.0123)``."""
    text = f"strength {format_strength(applied.applied)}"
    if applied.noise_sd is not None:
        text += (
            f" (requested {format_strength(applied.requested)}, "
            f"image noise SD {applied.noise_sd:.4f})"
        )
    return text


def enhance_dicom_file(
    path: Path,
    output_dir: Path,
    enhancer: Enhancer,
    config: Config,
    strength: float | None = None,
) -> str:
    """Enhance a DICOM image into a derived Secondary Capture. Returns a summary.

    `strength` None uses the matching rule's strength, else ``[model] strength``.
    """
    clock = Stopwatch()
    try:
        source = pydicom.dcmread(path)
        transfer_syntax = str(source.file_meta.TransferSyntaxUID)
        info = info_from_dataset(source, transfer_syntax)
    except Exception as exc:
        raise UnprocessableFileError(f"not a readable DICOM image: {exc}") from exc
    read_ms = clock.lap()
    decision = route(config, info, calling_aet="")
    if decision.action != "enhance":
        raise UnprocessableFileError(
            f"not enhanced: {decision.reason} (Modality {info.modality or '-'}, "
            f"BodyPartExamined {info.body_part_examined or '-'}, SOP Class {info.sop_class_uid})"
        )
    target = _output_path(path, output_dir)
    if strength is None:
        strength = decision.strength if decision.strength is not None else config.model.strength
    try:
        result = enhance_instance(source, enhancer, config.output, strength=strength)
    except NodeError as exc:
        raise UnprocessableFileError(str(exc)) from exc
    clock.lap()
    write_atomic(target, result.data)
    timings = result.timings.merged(StageTimings(read_ms=read_ms, write_ms=clock.lap()))
    derived, image = result.derived, result.image
    photometric = "MONOCHROME1" if image.inverted else "MONOCHROME2"
    return (
        f"{path} -> {target} ({derived.Columns}x{derived.Rows}, {image.bits_stored}-bit "
        f"{photometric} in, {describe_strength(result.applied)}, "
        f"SOP Instance UID {derived.SOPInstanceUID}; {stage_summary(timings)})"
    )


def enhance_files(
    config: Config,
    inputs: list[Path],
    output_dir: Path,
    out: TextIO | None = None,
    strength: float | None = None,
) -> int:
    """Enhance every input; print one line per file. Returns the number of failures.

    Parameters
    ----------
    config : Config
        Model, routing rules, strength and output labels.
    inputs : list[pathlib.Path]
        DICOM, PNG, TIFF or JPEG files.
    output_dir : pathlib.Path
        Where the results go (created when missing).
    out : TextIO, optional
        Where the summary lines go (default: standard output).
    strength : float, optional
        Strength for every file; None: the matching rule's strength (DICOM),
        else ``[model] strength``.

    Raises
    ------
    ModelError
        If the model cannot be loaded (nothing can be processed then).
    TypeError, ValueError
        If `strength` is not a number from 0 to 1.
    """
    if strength is not None:
        strength = check_strength(strength)
    out = out or sys.stdout
    output_dir.mkdir(parents=True, exist_ok=True)
    enhancer = get_enhancer(config.model)
    failures = 0
    for path in inputs:
        start = time.perf_counter()
        try:
            if not path.is_file():
                raise UnprocessableFileError("no such file")
            if path.suffix.lower() in IMAGE_SUFFIXES:
                image_strength = config.model.strength if strength is None else strength
                summary = enhance_image_file(path, output_dir, enhancer, image_strength)
            else:
                summary = enhance_dicom_file(path, output_dir, enhancer, config, strength)
        except (UnprocessableFileError, NodeError) as exc:
            failures += 1
            print(f"FAILED {path}: {exc}", file=out, flush=True)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            failures += 1
            print(f"FAILED {path}: unexpected error: {exc.__class__.__name__}: {exc}", file=out)
            continue
        print(f"OK {summary} in {time.perf_counter() - start:.2f} s", file=out, flush=True)
    print(
        f"{len(inputs) - failures} of {len(inputs)} file(s) enhanced with model "
        f"{enhancer.metadata.name} {enhancer.metadata.version} ({enhancer.provider}).",
        file=out,
    )
    return failures
