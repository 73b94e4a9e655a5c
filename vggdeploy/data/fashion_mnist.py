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

from vggdeploy.errors import DataError

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


def data_checksums(data_dir: str | Path | None = None) -> dict[str, str]:
    """MD5 of each decompressed file, as stored in checkpoints (what the model was trained and tested on)."""
    return {spec.name: spec.payload_md5 for pair in SPLITS.values() for spec in pair} | {
        "dir": str(find_data_dir(data_dir))
    }
