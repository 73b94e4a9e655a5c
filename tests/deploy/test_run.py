import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from forked_cli import vggdeploy as cli
from golden_check import golden_problems
from PIL import Image

from vggdeploy.data.fashion_mnist import CLASS_NAMES
from vggdeploy.deploy import session as runtime
from vggdeploy.deploy.preprocess import decode_grayscale
from vggdeploy.deploy.session import (
    Placement,
    ProviderSettings,
    create_session,
    cuda_driver_present,
    node_placements,
    parse_node_placements,
)
from vggdeploy.errors import ProviderUnavailable


@pytest.fixture(scope="module")
def golden(tiny_export):
    result, out = tiny_export
    return result.model_path, out / "onnx" / "golden", json.loads((out / "onnx" / "golden" / "golden.json").read_text())


def test_run_on_the_golden_images_gives_the_golden_labels(golden):
    model, folder, expected = golden
    result = cli("run", str(folder), "--model", str(model), "--json", "--top-k", "1")
    assert result.returncode == 0, result.stderr
    predicted = {p["file"].split("/")[-1]: p["top"][0]["label"] for p in json.loads(result.stdout)["predictions"]}
    labels = json.loads(result.stdout)
    assert labels["errors"] == []
    from vggdeploy.data.fashion_mnist import CLASS_NAMES

    assert predicted == {e["file"]: CLASS_NAMES[e["predicted"]] for e in expected["images"]}
    from vggdeploy.deploy.session import cuda_driver_present

    said = (
        "onnxruntime: using the CUDA execution provider\n"
        if cuda_driver_present()
        else "onnxruntime: using the CPU execution provider (no CUDA GPU found)\n"
    )
    assert said in result.stderr


def test_table_output_and_the_preprocessing_variant(golden, tiny_export):
    model, folder, expected = golden
    first = folder / expected["images"][0]["file"]
    table = cli("run", str(first), "--model", str(model))
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith(
        f"model: {model} (vgg11_bn-w8-32px, test accuracy"
    )
    assert table.stdout.splitlines()[1].startswith("file")
    raw = cli("run", str(first), "--model", str(tiny_export[0].variants["preprocess"].path), "--json", "--top-k", "1")
    from vggdeploy.data.fashion_mnist import CLASS_NAMES

    assert (
        json.loads(raw.stdout)["predictions"][0]["top"][0]["label"] == CLASS_NAMES[expected["images"][0]["predicted"]]
    )


def test_the_preprocessing_variants_probabilities_are_the_golden_calibrated_ones(golden, tiny_export):
    """model.preprocess.onnx ends in softmax(logits / T) inside the graph: its answers are the golden probabilities."""
    _, folder, expected = golden
    variant = tiny_export[0].variants["preprocess"].path
    answer = cli("run", str(folder), "--model", str(variant), "--json", "--top-k", "10")
    by_file = {Path(p["file"]).name: p for p in json.loads(answer.stdout)["predictions"]}
    assert expected["calibrated"] and abs(expected["temperature"] - 1) > 0.05  # a temperature that shows when missed
    for entry in expected["images"]:
        assert by_file[entry["file"]]["logits"] is None
        assert golden_problems(by_file[entry["file"]], entry, expected) == [], entry["file"]


def _image_in_every_mode(gray: np.ndarray, folder):
    """The same picture saved in many formats and modes; all decode to (nearly) the same grayscale."""
    base = Image.fromarray(gray, mode="L")
    rgb = Image.merge("RGB", [base] * 3)
    rgba = rgb.copy()
    rgba.putalpha(255)
    files = {
        "gray.png": base,
        "rgb.png": rgb,
        "rgba.png": rgba,
        "la.png": base.convert("LA"),
        "palette.png": rgb.convert("P", palette=Image.ADAPTIVE, colors=256),
        "gray.bmp": base,
        "rgb.webp": rgb,
        "rgb.jpg": rgb,
        "cmyk.jpg": rgb.convert("CMYK"),
        "gray.tif": base,
        "sixteen.png": Image.fromarray(gray.astype(np.uint16) * 257),
    }
    exact = {"gray.png", "rgb.png", "rgba.png", "la.png", "gray.bmp", "gray.tif", "sixteen.png", "rgb.webp"}
    for name, image in files.items():
        kwargs = {"lossless": True} if name.endswith(".webp") else {"quality": 95} if name.endswith(".jpg") else {}
        image.save(folder / name, **kwargs)
    return files, exact


def test_every_image_mode_is_handled(test_split, tmp_path, golden):
    gray = test_split[0][0].numpy()
    files, exact = _image_in_every_mode(gray, tmp_path)
    reference = gray.astype(np.float32) / 255
    for name in files:
        decoded = decode_grayscale(tmp_path / name)
        assert decoded.shape == (28, 28) and decoded.dtype == np.float32
        tolerance = 1e-5 if name in exact else 0.06 if name != "palette.png" else 0.02
        assert np.abs(decoded - reference).mean() <= tolerance, name
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    model, _, _ = golden
    result = cli("run", str(tmp_path), "--model", str(model), "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["predictions"]) == len(files)


def test_transparency_is_composited_over_black(tmp_path):
    image = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    image.putpixel((0, 0), (255, 255, 255, 255))
    image.save(tmp_path / "a.png")
    decoded = decode_grayscale(tmp_path / "a.png")
    assert decoded[0, 0] == pytest.approx(1.0, abs=1e-6) and decoded[1:, 1:].max() == 0.0


def test_bad_files_are_named_and_the_good_ones_still_run(golden, tmp_path):
    model, folder, expected = golden
    good = folder / expected["images"][0]["file"]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    result = cli(
        "run",
        str(good),
        str(tmp_path / "empty.png"),
        str(tmp_path / "text.png"),
        str(tmp_path / "cut.png"),
        str(tmp_path / "absent.png"),
        "--model",
        str(model),
        "--json",
    )
    assert result.returncode == 3
    assert len(json.loads(result.stdout)["predictions"]) == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4 and "Traceback" not in result.stderr
    assert any("absent.png: no such file" in e for e in errors) and any(
        "cut.png: truncated or corrupt" in e for e in errors
    )


def test_decompression_bomb_limit(golden, tmp_path):
    model, _, _ = golden
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    result = cli("run", str(tmp_path / "big.png"), "--model", str(model), "--max-pixels", "1000000")
    assert result.returncode == 3 and "big.png: 3000x3000 pixels is over the limit of 1,000,000" in result.stderr


@pytest.mark.skipif(cuda_driver_present(), reason="this machine has a GPU")
def test_cuda_requested_without_a_gpu_is_a_clear_error(golden):
    model, folder, _ = golden
    with pytest.raises(ProviderUnavailable, match="CUDA was asked for, but no NVIDIA driver"):
        create_session(model, ProviderSettings(provider="cuda"))
    result = cli("run", str(folder), "--model", str(model), "--provider", "cuda")
    assert result.returncode == 6
    assert (
        result.stderr.strip() == "error: CUDA was asked for, but no NVIDIA driver with a GPU was found (libcuda.so.1)"
    )


@pytest.mark.skipif(cuda_driver_present(), reason="this machine has a GPU")
def test_cuda_provider_that_cannot_start_is_a_clear_error(golden, monkeypatch):
    """A driver that answers, but no CUDA libraries: ONNX Runtime would run everything on the CPU and only warn."""
    model, _, _ = golden
    monkeypatch.setattr(runtime, "cuda_driver_present", lambda: True)
    with pytest.raises(ProviderUnavailable, match=r"CUDA was asked for, but ONNX Runtime could not start it: .*\.so"):
        create_session(model, ProviderSettings(provider="cuda"))


def test_node_placements_come_from_onnx_runtimes_own_log(golden):
    model, _, _ = golden
    placements = node_placements(str(model), ["CPUExecutionProvider"])
    assert len(placements) == 1 and placements[0].provider == "CPUExecutionProvider"
    assert 0 < placements[0].node_count <= len(onnx.load(str(model)).graph.node)


def test_nodes_left_on_the_cpu_are_named(monkeypatch):
    """The mixed-placement block as session_state.cc logs it (only a GPU machine can produce one for real)."""
    prefix = (
        "\x1b[0;36m2026-11-23 10:51:22.8978 [V:onnxruntime:, session_state.cc:1581 VerifyEachNodeIsAssignedToAnEp] "
    )
    log = [
        prefix + "Node placements",
        prefix + " Node(s) placed on [CPUExecutionProvider]. Number of nodes: 2",
        prefix + "  Shape (/Shape)",
        prefix + "  Gather (/Gather)",
        prefix + " Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 25",
        "2026-11-23 10:51:22.8979 [I:onnxruntime:, inference_session.cc:2200 Initialize] Session successfully initialized.",
    ]
    placements = parse_node_placements(log)
    assert placements == [
        Placement("CPUExecutionProvider", 2, ("Shape (/Shape)", "Gather (/Gather)")),
        Placement("CUDAExecutionProvider", 25),
    ]
    assert runtime._cpu_nodes_message(placements) == (
        "CUDA was asked for, but ONNX Runtime would run 2 of 27 nodes on the CPU: Shape (/Shape), Gather (/Gather) "
        "(--provider auto accepts that fallback)"
    )
    assert "would leave nodes of this model to the CPU" in runtime._cpu_nodes_message([])


def test_cuda_sessions_fold_the_int8_variants_constant_dequantisation_and_the_cpu_keeps_it(golden, tmp_path):
    """The CUDA EP cannot run DequantizeLinear of an int32 bias: on a GPU that left 11 nodes on the CPU (H100)."""
    model, _, _ = golden
    import onnxruntime as ort

    def constant_dequantisations(on_cuda: bool) -> int:
        session_options = runtime.session_options_for(ProviderSettings(), on_cuda=on_cuda)
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # before placement
        session_options.optimized_model_filepath = str(tmp_path / f"optimized-{on_cuda}.onnx")
        ort.InferenceSession(str(model.with_name("model.int8.onnx")), session_options, ["CPUExecutionProvider"])
        graph = onnx.load(session_options.optimized_model_filepath).graph
        constants = {tensor.name for tensor in graph.initializer}
        return sum(node.op_type == "DequantizeLinear" and node.input[0] in constants for node in graph.node)

    assert constant_dequantisations(on_cuda=True) == 0
    assert constant_dequantisations(on_cuda=False) > 0  # the CPU's int8 kernels fuse the QDQ pairs


@pytest.mark.gpu
def test_strict_cuda_accepts_every_exported_variant_and_refuses_a_cpu_only_node(golden, tmp_path):
    model, _, _ = golden
    for name in ("model", "model.fp16", "model.int8", "model.preprocess"):  # every node of each on the GPU
        session = create_session(model.with_name(f"{name}.onnx"), ProviderSettings(provider="cuda"))
        assert session.get_providers()[0] == "CUDAExecutionProvider"
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Det", ["r"], ["y"], name="det")],
        "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    with pytest.raises(ProviderUnavailable, match=r"would run \d+ of \d+ nodes on the CPU: .*Det \(det\)"):
        create_session(path, ProviderSettings(provider="cuda"))


@pytest.mark.slow
def test_model_problems_are_one_line_errors(golden, tmp_path):
    model, folder, _ = golden
    (tmp_path / "cut.onnx").write_bytes(model.read_bytes()[:1000])
    (tmp_path / "text.onnx").write_text("hello")
    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    proto = onnx.load(str(model))
    proto.graph.input[0].name = "pixels"
    proto.graph.node[0].input[0] = "pixels"
    onnx.save(proto, str(tmp_path / "renamed.onnx"))
    _with_metadata(model, tmp_path / "resized.onnx", preprocessing=lambda p: p["resize"].update(height=64, width=64))
    _with_metadata(model, tmp_path / "labels.onnx", labels=lambda labels: labels.pop())
    cases = {
        "cut.onnx": "not an ONNX model",
        "text.onnx": "not an ONNX model",
        "absent.onnx": "no such model file",
        "bare.onnx": "no vggdeploy metadata",
        "renamed.onnx": "do not match its metadata",
        "resized.onnx": "the metadata's preprocessing makes 1x64x64 inputs, but the graph takes 1x32x32",
        "labels.onnx": "the metadata names 9 labels, but the graph outputs 10 classes",
    }
    for name, message in cases.items():
        result = cli("run", str(folder), "--model", str(tmp_path / name))
        assert result.returncode == 3, name
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, (name, result.stderr)
    from vggdeploy.deploy.onnx_file import read_metadata
    from vggdeploy.errors import DataError

    (tmp_path / "empty.onnx").write_bytes(b"")  # parsed as an empty model, it was "no vggdeploy metadata"
    with pytest.raises(DataError, match=r"empty.onnx: empty file \(0 bytes\), not a model"):
        read_metadata(tmp_path / "empty.onnx")


def _with_metadata(source, target, **edits) -> None:
    """A copy of ``source`` whose metadata sections are changed in place by ``edits`` (key -> function)."""
    proto = onnx.load(str(source))
    for prop in proto.metadata_props:
        if prop.key in edits:
            value = json.loads(prop.value)
            edits[prop.key](value)
            prop.value = json.dumps(value)
    onnx.save(proto, str(target))


def test_run_works_without_torch(golden):
    model, folder, _ = golden
    blocker = "import sys; sys.modules['torch'] = None; from vggdeploy.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", blocker, "run", str(folder), "--model", str(model), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["predictions"]) == 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["bench", "--batch-sizes", "1,x"],
            "Invalid value for '--batch-sizes': must be comma-separated integers, got '1,x'",
        ),
        (["export", "--audit-batches", "0,2"], "Invalid value for '--audit-batches': must be positive, got '0,2'"),
        (
            ["export", "--slice-images", "most"],
            "Invalid value for '--slice-images': must be a count or 'all', got 'most'",
        ),
        (["run"], "Missing argument 'IMAGES...'."),
        (["--nope"], "No such option '--nope'"),
    ],
)
def test_click_usage_errors_are_one_line_too(args, message):
    result = cli(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert (
        result.stderr.startswith(f"error: {message}")
        and "--help' " not in result.stderr
        and "--help')" in result.stderr
    )


def test_json_answers_carry_index_label_probability_and_logits(golden):
    """The shape every consumer answers in: {file, top: [{index, label, probability}], logits, calibrated,
    temperature, familiarity, unfamiliar}, the probabilities being softmax(logits / T) and the golden ones."""
    from vggdeploy.deploy.contract import probabilities

    model, folder, expected = golden
    result = cli("run", str(folder), "--model", str(model), "--json", "--top-k", "3")
    answer = json.loads(result.stdout)
    assert answer["model"] == str(model) and answer["errors"] == []
    by_file = {Path(p["file"]).name: p for p in answer["predictions"]}
    for entry in expected["images"]:
        prediction = by_file[entry["file"]]
        assert set(prediction) == {"file", "top", "logits", "calibrated", "temperature", "familiarity", "unfamiliar"}
        assert prediction["unfamiliar"] == (prediction["familiarity"] < expected["familiarity_threshold"])
        assert len(prediction["logits"]) == 10
        assert golden_problems(prediction, entry, expected) == []
        chances = probabilities(np.array([prediction["logits"]]), expected["temperature"])[0]
        assert [t["index"] for t in prediction["top"]] == np.argsort(-chances)[:3].tolist()
        assert all(t["label"] == CLASS_NAMES[t["index"]] for t in prediction["top"])
        assert [t["probability"] for t in prediction["top"]] == pytest.approx(sorted(chances)[::-1][:3], abs=1e-6)


def test_file_names_that_are_not_utf8_are_written_as_backslash_x_in_valid_utf8(golden, tmp_path):
    """A Latin-1 file name once cost every answer of ``run`` on a UTF-8 terminal (an internal error, exit 70), and
    its --json held lone surrogates (``\\udce9``) that strict parsers refuse; its stray bytes now print as ``\\xNN``."""
    model, folder, _ = golden
    named = tmp_path / os.fsdecode(b"caf\xe9")
    named.mkdir()
    shutil.copy(next(folder.glob("*.png")), named / os.fsdecode(b"na\xefve.png"))
    shown = f"{tmp_path}/caf\\xe9/na\\xefve.png"
    utf8_terminal = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    for output in ([], ["--json"]):
        args = [sys.executable, "-m", "vggdeploy", "run", str(tmp_path), str(named / "gone.png"), "--model", str(model)]
        result = subprocess.run([*args, *output], capture_output=True, env=utf8_terminal, timeout=300)
        stdout, stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")  # strict: valid UTF-8
        assert result.returncode == 3 and stderr.endswith(f"error: {tmp_path}/caf\\xe9/gone.png: no such file\n")
        if output:
            assert json.loads(stdout)["predictions"][0]["file"] == shown and "\\ud" not in stdout
        else:
            assert stdout.splitlines()[2].startswith(f"{shown}  ")


def test_a_folder_or_file_it_may_not_read_is_named_not_skipped_or_called_corrupt(golden, tmp_path, obey_permissions):
    """os.walk skips a folder it cannot list without a word, so its images went missing from the answers; a file
    without read permission was called "truncated or corrupt"."""
    model, folder, _ = golden
    first, second, third = sorted(folder.glob("*.png"))[:3]
    (tmp_path / "locked").mkdir()
    shutil.copy(first, tmp_path / "a.png")
    shutil.copy(second, tmp_path / "locked" / "b.png")
    shutil.copy(third, tmp_path / "secret.png")
    (tmp_path / ".git").mkdir()  # hidden: never walked for images, so not reported when unreadable
    for path in (tmp_path / "locked", tmp_path / "secret.png", tmp_path / ".git"):
        path.chmod(0)
    run = [*obey_permissions, sys.executable, "-m", "vggdeploy", "run", str(tmp_path), "--model", str(model), "--json"]
    result = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3 and [p["file"] for p in json.loads(result.stdout)["predictions"]] == [
        str(tmp_path / "a.png")
    ]
    assert result.stderr.splitlines()[-2:] == [
        f"error: {tmp_path / 'locked'}: cannot read the folder (Permission denied); its images were left out",
        f"error: {tmp_path / 'secret.png'}: cannot read the file (Permission denied)",
    ]
    assert ".git" not in result.stderr


def test_the_implicit_model_is_named_and_table_columns_line_up(golden, tmp_path):
    model, folder, _ = golden
    export = tmp_path / "artifacts" / "some-model" / "onnx"
    export.mkdir(parents=True)
    (export / "model.onnx").write_bytes(model.read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "vggdeploy", "run", str(folder)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "no --model given; using the newest export under artifacts/: artifacts/some-model/onnx/model.onnx"
        in result.stderr
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model: artifacts/some-model/onnx/model.onnx")
    rows, notes = lines[2:12], lines[12:]
    assert all(".png" in row for row in rows)
    flagged = any(" ? " in row for row in rows)  # a golden image the tiny model finds unfamiliar: its footnote follows
    assert [note.split(":")[0] for note in notes] == (["? unfamiliar"] if flagged else [])
    percent_columns = {tuple(i for i, ch in enumerate(row) if ch == "%") for row in rows}
    assert len(percent_columns) == 1, rows  # every probability ends in the same column


def test_folders_are_searched_at_any_depth_and_double_star_spans_folders(golden, tmp_path):
    model, folder, _ = golden
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    pngs = sorted(folder.glob("*.png"))
    (tmp_path / "a" / pngs[0].name).write_bytes(pngs[0].read_bytes())
    (nested / pngs[1].name).write_bytes(pngs[1].read_bytes())
    (nested / "notes.txt").write_text("not an image")
    for argument in (str(tmp_path / "a"), str(tmp_path / "**" / "*.png")):
        result = cli("run", argument, "--model", str(model), "--json")
        assert result.returncode == 0, result.stderr
        files = [p["file"] for p in json.loads(result.stdout)["predictions"]]
        assert sorted(Path(f).name for f in files) == [pngs[0].name, pngs[1].name], argument
    empty = tmp_path / "empty" / "deeper"
    empty.mkdir(parents=True)
    result = cli("run", str(tmp_path / "empty"), "--model", str(model))
    assert result.returncode == 3 and "folder holds no image files, at any depth" in result.stderr


def test_readme_synopsis_lists_exactly_each_command_s_options():
    """The README's command block names every option `--help` knows, and no other."""
    import re

    import click

    from vggdeploy.cli import main

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme[readme.index("## The commands") :].split("```bash\n", 1)[1].split("```", 1)[0]
    synopsis: dict[str, set[str]] = {}
    command = None
    for line in block.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] == ["vggdeploy"]:
            command = words[1]
            synopsis.setdefault(command, set())
        if command:
            synopsis[command] |= set(re.findall(r"--[a-z0-9-]+(?:/--[a-z0-9-]+)?", line.split("#", 1)[0]))
    documented = {
        name: {"/".join(p.opts + p.secondary_opts) for p in cmd.params if isinstance(p, click.Option)}
        for name, cmd in main.commands.items()
    }
    assert synopsis == documented
