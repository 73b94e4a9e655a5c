"""Where one inference's time goes, per kernel, measured the same way for torch and ONNX Runtime.

On a GPU, ``torch.profiler`` (CUPTI) records every CUDA kernel the process launches, ONNX Runtime's included, so
both sides are timed by the same tracer: kernel names, calls and device time per run. On the CPU there are no
kernels to trace, so torch is read from its top-level operators and ONNX Runtime from its own node profiler
(``SessionOptions.enable_profiling``). Every entry is sorted into a kind (convolution, matrix product, bias and
activation, pooling, layout changes), which is what makes two engines' profiles comparable layer class by class.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("conv", "gemm", "elementwise", "pool", "layout", "other")


# First match wins. cuDNN's convolution kernels have "gemm" (implicit GEMM) and their layout ("nhwc") in their names,
# its batch-norm and add-tensor kernels "cudnn"; Inductor's matrix-product templates are "triton_tem" like its
# convolution templates; "convert" is not a convolution.
_KIND_PATTERNS = (
    ("gemm", r"triton_tem\w*mm"),
    ("conv", r"triton_tem"),  # a convolution template, whatever its epilogue fuses (batch norm, ReLU, pooling)
    ("pool", r"pool"),
    ("elementwise", r"\bbn_|batch_?norm|add_?tensor"),
    ("conv", r"conv(?!ert)|fprop|dgrad|wgrad|implicit|winograd|cudnn"),
    (
        "layout",
        r"nchw|nhwc|transpose|permute|convert|copy|contiguous|cast|reshape|flatten|view|reorder|^pad$|memcpy|memset",
    ),
    ("gemm", r"gemm|nvjet|addmm|linear|matmul|cutlass|cublas|splitk"),
    ("elementwise", r"relu|add|bias|elementwise|triton_|vectorized|fill|clamp|mul|dropout"),
)


def kernel_kind(name: str) -> str:
    """The kind of work a kernel or operator name says it does (``other`` when it says none we know)."""
    lowered = name.lower()
    for kind, pattern in _KIND_PATTERNS:
        if re.search(pattern, lowered):
            return kind
    return "other"


@dataclass(frozen=True)
class KernelTime:
    """One kernel (or operator, or ONNX Runtime node kind) of an engine's run, averaged over the profiled runs."""

    name: str
    kind: str
    calls: float  # per run
    microseconds: float  # per run


@dataclass
class EngineProfile:
    """One engine's profile at one batch size."""

    engine: str
    batch: int
    runs: int
    source: str  # which tracer measured it, and what its times mean
    wall_microseconds: float  # per run, as the timing loop sees it
    kernels: list[KernelTime] = field(default_factory=list)

    @property
    def busy_microseconds(self) -> float:
        """The traced time per run (device time on a GPU); the rest of the wall time is launches and gaps."""
        return sum(kernel.microseconds for kernel in self.kernels)

    def by_kind(self) -> dict[str, float]:
        totals = dict.fromkeys(KINDS, 0.0)
        for kernel in self.kernels:
            totals[kernel.kind] += kernel.microseconds
        return totals

    def top(self, count: int = 8) -> list[KernelTime]:
        return sorted(self.kernels, key=lambda kernel: -kernel.microseconds)[:count]


def summed(entries: list[tuple[str, float]], runs: int) -> list[KernelTime]:
    """(name, microseconds) pairs of ``runs`` runs, grouped by name into per-run averages."""
    calls: dict[str, int] = {}
    total: dict[str, float] = {}
    for name, microseconds in entries:
        calls[name] = calls.get(name, 0) + 1
        total[name] = total.get(name, 0.0) + microseconds
    return [KernelTime(name, kernel_kind(name), calls[name] / runs, total[name] / runs) for name in total]


def top_level(events: list[dict]) -> list[dict]:
    """The trace events not nested in another of the same thread (an operator's own sub-operators would count
    twice)."""
    outermost: list[dict] = []
    ends: dict[object, float] = {}
    for event in sorted(events, key=lambda event: (event["ts"], -event.get("dur", 0))):
        thread = (event.get("pid"), event.get("tid"))
        if event["ts"] >= ends.get(thread, float("-inf")):
            outermost.append(event)
            ends[thread] = event["ts"] + event.get("dur", 0)
    return outermost


def kernels_from_trace(events: list[dict], runs: int, category: str) -> list[KernelTime]:
    """A chrome trace's events of one category (``kernel`` for CUDA kernels, ``cpu_op`` for torch operators, whose
    top-level ones alone are kept), averaged per run."""
    chosen = [event for event in events if event.get("cat") == category and "dur" in event]
    if category == "cpu_op":
        chosen = top_level(chosen)
    return summed([(event["name"], float(event["dur"])) for event in chosen], runs)


def _timed(run: Callable[[], None], runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        run()
    return (time.perf_counter() - start) / runs * 1e6


def traced(run: Callable[[], None], runs: int, on_gpu: bool) -> tuple[list[KernelTime], float, str]:
    """(kernels per run, wall microseconds per run, what was traced) of ``runs`` calls of ``run`` under
    torch.profiler, after one untimed call. ``run`` waits for its device itself."""
    from torch.profiler import ProfilerActivity, profile

    run()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    with profile(activities=activities) as profiler:
        wall = _timed(run, runs)
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    if on_gpu:
        return kernels_from_trace(events, runs, "kernel"), wall, "CUDA kernels traced by torch.profiler (device time)"
    return kernels_from_trace(events, runs, "cpu_op"), wall, "torch.profiler, top-level torch operators (CPU time)"


def ort_node_times(profile_file: str | Path, runs: int) -> list[KernelTime]:
    """ONNX Runtime's own profile (one JSON file per session), the last ``runs`` runs of it, grouped by operator
    type: node events are ``<node>_kernel_time``, runs are the ``model_run`` session events."""
    events = json.loads(Path(profile_file).read_text())
    model_runs = sorted(
        (event["ts"], event["ts"] + event["dur"])
        for event in events
        if event.get("cat") == "Session" and event.get("name") == "model_run"
    )[-runs:]
    if not model_runs:
        return []
    first = model_runs[0][0]
    nodes = [
        (event.get("args", {}).get("op_name", event["name"]), float(event["dur"]))
        for event in events
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") and event["ts"] >= first
    ]
    return summed(nodes, len(model_runs))


def ort_profiled(
    open_session: Callable[[str], object], make_run: Callable[[object], Callable[[], None]], runs: int
) -> tuple[list[KernelTime], float]:
    """(node times per operator type, wall microseconds per run) from ONNX Runtime's own profiler: a session of its
    own opened by ``open_session(profile_prefix)``, one untimed call, then ``runs`` timed ones."""
    with tempfile.TemporaryDirectory() as folder:
        session = open_session(str(Path(folder) / "onnxruntime"))
        run = make_run(session)
        run()
        wall = _timed(run, runs)
        return ort_node_times(session.end_profiling(), runs), wall


def ort_source(on_cpu: bool) -> str:
    """What ONNX Runtime's node times mean where they were taken."""
    where = "CPU time" if on_cpu else "host time: on a GPU the launch, not the kernel (CUPTI saw no kernel)"
    return f"ONNX Runtime's node profiler, per operator type ({where})"


PROFILE_RUNS = 10


def engine_profile(
    name: str,
    batch: int,
    run: Callable[[], None],
    on_gpu: bool,
    onnx_runtime_profile: Callable[[str], object] | None = None,
    make_run: Callable[[object], Callable[[], None]] | None = None,
) -> EngineProfile:
    """One engine's profile: its CUDA kernels on a GPU (torch and ONNX Runtime alike), torch's operators on the CPU.
    An ONNX Runtime engine passes ``onnx_runtime_profile`` (a session opened with that profile prefix) and
    ``make_run`` (its timed call on such a session): its own node profiler then serves on the CPU, and on a GPU
    where CUPTI saw no kernel."""
    if on_gpu or onnx_runtime_profile is None:
        kernels, wall, source = traced(run, PROFILE_RUNS, on_gpu=on_gpu)
        if kernels or onnx_runtime_profile is None:
            return EngineProfile(name, batch, PROFILE_RUNS, source, wall, kernels)
    kernels, wall = ort_profiled(onnx_runtime_profile, make_run, PROFILE_RUNS)
    return EngineProfile(name, batch, PROFILE_RUNS, ort_source(not on_gpu), wall, kernels)


def format_profiles(profiles: list[EngineProfile]) -> str:
    """Microseconds per run by kind, one column per engine, then each engine's heaviest kernels."""
    from vggdeploy.report import markdown_table

    columns = ["kind", *(f"{p.engine} (batch {p.batch})" for p in profiles)]

    def row(label: str, value: Callable[[EngineProfile], float]) -> dict:
        return {"kind": label, **{column: f"{value(p):,.1f}" for column, p in zip(columns[1:], profiles, strict=True)}}

    rows = [row(kind, lambda p, kind=kind: p.by_kind()[kind]) for kind in KINDS]
    rows += [
        row("traced, all kinds", lambda p: p.busy_microseconds),
        row("wall clock per run", lambda p: p.wall_microseconds),
    ]
    text = "Microseconds per run:\n\n" + markdown_table(rows, columns)
    for profile in profiles:
        text += f"\n{profile.engine}, batch {profile.batch}, {profile.runs} runs: {profile.source}\n\n"
        text += markdown_table(
            [
                {
                    "kernel": kernel.name[:90],
                    "kind": kernel.kind,
                    "calls per run": f"{kernel.calls:g}",
                    "us per run": f"{kernel.microseconds:,.1f}",
                    "share": f"{kernel.microseconds / max(profile.busy_microseconds, 1e-9):.1%}",
                }
                for kernel in profile.top()
            ],
            ["kernel", "kind", "calls per run", "us per run", "share"],
        )
    return text
