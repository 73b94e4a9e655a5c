"""Export's calibration step from logits alone: the step takes torch's pass over the held-out slice, here hand-made
logits, so every branch's result and every text it prints are pinned without a model; and the slice pass itself,
which images it runs and what it returns (fast; mutmut runs these on ``export/calibrate.py``)."""

import types

import numpy as np
import pytest
import torch

from vggdeploy import passes
from vggdeploy.config import ExportConfig
from vggdeploy.data.batches import to_input_tensor
from vggdeploy.deploy.contract import probabilities
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.errors import DataError
from vggdeploy.export import calibrate as step
from vggdeploy.metrics.calibration import CalibrationFigures, ReliabilityBins, fit_temperature
from vggdeploy.passes import SlicePass

TRAIN_IMAGES = 3000
SLICE = np.arange(2, TRAIN_IMAGES, 3)  # 1,000 held-out training images
SPEC = PreprocessSpec(28, 28)
FITTED_METHOD = (
    "temperature scaling: NLL minimised over T by a bounded golden-section search, on training images held out of "
    "every gradient step"
)
NO_SLICE = (
    "the checkpoint holds no held-out calibration slice (trained by an older vggdeploy, or with "
    "--calibration-holdout 0)"
)


def _overconfident(images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / 0.6): the calibrated temperature is 0.6, far from 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (images, 10))
    labels = (probabilities(logits, 0.6).cumsum(axis=1) > rng.random((images, 1))).argmax(axis=1)
    return logits.astype(np.float32), labels


def _scene(slice_logits: np.ndarray, slice_labels: np.ndarray, indices: np.ndarray = SLICE):
    """A dataset whose training image i holds the number i, the checkpoint's slice, and a table of logits by image."""
    train_labels = torch.zeros(TRAIN_IMAGES, dtype=torch.long)
    train_labels[torch.from_numpy(indices)] = torch.from_numpy(slice_labels)
    dataset = types.SimpleNamespace(
        train_images=torch.arange(TRAIN_IMAGES).reshape(-1, 1, 1), train_labels=train_labels
    )
    state = {"calibration_split": {"indices": torch.from_numpy(indices), "of_images": TRAIN_IMAGES}}
    table = np.zeros((TRAIN_IMAGES, slice_logits.shape[1]), dtype=np.float32)
    table[indices] = slice_logits
    return dataset, state, table


def _held(logits: np.ndarray, labels: np.ndarray) -> SlicePass:
    return SlicePass(labels, logits)


def test_the_slice_pass_runs_torch_once_on_the_held_out_images(monkeypatch):
    slice_logits, slice_labels = _overconfident(len(SLICE), seed=1)
    dataset, state, table = _scene(slice_logits, slice_labels)
    calls = []

    def torch_logits(model, images, spec, what="torch"):
        calls.append((model, images.flatten().tolist(), spec, what))
        return table[images.flatten().numpy()]

    monkeypatch.setattr(passes, "torch_logits", torch_logits)
    model = object()
    sliced = passes.torch_slice_pass(model, step.held_out_slice(state, dataset), SPEC, representations=False)
    assert calls == [(model, SLICE.tolist(), SPEC, "torch on the held-out slice")]
    np.testing.assert_array_equal(sliced.logits, slice_logits)
    np.testing.assert_array_equal(sliced.labels, slice_labels)
    assert sliced.statistics is None and sliced.penultimate is None


def test_a_sampled_slice_pass_runs_torch_on_the_samples_images_only(monkeypatch):
    slice_logits, slice_labels = _overconfident(len(SLICE), seed=1)
    dataset, state, table = _scene(slice_logits, slice_labels)
    seen = []
    monkeypatch.setattr(
        passes, "torch_logits", lambda model, images, spec, what: seen.append(images.flatten()) or table[seen[-1]]
    )
    sample = passes.evaluation_sample(len(SLICE), 100, 1.0, "cpu", passes.HELD_OUT_SLICE)
    sliced = passes.torch_slice_pass(object(), step.held_out_slice(state, dataset), SPEC, False, sample)
    assert len(seen) == 1 and seen[0].tolist() == SLICE[np.arange(100) * 10].tolist()
    np.testing.assert_array_equal(sliced.labels, slice_labels[::10])
    np.testing.assert_array_equal(sliced.logits, slice_logits[::10])
    assert sliced.sample is sample and sliced.of == 1000
    assert sliced.describe() == "100 of 1,000 held-out training images"
    whole = passes.torch_slice_pass(object(), step.held_out_slice(state, dataset), SPEC, False)
    assert whole.of == 1000 and whole.describe() == "1,000 held-out training images"
    every = passes.evaluation_sample(len(SLICE), "all", 1.0, "cpu", passes.HELD_OUT_SLICE)
    assert passes.SlicePass(slice_labels, slice_logits, sample=every).describe() == "1,000 held-out training images"


def test_a_temperature_fitted_on_a_sample_of_the_slice_says_so(capsys):
    slice_logits, slice_labels = _overconfident(len(SLICE), seed=1)
    test_logits, test_labels = _overconfident(500, seed=2)
    sample = passes.evaluation_sample(4000, None, 40.0, "cpu", passes.HELD_OUT_SLICE)  # 160 TFLOP: 1,000 of 4,000
    held = SlicePass(slice_labels, slice_logits, sample=sample)
    calibration = step.calibrate(ExportConfig(), (test_logits, test_labels), held)
    assert calibration.temperature == fit_temperature(slice_logits, slice_labels) and calibration.fitted
    assert "fitted on 1,000 of 4,000 held-out training images; test ECE" in calibration.format()
    whole = SlicePass(slice_labels, slice_logits, sample=passes.evaluation_sample(1000, "all", 40.0, "cpu"))
    fitted_on_all = step.calibrate(ExportConfig(), (test_logits, test_labels), whole).format()
    assert "fitted on 1,000 held-out training images; test ECE" in fitted_on_all
    assert (
        calibration.to_metadata()["slice_sample"]
        == sample.to_dict()
        == {
            "images": 1000,
            "of": 4000,
            "reason": "a CPU export's sample, evenly spread: torch over the whole slice would be 160 TFLOP; --slice-images "
            "all for every image",
        }
    )
    # a refusal on a sample says how to pass every image of the slice
    few = slice_logits.copy()
    few[np.arange(len(few)), slice_labels] = 100.0  # every answer right: too few errors for a fit
    refused = step.calibrate(ExportConfig(), (test_logits, test_labels), SlicePass(slice_labels, few, sample=sample))
    assert refused.to_metadata()["slice_sample"] == sample.to_dict()
    assert not refused.fitted and refused.method.endswith(
        "would give them) (fitted on a sample: 1,000 of 4,000 held-out training images; --slice-images all fits on every one)"
    )
    unsampled = step.calibrate(ExportConfig(), (test_logits, test_labels), SlicePass(slice_labels, few))
    assert (
        unsampled.method.endswith("would give them)")
        and "1,000 held-out training images hold 0" in capsys.readouterr().err
    )


def test_the_slice_pass_with_representations_is_torchs_logits_and_what_the_score_reads(monkeypatch):
    from vggdeploy.model.archs import ModelArgs
    from vggdeploy.model.familiarity import representations
    from vggdeploy.model.vgg import build_model

    torch.manual_seed(0)
    model = build_model(ModelArgs(arch="A", width_ratio=8, hidden=32, image_size=32)).eval()
    images = torch.randint(0, 256, (9, 1, 28, 28), dtype=torch.uint8)
    sliced = passes.torch_slice_pass(model, (images, torch.arange(9) % 10), PreprocessSpec(32, 32), True)
    np.testing.assert_array_equal(sliced.logits, passes.torch_logits(model, images, PreprocessSpec(32, 32)))
    assert sliced.sample is None and sliced.of == 9
    with torch.no_grad():
        _, statistics, penultimate = representations(model, to_input_tensor(images, PreprocessSpec(32, 32)))
    assert sliced.statistics.shape == (9, 16) and sliced.statistics.dtype == np.float64
    np.testing.assert_array_equal(sliced.statistics, statistics.double().numpy())
    np.testing.assert_array_equal(sliced.penultimate, penultimate.double().numpy())
    np.testing.assert_array_equal(sliced.labels, np.arange(9) % 10)
    # a sample of the slice: its images only, the sample kept, and the pass named as the slice's
    labels_seen = []
    real = passes.torch_logits
    monkeypatch.setattr(passes, "torch_logits", lambda *a: labels_seen.append(a[3]) or real(*a))
    sample = passes.evaluation_sample(9, 3, 1.0, "cpu", passes.HELD_OUT_SLICE)
    part = passes.torch_slice_pass(model, (images, torch.arange(9) % 10), PreprocessSpec(32, 32), True, sample)
    assert part.sample is sample and part.of == 9 and labels_seen == ["torch on the held-out slice"]
    np.testing.assert_allclose(part.penultimate, sliced.penultimate[[0, 3, 6]], atol=1e-5)  # batches of 3, not 9
    np.testing.assert_array_equal(part.labels, [0, 3, 6])


def test_the_temperature_is_fitted_on_the_slice_and_the_test_set_only_measured(capsys):
    slice_logits, slice_labels = _overconfident(len(SLICE), seed=1)
    test_logits, test_labels = _overconfident(500, seed=2)
    calibration = step.calibrate(ExportConfig(), (test_logits, test_labels), _held(slice_logits, slice_labels))
    fitted = fit_temperature(slice_logits, slice_labels)
    assert 0.5 < fitted < 0.7 and capsys.readouterr().err == ""
    assert calibration.temperature == fitted and calibration.fitted and calibration.method == FITTED_METHOD
    assert calibration.slice_before == CalibrationFigures.measure(slice_logits, slice_labels, 1.0, 15)
    assert calibration.slice_after == CalibrationFigures.measure(slice_logits, slice_labels, fitted, 15)
    assert calibration.test_before == CalibrationFigures.measure(test_logits, test_labels, 1.0, 15)
    assert calibration.test_after == CalibrationFigures.measure(test_logits, test_labels, fitted, 15)
    assert calibration.test_logits is test_logits and calibration.test_labels is test_labels
    assert calibration.measured and calibration.bins == 15
    before, after = calibration.test_before, calibration.test_after
    assert calibration.format() == (
        f"calibration: temperature {fitted:.4f} fitted on 1,000 held-out training images; test ECE "
        f"{before.ece:.2%} -> {after.ece:.2%}, NLL {before.nll:.3f} -> {after.nll:.3f} (500 test images)"
    )
    assert after.ece < before.ece and after.nll < before.nll
    assert calibration.to_metadata() == {
        "temperature": fitted,
        "fitted": True,
        "method": FITTED_METHOD,
        "probabilities": "softmax(logits / temperature)",
        "ece_bins": 15,
        "calibration_slice": {
            "before": calibration.slice_before.to_dict(),
            "after": calibration.slice_after.to_dict(),
        },
        "test_set": {"before": before.to_dict(), "after": after.to_dict()},
        "slice_sample": None,
    }


def test_the_bin_count_is_the_configured_one():
    slice_logits, slice_labels = _overconfident(len(SLICE), seed=1)
    test = _overconfident(500, seed=2)
    calibration = step.calibrate(ExportConfig(calibration_bins=7), test, _held(slice_logits, slice_labels))
    assert calibration.bins == 7 and calibration.to_metadata()["ece_bins"] == 7
    for figures, logits, labels, temperature in [
        (calibration.slice_before, slice_logits, slice_labels, 1.0),
        (calibration.slice_after, slice_logits, slice_labels, calibration.temperature),
        (calibration.test_before, *test, 1.0),
        (calibration.test_after, *test, calibration.temperature),
    ]:
        assert figures == CalibrationFigures.measure(logits, labels, temperature, 7)
        assert figures != CalibrationFigures.measure(logits, labels, temperature, 15)


def test_the_reliability_diagram_draws_the_test_set_at_t_1_and_at_the_fitted_t(monkeypatch, tmp_path):
    slice_logits, slice_labels = _overconfident(len(SLICE), seed=1)
    test_logits, test_labels = _overconfident(500, seed=2)
    config = ExportConfig(calibration_bins=7)
    calibration = step.calibrate(config, (test_logits, test_labels), _held(slice_logits, slice_labels))
    drawn = []
    monkeypatch.setattr(step, "plot_reliability", lambda *args: drawn.append(args))
    calibration.plot(tmp_path / "r.png", "the title")
    [(path, curves, title)] = drawn
    assert path == tmp_path / "r.png" and title == "the title"
    t = calibration.temperature
    assert [label for label, _ in curves] == [
        f"before (T = 1): ECE {calibration.test_before.ece:.2%}",
        f"after (T = {t:.3f}): ECE {calibration.test_after.ece:.2%}",
    ]
    for (_, bins), temperature in zip(curves, (1.0, t), strict=True):
        expected = ReliabilityBins.of(probabilities(test_logits.astype(np.float64), temperature), test_labels, 7)
        assert bins.counts.tolist() == expected.counts.tolist()
        assert bins.expected_calibration_error() == pytest.approx(expected.expected_calibration_error(), abs=1e-12)


def test_no_calibration_measures_nothing_and_keeps_t_1():
    test = _overconfident(100, seed=2)
    held = _held(*_overconfident(len(SLICE), seed=1))
    calibration = step.calibrate(ExportConfig(calibrate=False, calibration_bins=9), test, held)
    assert calibration == step.Calibration(1.0, False, "none: --no-calibration", 9, None, None, None, None, None, None)
    assert not calibration.measured
    assert calibration.format() == "calibration: temperature 1 (none: --no-calibration); the test set was not measured"
    assert calibration.to_metadata() == {
        "temperature": 1.0,
        "fitted": False,
        "method": "none: --no-calibration",
        "probabilities": "softmax(logits / temperature)",
        "ece_bins": 9,
        "calibration_slice": None,
        "test_set": None,
        "slice_sample": None,
    }


@pytest.mark.parametrize("state", [{}, {"calibration_split": None}, {"calibration_split": {"indices": torch.zeros(0)}}])
def test_a_checkpoint_without_a_slice_keeps_t_1_says_why_and_measures_the_test_set(state, capsys):
    assert step.held_out_slice(state, None) is None
    test_logits, test_labels = _overconfident(200, seed=2)
    calibration = step.calibrate(ExportConfig(calibration_bins=7), (test_logits, test_labels), None)
    assert (
        capsys.readouterr().err == f"vggdeploy: warning: probabilities stay uncalibrated (temperature 1): {NO_SLICE}\n"
    )
    test = CalibrationFigures.measure(test_logits, test_labels, 1.0, 7)
    assert calibration.bins == 7 and test != CalibrationFigures.measure(test_logits, test_labels, 1.0, 15)
    assert (calibration.temperature, calibration.fitted, calibration.method) == (1.0, False, f"none: {NO_SLICE}")
    assert (calibration.slice_before, calibration.slice_after) == (None, None)
    assert calibration.test_before == calibration.test_after == test and calibration.test_labels is test_labels
    assert calibration.test_logits is test_logits and calibration.measured
    assert calibration.format() == f"calibration: temperature 1 (none: {NO_SLICE}); test {test.format()}"
    assert calibration.to_metadata()["calibration_slice"] is None
    assert calibration.to_metadata()["test_set"] == {"before": test.to_dict(), "after": test.to_dict()}


def test_a_slice_the_fit_must_not_be_trusted_on_keeps_t_1_and_says_why(capsys):
    """29 wrong answers of 1,000: one fewer than a fit needs (MIN_SLICE_ERRORS). The logits are one-hot at five
    strengths (69 % to 99 % sure) with the wrong answers among the surest, so binning shows in the ECE."""
    labels = np.arange(len(SLICE)) % 10
    strength = (3 + np.arange(len(SLICE)) % 5).astype(np.float32)[:, None]
    logits = np.eye(10, dtype=np.float32)[labels] * strength
    wrong = np.flatnonzero(np.arange(len(SLICE)) % 5 == 4)[:30]
    logits[wrong[:29]] = np.eye(10, dtype=np.float32)[(labels[wrong[:29]] + 1) % 10] * strength[wrong[:29]]
    test_logits, test_labels = _overconfident(200, seed=2)
    calibration = step.calibrate(ExportConfig(calibration_bins=7), (test_logits, test_labels), _held(logits, labels))
    why = (
        "the 1,000 held-out training images hold 29 the model gets wrong, fewer than the 30 a temperature fit needs "
        "(a larger --calibration-holdout or more images would give them)"
    )
    assert capsys.readouterr().err == f"vggdeploy: warning: probabilities stay uncalibrated (temperature 1): {why}\n"
    held = CalibrationFigures.measure(logits, labels, 1.0, 7)
    assert held != CalibrationFigures.measure(logits, labels, 1.0, 15)
    test = CalibrationFigures.measure(test_logits, test_labels, 1.0, 7)
    assert calibration.bins == 7 and test != CalibrationFigures.measure(test_logits, test_labels, 1.0, 15)
    assert (calibration.temperature, calibration.fitted, calibration.method) == (1.0, False, f"none: {why}")
    assert calibration.slice_before == calibration.slice_after == held
    assert calibration.test_before == calibration.test_after == test
    assert calibration.test_logits is test_logits and calibration.test_labels is test_labels
    assert calibration.format() == f"calibration: temperature 1 (none: {why}); test {test.format()}"
    # one more wrong answer, and the same slice is fitted (T = 0.837, its bootstrap interval 0.754-0.909)
    logits[wrong[29]] = np.eye(10, dtype=np.float32)[(labels[wrong[29]] + 1) % 10] * strength[wrong[29]]
    assert step.unfit_slice(logits, labels, fit_temperature(logits, labels)) is None
    assert 0.83 < fit_temperature(logits, labels) < 0.84


def test_the_slice_is_refused_when_it_does_not_fit_the_training_images():
    dataset = types.SimpleNamespace(train_images=torch.zeros(100, 1, 1), train_labels=torch.zeros(100))
    message = "the checkpoint's calibration slice does not fit the 100 training images found"
    for split in (
        {"indices": torch.tensor([1, 2]), "of_images": 101},  # taken from more images than there are
        {"indices": torch.tensor([1, 100]), "of_images": 100},  # an index past the images it was taken from
    ):
        with pytest.raises(DataError) as raised:
            step.held_out_slice({"calibration_split": split}, dataset)
        assert str(raised.value) == message
    images, labels = step.held_out_slice(
        {"calibration_split": {"indices": torch.tensor([0, 99]), "of_images": 100}},
        types.SimpleNamespace(train_images=torch.arange(100).reshape(-1, 1, 1), train_labels=torch.arange(100) % 7),
    )
    assert images.flatten().tolist() == [0, 99] and labels.tolist() == [0, 1]


def test_a_fit_at_an_end_of_the_search_range_is_refused():
    labels = np.arange(100) % 10
    logits = np.zeros((100, 10), dtype=np.float32)  # no answer right: errors enough for a fit
    for bound in (20.0, 0.05):
        assert step.unfit_slice(logits, labels, bound) == (
            f"the fit ended at T = {bound:g}, an end of the search range 0.05-20 (no minimum inside it)"
        )


@pytest.mark.parametrize(
    ("interval", "refused"),
    [((1.0, 1.2), True), ((0.8, 1.0), True), ((0.8, 0.99), False), ((1.01, 2.5), False), ((1.5, 2.5), False)],
)
def test_a_fit_whose_bootstrap_interval_holds_1_is_refused(interval, refused, monkeypatch):
    """The interval's ends count as inside it: an interval that reaches 1 gives no evidence against T = 1."""
    labels = np.arange(1000) % 10
    logits = np.zeros((1000, 10), dtype=np.float32)
    monkeypatch.setattr(step, "temperature_interval", lambda logits, labels: interval)
    why = step.unfit_slice(logits, labels, 1.1)
    low, high = interval
    assert why == (
        f"the fitted T = 1.100 is within its 95% bootstrap interval ({low:.3f}-{high:.3f}) of 1: the 1,000 held-out "
        "training images give no evidence that the probabilities need changing"
        if refused
        else None
    )
