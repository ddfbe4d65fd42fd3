"""A float16 copy of an exported float32 model, with a float32 interface.

The weights and arithmetic are float16 except the operators in
:data:`FP32_KEEP_OPS` (the normalisation layers), which stay float32; the
model's input and output stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dicom_node.model_meta import INPUT_NAME, OUTPUT_NAME

FP32_KEEP_OPS = ("InstanceNormalization",)
"""Operators the float16 model keeps in float32."""


def convert_fp16(
    model: onnx.ModelProto, keep_fp32: Sequence[str] = FP32_KEEP_OPS
) -> onnx.ModelProto:
    """A float16 copy of a float32 model whose input and output stay float32.

    Float initializers and Constant tensors become float16 (except the roi and
    scales of Resize, which stay float32); a Cast after the
    input and before the output keeps the interface float32. Operators named
    in `keep_fp32` get their float inputs cast to float32 and their outputs
    back to float16.
    """
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    # Resize takes its roi and scales as float32 whatever the data type: the
    # bilinear upsampling of the decoder must keep them.
    fixed_fp32 = {
        name for node in graph.node if node.op_type == "Resize" for name in node.input[1:] if name
    }
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in fixed_fp32:
            init.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name)
            )
    for node in graph.node:
        if node.op_type == "Constant" and not set(node.output) & fixed_fp32:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    array = numpy_helper.to_array(attr.t).astype(np.float16)
                    attr.t.CopyFrom(numpy_helper.from_array(array, attr.t.name))
    inner_in, inner_out = f"{INPUT_NAME}_fp16", f"{OUTPUT_NAME}_fp16"
    for node in graph.node:
        node.input[:] = [inner_in if name == INPUT_NAME else name for name in node.input]
        node.output[:] = [inner_out if name == OUTPUT_NAME else name for name in node.output]
    nodes = [helper.make_node("Cast", [INPUT_NAME], [inner_in], to=TensorProto.FLOAT16)]
    for index, node in enumerate(graph.node):
        if node.op_type not in keep_fp32:
            nodes.append(node)
            continue
        inputs, outputs = [], []
        for k, name in enumerate(node.input):
            cast = f"{name}_fp32_{index}_{k}"
            nodes.append(helper.make_node("Cast", [name], [cast], to=TensorProto.FLOAT))
            inputs.append(cast)
        for name in node.output:
            outputs.append(f"{name}_fp32")
        nodes.append(
            helper.make_node(
                node.op_type, inputs, outputs, name=node.name, domain=node.domain or None
            )
        )
        nodes[-1].attribute.extend(node.attribute)
        for name in node.output:
            nodes.append(helper.make_node("Cast", [f"{name}_fp32"], [name], to=TensorProto.FLOAT16))
    nodes.append(helper.make_node("Cast", [inner_out], [OUTPUT_NAME], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    onnx.checker.check_model(converted)
    return converted
