"""Golden vectors beside an exported model: a few test images as PNG with the logits and probabilities a consumer in
any language must reproduce from them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vggdeploy.config import ExportConfig
from vggdeploy.data.dataset import Dataset
from vggdeploy.deploy.contract import probabilities
from vggdeploy.deploy.preprocess import PreprocessSpec, decode_image, to_model_input
from vggdeploy.export.calibrate import Calibration
from vggdeploy.files import atomic_path
from vggdeploy.report import write_json


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (N, H, W, 3), the layout decoders give; gray (N, H, W) stays."""
    return images.permute(0, 2, 3, 1).contiguous() if images.dim() == 4 else images


def write_golden_vectors(
    folder: Path,
    session,
    dataset: Dataset,
    spec: PreprocessSpec,
    config: ExportConfig,
    calibration: Calibration,
    threshold: float | None,
) -> None:
    """The first test image of each class (up to ``count``) as PNG, with the logits this model gives for it and
    the probabilities softmax(logits / temperature) a consumer must print (the export's calibration temperature);
    for a model with the familiarity output (``threshold``), its score and flag too.

    The logits are computed from the PNG file through ``preprocess.py``, exactly as a consumer would.
    """
    folder.mkdir(parents=True, exist_ok=True)
    temperature = calibration.temperature
    labels, names = dataset.test_labels.numpy(), dataset.class_names
    picks = [int(np.flatnonzero(labels == c)[0]) for c in range(len(names))][: config.golden_images]
    entries = []
    for index in picks:
        name = f"test{index:05d}.png"
        buffer = io.BytesIO()
        Image.fromarray(channels_last(dataset.test_images[index : index + 1])[0].numpy()).save(buffer, format="PNG")
        write_bytes_atomic(folder / name, buffer.getvalue())
        model_input = to_model_input([decode_image(buffer.getvalue(), spec.color)], spec)
        outputs = session.run(None, {session.get_inputs()[0].name: model_input})
        logits = outputs[0][0]
        scored = {}
        if threshold is not None:
            scored = {"familiarity": float(outputs[1][0]), "unfamiliar": bool(outputs[1][0] < threshold)}
        entries.append(
            {
                "file": name,
                "test_index": index,
                "label": int(labels[index]),
                "label_name": names[labels[index]],
                "predicted": int(logits.argmax()),
                "logits": [float(v) for v in logits],
                "probabilities": [float(v) for v in probabilities(logits[None].astype(np.float64), temperature)[0]],
                **scored,
            }
        )
    tolerance = {
        "logits_atol": config.golden_atol,
        # softmax moves a probability by at most half the largest logit change, divided by the temperature
        "probabilities_atol": config.golden_atol / (2 * temperature),
    }
    if threshold is not None:
        tolerance["familiarity_atol"] = config.golden_atol
    write_json(
        folder / "golden.json",
        {
            "temperature": temperature,
            "calibrated": calibration.fitted,
            "probabilities": "softmax(logits / temperature)",
            "familiarity_threshold": threshold,
            "tolerance": tolerance,
            "images": entries,
        },
    )


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
