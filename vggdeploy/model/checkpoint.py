"""Checkpoints that rebuild their model alone, written atomically, loaded without executing pickled code."""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from vggdeploy.errors import DataError, UsageError, VggDeployError
from vggdeploy.files import atomic_path
from vggdeploy.model.archs import ModelArgs, arch_mismatch
from vggdeploy.versions import library_versions

FORMAT = "vggdeploy-checkpoint/1"


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts only) with the format tag and versions."""
    with atomic_path(path) as temporary:
        torch.save({"format": FORMAT, "versions": library_versions(), **state}, temporary)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Load a checkpoint with ``weights_only=True``: a file carrying pickled code is refused, never run.

    ``mmap=True`` maps the tensors instead of reading them, for callers that only look at the metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: " + ("not a regular file, so not a checkpoint" if path.exists() else "no such checkpoint")
        )
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: truncated or not a checkpoint (not a torch.save archive)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except MemoryError:
        raise
    except Exception as error:  # the unpickler raises many kinds of error on a foreign archive
        # weights_only names what it refused to import or call; anything else is a damaged or foreign file
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:
            raise DataError(
                f"{path}: refused, it holds objects that are not plain data (a pickled {found.group(1)}); "
                "it was not loaded"
            ) from None
        line = next((line for line in str(error).splitlines() if line.strip() and not _torch_advice(line)), "")
        reason = re.split(r"(?<=[a-z])\. ", line.strip(), maxsplit=1)[0]  # its first sentence, never cut mid-way
        raise DataError(f"{path}: truncated or not a checkpoint ({reason or type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path}: not a vggdeploy checkpoint (no {FORMAT!r} tag)")
    try:
        state["model_args"] = ModelArgs.from_dict(state["model_args"])
    except (KeyError, TypeError, VggDeployError) as error:
        raise DataError(f"{path}: its model arguments are unusable ({error})") from None
    return state


def _torch_advice(line: str) -> bool:
    """The lines of torch.load's message that explain weights_only rather than what was wrong with the file."""
    return any(
        phrase in line for phrase in ("Weights only load failed", "Please file an issue", "Check the documentation")
    )


def _non_finite(tensor: torch.Tensor) -> int:
    """How many values are NaN or infinite, counted 4M at a time (a whole 400 MB layer at once took 0.9 GB more)."""
    return sum(int((~part.isfinite()).sum()) for part in tensor.reshape(-1).split(1 << 22))


def rebuild_model(path: str | Path, expected_arch: str | None = None):
    """Rebuild the model stored in a checkpoint (eval mode, on the CPU) and return (model, the checkpoint's other
    entries): its weights are the model's own, not also kept in the state."""
    from vggdeploy.model.vgg import build_model

    state = load_checkpoint(path)
    args: ModelArgs = state["model_args"]
    mismatch = arch_mismatch(args, expected_arch) if expected_arch is not None else None
    if mismatch:
        raise UsageError(f"{path}: {mismatch}")
    with torch.device("meta"):  # no random weights to overwrite: the checkpoint's own tensors become the model's
        model = build_model(args)
    try:
        model.load_state_dict(state.pop("model_state"), assign=True)  # the model holds the only reference
    except (KeyError, RuntimeError) as error:
        raise DataError(f"{path}: weights do not fit {args.name} ({str(error).splitlines()[0][:160]})") from None
    tensors = {name: tensor for name, tensor in model.state_dict().items() if tensor.is_floating_point()}
    broken = {name: _non_finite(tensor) for name, tensor in tensors.items()}
    broken = {name: count for name, count in broken.items() if count}
    if broken:  # training stops a diverging run before it saves, so this is a damaged or edited file
        first = next(iter(broken))
        raise DataError(
            f"{path}: its weights hold NaN or inf ({first}: {broken[first]:,} of {tensors[first].numel():,} values; "
            f"{len(broken)} of {len(tensors)} tensors), so its answers would be NaN: a damaged checkpoint"
        )
    return model.eval(), state


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint read more than once by one command, refused if the file changes in between: export frees the
    weights while numpy fits the familiarity score and reads them again for the graph, check reads the metadata
    before ONNX Runtime's pass and the weights after it, and training may meanwhile replace ``best.pt``."""

    path: Path
    identity: tuple[int, int, int, int] | None  # device, inode, size, modification time (ns); None: unreadable
    command: str  # the command reading it, named in the refusal

    @classmethod
    def of(cls, path: str | Path, command: str = "export") -> CheckpointFile:
        try:
            identity = _identity(Path(path))
        except OSError:  # reading it says what is wrong
            identity = None
        return cls(Path(path), identity, command)

    def load(self, mmap: bool = False) -> dict:
        """``load_checkpoint`` of the file; DataError if it is no longer the file first seen, or changes while read."""
        return self._unchanged_around(load_checkpoint, self.path, mmap=mmap)

    def rebuild_model(self, expected_arch: str | None = None):
        """``rebuild_model`` of the file; DataError if it is no longer the file first seen, or changes while read."""
        return self._unchanged_around(rebuild_model, self.path, expected_arch)

    def _unchanged_around(self, read, *args, **kwargs):
        self._require_unchanged()
        value = read(*args, **kwargs)
        self._require_unchanged()
        return value

    def _require_unchanged(self) -> None:
        if self.identity is None:
            return
        try:
            same = _identity(self.path) == self.identity
        except OSError:
            same = False
        if not same:
            raise DataError(
                f"{self.path}: replaced or changed while {self.command} ran (is training still writing it?); "
                f"{self.command} again once it is final"
            )


def _identity(path: Path) -> tuple[int, int, int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns
