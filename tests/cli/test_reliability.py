"""Bad inputs, interrupted work, untrusted files and concurrent use, each through the command that takes it.

Every case must give a one-line error that names the file and the problem, a non-zero exit, no traceback, and
nothing half-written; batches of images still process their good files.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_output import TINY_MODEL, failure_lines
from forked_cli import Command
from forked_cli import vggdeploy as cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from image_kinds import png_chunk
from PIL import Image

from vggdeploy.deploy.preprocess import PreprocessSpec, decode_grayscale, to_model_input
from vggdeploy.deploy.session import cuda_driver_present
from vggdeploy.errors import DataError
from vggdeploy.model.checkpoint import load_checkpoint


def assert_clean_failure(result, *needles, code=None):
    """Non-zero exit, no traceback, an 'error: ...' line for each needle (a tuple: all its parts on one line)."""
    assert result.returncode != 0 and (code is None or result.returncode == code), (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    for needle in needles:
        parts = needle if isinstance(needle, tuple) else (needle,)
        assert any(all(part in line for part in parts) for line in errors), (needle, result.stderr)


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def _corrupt_png_crc(data: bytes) -> bytes:
    start = data.index(b"IDAT") + 4
    return data[:start] + bytes(b ^ 0xFF for b in data[start : start + 20]) + data[start + 20 :]


def _bomb_png(side: int) -> bytes:
    """A valid PNG of side x side black pixels: a few hundred KB that would decode to side^2 bytes."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side) for _ in range(side)), 9)
    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def image_corpus(tmp_path_factory, test_split):
    """A folder of good images in every mode beside bad files of every kind; returns (folder, good, bad)."""
    folder = tmp_path_factory.mktemp("corpus")
    gray = Image.fromarray(test_split[0][0].numpy(), mode="L")
    rgb = Image.merge("RGB", [gray] * 3)
    good = {
        "gray.png": _png_bytes(gray),
        "rgba.png": _png_bytes(rgb.convert("RGBA")),
        "sixteen.png": _png_bytes(Image.fromarray(test_split[0][0].numpy().astype(np.uint16) * 257)),
        "palette.png": _png_bytes(rgb.convert("P")),
        "cmyk.jpg": _png_bytes(rgb.convert("CMYK"), format="JPEG"),
        "photo.jpg": _png_bytes(rgb, format="JPEG"),
        "tiny-1x1.png": _png_bytes(Image.new("L", (1, 1), 200)),
        "large-4000x3000.jpg": _png_bytes(rgb.resize((4000, 3000)), format="JPEG", quality=70),
        "animated.gif": _png_bytes(gray, format="GIF", save_all=True, append_images=[rgb.convert("L").rotate(90)]),
        "int32-16bit-range.tif": _png_bytes(
            Image.fromarray(test_split[0][0].numpy().astype(np.int32) * 257), format="TIFF"
        ),
    }
    jpeg = good["photo.jpg"]
    bad = {
        "empty.png": (b"", "not an image"),
        "text.png": (b"just some text, not pixels\n", "not an image"),
        "cut.png": (good["gray.png"][: len(good["gray.png"]) // 2], "truncated or corrupt"),
        "crc.png": (_corrupt_png_crc(good["gray.png"]), "truncated or corrupt"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], "truncated or corrupt"),
        "bomb.png": (_bomb_png(20_000), "20000x20000 pixels is over the limit of 50,000,000"),
        "float.tif": (_png_bytes(Image.new("F", (8, 8), 0.5), format="TIFF"), "32-bit float pixels"),
        "int32-wide.tif": (  # once clipped to white without a word
            _png_bytes(Image.new("I", (8, 8), 1_000_000), format="TIFF"),
            "32-bit integer pixels outside 0-65535 have no agreed scale",
        ),
    }
    for name, data in good.items():
        (folder / name).write_bytes(data)
    for name, (data, _) in bad.items():
        (folder / name).write_bytes(data)
    return folder, good, bad


@pytest.mark.slow
def test_image_corpus_through_run(image_corpus, tiny_export):
    folder, good, bad = image_corpus
    result = cli("run", str(folder), "--model", str(tiny_export[0].model_path), "--json")
    assert_clean_failure(result, *(f"{name}: {problem}" for name, (_, problem) in bad.items()), code=3)
    predicted = {Path(p["file"]).name for p in json.loads(result.stdout)["predictions"]}
    assert predicted == set(good)
    assert len(result.stderr.strip().splitlines()) == len(bad) + 1  # + the provider line


def test_an_animated_or_multi_page_image_is_read_by_its_first_frame(tmp_path):
    first, second = Image.new("L", (8, 8), 30), Image.new("L", (8, 8), 220)
    for name in ("animated.gif", "pages.tif"):
        first.save(tmp_path / name, save_all=True, append_images=[second])
        assert Image.open(tmp_path / name).n_frames == 2
        # a GIF frame is a palette image (mode P): its gray goes through the float32 luma weights, within 1 ulp
        np.testing.assert_allclose(decode_grayscale(tmp_path / name), np.full((8, 8), 30 / 255), rtol=0, atol=1e-7)


def test_exif_orientation_turns_images_upright_but_not_from_png_text_chunks(tmp_path):
    """Each of the 8 orientations of a PNG's eXIf chunk (and a JPEG's) gives the upright picture; EXIF that Pillow
    would also read from a PNG text chunk ("Raw profile type exif") is not used: no other consumer reads it."""
    from image_kinds import write_image_kinds
    from PIL import PngImagePlugin

    picture = np.random.default_rng(1).integers(0, 256, (15, 11)).astype(np.uint8)
    paths = write_image_kinds(picture, tmp_path)
    upright = decode_grayscale(paths["gray8"])
    for kind in [f"exif_orientation_{o}_png" for o in range(2, 9)] + ["exif_transposed_png_after_idat"]:
        expected = upright if kind != "exif_transposed_png_after_idat" else decode_grayscale(paths["rgba8"])
        np.testing.assert_array_equal(decode_grayscale(paths[kind]), expected, err_msg=kind)
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = b"Exif\x00\x00" + exif.tobytes()
    text = PngImagePlugin.PngInfo()
    text.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{raw.hex()}\n")
    Image.fromarray(picture).save(tmp_path / "text-chunk.png", pnginfo=text)
    assert Image.open(tmp_path / "text-chunk.png").getexif().get(0x0112) == 6  # Pillow alone would turn it
    np.testing.assert_array_equal(decode_grayscale(tmp_path / "text-chunk.png"), upright)
    np.testing.assert_array_equal(decode_grayscale(paths["malformed_exif_png"]), upright)  # once refused as corrupt


def test_a_model_whose_output_is_not_finite_gives_no_probabilities(nan_model, tmp_path):
    """Once `run` printed 'nan%' with exit 0, and --json wrote NaN, which is not JSON."""
    image = tmp_path / "image.png"
    Image.new("L", (28, 28), 90).save(image)
    result = cli("run", str(image), "--model", str(nan_model), "--json")
    assert_clean_failure(result, f"{image}: the model's output is not finite (NaN or inf): no probabilities", code=4)
    answer = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert answer["predictions"] == [] and len(answer["errors"]) == 1


def test_empty_folder_and_missing_glob(tmp_path, tiny_export):
    (tmp_path / "empty").mkdir()
    (tmp_path / "photo.png").write_bytes(_png_bytes(Image.new("L", (8, 8))))
    arguments = [str(tmp_path / "empty"), str(tmp_path / "*.jpg"), ""]
    # run in tmp_path, so an empty argument read as "." would find photo.png
    result = cli("run", *arguments, "--model", str(tiny_export[0].model_path), cwd=tmp_path)
    assert_clean_failure(result, "folder holds no image files", "no file matches", "'': an empty argument", code=3)
    assert "photo.png" not in result.stdout


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        (
            ["train", "--color", "rgb", "--test-fraction", "0.2", "--strict"],
            "--test-fraction (Fashion-MNIST comes with its own test split); --color (Fashion-MNIST is grayscale); "
            "--strict (Fashion-MNIST is read from its IDX files, not image files): for a folder of your own images "
            "only (--data DIR)",
        ),
        (["train", "--test-fraction", "1.5"], "Invalid value for '--test-fraction': 1.5 is not in the range 0<x<1"),
        (["train", "--test-limit", "0"], "--test-limit must be at least 1, got 0"),
        (["info", "MODEL", "--arch", "E"], "--arch describe an architecture, not MODEL"),
        (["info", "/dev/null"], "/dev/null: not a regular file"),
        (["export", "--int8-max-drop", "2"], "--int8-max-drop: only used with --int8, which was not given"),
        (["check", "--layer-rtol", "0.1"], "--layer-rtol: only used with --localize, which was not given"),
        (["check", "--images", "0"], "--images must be at least 1, got 0"),
        (["bench", "--engines", ""], "unknown engine ''"),  # was the default set; and before the checkpoint's absence
    ],
)
@pytest.mark.slow
def test_an_option_that_would_be_ignored_or_mean_nothing_is_refused(
    command, problem, tiny_export, tiny_checkpoint, tmp_path
):
    """`train --color rgb` on Fashion-MNIST once trained grayscale without a word, `--test-limit 0` reported an
    accuracy of nan%, `info MODEL --arch E` described MODEL, `export --int8-max-drop 2` wrote no int8 file, and
    `bench --engines ''` benched the default set: each is now a usage or input error, before any work."""
    command = [str(tiny_export[0].model_path) if part == "MODEL" else part for part in command]
    out = {
        "train": ["--out", str(tmp_path / "new")],
        "export": ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "new")],
        "check": ["--model", str(tiny_export[0].model_path), "--report-dir", str(tmp_path / "new")],
        "bench": ["--model", str(tiny_export[0].model_path), "--report-dir", str(tmp_path / "new")],
    }.get(command[0], [])
    result = cli(*command, *out)
    assert_clean_failure(result, problem, code=3 if "/dev/null" in command else 2)
    assert not (tmp_path / "new").exists()


TORCH_IMPORTED_AT_EXIT = """
import atexit, sys
atexit.register(lambda: print("torch imported:", "torch" in sys.modules))
from vggdeploy import cli
cli.main(sys.argv[1:], prog_name="vggdeploy")
"""


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--preset", "quick", "--epochs", "0"],
        ["train", "--preset", "quick", "--resume", "--overwrite"],
        ["train", "--preset", "nope"],
        ["train", "--color", "rgb"],
        ["export", "--int8-max-drop", "2"],
        ["check", "--images", "0"],
        ["bench", "--engines", ""],
        ["run", "--top-k", "0", "photo.png"],
    ],
)
def test_a_usage_error_answers_before_torch_is_imported(command):
    """A typo costs no seconds of importing torch: every setting is checked first (a fresh process, as a user's)."""
    result = subprocess.run(
        [sys.executable, "-c", TORCH_IMPORTED_AT_EXIT, *command], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == "torch imported: False\n"


def test_train_asks_torch_about_a_gpu_only_where_an_nvidia_driver_answers():
    """Without a preset, ``train`` picks ``full`` where torch sees a GPU; torch can see one only through the driver,
    so a machine without one refuses a bad setting without importing torch."""
    result = subprocess.run(
        [sys.executable, "-c", TORCH_IMPORTED_AT_EXIT, "train", "--epochs", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr == "error: epochs must be at least 1, got 0\n"
    assert result.stdout == f"torch imported: {cuda_driver_present()}\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_image_to_tensor(data, tmp_path_factory):
    """Random bytes and mutated real PNG/JPEG/BMP/GIF files: a finite tensor or the documented DataError."""
    seed = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L")
    base = data.draw(
        st.sampled_from(
            [
                _png_bytes(seed),
                _png_bytes(seed, format="JPEG"),
                _png_bytes(seed, format="BMP"),
                _png_bytes(seed, format="GIF"),
                b"",
            ]
        )
    )
    blob = bytearray(base)
    for _ in range(data.draw(st.integers(0, 8))):
        if blob and data.draw(st.booleans()):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        else:
            blob[data.draw(st.integers(0, len(blob))) :] = data.draw(st.binary(max_size=64))
    try:
        gray = decode_grayscale(bytes(blob), max_pixels=1_000_000)
    except DataError as error:
        assert str(error).startswith("image bytes: ")
        return
    tensor = to_model_input([gray], PreprocessSpec(32, 32))
    assert tensor.shape == (1, 1, 32, 32) and np.isfinite(tensor).all()


def _external_data_model(source: Path, folder: Path, location: str) -> Path:
    proto = onnx.load(str(source))
    onnx.external_data_helper.convert_model_to_external_data(
        proto, all_tensors_to_one_file=True, location="weights.bin"
    )
    folder.mkdir(parents=True)
    onnx.save(proto, str(folder / "model.onnx"))
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(folder / "model.onnx"))
    return folder / "model.onnx"


@pytest.mark.slow
def test_model_corpus_through_run_and_check(tiny_export, tmp_path, image_corpus, bad_metadata_models):
    model = tiny_export[0].model_path
    folder = image_corpus[0]
    (tmp_path / "cut.onnx").write_bytes(model.read_bytes()[:5000])
    proto = onnx.load(str(model))
    for dim, value in zip(proto.graph.input[0].type.tensor_type.shape.dim[2:], (64, 64), strict=True):
        dim.dim_value = value
    onnx.save(proto, str(tmp_path / "other-shape.onnx"))
    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 4096)
    escaping = _external_data_model(model, tmp_path / "escape", "../secret.bin")
    absolute = _external_data_model(model, tmp_path / "absolute", str(tmp_path / "secret.bin"))
    cases = {
        **bad_metadata_models,
        tmp_path / "cut.onnx": "not an ONNX model",
        tmp_path / "other-shape.onnx": "does not match its metadata",
        tmp_path / "bare.onnx": "no vggdeploy metadata",
        escaping: "external data outside the model's folder (../secret.bin)",
        absolute: "external data outside the model's folder",
    }
    for path, problem in cases.items():
        for command in (
            ["run", str(folder / "gray.png"), "--model", str(path)],
            ["check", "--model", str(path), "--images", "10"],
        ):
            assert_clean_failure(cli(*command), (f"{path}: ", problem))


@pytest.mark.slow
def test_checkpoint_corpus_through_export(tiny_checkpoint, tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_pickled_code_checkpoint(marker))
    data = tiny_checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "other.pt").write_bytes(data)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    (tmp_path / "hello.pt").write_text("hello\n")  # once a KeyError from the unpickler: an internal error
    (tmp_path / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    import torch

    state = torch.load(tiny_checkpoint, weights_only=True)
    state["model_state"]["classifier.7.bias"][3] = float("nan")  # the export once failed its parity on "max |diff| nan"
    torch.save(state, tmp_path / "nan.pt")
    cases = [
        (
            ["--checkpoint", str(evil)],
            f"{evil}: refused, it holds objects that are not plain data (a pickled posix.system)",
        ),
        (["--checkpoint", str(tmp_path / "cut.pt")], "cut.pt: truncated or not a checkpoint"),
        (["--checkpoint", str(tmp_path / "text.pt")], "text.pt: truncated or not a checkpoint"),
        (["--checkpoint", str(tmp_path / "hello.pt")], "hello.pt: truncated or not a checkpoint"),
        (["--checkpoint", str(tmp_path / "image.pt")], "image.pt: truncated or not a checkpoint"),
        (["--checkpoint", str(tmp_path / "other.pt"), "--arch", "E"], "other.pt: holds architecture A, not E"),
        (["--checkpoint", str(tmp_path / "absent.pt")], "absent.pt: no such checkpoint"),
        (
            ["--checkpoint", str(tmp_path / "nan.pt")],
            "nan.pt: its weights hold NaN or inf (classifier.7.bias: 1 of 10 values; 1 of ",
        ),
    ]
    for args, problem in cases:
        assert_clean_failure(cli("export", *args, "--out", str(tmp_path / "new" / "out")), problem)
        assert not (tmp_path / "new").exists(), "a refused export left the folders it created"
    assert not marker.exists()
    assert not list(tmp_path.rglob("*.onnx")) and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        (["check", "--atol", "nan"], "--atol must be a number >= 0, got nan"),
        (["check", "--min-agreement", "1.5"], "--min-agreement must be between 0 and 1, got 1.5"),
        (["check", "--fp16-max-drop", "nan"], "--fp16-max-drop must be a number >= 0, got nan"),
        (["check", "--max-ece-increase", "-1"], "--max-ece-increase must be a number >= 0, got -1.0"),
        (["check", "--localize", "--layer-rtol", "nan"], "--layer-rtol must be a number >= 0, got nan"),
        (["export", "--int8", "--int8-max-drop", "nan"], "--int8-max-drop must be a number >= 0, got nan"),
        (["bench", "--seconds", "nan"], "--seconds must be a number >= 0, got nan"),
        (["run", "--max-pixels", "0", "any.png"], "'--max-pixels': 0 is not in the range x>=1"),
    ],
)
def test_a_limit_that_every_comparison_passes_is_refused(command, problem, tiny_export, tiny_checkpoint, tmp_path):
    """NaN passes every `>` test, so `--atol nan` once reported 'ok'; such limits are usage errors, and the folders
    a refused command created are gone again."""
    model = str(tiny_export[0].model_path)
    where = {
        "check": ["--model", model, "--images", "50", "--report-dir", str(tmp_path / "new" / "reports")],
        "export": ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "new" / "onnx")],
        "bench": ["--model", model, "--engines", "ort-cpu-fp32", "--report-dir", str(tmp_path / "new" / "reports")],
        "run": ["--model", model],
    }[command[0]]
    assert_clean_failure(cli(*command, *where), problem, code=2)
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_training_refused_after_its_folder_was_made_leaves_no_folder(tmp_path, data_dir):
    out = tmp_path / "new" / "run"
    settings = ["--width-ratio", "64", "--image-size", "32", "--epochs", "1", "--quiet", "--data-dir", str(data_dir)]
    # 58 images after the holdout; the recipe would size the batch to them, so it is given
    result = cli("train", *settings, "--train-limit", "64", "--batch-size", "256", "--out", str(out))
    assert_clean_failure(
        result,
        "batch size 256 is larger than the 58 training images per process: lower --batch-size (at most 58); lr 0.2 is "
        "the quick preset's for batch 256; at batch 58 the same rate per image is --lr 0.0453",
        code=2,
    )
    assert not (tmp_path / "new").exists()


def _pickled_code_checkpoint(marker: Path) -> bytes:
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buffer = io.BytesIO()
    torch.save({"format": "vggdeploy-checkpoint/1", "model_args": {}, "payload": Exploit()}, buffer)
    return buffer.getvalue()


@pytest.mark.slow
def test_data_corpus_through_train(tmp_path, data_dir):
    from vggdeploy.data.fashion_mnist import SPLITS

    names = [spec.name for pair in SPLITS.values() for spec in pair]
    for case in ("missing", "corrupt-idx"):
        folder = tmp_path / case
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes((data_dir / name).read_bytes())
        if case == "missing":
            (folder / "t10k-labels-idx1-ubyte.gz").unlink()
            expected = "t10k-labels-idx1-ubyte.gz: missing"
        else:
            import gzip

            payload = bytearray(gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes()))
            payload[500] = 77
            (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(payload)))
            expected = "train-labels-idx1-ubyte.gz: checksum mismatch"
        result = cli("train", "--epochs", "1", "--data-dir", str(folder), "--out", str(tmp_path / "out" / case))
        assert_clean_failure(result, expected, code=3)
        assert not list((tmp_path / "out").rglob("*.pt"))


# --- interrupted training -------------------------------------------------------------------------------------

TINY_TRAIN = [
    *TINY_MODEL,
    "--batch-size",
    "64",
    "--lr",
    "0.1",
    "--train-limit",
    "3000",
    "--test-limit",
    "500",
    "--device",
    "cpu",
]


def _train(out: Path, *extra) -> Command:
    return Command("train", *TINY_TRAIN, "--out", str(out), *extra)


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    process = _train(out, "--epochs", "3", "--quiet")
    assert process.wait(timeout=300) == 0, process.communicate()[1]
    return load_checkpoint(out / "checkpoints" / "last.pt")


def _same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])


@pytest.mark.slow
def test_ctrl_c_mid_epoch_saves_a_checkpoint_that_resumes_exactly(tmp_path, uninterrupted):
    process = _train(tmp_path, "--epochs", "3", "--quiet")
    _wait_for((tmp_path / "checkpoints" / "last.pt").exists)  # epoch 1 is done
    time.sleep(0.5)  # inside epoch 2 (an epoch takes 1.5 to 3 s on 2 cores)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert process.returncode == 130, stderr
    failure = failure_lines(stderr)
    assert len(failure) == 1 and failure[0].startswith("error: interrupted (SIGINT)") and "--resume" in stderr
    assert "Traceback" not in stderr
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["in_progress"]["step"] > 0  # saved inside epoch 2
    resumed = _train(tmp_path, "--epochs", "3", "--quiet", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1]
    final = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert "in_progress" not in final and final["epoch"] == 3
    assert _same_weights(final, uninterrupted)
    assert [m["test_accuracy"] for m in final["metrics"]] == [m["test_accuracy"] for m in uninterrupted["metrics"]]


@pytest.mark.slow
def test_sigkill_mid_epoch_loses_at_most_that_epoch(tmp_path, uninterrupted):
    process = _train(tmp_path, "--epochs", "3", "--quiet")
    last = tmp_path / "checkpoints" / "last.pt"
    _wait_for(last.exists)
    time.sleep(0.5)  # inside epoch 2
    process.kill()
    process.wait(timeout=30)
    state = load_checkpoint(last)  # always loadable
    assert state["epoch"] >= 1
    resumed = _train(tmp_path, "--epochs", "3", "--quiet", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1]
    final = load_checkpoint(last)
    assert final["epoch"] == 3 and _same_weights(final, uninterrupted)
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


WRITER = """
import sys, torch
from pathlib import Path
from vggdeploy.model.archs import ModelArgs
from vggdeploy.model.checkpoint import save_checkpoint
path = Path(sys.argv[1])
args = ModelArgs(width_ratio=8, hidden=64, image_size=32).to_dict()
for version in range(1, 10_000):
    save_checkpoint(path, {"model_args": args, "version": version, "payload": torch.full((4_000_000,), float(version))})
    print(version, flush=True)
"""


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_never_leaves_a_broken_one(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    for attempt in range(6):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        process.stdout.readline()  # one complete write exists
        time.sleep(0.05 + 0.07 * attempt)  # lands at different points of the next write
        process.kill()
        process.wait(timeout=30)
        state = load_checkpoint(path)
        assert torch.equal(state["payload"], torch.full((4_000_000,), float(state["version"])))
    from vggdeploy.files import remove_stale_temporaries

    remove_stale_temporaries(path.parent)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


# --- concurrency and confinement -------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_and_a_bench_at_the_same_time(tiny_export, tiny_checkpoint, tmp_path):
    model = tiny_export[0].model_path
    golden = model.parent / "golden"
    processes = [Command("run", str(golden), "--model", str(model), "--json") for _ in range(2)]
    bench = ("bench", "--model", str(model), "--checkpoint", str(tiny_checkpoint), "--batch-sizes", "1,4")
    processes.append(Command(*bench, "--seconds", "0.3", "--report-dir", str(tmp_path)))
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err for _, err in outputs]
    assert json.loads(outputs[0][0])["predictions"] == json.loads(outputs[1][0])["predictions"]
    assert (tmp_path / "bench.json").is_file()


@pytest.mark.slow
def test_sigterm_stops_a_command_in_one_line_and_leaves_no_lock_or_new_folder(tiny_export, tiny_checkpoint, tmp_path):
    """SIGTERM (a container stop, `kill`) once ended bench with no message, its lock file and an empty new folder
    left behind; now it is raised in the main thread, so every cleanup runs as for Ctrl-C."""
    reports = tmp_path / "new" / "reports"
    command = ["bench", "--model", str(tiny_export[0].model_path), "--checkpoint", str(tiny_checkpoint)]
    process = Command(*command, "--seconds", "5", "--report-dir", str(reports))
    time.sleep(6)
    assert process.poll() is None, "bench ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and stderr.strip().splitlines()[-1] == "error: terminated (SIGTERM)", stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".*.lock"))


# A command whose heavy import is under way when SIGTERM comes: a C extension's initialisation turns the handler's
# exception into an ImportError, as numpy's and torch's did on a loaded machine
SIGTERM_DURING_AN_IMPORT = """
import os, signal, sys, time
from vggdeploy import cli
from vggdeploy.errors import Terminated

@cli.main.command("slow-import")
def slow_import():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here, at once
    except Terminated:
        raise ImportError("initialization failed")

cli.main(sys.argv[1:])
"""


def test_sigterm_during_an_import_is_still_a_termination_not_an_internal_error():
    result = subprocess.run(
        [sys.executable, "-c", SIGTERM_DURING_AN_IMPORT, "slow-import"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 143 and result.stderr == "error: terminated (SIGTERM)\n", result.stderr
    # any other ImportError stays an internal error: the flag is the signal's, not the exception's
    other = SIGTERM_DURING_AN_IMPORT.replace("os.kill(os.getpid(), signal.SIGTERM)", "raise Terminated")
    result = subprocess.run([sys.executable, "-c", other, "slow-import"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 70 and "internal error: ImportError: initialization failed" in result.stderr


@pytest.mark.slow
def test_two_exports_to_one_path_one_runs_the_other_is_told(tiny_checkpoint, tmp_path):
    out = tmp_path / "shared"
    args = [
        "export",
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--parity-images",
        "32",
        "--audit-batches",
        "1,2,7",
    ]
    processes = [Command(*args) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=300), p.communicate()[1]) for p in processes)
    assert [code for code, _ in outcomes] == [0, 75]  # one writer: the second stops at once, naming the first
    assert (
        f"{out} is in use by 'vggdeploy export' (pid " in outcomes[1][1] and "write elsewhere (--out)" in outcomes[1][1]
    )
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert not list(out.rglob("*.tmp"))
    json.loads((out / "export_report.json").read_text())


@pytest.mark.slow
def test_export_writes_only_inside_its_output_folder(tiny_checkpoint, tmp_path):
    (tmp_path / "work").mkdir()
    before = set(tmp_path.rglob("*"))
    result = cli(
        "export",
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(tmp_path / "work" / "out"),
        "--parity-images",
        "16",
        "--audit-batches",
        "1,2",
    )
    assert result.returncode == 0, result.stderr
    created = set(tmp_path.rglob("*")) - before
    assert created and all(path.is_relative_to(tmp_path / "work" / "out") for path in created)


def test_a_script_whose_reader_stops_reading_exits_1_without_a_traceback(tmp_path):
    """`python scripts/familiarity_benchmark.py ... | head -1` printed a BrokenPipeError traceback."""
    talker = tmp_path / "talker.py"
    talker.write_text(
        "from vggdeploy.errors import run_script\n\n"
        "def main():\n    for line in range(200_000):\n        print('line', line)\n\nrun_script(main)\n"
    )
    process = subprocess.Popen([sys.executable, str(talker)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"line 0\n"
    process.stdout.close()
    assert process.wait(timeout=60) == 1
    assert process.stderr.read() == b""
