"""A ``vggdeploy train`` command line turned into a run: which settings (the preset, or the saved run on
``--resume``, with the flags given on top), which run folder, and the rules the flags must keep together.
The CLI parses the options; this module decides what they mean."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vggdeploy.artifacts import RunFolder
from vggdeploy.config import TrainConfig, preset
from vggdeploy.errors import UsageError
from vggdeploy.model.archs import model_args_from_options

OWN_IMAGE_OPTIONS = {  # train options that mean nothing for Fashion-MNIST, and why
    "test_fraction": "Fashion-MNIST comes with its own test split",
    "color": "Fashion-MNIST is grayscale",
    "strict": "Fashion-MNIST is read from its IDX files, not image files",
}


@dataclass(frozen=True)
class TrainRequest:
    """What to train, where, and from which recipe."""

    config: TrainConfig
    folder: RunFolder
    recipe_of: TrainConfig  # the preset (or the saved run's settings) whose recipe is sized to the data
    given: tuple[str, ...]  # the config fields set on the command line (the recipe sizes only the others)
    note: str = ""  # a line for stderr when the run goes to another folder than the model's usual one


def is_main_process() -> bool:
    """Whether this process speaks for the run: always, except ranks other than 0 under torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def plan_training(
    preset_name: str | None,
    model_options: dict,
    overrides: dict,
    out: str | None,
    resume: bool,
    overwrite: bool,
    data_dir: str | None,
    cuda_available: bool,
) -> TrainRequest:
    """The run a command line asks for. ``model_options``: the architecture flags (None where not given);
    ``overrides``: the TrainConfig fields the other flags set (None where not given), ``data`` among them."""
    if resume and overwrite:
        raise UsageError("--resume continues the run in the folder and --overwrite replaces it: give one")
    overrides = dict(overrides)
    wrong = [
        f"--{key.replace('_', '-')} ({why})" for key, why in OWN_IMAGE_OPTIONS.items() if overrides.get(key) is not None
    ]
    if overrides.get("data") is None and wrong:
        raise UsageError(f"{'; '.join(wrong)}: for a folder of your own images only (--data DIR)")
    if overrides.get("data") is not None and data_dir is not None:
        raise UsageError("--data-dir: the Fashion-MNIST folder, which a run on your own images (--data) does not read")
    base = preset(preset_name, cuda_available)
    name = model_args_from_options(base.model.to_dict(), **model_options).name
    if overrides.get("data"):  # own images: the folder's name keeps their runs apart from Fashion-MNIST's
        overrides["data"] = str(Path(overrides["data"]).resolve())  # --resume works from any directory
        name = f"{Path(overrides['data']).name}-{name}"
    folder = RunFolder.for_training(name, out, resume, overwrite)
    usual = RunFolder.for_model(name).path
    note = ""
    if out is None and not resume and folder.path != usual:
        note = f"vggdeploy: {usual} holds an earlier run; this one goes to {folder.path}"
    if resume:  # the saved run's settings, not the preset's; flags given still override (a larger --epochs extends)
        from vggdeploy.train.checkpoints import saved_config  # torch, needed only here: other runs check flags at once

        base = saved_config(folder.path)
    model = model_args_from_options(base.model.to_dict(), **model_options)
    config = base.with_overrides(model=model, **overrides)
    given = tuple(key for key, value in overrides.items() if value is not None)
    return TrainRequest(config, folder, base, given, note)
