"""The GPU validation: every CUDA path of vggdeploy run end to end, one stage per device command.

Stages (each must fit one 600 s device command; the default budget is 9 minutes):
  runtime  train --preset seed; export --fp16 --int8 --with-preprocessing; check --provider cuda on the whole test
           set; run --provider cuda on the golden images, against golden.json; bench of the GPU engines on the
           full-width VGG-11-BN at 224 px; pytest -m gpu
  train    train --preset full with a wall-clock limit (--full-fit-epochs N: as many of N epochs as fit it, the
           learning-rate schedule planned to end with them); accuracy against wall time; its export, then
           scripts/familiarity_benchmark.py on it (issue #35's table for the full model)
  cpu      the OpenVINO tests, then the CPU engine table on the host's CPU (scripts/cpu_table.sh: torch eager, ONNX
           Runtime's MLAS and, on an Intel CPU with the carried OpenVINO plugin, OpenVINO, fp32 and int8)
  perf     the speed ablations (scripts/gpu/perf.py): bench --profile, the ONNX Runtime variants against torch eager,
           torch.compile max-autotune and AOTInductor, then the training-step variants (--perf-parts: one or both)
  all      runtime, train, then cpu

Each step is the real `python -m vggdeploy ...` (or script) command line, run as a subprocess and recorded with its
duration, exit code and the tail of its output. Figures are read from the reports the commands write.
gpu-report.json and gpu-report.md (plus the PNGs) are rewritten after every step, so a command killed at its limit
still leaves a report.

``--rehearse`` runs the same stages through the same code on the CPU: tiny widths, 32 px, a few hundred images and
the CPU provider. The suite runs it, so the wiring cannot rot between GPU windows. Its figures check the plumbing,
not the goals.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from vggdeploy.artifacts import RunFolder, model_file, reliability_diagram, reports_folder
from vggdeploy.hardware import cpu_name
from vggdeploy.plots import plot_accuracy_against_time
from vggdeploy.report import markdown_table, write_json, write_text
from vggdeploy.verify.bench import BenchReport
from vggdeploy.verify.engines import ENGINE_SETS, GPU_ENGINES

GRAPH_ENGINE = "ort-cuda-fp16-nhwc-graph"
# A model whose variants' answers do not matter (a few steps trained, for latency; or a tiny rehearsal model near
# chance): every variant limit of export and check lifted.
OPEN_FP16_LIMITS = ("--fp16-max-drop", "100", "--fp16-min-agreement", "0", "--fp16-max-mean-diff", "100")
OPEN_VARIANT_LIMITS = (
    *OPEN_FP16_LIMITS,
    "--int8-max-drop",
    "100",
    "--int8-min-agreement",
    "0",
    "--int8-max-mean-diff",
    "100",
)
Measured = TypeVar("Measured")  # what a goal is judged on

LOG_CHARS = 200_000  # of each step's output kept in gpu-logs.txt (the device tool returns at most 8 files)


@dataclass(frozen=True)
class Profile:
    """The arguments that differ between the GPU run and the CPU rehearsal; everything else is shared."""

    name: str
    seed_train: tuple[str, ...]
    export: tuple[str, ...]
    check: tuple[str, ...]
    bench_model_train: tuple[str, ...]  # latency does not depend on the weights: a few steps are enough
    bench_model_export: tuple[str, ...]
    bench: tuple[str, ...]
    full_train: tuple[str, ...]  # --time-limit is added from the stage budget
    cpu_table: tuple[str, ...] = ()  # scripts/cpu_table.sh's options
    openvino_tests: tuple[str, ...] = ()  # pytest's selection within tests/deploy/test_openvino.py
    full_export: tuple[str, ...] = ("--no-simplify", "--parity-images", "64", "--audit-batches", "1,2")  # calibration
    bench_profile: tuple[str, ...] = ()  # bench --profile on the bench model: the product's own profile
    perf_inference: tuple[str, ...] = ()  # scripts/gpu/perf.py inference's options
    perf_training: tuple[str, ...] = ()  # scripts/gpu/perf.py training's options
    # scripts/familiarity_benchmark.py's options for the full run: on the GPU, its k-NN search of 20,000 training
    # images' 4,096 features (not all 58,000) keeps the step near a minute
    full_familiarity: tuple[str, ...] = ("--device", "cuda", "--fit-images", "20000")

    @property
    def rehearsal(self) -> bool:
        return self.name == "cpu-rehearsal"

    @property
    def provider(self) -> str:
        return "cpu" if self.rehearsal else "cuda"


GPU = Profile(
    name="gpu",
    seed_train=("--preset", "seed"),
    export=("--fp16", "--int8", "--with-preprocessing"),
    check=("--provider", "cuda"),
    bench_model_train=(
        "--preset",
        "full",
        "--epochs",
        "1",
        "--train-limit",
        "2560",
        "--test-limit",
        "1000",
        "--lr",
        "0.01",  # 10 steps: the preset's lr 0.1, reached after a 2-step warm-up, diverged on the H100 (2026-11-27)
        "--no-compile",
    ),
    bench_model_export=("--fp16", "--parity-images", "64", "--variant-images", "100", *OPEN_FP16_LIMITS),
    bench=("--engines", ",".join(GPU_ENGINES), "--batch-sizes", "1,8,64,256", "--seconds", "2"),
    full_train=("--preset", "full"),
    cpu_table=("--seconds", "1"),  # a short table: what a window leaves after the train stage
    bench_profile=(
        "--engines",
        "torch-cuda-fp16-cl,ort-cuda-fp16,ort-cuda-fp16-nhwc-graph",
        "--batch-sizes",
        "64",
        "--seconds",
        "0.5",
        "--profile",
        "64",
    ),
    perf_inference=("--batch-sizes", "1,8,64,256", "--seconds", "0.5", "--profile-batch", "64"),
    perf_training=("--batch", "256", "--steps", "30"),
)
TINY = ("--width-ratio", "16", "--hidden", "64", "--image-size", "32", "--device", "cpu")
REHEARSAL = Profile(
    name="cpu-rehearsal",
    # the batch given: the recipe would size it to the 461 images, and this tiny model's check was measured at 128
    seed_train=(
        "--preset",
        "seed",
        *TINY,
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--train-limit",
        "512",
        "--test-limit",
        "256",
    ),
    export=(
        "--fp16",
        "--int8",
        "--with-preprocessing",
        "--parity-images",
        "64",
        "--audit-batches",
        "1,2,7,16",
        "--variant-images",
        "128",
        *OPEN_VARIANT_LIMITS,
    ),
    # A one-epoch model on 256 images: one flipped image is 0.4 pp, so the variants' limits are opened.
    check=("--provider", "cpu", "--images", "256", *OPEN_VARIANT_LIMITS),
    bench_model_train=(
        "--preset",
        "full",
        *TINY,
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--train-limit",
        "512",  # a tenth held out for calibration still leaves a full batch of 256
        "--test-limit",
        "128",
        "--no-compile",
    ),
    bench_model_export=(
        *("--fp16", "--parity-images", "64", "--audit-batches", "1,2,7,16", "--variant-images", "128"),
        *OPEN_FP16_LIMITS,
    ),
    bench=("--engines", "torch-cpu-fp32,ort-cpu-fp32", "--batch-sizes", "1,8", "--seconds", "0.1", "--min-runs", "3"),
    full_train=("--preset", "quick", *TINY, "--epochs", "2", "--train-limit", "1024", "--test-limit", "256"),
    cpu_table=("--smoke",),
    openvino_tests=("-k", "registers_once"),  # the wiring: the suite runs the whole module anyway
    bench_profile=(
        "--engines",
        "torch-cpu-fp32,ort-cpu-fp32",
        "--batch-sizes",
        "8",
        "--seconds",
        "0.1",
        "--min-runs",
        "3",
        "--profile",
        "8",
    ),
    # torch eager alone: the compilers take minutes on 2 cores (they run on the GPU host)
    perf_inference=("--batch-sizes", "1,8", "--seconds", "0.1", "--profile-batch", "8", "--engines", "torch-eager"),
    perf_training=(
        *("--width-ratio", "16", "--hidden", "64", "--image-size", "32"),
        *("--batch", "32", "--steps", "3", "--variants", "eager"),
    ),
    full_familiarity=("--device", "cpu", "--fit-images", "600", "-k", "10"),
)


@dataclass
class Step:
    name: str
    command: str
    returncode: int | None = None  # None: not run (the stage budget ran out before it)
    seconds: float = 0.0
    output_tail: str = ""


@dataclass
class Goal:
    goal: str
    measured: str
    met: bool | None  # None: could not be measured (a step failed or did not run)
    source: str  # the step whose command produced the figure


@dataclass
class Validation:
    """Runs the steps of the chosen stages and keeps the report up to date after each one."""

    profile: Profile
    out: Path
    work: Path
    budget_seconds: float
    stages: list[str]
    steps: list[Step] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    environment: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.environment = describe_environment()
        self.stage_deadline = 0.0

    def start_stage(self) -> None:
        self.stage_deadline = time.monotonic() + self.budget_seconds

    def run(
        self,
        name: str,
        arguments: list[str],
        module: str = "vggdeploy",
        stdout: Path | None = None,
        script: str | None = None,
    ) -> Step:
        """One command, within what is left of the stage budget; its output goes to the log and its tail to the report
        (its standard output alone to ``stdout`` when given, for a command that prints JSON). ``script``: a bash
        script of the checkout instead of ``python -m module``, run with this python as its PYTHON."""
        if script:
            runner = sys.executable if script.endswith(".py") else "bash"
            shown = ["python" if script.endswith(".py") else "bash", script]
            command = [runner, str(REPOSITORY / script), *arguments]
        else:
            shown, command = ["python", "-m", module], [sys.executable, "-m", module, *arguments]
        step = Step(name, " ".join([*shown, *arguments]))
        self.steps.append(step)
        left = self.stage_deadline - time.monotonic()
        if left < 5:
            step.output_tail = "not run: the stage budget was spent"
            self.write()
            return step
        started = time.monotonic()
        log = self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"== {name}: {step.command}", flush=True)
        with log.open("w") as sink, stdout.open("w") if stdout else contextlib.nullcontext(sink) as answers:
            process = subprocess.Popen(
                command,
                stdout=answers,
                stderr=subprocess.STDOUT if answers is sink else sink,
                env={**os.environ, "PYTHON": sys.executable},
                start_new_session=True,  # its own process group: a timeout stops its children too (data workers)
            )
            try:
                step.returncode = process.wait(timeout=left)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                step.returncode = 124
        step.seconds = time.monotonic() - started
        text = log.read_text(errors="replace")
        step.output_tail = "\n".join(text.splitlines()[-15:])
        print(f"   exit {step.returncode} after {step.seconds:.1f} s", flush=True)
        self.write()
        return step

    def write(self) -> None:
        report = {
            "profile": self.profile.name,
            "stages": self.stages,
            "environment": self.environment,
            "steps": [asdict(step) for step in self.steps],
            "figures": self.figures,
            "goals": [asdict(goal) for goal in self.goals],
        }
        write_json(self.out / "gpu-report.json", report)
        write_text(self.out / "gpu-report.md", format_markdown(report))
        logs = [
            f"==== {step.name}: {step.command}\n{self.log_path(step.name).read_text(errors='replace')[-LOG_CHARS:]}"
            for step in self.steps
            if self.log_path(step.name).is_file()
        ]
        write_text(self.out / "gpu-logs.txt", "\n".join(logs))

    def log_path(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"


def describe_environment() -> dict:
    """Device, driver and library versions, as the commands will see them."""
    import numpy
    import onnx
    import torch

    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "onnx": onnx.__version__,
        "numpy": numpy.__version__,
        "code": git_commit(),
        "source_sha256": source_fingerprint(),
    }
    try:
        import onnxruntime

        environment["onnxruntime"] = f"{onnxruntime.__version__} from {Path(onnxruntime.__file__).parent.parent}"
        environment["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError as error:
        environment["onnxruntime"] = f"not importable: {error}"
    try:
        import onnxsim

        environment["onnxsim"] = onnxsim.__version__
    except ImportError as error:
        environment["onnxsim"] = f"not importable: {error}"
    if shutil.which("nvidia-smi"):
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        environment["nvidia_smi"] = query.stdout.strip() or query.stderr.strip()
    return environment


def git_commit() -> str | None:
    """The checkout's commit, "-dirty" when its files differ from it (the device's copy of .git can lag the tree)."""
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return result.stdout.strip() or None


REPOSITORY = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("vggdeploy", "scripts", "tests")


def source_fingerprint(root: Path = REPOSITORY) -> str:
    """SHA-256 (12 hex digits) of the code that ran: every .py/.sh file under vggdeploy/, scripts/ and tests/, and
    pyproject.toml, by relative path and content. `scripts/gpu/pack.sh` prints the same figure for the tree it packs
    beside, which names the code of a report when git cannot."""
    digest = hashlib.sha256()
    sources = sorted(
        path for folder in SOURCE_FOLDERS for path in (root / folder).rglob("*") if path.suffix in (".py", ".sh")
    )
    files = [root / "pyproject.toml", *sources]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def copy_png(source: Path, target: Path) -> None:
    if source.is_file():
        shutil.copyfile(source, target)


def runtime_stage(validation: Validation) -> None:
    profile, work = validation.profile, validation.work
    seed = RunFolder(work / "seed")
    model = model_file(seed.onnx)
    validation.run("seed-train", ["train", *profile.seed_train, "--out", str(seed.path), "--quiet"])
    summary = read_json(seed.summary)
    if summary:
        validation.figures["seed_train"] = pick(
            summary, "selected_test_accuracy", "final_test_accuracy", "wall_seconds", "train_images_per_second"
        )
    copy_png(seed.curves, validation.out / "seed-curves.png")
    validation.run("seed-export", ["export", "--checkpoint", str(seed.best_checkpoint), *profile.export])
    exported = read_json(seed.onnx / "export_report.json")
    if exported:
        validation.figures["seed_export"] = exported
    check = validation.run("seed-check", ["check", "--model", str(model), *profile.check])
    checked = read_json(reports_folder(model) / "check.json")
    if checked:
        validation.figures["seed_check"] = checked
    add_check_goals(validation, checked, check)
    golden_folder, answers = seed.onnx / "golden", validation.work / "seed-run.json"
    ran = validation.run(
        "seed-run",
        ["run", "--model", str(model), str(golden_folder), "--json", "--top-k", "10", "--provider", profile.provider],
        stdout=answers,
    )
    add_run_goal(
        validation, read_json(answers) if ran.returncode == 0 else None, read_json(golden_folder / "golden.json"), ran
    )

    bench_model = make_bench_model(validation)
    bench = validation.run("bench", ["bench", "--model", str(bench_model), *profile.bench])
    benched = read_json(reports_folder(bench_model) / "bench.json")
    if benched:
        validation.figures["bench"] = benched
    copy_png(reports_folder(bench_model) / "bench.png", validation.out / "bench.png")
    add_bench_goals(validation, benched, bench)

    # only the modules that hold gpu tests: another module's import (hypothesis, say) cannot stop the step
    tests_folder = REPOSITORY / "tests"
    gpu_modules = sorted(str(p) for p in tests_folder.rglob("test_*.py") if "pytest.mark.gpu" in p.read_text())
    tests = validation.run("pytest-gpu", ["-m", "gpu", "-q", "-p", "no:cacheprovider", *gpu_modules], module="pytest")
    counts = pytest_counts(tests)
    validation.figures["pytest_gpu"] = counts
    validation.goals.append(
        Goal(
            "the 3 gpu-marked tests pass",
            ", ".join(f"{n} {w}" for w, n in counts.items()) or "no result",
            counts.get("passed") == 3 and tests.returncode == 0 if tests.returncode is not None else None,
            tests.name,
        )
    )


def make_bench_model(validation: Validation) -> Path:
    """The full-width VGG-11-BN at 224 px (tiny on the CPU) that bench and the ablations time: a few training steps
    (latency does not depend on the weights), then the export with its fp16 file. Made once per host."""
    bench_run = RunFolder(validation.work / "bench-model")
    bench_model = model_file(bench_run.onnx)
    if bench_model.with_suffix(".fp16.onnx").is_file() and bench_run.best_checkpoint.is_file():
        return bench_model  # the runtime stage made it on this host
    profile = validation.profile
    validation.run("bench-model-train", ["train", *profile.bench_model_train, "--out", str(bench_run.path), "--quiet"])
    validation.run(
        "bench-model-export",
        ["export", "--checkpoint", str(bench_run.best_checkpoint), *profile.bench_model_export],
    )
    return bench_model


PERF_PARTS = ("inference", "training")
PERF_RESERVE_SECONDS = 20  # what a part leaves for its report and the stage's end


def perf_stage(validation: Validation, parts: tuple[str, ...]) -> None:
    """The speed ablations (scripts/gpu/perf.py): bench --profile on the bench model, then every ONNX Runtime
    variant against torch eager, torch.compile max-autotune and AOTInductor, then the training-step variants. Each
    part gets the stage's time left (inference half of it when training follows) and skips what does not fit."""
    profile, perf = validation.profile, validation.work / "perf"
    if "inference" in parts:
        bench_model = make_bench_model(validation)
        checkpoint = RunFolder.of_model(bench_model).best_checkpoint
        profiled = validation.work / "bench-profile"
        validation.run(
            "bench-profile",
            ["bench", "--model", str(bench_model), *profile.bench_profile, "--report-dir", str(profiled)],
        )
        benched = read_json(profiled / "bench.json")
        if benched:
            validation.figures["bench_profile"] = BenchReport.from_json(benched).format()
        left = validation.stage_deadline - time.monotonic() - PERF_RESERVE_SECONDS
        share = left / 2 if "training" in parts else left
        fp16 = bench_model.with_suffix(".fp16.onnx")
        step = validation.run(
            "perf-inference",
            [
                "inference",
                "--model",
                str(fp16),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(perf),
                *profile.perf_inference,
                "--seconds-allowed",
                f"{max(share, 1):.0f}",
            ],
            script="scripts/gpu/perf.py",
        )
        add_inference_goals(validation, read_json(perf / "inference.json"), step)
    if "training" in parts:
        left = validation.stage_deadline - time.monotonic() - PERF_RESERVE_SECONDS
        step = validation.run(
            "perf-training",
            ["training", "--out", str(perf), *profile.perf_training, "--seconds-allowed", f"{max(left, 1):.0f}"],
            script="scripts/gpu/perf.py",
        )
        add_training_goals(validation, read_json(perf / "training.json"), step)
    for part in PERF_PARTS:
        text = (perf / f"{part}.md").read_text() if (perf / f"{part}.md").is_file() else None
        if text:
            validation.figures[f"perf_{part}_text"] = text


def _speed(cell: dict) -> float:
    return 1 / cell["p50_ms"] if cell["batch"] == 1 else cell["images_per_second"]


def add_inference_goals(validation: Validation, ablation: dict | None, step: Step) -> None:
    """Issue #32's inference goals from the ablation: the fastest ONNX Runtime variant within 1.3x of
    torch.compile max-autotune at each batch size, batch-1 p50 <= 0.20 ms, batch 256 >= 25,000 img/s."""
    cells = (ablation or {}).get("cells", [])
    validation.figures["perf_inference"] = ablation

    def best(batch: int, prefix: str) -> dict | None:
        here = [c for c in cells if c["batch"] == batch and c["engine"].startswith(prefix)]
        return max(here, key=_speed, default=None)

    for batch in (1, 8, 64, 256):
        ort, compiled = best(batch, "ort-"), best(batch, "torch-compile")
        ratio = _speed(compiled) / _speed(ort) if ort and compiled else None
        validation.goals.append(
            Goal(
                f"batch {batch}: fastest ONNX Runtime within 1.3x of torch.compile max-autotune",
                "not measured" if ratio is None else f"{ort['engine']} {ratio:.2f}x slower ({compiled['engine']})",
                None if ratio is None else ratio <= 1.3,
                step.name,
            )
        )
    single, large = best(1, "ort-"), best(256, "ort-")
    add_figure_goal(
        validation,
        "ONNX Runtime fp16 batch-1 p50 <= 0.20 ms",
        single,
        lambda cell: f"{cell['p50_ms']:.3f} ms ({cell['engine']})",
        lambda cell: cell["p50_ms"] <= 0.20,
        step,
    )
    add_figure_goal(
        validation,
        "ONNX Runtime fp16 batch 256 >= 25,000 img/s",
        large,
        lambda cell: f"{cell['images_per_second']:,.0f} img/s ({cell['engine']})",
        lambda cell: cell["images_per_second"] >= 25_000,
        step,
    )


def add_figure_goal(
    validation: Validation,
    goal: str,
    found: Measured | None,
    describe: Callable[[Measured], str],
    holds: Callable[[Measured], bool],
    step: Step,
) -> None:
    """One goal judged on what was measured (a row, or the rows it needs): "not measured" (met None) when it is
    None."""
    measured = found is not None
    validation.goals.append(
        Goal(goal, describe(found) if measured else "not measured", holds(found) if measured else None, step.name)
    )


def add_training_goals(validation: Validation, ablation: dict | None, step: Step) -> None:
    """Issue #32's training goal from the ablation: the fastest step variant at >= 10,000 img/s."""
    validation.figures["perf_training"] = ablation
    rates = [r for r in (ablation or {}).get("rates", []) if r["images_per_second"]]
    add_figure_goal(
        validation,
        "training step >= 10,000 img/s (VGG-11-BN, 224 px, bf16)",
        max(rates, key=lambda r: r["images_per_second"], default=None),
        lambda rate: f"{rate['images_per_second']:,.0f} img/s ({rate['variant']})",
        lambda rate: rate["images_per_second"] >= 10_000,
        step,
    )


def train_stage(
    validation: Validation, time_limit: float, fit_epochs: int | None = None, options: tuple[str, ...] = ()
) -> None:
    """The full preset under the time limit, then its export; ``fit_epochs``: as many of that many epochs as fit the
    limit (train --fit-to-time), the one-cycle schedule planned to end with them, instead of the preset's epochs;
    ``options``: more train options, the recipe a window tries (they override the preset's)."""
    full = RunFolder(validation.work / "full")
    fitted = ("--epochs", str(fit_epochs), "--fit-to-time") if fit_epochs else ()
    step = validation.run(
        "full-train",
        [
            "train",
            *validation.profile.full_train,
            *fitted,
            *options,
            "--time-limit",
            f"{time_limit:g}",
            "--out",
            str(full.path),
            "--quiet",
        ],
    )
    _full_training_goals(validation, full, step)
    exported = validation.run(
        "full-export", ["export", "--checkpoint", str(full.best_checkpoint), *validation.profile.full_export]
    )
    report = read_json(full.onnx / "export_report.json")
    calibration = (report or {}).get("calibration")
    validation.figures["full_calibration"] = calibration
    copy_png(reliability_diagram(full.onnx), validation.out / "full-reliability.png")
    test = (calibration or {}).get("test_set") or {}
    validation.goals.append(
        Goal(
            "full preset: test-set ECE <= 2.5 % (temperature fitted on held-out training images)",
            "no calibration"
            if not test
            else f"{test['before']['ece']:.2%} -> {test['after']['ece']:.2%} at T = {calibration['temperature']:.4f}",
            None if not test else calibration["fitted"] and test["after"]["ece"] <= 0.025,
            exported.name,
        )
    )
    benchmark = validation.work / "full-familiarity.json"
    step = validation.run(
        "full-familiarity",
        [
            str(full.best_checkpoint),
            "--model",
            str(model_file(full.onnx)),
            *validation.profile.full_familiarity,
            "--json",
            str(benchmark),
        ],
        script="scripts/familiarity_benchmark.py",
    )
    add_familiarity_goals(validation, read_json(benchmark) if step.returncode == 0 else None, step)


FAMILIARITY_AT_TEST = "exported `familiarity` output, 95 % of the test set"


def add_familiarity_goals(validation: Validation, benchmark: dict | None, step: Step) -> None:
    """Issue #35's goals for the full model, read from the exported output's rows at the threshold that accepts 95 %
    of the test set: at most 5 % of the digits, the noise and the blanks accepted, at most 20 % of inverted images."""
    validation.figures["full_familiarity"] = benchmark
    rows = {row["set"]: row for row in (benchmark or {}).get("rows", []) if row["score"] == FAMILIARITY_AT_TEST}
    for sets, limit in ((("digits", "noise", "blanks"), 0.05), (("inverted",), 0.20)):
        found = [rows[name] for name in sets if name in rows]
        add_figure_goal(
            validation,
            f"full model's familiarity, 95 % of the test set accepted: <= {limit:.0%} of {', '.join(sets)} accepted",
            found if len(found) == len(sets) else None,
            lambda found: ", ".join(f"{row['set']} {row['accepted']:.2%}" for row in found),
            lambda found, limit=limit: all(row["accepted"] <= limit for row in found),
            step,
        )


def cpu_stage(validation: Validation, only_table: str | None = None) -> None:
    """The OpenVINO tests (short, and the parity through OpenVINO that issue #14 asks for), then BENCHMARKS.md's CPU
    engine tables (``only_table``: vgg11 or quick alone), measured on this host's CPU by the script that makes them
    here. OpenVINO runs only on an Intel CPU with the openvino bundle carried; elsewhere the tests skip and bench
    skips it, each with the reason."""
    tests = validation.run(
        "pytest-openvino",
        [
            "-q",
            "-p",
            "no:cacheprovider",
            str(REPOSITORY / "tests" / "deploy" / "test_openvino.py"),
            *validation.profile.openvino_tests,
        ],
        "pytest",
    )
    add_openvino_tests_goal(validation, tests)
    table = validation.work / "cpu-table"
    only = ("--only", only_table) if only_table else ()
    validation.run("cpu-table", [*validation.profile.cpu_table, *only, str(table)], script="scripts/cpu_table.sh")
    for model in ("vgg11", "quick"):  # the tables go into gpu-report.md (a device call brings back 8 files at most)
        saved = read_json(table / f"bench-{model}" / "bench.json")
        if saved:
            validation.figures[f"cpu_bench_{model}"] = saved
    add_cpu_goals(validation, validation.figures.get("cpu_bench_vgg11"), validation.figures.get("cpu_bench_quick"))


def add_openvino_tests_goal(validation: Validation, tests: Step) -> None:
    """Met only when the OpenVINO tests ran and none was skipped; skipped tests (not an Intel CPU, or no plugin
    carried) or a step that did not run show nothing either way."""
    counts = pytest_counts(tests)
    validation.figures["pytest_openvino"] = counts
    unknown = tests.returncode is None or (tests.returncode == 0 and counts.get("skipped"))
    validation.goals.append(
        Goal(
            "the OpenVINO tests pass, none skipped (parity of fp32 and int8 through OpenVINO)",
            (", ".join(f"{n} {w}" for w, n in counts.items()) or "no result")
            + (f" (only {' '.join(validation.profile.openvino_tests)})" if validation.profile.openvino_tests else ""),
            None if unknown else tests.returncode == 0,
            tests.name,
        )
    )


def add_cpu_goals(validation: Validation, vgg11: dict | None, quick: dict | None) -> None:
    """Issue #14's goals, from the full-size VGG-11's bench and the quick model's."""
    report = BenchReport.from_json(vgg11) if vgg11 else None
    single = report.cpu_batch_1_p50() if report else {}
    torch_ms = single.get("torch-cpu-fp32")
    best = report.best_deployable_cpu_engine() if report else None
    skipped = ", ".join(sorted((vgg11 or {}).get("skipped", {})))
    for goal, engine, limit in (
        ("VGG-11 224 px, batch 1: best deployable CPU engine >= 5x torch eager fp32", best, 5.0),
        ("VGG-11 224 px, batch 1: ORT fp32 >= 1.5x torch eager fp32", "ort-cpu-fp32", 1.5),
    ):
        ms = single.get(engine)
        speedup = torch_ms / ms if ms and torch_ms else None
        measured = (
            "no result"
            if speedup is None
            else f"{engine} {ms:.3g} ms, {speedup:.2f}x torch {torch_ms:.3g} ms"
            + (f" (skipped: {skipped})" if skipped else "")
        )
        validation.goals.append(Goal(goal, measured, None if speedup is None else speedup >= limit, "cpu-table"))
    at_256 = {m["engine"] for m in (quick or {}).get("measurements", []) if m["batch"] == 256}
    every = ENGINE_SETS["cpu"]
    validation.goals.append(
        Goal(
            "quick model: a batch-256 throughput for every CPU engine",
            "no result" if not quick else f"{len(at_256 & set(every))} of {len(every)} engines",
            None if not quick or not at_256 else at_256 >= set(every),
            "cpu-table",
        )
    )


def pytest_counts(step: Step) -> dict[str, int]:
    """passed/failed/skipped/error counts from pytest's summary line."""
    return {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|error)", step.output_tail)}


def _full_training_goals(validation: Validation, full: RunFolder, step: Step) -> None:
    """Accuracy against wall time of the full preset's run (table and PNG), and its three training goals."""
    summary = read_json(full.summary)
    metrics = full.metrics
    history = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    # epoch_seconds is training and evaluation; what elapsed_seconds adds beyond it is the checkpoint saves
    rows = [
        pick(row, "epoch", "elapsed_seconds", "epoch_seconds", "test_accuracy", "train_images_per_second")
        for row in history
    ]
    validation.figures["full_train"] = {"summary": summary, "accuracy_against_time": rows}
    copy_png(full.curves, validation.out / "full-curves.png")
    if rows:
        plot_accuracy_against_time(
            validation.out / "full-accuracy-time.png", rows, "full preset: test accuracy against wall time"
        )
    within_4 = max((r["test_accuracy"] for r in rows if r["elapsed_seconds"] <= 240), default=None)
    final = rows[-1] if rows else None
    ran = step.returncode is not None
    validation.goals += (
        [
            Goal(
                ">= 95.0 % test accuracy within the first 4 min",
                "no epoch ended" if within_4 is None else f"{within_4:.2%}",
                None if within_4 is None else within_4 >= 0.95,
                step.name,
            ),
            Goal(
                ">= 95.5 % test accuracy in <= 10 min",
                "no epoch ended"
                if final is None
                else f"{final['test_accuracy']:.2%} at {final['elapsed_seconds']:.0f} s",
                None if final is None else final["test_accuracy"] >= 0.955 and final["elapsed_seconds"] <= 600,
                step.name,
            ),
            Goal(
                ">= 10,000 train img/s (VGG-11-BN, 224 px, bf16)",
                "no summary" if not summary else f"{summary['train_images_per_second']:,.0f} img/s",
                None if not summary else summary["train_images_per_second"] >= 10_000,
                step.name,
            ),
        ]
        if ran
        else []
    )


def add_check_goals(validation: Validation, checked: dict | None, step: Step) -> None:
    results = {r["name"]: r for r in (checked or {}).get("results", [])}
    fp32, fp16 = results.get("fp32"), results.get("fp16")
    calibration = (checked or {}).get("calibration")
    validation.goals += [
        Goal(
            "every variant's ECE within +0.5 pp of torch fp32's (at the model's temperature)",
            "no result"
            if not calibration
            else ", ".join(f"{name} {v['ece']:.2%}" for name, v in calibration["variants"].items())
            + f" vs torch {calibration['reference']['ece']:.2%}",
            None if not calibration else not calibration["worse_than_limit"],
            step.name,
        ),
        Goal(
            "fp32 (TF32 off): 100 % top-1 agreement, max |logit diff| <= 1e-3",
            "no result"
            if not fp32
            else f"{fp32['top1_agreement']:.2%}, {fp32['max_abs_diff']:.3g} on {fp32['images']} images",
            None if not fp32 else fp32["top1_agreement"] == 1.0 and fp32["max_abs_diff"] <= 1e-3,
            step.name,
        ),
        Goal(
            "fp16: accuracy drop <= 0.05 pp",
            "no result" if not fp16 else f"{fp16['accuracy_change_pp']:+.2f} pp",
            None if not fp16 else -fp16["accuracy_change_pp"] <= 0.05,
            step.name,
        ),
        Goal(
            "no node left on the CPU (strict provider session)",
            "no result" if not checked else f"check ran on {checked['provider']}, exit {step.returncode}",
            None if not checked else step.returncode == 0 and checked["provider"] == validation.profile.provider,
            step.name,
        ),
    ]


def add_run_goal(validation: Validation, answers: dict | None, golden: dict | None, step: Step) -> None:
    """`vggdeploy run` as a user runs it, on the export's golden images: each answer against golden.json."""
    measured, met = "no result", None
    if answers and golden:
        expected = {entry["file"]: entry for entry in golden["images"]}
        pairs = [(answer, expected[Path(answer["file"]).name]) for answer in answers["predictions"]]
        gaps = [abs(a - b) for answer, entry in pairs for a, b in zip(answer["logits"], entry["logits"], strict=True)]
        gap = max(gaps, default=float("inf"))
        top1 = sum(answer["top"][0]["index"] == entry["predicted"] for answer, entry in pairs)
        atol = golden["tolerance"]["logits_atol"]
        validation.figures["seed_run"] = {"images": len(pairs), "top1_as_golden": top1, "max_logit_diff": gap}
        measured = f"{top1} of {len(pairs)} top-1 as golden, max |logit diff| {gap:.3g} (tolerance {atol:g})"
        met = top1 == len(pairs) == len(golden["images"]) and gap <= atol and not answers["errors"]
    validation.goals.append(
        Goal(
            f"run --provider {validation.profile.provider}: the golden images answered as golden.json says",
            measured,
            met,
            step.name,
        )
    )


def add_bench_goals(validation: Validation, benched: dict | None, step: Step) -> None:
    rows = {(m["engine"], m["batch"]): m for m in (benched or {}).get("measurements", [])}
    engine = "ort-cpu-fp32" if validation.profile.rehearsal else GRAPH_ENGINE
    reference = "torch-cpu-fp32" if validation.profile.rehearsal else "torch-cuda-fp16-cl"
    largest = max((batch for name, batch in rows if name == engine), default=None)
    single, many = rows.get((engine, 1)), rows.get((engine, largest))
    torch_single = rows.get((reference, 1))
    ratio = (
        f"; {torch_single['p50_ms'] / single['p50_ms']:.2f}x {reference} in the same run"
        if single and torch_single
        else ""
    )
    validation.goals += [
        Goal(
            f"{engine} batch-1 p50 <= 0.20 ms",
            "no result" if not single else f"{single['p50_ms']:.3f} ms{ratio}",
            None if not single else single["p50_ms"] <= 0.20,
            step.name,
        ),
        Goal(
            f"{engine} batch 256 >= 25,000 img/s",
            "no result" if not many else f"{many['images_per_second']:,.0f} img/s at batch {largest}",
            None if not many or largest != 256 else many["images_per_second"] >= 25_000,
            step.name,
        ),
    ]


def pick(row: dict, *keys: str) -> dict:
    return {key: row.get(key) for key in keys}


def format_markdown(report: dict) -> str:
    environment = report["environment"]
    device = environment.get("cuda_device") or environment["cpu"]
    lines = [f"# GPU validation: {', '.join(report['stages'])} ({report['profile']})", ""]
    if report["profile"] == "cpu-rehearsal":
        lines += [
            "**Rehearsal on the CPU with tiny models: these figures check the wiring, they are not GPU results.**",
            "",
        ]
    lines += [f"Device: {device}", "", "```", json.dumps(environment, indent=2), "```", "", "## Steps", ""]
    lines.append(
        markdown_table(
            [{**s, "command": f"`{s['command']}`", "seconds": round(s["seconds"], 1)} for s in report["steps"]],
            ["name", "command", "returncode", "seconds"],
        )
    )
    if report["goals"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}
        rows = [{**g, "met": verdict[g["met"]]} for g in report["goals"]]
        lines += ["", "## Goals", "", markdown_table(rows, ["goal", "measured", "met", "source"])]
    bench = report["figures"].get("bench")
    if bench:
        lines += ["", f"## bench ({bench['device']})", ""]
        lines.append(
            markdown_table(
                bench["measurements"], ["engine", "batch", "p50_ms", "p99_ms", "images_per_second", "peak_fraction"]
            )
        )
        lines += [f"skipped {engine}: {why}" for engine, why in bench["skipped"].items()]
    for model in ("vgg11", "quick"):
        cpu_bench = report["figures"].get(f"cpu_bench_{model}")
        if cpu_bench:
            lines += ["", f"## CPU engines: {model}", "", "```", BenchReport.from_json(cpu_bench).format(), "```"]
    check = report["figures"].get("seed_check")
    if check:
        lines += ["", f"## check (provider {check['provider']})", ""]
        lines.append(
            markdown_table(
                check["results"], ["name", "images", "max_abs_diff", "top1_agreement", "accuracy_change_pp", "passed"]
            )
        )
    familiarity = report["figures"].get("full_familiarity")
    if familiarity:
        lines += ["", f"## full model: familiarity ({familiarity['fit_images']:,} training images fitted)", ""]
        lines.append(markdown_table(familiarity["rows"], list(familiarity["rows"][0])))
    train = report["figures"].get("full_train")
    if train and train["accuracy_against_time"]:
        lines += ["", "## full preset: test accuracy against wall time", ""]
        lines.append(
            markdown_table(
                train["accuracy_against_time"],
                ["epoch", "elapsed_seconds", "epoch_seconds", "test_accuracy", "train_images_per_second"],
            )
        )
    if report["figures"].get("bench_profile"):
        lines += ["", "## bench --profile", "", "```", report["figures"]["bench_profile"], "```"]
    for part in ("inference", "training"):
        text = report["figures"].get(f"perf_{part}_text")
        if text:
            lines += ["", f"## perf: {part} ablation", "", text]
    failed = [s for s in report["steps"] if s["returncode"] not in (0, None)]
    for step in failed:
        lines += ["", f"## {step['name']} exited {step['returncode']}", "", "```", step["output_tail"], "```"]
    return "\n".join(lines) + "\n"


STAGES = ("runtime", "train", "cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=(*STAGES, "perf", "all"))
    parser.add_argument("--out", type=Path, required=True, help="where gpu-report.json/.md and the PNGs go ($OUT)")
    parser.add_argument("--work", type=Path, default=None, help="models and logs [default: OUT/work]")
    parser.add_argument("--rehearse", action="store_true", help="the same stages on the CPU with tiny models")
    parser.add_argument("--budget-minutes", type=float, default=9.0, help="per stage [default: 9]")
    parser.add_argument(
        "--train-minutes",
        type=float,
        default=None,
        help="train stage: the --time-limit of the full run [default: the budget less 160 s, for its export and "
        "the familiarity benchmark]",
    )
    parser.add_argument(
        "--cpu-table-only",
        choices=("vgg11", "quick"),
        default=None,
        help="cpu stage: one of its two tables, the full-size VGG-11's or the quick model's [default: both]",
    )
    parser.add_argument(
        "--full-fit-epochs",
        type=int,
        default=None,
        metavar="N",
        help="train stage: as many of N epochs as fit the time limit (train --epochs N --fit-to-time), the schedule "
        "planned to end with them [default: the preset's epochs, stopped at the limit]",
    )
    parser.add_argument(
        "--full-train-options",
        type=shlex.split,
        default=[],
        metavar="'OPTIONS'",
        help="train stage: more options for the full run, one quoted string (e.g. '--calibration-holdout 2000')",
    )
    parser.add_argument(
        "--perf-parts",
        type=lambda text: tuple(text.split(",")),
        default=PERF_PARTS,
        help="perf stage: inference, training or both (one device call each when time is short) [default: both]",
    )
    args = parser.parse_args(argv)
    if set(args.perf_parts) - set(PERF_PARTS):
        parser.error(f"--perf-parts takes {' and/or '.join(PERF_PARTS)}, comma-separated")
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    validation = Validation(
        REHEARSAL if args.rehearse else GPU, args.out, args.work or args.out / "work", args.budget_minutes * 60, stages
    )
    validation.write()
    for stage in stages:
        validation.start_stage()
        if stage == "runtime":
            runtime_stage(validation)
        elif stage == "cpu":
            cpu_stage(validation, args.cpu_table_only)
        elif stage == "perf":
            perf_stage(validation, args.perf_parts)
        else:
            # what the budget leaves after the full run: its evaluation, the export that fits the temperature, and
            # the familiarity benchmark
            time_limit = args.train_minutes * 60 if args.train_minutes else max(30.0, validation.budget_seconds - 160)
            train_stage(validation, time_limit, args.full_fit_epochs, tuple(args.full_train_options))
    validation.write()
    failed = [s.name for s in validation.steps if s.returncode != 0]
    print(
        f"report: {args.out / 'gpu-report.md'}" + (f"; steps that did not pass: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
