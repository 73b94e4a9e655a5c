"""Which classes a model confuses: precision, recall and F1 per class, and the confusion matrix (numpy only; the
PNG through ``report``). Written by ``train`` for best.pt on the test split and by ``check`` for the deployed model.

Conventions, as scikit-learn's ``classification_report`` with ``zero_division=0``: a class never predicted has
precision 0, a class with no test image recall 0, and F1 is 0 where precision + recall is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggdeploy.plots import plot_confusion
from vggdeploy.report import markdown_table, write_json


@dataclass(frozen=True)
class PerClassReport:
    labels: tuple[str, ...]
    confusion: np.ndarray  # counts[true class, predicted class]

    @classmethod
    def of(cls, labels: Sequence[str], true: np.ndarray, predicted: np.ndarray) -> PerClassReport:
        classes = len(labels)
        counts = np.bincount(np.asarray(true) * classes + np.asarray(predicted), minlength=classes * classes)
        return cls(tuple(labels), counts.reshape(classes, classes))

    @classmethod
    def from_counts(cls, labels: Sequence[str], counts: Sequence[Sequence[int]]) -> PerClassReport:
        return cls(tuple(labels), np.asarray(counts, dtype=np.int64))

    def rows(self) -> list[dict]:
        right = np.diag(self.confusion).astype(np.float64)
        support, predicted = self.confusion.sum(axis=1), self.confusion.sum(axis=0)
        precision = np.divide(right, predicted, out=np.zeros_like(right), where=predicted > 0)
        recall = np.divide(right, support, out=np.zeros_like(right), where=support > 0)
        total = precision + recall
        f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(right), where=total > 0)
        return [
            {
                "class": label,
                "images": int(support[i]),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
            }
            for i, label in enumerate(self.labels)
        ]

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.confusion.sum(), 1))

    @property
    def macro_f1(self) -> float:
        return float(np.mean([row["f1"] for row in self.rows()]))

    def most_confused(self, count: int = 3) -> list[tuple[str, str, int]]:
        """The largest off-diagonal cells: (true class, predicted class, images), most first."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(off, axis=None, kind="stable")[::-1][:count]
        cells = [np.unravel_index(index, off.shape) for index in order]
        return [(self.labels[t], self.labels[p], int(off[t, p])) for t, p in cells if off[t, p] > 0]

    def to_dict(self) -> dict:
        return {
            "images": int(self.confusion.sum()),
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "classes": self.rows(),
            "confusion": {
                "rows": "true class",
                "columns": "predicted class",
                "labels": list(self.labels),
                "counts": self.confusion.tolist(),
            },
        }

    def markdown(self) -> str:
        return markdown_table(self.rows(), ["class", "images", "precision", "recall", "f1"])

    def write(self, json_path: Path, png_path: Path, title: str) -> None:
        write_json(json_path, self.to_dict())
        plot_confusion(png_path, self.confusion, self.labels, title)
