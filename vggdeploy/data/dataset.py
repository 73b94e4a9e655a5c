"""The labelled images a model learns from: Fashion-MNIST, or a folder of the user's own.

Training, export, check and bench all take their images, labels, class names and normalisation from a ``Dataset``;
a checkpoint records which one (its ``dataset`` entry; none means Fashion-MNIST), so the later stages find the same
images, the same test split and the same numbers again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from vggdeploy.data import folders
from vggdeploy.data.fashion_mnist import CLASS_NAMES, data_checksums, load_split
from vggdeploy.deploy.preprocess import COLORS, FASHION_MNIST_MEAN, FASHION_MNIST_STD, PreprocessSpec
from vggdeploy.errors import DataError, UsageError

FASHION_MNIST = "fashion-mnist"


FASHION_MNIST_NAME = "Fashion-MNIST"  # the data set's name in reports and in a model's training metadata


FOLDER = "folder"


@dataclass(frozen=True)
class Dataset:
    """Both splits as uint8 tensors ((N, H, W) gray or (N, 3, H, W) RGB) and what describes them."""

    name: str
    class_names: tuple[str, ...]
    color: str  # "grayscale" or "rgb"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    description: dict  # what checkpoints store to find this dataset again
    notes: list[str] = field(default_factory=list)  # for the user: skipped files, duplicates, the cache

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1

    def spec(self, size: int) -> PreprocessSpec:
        return PreprocessSpec(size, size, self.mean, self.std, self.color)

    def without_training_images(self) -> Dataset:
        """This dataset less its training split's images and labels, for steps that need only the test split and
        what describes the data: a folder of colour photos at 224 px holds gigabytes of training images."""
        return replace(
            self,
            train_images=self.train_images.new_empty((0, *self.train_images.shape[1:])),
            train_labels=self.train_labels.new_empty((0,)),
        )


def fashion_mnist(data_dir=None) -> Dataset:
    train_images, train_labels = load_split("train", data_dir)
    test_images, test_labels = load_split("test", data_dir)
    return Dataset(
        FASHION_MNIST_NAME,
        CLASS_NAMES,
        "grayscale",
        (FASHION_MNIST_MEAN,),
        (FASHION_MNIST_STD,),
        train_images,
        train_labels,
        test_images,
        test_labels,
        {"kind": FASHION_MNIST, "data_checksums": data_checksums(data_dir)},
    )


def image_folder(
    root: str | Path,
    image_size: int,
    color: str = "auto",
    test_fraction: float = 0.1,
    seed: int = 0,
    strict: bool = False,
    progress: bool = True,
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    test_fraction_given: bool = False,
) -> Dataset:
    """A folder of labelled images (see ``folders``) at ``image_size``. ``color`` auto: RGB as soon as one training
    image has colour. ``normalisation`` (mean, std) is computed from the training images unless given.
    ``test_fraction_given``: the user set ``--test-fraction``, which a folder with its own test split refuses."""
    if color not in ("auto", *COLORS):
        raise UsageError(f"--color must be auto, grayscale or rgb, got {color!r}")
    root = Path(root)
    scan = folders.scan_folder(root, test_fraction, seed)
    if test_fraction_given and scan.layout != "single":
        raise UsageError(
            f"--test-fraction: {root} has its own {scan.layout} split; the option splits a folder of class folders"
        )
    folders.check_memory(len(scan.train) + len(scan.test), image_size)
    train, train_cache = folders.decode_split(root, scan.train, image_size, "train", progress)
    test, test_cache = folders.decode_split(root, scan.test, image_size, "test", progress)
    failures = scan.unreadable + train.failures + test.failures
    if failures and strict:
        raise DataError(f"{failures[0]} (--strict: {len(failures)} unreadable image files or folders)")
    for split, decoded in (("train", train), ("test", test)):
        missing = sorted(set(range(len(scan.classes))) - set(decoded.labels.tolist()))
        if missing:
            raise DataError(f"{root}: class {scan.classes[missing[0]]!r} has no readable image in the {split} split")
    train, test = _shuffled(train, seed), _shuffled(test, seed)
    chosen = color if color != "auto" else ("rgb" if bool(train.colored.any()) else "grayscale")
    convert = (lambda images: images) if chosen == "rgb" else folders.to_grayscale_uint8
    train_images, test_images = convert(train.images), convert(test.images)
    mean, std = normalisation or folders.channel_statistics(train_images)
    notes = [
        f"{root}: {len(scan.classes)} classes, {len(train.files):,} training and {len(test.files):,} test images "
        f"({scan.layout} layout), {chosen}"
        + (f" ({int(train.colored.sum()):,} training images have colour)" if color == "auto" else " (--color)")
        + f"; decoded images {train_cache if train_cache == test_cache else f'train {train_cache}, test {test_cache}'}"
    ]
    if scan.unused_splits:
        notes.append(
            f"{' and '.join(scan.unused_splits)} left out: {scan.layout} are the training and test splits, and "
            "the validation images are held out of the training split (--calibration-holdout)"
        )
    if failures:
        shown = "; ".join(failures[: folders.LISTED_FAILURES])
        notes.append(f"skipped {len(failures)} unreadable image files or folders (--strict makes them fatal): {shown}")
    duplicates = folders.content_duplicates(train, test)
    if duplicates:
        notes.append(
            f"warning: {len(duplicates)} test images are byte-identical to training images, e.g. "
            f"{duplicates[0][1]} = {duplicates[0][0]}; the test accuracy overstates what the model does on new images"
        )
    description = {
        "kind": FOLDER,
        "root": str(root.resolve()),
        "layout": scan.layout,
        "classes": scan.classes,
        "color": chosen,
        "mean": list(mean),
        "std": list(std),
        "test_fraction": test_fraction,
        "seed": seed,
        "test_files": test.files,
        "skipped": failures,
    }
    return Dataset(
        root.name,
        tuple(scan.classes),
        chosen,
        tuple(mean),
        tuple(std),
        train_images,
        train.labels,
        test_images,
        test.labels,
        description,
        notes,
    )


def _shuffled(split: folders.DecodedSplit, seed: int) -> folders.DecodedSplit:
    """The split in a seeded random order instead of class by class, so that its first N images (``--images``, the
    export's parity and variant checks, ``--train-limit``) hold every class."""
    order = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(seed))
    return folders.DecodedSplit(
        split.images[order],
        split.labels[order],
        split.colored[order],
        [split.files[i] for i in order],
        [split.digests[i] for i in order],
        split.failures,
    )


def dataset_of(state: dict, data_dir=None, progress: bool = False) -> Dataset:
    """The dataset a checkpoint was trained on, with the same split and normalisation (Fashion-MNIST without a
    ``dataset`` entry: checkpoints from before folders existed)."""
    described = state.get("dataset") or {"kind": FASHION_MNIST}
    if described["kind"] == FASHION_MNIST:
        return fashion_mnist(data_dir)
    root = Path(data_dir) if data_dir is not None else Path(described["root"])  # --data-dir: where it is now
    if not root.is_dir():
        hint = (
            ""
            if data_dir is not None
            else ": the images this model was trained on are no longer there; put them back, or name where they are "
            "with --data-dir"
        )
        raise DataError(f"{root}: no such folder{hint}")
    dataset = image_folder(
        root,
        state["model_args"].image_size,
        described["color"],
        described["test_fraction"],
        described["seed"],
        progress=progress,
        normalisation=(tuple(described["mean"]), tuple(described["std"])),
    )
    if (
        list(dataset.class_names) != described["classes"]
        or dataset.description["test_files"] != described["test_files"]
    ):
        raise DataError(
            f"{root}: the folder changed since the model was trained on {described['root']} (its classes or test "
            "split differ); train again on it"
        )
    return dataset


def report_notes(dataset: Dataset) -> None:
    """The dataset's notes on stderr, where progress goes (stdout stays for results and --json)."""
    for note in dataset.notes:
        print(f"vggdeploy: {note}", file=sys.stderr)
