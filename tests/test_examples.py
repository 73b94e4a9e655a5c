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
    result = subprocess.run(["node", "--test", "test/service.test.js"], cwd=node_ready, env=_consumer_env(tiny_export),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 4" in result.stdout and "# fail 0" in result.stdout


def test_node_service_short_load_test_has_no_failures(tiny_export, node_ready):
    env = {**_consumer_env(tiny_export), "REQUESTS": "400", "CONNECTIONS": "4"}
    result = subprocess.run(["node", "loadtest.js"], cwd=node_ready, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["requests"] == 400 and summary["non2xx"] == 0 and summary["errors"] == 0


def test_web_page_classifies_the_golden_images_in_chromium(tiny_export, tmp_path):
    folder = _installed("web", "onnxruntime-web")
    if not Path("/usr/bin/chromium").is_file():
        pytest.fail("Debian's chromium is missing: run ./scripts/setup.sh")
    env = {**_consumer_env(tiny_export), "SCREENSHOT": str(tmp_path / "page.png")}
    result = subprocess.run(["node", "--test", "test/page.test.js"], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 3" in result.stdout and "# fail 0" in result.stdout
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"
