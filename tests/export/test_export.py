import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from broken_models import add_to_class_bias
from forked_cli import script
from forked_cli import vggdeploy as cli
from PIL import Image

from vggdeploy.config import ExportConfig
from vggdeploy.data.fashion_mnist import CLASS_NAMES
from vggdeploy.deploy.contract import BATCH_AXIS, FAMILIARITY_NAME, INPUT_NAME, METADATA_KEYS, OUTPUT_NAME
from vggdeploy.deploy.cpu import cpu_vendor
from vggdeploy.deploy.onnx_file import read_metadata
from vggdeploy.deploy.preprocess import PreprocessSpec, decode_grayscale, to_model_input
from vggdeploy.deploy.session import ProviderSettings, create_session
from vggdeploy.errors import DataError, UsageError
from vggdeploy.export.variants import to_fp16
from vggdeploy.model.checkpoint import load_checkpoint


def test_dynamic_batch_survives_simplification(tiny_export, test_split):
    result, _out = tiny_export
    proto = onnx.load(str(result.model_path))
    for value in (*proto.graph.input, *proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == BATCH_AXIS
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME, FAMILIARITY_NAME]  # the second output kept by onnxsim
    session = create_session(result.model_path, ProviderSettings(provider="cpu"))
    inputs = to_model_input([i.numpy() / 255.0 for i in test_split[0][:7]], PreprocessSpec(32, 32))
    singles = np.concatenate([session.run(None, {INPUT_NAME: inputs[i : i + 1]})[0] for i in range(7)])
    for size in (1, 2, 7):
        np.testing.assert_allclose(session.run(None, {INPUT_NAME: inputs[:size]})[0], singles[:size], atol=1e-5)
    assert result.audit and result.audit.batch_sizes == (1, 2, 7, 64)
    assert result.after.nodes <= result.before.nodes and "BatchNormalization" not in result.after.ops


def test_parity_at_export_is_measured_and_recorded(tiny_export):
    result, out = tiny_export
    assert result.parity and result.parity.images == 128 and result.parity.max_abs_diff < 1e-4
    report = json.loads((out / "onnx" / "export_report.json").read_text())
    assert report["parity"]["passed"] and report["batch_audit"]["passed"]
    assert report["graph_after"]["nodes"] == result.after.nodes
    assert "| model.onnx |" in (out / "onnx" / "export_report.md").read_text()


def test_metadata_is_complete_json_and_matches_the_checkpoint(tiny_export, tiny_checkpoint):
    result, _ = tiny_export
    proto = onnx.load(str(result.model_path))
    raw = {p.key: p.value for p in proto.metadata_props}
    assert set(raw) == set(METADATA_KEYS)
    for value in raw.values():
        json.loads(value)
    metadata = read_metadata(result.model_path)
    state = load_checkpoint(tiny_checkpoint)
    assert metadata["labels"] == list(CLASS_NAMES)
    assert {k: v for k, v in metadata["model"].items() if k != "name"} == state["model_args"].to_dict()
    assert metadata["training"]["test_accuracy"] == state["test_accuracy"]
    assert metadata["preprocessing"]["resize"] == {
        "method": "bilinear",
        "coordinate_transformation": "half_pixel",
        "antialias": False,
        "height": 32,
        "width": 32,
    }
    assert metadata["export"]["opset"] == 18 and metadata["export"]["variant"] == "fp32"
    assert set(metadata["export"]["versions"]) >= {"torch", "onnx", "onnxruntime", "onnxsim"}
    assert metadata["parity"]["max_abs_diff"] == result.parity.max_abs_diff
    assert metadata["io"]["input"]["shape"] == [BATCH_AXIS, 1, 32, 32]


def test_metadata_and_reports_are_strict_json_whatever_the_file_names(tmp_path):
    """A data folder whose name is not UTF-8 once put lone surrogates (``\\udce9``) into the metadata, which the C++
    program's parser refused; a non-finite figure is null, as in every report."""
    from vggdeploy.deploy.contract import encode_metadata
    from vggdeploy.report import write_json, write_text

    latin1 = os.fsdecode(b"caf\xe9")
    values = {"training": {"dataset": latin1, latin1: float("nan")}}
    encoded = encode_metadata(values)["training"]
    assert json.loads(encoded.encode("utf-8")) == {"dataset": "caf\\xe9", "caf\\xe9": None}
    write_json(tmp_path / "report.json", values)
    write_text(tmp_path / "report.md", f"# {latin1}\n")
    assert json.loads((tmp_path / "report.json").read_bytes().decode("utf-8")) == {
        "training": {"dataset": "caf\\xe9", "caf\\xe9": None}
    }
    assert (tmp_path / "report.md").read_bytes().decode("utf-8") == "# caf\\xe9\n"


def test_fp16_variant_agrees_with_fp32(tiny_export):
    result, _ = tiny_export
    fp16 = result.variants["fp16"]
    assert fp16.parity.top1_agreement >= 0.99 and fp16.parity.max_abs_diff < 0.05
    assert fp16.bytes < 0.6 * result.model_path.stat().st_size
    fp16_metadata = read_metadata(fp16.path)
    assert fp16_metadata["export"]["variant"] == "fp16"
    # changes and their limits in percentage points, as the options and the text give them
    assert fp16_metadata["parity"]["accuracy_change_pp"] == fp16.parity.accuracy_change_pp
    assert fp16_metadata["parity"]["max_accuracy_drop_pp"] == max(ExportConfig.fp16_max_drop_pp, 100 / 300)
    proto = onnx.load(fp16.path)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O kept


def test_fp16_with_shapes_inferred_on_the_graph_alone_is_the_converters_own(tiny_export, tmp_path):
    """Export's fp16 variant infers shapes on the graph without its weights (the converter's own inference copies
    the whole model): the same fp16 model, byte for byte."""
    result, _ = tiny_export
    onnx.save(
        onnx.load(str(result.model_path)),
        str(tmp_path / "graph.onnx"),
        save_as_external_data=True,
        location="weights",
        size_threshold=0,
    )
    graph = onnx.load(str(tmp_path / "graph.onnx"), load_external_data=False)
    assert graph.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    own = to_fp16(onnx.load(str(result.model_path)))
    assert to_fp16(onnx.load(str(result.model_path)), shapes_from=graph).SerializeToString() == own.SerializeToString()


def test_int8_variant_runs_and_stays_close(tiny_export):
    result, _ = tiny_export
    int8 = result.variants["int8"]
    assert int8.parity.top1_agreement >= 0.9
    assert abs(int8.parity.accuracy_change) <= 0.02
    assert int8.cpu_batch1_ms["int8"] > 0 and "QuantizeLinear" in {n.op_type for n in onnx.load(int8.path).graph.node}
    assert f"({int8.cpu_batch1_ms['speedup']:.2f}x)" in (result.model_path.parent / "export_report.md").read_text()
    speeds = int8.cpu_batch1_ms
    assert speeds["fp32"] > 0 and speeds["speedup"] == pytest.approx(speeds["fp32"] / speeds["int8"])


def test_the_int8_weights_fit_in_7_bits_so_no_cpu_overflows_them(tiny_export):
    """Without VNNI, ONNX Runtime sums u8 x s8 products in pairs into 16 bits: 255 x (64 + 64) fits, full-range
    weights did not (saturation), and the quick model's agreement fell 99.59 % -> 99.41 % on an AVX2 CPU. The
    weights' values, not this machine's kernels, are what a deployment on another CPU gets."""
    from onnx import numpy_helper

    proto = onnx.load(str(tiny_export[0].variants["int8"].path))
    weights = [numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    quantised = [w for w in weights if w.ndim >= 2]  # the Conv and Gemm weights (biases are int32)
    assert len(quantised) == 11  # VGG-11's 8 convolutions and 3 dense layers
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in quantised) == 64


SATURATION_SCRIPT = Path(__file__).parents[2] / "scripts" / "int8_saturation.py"


@pytest.mark.slow
def test_the_saturation_script_measures_every_weight_format_with_both_sums(tiny_export, tiny_checkpoint, tmp_path):
    model, out = tiny_export[0].model_path, tmp_path / "formats.json"
    args = ["--checkpoint", str(tiny_checkpoint), "--images", "300", "--calibration-images", "64", "--json", str(out)]
    result = script(SATURATION_SCRIPT, str(model), *args)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["images"] == 300 and figures["cpu"].startswith(cpu_vendor())
    rows = {(row["weights"], row["sums"]): row for row in figures["rows"]}
    weights = ["s8 in 7 bits (the variant's)", "s8", "u8"]
    assert list(rows) == [(w, s) for w in weights for s in ("this CPU's int8 kernels", "exact (float QDQ)")]
    assert all(0.9 < row["agreement"] <= 1 and 0.6 < row["accuracy"] < 0.9 for row in rows.values())
    assert all((row["ms per 64"] is None) == (sums != "this CPU's int8 kernels") for (_, sums), row in rows.items())
    # no CPU overflows the variant's sums: its kernels answer as the exact sums do, up to a requantised near-tie
    kernels, exact = (
        rows[(weights[0], sums)]["agreement"] for sums in ("this CPU's int8 kernels", "exact (float QDQ)")
    )
    assert abs(kernels - exact) <= 1 / 300
    assert result.stdout.splitlines()[1] == "| weights | sums | agreement | accuracy | ms per 64 |"


def test_the_saturation_script_refuses_no_images_in_one_line(tmp_path):
    result = script(SATURATION_SCRIPT, str(tmp_path / "model.onnx"), "--images", "0")
    assert result.returncode == 2
    assert result.stderr == "error: --images and --calibration-images must be at least 1\n"


def test_the_variants_are_built_with_the_fp32_session_closed(tiny_checkpoint, tmp_path, data_dir, monkeypatch):
    """At 224 px the fp32 session holds 0.9 GB (its weights mapped and prepacked): the variants are compared with its
    answers, measured first, and it is gone while they are built."""
    import gc
    import weakref

    from vggdeploy.data.batches import to_input_tensor
    from vggdeploy.deploy.session import run_scored
    from vggdeploy.export import pipeline, variants

    opened, seen = [], []
    real_session, real_build = pipeline.create_session, variants.build_variants

    def session(*args, **kwargs):
        made = real_session(*args, **kwargs)
        opened.append(weakref.ref(made))
        return made

    def build(given, *args):
        gc.collect()
        seen.append([ref() is None for ref in opened])
        assert given.images.dtype == torch.uint8  # preprocessed a batch at a time, never held whole
        inputs = to_input_tensor(given.images, given.spec).numpy()
        logits, _ = run_scored(real_session(given.fp32_path, ProviderSettings(provider="cpu")), inputs, 64)
        np.testing.assert_array_equal(given.reference.logits, logits)  # the closed session's answers, kept
        assert given.reference.batch1_ms is None  # no int8: no fp32 latency measured
        return real_build(given, *args)

    monkeypatch.setattr(pipeline, "create_session", session)
    monkeypatch.setattr(variants, "build_variants", build)
    config = ExportConfig(with_preprocessing=True, parity_images=32, audit_batches=(1, 2), variant_images=64)
    result = pipeline.export_model(tiny_checkpoint, tmp_path / "onnx", config, data_dir=data_dir)
    assert seen == [[True]] and "preprocess" in result.variants


def test_preprocessing_variant_matches_python_preprocessing(tiny_export, tmp_path):
    result, out = tiny_export
    variant = result.variants["preprocess"]
    assert variant.parity.max_abs_diff < 1e-3
    metadata = read_metadata(variant.path)
    assert metadata["io"]["input"] == {**metadata["io"]["input"], "name": "images_uint8", "dtype": "uint8"}
    raw_session = create_session(variant.path, ProviderSettings(provider="cpu"))
    fp32_session = create_session(result.model_path, ProviderSettings(provider="cpu"))
    golden = sorted((out / "onnx" / "golden").glob("*.png"))[0]
    temperature = metadata["calibration"]["temperature"]
    for size in [(28, 28), (50, 37), (13, 20), (300, 200)]:  # any height and width, up- and down-sampling
        image = Image.open(golden).resize(size, Image.NEAREST)
        gray = np.asarray(image, dtype=np.uint8)
        probabilities = raw_session.run(None, {"images_uint8": gray[None]})[0]
        logits = fp32_session.run(None, {INPUT_NAME: to_model_input([gray / np.float32(255)], PreprocessSpec(32, 32))})[
            0
        ]
        expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()  # the calibrated contract
        np.testing.assert_allclose(probabilities, expected, atol=1e-4)


def test_preprocessing_resize_needs_no_shape_arithmetic_from_opset_18(tiny_export):
    """Opset 18's Resize axes keep every node GPU-placeable; older opsets compute the sizes and give the same result."""
    from vggdeploy.export.graph import familiarity_nodes
    from vggdeploy.export.variants import with_preprocessing

    result, _ = tiny_export
    variant = onnx.load(result.variants["preprocess"].path)
    preprocessing = [n for n in variant.graph.node if n.output[0].startswith("pre_")]
    assert len(preprocessing) == 5 and {"Shape", "Slice", "Concat"}.isdisjoint(n.op_type for n in preprocessing)
    fp32 = onnx.load(str(result.model_path))
    scoring = set(familiarity_nodes(fp32))  # opset 18 forms (ReduceMean's axes input): the classifier alone is older
    kept = [node for node in fp32.graph.node if node.name not in scoring]
    del fp32.graph.node[:], fp32.graph.output[1:]
    fp32.graph.node.extend(kept)
    fp32.opset_import[0].version = 17
    older = with_preprocessing(
        fp32, PreprocessSpec(32, 32), read_metadata(result.model_path)["calibration"]["temperature"]
    )
    assert "Shape" in {n.op_type for n in older.graph.node}
    sessions = [create_session(m.SerializeToString(), ProviderSettings(provider="cpu")) for m in (variant, older)]
    images = np.random.default_rng(0).integers(0, 256, (3, 45, 19), dtype=np.uint8)
    new, old = (session.run(None, {"images_uint8": images})[0] for session in sessions)
    np.testing.assert_allclose(new, old, atol=1e-6)


def test_the_preprocessing_variant_built_without_the_weights_is_the_whole_models(tiny_export):
    """Built on the fp32 graph whose weights stay in their file, and written with every weight inside it: the same
    graph and weights as the variant built on the whole fp32 model."""
    from vggdeploy.export.variants import with_preprocessing

    result, _ = tiny_export
    written = onnx.load(str(result.variants["preprocess"].path), load_external_data=False)
    assert not [t.name for t in written.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    whole = with_preprocessing(
        onnx.load(str(result.model_path)),
        PreprocessSpec(32, 32),
        read_metadata(result.model_path)["calibration"]["temperature"],
    )
    assert written.graph.node == whole.graph.node
    assert {t.name: t.SerializeToString() for t in written.graph.initializer} == {
        t.name: t.SerializeToString() for t in whole.graph.initializer
    }
    assert [i.name for i in written.graph.input] == [i.name for i in whole.graph.input] == ["images_uint8"]
    assert [o.name for o in written.graph.output] == [o.name for o in whole.graph.output]


def test_golden_vectors_reproduce_through_the_files(tiny_export):
    result, out = tiny_export
    golden = json.loads((out / "onnx" / "golden" / "golden.json").read_text())
    assert len(golden["images"]) == 10 and {e["label"] for e in golden["images"]} == set(range(10))
    session = create_session(result.model_path, ProviderSettings(provider="cpu"))
    for entry in golden["images"]:
        gray = decode_grayscale(out / "onnx" / "golden" / entry["file"])
        logits = session.run(None, {INPUT_NAME: to_model_input([gray], PreprocessSpec(32, 32))})[0][0]
        np.testing.assert_allclose(logits, entry["logits"], atol=1e-5)
        scaled = np.asarray(entry["logits"], dtype=np.float64) / golden["temperature"]
        np.testing.assert_allclose(entry["probabilities"], np.exp(scaled) / np.exp(scaled).sum(), rtol=0, atol=1e-12)
    assert golden["temperature"] == read_metadata(result.model_path)["calibration"]["temperature"]
    assert golden["calibrated"] is True


def test_triton_config_parses_with_tritons_own_protobuf(tiny_export):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    result, out = tiny_export
    folders = list((out / "triton").iterdir())
    assert len(folders) == 1 and result.triton_model == folders[0]
    serves = "it serves logits and familiarity"
    assert f"  triton: {folders[0]} (config.pbtxt, 1/model.onnx, labels.txt; {serves})" in result.format()
    config = text_format.Parse((folders[0] / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == folders[0].name and config.backend == "onnxruntime" and config.max_batch_size == 256
    assert [i.name for i in config.input] == [INPUT_NAME] and list(config.input[0].dims) == [1, 32, 32]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert [o.name for o in config.output] == [OUTPUT_NAME, FAMILIARITY_NAME] and list(config.output[0].dims) == [10]
    assert list(config.output[1].dims) == [1] and list(config.output[1].reshape.shape) == []  # one score per image
    assert list(config.dynamic_batching.preferred_batch_size)[-1] == 256
    # the GPU where the server has one, else the CPU (KIND_GPU made a CPU-only Triton refuse to load the model)
    assert [group.kind for group in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_AUTO]
    model = onnx.load(str(folders[0] / "1" / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == BATCH_AXIS  # Triton batches on dim 0
    assert (folders[0] / "labels.txt").read_text().splitlines() == list(CLASS_NAMES)
    # the model's folder is replaced whole by the next export: only what export wrote may be in it
    from vggdeploy.export.triton import TRITON_MODEL_ENTRIES
    from vggdeploy.files import require_replaceable

    assert {entry.name for entry in folders[0].iterdir()} == TRITON_MODEL_ENTRIES
    require_replaceable(folders[0], TRITON_MODEL_ENTRIES, "vggdeploy export")
    (folders[0] / "2").mkdir()  # a version the user added: the next export would have deleted it
    try:
        with pytest.raises(DataError, match=r"holds what 'vggdeploy export' did not write \(2\)"):
            require_replaceable(folders[0], TRITON_MODEL_ENTRIES, "vggdeploy export")
    finally:
        (folders[0] / "2").rmdir()


def test_a_triton_repository_overlapping_the_output_folder_is_refused_before_any_work(tiny_checkpoint, tmp_path):
    """``--triton-repo`` equal to or inside ``--out`` was written, then deleted by the swap of --out: exit 0 and no
    repository. ``--out`` inside the repository would be one more "model" there to Triton."""
    from vggdeploy.export.pipeline import export_model

    out = tmp_path / "onnx"
    for repo, where in ((out, out), (out / "triton", out), (tmp_path, out), (out, out / "deeper" / "x")):
        with pytest.raises(UsageError, match=f"--triton-repo {repo} and --out {where} overlap: export replaces"):
            export_model(tiny_checkpoint, where, triton_repo=repo)
    assert list(tmp_path.iterdir()) == []  # nothing made, not even a lock


def test_a_model_over_one_onnx_file_is_refused_by_name(tiny_checkpoint, tmp_path, monkeypatch):
    """VGG-11 at 512 px with the paper's widths (2.25 GB of fp32 weights) had its graph built and then ended in an
    internal error (exit 70): protobuf's 2 GiB limit, which vggdeploy meets with no external-data files."""
    from vggdeploy.export.pipeline import export_model
    from vggdeploy.model import vgg as model_module
    from vggdeploy.model.archs import ModelArgs

    paper_widths_at_512 = model_module.summarize(ModelArgs(arch="A", image_size=512)).format()  # `vggdeploy info`
    assert "\n  export: refused: 562,916,618 parameters take 2.25 GB as fp32, over the 2 GiB" in paper_widths_at_512
    assert "export: refused" not in model_module.summarize(ModelArgs(arch="E")).format()  # VGG-19 at 224 px: 0.56 GB
    monkeypatch.setattr(model_module, "ONE_ONNX_FILE_BYTES", 1000)  # the tiny model stands in for a 2.25 GB one
    with pytest.raises(DataError, match=f"{tiny_checkpoint}: .* parameters take .* so it cannot be exported"):
        export_model(tiny_checkpoint, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


def test_info_prints_the_model_description(tiny_export, mislabelled_model):
    result, _ = tiny_export
    printed = cli("info", str(result.model_path))
    assert printed.returncode == 0
    assert "input  images: float32 batchx1x32x32" in printed.stdout and "labels:" in printed.stdout
    # a model whose metadata contradicts its graph is described, and the contradiction said (it once passed silently)
    printed = cli("info", str(mislabelled_model))
    assert printed.returncode == 3 and "output logits: float32 batchx10" in printed.stdout
    assert (
        printed.stderr == f"error: {mislabelled_model}: the metadata names 9 labels, but the graph outputs 10 classes\n"
    )


def test_export_by_arch_finds_the_trained_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    from vggdeploy.artifacts import find_checkpoint

    (tmp_path / "artifacts" / "m" / "checkpoints").mkdir(parents=True)
    (tmp_path / "artifacts" / "m" / "checkpoints" / "best.pt").write_bytes(tiny_checkpoint.read_bytes())
    assert find_checkpoint("A", tmp_path / "artifacts").parent.parent.name == "m"
    assert find_checkpoint("vgg11_bn", tmp_path / "artifacts").parent.parent.name == "m"  # the tiny model has BN
    with pytest.raises(UsageError, match="no trained checkpoint for architecture D"):
        find_checkpoint("D", tmp_path / "artifacts")
    with pytest.raises(UsageError, match="no trained checkpoint for architecture vgg11 "):  # once: the BN model
        find_checkpoint("vgg11", tmp_path / "artifacts")


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["missing", "truncated", "other-arch", "no-batch-norm", "unwritable"])
def test_bad_export_input_is_one_line_and_leaves_no_onnx(problem, tiny_checkpoint, tmp_path):
    checkpoint, out, args = tmp_path / "in.pt", tmp_path / "out", []
    data = tiny_checkpoint.read_bytes()
    if problem == "truncated":
        checkpoint.write_bytes(data[: len(data) // 3])
    elif problem in ("other-arch", "no-batch-norm"):
        checkpoint.write_bytes(data)
        args = ["--arch", "vgg16" if problem == "other-arch" else "vgg11"]
    elif problem == "unwritable":
        checkpoint.write_bytes(data)
        out = "/proc/not-writable"
    result = cli("export", "--checkpoint", str(checkpoint), "--out", str(out), *args)
    expected = {
        "missing": "no such checkpoint",
        "truncated": "truncated or not a checkpoint",
        "other-arch": "holds architecture A, not D",
        "no-batch-norm": "holds architecture A with batch norm, not vgg11",  # once exported without a word
        "unwritable": "cannot write to output directory",
    }
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and expected[problem] in result.stderr
    assert not list(tmp_path.rglob("*.onnx")) and not list(tmp_path.rglob("*.tmp"))


def _fp16_that_always_says_class_0(fp32: onnx.ModelProto, **options) -> onnx.ModelProto:
    """A broken fp16 variant: the classifier's bias pushes every image to class 0."""
    return add_to_class_bias(to_fp16(fp32, **options), 0, 1000)  # the real to_fp16, bound at this module's import


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"atol": 0.0}, "parity at export.*atol"), ({"fp16": True}, "variant check: fp16")],
)
@pytest.mark.slow
def test_a_failed_check_leaves_nothing_behind(tiny_checkpoint, tmp_path, data_dir, settings, message, monkeypatch):
    from vggdeploy.errors import CheckFailed
    from vggdeploy.export import variants
    from vggdeploy.export.pipeline import export_model

    monkeypatch.setattr(variants, "to_fp16", _fp16_that_always_says_class_0)
    config = ExportConfig(audit_batches=(1, 2), parity_images=32, variant_images=64, **settings)
    with pytest.raises(CheckFailed, match=message):
        export_model(tiny_checkpoint, tmp_path, config, data_dir=data_dir)
    assert list(tmp_path.iterdir()) == []


def test_readme_documents_every_metadata_key():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for key in METADATA_KEYS:
        assert f"| `{key}` |" in readme, key


@pytest.mark.slow
def test_export_report_tables_keep_their_columns_and_no_simplify_says_so(tiny_checkpoint, tmp_path):
    result = cli(
        "export",
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(tmp_path),
        "--no-simplify",
        "--int8",
        "--parity-images",
        "32",
        "--audit-batches",
        "1,2",
        "--variant-images",
        "64",
    )
    assert result.returncode == 0, result.stderr
    assert "not simplified (--no-simplify)" in result.stdout and "-> simplified" not in result.stdout
    report = (tmp_path / "export_report.md").read_text()
    assert "not simplified (--no-simplify)" in report and "x)" in report  # the int8 speed-up is in the markdown too
    rows = [line for line in report.splitlines() if line.startswith("|")]
    cells = [len(line.replace("\\|", "").split("|")) - 2 for line in rows]
    assert len(rows) == 4 and set(cells) == {4}, rows  # header, rule, model.onnx, model.int8.onnx


def test_simplifying_without_loading_the_weights_gives_onnxsims_graph_of_the_whole_model(
    tiny_checkpoint, data_dir, tmp_path, monkeypatch
):
    """onnxsim sees the external weights as inputs: its graph must be the one it makes of the whole model."""
    import onnxsim

    from vggdeploy.export import pipeline

    compared = []
    real = pipeline.simplify_file

    def simplify_and_compare(source, target):
        simplified = real(source, target)
        whole, ok = onnxsim.simplify(onnx.load(str(source)))  # the weights loaded, as onnxsim alone would
        assert ok
        assert simplified.graph.node == whole.graph.node and len(simplified.graph.node) < 60
        assert [v.name for v in simplified.graph.input] == [v.name for v in whole.graph.input] == [INPUT_NAME]
        assert simplified.graph.output == whole.graph.output
        onnx.load_external_data_for_model(simplified, str(source.parent))
        ours, theirs = (
            {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer} for m in (simplified, whole)
        )
        assert ours.keys() == theirs.keys()
        for name, array in theirs.items():
            np.testing.assert_array_equal(ours[name], array, strict=True)
        compared.append(simplified)
        return real(source, target)

    monkeypatch.setattr(pipeline, "simplify_file", simplify_and_compare)
    config = ExportConfig(audit_batches=(1, 2), parity_images=32)
    pipeline.export_model(tiny_checkpoint, tmp_path / "onnx", config, data_dir=data_dir)
    assert len(compared) == 1 and FAMILIARITY_NAME in [o.name for o in compared[0].graph.output]
    assert not (tmp_path / "onnx" / ".scratch").exists() and not list((tmp_path / "onnx").glob("*.data"))


def test_the_graph_sizes_printed_are_the_single_files_with_their_weights(tiny_export):
    """The graph's weights live in a scratch file until the end: the sizes printed are still those of one file."""
    result, _ = tiny_export
    assert result.after.bytes == result.model_path.stat().st_size
    assert 0.5 < result.before.bytes / result.after.bytes < 1.5
    assert f"({result.after.bytes / 1e6:.2f} MB)" in result.format()
