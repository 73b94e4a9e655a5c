"""The training loop: device-resident data, one-cycle SGD, per-epoch checkpoints, exact resume, optional DDP.

Randomness is a function of what a checkpoint holds: shuffling and augmentation draw from a generator seeded by
(seed, epoch), dropout is re-seeded by (seed, epoch, step). A run resumed from any checkpoint, also one saved by
Ctrl-C in the middle of an epoch, therefore draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from vggdeploy.artifacts import RunFolder, model_file
from vggdeploy.config import TrainConfig, rate_per_image_hint
from vggdeploy.data.batches import Augmentation, iterate_batches
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.errors import (
    DataError,
    Interrupted,
    TrainingDiverged,
    UsageError,
)
from vggdeploy.files import ensure_writable, folder_lock, remove_stale_temporaries
from vggdeploy.hardware import gpu_peak_tflops, peak_fraction
from vggdeploy.metrics.per_class import PerClassReport
from vggdeploy.model.checkpoint import load_checkpoint, save_checkpoint
from vggdeploy.model.vgg import build_model, count_parameters, onnx_size_problem, summarize
from vggdeploy.plots import plot_training_curves
from vggdeploy.report import write_json, write_jsonl
from vggdeploy.train.checkpoints import (
    checkpoint_state,
    keeping_what_was_saved,
    resume_state,
    selected_epoch,
    without_optimizer,
)
from vggdeploy.train.devices import (
    PROGRESS_EVERY,
    Distributed,
    resolve_device,
    start_distributed,
    uses_bf16,
    uses_channels_last,
)
from vggdeploy.train.recipe import SIZED_FIELDS, Recipe, size_to_data, too_few_steps
from vggdeploy.train.schedule import epochs_that_fit, learning_rate, seed_for
from vggdeploy.train.signals import StopRequests
from vggdeploy.train.training_data import TrainingData, fitted_to, load_dataset, load_training_data
from vggdeploy.versions import library_versions

EXPLODED_LOSS_FACTOR = 10  # a mean loss this many times the chance loss, ln(classes), means the weights blew up


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    selected_epoch: int  # the epoch in best.pt, chosen on the validation slice (see ``selected_epoch``)
    selected_validation_accuracy: float | None  # None without a validation slice (then the last epoch is chosen)
    selected_test_accuracy: float  # best.pt's accuracy on the test split, which took no part in choosing it
    final_test_accuracy: float  # the last epoch's
    epochs_run: int
    wall_seconds: float
    images_per_second: float  # training throughput over the epochs this run trained (all ranks together)
    peak_fraction: float | None  # of the GPU's bf16 tensor peak; None on the CPU
    history: list[dict]
    stopped_early: str | None = None  # why the run ended before its last epoch (the time limit), else None
    held_out: int = 0  # training images kept out of the gradient steps: validation, and export's temperature fit
    recipe: str | None = None  # the plan of batch size, epochs and rate, when it was sized to the data
    fitted_to: float | None = None  # --fit-to-time: the time limit the number of epochs was planned for

    def to_dict(self) -> dict:
        """What ``train --json`` prints: the run folder's paths and the figures (scripts read these, not the text)."""
        folder = RunFolder(self.out_dir)
        figures = {k: v for k, v in asdict(self).items() if k not in ("out_dir", "history")}
        return {
            "out_dir": str(folder.path),
            "best_checkpoint": str(folder.best_checkpoint),
            "last_checkpoint": str(folder.last_checkpoint),
            "metrics": str(folder.metrics),
            **figures,
            "summary": self.format(),  # the line `train` prints without --json
        }

    def format(self) -> str:
        peak = f", {self.peak_fraction:.1%} of bf16 peak" if self.peak_fraction is not None else ""
        stopped = f"; {self.stopped_early}, continue with --resume" if self.stopped_early else ""
        epochs = f"{self.epochs_run} epoch{'s' if self.epochs_run != 1 else ''}"
        if self.fitted_to is not None:
            epochs += f" (as many as fit the {self.fitted_to:g} s time limit)"
        held_out = f"{self.held_out:,} held-out training image{'s' if self.held_out != 1 else ''}"
        chosen = (
            f"by validation accuracy {self.selected_validation_accuracy:.2%} on {held_out}"
            if self.selected_validation_accuracy is not None
            else "the last (no validation slice: --calibration-holdout 0)"
        )
        return (
            f"test accuracy {self.selected_test_accuracy:.2%} of best.pt (epoch {self.selected_epoch}, chosen {chosen}), "
            f"final epoch's {self.final_test_accuracy:.2%}; {epochs} in {self.wall_seconds:.0f} s "
            f"({self.images_per_second:,.0f} train img/s{peak}){stopped}; "
            f"checkpoints in {RunFolder(self.out_dir).checkpoints}"
        )


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.SGD:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0
    )


def _peak_fraction(device: torch.device, images_per_second: float, forward_gflops: float) -> float | None:
    """Of the GPU's bf16 peak; a training step is about 3 forward passes of work (forward, two for backward)."""
    if device.type != "cuda":
        return None
    peak = gpu_peak_tflops(torch.cuda.get_device_name(device), "bf16")
    return peak_fraction(images_per_second, 3 * forward_gflops, peak and peak * 1e3)


@dataclass(frozen=True)
class Evaluation:
    """A model's figures on one split."""

    loss: float  # mean cross-entropy
    accuracy: float
    confusion: list[list[int]]  # [true class][predicted class] image counts


@torch.no_grad()
def evaluate(
    model,
    images,
    labels,
    spec: PreprocessSpec,
    batch_size: int,
    classes: int,
    distributed=Distributed(),
    bf16: bool = False,
) -> Evaluation:
    """Loss, accuracy and confusion matrix on the given split; with DDP each rank takes its shard and the sums are
    reduced."""
    model.eval()
    loss = torch.zeros(1, device=images.device, dtype=torch.float64)
    confusion = torch.zeros(classes * classes, device=images.device, dtype=torch.float64)
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16)
    for batch, target in iterate_batches(images, labels, batch_size, spec, shard=(distributed.rank, distributed.world)):
        with autocast:
            logits = model(batch).float()
        loss += F.cross_entropy(logits, target, reduction="sum").to(loss)
        confusion += torch.bincount(target * classes + logits.argmax(1), minlength=classes * classes).to(confusion)
    totals = torch.cat([loss, confusion])
    if distributed.world > 1:
        dist.all_reduce(totals)
    matrix = totals[1:].reshape(classes, classes)
    count = matrix.sum().item()
    return Evaluation((totals[0] / count).item(), (matrix.trace() / count).item(), matrix.long().cpu().tolist())


def train(
    config: TrainConfig,
    out_dir: str | Path,
    data_dir=None,
    resume: bool = False,
    progress: bool = True,
    time_limit: float | None = None,
    fit_to_time: bool = False,
    recipe_of: TrainConfig | None = None,
    given: Collection[str] = (),
) -> TrainResult:
    """Train ``config`` into ``out_dir`` (checkpoints/, train/); resumable from ``checkpoints/last.pt``.

    ``recipe_of`` (a preset) has its batch size, epochs and learning rate sized to the number of training images
    (``recipe``), all but those named in ``given`` (the config fields the user set, whose values ``config`` holds);
    the plan is printed before the first epoch. Without it, ``config``'s values are taken as they are.

    ``time_limit`` (seconds of wall time from this call) ends the run cleanly at the first step boundary past it:
    ``last.pt`` is saved at that step, so ``--resume`` continues exactly there, and ``best.pt`` keeps the best
    finished epoch. ``fit_to_time`` plans the run to end within the limit instead: ``config.epochs`` becomes the
    most epochs, and after each epoch the number that fits (see ``epochs_that_fit``) sets the learning-rate
    schedule's length, so the schedule anneals in the time given rather than being cut off at a high rate.
    ``config.save_every`` writes the checkpoints every that many epochs (and at the last, and at a stop) instead of
    after each: a kill or crash loses at most that many epochs, and the time the writes take goes to training.
    """
    if time_limit is not None and not time_limit > 0:
        raise UsageError(f"the time limit must be positive, got {time_limit:g} s")
    if fit_to_time and time_limit is None:
        raise UsageError("--fit-to-time plans the epochs for --time-limit SECONDS: give both")
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    distributed = start_distributed(device)
    lock = folder_lock(out_dir, "vggdeploy train") if distributed.is_main else contextlib.nullcontext()
    try:
        with lock, StopRequests(enabled=distributed.world == 1, time_limit=time_limit) as stop:
            preset = None if recipe_of is None or resume else Recipe(0, *(getattr(recipe_of, f) for f in SIZED_FIELDS))
            sizing = _Sizing(preset, tuple(given))
            return _train(config, out_dir, data_dir, resume, progress, device, distributed, stop, fit_to_time, sizing)
    finally:
        if distributed.world > 1:
            dist.destroy_process_group()


@dataclass
class RunningSums:
    """The epoch's sums so far, kept on the device (read back only for progress): loss x images, correct, images."""

    values: torch.Tensor

    @classmethod
    def start(cls, device: torch.device, saved: list[float] | None = None) -> RunningSums:
        return cls(torch.tensor(saved, device=device) if saved else torch.zeros(3, device=device))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, images: torch.Tensor) -> None:
        self.values += torch.stack([loss.detach() * len(target), (logits.argmax(1) == target).sum(), images])

    @property
    def images(self) -> float:
        return self.values[2].item()

    @property
    def mean_loss(self) -> float:
        return self.values[0].item() / self.images

    @property
    def accuracy(self) -> float:
        return self.values[1].item() / self.images

    def to_list(self) -> list[float]:
        return self.values.detach().cpu().tolist()


@dataclass
class _Run:
    """Everything one training run holds while its epochs go by."""

    config: TrainConfig
    out_dir: Path
    device: torch.device
    distributed: Distributed
    stop: StopRequests
    progress: bool
    data: TrainingData
    model: torch.nn.Module
    optimizer: torch.optim.SGD
    runner: torch.nn.Module  # the model as trained: DDP-wrapped and/or compiled
    bf16: bool
    channels_last: bool  # the model and its batches (checkpoints are saved in the standard layout all the same)
    steps_per_epoch: int
    history: list[dict]
    fit_to_time: bool = False  # config.epochs is then the plan, lowered after each epoch to what fits the time
    unsaved_best: dict | None = None  # best.pt's state from an epoch since the last write
    recipe: str | None = None  # the plan sized to the data, when it was
    epoch_confusion: list[list[int]] | None = None  # the last finished epoch's test confusion matrix
    selected_confusion: list[list[int]] | None = None  # best.pt's

    @property
    def spec(self) -> PreprocessSpec:
        return self.data.spec

    @property
    def validates(self) -> bool:
        """Whether a validation slice was held out to choose best.pt."""
        return len(self.data.validation_labels) > 0

    def state(self, with_optimizer: bool = True) -> dict:
        """A checkpoint's content as of now, with the last finished epoch's test confusion matrix."""
        optimizer = self.optimizer if with_optimizer else None
        return checkpoint_state(
            self.model, optimizer, self.config, self.history, self.data.provenance, self.epoch_confusion
        )

    def save_position(self, step: int, sums: RunningSums) -> None:
        """last.pt at a step boundary inside an epoch: enough to resume exactly where training stopped."""
        self.save_checkpoints({"step": step, "running": sums.to_list()})

    def keep_epoch(self) -> None:
        """After an epoch's evaluation: remember its state for best.pt when it is the best so far, and write the
        checkpoints every ``config.save_every`` epochs, at the planned last epoch and when a stop was asked for."""
        best = selected_epoch(self.history) is self.history[-1]
        if best:
            self.selected_confusion = self.epoch_confusion
        epochs = len(self.history)
        if epochs % self.config.save_every == 0 or epochs >= self.config.epochs or self.stop.received:
            self.save_checkpoints(best_now=best)
            return
        if best:
            self.unsaved_best = without_optimizer(self.state(with_optimizer=False))
        write_jsonl(RunFolder(self.out_dir).metrics, self.history)

    def save_checkpoints(self, in_progress: dict | None = None, best_now: bool = False) -> None:
        """last.pt (with the position inside an epoch, when given), best.pt if a better epoch is not on disk yet
        (``best_now``: this state is it), and metrics.jsonl."""
        state = self.state()
        if in_progress is not None:
            state["in_progress"] = in_progress
        if best_now:
            self.unsaved_best = without_optimizer(state)
        folder = RunFolder(self.out_dir)
        with keeping_what_was_saved(self.out_dir):
            save_checkpoint(folder.last_checkpoint, state)
            if self.unsaved_best is not None:
                save_checkpoint(folder.best_checkpoint, self.unsaved_best)
                self.unsaved_best = None
        write_jsonl(folder.metrics, self.history)


@dataclass(frozen=True)
class _EpochOutcome:
    sums: RunningSums
    seconds: float  # training time of the epoch (evaluation excluded)
    images: int  # trained in this run, all ranks together (a resumed epoch's earlier part excluded)
    stopped_at: int | None  # the step where the time limit stopped the epoch


def _say_what_a_new_run_replaces(folder: RunFolder) -> None:
    """A run told to --overwrite an earlier one replaces its checkpoints as it goes; one line on stderr says whose,
    and that an export made from them no longer matches them."""
    if not folder.last_checkpoint.is_file():
        return
    try:
        earlier = load_checkpoint(folder.last_checkpoint, mmap=True)
        record = f" (epoch {earlier['epoch']}, test accuracy {earlier['test_accuracy']:.2%})"
    except (DataError, KeyError, TypeError):
        record = ""
    export = model_file(folder.onnx)
    stale = f"; {export} was exported from the earlier run: export again after this one" if export.is_file() else ""
    print(
        f"vggdeploy: warning: {folder.path} holds an earlier run{record}; this run replaces its checkpoints and "
        f"training reports (--overwrite){stale}",
        file=sys.stderr,
    )


def _prepare(
    config, out_dir, data_dir, resume, progress, device, distributed, stop, fit_to_time, sizing
) -> tuple[_Run, dict | None]:
    """Data on the device, the model and optimizer (restored on --resume), the compiled/DDP runner."""
    if distributed.is_main:
        ensure_writable(RunFolder(out_dir).checkpoints)
        remove_stale_temporaries(RunFolder(out_dir).checkpoints)
    state = resume_state(out_dir, config) if resume else None
    dataset = load_dataset(config, data_dir, progress and distributed.is_main, sizing.given)
    config = fitted_to(config, dataset)
    data = load_training_data(config, dataset, device)
    recipe = None if sizing.preset is None else _sized(config, len(data.train_images) // distributed.world, sizing)
    if recipe is not None:
        config = replace(config, batch_size=recipe.batch_size, epochs=recipe.epochs, lr=recipe.lr)
    torch.manual_seed(config.seed)
    model = build_model(config.model).to(device)
    optimizer = _optimizer(model, config)
    if state is not None:
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
    bf16, channels_last = uses_bf16(config, device), uses_channels_last(config, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    trained = torch.nn.parallel.DistributedDataParallel(model) if distributed.world > 1 else model
    runner = torch.compile(trained) if config.compile else trained
    steps_per_epoch = len(data.train_images) // distributed.world // config.batch_size
    if steps_per_epoch == 0:
        largest = len(data.train_images) // distributed.world
        scaled = rate_per_image_hint(config.lr, largest * distributed.world)
        raise UsageError(
            f"batch size {config.batch_size} is larger than the {len(data.train_images)} training images per process: "
            f"lower --batch-size (at most {largest})" + (f"; {scaled}" if scaled else "")
        )
    if distributed.is_main and not resume:  # every setting and the data are good: the run will start
        if recipe is not None:
            print(f"vggdeploy: {recipe.format()}", file=sys.stderr)
            warning = too_few_steps(recipe, sizing.preset)
            if warning:
                print(f"vggdeploy: warning: {warning}", file=sys.stderr)
        _say_what_a_new_run_replaces(RunFolder(out_dir))
        too_large = onnx_size_problem(count_parameters(model))
        if too_large is not None:  # hours of training for a model the next stage refuses: say so first
            print(f"vggdeploy: warning: this model's {too_large}", file=sys.stderr)
    history = list(state["metrics"]) if state else []
    run = _Run(
        config,
        out_dir,
        device,
        distributed,
        stop,
        progress,
        data,
        model,
        optimizer,
        runner,
        bf16,
        channels_last,
        steps_per_epoch,
        history,
        fit_to_time,
        recipe=recipe and recipe.format(),
    )
    if state is not None and RunFolder(out_dir).best_checkpoint.is_file():
        run.selected_confusion = load_checkpoint(RunFolder(out_dir).best_checkpoint, mmap=True).get("test_confusion")
    return run, (state or {}).get("in_progress")


@dataclass(frozen=True)
class _Sizing:
    """What the recipe sizes to the data: a preset's batch size, epochs and rate (None: the config's as they are),
    and the names of the settings the user gave, which stay as given."""

    preset: Recipe | None
    given: tuple[str, ...] = ()


def _sized(config: TrainConfig, images: int, sizing: _Sizing) -> Recipe:
    """The batch size, epochs and rate the recipe plans for ``images`` (per process) from the preset's, keeping the
    settings the user gave (their values are ``config``'s)."""
    given = {name: getattr(config, name) for name in SIZED_FIELDS if name in sizing.given}
    return size_to_data(images, sizing.preset, given)


def _train(
    config, out_dir, data_dir, resume, progress, device, distributed, stop: StopRequests, fit_to_time, sizing
) -> TrainResult:
    run, in_progress = _prepare(
        config, out_dir, data_dir, resume, progress, device, distributed, stop, fit_to_time, sizing
    )
    start_epoch = len(run.history)
    elapsed_before = run.history[-1].get("elapsed_seconds", 0.0) if run.history else 0.0  # the runs resumed from
    trained_images, train_seconds, stopped = 0, 0.0, None
    epoch = start_epoch
    while epoch < run.config.epochs:  # --fit-to-time lowers run.config.epochs as the run goes
        resumed = in_progress if epoch == start_epoch else None
        outcome = _train_epoch(run, epoch, resumed)
        train_seconds += outcome.seconds
        trained_images += outcome.images
        if outcome.stopped_at is not None:
            stopped = (
                f"stopped by the {stop.time_limit:g} s time limit in epoch {epoch + 1} at step "
                f"{outcome.stopped_at}/{run.steps_per_epoch}"
            )
            if not run.history:
                raise Interrupted(
                    f"{stopped}, before any epoch ended; saved {RunFolder(out_dir).last_checkpoint}; "
                    "continue with --resume and the same settings"
                )
            break
        _finish_epoch(run, epoch, outcome, elapsed_before, start_epoch)
        if stop.received and epoch + 1 < run.config.epochs:
            raise Interrupted(
                f"interrupted ({stop.received}) after epoch {epoch + 1}; saved {RunFolder(out_dir).last_checkpoint}; "
                "continue with --resume and the same settings"
            )
        epoch += 1

    rate = trained_images / train_seconds if train_seconds else 0.0
    selected = selected_epoch(run.history)
    result = TrainResult(
        out_dir,
        selected["epoch"],
        selected.get("validation_accuracy"),
        selected["test_accuracy"],
        run.history[-1]["test_accuracy"],
        len(run.history) - start_epoch,
        stop.elapsed(),
        rate,
        _peak_fraction(device, rate, summarize(run.config.model).gflops),
        run.history,
        stopped,
        len(run.data.provenance["calibration_split"]["indices"]),
        run.recipe,
        stop.time_limit if fit_to_time else None,
    )
    if distributed.is_main:
        with keeping_what_was_saved(out_dir):
            _write_reports(out_dir, run.config, result, device, run.data.name)
            if run.selected_confusion is not None:
                PerClassReport.from_counts(run.data.class_names, run.selected_confusion).write(
                    RunFolder(out_dir).per_class,
                    RunFolder(out_dir).confusion,
                    f"{run.config.model.name} on {run.data.name}: best.pt (epoch {result.selected_epoch}) on the "
                    f"{len(run.data.test_labels):,} test images",
                )
    return result


def _train_epoch(run: _Run, epoch: int, resumed: dict | None) -> _EpochOutcome:
    """One epoch of SGD steps; ``resumed`` ({"step", "running"}) continues an epoch that was interrupted."""
    config, distributed, device = run.config, run.distributed, run.device
    skip = resumed["step"] if resumed else 0
    sums = RunningSums.start(device, resumed["running"] if skip else None)
    resumed_images = sums.images  # trained before an interruption: not part of this run's speed
    generator = torch.Generator(device).manual_seed(seed_for(config, epoch))
    batches = iterate_batches(
        run.data.train_images,
        run.data.train_labels,
        config.batch_size,
        run.spec,
        generator,
        Augmentation(config.flip, config.shift, config.erase),
        shard=(distributed.rank, distributed.world),
        drop_last=True,
    )
    batches = itertools.islice(batches, run.steps_per_epoch)  # every rank takes the same number of steps
    batch_images = torch.tensor(float(config.batch_size), device=device)  # drop_last: every batch is full
    total_steps = run.steps_per_epoch * config.epochs
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.bf16)
    bar = tqdm(
        batches,
        total=run.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        disable=not (run.progress and distributed.is_main),
        leave=True,
        dynamic_ncols=True,
    )
    run.runner.train()
    started, stopped_at = time.perf_counter(), None
    for step, (batch, target) in enumerate(bar):
        if step < skip:
            continue  # already trained before the interruption; generating it replays its random draws
        if run.stop.received:
            run.save_position(step, sums)
            raise Interrupted(
                f"interrupted ({run.stop.received}) in epoch {epoch + 1} at step {step}/{run.steps_per_epoch}; saved "
                f"{RunFolder(run.out_dir).last_checkpoint}; continue with --resume and the same settings"
            )
        if run.stop.out_of_time(step, distributed, device):
            if distributed.is_main:
                run.save_position(step, sums)
            stopped_at = step
            break
        torch.manual_seed(seed_for(config, epoch, step))  # dropout
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch * run.steps_per_epoch + step, total_steps)
        if run.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = run.runner(batch)
            loss = F.cross_entropy(logits.float(), target, label_smoothing=config.label_smoothing)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        sums.add(loss, logits, target, batch_images)
        if (step + 1) % PROGRESS_EVERY == 0 or step + 1 == run.steps_per_epoch:
            check_loss(sums.mean_loss, config, f"in epoch {epoch + 1} by step {step + 1}", distributed.world)
            rate = (sums.images - resumed_images) * distributed.world / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{sums.mean_loss:.3f}", acc=f"{sums.accuracy:.3f}", img_s=f"{rate:,.0f}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    bar.close()
    images = int(sums.images - resumed_images) * distributed.world
    return _EpochOutcome(sums, time.perf_counter() - started, images, stopped_at)


def _fit_epochs_to_time(run: _Run, first_epoch: int) -> None:
    """--fit-to-time: lower config.epochs (the learning-rate schedule's length) to what fits the time left. It never
    rises again: a longer schedule would lift the learning rate back up late in the run."""
    fitting = epochs_that_fit(run.history, first_epoch, run.stop.time_limit - run.stop.elapsed(), run.config.epochs)
    if fitting is None:
        return
    if run.distributed.world > 1:  # every rank must train the same epochs
        agreed = torch.tensor(float(fitting), device=run.device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        fitting = int(agreed.item())
    run.config = replace(run.config, epochs=fitting)


def check_loss(mean_loss: float, config: TrainConfig, where: str, processes: int = 1) -> None:
    """Stop a run whose loss is NaN or infinite, or finite but far above chance: weights that blew up give logits of
    1e20 and a loss in the thousands without ever reaching NaN, and would be saved as a "trained" model. ``processes``:
    torchrun's world, which multiplies the batch a step learns from."""
    chance = math.log(config.model.num_classes)
    if math.isfinite(mean_loss) and mean_loss <= EXPLODED_LOSS_FACTOR * max(chance, 1.0):
        return
    scaled = rate_per_image_hint(config.lr, config.batch_size * processes)
    advice = (
        "lower --lr" + (f" ({scaled})" if scaled else "") + ("" if config.model.batch_norm else ", or add --batch-norm")
    )
    raise TrainingDiverged(
        f"training diverged: the mean loss reached {mean_loss:.4g} {where} (chance is {chance:.3g}, lr "
        f"{config.lr:g}); {advice}. Nothing was saved from this epoch"
    )


def _finish_epoch(run: _Run, epoch: int, outcome: _EpochOutcome, elapsed_before: float, first_epoch: int) -> None:
    """Evaluate, append the epoch's metrics, re-plan the epochs under --fit-to-time, save last.pt (and best.pt when
    it is the best so far). ``first_epoch``: the index of this call's first epoch."""
    evaluation_started = time.perf_counter()
    if run.distributed.world > 1:
        dist.all_reduce(outcome.sums.values)
    classes = run.config.model.num_classes
    measure = lambda images, labels: evaluate(
        run.runner, images, labels, run.spec, run.config.eval_batch_size, classes, run.distributed, run.bf16
    )
    validation = measure(run.data.validation_images, run.data.validation_labels) if run.validates else None
    test = measure(run.data.test_images, run.data.test_labels)
    run.epoch_confusion = test.confusion
    run.history.append(
        {
            "epoch": epoch + 1,
            "train_loss": outcome.sums.mean_loss,
            "train_accuracy": outcome.sums.accuracy,
            "validation_loss": validation and validation.loss,
            "validation_accuracy": validation and validation.accuracy,
            "validation_images": len(run.data.validation_labels),
            "test_loss": test.loss,
            "test_accuracy": test.accuracy,
            "lr_end": run.optimizer.param_groups[0]["lr"],
            "epoch_seconds": outcome.seconds + time.perf_counter() - evaluation_started,  # training and evaluation
            "train_images_per_second": outcome.images / outcome.seconds,
            "elapsed_seconds": elapsed_before
            + run.stop.elapsed(),  # wall time since the run began, evaluation included
        }
    )
    if run.fit_to_time:
        _fit_epochs_to_time(run, first_epoch)
    if run.distributed.is_main:
        run.keep_epoch()
        if run.progress:
            validated = f"validation accuracy {validation.accuracy:.2%}, " if validation else ""
            tqdm.write(
                f"epoch {epoch + 1}: {validated}test accuracy {test.accuracy:.2%}, test loss {test.loss:.4f}",
                file=sys.stderr,
            )


def _write_reports(out_dir: Path, config: TrainConfig, result: TrainResult, device: torch.device, data: str) -> None:
    folder = RunFolder(out_dir)
    plot_training_curves(folder.curves, result.history, f"{config.model.name} on {data}")
    write_json(
        folder.summary,
        {
            "model": config.model.name,
            "selected_epoch": result.selected_epoch,
            "selected_validation_accuracy": result.selected_validation_accuracy,
            "selected_test_accuracy": result.selected_test_accuracy,
            "final_test_accuracy": result.final_test_accuracy,
            "selection": "best.pt is the latest epoch within one standard error of the best validation accuracy "
            "(held-out training images); the test split only reports",
            "recipe": result.recipe,
            "epochs_this_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "fitted_to_time_limit_seconds": result.fitted_to,  # --fit-to-time: the limit its epochs were planned for
            "held_out_for_calibration": result.held_out,
            "wall_seconds": result.wall_seconds,
            "train_images_per_second": result.images_per_second,
            "bf16_peak_fraction": result.peak_fraction,
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
            "config": config.to_dict(),
            "versions": library_versions(),
        },
    )
