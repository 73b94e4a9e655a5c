"""What a run's checkpoints hold and how they are chosen: the state written, best.pt's epoch (one-standard-error
rule), --resume's settings, and what is intact after a full disk."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vggdeploy.artifacts import RunFolder
from vggdeploy.config import TrainConfig
from vggdeploy.errors import (
    ResourceExhausted,
    UsageError,
)
from vggdeploy.model.checkpoint import load_checkpoint


def saved_config(out_dir: str | Path) -> TrainConfig:
    """The settings ``last.pt`` in ``out_dir`` was trained with (``--resume`` continues with them)."""
    path = RunFolder(out_dir).last_checkpoint
    if not path.is_file():
        raise UsageError(f"--resume: no checkpoint to resume at {path}")
    return TrainConfig.from_dict(load_checkpoint(path, mmap=True)["train_config"])


def resume_state(out_dir: Path, config: TrainConfig) -> dict | None:
    """The state to continue from. Only ``epochs``, the device and ``save_every`` may differ from the saved settings:
    a larger ``epochs`` extends the run, with the learning-rate schedule re-planned for the new total."""
    path = RunFolder(out_dir).last_checkpoint
    saved = saved_config(out_dir)
    state = load_checkpoint(path)
    differing = [
        k
        for k, v in config.to_dict().items()
        if k not in ("device", "epochs", "save_every") and saved.to_dict()[k] != v
    ]
    if differing:
        raise UsageError(
            f"--resume: {path} was trained with other settings ({', '.join(differing)}); use the same ones"
        )
    finished = len(state["metrics"])
    if config.epochs < finished or (config.epochs == finished and not state.get("in_progress")):
        raise UsageError(
            f"--resume: {path} has finished {finished} epoch{'s' * (finished != 1)}; pass --epochs N with N > {finished} to train on"
        )
    return state


def checkpoint_state(
    model, optimizer, config: TrainConfig, history: list[dict], provenance: dict, confusion=None
) -> dict:
    """A checkpoint's content as of now: copies, so a state kept for a later write does not change with training."""
    return {
        "model_args": config.model.to_dict(),
        "model_state": {  # in the standard layout, whatever the layout trained in
            k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for k, v in model.state_dict().items()
        },
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "train_config": config.to_dict(),
        "epoch": len(history),
        "metrics": list(history),
        "test_accuracy": history[-1]["test_accuracy"] if history else None,
        "validation_accuracy": history[-1].get("validation_accuracy") if history else None,
        "test_confusion": confusion,  # [true][predicted] counts of the epoch's test images
        **provenance,
    }


def selected_epoch(history: list[dict]) -> dict:
    """The epoch best.pt holds, chosen on the validation slice (held-out training images), never on the test split:
    the latest epoch whose validation accuracy is within one standard error of the best one (the one-standard-error
    rule). On a slice of a few dozen images the best accuracy is mostly noise (a 10-image slice chose an epoch 7.6 pp
    worse on the test split than the last, annealed one); on 5,000 images the error is about 0.4 pp. Without a
    validation slice (``--calibration-holdout 0``), the last epoch."""
    validated = [row for row in history if row.get("validation_accuracy") is not None]
    if not validated:
        return history[-1]
    best = max(validated, key=lambda row: row["validation_accuracy"])
    accuracy, images = best["validation_accuracy"], best.get("validation_images") or 1
    standard_error = math.sqrt(accuracy * (1 - accuracy) / images)
    return next(row for row in reversed(validated) if row["validation_accuracy"] >= accuracy - standard_error)


def without_optimizer(state: dict) -> dict:
    """best.pt's content: a checkpoint state less the optimizer's (it is for export, not for --resume)."""
    return {k: v for k, v in state.items() if k != "optimizer_state"}


@contextmanager
def keeping_what_was_saved(out_dir: Path) -> Iterator[None]:
    """A full disk stops training with a message that also says which checkpoints are intact and how to go on."""
    try:
        yield
    except ResourceExhausted as error:
        raise ResourceExhausted(f"{error}; {intact_checkpoints(out_dir)}") from None


def intact_checkpoints(out_dir: Path) -> str:
    """Which checkpoints on disk are whole, and from which epoch (atomic writes never leave a partial one)."""
    folder = RunFolder(out_dir)
    kept = [
        f"{path.name} from epoch {load_checkpoint(path, mmap=True)['epoch']}"
        for path in (folder.last_checkpoint, folder.best_checkpoint)
        if path.is_file()
    ]
    if not kept:
        return "no checkpoint had been written yet: free some space and train again"
    return f"{' and '.join(kept)} {'are' if len(kept) > 1 else 'is'} intact: free some space and continue with --resume"
