"""Calibrated probabilities: the temperature fit, the held-out slice, the contract every consumer applies."""

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from forked_cli import script
from forked_cli import vggdeploy as cli
from golden_check import golden_problems

from vggdeploy.config import ExportConfig, TrainConfig
from vggdeploy.data.fashion_mnist import load_split
from vggdeploy.data.holdout import stratified_holdout
from vggdeploy.deploy.contract import probabilities, temperature
from vggdeploy.deploy.onnx_file import read_metadata
from vggdeploy.export.pipeline import export_model
from vggdeploy.metrics.calibration import CalibrationFigures, ReliabilityBins, fit_temperature, negative_log_likelihood
from vggdeploy.model.archs import ModelArgs
from vggdeploy.model.checkpoint import load_checkpoint, save_checkpoint
from vggdeploy.passes import torch_logits
from vggdeploy.train import loop as train_module

EXAMPLES = Path(__file__).parents[2] / "examples"


def _synthetic(true_temperature: float, images: int = 20_000, classes: int = 10, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / true_temperature): that T is the calibrated one."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (images, classes))
    chances = probabilities(logits, true_temperature)
    labels = (chances.cumsum(axis=1) > rng.random((images, 1))).argmax(axis=1)
    return logits.astype(np.float32), labels


@pytest.mark.parametrize("true_temperature", [0.5, 0.7, 1.0, 2.5])
def test_the_fit_recovers_a_known_temperature(true_temperature):
    logits, labels = _synthetic(true_temperature)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.04)
    # and it is the NLL's minimum: a step either side is worse
    nll = negative_log_likelihood(logits, labels, fitted)
    assert nll < negative_log_likelihood(logits, labels, fitted * 1.05)
    assert nll < negative_log_likelihood(logits, labels, fitted / 1.05)
    assert CalibrationFigures.measure(logits, labels, fitted).ece < 0.02


@pytest.mark.slow
def test_logits_without_signal_end_at_the_search_bound_and_are_not_called_calibrated():
    """A model at chance on its held-out images is best flattened without limit: the fit ends at the top of the range
    (it once printed "temperature 20.0000 fitted" as if that were a calibration like any other; then a calibration
    with a remark; now none: T = 1, and the reason)."""
    from vggdeploy.export.calibrate import unfit_slice
    from vggdeploy.metrics.calibration import TEMPERATURE_RANGE, at_search_bound

    rng = np.random.default_rng(1)
    logits, labels = rng.normal(0, 3, (2000, 10)), rng.integers(0, 10, 2000)
    fitted = fit_temperature(logits, labels)
    assert at_search_bound(fitted) and fitted == pytest.approx(TEMPERATURE_RANGE[1], rel=1e-4)
    assert not at_search_bound(fit_temperature(*_synthetic(2.5)))
    assert unfit_slice(logits, labels, fitted) == (
        "the fit ended at T = 20, an end of the search range 0.05-20 (no minimum inside it)"
    )
    assert unfit_slice(*_synthetic(2.5), fit_temperature(*_synthetic(2.5))) is None


def test_nll_and_ece_against_hand_worked_values():
    logits = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]]))
    labels = np.array([0, 1, 1, 0])
    assert negative_log_likelihood(logits, labels) == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.55])))
    # 2 bins (0, 0.5], (0.5, 1]: every top-1 confidence is above 0.5 -> one bin: confidence 0.6875, accuracy 0.75
    bins = ReliabilityBins.of(probabilities(logits), labels, bins=2)
    assert bins.counts.tolist() == [0, 4]
    assert bins.expected_calibration_error() == pytest.approx(abs(0.75 - (0.9 + 0.6 + 0.7 + 0.55) / 4))
    # 10 bins: 0.9 -> (0.8, 0.9] (right-closed), 0.6 -> (0.5, 0.6], 0.7 -> (0.6, 0.7], 0.55 -> (0.5, 0.6]
    bins = ReliabilityBins.of(probabilities(logits), labels, bins=10)
    assert np.flatnonzero(bins.counts).tolist() == [5, 6, 8] and bins.counts[5] == 2
    expected = (2 * abs(0.5 - 0.575) + abs(1 - 0.7) + abs(1 - 0.9)) / 4
    assert bins.expected_calibration_error() == pytest.approx(expected)


def test_a_temperature_changes_no_argmax():
    logits, _ = _synthetic(1.0, images=1000)
    for scale in (0.3, 1.0, 4.0):
        assert (probabilities(logits, scale).argmax(1) == logits.argmax(1)).all()


def test_the_holdout_is_stratified_seeded_and_capped(data_dir):
    _, labels = load_split("train", data_dir)
    picked = stratified_holdout(labels, 5000, seed=0)
    assert len(picked) == len(set(picked.tolist())) == 5000
    assert torch.bincount(labels[picked], minlength=10).tolist() == [500] * 10  # Fashion-MNIST is balanced
    assert torch.equal(picked, stratified_holdout(labels, 5000, seed=0))
    assert not torch.equal(picked, stratified_holdout(labels, 5000, seed=1))
    skewed = torch.tensor([0] * 90 + [1] * 10)
    assert torch.bincount(skewed[stratified_holdout(skewed, 10, seed=3)]).tolist() == [9, 1]


def test_the_calibration_slice_never_takes_a_gradient_step(tmp_path, data_dir, monkeypatch):
    """Every batch trained on comes from the images left after the holdout; the checkpoint names the held-out ones."""
    trained_sets = []
    original = train_module.iterate_batches

    def spy(images, labels, *args, **kwargs):
        if kwargs.get("drop_last"):  # the training batches (evaluation iterates the test split without drop_last)
            trained_sets.append(images.clone())
        return original(images, labels, *args, **kwargs)

    monkeypatch.setattr(train_module, "iterate_batches", spy)
    config = TrainConfig(
        model=ModelArgs(arch="A", batch_norm=True, width_ratio=32, hidden=16, image_size=32),
        epochs=2,
        batch_size=100,
        train_limit=2000,
        test_limit=200,
        calibration_holdout=150,
    )
    result = train_module.train(config, tmp_path, data_dir=data_dir, progress=False)
    assert result.held_out == 150 and len(trained_sets) == 2
    split = load_checkpoint(tmp_path / "checkpoints" / "best.pt")["calibration_split"]
    assert split["of_images"] == 2000 and split["seed"] == 0
    held_out = split["indices"]
    assert len(held_out) == 150 and torch.equal(held_out, stratified_holdout(load_split("train")[1][:2000], 150, 0))
    images = load_split("train", data_dir)[0][:2000]
    kept = torch.ones(2000, dtype=torch.bool)
    kept[held_out] = False
    for trained in trained_sets:
        assert torch.equal(trained.cpu(), images[kept])  # exactly the others: no held-out image, none lost
    assert json.loads((tmp_path / "train" / "summary.json").read_text())["held_out_for_calibration"] == 150


def test_the_holdout_is_capped_at_a_tenth_and_old_configs_mean_none():
    from vggdeploy.data.holdout import holdout_size

    assert holdout_size(5000, 60_000) == 5000 and holdout_size(5000, 3000) == 300 and holdout_size(0, 100) == 0
    saved = TrainConfig().to_dict()
    del saved["calibration_holdout"]  # a checkpoint from before the holdout: it trained on every image
    assert TrainConfig.from_dict(saved).calibration_holdout == 0


def test_export_records_the_fit_and_draws_the_reliability_diagram(tiny_export, tiny_checkpoint):
    result, out = tiny_export
    calibration = read_metadata(result.model_path)["calibration"]
    assert calibration["fitted"] and calibration["probabilities"] == "softmax(logits / temperature)"
    assert calibration["calibration_slice"]["before"]["images"] == 300  # a tenth of the 3,000 training images
    for figures in (calibration["calibration_slice"], calibration["test_set"]):
        assert figures["after"]["nll"] <= figures["before"]["nll"]  # the fit minimises the slice's NLL
        assert figures["after"]["accuracy"] == figures["before"]["accuracy"]
    assert calibration["calibration_slice"]["after"]["temperature"] == calibration["temperature"]
    assert calibration["test_set"]["after"]["ece"] < calibration["test_set"]["before"]["ece"]
    assert calibration["ece_bins"] == 15
    for variant in result.variants.values():  # every file of the export carries the same contract
        assert read_metadata(variant.path)["calibration"] == calibration
    assert (out / "onnx" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "reliability.png" in (out / "onnx" / "export_report.md").read_text()


@pytest.mark.slow
def test_no_calibration_and_a_checkpoint_without_a_slice_export_temperature_1(tiny_checkpoint, tmp_path, data_dir):
    small = dict(audit_batches=(1, 2), parity_images=32, golden_images=3)
    skipped = export_model(
        tiny_checkpoint, tmp_path / "skipped", ExportConfig(calibrate=False, **small), data_dir=data_dir
    )
    calibration = read_metadata(skipped.model_path)["calibration"]
    assert calibration["temperature"] == 1.0 and not calibration["fitted"]
    assert calibration["method"] == "none: --no-calibration" and calibration["calibration_slice"] is None
    # skipped means skipped: no torch pass over the test set, so no test figures and no diagram
    assert calibration["test_set"] is None and not (tmp_path / "skipped" / "reliability.png").exists()
    assert "the test set was not measured" in (tmp_path / "skipped" / "export_report.md").read_text()
    golden = json.loads((tmp_path / "skipped" / "golden" / "golden.json").read_text())
    assert golden["temperature"] == 1.0 and golden["calibrated"] is False

    state = load_checkpoint(tiny_checkpoint)
    state["model_args"] = state["model_args"].to_dict()
    del state["calibration_split"]  # as an older vggdeploy wrote it
    old = tmp_path / "old" / "checkpoints" / "best.pt"
    save_checkpoint(old, state)
    run = cli(
        "export", "--checkpoint", str(old), "--parity-images", "32", "--test-images", "500", "--audit-batches", "1,2"
    )
    assert run.returncode == 0, run.stderr
    assert "warning: probabilities stay uncalibrated (temperature 1): the checkpoint holds no held-out" in run.stderr
    assert read_metadata(tmp_path / "old" / "onnx" / "model.onnx")["calibration"]["fitted"] is False


@pytest.fixture(scope="module")
def old_model(tiny_export, tmp_path_factory):
    """The tiny export as a model exported before the calibration key existed."""
    proto = onnx.load(str(tiny_export[0].model_path))
    kept = [p for p in proto.metadata_props if p.key != "calibration"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    path = tmp_path_factory.mktemp("old-model") / "model.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.slow
def test_holdout_size_script_fits_subsets_of_the_slice_and_refuses_what_it_cannot_do(tiny_checkpoint, data_dir):
    """scripts/holdout_size.py: the spread of T over subsets of the held-out slice (300 images in the tiny run)."""
    holdout_size = (Path(__file__).parents[2] / "scripts" / "holdout_size.py", str(tiny_checkpoint))
    common = ["--data-dir", str(data_dir)]
    result = script(*holdout_size, "--sizes", "50,300", "--draws", "3", *common)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("test ECE at T = 1: ") and lines[1].startswith("whole slice, 300 images: T = ")
    rows = [line.split(" | ") for line in lines[4:]]
    assert [row[0] for row in rows] == ["| 50", "| 300"] and len(lines) == 6
    whole = float(lines[1].split("T = ")[1].split(",")[0])
    assert float(rows[1][2]) == 0.0 and abs(float(rows[1][1]) - whole) < 1e-4  # every draw of 300 is the whole slice
    for args, words in (
        (["--sizes", "301", *common], "error: --sizes [301] exceed the 300 images of the checkpoint's slice\n"),
        (["--draws", "0", *common], "error: --draws must be at least 1, got 0\n"),
    ):
        refused = script(*holdout_size, *args)
        assert (refused.returncode, refused.stderr, refused.stdout) == (2, words, "")
    bad = script(*holdout_size, "--sizes", "a,b")
    assert bad.returncode == 2 and "sizes are whole numbers separated by commas, got 'a,b'" in bad.stderr


def test_a_model_without_the_key_runs_with_temperature_1(old_model, tiny_export):
    assert temperature(read_metadata(old_model)) == 1.0
    golden_dir = tiny_export[1] / "onnx" / "golden"
    answer = cli("run", str(golden_dir), "--model", str(old_model), "--json", "--top-k", "10")
    assert answer.returncode == 0, answer.stderr
    for prediction in json.loads(answer.stdout)["predictions"]:
        assert prediction["calibrated"] is False and prediction["temperature"] == 1.0
        plain = probabilities(np.array([prediction["logits"]], dtype=np.float64))[0]
        assert [t["probability"] for t in prediction["top"]] == pytest.approx(sorted(plain)[::-1], abs=1e-12)
    assert "probabilities uncalibrated, plain softmax" in cli("run", str(golden_dir), "--model", str(old_model)).stdout


def test_the_cpp_program_reads_a_model_without_the_key_as_temperature_1(old_model, tiny_export):
    program = EXAMPLES / "cpp" / "build" / "classify"
    if not program.is_file():
        pytest.fail("examples/cpp is not built: run ./scripts/setup.sh")
    golden_dir = tiny_export[1] / "onnx" / "golden"
    golden = json.loads((golden_dir / "golden.json").read_text())
    files = [str(golden_dir / entry["file"]) for entry in golden["images"]]
    run = subprocess.run([str(program), str(old_model), *files, "--json"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    plain_golden = {**golden, "temperature": 1.0, "calibrated": False}
    for entry, line in zip(golden["images"], run.stdout.splitlines(), strict=True):
        entry = {**entry, "probabilities": probabilities(np.array([entry["logits"]]))[0].tolist()}
        assert golden_problems(json.loads(line), entry, plain_golden) == []


def test_a_variant_that_spoils_the_calibration_fails_the_check():
    from vggdeploy.metrics.calibration import CalibrationFigures as Figures
    from vggdeploy.verify.check import CalibrationCheck

    reference = Figures(100, 0.8, 0.030, 0.3, 0.9, 0.9)
    check = CalibrationCheck(
        0.8, True, reference, {"fp32": reference, "int8": Figures(100, 0.8, 0.036, 0.3, 0.9, 0.9)}, 0.5
    )
    assert (
        check.worse() == ["int8"]
        and "int8: ECE" in check.format()
        and "+0.60 pp (limit +0.50) -> FAILED" in check.format()
    )
    assert CalibrationCheck(0.8, True, reference, {"int8": Figures(100, 0.8, 0.034, 0.3, 0.9, 0.9)}, 0.5).worse() == []


def test_the_temperature_is_fitted_on_the_held_out_slice_and_nothing_else(
    tiny_checkpoint, data_dir, tmp_path, monkeypatch
):
    """Fitting on the test set would pass every other test (its NLL and ECE go down further there): the fit's
    input, in a whole export, must be the torch logits of exactly the images the checkpoint held out, with their
    labels (the one slice pass calibration shares with the familiarity fit)."""
    from vggdeploy.data.dataset import dataset_of
    from vggdeploy.deploy.preprocess import PreprocessSpec
    from vggdeploy.export import calibrate as temperature_module
    from vggdeploy.export.pipeline import export_model
    from vggdeploy.model.checkpoint import rebuild_model

    seen = []

    def spy(logits, labels, *args, **kwargs):
        seen.append((logits.copy(), labels.copy()))
        return fit_temperature(logits, labels, *args, **kwargs)

    monkeypatch.setattr(temperature_module, "fit_temperature", spy)
    result = export_model(
        tiny_checkpoint, tmp_path / "onnx", ExportConfig(audit_batches=(1, 2), parity_images=32), data_dir=data_dir
    )
    model, state = rebuild_model(tiny_checkpoint)
    images, labels = temperature_module.held_out_slice(state, dataset_of(state, data_dir))
    assert len(seen) == 1 and result.calibration.fitted
    fitted_logits, fitted_labels = seen[0]
    assert np.array_equal(fitted_labels, labels.numpy()) and len(labels) == 300
    np.testing.assert_allclose(fitted_logits, torch_logits(model, images, PreprocessSpec(32, 32)), atol=1e-5)
    assert result.calibration.temperature == pytest.approx(fit_temperature(fitted_logits, fitted_labels))


@pytest.mark.slow
def test_a_fit_within_its_own_uncertainty_of_1_keeps_temperature_1():
    """fmnist-5000's 500-image slice fitted T = 1.028 and the test ECE rose from 3.99 % to 5.83 %: a fit that the
    slice's own noise could have given is not a calibration."""
    from vggdeploy.export.calibrate import unfit_slice
    from vggdeploy.metrics.calibration import temperature_interval

    calibrated = _synthetic(1.0, images=500, seed=3)  # labels drawn at T = 1: nothing to correct
    fitted = fit_temperature(*calibrated)
    low, high = temperature_interval(*calibrated)
    assert low < 1 < high and fitted != 1 and high - low < 0.3
    assert unfit_slice(*calibrated, fitted) == (
        f"the fitted T = {fitted:.3f} is within its 95% bootstrap interval ({low:.3f}-{high:.3f}) of 1: the 500 "
        "held-out training images give no evidence that the probabilities need changing"
    )
    for true_temperature in (0.7, 1.25):  # a real miscalibration on as few images is still corrected
        slice_ = _synthetic(true_temperature, images=2000, seed=3)
        low, high = temperature_interval(*slice_)
        assert not low <= 1 <= high and low < true_temperature < high
        assert unfit_slice(*slice_, fit_temperature(*slice_)) is None
    assert temperature_interval(*calibrated) == temperature_interval(*calibrated)  # seeded: one export, one answer
