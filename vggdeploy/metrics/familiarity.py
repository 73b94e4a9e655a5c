"""How familiar an image looks to a model: scores from its logits or its penultimate features, higher = more like
the training images, and the figures that say how well a score tells familiar images from others (numpy only).

The candidates are the literature's: the maximum softmax probability (Hendrycks & Gimpel, 2017), the energy score
(Liu et al., 2020), the Mahalanobis distance to the nearest class mean with a shared covariance (Lee et al., 2018),
and the distance to the k-th nearest training image in normalised feature space (Sun et al., 2022).
``scripts/familiarity_benchmark.py`` measures them (BENCHMARKS.md, "Familiarity").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from vggdeploy.deploy.contract import probabilities

ACCEPTED_SHARE = 0.95  # the familiar held-out images a threshold accepts (its true-positive rate)


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The largest class probability, softmax(logits / T)."""
    return probabilities(np.asarray(logits, dtype=np.float64), temperature).max(axis=1)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The negative free energy, T * logsumexp(logits / T): large where some class's logit is large."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    return temperature * (top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1)))


@dataclass(frozen=True)
class GaussianFit:
    """Class means and one shared covariance of training features: the score is minus the smallest squared
    Mahalanobis distance to a class mean."""

    means: np.ndarray  # (classes, D)
    precision: np.ndarray  # (D, D), the inverse of the shared covariance
    shrinkage: float  # the share of the covariance replaced by its mean variance (Ledoit-Wolf)

    @classmethod
    def of(cls, features: np.ndarray, labels: np.ndarray) -> GaussianFit:
        features = np.asarray(features, dtype=np.float64)
        classes = np.unique(labels)
        means = np.stack([features[labels == c].mean(axis=0) for c in classes])
        covariance, shrinkage = shrunk_covariance(features - means[np.searchsorted(classes, labels)])
        return cls(means, np.linalg.inv(covariance), shrinkage)

    def score(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        # (x - m)^T P (x - m) = x^T P x - 2 m^T P x + m^T P m, for every class mean at once
        projected = features @ self.precision
        own = (projected * features).sum(axis=1, keepdims=True)
        cross = projected @ self.means.T
        means = ((self.means @ self.precision) * self.means).sum(axis=1)
        return -(own - 2 * cross + means).min(axis=1)


def shrunk_covariance(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """The covariance of centred rows, shrunk toward its mean variance by the Ledoit-Wolf (2004) intensity, and that
    intensity: with fewer images than dimensions (a small folder of own images, 4,096 features) the sample covariance
    is singular, and its inverse would call every new image unfamiliar along the directions it never saw."""
    images, dimensions = centred.shape
    sample = centred.T @ centred  # the one (D, D) matrix: 134 MB for 4,096 features, scaled and shrunk in place
    sample /= images
    diagonal = np.diagonal(sample)
    variance = diagonal.sum() / dimensions
    squares = float(np.vdot(sample, sample))
    # squared distance from the shrinkage target (variance x identity): the off-diagonal squares and the diagonal's
    spread = squares - float((diagonal**2).sum()) + float(((diagonal - variance) ** 2).sum())
    if spread <= 0:
        return sample, 0.0
    norms = (centred**2).sum(axis=1)
    noise = ((norms**2).sum() / images - squares) / images  # the sample covariance's own error
    shrinkage = float(min(max(noise, 0.0), spread) / spread)
    sample *= 1 - shrinkage
    sample.flat[:: dimensions + 1] += shrinkage * variance
    return sample, shrinkage


@dataclass(frozen=True)
class LayerFit:
    """One layer's Mahalanobis score in the form a graph computes it: whiten, then the squared distance to each
    whitened class mean, the smallest negated; standardised by the score's mean and deviation on held-out images."""

    centre: np.ndarray  # (D,), the training features' mean (subtracted first, for float32's sake)
    whitening: np.ndarray  # (D, D), W with W W^T = the precision: |(x - m) W|^2 is the squared Mahalanobis distance
    means: np.ndarray  # (classes, D), (class mean - centre) W
    shrinkage: float
    score_mean: float = 0.0
    score_deviation: float = 1.0

    @classmethod
    def of(cls, features: np.ndarray, labels: np.ndarray) -> LayerFit:
        gaussian = GaussianFit.of(features, labels)
        centre = np.asarray(features, dtype=np.float64).mean(axis=0)
        whitening = np.linalg.cholesky(gaussian.precision)
        return cls(centre, whitening, (gaussian.means - centre) @ whitening, gaussian.shrinkage)

    def raw_score(self, features: np.ndarray, chunk: int = 256) -> np.ndarray:
        """``chunk`` images at a time: the differences to every class mean are (images, classes, D) float64, 1.6 GB
        for 5,000 images of 4,096 features."""
        features = np.asarray(features, dtype=np.float64)
        scores = np.empty(len(features))
        for start in range(0, len(features), chunk):
            whitened = (features[start : start + chunk] - self.centre) @ self.whitening
            scores[start : start + chunk] = -((whitened[:, None, :] - self.means[None]) ** 2).sum(axis=2).min(axis=1)
        return scores

    def score(self, features: np.ndarray) -> np.ndarray:
        """The standardised score."""
        return (self.raw_score(features) - self.score_mean) / self.score_deviation

    def standardised_on(self, features: np.ndarray) -> LayerFit:
        scores = self.raw_score(features)
        return replace(self, score_mean=float(scores.mean()), score_deviation=float(scores.std()))

    def arrays(self, layer: str) -> dict[str, np.ndarray]:
        """What a graph needs, float32, named ``<layer>_centre``, ``_whitening``, ``_means`` and ``_scale`` (mean and
        deviation)."""
        parts = {
            "centre": self.centre,
            "whitening": self.whitening,
            "means": self.means,
            "scale": np.array([self.score_mean, self.score_deviation]),
        }
        return {f"{layer}_{name}": value.astype(np.float32) for name, value in parts.items()}


@dataclass(frozen=True)
class NeighbourFit:
    """Training features scaled to unit length: the score is minus the distance to the k-th nearest one."""

    bank: np.ndarray  # (N, D), unit rows
    k: int

    @classmethod
    def of(cls, features: np.ndarray, k: int) -> NeighbourFit:
        return cls(_unit_rows(features), k)

    def score(self, features: np.ndarray, chunk: int = 1024) -> np.ndarray:
        unit = _unit_rows(features)
        scores = []
        for start in range(0, len(unit), chunk):
            similarity = unit[start : start + chunk] @ self.bank.T  # |a - b|^2 = 2 - 2 a.b for unit rows
            kth = -np.partition(-similarity, self.k - 1, axis=1)[:, self.k - 1]
            scores.append(-np.sqrt(np.maximum(2 - 2 * kth, 0)))
        return np.concatenate(scores)


def _unit_rows(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def auroc(familiar: np.ndarray, unfamiliar: np.ndarray) -> float:
    """The probability that a random familiar image scores above a random unfamiliar one (ties count half): the
    Mann-Whitney statistic from the ranks of all scores, tied scores sharing their mean rank."""
    scores = np.concatenate([familiar, unfamiliar]).astype(np.float64)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_ranks = np.cumsum(counts) - (counts - 1) / 2
    familiar_ranks = mean_ranks[inverse][: len(familiar)].sum()
    pairs = len(familiar) * len(unfamiliar)
    return float((familiar_ranks - len(familiar) * (len(familiar) + 1) / 2) / pairs)


def threshold_accepting(familiar: np.ndarray, share: float = ACCEPTED_SHARE) -> float:
    """The highest score that at least ``share`` of the familiar images reach (the threshold for that true-positive
    rate: of 100 images, 95 reach it)."""
    ordered = np.sort(np.asarray(familiar, dtype=np.float64))
    return float(ordered[len(ordered) - math.ceil(share * len(ordered) - 1e-9)])


def accepted(scores: np.ndarray, threshold: float) -> float:
    """The share of images whose score reaches the threshold."""
    return float((np.asarray(scores) >= threshold).mean())


def flag_agreement(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> dict:
    """How closely one deployment's familiarity scores follow another's: the largest difference, and the share of
    images both flag alike (unfamiliar = below the threshold)."""
    reference, candidate = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    return {
        "images": len(reference),
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "flag_agreement": float(((reference < threshold) == (candidate < threshold)).mean()),
    }


def flag_failures(figures: dict, min_flag_agreement: float, atol: float | None = None) -> list[str]:
    """What ``flag_agreement``'s figures break of the limits, in words (empty: within them)."""
    problems = []
    if atol is not None and not figures["max_abs_diff"] <= atol:
        problems.append(f"familiarity max |diff| {figures['max_abs_diff']:.3g} > {atol:g}")
    if not figures["flag_agreement"] >= min_flag_agreement:
        problems.append(f"familiarity flags agree {figures['flag_agreement']:.2%} < floor {min_flag_agreement:.2%}")
    return problems
