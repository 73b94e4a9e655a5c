"""An .onnx file's weights left on disk: a single-file model written from a graph whose weights are external data
without ever holding them all in memory, and a single-file model opened with its weights as references into the
file itself. onnx's own save and load build the whole message in Python and serialise it (two copies of a 515 MB
model at once); these read and write the protobuf wire format around the weights instead, one tensor at a time.

The wire format is protobuf's (https://protobuf.dev/programming-guides/encoding/): a field is a varint key
(number << 3 | wire type) and, for length-delimited fields (messages, bytes), a varint length then the bytes.
Parsers accept fields in any order, so the weights are written after the rest of their graph.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from vggdeploy.errors import DataError
from vggdeploy.files import atomic_path

_LENGTH_DELIMITED = 2
_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_RAW_DATA = 9  # TensorProto.raw_data
_COPY_CHUNK = 16 * 2**20
REFERENCE_FROM_BYTES = 1024  # smaller tensors stay inline: a reference costs more than it saves


def _key(field: int) -> bytes:
    return _varint((field << 3) | _LENGTH_DELIMITED)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited_size(length: int) -> int:
    """Bytes a length-delimited field of ``length`` bytes takes, key included (every key here is one byte)."""
    return 1 + len(_varint(length)) + length


# a TensorProto's serialised fields (all of them when it is inline), and where an external one's bytes are
_Tensor = tuple[bytes, "tuple[Path, int, int] | None"]


def _plan(proto: onnx.ModelProto, folder: Path) -> tuple[bytes, bytes, list[_Tensor]]:
    """What ``write_embedded`` writes: the model without its graph, the graph without its initializers, and each
    initializer in order (an inline one whole, an external one as its other fields and where its bytes are)."""
    rest = onnx.ModelProto()
    rest.CopyFrom(proto)  # small: the weights are references
    tensors: list[_Tensor] = []
    for tensor in rest.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            tensors.append((tensor.SerializeToString(), None))
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        source, offset = Path(folder) / entries["location"], int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else source.stat().st_size - offset
        tensor.ClearField("external_data")
        tensor.ClearField("data_location")
        tensors.append((tensor.SerializeToString(), (source, offset, length)))
    rest.graph.ClearField("initializer")
    graph_bytes = rest.graph.SerializeToString()
    rest.ClearField("graph")
    return rest.SerializeToString(), graph_bytes, tensors


def _tensor_size(header: bytes, external: tuple[Path, int, int] | None) -> int:
    return len(header) + (0 if external is None else _delimited_size(external[2]))


def _graph_size(graph_bytes: bytes, tensors: list[_Tensor]) -> int:
    return len(graph_bytes) + sum(_delimited_size(_tensor_size(*tensor)) for tensor in tensors)


def embedded_size(proto: onnx.ModelProto, folder: Path) -> int:
    """The bytes ``write_embedded`` writes for ``proto``, without reading a weight."""
    model_bytes, graph_bytes, tensors = _plan(proto, folder)
    return len(model_bytes) + _delimited_size(_graph_size(graph_bytes, tensors))


def write_embedded(proto: onnx.ModelProto, folder: Path, path: Path) -> None:
    """Write ``proto`` as one self-contained .onnx file (every weight inline, as onnx.save would write it), copying
    each external-data tensor from its file under ``folder`` as it goes."""
    model_bytes, graph_bytes, tensors = _plan(proto, folder)
    with atomic_path(path) as temporary, open(temporary, "wb") as out:
        out.write(model_bytes)
        out.write(_key(_MODEL_GRAPH) + _varint(_graph_size(graph_bytes, tensors)) + graph_bytes)
        for header, external in tensors:
            out.write(_key(_GRAPH_INITIALIZER) + _varint(_tensor_size(header, external)) + header)
            if external is not None:
                out.write(_key(_TENSOR_RAW_DATA) + _varint(external[2]))
                _copy_range(*external, out)


def _copy_range(source: Path, offset: int, length: int, out) -> None:
    """``length`` bytes of ``source`` from ``offset`` to the end of ``out``: by the kernel where it can
    (``os.copy_file_range``, no buffer in this process: a 16 MB one raised export's peak beside ONNX Runtime's
    session), else ``_COPY_CHUNK`` at a time."""
    with open(source, "rb") as data:
        out.flush()
        copied = _copy_in_kernel(data.fileno(), out.fileno(), offset, length)
        data.seek(offset + copied)
        length -= copied
        while length:
            chunk = data.read(min(_COPY_CHUNK, length))
            if not chunk:
                raise DataError(f"{source}: external data ends {length:,} bytes early")
            out.write(chunk)
            length -= len(chunk)


def _copy_in_kernel(source: int, target: int, offset: int, length: int) -> int:
    """Bytes copied by ``os.copy_file_range`` (0 where the system or the file systems have none), stopping early at
    the source's end."""
    copied = 0
    with suppress(AttributeError, OSError):  # not Linux, or file systems that do not support it
        while copied < length:
            step = os.copy_file_range(source, target, length - copied, offset + copied)
            if step == 0:  # the source ended
                break
            copied += step
    return copied


def _fields(buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, where the field starts, where its value starts, where it ends) for each field."""
    position = start
    while position < end:
        field_start = position
        key, position = _read_varint(buffer, position)
        wire = key & 7
        if wire == 0:
            value_start, (_, position) = position, _read_varint(buffer, position)
        elif wire == 1 or wire == 5:
            value_start, position = position, position + (8 if wire == 1 else 4)
        elif wire == _LENGTH_DELIMITED:
            length, value_start = _read_varint(buffer, position)
            position = value_start + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if position > end:
            raise ValueError("a field runs past the end of its message")
        yield key >> 3, wire, field_start, value_start, position


def _read_varint(buffer, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def reference_weights(path: str | Path) -> onnx.ModelProto:
    """The model in the single .onnx file ``path`` with every raw weight of at least ``REFERENCE_FROM_BYTES`` as an
    external-data reference into ``path`` itself (location, offset, length): ONNX Runtime maps those bytes from the
    file instead of reading the whole file into a message first (``create_session(..., weights_on_disk=True)``)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            return _referenced_model(buffer, path.name)
    except IndexError:
        reason = "it ends inside a field"
    except (ValueError, DecodeError) as error:
        reason = str(error)
    raise DataError(f"{path}: not an ONNX model ({reason})")


def _referenced_model(buffer, name: str) -> onnx.ModelProto:
    model_rest, graph_rest, referenced = bytearray(), bytearray(), []
    graphs = []
    for field, wire, field_start, value_start, end in _fields(buffer, 0, len(buffer)):
        if field == _MODEL_GRAPH and wire == _LENGTH_DELIMITED:
            graphs.append((value_start, end))
        else:
            model_rest += buffer[field_start:end]
    for graph_start, graph_end in graphs:  # repeated occurrences of a message field merge: their fields concatenate
        for field, wire, field_start, value_start, end in _fields(buffer, graph_start, graph_end):
            tensor = None
            if field == _GRAPH_INITIALIZER and wire == _LENGTH_DELIMITED:
                tensor = _tensor_reference(buffer, value_start, end, name)
            if tensor is None:
                graph_rest += buffer[field_start:end]
            else:
                referenced.append(tensor)
    model = onnx.ModelProto.FromString(bytes(model_rest))
    model.graph.ParseFromString(bytes(graph_rest))
    model.graph.initializer.extend(referenced)
    return model


def _tensor_reference(buffer, start: int, end: int, name: str) -> onnx.TensorProto | None:
    header, raw = bytearray(), None
    for field, wire, field_start, value_start, field_end in _fields(buffer, start, end):
        if field == _TENSOR_RAW_DATA and wire == _LENGTH_DELIMITED:
            raw = (value_start, field_end - value_start)
        else:
            header += buffer[field_start:field_end]
    if raw is None or raw[1] < REFERENCE_FROM_BYTES:
        return None
    tensor = onnx.TensorProto.FromString(bytes(header))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", name), ("offset", raw[0]), ("length", raw[1])):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    return tensor
