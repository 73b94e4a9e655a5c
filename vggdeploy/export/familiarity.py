"""Export's familiarity step: fit the score that says how much an image looks like the training images, and put it in
the graph as a second output beside the logits.

The score (BENCHMARKS.md, "Familiarity") adds two Mahalanobis scores, each standardised on the held-out slice:
- the first stage's channel statistics (each channel's mean and standard deviation over the image): what the image
  is made of, which blanks, noise and inverted images get wrong;
- the penultimate features (the last Linear layer's input): what the model makes of it.
Each is minus the squared distance to the nearest class mean under one shared, shrunk covariance, fitted on training
images outside the slice. The threshold accepts a stated share of the slice, which no fit has seen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from vggdeploy.data.dataset import Dataset
from vggdeploy.deploy.contract import FAMILIARITY_NAME
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.errors import CheckFailed
from vggdeploy.metrics.familiarity import ACCEPTED_SHARE, LayerFit, flag_agreement, threshold_accepting
from vggdeploy.model.familiarity import familiarity_score, score_parts
from vggdeploy.model.vgg import summarize
from vggdeploy.passes import SlicePass, evaluation_sample, part_of, torch_device, torch_representations

FIT_IMAGES = 10_000  # training images the class means and covariances are fitted on, at most (evenly spread)
MIN_SLICE_IMAGES = 100  # held-out images a threshold at a 95 % share needs (5 of them fall below it)


@dataclass(frozen=True)
class Familiarity:
    """The fitted score, its threshold and what it rests on: the ``familiarity`` metadata section."""

    threshold: float
    accepted_share: float
    fit_images: int
    slice_images: int
    shrinkage: dict[str, float]
    slice_of: int | None = None  # images in the whole slice, where the threshold rests on a sample of them
    parity: dict | None = None  # ONNX Runtime fp32 vs torch on the parity images (flag_agreement and atol)

    def to_metadata(self) -> dict:
        return {
            "output": FAMILIARITY_NAME,
            "threshold": self.threshold,
            "unfamiliar": f"{FAMILIARITY_NAME} < threshold",
            "accepted_share": self.accepted_share,
            "threshold_from": f"{self._slice()} held-out training images (the calibration slice): the threshold "
            f"accepts {self.accepted_share:.0%} of them",
            "fitted_on": f"{self.fit_images} training images outside the slice",
            "score": "the sum of two Mahalanobis scores, each minus the squared distance to the nearest class mean "
            "under a shared Ledoit-Wolf-shrunk covariance and standardised on the slice: the first stage's channel "
            "means and standard deviations, and the penultimate features; higher = more like the training images",
            "shrinkage": self.shrinkage,
            "parity": self.parity,
            "promise": "flags images unlike the training images (blanks, noise, other kinds of picture) at the stated "
            "share of familiar images accepted; it is not a guarantee that a familiar-looking image is classified "
            "right, nor that every unfamiliar one is flagged",
        }

    def format(self) -> str:
        parity = ""
        if self.parity is not None:
            parity = (
                f"; onnxruntime vs torch on {self.parity['images']:,} test images: max |diff| "
                f"{self.parity['max_abs_diff']:.3g}, flags agree {self.parity['flag_agreement']:.2%}"
            )
        return (
            f"familiarity: second output {FAMILIARITY_NAME!r}, fitted on {self.fit_images:,} training images; "
            f"threshold {self.threshold:.3f} accepts {self.accepted_share:.0%} of {self._slice()} held-out "
            f"training images{parity}"
        )

    def _slice(self) -> str:
        return part_of(self.slice_images, self.slice_of)

    def compared(self, torch_scores: np.ndarray, onnx_scores: np.ndarray, atol: float) -> Familiarity:
        """This fit with the parity of the ONNX graph's scores against torch's; CheckFailed beyond ``atol``."""
        parity = {**flag_agreement(torch_scores, onnx_scores, self.threshold), "atol": atol}
        if not parity["max_abs_diff"] <= atol:
            raise CheckFailed(
                f"parity at export: familiarity max |diff| {parity['max_abs_diff']:.3g} > atol {atol:g} "
                f"({len(torch_scores)} test images)"
            )
        return replace(self, parity=parity)


def _fit_sample(state: dict, dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """The training images the slice was drawn from (the first ``of_images``: training may have used a subset), less
    the slice, evenly spread: at most FIT_IMAGES, fewer on a CPU where a pass would be long (the test sample's rule)."""
    split = state["calibration_split"]
    held = np.zeros(split["of_images"], dtype=bool)
    held[np.asarray(split["indices"])] = True
    pool = np.flatnonzero(~held)
    count = min(FIT_IMAGES, len(pool))
    spread = pool[np.arange(count) * len(pool) // count]
    chosen = torch.from_numpy(
        spread[evaluation_sample(count, None, summarize(state["model_args"]).gflops, device).indices]
    )
    return dataset.train_images[chosen], dataset.train_labels[chosen].numpy()


def familiarity_refusal(held_out: SlicePass | None) -> str | None:
    """Why the held-out slice (torch's pass over it; None: the checkpoint has none) cannot give the score a threshold,
    printed as a warning; None where it can."""
    slice_images = 0 if held_out is None else len(held_out.labels)
    if held_out is not None and slice_images >= MIN_SLICE_IMAGES:
        return None
    why = (
        f"the checkpoint holds {slice_images} held-out training images, fewer than the {MIN_SLICE_IMAGES} a "
        "threshold needs (a larger --calibration-holdout or more images would give them)"
    )
    if held_out is not None and held_out.of >= MIN_SLICE_IMAGES:
        why = f"--slice-images leaves {held_out.describe()}, fewer than the {MIN_SLICE_IMAGES} a threshold needs"
    print(f"vggdeploy: warning: no familiarity output: {why}", file=sys.stderr)
    return why


@dataclass(frozen=True)
class FitFeatures:
    """What the score reads of the training images it is fitted on, from torch's pass over them (float64)."""

    labels: np.ndarray
    statistics: np.ndarray
    penultimate: np.ndarray


def torch_fit_pass(model: nn.Module, state: dict, dataset: Dataset, spec: PreprocessSpec) -> FitFeatures:
    """torch over the training images the score is fitted on (``_fit_sample``)."""
    images, labels = _fit_sample(state, dataset, torch_device())
    _, statistics, penultimate = torch_representations(model, images, spec, "torch on training images (familiarity)")
    return FitFeatures(labels, statistics, penultimate)


def fit_familiarity(training: FitFeatures, held_out: SlicePass) -> tuple[Familiarity, dict[str, np.ndarray]]:
    """The score fitted on ``training``, its threshold on the held-out slice, and the graph's constants
    (``LayerFit.arrays``; export saves them beside the model for ``check``, then frees them). numpy alone, so that
    export frees torch's weights for it (a fit on 4,096 features takes 0.6 GB for a moment)."""
    early = LayerFit.of(training.statistics, training.labels).standardised_on(held_out.statistics)
    late = LayerFit.of(training.penultimate, training.labels).standardised_on(held_out.penultimate)
    slice_scores = early.score(held_out.statistics) + late.score(held_out.penultimate)
    familiarity = Familiarity(
        threshold_accepting(slice_scores, ACCEPTED_SHARE),
        ACCEPTED_SHARE,
        len(training.labels),
        len(held_out.labels),
        {"first stage": early.shrinkage, "penultimate": late.shrinkage},
        held_out.of,
    )
    return familiarity, {**early.arrays("early"), **late.arrays("late")}


def torch_scores(arrays: dict[str, np.ndarray], statistics: np.ndarray, penultimate: np.ndarray) -> np.ndarray:
    """torch's float32 scores of what the score reads, as the exported model's graph computes them."""
    with torch.no_grad():
        scores = familiarity_score(
            score_parts(arrays),
            torch.as_tensor(statistics, dtype=torch.float32),
            torch.as_tensor(penultimate, dtype=torch.float32),
        )
    return scores.numpy()
