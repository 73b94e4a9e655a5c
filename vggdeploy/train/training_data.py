"""The images a run trains on, put on the training device: the dataset loaded, the calibration holdout split off,
and what checkpoints record about where the images came from."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

import torch

from vggdeploy.config import TrainConfig
from vggdeploy.data.dataset import Dataset, fashion_mnist, image_folder, report_notes
from vggdeploy.data.holdout import holdout_size, stratified_holdout
from vggdeploy.deploy.preprocess import PreprocessSpec


@dataclass(frozen=True)
class TrainingData:
    """The images on the training device, and what checkpoints record about them."""

    train_images: torch.Tensor  # only these take gradient steps
    train_labels: torch.Tensor
    validation_images: torch.Tensor  # the held-out slice: chooses best.pt, and export fits the temperature on it
    validation_labels: torch.Tensor
    test_images: torch.Tensor  # only ever reported, never used to choose
    test_labels: torch.Tensor
    spec: PreprocessSpec  # the dataset's colour and normalisation at the model's size
    name: str  # of the dataset, for reports
    class_names: tuple[str, ...]
    # "data_checksums", "dataset" (how to find the images again) and "calibration_split" (the held-out indices),
    # saved in every checkpoint
    provenance: dict


def calibration_split(config: TrainConfig, labels: torch.Tensor, source: str) -> dict:
    """The training images held out for export's temperature fit: stratified, seeded by ``config.seed``, recorded
    by index into the training split as loaded (after ``train_limit``)."""
    count = holdout_size(config.calibration_holdout, len(labels))
    return {
        "source": f"{source} train split",
        "of_images": len(labels),
        "seed": config.seed,
        "indices": stratified_holdout(labels, count, config.seed),
    }


def load_dataset(config: TrainConfig, data_dir, progress: bool = True, given: Collection[str] = ()) -> Dataset:
    """Fashion-MNIST, or the folder of ``config.data`` decoded at the model's size (its notes go to stderr).
    ``given``: the settings the user gave (a ``test_fraction`` given for a folder with its own test split is refused)."""
    if config.data is None:
        return fashion_mnist(data_dir)
    dataset = image_folder(
        config.data,
        config.model.image_size,
        config.color,
        config.test_fraction,
        config.seed,
        config.strict,
        progress,
        test_fraction_given="test_fraction" in given,
    )
    report_notes(dataset)
    return dataset


def load_training_data(config: TrainConfig, dataset: Dataset, device: torch.device) -> TrainingData:
    train_images, train_labels = dataset.train_images[: config.train_limit], dataset.train_labels[: config.train_limit]
    test_images, test_labels = dataset.test_images[: config.test_limit], dataset.test_labels[: config.test_limit]
    split = calibration_split(config, train_labels, dataset.name)
    kept = torch.ones(len(train_labels), dtype=torch.bool)
    kept[split["indices"]] = False
    provenance = {
        "data_checksums": dataset.description.get("data_checksums"),
        "dataset": dataset.description,
        "calibration_split": split,
    }
    held_out = (train_images[~kept], train_labels[~kept])
    return TrainingData(
        *(t.to(device) for t in (train_images[kept], train_labels[kept], *held_out, test_images, test_labels)),
        dataset.spec(config.model.image_size),
        dataset.name,
        dataset.class_names,
        provenance,
    )


def fitted_to(config: TrainConfig, dataset: Dataset) -> TrainConfig:
    """The config with the model's input channels and classes set by the dataset."""
    model = replace(config.model, in_channels=dataset.channels, num_classes=len(dataset.class_names))
    return replace(config, model=model)
