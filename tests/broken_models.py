"""Deliberately broken models for tests: one value planted in the classifier's last bias, or metadata that
contradicts the graph."""

from __future__ import annotations

import json

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
