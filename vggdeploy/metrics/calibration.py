"""How honest a model's probabilities are, and temperature scaling to make them so (numpy only).

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides the logits by one
scalar T before the softmax. It changes no argmax, so accuracy stays; T is chosen to minimise the negative
log-likelihood on images the model never took a gradient step on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from vggdeploy.deploy.contract import probabilities

DEFAULT_BINS = 15  # equal-width confidence bins, as in Guo et al.


TEMPERATURE_RANGE = (0.05, 20.0)  # the fit searches here; an answer at either end means the logits carry no signal


_GOLDEN_RATIO = (math.sqrt(5) - 1) / 2


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log p(true class) of softmax(logits / temperature), computed in float64 with log-sum-exp."""
    return nll_of_temperature(logits, labels)(temperature)


def nll_of_temperature(logits: np.ndarray, labels: np.ndarray) -> Callable[[float], float]:
    """``negative_log_likelihood(logits, labels, T)`` as a function of T, for a search that asks it many times: what
    does not depend on T is computed once, the logits in float64 less each row's peak (the peak of logits / T is the
    peak / T, so -log p(true class) = log sum exp(centred / T) - centred true logit / T)."""
    scaled = logits.astype(np.float64)
    centred = scaled - scaled.max(axis=1, keepdims=True)
    true_class = centred[np.arange(len(labels)), labels]

    def nll(temperature: float) -> float:
        return float(np.mean(np.log(np.exp(centred / temperature).sum(axis=1)) - true_class / temperature))

    return nll


def at_search_bound(temperature: float) -> bool:
    """True when the fit ended at an end of ``TEMPERATURE_RANGE``, where no minimum lies inside it (a model near
    chance on the held-out images ends at the top: flattening its logits always helps)."""
    return any(math.isclose(temperature, bound, rel_tol=1e-4) for bound in TEMPERATURE_RANGE)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, tolerance: float = 1e-6) -> float:
    """The temperature that minimises the NLL, by golden-section search on log T within ``TEMPERATURE_RANGE``.

    The NLL is convex in 1/T, hence unimodal in log T, so the bracketing search finds the one minimum; a 1-D search
    is all one scalar needs (no optimiser library, no gradient).
    """
    low, high = (math.log(bound) for bound in TEMPERATURE_RANGE)
    nll = nll_of_temperature(logits, labels)

    def loss(log_t: float) -> float:
        return nll(math.exp(log_t))

    left, right = high - _GOLDEN_RATIO * (high - low), low + _GOLDEN_RATIO * (high - low)
    left_loss, right_loss = loss(left), loss(right)
    while high - low > tolerance:
        if left_loss <= right_loss:
            high, right, right_loss = right, left, left_loss
            left = high - _GOLDEN_RATIO * (high - low)
            left_loss = loss(left)
        else:
            low, left, left_loss = left, right, right_loss
            right = low + _GOLDEN_RATIO * (high - low)
            right_loss = loss(right)
    return math.exp((low + high) / 2)


BOOTSTRAP_RESAMPLES = 200


BOOTSTRAP_LEVEL = 0.95


def temperature_interval(
    logits: np.ndarray, labels: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """The central BOOTSTRAP_LEVEL interval of the temperatures fitted on ``resamples`` resamplings (with
    replacement) of the slice: how far the fit could move by the luck of which images were held out."""
    rng = np.random.default_rng(seed)
    count = len(labels)
    fitted = [
        fit_temperature(logits[picked], labels[picked], tolerance=1e-4)
        for picked in (rng.integers(0, count, count) for _ in range(resamples))
    ]
    tail = (1 - BOOTSTRAP_LEVEL) / 2
    low, high = np.quantile(fitted, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class ReliabilityBins:
    """Per equal-width confidence bin: images, mean confidence and accuracy (NaN where a bin is empty)."""

    edges: np.ndarray  # bins + 1 values from 0 to 1
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @classmethod
    def of(cls, chances: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> ReliabilityBins:
        confidence, predicted = chances.max(axis=1), chances.argmax(axis=1)
        edges = np.linspace(0.0, 1.0, bins + 1)
        index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # bins are (lo, hi]
        counts = np.bincount(index, minlength=bins)
        with np.errstate(invalid="ignore"):
            mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
            accuracy = np.bincount(index, weights=(predicted == labels).astype(np.float64), minlength=bins) / counts
        return cls(edges, counts, mean_confidence, accuracy)

    def expected_calibration_error(self) -> float:
        """Sum over bins of (share of images) x |accuracy - mean confidence|."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.counts[filled] / self.counts.sum() * gaps).sum())


@dataclass(frozen=True)
class CalibrationFigures:
    """How well the probabilities of one set of logits, at one temperature, match how often the model is right."""

    images: int
    temperature: float
    ece: float  # expected calibration error, a fraction (0.0768 = 7.68 %)
    nll: float
    mean_confidence: float
    accuracy: float

    @classmethod
    def measure(
        cls, logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = DEFAULT_BINS
    ) -> CalibrationFigures:
        chances = probabilities(logits.astype(np.float64), temperature)
        return cls(
            len(labels),
            temperature,
            ReliabilityBins.of(chances, labels, bins).expected_calibration_error(),
            negative_log_likelihood(logits, labels, temperature),
            float(chances.max(axis=1).mean()),
            float((chances.argmax(axis=1) == labels).mean()),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        return (
            f"ECE {self.ece:.2%}, NLL {self.nll:.3f}, mean confidence {self.mean_confidence:.2%} vs accuracy "
            f"{self.accuracy:.2%} (T = {self.temperature:.3f}, {self.images:,} images)"
        )
