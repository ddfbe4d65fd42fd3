"""Small ONNX generators built with onnx.helper, for tests that need a model quickly.

They follow the node's model contract (input ``image``, output ``enhanced``,
float32 N×1×H×W in [0, 1], metadata) without needing torch. The enhancement
tests that judge image quality or tiling use the shipped model instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dicom_node.model_meta import INPUT_NAME, OUTPUT_NAME
from dicom_node.pixels import CONVENTION


def make_smoothing_model(
    path: Path,
    size_multiple: int = 32,
    name: str = "test-smoother",
    version: str = "1.0",
    strength: float = 0.5,
    convention: str = CONVENTION,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write a model computing ``clip(x + strength·(blur3x3(x) − x), 0, 1)``."""
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16.0
    weight = numpy_helper.from_array(kernel.reshape(1, 1, 3, 3), "w")
    alpha = numpy_helper.from_array(np.array(strength, dtype=np.float32), "alpha")
    lo = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "lo")
    hi = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "hi")
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w"], ["blur"], pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["blur", INPUT_NAME], ["detail"]),
        helper.make_node("Mul", ["detail", "alpha"], ["scaled"]),
        helper.make_node("Add", [INPUT_NAME, "scaled"], ["raw"]),
        helper.make_node("Clip", ["raw", "lo", "hi"], [OUTPUT_NAME]),
    ]
    dims = ["N", 1, "H", "W"]
    graph = helper.make_graph(
        nodes,
        "smoother",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, dims)],
        initializer=[weight, alpha, lo, hi],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = {
        "pixel_convention": convention,
        "model_name": name,
        "model_version": version,
        "size_multiple": str(size_multiple),
        **(extra or {}),
    }
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
