"""Training, exporting and running on a folder of the user's own images (made here, never downloaded)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_output import OPEN_VARIANT_LIMITS
from forked_cli import vggdeploy
from golden_check import golden_problems
from image_kinds import cpp_answers_on_every_kind, write_fixture_set
from PIL import Image

from vggdeploy.data import folders
from vggdeploy.data.dataset import image_folder
from vggdeploy.deploy.onnx_file import read_metadata
from vggdeploy.errors import DataError, UsageError
from vggdeploy.train.recipe import Recipe, size_to_data

ROOT = Path(__file__).parents[2]
_spec = importlib.util.spec_from_file_location("make_image_folder", ROOT / "scripts" / "make_image_folder.py")
make_image_folder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_image_folder)

TINY = ("--preset", "quick", "--width-ratio", "16", "--hidden", "32", "--image-size", "32", "--epochs", "2")
TINY += ("--batch-size", "32")

# Every variant limit of export and check lifted: a tiny model near chance, whose variants' answers are noise.


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(folders.CACHE_DIR_ENV, str(tmp_path / "cache"))


def cli(*args, cache: Path):
    return vggdeploy(*args, env={**os.environ, folders.CACHE_DIR_ENV: str(cache)})


@pytest.fixture(scope="module")
def rgb_set(tmp_path_factory, data_dir):
    """10 classes of coloured Fashion-MNIST items, 24 training and 6 test images each, PNG and JPEG, 28-40 px."""
    out = tmp_path_factory.mktemp("rgb-set")
    make_image_folder.make_image_folder(out, 24, 6, "split", seed=0, sizes=(28, 40), data_dir=data_dir)
    return out


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_the_example_set_maker_refuses_counts_it_cannot_give_and_a_folder_with_files(rgb_set, tmp_path, data_dir):
    """A negative count took all but the last images (60,010 files for -1), a count past a class's 6,000 was cut
    without a word, and a second run into the same folder mixed its images with the first run's."""
    make = make_image_folder.make_image_folder
    for train, test, layout, words in (
        (-1, 2, "split", "--train-per-class must be from 1 to 6,000 (Fashion-MNIST's training images of each class)"),
        (100_000, 2, "split", "--train-per-class must be from 1 to 6,000"),
        (5, 0, "split", "--test-per-class must be from 1 to 1,000, got 0"),
        (5_995, 10, "single", "--train-per-class must be from 1 to 5,990 (Fashion-MNIST's training images of each "),
    ):
        with pytest.raises(UsageError, match=re.escape(words)):
            make(tmp_path / "new", train, test, layout, data_dir=data_dir)
        assert not (tmp_path / "new").exists()
    with pytest.raises(DataError, match="already holds files, which would mix with this set"):
        make(rgb_set, 1, 1, data_dir=data_dir)


def test_split_layout_colour_inference_and_statistics(rgb_set):
    dataset = image_folder(rgb_set, 32, progress=False)
    assert dataset.color == "rgb" and dataset.channels == 3 and len(dataset.class_names) == 10
    assert dataset.class_names[0] == "Ankle_boot"  # folder names, sorted, are the labels
    assert dataset.train_images.shape == (240, 3, 32, 32) and dataset.train_images.dtype == torch.uint8
    assert dataset.test_images.shape == (60, 3, 32, 32)
    assert torch.bincount(dataset.test_labels).tolist() == [6] * 10
    values = dataset.train_images.double() / 255
    assert dataset.mean == pytest.approx(values.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert dataset.std == pytest.approx(values.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-6)
    assert dataset.description["layout"] == "train/test" and len(dataset.description["test_files"]) == 60


def test_decoding_follows_the_one_preprocessing(rgb_set):
    """A stored image is the float preprocessing of its file (decode, resize), rounded to uint8."""
    from vggdeploy.deploy.preprocess import decode_image, resize_bilinear

    dataset = image_folder(rgb_set, 32, progress=False)
    for position in (0, 7):
        file = rgb_set / dataset.description["test_files"][position]
        expected = resize_bilinear(decode_image(file, "rgb"), 32, 32) * 255
        assert np.abs(dataset.test_images[position].numpy() - expected).max() <= 0.5 + 1e-4


def test_val_and_single_layouts_and_a_reproducible_split(rgb_set, tmp_path):
    val = _copy(rgb_set, tmp_path / "val-set")
    (val / "test").rename(val / "val")
    assert image_folder(val, 32, progress=False).description["layout"] == "train/val"
    # Kaggle's names: train/ with valid/ or validation/ had been read as two classes, "train" and "valid"
    for train, test in (("train", "valid"), ("train", "validation"), ("Training", "Testing")):
        renamed = tmp_path / f"{train}-{test}"
        shutil.copytree(rgb_set / "train", renamed / train)
        shutil.copytree(rgb_set / "test", renamed / test)
        scan = folders.scan_folder(renamed)
        assert (scan.layout, len(scan.classes), len(scan.train), len(scan.test)) == (f"{train}/{test}", 10, 240, 60)
    both = _copy(rgb_set, tmp_path / "both")  # train/, test/ and valid/: test/ is the test split, and it says so
    shutil.copytree(rgb_set / "test", both / "valid")
    dataset = image_folder(both, 32, progress=False)
    assert dataset.description["layout"] == "train/test" and len(dataset.description["test_files"]) == 60
    assert f"{both / 'valid'} left out: train/test are the training and test splits" in dataset.notes[1]

    single = tmp_path / "single"
    shutil.copytree(rgb_set / "train", single)
    first = folders.scan_folder(single, test_fraction=0.25, seed=0)
    again = folders.scan_folder(single, test_fraction=0.25, seed=0)
    other = folders.scan_folder(single, test_fraction=0.25, seed=1)
    assert first.layout == "single" and len(first.test) == 60 and len(first.train) == 180
    assert first.test == again.test and first.test != other.test
    assert sorted(label for _, label in first.test) == sorted(list(range(10)) * 6)  # stratified: 6 per class
    assert not {p for p, _ in first.test} & {p for p, _ in first.train}


def test_grayscale_sets_are_found_gray_and_color_can_be_forced(rgb_set, tmp_path):
    gray = tmp_path / "gray"
    for path in rgb_set.rglob("*.*"):
        target = gray / path.relative_to(rgb_set).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(path).convert("L")
        (image if path.suffix == ".png" else Image.merge("RGB", [image] * 3)).save(target)  # gray stored as RGB too
    found = image_folder(gray, 32, progress=False)
    assert found.color == "grayscale" and found.train_images.shape == (240, 32, 32) and len(found.mean) == 1
    assert image_folder(gray, 32, color="rgb", progress=False).train_images.shape == (240, 3, 32, 32)
    assert image_folder(rgb_set, 32, color="grayscale", progress=False).channels == 1
    (gray / "train" / "Bag" / "colour.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (30, 30), (200, 20, 20)).save(gray / "train" / "Bag" / "colour.png")
    assert image_folder(gray, 32, progress=False).color == "rgb"  # one coloured training image is enough


def _bad_sets(root: Path, rgb_set: Path) -> dict:
    """name -> (folder, the message it must give)."""
    cases = {"missing": (root / "nothing-here", "no such folder")}
    empty = root / "empty"
    empty.mkdir()
    cases["empty"] = (empty, "no class folders")
    one = root / "one-class" / "Bag"
    one.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "a.png")
    cases["one-class"] = (one.parent, "1 class folder; a classifier needs at least 2")
    no_images = _copy(rgb_set, root / "no-images")
    shutil.rmtree(no_images / "train" / "Bag")
    (no_images / "train" / "Bag").mkdir()
    cases["class-without-images"] = (no_images, "class 'Bag' has no images in the train split")
    missing_test = _copy(rgb_set, root / "missing-test")
    shutil.rmtree(missing_test / "test" / "Coat")
    cases["class-missing-from-test"] = (missing_test, "class 'Coat' is missing from the test split")
    text_only = root / "text-only"
    for name in ("a", "b"):
        (text_only / name).mkdir(parents=True)
        (text_only / name / "notes.txt").write_text("not an image")
    cases["only-non-images"] = (text_only, "no image files in its class folders")
    lonely = root / "lonely"
    for name, count in (("a", 3), ("b", 1)):
        (lonely / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(lonely / name / f"{i}.png")
    cases["one-image-class"] = (lonely, "class 'b' has 1 image; it needs 2 or more")
    latin1 = _copy(rgb_set, root / "latin1")  # a Latin-1 "Bagé": the label no consumer could read (C++ refused it)
    (latin1 / "train" / "Bag").rename(latin1 / "train" / os.fsdecode(b"Bag\xe9"))
    cases["class-name-not-utf8"] = (latin1, f"{latin1}/train/Bag\\xe9: a class folder's name must be UTF-8 text")
    two_lines = _copy(rgb_set, root / "two-lines")  # its label would have been two lines of Triton's labels.txt
    (two_lines / "test" / "Bag").rename(two_lines / "test" / "Bag\nold")
    cases["class-name-with-newline"] = (
        two_lines,
        f"{two_lines / 'test'}: the class folder 'Bag\\nold' holds a control",
    )
    alone = root / "train-alone"  # a split of class folders without its partner: not a class named "train"
    shutil.copytree(rgb_set / "train", alone / "train")
    shutil.copytree(rgb_set / "test", alone / "eval")
    cases["split-folders-as-classes"] = (
        alone,
        f"{alone}: train/ holds folders, as a split of class folders does, but the split beside it is missing",
    )
    return cases


@pytest.mark.slow
def test_every_bad_dataset_gets_one_clear_line(rgb_set, tmp_path):
    through_the_cli = ("missing", "class-missing-from-test", "one-image-class")  # one per layout; DataError -> exit 3
    for name, (folder, message) in _bad_sets(tmp_path, rgb_set).items():
        with pytest.raises(DataError, match=re.escape(message)):
            image_folder(folder, 32, progress=False)
        if name not in through_the_cli:
            continue
        result = cli("train", "--data", str(folder), *TINY, "--out", str(tmp_path / "out" / name), cache=tmp_path)
        assert result.returncode == 3, (name, result.stderr)
        assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr, name
        assert "Traceback" not in result.stderr


def test_unreadable_files_are_skipped_and_named_or_fatal_with_strict(rgb_set, tmp_path):
    broken = _copy(rgb_set, tmp_path / "broken")
    (broken / "train" / "Bag" / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (broken / "train" / "Coat" / "zz-empty.jpg").write_bytes(b"")
    dataset = image_folder(broken, 32, progress=False)
    assert len(dataset.train_images) == 240
    assert any("skipped 2 unreadable image files" in note and "zz-corrupt.png" in note for note in dataset.notes)
    assert len(dataset.description["skipped"]) == 2
    with pytest.raises(DataError, match="--strict: 2 unreadable image files"):
        image_folder(broken, 32, strict=True, progress=False)


@pytest.mark.slow
def test_folders_and_files_it_may_not_read_are_named_and_strict_makes_them_fatal(rgb_set, tmp_path, obey_permissions):
    """torchvision's scan skips a folder it cannot list without a word, so its images went missing from training;
    a file without read permission was called "truncated or corrupt"."""
    locked = _copy(rgb_set, tmp_path / "locked")
    hidden_away = locked / "train" / "Bag" / "more"
    hidden_away.mkdir()
    shutil.copy(sorted((locked / "train" / "Bag").glob("*.*"))[0], hidden_away / "x.png")
    secret = sorted((locked / "train" / "Coat").iterdir())[0]
    for path in (hidden_away, secret):
        path.chmod(0)
    notes = "import sys; from vggdeploy.data.dataset import image_folder; print(image_folder(sys.argv[1], 32).notes[1])"
    result = subprocess.run(
        [*obey_permissions, sys.executable, "-c", notes, str(locked)], capture_output=True, text=True
    )
    assert result.stdout.strip() == (
        f"skipped 2 unreadable image files or folders (--strict makes them fatal): {hidden_away}: cannot read the "
        f"folder (Permission denied); its images were left out; {secret}: cannot read the file (Permission denied)"
    ), result.stderr
    train = [*obey_permissions, sys.executable, "-m", "vggdeploy", "train", "--data", str(locked), *TINY]
    result = subprocess.run([*train, "--strict"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 3 and result.stderr.endswith(
        "its images were left out (--strict: 2 unreadable image files or folders)\n"
    ), result.stderr
    (locked / "test" / "Bag").chmod(0)
    result = subprocess.run(train, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3 and result.stderr.endswith(
        f"error: {locked / 'test'}: class 'Bag' has no images in the test split ({locked / 'test' / 'Bag'}: cannot "
        "read the folder (Permission denied); its images were left out)\n"
    ), result.stderr


def test_hidden_entries_are_neither_classes_nor_images_and_both_walks_take_the_same_files(rgb_set, tmp_path):
    """What Jupyter, git and macOS's zip leave in a folder (.ipynb_checkpoints, .git, __MACOSX, ._x.png) was once a
    class of its own ("class '.ipynb_checkpoints' has no images"), or a copy of an image in its class; a FIFO named
    like an image hung both walks."""
    cluttered = _copy(rgb_set, tmp_path / "cluttered")
    bag = cluttered / "train" / "Bag"
    first = sorted(bag.iterdir())[0]
    for clutter in (cluttered / "train" / ".ipynb_checkpoints", cluttered / "__MACOSX" / "train", bag / ".git"):
        clutter.mkdir(parents=True)
        shutil.copy(first, clutter / first.name)
    (bag / f"._{first.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    Image.open(first).save(bag / "animated.GIF")  # an image to `run`, so one to `train --data` too (torchvision: not)
    os.mkfifo(bag / "pipe.png")  # not a regular file: reading it would wait for a writer forever
    scan = folders.scan_folder(cluttered)
    assert scan.classes == folders.scan_folder(rgb_set).classes and len(scan.train) == 241 and len(scan.test) == 60
    from vggdeploy.deploy.classify import expand_inputs

    assert len(expand_inputs([str(cluttered)])[0]) == 301  # run's folder walk takes and skips the same entries


def test_symlink_loops_end_and_train_test_duplicates_are_reported(rgb_set, tmp_path):
    looped = _copy(rgb_set, tmp_path / "looped")
    (looped / "train" / "Bag" / "again").symlink_to(looped / "train" / "Bag", target_is_directory=True)
    shutil.copy(looped / "train" / "Coat" / sorted(os.listdir(looped / "train" / "Coat"))[0], looped / "test" / "Coat")
    dataset = image_folder(looped, 32, progress=False)
    assert len(dataset.train_images) == 240  # every file once, however many ways the loop reaches it
    assert not [
        note for note in dataset.notes if "cannot read the folder" in note
    ]  # a loop's end is no unreadable folder
    assert any("1 test images are byte-identical to training images" in note for note in dataset.notes)


def test_the_cache_answers_the_second_run_and_a_changed_file_invalidates_it(rgb_set, tmp_path):
    copy = _copy(rgb_set, tmp_path / "cached")
    samples = folders.scan_folder(copy).train
    started = time.perf_counter()
    first, cache = folders.decode_split(copy, samples, 32, "train", progress=False)
    decode_seconds = time.perf_counter() - started
    assert cache == folders.CACHED
    started = time.perf_counter()
    second, cache = folders.decode_split(copy, samples, 32, "train", progress=False)
    assert cache == folders.FROM_CACHE and torch.equal(first.images, second.images) and first.files == second.files
    assert time.perf_counter() - started < decode_seconds
    changed = Path(samples[5][0])
    Image.new("RGB", (30, 30), (0, 255, 0)).save(changed, format="PNG" if changed.suffix == ".png" else "JPEG")
    third, cache = folders.decode_split(copy, samples, 32, "train", progress=False)
    assert cache == folders.CACHED and not torch.equal(third.images[5], first.images[5])
    assert len(list(folders.cache_folder().glob("*.pt"))) == 1  # the stale decoding was replaced


def test_a_cache_that_cannot_be_written_costs_only_the_next_run(rgb_set, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(folders.CACHE_DIR_ENV, str(blocker / "cache"))
    dataset = image_folder(rgb_set, 32, progress=False)
    assert len(dataset.train_images) == 240
    assert "decoded images not cached (" in dataset.notes[0] and "is not a folder, cannot write it" in dataset.notes[0]


def test_a_set_over_the_memory_budget_is_refused_before_decoding():
    with pytest.raises(UsageError, match=r"100,000 images at 224 px RGB take 15.05 GB .* pass a smaller --image-size"):
        folders.check_memory(100_000, 224, budget=2 * 10**9)
    folders.check_memory(100_000, 64, budget=2 * 10**9)  # the documented budget: 100k images at 64 px in 2 GB


@pytest.fixture(scope="module")
def rgb_export(rgb_set, tmp_path_factory):
    """A tiny model trained on the RGB set and exported with every variant."""
    out = tmp_path_factory.mktemp("rgb-run")
    cache = out / "cache"
    trained = cli(
        "train", "--data", str(rgb_set), *TINY, "--lr", "0.05", "--out", str(out / "run"), "--json", cache=cache
    )
    assert trained.returncode == 0, trained.stderr
    assert "10 classes, 240 training and 60 test images (train/test layout), rgb" in trained.stderr
    exported = cli(
        "export",
        "--checkpoint",
        json.loads(trained.stdout)["best_checkpoint"],
        "--fp16",
        "--int8",
        "--with-preprocessing",
        *OPEN_VARIANT_LIMITS,  # a tiny model at chance: its variants' answers are noise
        "--triton-repo",
        str(out / "triton"),
        cache=cache,
    )
    assert exported.returncode == 0, exported.stderr
    return out / "run" / "onnx", cache


@pytest.mark.slow
def test_the_rgb_model_carries_its_classes_colour_and_normalisation(rgb_export, rgb_set):
    onnx_folder, _ = rgb_export
    metadata = read_metadata(onnx_folder / "model.onnx")
    assert metadata["labels"] == sorted(p.name for p in (rgb_set / "train").iterdir())
    assert metadata["preprocessing"]["color"] == "rgb" and len(metadata["preprocessing"]["mean"]) == 3
    assert metadata["io"]["input"]["shape"] == ["batch", 3, 32, 32] and metadata["model"]["in_channels"] == 3
    raw = read_metadata(onnx_folder / "model.preprocess.onnx")["io"]["input"]
    assert raw["shape"] == ["batch", "height", "width", 3] and raw["dtype"] == "uint8"
    golden = json.loads((onnx_folder / "golden" / "golden.json").read_text())
    assert sorted(entry["label"] for entry in golden["images"]) == list(range(10))  # one test image per class
    # 24 held-out images cannot hold the errors a temperature fit needs: plain softmax, and the reason
    calibration = metadata["calibration"]
    assert calibration["fitted"] is False and calibration["temperature"] == 1.0
    assert calibration["method"].startswith("none: the 24 held-out training images hold ")
    assert Image.open(onnx_folder / "golden" / golden["images"][0]["file"]).mode == "RGB"


@pytest.mark.slow  # trains and exports the RGB model (seconds more than the fast tier allows)
def test_the_holdout_triton_and_info_follow_the_folder(rgb_export):
    from vggdeploy.model.checkpoint import load_checkpoint

    onnx_folder, cache = rgb_export
    state = load_checkpoint(onnx_folder.parent / "checkpoints" / "best.pt")
    split = state["calibration_split"]
    assert split["of_images"] == 240 and len(split["indices"]) == 24  # a tenth of the folder's training split
    assert state["dataset"]["kind"] == "folder" and len(state["dataset"]["test_files"]) == 60
    config = next((onnx_folder.parent.parent / "triton").glob("*/config.pbtxt")).read_text()
    assert "dims: [ 3, 32, 32 ]" in config
    assert "input  images: float32 batchx3x32x32" in cli("info", str(onnx_folder / "model.onnx"), cache=cache).stdout


def test_mixed_modes_and_sizes_decode_into_one_rgb_set(rgb_set, tmp_path):
    """Palette, 16-bit, CMYK, gray and RGBA files of any size sit beside the RGB ones."""
    mixed = _copy(rgb_set, tmp_path / "mixed")
    source = Image.open(next((mixed / "train" / "Bag").glob("*.png"))).convert("RGB")
    folder = mixed / "train" / "Bag"
    source.convert("P", palette=Image.ADAPTIVE).save(folder / "m-palette.png")
    Image.fromarray(np.asarray(source.convert("L"), dtype=np.uint16) * 257).save(folder / "m-sixteen.png")
    source.convert("CMYK").save(folder / "m-cmyk.jpg")
    source.convert("L").resize((90, 17)).save(folder / "m-gray-wide.png")
    source.convert("RGBA").resize((5, 5)).save(folder / "m-rgba-tiny.png")
    dataset = image_folder(mixed, 32, progress=False)
    assert len(dataset.train_images) == 245 and dataset.color == "rgb" and not dataset.description["skipped"]


@pytest.mark.slow  # trains and exports the RGB model (seconds more than the fast tier allows)
def test_run_and_the_preprocessing_variant_give_the_golden_answers_on_rgb(rgb_export):
    onnx_folder, cache = rgb_export
    golden = json.loads((onnx_folder / "golden" / "golden.json").read_text())
    for model in ("model.onnx", "model.preprocess.onnx"):
        answer = cli(
            "run",
            str(onnx_folder / "golden"),
            "--model",
            str(onnx_folder / model),
            "--json",
            "--top-k",
            "10",
            cache=cache,
        )
        assert answer.returncode == 0, answer.stderr
        predictions = json.loads(answer.stdout)["predictions"]
        assert {p["calibrated"] for p in predictions} == {False}  # every answer says what the contract carries
        by_file = {Path(p["file"]).name: p for p in predictions}
        for entry in golden["images"]:
            assert golden_problems(by_file[entry["file"]], entry, golden) == [], (model, entry["file"])


@pytest.mark.slow
def test_check_runs_on_the_users_test_split(rgb_export):
    onnx_folder, cache = rgb_export
    result = cli(
        "check",
        "--model",
        str(onnx_folder / "model.onnx"),
        *OPEN_VARIANT_LIMITS,  # a tiny model at chance: its variants' answers are noise
        "--max-ece-increase",
        "100",
        cache=cache,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((onnx_folder / "reports" / "check.json").read_text())
    fp32 = report["results"][0]
    assert fp32["images"] == 60 and fp32["top1_agreement"] == 1.0 and fp32["max_abs_diff"] < 1e-4
    per_class = json.loads((onnx_folder / "reports" / "per_class.json").read_text())
    assert [row["class"] for row in per_class["classes"]] == report["per_class"]["confusion"]["labels"]
    assert per_class["images"] == 60 and [row["images"] for row in per_class["classes"]] == [6] * 10
    assert per_class["accuracy"] == pytest.approx(fp32["candidate_accuracy"])
    assert (onnx_folder / "reports" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "per class (fp32): macro F1 " in result.stdout
    train_reports = onnx_folder.parent / "train"
    assert json.loads((train_reports / "per_class.json").read_text())["images"] == 60
    assert (train_reports / "confusion.png").is_file()


def _consumer(example: str, scripts: list[str], onnx_folder: Path, image_kinds: Path) -> subprocess.CompletedProcess:
    folder = ROOT / "examples" / example
    if shutil.which("node") is None or not (folder / "node_modules").is_dir():
        pytest.fail(f"examples/{example} is not installed: run ./scripts/setup.sh")
    env = {**os.environ, "MODEL_PATH": str(onnx_folder / "model.onnx"), "GOLDEN_DIR": str(onnx_folder / "golden")}
    env["IMAGE_KINDS"] = str(image_kinds)
    return subprocess.run(
        ["node", "--test", *scripts], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def rgb_image_kinds(rgb_export, rgb_set, tmp_path_factory) -> Path:
    """Every image kind `run` accepts, made from a test image of the RGB set (gray kinds, and colour ones tinted),
    with the Python reference's answers for the RGB model (tests/image_kinds.py)."""
    onnx_folder, _ = rgb_export
    bag = Image.open(sorted((rgb_set / "test" / "Bag").iterdir())[0])
    gray = np.asarray(bag.convert("L").resize((61, 47), Image.BILINEAR))
    return write_fixture_set(gray, onnx_folder / "model.onnx", tmp_path_factory.mktemp("rgb-image-kinds"))


@pytest.mark.slow
def test_the_node_service_and_the_web_page_answer_the_rgb_golden_images_and_every_image_kind(
    rgb_export, rgb_image_kinds
):
    """Their own golden tests (labels, logits, calibrated probabilities) on the RGB model, unchanged, and every image
    kind (gray ones given three equal channels, alpha over black, 16-bit, palettes, EXIF orientation) as the Python
    reference reads it for an RGB model, or refused in words."""
    onnx_folder, _ = rgb_export
    node = _consumer("node", ["test/service.test.js", "test/kinds.test.js"], onnx_folder, rgb_image_kinds)
    assert node.returncode == 0 and "# pass 7" in node.stdout, node.stdout[-3000:]
    if not Path("/usr/bin/chromium").is_file():
        pytest.fail("Debian's chromium is missing: run ./scripts/setup.sh")
    web = _consumer("web", ["test/page.test.js"], onnx_folder, rgb_image_kinds)
    assert web.returncode == 0 and "# pass 4" in web.stdout and "# fail 0" in web.stdout, web.stdout[-3000:]


@pytest.mark.slow  # trains and exports the RGB model (seconds more than the fast tier allows)
def test_the_cpp_program_answers_the_rgb_golden_images_and_every_png_kind(rgb_export, rgb_image_kinds):
    onnx_folder, _ = rgb_export
    program = ROOT / "examples" / "cpp" / "build" / "classify"
    if not program.is_file():
        pytest.fail("examples/cpp is not built: run ./scripts/setup.sh")
    golden = json.loads((onnx_folder / "golden" / "golden.json").read_text())
    files = [str(onnx_folder / "golden" / entry["file"]) for entry in golden["images"]]
    run = subprocess.run(
        [str(program), str(onnx_folder / "model.onnx"), *files, "--json", "--top-k", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    for entry, line in zip(golden["images"], run.stdout.splitlines(), strict=True):
        assert golden_problems(json.loads(line), entry, golden) == [], entry["file"]
    cpp_answers_on_every_kind(program, onnx_folder / "model.onnx", rgb_image_kinds)


@pytest.mark.slow
def test_resume_finds_the_folder_again(rgb_export, tmp_path):
    """--resume takes --data and its split from the checkpoint; a larger --epochs trains on."""
    onnx_folder, cache = rgb_export
    run = shutil.copytree(onnx_folder.parent, tmp_path / "run", ignore=shutil.ignore_patterns("onnx"))
    resumed = cli("train", "--out", str(run), "--resume", "--epochs", "3", "--quiet", "--json", cache=cache)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["epochs_run"] == 1 and "decoded images from the cache" in resumed.stderr


@pytest.mark.slow
def test_a_moved_image_folder_is_named_with_data_dir(rgb_export, rgb_set, tmp_path):
    """export, check and bench read the images again from where the checkpoint says they were; once the folder had
    moved, `--data-dir` (Fashion-MNIST's option) was ignored and nothing could name the new place."""
    onnx_folder, cache = rgb_export
    state = torch.load(onnx_folder.parent / "checkpoints" / "best.pt", weights_only=True)
    state["dataset"]["root"] = str(tmp_path / "gone")  # trained there; the images now live in rgb_set
    torch.save(state, tmp_path / "moved.pt")
    check = ["check", "--model", str(onnx_folder / "model.onnx"), "--checkpoint", str(tmp_path / "moved.pt")]
    check += [*OPEN_VARIANT_LIMITS, "--max-ece-increase", "100"]  # a 60-image tiny model
    gone = cli(*check, "--report-dir", str(tmp_path / "reports"), cache=cache)
    assert gone.returncode == 3 and gone.stderr == (
        f"error: {tmp_path / 'gone'}: no such folder: the images this model was trained on are no longer there; put "
        "them back, or name where they are with --data-dir\n"
    )
    found = cli(*check, "--report-dir", str(tmp_path / "reports"), "--data-dir", str(rgb_set), cache=cache)
    assert found.returncode == 0, found.stderr
    assert "fp32: 60 images" in found.stdout
    both = cli("train", "--data", str(rgb_set), "--data-dir", str(rgb_set), "--out", str(tmp_path / "t"), cache=cache)
    assert (
        both.returncode == 2 and "--data-dir: the Fashion-MNIST folder, which a run on your own images" in both.stderr
    )


@pytest.mark.slow
@pytest.mark.parametrize(("per_class", "above"), [(9, 0.18), (30, 0.28)])
def test_a_small_folder_trains_well_above_chance_with_the_defaults(per_class, above, tmp_path, data_dir):
    """With the quick preset's recipe, 90 images were refused (batch 256 > 81 images) and 300 trained to 12 %
    (chance 10 %): one optimizer step an epoch. Sized to the data, the plan is printed first and both learn."""
    folder = tmp_path / "set"
    make_image_folder.make_image_folder(folder, per_class, 20, "split", seed=0, data_dir=data_dir)
    result = cli(
        "train",
        "--data",
        str(folder),
        "--device",
        "cpu",
        "--quiet",
        "--json",
        "--out",
        str(tmp_path / "run"),
        cache=tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr
    images = per_class * 10 - per_class  # a tenth held out as the validation slice
    plan = next(line for line in result.stderr.splitlines() if "training images:" in line)
    assert plan == json.loads(result.stdout)["recipe"].join(("vggdeploy: ", ""))
    expected = size_to_data(images, Recipe(0, 256, 10, 0.2))  # the quick preset's, sized to the folder
    assert expected.batch_size == {81: 8, 270: 32}[images] and expected.steps >= 1_500
    assert plan == f"vggdeploy: {expected.format()}"
    assert "warning" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["selected_test_accuracy"] > above, summary["summary"]  # chance is 0.10


@pytest.mark.slow
def test_own_image_options_are_checked_against_the_folder(rgb_set, tmp_path):
    """`--test-fraction` was accepted without a word for a folder with its own test split."""
    result = cli(
        "train",
        "--data",
        str(rgb_set),
        "--test-fraction",
        "0.3",
        "--out",
        str(tmp_path / "run"),
        cache=tmp_path / "cache",
    )
    assert result.returncode == 2 and result.stderr == (
        f"error: --test-fraction: {rgb_set} has its own train/test split; the option splits a folder of class folders\n"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_help_shows_the_defaults_a_plain_run_takes_here():
    """The help listed --arch A, --hidden 4096, --dropout 0.5 and --image-size 224 while a plain CPU run built VGG-11-BN
    at width ratio 8, hidden 256, dropout 0.2 and 32 px, and it said "Train a VGG on Fashion-MNIST"."""
    from vggdeploy.config import PRESETS

    text = " ".join(cli("train", "--help", cache=Path("/nonexistent")).stdout.split())
    name = "full" if torch.cuda.is_available() else "quick"
    preset = PRESETS[name]
    assert "Train a VGG on Fashion-MNIST, or on a folder of your own labelled images (--data)." in text
    assert f"[default: {name}, as " in text
    for option, value in [
        ("--width-ratio INTEGER Divide every conv width by this.", preset.model.width_ratio),
        ("--hidden INTEGER Hidden FC width.", preset.model.hidden),
        ("--dropout FLOAT RANGE Dropout before each hidden FC layer.", f"{preset.model.dropout:g}"),
        ("--image-size INTEGER Input side in pixels, >= 32.", preset.model.image_size),
        ("--batch-size INTEGER Training images per step.", f"{preset.batch_size}, halved on a small set"),
        ("--epochs INTEGER Passes over the training images.", f"{preset.epochs}, more on a small set"),
        ("--lr FLOAT Peak learning rate.", f"{preset.lr:g} at batch {preset.batch_size}, times the square root"),
    ]:
        assert f"{option} [default: {value}" in text, option
    info = " ".join(cli("info", "--help", cache=Path("/nonexistent")).stdout.split())
    assert "--hidden INTEGER Hidden FC width. [default: 4096]" in info  # an architecture's own default


@pytest.mark.slow  # trains and exports the RGB model (seconds more than the fast tier allows)
def test_channel_order_and_gray_weights_are_exact_in_python_alone(rgb_export, tmp_path):
    """BGR fed to a colour model, or the gray weights applied to B, G, R, passed every Python test; only the Node and
    C++ tests noticed, and they skip where Node or the C++ build is missing. Pure red, green and blue PNGs: the numpy
    preprocessing gives each colour in its own channel, the gray weights 0.299/0.587/0.114 exactly, and the in-graph
    preprocessing (model.preprocess.onnx) the same probabilities as the fp32 model on the numpy tensor."""
    import onnxruntime as ort

    from vggdeploy.deploy.contract import probabilities
    from vggdeploy.deploy.preprocess import PreprocessSpec, decode_image, to_model_input

    onnx_folder, _ = rgb_export
    metadata = read_metadata(onnx_folder / "model.onnx")
    spec = PreprocessSpec.from_metadata(metadata["preprocessing"])
    mean, std = np.asarray(spec.mean), np.asarray(spec.std)
    fp32 = ort.InferenceSession(str(onnx_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    in_graph = ort.InferenceSession(str(onnx_folder / "model.preprocess.onnx"), providers=["CPUExecutionProvider"])
    for channel, (colour, luma) in enumerate((((255, 0, 0), 0.299), ((0, 255, 0), 0.587), ((0, 0, 255), 0.114))):
        path = tmp_path / f"{channel}.png"
        Image.new("RGB", (20, 12), colour).save(path)
        rgb = decode_image(path, "rgb")
        assert rgb.shape == (3, 12, 20) and [float(rgb[c].mean()) for c in range(3)] == [
            float(c == channel) for c in range(3)
        ]
        assert np.array_equal(decode_image(path, "grayscale"), np.full((12, 20), luma, np.float32))
        tensor = to_model_input([rgb], spec)
        expected = (np.eye(3)[channel] - mean) / std
        np.testing.assert_allclose(tensor[0].mean(axis=(1, 2)), expected, rtol=1e-6)
        logits = fp32.run(None, {fp32.get_inputs()[0].name: tensor})[0]
        raw = np.asarray(Image.open(path).convert("RGB"))[None]  # uint8 batch x height x width x 3, as documented
        answered = in_graph.run(None, {in_graph.get_inputs()[0].name: raw})[0]
        np.testing.assert_allclose(answered, probabilities(logits, metadata["calibration"]["temperature"]), atol=1e-5)
