"""Speed ablations: which ONNX Runtime settings and graph rewrites, which torch compiler and which training step is
fastest, each timed by the loop ``bench`` uses, so that a winner becomes a default with its evidence beside it.

Inference: the CUDA execution provider's options (cuDNN algorithm search, ``fuse_conv_bias``, NHWC, CUDA graphs, IO
binding) and the exact rewrites of ``vggdeploy.verify.graph_rewrites`` on the export's fp16 file, against torch eager,
``torch.compile`` max-autotune and an AOTInductor package, with each one's compile time as its cold start.
Training: the step as ``train`` runs it against fused SGD, a padded first convolution, CUDA graphs and max-autotune,
on a fixed number of device-resident batches, and the data pipeline's own rate.

On a machine without a GPU the same code runs on the CPU (the GPU validation's rehearsal): the CUDA-only options
are skipped with that reason, and everything else is measured for real.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from vggdeploy.data.batches import Augmentation, iterate_batches
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.deploy.session import ProviderSettings, create_session
from vggdeploy.hardware import gpu_peak_tflops, peak_fraction, timed_runs
from vggdeploy.model.archs import ModelArgs
from vggdeploy.model.vgg import build_model, summarize
from vggdeploy.report import markdown_table
from vggdeploy.verify.bench import BoundOrtRun, _prepare_torch, _torch_runner
from vggdeploy.verify.engines import Engine
from vggdeploy.verify.graph_rewrites import rewritten
from vggdeploy.verify.kernel_profile import EngineProfile, engine_profile, format_profiles, traced

GOAL_RATIO = 1.3  # the best ONNX Runtime engine within this factor of torch.compile max-autotune


@dataclass(frozen=True)
class OrtVariant:
    """One ONNX Runtime configuration: provider options and graph rewrites on top of the export's file."""

    name: str
    rewrites: tuple[str, ...] = ()
    prefer_nhwc: bool = False
    cuda_graph: bool = False
    algo_search: str = ProviderSettings.cudnn_conv_algo_search  # what bench and --provider cuda use
    fuse_conv_bias: bool = False
    io_binding: bool = True

    @property
    def cuda_only(self) -> bool:
        default = ProviderSettings.cudnn_conv_algo_search
        return self.prefer_nhwc or self.cuda_graph or self.fuse_conv_bias or self.algo_search != default

    def settings(self, provider: str) -> ProviderSettings:
        return ProviderSettings(
            provider=provider,
            prefer_nhwc=self.prefer_nhwc,
            enable_cuda_graph=self.cuda_graph,
            cudnn_conv_algo_search=self.algo_search,
            extra={"fuse_conv_bias": "1"} if self.fuse_conv_bias else {},
        )


# The first window (2026-12-04, H200) answered these and dropped them: fuse_conv_bias alone fails on the one-channel
# first convolution ("Failed to initialize CUDNN Frontend"), FusedConv has no fp16 CUDA kernel (ONNX Runtime moves
# 26 of 47 nodes to the CPU), padding to 4 or 8 channels alone is slower at every batch size (BENCHMARKS.md).
ORT_VARIANTS = (
    OrtVariant("base"),  # bench's ort-cuda-fp16
    OrtVariant("no-io-binding", io_binding=False),
    OrtVariant("algo-exhaustive", algo_search="EXHAUSTIVE"),  # the default before the first window
    OrtVariant("algo-default", algo_search="DEFAULT"),
    OrtVariant("nhwc", prefer_nhwc=True),
    OrtVariant("graph", cuda_graph=True),
    OrtVariant("nhwc-graph", prefer_nhwc=True, cuda_graph=True),  # bench's ort-cuda-fp16-nhwc-graph
    OrtVariant("exhaustive-nhwc-graph", prefer_nhwc=True, cuda_graph=True, algo_search="EXHAUSTIVE"),
    OrtVariant("pad8-fuse-conv-bias", rewrites=("pad8",), fuse_conv_bias=True),
    OrtVariant("pad8-fuse-conv-bias-graph", rewrites=("pad8",), fuse_conv_bias=True, cuda_graph=True),
    OrtVariant("pad8-fuse-conv-bias-nhwc", rewrites=("pad8",), fuse_conv_bias=True, prefer_nhwc=True),
    OrtVariant(
        "pad8-fuse-conv-bias-nhwc-graph", rewrites=("pad8",), fuse_conv_bias=True, prefer_nhwc=True, cuda_graph=True
    ),
    OrtVariant("fused-conv-relu", rewrites=("fused-conv-relu",)),  # runs on the CPU rehearsal; fp32 exports
)


TORCH_ENGINES = ("torch-eager", "torch-aoti", "torch-compile-max-autotune")  # the longest compile last


@dataclass(frozen=True)
class Cell:
    """One engine at one batch size: p50 latency, throughput, and how steady the runs were."""

    engine: str
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    images_per_second: float
    first_run_seconds: float  # the first call at this batch size: kernel choice, capture, compile


@dataclass
class InferenceAblation:
    device: str
    precision: str
    batch_sizes: tuple[int, ...]
    cells: list[Cell] = field(default_factory=list)
    create_seconds: dict[str, float] = field(default_factory=dict)  # session creation, or compile and load
    skipped: dict[str, str] = field(default_factory=dict)  # engine -> why it did not run
    profiles: list[EngineProfile] = field(default_factory=list)

    def speed(self, cell: Cell) -> float:
        """Higher is faster: batch 1 by p50 latency, larger batches by img/s (as bench judges them)."""
        return 1 / cell.p50_ms if cell.batch == 1 else cell.images_per_second

    def best(self, batch: int, prefix: str) -> Cell | None:
        here = [cell for cell in self.cells if cell.batch == batch and cell.engine.startswith(prefix)]
        return max(here, key=self.speed, default=None)

    def verdicts(self) -> list[str]:
        """Per batch size: the fastest ONNX Runtime variant against torch.compile max-autotune (the goal: within
        GOAL_RATIO) and against the fastest torch engine."""
        lines = []
        for batch in self.batch_sizes:
            ort = self.best(batch, "ort-")
            if ort is None:
                continue
            compiled = self.best(batch, "torch-compile")
            rival = self.best(batch, "torch-")
            if compiled is not None:
                gap = self.speed(compiled) / self.speed(ort)
                met = "met" if gap <= GOAL_RATIO else "not met"
                lines.append(
                    f"batch {batch}: fastest ONNX Runtime {ort.engine} is {gap:.2f}x slower than torch.compile "
                    f"max-autotune (goal <= {GOAL_RATIO}x: {met})"
                    if gap >= 1
                    else f"batch {batch}: fastest ONNX Runtime {ort.engine} is {1 / gap:.2f}x faster than "
                    f"torch.compile max-autotune (goal <= {GOAL_RATIO}x slower: met)"
                )
            if rival is not None:
                lines.append(
                    f"batch {batch}: fastest ONNX Runtime {ort.engine} {_figure(ort)} against the fastest torch "
                    f"engine {rival.engine} {_figure(rival)}: {self.speed(ort) / self.speed(rival):.2f}x"
                )
        return lines

    def format(self) -> str:
        table = markdown_table(
            [
                {
                    "engine": engine,
                    **{
                        f"batch {cell.batch}": _figure(cell)
                        for cell in self.cells
                        if cell.engine == engine and cell.batch in self.batch_sizes
                    },
                    "cold start s": self.create_seconds.get(engine),
                }
                for engine in dict.fromkeys(cell.engine for cell in self.cells)
            ],
            ["engine", *(f"batch {batch}" for batch in self.batch_sizes), "cold start s"],
        )
        text = f"Inference ablation on {self.device}, {self.precision} (batch 1: p50 latency; larger: img/s)\n\n{table}"
        text += "".join(f"\n{line}" for line in self.verdicts())
        text += "".join(f"\nskipped {engine}: {why}" for engine, why in self.skipped.items())
        if self.profiles:
            text += f"\n\nProfile at batch {self.profiles[0].batch}:\n\n{format_profiles(self.profiles)}"
        return text + "\n"


def _figure(cell: Cell) -> str:
    return f"{cell.p50_ms:.3f} ms" if cell.batch == 1 else f"{cell.images_per_second:,.0f} img/s"


def _measure(
    name: str, make_run: Callable[[int], Callable[[], None]], batches, seconds: float, result, deadline: float
) -> None:
    for batch in batches:
        if time.perf_counter() > deadline:
            result.skipped[f"{name} batch {batch}"] = "out of the stage's time"
            continue
        run = make_run(batch)
        first = time.perf_counter()
        run()
        first_seconds = time.perf_counter() - first
        times = np.asarray(timed_runs(run, seconds, min_runs=5, warmup=2)) * 1e3
        result.cells.append(
            Cell(
                name,
                batch,
                len(times),
                float(np.percentile(times, 50)),
                float(np.percentile(times, 90)),
                batch / (times.mean() / 1e3),
                first_seconds,
            )
        )


def _unbound_run(session, inputs: np.ndarray, batch: int) -> Callable[[], None]:
    """ONNX Runtime without IO binding: numpy in, numpy out, the host copies included (what plain session.run
    does)."""
    name, feed = session.get_inputs()[0].name, np.ascontiguousarray(inputs[:batch])
    return lambda: session.run(None, {name: feed})


def ort_variants(
    model_file: Path,
    inputs: np.ndarray,
    batches: tuple[int, ...],
    seconds: float,
    result: InferenceAblation,
    variants: tuple[OrtVariant, ...] = ORT_VARIANTS,
    deadline: float = float("inf"),
    progress: Callable[[], None] = lambda: None,
) -> dict[str, Callable[[int], Callable[[], None]]]:
    """Time each variant at each batch size into ``result`` (``progress`` is called after each); returns each
    measured variant's runner factory (for the profile). A variant that fails is recorded with its error and the
    rest go on."""
    on_gpu = result.device != "cpu"
    provider = "cuda" if on_gpu else "cpu"
    model = onnx.load(str(model_file))
    runners: dict[str, Callable[[int], Callable[[], None]]] = {}
    for variant in variants:
        name = f"ort-{variant.name}"
        if variant.cuda_only and not on_gpu:
            result.skipped[name] = "a CUDA execution provider option"
            continue
        if time.perf_counter() > deadline:
            result.skipped[name] = "out of the stage's time"
            continue
        try:
            start = time.perf_counter()
            source = rewritten(model, variant.rewrites).SerializeToString() if variant.rewrites else model_file
            session = create_session(source, variant.settings(provider))
            result.create_seconds[name] = time.perf_counter() - start
            engine = Engine(name, "ort", provider, result.precision, cuda_graph=variant.cuda_graph)

            def make_run(batch: int, session=session, engine=engine, variant=variant) -> Callable[[], None]:
                if variant.io_binding:
                    return BoundOrtRun(session, engine, inputs, batch)
                return _unbound_run(session, inputs, batch)

            _measure(name, make_run, batches, seconds, result, deadline)
            runners[name] = make_run
        except Exception as error:  # a variant the provider refuses is a finding, not the end of the ablation
            result.skipped[name] = _reason(error)
        progress()
    return runners


def torch_engines(
    checkpoint: Path,
    inputs: np.ndarray,
    batches: tuple[int, ...],
    seconds: float,
    result: InferenceAblation,
    engines: tuple[str, ...] = TORCH_ENGINES,
    deadline: float = float("inf"),
    progress: Callable[[], None] = lambda: None,
) -> dict[str, Callable[[int], Callable[[], None]]]:
    """Time torch eager, torch.compile max-autotune and an AOTInductor package (fp16 channels_last on a GPU, fp32
    on the CPU) into ``result``; the compilers' time counts as their cold start."""
    on_gpu = result.device != "cpu"
    bench_engine = Engine.parse("torch-cuda-fp16-cl" if on_gpu else "torch-cpu-fp32")
    start = time.perf_counter()
    eager = _prepare_torch(checkpoint, bench_engine).eval()
    loaded = time.perf_counter() - start  # every engine starts from the loaded model
    runners: dict[str, Callable[[int], Callable[[], None]]] = {}
    for name in engines:
        if time.perf_counter() > deadline:
            result.skipped[name] = "out of the stage's time"
            continue
        try:
            start = time.perf_counter()
            if name == "torch-eager":
                model = eager
            elif name == "torch-compile-max-autotune":
                model = torch.compile(eager, mode="max-autotune")
            else:
                model = _aoti_package(eager, inputs, on_gpu)
            result.create_seconds[name] = loaded + time.perf_counter() - start

            def make_run(batch: int, model=model) -> Callable[[], None]:
                return _torch_runner(model, bench_engine, inputs, batch)

            _measure(name, make_run, batches, seconds, result, deadline)
            if name == "torch-compile-max-autotune":  # each batch size compiled on its first call
                result.create_seconds[name] += sum(c.first_run_seconds for c in result.cells if c.engine == name)
            runners[name] = make_run
        except Exception as error:
            result.skipped[name] = _reason(error)
        progress()
    return runners


def _reason(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def _aoti_package(model: torch.nn.Module, inputs: np.ndarray, on_gpu: bool):
    """An AOTInductor package with a dynamic batch axis, written and loaded back (a deployable ``.pt2``)."""
    example = torch.from_numpy(inputs[:2]).to("cuda" if on_gpu else "cpu")
    if on_gpu:
        example = example.half().contiguous(memory_format=torch.channels_last)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        folder = Path(tempfile.mkdtemp(prefix="vggdeploy-aoti-"))
        package = torch._inductor.aoti_compile_and_package(exported, package_path=str(folder / "model.pt2"))
    return torch._inductor.aoti_load_package(package)


def inference_ablation(
    model_file: Path,
    checkpoint: Path,
    inputs: np.ndarray,
    batches: tuple[int, ...],
    seconds: float,
    profile_batch: int | None,
    variants: tuple[OrtVariant, ...] = ORT_VARIANTS,
    engines: tuple[str, ...] = TORCH_ENGINES,
    seconds_allowed: float = float("inf"),
    progress: Callable[[InferenceAblation], None] = lambda result: None,
) -> InferenceAblation:
    """Every ONNX Runtime variant of ``model_file`` and every torch engine of ``checkpoint`` at every batch size;
    then, at ``profile_batch``, the kernels of torch eager, the compiled engine, ONNX Runtime's base and its fastest
    variant. What does not fit ``seconds_allowed`` is skipped with that reason (the profile first, then the
    compilers, which go last); ``progress`` gets the result so far after each engine."""
    deadline = time.perf_counter() + seconds_allowed
    on_gpu = torch.cuda.is_available()
    precision = "fp16" if ".fp16." in Path(model_file).name else "fp32"
    result = InferenceAblation(torch.cuda.get_device_name(0) if on_gpu else "cpu", precision, batches)
    needed = max(*batches, profile_batch or 1)
    if len(inputs) < needed:
        inputs = np.resize(inputs, (needed, *inputs.shape[1:]))
    report = lambda: progress(result)
    ort_runs = ort_variants(model_file, inputs, batches, seconds, result, variants, deadline, report)
    torch_runs = torch_engines(checkpoint, inputs, batches, seconds, result, engines, deadline, report)
    if profile_batch:
        best = result.best(profile_batch, "ort-")
        runners = {**ort_runs, **torch_runs}
        by_name = {f"ort-{variant.name}": variant for variant in variants}
        for name in dict.fromkeys(("torch-eager", "torch-compile-max-autotune", "ort-base", best and best.engine)):
            if name in runners:
                result.profiles.append(
                    _profile(name, runners[name], by_name.get(name), model_file, inputs, profile_batch, on_gpu)
                )
        report()
    return result


def _profile(name, make_run, variant: OrtVariant | None, model_file: Path, inputs, batch: int, on_gpu: bool):
    """kernel_profile.engine_profile of a torch engine (``variant`` None) or of an ONNX Runtime variant."""
    if variant is None:
        return engine_profile(name, batch, make_run(batch), on_gpu)
    settings = variant.settings("cuda" if on_gpu else "cpu")
    engine = Engine(name, "ort", settings.provider, "fp32", cuda_graph=variant.cuda_graph)

    def profiling_session(prefix: str):
        rewrites = variant.rewrites
        source = rewritten(onnx.load(str(model_file)), rewrites).SerializeToString() if rewrites else model_file
        return create_session(source, replace(settings, profile_prefix=prefix))

    return engine_profile(
        name,
        batch,
        make_run(batch),
        on_gpu,
        profiling_session,
        lambda session: BoundOrtRun(session, engine, inputs, batch),
    )


@dataclass(frozen=True)
class StepVariant:
    """One way to run the training step."""

    name: str
    compile_mode: str | None = "default"  # torch.compile's mode; None: eager
    fused_sgd: bool = False
    pad_channels: int = 0  # the first convolution reads this many channels, the image zero-padded to them
    channels_last: bool | None = None  # None: as train does (channels_last with bf16 autocast, i.e. on a GPU)


TRAIN_VARIANTS = (
    StepVariant("eager", compile_mode=None),
    StepVariant("eager-contiguous", compile_mode=None, channels_last=False),  # the CPU's layouts, side by side
    StepVariant("eager-channels-last", compile_mode=None, channels_last=True),
    StepVariant("as-trained"),  # train's step today: the model compiled, foreach SGD
    StepVariant("fused-sgd", fused_sgd=True),
    StepVariant("pad8", pad_channels=8),
    StepVariant("pad8-fused-sgd", fused_sgd=True, pad_channels=8),
    StepVariant("pad8-fused-sgd-cuda-graphs", "reduce-overhead", fused_sgd=True, pad_channels=8),
    StepVariant("pad8-fused-sgd-max-autotune", "max-autotune-no-cudagraphs", fused_sgd=True, pad_channels=8),
)


@dataclass(frozen=True)
class StepRate:
    variant: str
    images_per_second: float | None
    peak_fraction: float | None
    compile_seconds: float  # the warm-up steps, where torch.compile runs
    note: str = ""


@dataclass
class TrainingAblation:
    device: str
    model: dict
    batch: int
    steps: int
    rates: list[StepRate] = field(default_factory=list)
    pipeline_images_per_second: float | None = None  # resize and augmentation alone, from device-resident uint8
    evaluation: dict[str, float] = field(default_factory=dict)  # "batch N" -> img/s of the eager bf16 forward
    profile: EngineProfile | None = None

    def format(self) -> str:
        rows = [
            {
                "variant": rate.variant,
                "img/s": rate.images_per_second,
                "bf16 peak fraction": rate.peak_fraction,
                "compile s": rate.compile_seconds,
                "note": rate.note,
            }
            for rate in self.rates
        ]
        text = (
            f"Training step ablation on {self.device}: {self.model}, batch {self.batch}, {self.steps} timed steps "
            f"of device-resident batches\n\n"
            + markdown_table(rows, ["variant", "img/s", "bf16 peak fraction", "compile s", "note"])
        )
        if self.pipeline_images_per_second:
            text += f"\ndata pipeline alone (resize + augmentation on the device): {self.pipeline_images_per_second:,.0f} img/s"
        text += "".join(
            f"\nevaluation forward (eager), {size}: {rate:,.0f} img/s" for size, rate in self.evaluation.items()
        )
        if self.profile:
            text += f"\n\nProfile of the {self.profile.engine}:\n\n{format_profiles([self.profile])}"
        return text + "\n"


def _channels_last(variant: StepVariant, bf16: bool) -> bool:
    return bf16 if variant.channels_last is None else variant.channels_last


def _step_model(args: ModelArgs, variant: StepVariant, device: torch.device, bf16: bool):
    torch.manual_seed(0)
    model = build_model(replace(args, in_channels=variant.pad_channels or args.in_channels)).to(device)
    if _channels_last(variant, bf16):
        model = model.to(memory_format=torch.channels_last)
    runner = model if variant.compile_mode is None else torch.compile(model, mode=variant.compile_mode)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=variant.fused_sgd
    )
    return model, runner, optimizer


def _make_step(runner, optimizer, batch, target, variant: StepVariant, bf16: bool, on_gpu: bool):
    if variant.pad_channels:
        batch = F.pad(batch, (0, 0, 0, 0, 0, variant.pad_channels - batch.shape[1]))
    if _channels_last(variant, bf16):
        batch = batch.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(runner(batch).float(), target, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_gpu:
            torch.cuda.synchronize()

    return step


def training_ablation(
    args: ModelArgs,
    batch: int,
    steps: int,
    variants: tuple[StepVariant, ...] = TRAIN_VARIANTS,
    warmup: int = 3,
    seconds_allowed: float = float("inf"),
    evaluation_batches: tuple[int, ...] = (256, 1024),
    augmentation: Augmentation | None = None,
    progress: Callable[[TrainingAblation], None] = lambda result: None,
) -> TrainingAblation:
    """Images per second of each training step variant over ``steps`` steps on one fixed random batch on the
    device (so that the step alone is timed), the data pipeline's rate, the evaluation forward at two batch sizes,
    and a kernel profile of the step as trained (of the first variant when that one is not asked for)."""
    deadline = time.perf_counter() + seconds_allowed
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    bf16 = on_gpu
    if on_gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    result = TrainingAblation(torch.cuda.get_device_name(0) if on_gpu else "cpu", asdict(args), batch, steps)
    generator = torch.Generator(device).manual_seed(0)
    images = torch.randn(batch, args.in_channels, args.image_size, args.image_size, device=device, generator=generator)
    target = torch.randint(0, args.num_classes, (batch,), device=device, generator=generator)
    gflops = summarize(args).gflops
    peak = gpu_peak_tflops(result.device, "bf16") if on_gpu else None
    names = [variant.name for variant in variants]
    reference = "as-trained" if "as-trained" in names else names[0]  # profiled, and its evaluation timed
    result.pipeline_images_per_second = _pipeline_rate(args, batch, steps, device, augmentation or Augmentation())
    for variant in variants:
        if time.perf_counter() > deadline:
            result.rates.append(StepRate(variant.name, None, None, 0.0, "out of the stage's time"))
            continue
        try:
            model, runner, optimizer = _step_model(args, variant, device, bf16)
            step = _make_step(runner, optimizer, images, target, variant, bf16, on_gpu)
            start = time.perf_counter()
            for _ in range(warmup):
                step()
            compile_seconds = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(steps):
                step()
            rate = batch * steps / (time.perf_counter() - start)
            fraction = peak_fraction(rate, 3 * gflops, peak and peak * 1e3)
            result.rates.append(StepRate(variant.name, rate, fraction, compile_seconds))
            if variant.name == reference:  # where its time goes, and its evaluation forward
                kernels, wall, source = traced(step, 5, on_gpu=on_gpu)
                result.profile = EngineProfile(f"training step, {reference}", batch, 5, source, wall, kernels)
                # eager: a compiled model would compile again for eval mode and each batch size (a minute on a GPU)
                result.evaluation = _evaluation_rates(model, args, evaluation_batches, device, bf16, on_gpu)
        except Exception as error:
            result.rates.append(StepRate(variant.name, None, None, 0.0, _reason(error)))
        progress(result)
    return result


def _pipeline_rate(args: ModelArgs, batch: int, steps: int, device: torch.device, augmentation: Augmentation) -> float:
    """Images per second of the on-device data pipeline alone: Fashion-MNIST-sized uint8 sources resized to the
    model's input and augmented."""
    count = batch * steps
    sources = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, device=device)
    labels = torch.zeros(count, dtype=torch.long, device=device)
    spec = PreprocessSpec(args.image_size, args.image_size)
    generator = torch.Generator(device).manual_seed(0)
    for _ in iterate_batches(sources[:batch], labels[:batch], batch, spec, generator, augmentation):
        pass  # warm-up
    start = time.perf_counter()
    for _ in iterate_batches(sources, labels, batch, spec, generator, augmentation):
        pass
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


@torch.no_grad()
def _evaluation_rates(model, args: ModelArgs, sizes, device, bf16: bool, on_gpu: bool) -> dict[str, float]:
    model.eval()
    rates = {}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    for size in sizes:
        x = torch.randn(size, args.in_channels, args.image_size, args.image_size, device=device)
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)

        def forward(x: torch.Tensor = x) -> None:
            with autocast:
                model(x)
            if on_gpu:
                torch.cuda.synchronize()

        forward()
        rates[f"batch {size}"] = size / min(timed_runs(forward, 0.0, min_runs=3, warmup=1))
    model.train()
    return rates
