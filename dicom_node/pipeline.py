"""One enhancement, start to end: read → decode → normalise → infer → blend → derive → encode.

:func:`enhance_instance` is the node's pixel-to-object path as one function
with no database, network or configuration file: the worker's ``enhance``
job (:mod:`dicom_node.enhance_job`) and ``dicom-node enhance``
(:mod:`dicom_node.offline`) both call it, so the object a file gives offline
is the object the node would send. Writing the bytes is the caller's (spool
or output directory), and so is choosing the strength (routing rule or
``[model] strength``).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_node.config import OutputSettings
from dicom_node.derive import build_derived
from dicom_node.errors import PermanentError
from dicom_node.inference import Enhancer
from dicom_node.noise import AppliedStrength, adapt_strength
from dicom_node.pixels import NormalizedImage, decode_pixels, normalize_pixels
from dicom_node.strength import DEFAULT_STRENGTH, blend, check_strength
from dicom_node.timings import StageTimings, Stopwatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnhancedInstance:
    """What :func:`enhance_instance` produced.

    Attributes
    ----------
    source : pydicom.dataset.Dataset
        The source as read.
    image : NormalizedImage
        The source in the model's convention.
    derived : pydicom.dataset.Dataset
        The derived Secondary Capture (:func:`dicom_node.derive.build_derived`).
    data : bytes
        `derived` as a DICOM Part 10 file, ready to be written.
    strength : float
        The strength it was made with (:attr:`applied`'s ``applied``).
    applied : AppliedStrength
        The strength requested, applied, and the image noise that decided it.
    timings : StageTimings
        ``read`` (when given a path), ``decode``, ``normalise``, ``infer``
        (with ``tiles``), ``blend``, ``derive`` and ``encode``.
    """

    source: Dataset
    image: NormalizedImage
    derived: Dataset
    data: bytes
    strength: float
    applied: AppliedStrength
    timings: StageTimings


def read_instance(path: Path | str) -> Dataset:
    """Read a spooled instance in full (pixel data not decoded yet).

    Raises
    ------
    PermanentError
        If the file is missing or not readable DICOM.
    """
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError as exc:
        raise PermanentError(f"The received file {path} is missing from the spool.") from exc
    except Exception as exc:
        raise PermanentError(f"The received file cannot be read as DICOM: {exc}") from exc


def encode(derived: Dataset) -> bytes:
    """Serialise a derived dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    derived.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def apply_model(
    enhancer: Enhancer, pixels: np.ndarray, strength: float = DEFAULT_STRENGTH
) -> tuple[np.ndarray, StageTimings, AppliedStrength]:
    """Run the generator on normalised `pixels` and apply `strength` of its correction.

    When the model carries a noise calibration and ``[model] adapt_to_noise``
    is on, the strength is first scaled by the noise measured on `pixels`
    (:func:`dicom_node.noise.adapt_strength`): a clean image is left as it
    is. Measuring the noise is part of the ``blend`` stage.

    Returns
    -------
    tuple[numpy.ndarray, StageTimings, AppliedStrength]
        The blended image (float32 in [0, 1], same shape), the ``infer``
        (with ``tiles``) and ``blend`` stages, and the strength applied.

    Raises
    ------
    ModelError
        If the model fails or returns the wrong shape.
    TypeError, ValueError
        If `strength` is not a number from 0 to 1.
    """
    strength = check_strength(strength)
    generated, inferred = enhancer.enhance(pixels)
    clock = Stopwatch()
    calibration = enhancer.metadata.noise_calibration
    applied = adapt_strength(
        strength, pixels, calibration if enhancer.settings.adapt_to_noise else None
    )
    blended = blend(pixels, generated, applied.applied)
    return blended, inferred.with_stage("blend", clock.lap()), applied


def enhance_instance(
    source: Path | str | Dataset,
    enhancer: Enhancer,
    settings: OutputSettings,
    *,
    strength: float = DEFAULT_STRENGTH,
) -> EnhancedInstance:
    """Enhance one DICOM image into its derived Secondary Capture, as bytes.

    The generator's output is blended with the normalised source at
    `strength` (0: the source's pixels, 1: the generator's output; scaled by
    the image's noise for a calibrated model, see :func:`apply_model`) before
    the derived object is built; the strength goes into its provenance and
    UIDs. Strength 0 still runs the model and gives a derived object.

    Parameters
    ----------
    source : pathlib.Path, str or pydicom.dataset.Dataset
        The file to read, or a dataset already read (then no ``read`` stage).
    enhancer : Enhancer
        The generator's session (:func:`dicom_node.inference.get_enhancer`).
    settings : OutputSettings
        Series number offset and description template of the derived series.
    strength : float, optional
        Share of the generator's correction applied.

    Returns
    -------
    EnhancedInstance

    Raises
    ------
    PermanentError
        If the file is missing or not DICOM.
    PixelDataError
        If the pixel data cannot be decoded or is not a supported image.
    ModelError
        If the model fails.
    TypeError, ValueError
        If `strength` is not a number from 0 to 1, or the source lacks a
        valid UID.
    """
    strength = check_strength(strength)
    clock = Stopwatch()
    timings = StageTimings()
    if not isinstance(source, Dataset):
        source = read_instance(source)
        timings = timings.with_stage("read", clock.lap())
    stored = decode_pixels(source, enhancer.settings.max_pixels)
    timings = timings.with_stage("decode", clock.lap())
    image = normalize_pixels(source, stored)
    timings = timings.with_stage("normalise", clock.lap())
    enhanced, model_timings, applied = apply_model(enhancer, image.pixels, strength)
    timings = timings.merged(model_timings)
    clock.lap()
    derived = build_derived(
        source,
        image,
        enhanced,
        enhancer.metadata,
        settings,
        strength=applied.applied,
        adaptation=applied if applied.adapted else None,
    )
    timings = timings.with_stage("derive", clock.lap())
    data = encode(derived)
    timings = timings.with_stage("encode", clock.lap())
    return EnhancedInstance(
        source=source,
        image=image,
        derived=derived,
        data=data,
        strength=applied.applied,
        applied=applied,
        timings=timings,
    )
