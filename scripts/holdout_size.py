"""How many held-out images the temperature fit needs: T fitted on random subsets of a checkpoint's calibration slice.

    .venv/bin/python scripts/holdout_size.py CHECKPOINT [--sizes 500,1000,2000,3000] [--draws 20] [--data-dir DIR]

Takes the training images the checkpoint held out of every gradient step (its ``calibration_split``), fits the
temperature on the whole slice and on ``--draws`` random subsets of each size, and prints, per size, the spread of T
and the test-set ECE each T gives. Every image held out is one the model did not learn from, so the smallest slice
that calibrates as well as the whole one is the one to keep (BENCHMARKS.md, "Calibration").
"""

from __future__ import annotations

import argparse

import numpy as np

from vggdeploy.data.dataset import dataset_of
from vggdeploy.errors import UsageError, run_script
from vggdeploy.export.calibrate import held_out_slice
from vggdeploy.metrics.calibration import CalibrationFigures, fit_temperature
from vggdeploy.model.checkpoint import rebuild_model
from vggdeploy.passes import torch_logits


def sizes(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are whole numbers separated by commas, got {text!r}") from None
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"sizes must be at least 1, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument(
        "--sizes", type=sizes, default=[500, 1000, 2000, 3000], help="subset sizes [500,1000,2000,3000]"
    )
    parser.add_argument("--draws", type=int, default=20, help="random subsets per size [20]")
    parser.add_argument("--data-dir", default=None, help="the Fashion-MNIST folder [the usual search]")
    args = parser.parse_args()
    if args.draws < 1:
        raise UsageError(f"--draws must be at least 1, got {args.draws}")
    model, state = rebuild_model(args.checkpoint)
    dataset = dataset_of(state, args.data_dir)
    held_out = held_out_slice(state, dataset)
    if held_out is None:
        raise UsageError(f"{args.checkpoint} holds no calibration slice (trained with --calibration-holdout 0?)")
    too_large = [size for size in args.sizes if size > len(held_out[1])]
    if too_large:
        raise UsageError(f"--sizes {too_large} exceed the {len(held_out[1])} images of the checkpoint's slice")
    spec = dataset.spec(model.args.image_size)
    slice_logits, slice_labels = torch_logits(model, held_out[0], spec), held_out[1].numpy()
    test_logits, test_labels = torch_logits(model, dataset.test_images, spec), dataset.test_labels.numpy()

    def test_ece(temperature: float) -> float:
        return CalibrationFigures.measure(test_logits, test_labels, temperature).ece

    whole = fit_temperature(slice_logits, slice_labels)
    print(f"test ECE at T = 1: {test_ece(1.0):.2%}")
    print(f"whole slice, {len(slice_labels):,} images: T = {whole:.4f}, test ECE {test_ece(whole):.2%}")
    print("| images | T mean | T sd | test ECE mean | test ECE max |")
    print("|---|---|---|---|---|")
    generator = np.random.default_rng(0)
    for size in args.sizes:
        fitted = [
            fit_temperature(slice_logits[chosen], slice_labels[chosen])
            for chosen in (generator.choice(len(slice_labels), size, replace=False) for _ in range(args.draws))
        ]
        eces = [test_ece(temperature) for temperature in fitted]
        print(f"| {size:,} | {np.mean(fitted):.4f} | {np.std(fitted):.4f} | {np.mean(eces):.2%} | {max(eces):.2%} |")


if __name__ == "__main__":
    run_script(main)
