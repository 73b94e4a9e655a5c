"""The training images held out from every gradient step (validation and export's temperature fit): stratified
and seeded, so a checkpoint can name them by index."""

from __future__ import annotations

import torch

HOLDOUT_FRACTION_CAP = 0.1  # a calibration holdout never takes more than this share of the training images


def holdout_size(requested: int, available: int) -> int:
    """How many training images are held out: ``requested``, capped at a tenth of the ``available`` ones."""
    return min(requested, int(available * HOLDOUT_FRACTION_CAP))


def stratified_holdout(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``count`` images drawn at random with each class in its share (a fixed ``seed``).

    Each image gets its rank within its class in a seeded random order; taking the lowest rank-to-class-size ratios
    takes every class in proportion to its size.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels.cpu()[order]
    class_sizes = torch.bincount(shuffled)
    ranks = torch.empty(len(labels), dtype=torch.float64)
    for label in torch.unique(shuffled):
        members = torch.nonzero(shuffled == label).flatten()
        ranks[members] = torch.arange(len(members), dtype=torch.float64) / class_sizes[label]
    picked = order[torch.argsort(ranks, stable=True)[:count]]
    return picked.sort().values
