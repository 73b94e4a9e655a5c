"""The GPU speed ablations (vggdeploy.verify.ablation) as one command each, for the perf stage of scripts/gpu/validate.py.

  perf.py inference --model DIR/model.fp16.onnx --checkpoint best.pt --out DIR [--batch-sizes 1,8,64,256] ...
  perf.py training --out DIR [--width-ratio 1 --image-size 224 --batch 256 --steps 30] ...

Each writes OUT/<part>.json and OUT/<part>.md after every engine or variant, so a command stopped at its limit still
leaves what it measured.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from vggdeploy.config import PRESETS
from vggdeploy.data.batches import Augmentation, to_input_tensor
from vggdeploy.deploy.onnx_file import read_metadata
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.model.archs import ModelArgs
from vggdeploy.report import write_json, write_text
from vggdeploy.verify.ablation import ORT_VARIANTS, TORCH_ENGINES, TRAIN_VARIANTS, inference_ablation, training_ablation


def _names(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


def _writer(out: Path, part: str):
    def write(result) -> None:
        saved = asdict(result)
        if hasattr(result, "verdicts"):
            saved["verdicts"] = result.verdicts()
        write_json(out / f"{part}.json", saved)
        write_text(out / f"{part}.md", result.format())

    return write


def inference(args: argparse.Namespace) -> None:
    metadata = read_metadata(args.model)
    spec = PreprocessSpec.from_metadata(metadata["preprocessing"])
    generator = np.random.default_rng(0)  # latency does not depend on the pixels
    import torch

    sources = torch.from_numpy(generator.integers(0, 256, (max(args.batch_sizes), 28, 28), dtype=np.uint8))
    inputs = to_input_tensor(sources, spec).numpy()
    variants = tuple(v for v in ORT_VARIANTS if not args.variants or v.name in args.variants)
    write = _writer(args.out, "inference")
    result = inference_ablation(
        args.model,
        args.checkpoint,
        inputs,
        args.batch_sizes,
        args.seconds,
        args.profile_batch,
        variants,
        args.engines,
        args.seconds_allowed,
        progress=write,
    )
    write(result)
    print(result.format())


def training(args: argparse.Namespace) -> None:
    preset = PRESETS["full"]
    model = replace(
        preset.model,
        width_ratio=args.width_ratio,
        hidden=args.hidden or preset.model.hidden,
        image_size=args.image_size,
    )
    variants = tuple(v for v in TRAIN_VARIANTS if not args.variants or v.name in args.variants)
    write = _writer(args.out, "training")
    result = training_ablation(
        ModelArgs(**asdict(model)),
        args.batch,
        args.steps,
        variants,
        seconds_allowed=args.seconds_allowed,
        augmentation=Augmentation(preset.flip, preset.shift, preset.erase),
        progress=write,
    )
    write(result)
    print(result.format())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_subparsers(dest="part", required=True)
    infer = parts.add_parser("inference")
    infer.add_argument("--model", type=Path, required=True, help="the export's file to ablate (model.fp16.onnx)")
    infer.add_argument("--checkpoint", type=Path, required=True, help="the torch side")
    infer.add_argument("--batch-sizes", type=lambda t: tuple(int(b) for b in t.split(",")), default=(1, 8, 64, 256))
    infer.add_argument("--seconds", type=float, default=0.5, help="timed seconds per engine and batch size")
    infer.add_argument("--profile-batch", type=int, default=64)
    infer.add_argument("--variants", type=_names, default=(), help="ONNX Runtime variants [default: all]")
    infer.add_argument("--engines", type=_names, default=TORCH_ENGINES, help="torch engines [default: all]")
    train = parts.add_parser("training")
    train.add_argument("--width-ratio", type=int, default=1)
    train.add_argument("--hidden", type=int, default=None)
    train.add_argument("--image-size", type=int, default=224)
    train.add_argument("--batch", type=int, default=256)
    train.add_argument("--steps", type=int, default=30)
    train.add_argument("--variants", type=_names, default=(), help="step variants [default: all]")
    for part in (infer, train):
        part.add_argument("--out", type=Path, required=True)
        part.add_argument("--seconds-allowed", type=float, default=float("inf"), help="skip what does not fit")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (inference if args.part == "inference" else training)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
