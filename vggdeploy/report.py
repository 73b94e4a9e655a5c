"""Reports under artifacts/: JSON, JSON lines, markdown tables and PNG plots (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from vggdeploy.checkpoint import atomic_path


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_training_curves(path: Path, history: Sequence[dict], title: str) -> None:
    """Loss and accuracy per epoch, like the seeds' plots."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss")
    loss_axis.plot(epochs, [row["test_loss"] for row in history], marker="o", label="test loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.legend()
    accuracy_axis.plot(epochs, [row["train_accuracy"] for row in history], marker="o", label="train accuracy")
    accuracy_axis.plot(epochs, [row["test_accuracy"] for row in history], marker="o", label="test accuracy")
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
