"""Deliberately broken models for tests: one value planted in the classifier's last bias, or metadata that
contradicts the graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper


def add_to_class_bias(proto: onnx.ModelProto, index: int, amount: float) -> onnx.ModelProto:
    """``proto`` (changed in place) with ``amount`` added to class ``index`` of its last 10-class bias: +1000 makes
    every answer that class, NaN makes every output non-finite."""
    bias = next(t for t in reversed(proto.graph.initializer) if list(t.dims) == [10])
    values = numpy_helper.to_array(bias).copy()
    values[index] += amount
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    return proto


def edit_metadata(proto: onnx.ModelProto, key: str, edit) -> onnx.ModelProto:
    """``proto`` (changed in place) with its ``key`` metadata replaced by ``edit(decoded value)``."""
    entry = next(p for p in proto.metadata_props if p.key == key)
    entry.value = json.dumps(edit(json.loads(entry.value)))
    return proto


def drop_last_label(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` (changed in place) with 9 labels in its metadata for its 10 outputs: a consumer that reads labels
    by index without comparing the counts answers a shifted or missing label instead of refusing the model."""
    return edit_metadata(proto, "labels", lambda labels: labels[:-1])


def scale_logits(proto: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """``proto`` (changed in place) with its last Gemm's weights and bias times ``factor``: every argmax stays, only
    how sure the model is changes (its calibration)."""
    gemm = [node for node in proto.graph.node if node.op_type == "Gemm"][-1]
    for tensor in proto.graph.initializer:
        if tensor.name in gemm.input[1:]:
            values = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array((values * factor).astype(values.dtype), tensor.name))
    return proto


def shift_output(proto: onnx.ModelProto, index: int, amount: float) -> onnx.ModelProto:
    """``proto`` (changed in place) with ``amount`` added to output ``index`` by a node after the graph's last one:
    the same plant in any variant (an int8 file's own bias is quantized, an fp16 file's is half precision)."""
    shift = np.zeros(10, np.float32)
    shift[index] = amount
    return _after_output(proto, "Add", shift)


def multiply_output(proto: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """``proto`` (changed in place) with every output times ``factor`` by a node after the graph's last one: every
    argmax stays, in any variant (scale_logits cannot reach an int8 file's quantized weights)."""
    return _after_output(proto, "Mul", np.full(10, factor, np.float32))


def shift_familiarity(proto: onnx.ModelProto, amount: float) -> onnx.ModelProto:
    """``proto`` (changed in place) with ``amount`` added to its second output, the familiarity score, by a node after
    the graph's last one: every image's flag can move while the logits stay."""
    return _after_output(proto, "Add", np.array(amount, np.float32), output_index=1)


def _after_output(proto: onnx.ModelProto, op_type: str, operand: np.ndarray, output_index: int = 0) -> onnx.ModelProto:
    output = proto.graph.output[output_index]
    producer = next(node for node in proto.graph.node if output.name in node.output)
    raw = f"{output.name}_before_{op_type.lower()}"
    producer.output[list(producer.output).index(output.name)] = raw
    proto.graph.initializer.append(numpy_helper.from_array(operand, f"{output.name}_{op_type.lower()}"))
    proto.graph.node.append(onnx.helper.make_node(op_type, [raw, f"{output.name}_{op_type.lower()}"], [output.name]))
    return proto
