"""scripts/big_model_cost.py: the cost of exporting and checking a model, measured per command."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[2] / "scripts" / "big_model_cost.py"


@pytest.mark.slow
def test_each_command_is_measured_against_the_exported_file(tmp_path):
    out = tmp_path / "cost.json"
    result = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--image-size", "32", "--width-ratio", "16", "--hidden", "64"),
            *("--out", str(tmp_path / "big")),
            *("--check-images", "100", "--export-options=--no-calibration", "--held-out", "150"),
            *("--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    size = (tmp_path / "big" / "run" / "onnx" / "model.onnx").stat().st_size
    assert figures["model_file_mb"] == round(size / 1e6, 2)
    assert [step["command"].split()[1] for step in figures["steps"]] == ["train", "export", "check"]
    assert "--preset full --no-compile" in figures["steps"][0]["command"]
    assert "--hidden 64" in figures["steps"][0]["command"]
    assert "--no-calibration" in figures["steps"][1]["command"] and "--images 100" in figures["steps"][2]["command"]
    for step in figures["steps"]:
        assert step["exit"] == 0 and step["wall_s"] > 0 and 0.1 < step["peak_rss_gb"] < 20
        assert step["rss_over_file"] == round(step["peak_rss_gb"] * 1e9 / size, 2)
    phases = [phase["phase"] for phase in figures["export_phases"]]
    assert phases[0] == "load the checkpoint and the data" and phases[-1] == "write"
    assert max(phase["peak_rss_gb"] for phase in figures["export_phases"]) <= figures["steps"][1]["peak_rss_gb"]
    assert "export's phases" in result.stdout
    # the slice the script gave the checkpoint: 150 training images of 60,000, evenly spread, fitted on by export
    report = json.loads((tmp_path / "big" / "run" / "onnx" / "export_report.json").read_text())
    assert report["slice_sample"] == {"images": 150, "of": 150, "reason": "the whole slice"}
    assert report["familiarity"]["threshold_from"].startswith("150 held-out training images")
    state = torch.load(tmp_path / "big" / "run" / "checkpoints" / "best.pt", weights_only=False)
    assert state["calibration_split"]["indices"].tolist() == [i * 400 for i in range(150)]
    assert state["calibration_split"]["of_images"] == 60_000
    assert result.stdout.splitlines()[0].startswith(f"fp32 model file: {figures['model_file_mb']} MB")


def test_a_check_on_no_images_is_refused_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--check-images", "0"], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr == "error: --check-images must be at least 1, got 0\n"
    assert list(tmp_path.iterdir()) == []
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--held-out", "60001"], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr == "error: --held-out must be 1 to 60,000, got 60001\n"
    assert list(tmp_path.iterdir()) == []
