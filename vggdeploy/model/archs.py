"""The VGG configurations of Table 1 of Simonyan & Zisserman (2015), as one table.

Pure Python (no torch), so the runtime side can name architectures without importing torch.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from vggdeploy.errors import UsageError

# Each stage is (output channels, kernel sizes of its convolutions); every stage ends in a 2x2 max pool.
Stage = tuple[int, tuple[int, ...]]


VGG_TABLE: dict[str, tuple[Stage, ...]] = {
    "A": ((64, (3,)), (128, (3,)), (256, (3, 3)), (512, (3, 3)), (512, (3, 3))),
    "A-LRN": ((64, (3,)), (128, (3,)), (256, (3, 3)), (512, (3, 3)), (512, (3, 3))),
    "B": ((64, (3, 3)), (128, (3, 3)), (256, (3, 3)), (512, (3, 3)), (512, (3, 3))),
    "C": ((64, (3, 3)), (128, (3, 3)), (256, (3, 3, 1)), (512, (3, 3, 1)), (512, (3, 3, 1))),
    "D": ((64, (3, 3)), (128, (3, 3)), (256, (3, 3, 3)), (512, (3, 3, 3)), (512, (3, 3, 3))),
    "E": ((64, (3, 3)), (128, (3, 3)), (256, (3, 3, 3, 3)), (512, (3, 3, 3, 3)), (512, (3, 3, 3, 3))),
}


LRN_ARCHS = frozenset({"A-LRN"})  # local response normalisation after the first convolution


FRIENDLY_NAMES: dict[str, str] = {
    "vgg11": "A",
    "vgg11_lrn": "A-LRN",
    "vgg13": "B",
    "vgg16_c": "C",
    "vgg16": "D",
    "vgg19": "E",
}


PAPER_NAMES = {letter: name for name, letter in FRIENDLY_NAMES.items()}


MIN_IMAGE_SIZE = 32  # five 2x2 max pools need at least 32 pixels to leave a 1x1 feature map


@dataclass(frozen=True)
class ModelArgs:
    """Everything needed to rebuild a VGG model; stored in checkpoints and ONNX metadata."""

    arch: str = "A"  # a letter of Table 1 (A, A-LRN, B, C, D, E)
    batch_norm: bool = False  # BatchNorm after every convolution (torchvision's *_bn models)
    width_ratio: int = 1  # divide every conv width by this (the seeds' `ratio`)
    hidden: int = 4096  # width of the two hidden fully connected layers (4096 in the paper)
    dropout: float = 0.5  # dropout before each hidden FC output, as in the paper
    in_channels: int = 1  # Fashion-MNIST is grayscale
    num_classes: int = 10
    image_size: int = 224  # square input side; any size >= 32

    def __post_init__(self) -> None:
        if self.arch not in VGG_TABLE:
            raise UsageError(f"unknown architecture {self.arch!r}; valid: {valid_arch_names()}")
        if self.image_size < MIN_IMAGE_SIZE:
            raise UsageError(f"image size {self.image_size} is too small: VGG needs at least {MIN_IMAGE_SIZE} pixels")
        if self.width_ratio < 1 or 64 % self.width_ratio:
            raise UsageError(f"width ratio {self.width_ratio} must divide 64 (1, 2, 4, 8, 16, 32 or 64)")
        for name in ("hidden", "in_channels", "num_classes"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages of this architecture with widths divided by the width ratio."""
        return tuple((width // self.width_ratio, kernels) for width, kernels in VGG_TABLE[self.arch])

    @property
    def name(self) -> str:
        """A short file-system-safe name, e.g. ``vgg11_bn-w8-32px``."""
        base = PAPER_NAMES[self.arch] + ("_bn" if self.batch_norm else "")
        width = f"-w{self.width_ratio}" if self.width_ratio != 1 else ""
        return f"{base}{width}-{self.image_size}px"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelArgs:
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise UsageError(f"unknown model arguments: {sorted(unknown)}")
        return cls(**values)


def valid_arch_names() -> str:
    """The accepted spellings, for error messages and help texts."""
    return ", ".join([*VGG_TABLE, *FRIENDLY_NAMES, *(f"{n}_bn" for n in FRIENDLY_NAMES)])


def parse_arch(name: str) -> tuple[str, bool | None]:
    """Map a user's architecture name to (letter, batch_norm).

    Letters (``A``, ``a-lrn``) leave batch norm unset (None); friendly names (``vgg16_bn``) set it.
    """
    text = name.strip()
    if text.upper() in VGG_TABLE:
        return text.upper(), None
    match = re.fullmatch(r"(vgg\d+(?:_lrn|_c)?)(_bn)?", text.lower())
    if match and match.group(1) in FRIENDLY_NAMES:
        return FRIENDLY_NAMES[match.group(1)], bool(match.group(2))
    raise UsageError(f"unknown architecture {name!r}; valid: {valid_arch_names()}")


def arch_mismatch(args: ModelArgs, requested: str) -> str | None:
    """Why a model of ``args`` is not what the name ``requested`` asks for (its letter; batch norm too where a
    friendly name such as ``vgg11`` or ``vgg11_bn`` sets it), or None when it is."""
    letter, batch_norm = parse_arch(requested)
    if args.arch != letter:
        return f"holds architecture {args.arch}, not {letter}"
    if batch_norm is not None and args.batch_norm != batch_norm:
        return f"holds architecture {args.arch} {'with' if args.batch_norm else 'without'} batch norm, not {requested}"
    return None


def model_args_from_metadata(metadata: dict) -> ModelArgs:
    """The ``model`` section back as the ModelArgs it was written from (it adds only the derived ``name``)."""
    return ModelArgs.from_dict({key: value for key, value in metadata["model"].items() if key != "name"})


def model_args_from_options(base: dict | None = None, **options) -> ModelArgs:
    """ModelArgs from CLI options: unset options (None) keep the base (preset or default) values."""
    values = dict(base or {})
    if options.get("arch") is not None:
        values["arch"], batch_norm = parse_arch(options["arch"])
        if batch_norm is not None:
            values["batch_norm"] = batch_norm
    for key in ("batch_norm", "width_ratio", "hidden", "dropout", "image_size"):
        if options.get(key) is not None:
            values[key] = options[key]
    return ModelArgs(**values)
