"""Derived models of an exported fp32 model: fp16 weights, int8 (static QDQ) and in-graph preprocessing.

Each variant is checked against the fp32 model on real test images before it is written.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from vggdeploy.archs import ModelArgs
from vggdeploy.artifacts import sibling
from vggdeploy.config import ExportConfig
from vggdeploy.contract import BATCH_AXIS, INPUT_NAME, OUTPUT_NAME, PROBABILITIES_NAME, RAW_INPUT_NAME
from vggdeploy.data import load_split, to_model_input
from vggdeploy.errors import CheckFailed
from vggdeploy.hardware import median_ms
from vggdeploy.graph import GraphStats, attach_metadata, check_proto, io_section, run_session, save_onnx
from vggdeploy.parity import ParityResult, compare_logits
from vggdeploy.preprocess import PreprocessSpec
from vggdeploy.runtime import ORT_SUPPORTED_IR_VERSION, SessionOptions, create_session, softmax

@dataclass
class Variant:
    """A derived model that passed its check, not yet written."""

    name: str  # fp16 | int8 | preprocess
    proto: onnx.ModelProto
    parity: ParityResult
    extra: dict = field(default_factory=dict)  # further figures (int8: CPU latencies)


def build_variants(
    fp32: onnx.ModelProto, fp32_session, config: ExportConfig, inputs: np.ndarray, labels: np.ndarray,
    test_images: torch.Tensor, data_dir,
) -> list[Variant]:  # fmt: skip
    """Build and check every variant the config asks for; raises CheckFailed before anything is written."""
    reference = run_session(fp32_session, inputs)
    built: list[Variant] = []
    if config.fp16:
        proto = to_fp16(fp32)
        session = create_session(proto.SerializeToString(), SessionOptions(provider="cpu"))
        parity = compare_logits("fp16 vs fp32 (onnxruntime)", reference, run_session(session, inputs), labels,
                                max_accuracy_drop=config.fp16_max_drop_pp / 100)  # fmt: skip
        built.append(Variant("fp16", proto, _require(parity)))
    if config.int8:
        image_size = fp32.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
        proto = to_int8(fp32, _calibration_inputs(config.calibration_images, image_size, data_dir))
        session = create_session(proto.SerializeToString(), SessionOptions(provider="cpu"))
        parity = compare_logits("int8 vs fp32 (onnxruntime)", reference, run_session(session, inputs), labels,
                                max_accuracy_drop=config.int8_max_drop_pp / 100)  # fmt: skip
        speed = {"cpu_batch1_ms_fp32": _batch1_ms(fp32_session, inputs), "cpu_batch1_ms_int8": _batch1_ms(session, inputs)}
        speed["cpu_speedup"] = speed["cpu_batch1_ms_fp32"] / speed["cpu_batch1_ms_int8"]
        built.append(Variant("int8", proto, _require(parity), speed))
    if config.with_preprocessing:
        proto = with_preprocessing(fp32, PreprocessSpec.from_metadata(_metadata_of(fp32)["preprocessing"]))
        session = create_session(proto.SerializeToString(), SessionOptions(provider="cpu"))
        expected = softmax(reference.astype(np.float64)).astype(np.float32)
        parity = compare_logits("uint8 in-graph preprocessing vs numpy preprocessing + fp32", expected,
                                run_session(session, test_images[: len(inputs)].numpy()), labels,
                                atol=config.preprocessing_atol)  # fmt: skip
        built.append(Variant("preprocess", proto, _require(parity)))
    return built


def write_variant(variant: Variant, model_path: Path, fp32: onnx.ModelProto) -> dict:
    """Write ``model.<name>.onnx`` beside the fp32 model with its own metadata; returns its figures."""
    metadata = _metadata_of(fp32)
    metadata["export"] = {**metadata["export"], "variant": variant.name}
    metadata["parity"] = {**variant.parity.to_dict(), "flips": []}
    if variant.name == "preprocess":
        args = ModelArgs.from_dict({k: v for k, v in metadata["model"].items() if k != "name"})
        metadata["io"] = io_section(args, raw_input=True)
    attach_metadata(variant.proto, metadata)
    path = sibling(model_path, variant.name)
    save_onnx(variant.proto, path)
    return {"path": str(path), "bytes": path.stat().st_size, "nodes": GraphStats.of(variant.proto).nodes,
            "parity": variant.parity.to_dict(), **variant.extra, "summary": variant.parity.format()}  # fmt: skip


def _metadata_of(proto: onnx.ModelProto) -> dict:
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def _require(parity: ParityResult) -> ParityResult:
    if not parity:
        raise CheckFailed(f"variant check: {parity.format()}")
    return parity


def _batch1_ms(session, inputs: np.ndarray, repeats: int = 20) -> float:
    name, single = session.get_inputs()[0].name, inputs[:1]
    return median_ms(lambda: session.run(None, {name: single}), repeats)


def to_fp16(fp32: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and activations, fp32 inputs and outputs (a Cast at each end)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(fp32, keep_io_types=True, disable_shape_infer=False)
    proto.ir_version = min(proto.ir_version, ORT_SUPPORTED_IR_VERSION)
    return proto


def _calibration_inputs(count: int, image_size: int, data_dir) -> np.ndarray:
    """Training images (never test images) preprocessed as at test time: the int8 calibration set."""
    images, _ = load_split("train", data_dir)
    step = max(1, len(images) // count)
    return to_model_input(images[::step][:count], PreprocessSpec(image_size, image_size)).numpy()


def to_int8(fp32: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """Static QDQ quantisation: s8 per-channel weights, u8 activations, MinMax calibration."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration[i : i + 32] for i in range(0, len(calibration), 32))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as folder:
        source, prepared, target = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(fp32, str(source))
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # shape inference + graph fusions
        quantize_static(
            str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
        )  # fmt: skip
        proto = onnx.load(str(target))
    proto.ir_version = min(proto.ir_version, ORT_SUPPORTED_IR_VERSION)
    return proto


def with_preprocessing(fp32: onnx.ModelProto, spec: PreprocessSpec) -> onnx.ModelProto:
    """Prepend uint8 (batch, height, width) -> resize -> normalise, append softmax: a service only decodes."""
    opset = next(o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx"))
    constants = [
        helper.make_tensor("pre_scale", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor("pre_mean", TensorProto.FLOAT, [], [spec.mean]),
        helper.make_tensor("pre_std", TensorProto.FLOAT, [], [spec.std]),
        helper.make_tensor("pre_axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("pre_hw", TensorProto.INT64, [2], [spec.height, spec.width]),
    ]
    resize_mode = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    if opset >= 18:  # Resize's axes: fixed (height, width) sizes, no shape arithmetic that a GPU provider leaves to the CPU
        resize = [helper.make_node("Resize", ["pre_nchw", "", "", "pre_hw"], ["pre_resized"], axes=[2, 3], antialias=0, **resize_mode)]
    else:
        constants += [helper.make_tensor("pre_start", TensorProto.INT64, [1], [0]), helper.make_tensor("pre_end", TensorProto.INT64, [1], [2])]
        resize = [
            helper.make_node("Shape", ["pre_nchw"], ["pre_shape"]),
            helper.make_node("Slice", ["pre_shape", "pre_start", "pre_end"], ["pre_nc"]),
            helper.make_node("Concat", ["pre_nc", "pre_hw"], ["pre_sizes"], axis=0),
            helper.make_node("Resize", ["pre_nchw", "", "", "pre_sizes"], ["pre_resized"], **resize_mode),
        ]
    nodes = [
        helper.make_node("Cast", [RAW_INPUT_NAME], ["pre_float"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["pre_float", "pre_scale"], ["pre_unit"]),
        helper.make_node("Unsqueeze", ["pre_unit", "pre_axes"], ["pre_nchw"]),
        *resize,
        helper.make_node("Sub", ["pre_resized", "pre_mean"], ["pre_centred"]),
        helper.make_node("Div", ["pre_centred", "pre_std"], [INPUT_NAME]),
    ]
    graph = onnx.GraphProto()
    graph.CopyFrom(fp32.graph)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(RAW_INPUT_NAME, TensorProto.UINT8, [BATCH_AXIS, "height", "width"]))
    graph.initializer.extend(constants)
    original_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *original_nodes, helper.make_node("Softmax", [OUTPUT_NAME], [PROBABILITIES_NAME], axis=1)])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(PROBABILITIES_NAME, TensorProto.FLOAT, [BATCH_AXIS, None]))
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = fp32.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    proto = helper.make_model(graph, opset_imports=list(fp32.opset_import), ir_version=fp32.ir_version)
    check_proto(proto)
    return proto
