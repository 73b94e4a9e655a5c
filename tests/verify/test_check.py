import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from broken_models import multiply_output, scale_logits, shift_familiarity, shift_output
from cli_output import TINY_INT8_AGREEMENT, TINY_INT8_LIMITS
from forked_cli import vggdeploy as cli
from onnx import numpy_helper

from vggdeploy.config import CheckConfig
from vggdeploy.deploy.onnx_file import read_metadata
from vggdeploy.errors import CheckFailed
from vggdeploy.passes import torch_device
from vggdeploy.verify.check import run_check


@pytest.fixture(scope="module")
def perturbed(tiny_export, tmp_path_factory):
    """The tiny model with the third convolution's weights scaled by 1.3 (metadata kept)."""
    result, _ = tiny_export
    proto = onnx.load(str(result.model_path))
    conv = [node for node in proto.graph.node if node.op_type == "Conv"][2]
    weights = next(init for init in proto.graph.initializer if init.name == conv.input[1])
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * np.float32(1.3), weights.name))
    path = tmp_path_factory.mktemp("perturbed") / "model.onnx"
    onnx.save(proto, str(path))
    return path


def test_torch_and_onnxruntime_agree_on_the_real_test_set(tiny_export, tiny_checkpoint, tmp_path):
    result, _ = tiny_export
    report = run_check(
        result.model_path,
        tiny_checkpoint,
        CheckConfig(provider="cpu", images=2000, int8_min_agreement=TINY_INT8_AGREEMENT),
        report_dir=tmp_path,
    )
    assert report, report.format()
    names = [r.name for r in report.results]
    assert names == ["fp32", "fp16", "int8"]
    fp32 = report.results[0]
    assert fp32.images == 2000 and fp32.top1_agreement == 1.0 and fp32.max_abs_diff < 1e-4 and fp32.min_cosine > 0.99999
    assert fp32.reference_accuracy == fp32.candidate_accuracy > 0.5
    saved = json.loads((tmp_path / "check.json").read_text())
    assert saved["passed"] and saved["results"][0]["top1_agreement"] == 1.0
    markdown = (tmp_path / "check.md").read_text()
    int8 = report.results[2]
    assert f"| fp32 | 2000 | {fp32.reference_accuracy:.2%} | {fp32.candidate_accuracy:.2%} |" in markdown
    assert f"| {int8.top1_agreement:.2%} |" in markdown and "| ok |" in markdown  # rates as the text prints them
    # one unit per quantity: a change and its limit in percentage points, in check.json as in the options and stdout
    assert saved["results"][2]["max_accuracy_drop_pp"] == CheckConfig.int8_max_drop_pp
    assert saved["results"][2]["accuracy_change_pp"] == int8.accuracy_change_pp
    assert f"({int8.accuracy_change_pp:+.2f} pp)" in report.format()
    assert saved["calibration"]["max_ece_increase_pp"] == CheckConfig.max_ece_increase_pp
    calibration = report.calibration  # at the model's own temperature, per variant, against torch fp32
    assert (
        calibration.calibrated
        and calibration.temperature == read_metadata(result.model_path)["calibration"]["temperature"]
    )
    assert list(calibration.variants) == ["fp32", "fp16", "int8"] and calibration.worse() == []
    assert calibration.variants["fp32"].ece == pytest.approx(calibration.reference.ece, abs=1e-4)
    assert calibration.reference.accuracy == fp32.reference_accuracy and calibration.reference.images == 2000
    assert saved["calibration"]["variants"]["int8"]["ece"] == calibration.variants["int8"].ece
    int8_ece_change = round((calibration.variants["int8"].ece - calibration.reference.ece) * 100, 10)
    assert saved["calibration"]["variants"]["int8"]["ece_change_pp"] == int8_ece_change
    assert "## Calibration on the test set" in (tmp_path / "check.md").read_text()
    assert "calibration, T = " in report.format()


@pytest.mark.slow
def test_a_perturbed_model_fails_the_check_with_its_numbers(perturbed, tiny_checkpoint, tmp_path):
    result = cli(
        "check",
        "--model",
        str(perturbed),
        "--checkpoint",
        str(tiny_checkpoint),
        "--images",
        "500",
        "--report-dir",
        str(tmp_path),
    )
    assert result.returncode == 4
    assert "fp32: 500 images, max |diff|" in result.stdout and "FAILED: max |logit difference|" in result.stdout
    # the last layer's weights x 1.3 sharpen every softmax too: its calibration is spoiled, and the check says so
    assert result.stderr.strip() == "error: parity check failed for fp32, fp32 calibration (ECE)"
    assert "    fp32: ECE" in result.stdout and "(limit +0.50) -> FAILED" in result.stdout
    assert not json.loads((tmp_path / "check.json").read_text())["passed"]


@pytest.mark.slow
def test_a_model_whose_output_is_not_finite_fails_the_check_and_its_report_stays_json(
    nan_model, tiny_checkpoint, tmp_path
):
    """Its NaN logits once "agreed" with torch on 100 % of the images at a min cosine of 1.0, its ECE (NaN) passed,
    and check.json held NaN, which strict JSON parsers refuse."""
    result = cli("check", "--model", str(nan_model), "--checkpoint", str(tiny_checkpoint), "--images", "64")
    assert result.returncode == 4 and "logits not finite (NaN or inf) for 64 of 64 images" in result.stdout
    assert result.stderr.strip() == "error: parity check failed for fp32, fp32 calibration (ECE)"
    saved = json.loads(
        (nan_model.parent / "reports" / "check.json").read_text(),
        parse_constant=lambda name: pytest.fail(f"{name} is not JSON"),
    )
    fp32 = saved["results"][0]
    assert fp32["top1_agreement"] == 0 and fp32["not_finite"] == 64 and fp32["min_cosine"] is None
    assert fp32["candidate_accuracy"] == 0 and saved["calibration"]["variants"]["fp32"]["ece"] is None


@pytest.mark.slow
def test_localize_names_the_perturbed_layer(perturbed, tiny_checkpoint, tmp_path):
    report = run_check(
        perturbed, tiny_checkpoint, CheckConfig(provider="cpu", images=64, localize=True), report_dir=tmp_path
    )
    assert report.first_bad_layer is not None
    assert report.first_bad_layer.layer == "features.2.2 (ReLU)"  # the ReLU right after the third convolution
    before = report.layers[: report.layers.index(report.first_bad_layer)]
    assert [d.layer for d in before] == [
        "features.0.2 (ReLU)",
        "features.0.3 (MaxPool2d)",
        "features.1.2 (ReLU)",
        "features.1.3 (MaxPool2d)",
    ]
    assert all(d.relative < 1e-5 for d in before) and report.first_bad_layer.relative > 0.01
    assert report.layers[0].onnx_output and report.layers[0].max_abs_diff < 1e-4
    assert not report and report.format().endswith(
        f"  first layer over tolerance: features.2.2 (ReLU) (relative diff {report.first_bad_layer.relative:.3g})"
    )
    at = CheckConfig(provider="cpu", images=64, localize=True, localize_rtol=report.first_bad_layer.relative)
    later = run_check(
        perturbed, tiny_checkpoint, at, report_dir=tmp_path
    ).first_bad_layer  # a layer at the limit passes
    assert later is None or report.layers.index(later) > report.layers.index(report.first_bad_layer)


@pytest.mark.slow
def test_localize_on_the_command_line_exits_4_and_names_the_layer(perturbed, tiny_checkpoint, tmp_path):
    result = cli(
        "check",
        "--model",
        str(perturbed),
        "--checkpoint",
        str(tiny_checkpoint),
        "--images",
        "64",
        "--localize",
        "--report-dir",
        str(tmp_path),
    )
    assert result.returncode == 4 and "first layer over tolerance: features.2.2 (ReLU)" in result.stderr


@pytest.mark.slow
def test_check_refuses_a_model_of_another_checkpoint(tiny_export, tiny_checkpoint, tmp_path, data_dir):
    from vggdeploy.model.archs import ModelArgs
    from vggdeploy.model.checkpoint import load_checkpoint, save_checkpoint
    from vggdeploy.model.vgg import build_model

    args = ModelArgs(arch="B", width_ratio=8, hidden=64, image_size=32)
    save_checkpoint(tmp_path / "b.pt", {"model_args": args.to_dict(), "model_state": build_model(args).state_dict()})
    result = cli("check", "--model", str(tiny_export[0].model_path), "--checkpoint", str(tmp_path / "b.pt"))
    assert result.returncode == 3 and "was exported from another model than the checkpoint" in result.stderr
    # the same architecture trained on (a run trained again after its export): once a parity failure with no reason
    state = load_checkpoint(tiny_checkpoint)
    later = {**state, "model_args": state["model_args"].to_dict(), "epoch": state["epoch"] + 1, "test_accuracy": 0.5}
    save_checkpoint(tmp_path / "later.pt", later)
    result = cli("check", "--model", str(tiny_export[0].model_path), "--checkpoint", str(tmp_path / "later.pt"))
    assert result.returncode == 3, result.stderr
    assert f"was exported from another checkpoint than {tmp_path / 'later.pt'} (the model's: epoch " in result.stderr
    assert f"this one's: epoch {state['epoch'] + 1}, test accuracy 50.00%); export it again" in result.stderr


def test_a_checkpoint_replaced_while_check_runs_is_refused_and_no_report_is_written(
    tiny_export, tiny_checkpoint, tmp_path, monkeypatch
):
    """Check reads the checkpoint's metadata first and its weights after ONNX Runtime's pass: a training run saving a
    new best.pt in between would have compared the model with weights it was not exported from."""
    import os

    from vggdeploy.errors import DataError
    from vggdeploy.verify import check as check_module

    checkpoint = tmp_path / "best.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    real_stream = check_module.stream_logits

    def training_saves_a_new_best(*args):
        shutil.copy(tiny_checkpoint, tmp_path / "new.pt")
        os.replace(tmp_path / "new.pt", checkpoint)  # as training saves: a new file renamed over the old
        return real_stream(*args)

    monkeypatch.setattr(check_module, "stream_logits", training_saves_a_new_best)
    reports = tmp_path / "reports"
    with pytest.raises(DataError) as raised:
        run_check(tiny_export[0].model_path, checkpoint, CheckConfig(images=16), report_dir=reports)
    assert str(raised.value) == (
        f"{checkpoint}: replaced or changed while check ran (is training still writing it?); check again once it is "
        "final"
    )
    assert not list(reports.glob("check*"))


def test_swapped_classes_give_exactly_the_figures_they_must(tiny_export, tiny_checkpoint, test_split, tmp_path):
    """The last Gemm's rows for classes 0 and 1 exchanged: ONNX Runtime's logits are torch's with two columns swapped,
    so every figure of the check is known from torch's logits alone."""
    from vggdeploy.data.batches import to_input_tensor
    from vggdeploy.deploy.preprocess import PreprocessSpec
    from vggdeploy.model.checkpoint import rebuild_model
    from vggdeploy.model.vgg import predict_logits

    result, _ = tiny_export
    proto = onnx.load(str(result.model_path))
    gemm = [node for node in proto.graph.node if node.op_type == "Gemm"][-1]
    for name in gemm.input[1:3]:  # weight (classes x features, transB) and bias
        tensor = next(init for init in proto.graph.initializer if init.name == name)
        values = numpy_helper.to_array(tensor).copy()
        values[[0, 1]] = values[[1, 0]]
        tensor.CopyFrom(numpy_helper.from_array(values, name))
    swapped = tmp_path / "onnx" / "model.onnx"
    swapped.parent.mkdir()
    onnx.save(proto, str(swapped))

    images = 500
    model, _ = rebuild_model(tiny_checkpoint)
    torch_logits = predict_logits(model, to_input_tensor(test_split[0][:images], PreprocessSpec(32, 32)).numpy())
    top = torch_logits.argmax(1)
    moved = np.isin(top, [0, 1])
    report = run_check(swapped, tiny_checkpoint, CheckConfig(provider="cpu", images=images), report_dir=tmp_path)
    fp32 = report.results[0]
    assert fp32.top1_agreement == pytest.approx(1 - moved.mean(), abs=1e-12)
    assert len(fp32.flips) == moved.sum() > 0
    assert [flip.index for flip in fp32.flips] == np.flatnonzero(moved).tolist()
    assert all({flip.reference_label, flip.candidate_label} == {0, 1} for flip in fp32.flips)
    gap = np.abs(torch_logits[:, 0] - torch_logits[:, 1])
    assert fp32.max_abs_diff == pytest.approx(gap.max(), abs=1e-4)
    assert fp32.mean_abs_diff == pytest.approx(2 * gap.sum() / torch_logits.size, abs=1e-5)
    labels = test_split[1][:images].numpy()
    assert fp32.candidate_accuracy == pytest.approx((np.where(moved, 1 - top, top) == labels).mean(), abs=1e-12)
    assert not report and fp32.failures[0].startswith("max |logit difference|")
    text = report.format()
    assert f"fp32: the first 10 of {moved.sum()} flips (all in check.json):" in text
    first = fp32.flips[0]
    names = ["T-shirt/top", "Trouser"]
    assert f"test image {first.index}: {names[first.reference_label]} -> {names[first.candidate_label]}" in text


@pytest.mark.slow
def test_a_variant_file_is_checked_against_its_own_limits(tiny_export, tiny_checkpoint, tmp_path):
    result, _ = tiny_export
    int8 = result.variants["int8"].path
    report = run_check(
        int8,
        tiny_checkpoint,
        CheckConfig(provider="cpu", images=2000, **TINY_INT8_LIMITS),
        report_dir=tmp_path,
    )
    assert [r.name for r in report.results] == ["int8"] and report.results[0].max_accuracy_drop_pp == 5.0
    assert report.results[0].atol is None and report, report.format()
    assert report.per_class.confusion.sum() == 2000 and report.provider == "cpu"


def test_check_refuses_what_it_cannot_compare_before_any_image(tiny_export, tiny_checkpoint, tmp_path):
    """The preprocessing variant (checked at export), --localize on a variant, and a checkpoint of another model or
    of another training run: each one line, before a pass."""
    from vggdeploy.errors import DataError, UsageError
    from vggdeploy.model.archs import ModelArgs
    from vggdeploy.model.checkpoint import load_checkpoint, save_checkpoint
    from vggdeploy.model.vgg import build_model

    result, _ = tiny_export
    with pytest.raises(UsageError) as raised:
        run_check(result.variants["preprocess"].path, tiny_checkpoint, report_dir=tmp_path)
    assert str(raised.value) == (
        f"{result.variants['preprocess'].path}: the preprocessing variant takes raw images and is checked at export; "
        f"check {result.model_path} instead"
    )
    int8 = result.variants["int8"].path
    with pytest.raises(UsageError) as raised:
        run_check(int8, tiny_checkpoint, CheckConfig(localize=True), report_dir=tmp_path)
    assert str(raised.value) == f"{int8}: --localize follows the fp32 graph; pass {result.model_path}"
    args = ModelArgs(arch="B", width_ratio=8, hidden=64, image_size=32)
    save_checkpoint(tmp_path / "b.pt", {"model_args": args.to_dict(), "model_state": build_model(args).state_dict()})
    with pytest.raises(DataError) as raised:
        run_check(result.model_path, tmp_path / "b.pt", report_dir=tmp_path)
    assert str(raised.value) == (
        f"{result.model_path}: was exported from another model than the checkpoint ({args.name})"
    )
    state = load_checkpoint(tiny_checkpoint)
    later = {**state, "model_args": state["model_args"].to_dict(), "epoch": state["epoch"] + 1}
    save_checkpoint(tmp_path / "later.pt", later)
    with pytest.raises(DataError) as raised:
        run_check(result.model_path, tmp_path / "later.pt", report_dir=tmp_path)
    assert str(raised.value).startswith(
        f"{result.model_path}: was exported from another checkpoint than {tmp_path / 'later.pt'} (the model's: epoch "
    )
    assert not (tmp_path / "check.json").exists()


@pytest.mark.slow
def test_the_preprocessing_variant_and_localize_on_a_variant_are_usage_errors_on_the_command_line(
    tiny_export, tiny_checkpoint
):
    result, _ = tiny_export
    int8 = result.variants["int8"].path
    raw = cli("check", "--model", str(result.variants["preprocess"].path), "--checkpoint", str(tiny_checkpoint))
    assert raw.returncode == 2
    assert raw.stderr.strip().endswith(f"check {result.model_path} instead")
    localize = cli("check", "--model", str(int8), "--checkpoint", str(tiny_checkpoint), "--localize")
    assert localize.returncode == 2 and "--localize follows the fp32 graph" in localize.stderr


def _deployment(tiny_export, folder, planted: dict) -> Path:
    """A copy of the tiny export's fp32, fp16 and int8 files in ``folder``, each in ``planted`` ({variant: edit of
    its proto}) changed: one failure planted at a time."""
    result, _ = tiny_export
    files = {"fp32": result.model_path, "fp16": result.variants["fp16"].path, "int8": result.variants["int8"].path}
    folder.mkdir()
    for variant, source in files.items():
        target = folder / source.name
        if variant in planted:
            onnx.save(planted[variant](onnx.load(str(source))), str(target))
        else:
            shutil.copyfile(source, target)
    shutil.copyfile(result.model_path.parent / "familiarity_fit.npz", folder / "familiarity_fit.npz")
    return folder / result.model_path.name


# 2,000 images: on 500 the tiny model's int8 file measured its ECE 0.5 pp over torch's by chance
GENEROUS = dict(provider="cpu", images=2000, **TINY_INT8_LIMITS)


@pytest.mark.parametrize(
    ("planted", "limits", "failed"),
    [
        # an fp16 file over its accuracy limit alone (its calibration limit lifted)
        ({"fp16": lambda p: shift_output(p, 0, 1000)}, {"max_ece_increase_pp": 100}, "fp16"),
        # an int8 file that is broken while fp16 is fine: int8 must be the file in the int8 slot
        ({"int8": lambda p: shift_output(p, 0, 1000)}, {"max_ece_increase_pp": 100}, "int8"),
        # a variant whose only failure is its ECE: the same argmax everywhere, three times as sure (so its logits
        # are also far from torch's: that limit is lifted)
        ({"fp16": lambda p: scale_logits(p, 3.0)}, {"fp16_max_mean_diff": 100}, "fp16 calibration (ECE)"),
    ],
    ids=["fp16-accuracy", "int8-alone", "ece-alone"],
)
@pytest.mark.slow
def test_each_planted_failure_alone_fails_the_check_and_is_named(
    planted, limits, failed, tiny_export, tiny_checkpoint, tmp_path
):
    model = _deployment(tiny_export, tmp_path / "onnx", planted)
    report = run_check(model, tiny_checkpoint, CheckConfig(**{**GENEROUS, **limits}), report_dir=tmp_path / "r")
    assert not report
    with pytest.raises(CheckFailed) as raised:
        report.raise_if_failed()
    assert raised.value.exit_code == 4 and str(raised.value) == f"parity check failed for {failed}"
    failed_parity = [r.name for r in report.results if not r]
    if failed.endswith("(ECE)"):  # every parity verdict passes: the calibration alone failed the check
        assert failed_parity == [] and report.calibration.worse() == ["fp16"]
        # the same argmax as the unscaled fp16 file: a flip only where fp16's rounding alone can turn a near-tie
        assert all(flip.reference_margin < 0.01 for flip in next(r for r in report.results if r.name == "fp16").flips)
    else:
        assert failed_parity == [failed] and report.calibration.worse() == []


@pytest.mark.slow
def test_a_planted_failure_is_exit_4_on_the_command_line(tiny_export, tiny_checkpoint, tmp_path):
    model = _deployment(tiny_export, tmp_path / "onnx", {"int8": lambda p: shift_output(p, 0, 1000)})
    result = cli(
        "check",
        "--model",
        str(model),
        "--checkpoint",
        str(tiny_checkpoint),
        "--images",
        "300",
        "--int8-max-drop",
        "5",
        "--fp16-min-agreement",  # the default 99.9 % allows no flip in 300 images: one near-tie would fail fp16 too
        "0.99",
        "--max-ece-increase",
        "100",
        "--report-dir",
        str(tmp_path / "r"),
    )
    assert result.returncode == 4 and result.stderr.strip().splitlines()[-1] == "error: parity check failed for int8"
    assert "int8: 300 images" in result.stdout and "-> FAILED" in result.stdout


def _class_0_shift_that_moves(share: float, checkpoint: Path, test_split, images: int) -> float:
    """The amount added to class 0's logit that moves about ``share`` of the first ``images`` test images' answers
    to class 0 (from torch's logits): the tiny model's logit scale differs from one CPU or seed to another."""
    import torch

    from vggdeploy.data.batches import to_input_tensor
    from vggdeploy.deploy.preprocess import PreprocessSpec
    from vggdeploy.model.checkpoint import rebuild_model

    model, _ = rebuild_model(checkpoint)
    with torch.no_grad():
        logits = model.eval()(to_input_tensor(test_split[0][:images], PreprocessSpec(32, 32))).numpy()
    gaps = logits.max(axis=1) - logits[:, 0]  # 0 where the answer is class 0 already
    return float(np.quantile(gaps, np.mean(gaps == 0) + share))


@pytest.mark.parametrize(
    ("plant", "named"),
    [
        # 5 % of the answers moved to class 0: accuracy changes little, agreement falls under the int8 floor
        ("moved answers", f"< floor {TINY_INT8_AGREEMENT:.4%}"),
        # every logit 1.5 times as large: the same argmax everywhere, the distance from torch over its limit
        ("larger logits", "mean |logit difference|"),
    ],
    ids=["agreement-floor", "logit-distance"],
)
def test_an_int8_file_under_its_agreement_floor_or_over_its_distance_limit_fails_and_names_the_limit(
    plant, named, tiny_export, tiny_checkpoint, test_split, tmp_path
):
    if plant == "moved answers":
        shift = _class_0_shift_that_moves(0.05, tiny_checkpoint, test_split, GENEROUS["images"])
        planted = lambda p: shift_output(p, 0, shift)
    else:
        planted = lambda p: multiply_output(p, 1.5)
    model = _deployment(tiny_export, tmp_path / "onnx", {"int8": planted})
    open_limits = {"int8_max_drop_pp": 100, "max_ece_increase_pp": 100}  # the planted limit alone can fail
    if "mean" not in named:
        open_limits["int8_max_mean_diff"] = 100
    report = run_check(model, tiny_checkpoint, CheckConfig(**{**GENEROUS, **open_limits}), report_dir=tmp_path / "r")
    int8 = next(r for r in report.results if r.name == "int8")
    assert [r.name for r in report.results if not r] == ["int8"] and len(int8.failures) == 1
    assert named in int8.failures[0] and named in int8.format()
    if "mean" in named:
        assert int8.top1_agreement >= TINY_INT8_AGREEMENT
        assert int8.failures[0] == f"mean |logit difference| {int8.mean_abs_diff:.3g} > 0.1"
    else:
        assert int8.top1_agreement < TINY_INT8_AGREEMENT and abs(int8.accuracy_change) < 0.05
    saved = json.loads((tmp_path / "r" / "check.json").read_text())["results"]
    limits = next(r for r in saved if r["name"] == "int8")
    assert (limits["min_agreement"], limits["max_mean_diff"]) == (
        TINY_INT8_AGREEMENT,
        open_limits.get("int8_max_mean_diff", 0.1),
    )
    with pytest.raises(CheckFailed, match=r"^parity check failed for int8$"):
        report.raise_if_failed()


def test_an_int8_file_whose_familiarity_flags_move_fails_and_a_lost_fit_is_said(tiny_export, tiny_checkpoint, tmp_path):
    """check compares every deployment's familiarity with torch's own (the torch model carrying the arrays export
    saved beside the model): an int8 file whose scores all moved down by 3 flags other images, and fails alone."""
    model = _deployment(tiny_export, tmp_path / "onnx", {"int8": lambda p: shift_familiarity(p, -3.0)})
    report = run_check(model, tiny_checkpoint, CheckConfig(**GENEROUS), report_dir=tmp_path / "r")
    familiarity = report.familiarity
    assert familiarity.worse() == ["int8"] and all(report.results) and not report.calibration.worse()
    assert familiarity.variants["fp32"]["max_abs_diff"] <= 1e-3 and familiarity.variants["fp32"]["images"] == 2000
    assert familiarity.variants["int8"]["flag_agreement"] < 0.98
    with pytest.raises(CheckFailed, match=r"^parity check failed for int8 familiarity$"):
        report.raise_if_failed()
    (model.parent / "familiarity_fit.npz").unlink()
    alone = run_check(model, tiny_checkpoint, CheckConfig(**GENEROUS), report_dir=tmp_path / "r2")
    assert alone and alone.familiarity.missing == "familiarity_fit.npz is not beside the model"
    assert "not compared with torch: familiarity_fit.npz is not beside the model" in alone.format()


def test_check_holds_its_report_folder_and_runs_every_session_with_the_asked_settings(
    tiny_export, tiny_checkpoint, tmp_path, monkeypatch
):
    """The reports go beside the model unless --report-dir says otherwise, under a lock naming `vggdeploy check`; the
    provider asked for reaches every session (the model's, its variants', --localize's)."""
    from vggdeploy.artifacts import reports_folder
    from vggdeploy.deploy.session import ProviderSettings
    from vggdeploy.errors import DataError
    from vggdeploy.verify import check as check_module

    model = _deployment(tiny_export, tmp_path / "onnx", {})
    (tmp_path / "checkpoints").mkdir()  # the run folder's layout: no --checkpoint needed
    shutil.copyfile(tiny_checkpoint, tmp_path / "checkpoints" / "best.pt")
    seen, settings, passes, devices = {}, [], [], []
    real_check = check_module._check

    def spying(model_path, checkpoint, config, data_dir, report_dir):
        seen["lock"] = json.loads((report_dir.parent / f".{report_dir.name}.lock").read_text())
        seen["report_dir"], seen["data_dir"] = report_dir, data_dir
        return real_check(model_path, checkpoint, config, data_dir, report_dir)

    monkeypatch.setattr(check_module, "_check", spying)
    for name in ("open_model", "create_session"):
        real = getattr(check_module, name)
        monkeypatch.setattr(
            check_module,
            name,
            lambda path, options, real=real, **kw: settings.append((options, kw)) or real(path, options, **kw),
        )
    real_stream, real_torch, real_batch = (
        check_module.stream_logits,
        check_module.torch_test_pass,
        check_module.working_batch,
    )
    monkeypatch.setattr(check_module, "stream_logits", lambda *a: passes.append(a[4]) or real_stream(*a))
    monkeypatch.setattr(check_module, "torch_test_pass", lambda *a: devices.append(a[3]) or real_torch(*a))
    monkeypatch.setattr(check_module, "working_batch", lambda a, d: devices.append(d) or real_batch(a, d))
    loose = {"fp16_min_agreement": 0.9, "int8_min_agreement": 0.9, "int8_max_drop_pp": 10, "max_ece_increase_pp": 10}
    report = run_check(model, config=CheckConfig(provider="cpu", images=64, localize=True, **loose))
    assert passes == ["onnxruntime on test images"]  # the progress bar's words (torch's: passes.torch_test_pass)
    assert devices == [torch_device(), torch_device()]
    assert report.first_bad_layer is None and report.format().endswith("\n  every layer within tolerance")
    assert seen["lock"]["command"] == "vggdeploy check" and seen["report_dir"] == reports_folder(model)
    assert (reports_folder(model) / "check.json").is_file() and report.layers
    assert len(settings) == 4 and all(options == ProviderSettings("cpu") for options, _ in settings)
    # the model's session (open_model's, kept for the pass) and its variants' map their weights from the files
    # (--localize's opens its own graph)
    assert [kw for _, kw in settings].count({"weights_on_disk": True}) == 3
    with pytest.raises(DataError):  # the data folder asked for, not the one the checkpoint remembers
        run_check(model, tiny_checkpoint, CheckConfig(images=8), data_dir=tmp_path / "nowhere", report_dir=tmp_path)


def test_localize_measures_each_layer_against_torch_and_refuses_layers_that_do_not_map(
    tiny_export, tiny_checkpoint, tmp_path
):
    from vggdeploy.deploy.session import ProviderSettings
    from vggdeploy.errors import DataError
    from vggdeploy.model.checkpoint import rebuild_model
    from vggdeploy.verify.check import BOUNDARY_OPS, localize_difference

    result, _ = tiny_export
    model, _ = rebuild_model(tiny_checkpoint)
    model.eval()
    inputs = np.random.default_rng(0).normal(0, 1e-3, (4, 1, 32, 32)).astype(np.float32)  # small activations
    largest = []
    hooks = [
        m.register_forward_hook(lambda m, i, out: largest.append(float(out.abs().max())))
        for m in model.modules()
        if isinstance(m, tuple(BOUNDARY_OPS.values()))
    ]
    import torch

    with torch.no_grad():
        model(torch.from_numpy(inputs))
    for hook in hooks:
        hook.remove()
    layers = localize_difference(result.model_path, model, inputs, ProviderSettings(provider="cpu"))
    # a layer whose largest value is under 1 tells "relative to the layer's own largest value" from "to at least 1"
    assert len(layers) == len(largest) and min(largest) < 1.0
    for difference, peak in zip(layers, largest, strict=True):
        assert difference.relative == pytest.approx(difference.max_abs_diff / peak, rel=1e-6)
    proto = onnx.load(str(result.model_path))
    logits = proto.graph.output[0].name
    producer = next(node for node in proto.graph.node if logits in node.output)
    producer.output[0] = "before_relu"
    proto.graph.node.append(onnx.helper.make_node("Relu", ["before_relu"], [logits], name="extra_relu"))
    onnx.save(proto, str(tmp_path / "extra.onnx"))
    with pytest.raises(DataError) as raised:
        localize_difference(tmp_path / "extra.onnx", model, inputs, ProviderSettings(provider="cpu"))
    assert str(raised.value) == (
        f"{tmp_path / 'extra.onnx'}: its layers do not map one-to-one onto the checkpoint's model; cannot localize"
    )


def test_a_model_without_a_variant_name_or_a_familiarity_output_is_checked_as_before(
    tiny_export, tiny_checkpoint, tmp_path
):
    """A model exported before the export section named its variant is the fp32 model (its siblings checked too);
    one without the familiarity output has no familiarity verdict."""
    from broken_models import edit_metadata

    def older(proto):
        proto = edit_metadata(proto, "export", lambda section: {k: v for k, v in section.items() if k != "variant"})
        del proto.graph.output[1:]
        kept = [entry for entry in proto.metadata_props if entry.key != "familiarity"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        return proto

    model = _deployment(tiny_export, tmp_path / "onnx", {name: older for name in ("fp32", "fp16", "int8")})
    report = run_check(model, tiny_checkpoint, CheckConfig(**GENEROUS), report_dir=tmp_path / "r")
    assert [r.name for r in report.results] == ["fp32", "fp16", "int8"]
    assert report.familiarity is None and "familiarity" not in report.format()
    assert json.loads((tmp_path / "r" / "check.json").read_text())["familiarity"] is None


def test_the_provider_and_its_hint_reach_the_session(tiny_export, tiny_checkpoint, tmp_path, monkeypatch):
    from vggdeploy.deploy.session import ProviderSettings
    from vggdeploy.verify import check as check_module

    asked = []

    class Stop(Exception):
        pass

    def recording(path, options, weights_on_disk):
        asked.append((options, weights_on_disk))
        raise Stop  # the settings are what this test is about, not OpenVINO itself

    monkeypatch.setattr(check_module, "open_model", recording)
    with pytest.raises(Stop):
        run_check(
            tiny_export[0].model_path,
            tiny_checkpoint,
            CheckConfig(provider="openvino", performance_hint="throughput"),
            report_dir=tmp_path,
        )
    assert asked == [(ProviderSettings("openvino", performance_hint="throughput"), True)]


def test_no_onnx_runtime_session_is_alive_while_torch_holds_the_weights(
    tiny_export, tiny_checkpoint, tmp_path, monkeypatch
):
    """The memory design: each is a copy of the model, so together they were 2.63 GB for a 515 MB model's check."""
    import gc
    import weakref

    from vggdeploy.model import checkpoint as checkpoint_module
    from vggdeploy.verify import check as check_module

    sessions: list[weakref.ref] = []
    alive_when_torch_loaded: list[int] = []
    real_open, real_create, real_rebuild = (
        check_module.open_model,
        check_module.create_session,
        checkpoint_module.rebuild_model,
    )

    def opening(*args, **kwargs):
        loaded = real_open(*args, **kwargs)
        sessions.append(weakref.ref(loaded.session))
        return loaded

    def creating(*args, **kwargs):
        session = real_create(*args, **kwargs)
        sessions.append(weakref.ref(session))
        return session

    def rebuilding(*args, **kwargs):
        gc.collect()
        alive_when_torch_loaded.append(sum(ref() is not None for ref in sessions))
        return real_rebuild(*args, **kwargs)

    monkeypatch.setattr(check_module, "open_model", opening)
    monkeypatch.setattr(check_module, "create_session", creating)
    monkeypatch.setattr(checkpoint_module, "rebuild_model", rebuilding)
    report = run_check(tiny_export[0].model_path, tiny_checkpoint, CheckConfig(images=32), report_dir=tmp_path)
    assert [r.name for r in report.results] == ["fp32", "fp16", "int8"]  # every session ran (the verdict aside)
    assert len(sessions) >= 2 and alive_when_torch_loaded == [0]  # the model's and its variants' sessions, all closed
