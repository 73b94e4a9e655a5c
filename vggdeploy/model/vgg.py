"""One VGG builder for every column of the table in ``archs.py``, plus its shape walk and FLOP count."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vggdeploy.model.archs import LRN_ARCHS, ModelArgs


def _make_stage(in_channels: int, width: int, kernels: tuple[int, ...], batch_norm: bool, lrn: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, kernel in enumerate(kernels):
        layers.append(nn.Conv2d(in_channels, width, kernel_size=kernel, padding=kernel // 2))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        if lrn and index == 0:
            layers.append(nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0))  # the paper's settings
        in_channels = width
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def _spatial_size_after(features: nn.Sequential, size: int) -> int:
    """Side of the feature map the layers produce from a ``size``x``size`` input (no forward pass)."""
    for layer in features.modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            kernel, stride, padding = (
                (layer.kernel_size[0], layer.stride[0], layer.padding[0])
                if isinstance(layer, nn.Conv2d)
                else (layer.kernel_size, layer.stride, layer.padding)
            )
            size = (size + 2 * padding - kernel) // stride + 1
    return size


class VGG(nn.Module):
    """VGG with a classifier sized from the real feature map, so any image size >= 32 works."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        stages, in_channels = [], args.in_channels
        for index, (width, kernels) in enumerate(args.stages):
            stages.append(
                _make_stage(in_channels, width, kernels, args.batch_norm, args.arch in LRN_ARCHS and index == 0)
            )
            in_channels = width
        self.features = nn.Sequential(*stages)
        side = _spatial_size_after(self.features, args.image_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * side * side, args.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(args.dropout),
            nn.Linear(args.hidden, args.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(args.dropout),
            nn.Linear(args.hidden, args.num_classes),
        )
        if self.classifier[-1].weight.device.type != "meta":
            # On the meta device (shapes only: a checkpoint's weights are assigned after) torch's first random
            # init loads its reference kernels, 2 s of every export for values nobody reads.
            self._init_weights()

    def _init_weights(self) -> None:
        # Convolutions as torchvision (Kaiming, fan_out): PyTorch's default leaves plain-SGD VGG at chance for
        # many epochs. torchvision's fixed N(0, 0.01) for Linear layers only suits 4096-wide classifiers (narrow
        # ones then start with a vanishing signal), so Linear layers scale with their fan-in instead: Kaiming
        # before a ReLU, LeCun (std 1/sqrt(fan_in)) for the output layer.
        linears = [m for m in self.modules() if isinstance(m, nn.Linear)]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nonlinearity = "linear" if module is linears[-1] else "relu"
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=nonlinearity)
                nn.init.zeros_(module.bias)

    def convolve(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The convolutional stages' output: the part of the pass whose memory grows with the image."""
        return (self.features(images),)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The dense layers, on ``convolve``'s output."""
        return self.classifier(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(*self.convolve(images))


def build_model(args: ModelArgs) -> VGG:
    return VGG(args)


def predict_logits(
    model: nn.Module, inputs: np.ndarray, device: str | torch.device = "cpu", chunk: int = 256
) -> np.ndarray:
    """Strict fp32 logits of preprocessed (N, C, H, W) inputs (TF32 off on CUDA meanwhile): the convolutions
    ``chunk`` images at a time, the dense layers on all ``inputs`` at once, so that their weights are read from memory
    once a call (at 224 px on a CPU, reading the classifier's 470 MB for every 3 images was a quarter of the pass).
    A model with a second output (export's familiarity score) gives it as one more column after the logits."""
    model = model.to(device).eval()
    with torch.no_grad(), _tf32_off():
        chunks = [
            model.convolve(torch.from_numpy(inputs[i : i + chunk]).to(device)) for i in range(0, len(inputs), chunk)
        ]
        convolved = [torch.cat(part) for part in zip(*chunks, strict=True)]
        del chunks
        return _columns(model.classify(*convolved)).cpu().numpy()


def _columns(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.column_stack(output) if isinstance(output, tuple) else output


@contextmanager
def _tf32_off() -> Iterator[None]:
    """TF32 off for the block only: the process's own setting (training turns it on) comes back afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def release_weights(model: nn.Module) -> None:
    """Free the model's weights in place; the model is unusable afterwards. Dropping the last name of a model is not
    enough after an ONNX export: onnxscript's rewrite rules keep the last graph they matched, which refers to every
    parameter, until the next export (a 515 MB VGG stayed resident beside its ONNX copy)."""
    for tensor in (*model.parameters(), *model.buffers()):
        tensor.data = torch.empty(0, dtype=tensor.dtype)
    return_freed_memory()


def return_freed_memory() -> None:
    """Hand the C allocator's freed heap pages back to the system: glibc keeps them for reuse, 0.17 GB after a 224 px
    VGG's torch pass that stayed resident through ONNX Runtime's session. A no-op where there is no malloc_trim."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


ONE_ONNX_FILE_BYTES = 2**31  # protobuf's 2 GiB: the most one .onnx file holds without external-data files


def onnx_size_problem(parameters: int) -> str | None:
    """Why a model of ``parameters`` cannot be exported to one .onnx file, or None. vggdeploy writes no external-data files, and
    past 2 GiB of fp32 weights ONNX's checker, onnxsim and ONNX Runtime's sessions from bytes all fail (export once
    ended in an internal error after building the graph); VGG-11 at 512 px with the paper's widths is 2.25 GB."""
    if parameters * 4 < ONE_ONNX_FILE_BYTES:
        return None
    return (
        f"{parameters:,} parameters take {parameters * 4 / 1e9:.2f} GB as fp32, over the 2 GiB one .onnx file holds "
        "(protobuf's limit; vggdeploy writes no external-data files), so it cannot be exported: lower --image-size "
        "or --hidden, or raise --width-ratio (the classifier's first layer grows with the image's area)"
    )


@dataclass(frozen=True)
class LayerShape:
    name: str
    shape: tuple[int, ...]  # output shape without the batch axis


@dataclass(frozen=True)
class ModelSummary:
    args: ModelArgs
    shapes: tuple[LayerShape, ...]
    parameters: int
    gflops: float  # forward pass, one image, 2 FLOPs per multiply-add
    largest_activation: int  # elements of the largest layer output, one image (what a batch's memory scales with)

    def format(self) -> str:
        lines = [
            f"{self.args.name} ({self.args.arch}, batch_norm={self.args.batch_norm}, width_ratio={self.args.width_ratio})"
        ]
        lines.append(
            f"  {'input':<24} {'x'.join(map(str, (self.args.in_channels, self.args.image_size, self.args.image_size)))}"
        )
        lines += [f"  {s.name:<24} {'x'.join(map(str, s.shape))}" for s in self.shapes]
        lines.append(f"  parameters: {self.parameters:,}")
        too_large = onnx_size_problem(self.parameters)
        if too_large is not None:
            lines.append(f"  export: refused: {too_large}")
        lines.append(f"  forward GFLOPs per image: {self.gflops:.2f}")
        return "\n".join(lines)


def summarize(args: ModelArgs) -> ModelSummary:
    """Shape walk (per stage, then per classifier layer), parameter count, GFLOPs and the largest layer output, on
    the meta device."""
    with torch.device("meta"):
        model = build_model(args)
        images = torch.empty(1, args.in_channels, args.image_size, args.image_size)
    shapes: list[LayerShape] = []
    named = [
        (f"stage{i + 1} ({len(k)} conv)", m)
        for i, (m, (_, k)) in enumerate(zip(model.features, args.stages, strict=True))
    ]
    named += [(type(m).__name__.lower(), m) for m in model.classifier if isinstance(m, (nn.Flatten, nn.Linear))]
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: shapes.append(LayerShape(name, tuple(out.shape[1:])))
        )
        for name, module in named
    ]
    sizes: list[int] = []
    hooks += [
        module.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
        for module in model.modules()
        if not list(module.children())
    ]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(images)
    for hook in hooks:
        hook.remove()
    return ModelSummary(args, tuple(shapes), count_parameters(model), counter.get_total_flops() / 1e9, max(sizes))
