"""Where batch-1 CPU latency goes: per-operator time of torch eager and ONNX Runtime, against this CPU's ceilings.

    .venv/bin/python scripts/cpu_layer_times.py MODEL.onnx CHECKPOINT [--runs 10]

Prints, per engine (torch eager fp32, ONNX Runtime fp32, and ONNX Runtime int8 when model.int8.onnx lies beside the
model), the time per run of each operator type (torch.profiler self time; ONNX Runtime's own profiler), then the
convolutions' GFLOP/s and the fully connected layers' weight-read GB/s, next to three ceilings measured here: a large
fp32 matrix product (the faster of torch and ONNX Runtime), a large uint8 x int8 one (ONNX Runtime's MLAS, VNNI
where the CPU has it) and a read of an FC-sized tensor. The floors: the convolutions at the matrix-product rate plus
one read of the FC weights (4 bytes each in fp32, 1 in int8); every engine's time is printed as a multiple of each
floor.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vggdeploy.artifacts import sibling
from vggdeploy.deploy.contract import INPUT_NAME
from vggdeploy.deploy.session import captured_native_stderr, create_session
from vggdeploy.errors import UsageError, run_script
from vggdeploy.hardware import best_seconds, cpu_fp32_gflops, cpu_int8_gops
from vggdeploy.model.checkpoint import rebuild_model

CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_overrideable", "aten::_convolution", "Conv", "QLinearConv")
FC_OPS = ("aten::addmm", "aten::mm", "aten::linear", "FusedGemm", "Gemm", "MatMul", "QGemm", "MatMulInteger")


def torch_times(model: torch.nn.Module, images: torch.Tensor, runs: int) -> dict[str, float]:
    with torch.inference_mode():
        for _ in range(3):
            model(images)
        # the profiler's native library logs GPU probes ("gpuGetDeviceCount failed") even for a CPU-only profile
        with (
            captured_native_stderr(),
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler,
        ):
            for _ in range(runs):
                model(images)
    return {e.key: e.self_cpu_time_total / 1e3 / runs for e in profiler.key_averages() if e.self_cpu_time_total > 0}


def ort_times(model_path: str, images: np.ndarray, runs: int) -> dict[str, float]:
    import onnxruntime as ort

    warmup = 3
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "ort")
        session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            session.run(None, {INPUT_NAME: images})
        with open(session.end_profiling()) as file:
            events = json.load(file)
    per_node: dict[tuple[str, str], list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[(event["args"]["op_name"], event["name"])].append(event["dur"] / 1e3)
    totals: dict[str, float] = defaultdict(float)
    for (op_name, _), durations in per_node.items():
        totals[op_name] += sum(durations[warmup:]) / runs  # the first runs pay allocation and pre-packing
    return dict(totals)


def read_bandwidth(fc_bytes: int, repeats: int = 5) -> float:
    """GB/s of summing an FC-sized fp32 tensor, best of ``repeats``."""
    weights = torch.rand(fc_bytes // 4)
    return fc_bytes / best_seconds(weights.sum, repeats) / 1e9


def floor_ms(
    conv_gflop: float, fc_weight_bytes: int, compute: float, bandwidth: float, conv_rates: list, fc_rates: list
) -> float:
    """Milliseconds per image no engine can beat: the convolutions at the best rate seen (the measured ceiling, or
    an engine that beat it; GFLOP/s) plus one read of the FC weights at the best bandwidth seen (GB/s)."""
    return conv_gflop / max(compute, *conv_rates) * 1e3 + fc_weight_bytes / max(bandwidth, *fc_rates) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an exported fp32 model.onnx")
    parser.add_argument("checkpoint", help="the checkpoint it came from")
    parser.add_argument("--runs", type=int, default=10)
    options = parser.parse_args()
    if options.runs < 1:  # zero runs once ended in a ZeroDivisionError traceback
        raise UsageError(f"--runs must be at least 1, got {options.runs}")

    model, state = rebuild_model(options.checkpoint)
    args = state["model_args"]
    images = torch.from_numpy(
        np.random.default_rng(0).random((1, args.in_channels, args.image_size, args.image_size), dtype=np.float32)
    )
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    flops = {str(op): count for op, count in counter.get_flop_counts()["Global"].items()}
    conv_gflop = sum(v for k, v in flops.items() if "convolution" in k) / 1e9
    fc_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))
    create_session(options.model)  # fails with a one-line reason on a bad model, before the long runs

    print(
        f"{args.name}, batch 1, {options.runs} runs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; convolutions {conv_gflop:.3g} GFLOP, FC weights {fc_bytes / 1e6:.3g} MB"
    )
    int8_model = sibling(options.model, "int8")
    engines = [
        ("torch eager fp32", "fp32", torch_times(model, images, options.runs)),
        ("ONNX Runtime CPU fp32", "fp32", ort_times(options.model, images.numpy(), options.runs)),
    ]
    if int8_model.is_file():
        engines.append(("ONNX Runtime CPU int8", "int8", ort_times(str(int8_model), images.numpy(), options.runs)))
    weight_bytes = {"fp32": fc_bytes, "int8": fc_bytes // 4}
    rates: dict[str, tuple[list, list]] = {"fp32": ([], []), "int8": ([], [])}  # GFLOP/s and GB/s reached
    totals = {}
    for engine, precision, times in engines:
        total = totals[engine] = sum(times.values())
        conv = sum(v for k, v in times.items() if k in CONV_OPS)
        fc = sum(v for k, v in times.items() if k in FC_OPS)
        rates[precision][0].append(conv_gflop / conv * 1e3)
        rates[precision][1].append(weight_bytes[precision] / fc / 1e6)
        print(f"\n{engine}: {total:.1f} ms of operator time per run")
        for name, ms in sorted(times.items(), key=lambda item: -item[1])[:6]:
            print(f"  {name:32s} {ms:7.2f} ms  {ms / total:6.1%}")
        print(
            f"  convolutions {conv:.1f} ms = {rates[precision][0][-1]:.0f} GFLOP/s; fully connected {fc:.1f} ms = "
            f"{rates[precision][1][-1]:.1f} GB/s of weights"
        )
    compute = {"fp32": cpu_fp32_gflops(2048, 5), "int8": cpu_int8_gops(2048, 5)}
    bandwidth = read_bandwidth(fc_bytes)
    floors = {
        precision: floor_ms(conv_gflop, weight_bytes[precision], compute[precision], bandwidth, *reached)
        for precision, reached in rates.items()
        if reached[0]
    }
    print(
        f"\nceilings here: fp32 matrix product {compute['fp32']:.0f} GFLOP/s, int8 matrix product "
        f"{compute['int8']:.0f} GOP/s, tensor read {bandwidth:.1f} GB/s"
    )
    for precision, floor in floors.items():
        print(f"{precision} floor {floor:.3g} ms per image (convolutions, and one read of the FC weights)")
    for engine, total in totals.items():
        distances = ", ".join(f"{total / floor:.2f}x the {precision} floor" for precision, floor in floors.items())
        print(f"  {engine}: {total:.3g} ms = {distances}")


if __name__ == "__main__":
    run_script(main)
