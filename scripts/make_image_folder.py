"""Make a labelled RGB image folder from what this machine has: Fashion-MNIST items in colour on coloured grounds.

Each image is one Fashion-MNIST picture used as a mask: its garment in a random colour over a random background
colour, at a random size, saved as PNG or JPEG. Nothing is downloaded. Layouts: ``split`` writes
OUT/train/<class>/ and OUT/test/<class>/ (test images from Fashion-MNIST's test split), ``single`` writes
OUT/<class>/ only (vggdeploy splits it).

    python scripts/make_image_folder.py OUT [--train-per-class 1000] [--test-per-class 200] [--layout split]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vggdeploy.data.fashion_mnist import CLASS_NAMES, load_split
from vggdeploy.errors import DataError, UsageError, run_script


def folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")


def colour_image(gray: np.ndarray, rng: np.random.Generator, size: int) -> Image.Image:
    """The item in one random colour over another (the gray values as the mix), resized to ``size``."""
    foreground, background = rng.integers(0, 256, (2, 3))
    mix = gray[..., None].astype(np.float32) / 255
    rgb = background * (1 - mix) + foreground * mix
    image = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")
    return image.resize((size, size), Image.BILINEAR)


def write_split(out: Path, images, labels, per_class: int, rng: np.random.Generator, sizes: tuple[int, int]) -> int:
    written = 0
    for label, name in enumerate(CLASS_NAMES):
        folder = out / folder_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        for rank, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
            image = colour_image(images[index], rng, int(rng.integers(sizes[0], sizes[1] + 1)))
            suffix = ".jpg" if rank % 2 else ".png"
            image.save(folder / f"{index:05d}{suffix}", **({"quality": 92} if suffix == ".jpg" else {}))
            written += 1
    return written


def make_image_folder(
    out: Path,
    train_per_class: int,
    test_per_class: int,
    layout: str = "split",
    seed: int = 0,
    sizes: tuple[int, int] = (28, 56),
    data_dir=None,
) -> int:
    """Write the folder; returns the number of image files. Refuses, before writing anything, a folder that already
    holds files (a second run with fewer images per class once left the first run's images in it) and counts the
    data cannot give (a negative count once took all but the last images; a count past a class's images was cut
    silently)."""
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: already holds files, which would mix with this set: choose a new or empty folder")
    rng = np.random.default_rng(seed)
    train_images, train_labels = (t.numpy() for t in load_split("train", data_dir))
    test_images, test_labels = (t.numpy() for t in load_split("test", data_dir))
    single = layout == "single"
    each_train, each_test = int(np.bincount(train_labels).min()), int(np.bincount(test_labels).min())
    least_test, most_test = (0, each_train - 1) if single else (1, each_test)
    if not least_test <= test_per_class <= most_test:
        raise UsageError(f"--test-per-class must be from {least_test} to {most_test:,}, got {test_per_class}")
    most_train = each_train - test_per_class if single else each_train
    if not 1 <= train_per_class <= most_train:
        why = "Fashion-MNIST's training images of each class" + (", less --test-per-class" if single else "")
        raise UsageError(f"--train-per-class must be from 1 to {most_train:,} ({why}), got {train_per_class}")
    if single:
        return write_split(out, train_images, train_labels, train_per_class + test_per_class, rng, sizes)
    written = write_split(out / "train", train_images, train_labels, train_per_class, rng, sizes)
    return written + write_split(out / "test", test_images, test_labels, test_per_class, rng, sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--layout", choices=("split", "single"), default="split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    count = make_image_folder(args.out, args.train_per_class, args.test_per_class, args.layout, args.seed)
    print(f"wrote {count:,} images under {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_script(main)
