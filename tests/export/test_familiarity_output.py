"""The familiarity output: fitted at export from training images, thresholded on the held-out slice, carried by every
variant, and answered by ``run`` (the other consumers: tests/consumers/test_examples.py)."""

import json

import numpy as np
import onnx
import pytest
import torch
from cli_output import TINY_INT8_LIMITS
from forked_cli import vggdeploy as cli

from vggdeploy.config import FAMILIARITY_LIMITS
from vggdeploy.deploy.contract import FAMILIARITY_NAME, OUTPUT_NAME, PROBABILITIES_NAME
from vggdeploy.deploy.onnx_file import read_metadata
from vggdeploy.deploy.session import ProviderSettings, create_session, run_scored
from vggdeploy.metrics.familiarity import ACCEPTED_SHARE, LayerFit, threshold_accepting
from vggdeploy.model.archs import ModelArgs
from vggdeploy.model.familiarity import ScoredModel, representations
from vggdeploy.model.vgg import build_model


def test_the_second_output_survives_simplification_and_every_variant(tiny_export):
    result, _ = tiny_export
    metadata = read_metadata(result.model_path)
    section = metadata["familiarity"]
    assert section["output"] == FAMILIARITY_NAME and section["accepted_share"] == ACCEPTED_SHARE
    assert metadata["io"]["familiarity"] == {
        "name": FAMILIARITY_NAME,
        "dtype": "float32",
        "shape": ["batch"],
        "meaning": metadata["io"]["familiarity"]["meaning"],
    }
    assert section["parity"]["max_abs_diff"] <= FAMILIARITY_LIMITS["fp32"]["atol"]
    files = {"fp32": result.model_path, **{name: v.path for name, v in result.variants.items()}}
    for name, path in files.items():
        outputs = [o.name for o in onnx.load(str(path)).graph.output]
        first = PROBABILITIES_NAME if name == "preprocess" else OUTPUT_NAME
        assert outputs == [first, FAMILIARITY_NAME], name
        assert read_metadata(path)["familiarity"] == section, name
    for name, variant in result.variants.items():  # measured against the fp32 model at export, within its limits
        figures = variant.familiarity
        assert figures["flag_agreement"] >= figures["min_flag_agreement"], name
        assert figures["min_flag_agreement"] == min(FAMILIARITY_LIMITS[name]["min_flag_agreement"], 1 - 1 / 300)
        assert figures["images"] == 300 and "familiarity max |diff|" in variant.summary()
    assert result.variants["preprocess"].familiarity["max_abs_diff"] <= 1e-3
    # the training images the slice came from (the first 3,000), less the slice's 300
    assert section["fitted_on"] == "2700 training images outside the slice"
    assert "familiarity: second output 'familiarity', fitted on 2,700 training images; threshold" in result.format()


def test_the_threshold_reproduces_from_the_slice(tiny_export, tiny_checkpoint, data_dir):
    """The metadata's threshold is the score that 95 % of the checkpoint's held-out training images reach, as the
    exported graph scores them."""
    from vggdeploy.data.batches import to_input_tensor
    from vggdeploy.data.dataset import dataset_of
    from vggdeploy.deploy.preprocess import PreprocessSpec
    from vggdeploy.export.calibrate import held_out_slice
    from vggdeploy.model.checkpoint import load_checkpoint

    result, _ = tiny_export
    metadata = read_metadata(result.model_path)
    state = load_checkpoint(tiny_checkpoint)
    images, _ = held_out_slice(state, dataset_of(state, data_dir))
    spec = PreprocessSpec.from_metadata(metadata["preprocessing"])
    session = create_session(result.model_path, ProviderSettings(provider="cpu"))
    _, scores = run_scored(session, to_input_tensor(images, spec).numpy())
    threshold = metadata["familiarity"]["threshold"]
    assert threshold_accepting(scores, ACCEPTED_SHARE) == pytest.approx(threshold, abs=1e-4)
    assert np.mean(scores >= threshold) == pytest.approx(ACCEPTED_SHARE, abs=1 / len(scores))
    assert f"{len(scores)} held-out training images" in metadata["familiarity"]["threshold_from"]


def test_the_graph_computes_the_fitted_score():
    """ScoredModel's output is the sum of the two layers' standardised Mahalanobis scores, as numpy computes them."""
    torch.manual_seed(0)
    model = build_model(ModelArgs(arch="A", batch_norm=True, width_ratio=16, hidden=32, dropout=0.0, image_size=32))
    model.eval()
    images = torch.randn(300, 1, 32, 32)
    labels = np.arange(300) % 10
    with torch.no_grad():
        logits, early, late = (t.double().numpy() for t in representations(model, images))
    fits = {
        "early": LayerFit.of(early[:200], labels[:200]).standardised_on(early[200:]),
        "late": LayerFit.of(late[:200], labels[:200]).standardised_on(late[200:]),
    }
    scored = ScoredModel(model, {**fits["early"].arrays("early"), **fits["late"].arrays("late")}).eval()
    with torch.no_grad():
        graph_logits, familiarity = scored(images)
    np.testing.assert_allclose(graph_logits.numpy(), logits, atol=1e-5)
    expected = fits["early"].score(early) + fits["late"].score(late)
    np.testing.assert_allclose(familiarity.double().numpy(), expected, rtol=1e-3, atol=1e-3)
    held = fits["late"].score(late[200:])
    assert held.mean() == pytest.approx(0, abs=1e-9) and held.std() == pytest.approx(1)  # standardised on those


def test_run_flags_a_blank_image_and_not_a_familiar_golden_one(tiny_export, tmp_path):
    from PIL import Image

    result, _ = tiny_export
    golden_folder = result.model_path.parent / "golden"
    golden = json.loads((golden_folder / "golden.json").read_text())
    blank = tmp_path / "blank.png"
    Image.new("L", (28, 28), 255).save(blank)
    familiar = next(entry for entry in golden["images"] if not entry["unfamiliar"])
    paths = [str(blank), str(golden_folder / familiar["file"])]
    answer = json.loads(cli("run", *paths, "--model", str(result.model_path), "--json").stdout)["predictions"]
    assert [p["unfamiliar"] for p in answer] == [True, False]
    assert answer[0]["familiarity"] < golden["familiarity_threshold"] <= answer[1]["familiarity"]
    assert answer[1]["familiarity"] == pytest.approx(familiar["familiarity"], abs=1e-3)
    rejected = cli("run", *paths, "--model", str(result.model_path), "--reject-unfamiliar", "--json")
    assert rejected.returncode == 0
    blank_answer, kept = json.loads(rejected.stdout)["predictions"]
    assert blank_answer["top"] == [] and blank_answer["rejected"] == (
        f"unfamiliar (familiarity {blank_answer['familiarity']:.2f} < threshold {golden['familiarity_threshold']:.2f})"
    )
    assert len(kept["top"]) == 3 and "rejected" not in kept
    table = cli("run", *paths, "--model", str(result.model_path), "--reject-unfamiliar").stdout.splitlines()
    assert table[1].split() == ["file", "familiarity", "prediction", "(probability)"]
    assert table[2].endswith(f"{blank_answer['familiarity']:7.2f} ?   not classified: {blank_answer['rejected']}")
    assert table[-1] == (
        f"? unfamiliar: familiarity below the model's threshold {golden['familiarity_threshold']:.2f}, unlike the "
        "images it was trained on: its probabilities say nothing about such an image"
    )


@pytest.mark.slow
def test_without_the_output_run_says_so_and_old_consumers_see_one_output(tiny_checkpoint, data_dir, tmp_path):
    from vggdeploy.config import ExportConfig
    from vggdeploy.export.pipeline import export_model

    config = ExportConfig(familiarity=False, parity_images=32, audit_batches=(1, 2), test_images=200)
    result = export_model(tiny_checkpoint, tmp_path / "onnx", config, data_dir=data_dir)
    assert result.familiarity is None and "familiarity" not in read_metadata(result.model_path)
    assert [o.name for o in onnx.load(str(result.model_path)).graph.output] == [OUTPUT_NAME]
    assert not (tmp_path / "onnx" / "familiarity_fit.npz").exists()
    golden = tmp_path / "onnx" / "golden"
    refused = cli("run", str(golden), "--model", str(result.model_path), "--reject-unfamiliar")
    assert refused.returncode == 2 and refused.stderr.strip().endswith(
        f"--reject-unfamiliar: {result.model_path} has no familiarity output (exported before it existed, with "
        "--no-familiarity, or from a checkpoint without a held-out slice); export it again"
    )
    plain = json.loads(cli("run", str(golden), "--model", str(result.model_path), "--json").stdout)["predictions"]
    assert all(p["familiarity"] is None and p["unfamiliar"] is None for p in plain)


def test_a_slice_too_small_for_a_threshold_leaves_the_output_out_and_says_why(tiny_checkpoint, data_dir, capsys):
    from vggdeploy.data.dataset import dataset_of
    from vggdeploy.export.calibrate import held_out_slice
    from vggdeploy.export.familiarity import MIN_SLICE_IMAGES, familiarity_refusal
    from vggdeploy.model.checkpoint import rebuild_model
    from vggdeploy.passes import HELD_OUT_SLICE, evaluation_sample, torch_slice_pass

    model, state = rebuild_model(tiny_checkpoint)
    dataset = dataset_of(state, data_dir)
    images, labels = held_out_slice(state, dataset)
    small = torch_slice_pass(
        model, (images[: MIN_SLICE_IMAGES - 1], labels[: MIN_SLICE_IMAGES - 1]), dataset.spec(32), True
    )
    for held_out, count in ((small, 99), (None, 0)):
        why = familiarity_refusal(held_out)
        assert why == (
            f"the checkpoint holds {count} held-out training images, fewer than the 100 a threshold needs (a larger "
            "--calibration-holdout or more images would give them)"
        )
        assert capsys.readouterr().err == f"vggdeploy: warning: no familiarity output: {why}\n"
    # a slice large enough, sampled below the threshold's need by --slice-images: that option is named
    sample = evaluation_sample(len(labels), 60, 1.0, "cpu", HELD_OUT_SLICE)
    sampled = torch_slice_pass(model, (images, labels), dataset.spec(32), True, sample)
    assert familiarity_refusal(sampled) == (
        f"--slice-images leaves 60 of {len(labels):,} held-out training images, fewer than the 100 a threshold needs"
    )


def test_metadata_that_promises_an_output_the_graph_lacks_is_refused(tiny_export, tmp_path):
    from broken_models import edit_metadata

    from vggdeploy.deploy.session import open_model
    from vggdeploy.errors import DataError

    result, _ = tiny_export
    proto = onnx.load(str(result.model_path))
    del proto.graph.output[1:]
    onnx.save(proto, str(tmp_path / "lost.onnx"))
    with pytest.raises(DataError, match=r"describes a 'familiarity' output, but the graph's outputs are \['logits'\]"):
        open_model(tmp_path / "lost.onnx")
    proto = edit_metadata(onnx.load(str(result.model_path)), "familiarity", lambda s: {**s, "threshold": "high"})
    onnx.save(proto, str(tmp_path / "words.onnx"))
    with pytest.raises(DataError, match=r"familiarity.threshold must be a number, got 'high'$"):
        open_model(tmp_path / "words.onnx")


def test_the_score_s_own_nodes_are_those_the_logits_do_not_need(tiny_export):
    """The variants keep these in fp32 (fp16 would round the sums of squares, int8 ranges would coarsen them): the
    graph without them still computes the same logits."""
    from vggdeploy.export.graph import familiarity_nodes

    result, _ = tiny_export
    proto = onnx.load(str(result.model_path))
    scoring = set(familiarity_nodes(proto))
    producer = {name: node for node in proto.graph.node for name in node.output}
    assert producer[FAMILIARITY_NAME].name in scoring and producer[OUTPUT_NAME].name not in scoring
    assert {producer[FAMILIARITY_NAME].op_type} == {"Add"} and len(scoring) >= 20
    del proto.graph.output[1:]
    kept = [node for node in proto.graph.node if node.name not in scoring]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    onnx.checker.check_model(proto, full_check=True)
    inputs = np.random.default_rng(0).normal(0, 1, (3, 1, 32, 32)).astype(np.float32)
    alone = create_session(proto.SerializeToString(), ProviderSettings(provider="cpu")).run(None, {"images": inputs})
    whole = create_session(result.model_path, ProviderSettings(provider="cpu")).run(None, {"images": inputs})
    np.testing.assert_array_equal(alone[0], whole[0])
    fp16 = onnx.load(str(result.variants["fp16"].path))  # the converter's repeated Casts were dropped
    assert len({node.name for node in fp16.graph.node}) == len(fp16.graph.node)


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        # the score moved by 0.01: every flag kept, over the fp32 parity limit of 0.001
        ("fp32", r"^parity at export: familiarity max \|diff\| 0\.01 > atol 0\.001 \(32 test images\)$"),
        # every score 3 lower: flags move on images near the threshold
        ("int8", r"^variant check: int8: familiarity flags agree \d+\.\d\d% < floor 98\.00%$"),
    ],
)
def test_an_export_whose_familiarity_strays_fails_and_leaves_nothing(
    plant, message, tiny_checkpoint, data_dir, tmp_path, monkeypatch
):
    from broken_models import shift_familiarity

    from vggdeploy.config import ExportConfig
    from vggdeploy.errors import CheckFailed
    from vggdeploy.export import pipeline, variants

    if plant == "fp32":
        real = pipeline.simplify_file

        def simplify_then_shift(source, target):
            onnx.save(shift_familiarity(real(source, target), 0.01), str(target))
            return onnx.load(str(target))

        monkeypatch.setattr(pipeline, "simplify_file", simplify_then_shift)
    else:
        real_int8 = variants.to_int8
        monkeypatch.setattr(variants, "to_int8", lambda *a, **k: shift_familiarity(real_int8(*a, **k), -3.0))
    config = ExportConfig(
        audit_batches=(1, 2),
        parity_images=32,
        variant_images=300,
        int8=plant == "int8",
        **TINY_INT8_LIMITS,  # the tiny model's: its familiarity alone may fail
    )
    with pytest.raises(CheckFailed, match=message):
        pipeline.export_model(tiny_checkpoint, tmp_path / "onnx", config, data_dir=data_dir)
    assert list(tmp_path.iterdir()) == []
