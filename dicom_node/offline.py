"""``dicom-node enhance``: the node's pipeline on files, without a network.

DICOM in → derived DICOM out, exactly as the node would produce it (same
routing rules, labels and provenance); grayscale PNG or TIFF (8 or 16 bit) in
→ PNG of the same size and bit depth out. One summary line per file; a file
that cannot be processed gets a one-line reason and the others are still
processed. Outputs never overwrite an input.
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
from dicom_node.enhance_job import encode, enhance_dataset
from dicom_node.errors import NodeError
from dicom_node.inference import Enhancer, get_enhancer
from dicom_node.pixels import IMAGE_SUFFIXES, quantize, read_image_file
from dicom_node.routing import route
from dicom_node.spool import write_atomic


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


def enhance_image_file(path: Path, output_dir: Path, enhancer: Enhancer) -> str:
    """Enhance a PNG/TIFF; write a PNG of the same size and bit depth. Returns a summary."""
    from PIL import Image

    try:
        image, raw = read_image_file(path)
    except NodeError as exc:
        raise UnprocessableFileError(str(exc)) from exc
    enhanced, timings = enhancer.enhance(image.pixels)
    values = quantize(enhanced, image.bits_stored)
    target = _output_path(path, output_dir, ".png")
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    write_atomic(target, buffer.getvalue())
    rows, cols = raw.shape
    container = 8 if raw.dtype == np.uint8 else 16
    return (
        f"{path} -> {target} ({cols}x{rows}, {container}-bit PNG, {image.bits_stored}-bit values, "
        f"{timings.tiles} tile(s), inference {timings.inference_ms / 1000:.2f} s)"
    )


def enhance_dicom_file(path: Path, output_dir: Path, enhancer: Enhancer, config: Config) -> str:
    """Enhance a DICOM image into a derived Secondary Capture. Returns a summary."""
    try:
        source = pydicom.dcmread(path)
        transfer_syntax = str(source.file_meta.TransferSyntaxUID)
        info = info_from_dataset(source, transfer_syntax)
    except Exception as exc:
        raise UnprocessableFileError(f"not a readable DICOM image: {exc}") from exc
    decision = route(config, info, calling_aet="")
    if decision.action != "enhance":
        raise UnprocessableFileError(
            f"not enhanced: {decision.reason} (Modality {info.modality or '-'}, "
            f"BodyPartExamined {info.body_part_examined or '-'}, SOP Class {info.sop_class_uid})"
        )
    target = _output_path(path, output_dir)
    try:
        derived, image, timings = enhance_dataset(source, enhancer, config.output)
    except NodeError as exc:
        raise UnprocessableFileError(str(exc)) from exc
    write_atomic(target, encode(derived))
    photometric = "MONOCHROME1" if image.inverted else "MONOCHROME2"
    return (
        f"{path} -> {target} ({derived.Columns}x{derived.Rows}, {image.bits_stored}-bit "
        f"{photometric} in, SOP Instance UID {derived.SOPInstanceUID}, "
        f"inference {timings['inference'] / 1000:.2f} s)"
    )


def enhance_files(
    config: Config, inputs: list[Path], output_dir: Path, out: TextIO | None = None
) -> int:
    """Enhance every input; print one line per file. Returns the number of failures.

    Raises
    ------
    ModelError
        If the model cannot be loaded (nothing can be processed then).
    """
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
                summary = enhance_image_file(path, output_dir, enhancer)
            else:
                summary = enhance_dicom_file(path, output_dir, enhancer, config)
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
