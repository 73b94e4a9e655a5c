"""Derived models of an exported fp32 model: fp16 weights, int8 (static QDQ) and in-graph preprocessing.

Each variant is checked against the fp32 model on real test images before it is written.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from vggdeploy.artifacts import sibling
from vggdeploy.config import ExportConfig, familiarity_limits, variant_limits
from vggdeploy.data.batches import to_input_tensor
from vggdeploy.deploy.contract import (
    BATCH_AXIS,
    INPUT_NAME,
    OUTPUT_NAME,
    PROBABILITIES_NAME,
    RAW_INPUT_NAME,
    cap_ir_version,
    familiarity_threshold,
    probabilities,
    proto_metadata,
    temperature,
)
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.deploy.session import ProviderSettings, create_session, run_scored
from vggdeploy.deploy.weights_on_disk import write_embedded
from vggdeploy.errors import CheckFailed
from vggdeploy.export.golden import channels_last
from vggdeploy.export.graph import (
    GraphStats,
    attach_metadata,
    check_proto,
    familiarity_nodes,
    io_section,
    save_onnx,
)
from vggdeploy.hardware import median_ms
from vggdeploy.metrics.familiarity import flag_agreement, flag_failures
from vggdeploy.metrics.parity import ParityResult, compare_logits
from vggdeploy.model.archs import model_args_from_metadata
from vggdeploy.model.vgg import return_freed_memory
from vggdeploy.passes import session_pass
from vggdeploy.phases import PhaseLog


@dataclass(frozen=True)
class Fp32Reference:
    """What the variants are compared with, measured on the fp32 model's session before they are built, so that the
    session (the weights mapped and prepacked: 0.9 GB at 224 px) is closed while they are."""

    logits: np.ndarray
    familiarity: np.ndarray | None
    batch1_ms: float | None  # fp32 batch-1 latency on this CPU, for the int8 variant's speed-up (None: no int8)

    @classmethod
    def of(cls, session, images: torch.Tensor, spec: PreprocessSpec, batch: int, int8: bool) -> Fp32Reference:
        logits, familiarity = session_pass(session, images, spec, batch, "onnxruntime fp32, for the variants")
        return cls(logits, familiarity, _batch1_ms(session, images, spec) if int8 else None)


@dataclass(frozen=True)
class VariantInputs:
    """What the variants are built and checked with: real test images, and training images for int8 calibration. The
    fp32 model is never held whole through the variants (at 224 px it is 0.5 GB): ``fp32`` is its graph and metadata
    with the weights as references into files under ``weights_folder``, and ``fp32_path`` the written file, read
    where a variant needs the weights' values."""

    fp32: onnx.ModelProto
    reference: Fp32Reference
    images: torch.Tensor  # uint8 test images, (N, H, W) or (N, C, H, W), preprocessed a batch at a time when fed
    spec: PreprocessSpec  # the fp32 model's preprocessing
    labels: np.ndarray
    config: ExportConfig
    calibration_images: torch.Tensor | None  # uint8 training images the int8 variant is calibrated on
    batch: int  # images per ONNX Runtime call (passes.working_batch: what fits in memory)
    fp32_path: Path
    weights_folder: Path


@dataclass(frozen=True)
class VariantKind:
    """One row of the variant table: when it is built, how, what it must match, and within which limits."""

    name: str  # the file is model.<name>.onnx
    description: str  # the comparison, as reports print it
    wanted: Callable[[ExportConfig], bool]
    build: Callable[[VariantInputs], onnx.ModelProto]
    answers: Callable[[object, VariantInputs], tuple[np.ndarray, np.ndarray | None]]  # (session, given) -> outputs
    expected: Callable[[VariantInputs, np.ndarray], np.ndarray]  # the fp32 logits -> what the variant must output
    limits: Callable[[ExportConfig, int], dict]  # compare_logits tolerances, given the number of test images


@dataclass
class Variant:
    """A derived model that passed its check and was written (into export's staging folder: ``path`` is then moved
    to where the export will be)."""

    name: str
    parity: ParityResult
    path: Path
    bytes: int
    nodes: int
    cpu_batch1_ms: dict[str, float] | None = None  # int8: fp32 and int8 batch-1 latency on the CPU and the speed-up
    familiarity: dict | None = None  # its familiarity scores against the fp32 model's (metrics.flag_agreement)

    def summary(self) -> str:
        speed = ""
        if self.cpu_batch1_ms:
            speed = (
                f"; CPU batch 1: {self.cpu_batch1_ms['fp32']:.2f} ms fp32 -> {self.cpu_batch1_ms['int8']:.2f} ms int8 "
                f"({self.cpu_batch1_ms['speedup']:.2f}x)"
            )
        familiarity = ""
        if self.familiarity:
            familiarity = (
                f"; familiarity max |diff| {self.familiarity['max_abs_diff']:.3g}, flags agree "
                f"{self.familiarity['flag_agreement']:.2%}"
            )
        return self.parity.format() + familiarity + speed

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "bytes": self.bytes,
            "nodes": self.nodes,
            "parity": self.parity.to_dict(),
            "cpu_batch1_ms": self.cpu_batch1_ms,
            "familiarity": self.familiarity,
            "summary": self.summary(),
        }


def _fp32_metadata(given: VariantInputs) -> dict:
    return proto_metadata(given.fp32, "the exported fp32 model")


def _fp32_temperature(given: VariantInputs) -> float:
    return temperature(_fp32_metadata(given))


def _logits_to_probabilities(given: VariantInputs, logits: np.ndarray) -> np.ndarray:
    return probabilities(logits.astype(np.float64), _fp32_temperature(given)).astype(np.float32)


VARIANT_KINDS = (
    VariantKind(
        "fp16",
        "fp16 vs fp32 (onnxruntime)",
        lambda config: config.fp16,
        lambda given: to_fp16(onnx.load(str(given.fp32_path)), shapes_from=given.fp32),
        lambda session, given: _preprocessed_pass(session, given, "fp16"),
        lambda given, logits: logits,
        lambda config, images: variant_limits(config, "fp16", images),
    ),
    VariantKind(
        "int8",
        "int8 vs fp32 (onnxruntime)",
        lambda config: config.int8,
        lambda given: to_int8(
            given.fp32_path,
            familiarity_nodes(given.fp32),
            _calibration_inputs(given),
            min(INT8_CALIBRATION_BATCH, given.batch),
        ),
        lambda session, given: _preprocessed_pass(session, given, "int8"),
        lambda given, logits: logits,
        lambda config, images: variant_limits(config, "int8", images),
    ),
    VariantKind(
        "preprocess",
        "uint8 in-graph preprocessing vs numpy preprocessing + fp32",
        lambda config: config.with_preprocessing,
        lambda given: with_preprocessing(given.fp32, given.spec, _fp32_temperature(given)),
        lambda session, given: run_scored(session, channels_last(given.images).numpy(), given.batch),
        _logits_to_probabilities,
        lambda config, images: {"atol": config.preprocessing_atol},
    ),
)


def build_variants(given: VariantInputs, model_path: Path, phases: PhaseLog) -> list[Variant]:
    """Build, check and write beside ``model_path`` every variant the config asks for, one at a time, each dropped
    once written (at 224 px each is a copy of the model). Raises CheckFailed at the first that fails; export's
    staging folder then goes with what was written."""
    reference, reference_familiarity = given.reference.logits, given.reference.familiarity
    threshold = familiarity_threshold(_fp32_metadata(given))
    built: list[Variant] = []
    for kind in VARIANT_KINDS:
        if not kind.wanted(given.config):
            continue
        with phases.phase(f"variant {kind.name}"):
            proto = kind.build(given)
            session = _cpu_session(proto, given.weights_folder)
            outputs, familiarity = kind.answers(session, given)
            parity = compare_logits(
                kind.description,
                kind.expected(given, reference),
                outputs,
                given.labels,
                **kind.limits(given.config, len(given.labels)),
            )
            if not parity:
                raise CheckFailed(f"variant check: {parity.format()}")
            if threshold is not None:
                limits = familiarity_limits(kind.name, len(given.labels))
                familiarity = {**flag_agreement(reference_familiarity, familiarity, threshold), **limits}
                problems = flag_failures(familiarity, **limits)
                if problems:
                    raise CheckFailed(f"variant check: {kind.name}: {'; '.join(problems)}")
            speed = None
            if kind.name == "int8":  # what int8 buys on this CPU, next to the fp32 model it replaces
                fp32_ms, int8_ms = given.reference.batch1_ms, _batch1_ms(session, given.images, given.spec)
                speed = {"fp32": fp32_ms, "int8": int8_ms, "speedup": fp32_ms / int8_ms}
            del session
            built.append(_write(kind.name, proto, parity, speed, model_path, given, familiarity))
            del proto  # not alive through the next variant's build (the fp16 model is 0.26 GB at 224 px)
            return_freed_memory()
    return built


def _preprocessed_pass(session, given: VariantInputs, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    return session_pass(session, given.images, given.spec, given.batch, f"onnxruntime {name}")


def _references_weights(proto: onnx.ModelProto) -> bool:
    """Whether the graph's weights are references to files (the fp32 graph and what is built on it without them)."""
    return any(tensor.data_location == TensorProto.EXTERNAL for tensor in proto.graph.initializer)


def _cpu_session(proto: onnx.ModelProto, weights_folder: Path):
    """A CPU session on a variant: from its bytes, or, for a graph whose weights are references into files under
    ``weights_folder`` (the preprocessing variant), from the graph written there and checked by onnx's checker
    first (a check in memory cannot read the weights)."""
    if not _references_weights(proto):
        return create_session(proto.SerializeToString(), ProviderSettings(provider="cpu"))
    graph = weights_folder / "variant.onnx"
    onnx.save(proto, str(graph))
    check_proto(graph)
    return create_session(graph, ProviderSettings(provider="cpu"))


def _write(
    name: str,
    proto: onnx.ModelProto,
    parity: ParityResult,
    speed: dict | None,
    model_path: Path,
    given: VariantInputs,
    familiarity: dict | None,
) -> Variant:
    """Write ``model.<name>.onnx`` beside the fp32 model with its own metadata, every weight inside it."""
    metadata = proto_metadata(given.fp32, str(model_path))
    metadata["export"] = {**metadata["export"], "variant": name}
    metadata["parity"] = {**parity.to_dict(), "flips": []}
    if name == "preprocess":
        metadata["io"] = io_section(model_args_from_metadata(metadata), raw_input=True)
    attach_metadata(proto, metadata)
    path = sibling(model_path, name)
    if _references_weights(proto):
        write_embedded(proto, given.weights_folder, path)
    else:
        save_onnx(proto, path)
    return Variant(name, parity, path, path.stat().st_size, GraphStats.of(proto).nodes, speed, familiarity)


def _batch1_ms(session, images: torch.Tensor, spec: PreprocessSpec, repeats: int = 20) -> float:
    """Median latency of the session on the first of the uint8 ``images``, preprocessed, alone."""
    name, single = session.get_inputs()[0].name, to_input_tensor(images[:1], spec).numpy()
    return median_ms(lambda: session.run(None, {name: single}), repeats)


def to_fp16(fp32: onnx.ModelProto, shapes_from: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """fp16 weights and activations, fp32 inputs and outputs (a Cast at each end); the familiarity score's own nodes
    stay fp32. ``shapes_from``: the same graph with its weights left in their file, on which onnx infers the shapes
    the converter reads (the converter's own inference on the whole model copies it: 0.5 GB at 224 px)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if shapes_from is not None:
        inferred = onnx.shape_inference.infer_shapes(shapes_from)
        del fp32.graph.value_info[:]
        fp32.graph.value_info.extend(inferred.graph.value_info)
    proto = convert_float_to_float16(
        fp32,
        keep_io_types=True,
        disable_shape_infer=shapes_from is not None,
        node_block_list=familiarity_nodes(fp32),
    )
    _drop_repeated_nodes(proto)
    cap_ir_version(proto)
    return proto


def _drop_repeated_nodes(proto: onnx.ModelProto) -> None:
    """Remove nodes identical to an earlier one. The fp16 converter inserts the same Cast once for each kept-fp32
    consumer of a tensor (ONNX Runtime 1.31.1's ``float16.py``), and ONNX Runtime refuses two nodes of one name."""
    seen: set[bytes] = set()
    kept = []
    for node in proto.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            kept.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)


def int8_calibration_images(training_images: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` training images (never test images), evenly strided, as a tensor of their own: export drops the rest
    of the training split once torch's passes are done."""
    step = max(1, len(training_images) // count)
    return training_images[::step][:count].clone()


def _calibration_inputs(given: VariantInputs) -> np.ndarray:
    """The int8 calibration images preprocessed as at test time."""
    return to_input_tensor(given.calibration_images, given.spec).numpy()


INT8_CALIBRATION_BATCH = 32  # images per calibration run, fewer where the working batch is smaller

# How the weights may be stored: ONNX Runtime's weight type and whether its range is reduced to 7 bits. The variant
# stores them as VARIANT_INT8_WEIGHTS says; scripts/int8_saturation.py measures the others against it.
INT8_WEIGHTS = {"s8 in 7 bits": ("QInt8", True), "s8": ("QInt8", False), "u8": ("QUInt8", False)}
VARIANT_INT8_WEIGHTS = "s8 in 7 bits"


def to_int8(
    fp32: Path,
    excluded: list[str],
    calibration: np.ndarray,
    batch: int = INT8_CALIBRATION_BATCH,
    weights: str = VARIANT_INT8_WEIGHTS,
) -> onnx.ModelProto:
    """Static QDQ quantisation of the fp32 model file: s8 per-channel weights in 7 bits, u8 activations, MinMax
    calibration (``batch`` images per calibration run: the ranges are minima and maxima over all of them, whatever
    the batch). ``excluded``: the nodes that stay fp32 (the familiarity score's).

    The 7 bits (``reduce_range``) make the file answer alike on every CPU: without VNNI (AVX2, AVX-512 before
    Cascade Lake) ONNX Runtime multiplies u8 x s8 pairs into 16 bits, which full-range weights overflow (saturation),
    and the quick model's agreement with fp32 fell from 99.59 % to 99.41 % there; with 7-bit weights no pair can
    overflow, and the kernels keep their speed (BENCHMARKS.md, "int8 on CPUs without VNNI"). ``weights``: a key of
    INT8_WEIGHTS."""
    weight_type, reduce_range = INT8_WEIGHTS[weights]
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration[i : i + batch] for i in range(0, len(calibration), batch))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as folder:
        prepared, target = (Path(folder) / name for name in ("prepared.onnx", "int8.onnx"))
        # Shape inference only: the graph is onnxsim's already, and ONNX Runtime's optimisation pass here would load
        # the model into one more session. Weights in files of their own: no step serialises the model whole.
        quant_pre_process(
            str(fp32), str(prepared), skip_optimization=True, skip_symbolic_shape=True, save_as_external_data=True
        )
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType[weight_type],
            activation_type=QuantType.QUInt8,
            reduce_range=reduce_range,
            nodes_to_exclude=excluded,  # quant_pre_process keeps the node names
            use_external_data_format=True,
        )
        proto = onnx.load(str(target))
    cap_ir_version(proto)
    return proto


def with_preprocessing(fp32: onnx.ModelProto, spec: PreprocessSpec, temperature: float = 1.0) -> onnx.ModelProto:
    """Prepend uint8 (batch, height, width) gray or (batch, height, width, 3) RGB -> resize -> normalise, append
    softmax(logits / temperature): a service only decodes, and reads calibrated probabilities (and the familiarity
    score, where the model has it)."""
    opset = next(o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx"))
    per_channel = [] if spec.channels == 1 else [1, spec.channels, 1, 1]
    constants = [
        helper.make_tensor("pre_scale", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor("pre_mean", TensorProto.FLOAT, per_channel, list(spec.mean)),
        helper.make_tensor("pre_std", TensorProto.FLOAT, per_channel, list(spec.std)),
        helper.make_tensor("pre_axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("pre_hw", TensorProto.INT64, [2], [spec.height, spec.width]),
        helper.make_tensor("post_temperature", TensorProto.FLOAT, [], [temperature]),
    ]
    resize_mode = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    if (
        opset >= 18
    ):  # Resize's axes: fixed (height, width) sizes, no shape arithmetic that a GPU provider leaves to the CPU
        resize = [
            helper.make_node(
                "Resize", ["pre_nchw", "", "", "pre_hw"], ["pre_resized"], axes=[2, 3], antialias=0, **resize_mode
            )
        ]
    else:
        constants += [
            helper.make_tensor("pre_start", TensorProto.INT64, [1], [0]),
            helper.make_tensor("pre_end", TensorProto.INT64, [1], [2]),
        ]
        resize = [
            helper.make_node("Shape", ["pre_nchw"], ["pre_shape"]),
            helper.make_node("Slice", ["pre_shape", "pre_start", "pre_end"], ["pre_nc"]),
            helper.make_node("Concat", ["pre_nc", "pre_hw"], ["pre_sizes"], axis=0),
            helper.make_node("Resize", ["pre_nchw", "", "", "pre_sizes"], ["pre_resized"], **resize_mode),
        ]
    nodes = [
        helper.make_node("Cast", [RAW_INPUT_NAME], ["pre_float"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["pre_float", "pre_scale"], ["pre_unit"]),
        helper.make_node("Unsqueeze", ["pre_unit", "pre_axes"], ["pre_nchw"])
        if spec.channels == 1
        else helper.make_node("Transpose", ["pre_unit"], ["pre_nchw"], perm=[0, 3, 1, 2]),
        *resize,
        helper.make_node("Sub", ["pre_resized", "pre_mean"], ["pre_centred"]),
        helper.make_node("Div", ["pre_centred", "pre_std"], [INPUT_NAME]),
    ]
    graph = onnx.GraphProto()
    graph.CopyFrom(fp32.graph)
    del graph.input[:]
    raw_shape = [BATCH_AXIS, "height", "width"] + ([] if spec.channels == 1 else [spec.channels])
    graph.input.append(helper.make_tensor_value_info(RAW_INPUT_NAME, TensorProto.UINT8, raw_shape))
    graph.initializer.extend(constants)
    original_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(
        [
            *nodes,
            *original_nodes,
            helper.make_node("Div", [OUTPUT_NAME, "post_temperature"], ["post_scaled"]),
            helper.make_node("Softmax", ["post_scaled"], [PROBABILITIES_NAME], axis=1),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(PROBABILITIES_NAME, TensorProto.FLOAT, [BATCH_AXIS, None]))
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = (
        fp32.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    )
    graph.output.extend(fp32.graph.output[1:])  # the familiarity score, where the model has it
    return helper.make_model(graph, opset_imports=list(fp32.opset_import), ir_version=fp32.ir_version)
