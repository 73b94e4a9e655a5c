"""The comparison behind every parity figure, proven on hand-made logits whose figures are known in advance.

Each expected number below was worked out by hand from the arrays, not by running the code: a comparison that
reported perfect parity, a mean for a max, or no flips would fail here.
"""

import math

import numpy as np
import pytest

from vggdeploy.metrics.parity import MAX_LISTED_FLIPS, LabelFlip, compare_logits

REFERENCE = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 4.0], [5.0, 0.0, 0.0]])
# row 0: +1.5 on class 1 flips its top-1 from 0 to 1; row 1: +0.5 on class 0; row 2 unchanged; row 3: -0.25 on class 2
CANDIDATE = REFERENCE + np.array([[0.0, 1.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -0.25]])
LABELS = np.array([0, 1, 2, 1])  # the reference gets rows 0-2 right; the candidate only rows 1-2


def test_every_figure_equals_the_hand_computed_one():
    result = compare_logits("hand-made", REFERENCE, CANDIDATE, LABELS)
    assert result.images == 4
    assert result.max_abs_diff == 1.5
    assert result.mean_abs_diff == pytest.approx((1.5 + 0.5 + 0.25) / 12)
    assert result.min_cosine == pytest.approx(6.5 / math.sqrt(5 * 10.25))  # row 0: (2*2 + 1*2.5) / (|r| |c|)
    assert result.top1_agreement == 0.75
    assert result.reference_accuracy == 0.75 and result.candidate_accuracy == 0.5
    assert result.accuracy_change == -0.25
    assert result.flips == [LabelFlip(index=0, reference_label=0, candidate_label=1, reference_margin=1.0)]


def test_flips_carry_the_caller_s_indices_and_the_reference_margin():
    indices = np.array([100, 101, 102, 103])
    swapped = REFERENCE[:, [1, 0, 2]]  # classes 0 and 1 exchanged: rows whose top-1 is 0 or 1 flip
    result = compare_logits("swapped", REFERENCE, swapped, indices=indices)
    assert result.flips == [LabelFlip(100, 0, 1, 1.0), LabelFlip(101, 1, 0, 3.0), LabelFlip(103, 0, 1, 5.0)]
    assert result.top1_agreement == 0.25 and result.accuracy_change is None
    assert result.reference_accuracy is None and result.candidate_accuracy is None
    assert result.max_abs_diff == 5.0 and result.min_cosine == pytest.approx(0.0)  # row 3: (5,0,0) vs (0,5,0)


@pytest.mark.parametrize(
    ("limits", "failures"),
    [
        ({"atol": 1.5, "min_agreement": 0.75, "max_accuracy_drop_pp": 25.0, "max_mean_diff": 0.1875}, []),
        ({"max_mean_diff": 0.1874}, ["mean |logit difference| 0.188 > 0.187"]),
        ({"atol": 1.4999}, ["max |logit difference| 1.5 > atol 1.5"]),
        ({"min_agreement": 0.76}, ["top-1 agreement 75.0000% < floor 76.0000%"]),
        ({"max_accuracy_drop_pp": 24.99}, ["accuracy fell 25.00 pp > 24.99 pp"]),
        (
            {"atol": 1.0, "min_agreement": 1.0, "max_accuracy_drop_pp": 0.0, "max_mean_diff": 0.0},
            [
                "max |logit difference| 1.5 > atol 1",
                "mean |logit difference| 0.188 > 0",
                "top-1 agreement 75.0000% < floor 100.0000%",
                "accuracy fell 25.00 pp > 0.00 pp",
            ],
        ),
    ],
)
def test_the_verdict_follows_each_limit_exactly(limits, failures):
    result = compare_logits("hand-made", REFERENCE, CANDIDATE, LABELS, **limits)
    assert result.failures == failures
    assert bool(result) is (not failures)
    assert ("-> ok" in result.format()) is (not failures)
    assert result.to_dict()["passed"] is (not failures)


def test_unchecked_limits_never_fail_and_identical_logits_are_perfect():
    assert compare_logits("no limits", REFERENCE, CANDIDATE, LABELS).failures == []
    same = compare_logits(
        "same", REFERENCE, REFERENCE.copy(), LABELS, atol=0.0, min_agreement=1.0, max_accuracy_drop_pp=0.0
    )
    assert same and same.max_abs_diff == 0.0 and same.min_cosine == pytest.approx(1.0) and same.flips == []


def test_a_nan_in_the_candidate_fails_the_tolerance():
    broken = CANDIDATE.copy()
    broken[2, 1] = np.nan
    result = compare_logits("nan", REFERENCE, broken, LABELS, atol=10.0)
    assert not result and "max |logit difference| nan > atol 10" in result.failures[1]


@pytest.mark.parametrize("side", ["reference", "candidate"])
def test_a_row_that_is_not_finite_agrees_with_nothing_and_never_passes(side):
    """numpy's argmax of a NaN row is the NaN's column on both sides, so such rows once "agreed" (100 % agreement on
    an all-NaN output) and their NaN norms fell through to the cosine 1.0 of all-zero rows."""
    reference, candidate = REFERENCE.copy(), CANDIDATE.copy()
    (reference if side == "reference" else candidate)[0] = [np.nan, np.inf, 0.0]
    both_nan = compare_logits("nan", reference, np.where(np.isnan(reference), np.nan, candidate), LABELS)
    result = compare_logits("nan", reference, candidate, LABELS)  # no limit set: still a failure
    for compared in (result, both_nan):
        assert not compared and compared.not_finite == 1 and math.isnan(compared.min_cosine)
        assert compared.failures[0] == f"logits not finite (NaN or inf) for 1 of {len(REFERENCE)} images"
        assert compared.top1_agreement <= (len(REFERENCE) - 1) / len(REFERENCE)
        assert 0 not in [flip.index for flip in compared.flips]  # not a flip: it has no answer to flip
    accuracy = result.reference_accuracy if side == "reference" else result.candidate_accuracy
    assert accuracy == (LABELS[1:] == (REFERENCE if side == "reference" else CANDIDATE)[1:].argmax(1)).sum() / len(
        LABELS
    )


def test_zero_rows_count_as_cosine_one_and_do_not_divide_by_zero():
    zeros = np.zeros((2, 3))
    result = compare_logits("zeros", zeros, zeros)
    assert result.min_cosine == 1.0 and result.max_abs_diff == 0.0 and result.top1_agreement == 1.0


def test_the_report_lists_at_most_max_listed_flips_but_counts_them_all():
    count = MAX_LISTED_FLIPS + 7
    reference = np.tile([[1.0, 0.0]], (count, 1))
    result = compare_logits("many flips", reference, reference[:, ::-1])
    data = result.to_dict()
    assert data["flip_count"] == count and len(data["flips"]) == MAX_LISTED_FLIPS and len(result.flips) == count
    assert data["accuracy_change_pp"] is None and data["top1_agreement"] == 0.0


def test_format_prints_the_figures_reached():
    text = compare_logits("hand-made", REFERENCE, CANDIDATE, LABELS, atol=1.0).format()
    assert text.startswith("hand-made: 4 images, max |diff| 1.5, mean |diff| 0.188, min cosine 0.907959")
    assert "top-1 agreement 75.00% (1 flips), accuracy 75.00% -> 50.00% (-25.00 pp) -> FAILED" in text


def test_format_without_labels_prints_no_accuracy_and_to_dict_carries_the_change():
    assert compare_logits("same", REFERENCE, REFERENCE).format() == (
        "same: 4 images, max |diff| 0, mean |diff| 0, min cosine 1.000000, top-1 agreement 100.00% (0 flips) -> ok"
    )
    saved = compare_logits("hand-made", REFERENCE, CANDIDATE, LABELS, max_accuracy_drop_pp=10.0).to_dict()
    assert saved["accuracy_change_pp"] == -25.0 and saved["max_accuracy_drop_pp"] == 10.0  # the unit of the text
    assert saved["failures"] == ["accuracy fell 25.00 pp > 10.00 pp"] and saved["passed"] is False
    failed = compare_logits("hand-made", REFERENCE, CANDIDATE, LABELS, atol=1.0, min_agreement=1.0).format()
    assert failed.endswith("-> FAILED: max |logit difference| 1.5 > atol 1; top-1 agreement 75.0000% < floor 100.0000%")


def test_small_logits_keep_their_true_cosine():
    reference = np.array([[0.5, 0.5], [0.5, 0.0]])
    candidate = np.array([[0.5, 0.0], [0.0, 0.5]])  # norms below 1: cos 1/sqrt(2) and 0, never clamped to 1
    result = compare_logits("small", reference, candidate)
    assert result.min_cosine == 0.0
    assert compare_logits("small", reference[:1], candidate[:1]).min_cosine == pytest.approx(1 / math.sqrt(2))


def test_float32_logits_are_compared_in_float64():
    huge = np.array([[1e20, 1e20, -1e20]], dtype=np.float32)  # their squares overflow float32
    result = compare_logits("huge", huge, huge.copy())
    assert result.min_cosine == pytest.approx(1.0) and result.max_abs_diff == 0.0
