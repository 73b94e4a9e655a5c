"""The default training recipe sized to the data: batch size, epochs and learning rate from the number of training
images, so that a folder of a few hundred images trains as well as Fashion-MNIST's 55,000 do.

A preset's recipe is written for Fashion-MNIST (quick: batch 256 for 10 epochs, 2,140 optimizer steps). On 1,080
images the same settings are 40 steps, and the model ends near chance. The rule plans the run in optimizer steps
instead: the batch halves until an epoch has ``MIN_STEPS_PER_EPOCH`` steps, the epochs grow until the run has
``MIN_STEPS`` steps, and the learning rate goes with the square root of the batch (lr x sqrt(batch / preset batch)).
On a set as large as Fashion-MNIST the preset's values come out unchanged. Settings the user gave are kept as given;
when they leave the run too few steps, ``too_few_steps`` says so and names the settings the rule would take.

Measured with ``scripts/recipe_benchmark.py`` (BENCHMARKS.md, "Own images: the recipe sized to the data"): on 270
colour Fashion-MNIST images, batch 8 for 46 epochs at the preset's rate per image (a first rule: 32 steps an epoch,
linear scaling) reached 43.6 %, batch 32 for 188 epochs 45.4 % at that rate, 47.4 % at the square-root rate and
51.4 % at four times the rate per image; on 90 images batch 8 gave 32.4 % at the linear rate and 32.2 % at the
square-root one. More passes over a small set, in larger batches at a higher rate per image, is what helped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vggdeploy.config import PRESETS

MIN_STEPS_PER_EPOCH = 8  # the batch halves until an epoch has at least this many optimizer steps


SMALLEST_BATCH = 8  # ... but not below this: BatchNorm's batch statistics need a few images


MIN_STEPS = 1500  # the epochs grow until the whole run has at least this many optimizer steps


MOST_EPOCHS = 300  # a bound on the epochs the rule plans (a handful of images per class)


SIZED_FIELDS = ("batch_size", "epochs", "lr")  # what the rule sets when the user leaves it out


@dataclass(frozen=True)
class Recipe:
    """The batch size, epochs and peak learning rate of a run on ``images`` training images (per process)."""

    images: int
    batch_size: int
    epochs: int
    lr: float
    given: tuple[str, ...] = ()  # the fields the user set (kept as given); the others follow from the data

    @property
    def steps(self) -> int:
        return self.images // self.batch_size * self.epochs

    def format(self) -> str:
        """The plan in one line, e.g. ``1,080 training images: batch 32, 47 epochs, 1,551 steps, lr 0.025``."""
        sized = [name for name in SIZED_FIELDS if name not in self.given]
        how = f"{', '.join(FLAG_NAMES[name] for name in sized)} sized to the data" if sized else "as given"
        return (
            f"{self.images:,} training images: batch {self.batch_size}, {self.epochs} epoch{'s' * (self.epochs != 1)}, "
            f"{self.steps:,} steps, lr {self.lr:.3g} ({how})"
        )


FLAG_NAMES = {"batch_size": "batch", "epochs": "epochs", "lr": "lr"}


def size_to_data(images: int, preset: Recipe, given: dict[str, float] | None = None) -> Recipe:
    """The recipe for ``images`` training images from a preset's batch size, epochs and rate (``preset``, whose
    ``images`` is not read); each value in ``given`` (by field name) is kept as the user set it."""
    given = {name: value for name, value in (given or {}).items() if value is not None}
    if images < 1:
        raise ValueError("a recipe needs at least one training image")
    batch = int(given.get("batch_size", 0))
    if not batch:
        batch = preset.batch_size
        while batch > SMALLEST_BATCH and images // batch < MIN_STEPS_PER_EPOCH:
            batch //= 2
        batch = min(batch, images)
    epochs = int(given.get("epochs", 0))
    if not epochs:
        needed = math.ceil(MIN_STEPS / max(images // batch, 1))
        epochs = max(preset.epochs, min(needed, MOST_EPOCHS))
    lr = given.get("lr", preset.lr * math.sqrt(batch / preset.batch_size))
    return Recipe(images, batch, epochs, lr, tuple(name for name in SIZED_FIELDS if name in given))


def too_few_steps(recipe: Recipe, preset: Recipe) -> str | None:
    """When the batch size or epochs the user gave leave fewer than ``MIN_STEPS`` steps: the warning, with what the
    rule would take instead."""
    if recipe.steps >= MIN_STEPS or not {"batch_size", "epochs"} & set(recipe.given):
        return None
    default = size_to_data(recipe.images, preset)
    return (
        f"{recipe.steps:,} optimizer steps on {recipe.images:,} training images are few (the default plans at least "
        f"{min(default.steps, MIN_STEPS):,}; a small set trained so can end near chance): e.g. --batch-size "
        f"{default.batch_size} --epochs {default.epochs} --lr {default.lr:.3g}, or leave them out"
    )


def shown_defaults(name: str) -> dict[str, str]:
    """``train --help``'s defaults: the values a plain run with preset ``name`` takes, by option name; the batch size,
    epochs and rate as the recipe sizes them (``recipe``)."""
    from vggdeploy.train.recipe import MIN_STEPS, MIN_STEPS_PER_EPOCH, SMALLEST_BATCH

    config = PRESETS[name]
    model = config.model
    return {
        "arch": model.arch,
        "batch_norm": "on" if model.batch_norm else "off",
        "width_ratio": str(model.width_ratio),
        "hidden": str(model.hidden),
        "dropout": f"{model.dropout:g}",
        "image_size": str(model.image_size),
        "epochs": f"{config.epochs}, more on a small set: at least {MIN_STEPS:,} steps in all",
        "batch_size": f"{config.batch_size}, halved on a small set until an epoch has {MIN_STEPS_PER_EPOCH} steps "
        f"(not below {SMALLEST_BATCH})",
        "lr": f"{config.lr:g} at batch {config.batch_size}, times the square root of batch / {config.batch_size}",
        "seed": str(config.seed),
        "calibration_holdout": f"{config.calibration_holdout:,}, at most a tenth of the training images",
        "compile_model": "on" if config.compile else "off",
        "precision": config.precision,
        "save_every": str(config.save_every),
        "test_fraction": f"{config.test_fraction:g}",
        "color": config.color,
        "device": config.device,
    }
