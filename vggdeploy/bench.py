"""The ``vggdeploy bench`` stage: latency and throughput of torch and ONNX Runtime, timed the same way.

Both sides get device-resident inputs (IO binding on the ONNX Runtime side), warm-up runs are excluded, and each
timed run ends with a device synchronisation; cold start (model/session creation + first run) is reported apart.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vggdeploy.archs import ModelArgs
from vggdeploy.checkpoint import checkpoint_beside
from vggdeploy.checkpoint import load_model as load_checkpoint_model
from vggdeploy.data import load_split, to_model_input
from vggdeploy.errors import UsageError
from vggdeploy.graph import deployment_versions
from vggdeploy.model import summarize
from vggdeploy.preprocess import PreprocessSpec
from vggdeploy.report import markdown_table, plot_bench, write_json, write_text
from vggdeploy.runtime import SessionOptions, create_session, cuda_driver_present, read_metadata

PEAK_TFLOPS = {  # dense peaks per precision, SXM parts; None where unknown (CPUs)
    "H100": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.0},
    "H200": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0},
}
CPU_ENGINES = ("torch-cpu-fp32", "ort-cpu-fp32", "ort-cpu-int8")
GPU_ENGINES = ("torch-cuda-fp32", "torch-cuda-tf32", "torch-cuda-fp16-cl", "ort-cuda-fp32", "ort-cuda-fp16", "ort-cuda-fp16-nhwc-graph")
COMPILE_ENGINE = "torch-cuda-fp16-compile"


@dataclass(frozen=True)
class Measurement:
    engine: str
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_second: float
    peak_fraction: float | None


@dataclass(frozen=True)
class ColdStart:
    engine: str
    create_seconds: float  # model load / session creation
    first_run_seconds: float  # first inference at the smallest batch (kernel selection, allocation)


@dataclass
class BenchReport:
    model: str
    device: str
    versions: dict
    gflops_per_image: float
    measurements: list[Measurement]
    cold_starts: list[ColdStart]
    skipped: dict[str, str]  # engine -> why it did not run
    cpu_peak_gflops: float | None = None  # measured fp32 matrix-product rate: the CPU engines' "peak"

    def format(self) -> str:
        columns = ["engine", "batch", "p50_ms", "p90_ms", "p99_ms", "images_per_second", "peak_fraction"]
        cpu_peak = f" (CPU fp32 peak fraction: of a {self.cpu_peak_gflops:.0f} GFLOP/s matrix product measured here)" if self.cpu_peak_gflops else ""
        text = f"bench of {self.model} on {self.device}{cpu_peak}\n" + markdown_table([asdict(m) for m in self.measurements], columns)
        text += "\ncold start:\n" + markdown_table([asdict(c) for c in self.cold_starts], ["engine", "create_seconds", "first_run_seconds"])
        text += "".join(f"\nskipped {engine}: {why}" for engine, why in self.skipped.items())
        return text


def _timed_runs(run: Callable[[], None], seconds: float, min_runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < 10_000):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def _torch_runner(model: torch.nn.Module, engine: str, inputs: np.ndarray, batch: int) -> Callable[[], None]:
    cuda = "cuda" in engine
    device = torch.device("cuda" if cuda else "cpu")
    x = torch.from_numpy(inputs[:batch]).to(device)
    if "fp16" in engine:
        x = x.half().contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.no_grad():
            model(x)
        if cuda:
            torch.cuda.synchronize()

    return run


def _prepare_torch(checkpoint: Path, engine: str) -> torch.nn.Module:
    model, _ = load_checkpoint_model(checkpoint)
    if "cuda" in engine:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = "tf32" in engine  # else strict fp32
        torch.backends.cudnn.benchmark = True
        model = model.cuda()
        if "fp16" in engine:
            model = model.half().to(memory_format=torch.channels_last)
        if "compile" in engine:
            model = torch.compile(model, mode="max-autotune")
    return model


def engine_session(model_path: Path, engine: str):
    variant = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    name = next((file for key, file in variant.items() if key in engine), "model.onnx")
    path = model_path.with_name(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} not found beside the model (export with --{name.split('.')[1]})")
    options = SessionOptions(
        provider="cuda" if "cuda" in engine else "cpu",
        prefer_nhwc="nhwc" in engine,
        enable_cuda_graph="graph" in engine,
    )
    return create_session(path, options)


class BoundOrtRun:
    """One timed ONNX Runtime call with IO binding: input and output stay on the engine's device, and each call waits
    for the device. With CUDA graphs every batch size gets its own graph id, so a graph captured at one batch size is
    never replayed at another (ONNX Runtime's default id 0 holds just one graph)."""

    def __init__(self, session, engine: str, inputs: np.ndarray, batch: int) -> None:
        import onnxruntime as ort

        device = "cuda" if "cuda" in engine else "cpu"
        self.session = session
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(inputs[:batch]), device, 0)
        output = session.get_outputs()[0]
        self.output = ort.OrtValue.ortvalue_from_shape_and_type([batch, output.shape[1]], np.float32, device, 0)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(session.get_inputs()[0].name, value)
        self.binding.bind_ortvalue_output(output.name, self.output)
        self.run_options = ort.RunOptions()
        if "graph" in engine:
            self.run_options.add_run_config_entry("gpu_graph_id", str(batch))

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding, self.run_options)
        self.binding.synchronize_outputs()

    def logits(self) -> np.ndarray:
        return self.output.numpy()


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls, after one untimed call (a ceiling, not a latency distribution)."""
    return min(_timed_runs(run, seconds=0.0, min_runs=repeats, warmup=1))


def cpu_fp32_gflops(size: int = 2048, repeats: int = 3) -> float:
    """This CPU's fp32 compute ceiling as torch's matrix product reaches it (a CPU has no spec-sheet peak to look up)."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def _peak_fraction(engine: str, images_per_second: float, gflops: float, cpu_peak_gflops: float | None) -> float | None:
    if "cpu" in engine:  # int8 has no fp32 peak to compare with
        return None if "int8" in engine or not cpu_peak_gflops else images_per_second * gflops / cpu_peak_gflops
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    peaks = next((p for key, p in PEAK_TFLOPS.items() if key in name), None)
    if peaks is None:
        return None
    precision = next((p for p in ("fp16", "tf32") if p in engine), "fp32")
    return images_per_second * gflops * 1e9 / (peaks[precision] * 1e12)


def default_engines(compile_torch: bool = False) -> tuple[str, ...]:
    if torch.cuda.is_available() and cuda_driver_present():
        return (*GPU_ENGINES, *((COMPILE_ENGINE,) if compile_torch else ()), "ort-cpu-fp32")
    return CPU_ENGINES


def run_bench(
    model_path: str | Path, checkpoint: str | Path | None = None, engines: tuple[str, ...] | None = None,
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128, 256), seconds: float = 2.0, min_runs: int = 5, warmup: int = 3,
    report_dir: str | Path | None = None, data_dir=None,
) -> BenchReport:  # fmt: skip
    """Measure every engine at every batch size on real test images."""

    model_path = Path(model_path)
    metadata = read_metadata(model_path)
    checkpoint = Path(checkpoint) if checkpoint else checkpoint_beside(model_path)
    engines = engines or default_engines()
    unknown = set(engines) - {*CPU_ENGINES, *GPU_ENGINES, COMPILE_ENGINE}
    if unknown or not batch_sizes or min(batch_sizes) < 1:
        raise UsageError(f"unknown engines {sorted(unknown)} (valid: {', '.join((*CPU_ENGINES, *GPU_ENGINES, COMPILE_ENGINE))})"
                         if unknown else "batch sizes must be positive")  # fmt: skip
    spec = PreprocessSpec.from_metadata(metadata["preprocessing"])
    images, _ = load_split("test", data_dir)
    inputs = to_model_input(images[: max(batch_sizes)], spec).numpy()
    if len(inputs) < max(batch_sizes):
        inputs = np.resize(inputs, (max(batch_sizes), *inputs.shape[1:]))
    args = ModelArgs.from_dict({k: v for k, v in metadata["model"].items() if k != "name"})
    cpu_peak = cpu_fp32_gflops() if any("cpu" in engine and "int8" not in engine for engine in engines) else None
    report = BenchReport(str(model_path), device_name(), deployment_versions(), summarize(args).gflops, [], [], {}, cpu_peak)
    for engine in engines:
        if "cuda" in engine and not torch.cuda.is_available():
            report.skipped[engine] = "no CUDA GPU"
            continue
        start = time.perf_counter()
        try:
            backend = _prepare_torch(checkpoint, engine) if engine.startswith("torch") else engine_session(model_path, engine)
        except FileNotFoundError as missing:
            report.skipped[engine] = str(missing)
            continue
        created = time.perf_counter() - start
        make_runner = _torch_runner if engine.startswith("torch") else BoundOrtRun
        for position, batch in enumerate(sorted(set(batch_sizes))):  # one binding per size: a CUDA graph id each
            run = make_runner(backend, engine, inputs, batch)
            if position == 0:
                first = time.perf_counter()
                run()
                report.cold_starts.append(ColdStart(engine, created, time.perf_counter() - first))
            times = np.asarray(_timed_runs(run, seconds, min_runs, warmup)) * 1e3
            rate = batch / (times.mean() / 1e3)
            report.measurements.append(Measurement(
                engine, batch, len(times), float(np.percentile(times, 50)), float(np.percentile(times, 90)),
                float(np.percentile(times, 99)), float(times.mean()), rate,
                _peak_fraction(engine, rate, report.gflops_per_image, report.cpu_peak_gflops),
            ))  # fmt: skip
    _write_reports(Path(report_dir) if report_dir else model_path.parent / "reports", report)
    return report


def _write_reports(folder: Path, report: BenchReport) -> None:
    write_json(folder / "bench.json", asdict(report))
    write_text(folder / "bench.md", f"# Benchmark\n\nModel `{report.model}` on {report.device}; versions "
               f"{report.versions}; {report.gflops_per_image:.2f} GFLOPs per image.\n\n```\n{report.format()}\n```\n")  # fmt: skip
    plot_bench(folder / "bench.png", report.measurements, f"{Path(report.model).parent.parent.name} on {report.device}")
