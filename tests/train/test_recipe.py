"""The user's own images, first try: the recipe sized to the data, model selection on held-out training images,
calibration that refuses what a slice cannot tell, the per-class report and run folders that are never replaced."""

import json

import numpy as np
import pytest
import torch

from vggdeploy.artifacts import RunFolder
from vggdeploy.config import PRESETS
from vggdeploy.errors import UsageError
from vggdeploy.export.calibrate import MIN_SLICE_ERRORS, unfit_slice
from vggdeploy.metrics.calibration import fit_temperature
from vggdeploy.metrics.per_class import PerClassReport
from vggdeploy.model.checkpoint import load_checkpoint
from vggdeploy.train import loop as train_module
from vggdeploy.train.recipe import MIN_STEPS, MIN_STEPS_PER_EPOCH, MOST_EPOCHS, Recipe, size_to_data, too_few_steps

QUICK = Recipe(0, PRESETS["quick"].batch_size, PRESETS["quick"].epochs, PRESETS["quick"].lr)


def test_the_recipe_keeps_the_preset_on_fashion_mnist_and_sizes_small_sets():
    assert size_to_data(55_000, QUICK) == Recipe(55_000, 256, 12, 0.2)  # the quick preset as it was measured
    full = PRESETS["full"]
    assert size_to_data(58_000, Recipe(0, full.batch_size, full.epochs, full.lr)) == Recipe(58_000, 256, 40, 0.1)
    small = size_to_data(270, QUICK)  # 300 images less the tenth held out: 12 % with the preset's recipe
    assert (small.batch_size, small.epochs, small.steps) == (32, 188, 8 * 188)
    assert small.lr == pytest.approx(0.2 * (32 / 256) ** 0.5)
    assert (
        small.format()
        == "270 training images: batch 32, 188 epochs, 1,504 steps, lr 0.0707 (batch, epochs, lr sized to the data)"
    )
    tiny = size_to_data(81, QUICK)  # 90 images less the tenth held out: the preset's batch was refused here
    assert (tiny.batch_size, tiny.epochs, tiny.steps) == (8, 150, 1_500)
    assert size_to_data(5, QUICK).batch_size == 5  # fewer images than the smallest batch: one full batch
    assert size_to_data(20, QUICK).epochs == MOST_EPOCHS  # 2 steps an epoch: the epochs are bounded
    for images in (81, 300, 1_080, 5_000, 20_000, 55_000):
        recipe = size_to_data(images, QUICK)
        assert recipe.steps >= MIN_STEPS and images // recipe.batch_size >= MIN_STEPS_PER_EPOCH
        assert recipe.lr == pytest.approx(0.2 * (recipe.batch_size / 256) ** 0.5)


def test_given_settings_win_and_too_few_steps_are_named():
    given = size_to_data(1_080, QUICK, {"batch_size": 256, "epochs": 10, "lr": None})
    assert (given.batch_size, given.epochs, given.lr, given.given) == (256, 10, 0.2, ("batch_size", "epochs"))
    assert given.format().endswith("(lr sized to the data)")
    warning = too_few_steps(given, QUICK)
    assert warning.startswith("40 optimizer steps on 1,080 training images are few")
    assert warning.endswith("e.g. --batch-size 128 --epochs 188 --lr 0.141, or leave them out")
    assert too_few_steps(size_to_data(1_080, QUICK), QUICK) is None  # the rule's own plan: no warning
    assert too_few_steps(size_to_data(1_080, QUICK, {"lr": 0.5}), QUICK) is None  # only lr given
    only_batch = size_to_data(1_080, QUICK, {"batch_size": 64})
    assert (only_batch.lr, only_batch.epochs) == (0.1, 94)  # the rate follows the batch; epochs fill the steps


def test_the_selected_epoch_is_the_latest_within_one_standard_error_of_the_best_validation_accuracy():
    def row(epoch, validation, test, images=100):
        return {"epoch": epoch, "validation_accuracy": validation, "validation_images": images, "test_accuracy": test}

    # best 0.90 on 100 images: one standard error is 0.03, so 0.87 counts and 0.86 does not
    history = [row(1, 0.80, 0.99), row(2, 0.90, 0.10), row(3, 0.87, 0.20), row(4, 0.86, 0.95)]
    assert train_module.selected_epoch(history)["epoch"] == 3
    large = [row(r["epoch"], r["validation_accuracy"], r["test_accuracy"], images=10_000) for r in history]
    assert train_module.selected_epoch(large)["epoch"] == 2  # 0.3 pp of error: the best itself
    perfect = [row(1, 1.0, 0.5), row(2, 0.99, 0.6), row(3, 1.0, 0.4)]
    assert train_module.selected_epoch(perfect)["epoch"] == 3  # no error at 100 %: the latest perfect epoch
    unvalidated = [{"epoch": 1, "validation_accuracy": None, "test_accuracy": 0.9}, {"epoch": 2, "test_accuracy": 0.1}]
    assert train_module.selected_epoch(unvalidated)["epoch"] == 2  # no validation slice: the last epoch


@pytest.mark.slow
def test_best_pt_does_not_change_when_the_test_labels_are_shuffled(tmp_path, data_dir, monkeypatch):
    """The test split only reports: with its labels shuffled, the same epoch and the same weights are chosen."""
    from test_train import TINY

    config = TINY.with_overrides(epochs=4, train_limit=1500, test_limit=300)
    honest = train_module.train(config, tmp_path / "honest", data_dir=data_dir, progress=False)
    load = train_module.load_dataset

    def shuffled_test_labels(*args, **kwargs):
        dataset = load(*args, **kwargs)
        # seed 2: a shuffle under which choosing by test accuracy picks another epoch (checked by planting it)
        order = torch.randperm(len(dataset.test_labels), generator=torch.Generator().manual_seed(2))
        object.__setattr__(dataset, "test_labels", dataset.test_labels[order])
        return dataset

    monkeypatch.setattr(train_module, "load_dataset", shuffled_test_labels)
    shuffled = train_module.train(config, tmp_path / "shuffled", data_dir=data_dir, progress=False)
    assert [row["test_accuracy"] for row in honest.history] != [row["test_accuracy"] for row in shuffled.history]
    assert shuffled.selected_epoch == honest.selected_epoch
    chosen = [
        load_checkpoint(run / "checkpoints" / "best.pt")["model_state"]
        for run in (tmp_path / "honest", tmp_path / "shuffled")
    ]
    assert all(torch.equal(chosen[0][name], chosen[1][name]) for name in chosen[0])
    summary = json.loads((tmp_path / "honest" / "train" / "summary.json").read_text())
    by_epoch = {row["epoch"]: row for row in honest.history}
    assert summary["selected_test_accuracy"] == by_epoch[summary["selected_epoch"]]["test_accuracy"]
    assert summary["final_test_accuracy"] == honest.history[-1]["test_accuracy"]
    assert summary["selected_validation_accuracy"] == by_epoch[summary["selected_epoch"]]["validation_accuracy"]
    assert summary["selected_epoch"] == train_module.selected_epoch(honest.history)["epoch"]


def test_the_per_class_report_counts_precision_recall_and_f1(tmp_path):
    true = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1])
    report = PerClassReport.of(("cat", "dog", "eel"), true, predicted)
    assert report.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    rows = {row["class"]: row for row in report.rows()}
    assert rows["cat"] == {"class": "cat", "images": 3, "precision": 1.0, "recall": pytest.approx(2 / 3), "f1": 0.8}
    assert (
        rows["dog"]["precision"] == 0.5 and rows["dog"]["recall"] == 1.0 and rows["dog"]["f1"] == pytest.approx(2 / 3)
    )
    assert rows["eel"] == {"class": "eel", "images": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0}  # never predicted
    assert report.accuracy == pytest.approx(4 / 6) and report.most_confused() == [("eel", "dog", 1), ("cat", "dog", 1)]
    report.write(tmp_path / "per_class.json", tmp_path / "confusion.png", "a title")
    written = json.loads((tmp_path / "per_class.json").read_text())
    assert written["confusion"]["counts"] == report.confusion.tolist() and written["macro_f1"] == pytest.approx(
        (0.8 + 2 / 3) / 3
    )
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_slice_with_too_few_errors_or_a_fit_at_the_bound_is_not_calibrated():
    """A held-out slice classified all right drove the fit to T = 0.05 (a gray image then scored 99.99999 %)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    logits = rng.normal(0, 1, (200, 4))
    logits[np.arange(200), labels] += 8
    assert (logits.argmax(1) == labels).all()
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(0.05, rel=1e-3)
    assert unfit_slice(logits, labels, temperature).startswith("the 200 held-out training images hold 0 the model gets")
    wrong = rng.choice(200, MIN_SLICE_ERRORS, replace=False)
    logits[wrong, labels[wrong]] -= 12  # now MIN_SLICE_ERRORS wrong, confidently
    assert (logits.argmax(1) != labels).sum() == MIN_SLICE_ERRORS
    fitted = fit_temperature(logits, labels)
    assert unfit_slice(logits, labels, fitted) is None and fitted > 1
    assert "an end of the search range" in unfit_slice(logits, labels, 20.0)


def test_run_folders_number_new_runs_and_refuse_to_replace_one(tmp_path):
    for name in ("m", "m-2"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "checkpoints" / "last.pt").write_bytes(b"")
    assert RunFolder.for_training("m", root=tmp_path).path == tmp_path / "m-3"
    assert RunFolder.for_training("m", resume=True, root=tmp_path).path == tmp_path / "m-2"  # the newest
    assert RunFolder.for_training("m", overwrite=True, root=tmp_path).path == tmp_path / "m"
    assert RunFolder.for_training("new", root=tmp_path).path == tmp_path / "new"
    with pytest.raises(
        UsageError, match=r"--out .*/m holds an earlier run: --resume continues it, --overwrite replaces"
    ):
        RunFolder.for_training("x", out=tmp_path / "m", root=tmp_path)
    assert RunFolder.for_training("x", out=tmp_path / "m", resume=True).path == tmp_path / "m"
    assert RunFolder.for_training("x", out=tmp_path / "empty").path == tmp_path / "empty"
