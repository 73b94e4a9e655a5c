"""Reports under artifacts/: JSON, JSON lines, markdown tables and PNG plots (matplotlib, headless)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from vggdeploy.files import atomic_path


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
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        return str(value).replace("|", "\\|")  # a bare | would split the cell

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
    _save_figure(figure, path)


def plot_accuracy_against_time(path: Path, history: Sequence[dict], title: str) -> None:
    """Test accuracy against wall time (``elapsed_seconds`` of each epoch): what a time budget buys."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(
        [row["elapsed_seconds"] / 60 for row in history], [row["test_accuracy"] * 100 for row in history], marker="o"
    )
    axis.set_xlabel("wall time (min)")
    axis.set_ylabel("test accuracy (%)")
    axis.grid(True, alpha=0.3)
    figure.suptitle(title)
    _save_figure(figure, path)


def _save_figure(figure, path: Path) -> None:
    from matplotlib import pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


def plot_bench(path: Path, measurements: Sequence, title: str) -> None:
    """p50 latency and throughput against batch size, one line per engine."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

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
    figure.suptitle(title)
    _save_figure(figure, path)
