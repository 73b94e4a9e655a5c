"""Does an int8 file answer the same on every CPU? The variant's weights against ONNX Runtime's other formats.

Without VNNI (AVX2, AVX-512 before Cascade Lake) ONNX Runtime multiplies u8 activations by s8 weights in pairs summed
into 16 bits (VPMADDUBSW), which full-range weights can overflow: the answers then depend on the CPU. For an export's
``model.onnx``, the script quantises it as the int8 variant does (s8 weights in 7 bits), and with full-range s8 and
with u8 weights, from the same training images, and runs each on the model's test images twice:

- with ONNX Runtime's int8 kernels on this CPU;
- with its graph optimisations off, which evaluates the QDQ graph in float: the sums of a CPU that does not saturate
  (VNNI, ARM), the same everywhere.

It reports each one's top-1 agreement with the fp32 file and its accuracy, and the median time of a batch of 64 on
this CPU (the kernels').

    python scripts/int8_saturation.py artifacts/vgg11_bn-w8-32px/onnx/model.onnx [--images 10000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from vggdeploy.artifacts import checkpoint_beside
from vggdeploy.config import ExportConfig
from vggdeploy.data.batches import to_input_tensor
from vggdeploy.data.dataset import dataset_of
from vggdeploy.deploy.contract import OUTPUT_NAME
from vggdeploy.deploy.cpu import cpu_instruction_sets, cpu_vendor
from vggdeploy.deploy.onnx_file import read_metadata, require_model_file
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.deploy.session import run_scored
from vggdeploy.errors import UsageError, run_script
from vggdeploy.export.graph import familiarity_nodes
from vggdeploy.export.variants import INT8_WEIGHTS, VARIANT_INT8_WEIGHTS, int8_calibration_images, to_int8
from vggdeploy.hardware import median_ms
from vggdeploy.model.checkpoint import load_checkpoint
from vggdeploy.report import markdown_table

TIMED_BATCH = 64


def logits(model: onnx.ModelProto | Path, inputs: np.ndarray, exact: bool) -> tuple[np.ndarray, float]:
    """The model's logits for ``inputs`` and the median ms of a batch of TIMED_BATCH; ``exact``: graph optimisations
    off, so ONNX Runtime's int8 kernels never run."""
    options = ort.SessionOptions()
    if exact:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    name, timed = session.get_inputs()[0].name, inputs[:TIMED_BATCH]
    return run_scored(session, inputs)[0], median_ms(lambda: session.run([OUTPUT_NAME], {name: timed}), 20)


def measure(model_path: Path, checkpoint: Path, images: int, calibration_images: int, data_dir=None) -> dict:
    """Agreement with fp32 and accuracy of each int8 weight format, with this CPU's kernels and with exact sums."""
    spec = PreprocessSpec.from_metadata(read_metadata(model_path)["preprocessing"])
    dataset = dataset_of(load_checkpoint(checkpoint, mmap=True), data_dir)
    inputs = to_input_tensor(dataset.test_images[:images], spec).numpy()
    labels = dataset.test_labels[:images].numpy()
    calibration = to_input_tensor(int8_calibration_images(dataset.train_images, calibration_images), spec).numpy()
    reference, fp32_ms = logits(model_path, inputs, exact=False)
    excluded = familiarity_nodes(onnx.load(str(model_path), load_external_data=False))
    rows = []
    for weights in INT8_WEIGHTS:
        quantised = to_int8(model_path, excluded, calibration, weights=weights)
        for exact in (False, True):
            answers, ms = logits(quantised, inputs, exact)
            rows.append(
                {
                    "weights": weights + (" (the variant's)" if weights == VARIANT_INT8_WEIGHTS else ""),
                    "sums": "exact (float QDQ)" if exact else "this CPU's int8 kernels",
                    "agreement": float((answers.argmax(1) == reference.argmax(1)).mean()),
                    "accuracy": float((answers.argmax(1) == labels).mean()),
                    f"ms per {TIMED_BATCH}": None if exact else ms,
                }
            )
    return {
        "model": str(model_path),
        "cpu": f"{cpu_vendor()} ({', '.join(cpu_instruction_sets()) or 'no AVX2'})",
        "images": len(labels),
        "fp32_accuracy": float((reference.argmax(1) == labels).mean()),
        f"fp32_ms_per_{TIMED_BATCH}": fp32_ms,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="an export's model.onnx")
    parser.add_argument("--checkpoint", type=Path, default=None, help="its checkpoint, where not beside the export")
    parser.add_argument("--data-dir", default=None, help="the Fashion-MNIST folder, where not the system's")
    parser.add_argument("--images", type=int, default=10_000, help="test images (at most the test set)")
    parser.add_argument(
        "--calibration-images", type=int, default=ExportConfig().int8_calibration_images, help="as export's"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.images < 1 or args.calibration_images < 1:
        raise UsageError("--images and --calibration-images must be at least 1")
    model = require_model_file(args.model)
    figures = measure(
        model, args.checkpoint or checkpoint_beside(model), args.images, args.calibration_images, args.data_dir
    )
    print(
        f"{figures['model']} on {figures['cpu']}: {figures['images']:,} test images, fp32 accuracy "
        f"{figures['fp32_accuracy']:.2%}, {figures[f'fp32_ms_per_{TIMED_BATCH}']:.2f} ms per {TIMED_BATCH}"
    )
    shown = [
        {**row, "agreement": f"{row['agreement']:.2%}", "accuracy": f"{row['accuracy']:.2%}"} for row in figures["rows"]
    ]
    print(markdown_table(shown, list(shown[0])), end="")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_script(main)
