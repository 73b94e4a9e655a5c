"""Exact rewrites of an exported graph that may run faster on ONNX Runtime's CUDA execution provider.

Each returns a new model that computes the same logits (up to the kernels' rounding) from the same input, so the
contract (input name, shape and layout) does not change. ``vggdeploy.verify.ablation`` times them against the export as
written; a rewrite becomes part of the export only when it wins there.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MICROSOFT_DOMAIN = "com.microsoft"


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {tensor.name: tensor for tensor in graph.initializer}


def _consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if name in node.input]


def first_conv(model: onnx.ModelProto) -> onnx.NodeProto:
    """The Conv that reads the image: the first Conv in topological order."""
    for node in model.graph.node:
        if node.op_type == "Conv":
            return node
    raise ValueError("the graph has no Conv node")


def pad_input_channels(model: onnx.ModelProto, channels: int) -> onnx.ModelProto:
    """The first Conv reads ``channels`` input channels: the image padded with zero channels (a Pad node) and the
    weight with zero input planes. Exact, since the extra channels are zero on both sides; tensor-core kernels want
    channel counts in multiples of 4 or 8, which a grayscale image's one channel is not."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    conv = first_conv(rewritten)
    weight = _initializers(graph)[conv.input[1]]
    values = numpy_helper.to_array(weight)
    have = values.shape[1]
    if channels <= have:
        raise ValueError(f"the first Conv already reads {have} channels; padding to {channels} adds none")
    padded = np.zeros((values.shape[0], channels, *values.shape[2:]), dtype=values.dtype)
    padded[:, :have] = values
    weight.CopyFrom(numpy_helper.from_array(padded, weight.name))
    pads_name, padded_input = f"{conv.name or 'conv'}_channel_pads", f"{conv.input[0]}_padded_channels"
    graph.initializer.append(
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, channels - have, 0, 0], dtype=np.int64), pads_name)
    )
    pad = helper.make_node("Pad", [conv.input[0], pads_name], [padded_input], name=f"{pads_name}_node")
    producers = [index for index, node in enumerate(graph.node) if conv.input[0] in node.output]
    conv.input[0] = padded_input
    graph.node.insert(producers[0] + 1 if producers else 0, pad)  # fp16 exports list their input Cast last
    return rewritten


def fuse_conv_relu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every Conv whose only consumer is a Relu becomes one ``com.microsoft.FusedConv`` node with
    ``activation="Relu"``: one kernel with the bias and the activation in its epilogue, where the CUDA EP's graph
    optimizer leaves three passes (convolution, bias, ReLU)."""
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    outputs = {output.name for output in graph.output}
    nodes: list[onnx.NodeProto] = []
    fused_relus: set[str] = set()  # their outputs, which the fused nodes now write
    for node in graph.node:
        if node.op_type == "Relu" and node.output[0] in fused_relus:
            continue
        consumers = _consumers(graph, node.output[0]) if node.op_type == "Conv" else []
        if len(consumers) == 1 and consumers[0].op_type == "Relu" and node.output[0] not in outputs:
            relu = consumers[0]
            fused = helper.make_node(
                "FusedConv",
                list(node.input),
                list(relu.output),
                name=f"{node.name or relu.output[0]}_relu",
                domain=MICROSOFT_DOMAIN,
                activation="Relu",
            )
            fused.attribute.extend(node.attribute)
            nodes.append(fused)
            fused_relus.add(relu.output[0])
        else:
            nodes.append(node)
    if not fused_relus:
        raise ValueError("no Conv followed by a Relu to fuse")
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(entry.domain == MICROSOFT_DOMAIN for entry in rewritten.opset_import):
        rewritten.opset_import.append(helper.make_opsetid(MICROSOFT_DOMAIN, 1))
    return rewritten


REWRITES = {
    "fused-conv-relu": fuse_conv_relu,
    "pad4": lambda model: pad_input_channels(model, 4),
    "pad8": lambda model: pad_input_channels(model, 8),
}


def rewritten(model: onnx.ModelProto, names: tuple[str, ...]) -> onnx.ModelProto:
    """The model with each named rewrite applied in turn (padding before fusing: the fused first Conv reads the
    padded input)."""
    for name in sorted(names, key=lambda name: name.startswith("fused")):
        model = REWRITES[name](model)
    return model
