"""Batches on the training device: uint8 images -> normalised model input, the augmentation, and the batch
iterator (with DDP sharding)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vggdeploy.deploy.preprocess import PreprocessSpec


def to_input_tensor(images: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) on any device -> normalised float (N, C, h, w): the torch twin of
    preprocess.to_model_input."""
    batch = (images.unsqueeze(1) if images.dim() == 3 else images).float() / 255.0
    if batch.shape[-2:] != (spec.height, spec.width):
        batch = F.interpolate(
            batch, size=(spec.height, spec.width), mode="bilinear", align_corners=False, antialias=False
        )
    if spec.channels == 1:
        return (batch - spec.mean[0]) / spec.std[0]
    mean = torch.tensor(spec.mean, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=batch.device).view(1, -1, 1, 1)
    return (batch - mean) / std


@dataclass(frozen=True)
class Augmentation:
    """Batched on-device augmentation; all off reproduces the plain test-time preprocessing."""

    flip: bool = True  # random horizontal flips
    shift: int = 2  # random translations of up to this many source pixels (zero padded)
    erase: float = 0.0  # probability of random erasing (a rectangle of 2-20 % of the area set to 0)

    def apply_source(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Flip and shift uint8 (N, H, W) or (N, C, H, W) source images (every channel alike)."""
        n, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        device = images.device
        if self.flip:
            flips = torch.rand(n, generator=generator, device=device) < 0.5
            flips = flips.view(n, *([1] * (images.dim() - 1)))
            images = torch.where(flips, images.flip(-1), images)
        if self.shift:
            padded = F.pad(images, (self.shift,) * 4)
            dy, dx = torch.randint(0, 2 * self.shift + 1, (2, n), generator=generator, device=device)
            rows = (dy[:, None] + torch.arange(height, device=device))[:, :, None]
            cols = (dx[:, None] + torch.arange(width, device=device))[:, None, :]
            if images.dim() == 3:
                images = padded[torch.arange(n, device=device)[:, None, None], rows, cols]
            else:
                channels = torch.arange(images.shape[1], device=device)[None, :, None, None]
                samples = torch.arange(n, device=device)[:, None, None, None]
                images = padded[samples, channels, rows[:, None], cols[:, None]]
        return images

    def apply_input(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random erasing on the normalised (N, 1, h, w) model input."""
        if not self.erase:
            return batch
        n, _, height, width = batch.shape
        device = batch.device
        uniform = torch.rand(5, n, generator=generator, device=device)
        area = (0.02 + 0.18 * uniform[0]) * height * width
        aspect = torch.exp((uniform[1] - 0.5) * 2 * 1.2)  # log-uniform in [0.3, 3.3]
        box_h = (area * aspect).sqrt().clamp(1, height)
        box_w = (area / aspect).sqrt().clamp(1, width)
        top = uniform[2] * (height - box_h)
        left = uniform[3] * (width - box_w)
        ys = torch.arange(height, device=device)[None, :, None]
        xs = torch.arange(width, device=device)[None, None, :]
        inside = (
            (ys >= top[:, None, None])
            & (ys < (top + box_h)[:, None, None])
            & (xs >= left[:, None, None])
            & (xs < (left + box_w)[:, None, None])
            & (uniform[4] < self.erase)[:, None, None]
        )
        return batch.masked_fill(inside[:, None], 0.0)


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    spec: PreprocessSpec,
    generator: torch.Generator | None = None,
    augmentation: Augmentation | None = None,
    shard: tuple[int, int] = (0, 1),
    drop_last: bool = False,
):
    """Yield (input, labels) batches from device-resident tensors; shuffled and augmented when a generator is given.

    ``shard`` = (rank, world size) gives each distributed process its own slice of the (shared) order.
    """
    order = torch.randperm(len(images), generator=generator, device=images.device) if generator is not None else None
    indices = (order if order is not None else torch.arange(len(images), device=images.device))[shard[0] :: shard[1]]
    stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        index = indices[start : start + batch_size]
        source = images[index]
        if augmentation is not None and generator is not None:
            source = augmentation.apply_source(source, generator)
        batch = to_input_tensor(source, spec)
        if augmentation is not None and generator is not None:
            batch = augmentation.apply_input(batch, generator)
        yield batch, labels[index]
