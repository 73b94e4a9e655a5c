import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cli_output import TINY_MODEL, failure_lines
from forked_cli import vggdeploy as cli

from vggdeploy.config import PRESETS, TrainConfig
from vggdeploy.data.holdout import holdout_size
from vggdeploy.errors import DataError
from vggdeploy.model.archs import ModelArgs
from vggdeploy.model.checkpoint import load_checkpoint, rebuild_model, save_checkpoint
from vggdeploy.model.vgg import build_model
from vggdeploy.train import loop as train_module

TINY_CLI = ("--preset", "quick", "--width-ratio", "16", "--hidden", "32", "--epochs", "1")  # seconds on 2 cores
TINY = TrainConfig(
    model=ModelArgs(arch="A", batch_norm=True, width_ratio=8, hidden=64, dropout=0.0, image_size=32),
    epochs=2,
    batch_size=64,
    lr=0.1,
    train_limit=3000,
    test_limit=500,
    eval_batch_size=250,
)

# steps per epoch: the images left after the calibration holdout (a tenth of the 3,000), in full batches
TINY_STEPS = (TINY.train_limit - holdout_size(TINY.calibration_holdout, TINY.train_limit)) // TINY.batch_size


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("trained")
    return train_module.train(TINY, out, data_dir=data_dir, progress=False), out


@pytest.mark.slow
def test_a_short_run_learns(trained):
    result, out = trained
    assert result.selected_test_accuracy > 0.6  # chance is 0.1
    assert len(result.history) == 2 and result.images_per_second > 0
    lines = (out / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"test_accuracy"' in lines[0]
    assert (out / "train" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "train" / "summary.json").is_file()


def test_checkpoint_rebuilds_the_model_alone(trained, test_split):
    result, out = trained
    model, state = rebuild_model(out / "checkpoints" / "best.pt")
    assert state["model_args"] == TINY.model
    assert state["test_accuracy"] == result.selected_test_accuracy
    assert set(state["data_checksums"]) >= {"train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
    assert state["versions"]["torch"] == torch.__version__
    from vggdeploy.data.batches import to_input_tensor
    from vggdeploy.deploy.preprocess import PreprocessSpec

    images, labels = test_split[0][:500], test_split[1][:500]
    with torch.no_grad():
        logits = model(to_input_tensor(images, PreprocessSpec(32, 32)))
    assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(result.selected_test_accuracy, abs=1e-6)


def test_saved_and_loaded_model_gives_identical_logits(tmp_path):
    model = build_model(TINY.model).eval()
    save_checkpoint(tmp_path / "m.pt", {"model_args": TINY.model.to_dict(), "model_state": model.state_dict()})
    rebuilt, _ = rebuild_model(tmp_path / "m.pt")
    images = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), rebuilt(images))


@pytest.mark.slow
def test_interrupt_and_resume_equals_an_uninterrupted_run(tmp_path, data_dir, monkeypatch):
    config = TINY.with_overrides(epochs=3, train_limit=1500)
    whole = train_module.train(config, tmp_path / "whole", data_dir=data_dir, progress=False)

    save_checkpoints = train_module._Run.save_checkpoints

    def save_then_stop(run, *args, **kwargs):
        save_checkpoints(run, *args, **kwargs)
        if len(run.history) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module._Run, "save_checkpoints", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config, tmp_path / "split", data_dir=data_dir, progress=False)
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["epoch"] == 2
    monkeypatch.undo()
    resumed = train_module.train(config, tmp_path / "split", data_dir=data_dir, resume=True, progress=False)

    assert resumed.epochs_run == 1
    assert [h["test_accuracy"] for h in resumed.history] == [h["test_accuracy"] for h in whole.history]
    whole_state = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["model_state"]
    resumed_state = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model_state"]
    for key, value in whole_state.items():
        assert torch.equal(value, resumed_state[key]), key


@pytest.mark.slow
def test_time_limit_stops_cleanly_mid_epoch_and_resume_finishes_the_run(trained, tmp_path, data_dir, monkeypatch):
    """The wall clock runs out at step 6 of epoch 2: the run ends normally with epoch 1's best.pt, last.pt holds the
    position, and --resume ends exactly where the uninterrupted run (the ``trained`` fixture) ended."""
    whole, whole_out = trained
    steps_per_epoch = TINY_STEPS
    steps = {"taken": 0}
    schedule = train_module.learning_rate

    def counting_schedule(config, step, total):  # called per parameter group with the global step
        steps["taken"] = step + 1
        return schedule(config, step, total)

    monkeypatch.setattr(train_module, "learning_rate", counting_schedule)
    monkeypatch.setattr(
        train_module.StopRequests, "elapsed", lambda self: 1e6 if steps["taken"] > steps_per_epoch + 5 else 1.0
    )
    stopped = train_module.train(TINY, tmp_path, data_dir=data_dir, progress=False, time_limit=60)
    assert stopped.epochs_run == 1 and len(stopped.history) == 1
    assert stopped.stopped_early == f"stopped by the 60 s time limit in epoch 2 at step 6/{steps_per_epoch}"
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["in_progress"]["step"] == 6
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert summary["stopped_early"] == stopped.stopped_early and summary["epochs_this_run"] == 1

    monkeypatch.undo()
    resumed = train_module.train(TINY, tmp_path, data_dir=data_dir, resume=True, progress=False)
    assert resumed.stopped_early is None
    assert [h["test_accuracy"] for h in resumed.history] == [h["test_accuracy"] for h in whole.history]
    assert [h["elapsed_seconds"] > 0 for h in resumed.history] == [True, True]
    expected = load_checkpoint(whole_out / "checkpoints" / "last.pt")["model_state"]
    for key, value in load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model_state"].items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.slow
def test_time_limit_before_the_first_epoch_ends_says_how_to_continue(tmp_path):
    result = cli(
        "train",
        *TINY_CLI,
        "--train-limit",
        "1000",
        "--test-limit",
        "100",
        "--out",
        str(tmp_path),
        "--quiet",
        "--time-limit",
        "1e-9",
    )
    assert result.returncode == 130
    failure = failure_lines(result.stderr)  # not the plan
    assert len(failure) == 1 and failure[0].startswith("error: ")
    assert "stopped by the 1e-09 s time limit in epoch 1 at step 0/14, before any epoch ended" in result.stderr
    assert "--resume" in result.stderr and (tmp_path / "checkpoints" / "last.pt").is_file()
    assert cli("train", "--time-limit", "0").returncode == 2


@pytest.mark.slow
def test_fit_to_time_plans_the_epochs_so_the_schedule_ends_within_the_limit(tmp_path, data_dir, monkeypatch):
    """A clock that takes 100 s to load and 10 s per step (420 s per epoch) and a limit of 1,990 s: 4 epochs fit,
    so of the 10 allowed the run trains 4, with the one-cycle schedule planned for 4 (its last rate near zero, where
    a cut-off schedule would still be high); last.pt says 4, so --resume has nothing left to do."""
    steps = {"taken": 0}
    schedule = train_module.learning_rate

    def counting_schedule(config, step, total):
        steps["taken"] = max(steps["taken"], step + 1)
        return schedule(config, step, total)

    monkeypatch.setattr(train_module, "learning_rate", counting_schedule)
    monkeypatch.setattr(train_module.StopRequests, "elapsed", lambda self: 100.0 + 10.0 * steps["taken"])
    config = TINY.with_overrides(epochs=10)
    result = train_module.train(config, tmp_path, data_dir=data_dir, progress=False, time_limit=1990, fit_to_time=True)
    assert result.stopped_early is None and result.epochs_run == 4 and len(result.history) == 4
    assert [row["elapsed_seconds"] for row in result.history] == [100.0 + 420 * k for k in (1, 2, 3, 4)]
    assert result.history[-1]["lr_end"] < 1e-3 * config.lr  # annealed: planned for 4 epochs, not 10
    assert result.format().startswith(f"test accuracy {result.selected_test_accuracy:.2%} of best.pt (epoch ")
    assert "; 4 epochs (as many as fit the 1990 s time limit) in 1780 s" in result.format()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["train_config"]["epochs"] == 4
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert summary["fitted_to_time_limit_seconds"] == 1990 and summary["config"]["epochs"] == 4
    monkeypatch.undo()
    finished = cli("train", "--out", str(tmp_path), "--resume", "--quiet")
    assert finished.returncode == 2 and "has finished 4 epochs; pass --epochs N with N > 4" in finished.stderr


def test_epochs_that_fit_time_the_epochs_after_this_calls_first():
    # 10 s epochs, and a 3 s checkpoint write every third (--save-every 3); row 0 paid for loading and compiling
    rows = [{"elapsed_seconds": t} for t in (50.0, 60.0, 70.0, 83.0, 93.0, 103.0, 116.0)]
    fit = train_module.epochs_that_fit
    assert fit(rows[:1], 0, 1000, 60) is None  # only the first epoch, which is no measure
    assert fit(rows[:3], 0, 100, 60) == 3 + 9  # 10 s per epoch, half of one kept: floor(95 / 10)
    assert fit(rows[:3], 0, 100, 5) == 5  # at most --epochs
    assert fit(rows[:3], 0, 5, 60) == 3  # nothing more fits: never fewer than the epochs done
    assert fit(rows[:4], 3, 100, 60) is None  # resumed at row 3: its first epoch is not a measure
    assert fit(rows, 0, 100, 60) == 7 + 8  # the writes spread over the epochs: 11 s each, floor(94.5 / 11)
    assert fit(rows[:3], 0, math.inf, 60) == 60  # --time-limit inf: no limit, every epoch allowed


@pytest.mark.slow
def test_fit_to_time_needs_a_time_limit(tmp_path):
    result = cli("train", *TINY_CLI, "--fit-to-time", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == "error: --fit-to-time plans the epochs for --time-limit SECONDS: give both\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_save_every_writes_the_checkpoints_every_n_epochs_at_the_last_and_at_a_stop(tmp_path, data_dir, monkeypatch):
    """--save-every 2 over 5 epochs: last.pt after epochs 2, 4 and 5; best.pt with them, holding the best epoch so
    far even when that epoch was not a write; a stop asked for after epoch 3 writes at once."""
    writes = []
    save = train_module.save_checkpoint

    def recording_save(path, state):
        writes.append((path.name, state["epoch"]))
        save(path, state)

    monkeypatch.setattr(train_module, "save_checkpoint", recording_save)
    config = TINY.with_overrides(epochs=5, train_limit=1500, test_limit=300, save_every=2)
    result = train_module.train(config, tmp_path / "run", data_dir=data_dir, progress=False)
    from vggdeploy.train.checkpoints import selected_epoch

    def best_by(epoch: int) -> int:  # the epoch best.pt holds once ``epoch`` has run (its own tests: the rule's)
        return selected_epoch(result.history[:epoch])["epoch"]

    assert [w for w in writes if w[0] == "last.pt"] == [("last.pt", 2), ("last.pt", 4), ("last.pt", 5)]
    assert [w for w in writes if w[0] == "best.pt"] == sorted(
        {("best.pt", best_by(e)) for e in (2, 4, 5)}, key=lambda w: w[1]
    )
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["epoch"] == best_by(5)
    assert len((tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()) == 5

    writes.clear()
    keep_epoch = train_module._Run.keep_epoch

    def stop_after_epoch_3(run):
        if len(run.history) == 3:
            run.stop.received = "SIGINT"
        keep_epoch(run)

    monkeypatch.setattr(train_module._Run, "keep_epoch", stop_after_epoch_3)
    with pytest.raises(train_module.Interrupted, match="interrupted \\(SIGINT\\) after epoch 3"):
        train_module.train(config, tmp_path / "stopped", data_dir=data_dir, progress=False)
    assert ("last.pt", 3) in writes and load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")["epoch"] == 3
    assert cli("train", *TINY_CLI, "--save-every", "0").stderr == "error: save-every must be at least 1, got 0\n"


def test_a_state_kept_for_a_later_write_does_not_change_with_training():
    """best.pt's state is taken at the best epoch and written epochs later under --save-every: on the CPU,
    ``tensor.cpu()`` is the live parameter itself, so the state must hold copies (of the history too)."""
    model = build_model(TINY.model)
    history = [{"test_accuracy": 0.5}]
    state = train_module.checkpoint_state(model, None, TINY, history, {})
    before = {k: v.clone() for k, v in state["model_state"].items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    history.append({"test_accuracy": 0.6})
    assert all(torch.equal(state["model_state"][k], v) for k, v in before.items())
    assert state["metrics"] == [{"test_accuracy": 0.5}] and state["epoch"] == 1


@pytest.mark.slow
def test_the_gpu_recipe_path_bf16_channels_last_compiled_runs_on_cpu(
    trained, tmp_path, data_dir, test_split, monkeypatch
):
    """The code path `full` takes on a GPU (bf16 autocast, channels_last, torch.compile), exercised on the CPU.
    torch.compile's backend here is aot_eager: dynamo's capture and AOT autograd's joint graph, as on a GPU, without
    Inductor's C++ kernels for a CPU, which a GPU never runs and which took 2 minutes to build on 2 cores."""
    compile_, compiled = torch.compile, []

    def aot_eager(model, **options):
        compiled.append(model)
        return compile_(model, backend="aot_eager", **options)

    monkeypatch.setattr(torch, "compile", aot_eager)
    fp32, _ = trained
    result = train_module.train(
        TINY.with_overrides(precision="bf16", compile=True), tmp_path, data_dir=data_dir, progress=False
    )
    assert result.selected_test_accuracy > 0.6 and compiled
    assert [h["train_loss"] for h in result.history] != [h["train_loss"] for h in fp32.history]  # bf16 did run
    model, state = rebuild_model(tmp_path / "checkpoints" / "best.pt")  # plain fp32 keys, no torch.compile wrapper
    assert all(value.dtype == torch.float32 for value in model.state_dict().values() if value.is_floating_point())
    assert "model_state" not in state  # the weights are the model's own, not a second copy in the state
    from vggdeploy.data.batches import to_input_tensor
    from vggdeploy.deploy.preprocess import PreprocessSpec

    with torch.no_grad():
        logits = model(to_input_tensor(test_split[0][:500], PreprocessSpec(32, 32)))
    fp32_accuracy = (logits.argmax(1) == test_split[1][:500]).float().mean().item()
    assert fp32_accuracy == pytest.approx(result.selected_test_accuracy, abs=0.02)  # evaluated in bf16 during training


def test_resume_refuses_other_settings(trained, data_dir):
    _, out = trained
    with pytest.raises(Exception, match=r"other settings .*lr"):
        train_module.train(TINY.with_overrides(lr=0.3), out, data_dir=data_dir, resume=True, progress=False)


@pytest.mark.slow
def test_nan_loss_stops_with_one_line_error(tmp_path):
    result = cli(
        "train",
        *TINY_MODEL,
        "--lr",
        "1e6",
        "--epochs",
        "1",
        "--train-limit",
        "2000",
        "--test-limit",
        "200",
        "--out",
        str(tmp_path),
        "--quiet",
    )
    assert result.returncode == 5
    failure = failure_lines(result.stderr)  # not the plan
    assert len(failure) == 1 and failure[0].startswith("error: training diverged: the mean loss reached")
    assert "lower --lr" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_a_loss_that_exploded_without_reaching_nan_is_divergence_too():
    from vggdeploy.errors import TrainingDiverged

    plain = replace(TINY, model=replace(TINY.model, batch_norm=False))
    # 3319: the mean loss of plain VGG-11 (4096 hidden, 224 px) after 4 steps at lr 0.2; its logits reached 1e20
    with pytest.raises(
        TrainingDiverged, match=r"mean loss reached 3319 in epoch 1 by step 4 \(chance is 2.3.*add --batch-norm"
    ):
        train_module.check_loss(3319.27, plain, "in epoch 1 by step 4")
    with pytest.raises(TrainingDiverged, match="mean loss reached nan"):
        train_module.check_loss(float("nan"), TINY, "in epoch 1 by step 20")
    for healthy in (2.31, 4.5, 20.0):  # chance, a rough start, a bad spike: not divergence
        train_module.check_loss(healthy, TINY, "in epoch 1 by step 20")
    quick_at_batch_2 = replace(PRESETS["quick"], batch_size=2)  # --preset quick --batch-size 2: it diverged
    with pytest.raises(
        TrainingDiverged,
        match=r"lower --lr \(lr 0.2 is the quick preset's for batch 256; at batch 2 the same rate per image is --lr "
        r"0.00156\)\. Nothing",
    ):
        train_module.check_loss(float("nan"), quick_at_batch_2, "in epoch 1 by step 20")
    with pytest.raises(TrainingDiverged, match=r"lower --lr\. Nothing"):  # a rate of one's own: no preset to scale
        train_module.check_loss(float("nan"), replace(quick_at_batch_2, lr=0.3), "in epoch 1 by step 20")


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--arch", "vgg12"], "unknown architecture 'vgg12'; valid: A, A-LRN", 2),
        (["--image-size", "16"], "image size 16 is too small", 2),
        (["--data-dir", "/nonexistent"], "data directory /nonexistent (--data-dir) does not exist", 3),
        (["--out", "/proc/forbidden"], "cannot write to output directory /proc/forbidden", 3),
        (["--preset", "fast"], "unknown preset 'fast'; valid: seed, full, quick", 2),
        # an unavailable device is exit 6, as `run --provider cuda` answers (it was a usage error, exit 2)
        (["--device", "cuda"], "--device cuda was asked for, but torch sees no CUDA GPU", 6),
    ],
)
@pytest.mark.slow
def test_bad_training_input_is_one_line(args, message, code):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = cli("train", "--epochs", "1", "--train-limit", "500", *args)
    assert result.returncode == code, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr


@pytest.mark.slow
def test_corrupt_data_is_a_one_line_error(tmp_path, data_dir):
    from vggdeploy.data.fashion_mnist import SPLITS

    for spec in (*SPLITS["train"], *SPLITS["test"]):
        (tmp_path / spec.name).write_bytes((data_dir / spec.name).read_bytes())
    (tmp_path / SPLITS["train"][0].name).write_bytes(b"\x1f\x8b garbage")
    result = cli("train", "--epochs", "1", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 3 and "train-images-idx3-ubyte.gz: not a complete gzip file" in result.stderr


def test_unset_flags_keep_the_preset():
    from vggdeploy.model.archs import model_args_from_options

    quick = PRESETS["quick"]
    args = model_args_from_options(quick.model.to_dict(), arch=None, batch_norm=None, width_ratio=None, image_size=None)
    assert quick.with_overrides(model=args, epochs=None, lr=None) == quick
    assert quick.with_overrides(epochs=3).epochs == 3 and quick.with_overrides(epochs=3).lr == quick.lr
    assert model_args_from_options(quick.model.to_dict(), arch="vgg16").batch_norm is False
    full = PRESETS["full"]  # the checkpoint writes are part of the preset's measured time: unset, they stay its own
    assert full.with_overrides(save_every=None, calibration_holdout=None) == full and full.save_every == 10
    assert full.with_overrides(save_every=1).save_every == 1


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "vggdeploy-checkpoint/1", "payload": Exploit()}, path)
    with pytest.raises(DataError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(trained, tmp_path):
    _, out = trained
    data = (out / "checkpoints" / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or not a checkpoint") as refused:
        load_checkpoint(tmp_path / "cut.pt")
    assert str(refused.value).endswith(")") and "there is a high" not in str(refused.value)  # whole sentences only
    with pytest.raises(DataError, match=r"^/dev/null: not a regular file, so not a checkpoint$"):  # was "no such"
        load_checkpoint("/dev/null")
    with pytest.raises(DataError, match=r"absent\.pt: no such checkpoint$"):
        load_checkpoint(tmp_path / "absent.pt")


@pytest.mark.slow
def test_two_process_gloo_run_under_torchrun(tmp_path, data_dir):
    """DDP on the CPU, with --fit-to-time: the ranks agree on the epochs that fit (their clocks differ)."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "vggdeploy",
            "train",
            *TINY_MODEL,
            "--epochs",
            "3",
            "--time-limit",
            "600",
            "--fit-to-time",
            "--train-limit",
            "2000",
            "--test-limit",
            "400",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("of best.pt (epoch") == 1  # only rank 0 reports
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (
        state["epoch"] == 3
        and state["train_config"]["epochs"] == 3
        and not any(k.startswith("module.") for k in state["model_state"])
    )


@pytest.mark.slow
def test_resume_with_more_epochs_extends_a_finished_run(trained, tmp_path, data_dir):
    """A finished 2-epoch run resumed with --epochs 3 trains one more epoch; the schedule is re-planned for 3 epochs,
    so the extension ends at the 3-epoch schedule's final rate. Without a larger --epochs there is nothing to do."""
    import shutil

    _, out = trained
    shutil.copytree(out, tmp_path / "run")
    finished = cli("train", "--out", str(tmp_path / "run"), "--resume", "--quiet")
    assert finished.returncode == 2
    assert "has finished 2 epochs; pass --epochs N with N > 2 to train on" in finished.stderr
    extended = cli(
        "train",
        "--out",
        str(tmp_path / "run"),
        "--resume",
        "--epochs",
        "3",
        "--save-every",
        "2",  # how often it writes is not a setting of the model: a resume may change it
        "--quiet",
        "--json",
        "--data-dir",
        str(data_dir),
    )
    assert extended.returncode == 0, extended.stderr
    summary = json.loads(extended.stdout)
    assert summary["epochs_run"] == 1 and summary["stopped_early"] is None
    history = [json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    extension = TINY.with_overrides(epochs=3)
    steps = TINY_STEPS
    assert history[2]["lr_end"] == pytest.approx(train_module.learning_rate(extension, 3 * steps - 1, 3 * steps))
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_config"]
    assert saved["epochs"] == 3 and saved["save_every"] == 2


@pytest.mark.slow
def test_a_new_run_never_replaces_an_earlier_one_unasked(trained, tmp_path):
    """A second `train` into the default folder replaced a 100 % best.pt with a 66.67 % one, with only a warning:
    without --out a new run takes the next numbered folder; an --out that holds a run is refused, naming --resume
    and --overwrite; --overwrite replaces it and says what an export made from it no longer matches."""
    import shutil

    _, out = trained
    shutil.copytree(out, tmp_path / "run")
    (tmp_path / "run" / "onnx").mkdir()
    (tmp_path / "run" / "onnx" / "model.onnx").write_bytes(b"an export of the earlier run")
    earlier = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    before = (tmp_path / "run" / "checkpoints" / "best.pt").read_bytes()
    small = (*TINY_CLI, "--train-limit", "300", "--test-limit", "50")
    refused = cli("train", *small, "--out", str(tmp_path / "run"))
    assert refused.returncode == 2 and refused.stderr == (
        f"error: --out {tmp_path / 'run'} holds an earlier run: --resume continues it, --overwrite replaces it, or "
        "choose another --out\n"
    )
    assert (tmp_path / "run" / "checkpoints" / "best.pt").read_bytes() == before
    result = cli("train", *small, "--out", str(tmp_path / "run"), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (
        f"vggdeploy: warning: {tmp_path / 'run'} holds an earlier run (epoch {earlier['epoch']}, test accuracy "
        f"{earlier['test_accuracy']:.2%}); this run replaces its checkpoints and training reports (--overwrite); "
        f"{tmp_path / 'run' / 'onnx' / 'model.onnx'} was exported from the earlier run: export again after this one\n"
    ) in result.stderr
    both = cli("train", *small, "--out", str(tmp_path / "run"), "--overwrite", "--resume")
    assert (
        both.returncode == 2 and "--resume continues the run in the folder and --overwrite replaces it" in both.stderr
    )
    fresh = cli("train", *small, "--out", str(tmp_path / "new"))
    assert fresh.returncode == 0 and "holds an earlier run" not in fresh.stderr

    # without --out: artifacts/<model>, then <model>-2 (in a working directory of its own)
    work = tmp_path / "work"
    work.mkdir()
    first, second = (cli("train", *small, "--quiet", "--json", cwd=work) for _ in range(2))
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    paths = [json.loads(r.stdout)["out_dir"] for r in (first, second)]
    assert paths[1] == paths[0] + "-2" and f"holds an earlier run; this one goes to {paths[1]}" in second.stderr
    assert (work / paths[0] / "checkpoints" / "best.pt").is_file()
    resumed = cli("train", *small, "--resume", "--epochs", "2", "--quiet", "--json", cwd=work)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["out_dir"] == paths[1]  # the newest run


def test_a_model_export_would_refuse_is_named_before_training(tmp_path, data_dir, monkeypatch, capsys):
    """Hours of training for a model over one .onnx file's 2 GiB, which export refuses: the run says so first."""
    import dataclasses

    from vggdeploy.model import vgg as model_module

    monkeypatch.setattr(model_module, "ONE_ONNX_FILE_BYTES", 1000)  # the tiny model stands in for a 2.25 GB one
    config = dataclasses.replace(TINY, epochs=1, train_limit=300, test_limit=50, batch_size=32)
    train_module.train(config, tmp_path / "run", data_dir=data_dir, progress=False)
    warning = next(line for line in capsys.readouterr().err.splitlines() if "warning" in line)
    assert warning.startswith("vggdeploy: warning: this model's ") and "so it cannot be exported" in warning


@pytest.mark.slow
def test_train_json_keeps_stdout_for_the_json_alone(tmp_path):
    """Progress bars and per-epoch lines go to stderr, so `train --json` output parses as it is (scripts/demo.sh)."""
    result = cli(
        "train",
        *TINY_CLI,
        "--train-limit",
        "512",
        "--test-limit",
        "128",
        "--batch-size",
        "64",
        "--json",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    # the plan comes first: --batch-size alone scales the preset's lr (0.2 at batch 256) by sqrt(64 / 256) (the one
    # epoch given leaves too few steps, which a warning says)
    lines = result.stderr.splitlines()
    assert lines[0] == "vggdeploy: 461 training images: batch 64, 1 epoch, 7 steps, lr 0.1 (lr sized to the data)"
    assert lines[1].startswith("vggdeploy: warning: 7 optimizer steps on 461 training images are few (the default ")
    assert lines[1].endswith("e.g. --batch-size 32 --epochs 108 --lr 0.0707, or leave them out")
    summary = json.loads(result.stdout)
    assert summary["best_checkpoint"] == str(tmp_path / "checkpoints" / "best.pt") and summary["epochs_run"] == 1
    assert summary["summary"].startswith("test accuracy ") and "; 1 epoch in " in summary["summary"]
    assert summary["recipe"] == lines[0].removeprefix("vggdeploy: ")
    assert "epoch 1: validation accuracy " in result.stderr


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_a_model_trained_channels_last_is_saved_in_the_standard_layout(tmp_path, data_dir, test_split, precision):
    """bf16 training (the GPU's, here on the CPU) and the CPU's fp32 default both run the model channels_last; the
    checkpoint holds the weights in the standard layout, like a contiguous run's, and they give the same logits in
    either layout."""
    config = TINY.with_overrides(epochs=1, train_limit=640, test_limit=100, precision=precision)
    assert train_module.uses_bf16(config, torch.device("cpu")) == (precision == "bf16")
    assert train_module.uses_channels_last(config, torch.device("cpu"))
    train_module.train(config, tmp_path / "run", data_dir=data_dir, progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model_state"]
    fresh = build_model(config.model).state_dict()
    assert {k: (v.shape, v.stride()) for k, v in state.items()} == {k: (v.shape, v.stride()) for k, v in fresh.items()}
    model, _ = rebuild_model(tmp_path / "run" / "checkpoints" / "last.pt")
    images = torch.nn.functional.interpolate(test_split[0][:32].float().unsqueeze(1) / 255, size=32)
    with torch.no_grad():
        standard = model(images)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(images.contiguous(memory_format=torch.channels_last)), standard)
