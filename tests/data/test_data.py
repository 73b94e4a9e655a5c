import gzip
import re
import shutil

import numpy as np
import pytest
import torch

from vggdeploy.data.batches import Augmentation, iterate_batches, to_input_tensor
from vggdeploy.data.fashion_mnist import CLASS_NAMES, SPLITS, load_split, read_idx
from vggdeploy.deploy.preprocess import PreprocessSpec, to_model_input
from vggdeploy.errors import DataError


def test_real_files_load_with_balanced_labels(data_dir, test_split):
    train_images, train_labels = load_split("train", data_dir)
    assert train_images.shape == (60_000, 28, 28) and train_images.dtype == torch.uint8
    assert torch.bincount(train_labels).tolist() == [6_000] * 10
    test_images, test_labels = test_split
    assert test_images.shape == (10_000, 28, 28)
    assert torch.bincount(test_labels).tolist() == [1_000] * 10
    assert len(CLASS_NAMES) == 10


def _copy_split(data_dir, tmp_path):
    for spec in SPLITS["test"]:
        shutil.copy(data_dir / spec.name, tmp_path / spec.name)
    return tmp_path / SPLITS["test"][1].name, SPLITS["test"][1]


def test_truncated_file_is_rejected_with_its_name(data_dir, tmp_path):
    path, spec = _copy_split(data_dir, tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"{spec.name}: not a complete gzip file"):
        read_idx(path, spec)


def test_corrupted_payload_fails_the_checksum(data_dir, tmp_path):
    path, spec = _copy_split(data_dir, tmp_path)
    payload = bytearray(gzip.decompress(path.read_bytes()))
    payload[100] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(DataError, match="checksum mismatch"):
        read_idx(path, spec)


def test_wrong_magic_and_count_are_named(data_dir, tmp_path):
    path, spec = _copy_split(data_dir, tmp_path)
    payload = bytearray(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(bytes(payload[:3]) + b"\x03" + bytes(payload[4:])))
    with pytest.raises(DataError, match="magic number 2051, expected 2049"):
        read_idx(path, spec, verify=False)
    path.write_bytes(gzip.compress(bytes(payload[:-10])))
    with pytest.raises(DataError, match="9990 data bytes, expected 10000"):
        read_idx(path, spec, verify=False)


def test_missing_file_and_directory(tmp_path, data_dir, monkeypatch):
    with pytest.raises(DataError, match=r"nowhere \(--data-dir\) does not exist"):
        load_split("test", tmp_path / "nowhere")
    monkeypatch.setenv(
        "VGGDEPLOY_DATA_DIR", str(tmp_path / "gone")
    )  # set long ago in a profile: say where it came from
    with pytest.raises(DataError, match=r"gone \(\$VGGDEPLOY_DATA_DIR\) does not exist"):
        load_split("test")
    _copy_split(data_dir, tmp_path)
    (tmp_path / SPLITS["test"][0].name).unlink()
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: missing"):
        load_split("test", tmp_path)


@pytest.mark.parametrize(("height", "width"), [(224, 224), (32, 32), (20, 13), (37, 50)])
def test_torch_and_numpy_preprocessing_are_the_same_function(test_split, height, width):
    images = test_split[0][:32]
    spec = PreprocessSpec(height, width)
    on_torch = to_input_tensor(images, spec).numpy()
    on_numpy = to_model_input([image.numpy().astype(np.float32) / 255 for image in images], spec)
    assert on_torch.shape == on_numpy.shape == (32, 1, height, width)
    np.testing.assert_allclose(on_torch, on_numpy, atol=1e-5)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("resize", {"method": "nearest"}, "resize method 'nearest' (this code does 'bilinear')"),
        ("luma_weights", [1, 0, 0], "luma_weights [1, 0, 0]"),
        ("scale", 1.0, "scale 1.0 (this code does 0.00392156862745098)"),
        ("order", ["resize", "grayscale", "scale", "normalize"], "order ['resize', 'grayscale', 'scale', 'normalize']"),
        ("layout", "NHWC", "layout 'NHWC' (this code does 'NCHW')"),
    ],
)
def test_preprocessing_metadata_this_code_would_not_follow_is_refused(field, value, words):
    """`run` once resized bilinear, in this order, with these weights, whatever a model's metadata said."""
    written = PreprocessSpec(32, 32).to_metadata()
    assert PreprocessSpec.from_metadata(written) == PreprocessSpec(32, 32)
    older = {key: value for key, value in written.items() if key not in ("order", "luma_weights", "layout")}
    assert PreprocessSpec.from_metadata(older) == PreprocessSpec(32, 32)  # a field an older export lacks: today's
    edited = {**written, field: {**written["resize"], **value} if field == "resize" else value}
    with pytest.raises(DataError, match=f"unsupported preprocessing: {re.escape(words)}"):
        PreprocessSpec.from_metadata(edited)


def test_batches_cover_the_data_once_and_augment_in_place(test_split):
    images, labels = test_split[0][:100], test_split[1][:100]
    spec = PreprocessSpec(32, 32)
    plain = list(iterate_batches(images, labels, 32, spec))
    assert [len(y) for _, y in plain] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([y for _, y in plain]), labels)
    generator = torch.Generator().manual_seed(0)
    augmented = list(iterate_batches(images, labels, 32, spec, generator, Augmentation(erase=0.5), drop_last=True))
    assert len(augmented) == 3
    shard0 = torch.cat([y for _, y in iterate_batches(images, labels, 10, spec, shard=(0, 2))])
    shard1 = torch.cat([y for _, y in iterate_batches(images, labels, 10, spec, shard=(1, 2))])
    assert len(shard0) == len(shard1) == 50


def test_augmentation_keeps_shapes_and_changes_pixels(test_split):
    images = test_split[0][:64]
    generator = torch.Generator().manual_seed(1)
    augmentation = Augmentation(flip=True, shift=2, erase=1.0)
    shifted = augmentation.apply_source(images, generator)
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    assert not torch.equal(shifted, images)
    batch = to_input_tensor(shifted, PreprocessSpec(32, 32))
    erased = augmentation.apply_input(batch, generator)
    assert ((erased == 0) & (batch != 0)).flatten(1).any(1).all()  # every image got a rectangle
    assert torch.equal(Augmentation(flip=False, shift=0).apply_source(images, generator), images)
