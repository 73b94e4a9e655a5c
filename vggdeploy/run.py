"""The ``vggdeploy run`` stage: classify image files with an exported model through ONNX Runtime.

Needs only numpy, Pillow, onnx and onnxruntime (no torch). Bad files are reported by name; the rest still run.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggdeploy.contract import probabilities
from vggdeploy.errors import DataError, UsageError
from vggdeploy.graph import run_session
from vggdeploy.preprocess import DEFAULT_MAX_PIXELS, PreprocessSpec, decode_grayscale, to_model_input
from vggdeploy.runtime import LoadedModel

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".pgm", ".ppm"})


@dataclass(frozen=True)
class Prediction:
    file: str
    top: list[tuple[str, float]]  # (label, probability), most likely first

    def to_dict(self) -> dict:
        return {"file": self.file, "top": [{"label": label, "probability": p} for label, p in self.top]}


@dataclass
class Classification:
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # one line per bad file: "<file>: <problem>"

    def format_table(self) -> str:
        if not self.predictions:
            return ""
        width = max(len(p.file) for p in self.predictions)
        lines = [f"{'file':<{width}}  prediction"]
        for prediction in self.predictions:
            ranked = "   ".join(f"{label} {probability:6.2%}" for label, probability in prediction.top)
            lines.append(f"{prediction.file:<{width}}  {ranked}")
        return "\n".join(lines)


def expand_inputs(arguments: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their image files, sorted) and glob patterns -> (image paths, problems)."""
    paths: list[Path] = []
    problems: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                problems.append(f"{argument}: folder holds no image files")
            paths += found
        elif path.exists():
            paths.append(path)
        elif glob.has_magic(argument):
            matches = sorted(Path(m) for m in glob.glob(argument) if Path(m).is_file())
            if not matches:
                problems.append(f"{argument}: no file matches")
            paths += matches
        else:
            problems.append(f"{argument}: no such file")
    return paths, problems


def classify(
    model: LoadedModel, arguments: list[str], top_k: int = 3, batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Classification:
    """Classify every image the arguments name, ``batch_size`` at a time."""
    if top_k < 1 or batch_size < 1:
        raise UsageError("--top-k and --batch-size must be at least 1")
    paths, problems = expand_inputs(arguments)
    result = Classification(failures=problems)
    spec = PreprocessSpec.from_metadata(model.metadata["preprocessing"])
    labels = model.labels
    for start in range(0, len(paths), batch_size):
        decoded: list[tuple[Path, np.ndarray]] = []
        for path in paths[start : start + batch_size]:
            try:
                decoded.append((path, decode_grayscale(path, max_pixels)))
            except DataError as error:
                result.failures.append(str(error))
        if not decoded:
            continue
        probabilities = _probabilities(model, [gray for _, gray in decoded], spec)
        for (path, _), row in zip(decoded, probabilities, strict=True):
            order = np.argsort(-row)[:top_k]
            result.predictions.append(Prediction(str(path), [(labels[i], float(row[i])) for i in order]))
    return result


def _probabilities(model: LoadedModel, grays: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    if model.takes_raw_images:  # the graph resizes and normalises; images of different sizes go one by one
        name = model.session.get_inputs()[0].name
        as_uint8 = [np.clip(np.rint(gray * 255), 0, 255).astype(np.uint8)[None] for gray in grays]
        return np.concatenate([model.session.run(None, {name: image})[0] for image in as_uint8])
    return probabilities(run_session(model.session, to_model_input(grays, spec)))
