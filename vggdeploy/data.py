"""Fashion-MNIST from its original IDX .gz files, kept whole as uint8 tensors on the training device.

Resizing, normalisation and augmentation run there in batches (no per-image CPU pipeline); the resize and
normalisation are the torch twin of ``preprocess.py`` and a test holds them equal.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vggdeploy.errors import DataError
from vggdeploy.preprocess import PreprocessSpec

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DATA_DIR_ENV = "VGGDEPLOY_DATA_DIR"
SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


@dataclass(frozen=True)
class IdxFile:
    name: str
    magic: int  # 2051 for images, 2049 for labels
    count: int
    payload_md5: str  # of the decompressed bytes: independent of gzip framing (Debian recompressed the files)
    upstream_gz_md5: str  # of the .gz as zalandoresearch publishes it (a folder copied from elsewhere)


SPLITS: dict[str, tuple[IdxFile, IdxFile]] = {
    "train": (
        IdxFile(
            "train-images-idx3-ubyte.gz",
            2051,
            60_000,
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        ),
        IdxFile(
            "train-labels-idx1-ubyte.gz",
            2049,
            60_000,
            "9018921c3c673c538a1fc5bad174d6f9",
            "25c81989df183df01b3e8a0aad5dffbe",
        ),
    ),
    "test": (
        IdxFile(
            "t10k-images-idx3-ubyte.gz",
            2051,
            10_000,
            "8181f5470baa50b63fa0f6fddb340f0a",
            "bef4ecab320f06d8554ea6380940ec79",
        ),
        IdxFile(
            "t10k-labels-idx1-ubyte.gz",
            2049,
            10_000,
            "15d484375f8d13e6eb1aabb0c3f46965",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
    ),
}


def find_data_dir(data_dir: str | Path | None = None) -> Path:
    """The first of: the explicit directory, $VGGDEPLOY_DATA_DIR, Debian's package. Nothing is ever downloaded."""
    named_by = "--data-dir" if data_dir is not None else f"${DATA_DIR_ENV}"  # an old export in a shell profile
    data_dir = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise DataError(f"data directory {path} ({named_by}) does not exist or is not a folder")
        return path
    if SYSTEM_DATA_DIR.is_dir():
        return SYSTEM_DATA_DIR
    raise DataError(
        f"Fashion-MNIST not found: install the Debian package dataset-fashion-mnist (apt-get install "
        f"dataset-fashion-mnist), or pass --data-dir / set ${DATA_DIR_ENV} to a folder holding its four .gz files"
    )


def read_idx(path: Path, spec: IdxFile, verify: bool = True) -> np.ndarray:
    """Read one IDX .gz file, checking its checksum, magic number, count and length; name the problem."""
    if not path.is_file():
        raise DataError(
            f"{path}: missing (the Fashion-MNIST directory needs {', '.join(f.name for s in SPLITS.values() for f in s)})"
        )
    raw = path.read_bytes()
    try:
        payload = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: not a complete gzip file ({error})") from None
    if (
        verify
        and hashlib.md5(payload).hexdigest() != spec.payload_md5
        and hashlib.md5(raw).hexdigest() != spec.upstream_gz_md5
    ):
        raise DataError(f"{path}: checksum mismatch (the file is corrupt or not the official Fashion-MNIST)")
    if len(payload) < 8:
        raise DataError(f"{path}: too short for an IDX header")
    magic, count = int.from_bytes(payload[0:4], "big"), int.from_bytes(payload[4:8], "big")
    if magic != spec.magic:
        raise DataError(f"{path}: magic number {magic}, expected {spec.magic}")
    if count != spec.count:
        raise DataError(f"{path}: {count} items, expected {spec.count}")
    dims = magic & 0xFF
    shape = [int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    header = 4 + 4 * dims
    if len(payload) != header + int(np.prod(shape)):
        raise DataError(f"{path}: {len(payload) - header} data bytes, expected {int(np.prod(shape))} (truncated?)")
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(shape)


def load_split(split: str, data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the ``train`` or ``test`` split."""
    root = find_data_dir(data_dir)
    images_spec, labels_spec = SPLITS[split]
    images = read_idx(root / images_spec.name, images_spec)
    labels = read_idx(root / labels_spec.name, labels_spec)
    if labels.max() >= len(CLASS_NAMES):
        raise DataError(f"{root / labels_spec.name}: label {labels.max()} out of range 0..{len(CLASS_NAMES) - 1}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


HOLDOUT_FRACTION_CAP = 0.1  # a calibration holdout never takes more than this share of the training images


def holdout_size(requested: int, available: int) -> int:
    """How many training images are held out: ``requested``, capped at a tenth of the ``available`` ones."""
    return min(requested, int(available * HOLDOUT_FRACTION_CAP))


def stratified_holdout(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``count`` images drawn at random with each class in its share (a fixed ``seed``).

    Each image gets its rank within its class in a seeded random order; taking the lowest rank-to-class-size ratios
    takes every class in proportion to its size.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels.cpu()[order]
    class_sizes = torch.bincount(shuffled)
    ranks = torch.empty(len(labels), dtype=torch.float64)
    for label in torch.unique(shuffled):
        members = torch.nonzero(shuffled == label).flatten()
        ranks[members] = torch.arange(len(members), dtype=torch.float64) / class_sizes[label]
    picked = order[torch.argsort(ranks, stable=True)[:count]]
    return picked.sort().values


def data_checksums(data_dir: str | Path | None = None) -> dict[str, str]:
    """MD5 of each decompressed file, as stored in checkpoints (what the model was trained and tested on)."""
    return {spec.name: spec.payload_md5 for pair in SPLITS.values() for spec in pair} | {
        "dir": str(find_data_dir(data_dir))
    }


def to_input_tensor(images: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) on any device -> normalised float (N, C, h, w): the torch twin of
    preprocess.to_model_input."""
    batch = (images.unsqueeze(1) if images.dim() == 3 else images).float() / 255.0
    if batch.shape[-2:] != (spec.height, spec.width):
        batch = F.interpolate(
            batch, size=(spec.height, spec.width), mode="bilinear", align_corners=False, antialias=False
        )
    if spec.channels == 1:
        return (batch - spec.mean[0]) / spec.std[0]
    mean = torch.tensor(spec.mean, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=batch.device).view(1, -1, 1, 1)
    return (batch - mean) / std


@dataclass(frozen=True)
class Augmentation:
    """Batched on-device augmentation; all off reproduces the plain test-time preprocessing."""

    flip: bool = True  # random horizontal flips
    shift: int = 2  # random translations of up to this many source pixels (zero padded)
    erase: float = 0.0  # probability of random erasing (a rectangle of 2-20 % of the area set to 0)

    def apply_source(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Flip and shift uint8 (N, H, W) or (N, C, H, W) source images (every channel alike)."""
        n, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        device = images.device
        if self.flip:
            flips = torch.rand(n, generator=generator, device=device) < 0.5
            flips = flips.view(n, *([1] * (images.dim() - 1)))
            images = torch.where(flips, images.flip(-1), images)
        if self.shift:
            padded = F.pad(images, (self.shift,) * 4)
            dy, dx = torch.randint(0, 2 * self.shift + 1, (2, n), generator=generator, device=device)
            rows = (dy[:, None] + torch.arange(height, device=device))[:, :, None]
            cols = (dx[:, None] + torch.arange(width, device=device))[:, None, :]
            if images.dim() == 3:
                images = padded[torch.arange(n, device=device)[:, None, None], rows, cols]
            else:
                channels = torch.arange(images.shape[1], device=device)[None, :, None, None]
                samples = torch.arange(n, device=device)[:, None, None, None]
                images = padded[samples, channels, rows[:, None], cols[:, None]]
        return images

    def apply_input(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random erasing on the normalised (N, 1, h, w) model input."""
        if not self.erase:
            return batch
        n, _, height, width = batch.shape
        device = batch.device
        uniform = torch.rand(5, n, generator=generator, device=device)
        area = (0.02 + 0.18 * uniform[0]) * height * width
        aspect = torch.exp((uniform[1] - 0.5) * 2 * 1.2)  # log-uniform in [0.3, 3.3]
        box_h = (area * aspect).sqrt().clamp(1, height)
        box_w = (area / aspect).sqrt().clamp(1, width)
        top = uniform[2] * (height - box_h)
        left = uniform[3] * (width - box_w)
        ys = torch.arange(height, device=device)[None, :, None]
        xs = torch.arange(width, device=device)[None, None, :]
        inside = (
            (ys >= top[:, None, None])
            & (ys < (top + box_h)[:, None, None])
            & (xs >= left[:, None, None])
            & (xs < (left + box_w)[:, None, None])
            & (uniform[4] < self.erase)[:, None, None]
        )
        return batch.masked_fill(inside[:, None], 0.0)


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    spec: PreprocessSpec,
    generator: torch.Generator | None = None,
    augmentation: Augmentation | None = None,
    shard: tuple[int, int] = (0, 1),
    drop_last: bool = False,
):
    """Yield (input, labels) batches from device-resident tensors; shuffled and augmented when a generator is given.

    ``shard`` = (rank, world size) gives each distributed process its own slice of the (shared) order.
    """
    order = torch.randperm(len(images), generator=generator, device=images.device) if generator is not None else None
    indices = (order if order is not None else torch.arange(len(images), device=images.device))[shard[0] :: shard[1]]
    stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        index = indices[start : start + batch_size]
        source = images[index]
        if augmentation is not None and generator is not None:
            source = augmentation.apply_source(source, generator)
        batch = to_input_tensor(source, spec)
        if augmentation is not None and generator is not None:
            batch = augmentation.apply_input(batch, generator)
        yield batch, labels[index]
