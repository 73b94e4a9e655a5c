"""The classifier with its familiarity score as a second output, for export's graph and ``check``'s torch side.

The score's arrays (``metrics.familiarity.LayerFit.arrays``) are fitted by export and saved beside the model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

LAYERS = ("early", "late")  # the first stage's channel statistics, the penultimate features
PARTS = ("centre", "whitening", "means", "scale")


def stage_statistics(early: torch.Tensor) -> torch.Tensor:
    """Each channel's mean and standard deviation over the image, (N, 2C)."""
    mean = early.mean(dim=(2, 3))
    deviation = ((early - mean[:, :, None, None]) ** 2).mean(dim=(2, 3)).sqrt()
    return torch.cat([mean, deviation], dim=1)


def representations(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits and what the score reads: the first stage's statistics and the penultimate features."""
    return Representations(model)(images)


class Representations(nn.Module):
    """The model's logits and what the score reads, from one forward pass (torch's passes stack them as columns).
    Split as the VGG is (``convolve``, then ``classify``) so that torch's passes batch the dense layers alike."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.args = model.args

    def convolve(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        early = self.model.features[0](images)
        return self.model.features[1:](early), stage_statistics(early)

    def classify(
        self, features: torch.Tensor, statistics: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        penultimate = self.model.classifier[:-1](features)
        return self.model.classifier[-1](penultimate), statistics, penultimate

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.classify(*self.convolve(images))


def familiarity_score(
    parts: dict[str, torch.Tensor], statistics: torch.Tensor, penultimate: torch.Tensor
) -> torch.Tensor:
    """The sum of the two layers' standardised Mahalanobis scores, higher = more like the training images, from what
    the score reads; ``parts``: the fit's arrays as tensors, by ``LayerFit.arrays``' names."""
    return _layer_score(parts, statistics, "early") + _layer_score(parts, penultimate, "late")


def _layer_score(parts: dict[str, torch.Tensor], features: torch.Tensor, layer: str) -> torch.Tensor:
    centre, whitening, means, scale = (parts[f"{layer}_{part}"] for part in PARTS)
    whitened = (features - centre) @ whitening
    distance = ((whitened[:, None, :] - means[None]) ** 2).sum(dim=2).amin(dim=1)
    return (-distance - scale[0]) / scale[1]


def score_parts(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The fit's arrays as the float32 tensors the score computes with."""
    return {
        f"{layer}_{part}": torch.as_tensor(np.asarray(arrays[f"{layer}_{part}"], dtype=np.float32))
        for layer in LAYERS
        for part in PARTS
    }


class ScoredModel(Representations):
    """A VGG whose forward pass returns ``(logits, familiarity)`` (``familiarity_score``); the score's arrays are
    buffers, constants of the exported graph."""

    def __init__(self, model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
        super().__init__(model)
        for name, tensor in score_parts(arrays).items():
            self.register_buffer(name, tensor)

    def classify(self, features: torch.Tensor, statistics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, statistics, penultimate = super().classify(features, statistics)
        parts = {f"{layer}_{part}": getattr(self, f"{layer}_{part}") for layer in LAYERS for part in PARTS}
        return logits, familiarity_score(parts, statistics, penultimate)
