"""The engines ``vggdeploy bench`` can time, by name (``<framework>-<device>-<precision>[-<option>...]``), and the
sets it runs by default. torch-free, so a misspelt ``--engines`` is refused before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass

from vggdeploy.config import BenchConfig
from vggdeploy.errors import UsageError
from vggdeploy.hardware import torch_sees_cuda

CPU_ENGINES = ("torch-cpu-fp32", "ort-cpu-fp32", "ort-cpu-int8")


OPENVINO_ENGINES = ("ort-openvino-fp32", "ort-openvino-int8")  # the openvino extra, on Intel CPUs; LATENCY hint


OPENVINO_THROUGHPUT = tuple(f"{engine}-throughput" for engine in OPENVINO_ENGINES)  # named only: the hint's cost


GPU_ENGINES = (
    "torch-cuda-fp32",
    "torch-cuda-tf32",
    "torch-cuda-fp16-cl",
    "ort-cuda-fp32",
    "ort-cuda-fp16",
    "ort-cuda-fp16-nhwc-graph",
)


COMPILE_ENGINE = "torch-cuda-fp16-compile"


KNOWN_ENGINES = (*CPU_ENGINES, *OPENVINO_ENGINES, *OPENVINO_THROUGHPUT, *GPU_ENGINES, COMPILE_ENGINE)


# A set named alone with --engines: its engines that cannot run here are skipped with their reason, as by default
# (the CPU set on a machine with a GPU, say, which the default there leaves out).
ENGINE_SETS = {"cpu": (*CPU_ENGINES, *OPENVINO_ENGINES), "gpu": (*GPU_ENGINES, "ort-cpu-fp32")}


@dataclass(frozen=True)
class Engine:
    """What an engine name says, parsed once: ``<framework>-<device>-<precision>[-<option>...]``."""

    name: str
    framework: str  # torch | ort
    device: str  # cpu | cuda | openvino (ONNX Runtime's OpenVINO provider on the CPU)
    precision: str  # fp32 | tf32 | fp16 | int8
    channels_last: bool = False  # torch "-cl"; ONNX Runtime "-nhwc" (the CUDA EP's prefer_nhwc)
    cuda_graph: bool = False  # ONNX Runtime "-graph": replay a captured CUDA graph
    compiled: bool = False  # torch "-compile": torch.compile max-autotune
    performance_hint: str = "auto"  # OpenVINO "-throughput"; auto is LATENCY

    @classmethod
    def parse(cls, name: str) -> Engine:
        if name not in KNOWN_ENGINES:
            raise UsageError(
                f"unknown engine {name!r} (valid: {', '.join(KNOWN_ENGINES)}; or one set alone: {', '.join(ENGINE_SETS)})"
            )
        framework, device, precision, *options = name.split("-")
        return cls(
            name,
            framework,
            device,
            precision,
            channels_last=bool({"cl", "nhwc"} & set(options)),
            cuda_graph="graph" in options,
            compiled="compile" in options,
            performance_hint="throughput" if "throughput" in options else "auto",
        )

    @property
    def on_cpu(self) -> bool:
        return self.device in ("cpu", "openvino")

    @property
    def peak_precision(self) -> str:
        return "fp16" if self.compiled else self.precision


def chosen_engines(config: BenchConfig) -> tuple[tuple[str, ...], bool]:
    """The engine names to run, and whether each must run: names given one by one must; a set (named, or this
    machine's default: the GPU set with a GPU, else the CPU set) skips what cannot run here."""
    names = config.engines
    if names and not (len(names) == 1 and names[0] in ENGINE_SETS):
        if config.compile_torch:
            raise UsageError(
                f"--compile adds {COMPILE_ENGINE} to an engine set; with engines named one by one, name it"
            )
        for name in names:
            Engine.parse(name)  # refuses a misspelt name
        return names, True
    name = names[0] if names else "gpu" if torch_sees_cuda() else "cpu"
    compiled = (COMPILE_ENGINE,) if config.compile_torch else ()  # a GPU engine: skipped with its reason without one
    return (*ENGINE_SETS[name], *compiled), False
