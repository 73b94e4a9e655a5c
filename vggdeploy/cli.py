"""The ``vggdeploy`` command line: parse, validate, call a library function; errors become one line.

Heavy modules (torch, onnxruntime) are imported inside the commands that need them.
"""

from __future__ import annotations

import sys
import traceback

import click

from vggdeploy import __version__
from vggdeploy.errors import VggDeployError


class _Group(click.Group):
    """Turns every failure into one line on stderr and a non-zero exit; ``--debug`` shows the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as error:  # noqa: BLE001 - the CLI's single exit point for failures
            if ctx.meta.get("debug"):
                traceback.print_exc()
            if isinstance(error, VggDeployError):
                click.echo(f"error: {error}", err=True)
                sys.exit(error.exit_code)
            click.echo(f"error: internal error: {type(error).__name__}: {error} (rerun with --debug for details)", err=True)
            sys.exit(70)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="vggdeploy")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Train VGG on Fashion-MNIST, export it to ONNX, and prove the ONNX Runtime deployment right."""
    ctx.meta["debug"] = debug


def _model_args_options(command):
    """The options that describe a VGG model, shared by every command that builds one."""
    for option in reversed(
        [
            click.option("--arch", default=None, help="A, A-LRN, B, C, D, E or vgg11, vgg16_bn, ... [default: A]"),
            click.option("--batch-norm/--no-batch-norm", default=None, help="BatchNorm after each conv."),
            click.option("--width-ratio", type=int, default=None, help="Divide every conv width by this."),
            click.option("--hidden", type=int, default=None, help="Hidden FC width [default: 4096]."),
            click.option("--image-size", type=int, default=None, help="Input side in pixels, >= 32 [default: 224]."),
        ]
    ):
        command = option(command)
    return command


def model_args_from_options(base: dict | None = None, **options) -> "ModelArgs":  # noqa: F821
    """ModelArgs from CLI options: unset options (None) keep the base (preset or default) values."""
    from vggdeploy.archs import ModelArgs, parse_arch

    values = dict(base or {})
    if options.get("arch") is not None:
        values["arch"], batch_norm = parse_arch(options["arch"])
        if batch_norm is not None:
            values["batch_norm"] = batch_norm
    for key in ("batch_norm", "width_ratio", "hidden", "image_size"):
        if options.get(key) is not None:
            values[key] = options[key]
    return ModelArgs(**values)


@main.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@_model_args_options
def info(model: str | None, **options) -> None:
    """Describe an architecture (shape walk, parameters, GFLOPs), or an exported MODEL.onnx."""
    if model is not None:
        from vggdeploy.runtime import describe_onnx

        click.echo(describe_onnx(model))
        return
    from vggdeploy.model import summarize

    click.echo(summarize(model_args_from_options(**options)).format())
