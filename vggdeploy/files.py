"""Atomic file writes (no torch): a crash or a failed check never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vggdeploy.errors import UsageError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield Path(temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def newest(root: str | Path, pattern: str) -> list[Path]:
    """Files under ``root`` matching ``pattern``, most recently modified first."""
    return sorted(Path(root).glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete what a killed atomic write left behind (``.<name>.<random>.tmp``); returns what it removed."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, before any long work starts."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test.", suffix=".tmp"):
            pass
    except OSError as error:
        raise UsageError(f"cannot write to output directory {folder}: {error.strerror or error}") from None
