"""PNG plots of the reports under artifacts/ (matplotlib on its headless Agg backend; the train extra)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from vggdeploy.files import atomic_path


def plot_training_curves(path: Path, history: Sequence[dict], title: str) -> None:
    """Loss and accuracy per epoch, like the seeds' plots."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss")
    loss_axis.plot(epochs, [row["test_loss"] for row in history], marker="o", label="test loss")
    accuracy_axis.plot(epochs, [row["train_accuracy"] for row in history], marker="o", label="train accuracy")
    accuracy_axis.plot(epochs, [row["test_accuracy"] for row in history], marker="o", label="test accuracy")
    validated = [row for row in history if row.get("validation_accuracy") is not None]
    if validated:  # the held-out slice that chooses best.pt
        at = [row["epoch"] for row in validated]
        loss_axis.plot(at, [row["validation_loss"] for row in validated], marker="o", label="validation loss")
        accuracy_axis.plot(
            at, [row["validation_accuracy"] for row in validated], marker="o", label="validation accuracy"
        )
    loss_axis.set_xlabel("epoch")
    loss_axis.legend()
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.legend()
    figure.suptitle(title)
    _save_figure(figure, path)


def plot_accuracy_against_time(path: Path, history: Sequence[dict], title: str) -> None:
    """Test accuracy against wall time (``elapsed_seconds`` of each epoch): what a time budget buys."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(
        [row["elapsed_seconds"] / 60 for row in history], [row["test_accuracy"] * 100 for row in history], marker="o"
    )
    axis.set_xlabel("wall time (min)")
    axis.set_ylabel("test accuracy (%)")
    axis.grid(True, alpha=0.3)
    figure.suptitle(title)
    _save_figure(figure, path)


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save_figure(figure, path: Path) -> None:
    from matplotlib import pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


def plot_bench(path: Path, measurements: Sequence, title: str) -> None:
    """p50 latency and throughput against batch size, one line per engine."""
    plt = _pyplot()
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(11, 4))
    for engine in dict.fromkeys(m.engine for m in measurements):
        rows = [m for m in measurements if m.engine == engine]
        latency.plot([m.batch for m in rows], [m.p50_ms for m in rows], marker="o", label=engine)
        throughput.plot([m.batch for m in rows], [m.images_per_second for m in rows], marker="o", label=engine)
    for axis, label in ((latency, "p50 latency (ms)"), (throughput, "images / s")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("batch size")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    if measurements:
        throughput.legend(fontsize=8)
    figure.suptitle(textwrap.fill(title, 110), fontsize=10)  # a device name can be a GPU's and a CPU's together
    _save_figure(figure, path)


def plot_reliability(path: Path, panels: Sequence[tuple[str, object]], title: str) -> None:
    """Reliability diagrams side by side: per confidence bin (``ReliabilityBins``), the accuracy as a bar, the share
    of images in it (orange) and the mean confidence as a red mark; on the diagonal both meet (perfect calibration).
    The ECE weighs each bin's gap by its share."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for axis, (label, bins) in zip(axes[0], panels, strict=True):
        filled = bins.counts > 0
        left, width = bins.edges[:-1][filled], (bins.edges[1:] - bins.edges[:-1])[filled]
        axis.bar(left, bins.accuracy[filled], width=width, align="edge", edgecolor="black", label="accuracy")
        share = bins.counts[filled] / bins.counts.sum()
        axis.bar(left, share, width=width, align="edge", color="orange", alpha=0.8, label="share of images")
        axis.hlines(bins.confidence[filled], left, left + width, colors="red", linewidth=2.5, label="mean confidence")
        axis.plot([0, 1], [0, 1], linestyle="--", color="gray")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence (top-1 probability)")
        axis.set_ylabel("accuracy")
        axis.set_title(label)
        axis.legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    _save_figure(figure, path)


def plot_confusion(path: Path, counts, labels: Sequence[str], title: str) -> None:
    """The confusion matrix as a heat map: true class down, predicted class across, each cell's count written in
    (beyond 30 classes only the colours)."""
    plt = _pyplot()
    classes = len(labels)
    side = min(max(5.0, 0.45 * classes + 2.5), 30.0)
    figure, axis = plt.subplots(figsize=(side, side * 0.9))
    image = axis.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="images")
    axis.set_xticks(range(classes), labels, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(range(classes), labels, fontsize=8)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if classes <= 30:
        threshold = counts.max() / 2 if counts.size else 0
        for true in range(classes):
            for predicted in range(classes):
                value = int(counts[true][predicted])
                colour = "white" if value > threshold else "black"
                axis.text(predicted, true, str(value), ha="center", va="center", fontsize=7, color=colour)
    axis.set_title(textwrap.fill(title, 80), fontsize=10)
    _save_figure(figure, path)
