"""``check``'s verdict from logits alone: hand-made torch and variant logits whose figures are worked out by hand, so
every limit, text and report line is pinned without a model (fast; mutmut runs these on ``verify/check.py``)."""

import json
from pathlib import Path

import numpy as np
import pytest

from vggdeploy.config import CheckConfig
from vggdeploy.errors import CheckFailed, DataError
from vggdeploy.metrics.calibration import CalibrationFigures
from vggdeploy.verify.check import (
    CalibrationCheck,
    CheckReport,
    LayerDifference,
    judge,
    require_same_training,
    write_reports,
)

# Four images of two classes, all right: softmax(2/T, 0) at T = 2 is 73.11 % sure, so the ECE is 26.89 %.
REFERENCE = np.array([[2, 0], [0, 2], [2, 0], [0, 2]], dtype=np.float32)
LABELS = np.array([0, 1, 0, 1])
METADATA = {"labels": ["cat", "dog"], "calibration": {"temperature": 2.0, "fitted": True, "ece_bins": 10}}
FLIPPED = np.array([[2, 0], [0, 2], [2, 0], [2, 0]], dtype=np.float32)  # image 3: dog -> cat, torch margin 2


def _report(outputs: dict, metadata: dict = METADATA, **limits) -> CheckReport:
    return judge(Path("m/model.onnx"), "cpu", metadata, CheckConfig(**limits), REFERENCE, outputs, LABELS)


def test_the_whole_report_of_a_deployment_with_one_bad_variant():
    report = _report({"fp32": REFERENCE.copy(), "fp16": FLIPPED, "int8": REFERENCE * 1.02})
    assert not report
    assert [bool(r) for r in report.results] == [True, False, True]
    assert report.format() == "\n".join(
        [
            "check m/model.onnx on onnxruntime CPU:",
            "  fp32: 4 images, max |diff| 0, mean |diff| 0, min cosine 1.000000, top-1 agreement 100.00% (0 flips), "
            "accuracy 100.00% -> 100.00% (+0.00 pp) -> ok",
            "  fp16: 4 images, max |diff| 2, mean |diff| 0.5, min cosine 0.000000, top-1 agreement 75.00% (1 flips), "
            "accuracy 100.00% -> 75.00% (-25.00 pp) -> FAILED: mean |logit difference| 0.5 > 0.01; top-1 agreement "
            "75.0000% < floor 99.9000%; accuracy fell 25.00 pp > 0.05 pp",
            # int8's own limits: a mean difference of 0.02 is within its 0.1 (fp16's 0.01 would fail it)
            "  int8: 4 images, max |diff| 0.04, mean |diff| 0.02, min cosine 1.000000, top-1 agreement 100.00% "
            "(0 flips), accuracy 100.00% -> 100.00% (+0.00 pp) -> ok",
            "    fp16: test image 3: dog -> cat (torch margin 2)",
            "  calibration, T = 2 (fitted); torch fp32: ECE 26.89%, NLL 0.313, mean confidence 73.11% vs accuracy "
            "100.00% (T = 2.000, 4 images)",
            "    fp32: ECE 26.89%, NLL 0.313, mean confidence 73.11% vs accuracy 100.00% (T = 2.000, 4 images); "
            "ECE +0.00 pp (limit +0.50) -> ok",
            # ten bins: all four at 73.11 %, three right: |75 % - 73.11 %|
            "    fp16: ECE 1.89%, NLL 0.563, mean confidence 73.11% vs accuracy 75.00% (T = 2.000, 4 images); "
            "ECE -25.00 pp (limit +0.50) -> ok",
            "    int8: ECE 26.50%, NLL 0.308, mean confidence 73.50% vs accuracy 100.00% (T = 2.000, 4 images); "
            "ECE -0.39 pp (limit +0.50) -> ok",
            "  per class (fp32): macro F1 1.0000; most confused: none (per_class.json, confusion.png)",
        ]
    )
    with pytest.raises(CheckFailed) as raised:
        report.raise_if_failed()
    assert str(raised.value) == "parity check failed for fp16" and raised.value.exit_code == 4


def test_the_reports_on_disk_say_what_the_terminal_says(tmp_path):
    report = _report({"fp32": REFERENCE.copy(), "fp16": FLIPPED, "int8": REFERENCE * 1.02})
    write_reports(tmp_path, report)
    assert (tmp_path / "check.md").read_text() == "\n".join(
        [
            "# Parity check of m/model.onnx",
            "",
            "ONNX Runtime provider: cpu",
            "",
            "| variant | images | torch accuracy | ORT accuracy | change (pp) | top-1 agreement | max abs diff | "
            "mean abs diff | min cosine | flips | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            "| fp32 | 4 | 100.00% | 100.00% | 0 | 100.00% | 0 | 0 | 1 | 0 | ok |",
            "| fp16 | 4 | 100.00% | 75.00% | -25 | 75.00% | 2 | 0.5 | 0 | 1 | FAILED: mean \\|logit difference\\| 0.5 > "
            "0.01; top-1 agreement 75.0000% < floor 99.9000%; accuracy fell 25.00 pp > 0.05 pp |",
            "| int8 | 4 | 100.00% | 100.00% | 0 | 100.00% | 0.04 | 0.02 | 1 | 0 | ok |",
            "",
            "## Calibration on the test set",
            "",
            "| model | images | temperature | ECE | ECE change (pp) | NLL | mean confidence | accuracy |",
            "|---|---|---|---|---|---|---|---|",
            "| torch fp32 | 4 | 2 | 26.89% | – | 0.3133 | 73.11% | 100.00% |",
            "| fp32 | 4 | 2 | 26.89% | 0 | 0.3133 | 73.11% | 100.00% |",
            "| fp16 | 4 | 2 | 1.89% | -25 | 0.5633 | 73.11% | 75.00% |",
            "| int8 | 4 | 2 | 26.50% | -0.3914 | 0.3079 | 73.50% | 100.00% |",
            "",
            "Limit: a variant's ECE at most +0.5 pp over torch fp32's.",
            "",
            "## Per class (fp32, ONNX Runtime)",
            "",
            "| class | images | precision | recall | f1 |",
            "|---|---|---|---|---|",
            "| cat | 2 | 1 | 1 | 1 |",
            "| dog | 2 | 1 | 1 | 1 |",
            "",
            "![confusion matrix](confusion.png)",
            "",
        ]
    )
    saved = json.loads((tmp_path / "check.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["passed"] is False and saved["model"] == "m/model.onnx" and saved["provider"] == "cpu"
    assert [r["name"] for r in saved["results"]] == ["fp32", "fp16", "int8"]
    assert saved["calibration"]["worse_than_limit"] == [] and saved["layers"] == []
    assert saved["first_bad_layer"] is None and saved["per_class"]["images"] == 4
    per_class = json.loads((tmp_path / "per_class.json").read_text())
    assert per_class["confusion"]["counts"] == [[2, 0], [0, 2]]
    assert (tmp_path / "confusion.png").read_bytes().startswith(b"\x89PNG")


def test_a_variant_file_alone_is_held_to_its_own_limits_and_its_own_answers():
    """``check --model model.int8.onnx``: one result, int8's limits, and the per-class table of int8's answers."""
    report = _report({"int8": FLIPPED}, int8_max_drop_pp=30, int8_min_agreement=0.7, int8_max_mean_diff=1)
    assert report and [r.name for r in report.results] == ["int8"]
    int8 = report.results[0]
    assert (int8.atol, int8.min_agreement, int8.max_accuracy_drop_pp, int8.max_mean_diff) == (None, 0.7, 30, 1)
    assert report.per_class.confusion.tolist() == [[2, 0], [1, 1]]  # int8's answers, not torch's
    assert "per class (int8): macro F1 0.7333; most confused: dog -> cat (1)" in report.format()
    swapped = np.array([[0, 2], [2, 0], [2, 0], [0, 2]], dtype=np.float32)  # images 0 and 1 swapped
    loose = {"int8_max_drop_pp": 100, "int8_min_agreement": 0, "int8_max_mean_diff": 10}
    assert (
        "most confused: dog -> cat (1), cat -> dog (1) (per_class.json" in _report({"int8": swapped}, **loose).format()
    )
    fp16 = _report({"fp16": FLIPPED}, fp16_max_drop_pp=30, fp16_min_agreement=0.7, fp16_max_mean_diff=1)
    assert fp16 and (fp16.results[0].min_agreement, fp16.results[0].max_accuracy_drop_pp) == (0.7, 30)


def test_fp32_is_held_to_its_tolerance_and_its_agreement_floor():
    assert _report({"fp32": REFERENCE.astype(np.float64) + 1e-3})  # at the tolerance
    over = _report({"fp32": REFERENCE + 1.01e-3}).results[0]
    assert over.failures == ["max |logit difference| 0.00101 > atol 0.001"]
    loose = _report({"fp32": FLIPPED}, fp32_atol=10, fp32_min_agreement=0.75)
    assert loose and loose.results[0].min_agreement == 0.75
    assert _report({"fp32": FLIPPED}, fp32_atol=10).results[0].failures == ["top-1 agreement 75.0000% < floor 99.9000%"]


def test_the_model_temperature_and_bins_measure_the_calibration():
    report = _report({"fp32": REFERENCE.copy()})
    calibration = report.calibration
    assert (calibration.temperature, calibration.calibrated, calibration.max_ece_increase_pp) == (2.0, True, 0.5)
    assert calibration.reference == CalibrationFigures.measure(REFERENCE, LABELS, 2.0, 10)
    assert calibration.variants == {"fp32": CalibrationFigures.measure(REFERENCE, LABELS, 2.0, 10)}
    # one right at 73.11 % and one wrong at 76.0 % (T = 2): one bin of ten, two of fifteen (edge 73.33 %); at T = 1,
    # 88.08 % and 90.93 %: two bins of ten, one of fifteen. So the ECE says which count was used.
    spread, labels = np.array([[2, 0], [2.305, 0]], dtype=np.float32), np.array([0, 1])
    binned = judge(Path("m.onnx"), "cpu", METADATA, CheckConfig(), spread, {"fp32": spread}, labels).calibration
    assert binned.reference == binned.variants["fp32"] == CalibrationFigures.measure(spread, labels, 2.0, 10)
    assert binned.reference.ece != pytest.approx(CalibrationFigures.measure(spread, labels, 2.0, 15).ece)
    plain = judge(Path("m.onnx"), "cpu", {"labels": ["cat", "dog"]}, CheckConfig(), spread, {"fp32": spread}, labels)
    assert (plain.calibration.temperature, plain.calibration.calibrated) == (1.0, False)
    assert plain.calibration.reference == CalibrationFigures.measure(spread, labels, 1.0, 15)
    assert plain.calibration.reference.ece != pytest.approx(CalibrationFigures.measure(spread, labels, 1.0, 10).ece)
    assert "calibration, T = 1 (not fitted, plain softmax); torch fp32: ECE" in plain.format()
    tighter = _report({"fp32": REFERENCE.copy()}, max_ece_increase_pp=0.1).calibration
    assert tighter.max_ece_increase_pp == 0.1


def _figures(ece: float) -> CalibrationFigures:
    return CalibrationFigures(100, 1.0, ece, 0.3, 0.9, 0.9)


def test_an_ece_increase_equal_to_the_limit_passes_and_more_or_nan_fails():
    check = CalibrationCheck(
        1.0,
        True,
        _figures(0.03),
        {
            "fp32": _figures(0.035),
            "at": _figures(0.035000001),  # 0.5 pp and the 1e-7 pp allowed for rounding, exactly
            "fp16": _figures(0.03501),
            "int8": _figures(float("nan")),
            "x": _figures(0.0312345678901),
        },
        0.5,
    )
    assert check.worse() == ["fp16", "int8"]
    changes = check.ece_changes_pp()
    assert changes["fp32"] == 0.5 and changes["at"] == 0.5 + 1e-7 and changes["fp16"] == pytest.approx(0.501)
    assert changes["x"] == 0.123456789  # rounded to 10 decimals: float noise such as 0.49999999999999956 is 0.5
    assert np.isnan(changes["int8"])
    assert check.to_dict()["variants"]["fp16"]["ece_change_pp"] == changes["fp16"]
    assert check.to_dict()["worse_than_limit"] == ["fp16", "int8"]
    assert check.to_dict()["max_ece_increase_pp"] == 0.5 and check.to_dict()["temperature"] == 1.0
    assert check.to_dict()["calibrated"] is True and check.to_dict()["reference"]["ece"] == 0.03
    assert (
        "    fp16: ECE 3.50%, NLL 0.300, mean confidence 90.00% vs accuracy 90.00% (T = 1.000, 100 images); "
        "ECE +0.50 pp (limit +0.50) -> FAILED" in check.format()
    )
    report = CheckReport(Path("m.onnx"), "cpu", [], ["a"], check)
    assert not report and report.to_dict()["per_class"] is None
    with pytest.raises(CheckFailed, match=r"^parity check failed for fp16 calibration \(ECE\), int8 calibration"):
        report.raise_if_failed()


LAYERS = [
    LayerDifference("features.0.1 (ReLU)", "relu_0", 1e-6, 1e-7),
    LayerDifference("features.1.0 (MaxPool2d)", "pool_1", 0.5, 0.02),
]


def test_a_layer_over_tolerance_alone_fails_and_is_named(tmp_path):
    report = _report({"fp32": REFERENCE.copy()})
    report.layers, report.first_bad_layer = LAYERS, LAYERS[1]
    assert not report and report.format().endswith(
        "  first layer over tolerance: features.1.0 (MaxPool2d) (relative diff 0.02)"
    )
    with pytest.raises(CheckFailed) as raised:
        report.raise_if_failed()
    assert str(raised.value) == (
        "parity check failed for the layers; first layer over tolerance: features.1.0 (MaxPool2d)"
    )
    assert report.to_dict()["first_bad_layer"] == {
        "layer": "features.1.0 (MaxPool2d)",
        "onnx_output": "pool_1",
        "max_abs_diff": 0.5,
        "relative": 0.02,
    }
    assert report.to_dict()["layers"][0]["onnx_output"] == "relu_0"
    write_reports(tmp_path, report)
    assert (
        "\n## Layers\n\n| layer | onnx_output | max_abs_diff | relative |\n|---|---|---|---|\n"
        "| features.0.1 (ReLU) | relu_0 | 1e-06 | 1e-07 |\n| features.1.0 (MaxPool2d) | pool_1 | 0.5 | 0.02 |\n"
    ) in (tmp_path / "check.md").read_text()
    assert (tmp_path / "check.md").read_text().startswith("# Parity check of m/model.onnx\n")
    report.first_bad_layer = None
    assert report and report.format().endswith("\n  every layer within tolerance")
    assert report.to_dict()["passed"] is True
    report.raise_if_failed()  # passes: nothing raised
    both = _report({"fp32": FLIPPED})
    both.layers, both.first_bad_layer = LAYERS, LAYERS[0]
    with pytest.raises(CheckFailed, match=r"^parity check failed for fp32; first layer over tolerance: features\.0\.1"):
        both.raise_if_failed()


def test_ten_flips_are_printed_and_more_are_left_to_the_json():
    images = 11
    reference = np.tile([[2.0, 0.0]], (images, 1))
    labels = np.zeros(images, dtype=int)
    flipped = np.tile([[0.0, 2.0]], (images, 1))
    at_most = judge(Path("m.onnx"), "cpu", METADATA, CheckConfig(), reference[:10], {"fp32": flipped[:10]}, labels[:10])
    assert "the first" not in at_most.format() and at_most.format().count("    fp32: test image") == 10
    more = judge(Path("m.onnx"), "cpu", METADATA, CheckConfig(), reference, {"fp32": flipped}, labels).format()
    assert "    fp32: the first 10 of 11 flips (all in check.json):" in more
    assert more.count("    fp32: test image") == 10 and "test image 9: cat -> dog" in more
    assert "test image 10:" not in more
    assert "per class (fp32): macro F1 0.0000; most confused: cat -> dog (11)" in more


def test_a_checkpoint_other_than_the_exported_one_is_refused():
    exported = {"training": {"epoch": 12, "test_accuracy": 0.9154}}
    require_same_training(exported, {"epoch": 12, "test_accuracy": 0.9154}, "m.onnx", Path("best.pt"))
    require_same_training({}, {"epoch": 3, "test_accuracy": 0.5}, "m.onnx", Path("best.pt"))  # an older model
    require_same_training(exported, {"epoch": 3}, "m.onnx", Path("best.pt"))  # an older checkpoint
    with pytest.raises(DataError) as raised:
        require_same_training(exported, {"epoch": 12, "test_accuracy": 0.9}, "m.onnx", Path("run/best.pt"))
    assert str(raised.value) == (
        "m.onnx: was exported from another checkpoint than run/best.pt (the model's: epoch 12, test accuracy 91.54%; "
        "this one's: epoch 12, test accuracy 90.00%); export it again, or pass --checkpoint with the one it came from"
    )
    with pytest.raises(DataError, match=r"the model's: epoch 12, test accuracy 91\.54%; this one's: epoch 11, test"):
        require_same_training(exported, {"epoch": 11, "test_accuracy": 0.9154}, "m.onnx", Path("best.pt"))


FAMILIAR = {"labels": ["cat", "dog"], "familiarity": {"threshold": 0.0}}


def test_each_deployment_s_familiarity_is_held_to_its_own_floor():
    torch_scores = np.array([1.0, 2.0, -1.0, 0.5])
    scores = {
        "fp32": torch_scores + 2**-10,  # within its 0.001
        "fp16": np.array([1.0, 2.0, -1.0, -0.5]),  # one flag of four moved: 75 % < 99.5 %
        "int8": torch_scores - 0.4,  # 0.4 off, every flag kept: int8 has no distance limit
    }
    outputs = {name: REFERENCE.copy() for name in scores}
    report = judge(Path("m.onnx"), "cpu", FAMILIAR, CheckConfig(), REFERENCE, outputs, LABELS, (torch_scores, scores))
    familiarity = report.familiarity
    assert familiarity.worse() == ["fp16"] and not report
    assert familiarity.variants["fp32"] == {
        "images": 4,
        "max_abs_diff": 2**-10,
        "flag_agreement": 1.0,
        "atol": 1e-3,
        "min_flag_agreement": 0.999,
    }
    assert familiarity.failures("fp16") == ["familiarity flags agree 75.00% < floor 99.50%"]
    assert familiarity.format() == "\n".join(
        [
            "  familiarity (threshold 0), against torch's:",
            "    fp32: max |diff| 0.000977 (limit 0.001), flags agree 100.00% (floor 99.90%) -> ok",
            "    fp16: max |diff| 1, flags agree 75.00% (floor 99.50%) -> FAILED: familiarity flags agree 75.00% < "
            "floor 99.50%",
            "    int8: max |diff| 0.4, flags agree 100.00% (floor 98.00%) -> ok",
        ]
    )
    assert familiarity.format() in report.format()
    with pytest.raises(CheckFailed, match=r"^parity check failed for fp16 familiarity$"):
        report.raise_if_failed()
    saved = report.to_dict()["familiarity"]
    assert saved["worse_than_limit"] == ["fp16"] and saved["threshold"] == 0.0 and saved["missing"] is None
    assert saved["variants"]["fp16"]["failures"] == ["familiarity flags agree 75.00% < floor 99.50%"]
    over = judge(
        Path("m.onnx"), "cpu", FAMILIAR, CheckConfig(), REFERENCE, {"fp32": REFERENCE}, LABELS,
        (torch_scores, {"fp32": torch_scores + 1.1e-3}),
    )  # fmt: skip
    assert over.familiarity.failures("fp32") == ["familiarity max |diff| 0.0011 > 0.001"]
    # both limits broken, and a parity failure beside it: every failure named, in the text and the exception
    both = judge(
        Path("m.onnx"), "cpu", FAMILIAR, CheckConfig(), REFERENCE, {"fp32": FLIPPED}, LABELS,
        (torch_scores, {"fp32": np.array([1.0, 2.0, -1.0, -0.5])}),
    )  # fmt: skip
    assert both.familiarity.format().endswith(
        "-> FAILED: familiarity max |diff| 1 > 0.001; familiarity flags agree 75.00% < floor 99.90%"
    )
    with pytest.raises(
        CheckFailed, match=r"^parity check failed for fp32, fp32 calibration \(ECE\), fp32 familiarity$"
    ):
        both.raise_if_failed()


def test_the_familiarity_report_on_disk_and_when_torch_has_no_scores(tmp_path):
    torch_scores = np.array([1.0, 2.0, -1.0, 0.5])
    report = judge(
        Path("m.onnx"), "cpu", FAMILIAR, CheckConfig(), REFERENCE, {"fp32": REFERENCE}, LABELS,
        (torch_scores, {"fp32": torch_scores}),
    )  # fmt: skip
    report.familiarity.variants["fp16"] = {**report.familiarity.variants["fp32"], "flag_agreement": 0.5}
    report.familiarity.variants["fp16"].update(min_flag_agreement=0.995, atol=None)
    write_reports(tmp_path, report)
    text = (tmp_path / "check.md").read_text()
    assert text.startswith("# Parity check of m.onnx\n") and "\n## Calibration on the test set\n" in text
    assert "| fp16 | 4 | 0 | – | 50.00% | 99.50% | FAILED |\n" in text
    assert (
        "\n## Familiarity against torch's (threshold 0)\n\n"
        "| model | images | max abs diff | limit | flags agree | floor | verdict |\n|---|---|---|---|---|---|---|\n"
        "| fp32 | 4 | 0 | 0.001 | 100.00% | 99.90% | ok |\n"
    ) in (tmp_path / "check.md").read_text()
    missing = judge(
        Path("m.onnx"), "cpu", FAMILIAR, CheckConfig(), REFERENCE, {"fp32": REFERENCE}, LABELS,
        "familiarity_fit.npz is not beside the model",
    )  # fmt: skip
    assert missing and missing.familiarity.variants == {} and missing.familiarity.worse() == []
    assert missing.familiarity.format() == (
        "  familiarity (threshold 0): not compared with torch: familiarity_fit.npz is not beside the model"
    )
    write_reports(tmp_path, missing)
    text = (tmp_path / "check.md").read_text()
    assert text.startswith("# Parity check of m.onnx\n") and "\n## Calibration on the test set\n" in text
    assert (
        "\n## Familiarity against torch's (threshold 0)\n\nNot compared: familiarity_fit.npz is not beside the model.\n"
    ) in text
    assert missing.to_dict()["familiarity"]["missing"] == "familiarity_fit.npz is not beside the model"
    plain = judge(Path("m.onnx"), "cpu", METADATA, CheckConfig(), REFERENCE, {"fp32": REFERENCE}, LABELS)
    assert plain.familiarity is None and plain.to_dict()["familiarity"] is None
    assert "familiarity" not in plain.format()
