"""An exported .onnx file as a file: its vggdeploy metadata (after refusing external-data paths that escape the
model's folder) and a human-readable description. onnx and the standard library only: no session is created."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vggdeploy.deploy.contract import decode_metadata
from vggdeploy.errors import DataError


def _tensors(graph) -> Iterator:
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _tensors(subgraph)


def check_external_data(proto, path: Path) -> None:
    """Refuse external-data references that would read files outside the model's own folder."""
    folder = path.resolve().parent
    for tensor in _tensors(proto.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                target = (folder / entry.value).resolve()
                if Path(entry.value).is_absolute() or not target.is_relative_to(folder):
                    raise DataError(
                        f"{path}: tensor {tensor.name!r} points at external data outside the model's folder ({entry.value})"
                    )


def require_model_file(path: str | Path) -> Path:
    """``path`` as a Path, or a one-line DataError when no such file exists (before anything is written for it)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such model file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file, so not a model file")
    if path.stat().st_size == 0:  # an empty protobuf parses as a model with nothing in it: "no vggdeploy metadata"
        raise DataError(f"{path}: empty file (0 bytes), not a model (an interrupted copy or download?)")
    return path


def read_metadata(path: str | Path) -> dict:
    """The decoded vggdeploy metadata of an .onnx file, after checking the file's external-data references. The
    weights are left on disk (read whole, a 515 MB model's file took 0.6 GB for a moment)."""
    from vggdeploy.deploy.weights_on_disk import reference_weights

    path = require_model_file(path)
    proto = reference_weights(path)
    check_external_data(proto, path)
    return decode_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


def describe_onnx(path: str | Path) -> str:
    """Human-readable summary of an exported model: metadata, inputs, outputs, opset, size."""
    import json

    import onnx

    path = Path(path)
    metadata = read_metadata(path)
    proto = onnx.load(str(path), load_external_data=False)

    def shape(value_info) -> str:
        dims = value_info.type.tensor_type.shape.dim
        return "x".join(d.dim_param or str(d.dim_value) for d in dims)

    dtype = lambda v: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
    lines = [
        f"{path} ({path.stat().st_size / 1e6:.2f} MB, opset {proto.opset_import[0].version}, IR {proto.ir_version})"
    ]
    lines += [f"  input  {v.name}: {dtype(v)} {shape(v)}" for v in proto.graph.input]
    lines += [f"  output {v.name}: {dtype(v)} {shape(v)}" for v in proto.graph.output]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in metadata.items()]
    return "\n".join(lines)
