"""When things happen in a run: the learning rate at each step, the seeds of each epoch and step, and how many epochs
fit the time left (``--fit-to-time``)."""

from __future__ import annotations

import math

from vggdeploy.config import TrainConfig


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """One-cycle: linear warm-up over 20 % of the steps from lr/25, then cosine down to lr/1e4."""
    if config.schedule == "constant":
        return config.lr
    warmup = max(1, int(0.2 * total_steps))
    if step < warmup:
        return config.lr * (1 / 25 + (1 - 1 / 25) * step / warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.lr * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress)))


def seed_for(config: TrainConfig, epoch: int, step: int | None = None) -> int:
    """The one seeding rule: shuffling and augmentation per (seed, epoch); dropout per (seed, epoch, step)."""
    base = config.seed * 100_003
    return base + epoch if step is None else base + epoch * 1_000_003 + step


def epochs_that_fit(history: list[dict], first_epoch: int, seconds_left: float, most: int) -> int | None:
    """The number of epochs in all whose last one ends within ``seconds_left`` from now, at most ``most``; None
    until this call has timed an epoch after its first (which pays for loading the data and torch.compile).

    An epoch's time is the mean gap between this call's rows' ``elapsed_seconds`` after its first (training,
    evaluation and the checkpoint writes, which --save-every spreads over several epochs), and half an epoch is kept
    for the last write and the reports."""
    elapsed = [row["elapsed_seconds"] for row in history[first_epoch:]]
    if len(elapsed) < 2:
        return None
    per_epoch = (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1)
    more = (seconds_left - per_epoch / 2) / per_epoch if per_epoch > 0 else math.inf  # --time-limit inf: no limit
    return max(len(history), len(history) + math.floor(min(more, most - len(history))))
