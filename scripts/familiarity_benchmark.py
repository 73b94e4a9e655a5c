"""Which familiarity score tells a model's own kind of image from others (issue #35's measurement).

For a checkpoint trained on Fashion-MNIST or on a folder of one's own images: logits and penultimate features of the
training images (minus the held-out calibration slice), the slice, the test set, and sets the model never saw, made
here (nothing downloaded), in the model's channels:

- digits: the digits 0-9 drawn in Pillow's own font, white on black like Fashion-MNIST, at random sizes, positions,
  rotations and stroke widths;
- letters: A-Z drawn the same way;
- noise: uniform random pixels;
- blanks: images of one grey level, black to white;
- inverted: the model's test images with their levels inverted (255 - x);
- upside down: the model's test images flipped top to bottom;
- Fashion-MNIST: its test images, for a model of other images.

Each score (maximum softmax and energy at the temperature fitted on the slice; Mahalanobis distance and k-th nearest
neighbour distance on the penultimate features; Mahalanobis distance on the first stage's channel statistics, each
channel's mean and standard deviation over the image; and the sum of the two Mahalanobis scores, each standardised on
the slice) is fitted on the training images where it needs a fit, its threshold set on the slice to accept 95 % of
it, and then reported per set: AUROC against the test set, the share of the set accepted, and the share of the test
set rejected.

With ``--model`` (that checkpoint's export), the deployed score too: the ``familiarity`` output of the ONNX graph,
through ONNX Runtime, at the metadata's threshold and at the threshold that accepts 95 % of the test set.
``--fit-images N`` fits the scores on N of the training images, drawn at random: a quicker, noisier measurement
(the k-NN distance costs in proportion to the images it searches). ``--device cuda`` runs torch's pass and the
exported graph (ONNX Runtime's CUDA provider) on the GPU, where a 224 px model's images would take hours on a CPU.

    python scripts/familiarity_benchmark.py artifacts/vgg11_bn-w8-32px/checkpoints/best.pt \
        [--model artifacts/vgg11_bn-w8-32px/onnx/model.onnx] [--json out.json] [--fit-images 5000] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vggdeploy.data.batches import to_input_tensor
from vggdeploy.data.dataset import dataset_of
from vggdeploy.data.fashion_mnist import load_split
from vggdeploy.errors import UsageError, run_script
from vggdeploy.metrics.calibration import fit_temperature
from vggdeploy.metrics.familiarity import (
    GaussianFit,
    NeighbourFit,
    accepted,
    auroc,
    energy,
    max_softmax,
    threshold_accepting,
)
from vggdeploy.model.checkpoint import rebuild_model
from vggdeploy.report import markdown_table
from vggdeploy.train.devices import resolve_device

SIDE = 28  # Fashion-MNIST's size: every made set is drawn at it and preprocessed like the test images


def drawn_characters(characters: str, count: int, seed: int) -> np.ndarray:
    """``count`` images of random characters from ``characters``, white on black, varied in size and pose."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, SIDE, SIDE), dtype=np.uint8)
    for index in range(count):
        canvas = Image.new("L", (2 * SIDE, 2 * SIDE), 0)
        font = ImageFont.load_default(size=int(rng.integers(18, 34)))
        character = characters[index % len(characters)]
        ImageDraw.Draw(canvas).text(
            (SIDE + rng.integers(-4, 5), SIDE + rng.integers(-4, 5)),
            character,
            fill=255,
            font=font,
            anchor="mm",
            stroke_width=int(rng.integers(0, 3)),
            stroke_fill=255,
        )
        turned = canvas.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR)
        images[index] = np.asarray(turned.resize((SIDE, SIDE), Image.Resampling.BILINEAR))
    return images


def unfamiliar_sets(test_images: np.ndarray, channels: int, seed: int = 0, data_dir=None) -> dict[str, np.ndarray]:
    """The sets a model was not trained for, in its channels (gray drawn, repeated for colour; resized with the test
    images' preprocessing): for a model of one's own images, Fashion-MNIST test images too."""
    rng = np.random.default_rng(seed)

    def as_model_sees(gray: np.ndarray) -> np.ndarray:
        return gray if channels == 1 else np.repeat(gray[:, None], channels, axis=1)

    sets = {
        "digits": as_model_sees(drawn_characters("0123456789", 2000, seed)),
        "letters": as_model_sees(drawn_characters("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 2000, seed + 1)),
        "noise": rng.integers(0, 256, (1000, *test_images.shape[1:]), dtype=np.uint8),
        "blanks": as_model_sees(
            np.repeat(np.linspace(0, 255, 16).round().astype(np.uint8), SIDE * SIDE).reshape(16, SIDE, SIDE)
        ),
        "inverted": 255 - test_images[:1000],
        "upside down": np.flip(test_images[:1000], axis=-2).copy(),
    }
    if channels != 1 or test_images.shape[-1] != SIDE:  # not Fashion-MNIST itself: its garments are other images
        sets["Fashion-MNIST"] = as_model_sees(load_split("test", data_dir)[0][:1000].numpy())
    return sets


def model_inputs(images: np.ndarray, spec, device: torch.device, chunk: int = 1000):
    """uint8 images as the model's normalised inputs on ``device``, ``chunk`` at a time (resized there)."""
    for start in range(0, len(images), chunk):
        uint8 = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk])).to(device)
        yield to_input_tensor(uint8, spec)


@torch.no_grad()
def representations(model, images: np.ndarray, spec, device: torch.device) -> dict[str, np.ndarray]:
    """What the scores read of uint8 (N, H, W) images: the logits, the penultimate features (the last Linear layer's
    input), and the first stage's statistics (each channel's mean and standard deviation over the image)."""
    head, last, first = model.classifier[:-1], model.classifier[-1], model.features[0]
    parts: dict[str, list[np.ndarray]] = {"logits": [], "penultimate": [], "first stage": []}
    for batch in model_inputs(images, spec, device):
        early = first(batch)
        penultimate = head(model.features[1:](early))
        parts["first stage"].append(torch.cat([early.mean((2, 3)), early.std((2, 3))], 1).double().cpu().numpy())
        parts["penultimate"].append(penultimate.double().cpu().numpy())
        parts["logits"].append(last(penultimate).double().cpu().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def standardised(score, reference: dict[str, np.ndarray]):
    """``score`` rescaled to mean 0 and standard deviation 1 on ``reference`` (the slice), so that scores of
    different layers can be added."""
    values = score(reference)
    mean, deviation = values.mean(), values.std()
    return lambda seen: (score(seen) - mean) / deviation


def deployed_scores(
    model_path: Path, images: dict[str, np.ndarray], device: torch.device
) -> tuple[float, dict[str, np.ndarray]]:
    """The exported graph's familiarity scores of each set of uint8 images, and the metadata's threshold (ONNX
    Runtime's provider for ``device``)."""
    from vggdeploy.deploy.contract import familiarity_threshold
    from vggdeploy.deploy.preprocess import PreprocessSpec
    from vggdeploy.deploy.session import ProviderSettings, open_model, run_scored

    model = open_model(model_path, ProviderSettings(provider=device.type))
    threshold = familiarity_threshold(model.metadata)
    if threshold is None:
        raise UsageError(f"{model_path}: has no familiarity output (exported with --no-familiarity?)")
    spec = PreprocessSpec.from_metadata(model.metadata["preprocessing"])
    scores = {}
    for name, batch in images.items():
        parts = [run_scored(model.session, b.cpu().numpy(), 256)[1] for b in model_inputs(batch, spec, device)]
        scores[name] = np.concatenate(parts).astype(np.float64)
    return threshold, scores


def score_rows(score_name: str, threshold: float, familiar: np.ndarray, sets: dict[str, np.ndarray]) -> list[dict]:
    return [
        {
            "score": score_name,
            "set": set_name,
            "images": len(unfamiliar),
            "auroc": round(auroc(familiar, unfamiliar), 4),
            "accepted": round(accepted(unfamiliar, threshold), 4),
            "test rejected": round(1 - accepted(familiar, threshold), 4),
        }
        for set_name, unfamiliar in sets.items()
    ]


def measure(
    checkpoint: Path,
    data_dir: str | None,
    k: int,
    model_path: Path | None = None,
    fit_images: int | None = None,
    device: torch.device | None = None,
) -> dict:
    device = device or torch.device("cpu")
    model, state = rebuild_model(checkpoint)
    model.to(device)
    dataset = dataset_of(state, data_dir)
    spec = dataset.spec(state["model_args"].image_size)
    held_out = np.zeros(len(dataset.train_labels), dtype=bool)
    held_out[np.asarray(state["calibration_split"]["indices"])] = True
    train_images, train_labels = dataset.train_images.numpy(), dataset.train_labels.numpy()
    test_images, test_labels = dataset.test_images.numpy(), dataset.test_labels.numpy()
    fitted = np.flatnonzero(~held_out)
    if fit_images is not None and fit_images < len(fitted):
        fitted = np.sort(np.random.default_rng(0).choice(fitted, fit_images, replace=False))

    train = representations(model, train_images[fitted], spec, device)
    held = representations(model, train_images[held_out], spec, device)
    test = representations(model, test_images, spec, device)
    labels = train_labels[fitted]
    temperature = fit_temperature(held["logits"], train_labels[held_out])
    penultimate = GaussianFit.of(train["penultimate"], labels)
    first_stage = GaussianFit.of(train["first stage"], labels)
    neighbours = NeighbourFit.of(train["penultimate"], k)
    scores = {
        "max softmax": lambda seen: max_softmax(seen["logits"], temperature),
        "energy": lambda seen: energy(seen["logits"], temperature),
        "Mahalanobis, penultimate": lambda seen: penultimate.score(seen["penultimate"]),
        f"{k}-NN distance, penultimate": lambda seen: neighbours.score(seen["penultimate"]),
        "Mahalanobis, first-stage statistics": lambda seen: first_stage.score(seen["first stage"]),
    }
    late = standardised(scores["Mahalanobis, penultimate"], held)
    early = standardised(scores["Mahalanobis, first-stage statistics"], held)
    scores["Mahalanobis, first stage + penultimate"] = lambda seen: early(seen) + late(seen)
    made = unfamiliar_sets(test_images, dataset.channels, data_dir=data_dir)
    sets = {name: representations(model, images, spec, device) for name, images in made.items()}
    rows = []
    for score_name, score in scores.items():
        rows += score_rows(
            score_name, threshold_accepting(score(held)), score(test), {n: score(s) for n, s in sets.items()}
        )
    if model_path is not None:
        threshold, deployed = deployed_scores(model_path, {"test": test_images, **made}, device)
        familiar = deployed.pop("test")
        rows += score_rows("exported `familiarity` output, its threshold", threshold, familiar, deployed)
        at_test = threshold_accepting(familiar)
        rows += score_rows("exported `familiarity` output, 95 % of the test set", at_test, familiar, deployed)
    accuracy = float((test["logits"].argmax(1) == test_labels).mean())
    return {
        "checkpoint": str(checkpoint),
        "temperature": temperature,
        "test_accuracy": accuracy,
        "fit_images": len(fitted),
        "device": device.type,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", default=None, help="the Fashion-MNIST folder, where not the system's")
    parser.add_argument("-k", type=int, default=50, help="the neighbour whose distance is the k-NN score")
    parser.add_argument("--model", type=Path, default=None, help="the checkpoint's export: its familiarity output too")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--fit-images", type=int, default=None, help="fit the scores on this many training images [default: all]"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="cpu",
        help="torch's pass and ONNX Runtime's provider; auto: CUDA where torch sees a GPU [default: cpu]",
    )
    args = parser.parse_args(argv)
    if args.k < 1:
        raise UsageError(f"-k must be at least 1, got {args.k}")
    if args.fit_images is not None and args.fit_images <= args.k:
        raise UsageError(f"--fit-images must be more than -k ({args.k}), got {args.fit_images}")
    device = resolve_device(args.device)
    figures = measure(args.checkpoint, args.data_dir, args.k, args.model, args.fit_images, device)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(
        f"{args.checkpoint}: test accuracy {figures['test_accuracy']:.2%}, T = {figures['temperature']:.4g}, "
        f"scores fitted on {figures['fit_images']:,} training images"
    )
    print(markdown_table(figures["rows"], list(figures["rows"][0])), end="")
    return 0


if __name__ == "__main__":
    run_script(main)
