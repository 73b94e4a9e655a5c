"""Numerical comparison of a candidate (ONNX Runtime) against a reference (torch): figures actually reached."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

MAX_LISTED_FLIPS = 50


@dataclass(frozen=True)
class LabelFlip:
    index: int  # position in the compared set (test-set index for `check`)
    reference_label: int
    candidate_label: int
    reference_margin: float  # reference logit gap between its top-1 and the candidate's top-1


@dataclass(frozen=True)
class ParityResult:
    """Truthy when every tolerance holds; ``format()`` prints the numbers whatever the outcome."""

    name: str
    images: int
    max_abs_diff: float
    mean_abs_diff: float
    min_cosine: float
    top1_agreement: float
    reference_accuracy: float | None
    candidate_accuracy: float | None
    atol: float | None  # max |logit difference| allowed; None = not checked
    min_agreement: float | None  # lowest top-1 agreement allowed; None = not checked
    max_accuracy_drop_pp: float | None = None  # largest accuracy loss allowed, percentage points; None = not checked
    max_mean_diff: float | None = None  # largest mean |logit difference| allowed; None = not checked
    flips: list[LabelFlip] = field(default_factory=list)
    not_finite: int = 0  # images whose logits hold a NaN or an infinity on either side: never a pass

    @property
    def accuracy_change(self) -> float | None:
        if self.reference_accuracy is None or self.candidate_accuracy is None:
            return None
        return self.candidate_accuracy - self.reference_accuracy

    @property
    def accuracy_change_pp(self) -> float | None:
        """The accuracy change in percentage points, the unit of every change and limit in text and JSON alike."""
        change = self.accuracy_change
        return None if change is None else round(change * 100, 10)

    @property
    def failures(self) -> list[str]:
        problems = []
        if self.not_finite:
            problems.append(f"logits not finite (NaN or inf) for {self.not_finite} of {self.images} images")
        if self.atol is not None and not self.max_abs_diff <= self.atol:
            problems.append(f"max |logit difference| {self.max_abs_diff:.3g} > atol {self.atol:.3g}")
        if self.max_mean_diff is not None and not self.mean_abs_diff <= self.max_mean_diff:
            problems.append(f"mean |logit difference| {self.mean_abs_diff:.3g} > {self.max_mean_diff:.3g}")
        if self.min_agreement is not None and self.top1_agreement < self.min_agreement:
            problems.append(f"top-1 agreement {self.top1_agreement:.4%} < floor {self.min_agreement:.4%}")
        change, limit = self.accuracy_change_pp, self.max_accuracy_drop_pp
        if limit is not None and change is not None and -change > limit + 1e-7:  # a drop equal to it passes
            problems.append(f"accuracy fell {-change:.2f} pp > {limit:.2f} pp")
        return problems

    def __bool__(self) -> bool:
        return not self.failures

    def format(self) -> str:
        accuracy = ""
        if self.accuracy_change is not None:
            accuracy = (
                f", accuracy {self.reference_accuracy:.2%} -> {self.candidate_accuracy:.2%} "
                f"({self.accuracy_change_pp:+.2f} pp)"
            )
        verdict = "ok" if self else "FAILED: " + "; ".join(self.failures)
        return (
            f"{self.name}: {self.images} images, max |diff| {self.max_abs_diff:.3g}, mean |diff| {self.mean_abs_diff:.3g}, "
            f"min cosine {self.min_cosine:.6f}, top-1 agreement {self.top1_agreement:.2%} "
            f"({len(self.flips)} flips){accuracy} -> {verdict}"
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["flips"] = data["flips"][:MAX_LISTED_FLIPS]
        data["flip_count"] = len(self.flips)
        data["accuracy_change_pp"] = self.accuracy_change_pp
        data["failures"] = self.failures
        data["passed"] = bool(self)
        return data


def compare_logits(
    name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray | None = None,
    atol: float | None = None,
    min_agreement: float | None = None,
    max_accuracy_drop_pp: float | None = None,
    indices: np.ndarray | None = None,
    max_mean_diff: float | None = None,
) -> ParityResult:
    """Compare two (N, classes) logit arrays row by row."""
    reference = np.asarray(reference, dtype=np.float64)  # float32 products of large logits would overflow
    candidate = np.asarray(candidate, dtype=np.float64)
    difference = np.abs(reference - candidate)
    # a row with a NaN or an infinity has no answer: its argmax (numpy's first NaN) agrees with nothing, and its
    # cosine is NaN (NaN norms once fell through to the cosine 1.0 of all-zero rows)
    finite_reference, finite_candidate = np.isfinite(reference).all(1), np.isfinite(candidate).all(1)
    finite = finite_reference & finite_candidate
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.where(norms > 0, (reference * candidate).sum(1) / np.maximum(norms, 1e-30), 1.0)
    cosine = np.where(finite, cosine, np.nan)
    reference_top, candidate_top = reference.argmax(1), candidate.argmax(1)
    agree = (reference_top == candidate_top) & finite
    indices = np.arange(len(reference)) if indices is None else indices
    flips = [
        LabelFlip(
            int(indices[i]),
            int(reference_top[i]),
            int(candidate_top[i]),
            float(reference[i, reference_top[i]] - reference[i, candidate_top[i]]),
        )
        for i in np.flatnonzero(~agree & finite)
    ]
    return ParityResult(
        name=name,
        images=len(reference),
        max_abs_diff=float(difference.max()),
        mean_abs_diff=float(difference.mean()),
        min_cosine=float(cosine.min()),
        top1_agreement=float(agree.mean()),
        reference_accuracy=None if labels is None else float(((reference_top == labels) & finite_reference).mean()),
        candidate_accuracy=None if labels is None else float(((candidate_top == labels) & finite_candidate).mean()),
        atol=atol,
        min_agreement=min_agreement,
        max_accuracy_drop_pp=max_accuracy_drop_pp,
        max_mean_diff=max_mean_diff,
        flips=flips,
        not_finite=int((~finite).sum()),
    )
