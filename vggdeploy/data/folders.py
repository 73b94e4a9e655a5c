"""Your own images: a folder of labelled images, decoded once into uint8 tensors at training size.

Layouts (torchvision's ``ImageFolder``, scanned in its class order and with its ``make_dataset``, hidden entries
skipped):
``DIR/train/<class>/*`` (or ``training/``) with ``DIR/test/<class>/*`` (or ``testing/``, ``val/``, ``valid/``,
``validation/``; in any case), or a single ``DIR/<class>/*`` split stratified by class with a fixed seed.
Every image goes through the one preprocessing of ``preprocess.py`` (EXIF orientation, alpha over black, float
scale, bilinear half-pixel resize without antialiasing) and is stored rounded to uint8, so augmentation runs on the
training device as it does for Fashion-MNIST. A cache keyed by the file list, sizes and modification times makes the
second run start in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vggdeploy.data.holdout import stratified_holdout
from vggdeploy.deploy.preprocess import LUMA_WEIGHTS, decode_image, has_color, resize_bilinear
from vggdeploy.deploy.walk import IMAGE_SUFFIXES, is_hidden, is_image_file, walk_folder
from vggdeploy.errors import DataError, UsageError, VggDeployError, write_error
from vggdeploy.files import atomic_path
from vggdeploy.report import readable

TRAIN_SPLITS = ("train", "training")
TEST_SPLITS = ("test", "testing", "val", "valid", "validation")  # the first one there is the test split


CACHE_VERSION = 2  # bump when the decoded bytes of a file could change


CACHE_DIR_ENV = "VGGDEPLOY_CACHE_DIR"


MEMORY_SHARE = 0.5  # the decoded images may take at most this share of the memory available when training starts


LISTED_FAILURES = 5  # unreadable files named in the summary (all of them go into the checkpoint)


@dataclass(frozen=True)
class FolderScan:
    """What is in the folder: class names (index = label) and the (path, label) pairs of each split."""

    root: Path
    layout: str  # "train/test", "train/val" or "single"
    classes: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    unreadable: list[str]  # one line per folder the scan could not list (``walk_folder``): its images are left out
    unused_splits: list[str] = field(default_factory=list)  # split folders beside the test split, not read


def _samples(directory: Path, class_to_idx: dict[str, int]) -> tuple[list[tuple[str, int]], list[str]]:
    """Image files per class (torchvision's scan); one entry per real file (device and inode), so the paths a
    symbolic-link loop adds count once. Second: the folders that could not be listed, which that scan skips."""
    from torchvision.datasets.folder import make_dataset  # torchvision's import costs ~2 s: only for own images

    found = make_dataset(
        str(directory), class_to_idx, is_valid_file=lambda path: is_image_file(path, directory), allow_empty=True
    )
    seen: set[tuple[int, int]] = set()
    unique = []
    for path, label in found:
        stat = os.stat(path)
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            unique.append((path, label))
    return unique, walk_folder(directory, follow_links=True)[1]


def _classes(directory: Path) -> tuple[list[str], dict[str, int]]:
    """The class folders, sorted (torchvision's ``find_classes`` order), hidden ones (``is_hidden``) left out."""
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir() and not is_hidden(entry.name))
    if not classes:
        raise DataError(
            f"{directory}: no class folders (expected {directory}/<class>/<image files>, "
            "or train/<class>/ and test/<class>/ folders)"
        )
    for name in classes:
        _require_label(directory, name)
    return classes, {name: index for index, name in enumerate(classes)}


def _require_label(directory: Path, name: str) -> None:
    """A class folder's name becomes the model's label: it must be text every consumer reads, on one line."""
    if readable(name) != name:  # its bytes are not UTF-8 (a Latin-1 "café")
        raise DataError(
            f"{readable(str(directory / name))}: a class folder's name must be UTF-8 text, since it becomes the "
            "model's label (the bytes shown as \\xNN are not); rename the folder"
        )
    if any(unicodedata.category(character) == "Cc" for character in name):  # a newline split Triton's labels.txt
        raise DataError(
            f"{directory}: the class folder {name!r} holds a control character (a newline, a tab); its name becomes "
            "the model's label, one per line in Triton's labels.txt: rename the folder"
        )


def _require_images(
    directory: Path, classes: list[str], samples: list[tuple[str, int]], split: str, unreadable: list[str]
) -> None:
    why = f" ({unreadable[0]})" if unreadable else ""  # a folder that could not be read may be where they are
    if not samples:
        raise DataError(
            f"{directory}: no image files in its class folders (looked for {', '.join(IMAGE_SUFFIXES)}){why}"
        )
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if empty:
        raise DataError(f"{directory}: class {empty[0]!r} has no images in the {split} split{why}")


def _split_folders(root: Path) -> dict[str, Path]:
    """The folders of ``root`` named like a split (any case: Kaggle's ``Training``/``Testing``), by lower-case name."""
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        name = entry.name.lower()
        if name in (*TRAIN_SPLITS, *TEST_SPLITS) and entry.is_dir() and (name not in found or entry.name == name):
            found[name] = Path(entry.path)
    return found


def _refuse_splits_read_as_classes(root: Path, classes: list[str]) -> None:
    """A split folder of class folders without its partner would be read as one class, its images labelled
    "train": a model of train against validation. Such a folder holds folders; a real class holds images."""
    for name in classes:
        if name.lower() not in (*TRAIN_SPLITS, *TEST_SPLITS):
            continue
        try:
            holds_folders = any(entry.is_dir() and not is_hidden(entry.name) for entry in os.scandir(root / name))
        except OSError:  # an unreadable class folder: the scan names it
            continue
        if holds_folders:
            raise DataError(
                f"{root}: {name}/ holds folders, as a split of class folders does, but the split beside it is missing "
                f"(train/ with one of {'/, '.join(TEST_SPLITS)}/); add it, or pass --data {root / name} to have that "
                "folder split"
            )


def scan_folder(root: str | Path, test_fraction: float = 0.1, seed: int = 0) -> FolderScan:
    """Find the classes and the files of each split; one clear line for every way a dataset can be unusable."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    splits = _split_folders(root)
    train_dir = next((splits[name] for name in TRAIN_SPLITS if name in splits), None)
    tests = [splits[name] for name in TEST_SPLITS if name in splits]
    if train_dir is not None and tests:
        test_dir, unused = tests[0], [str(folder) for folder in tests[1:]]
        classes, class_to_idx = _classes(train_dir)
        if len(classes) < 2:
            raise DataError(f"{train_dir}: {len(classes)} class folder; a classifier needs at least 2")
        test_classes, _ = _classes(test_dir)
        missing = sorted(set(classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(classes))
        if missing or extra:
            raise DataError(
                f"{test_dir}: class {(missing or extra)[0]!r} is "
                + ("missing from the test split" if missing else "not among the training classes")
            )
        (train, unreadable_train), (test, unreadable_test) = (
            _samples(train_dir, class_to_idx),
            _samples(test_dir, class_to_idx),
        )
        _require_images(train_dir, classes, train, "train", unreadable_train)
        _require_images(test_dir, classes, test, test_dir.name, unreadable_test)
        layout = f"{train_dir.name}/{test_dir.name}"
        return FolderScan(root, layout, classes, train, test, unreadable_train + unreadable_test, unused)

    classes, class_to_idx = _classes(root)
    _refuse_splits_read_as_classes(root, classes)
    if len(classes) < 2:
        raise DataError(f"{root}: {len(classes)} class folder; a classifier needs at least 2")
    samples, unreadable = _samples(root, class_to_idx)
    _require_images(root, classes, samples, "whole", unreadable)
    if not 0 < test_fraction < 1:
        raise UsageError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    labels = torch.tensor([label for _, label in samples])
    counts = torch.bincount(labels, minlength=len(classes))
    if int(counts.min()) < 2:
        lonely = classes[int(counts.argmin())]
        raise DataError(f"{root}: class {lonely!r} has 1 image; it needs 2 or more (one to train, one to test)")
    count = max(round(len(samples) * test_fraction), len(classes))  # the lowest ranks take one of each class first
    test_indices = set(stratified_holdout(labels, count, seed).tolist())
    train = [s for i, s in enumerate(samples) if i not in test_indices]
    test = [s for i, s in enumerate(samples) if i in test_indices]
    return FolderScan(root, "single", classes, train, test, unreadable)


@dataclass
class DecodedSplit:
    """One split decoded at training size: uint8 (N, 3, S, S), which images have colour, and the files skipped."""

    images: torch.Tensor
    labels: torch.Tensor
    colored: torch.Tensor  # bool per image
    files: list[str]  # relative to the dataset root, in the order of the images
    digests: list[str]  # SHA-1 of each file's bytes (duplicates between the splits)
    failures: list[str] = field(default_factory=list)  # "<file>: <problem>"


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable on Linux; the physical memory elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(images: int, size: int, budget: int | None = None) -> None:
    """Refuse, before decoding anything, a set whose uint8 tensors would not fit the memory budget."""
    needed = images * 3 * size * size
    budget = int(available_memory() * MEMORY_SHARE) if budget is None else budget
    if needed > budget:
        raise UsageError(
            f"{images:,} images at {size} px RGB take {needed / 1e9:.2f} GB as uint8 tensors, over the budget of "
            f"{budget / 1e9:.2f} GB (half the memory available); pass a smaller --image-size"
        )


def _decode_one(path: str, size: int) -> tuple[np.ndarray | None, bool, str | None, str]:
    """(uint8 3xSxS image or None, has colour, problem or None, SHA-1 of the file)."""
    try:
        rgb = decode_image(path, "rgb")  # its errors name the file and say why (an unreadable one included)
        digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except (DataError, OSError) as error:  # OSError: the file changed between the two reads
        return None, False, str(error), ""
    resized = resize_bilinear(rgb, size, size)
    return np.clip(np.rint(resized * 255), 0, 255).astype(np.uint8), has_color(rgb), None, digest


def cache_folder() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vggdeploy" / "folders"


def _cache_key(root: Path, samples: list[tuple[str, int]], size: int) -> str:
    """Changes whenever a file is added, removed, renamed, rewritten or touched, or the size changes."""
    entries = []
    for path, label in samples:
        stat = os.stat(path)
        entries.append([os.path.relpath(path, root), label, stat.st_size, stat.st_mtime_ns])
    payload = json.dumps([CACHE_VERSION, size, entries]).encode()
    return hashlib.sha256(payload).hexdigest()[:32]


FROM_CACHE = "from the cache"


CACHED = "cached for the next run"


def decode_split(
    root: Path, samples: list[tuple[str, int]], size: int, name: str, progress: bool = True
) -> tuple[DecodedSplit, str]:
    """Decode (or read from the cache) one split; returns it and what the cache did (FROM_CACHE, CACHED, or
    "not cached (why)": a cache that cannot be written costs the next run a decode, never this run)."""
    folder = cache_folder()
    prefix = hashlib.sha256(f"{root.resolve()}:{name}".encode()).hexdigest()[:16]
    path = folder / f"{prefix}-{_cache_key(root, samples, size)}.pt"
    if path.is_file():
        try:
            return DecodedSplit(**torch.load(path, weights_only=True)), FROM_CACHE
        except (RuntimeError, OSError, EOFError, TypeError, ValueError):
            pass  # a damaged cache is decoded again and rewritten
    workers = min(32, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # Pillow and numpy release the GIL while they work
        results = list(
            tqdm(
                pool.map(lambda sample: _decode_one(sample[0], size), samples),
                total=len(samples),
                desc=f"decoding {name}",
                unit="img",
                disable=not progress,
                file=sys.stderr,
            )
        )
    kept = [i for i, (image, _, _, _) in enumerate(results) if image is not None]
    decoded = DecodedSplit(
        torch.from_numpy(np.stack([results[i][0] for i in kept])) if kept else torch.zeros(0, 3, size, size),
        torch.tensor([samples[i][1] for i in kept], dtype=torch.int64),
        torch.tensor([results[i][1] for i in kept], dtype=torch.bool),
        [os.path.relpath(samples[i][0], root) for i in kept],
        [results[i][3] for i in kept],
        [problem for _, _, problem, _ in results if problem is not None],
    )
    return decoded, _save_to_cache(decoded, path, prefix)


def _save_to_cache(decoded: DecodedSplit, path: Path, prefix: str) -> str:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{prefix}-*.pt"):  # the same folder's older decodings
            stale.unlink(missing_ok=True)
        with atomic_path(path) as temporary:
            torch.save(decoded.__dict__, temporary)
    except OSError as error:
        return f"not cached ({write_error(error, path.parent) or error})"
    except VggDeployError as error:  # atomic_path's plain words for a full disk or a refused write
        return f"not cached ({error})"
    return CACHED


def to_grayscale_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) uint8 -> (N, S, S) uint8 gray with the luma weights of the grayscale preprocessing."""
    weights = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1).round().clamp(0, 255).to(torch.uint8)


def channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of uint8 (N, S, S) or (N, C, S, S) images scaled to [0, 1], exactly,
    from each channel's histogram of the 256 values (no float copy of the whole set)."""
    batch = images.unsqueeze(1) if images.dim() == 3 else images
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in range(batch.shape[1]):
        counts = torch.bincount(batch[:, channel].reshape(-1), minlength=256).double()
        mean = (counts * levels).sum() / counts.sum()
        variance = (counts * (levels - mean) ** 2).sum() / counts.sum()
        means.append(round(float(mean), 6))
        stds.append(round(max(float(variance.sqrt()), 1e-3), 6))
    return tuple(means), tuple(stds)


def content_duplicates(train: DecodedSplit, test: DecodedSplit) -> list[tuple[str, str]]:
    """(train file, test file) pairs with identical bytes: a test set that is partly training data."""
    seen = dict(zip(train.digests, train.files, strict=True))
    return [(seen[d], f) for d, f in zip(test.digests, test.files, strict=True) if d in seen]
