"""`python -m vggdeploy ARGS` for the tests, as a real process that starts warm.

Each command runs in its own process, with its own exit code, standard streams, environment and working folder, as
`subprocess.run` gives them; but the process is forked from a server that has already imported torch, torch's
exporter, ONNX Runtime and vggdeploy (multiprocessing's forkserver), instead of importing them again: on 2 CPU cores
that is 10 to 15 s of every `train`, `export` or `check`. The server imports and runs nothing else, so no thread pool
is started before a fork. What a library reads from the environment as it loads (OMP_NUM_THREADS,
CUDA_VISIBLE_DEVICES) is the server's; the environment a call passes is the one the command reads. A test about
starting the program itself (as another user, a full standard output, a torch-free install, SIGTERM during an
import) starts ``sys.executable -m vggdeploy`` instead.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# what every command imports on its way, so that the server holds it already
PRELOAD = [
    "torch",
    "torch._dynamo",  # by torch.optim's first optimizer
    "torch.onnx",
    "onnx",
    "onnxruntime",
    "onnxsim",
    "matplotlib.pyplot",
    "vggdeploy.cli",
    "vggdeploy.train.loop",
    "vggdeploy.export.pipeline",
    "vggdeploy.verify.check",
    "vggdeploy.verify.bench",
]
PROGRAM = "python -m vggdeploy"  # the name click gives `sys.executable -m vggdeploy` in its usage lines

_server = multiprocessing.get_context("forkserver")
_server.set_forkserver_preload(PRELOAD)


def vggdeploy(
    *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """What ``subprocess.run([sys.executable, "-m", "vggdeploy", *args], capture_output=True, text=True, ...)``
    returns: the exit code (negative: the signal that ended it), stdout and stderr as text. Killed after
    ``timeout`` seconds, as ``subprocess.run`` kills it."""
    return _finished(Command(*args, env=env, cwd=cwd), timeout)


def script(
    path: str | Path, *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``vggdeploy`` for one of the project's scripts: ``python PATH ARGS``."""
    return _finished(Command(*args, script=path, env=env, cwd=cwd), timeout)


def _finished(command: Command, timeout: float) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = command.communicate(timeout)
    except subprocess.TimeoutExpired:
        command.kill()
        command.wait()
        raise
    return subprocess.CompletedProcess(command.args, command.returncode, stdout, stderr)


class Command:
    """A started command, with the part of ``subprocess.Popen``'s interface the tests use; its stdout and stderr are
    captured as with ``stdout=PIPE, stderr=PIPE, text=True`` and read by ``communicate``."""

    def __init__(
        self,
        *args: str,
        script: str | Path | None = None,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        """``python -m vggdeploy ARGS``, or with ``script``, ``python SCRIPT ARGS``."""
        self.args = [PROGRAM if script is None else str(script), *args]
        self._streams = tempfile.TemporaryDirectory(prefix="vggdeploy-streams-")
        self._stdout, self._stderr = Path(self._streams.name, "stdout"), Path(self._streams.name, "stderr")
        self._stdout.touch()
        self._stderr.touch()
        environment = dict(os.environ if env is None else env)
        self._process = _server.Process(
            target=_run_command,
            args=(self.args, environment, str(cwd or os.getcwd()), str(self._stdout), str(self._stderr)),
        )
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once it has ended (negative: the signal that ended it), else None."""
        return self._process.exitcode

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.returncode is None:  # as Popen: a process that has ended is not signalled
            os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Waits for the end (``TimeoutExpired`` after ``timeout`` seconds, the process left running), then stdout
        and stderr as text."""
        self.wait(timeout)
        return _as_text(self._stdout), _as_text(self._stderr)


def _as_text(path: Path) -> str:
    """The stream as ``text=True`` decodes it (the locale's encoding, universal newlines)."""
    with open(path, newline=None) as stream:
        return stream.read()


def _text_stream(fd: int, like: io.TextIOWrapper, line_buffering: bool) -> io.TextIOWrapper:
    """A text stream on ``fd`` with the encoding and error handling of the standard stream it replaces."""
    binary = io.BufferedWriter(io.FileIO(fd, "w", closefd=False))
    return io.TextIOWrapper(binary, encoding=like.encoding, errors=like.errors, line_buffering=line_buffering)


def _run_command(argv: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str) -> None:
    """In the forked process: the caller's environment and folder, the streams on fds 1 and 2 as a fresh interpreter
    has them (stdin empty), then the command (``argv[0]``: PROGRAM or a script's path); its ``sys.exit`` is the
    process's exit code."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        opened = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdout = sys.__stdout__ = _text_stream(1, sys.stdout, line_buffering=False)
    sys.stderr = sys.__stderr__ = _text_stream(2, sys.stderr, line_buffering=True)
    sys.argv = argv
    try:
        if argv[0] == PROGRAM:
            from vggdeploy.cli import main

            main(argv[1:], prog_name=PROGRAM)
        else:
            sys.path.insert(0, str(Path(argv[0]).parent))  # as for `python SCRIPT`: the script's folder first
            runpy.run_path(argv[0], run_name="__main__")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
