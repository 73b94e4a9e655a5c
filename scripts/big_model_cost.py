"""What exporting and checking a big model costs on this machine: wall time and peak resident memory of each command,
against the size of the exported fp32 file (issue #33's measurement).

The checkpoint is made by the CLI itself: the `full` preset's model (VGG-11-BN at 224 px by default, 4096-wide
hidden layers: a 515 MB fp32 file) trained for one epoch on a few Fashion-MNIST images (its weights do not matter
for the cost), then `vggdeploy export` and `vggdeploy check` run as they would for a user, each in its own
process, whose peak RSS the kernel reports when it ends (``wait4``'s ``ru_maxrss``); export's own report adds the
seconds of each of its phases and its peak RSS when each ended.

With ``--held-out N`` the checkpoint's held-out slice becomes N of the 60,000 training images, evenly spread, as
``train`` keeps them (the weights saw none of them, nor most others: only the cost is real), so export fits the
temperature and the familiarity score as it would for a user.

    python scripts/big_model_cost.py --arch A --image-size 224 --out /tmp/big [--held-out 5000] [--check-images 500]
        [--json cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from vggdeploy.artifacts import RunFolder, export_report, model_file
from vggdeploy.errors import UsageError, run_script
from vggdeploy.report import markdown_table

# the `full` preset's model (VGG-11-BN, 4096-wide hidden layers) uncompiled, for one epoch on a few images, every
# recipe setting given (the recipe would otherwise plan 1,500 steps)
TRAINING = [
    *("--preset", "full", "--no-compile", "--epochs", "1", "--batch-size", "16", "--lr", "0.01"),
    *("--train-limit", "64", "--test-limit", "64"),
]


def measured(command: list[str]) -> dict:
    """Run ``command``; its wall time, peak RSS and exit code (its output goes to this script's stderr)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=sys.stderr)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "command": shlex.join(["vggdeploy", *command[3:]]),
        "exit": process.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3),  # Linux reports kilobytes
    }


FASHION_MNIST_TRAINING_IMAGES = 60_000


def hold_out(checkpoint: Path, images: int) -> None:
    """Rewrite the checkpoint's held-out slice as ``images`` of the Fashion-MNIST training images, evenly spread."""
    import torch

    state = torch.load(checkpoint, weights_only=False)
    indices = torch.arange(images) * FASHION_MNIST_TRAINING_IMAGES // images
    state["calibration_split"] = {
        **state["calibration_split"],
        "indices": indices,
        "of_images": FASHION_MNIST_TRAINING_IMAGES,
    }
    torch.save(state, checkpoint)


def measure(
    model: list[str], out: Path, export_options: list[str], check: list[str] | None, held_out: int | None = None
) -> dict:
    """Train (``model``: the architecture options), export and check; each step's figures."""
    cli = [sys.executable, "-m", "vggdeploy"]
    steps = [measured([*cli, "train", *model, *TRAINING, "--quiet", "--overwrite", "--out", str(out / "run")])]
    checkpoint = RunFolder(out / "run").best_checkpoint
    if held_out is not None:
        hold_out(checkpoint, held_out)
    onnx = out / "run" / "onnx"
    steps.append(measured([*cli, "export", "--checkpoint", str(checkpoint), "--out", str(onnx), *export_options]))
    size = model_file(onnx).stat().st_size if model_file(onnx).is_file() else None
    report = export_report(onnx, "json")
    phases = json.loads(report.read_text())["phases"] if report.is_file() else []
    if check is not None:
        steps.append(
            measured([*cli, "check", "--model", str(model_file(onnx)), "--checkpoint", str(checkpoint), *check])
        )
    for step in steps:
        step["rss_over_file"] = None if size is None else round(step["peak_rss_gb"] * 1e9 / size, 2)
    return {
        "model_file_mb": None if size is None else round(size / 1e6, 2),
        "cpu_count": os.cpu_count(),
        "steps": steps,
        "export_phases": phases,  # export's own record: seconds, and its peak memory when each phase ended
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="A")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--width-ratio", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=4096, help="width of the hidden fully connected layers")
    parser.add_argument("--out", type=Path, required=True, help="a folder for the run, its export and reports")
    parser.add_argument(
        "--export-options", default="", help="options added to export, with '=': --export-options='--fp16 --int8'"
    )
    parser.add_argument(
        "--check-images", type=int, default=None, help="check on this many test images (default: check's)"
    )
    parser.add_argument(
        "--held-out", type=int, default=None, help="give the checkpoint a held-out slice of this many training images"
    )
    parser.add_argument("--no-check", action="store_true", help="measure train and export only")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.check_images is not None and args.check_images < 1:
        raise UsageError(f"--check-images must be at least 1, got {args.check_images}")
    if args.held_out is not None and not 1 <= args.held_out <= FASHION_MNIST_TRAINING_IMAGES:
        raise UsageError(f"--held-out must be 1 to {FASHION_MNIST_TRAINING_IMAGES:,}, got {args.held_out}")
    check = None if args.no_check else ([] if args.check_images is None else ["--images", str(args.check_images)])
    model = [
        *("--arch", args.arch, "--image-size", str(args.image_size)),
        *("--width-ratio", str(args.width_ratio), "--hidden", str(args.hidden)),
    ]
    figures = measure(model, args.out, shlex.split(args.export_options), check, args.held_out)
    print(f"fp32 model file: {figures['model_file_mb']} MB; {figures['cpu_count']} CPU cores")
    print(markdown_table(figures["steps"], list(figures["steps"][0])), end="")
    if figures["export_phases"]:
        print("\nexport's phases (peak RSS so far when each ended):")
        print(markdown_table(figures["export_phases"], ["phase", "seconds", "peak_rss_gb"]), end="")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(step["exit"] == 0 for step in figures["steps"]) else 1


if __name__ == "__main__":
    run_script(main)
