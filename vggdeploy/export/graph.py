"""ONNX graph helpers shared by the export stage and its variants: stats, metadata, saving, running."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import onnx

from vggdeploy import __version__
from vggdeploy.deploy.contract import (
    BATCH_AXIS,
    FAMILIARITY_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    PROBABILITIES_NAME,
    RAW_INPUT_NAME,
    encode_metadata,
)
from vggdeploy.deploy.weights_on_disk import embedded_size
from vggdeploy.errors import CheckFailed
from vggdeploy.files import atomic_path
from vggdeploy.model.archs import ModelArgs


@dataclass(frozen=True)
class GraphStats:
    nodes: int
    ops: dict[str, int]
    bytes: int

    @classmethod
    def of(cls, proto: onnx.ModelProto, weights_folder: Path | None = None) -> GraphStats:
        """``weights_folder``: where the graph's external weights are; its size is then the single file's."""
        ops = collections.Counter(node.op_type for node in proto.graph.node)
        size = proto.ByteSize() if weights_folder is None else embedded_size(proto, weights_folder)
        return cls(len(proto.graph.node), dict(sorted(ops.items())), size)


def check_proto(proto: onnx.ModelProto | Path) -> None:
    """onnx's full check (with strict shape inference) of a graph, or of a file read by its C++ loader."""
    try:
        onnx.checker.check_model(proto if isinstance(proto, onnx.ModelProto) else str(proto), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise CheckFailed(f"onnx.checker rejected the graph: {str(error).splitlines()[0]}") from None


def io_section(args: ModelArgs, raw_input: bool, scored: bool = False) -> dict:
    """The "io" metadata: what goes in and what comes out, with the dynamic axis names; ``scored``: the second output,
    the familiarity score, too."""
    section = _inputs_and_output(args, raw_input)
    if scored:
        section["familiarity"] = {
            "name": FAMILIARITY_NAME,
            "dtype": "float32",
            "shape": [BATCH_AXIS],
            "meaning": "how much each image looks like the training images, higher = more; the image is unfamiliar "
            "below the 'familiarity' section's threshold",
        }
    return section


def _inputs_and_output(args: ModelArgs, raw_input: bool) -> dict:
    if raw_input:
        return {
            "input": {
                "name": RAW_INPUT_NAME,
                "dtype": "uint8",
                "shape": [BATCH_AXIS, "height", "width"] + ([args.in_channels] if args.in_channels > 1 else []),
                "meaning": (
                    "8-bit grayscale images of any size"
                    if args.in_channels == 1
                    else f"8-bit images of any size, {args.in_channels} channels last (RGB)"
                )
                + "; resize and normalisation happen inside",
            },
            "output": {
                "name": PROBABILITIES_NAME,
                "dtype": "float32",
                "shape": [BATCH_AXIS, args.num_classes],
                "meaning": "probabilities softmax(logits / calibration.temperature), column i = labels[i]",
            },
        }
    return {
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": [BATCH_AXIS, args.in_channels, args.image_size, args.image_size],
            "meaning": "images preprocessed as the 'preprocessing' section says",
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": [BATCH_AXIS, args.num_classes],
            "meaning": "logits, column i = labels[i]; probabilities = softmax(logits / calibration.temperature), "
            "temperature 1 where the model has no calibration key",
        },
    }


def attach_metadata(proto: onnx.ModelProto, metadata: dict) -> None:
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, encode_metadata(metadata))
    proto.producer_name, proto.producer_version = "vggdeploy", __version__
    proto.doc_string = f"VGG ({metadata['model']['name']}) Fashion-MNIST classifier; see metadata_props."


def save_onnx(proto: onnx.ModelProto, path) -> None:
    with atomic_path(path) as temporary:
        onnx.save(proto, str(temporary))


def familiarity_nodes(proto: onnx.ModelProto) -> list[str]:
    """The names of the nodes that compute the familiarity score and not the logits: the variants keep them in fp32
    (fp16 would overflow a sum of squares; int8 ranges fitted to the logits' path would coarsen the distances)."""
    producer = {output: node for node in proto.graph.node for output in node.output}

    def ancestors(name: str) -> set[int]:
        seen: set[int] = set()
        pending = [name]
        while pending:
            node = producer.get(pending.pop())
            if node is not None and id(node) not in seen:
                seen.add(id(node))
                pending.extend(node.input)
        return seen

    only_score = ancestors(FAMILIARITY_NAME) - ancestors(OUTPUT_NAME)
    return [node.name for node in proto.graph.node if id(node) in only_score]
