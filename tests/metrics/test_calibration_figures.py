"""calibration.py's figures on hand-worked inputs, exact to the last digit: the reliability bins, ECE, NLL, the
temperature fit, its bootstrap interval and the search bounds (the tests mutmut runs against calibration.py)."""

import math
import warnings

import numpy as np
import pytest

from vggdeploy.metrics.calibration import (
    BOOTSTRAP_LEVEL,
    BOOTSTRAP_RESAMPLES,
    DEFAULT_BINS,
    TEMPERATURE_RANGE,
    CalibrationFigures,
    ReliabilityBins,
    at_search_bound,
    fit_temperature,
    negative_log_likelihood,
    temperature_interval,
)

# four images, two classes: confidences 0.6, 0.7, 0.9 and 0.5; right, wrong, right, wrong (a tie predicts class 0)
CHANCES = np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.5, 0.5]])
LABELS = np.array([0, 0, 0, 1])


def test_bins_are_closed_above_and_hold_counts_confidence_and_accuracy():
    bins = ReliabilityBins.of(CHANCES, LABELS, bins=4)  # (0, .25] (.25, .5] (.5, .75] (.75, 1]
    assert bins.edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert bins.counts.tolist() == [0, 1, 2, 1]  # 0.5 sits in (.25, .5], not above it
    assert np.isnan(bins.confidence[0]) and bins.confidence[1:].tolist() == pytest.approx([0.5, 0.65, 0.9])
    assert np.isnan(bins.accuracy[0]) and bins.accuracy[1:].tolist() == [0.0, 0.5, 1.0]
    # 1/4 |0 - .5| + 2/4 |.5 - .65| + 1/4 |1 - .9|
    assert bins.expected_calibration_error() == pytest.approx(0.125 + 0.075 + 0.025)
    top = ReliabilityBins.of(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 0]), bins=4)
    assert top.counts.tolist() == [0, 0, 0, 2] and top.accuracy[3] == 0.5  # confidence 1 is in the last bin


def test_the_default_is_fifteen_bins():
    assert DEFAULT_BINS == 15 and len(ReliabilityBins.of(CHANCES, LABELS).counts) == 15


def test_figures_are_measured_at_the_temperature_given():
    logits = np.log(CHANCES)
    figures = CalibrationFigures.measure(logits, LABELS, bins=4)
    nll = -np.mean(np.log([0.6, 0.3, 0.9, 0.5]))
    assert figures.to_dict() == {
        "images": 4,
        "temperature": 1.0,
        "ece": pytest.approx(0.225),
        "nll": pytest.approx(nll),
        "mean_confidence": pytest.approx(0.675),
        "accuracy": 0.5,
    }
    warmer = CalibrationFigures.measure(logits, LABELS, temperature=2.0, bins=4)
    chances = np.sqrt(CHANCES) / np.sqrt(CHANCES).sum(axis=1, keepdims=True)  # softmax(log p / 2)
    assert warmer.temperature == 2.0 and warmer.mean_confidence == pytest.approx(chances.max(axis=1).mean())
    assert warmer.nll == pytest.approx(-np.mean(np.log(chances[np.arange(4), LABELS])))
    expected = ReliabilityBins.of(chances, LABELS, bins=4).expected_calibration_error()
    assert warmer.ece == pytest.approx(expected) and warmer.accuracy == 0.5
    assert CalibrationFigures.measure(logits, LABELS).ece == pytest.approx(
        ReliabilityBins.of(CHANCES, LABELS, 15).expected_calibration_error()
    )


def test_figures_print_as_percentages_with_the_temperature_and_the_count():
    figures = CalibrationFigures(1234, 0.71219, 0.0197, 0.2531, 0.9319, 0.9167)
    assert figures.format() == (
        "ECE 1.97%, NLL 0.253, mean confidence 93.19% vs accuracy 91.67% (T = 0.712, 1,234 images)"
    )


def test_nll_is_the_mean_negative_log_probability_of_the_true_class():
    logits = np.array([[0.0, math.log(3)], [1000.0, 0.0]])  # 3/4 for class 1; the second would overflow a softmax
    assert negative_log_likelihood(logits, np.array([1, 0])) == pytest.approx(-math.log(0.75) / 2)
    root = math.sqrt(3)
    assert negative_log_likelihood(logits[:1], np.array([1]), temperature=2.0) == pytest.approx(
        -math.log(root / (1 + root))
    )
    assert negative_log_likelihood(logits[:1].astype(np.float32), np.array([0])) == pytest.approx(-math.log(0.25))


def test_the_fit_runs_to_the_bounds_where_no_minimum_lies_inside():
    right = np.tile([[2.0, 0.0], [0.0, 2.0]], (50, 1))
    assert fit_temperature(right, np.tile([0, 1], 50)) == pytest.approx(TEMPERATURE_RANGE[0], rel=1e-5)
    assert fit_temperature(right, np.tile([1, 0], 50)) == pytest.approx(TEMPERATURE_RANGE[1], rel=1e-5)
    # three right at margin 2 for each one wrong: the minimum is inside, where d NLL / d T = 0
    logits = np.tile([[2.0, 0.0]], (4, 1))
    fitted = fit_temperature(logits, np.array([0, 0, 0, 1]), tolerance=1e-9)
    assert fitted == pytest.approx(2 / math.log(3), rel=1e-6)  # softmax(2 / T) = 3/4


def test_only_an_answer_at_either_end_of_the_range_is_at_the_bound():
    assert TEMPERATURE_RANGE == (0.05, 20.0)
    assert at_search_bound(0.05) and at_search_bound(20.0) and at_search_bound(0.050004)
    assert not at_search_bound(0.0501) and not at_search_bound(1.0) and not at_search_bound(19.99)


def _drawn_at_temperature_2(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / 2): a fit finds T near 2."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (count, 4))
    labels = np.array([rng.choice(4, p=np.exp(row / 2) / np.exp(row / 2).sum()) for row in logits])
    return logits, labels


def test_the_interval_is_the_central_share_of_the_bootstrap_fits():
    logits, labels = _drawn_at_temperature_2(300)
    assert BOOTSTRAP_LEVEL == 0.95 and BOOTSTRAP_RESAMPLES == 200
    low, high = temperature_interval(logits, labels, resamples=40, seed=7)
    draw = np.random.default_rng(7)
    fits = [
        fit_temperature(logits[p], labels[p], tolerance=1e-4) for p in (draw.integers(0, 300, 300) for _ in range(40))
    ]
    assert (low, high) == tuple(np.quantile(fits, [0.025, 0.975]))
    assert low < fit_temperature(logits, labels) < high and 1.3 < low < high < 3.0
    assert temperature_interval(logits, labels, resamples=40, seed=8) != (low, high)


def test_accuracy_counts_the_right_answers():
    assert CalibrationFigures.measure(np.log(CHANCES[:3]), LABELS[:3], bins=4).accuracy == pytest.approx(2 / 3)


def test_low_confidences_fill_the_first_bin_and_empty_bins_raise_no_warning():
    uniform = np.full((6, 20), 1 / 20)  # 20 classes: a confidence of 0.05, in (0, .25]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's 0/0 warning for the empty bins would fail here
        bins = ReliabilityBins.of(uniform, np.zeros(6, dtype=int), bins=4)
    assert bins.counts.tolist() == [6, 0, 0, 0] and bins.accuracy[0] == 1.0


def test_an_output_that_is_not_a_number_keeps_the_bins_and_makes_the_ece_nan():
    chances = np.array([[np.nan, np.nan], [0.9, 0.1]])
    bins = ReliabilityBins.of(chances, np.array([0, 0]), bins=4)
    assert len(bins.counts) == 4 and bins.counts.sum() == 2 and math.isnan(bins.expected_calibration_error())


def test_the_interval_draws_from_seed_0_unless_told():
    logits, labels = _drawn_at_temperature_2(100)
    unseeded = temperature_interval(logits, labels, resamples=5)
    assert (
        unseeded == temperature_interval(logits, labels, 5, seed=0) != temperature_interval(logits, labels, 5, seed=1)
    )
