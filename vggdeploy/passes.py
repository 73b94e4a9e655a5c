"""Passes of many test images through torch and ONNX Runtime at once, in batches that fit in memory, with progress.

At 224 px one image's first VGG activation is 64 x 224 x 224 floats (12.8 MB): a batch of 256 holds 3.3 GB in that
one layer, and the next layer's output is alive beside it. On a CPU the batch is therefore sized from the model's
largest activation (``ACTIVATION_BUDGET``); images are preprocessed one batch at a time, never a whole split at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import torch
from tqdm import tqdm

from vggdeploy.data.batches import to_input_tensor
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.deploy.session import run_scored
from vggdeploy.model.archs import ModelArgs
from vggdeploy.model.familiarity import Representations
from vggdeploy.model.vgg import predict_logits, summarize

ACTIVATION_BUDGET = 48 * 2**20  # bytes one layer's output may take for a whole batch, on a CPU
LARGEST_BATCH = 256  # images per forward pass where memory allows it (and always on a GPU)
DENSE_BATCH = 64  # on a CPU, images the dense layers take at once (their weights are read once for them all)
PROGRESS_DELAY_S = 3.0  # a pass shorter than this shows no progress bar

Engine = Callable[[np.ndarray], np.ndarray]  # preprocessed (N, C, H, W) float32 -> (N, classes) logits


def torch_device() -> str:
    """Where torch's passes run: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def working_batch(args: ModelArgs, device: str) -> int:
    """Images per forward pass: ``LARGEST_BATCH`` on a GPU; on a CPU as many as keep the largest layer output within
    ``ACTIVATION_BUDGET`` (256 for the quick 32 px model, 3 for VGG-11 at 224 px), at least 1."""
    if device != "cpu":
        return LARGEST_BATCH
    per_image = summarize(args).largest_activation * 4  # float32
    return max(1, min(LARGEST_BATCH, ACTIVATION_BUDGET // per_image))


def stream_batch(args: ModelArgs, device: str) -> int:
    """Images preprocessed and handed to the engines at once: the working batch, or on a CPU up to ``DENSE_BATCH``
    where their inputs fit in ``ACTIVATION_BUDGET`` (64 for VGG-11 at 224 px, whose convolutions still run 3 at a
    time), so that torch's dense layers take many images a call."""
    batch = working_batch(args, device)
    if device != "cpu":
        return batch
    per_image = args.in_channels * args.image_size**2 * 4  # float32 inputs
    return max(batch, min(DENSE_BATCH, ACTIVATION_BUDGET // per_image))


def torch_engine(model: torch.nn.Module, device: str, batch: int) -> Engine:
    """Strict fp32 torch logits (TF32 off), ``batch`` images per forward pass. On a CPU the model's weights are put in
    channels_last first, in place (its values and its ONNX export stay the same): export's passes ran 1.04x (224 px)
    to 1.55x (the quick model) faster so (BENCHMARKS.md, "the slice sample and the CPU's layout"), and the logits
    move by float summation order only."""
    if device == "cpu":
        model.to(memory_format=torch.channels_last)
    return lambda inputs: predict_logits(model, inputs, device, chunk=batch)


def session_engine(session, batch: int) -> Engine:
    """An ONNX Runtime session's logits, ``batch`` images per call; for a model with the familiarity output, its
    score as one more column (as ``torch_engine`` gives it)."""
    return lambda inputs: np.column_stack(
        [part for part in run_scored(session, inputs, chunk=batch) if part is not None]
    )


def session_pass(
    session, images: torch.Tensor, spec: PreprocessSpec, batch: int, what: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """An ONNX Runtime session's logits of uint8 images and, for a model with the familiarity output, its scores:
    the images preprocessed one batch at a time, never all at once (1,000 at 224 px are 0.2 GB of inputs, 0.6 GB in
    colour), with progress."""
    columns = stream_logits(images, spec, {"onnx": session_engine(session, batch)}, batch, what)["onnx"]
    return split_familiarity(columns, len(session.get_outputs()) > 1)


def split_familiarity(columns: np.ndarray, scored: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """An engine's output as (logits, familiarity scores or None)."""
    return (columns[:, :-1], columns[:, -1]) if scored else (columns, None)


def torch_test_pass(
    model: torch.nn.Module, images: torch.Tensor, spec: PreprocessSpec, device: str, batch: int, scored: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """torch's strict fp32 logits of uint8 test images, and for a model with the familiarity output (``scored``) its
    scores, ``batch`` at a time with progress."""
    return split_familiarity(_torch_columns(model, images, spec, device, batch, "torch on test images"), scored)


def torch_representations(
    model: torch.nn.Module, images: torch.Tensor, spec: PreprocessSpec, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's strict fp32 logits of uint8 images with what the familiarity score reads, from one pass: (logits,
    first-stage statistics, penultimate features), the last two in float64 for the fit."""
    columns = torch_logits(Representations(model), images, spec, what)
    classes, width = model.args.num_classes, 2 * model.args.stages[0][0]  # a mean and a deviation per channel
    statistics, penultimate = columns[:, classes : classes + width], columns[:, classes + width :]
    return columns[:, :classes], statistics.astype(np.float64), penultimate.astype(np.float64)


CPU_SAMPLE = 1000  # images a CPU export passes through torch where the whole set would be costly
CPU_WHOLE_PASS_TFLOP = 20.0  # above this, one torch pass over a set takes minutes on a few CPU cores


@dataclass(frozen=True)
class SampledSet:
    """A set of images export may sample on a CPU: what it is called, the option that chooses the count, and the
    figures that rest on it."""

    images: str
    whole: str
    option: str
    figures: str


TEST_SET = SampledSet("test images", "the whole test set", "--test-images", "test-set figures")
HELD_OUT_SLICE = SampledSet(
    "held-out training images", "the whole slice", "--slice-images", "temperature and familiarity threshold"
)


@dataclass(frozen=True)
class EvaluationSample:
    """The images a figure rests on: indices evenly spread over the set (its first N would follow the order of a
    folder's classes), and why this many."""

    indices: np.ndarray
    of: int  # images in the set
    reason: str
    kind: SampledSet = TEST_SET

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sampled rows of the set's tensor (the tensor itself, not a copy, when the sample is all of it)."""
        return tensor if len(self) == self.of else tensor[torch.from_numpy(self.indices)]

    def format(self) -> str:
        return f"{self.kind.figures} on {len(self):,} of {self.of:,} {self.kind.images} ({self.reason})"

    def to_dict(self) -> dict:
        return {"images": len(self), "of": self.of, "reason": self.reason}


def evaluation_sample(
    images: int, asked: int | str | None, gflops: float, device: str, kind: SampledSet = TEST_SET
) -> EvaluationSample:
    """The images of a set of ``images`` export measures: ``asked`` ("all" or a count), else all of them, except on a
    CPU when a torch pass over them would exceed ``CPU_WHOLE_PASS_TFLOP``: then ``CPU_SAMPLE`` images."""
    whole_tflop = images * gflops / 1000
    if asked == "all":
        count, reason = images, f"{kind.option} all"
    elif asked is not None:
        count = min(int(asked), images)
        reason = f"{kind.option} {asked}"
    elif device == "cpu" and whole_tflop > CPU_WHOLE_PASS_TFLOP:
        count = min(CPU_SAMPLE, images)
        reason = (
            f"a CPU export's sample, evenly spread: torch over {kind.whole} would be {whole_tflop:,.0f} TFLOP; "
            f"{kind.option} all for every image"
        )
    else:
        count, reason = images, kind.whole
    return EvaluationSample(np.arange(count) * images // max(count, 1), images, reason, kind)


@dataclass(frozen=True)
class SlicePass:
    """torch over the held-out calibration slice, once for calibration and the familiarity fit: the labels, the
    logits and, when the familiarity fit asks, what the score reads; ``sample`` says which of the slice's images."""

    labels: np.ndarray
    logits: np.ndarray
    statistics: np.ndarray | None = None
    penultimate: np.ndarray | None = None
    sample: EvaluationSample | None = None  # None: every image of the slice

    @property
    def of(self) -> int:
        """Images in the whole slice."""
        return len(self.labels) if self.sample is None else self.sample.of

    def describe(self) -> str:
        """'1,000 of 5,000 held-out training images' for a sample, '5,000 held-out training images' for all."""
        return f"{part_of(len(self.labels), self.of)} held-out training images"


def part_of(count: int, whole: int | None) -> str:
    """'1,000 of 5,000' for a part of a set, '5,000' for all of it (or where its size is not known)."""
    return f"{count:,}" + (f" of {whole:,}" if whole is not None and count < whole else "")


def torch_slice_pass(
    model: torch.nn.Module,
    held_out: tuple[torch.Tensor, torch.Tensor],
    spec: PreprocessSpec,
    representations: bool,
    sample: EvaluationSample | None = None,
) -> SlicePass:
    """torch over the slice's images (``sample``'s, where given), with what the familiarity score reads when
    ``representations``."""
    images, labels = held_out if sample is None else (sample.take(part) for part in held_out)
    what = "torch on the held-out slice"
    if representations:
        return SlicePass(labels.numpy(), *torch_representations(model, images, spec, what), sample=sample)
    return SlicePass(labels.numpy(), torch_logits(model, images, spec, what), sample=sample)


def progress_bar(total: int, what: str, stream: TextIO | None = None) -> tqdm:
    """A bar with the images done and the time left, on a terminal only, shown once a pass outlasts
    ``PROGRESS_DELAY_S``."""
    return tqdm(
        total=total,
        desc=what,
        unit="img",
        file=stream or sys.stderr,
        disable=None,  # off where the stream is not a terminal (logs, pipes, tests)
        delay=PROGRESS_DELAY_S,
        leave=False,
        dynamic_ncols=True,
    )


def stream_logits(
    images: torch.Tensor, spec: PreprocessSpec, engines: dict[str, Engine], batch: int, what: str
) -> dict[str, np.ndarray]:
    """Each engine's logits for uint8 ``images``, preprocessed ``batch`` at a time and given to every engine in turn,
    so one preprocessing serves them all and only one batch of inputs is alive."""
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in engines}
    with progress_bar(len(images), what) as bar:
        for start in range(0, len(images), batch):
            inputs = to_input_tensor(images[start : start + batch], spec).numpy()
            for name, engine in engines.items():
                outputs[name].append(engine(inputs))
            bar.update(len(inputs))
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def torch_logits(model: torch.nn.Module, images: torch.Tensor, spec: PreprocessSpec, what: str = "torch") -> np.ndarray:
    """The torch fp32 logits of uint8 images, on the GPU when there is one, in batches that fit in memory."""
    device = torch_device()
    return _torch_columns(model, images, spec, device, working_batch(model.args, device), what)


def _torch_columns(
    model: torch.nn.Module, images: torch.Tensor, spec: PreprocessSpec, device: str, batch: int, what: str
) -> np.ndarray:
    """torch's outputs as columns: the convolutions ``batch`` images at a time, the dense layers a stream batch."""
    engine = torch_engine(model, device, batch)
    return stream_logits(images, spec, {"torch": engine}, stream_batch(model.args, device), what)["torch"]
