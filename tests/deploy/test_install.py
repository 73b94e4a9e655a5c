"""The lean install: `pip install vggdeploy` without extras has no torch, classifies images and describes models,
and says in one line how to get the commands that need the train extra."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory):
    """A fresh venv with `pip install .` and no extras (pip's wheel cache keeps this to about a minute)."""
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_core_install_has_no_torch_and_runs_the_golden_images(core_venv, tiny_export):
    result, out = tiny_export
    python = str(core_venv / "bin" / "python")
    missing = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'onnxsim', 'matplotlib') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
    )
    assert missing.stdout.strip() == "[]", missing.stdout
    golden = json.loads((out / "onnx" / "golden" / "golden.json").read_text())
    run = subprocess.run(
        [
            str(core_venv / "bin" / "vggdeploy"),
            "run",
            str(out / "onnx" / "golden"),
            "--model",
            str(result.model_path),
            "--json",
            "--top-k",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    predicted = {Path(p["file"]).name: p["top"][0]["label"] for p in json.loads(run.stdout)["predictions"]}
    from vggdeploy.data.fashion_mnist import CLASS_NAMES

    assert predicted == {entry["file"]: CLASS_NAMES[entry["predicted"]] for entry in golden["images"]}
    info = subprocess.run(
        [str(core_venv / "bin" / "vggdeploy"), "info", str(result.model_path)], capture_output=True, text=True
    )
    assert info.returncode == 0 and "labels:" in info.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", [["train"], ["export", "--arch", "A"], ["check"], ["bench"], ["info", "--arch", "A"]]
)
def test_commands_that_need_the_train_extra_say_how_to_get_it(core_venv, command):
    result = subprocess.run(
        [str(core_venv / "bin" / "vggdeploy"), *command], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "needs the train extra (torch" in result.stderr and "pip install 'vggdeploy[train]'" in result.stderr
