"""The non-Python consumers of the .onnx, each self-checked against the golden vectors exported beside it."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def _consumer_env(tiny_export) -> dict:
    result, out = tiny_export
    return {**os.environ, "MODEL_PATH": str(result.model_path), "GOLDEN_DIR": str(out / "onnx" / "golden")}


def _installed(example: str, package: str) -> Path:
    folder = EXAMPLES / example
    if shutil.which("node") is None or not (folder / "node_modules" / package).is_dir():
        pytest.fail(f"examples/{example} is not installed: run ./scripts/setup.sh (needs Node >= 20 and npm)")
    return folder


@pytest.fixture(scope="module")
def node_ready():
    return _installed("node", "onnxruntime-node")


def test_node_service_matches_the_golden_vectors_and_handles_bad_requests(tiny_export, node_ready):
    result = subprocess.run(
        ["node", "--test", "test/service.test.js"],
        cwd=node_ready,
        env=_consumer_env(tiny_export),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 4" in result.stdout and "# fail 0" in result.stdout


def test_node_service_short_load_test_has_no_failures(tiny_export, node_ready):
    env = {**_consumer_env(tiny_export), "REQUESTS": "400", "CONNECTIONS": "4"}
    result = subprocess.run(
        ["node", "loadtest.js"], cwd=node_ready, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["requests"] == 400 and summary["non2xx"] == 0 and summary["errors"] == 0


def test_web_page_classifies_the_golden_images_in_chromium(tiny_export, tmp_path):
    folder = _installed("web", "onnxruntime-web")
    if not Path("/usr/bin/chromium").is_file():
        pytest.fail("Debian's chromium is missing: run ./scripts/setup.sh")
    env = {**_consumer_env(tiny_export), "SCREENSHOT": str(tmp_path / "page.png")}
    result = subprocess.run(
        ["node", "--test", "test/page.test.js"], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 3" in result.stdout and "# fail 0" in result.stdout
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def cpp_program():
    program = EXAMPLES / "cpp" / "build" / "classify"
    if not program.is_file():
        pytest.fail("examples/cpp is not built: run ./scripts/setup.sh (see .venv/cpp-build.log)")
    return program


def test_cpp_program_matches_the_golden_vectors(tiny_export, cpp_program):
    result, out = tiny_export
    golden_dir = out / "onnx" / "golden"
    golden = json.loads((golden_dir / "golden.json").read_text())
    files = [str(golden_dir / entry["file"]) for entry in golden["images"]]
    run = subprocess.run(
        [str(cpp_program), str(result.model_path), *files, "--json"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(answers) == len(golden["images"])
    for entry, answer in zip(golden["images"], answers, strict=True):
        assert answer["top"][0]["index"] == entry["predicted"], entry["file"]
        worst = max(abs(a - b) for a, b in zip(answer["logits"], entry["logits"], strict=True))
        assert worst <= golden["tolerance"]["logits_atol"], (entry["file"], worst)


def test_cpp_program_reports_bad_inputs(tiny_export, cpp_program, tmp_path):
    result, out = tiny_export
    good = next((out / "onnx" / "golden").glob("*.png"))
    (tmp_path / "text.png").write_text("not a png")
    run = subprocess.run(
        [str(cpp_program), str(result.model_path), str(good), str(tmp_path / "text.png")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 3 and len(run.stdout.splitlines()) == 1
    assert "text.png" in run.stderr and run.stderr.startswith("error:")
    import onnx

    proto = onnx.load(str(result.model_path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    run = subprocess.run(
        [str(cpp_program), str(tmp_path / "bare.onnx"), str(good)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1 and "no 'vggdeploy.format' metadata" in run.stderr
