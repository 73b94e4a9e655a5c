"""The one exception family the CLI turns into a one-line error and a non-zero exit."""

from __future__ import annotations


class VggDeployError(Exception):
    """A failure the user can act on; its message is the whole story (no traceback needed)."""

    exit_code = 1


class UsageError(VggDeployError):
    """Bad arguments or settings."""

    exit_code = 2


class DataError(VggDeployError):
    """Missing, truncated or corrupt input files (data set, images, checkpoints, models)."""

    exit_code = 3


class CheckFailed(VggDeployError):
    """A numerical check (parity, batch audit, tolerance) did not pass."""

    exit_code = 4
