"""The parity gate: an exported model must compute what the PyTorch generator computes.

:func:`check_parity` runs the ONNX model with onnxruntime (CPU) and the
PyTorch module on :func:`parity_inputs` (random inputs and real radiographs)
and reports the largest absolute difference per input; the export refuses a
model whose difference exceeds :data:`FP32_TOLERANCE` (float32) or
:data:`FP16_TOLERANCE` (float16).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from dicom_node.model_meta import INPUT_NAME, OUTPUT_NAME
from dicom_node.tiling import pad_to_multiple
from training.errors import ExportError
from training.networks import SIZE_MULTIPLE, ResidualEnhancer

FP32_TOLERANCE = 1e-4
"""Largest absolute difference (in [0, 1] units) allowed between the float32
ONNX model and PyTorch: about 0.03 of an 8-bit step, 6.5 of a 16-bit step."""

FP16_TOLERANCE = 1e-2
"""Largest absolute difference allowed between the float16 model and PyTorch."""


@dataclass
class ParityResult:
    """Largest absolute difference per parity input, and the limit."""

    label: str
    tolerance: float
    differences: dict[str, float] = field(default_factory=dict)

    @property
    def max_difference(self) -> float:
        """The largest difference over all inputs."""
        return max(self.differences.values(), default=0.0)

    @property
    def passed(self) -> bool:
        """Whether every difference is within the tolerance."""
        return self.max_difference <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "tolerance": self.tolerance,
            "max_abs_difference": self.max_difference,
            "inputs": len(self.differences),
        }


def _session(model: onnx.ModelProto | Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def parity_inputs(real: Sequence[np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Random and real (N, 1, H, W) inputs for the parity check.

    Random inputs cover odd batch sizes and non-square shapes; real images are
    centre-cropped to at most 1024 pixels and padded to multiples of 256 as the node
    pads them (:func:`dicom_node.tiling.pad_to_multiple`).
    """
    rng = np.random.default_rng(seed)
    inputs = {
        "uniform 1x256x256": rng.random((1, 1, 256, 256), dtype=np.float32),
        "uniform 3x256x512": rng.random((3, 1, 256, 512), dtype=np.float32),
        "smooth+noise 1x512x256": np.clip(
            np.linspace(0, 1, 512 * 256, dtype=np.float32).reshape(1, 1, 512, 256)
            + 0.05 * rng.standard_normal((1, 1, 512, 256)).astype(np.float32),
            0,
            1,
        ),
    }
    for index, image in enumerate(real):
        rows, cols = min(image.shape[0], 1024), min(image.shape[1], 1024)
        top, left = (image.shape[0] - rows) // 2, (image.shape[1] - cols) // 2
        crop = image[top : top + rows, left : left + cols]
        padded, _ = pad_to_multiple(np.ascontiguousarray(crop, dtype=np.float32), SIZE_MULTIPLE)
        inputs[f"real #{index + 1} {padded.shape[0]}x{padded.shape[1]}"] = padded[
            None, None
        ].astype(np.float32)
    return inputs


def check_parity(
    generator: ResidualEnhancer,
    model: onnx.ModelProto | Path,
    inputs: dict[str, np.ndarray],
    tolerance: float,
    label: str = "fp32",
) -> ParityResult:
    """Largest |onnx - torch| per input; see :attr:`ParityResult.passed`.

    Raises
    ------
    ExportError
        If onnxruntime cannot load or run the model.
    """
    result = ParityResult(label, tolerance)
    try:
        session = _session(model)
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the {label} model: {exc}") from exc
    generator = generator.eval().cpu()
    for name, array in inputs.items():
        with torch.no_grad():
            expected = generator(torch.from_numpy(array)).numpy()
        try:
            (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: array})
        except Exception as exc:
            raise ExportError(f"onnxruntime cannot run the {label} model on {name}: {exc}") from exc
        if actual.shape != expected.shape or actual.dtype != np.float32:
            raise ExportError(
                f"The {label} model returned {actual.dtype} {actual.shape} for {name}; expected "
                f"float32 {expected.shape}."
            )
        result.differences[name] = float(np.abs(actual.astype(np.float64) - expected).max())
    return result
