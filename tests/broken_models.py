"""Deliberately broken models for tests: one value planted in the classifier's last bias."""

from __future__ import annotations

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
