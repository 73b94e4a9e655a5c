"""Shared fixtures: the real Fashion-MNIST files and small real-data subsets."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def _share_the_cores() -> None:
    """Each pytest-xdist worker, and every process its tests start, gets its share of the cores as its thread count.
    torch's OpenMP threads spin while they wait: two workers each running two threads on two cores took six times as
    long to train as one thread each. Set before torch is imported; an OMP_NUM_THREADS already set is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


_share_the_cores()

import torch  # noqa: E402  (after the thread count is set)
from cli_output import TINY_INT8_LIMITS  # noqa: E402
from filelock import FileLock  # noqa: E402

pytest.register_assert_rewrite("image_kinds")  # its consumer checks assert: their failures show the values

# Mutation runs (BENCHMARKS.md, "Mutation testing") run the in-process tests once per mutant, each in a fresh pytest:
# with this set to a folder, the tiny model and its export are built there once and reused by every run.
FIXTURE_CACHE = os.environ.get("VGGDEPLOY_FIXTURE_CACHE")


def _built_once(tmp_path_factory, name: str, build: Callable[[Path], object]):
    """``build(folder)``'s value, built once per test run: by the first pytest-xdist worker that asks, in the
    run's temporary folder the workers share, and read by the others; with FIXTURE_CACHE, once there for every run."""
    if FIXTURE_CACHE:
        cache = Path(FIXTURE_CACHE)
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        cache = tmp_path_factory.getbasetemp().parent  # each worker's own folder lies in the run's
    else:
        return build(tmp_path_factory.mktemp(name))
    folder, saved = cache / name, cache / f"{name}.pickle"
    with FileLock(cache / f"{name}.lock"):
        if not saved.is_file():  # the value is saved last: a folder without it is an interrupted build
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            saved.write_bytes(pickle.dumps(build(folder)))
    return pickle.loads(saved.read_bytes())


@pytest.fixture
def obey_permissions() -> list[str]:
    """The command prefix that makes a process obey file permissions: root ignores them, so it runs without its
    DAC-override capabilities (util-linux's setpriv); nothing for another user."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root ignores file permissions and setpriv is missing")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu"):  # the mark, not a keyword: every test under tests/gpu/ has that one
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir():
    from vggdeploy.data.fashion_mnist import find_data_dir

    return find_data_dir()


@pytest.fixture(scope="session")
def test_split(data_dir):
    from vggdeploy.data.fashion_mnist import load_split

    return load_split("test", data_dir)


TINY_ARGS = dict(arch="A", batch_norm=True, width_ratio=8, hidden=64, dropout=0.0, image_size=32)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, data_dir):
    """A briefly trained tiny VGG-11-BN checkpoint (about 75 % test accuracy; seconds on 2 cores)."""
    from vggdeploy.config import TrainConfig
    from vggdeploy.model.archs import ModelArgs
    from vggdeploy.train.loop import train

    def build(out: Path) -> Path:
        config = TrainConfig(
            model=ModelArgs(**TINY_ARGS), epochs=2, batch_size=64, lr=0.1, train_limit=3000, test_limit=500
        )
        train(config, out, data_dir=data_dir, progress=False)
        return out / "checkpoints" / "best.pt"

    return _built_once(tmp_path_factory, "tiny-model", build)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_checkpoint, data_dir):
    """The tiny checkpoint exported with every variant and a Triton repository."""
    from vggdeploy.config import ExportConfig
    from vggdeploy.export.pipeline import export_model

    config = ExportConfig(
        fp16=True,
        int8=True,
        with_preprocessing=True,
        parity_images=128,
        audit_batches=(1, 2, 7, 64),
        variant_images=300,
        int8_calibration_images=128,
        **TINY_INT8_LIMITS,
    )

    def build(out: Path) -> tuple:
        result = export_model(tiny_checkpoint, out / "onnx", config, data_dir=data_dir, triton_repo=out / "triton")
        return result, out

    return _built_once(tmp_path_factory, "tiny-export", build)


@pytest.fixture(scope="session")
def nan_model(tiny_export, tmp_path_factory):
    """The tiny fp32 model with a NaN in its classifier's bias: a broken model whose output is never finite."""
    import onnx
    from broken_models import add_to_class_bias

    proto = add_to_class_bias(onnx.load(str(tiny_export[0].model_path)), 3, float("nan"))
    path = tmp_path_factory.mktemp("nan-model") / "model.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="session")
def mislabelled_model(tiny_export, tmp_path_factory):
    """The tiny fp32 model whose metadata names 9 labels for its 10 outputs."""
    import onnx
    from broken_models import drop_last_label

    path = tmp_path_factory.mktemp("mislabelled-model") / "model.onnx"
    onnx.save(drop_last_label(onnx.load(str(tiny_export[0].model_path))), str(path))
    return path


# metadata a consumer would act on wrongly: another contract, T < 0 (classes ranked backwards), std 0 (every input
# infinite, once reported as the model's NaN output), a resize this code does not do; with the words of the refusal
BAD_METADATA = {
    "format-2": ("vggdeploy.format", lambda _: "2", "but this "),
    "negative-t": ("calibration", lambda c: {**c, "temperature": -1.0}, "calibration.temperature must be a positive"),
    "std-0": ("preprocessing", lambda p: {**p, "std": [0.0]}, "must be finite numbers, every std above 0"),
    # Python once resized bilinear whatever the metadata said (C++ and JS refused it)
    "nearest": ("preprocessing", lambda p: {**p, "resize": {**p["resize"], "method": "nearest"}}, "unsupported prep"),
}


@pytest.fixture(scope="session")
def bad_metadata_models(tiny_export, tmp_path_factory) -> dict:
    """The tiny fp32 model with each BAD_METADATA edit: {path: the words of its refusal}."""
    import onnx
    from broken_models import edit_metadata

    folder = tmp_path_factory.mktemp("bad-metadata")
    models = {}
    for name, (key, edit, words) in BAD_METADATA.items():
        path = folder / f"{name}.onnx"
        onnx.save(edit_metadata(onnx.load(str(tiny_export[0].model_path)), key, edit), str(path))
        models[path] = words
    return models


@pytest.fixture(scope="session")
def image_kinds(tiny_export, test_split, tmp_path_factory):
    """Every image kind `run` accepts, made from a test image, with the Python reference's logits (expected.json)."""
    import numpy as np
    from image_kinds import write_fixture_set
    from PIL import Image

    result, _ = tiny_export
    gray = np.asarray(Image.fromarray(test_split[0][0].numpy(), "L").resize((61, 47), Image.BILINEAR))
    return write_fixture_set(gray, result.model_path, tmp_path_factory.mktemp("image-kinds"))
