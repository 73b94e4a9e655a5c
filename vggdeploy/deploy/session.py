"""ONNX Runtime sessions (one factory: provider choice, no silent fallback, quiet logs) and model loading.

Imports only numpy, onnx and onnxruntime, so ``vggdeploy run`` works on a machine without torch.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggdeploy.deploy.contract import (
    FAMILIARITY_NAME,
    INPUT_NAME,
    RAW_INPUT_NAME,
)
from vggdeploy.deploy.cpu import cpu_vendor
from vggdeploy.deploy.onnx_file import read_metadata
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.deploy.weights_on_disk import reference_weights
from vggdeploy.errors import DataError, ProviderUnavailable, UsageError, VggDeployError, memory_error

ORT_CHUNK = 64  # images per ONNX Runtime call when scoring many


def run_session(session, inputs: np.ndarray, chunk: int = ORT_CHUNK) -> np.ndarray:
    """Run a single-input session over many rows, ``chunk`` at a time: its first output (the logits)."""
    return run_scored(session, inputs, chunk)[0]


def run_scored(session, inputs: np.ndarray, chunk: int = ORT_CHUNK) -> tuple[np.ndarray, np.ndarray | None]:
    """The first output (the logits) and, for a model with the familiarity output, its scores (else None)."""
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: inputs[i : i + chunk]}) for i in range(0, len(inputs), chunk)]
    scored = len(session.get_outputs()) > 1
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]) if scored else None


CPU_FALLBACK_KEY = "session.disable_cpu_ep_fallback"  # ONNX Runtime's kOrtSessionOptionsDisableCPUEPFallback


QDQ_HANDLING_KEY = "session.disable_quant_qdq"  # ONNX Runtime's kOrtSessionOptionsDisableQuantQDQ
PREPACKING_KEY = "session.disable_prepacking"  # ONNX Runtime's kOrtSessionOptionsConfigDisablePrepacking
# ONNX Runtime's kOrtSessionOptionsModelExternalInitializersFileFolderPath: where a model given as bytes keeps its weights
EXTERNAL_WEIGHTS_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


PROVIDERS = ("auto", "cuda", "cpu", "openvino")


OPENVINO_INSTALL = "pip install 'vggdeploy[openvino]'"  # onnxruntime-ep-openvino, with its own OpenVINO runtime


PERFORMANCE_HINTS = ("auto", "latency", "throughput")  # OpenVINO's; auto = latency (see openvino_options)


@dataclass(frozen=True)
class ProviderSettings:
    """Execution-provider settings that matter for VGG (CUDA EP options follow ONNX Runtime's names)."""

    provider: str = "auto"  # auto | cuda | cpu | openvino
    use_tf32: bool = False  # off: strict fp32 parity; on: TF32 tensor cores for fp32 convolutions
    prefer_nhwc: bool = False  # CUDA EP: NHWC convolution kernels (fast with fp16 tensor cores)
    enable_cuda_graph: bool = False  # CUDA EP: replay one captured graph (needs fixed shapes and IO binding)
    # HEURISTIC (cuDNN's heuristic mode A) over EXHAUSTIVE (mode B since ORT 1.20, no benchmark): 1.69x the images per
    # second at batch 8 and 1.38x at 64 on an H200 for VGG-11-BN fp16, the same at 256 (BENCHMARKS.md, GPU speed)
    cudnn_conv_algo_search: str = "HEURISTIC"  # HEURISTIC | EXHAUSTIVE | DEFAULT
    intra_op_threads: int = 0  # CPU EP and OpenVINO threads; 0 = the provider's default
    performance_hint: str = "auto"  # OpenVINO: auto | latency | throughput
    profile_prefix: str = ""  # ONNX Runtime's own profiler on, its JSON written to <prefix>_<date>.json
    # CPU EP: copy the weights once into the layout its matrix kernels read (its runs a little faster); while the
    # session is created both copies are in memory (0.25 GB more at that moment for a 515 MB model)
    prepack_weights: bool = True
    extra: dict = field(default_factory=dict)  # more provider options, passed through

    def __post_init__(self) -> None:
        if self.performance_hint not in PERFORMANCE_HINTS:
            raise UsageError(
                f"performance hint must be one of {', '.join(PERFORMANCE_HINTS)}, got {self.performance_hint!r}"
            )
        if self.performance_hint != "auto" and self.provider != "openvino":
            raise UsageError("a performance hint applies to --provider openvino only")


def cuda_driver_present() -> bool:
    """True when an NVIDIA driver answers with at least one device (no ONNX Runtime log noise)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return libcuda.cuInit(0) == 0 and libcuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


@contextmanager
def captured_native_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 (ONNX Runtime logs there, not through Python)."""
    lines: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())


def _plain_text(log_lines: list[str]) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(log_lines))


def _fallback_reason(log_lines: list[str]) -> str:
    text = _plain_text(log_lines)
    match = re.search(r"with error: ([^\n]+)", text) or re.search(
        r"(Failed to create CUDAExecutionProvider[^\n]*?)\. ", text
    )
    return match.group(1).strip() if match else "ONNX Runtime did not say why"


@dataclass(frozen=True)
class Placement:
    """The nodes ONNX Runtime gave one execution provider (names are logged only when providers share a graph)."""

    provider: str
    node_count: int
    nodes: tuple[str, ...] = ()  # "OpType (node name)"


_PLACEMENT_HEADER = re.compile(r"^ (?:All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)")


def parse_node_placements(log_lines: list[str]) -> list[Placement]:
    """Read the "Node placements" block that ONNX Runtime logs at verbose level when a session is created."""
    placements: list[Placement] = []
    for line in _plain_text(log_lines).splitlines():
        _, marker, message = line.partition("VerifyEachNodeIsAssignedToAnEp] ")
        if not marker:
            continue
        if header := _PLACEMENT_HEADER.match(message):
            placements.append(Placement(header.group(1), int(header.group(2))))
        elif message.startswith("  ") and placements:
            last = placements[-1]
            placements[-1] = Placement(last.provider, last.node_count, (*last.nodes, message.strip()))
    return placements


def node_placements(model: str | bytes, providers: list) -> list[Placement]:
    """Where ONNX Runtime puts each node with these providers (one verbose session creation, its log parsed)."""
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    session_options.log_severity_level = 0
    with captured_native_stderr() as log, suppress(Exception):
        ort.InferenceSession(model, sess_options=session_options, providers=providers)
    return parse_node_placements(log)


def _cpu_nodes_message(placements: list[Placement]) -> str:
    on_cpu = [p for p in placements if p.provider == "CPUExecutionProvider"]
    count = sum(p.node_count for p in on_cpu)
    names = [name for p in on_cpu for name in p.nodes]
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    if not on_cpu:
        return "CUDA was asked for, but ONNX Runtime would leave nodes of this model to the CPU (--provider auto accepts that fallback)"
    total = sum(p.node_count for p in placements)
    return (
        f"CUDA was asked for, but ONNX Runtime would run {count} of {total} nodes on the CPU"
        f"{': ' + listed if listed else ''} (--provider auto accepts that fallback)"
    )


def openvino_devices() -> list:
    """The OpenVINO plugin registered with ONNX Runtime (once per process), and the CPU devices it offers."""
    import onnxruntime as ort

    try:
        import onnxruntime_ep_openvino as plugin
    except ImportError:
        raise ProviderUnavailable(
            f"OpenVINO was asked for, but its plugin is not installed: {OPENVINO_INSTALL}"
        ) from None
    name = plugin.get_ep_name()
    if not any(device.ep_name == name for device in ort.get_ep_devices()):
        with suppress(Exception):  # already registered under this name: get_ep_devices says what it offers
            ort.register_execution_provider_library(name, plugin.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == name and d.device.type == ort.OrtHardwareDeviceType.CPU]
    if not devices:
        raise ProviderUnavailable(
            f"OpenVINO was asked for, but its plugin offers no device on this CPU ({cpu_vendor()}): it runs on Intel "
            "CPUs (--provider cpu runs ONNX Runtime's own CPU provider)"
        )
    return devices


def openvino_hint(setting: str) -> str:
    """OpenVINO's performance hint. auto is LATENCY at every batch size: THROUGHPUT splits the cores into streams
    and one call runs on one stream, so a caller that waits for each call (``run``, ``check``, ``bench``, most
    services) gets half the speed on 2 cores (BENCHMARKS.md, "OpenVINO's hints"); it pays off for concurrent calls."""
    return "LATENCY" if setting == "auto" else setting.upper()


def openvino_options(options: ProviderSettings) -> dict[str, str]:
    """The plugin's provider options. Threads, hint and precision go through ``load_config`` (the CPU device's
    OpenVINO properties as JSON): the plugin ignores the older ``num_of_threads`` and ``num_streams`` options. The
    precision is f32 because the model file decides it: on CPUs with bf16 units (AVX-512 BF16, AMX) OpenVINO would
    otherwise run an fp32 model in bf16."""
    device = {"PERFORMANCE_HINT": openvino_hint(options.performance_hint), "INFERENCE_PRECISION_HINT": "f32"}
    if options.intra_op_threads:
        device["INFERENCE_NUM_THREADS"] = str(options.intra_op_threads)
    return {"load_config": json.dumps({"CPU": device}), **{k: str(v) for k, v in options.extra.items()}}


def session_options_for(options: ProviderSettings, on_cuda: bool, weights_folder: Path | None = None):
    """ONNX Runtime session options; quiet, with the caller's thread count.

    On CUDA the QDQ handling is switched off: the CUDA EP has no int8 Conv or Gemm, so keeping the int8 variant's
    QDQ pairs only leaves the dequantisation of its int32 biases, which the CUDA EP cannot run, to the CPU. Without
    it, ONNX Runtime folds every dequantisation of a constant into a float initializer before placing nodes, and the
    int8 variant runs wholly on the GPU with its int8 weights' values and its activations' quantisation kept.
    The CPU keeps the QDQ pairs: they are what its int8 kernels fuse.
    """
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3  # errors only; warnings about memcpy nodes etc. stay out of user output
    session_options.intra_op_num_threads = options.intra_op_threads
    if options.profile_prefix:
        session_options.enable_profiling = True
        session_options.profile_file_prefix = options.profile_prefix
    if on_cuda:
        session_options.add_session_config_entry(QDQ_HANDLING_KEY, "1")
    if not options.prepack_weights:
        session_options.add_session_config_entry(PREPACKING_KEY, "1")
    if weights_folder is not None:
        session_options.add_session_config_entry(EXTERNAL_WEIGHTS_FOLDER_KEY, str(weights_folder))
    return session_options


def cuda_provider_options(options: ProviderSettings) -> dict:
    """The CUDA execution provider's options, by ONNX Runtime's names."""
    return {
        "use_tf32": int(options.use_tf32),
        "prefer_nhwc": int(options.prefer_nhwc),
        "enable_cuda_graph": int(options.enable_cuda_graph),
        "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
        **options.extra,
    }


def create_session(
    model: str | Path | bytes, options: ProviderSettings = ProviderSettings(), weights_on_disk: bool = False
):
    """An InferenceSession on the requested provider.

    ``cuda`` and ``openvino`` are strict: the provider failing to start, or any node left to the CPU EP, is an error
    that says why (ONNX Runtime itself only warns). ``auto`` takes CUDA where a GPU answers and lets ONNX Runtime
    place the rest. ``weights_on_disk`` (a model file, CPU or CUDA): ONNX Runtime maps the weights from the file
    instead of reading the whole file into memory first (the same answers bit for bit, less memory at the peak).
    """
    import onnxruntime as ort

    if options.provider not in PROVIDERS:
        raise UsageError(f"provider must be one of {', '.join(PROVIDERS)}, got {options.provider!r}")
    if options.provider == "openvino":
        return _openvino_session(model, options)
    source, weights_folder = _source(model, weights_on_disk)
    strict = options.provider == "cuda"
    if strict and not cuda_driver_present():
        raise ProviderUnavailable("CUDA was asked for, but no NVIDIA driver with a GPU was found (libcuda.so.1)")
    use_cuda = strict or (options.provider == "auto" and cuda_driver_present())
    session_options = session_options_for(options, on_cuda=use_cuda, weights_folder=weights_folder)
    providers: list = ["CPUExecutionProvider"]
    if use_cuda:
        cuda_options = cuda_provider_options(options)
        # Strict: no CPU EP in the list, and ONNX Runtime refuses to create a session with any node on the CPU.
        providers = [("CUDAExecutionProvider", cuda_options), *([] if strict else providers)]
        if strict:
            session_options.add_session_config_entry(CPU_FALLBACK_KEY, "1")
        if hasattr(ort, "preload_dlls"):
            with captured_native_stderr():
                ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels that torch installs
    try:
        with captured_native_stderr() as log:
            session = ort.InferenceSession(source, sess_options=session_options, providers=providers)
    except Exception as error:
        if strict and "Failed to create CUDAExecutionProvider" in _plain_text(log):
            raise ProviderUnavailable(
                f"CUDA was asked for, but ONNX Runtime could not start it: {_fallback_reason(log)}"
            ) from None
        if strict and "fallback to CPU EP has been explicitly disabled" in str(error):
            raise ProviderUnavailable(
                _cpu_nodes_message(node_placements(source, [providers[0], "CPUExecutionProvider"]))
            ) from None
        raise _load_failure(model, error) from None
    if use_cuda and session.get_providers()[0] != "CUDAExecutionProvider":
        if strict:  # ONNX Runtime's own check above should make this unreachable; never hand back a CPU session
            raise ProviderUnavailable(f"CUDA was asked for, but ONNX Runtime fell back to CPU: {_fallback_reason(log)}")
        cpu_options = session_options_for(options, on_cuda=False, weights_folder=weights_folder)
        session = ort.InferenceSession(source, sess_options=cpu_options, providers=["CPUExecutionProvider"])
    return session


def _source(model: str | Path | bytes, weights_on_disk: bool) -> tuple[str | bytes, Path | None]:
    """What ONNX Runtime is given, and the folder its external weights are resolved in (for a model given as bytes
    whose weights are references into its file)."""
    if not isinstance(model, Path):
        return model, None
    if weights_on_disk:
        return reference_weights(model).SerializeToString(), model.resolve().parent
    return str(model), None


def _openvino_session(model: str | Path | bytes, options: ProviderSettings):
    """Strict OpenVINO: its CPU device through the plugin API, no CPU EP fallback for any node."""
    import onnxruntime as ort

    session_options = session_options_for(options, on_cuda=False)
    session_options.add_provider_for_devices(openvino_devices()[:1], openvino_options(options))
    session_options.add_session_config_entry(CPU_FALLBACK_KEY, "1")
    source = str(model) if isinstance(model, Path) else model
    try:
        with captured_native_stderr():
            return ort.InferenceSession(source, sess_options=session_options)
    except Exception as error:
        if "fallback to CPU EP has been explicitly disabled" in str(error):
            raise ProviderUnavailable(
                "OpenVINO was asked for, but ONNX Runtime would leave nodes of this model to its CPU provider "
                "(--provider cpu runs them all there)"
            ) from None
        raise _load_failure(model, error) from None


def _load_failure(model: str | Path | bytes, error: Exception) -> VggDeployError:
    """Why ONNX Runtime could not create a session: too little memory for the model, or a file it cannot read."""
    name = "model bytes" if isinstance(model, bytes) else str(model)
    too_large = memory_error(error, f"{name} needs more free memory than this machine has")
    return too_large or DataError(f"{name}: ONNX Runtime cannot load it ({str(error).splitlines()[0][:200]})")


def session_provider(session) -> str:
    first = session.get_providers()[0]
    return {"CUDAExecutionProvider": "cuda", "OpenVINOExecutionProvider": "openvino"}.get(first, "cpu")


@dataclass
class LoadedModel:
    """A session with the model's own description: labels, preprocessing and input contract."""

    path: Path
    session: object
    metadata: dict

    @property
    def labels(self) -> list[str]:
        return self.metadata["labels"]

    @property
    def takes_raw_images(self) -> bool:
        return self.metadata["io"]["input"]["name"] == RAW_INPUT_NAME


def open_model(
    path: str | Path, options: ProviderSettings = ProviderSettings(), weights_on_disk: bool = False
) -> LoadedModel:
    """Open an exported model and check that its graph matches its metadata (``weights_on_disk``: as
    ``create_session``'s)."""
    path = Path(path)
    metadata = read_metadata(path)
    session = create_session(path, options, weights_on_disk)
    check_metadata_against_graph(path, metadata, session)
    return LoadedModel(path, session, metadata)


def check_metadata_against_graph(path: Path, metadata: dict, session) -> None:
    """Refuse a model whose metadata contradicts its graph, or whose preprocessing numbers are unusable, before the
    first image meets it (one line, exit 3)."""
    try:
        spec = PreprocessSpec.from_metadata(metadata["preprocessing"])
    except DataError as error:
        raise DataError(f"{path}: {error}") from None
    expected = metadata["io"]["input"]["name"]
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].name != expected:
        raise DataError(
            f"{path}: the graph's inputs {[i.name for i in inputs]} do not match its metadata ({expected!r})"
        )
    graph_input = list(inputs[0].shape)
    if expected == INPUT_NAME:
        if graph_input[1:] != metadata["io"]["input"]["shape"][1:]:
            raise DataError(
                f"{path}: the graph's input shape {graph_input} does not match its metadata's io section "
                f"{metadata['io']['input']['shape']}"
            )
        made = [spec.channels, spec.height, spec.width]
        if made != graph_input[1:]:
            raise DataError(
                f"{path}: the metadata's preprocessing makes {'x'.join(map(str, made))} inputs, but the graph takes "
                f"{'x'.join(map(str, graph_input[1:]))}"
            )
    named = [output.name for output in outputs]
    if "familiarity" in metadata and named[1:] != [FAMILIARITY_NAME]:
        raise DataError(
            f"{path}: its metadata describes a {FAMILIARITY_NAME!r} output, but the graph's outputs are {named}"
        )
    classes = outputs[0].shape[-1] if outputs else None
    if isinstance(classes, int) and len(metadata["labels"]) != classes:
        raise DataError(
            f"{path}: the metadata names {len(metadata['labels'])} labels, but the graph outputs {classes} classes"
        )
