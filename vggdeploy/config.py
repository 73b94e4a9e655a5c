"""Frozen settings of each stage, and the training presets (each documented with what it reached)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from vggdeploy.errors import UsageError
from vggdeploy.model.archs import ModelArgs


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Presets fill these; CLI flags the user set override single fields."""

    model: ModelArgs = field(default_factory=ModelArgs)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05  # peak learning rate (the one-cycle maximum, or the constant rate)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # applied to conv/linear weights only, never to biases or BatchNorm
    schedule: str = "onecycle"  # "onecycle" (linear warm-up 20 %, cosine down) or "constant"
    label_smoothing: float = 0.1
    flip: bool = True  # random horizontal flips
    shift: int = 2  # random shifts of up to this many source pixels
    erase: float = 0.25  # random-erasing probability
    seed: int = 0
    calibration_holdout: int = 5000  # training images kept out of every gradient step, for export's temperature fit
    save_every: int = 1  # epochs between checkpoint writes (and at the last epoch, and at a stop)
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the model (pays off on a GPU for runs of several epochs)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on the CPU (channels_last on both); or fp32 | bf16
    eval_batch_size: int = 500
    data: str | None = None  # a folder of the user's own labelled images; None = Fashion-MNIST
    test_fraction: float = 0.1  # single-folder layout: the share split off (stratified, seeded) as the test set
    color: str = "auto"  # own images: auto (RGB once a training image has colour) | grayscale | rgb
    strict: bool = False  # own images: an unreadable image file is fatal instead of skipped
    train_limit: int | None = None  # use only the first N training images (tests, smoke runs)
    test_limit: int | None = None  # evaluate on the first N test images only

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if self.schedule not in ("onecycle", "constant"):
            raise UsageError(f"schedule must be onecycle or constant, got {self.schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UsageError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        for name in ("train_limit", "test_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.calibration_holdout < 0:
            raise UsageError(f"calibration holdout must not be negative, got {self.calibration_holdout}")
        if not 0 <= self.erase <= 1 or not 0 <= self.label_smoothing < 1:
            raise UsageError("erase must be in [0, 1] and label smoothing in [0, 1)")
        if not 0 < self.test_fraction < 1:
            raise UsageError(
                f"--test-fraction must be between 0 and 1 (a share of the images), got {self.test_fraction}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = {"calibration_holdout": 0, **values}  # saved before the holdout existed: trained on every image
        model = ModelArgs.from_dict(values.pop("model")) if "model" in values else ModelArgs()
        return cls(model=model, **values)

    def with_overrides(self, **overrides) -> TrainConfig:
        """Replace the fields whose override is not None (unset CLI flags never override a preset)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if v is not None and k in known})


PRESETS: dict[str, TrainConfig] = {
    # The seeds' recipe: VGG-11 at width ratio 4, plain SGD lr 0.05, 10 epochs, batch 128, 224 px, no augmentation.
    "seed": TrainConfig(
        model=ModelArgs(arch="A", width_ratio=4),
        epochs=10,
        batch_size=128,
        lr=0.05,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        schedule="constant",
        label_smoothing=0.0,
        flip=False,
        shift=0,
        erase=0.0,
    ),
    # The deployable model (default with a GPU): VGG-11-BN at 224 px, augmentation, label smoothing, one-cycle.
    # 30 epochs gave 95.39 % in 402 s on an H200. Fitted to 516 s on an H100 (`--epochs 60 --fit-to-time`), the
    # schedule became 40 epochs after the second: 95.76 % at 505 s, with 2,000 images held out for calibration (3,000
    # more to train on) and the 1.5 GB of checkpoints written every 10 epochs instead of after each (BENCHMARKS.md).
    "full": TrainConfig(
        model=ModelArgs(arch="A", batch_norm=True),
        epochs=40,
        batch_size=256,
        lr=0.1,
        compile=True,
        calibration_holdout=2000,
        save_every=10,
    ),
    # Default without a GPU: a narrow VGG-11-BN on 32 px inputs that trains in minutes on 2 CPU cores.
    # Trials on 2 CPU cores (batch 128, width 8): 6 epochs 90.7 %; 9 epochs 91.1 %; batch 256 trains faster per image.
    # With 5,000 images held out for calibration, 9 epochs gave 91.51 % and 10 epochs 91.67 % in 154 s (AMD EPYC, 2
    # cores, contiguous layout). Trained channels_last, an epoch takes 11.5 s instead of 15.4 s: 11 epochs gave
    # 91.47 % in 126 s, 12 epochs 91.54 % in 145 s (BENCHMARKS.md, "CPU training layout").
    "quick": TrainConfig(
        model=ModelArgs(arch="A", batch_norm=True, width_ratio=8, hidden=256, dropout=0.2, image_size=32),
        epochs=12,
        batch_size=256,
        lr=0.2,
        erase=0.0,
    ),
}


def rate_per_image_hint(lr: float, batch: int) -> str:
    """Where a preset's lr is used at another (global) batch size: the rate that keeps the preset's rate per image
    (the linear scaling rule), or "". The quick preset's lr 0.2 at batch 2 diverged on 100 images and gave 13.0 % on
    2,000 in one epoch, where 0.0016 gave 60.8 % (BENCHMARKS.md, "A smaller batch with the preset's learning rate")."""
    for name, chosen in PRESETS.items():
        if chosen.lr == lr and chosen.batch_size != batch:
            return (
                f"lr {lr:g} is the {name} preset's for batch {chosen.batch_size}; at batch {batch} the same rate per "
                f"image is --lr {lr * batch / chosen.batch_size:.3g}"
            )
    return ""


# What each variant must keep of the model it replaces, beside its accuracy. Measured (BENCHMARKS.md, "Parity"): the
# quick model's fp16 agreed on 99.97 % of 10,000 test images with mean |logit diff| 3.7e-4, its int8 on 99.73 % with
# 1.0e-2; the seed model's on the H200 99.99 % / 1.1e-3 and 99.66 % / 4.5e-2. The limits sit below those with room
# for another model: one flip in a thousand for fp16, one in a hundred for int8, the distances 9x and 2x the largest.
# Those int8 files had full-range weights; with the 7-bit weights of now the quick model's agreed on 99.49 % on an
# AVX2 CPU, the same as with exact sums (BENCHMARKS.md, "int8 on CPUs without VNNI").
FP16_MIN_AGREEMENT = 0.999


INT8_MIN_AGREEMENT = 0.99


FP16_MAX_MEAN_DIFF = 0.01


INT8_MAX_MEAN_DIFF = 0.1


# The familiarity flag of each variant against the fp32 model's, on export's variant images: the quick model's fp16
# agreed on 99.90 % of 1,000 (max |score diff| 0.067: its features are fp16, the score's own nodes fp32), its int8
# on 99.20 % (0.67), the preprocessing variant on 100 % (2.6e-5). A flip is an image within that difference of the
# threshold; the floors leave room for another model.
FAMILIARITY_LIMITS = {
    "fp32": {"atol": 1e-3, "min_flag_agreement": 0.999},
    "fp16": {"min_flag_agreement": 0.995},
    "int8": {"min_flag_agreement": 0.98},
    "preprocess": {"atol": 1e-3, "min_flag_agreement": 0.999},
}


def familiarity_limits(variant: str, images: int | None = None) -> dict:
    """A variant's familiarity limits; with ``images`` (export's few test images) a floor finer than one image is
    widened to one image, as ``variant_limits`` does."""
    limits = dict(FAMILIARITY_LIMITS[variant])
    if images:
        limits["min_flag_agreement"] = min(limits["min_flag_agreement"], 1 - 1 / images)
    return limits


VARIANT_DISTANCE_FLAGS = {f"{variant}_max_mean_diff": f"--{variant}-max-mean-diff" for variant in ("fp16", "int8")}


def require_agreements(config: object) -> None:
    """Each variant's agreement floor a fraction in [0, 1] (99 % is 0.99, as for --min-agreement)."""
    for variant in ("fp16", "int8"):
        value = getattr(config, f"{variant}_min_agreement")
        if not 0 <= value <= 1:
            raise UsageError(f"--{variant}-min-agreement must be a fraction between 0 and 1, got {value}")


def variant_limits(config: object, variant: str, images: int | None = None) -> dict:
    """compare_logits' limits for the fp16 or int8 variant: accuracy drop, agreement floor and mean |logit
    difference|. With ``images`` (export's few test images) a limit finer than one image is widened to one image
    (on 1,000 images one flip is 0.1 pp, coarser than a 0.05 pp limit); ``check`` applies them on the whole test
    set as given. A zero limit stays zero."""
    drop = getattr(config, f"{variant}_max_drop_pp")
    agreement = getattr(config, f"{variant}_min_agreement")
    if images:
        drop = max(drop, 100 / images) if drop > 0 else drop
        agreement = min(agreement, 1 - 1 / images) if agreement < 1 else agreement
    return {
        "max_accuracy_drop_pp": drop,
        "min_agreement": agreement,
        "max_mean_diff": getattr(config, f"{variant}_max_mean_diff"),
    }


def require_limits(config: object, flags: dict[str, str]) -> None:
    """Each named tolerance a number >= 0; NaN is refused because every comparison with it passes."""
    for name, flag in flags.items():
        value = getattr(config, name)
        if not value >= 0:
            raise UsageError(f"{flag} must be a number >= 0, got {value}")


def preset(name: str | None, cuda_available: bool) -> TrainConfig:
    """The named preset, or ``full`` with a GPU and ``quick`` without."""
    name = name or ("full" if cuda_available else "quick")
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class ExportConfig:
    """What `vggdeploy export` writes and how hard it checks it."""

    opset: int = 18
    simplify: bool = True  # run onnxsim (the batch axis is verified to stay dynamic afterwards)
    fp16: bool = False  # also write model.fp16.onnx (fp16 weights, fp32 inputs/outputs)
    int8: bool = False  # also write model.int8.onnx (static QDQ, s8 per-channel weights, calibrated)
    with_preprocessing: bool = False  # also write model.preprocess.onnx (uint8 images of any size in)
    atol: float = 1e-3  # max |logit difference| allowed between ONNX Runtime fp32 and torch
    parity_images: int = 256  # real test images for the parity check at export
    # batch sizes that must all give the batch-1 answers; None: the working batch (256 where memory allows) and those
    # of 1, 2 and 7 below it
    audit_batches: tuple[int, ...] | None = None
    # test images the figures rest on (one torch pass shared by parity, calibration and the variants): a count,
    # "all", or None: all of them, except on a CPU for a model whose whole pass is costly (passes.evaluation_sample)
    test_images: int | str | None = None
    # held-out training images the temperature and the familiarity threshold rest on: a count, "all", or None: the
    # same rule as test_images
    slice_images: int | str | None = None
    golden_images: int = 10  # one test image per class, with expected logits, next to the model
    int8_calibration_images: int = 256  # training images that set the int8 variant's activation ranges
    calibrate: bool = True  # fit the temperature on the checkpoint's held-out slice (--no-calibration: T = 1)
    calibration_bins: int = 15  # equal-width confidence bins of the ECE and the reliability diagram
    familiarity: bool = True  # a second output, the familiarity score, fitted on training images (--no-familiarity)
    variant_images: int = 1000  # test images on which the variants' accuracy change is measured
    fp16_max_drop_pp: float = 0.05  # largest accuracy loss of model.fp16.onnx, percentage points
    int8_max_drop_pp: float = 1.0  # largest accuracy loss of model.int8.onnx, percentage points
    fp16_min_agreement: float = FP16_MIN_AGREEMENT  # lowest top-1 agreement of model.fp16.onnx, a fraction
    int8_min_agreement: float = INT8_MIN_AGREEMENT
    fp16_max_mean_diff: float = FP16_MAX_MEAN_DIFF  # largest mean |logit difference| of model.fp16.onnx
    int8_max_mean_diff: float = INT8_MAX_MEAN_DIFF
    audit_atol: float = 1e-4  # a batched row may differ from its batch-1 answer by float summation order only
    golden_atol: float = 1e-3  # written into golden.json: how close a consumer's logits must come
    preprocessing_atol: float = 1e-3  # model.preprocess.onnx's probabilities vs numpy preprocessing + fp32
    triton_max_batch: int = 256

    def __post_init__(self) -> None:
        if not 13 <= self.opset <= 23:
            raise UsageError(f"opset {self.opset} is outside the supported range 13..23")
        if self.audit_batches is not None and (not self.audit_batches or min(self.audit_batches) < 1):
            raise UsageError("audit batches must be positive sizes")
        for name in ("test_images", "slice_images"):
            count = getattr(self, name)
            if count != "all" and count is not None and not count >= 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a count of at least 1 or 'all', got {count}")
        for name in ("parity_images", "golden_images", "int8_calibration_images", "variant_images", "calibration_bins"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1")
        require_limits(
            self,
            {
                "atol": "--atol",
                "fp16_max_drop_pp": "--fp16-max-drop",
                "int8_max_drop_pp": "--int8-max-drop",
                **VARIANT_DISTANCE_FLAGS,
                "audit_atol": "audit atol",
                "golden_atol": "golden atol",
                "preprocessing_atol": "preprocessing atol",
            },
        )
        require_agreements(self)


@dataclass(frozen=True)
class CheckConfig:
    """What `vggdeploy check` compares and how strictly (accuracy drops in percentage points, as on the CLI)."""

    provider: str = "auto"  # auto | cuda | cpu | openvino
    performance_hint: str = "auto"  # OpenVINO only: auto (= latency) | latency | throughput
    images: int | None = None  # the first N test images; None = all 10,000
    fp32_atol: float = 1e-3  # max |logit difference| of the fp32 model
    fp32_min_agreement: float = 0.999  # lowest top-1 agreement with torch, fp32
    fp16_max_drop_pp: float = 0.05  # largest accuracy loss of the fp16 variant
    int8_max_drop_pp: float = 1.0  # largest accuracy loss of the int8 variant
    fp16_min_agreement: float = FP16_MIN_AGREEMENT  # lowest top-1 agreement of the fp16 variant with torch
    int8_min_agreement: float = INT8_MIN_AGREEMENT
    fp16_max_mean_diff: float = FP16_MAX_MEAN_DIFF  # largest mean |logit difference| from torch, fp16
    int8_max_mean_diff: float = INT8_MAX_MEAN_DIFF
    max_ece_increase_pp: float = 0.5  # largest calibration-error increase of any variant over torch fp32
    localize: bool = False  # name the first layer whose output differs beyond localize_rtol
    localize_rtol: float = 1e-3  # intermediate outputs: max |diff| / max |torch value|
    localize_images: int = 32  # test images run through every layer for --localize

    def __post_init__(self) -> None:
        if self.images is not None and self.images < 1:
            raise UsageError(f"--images must be at least 1, got {self.images}")
        if self.localize_images < 1:
            raise UsageError(f"--localize-images must be at least 1, got {self.localize_images}")
        require_limits(
            self,
            {
                "fp32_atol": "--atol",
                "fp16_max_drop_pp": "--fp16-max-drop",
                "int8_max_drop_pp": "--int8-max-drop",
                **VARIANT_DISTANCE_FLAGS,
                "max_ece_increase_pp": "--max-ece-increase",
                "localize_rtol": "--layer-rtol",
            },
        )
        if not 0 <= self.fp32_min_agreement <= 1:
            raise UsageError(f"--min-agreement must be between 0 and 1, got {self.fp32_min_agreement}")
        require_agreements(self)
        from vggdeploy.deploy.session import ProviderSettings

        ProviderSettings(self.provider, performance_hint=self.performance_hint)  # refuses a hint without OpenVINO


@dataclass(frozen=True)
class BenchConfig:
    """What `vggdeploy bench` measures."""

    engines: tuple[str, ...] | None = None  # names that must all run; None = this machine's default set
    compile_torch: bool = False  # add torch.compile max-autotune fp16 to the default GPU set (minutes to compile)
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128, 256)
    seconds: float = 2.0  # timed seconds per engine and batch size
    min_runs: int = 5  # timed runs at least, however long they take
    warmup: int = 3  # untimed runs first
    profile_batch: int | None = None  # also trace each engine's kernels (or operators) at this batch size

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UsageError("batch sizes must be positive")
        if self.profile_batch is not None and self.profile_batch < 1:
            raise UsageError(f"--profile takes a batch size of at least 1, got {self.profile_batch}")
        object.__setattr__(self, "batch_sizes", tuple(dict.fromkeys(self.batch_sizes)))  # `1,1` benches batch 1 once
        if self.min_runs < 1:
            raise UsageError(f"--min-runs must be at least 1, got {self.min_runs}")
        if self.warmup < 0:
            raise UsageError(f"warm-up runs must not be negative, got {self.warmup}")
        require_limits(self, {"seconds": "--seconds"})
