"""Every failure the CLI reports, with its exit code: the one place both are defined.

Exit codes: 2 bad usage, 3 a bad input file, 4 a numerical check failed, 5 training diverged, 6 the requested
execution provider is unavailable, 130 interrupted; 70 is left for internal errors (a bug).
"""

from __future__ import annotations

INTERNAL_ERROR_EXIT = 70


class VggDeployError(Exception):
    """A failure the user can act on; its message is the whole story (no traceback needed), one line per problem."""

    exit_code = 1


class UsageError(VggDeployError):
    """Bad arguments or settings."""

    exit_code = 2


class MissingExtra(UsageError):
    """A command needs an optional dependency group (``pip install 'vggdeploy[train]'``) that is not installed."""


class DataError(VggDeployError):
    """Missing, truncated or corrupt input files (data set, images, checkpoints, models)."""

    exit_code = 3


class CheckFailed(VggDeployError):
    """A numerical check (parity, batch audit, tolerance) did not pass."""

    exit_code = 4


class TrainingDiverged(VggDeployError):
    """The loss became NaN or infinite."""

    exit_code = 5


class ProviderUnavailable(VggDeployError):
    """An execution provider was asked for and ONNX Runtime could not give it (or would move nodes off it)."""

    exit_code = 6


class Interrupted(VggDeployError):
    """Ctrl-C, SIGTERM or a time limit stopped the work; what was saved is in the message."""

    exit_code = 130
