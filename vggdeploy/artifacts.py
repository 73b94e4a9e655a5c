"""Where every output lives: the one definition of the artifact layout (no torch; ``run`` uses it too).

    artifacts/<model-name>/          a run folder (``train --out`` picks another)
      checkpoints/last.pt, best.pt   written by train
      train/metrics.jsonl, curves.png, summary.json, per_class.json, confusion.png
      onnx/model.onnx                written by export (``export --out`` picks another folder)
      onnx/model.{fp16,int8,preprocess}.onnx, onnx/golden/, onnx/export_report.{json,md}, onnx/reliability.png
      onnx/reports/                  check.*, per_class.json, confusion.png, and bench.*

Every stage asks this module for a path instead of joining path fragments itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vggdeploy.errors import DataError, UsageError
from vggdeploy.files import newest

ROOT = Path("artifacts")


MODEL_FILE = "model.onnx"


VARIANTS = ("fp16", "int8", "preprocess")


PER_CLASS_JSON, CONFUSION_PNG = "per_class.json", "confusion.png"  # in train/ and in an export's reports/


@dataclass(frozen=True)
class RunFolder:
    """One model's folder: its checkpoints, training reports and exports."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # accept the str a CLI option gives

    @classmethod
    def for_model(cls, model_name: str, root: str | Path = ROOT) -> RunFolder:
        return cls(Path(root) / model_name)

    @classmethod
    def numbered(cls, model_name: str, root: str | Path = ROOT) -> list[RunFolder]:
        """``<root>/<name>``, ``<name>-2``, ``<name>-3``, ...: the folders of the runs of one model so far, in order,
        each holding a checkpoint; gaps end the list."""
        folders = []
        for number in range(1, 10_000):
            folder = cls.for_model(model_name if number == 1 else f"{model_name}-{number}", root)
            if not folder.holds_a_run():
                return folders
            folders.append(folder)
        return folders

    @classmethod
    def for_training(
        cls,
        model_name: str,
        out: str | Path | None = None,
        resume: bool = False,
        overwrite: bool = False,
        root: str | Path = ROOT,
    ) -> RunFolder:
        """Where ``train`` writes. A new run never replaces an earlier one unasked: without ``--out`` it takes the
        next free ``<name>-N`` (the Ultralytics habit), with an ``--out`` that holds a run it is refused, naming
        ``--resume`` and ``--overwrite``. ``--resume`` without ``--out`` continues the newest run of the model."""
        if out is not None:
            folder = cls(out)
            if folder.holds_a_run() and not (resume or overwrite):
                raise UsageError(
                    f"--out {folder.path} holds an earlier run: --resume continues it, --overwrite replaces it, or "
                    "choose another --out"
                )
            return folder
        earlier = cls.numbered(model_name, root)
        if resume and earlier:
            return earlier[-1]
        if overwrite or not earlier:
            return cls.for_model(model_name, root)
        return cls.for_model(f"{model_name}-{len(earlier) + 1}", root)

    def holds_a_run(self) -> bool:
        """Whether train wrote a checkpoint here."""
        return self.last_checkpoint.is_file() or self.best_checkpoint.is_file()

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        """``<run>/checkpoints/best.pt`` -> ``<run>``."""
        return cls(Path(checkpoint).parent.parent)

    @classmethod
    def of_model(cls, model_path: str | Path) -> RunFolder:
        """``<run>/onnx/model.onnx`` -> ``<run>``."""
        return cls(Path(model_path).parent.parent)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def train_reports(self) -> Path:
        return self.path / "train"

    @property
    def metrics(self) -> Path:
        return self.train_reports / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.train_reports / "curves.png"

    @property
    def summary(self) -> Path:
        return self.train_reports / "summary.json"

    @property
    def per_class(self) -> Path:
        """best.pt's precision, recall and F1 per class and confusion matrix on the test split (JSON)."""
        return self.train_reports / PER_CLASS_JSON

    @property
    def confusion(self) -> Path:
        return self.train_reports / CONFUSION_PNG

    @property
    def onnx(self) -> Path:
        return self.path / "onnx"


def model_file(onnx_folder: str | Path, variant: str = "fp32") -> Path:
    """``model.onnx`` for fp32, ``model.<variant>.onnx`` for fp16, int8 and preprocess."""
    if variant != "fp32" and variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r} (valid: fp32, {', '.join(VARIANTS)})")
    return Path(onnx_folder) / (MODEL_FILE if variant == "fp32" else f"model.{variant}.onnx")


def sibling(model_path: str | Path, variant: str) -> Path:
    """The same export's ``variant`` file, beside ``model_path``."""
    return model_file(Path(model_path).parent, variant)


def golden_folder(onnx_folder: str | Path) -> Path:
    return Path(onnx_folder) / "golden"


def familiarity_fit(onnx_folder: str | Path) -> Path:
    """The familiarity score's fitted arrays, which ``check`` puts on the torch model to compare its flags."""
    return Path(onnx_folder) / "familiarity_fit.npz"


def reliability_diagram(onnx_folder: str | Path) -> Path:
    """Export's before/after calibration plot of the test set."""
    return Path(onnx_folder) / "reliability.png"


def reports_folder(model_path: str | Path) -> Path:
    """Where check and bench write about a model: ``reports/`` beside it."""
    return Path(model_path).parent / "reports"


def export_report(onnx_folder: str | Path, suffix: str) -> Path:
    """``export_report.json`` or ``.md``: what export measured on the way."""
    return Path(onnx_folder) / f"export_report.{suffix}"


def export_folder_entries() -> frozenset[str]:
    """The names export writes into its folder, and check and bench beside a model: all that a re-export replaces."""
    here = Path(".")
    models = [model_file(here, variant) for variant in ("fp32", *VARIANTS)]
    others = [golden_folder(here), reliability_diagram(here), familiarity_fit(here), reports_folder(models[0])]
    return frozenset(path.name for path in [*models, *others, export_report(here, "json"), export_report(here, "md")])


def latest_model(root: str | Path = ROOT) -> Path:
    """The most recently exported ``model.onnx`` under ``root``."""
    candidates = newest(root, str(model_file(RunFolder(Path("*")).onnx)))
    if not candidates:
        raise UsageError(f"no exported model under {root}/ (run 'vggdeploy export', or pass --model)")
    return candidates[0]


def checkpoint_beside(model_path: str | Path) -> Path:
    """The torch reference of an export: ``<run>/checkpoints/best.pt`` for ``<run>/onnx/model.onnx``."""
    path = RunFolder.of_model(model_path).best_checkpoint
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}; pass --checkpoint")
    return path


def find_checkpoint(arch: str, root: str | Path = ROOT) -> Path:
    """The most recent ``best.pt`` under ``root`` whose model is the architecture ``arch`` names (``A``: VGG-11 with or
    without batch norm; ``vgg11``: without; ``vgg11_bn``: with)."""
    from vggdeploy.model.archs import arch_mismatch
    from vggdeploy.model.checkpoint import load_checkpoint

    for path in newest(root, str(RunFolder(Path("*")).best_checkpoint)):
        try:
            if not arch_mismatch(load_checkpoint(path, mmap=True)["model_args"], arch):  # mmap: weights not read
                return path
        except DataError:
            continue
    raise UsageError(f"no trained checkpoint for architecture {arch} under {root}/ (train one, or pass --checkpoint)")
