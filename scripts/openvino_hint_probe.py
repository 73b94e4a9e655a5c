"""What OpenVINO's LATENCY and THROUGHPUT hints do to one synchronous caller, on this CPU, without ONNX Runtime.

    pip install openvino   # in any venv with numpy; not a vggdeploy dependency
    python scripts/openvino_hint_probe.py MODEL.onnx [--image-size 224] [--batch-sizes 1,8,32] [--threads 2]

vggdeploy's OpenVINO path is ONNX Runtime's OpenVINO plugin, which offers Intel CPUs only. OpenVINO's own runtime
(the same CPU plugin inside) also compiles for other x86 CPUs, so this probe answers, on any of them, the question
behind ``--performance-hint auto``: with one synchronous call at a time (what ``run``, ``check`` and ``bench`` do),
which hint is faster at each batch size? For each hint it prints the streams OpenVINO chose, the p50 of single
synchronous calls, and, for comparison, the img/s of as many parallel requests as OpenVINO asks for (what
THROUGHPUT is designed for). Each runs at f32 inference precision, and also at bf16 where the CPU has bf16 units:
OpenVINO's default there is bf16, even for an fp32 model, which is why vggdeploy sets f32 explicitly.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    import openvino as ov
except ImportError:  # not a vggdeploy dependency: one line, as the CLI says a missing extra (exit 2)
    print("error: this probe needs OpenVINO's own runtime: pip install openvino", file=sys.stderr)
    sys.exit(2)


def p50_ms(call, runs: int) -> float:
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def parallel_images_per_second(compiled, inputs: np.ndarray, rounds: int) -> tuple[int, float]:
    requests = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(compiled, requests)
    for _ in range(requests):  # warm-up
        queue.start_async(inputs)
    queue.wait_all()
    start = time.perf_counter()
    for _ in range(rounds * requests):
        queue.start_async(inputs)
    queue.wait_all()
    return requests, rounds * requests * len(inputs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    if not Path(options.model).is_file():
        parser.exit(3, f"error: {options.model}: no such model file\n")
    if options.runs < 1 or options.threads < 1:
        parser.exit(2, "error: --runs and --threads must be at least 1\n")

    core = ov.Core()
    print(f"OpenVINO {ov.__version__} on {core.get_property('CPU', 'FULL_DEVICE_NAME')}, {options.threads} threads")
    precisions = ["f32", "bf16"] if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else ["f32"]
    print(
        "| batch | hint | precision | streams | one caller p50 | one caller img/s | parallel requests | their img/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for batch in (int(b) for b in options.batch_sizes.split(",")):
        inputs = np.random.default_rng(0).random((batch, 1, options.image_size, options.image_size), dtype=np.float32)
        for hint, precision in [(hint, precision) for precision in precisions for hint in ("LATENCY", "THROUGHPUT")]:
            model = core.read_model(options.model)
            model.reshape([batch, 1, options.image_size, options.image_size])
            config = {
                "PERFORMANCE_HINT": hint,
                "INFERENCE_NUM_THREADS": str(options.threads),
                "INFERENCE_PRECISION_HINT": precision,
            }
            compiled = core.compile_model(model, "CPU", config)
            request = compiled.create_infer_request()
            latency = p50_ms(lambda r=request, x=inputs: r.infer(x), options.runs)
            requests, parallel = parallel_images_per_second(compiled, inputs, max(1, options.runs // 2))
            print(
                f"| {batch} | {hint} | {precision} | {compiled.get_property('NUM_STREAMS')} | {latency:.3g} ms | "
                f"{batch / latency * 1e3:.1f} | {requests} | {parallel:.1f} |"
            )


if __name__ == "__main__":
    main()
