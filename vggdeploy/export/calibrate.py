"""Export's calibration step: fit the temperature on the checkpoint's held-out training images, measure it.

The slice was kept out of every gradient step by ``train`` (its indices are in the checkpoint), so fitting on it is
fair; the test set is only measured, before and after, never fitted on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vggdeploy.config import ExportConfig
from vggdeploy.data.dataset import Dataset
from vggdeploy.deploy.contract import probabilities
from vggdeploy.errors import DataError
from vggdeploy.metrics.calibration import (
    BOOTSTRAP_LEVEL,
    TEMPERATURE_RANGE,
    CalibrationFigures,
    ReliabilityBins,
    at_search_bound,
    fit_temperature,
    temperature_interval,
)
from vggdeploy.passes import SlicePass, part_of
from vggdeploy.plots import plot_reliability


@dataclass(frozen=True)
class Calibration:
    """The fitted temperature and what it does: the ``calibration`` metadata section and the diagram's data."""

    temperature: float
    fitted: bool
    method: str  # how T was chosen, or "none: <why it was not fitted>"
    bins: int
    slice_before: CalibrationFigures | None  # None when the checkpoint holds no held-out slice
    slice_after: CalibrationFigures | None
    test_before: CalibrationFigures | None  # None with --no-calibration: the test set is not run through torch
    test_after: CalibrationFigures | None
    test_logits: np.ndarray | None
    test_labels: np.ndarray | None
    slice_sample: dict | None = None  # which of the slice's images were passed (EvaluationSample.to_dict), if sampled

    @property
    def measured(self) -> bool:
        """Whether the test set was measured (and there is a reliability diagram to draw)."""
        return self.test_before is not None

    def to_metadata(self) -> dict:
        def pair(before, after) -> dict | None:
            return None if before is None else {"before": before.to_dict(), "after": after.to_dict()}

        return {
            "temperature": self.temperature,
            "fitted": self.fitted,
            "method": self.method,
            "probabilities": "softmax(logits / temperature)",
            "ece_bins": self.bins,
            "calibration_slice": pair(self.slice_before, self.slice_after),
            "slice_sample": self.slice_sample,
            "test_set": pair(self.test_before, self.test_after),
        }

    def format(self) -> str:
        if not self.fitted:
            test = f"test {self.test_before.format()}" if self.measured else "the test set was not measured"
            return f"calibration: temperature 1 ({self.method}); {test}"
        return (
            f"calibration: temperature {self.temperature:.4f} fitted on {self._slice_images()} held-out training "
            f"images; test ECE {self.test_before.ece:.2%} -> {self.test_after.ece:.2%}, NLL "
            f"{self.test_before.nll:.3f} -> {self.test_after.nll:.3f} ({self.test_before.images:,} test images)"
        )

    def _slice_images(self) -> str:
        return part_of(self.slice_before.images, None if self.slice_sample is None else self.slice_sample["of"])

    def plot(self, path: Path, title: str) -> None:
        """The reliability diagram of the test set before (T = 1) and after (T = fitted)."""
        plot_reliability(
            path,
            [
                (f"before (T = 1): ECE {self.test_before.ece:.2%}", self._bins(1.0)),
                (f"after (T = {self.temperature:.3f}): ECE {self.test_after.ece:.2%}", self._bins(self.temperature)),
            ],
            title,
        )

    def _bins(self, temperature: float) -> ReliabilityBins:
        return ReliabilityBins.of(
            probabilities(self.test_logits.astype(np.float64), temperature), self.test_labels, self.bins
        )


MIN_SLICE_ERRORS = 30  # misclassified held-out images a temperature fit needs (BENCHMARKS.md, own images)


def unfit_slice(logits: np.ndarray, labels: np.ndarray, temperature: float) -> str | None:
    """Why the temperature fitted on this held-out slice must not be used, or None. The NLL fit learns how sure to be
    from the images the model gets wrong: on a slice with few of them (a small or easy set) it sharpens the
    probabilities without bound (T = 0.05 on a slice classified all right, a gray image then 99.99999 %); a fit
    at an end of the search range found no minimum inside it; and a fit whose bootstrap interval holds 1 found no
    evidence that the probabilities need changing (T = 1.028 on a 500-image slice moved a 1,000-image test set's ECE
    from 3.99 % to 5.83 %: the slice's noise, fitted)."""
    errors = int((logits.argmax(axis=1) != labels).sum())
    if errors < MIN_SLICE_ERRORS:
        return (
            f"the {len(labels):,} held-out training images hold {errors} the model gets wrong, fewer than the "
            f"{MIN_SLICE_ERRORS} a temperature fit needs (a larger --calibration-holdout or more images would give them)"
        )
    if at_search_bound(temperature):
        low, high = TEMPERATURE_RANGE
        return f"the fit ended at T = {temperature:.3g}, an end of the search range {low:g}-{high:g} (no minimum inside it)"
    low, high = temperature_interval(logits, labels)
    if low <= 1 <= high:
        return (
            f"the fitted T = {temperature:.3f} is within its {BOOTSTRAP_LEVEL:.0%} bootstrap interval "
            f"({low:.3f}-{high:.3f}) of 1: the {len(labels):,} held-out training images give no evidence that the "
            "probabilities need changing"
        )
    return None


def held_out_slice(state: dict, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images, labels) of the training images the checkpoint says were held out, or None if it holds none."""
    split = state.get("calibration_split")
    if not split or len(split["indices"]) == 0:
        return None
    images, labels = dataset.train_images, dataset.train_labels
    if split["of_images"] > len(images) or int(split["indices"].max()) >= split["of_images"]:
        raise DataError(f"the checkpoint's calibration slice does not fit the {len(images)} training images found")
    indices = split["indices"].long()
    return images[indices], labels[indices]


def calibrate(config: ExportConfig, test: tuple[np.ndarray, np.ndarray], held_out: SlicePass | None) -> Calibration:
    """Fit T on the held-out slice (``held_out``: torch's pass over it, None where the checkpoint has none) and
    measure the test set (``test``: torch's logits of the export's test sample and their labels) before and after.
    With ``config.calibrate`` off, neither: T = 1."""
    bins = config.calibration_bins
    if not config.calibrate:
        return Calibration(1.0, False, "none: --no-calibration", bins, None, None, None, None, None, None)
    test_logits, labels = test
    if held_out is None:
        why = (
            "the checkpoint holds no held-out calibration slice (trained by an older vggdeploy, or with "
            "--calibration-holdout 0)"
        )
        print(f"vggdeploy: warning: probabilities stay uncalibrated (temperature 1): {why}", file=sys.stderr)
        test = CalibrationFigures.measure(test_logits, labels, 1.0, bins)
        return Calibration(1.0, False, f"none: {why}", bins, None, None, test, test, test_logits, labels)
    slice_logits, slice_labels = held_out.logits, held_out.labels
    sample = None if held_out.sample is None else held_out.sample.to_dict()
    temperature = fit_temperature(slice_logits, slice_labels)
    refused = unfit_slice(slice_logits, slice_labels, temperature)
    if refused is not None and len(slice_labels) < held_out.of:
        refused += f" (fitted on a sample: {held_out.describe()}; --slice-images all fits on every one)"
    if refused is not None:
        print(f"vggdeploy: warning: probabilities stay uncalibrated (temperature 1): {refused}", file=sys.stderr)
        test = CalibrationFigures.measure(test_logits, labels, 1.0, bins)
        held = CalibrationFigures.measure(slice_logits, slice_labels, 1.0, bins)
        return Calibration(1.0, False, f"none: {refused}", bins, held, held, test, test, test_logits, labels, sample)
    return Calibration(
        temperature,
        True,
        "temperature scaling: NLL minimised over T by a bounded golden-section search, on training images held out "
        "of every gradient step",
        bins,
        CalibrationFigures.measure(slice_logits, slice_labels, 1.0, bins),
        CalibrationFigures.measure(slice_logits, slice_labels, temperature, bins),
        CalibrationFigures.measure(test_logits, labels, 1.0, bins),
        CalibrationFigures.measure(test_logits, labels, temperature, bins),
        test_logits,
        labels,
        sample,
    )
