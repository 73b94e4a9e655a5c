"""The ``vggdeploy`` command line: parse, validate, call a library function; errors become one line.

Heavy modules (torch, onnxruntime) are imported inside the commands that need them.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import threading
import traceback

import click

from vggdeploy import __version__
from vggdeploy.config import BenchConfig, CheckConfig, ExportConfig
from vggdeploy.errors import (
    INTERNAL_ERROR_EXIT,
    NO_SPACE,
    Interrupted,
    ResourceExhausted,
    Terminated,
    UsageError,
    VggDeployError,
    memory_error,
    write_error,
)
from vggdeploy.hardware import MAX_TIMED_RUNS
from vggdeploy.report import readable, to_json

NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


MEMORY_ADVICE = {  # what each command's user can lower when an allocation fails
    "train": "lower --batch-size, or the model's size (--image-size, --width-ratio)",
    "export": "lower --parity-images, --variant-images or the largest of --audit-batches",
    "run": "lower --batch-size or --max-pixels",
    "check": "lower --images (the test images are held at the model's input size)",
    "bench": "lower --batch-sizes",
}


class _Group(click.Group):
    """Turns every failure into one line on stderr and a non-zero exit; ``--debug`` shows the traceback."""

    def main(self, args=None, prog_name=None, **extra):
        """Click's own errors (a bad option or value) as one line too, naming the help to read; exit 2."""
        signal.signal(signal.SIGTERM, _terminated)  # train replaces it with its own graceful stop while it trains
        try:
            return super().main(args, prog_name, standalone_mode=False, **extra)
        except NO_ARGS_IS_HELP as error:  # a bare `vggdeploy`: the help, as click 8.1 printed it
            click.echo(error.ctx.get_help())
            sys.exit(0)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx else "vggdeploy"
            _say_error(f"{error.format_message()} (see '{command} --help')")
            sys.exit(error.exit_code)
        except click.ClickException as error:
            _say_error(error.format_message())
            sys.exit(error.exit_code)
        except click.exceptions.Abort:
            _say_error("interrupted")
            sys.exit(Interrupted.exit_code)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Terminated:
            _say_error("terminated (SIGTERM)")
            sys.exit(Terminated.exit_code)
        except KeyboardInterrupt:
            _say_error("interrupted")
            sys.exit(Interrupted.exit_code)
        except Exception as error:
            if ctx.meta.get("debug"):
                traceback.print_exc()
            if _SIGTERM_RECEIVED.is_set():  # raised inside a C extension's import, it comes back as an ImportError
                _say_error("terminated (SIGTERM)")
                sys.exit(Terminated.exit_code)
            if isinstance(error, VggDeployError):
                for line in str(error).splitlines():  # one line per problem (run: one per bad image)
                    _say_error(line)
                sys.exit(error.exit_code)
            plain = write_error(error, error.filename) if isinstance(error, OSError) and error.filename else None
            plain = plain or memory_error(error, MEMORY_ADVICE.get(ctx.invoked_subcommand or "", ""))
            if plain is not None:  # a write outside the atomic helpers hit a full disk or a read-only path; or memory
                _say_error(str(plain))
                sys.exit(plain.exit_code)
            _say_error(f"internal error: {type(error).__name__}: {error} (rerun with --debug for details)")
            sys.exit(INTERNAL_ERROR_EXIT)


def _say_error(text: str) -> None:
    """One line of a failure on stderr."""
    click.echo(readable(f"error: {text}"), err=True)


def _print_result(text: str) -> None:
    """A command's result on stdout, ``readable`` (a file name's bytes that are not UTF-8 as ``\\xNN``); a full disk
    behind it (`run --json > answers.json`) is one line and exit 7."""
    try:
        click.echo(readable(text))
        sys.stdout.flush()
    except OSError as error:
        if error.errno in NO_SPACE:
            raise ResourceExhausted("standard output: no space left on the device while writing the result") from None
        raise


_SIGTERM_RECEIVED = threading.Event()


def _terminated(_number, _frame) -> None:
    _SIGTERM_RECEIVED.set()
    raise Terminated


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="vggdeploy")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Train VGG on Fashion-MNIST or your own images, export it to ONNX, and prove the ONNX Runtime deployment right."""
    ctx.meta["debug"] = debug


TRAIN_EXTRA = ("torch", "torchvision", "onnxscript", "onnxsim", "tqdm", "matplotlib")  # pyproject's [train] extra


def require_train_extra(command: str) -> None:
    """One line with the pip command when a command needs what only ``vggdeploy[train]`` installs."""
    missing = [module for module in TRAIN_EXTRA if importlib.util.find_spec(module) is None]
    if missing:
        from vggdeploy.errors import MissingExtra

        raise MissingExtra(
            f"'vggdeploy {command}' needs the train extra ({', '.join(missing)} not installed): "
            "pip install 'vggdeploy[train]'"
        )


def _model_args_options(command):
    """The options that describe a VGG model, shared by every command that builds one."""
    for option in reversed(
        [
            click.option("--arch", default=None, help="A, A-LRN, B, C, D, E or vgg11, vgg16_bn, ..."),
            click.option("--batch-norm/--no-batch-norm", default=None, help="BatchNorm after each conv."),
            click.option("--width-ratio", type=int, default=None, help="Divide every conv width by this."),
            click.option("--hidden", type=int, default=None, help="Hidden FC width."),
            click.option(
                "--dropout",
                type=click.FloatRange(0, 1, max_open=True),
                default=None,
                help="Dropout before each hidden FC layer.",
            ),
            click.option("--image-size", type=int, default=None, help="Input side in pixels, >= 32."),
        ]
    ):
        command = option(command)
    return command


class _ShownDefaults(click.Command):
    """A command whose help shows, for options left None (so that presets and checkpoints decide), the defaults a
    plain run takes, from ``shown_defaults()`` at the time the help is asked for."""

    def __init__(self, *args, shown_defaults, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shown_defaults = shown_defaults

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        shown = self.shown_defaults()
        for param in self.params:
            if isinstance(param, click.Option) and param.name in shown:
                param.help = f"{param.help.split(' [default:')[0]} [default: {shown[param.name]}]"
        super().format_help(ctx, formatter)


def _info_defaults() -> dict[str, str]:
    from vggdeploy.model.archs import ModelArgs

    model = ModelArgs()
    return {
        "arch": model.arch,
        "batch_norm": "off",
        "width_ratio": "1",
        "hidden": str(model.hidden),
        "dropout": f"{model.dropout:g}",
        "image_size": str(model.image_size),
    }


def _train_defaults() -> dict[str, str]:
    """The defaults of a plain `train` here: the preset a GPU or its absence picks."""
    from vggdeploy.hardware import torch_sees_cuda
    from vggdeploy.train.recipe import shown_defaults

    name = "full" if torch_sees_cuda() else "quick"
    why = "a CUDA GPU answers here" if name == "full" else "no CUDA GPU here"
    return {**shown_defaults(name), "preset": f"{name}, as {why}"}


def _provider_option(function):
    return click.option(
        "--provider",
        type=click.Choice(["auto", "cuda", "cpu", "openvino"]),
        default=CheckConfig.provider,
        show_default=True,
        help="auto: CUDA where a GPU answers, else the CPU; cuda and openvino are strict (no node left to the CPU).",
    )(function)


def _data_dir_option(function):
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help=(
            "Folder of the Fashion-MNIST .gz files [default: $VGGDEPLOY_DATA_DIR, then "
            "/usr/share/datasets/fashion-mnist]; for a model trained on your own images (export, check, bench), where "
            "that folder is now."
        ),
    )(function)


@main.command(cls=_ShownDefaults, shown_defaults=_info_defaults)
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@_model_args_options
def info(model: str | None, **options) -> None:
    """Describe an architecture (shape walk, parameters, GFLOPs), or an exported MODEL.onnx."""
    if model is not None:
        given = [f"--{name.replace('_', '-')}" for name, value in options.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} describe an architecture, not MODEL: give one or the other")
        from vggdeploy.deploy.onnx_file import describe_onnx
        from vggdeploy.deploy.session import ProviderSettings, open_model

        _print_result(describe_onnx(model))
        open_model(model, ProviderSettings(provider="cpu"))  # a graph that contradicts the metadata: one line, exit 3
        return
    require_train_extra("info --arch")
    from vggdeploy.model.archs import model_args_from_options
    from vggdeploy.model.vgg import summarize

    _print_result(summarize(model_args_from_options(**options)).format())


@main.command(cls=_ShownDefaults, shown_defaults=_train_defaults)
@click.option("--preset", default=None, help="seed | full | quick: the model and recipe to start from.")
@_model_args_options
@click.option("--epochs", type=int, default=None, help="Passes over the training images.")
@click.option("--batch-size", type=int, default=None, help="Training images per step.")
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option("--seed", type=int, default=None, help="Seeds the weights, shuffling, augmentation and holdout.")
@click.option(
    "--calibration-holdout",
    type=click.IntRange(min=0),
    default=None,
    help="Training images never trained on: the validation slice that chooses best.pt, and export's temperature fit.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="auto: CUDA where a GPU answers, else the CPU.",
)
@click.option("--compile/--no-compile", "compile_model", default=None, help="torch.compile the model.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default=None,
    help="auto: bf16 autocast on CUDA, fp32 on the CPU (channels_last on both).",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help=(
        "A folder of your own labelled images: DIR/<class>/* or DIR/train|test/<class>/* (test/ may be val/, valid/, "
        "validation/ or testing/) [default: Fashion-MNIST]."
    ),
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="--data with one folder per class: the share split off as the test set.",
)
@click.option(
    "--color",
    type=click.Choice(["auto", "grayscale", "rgb"]),
    default=None,
    help="--data: auto = RGB once a training image has colour.",
)
@click.option("--strict", is_flag=True, default=None, help="--data: an unreadable image file is fatal, not skipped.")
@click.option("--train-limit", type=int, default=None, help="Train on the first N images only (smoke runs).")
@click.option("--test-limit", type=int, default=None, help="Evaluate on the first N test images only.")
@_data_dir_option
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder [default: artifacts/<model>, or <model>-2, -3, ... when it holds an earlier run]; one that "
    "holds a run is refused unless --resume or --overwrite.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from <out>/checkpoints/last.pt with its settings (without --out: the model's newest run); a "
    "larger --epochs extends a finished run.",
)
@click.option("--overwrite", is_flag=True, help="Replace the run in --out (or artifacts/<model>) with a new one.")
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop cleanly after this much wall time; keeps best.pt, and --resume continues.",
)
@click.option(
    "--fit-to-time",
    is_flag=True,
    help="With --time-limit: as many epochs as fit it (at most --epochs), re-planned after each epoch from the "
    "measured epoch times, so the learning-rate schedule ends with the time instead of being cut off.",
)
@click.option(
    "--save-every",
    type=int,
    default=None,
    metavar="N",
    help="Write the checkpoints every N epochs (and at the last, and when stopped): a kill or crash loses at most N "
    "epochs, and the time the writes take (a quarter of each epoch for the full model on a GPU) goes to training.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (paths, accuracy, timing) instead of a line."
)
def train(
    preset,
    arch,
    batch_norm,
    width_ratio,
    hidden,
    dropout,
    image_size,
    compile_model,
    data_dir,
    out,
    resume,
    overwrite,
    time_limit,
    fit_to_time,
    quiet,
    as_json,
    **overrides,
):
    """Train a VGG on Fashion-MNIST, or on a folder of your own labelled images (--data).

    The batch size, epochs and learning rate left out are sized to the number of training images; best.pt is the
    epoch chosen on held-out training images, and the test split only reports. Writes checkpoints/, and train/
    (metrics.jsonl, curves.png, summary.json, per_class.json, confusion.png).
    """
    require_train_extra("train")
    from vggdeploy.hardware import torch_sees_cuda
    from vggdeploy.train.request import is_main_process, plan_training

    model_options = dict(
        arch=arch, batch_norm=batch_norm, width_ratio=width_ratio, hidden=hidden, dropout=dropout, image_size=image_size
    )
    request = plan_training(
        preset,
        model_options,
        {**overrides, "compile": compile_model},
        out,
        resume,
        overwrite,
        data_dir,
        torch_sees_cuda(),
    )
    from vggdeploy.train.loop import train as run_training  # after the settings are checked: a usage error is instant

    speaks = is_main_process()
    if request.note and speaks:
        click.echo(request.note, err=True)
    result = run_training(
        request.config,
        request.folder.path,
        data_dir=data_dir,
        resume=resume,
        progress=not quiet,
        time_limit=time_limit,
        fit_to_time=fit_to_time,
        recipe_of=request.recipe_of,
        given=request.given,
    )
    if speaks:
        _print_result(to_json(result.to_dict(), indent=2) if as_json else result.format())


def refuse_options_without(flag: str, enabled: bool, *options: str) -> None:
    """Options typed on the command line that only matter with ``flag`` are a usage error without it: `export
    --int8-max-drop 2` without `--int8` would otherwise write no int8 file and say nothing."""
    if enabled:
        return
    context = click.get_current_context()
    given = [
        f"--{option.replace('_', '-')}"
        for option in options
        if context.get_parameter_source(option) is click.core.ParameterSource.COMMANDLINE
    ]
    if given:
        raise UsageError(f"{', '.join(given)}: only used with {flag}, which was not given")


VARIANT_LIMIT_OPTIONS = tuple(
    f"{variant}_{limit}" for variant in ("fp16", "int8") for limit in ("max_drop", "min_agreement", "max_mean_diff")
)


def _variant_limit_options(config_class):
    """Each variant's limits, with their defaults from the stage's config: --fp16-max-drop / --int8-max-drop
    (accuracy, percentage points), --fp16-min-agreement / --int8-min-agreement (top-1 agreement, a fraction) and
    --fp16-max-mean-diff / --int8-max-mean-diff (mean |logit difference|)."""

    def add(command):
        for variant in ("int8", "fp16"):
            for name, field, help_text in (
                ("max-mean-diff", "max_mean_diff", "largest mean |logit difference| the variant may show."),
                ("min-agreement", "min_agreement", "lowest top-1 agreement (a fraction: 0.99 is 99 %)."),
                ("max-drop", "max_drop_pp", "largest accuracy drop the variant may show, pp."),
            ):
                command = click.option(
                    f"--{variant}-{name}",
                    type=float,
                    default=getattr(config_class, f"{variant}_{field}"),
                    show_default=True,
                    help=f"{variant}: {help_text}",
                )(command)
        return command

    return add


def _variant_limits(options: dict) -> dict:
    """The config's fields from the variant-limit options (the drops are named *_pp there)."""
    return {
        (f"{name}_pp" if name.endswith("max_drop") else name): value
        for name, value in options.items()
        if name in VARIANT_LIMIT_OPTIONS
    }


class IntList(click.ParamType):
    """A comma-separated list of positive integers, such as batch sizes: ``1,8,32``."""

    name = "N,N,..."

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(int(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"must be comma-separated integers, got {value!r}", param, ctx)
        if min(numbers) < 1:
            self.fail(f"must be positive, got {value!r}", param, ctx)
        return numbers


class CountOrAll(click.ParamType):
    """A positive count, or ``all``."""

    name = "N|all"

    def convert(self, value, param, ctx) -> int | str:
        if value == "all" or isinstance(value, int):
            return value
        try:
            count = int(value)
        except ValueError:
            self.fail(f"must be a count or 'all', got {value!r}", param, ctx)
        if count < 1:
            self.fail(f"must be at least 1, got {value!r}", param, ctx)
        return count


def _listed(numbers: tuple[int, ...]) -> str:
    return ",".join(map(str, numbers))


@main.command()
@click.option("--arch", default=None, help="Architecture whose latest trained checkpoint under artifacts/ to export.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Export this checkpoint instead.")
@click.option(
    "--out", type=click.Path(file_okay=False), default=None, help="Output folder [default: <model folder>/onnx]."
)
@click.option("--opset", type=int, default=ExportConfig.opset, show_default=True)
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim.")
@click.option("--fp16", is_flag=True, help="Also write model.fp16.onnx (fp16 weights, fp32 I/O).")
@click.option("--int8", is_flag=True, help="Also write model.int8.onnx (static QDQ, for the CPU EP).")
@click.option(
    "--with-preprocessing", is_flag=True, help="Also write model.preprocess.onnx (uint8 images of any size in)."
)
@click.option(
    "--atol", type=float, default=ExportConfig.atol, show_default=True, help="Max |logit difference| ORT vs torch."
)
@click.option("--parity-images", type=int, default=ExportConfig.parity_images, show_default=True)
@click.option(
    "--audit-batches",
    type=IntList(),
    default=None,
    help="Batch sizes that must agree row by row [default: the largest batch that fits the memory budget, at most "
    "256, and those of 1, 2 and 7 below it].",
)
@click.option(
    "--test-images",
    type=CountOrAll(),
    default=None,
    help="Test images the figures rest on (evenly spread), or 'all' [default: all; on a CPU, 1,000 when a torch pass "
    "over the whole test set would exceed 20 TFLOP].",
)
@click.option(
    "--slice-images",
    type=CountOrAll(),
    default=None,
    help="Held-out training images the temperature and the familiarity threshold rest on (evenly spread), or 'all' "
    "[default: all; on a CPU, 1,000 when a torch pass over the whole slice would exceed 20 TFLOP].",
)
@click.option(
    "--variant-images",
    type=int,
    default=ExportConfig.variant_images,
    show_default=True,
    help="Test images for the variants' accuracy.",
)
@_variant_limit_options(ExportConfig)
@click.option(
    "--triton-repo", type=click.Path(file_okay=False), default=None, help="Also write a Triton model repository here."
)
@click.option(
    "--no-calibration",
    is_flag=True,
    help="Skip the temperature fit: probabilities are the plain softmax (temperature 1).",
)
@click.option(
    "--no-familiarity",
    is_flag=True,
    help="Leave out the second output, the familiarity score that flags images unlike the training images.",
)
@_data_dir_option
def export(
    arch,
    checkpoint,
    out,
    opset,
    no_simplify,
    fp16,
    int8,
    with_preprocessing,
    atol,
    parity_images,
    audit_batches,
    test_images,
    slice_images,
    variant_images,
    triton_repo,
    no_calibration,
    no_familiarity,
    data_dir,
    **limits,
):
    """Export a trained checkpoint to a checked, simplified, self-describing ONNX model."""
    require_train_extra("export")
    from pathlib import Path

    from vggdeploy.artifacts import RunFolder, find_checkpoint
    from vggdeploy.model.archs import parse_arch

    if arch is None and checkpoint is None:
        raise UsageError("say which model: --arch A (latest trained under artifacts/) or --checkpoint PATH")
    refuse_options_without("--fp16", fp16, *(name for name in VARIANT_LIMIT_OPTIONS if name.startswith("fp16")))
    refuse_options_without("--int8", int8, *(name for name in VARIANT_LIMIT_OPTIONS if name.startswith("int8")))
    config = ExportConfig(  # settings are checked before torch is imported: a usage error answers at once
        opset=opset,
        simplify=not no_simplify,
        fp16=fp16,
        int8=int8,
        with_preprocessing=with_preprocessing,
        atol=atol,
        parity_images=parity_images,
        audit_batches=audit_batches,
        test_images=test_images,
        slice_images=slice_images,
        variant_images=variant_images,
        calibrate=not no_calibration,
        familiarity=not no_familiarity,
        **_variant_limits(limits),
    )
    from vggdeploy.export.pipeline import export_model

    if arch is not None:
        parse_arch(arch)  # a misspelt name is a usage error before any checkpoint is looked at
    path = Path(checkpoint) if checkpoint else find_checkpoint(arch)
    out_dir = Path(out) if out else RunFolder.of_checkpoint(path).onnx
    result = export_model(path, out_dir, config, expected_arch=arch, data_dir=data_dir, triton_repo=triton_repo)
    _print_result(result.format())


def _say_provider(model, requested: str) -> None:
    if requested == "auto":
        from vggdeploy.deploy.session import cuda_driver_present, session_provider

        chosen = session_provider(model.session)
        reason = (
            ""
            if chosen == "cuda"
            else " (its CUDA provider did not start)"
            if cuda_driver_present()
            else " (no CUDA GPU found)"
        )
        click.echo(f"onnxruntime: using the {chosen.upper()} execution provider{reason}", err=True)


def _performance_hint_option(function):
    return click.option(
        "--performance-hint",
        type=click.Choice(["auto", "latency", "throughput"]),
        default="auto",
        show_default=True,
        help="OpenVINO only: auto = LATENCY (one call at a time); THROUGHPUT pays off only for concurrent calls.",
    )(function)


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="An exported .onnx [default: the latest under artifacts/].",
)
@_provider_option
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Labels shown per image, most likely first (all of them when K is larger than the model's label count).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per ONNX Runtime call."
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse larger images (decompression bombs) [default: 50,000,000].",
)
@click.option(
    "--reject-unfamiliar",
    is_flag=True,
    help="No prediction for an image the model flags as unlike its training images (its familiarity output).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_performance_hint_option
def run(images, model_path, provider, top_k, batch_size, max_pixels, reject_unfamiliar, as_json, performance_hint):
    """Classify IMAGES (files, folders or globs; PNG, JPEG, BMP, WebP, ...) with ONNX Runtime."""
    from vggdeploy.artifacts import latest_model
    from vggdeploy.deploy.classify import classify, describe_model
    from vggdeploy.deploy.preprocess import DEFAULT_MAX_PIXELS
    from vggdeploy.deploy.session import ProviderSettings, open_model, session_provider
    from vggdeploy.errors import CheckFailed, DataError

    if model_path is None:
        model_path = latest_model()
        click.echo(f"vggdeploy: no --model given; using the newest export under artifacts/: {model_path}", err=True)
    model = open_model(model_path, ProviderSettings(provider, performance_hint=performance_hint))
    _say_provider(model, provider)
    pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    result = classify(model, list(images), top_k, batch_size, pixels, reject_unfamiliar)
    if as_json:
        _print_result(to_json(result.to_dict(), indent=2))
    else:
        _print_result(result.format_table(describe_model(model, session_provider(model.session))))
    if result.failures:
        raise (CheckFailed if result.not_finite else DataError)("\n".join(result.failures))


@main.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="The exported fp32 model.onnx [default: the latest under artifacts/]; its fp16/int8 siblings are checked too.",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    default=None,
    help="The torch reference [default: <model folder>/../checkpoints/best.pt].",
)
@_provider_option
@_performance_hint_option
@click.option("--images", type=int, default=None, help="Use the first N test images [default: all 10,000].")
@click.option(
    "--atol", type=float, default=CheckConfig.fp32_atol, show_default=True, help="fp32: max |logit difference|."
)
@click.option(
    "--min-agreement",
    type=float,
    default=CheckConfig.fp32_min_agreement,
    show_default=True,
    help="fp32: lowest top-1 agreement.",
)
@_variant_limit_options(CheckConfig)
@click.option(
    "--max-ece-increase",
    type=float,
    default=CheckConfig.max_ece_increase_pp,
    show_default=True,
    help="Largest calibration error (ECE) increase of any variant over torch fp32, pp.",
)
@click.option("--localize", is_flag=True, help="Name the first layer whose output differs beyond --layer-rtol.")
@click.option("--layer-rtol", type=float, default=CheckConfig.localize_rtol, show_default=True)
@click.option(
    "--localize-images",
    type=int,
    default=CheckConfig.localize_images,
    show_default=True,
    help="Test images run through every layer for --localize.",
)
@click.option("--report-dir", type=click.Path(file_okay=False), default=None, help="[default: <model folder>/reports]")
@_data_dir_option
def check(
    model_path,
    checkpoint,
    provider,
    performance_hint,
    images,
    atol,
    min_agreement,
    max_ece_increase,
    localize,
    layer_rtol,
    localize_images,
    report_dir,
    data_dir,
    **limits,
):
    """Parity of the ONNX Runtime deployment with the torch model on the real test set."""
    require_train_extra("check")
    from vggdeploy.artifacts import latest_model

    refuse_options_without("--localize", localize, "layer_rtol", "localize_images")

    config = CheckConfig(  # settings are checked before torch is imported: a usage error answers at once
        provider=provider,
        performance_hint=performance_hint,
        images=images,
        fp32_atol=atol,
        fp32_min_agreement=min_agreement,
        max_ece_increase_pp=max_ece_increase,
        **_variant_limits(limits),
        localize=localize,
        localize_rtol=layer_rtol,
        localize_images=localize_images,
    )
    from vggdeploy.verify.check import run_check

    report = run_check(model_path or latest_model(), checkpoint, config, data_dir, report_dir)
    _print_result(report.format())
    report.raise_if_failed()


@main.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="The exported model.onnx [default: the latest under artifacts/]; fp16/int8 siblings are used too.",
)
@click.option(
    "--checkpoint", type=click.Path(dir_okay=False), default=None, help="The torch side [default: beside the model]."
)
@click.option(
    "--engines",
    default=None,
    help="Comma-separated engines, each of which must run; or one set, cpu or gpu, whose engines that cannot run "
    "here are skipped with the reason [default: the gpu set with a GPU, else the cpu set].",
)
@click.option(
    "--compile", "compile_torch", is_flag=True, help="Add torch.compile max-autotune fp16 (minutes to compile)."
)
@click.option("--batch-sizes", type=IntList(), default=_listed(BenchConfig.batch_sizes), show_default=True)
@click.option(
    "--seconds",
    type=float,
    default=BenchConfig.seconds,
    show_default=True,
    help=f"Timed seconds per engine and batch size (at least --min-runs runs, at most {MAX_TIMED_RUNS:,}).",
)
@click.option(
    "--min-runs",
    type=int,
    default=BenchConfig.min_runs,
    show_default=True,
    help="Timed runs per engine and batch size at least, however long they take.",
)
@click.option(
    "--profile",
    "profile_batch",
    type=int,
    default=None,
    metavar="BATCH",
    help="Also trace each engine at this batch size: CUDA kernels on a GPU (both frameworks), operators on the CPU; "
    "microseconds per run by kind (convolution, matrix product, bias/activation, pooling, layout) in the report.",
)
@click.option("--report-dir", type=click.Path(file_okay=False), default=None, help="[default: <model folder>/reports]")
@_data_dir_option
def bench(
    model_path, checkpoint, engines, compile_torch, batch_sizes, seconds, min_runs, profile_batch, report_dir, data_dir
):
    """Latency and throughput of torch and ONNX Runtime, timed the same way (JSON, markdown, PNG)."""
    require_train_extra("bench")
    from vggdeploy.artifacts import latest_model

    names = tuple(engines.split(",")) if engines is not None else None  # "" names an engine: '', refused
    config = BenchConfig(names, compile_torch, batch_sizes, seconds, min_runs, profile_batch=profile_batch)
    from vggdeploy.verify.engines import chosen_engines

    chosen_engines(config)  # a misspelt engine is refused before torch is imported
    from vggdeploy.verify.bench import run_bench

    report = run_bench(model_path or latest_model(), checkpoint, config, report_dir=report_dir, data_dir=data_dir)
    _print_result(report.format())
