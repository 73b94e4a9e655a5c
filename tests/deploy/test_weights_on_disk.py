"""The single-file model written from external weights one tensor at a time, and opened with its weights as
references into itself: the same model as onnx's own save and load give, and the same answers from ONNX Runtime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vggdeploy.deploy.session import ProviderSettings, create_session, run_session
from vggdeploy.deploy.weights_on_disk import REFERENCE_FROM_BYTES, embedded_size, reference_weights, write_embedded
from vggdeploy.errors import DataError


def small_model() -> onnx.ModelProto:
    """x @ W + b, then Reshape by a tiny int64 constant: one weight over the reference size and two under it, in an
    order that mixes them, with metadata after the graph."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 300)).astype(np.float32), "weight")  # 76,800 bytes
    bias = numpy_helper.from_array(rng.standard_normal(300).astype(np.float32)[:10], "bias")
    shape = numpy_helper.from_array(np.array([-1, 10], np.int64), "shape")
    edge = numpy_helper.from_array(np.zeros(256, np.float32), "edge")  # exactly REFERENCE_FROM_BYTES: referenced
    nodes = [
        helper.make_node("MatMul", ["x", "weight"], ["y"]),
        helper.make_node("Slice", ["y", "start", "stop", "axis"], ["z"]),
        helper.make_node("Add", ["z", "bias"], ["w"]),
        helper.make_node("Reshape", ["w", "shape"], ["out"]),
    ]
    ints = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("start", 0), ("stop", 10), ("axis", 1))]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 10])],
        [bias, weight, shape, *ints, edge],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.model_version = -1  # an int64 the wire format writes as a 10-byte varint
    helper.set_model_props(model, {"labels": "[0, 1]", "note": "metadata after the graph"})
    return model


def saved_with_external_weights(model: onnx.ModelProto, folder) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save moves the weights of the message it saves out to the file
    onnx.save(copy, str(folder / "graph.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=1024)
    return onnx.load(str(folder / "graph.onnx"), load_external_data=False)


def test_write_embedded_gives_the_model_onnx_save_would_write(tmp_path):
    model = small_model()
    graph = saved_with_external_weights(model, tmp_path)
    external = [t.name for t in graph.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert external == ["weight", "edge"]  # the mixed case: two weights on disk, the rest inline
    write_embedded(graph, tmp_path, tmp_path / "model.onnx")
    written = onnx.load(str(tmp_path / "model.onnx"))
    assert written == model  # initializers in their order, metadata, everything
    assert (tmp_path / "model.onnx").stat().st_size == embedded_size(graph, tmp_path) == model.ByteSize()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("kernel", ["none", "part, then an error", "in steps", "all"])
def test_write_embedded_copies_in_the_kernel_or_in_chunks_the_same_bytes(kernel, tmp_path, monkeypatch):
    """os.copy_file_range where the system has it (no buffer in the process), else reads: missing, failing after
    part of a tensor (file systems that do not support it), copying 7 bytes a call (no tensor's length a multiple of
    it), or all of it at once."""
    import os

    model = small_model()
    graph = saved_with_external_weights(model, tmp_path)
    real = os.copy_file_range
    calls = []

    def copying(source, target, count, offset_src=None):
        calls.append(count)
        if kernel == "part, then an error" and len(calls) > 1:
            raise OSError(18, "Invalid cross-device link")
        return real(
            source, target, count if kernel == "all" else min(count, 7 if kernel == "in steps" else 100), offset_src
        )

    if kernel == "none":
        monkeypatch.delattr(os, "copy_file_range")
    else:
        monkeypatch.setattr(os, "copy_file_range", copying)
    write_embedded(graph, tmp_path, tmp_path / "model.onnx")
    assert onnx.load(str(tmp_path / "model.onnx")) == model
    assert (tmp_path / "model.onnx").stat().st_size == model.ByteSize()
    # two weights on disk, of 76,800 and 1,024 bytes
    assert len(calls) == {"none": 0, "part, then an error": 3, "in steps": 10_972 + 147, "all": 2}[kernel]


def test_write_embedded_honours_offsets_and_reports_missing_bytes(tmp_path):
    model = small_model()
    weight = next(t for t in model.graph.initializer if t.name == "weight")
    (tmp_path / "padded.bin").write_bytes(b"\x00" * 100 + weight.raw_data + b"\xff" * 7)
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    onnx.external_data_helper.set_external_data(
        next(t for t in graph.graph.initializer if t.name == "weight"),
        "padded.bin",
        offset=100,
        length=len(weight.raw_data),
    )
    external = next(t for t in graph.graph.initializer if t.name == "weight")
    external.ClearField("raw_data")
    external.data_location = TensorProto.EXTERNAL
    write_embedded(graph, tmp_path, tmp_path / "model.onnx")
    assert onnx.load(str(tmp_path / "model.onnx")) == model
    (tmp_path / "padded.bin").write_bytes(b"\x00" * 100 + weight.raw_data[:1000])
    with pytest.raises(DataError, match=r"ends .* bytes early"):
        write_embedded(graph, tmp_path, tmp_path / "model.onnx")
    del external.external_data[2:]  # an offset and no length: to the end of the file
    assert [e.key for e in external.external_data] == ["location", "offset"]
    (tmp_path / "padded.bin").write_bytes(b"\x00" * 100 + weight.raw_data)
    write_embedded(graph, tmp_path, tmp_path / "model.onnx")
    assert onnx.load(str(tmp_path / "model.onnx")) == model


def test_write_embedded_reads_a_whole_file_where_offset_and_length_are_left_out(tmp_path):
    model = small_model()
    weight = next(t for t in model.graph.initializer if t.name == "weight")
    (tmp_path / "weight.bin").write_bytes(weight.raw_data)
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    external = next(t for t in graph.graph.initializer if t.name == "weight")
    external.ClearField("raw_data")
    external.data_location = TensorProto.EXTERNAL
    entry = external.external_data.add()
    entry.key, entry.value = "location", "weight.bin"  # the whole file, from its start
    write_embedded(graph, tmp_path, tmp_path / "model.onnx")
    assert onnx.load(str(tmp_path / "model.onnx")) == model
    assert embedded_size(graph, tmp_path) == model.ByteSize()


def test_reference_weights_points_into_the_file_and_answers_the_same(tmp_path):
    model = small_model()
    onnx.save(model, str(tmp_path / "model.onnx"))
    referenced = reference_weights(tmp_path / "model.onnx")
    by_name = {t.name: t for t in referenced.graph.initializer}
    weight = by_name["weight"]
    assert weight.data_location == TensorProto.EXTERNAL and not weight.raw_data
    entries = {e.key: e.value for e in weight.external_data}
    content = (tmp_path / "model.onnx").read_bytes()
    start, length = int(entries["offset"]), int(entries["length"])
    assert entries["location"] == "model.onnx" and length == 64 * 300 * 4 >= REFERENCE_FROM_BYTES
    np.testing.assert_array_equal(
        np.frombuffer(content[start : start + length], np.float32).reshape(64, 300),
        numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "weight")),
    )
    assert {n for n, t in by_name.items() if t.data_location == TensorProto.EXTERNAL} == {"weight", "edge"}
    assert REFERENCE_FROM_BYTES == 1024 and referenced.model_version == -1
    onnx.load_external_data_for_model(referenced, str(tmp_path))
    restored = {t.name: numpy_helper.to_array(t) for t in referenced.graph.initializer}
    assert restored.keys() == {t.name for t in model.graph.initializer}
    for tensor in model.graph.initializer:
        np.testing.assert_array_equal(restored[tensor.name], numpy_helper.to_array(tensor))
    assert referenced.metadata_props == model.metadata_props and referenced.graph.node == model.graph.node

    inputs = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    whole = create_session(tmp_path / "model.onnx", ProviderSettings(provider="cpu"))
    by_reference = create_session(tmp_path / "model.onnx", ProviderSettings(provider="cpu"), weights_on_disk=True)
    np.testing.assert_array_equal(run_session(by_reference, inputs), run_session(whole, inputs))


def test_reference_weights_of_an_exported_model_answers_bit_for_bit(tiny_export, test_split):
    result, _ = tiny_export
    from vggdeploy.deploy.preprocess import PreprocessSpec, to_model_input

    inputs = to_model_input([i.numpy() / 255.0 for i in test_split[0][:5]], PreprocessSpec(32, 32))
    referenced = reference_weights(result.model_path)
    assert sum(t.data_location == TensorProto.EXTERNAL for t in referenced.graph.initializer) >= 11  # the weights
    whole = create_session(result.model_path, ProviderSettings(provider="cpu"))
    by_reference = create_session(result.model_path, ProviderSettings(provider="cpu"), weights_on_disk=True)
    for a, b in zip(whole.run(None, {"images": inputs}), by_reference.run(None, {"images": inputs}), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x0a\xff\xff", "it ends inside a field"),
        (b"\x3a\x05\x2a\x10", "a field runs past the end of its message"),
        (b"\x0b" * 10, "unsupported protobuf wire type 3"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "a varint longer than 10 bytes"),
    ],
)
def test_reference_weights_refuses_what_is_not_a_model(content, reason, tmp_path):
    (tmp_path / "model.onnx").write_bytes(content)
    with pytest.raises(DataError) as refused:
        reference_weights(tmp_path / "model.onnx")
    assert str(refused.value) == f"{tmp_path / 'model.onnx'}: not an ONNX model ({reason})"


def test_varints_are_protobufs_own():
    from google.protobuf.internal.encoder import _VarintBytes

    from vggdeploy.deploy.weights_on_disk import _read_varint, _varint

    for value in (0, 1, 127, 128, 300, 2**14 - 1, 2**14, 2**31, 2**64 - 1):
        assert _varint(value) == _VarintBytes(value)
        assert _read_varint(b"\x00" + _VarintBytes(value), 1) == (value, 1 + len(_VarintBytes(value)))


def _field(key: bytes, value: bytes) -> bytes:
    """A length-delimited protobuf field."""
    from google.protobuf.internal.encoder import _VarintBytes

    return key + _VarintBytes(len(value)) + value


def test_fixed_width_fields_are_walked_over(tmp_path):
    """Repeated floats and doubles written unpacked (wire types 5 and 1, which parsers accept): inline tensors keep
    them, and before a weight's raw bytes they must not shift its reference."""
    model = small_model()
    floats = TensorProto(name="floats", data_type=TensorProto.FLOAT, dims=[3]).SerializeToString()
    doubles = TensorProto(name="doubles", data_type=TensorProto.DOUBLE, dims=[2]).SerializeToString()
    raw = np.arange(300, dtype=np.float32).tobytes()
    mixed = TensorProto(name="mixed", data_type=TensorProto.FLOAT, dims=[300]).SerializeToString()
    tensors = (
        floats + b"".join(b"\x25" + np.float32(v).tobytes() for v in (1.5, -2.0, 3.25)),
        doubles + b"".join(b"\x51" + np.float64(v).tobytes() for v in (0.1, 7.0)),
        mixed + b"\x25" + np.float32(1.5).tobytes() + b"\x51" + np.float64(0.1).tobytes() + _field(b"\x4a", raw),
    )
    graph = b"".join(_field(b"\x2a", tensor) for tensor in tensors)
    content = model.SerializeToString() + _field(b"\x3a", graph)  # a second graph field: parsers merge the two
    (tmp_path / "model.onnx").write_bytes(content)
    by_name = {t.name: t for t in reference_weights(tmp_path / "model.onnx").graph.initializer}
    assert list(by_name["floats"].float_data) == [1.5, -2.0, 3.25]
    assert list(by_name["doubles"].double_data) == [0.1, 7.0]
    assert by_name["weight"].data_location == by_name["mixed"].data_location == TensorProto.EXTERNAL
    entries = {e.key: e.value for e in by_name["mixed"].external_data}
    start, length = int(entries["offset"]), int(entries["length"])
    assert content[start : start + length] == raw and length == 1200


def test_a_session_with_weights_on_disk_is_given_the_references_and_their_folder(tmp_path, monkeypatch):
    import onnxruntime

    from vggdeploy.deploy.session import EXTERNAL_WEIGHTS_FOLDER_KEY

    onnx.save(small_model(), str(tmp_path / "model.onnx"))
    given = []
    real = onnxruntime.InferenceSession

    def spying(source, sess_options=None, providers=None):
        try:
            folder = sess_options.get_session_config_entry(EXTERNAL_WEIGHTS_FOLDER_KEY)
        except RuntimeError:  # not set
            folder = None
        given.append((source, folder))
        return real(source, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spying)
    create_session(tmp_path / "model.onnx", ProviderSettings(provider="cpu"), weights_on_disk=True)
    source, folder = given[0]
    weight = next(t for t in onnx.ModelProto.FromString(source).graph.initializer if t.name == "weight")
    assert weight.data_location == TensorProto.EXTERNAL and folder == str(tmp_path.resolve())
    create_session(tmp_path / "model.onnx", ProviderSettings(provider="cpu"))
    assert given[1] == (str(tmp_path / "model.onnx"), None)  # the default: ONNX Runtime reads the file itself
