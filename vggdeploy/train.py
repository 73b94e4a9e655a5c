"""The training loop: device-resident data, one-cycle SGD, per-epoch checkpoints, exact resume, optional DDP.

Randomness is a function of what a checkpoint holds: shuffling and augmentation draw from a generator seeded by
(seed, epoch), dropout is re-seeded by (seed, epoch, step). A run resumed from any checkpoint, also one saved by
Ctrl-C in the middle of an epoch, therefore draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from vggdeploy.artifacts import RunFolder
from vggdeploy.checkpoint import library_versions, load_checkpoint, save_checkpoint
from vggdeploy.config import TrainConfig
from vggdeploy.data import Augmentation, data_checksums, iterate_batches, load_split
from vggdeploy.errors import Interrupted, TrainingDiverged, UsageError
from vggdeploy.files import ensure_writable, remove_stale_temporaries
from vggdeploy.hardware import gpu_peak_tflops, peak_fraction
from vggdeploy.model import build_model, summarize
from vggdeploy.preprocess import PreprocessSpec
from vggdeploy.report import plot_training_curves, write_json, write_jsonl

PROGRESS_EVERY = 20  # steps between progress updates (each one synchronises with the device)


class _StopRequests:
    """Turns the first SIGINT/SIGTERM into a flag read at step boundaries (a second one stops at once), and keeps the
    wall-clock deadline of ``--time-limit`` (counted from the start of the run, data loading included)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool, time_limit: float | None = None) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: str | None = None
        self._previous: dict = {}
        self.started = time.perf_counter()
        self.time_limit = time_limit

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def out_of_time(self, step: int, distributed: "_Distributed", device: torch.device) -> bool:
        """True once the time limit has passed. Under DDP every rank must agree, so the ranks compare their clocks
        every PROGRESS_EVERY steps (all take the same steps) instead of each deciding alone."""
        if self.time_limit is None:
            return False
        late = self.elapsed() >= self.time_limit
        if distributed.world == 1:
            return late
        if step % PROGRESS_EVERY:
            return False
        flag = torch.tensor(float(late), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _handle(self, number, _frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(number).name

    def __enter__(self) -> "_StopRequests":
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    best_accuracy: float
    final_accuracy: float
    epochs_run: int
    wall_seconds: float
    images_per_second: float  # training throughput over the epochs this run trained (all ranks together)
    peak_fraction: float | None  # of the GPU's bf16 tensor peak; None on the CPU
    history: list[dict]
    stopped_early: str | None = None  # why the run ended before its last epoch (the time limit), else None

    def to_dict(self) -> dict:
        """What ``train --json`` prints: the run folder's paths and the figures (scripts read these, not the text)."""
        folder = RunFolder(self.out_dir)
        figures = {k: v for k, v in asdict(self).items() if k not in ("out_dir", "history")}
        return {"out_dir": str(folder.path), "best_checkpoint": str(folder.best_checkpoint),
                "last_checkpoint": str(folder.last_checkpoint), "metrics": str(folder.metrics), **figures}  # fmt: skip

    def format(self) -> str:
        peak = f", {self.peak_fraction:.1%} of bf16 peak" if self.peak_fraction is not None else ""
        stopped = f"; {self.stopped_early}, continue with --resume" if self.stopped_early else ""
        return (
            f"best test accuracy {self.best_accuracy:.2%}, final {self.final_accuracy:.2%} after {self.epochs_run} "
            f"epochs in {self.wall_seconds:.0f} s ({self.images_per_second:,.0f} train img/s{peak}){stopped}; "
            f"checkpoints in {RunFolder(self.out_dir).checkpoints}"
        )


@dataclass(frozen=True)
class _Distributed:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA GPU")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def uses_bf16(config: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast with channels_last: tensor cores on a GPU; on a CPU only when asked (fast only with AMX)."""
    return config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")


def _start_distributed(device: torch.device) -> _Distributed:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Distributed()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Distributed(dist.get_rank(), world)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """One-cycle: linear warm-up over 20 % of the steps from lr/25, then cosine down to lr/1e4."""
    if config.schedule == "constant":
        return config.lr
    warmup = max(1, int(0.2 * total_steps))
    if step < warmup:
        return config.lr * (1 / 25 + (1 - 1 / 25) * step / warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.lr * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.SGD:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)


def _peak_fraction(device: torch.device, images_per_second: float, forward_gflops: float) -> float | None:
    """Of the GPU's bf16 peak; a training step is about 3 forward passes of work (forward, two for backward)."""
    if device.type != "cuda":
        return None
    peak = gpu_peak_tflops(torch.cuda.get_device_name(device), "bf16")
    return peak_fraction(images_per_second, 3 * forward_gflops, peak and peak * 1e3)


@torch.no_grad()
def evaluate(
    model, images, labels, spec: PreprocessSpec, batch_size: int, distributed=_Distributed(), bf16: bool = False
) -> tuple[float, float]:
    """(mean loss, accuracy) on the given split; with DDP each rank takes its shard and the sums are reduced."""
    model.eval()
    sums = torch.zeros(2, device=images.device, dtype=torch.float64)
    count = 0
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16)
    for batch, target in iterate_batches(images, labels, batch_size, spec, shard=(distributed.rank, distributed.world)):
        with autocast:
            logits = model(batch).float()
        sums += torch.stack([F.cross_entropy(logits, target, reduction="sum"), (logits.argmax(1) == target).sum()]).to(sums)
        count += len(target)
    totals = torch.cat([sums, sums.new_tensor([count])])
    if distributed.world > 1:
        dist.all_reduce(totals)
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def _load_data(config: TrainConfig, data_dir, device: torch.device):
    train_images, train_labels = load_split("train", data_dir)
    test_images, test_labels = load_split("test", data_dir)
    train_images, train_labels = train_images[: config.train_limit], train_labels[: config.train_limit]
    test_images, test_labels = test_images[: config.test_limit], test_labels[: config.test_limit]
    return [t.to(device) for t in (train_images, train_labels, test_images, test_labels)]


def _resume_state(out_dir: Path, config: TrainConfig) -> dict | None:
    path = RunFolder(out_dir).last_checkpoint
    if not path.is_file():
        raise UsageError(f"--resume: no checkpoint to resume at {path}")
    state = load_checkpoint(path)
    saved = TrainConfig.from_dict(state["train_config"])
    differing = [k for k, v in config.to_dict().items() if k != "device" and saved.to_dict()[k] != v]
    if differing:
        raise UsageError(f"--resume: {path} was trained with other settings ({', '.join(differing)}); use the same ones")
    return state


def train(
    config: TrainConfig, out_dir: str | Path, data_dir=None, resume: bool = False, progress: bool = True,
    time_limit: float | None = None,
) -> TrainResult:  # fmt: skip
    """Train ``config`` into ``out_dir`` (checkpoints/, train/); resumable from ``checkpoints/last.pt``.

    ``time_limit`` (seconds of wall time from this call) ends the run cleanly at the first step boundary past it:
    ``last.pt`` is saved at that step, so ``--resume`` continues exactly there, and ``best.pt`` keeps the best
    finished epoch.
    """
    if time_limit is not None and not time_limit > 0:
        raise UsageError(f"the time limit must be positive, got {time_limit:g} s")
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    distributed = _start_distributed(device)
    try:
        with _StopRequests(enabled=distributed.world == 1, time_limit=time_limit) as stop:
            return _train(config, out_dir, data_dir, resume, progress, device, distributed, stop)
    finally:
        if distributed.world > 1:
            dist.destroy_process_group()


def _train(config, out_dir, data_dir, resume, progress, device, distributed, stop: _StopRequests) -> TrainResult:
    if distributed.is_main:
        ensure_writable(RunFolder(out_dir).checkpoints)
        remove_stale_temporaries(RunFolder(out_dir).checkpoints)
    state = _resume_state(out_dir, config) if resume else None
    train_images, train_labels, test_images, test_labels = _load_data(config, data_dir, device)
    spec = PreprocessSpec(config.model.image_size, config.model.image_size)
    augmentation = Augmentation(config.flip, config.shift, config.erase)

    torch.manual_seed(config.seed)
    model = build_model(config.model).to(device)
    optimizer = _optimizer(model, config)
    history: list[dict] = []
    in_progress = None  # {"step", "running"} of an epoch interrupted by Ctrl-C
    if state is not None:
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        history = list(state["metrics"])
        in_progress = state.get("in_progress")
    start_epoch = len(history)
    bf16 = uses_bf16(config, device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    trained = torch.nn.parallel.DistributedDataParallel(model) if distributed.world > 1 else model
    runner = torch.compile(trained) if config.compile else trained
    steps_per_epoch = len(train_images) // distributed.world // config.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"batch size {config.batch_size} is larger than the {len(train_images)} training images per process")
    total_steps = steps_per_epoch * config.epochs
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    forward_gflops = summarize(config.model).gflops
    checksums = data_checksums(data_dir)

    trained_images, train_seconds, stopped_at = 0, 0.0, None
    elapsed_before = history[-1].get("elapsed_seconds", 0.0) if history else 0.0  # wall time of the runs resumed from
    for epoch in range(start_epoch, config.epochs):
        generator = torch.Generator(device).manual_seed(config.seed * 100_003 + epoch)
        runner.train()
        skip = in_progress["step"] if in_progress and epoch == start_epoch else 0
        running = torch.tensor(in_progress["running"], device=device) if skip else torch.zeros(3, device=device)
        resumed_images = running[2].item()  # trained before an interruption: not part of this run's speed
        epoch_start = time.perf_counter()
        batches = iterate_batches(
            train_images, train_labels, config.batch_size, spec, generator, augmentation,
            shard=(distributed.rank, distributed.world), drop_last=True,
        )  # fmt: skip
        batch_count = torch.tensor(float(config.batch_size), device=device)  # drop_last: every batch is full
        batches = itertools.islice(batches, steps_per_epoch)  # every rank takes the same number of steps
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                   disable=not (progress and distributed.is_main), leave=True, dynamic_ncols=True)  # fmt: skip
        for step, (batch, target) in enumerate(bar):
            if step < skip:
                continue  # already trained before the interruption; generating it replays its random draws
            if stop.received:
                _save_interrupted(out_dir, model, optimizer, config, history, checksums, step, running)
                raise Interrupted(
                    f"interrupted ({stop.received}) in epoch {epoch + 1} at step {step}/{steps_per_epoch}; saved "
                    f"{RunFolder(out_dir).last_checkpoint}; continue with --resume and the same settings"
                )
            if stop.out_of_time(step, distributed, device):
                if distributed.is_main:
                    _save_interrupted(out_dir, model, optimizer, config, history, checksums, step, running)
                stopped_at = step
                break
            torch.manual_seed(config.seed * 100_003 + epoch * 1_000_003 + step)  # dropout
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, global_step, total_steps)
            if bf16:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = runner(batch)
                loss = F.cross_entropy(logits.float(), target, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += torch.stack([loss.detach() * len(target), (logits.argmax(1) == target).sum(), batch_count])
            if (step + 1) % PROGRESS_EVERY == 0 or step + 1 == steps_per_epoch:
                seen = running[2].item()
                mean_loss = running[0].item() / seen
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"the loss became {mean_loss} in epoch {epoch + 1} by step {step + 1} "
                        f"(lr {config.lr:g}); lower --lr. Nothing was saved from this epoch"
                    )
                rate = (seen - resumed_images) * distributed.world / (time.perf_counter() - epoch_start)
                bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{running[1].item() / seen:.3f}", img_s=f"{rate:,.0f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_train_seconds = time.perf_counter() - epoch_start
        train_seconds += epoch_train_seconds
        trained_images += int(running[2].item() - resumed_images) * distributed.world
        bar.close()
        if stopped_at is not None:
            stopped = (f"stopped by the {stop.time_limit:g} s time limit in epoch {epoch + 1} at step "
                       f"{stopped_at}/{steps_per_epoch}")  # fmt: skip
            if not history:
                raise Interrupted(f"{stopped}, before any epoch ended; saved {RunFolder(out_dir).last_checkpoint}; "
                                          "continue with --resume and the same settings")  # fmt: skip
            break
        if distributed.world > 1:
            dist.all_reduce(running)
        test_loss, test_accuracy = evaluate(runner, test_images, test_labels, spec, config.eval_batch_size, distributed, bf16)
        history.append({
            "epoch": epoch + 1,
            "train_loss": running[0].item() / running[2].item(),
            "train_accuracy": running[1].item() / running[2].item(),
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "lr_end": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - epoch_start,
            "train_images_per_second": (running[2].item() - resumed_images * distributed.world) / epoch_train_seconds,
            "elapsed_seconds": elapsed_before + stop.elapsed(),  # wall time since the run began, evaluation included
        })  # fmt: skip
        if distributed.is_main:
            _save_epoch(out_dir, model, optimizer, config, history, checksums)
            if progress:
                tqdm.write(f"epoch {epoch + 1}: test accuracy {test_accuracy:.2%}, test loss {test_loss:.4f}")
        if stop.received and epoch + 1 < config.epochs:
            raise Interrupted(
                f"interrupted ({stop.received}) after epoch {epoch + 1}; saved {RunFolder(out_dir).last_checkpoint}; "
                "continue with --resume and the same settings"
            )

    rate = trained_images / train_seconds if train_seconds else 0.0
    best = max(row["test_accuracy"] for row in history)
    result = TrainResult(
        out_dir, best, history[-1]["test_accuracy"], len(history) - start_epoch, stop.elapsed(),
        rate, _peak_fraction(device, rate, forward_gflops), history, stopped if stopped_at is not None else None,
    )  # fmt: skip
    if distributed.is_main:
        _write_reports(out_dir, config, result, device)
    return result


def _state(model, optimizer, config: TrainConfig, history: list[dict], checksums: dict) -> dict:
    return {
        "model_args": config.model.to_dict(),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer_state": optimizer.state_dict(),
        "train_config": config.to_dict(),
        "epoch": len(history),
        "metrics": history,
        "test_accuracy": history[-1]["test_accuracy"] if history else None,
        "data_checksums": checksums,
    }


def _save_epoch(out_dir: Path, model, optimizer, config: TrainConfig, history: list[dict], checksums: dict) -> None:
    state = _state(model, optimizer, config, history, checksums)
    folder = RunFolder(out_dir)
    save_checkpoint(folder.last_checkpoint, state)
    if history[-1]["test_accuracy"] >= max(row["test_accuracy"] for row in history):
        save_checkpoint(folder.best_checkpoint, {k: v for k, v in state.items() if k != "optimizer_state"})
    write_jsonl(folder.metrics, history)


def _save_interrupted(out_dir, model, optimizer, config, history, checksums, step: int, running: torch.Tensor) -> None:
    """last.pt at a step boundary inside an epoch: enough to resume exactly where training stopped."""
    state = _state(model, optimizer, config, history, checksums)
    state["in_progress"] = {"step": step, "running": running.detach().cpu().tolist()}
    save_checkpoint(RunFolder(out_dir).last_checkpoint, state)


def _write_reports(out_dir: Path, config: TrainConfig, result: TrainResult, device: torch.device) -> None:
    folder = RunFolder(out_dir)
    plot_training_curves(folder.curves, result.history, f"{config.model.name} on Fashion-MNIST")
    write_json(
        folder.summary,
        {
            "model": config.model.name,
            "best_test_accuracy": result.best_accuracy,
            "final_test_accuracy": result.final_accuracy,
            "epochs_this_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "wall_seconds": result.wall_seconds,
            "train_images_per_second": result.images_per_second,
            "bf16_peak_fraction": result.peak_fraction,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
            "config": config.to_dict(),
            "versions": library_versions(),
        },
    )
