"""The contract of an exported model: input/output names, the batch axis, and the metadata keys.

Export writes it, the runtime and every non-Python consumer read it; this is the one place it is defined.
Every ``metadata_props`` value is a JSON document.
"""

from __future__ import annotations

import json
import math

from vggdeploy.errors import DataError
from vggdeploy.report import to_json

INPUT_NAME = "images"  # float32 (batch, 1, H, W), normalised as the "preprocessing" metadata says


OUTPUT_NAME = "logits"  # float32 (batch, classes)


RAW_INPUT_NAME = "images_uint8"  # --with-preprocessing variant: uint8 (batch, height, width), any size


PROBABILITIES_NAME = "probabilities"  # --with-preprocessing variant: softmax(logits / temperature)


FAMILIARITY_NAME = "familiarity"  # float32 (batch,): how much each image looks like the training images (optional)


BATCH_AXIS = "batch"


FORMAT_VERSION = "1"


ORT_SUPPORTED_IR_VERSION = 10  # onnx >= 1.19 writes IR 11+ by default; ONNX Runtime 1.31 reads up to 13


# metadata_props keys -> what their JSON value holds
METADATA_KEYS = {
    "vggdeploy.format": "contract version (a string)",
    "labels": "class names, index = output column",
    "preprocessing": "how an image becomes the input tensor (see preprocess.PreprocessSpec.to_metadata)",
    "io": "input and output names, dtypes, shapes with the dynamic axis names, and what the output means",
    "model": "architecture, its name and every ModelArgs field",
    "training": "test accuracy and epoch of the checkpoint, data checksums",
    "export": "exporter, opset, variant (fp32/fp16/int8/preprocessing), simplification, library versions",
    "parity": "ONNX Runtime vs torch on real test images, measured at export",
    "calibration": "the temperature T of probabilities = softmax(logits / T), how it was fitted, ECE/NLL before/after",
    "familiarity": "the second output's threshold (familiarity < threshold = unfamiliar), what the score is, what it "
    "was fitted on and what it promises",
}


# models exported before these existed mean temperature 1 and no familiarity output
OPTIONAL_METADATA_KEYS = frozenset({"calibration", "familiarity"})


def encode_metadata(values: dict) -> dict[str, str]:
    """Serialise each metadata section as strict JSON (``to_json``: every consumer's parser reads it); refuses unknown
    keys so the README table stays complete."""
    unknown = set(values) - set(METADATA_KEYS)
    if unknown:
        raise ValueError(f"undocumented metadata keys: {sorted(unknown)}")
    return {key: to_json(value, sort_keys=True) for key, value in values.items()}


def decode_metadata(props: dict[str, str], source: str) -> dict:
    """Parse metadata_props read from a model; names the model and the key when something is off."""
    if "vggdeploy.format" not in props:
        raise DataError(f"{source}: no vggdeploy metadata (was it exported by 'vggdeploy export'?)")
    decoded = {}
    for key in METADATA_KEYS:
        if key not in props and key in OPTIONAL_METADATA_KEYS:
            continue
        if key not in props:
            raise DataError(f"{source}: metadata key {key!r} is missing")
        try:
            decoded[key] = json.loads(props[key])
        except json.JSONDecodeError as error:
            raise DataError(f"{source}: metadata key {key!r} is not valid JSON ({error})") from None
    if decoded["vggdeploy.format"] != FORMAT_VERSION:  # another contract: its keys may mean other things
        raise DataError(
            f"{source}: vggdeploy format {decoded['vggdeploy.format']!r}, but this vggdeploy reads format "
            f"{FORMAT_VERSION!r} only"
        )
    scale = decoded.get("calibration", {}).get("temperature", 1.0)
    if not (isinstance(scale, int | float) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0):
        raise DataError(  # a negative T ranked the classes backwards
            f"{source}: calibration.temperature must be a positive number, got {scale!r}"
        )
    if "familiarity" in decoded:
        section = decoded["familiarity"]
        threshold = section.get("threshold") if isinstance(section, dict) else None
        if not (isinstance(threshold, int | float) and not isinstance(threshold, bool) and math.isfinite(threshold)):
            raise DataError(f"{source}: familiarity.threshold must be a number, got {threshold!r}")
    return decoded


def proto_metadata(proto, source: str) -> dict:
    """The decoded metadata of an in-memory ModelProto (``onnx_file.read_metadata`` reads a file)."""
    return decode_metadata({prop.key: prop.value for prop in proto.metadata_props}, source)


def cap_ir_version(proto) -> None:
    """Lower the model's IR version to what the pinned ONNX Runtime reads (what export writes must load everywhere)."""
    proto.ir_version = min(proto.ir_version, ORT_SUPPORTED_IR_VERSION)


def temperature(metadata: dict) -> float:
    """The T of ``softmax(logits / T)``; 1 for a model without the ``calibration`` key (exported before it)."""
    return float(metadata.get("calibration", {}).get("temperature", 1.0))


def is_calibrated(metadata: dict) -> bool:
    """Whether the temperature was fitted on held-out images (False: plain softmax, as exported models used to be)."""
    return bool(metadata.get("calibration", {}).get("fitted", False))


def familiarity_threshold(metadata: dict) -> float | None:
    """The score below which an image is unfamiliar; None for a model without the familiarity output."""
    section = metadata.get("familiarity")
    return None if section is None else float(section["threshold"])


def probabilities(logits, temperature: float = 1.0):
    """What the logits mean as probabilities: softmax(logits / temperature) over the classes (row-wise, numerically
    stable; numpy). ``temperature`` comes from the model's metadata (see ``temperature``)."""
    import numpy as np

    scaled = logits / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)
