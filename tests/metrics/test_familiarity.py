"""The familiarity scores and the figures that judge them, on inputs whose answers are known in advance."""

import json
from pathlib import Path

import numpy as np
import pytest
from forked_cli import script

from vggdeploy.metrics.familiarity import (
    GaussianFit,
    NeighbourFit,
    accepted,
    auroc,
    energy,
    max_softmax,
    threshold_accepting,
)


def test_auroc_is_the_share_of_familiar_unfamiliar_pairs_ordered_right_with_ties_half():
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    # pairs (2,1) (2,2) (3,1) (3,2): right, tie, right, right -> 3.5 of 4
    assert auroc(np.array([2.0, 3.0]), np.array([1.0, 2.0])) == 0.875


def test_the_threshold_accepts_the_stated_share_of_the_familiar_scores():
    familiar = np.arange(100, dtype=float)
    threshold = threshold_accepting(familiar, 0.95)
    assert threshold == 5.0 and accepted(familiar, threshold) == 0.95
    assert accepted(np.array([4.9, 5.0, 6.0, -1.0]), threshold) == 0.5


def test_logit_scores_match_their_formulas():
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    assert max_softmax(logits) == pytest.approx([np.exp(2) / (np.exp(2) + 1), 0.5])
    assert energy(logits) == pytest.approx([np.log(np.exp(2) + 1), np.log(2)])
    assert energy(logits, temperature=2.0) == pytest.approx(
        2 * np.log(np.exp(1) + 1) * np.array([1, 0]) + [0, 2 * np.log(2)]
    )
    assert energy(np.array([[1000.0, 999.0]])) == pytest.approx([1000 + np.log(1 + np.exp(-1))])  # no overflow
    # each row shifted by its own peak: a flat row beside a confident one does not underflow to -inf
    assert energy(np.array([[1000.0, 999.0], [0.0, 0.0]])) == pytest.approx([1000 + np.log(1 + np.exp(-1)), np.log(2)])
    assert max_softmax(logits, temperature=2.0) == pytest.approx([np.exp(1) / (np.exp(1) + 1), 0.5])


def test_float32_inputs_score_as_their_float64_values():
    """torch and ONNX Runtime give float32 features and logits; every score is computed in float64 (the Mahalanobis
    expansion x'Px - 2m'Px + m'Pm cancels: in float32 a feature offset of 100 costs the third digit)."""
    from vggdeploy.metrics.familiarity import LayerFit

    rng = np.random.default_rng(0)
    features = (100 + rng.normal(0, 1, (400, 3)) + np.repeat([[0.0], [3.0]], 200, axis=0)).astype(np.float32)
    labels = np.repeat([0, 1], 200)
    wide = features.astype(np.float64)
    fits = [(fit.of(features, labels), fit.of(wide, labels)) for fit in (GaussianFit, LayerFit)]
    fits.append((NeighbourFit.of(features, k=5), NeighbourFit.of(wide, k=5)))
    for narrow, exact in fits:
        np.testing.assert_allclose(narrow.score(features[:50]), exact.score(wide[:50]), rtol=1e-12, err_msg=str(exact))
    for score in (max_softmax, energy):
        np.testing.assert_allclose(score(features[:50]), score(wide[:50]), rtol=1e-12, err_msg=str(score))
    layer = fits[1][0]
    np.testing.assert_array_equal(layer.centre, wide.mean(axis=0))  # one centre per dimension


def test_mahalanobis_is_minus_the_squared_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (2000, 2)), rng.normal(10, 1, (2000, 2))])
    labels = np.repeat([0, 1], 2000)
    fit = GaussianFit.of(features, labels)
    assert fit.means == pytest.approx(np.array([[0, 0], [10, 10]]), abs=0.1)
    assert np.linalg.inv(fit.precision) == pytest.approx(np.eye(2), abs=0.1)
    near, between, far = fit.score(np.array([[0.0, 0.0], [5.0, 5.0], [30.0, -30.0]]))
    assert near > between > far
    from vggdeploy.metrics.familiarity import LayerFit, shrunk_covariance

    assert fit.shrinkage == shrunk_covariance(features - fit.means[labels])[1] > 0  # reported in the metadata
    assert LayerFit.of(features, labels).shrinkage == fit.shrinkage
    point = np.array([5.0, 5.0])
    assert between == pytest.approx(-min((point - mean) @ fit.precision @ (point - mean) for mean in fit.means))


def test_the_neighbour_score_is_minus_the_kth_distance_between_unit_rows():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    fit = NeighbourFit.of(bank * 7, k=2)  # lengths do not count
    # (1, 1)/sqrt2 is 0.765 from both (1, 0) and (0, 1): the second nearest is that far
    assert fit.score(np.array([[3.0, 3.0]])) == pytest.approx([-np.sqrt(2 - np.sqrt(2))])
    assert fit.score(np.array([[2.0, 0.0]]), chunk=1) == pytest.approx([-np.sqrt(2)])
    assert NeighbourFit.of(bank / 1000, k=2).score(np.array([[0.003, 0.003]])) == pytest.approx(
        [-np.sqrt(2 - np.sqrt(2))]
    )  # short rows too


@pytest.mark.parametrize("k", [1, 2, 7, 40])
def test_the_neighbour_score_takes_the_kth_nearest_of_many_in_chunks(k):
    """Against every distance sorted: the k-th smallest for each image, whatever the chunk."""
    rng = np.random.default_rng(k)
    bank, probe = rng.normal(0, 1, (300, 8)), rng.normal(0, 1, (23, 8))
    unit = lambda rows: rows / np.linalg.norm(rows, axis=1, keepdims=True)
    distances = np.linalg.norm(unit(probe)[:, None] - unit(bank)[None], axis=2)
    expected = -np.sort(distances, axis=1)[:, k - 1]
    fit = NeighbourFit.of(bank, k=k)
    for chunk in (5, 23, 1024):
        np.testing.assert_allclose(fit.score(probe, chunk=chunk), expected, rtol=1e-9)


SCRIPT = Path(__file__).parents[2] / "scripts" / "familiarity_benchmark.py"


@pytest.mark.slow
def test_the_benchmark_scores_every_set_with_every_score(tiny_checkpoint, tiny_export, tmp_path):
    out = tmp_path / "familiarity.json"
    model = tiny_export[0].model_path
    fit = ("--fit-images", "3000")  # of 59,700: the whole set took 4 times as long
    result = script(SCRIPT, str(tiny_checkpoint), "--model", str(model), "--json", str(out), "-k", "10", *fit)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["fit_images"] == 3000 and "scores fitted on 3,000 training images" in result.stdout
    rows = figures["rows"]
    sets = ["digits", "letters", "noise", "blanks", "inverted", "upside down"]
    assert [row["set"] for row in rows] == sets * 8 and len({row["score"] for row in rows}) == 8
    assert all(0 <= row["auroc"] <= 1 and 0 <= row["accepted"] <= 1 for row in rows)
    # each threshold accepts 95 % of the held-out slice: about 5 % of the test set falls below it
    assert all(0.02 < row["test rejected"] < 0.08 for row in rows)
    exported = [row for row in rows if row["score"].startswith("exported")]
    at_test = [row for row in exported if row["score"].endswith("95 % of the test set")]
    assert len(at_test) == 6 and all(row["test rejected"] == 0.05 for row in at_test)
    blanks = next(row for row in exported if row["set"] == "blanks")
    assert blanks["accepted"] == 0  # no blank passes the exported model's own threshold
    assert result.stdout.splitlines()[1] == "| score | set | images | auroc | accepted | test rejected |"


def test_the_benchmark_refuses_a_k_below_1_and_too_few_fit_images_in_one_line(tmp_path):
    result = script(SCRIPT, str(tmp_path / "best.pt"), "-k", "0")
    assert result.returncode == 2 and result.stderr == "error: -k must be at least 1, got 0\n"
    result = script(SCRIPT, str(tmp_path / "best.pt"), "--fit-images", "50")
    assert result.returncode == 2 and result.stderr == "error: --fit-images must be more than -k (50), got 50\n"


def test_the_shrunk_covariance_is_ledoit_wolf_s():
    """The intensity scikit-learn's ``ledoit_wolf(assume_centered=True)`` gives for these rows (0.22260328061277648,
    checked once outside this project's dependencies), and an invertible covariance from fewer rows than columns."""
    from vggdeploy.metrics.familiarity import shrunk_covariance

    rng = np.random.default_rng(0)
    for shape in ((10000, 20), (50, 100), (200, 100)):  # the draws before it in the comparison with scikit-learn
        rng.normal(0, 1, shape)
    rows = rng.normal(0, 1, (500, 64)) * np.linspace(1, 5, 64)
    rows -= rows.mean(axis=0)
    covariance, shrinkage = shrunk_covariance(rows)
    assert shrinkage == pytest.approx(0.22260328061277648, rel=1e-12)
    sample = rows.T @ rows / 500
    assert covariance == pytest.approx((1 - shrinkage) * sample + shrinkage * np.trace(sample) / 64 * np.eye(64))
    few = rng.normal(0, 1, (20, 100))
    few -= few.mean(axis=0)
    singular, intensity = shrunk_covariance(few)
    assert 0 < intensity <= 1 and np.linalg.matrix_rank(singular) == 100
    isotropic = np.eye(4) * 2.0  # already the target: nothing to shrink toward, the sample itself
    assert shrunk_covariance(np.vstack([isotropic, -isotropic]))[1] == 0.0
    # the intensity is a ratio of squared spreads: features in other units shrink by the same share
    assert shrunk_covariance(rows * 1e-3)[1] == pytest.approx(shrinkage, rel=1e-9)


def test_the_whitened_layer_score_is_the_mahalanobis_score():
    from vggdeploy.metrics.familiarity import LayerFit

    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (500, 3)), rng.normal(4, 2, (500, 3))])
    labels = np.repeat([0, 1], 500)
    layer, gaussian = LayerFit.of(features, labels), GaussianFit.of(features, labels)
    probe = rng.normal(2, 3, (50, 3))
    np.testing.assert_allclose(layer.raw_score(probe), gaussian.score(probe), rtol=1e-9)
    # a few images at a time (memory) gives the very same scores as all at once, a last partial chunk included
    np.testing.assert_array_equal(layer.raw_score(probe, chunk=7), layer.raw_score(probe, chunk=50))
    assert layer.raw_score(probe[:0]).shape == (0,)
    standard = layer.standardised_on(probe)
    assert standard.score(probe).mean() == pytest.approx(0, abs=1e-12) and standard.score(probe).std() == pytest.approx(
        1
    )
    arrays = standard.arrays("late")
    assert sorted(arrays) == ["late_centre", "late_means", "late_scale", "late_whitening"]
    assert arrays["late_scale"].tolist() == pytest.approx([standard.score_mean, standard.score_deviation])
    assert all(value.dtype == np.float32 for value in arrays.values())


def test_flag_agreement_and_its_limits():
    from vggdeploy.metrics.familiarity import flag_agreement, flag_failures

    figures = flag_agreement(np.array([1.0, -1.0, 0.0, 3.0]), np.array([1.5, 0.5, 0.0, 3.0]), threshold=0.0)
    assert figures == {"images": 4, "max_abs_diff": 1.5, "flag_agreement": 0.75}  # -1 -> 0.5 crosses; 0 stays familiar
    assert flag_failures(figures, 0.75) == [] and flag_failures(figures, 0.76, atol=1.5) == [
        "familiarity flags agree 75.00% < floor 76.00%"
    ]
    assert flag_failures(figures, 0.5, atol=1.49) == ["familiarity max |diff| 1.5 > 1.49"]
    assert flag_failures({**figures, "max_abs_diff": float("nan")}, 0.5, atol=1.0) == ["familiarity max |diff| nan > 1"]
