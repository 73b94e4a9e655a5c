"""A Triton Inference Server model repository for an exported model (config.pbtxt, labels.txt, 1/model.onnx)."""

from __future__ import annotations

import shutil
from pathlib import Path

from vggdeploy.config import ExportConfig
from vggdeploy.deploy.contract import FAMILIARITY_NAME, INPUT_NAME, OUTPUT_NAME
from vggdeploy.files import atomic_path
from vggdeploy.model.archs import ModelArgs
from vggdeploy.report import write_text

TRITON_MODEL_ENTRIES = frozenset({"config.pbtxt", "labels.txt", "1"})  # what write_triton_model writes


def triton_model_name(args: ModelArgs) -> str:
    return args.name.replace("-", "_")


def write_triton_model(
    folder: Path, model: Path, scored: bool, args: ModelArgs, config: ExportConfig, labels: tuple[str, ...]
) -> Path:
    """One model of a Triton repository: ``config.pbtxt`` (onnxruntime backend, dynamic batching), ``1/model.onnx``
    (a copy of ``model``; ``scored``: it has the familiarity output)."""
    name = triton_model_name(args)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "1" / "model.onnx") as temporary:
        shutil.copyfile(model, temporary)
    write_text(folder / "labels.txt", "\n".join(labels) + "\n")
    preferred = [size for size in (8, 32, 64, 128, config.triton_max_batch) if size <= config.triton_max_batch]
    familiarity = ""
    if scored:  # one score per image: Triton's batched shape [batch] is dims [1] reshaped to []
        familiarity = f""",
  {{
    name: "{FAMILIARITY_NAME}"
    data_type: TYPE_FP32
    dims: [ 1 ]
    reshape: {{ shape: [ ] }}
  }}"""
    write_text(
        folder / "config.pbtxt",
        f'''name: "{name}"
backend: "onnxruntime"
max_batch_size: {config.triton_max_batch}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {args.in_channels}, {args.image_size}, {args.image_size} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {args.num_classes} ]
    label_filename: "labels.txt"
  }}{familiarity}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, sorted(set(preferred))))} ]
  max_queue_delay_microseconds: 100
}}
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
''',
    )
    return folder
