"""The ``vggdeploy run`` stage: classify image files with an exported model through ONNX Runtime.

Needs only numpy, Pillow, onnx and onnxruntime (no torch). Bad files are reported by name; the rest still run.
"""

from __future__ import annotations

import glob
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from vggdeploy.deploy.contract import familiarity_threshold, is_calibrated, probabilities, temperature
from vggdeploy.deploy.preprocess import DEFAULT_MAX_PIXELS, PreprocessSpec, decode_image, to_model_input
from vggdeploy.deploy.session import LoadedModel, run_scored
from vggdeploy.deploy.walk import is_image_file, walk_folder
from vggdeploy.errors import DataError, UsageError
from vggdeploy.report import readable


@dataclass(frozen=True)
class Ranked:
    """One of the top-k classes of an image."""

    index: int  # the output column, labels[index]
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    file: str  # the path as given or found, ``readable`` (a name's bytes that are not UTF-8 as \xNN)
    top: list[Ranked]  # most likely first; probability = softmax(logits / temperature)
    logits: list[float] | None  # the model's output row; None for model.preprocess.onnx (its graph ends in softmax)
    temperature: float  # the model's calibration temperature (1 for a model without one)
    calibrated: bool  # whether that temperature was fitted on held-out images
    familiarity: float | None = None  # the model's familiarity score; None for a model without that output
    unfamiliar: bool | None = None  # familiarity < the model's threshold; None for a model without that output
    rejected: str | None = None  # --reject-unfamiliar: why the top-k is empty

    def to_dict(self) -> dict:
        """The answer every consumer gives (Node, C++, this CLI): file, top [{index, label, probability}], logits,
        calibrated, temperature, familiarity, unfamiliar (and, with --reject-unfamiliar, rejected)."""
        answer = {
            "file": self.file,
            "top": [asdict(entry) for entry in self.top],
            "logits": self.logits,
            "calibrated": self.calibrated,
            "temperature": self.temperature,
            "familiarity": self.familiarity,
            "unfamiliar": self.unfamiliar,
        }
        if self.rejected is not None:
            answer["rejected"] = self.rejected
        return answer


@dataclass
class Classification:
    model: Path
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # one line per bad file: "<file>: <problem>"
    not_finite: int = 0  # of the failures, images whose model output had a NaN or an infinity (a broken model)
    threshold: float | None = None  # the model's familiarity threshold; None for a model without that output

    def format_table(self, model_line: str) -> str:
        """``model_line`` first, then one row per image with its top-k classes in aligned columns."""
        if not self.predictions:
            return model_line
        file_width = max(len("file"), *(len(p.file) for p in self.predictions))
        label_width = max((len(entry.label) for p in self.predictions for entry in p.top), default=0)
        scored = self.predictions[0].familiarity is not None
        rows = [f"{'file':<{file_width}}  " + ("familiarity  " if scored else "") + "prediction (probability)"]
        for prediction in self.predictions:
            cells = [f"{entry.label:<{label_width}} {entry.probability:7.2%}" for entry in prediction.top]
            if prediction.rejected is not None:
                cells = [f"not classified: {prediction.rejected}"]
            score = ""
            if scored:
                score = f"{prediction.familiarity:7.2f} {'?' if prediction.unfamiliar else ' '}   "
            rows.append(f"{prediction.file:<{file_width}}  {score}" + "   ".join(cells))
        if scored and any(p.unfamiliar for p in self.predictions):
            rows.append(
                f"? unfamiliar: familiarity below the model's threshold {self.threshold:.2f}, unlike the images it "
                "was trained on: its probabilities say nothing about such an image"
            )
        return "\n".join([model_line, *rows])

    def to_dict(self) -> dict:
        return {
            "model": str(self.model),
            "predictions": [p.to_dict() for p in self.predictions],
            "errors": self.failures,
        }


def _image_files(folder: Path) -> tuple[list[Path], list[str]]:
    """Every image file under ``folder`` at any depth, sorted, hidden entries skipped (``is_hidden``); symbolic
    links to folders are not followed. Second: the folders that could not be read (``walk_folder``)."""
    entries, problems = walk_folder(folder)
    found = [Path(root) / name for root, files in entries for name in files if is_image_file(Path(root) / name, folder)]
    return sorted(found), problems


def expand_inputs(arguments: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their image files at any depth, sorted) and glob patterns (``**`` spans folders) ->
    (image paths, problems)."""
    paths: list[Path] = []
    problems: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if not argument:
            problems.append("'': an empty argument names no file")
        elif path.is_dir():
            found, unreadable = _image_files(path)
            problems += unreadable
            if not found and not unreadable:
                problems.append(f"{argument}: folder holds no image files, at any depth")
            paths += found
        elif path.exists():
            paths.append(path)
        elif glob.has_magic(argument):
            matches = sorted(Path(m) for m in glob.glob(argument, recursive=True) if Path(m).is_file())
            if not matches:
                problems.append(f"{argument}: no file matches")
            paths += matches
        else:
            problems.append(f"{argument}: no such file")
    return paths, problems


def describe_model(model: LoadedModel, provider: str) -> str:
    """The line that says which model answered: path, architecture, its test accuracy, the execution provider."""
    accuracy = model.metadata["training"].get("test_accuracy")
    trained = f", test accuracy {accuracy:.2%}" if accuracy is not None else ""
    chances = (
        f"probabilities calibrated, softmax(logits / {temperature(model.metadata):.4g})"
        if is_calibrated(model.metadata)
        else "probabilities uncalibrated, plain softmax"
    )
    return (
        f"model: {model.path} ({model.metadata['model']['name']}{trained}; {chances}; onnxruntime {provider.upper()})"
    )


def classify(
    model: LoadedModel,
    arguments: list[str],
    top_k: int = 3,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reject_unfamiliar: bool = False,
) -> Classification:
    """Classify every image the arguments name, ``batch_size`` at a time; ``reject_unfamiliar``: no top-k for an
    image the model flags as unlike its training images, and why."""
    if min(top_k, batch_size, max_pixels) < 1:
        raise UsageError("--top-k, --batch-size and --max-pixels must be at least 1")
    threshold = familiarity_threshold(model.metadata)
    if reject_unfamiliar and threshold is None:
        raise UsageError(
            f"--reject-unfamiliar: {model.path} has no familiarity output (exported before it existed, with "
            "--no-familiarity, or from a checkpoint without a held-out slice); export it again"
        )
    paths, problems = expand_inputs(arguments)
    result = Classification(model.path, failures=problems, threshold=threshold)
    spec = PreprocessSpec.from_metadata(model.metadata["preprocessing"])
    labels, scale, calibrated = model.labels, temperature(model.metadata), is_calibrated(model.metadata)
    for start in range(0, len(paths), batch_size):
        decoded: list[tuple[Path, np.ndarray]] = []
        for path in paths[start : start + batch_size]:
            try:
                decoded.append((path, decode_image(path, spec.color, max_pixels)))
            except DataError as error:
                result.failures.append(str(error))
        if not decoded:
            continue
        logits, chances, scores = _outputs(model, [image for _, image in decoded], spec, scale)
        for row, ((path, _), probability) in enumerate(zip(decoded, chances, strict=True)):
            if not (np.isfinite(probability).all() and (logits is None or np.isfinite(logits[row]).all())):
                result.failures.append(f"{path}: the model's output is not finite (NaN or inf): no probabilities")
                result.not_finite += 1
                continue
            top = [Ranked(int(i), labels[i], float(probability[i])) for i in np.argsort(-probability)[:top_k]]
            row_logits = None if logits is None else logits[row].tolist()
            prediction = Prediction(readable(str(path)), top, row_logits, scale, calibrated)
            if scores is not None:
                score = float(scores[row])
                unfamiliar = not score >= threshold  # a NaN score is no evidence of familiarity
                rejected = None
                if reject_unfamiliar and unfamiliar:
                    rejected = f"unfamiliar (familiarity {score:.2f} < threshold {threshold:.2f})"
                prediction = replace(
                    prediction,
                    top=[] if rejected else top,
                    familiarity=score,
                    unfamiliar=unfamiliar,
                    rejected=rejected,
                )
            result.predictions.append(prediction)
    return result


def _outputs(
    model: LoadedModel, images: list[np.ndarray], spec: PreprocessSpec, scale: float
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(logits or None, probabilities at temperature ``scale``, familiarity scores or None) of decoded images."""
    if model.takes_raw_images:  # the graph resizes, normalises and ends in softmax(logits / T); images one by one
        as_uint8 = [np.clip(np.rint(image * 255), 0, 255).astype(np.uint8) for image in images]
        channels_last = [image.transpose(1, 2, 0) if image.ndim == 3 else image for image in as_uint8]
        answers = [run_scored(model.session, image[None]) for image in channels_last]
        scores = None if answers[0][1] is None else np.concatenate([score for _, score in answers])
        return None, np.concatenate([chances for chances, _ in answers]), scores
    logits, scores = run_scored(model.session, to_model_input(images, spec))
    return logits, probabilities(logits.astype(np.float64), scale), scores
