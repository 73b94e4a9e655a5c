"""The ``vggdeploy bench`` stage: latency and throughput of torch and ONNX Runtime, timed the same way.

Both sides get device-resident inputs (IO binding on the ONNX Runtime side), warm-up runs are excluded, and each
timed run ends with a device synchronisation; cold start (model/session creation + first run) is reported apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vggdeploy.artifacts import RunFolder, reports_folder, sibling
from vggdeploy.config import BenchConfig
from vggdeploy.data.batches import to_input_tensor
from vggdeploy.data.dataset import FASHION_MNIST_NAME, dataset_of, fashion_mnist
from vggdeploy.deploy.onnx_file import read_metadata, require_model_file
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.deploy.session import (
    ProviderSettings,
    create_session,
    openvino_devices,
    openvino_hint,
)
from vggdeploy.errors import ProviderUnavailable, UsageError
from vggdeploy.files import folder_lock
from vggdeploy.hardware import cpu_fp32_gflops, cpu_name, gpu_peak_tflops, peak_fraction, timed_runs, torch_sees_cuda
from vggdeploy.model.archs import model_args_from_metadata
from vggdeploy.model.checkpoint import load_checkpoint, rebuild_model
from vggdeploy.model.vgg import summarize
from vggdeploy.plots import plot_bench
from vggdeploy.report import markdown_table, write_json, write_text
from vggdeploy.verify.engines import Engine, chosen_engines
from vggdeploy.verify.kernel_profile import EngineProfile, KernelTime, engine_profile, format_profiles
from vggdeploy.versions import deployment_versions

NOISY_SPREAD = 1.5  # p90 / p50 above this: a tenth of the runs took half as long again as the median


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

    @property
    def spread(self) -> float:
        """p90 / p50: how far the slow tenth of the runs is from the median."""
        return self.p90_ms / self.p50_ms if self.p50_ms > 0 else float("inf")

    @property
    def noisy(self) -> bool:
        """Too spread to support a ratio: the machine was busy (or the engine unsteady) while it was timed."""
        return not self.spread <= NOISY_SPREAD


@dataclass(frozen=True)
class ColdStart:
    engine: str
    create_seconds: float  # model load / session creation
    first_run_seconds: float  # first inference at the smallest batch (kernel selection, allocation)


def _speed(measurement: Measurement) -> float:
    """Higher is faster: batch 1 is judged by p50 latency (what one request waits), larger batches by img/s."""
    return 1 / measurement.p50_ms if measurement.batch == 1 else measurement.images_per_second


def _versus(first: Measurement, second: Measurement) -> str:
    """The two figures _speed compares, in their units."""
    if first.batch == 1:
        return f"{first.p50_ms:.3g} vs {second.p50_ms:.3g} ms p50"
    return f"{first.images_per_second:,.0f} vs {second.images_per_second:,.0f} img/s"


def ratio_noise(*measurements: Measurement) -> str:
    """ "" when every figure is steady, else which ones are too spread for their ratio to mean anything."""
    noisy = [f"{m.engine} p90 {m.spread:.1f}x p50" for m in measurements if m.noisy]
    return f"no ratio: noisy ({', '.join(noisy)})" if noisy else ""


@dataclass
class BenchReport:
    model: str
    device: str
    versions: dict
    gflops_per_image: float
    measurements: list[Measurement]
    cold_starts: list[ColdStart]
    skipped: dict[str, str]  # engine -> why it did not run (default engine sets only; asked-for engines must run)
    cpu_peak_gflops: float | None = None  # measured fp32 matrix-product rate: the CPU engines' "peak"
    cpu_threads: int = 0  # the same for torch, ONNX Runtime's CPU provider and OpenVINO in one run
    engine_settings: dict[str, str] = field(default_factory=dict)  # CPU engine -> its threads (and OpenVINO hint)
    engine_files: dict[str, dict] = field(default_factory=dict)  # engine -> {"file", "mb", "accuracy_change_pp"}
    profiles: list[EngineProfile] = field(default_factory=list)  # bench --profile: each engine's kernels

    @classmethod
    def from_json(cls, saved: dict) -> BenchReport:
        """A report as bench.json saved it (the GPU validation reads the reports its steps wrote)."""
        derived = ("spread", "noisy")
        return cls(
            **{
                **{key: value for key, value in saved.items() if key != "noise_warning"},
                "measurements": [
                    Measurement(**{k: v for k, v in m.items() if k not in derived}) for m in saved["measurements"]
                ],
                "cold_starts": [ColdStart(**c) for c in saved["cold_starts"]],
                "profiles": [
                    EngineProfile(**{**p, "kernels": [KernelTime(**k) for k in p["kernels"]]})
                    for p in saved.get("profiles", [])
                ],
            }
        )

    def cpu_table(self) -> list[dict]:
        """One row per CPU engine: batch-1 latency, throughput at 8/32/256, peak fraction, cold start, size, accuracy."""
        rows = []
        cold = {c.engine: c.create_seconds + c.first_run_seconds for c in self.cold_starts}
        for engine in dict.fromkeys(m.engine for m in self.measurements):
            if not Engine.parse(engine).on_cpu:
                continue
            by_batch = {m.batch: m for m in self.measurements if m.engine == engine}
            single = by_batch.get(1)
            fractions = [m.peak_fraction for m in by_batch.values() if m.peak_fraction is not None]
            rows.append(
                {
                    "engine": engine,
                    "batch-1 p50 ms": single and single.p50_ms,
                    "batch-1 p99 ms": single and single.p99_ms,
                    **{f"img/s @{b}": by_batch[b].images_per_second if b in by_batch else None for b in (8, 32, 256)},
                    "fp32 peak": max(fractions) if fractions else None,
                    "cold start s": cold.get(engine),
                    "MB": self.engine_files.get(engine, {}).get("mb"),
                    "accuracy change pp": self.engine_files.get(engine, {}).get("accuracy_change_pp"),
                }
            )
        return rows

    def cpu_batch_1_p50(self) -> dict[str, float]:
        """Each CPU engine's batch-1 p50 latency (ms)."""
        return {m.engine: m.p50_ms for m in self.measurements if m.batch == 1 and Engine.parse(m.engine).on_cpu}

    def best_deployable_cpu_engine(self) -> str | None:
        """The fastest deployable (ONNX Runtime) CPU engine at batch 1."""
        single = self.cpu_batch_1_p50()
        return min((engine for engine in single if engine.startswith("ort-")), key=single.get, default=None)

    def best_cpu_engine(self) -> str | None:
        """The fastest deployable (ONNX Runtime) CPU engine at batch 1, with its speed-up over torch eager fp32."""
        single, best = self.cpu_batch_1_p50(), self.best_deployable_cpu_engine()
        if best is None:
            return None
        measured = {m.engine: m for m in self.measurements if m.batch == 1}
        torch_eager = measured.get("torch-cpu-fp32")
        noise = ratio_noise(measured[best], *([torch_eager] if torch_eager else []))
        if noise:
            speedup = f", {noise}"
        elif torch_eager:
            speedup = f", {torch_eager.p50_ms / single[best]:.2f}x torch eager fp32"
        else:
            speedup = ""
        return f"best deployable CPU engine at batch 1: {best} ({single[best]:.3g} ms p50{speedup})"

    def fastest_by_batch(self) -> list[str]:
        """For each device (GPU, CPU) and batch size, the fastest ONNX Runtime engine against the fastest torch engine
        measured beside it: batch 1 by p50 latency, larger batches by img/s. A ratio below 1 says "slower"."""
        lines = []
        for device, on_cpu in (("GPU", False), ("CPU", True)):
            for batch in sorted({m.batch for m in self.measurements}):
                here = [m for m in self.measurements if m.batch == batch and Engine.parse(m.engine).on_cpu == on_cpu]
                ort = [m for m in here if m.engine.startswith("ort-")]
                rivals = [m for m in here if m.engine.startswith("torch-")]
                if not ort or not rivals:
                    continue
                best, rival = max(ort, key=_speed), max(rivals, key=_speed)
                ratio, noise = _speed(best) / _speed(rival), ratio_noise(best, rival)
                if noise:
                    lines.append(
                        f"{device} batch {batch}: fastest ONNX Runtime engine {best.engine} against the fastest torch "
                        f"engine {rival.engine}: {noise}; {_versus(best, rival)}"
                    )
                    continue
                lines.append(
                    f"{device} batch {batch}: fastest ONNX Runtime engine {best.engine}, {ratio:.2f}x the fastest "
                    f"torch engine {rival.engine} ({'faster' if ratio >= 1 else 'slower'}; {_versus(best, rival)})"
                )
        return lines

    def openvino_losses(self) -> list[str]:
        """Each batch size where an OpenVINO engine is slower than ONNX Runtime's own CPU provider (MLAS) at the same
        precision: batch 1 by p50 latency, larger batches by img/s."""
        measured = {(m.engine, m.batch): m for m in self.measurements}
        losses = []
        for (name, batch), openvino in measured.items():
            engine = Engine.parse(name)
            mlas = measured.get((f"ort-cpu-{engine.precision}", batch))
            steady = not ratio_noise(openvino, mlas) if mlas is not None else False
            if engine.device == "openvino" and steady and _speed(openvino) < _speed(mlas):
                losses.append(f"{name} is slower than {mlas.engine} at batch {batch} ({_versus(openvino, mlas)})")
        return losses

    def _subject(self) -> str:
        """What was benched. Each ONNX Runtime engine runs the export's file of its own precision, so a ``--model``
        naming a variant (model.fp16.onnx) once headed a report whose fp32 engines had run model.onnx."""
        files = {engine: entry["file"] for engine, entry in self.engine_files.items() if engine.startswith("ort-")}
        if set(files.values()) <= {Path(self.model).name}:
            return self.model
        ran = ", ".join(f"{engine} {name}" for engine, name in files.items())
        return f"the export in {Path(self.model).parent}/ (each engine runs the file of its precision: {ran})"

    def format(self) -> str:
        columns = ["engine", "batch", "runs", "p50_ms", "p90_ms", "p99_ms", "images_per_second", "peak_fraction"]
        cpu_peak = (
            f" (CPU fp32 peak fraction: of a {self.cpu_peak_gflops:.0f} GFLOP/s matrix product measured here)"
            if self.cpu_peak_gflops
            else ""
        )
        text = f"bench of {self._subject()} on {self.device}{cpu_peak}\n" + markdown_table(
            [asdict(m) for m in self.measurements], columns
        )
        text += "\ncold start:\n" + markdown_table(
            [asdict(c) for c in self.cold_starts], ["engine", "create_seconds", "first_run_seconds"]
        )
        table = self.cpu_table()
        if table:
            text += f"\nCPU engines ({self.cpu_threads} threads each):\n" + markdown_table(table, list(table[0]))
            text += "".join(f"{engine}: {setting}\n" for engine, setting in self.engine_settings.items())
            text += f"{self.best_cpu_engine()}\n" + "".join(f"{line}\n" for line in self.openvino_losses())
        text += "".join(f"{line}\n" for line in self.fastest_by_batch())
        noise = self.noise_warning()
        text += f"{noise}\n" if noise else ""
        if self.profiles:
            text += f"\nprofile at batch {self.profiles[0].batch}:\n{format_profiles(self.profiles)}"
        text += "".join(f"\nskipped {engine}: {why}" for engine, why in self.skipped.items())
        return text

    def noise_warning(self) -> str | None:
        """One line when some cells were too spread to compare: which, and what to do."""
        noisy = [m for m in self.measurements if m.noisy]
        if not noisy:
            return None
        cells = ", ".join(f"{m.engine} batch {m.batch}" for m in noisy)
        return (
            f"warning: {len(noisy)} of {len(self.measurements)} cells are noisy (p90 above {NOISY_SPREAD:g}x p50: "
            f"{cells}); no ratio is built on them. Bench again on a quieter machine, or with more --seconds"
        )


def _torch_runner(model: torch.nn.Module, engine: Engine, inputs: np.ndarray, batch: int) -> Callable[[], None]:
    cuda = engine.device == "cuda"
    x = torch.from_numpy(inputs[:batch]).to(engine.device)
    if engine.precision == "fp16":
        x = x.half().contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.no_grad():
            model(x)
        if cuda:
            torch.cuda.synchronize()

    return run


def _prepare_torch(checkpoint: Path, engine: Engine) -> torch.nn.Module:
    model, _ = rebuild_model(checkpoint)
    if engine.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = (
            engine.precision == "tf32"
        )  # else strict fp32
        torch.backends.cudnn.benchmark = True
        model = model.cuda()
        if engine.precision == "fp16":
            model = model.half().to(memory_format=torch.channels_last)
        if engine.compiled:
            model = torch.compile(model, mode="max-autotune")
    return model


def why_engine_cannot_run(engine: Engine, model_path: Path) -> str | None:
    """The reason an engine cannot run here (no GPU, variant not exported), or None."""
    if engine.device == "cuda" and not torch_sees_cuda():
        return "no CUDA GPU"
    if engine.device == "openvino":
        try:
            openvino_devices()
        except ProviderUnavailable as error:
            return str(error)
    path = engine_model(model_path, engine)
    if engine.framework == "ort" and not path.is_file():
        return f"{path.name} not found beside the model (export with --{engine.precision})"
    return None


def engine_session(model_path: Path, engine: Engine, profile_prefix: str = ""):
    options = ProviderSettings(
        provider=engine.device,
        prefer_nhwc=engine.channels_last,
        enable_cuda_graph=engine.cuda_graph,
        intra_op_threads=torch.get_num_threads() if engine.on_cpu else 0,  # as many threads as torch uses
        performance_hint=engine.performance_hint,
        profile_prefix=profile_prefix,
    )
    return create_session(engine_model(model_path, engine), options)


def describe_settings(engine: Engine) -> str:
    """What the report says a CPU engine ran with: its threads, and OpenVINO's performance hint."""
    threads = f"{torch.get_num_threads()} threads"
    return (
        f"{threads}, OpenVINO hint {openvino_hint(engine.performance_hint)}" if engine.device == "openvino" else threads
    )


def engine_model(model_path: Path, engine: Engine) -> Path:
    """The exported file an ONNX Runtime engine runs: the fp32 model, or its fp16/int8 sibling."""
    return sibling(model_path, "fp32" if engine.precision in ("fp32", "tf32") else engine.precision)


class BoundOrtRun:
    """One timed ONNX Runtime call with IO binding: input and output stay on the engine's device, and each call waits
    for the device. With CUDA graphs every batch size gets its own graph id, so a graph captured at one batch size is
    never replayed at another (ONNX Runtime's default id 0 holds just one graph)."""

    def __init__(self, session, engine: Engine, inputs: np.ndarray, batch: int) -> None:
        import onnxruntime as ort

        device = "cuda" if engine.device == "cuda" else "cpu"  # OpenVINO reads and writes host memory
        self.session = session
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(inputs[:batch]), device, 0)
        output = session.get_outputs()[0]
        self.output = ort.OrtValue.ortvalue_from_shape_and_type([batch, output.shape[1]], np.float32, device, 0)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(session.get_inputs()[0].name, value)
        self.binding.bind_ortvalue_output(output.name, self.output)
        self.run_options = ort.RunOptions()
        if engine.cuda_graph:
            self.run_options.add_run_config_entry("gpu_graph_id", str(batch))

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding, self.run_options)
        self.binding.synchronize_outputs()

    def logits(self) -> np.ndarray:
        return self.output.numpy()


def profile_engine(model_path: Path, engine: Engine, backend, inputs: np.ndarray, batch: int) -> EngineProfile:
    """Where one run's time goes for this engine at this batch size (kernel_profile.engine_profile)."""
    run = (_torch_runner if engine.framework == "torch" else BoundOrtRun)(backend, engine, inputs, batch)
    if engine.framework == "torch":
        return engine_profile(engine.name, batch, run, on_gpu=not engine.on_cpu)
    return engine_profile(
        engine.name,
        batch,
        run,
        not engine.on_cpu,
        lambda prefix: engine_session(model_path, engine, profile_prefix=prefix),
        lambda session: BoundOrtRun(session, engine, inputs, batch),
    )


def device_name(engines: list[Engine]) -> str:
    """What the engines ran on: the GPU, the CPU or both (the GPU set has one CPU engine), each named."""
    names = [torch.cuda.get_device_name(0)] if any(not engine.on_cpu for engine in engines) else []
    return "; ".join([*names, cpu_name()] if any(engine.on_cpu for engine in engines) else names)


def _peak_fraction(
    engine: Engine, images_per_second: float, gflops: float, cpu_peak_gflops: float | None
) -> float | None:
    if engine.on_cpu:  # int8 has no fp32 peak to compare with
        return None if engine.precision == "int8" else peak_fraction(images_per_second, gflops, cpu_peak_gflops)
    peak = gpu_peak_tflops(torch.cuda.get_device_name(0), engine.peak_precision) if torch.cuda.is_available() else None
    return peak_fraction(images_per_second, gflops, peak and peak * 1e3)


def run_bench(
    model_path: str | Path,
    checkpoint: str | Path | None = None,
    config: BenchConfig = BenchConfig(),
    report_dir: str | Path | None = None,
    data_dir=None,
) -> BenchReport:
    """Measure every engine at every batch size on real test images.

    Engines asked for by name must all run: one that cannot is an error before anything is measured or written.
    Without names, the default set for this machine runs, and an engine that cannot is skipped with its reason.
    """
    folder = Path(report_dir) if report_dir else reports_folder(require_model_file(model_path))
    with folder_lock(folder, "vggdeploy bench"):  # one bench writing these reports at a time
        return _bench(Path(model_path), checkpoint, config, folder, data_dir)


def _bench(model_path: Path, checkpoint, config: BenchConfig, report_dir: Path, data_dir) -> BenchReport:
    model_path = Path(model_path)
    names, strict = chosen_engines(config)  # a misspelt engine first: before any file is looked for
    chosen = [Engine.parse(name) for name in names]
    metadata = read_metadata(model_path)
    checkpoint, images = _test_images(model_path, metadata, checkpoint, chosen, data_dir)
    batch_sizes = config.batch_sizes
    unavailable = {engine.name: why for engine in chosen if (why := why_engine_cannot_run(engine, model_path))}
    if strict and unavailable:
        raise ProviderUnavailable(
            "; ".join(f"engine {name} cannot run: {why}" for name, why in unavailable.items()) + " (no report written)"
        )
    chosen = [engine for engine in chosen if engine.name not in unavailable]
    spec = PreprocessSpec.from_metadata(metadata["preprocessing"])
    largest = max(*batch_sizes, config.profile_batch or 1)
    inputs = to_input_tensor(images[:largest], spec).numpy()
    if len(inputs) < largest:
        inputs = np.resize(inputs, (largest, *inputs.shape[1:]))
    args = model_args_from_metadata(metadata)
    cpu_peak = cpu_fp32_gflops() if any(e.on_cpu and e.precision != "int8" for e in chosen) else None
    report = BenchReport(
        str(model_path),
        device_name(chosen),
        deployment_versions(),
        summarize(args).gflops,
        [],
        [],
        unavailable,
        cpu_peak,
        torch.get_num_threads(),
        engine_files={engine.name: _engine_file(model_path, checkpoint, engine) for engine in chosen},
    )
    for engine in chosen:
        if engine.on_cpu:
            report.engine_settings[engine.name] = describe_settings(engine)
        start = time.perf_counter()
        backend = (
            _prepare_torch(checkpoint, engine) if engine.framework == "torch" else engine_session(model_path, engine)
        )
        created = time.perf_counter() - start
        make_runner = _torch_runner if engine.framework == "torch" else BoundOrtRun
        for position, batch in enumerate(sorted(set(batch_sizes))):  # one binding per size: a CUDA graph id each
            run = make_runner(backend, engine, inputs, batch)
            if position == 0:
                first = time.perf_counter()
                run()
                report.cold_starts.append(ColdStart(engine.name, created, time.perf_counter() - first))
            times = np.asarray(timed_runs(run, config.seconds, config.min_runs, config.warmup)) * 1e3
            rate = batch / (times.mean() / 1e3)
            report.measurements.append(
                Measurement(
                    engine.name,
                    batch,
                    len(times),
                    float(np.percentile(times, 50)),
                    float(np.percentile(times, 90)),
                    float(np.percentile(times, 99)),
                    float(times.mean()),
                    rate,
                    _peak_fraction(engine, rate, report.gflops_per_image, report.cpu_peak_gflops),
                )
            )
        if config.profile_batch:
            report.profiles.append(profile_engine(model_path, engine, backend, inputs, config.profile_batch))
    _write_reports(Path(report_dir) if report_dir else reports_folder(model_path), report)
    return report


def _test_images(model_path: Path, metadata: dict, checkpoint, engines: list[Engine], data_dir):
    """(checkpoint or None, the real test images to time on). The checkpoint (given, or beside the export) names the
    data set and the split of your own images; ONNX Runtime engines alone on a Fashion-MNIST model need none."""
    onnx_runtime_alone = all(engine.framework != "torch" for engine in engines)
    on_fashion_mnist = metadata["training"].get("dataset") == FASHION_MNIST_NAME
    beside = RunFolder.of_model(model_path).best_checkpoint
    if checkpoint is None and not beside.is_file():
        if onnx_runtime_alone and on_fashion_mnist:
            return None, fashion_mnist(data_dir).test_images
        if onnx_runtime_alone:
            raise UsageError(f"no checkpoint at {beside}: it names the test split of your images; pass --checkpoint")
        raise UsageError(
            f"no checkpoint at {beside}: the torch engines need it; pass --checkpoint, or name ONNX Runtime engines "
            "alone with --engines"
        )
    checkpoint = Path(checkpoint) if checkpoint else beside
    return checkpoint, dataset_of(load_checkpoint(checkpoint, mmap=True), data_dir).test_images


def _engine_file(model_path: Path, checkpoint: Path, engine: Engine) -> dict:
    """What an engine loads (the checkpoint, or the export's file of its precision), its size, and the accuracy
    change that file showed at export (torch is the reference)."""
    if engine.framework == "torch":
        return {"file": str(checkpoint), "mb": checkpoint.stat().st_size / 1e6, "accuracy_change_pp": None}
    path = engine_model(model_path, engine)
    parity = read_metadata(path)["parity"]
    change_pp = parity.get("accuracy_change_pp")
    if change_pp is None and parity.get("accuracy_change") is not None:  # exported before the unit was pp
        change_pp = parity["accuracy_change"] * 100
    return {"file": path.name, "mb": path.stat().st_size / 1e6, "accuracy_change_pp": change_pp}


def _write_reports(folder: Path, report: BenchReport) -> None:
    saved = asdict(report)
    for row, measurement in zip(saved["measurements"], report.measurements, strict=True):
        row.update(spread=measurement.spread, noisy=measurement.noisy)  # read by people; from_json recomputes them
    write_json(folder / "bench.json", {**saved, "noise_warning": report.noise_warning()})
    write_text(
        folder / "bench.md",
        f"# Benchmark\n\nModel `{report.model}` on {report.device}; versions "
        f"{report.versions}; {report.gflops_per_image:.2f} GFLOPs per image.\n\n```\n{report.format()}\n```\n",
    )
    plot_bench(
        folder / "bench.png", report.measurements, f"{RunFolder.of_model(report.model).path.name} on {report.device}"
    )
