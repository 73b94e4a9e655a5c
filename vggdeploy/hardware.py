"""Timing and the hardware's ceilings: the one timing loop, the GPUs' spec-sheet peaks and the CPU's measured one.

``bench``, ``train``, the export's int8 speed figure and ``scripts/cpu_layer_times.py`` all time and compare with
these, so a peak fraction means the same thing wherever it is printed. torch is imported only where it is used.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable

from vggdeploy.deploy.cpu import cpu_instruction_sets, cpu_vendor
from vggdeploy.deploy.session import cuda_driver_present

# Dense (no sparsity) peak TFLOP/s per precision, SXM parts, from the vendors' data sheets.
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.0, "bf16": 989.0},
    "H200": {"fp32": 67.0, "tf32": 494.7, "fp16": 989.0, "bf16": 989.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "fp16": 362.0, "bf16": 362.0},
}


def torch_sees_cuda() -> bool:
    """Whether torch would train on a CUDA GPU here (``torch.cuda.is_available()``). torch reaches the GPU through the
    NVIDIA driver, so where no driver answers the answer is no without importing torch (seconds), and a usage error
    or ``train --help`` on a machine without a GPU answers at once."""
    if not cuda_driver_present() or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


MAX_TIMED_RUNS = 10_000  # beyond ``min_runs``: a sub-millisecond engine ends here before its seconds do


def timed_runs(run: Callable[[], object], seconds: float, min_runs: int, warmup: int) -> list[float]:
    """Seconds per call: ``warmup`` untimed calls, then at least ``min_runs`` timed ones and as many more as fit in
    ``seconds``, at most MAX_TIMED_RUNS (``run`` must wait for its device itself, so each time covers the whole
    call)."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < MAX_TIMED_RUNS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls, after one untimed call (a ceiling, not a latency distribution)."""
    return min(timed_runs(run, seconds=0.0, min_runs=repeats, warmup=1))


def median_ms(run: Callable[[], object], repeats: int) -> float:
    """The median of ``repeats`` timed calls in milliseconds, after one untimed call."""
    times = sorted(timed_runs(run, seconds=0.0, min_runs=repeats, warmup=1))
    return times[len(times) // 2] * 1e3


def cpu_fp32_gflops(size: int = 2048, repeats: int = 3) -> float:
    """This CPU's fp32 compute ceiling: the faster of torch's matrix product and ONNX Runtime's (MLAS), since a CPU
    has no spec-sheet peak to look up and either library may reach more of it on a given CPU."""
    import numpy as np
    import torch

    a, b = torch.rand(size, size), torch.rand(size, size)
    torch_seconds = best_seconds(lambda: torch.mm(a, b), repeats)
    rng = np.random.default_rng(0)
    ort_seconds = _ort_matmul_seconds(
        "MatMul", rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32), repeats
    )
    return 2 * size**3 / min(torch_seconds, ort_seconds) / 1e9


def cpu_int8_gops(size: int = 2048, repeats: int = 3) -> float:
    """This CPU's int8 compute ceiling as ONNX Runtime reaches it: a uint8 x int8 MatMulInteger (the MLAS kernels
    behind its QLinearConv and QGemm; VNNI where the CPU has it), in multiply-adds x 2 per second."""
    import numpy as np

    rng = np.random.default_rng(0)
    activations = rng.integers(0, 255, (size, size), dtype=np.uint8)
    weights = rng.integers(-127, 127, (size, size), dtype=np.int8)
    return 2 * size**3 / _ort_matmul_seconds("MatMulInteger", activations, weights, repeats) / 1e9


def _ort_matmul_seconds(op_type: str, activations, weights, repeats: int) -> float:
    """The fastest of ``repeats`` runs of a one-node ONNX Runtime CPU graph ``activations @ weights``, the weights a
    constant (pre-packed once, as in a model)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rows, columns = activations.shape[0], weights.shape[1]
    graph = helper.make_graph(
        [helper.make_node(op_type, ["a", "b"], ["c"])],
        "matmul",
        [
            helper.make_tensor_value_info(
                "a", helper.np_dtype_to_tensor_dtype(activations.dtype), list(activations.shape)
            )
        ],
        [
            helper.make_tensor_value_info(
                "c", TensorProto.INT32 if op_type == "MatMulInteger" else TensorProto.FLOAT, [rows, columns]
            )
        ],
        [numpy_helper.from_array(weights, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return best_seconds(lambda: session.run(None, {"a": activations}), repeats)


def cpu_name() -> str:
    """The CPU as reports name it: vendor and model, the instruction sets that matter, cores and torch's threads."""
    import torch

    sets = ", ".join(cpu_instruction_sets()) or "no AVX2"
    return f"{cpu_vendor()} CPU ({sets}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def gpu_peak_tflops(device_name: str, precision: str) -> float | None:
    """The spec-sheet peak of a GPU named like torch names it ("NVIDIA H100 80GB HBM3"); None when unknown."""
    peaks = next((table for key, table in GPU_PEAK_TFLOPS.items() if key in device_name), None)
    return None if peaks is None else peaks[precision]


def peak_fraction(images_per_second: float, gflops_per_image: float, peak_gflops: float | None) -> float | None:
    """The share of a peak that a throughput uses (``gflops_per_image`` counts every FLOP of one image's work)."""
    return None if not peak_gflops else images_per_second * gflops_per_image / peak_gflops
