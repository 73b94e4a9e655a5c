"""Atomic file writes (no torch): a crash or a failed check never leaves a half-written file behind; and which
entries a walk through the user's image folders skips."""

from __future__ import annotations

import ctypes
import datetime
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vggdeploy.errors import DataError, FolderInUse, write_error

_UMASK = os.umask(0o022)


os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename, else it is removed."""
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        yield Path(temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # a full disk, a read-only or vanished folder: say so in plain words
        written = os.path.getsize(temporary) if temporary and os.path.exists(temporary) else 0
        plain = write_error(error, path, written)
        if plain is None:
            raise
        raise plain from None
    finally:
        if temporary and os.path.exists(temporary):
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
        kind = type(write_error(error, folder) or DataError)  # exit 3 for a path or permission, 7 for a full disk
        raise kind(f"cannot write to output directory {folder}: {error.strerror or error}") from None


STAGING = ".{name}.staging-{pid}"  # a folder being built, beside its target


REPLACED = ".{name}.replaced-{pid}"  # the previous target, kept until the new one is in place


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(target: Path) -> list[str]:
    """Tidy what a killed run left beside ``target``; returns one line per thing it did.

    A staging folder of a dead process is removed (it was never complete). A replaced previous version is put back
    when the run died between the two renames and ``target`` is missing, else removed.
    """
    done = []
    for leftover in sorted(target.parent.glob(f".{target.name}.*-*")):
        kind, _, pid = leftover.name.rpartition("-")
        if not pid.isdigit() or _pid_alive(int(pid)) or not leftover.is_dir():
            continue
        if kind.endswith(".replaced") and not target.exists():
            os.replace(leftover, target)
            done.append(f"restored {target} from an export interrupted while replacing it")
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            done.append(f"removed {leftover}, left by a killed run")
    return done


def require_replaceable(folder: Path, own_names: frozenset[str], command: str) -> None:
    """Refuse, before any work, an output folder holding entries that ``command`` never writes: it replaces its
    folder whole (``staged_folder``), which would delete them (a stale temporary of a killed run may go)."""
    if not folder.is_dir():
        return
    foreign = sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.name not in own_names and not (entry.name.startswith(".") and entry.name.endswith(".tmp"))
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise DataError(
            f"{folder}: holds what '{command}' did not write ({shown}); it replaces its output folder whole and would "
            "delete them: choose a new or empty folder, or move them out"
        )


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux's ``renameat2`` with ``RENAME_EXCHANGE``, which Python does not
    wrap); False where the system or the file system has no such call, so the caller renames twice instead."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first))


@contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``target`` to build a whole output in; when the block ends well it replaces
    ``target``, else it is removed and ``target`` is untouched. The replacement is one atomic exchange of the two
    folders where the system has it, so ``target`` is never missing, not even to a process killed mid-swap; else two
    renames, the old version removed last (``clean_stale_staging`` puts it back after a kill between them)."""
    target = Path(target)
    ensure_writable(target.parent)
    for line in clean_stale_staging(target):
        print(f"vggdeploy: {line}", file=sys.stderr)
    staging = target.parent / STAGING.format(name=target.name, pid=os.getpid())
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if not (target.is_dir() and _exchange(staging, target)):  # staging holds the old version after an exchange
            replaced = target.parent / REPLACED.format(name=target.name, pid=os.getpid())
            if target.exists():
                os.replace(target, replaced)
            os.replace(staging, target)
            shutil.rmtree(replaced, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _lock_holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # gone, or being written by its owner this instant


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its ancestors that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _remove_unfilled(folders: list[Path]) -> None:
    """Remove each folder (deepest first) that holds no file at any depth: what a failed run created for nothing."""
    for folder in folders:
        if folder.is_dir() and all(p.is_dir() and not p.is_symlink() for p in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def folder_lock(target: str | Path, command: str) -> Iterator[None]:
    """One writer for ``target`` at a time: a lock file beside it (``.<name>.lock``: host, PID, command, start).

    A second run fails at once naming the holder. A lock left by a process of this host that no longer exists is
    taken over, and the user is told on stderr. When the run fails, the folders it created and never wrote a file
    into are removed again, so a refused command leaves nothing behind.
    """
    target = Path(target)
    created = _missing_folders(target.absolute())
    finished = False
    try:
        with _lock_file(target, command):
            yield
        finished = True
    finally:
        if not finished:
            _remove_unfilled(created)


@contextmanager
def _lock_file(target: Path, command: str) -> Iterator[None]:
    ensure_writable(target)
    lock = target.parent / f".{target.name}.lock"
    mine = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": command,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    for _ in range(100):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is None:
                continue  # its owner is writing it: look again
            if holder.get("host") == mine["host"] and not _pid_alive(int(holder.get("pid", 0))):
                print(
                    f"vggdeploy: {target} was locked by '{holder.get('command')}' (pid {holder.get('pid')}), which "
                    "no longer runs; taking the lock over",
                    file=sys.stderr,
                )
                lock.unlink(missing_ok=True)
                continue
            raise FolderInUse(
                f"{target} is in use by '{holder.get('command')}' (pid {holder.get('pid')} on {holder.get('host')}, "
                f"since {holder.get('started')}); wait for it to end, or write elsewhere (--out)"
            ) from None
        with os.fdopen(handle, "w") as file:
            json.dump(mine, file)
        break
    else:
        raise FolderInUse(f"{target}: could not take its lock {lock}")
    try:
        yield
    finally:
        if (_lock_holder(lock) or {}).get("pid") == mine["pid"]:
            lock.unlink(missing_ok=True)
