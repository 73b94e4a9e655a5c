"""Every failure the CLI reports, with its exit code: the one place both are defined.

Exit codes: 2 bad usage, 3 a bad input file, path or permission, 4 a numerical check failed, 5 training diverged,
6 the requested execution provider is unavailable, 7 the disk is full, 8 the memory (host or GPU) ran out, 75 the
output folder is in use by another run (sysexits' EX_TEMPFAIL: try again later), 130 interrupted; 70 is left for
internal errors (a bug). ``write_error`` is the one mapping from a failed write to these words, ``memory_error`` the
one from a failed allocation.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

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
    """The loss became NaN or infinite, or exploded far above chance."""

    exit_code = 5


class ProviderUnavailable(VggDeployError):
    """An execution provider was asked for and ONNX Runtime could not give it (or would move nodes off it)."""

    exit_code = 6


class FolderInUse(VggDeployError):
    """Another live run writes the same output folder; the message names it."""

    exit_code = 75


class Interrupted(VggDeployError):
    """Ctrl-C, SIGTERM or a time limit stopped the work; what was saved is in the message."""

    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, a container stop, `kill`) raised in the main thread, so that every cleanup runs
    (locks released, staging folders and empty new folders removed) as for Ctrl-C."""

    exit_code = 143  # 128 + SIGTERM, as the shell reports a process it killed


class ResourceExhausted(VggDeployError):
    """The disk filled up while writing; the message says what was being written and what is still intact."""

    exit_code = 7


class OutOfMemory(VggDeployError):
    """An allocation failed (host memory or GPU memory); the message quotes the library and says what to lower."""

    exit_code = 8


# How torch (CPU: "DefaultCPUAllocator: can't allocate memory"; CUDA: "CUDA out of memory"), ONNX Runtime (its arena:
# "Failed to allocate memory for requested buffer", a load: "std::bad_alloc", CUDA: "CUDA failure 2: out of memory")
# and cuBLAS ("CUBLAS_STATUS_ALLOC_FAILED") say it; none of them raises MemoryError.
MEMORY_FAILURES = ("out of memory", "can't allocate memory", "Failed to allocate memory", "bad_alloc", "ALLOC_FAILED")


ALLOCATION_SIZE = re.compile(r"(?:to allocate|buffer of size) (?:(?P<human>[\d.]+ [KMGT]iB)|(?P<bytes>\d+))")


def memory_error(error: BaseException, advice: str = "") -> OutOfMemory | None:
    """The plain-words error for an allocation that failed with ``error``, or None when it is not about memory."""
    text = str(error)
    if not (
        isinstance(error, MemoryError)
        or any(kind.__name__ == "OutOfMemoryError" for kind in type(error).__mro__)
        or any(words in text for words in MEMORY_FAILURES)
    ):
        return None
    where = " on the GPU" if "CUDA" in text else ""
    size = ALLOCATION_SIZE.search(text)
    if size and size.group("bytes"):
        what = f"an allocation of {int(size.group('bytes')) / 1e9:.2f} GB{where} failed"
    elif size:
        what = f"an allocation of {size.group('human')}{where} failed"
    else:
        what = " ".join(text.split())[:200] or type(error).__name__
    return OutOfMemory(f"out of memory: {what}" + (f"; {advice}" if advice else ""))


def run_script(main: Callable[[], int | None]) -> NoReturn:
    """A script's entry point (``scripts/*.py``): a failure the user can act on is one line on stderr and its exit
    code, as in the CLI, not a traceback."""
    try:
        code = main()
    except VggDeployError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(error.exit_code)
    except BrokenPipeError:  # its reader stopped reading (`| head`); Python's advice: no flush at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code or 0)


NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


# torch.save reports a full disk from its C++ zip writer as a RuntimeError, without an errno
TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "No space left on device")


def _free_bytes(path: Path) -> int | None:
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def write_error(error: BaseException, path: str | Path, written: int = 0) -> VggDeployError | None:
    """The plain-words error for a write of ``path`` that failed with ``error`` (``written``: bytes it had put down),
    or None when the failure is not about space, permissions or the path."""
    path = Path(path)
    code = getattr(error, "errno", None)
    if code in NO_SPACE or (isinstance(error, RuntimeError) and any(t in str(error) for t in TORCH_WRITE_FAILURES)):
        free = _free_bytes(path)  # the partial write's bytes count as free: they are released with it
        before = path.stat().st_size if path.is_file() else 0
        needed, room = max(written, before), (free or 0) + written
        if needed > room:  # the file it replaces was larger than all the room there is
            need = f"; it needs more than {needed / 1e6:.2f} MB"
        else:  # "needs more than 0.61 MB" with 0.61 MB free said nothing: the write took it all
            need = "; the write took all of it before the file was whole" if written else ""
        have = f"{room / 1e6:.2f} MB free for it" if free is not None else "free space unknown"
        return ResourceExhausted(f"{path}: no space left on the device while writing it ({have}{need})")
    if code in (errno.EACCES, errno.EPERM):
        return DataError(f"{path}: permission denied, cannot write it")
    if code == errno.EROFS:
        return DataError(f"{path}: read-only file system, cannot write it")
    if code in (errno.ENOENT, errno.ENOTDIR):
        return DataError(f"{path}: its folder does not exist or is not a folder, cannot write it")
    return None
