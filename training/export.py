"""Export a trained generator to ONNX, with metadata and a parity gate.

The exported graph is :class:`training.networks.ResidualEnhancer`: one input
``image`` and one output ``enhanced``, float32 (N, 1, H, W) in the node's
[0, 1] pixel convention, with dynamic batch, height and width (H and W must be
multiples of 256). The scaling to [-1, 1], the residual addition and the
final clamp to [0, 1] are inside the graph.

The parity gate runs the ONNX model with onnxruntime (CPU) and the PyTorch
module on random inputs and on real radiographs and refuses the export (the
file is removed) when the largest absolute difference exceeds the tolerance:
:data:`training.parity.FP32_TOLERANCE` for the float32 model and
:data:`training.parity.FP16_TOLERANCE` for the
optional float16 model, whose weights and arithmetic are float16 except the
normalisation layers, which stay float32; its input and output stay float32.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from dicom_node.model_meta import INPUT_NAME, OUTPUT_NAME, file_sha256
from dicom_node.noise import KEY_NOISE_FLOOR, KEY_NOISE_FULL, NoiseCalibration
from dicom_node.pixels import read_any
from training.checkpoint import load_generator
from training.errors import ExportError
from training.export_metadata import build_metadata, set_metadata
from training.networks import SIZE_MULTIPLE, ResidualEnhancer
from training.onnx_fp16 import convert_fp16
from training.parity import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    ParityResult,
    check_parity,
    parity_inputs,
)
from training.split import Split

logger = logging.getLogger(__name__)

MIN_OPSET = 17


@dataclass(frozen=True)
class ExportSettings:
    """How to export.

    Attributes
    ----------
    name, version : str
        ``model_name`` and ``model_version`` metadata.
    opset : int
        ONNX opset (17 or newer).
    tolerance, fp16_tolerance : float or None
        Parity limits; None uses :data:`FP32_TOLERANCE` / :data:`FP16_TOLERANCE`.
    noise_calibration : NoiseCalibration or None
        Written as ``noise_floor`` and ``noise_full`` (:mod:`training.noise_calibration`):
        the node then scales the strength by each image's noise.
    """

    name: str = "cxr-pix2pix"
    version: str = "1.0.0"
    opset: int = MIN_OPSET
    tolerance: float | None = None
    fp16_tolerance: float | None = None
    noise_calibration: NoiseCalibration | None = None

    def __post_init__(self) -> None:
        if not self.name.strip() or len(self.name) > 64:
            raise ValueError(f"name must be 1 to 64 characters; got {self.name!r}.")
        if not self.version.strip() or len(self.version) > 64:
            raise ValueError(f"version must be 1 to 64 characters; got {self.version!r}.")
        if self.opset < MIN_OPSET:
            raise ValueError(f"opset must be {MIN_OPSET} or newer; got {self.opset}.")
        for label, value in (
            ("tolerance", self.tolerance),
            ("fp16_tolerance", self.fp16_tolerance),
        ):
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{label} must be in (0, 1); got {value}.")


@dataclass
class ExportReport:
    """What an export wrote and how it checked."""

    output: Path
    sha256: str
    parity: ParityResult
    fp16_output: Path | None = None
    fp16_sha256: str | None = None
    fp16_parity: ParityResult | None = None

    def lines(self) -> list[str]:
        """Human-readable summary."""
        out = [
            f"wrote {self.output} ({self.output.stat().st_size / 1e6:.1f} MB, "
            f"sha256 {self.sha256})",
            f"parity fp32: max |onnx - torch| = {self.parity.max_difference:.2e} "
            f"<= {self.parity.tolerance:.0e} on {len(self.parity.differences)} inputs",
        ]
        if self.fp16_output is not None and self.fp16_parity is not None:
            out += [
                f"wrote {self.fp16_output} ({self.fp16_output.stat().st_size / 1e6:.1f} MB, "
                f"sha256 {self.fp16_sha256})",
                f"parity fp16: max |onnx - torch| = {self.fp16_parity.max_difference:.2e} "
                f"<= {self.fp16_parity.tolerance:.0e} on {len(self.fp16_parity.differences)} "
                "inputs",
            ]
        return out


def to_onnx_model(generator: ResidualEnhancer, opset: int = MIN_OPSET) -> onnx.ModelProto:
    """Trace the generator into an ONNX model with dynamic batch, height and width."""
    generator = generator.eval().cpu()
    dims = {0: "batch", 2: "height", 3: "width"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one,
            # which needs onnxscript; it still gives the plain, static graph we want.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                generator,
                (torch.rand(1, 1, SIZE_MULTIPLE, SIZE_MULTIPLE),),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims},
                do_constant_folding=True,
            )
        model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


def _parity_images(paths: Sequence[Path], checkpoint: Path) -> list[np.ndarray]:
    if paths:
        return [read_any(p).pixels for p in paths]
    split_file = checkpoint.resolve().parent / "split.json"
    if not split_file.is_file():
        return []
    split = Split.load(split_file)
    records = split.subset("test") or split.subset("val")
    out = []
    for record in records[:2]:
        path = Path(record.low or record.high)
        if path.is_file():
            out.append(read_any(path).pixels)
    return out


def _write(model: onnx.ModelProto, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")
    onnx.save(model, str(tmp))
    os.replace(tmp, output)


def export_checkpoint(
    checkpoint: Path,
    output: Path,
    settings: ExportSettings | None = None,
    evaluation: Path | None = None,
    parity_images: Sequence[Path] = (),
    fp16_output: Path | None = None,
) -> ExportReport:
    """Export the generator of a checkpoint to ONNX behind the parity gate.

    Parameters
    ----------
    checkpoint : pathlib.Path
        ``best.pt`` or ``last.pt`` written by training.
    output : pathlib.Path
        The float32 ONNX file to write.
    settings : ExportSettings, optional
        Name, version, opset and tolerances.
    evaluation : pathlib.Path, optional
        ``evaluation.json`` written by ``evaluate``; its test results go into
        the ``metrics`` metadata.
    parity_images : Sequence[pathlib.Path]
        Real images for the parity check; by default up to two test (else
        validation) images of the checkpoint's run.
    fp16_output : pathlib.Path, optional
        Also write a float16 model here, behind its own parity gate.

    Returns
    -------
    ExportReport

    Raises
    ------
    ExportError
        If a model fails its parity gate (nothing is written for it), or the
        evaluation file is unreadable.
    training.errors.CheckpointError
        If the checkpoint is not a valid checkpoint of this package.
    """
    settings = settings or ExportSettings()
    generator, state = load_generator(checkpoint)
    evaluation_data = None
    if evaluation is not None:
        try:
            evaluation_data = json.loads(evaluation.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"The evaluation file {evaluation} cannot be read: {exc}") from exc
    inputs = parity_inputs(_parity_images(parity_images, checkpoint))
    model = to_onnx_model(generator, settings.opset)
    parity = check_parity(generator, model, inputs, settings.tolerance or FP32_TOLERANCE)
    logger.info("fp32 parity: %s", parity.differences)
    if not parity.passed:
        raise ExportError(
            f"The ONNX model differs from PyTorch by {parity.max_difference:.2e}, more than the "
            f"tolerance {parity.tolerance:.0e}; nothing was written."
        )
    export_info = {
        "opset": settings.opset,
        "fp32_parity": parity.as_dict(),
        "exporter": f"torch {torch.__version__} (TorchScript exporter)",
    }
    fp16_model, fp16_parity = None, None
    if fp16_output is not None:
        fp16_model = convert_fp16(model)
        fp16_parity = check_parity(
            generator, fp16_model, inputs, settings.fp16_tolerance or FP16_TOLERANCE, "fp16"
        )
        logger.info("fp16 parity: %s", fp16_parity.differences)
        if not fp16_parity.passed:
            raise ExportError(
                f"The fp16 ONNX model differs from PyTorch by {fp16_parity.max_difference:.2e}, "
                f"more than the tolerance {fp16_parity.tolerance:.0e}; nothing was written."
            )
    calibration: dict[str, str] = {}
    if settings.noise_calibration is not None:
        calibration = {
            KEY_NOISE_FLOOR: repr(settings.noise_calibration.floor),
            KEY_NOISE_FULL: repr(settings.noise_calibration.full),
        }
    props = build_metadata(
        state, generator, settings.name, settings.version, evaluation_data, export_info
    )
    set_metadata(model, {**props, **calibration})
    _write(model, output)
    report = ExportReport(output, file_sha256(output), parity)
    if fp16_output is not None and fp16_model is not None and fp16_parity is not None:
        fp16_info = {**export_info, "precision": "fp16", "fp16_parity": fp16_parity.as_dict()}
        set_metadata(
            fp16_model,
            {
                **build_metadata(
                    state, generator, settings.name, settings.version, evaluation_data, fp16_info
                ),
                "model_version": f"{settings.version}-fp16"[:64],
                **calibration,
            },
        )
        _write(fp16_model, fp16_output)
        report.fp16_output, report.fp16_sha256 = fp16_output, file_sha256(fp16_output)
        report.fp16_parity = fp16_parity
    return report
