"""Faults of the machine, made for real: a disk that fills up during training, a read-only output folder.

They need root to mount a small tmpfs (`mount -t tmpfs -o size=...`); where that is not allowed they are skipped
with the reason.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_output import TINY_MODEL, failure_lines
from forked_cli import Command
from forked_cli import vggdeploy as cli

from vggdeploy.model.checkpoint import load_checkpoint

TRAIN = [
    "train",
    *TINY_MODEL,
    "--train-limit",
    "1000",
    "--test-limit",
    "200",
    "--quiet",
]


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a tmpfs of a given size (KiB) or options at a fresh folder; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.slow
def test_a_disk_that_fills_during_training_keeps_the_last_checkpoints_and_resume_finishes(tmp_path, tmpfs):
    sized = cli(*TRAIN, "--epochs", "1", "--out", str(tmp_path / "sizes"))
    assert sized.returncode == 0, sized.stderr
    checkpoints = tmp_path / "sizes" / "checkpoints"
    last, best = ((checkpoints / name).stat().st_size for name in ("last.pt", "best.pt"))
    # room for epoch 1's last.pt and best.pt and half of another last.pt: epoch 2's save cannot complete
    disk = tmpfs(f"size={(last + best + last // 2) // 1024 + 24}k")
    out = disk / "run"

    full = cli(*TRAIN, "--epochs", "2", "--out", str(out))
    assert full.returncode == 7, full.stderr
    assert len(failure_lines(full.stderr)) == 1 and "Traceback" not in full.stderr
    message = failure_lines(full.stderr)[0]
    assert "last.pt: no space left on the device while writing it (" in message and "MB free for it" in message
    free, needed = (float(x) for x in re.findall(r"([0-9.]+) MB", message)[:2])
    assert 0 < free * 1e6 < last and needed * 1e6 >= last * 0.99  # the partial write counts as free space again
    assert message.endswith(
        "last.pt from epoch 1 and best.pt from epoch 1 are intact: free some space and continue with --resume"
    )
    assert not list(out.rglob("*.tmp"))
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1  # whole, weights_only loadable
    assert len((out / "train" / "metrics.jsonl").read_text().splitlines()) == 1  # whole lines only

    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
    resumed = cli(*TRAIN, "--epochs", "2", "--out", str(out), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["epochs_run"] == 1
    assert [json.loads(line)["epoch"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def _address_space_limit(gib: int):
    """A child's memory ceiling that holds whatever the machine's overcommit policy: allocations beyond it fail."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_AS, (gib << 30, resource.RLIM_INFINITY))


@pytest.mark.slow
def test_memory_that_runs_out_is_exit_8_in_one_line_naming_what_to_lower(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "vggdeploy", *TRAIN, "--epochs", "1", "--image-size", "100000", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=_address_space_limit(16))
    assert result.returncode == 8, result.stderr
    found = re.fullmatch(
        r"error: out of memory: an allocation of ([\d.]+) GB failed; lower --batch-size, or the model's size "
        r"\(--image-size, --width-ratio\)\n",
        result.stderr,
    )
    assert found and float(found.group(1)) >= 40  # images resized to 100000 px: 40 GB each
    assert not out.exists()  # the run's new folder goes with it


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_behind_stdout_is_exit_7_in_one_line(tiny_export):
    """`run --json > answers.json` on a full disk was an internal error (exit 70)."""
    model = tiny_export[0].model_path
    with open("/dev/full", "w") as full:
        command = [sys.executable, "-m", "vggdeploy", "run", "--model", str(model), str(model.parent / "golden")]
        result = subprocess.run([*command, "--json"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 7
    assert (
        result.stderr.splitlines()[-1] == "error: standard output: no space left on the device while writing the result"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (MemoryError(), "out of memory: MemoryError"),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                "to allocate 320000000000 bytes. Error code 12 (Cannot allocate memory)"
            ),
            "out of memory: an allocation of 320.00 GB failed",
        ),
        (
            RuntimeError(
                "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. Name:'conv' "
                "Status Message: bfc_arena.cc:360 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, "
                "onnxruntime::Stream*) Failed to allocate memory for requested buffer of size 6576668672\n"
            ),
            "out of memory: an allocation of 6.58 GB failed",
        ),
        (
            "torch.OutOfMemoryError",
            "out of memory: an allocation of 2.00 GiB on the GPU failed",
        ),
        (RuntimeError("CUDA failure 2: out of memory ; GPU=0"), "out of memory: CUDA failure 2: out of memory ; GPU=0"),
        (ValueError("could not broadcast input array"), None),
        (RuntimeError("Error parsing message"), None),
    ],
)
def test_every_library_s_words_for_a_failed_allocation_become_one_out_of_memory_error(raised, message):
    """As torch (CPU, CUDA), ONNX Runtime (arena, CUDA) and Python word it; nothing else is taken for it."""
    import torch

    from vggdeploy.errors import OutOfMemory, memory_error

    if raised == "torch.OutOfMemoryError":
        raised = torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
            "1.50 GiB is free."
        )
    found = memory_error(raised, "lower --batch-size")
    if message is None:
        assert found is None
    else:
        assert isinstance(found, OutOfMemory) and found.exit_code == 8
        assert str(found) == f"{message}; lower --batch-size"


def test_a_model_too_large_for_the_memory_is_not_called_unreadable():
    """A session that cannot be created for lack of memory says so (exit 8), not "cannot load it" (exit 3)."""
    from vggdeploy.deploy.session import _load_failure
    from vggdeploy.errors import DataError, OutOfMemory

    too_large = _load_failure(
        "big.onnx", RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model failed:std::bad_alloc")
    )
    assert isinstance(too_large, OutOfMemory) and "big.onnx needs more free memory than this machine has" in str(
        too_large
    )
    broken = _load_failure("bad.onnx", RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model failed"))
    assert isinstance(broken, DataError) and str(broken).startswith("bad.onnx: ONNX Runtime cannot load it")


@pytest.mark.slow
def test_a_read_only_output_folder_is_exit_3_in_one_line(tmpfs):
    read_only = tmpfs("size=1m,ro")
    result = cli(*TRAIN, "--epochs", "1", "--out", str(read_only / "run"))
    assert result.returncode == 3
    assert (
        result.stderr.strip() == f"error: cannot write to output directory {read_only / 'run'}: Read-only file system"
    )


EXPORT = ["--parity-images", "32", "--audit-batches", "1,2", "--variant-images", "64"]


def _export(checkpoint, out, *extra):
    return cli("export", "--checkpoint", str(checkpoint), "--out", str(out), *EXPORT, *extra)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")) + [
        str(p) for p in folder.rglob("*.tmp")
    ]


def _intact(folder: Path) -> None:
    import onnx

    onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)
    assert json.loads((folder / "golden" / "golden.json").read_text())["images"]
    assert (folder / "export_report.json").is_file()


@pytest.mark.slow
def test_a_re_export_replaces_the_folder_whole(tiny_checkpoint, tmp_path):
    out = tmp_path / "onnx"
    (out / "reports").mkdir(parents=True)
    (out / "model.int8.onnx").write_text("a variant of an older export")
    (out / "reports" / "check.json").write_text("{}")
    result = _export(tiny_checkpoint, out)
    assert result.returncode == 0, result.stderr
    _intact(out)
    assert not (out / "model.int8.onnx").exists() and not (out / "reports").exists() and _leftovers(out) == []


@pytest.mark.slow
def test_an_export_into_a_folder_of_other_files_is_refused_and_deletes_nothing(tiny_checkpoint, tmp_path):
    """`export --out ~/Documents` once replaced the folder whole: every file in it was gone, without a word."""
    out = tmp_path / "Documents"
    (out / "photos").mkdir(parents=True)
    (out / "thesis.txt").write_text("three years of work")
    result = _export(tiny_checkpoint, out)
    assert result.returncode == 3 and result.stderr == (
        f"error: {out}: holds what 'vggdeploy export' did not write (photos, thesis.txt); it replaces its output "
        "folder whole and would delete them: choose a new or empty folder, or move them out\n"
    )
    assert sorted(p.name for p in out.iterdir()) == ["photos", "thesis.txt"] and _leftovers(out) == []


@pytest.mark.slow
def test_a_disk_that_fills_during_export_leaves_the_previous_export_untouched(tiny_checkpoint, tiny_export, tmpfs):
    previous = tiny_export[1] / "onnx"
    size = sum(p.stat().st_size for p in previous.rglob("*") if p.is_file() and "int8" not in p.name)
    disk = tmpfs(f"size={int(size * 1.4) // 1024 + 64}k")  # the old export fits; a second one beside it does not
    out = disk / "onnx"
    first = _export(tiny_checkpoint, out, "--fp16")
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    full = _export(tiny_checkpoint, out, "--fp16", "--with-preprocessing")
    assert full.returncode == 7, full.stderr
    assert full.stderr.startswith("error: ") and "no space left on the device while writing it" in full.stderr
    assert full.stderr.strip().splitlines() == [full.stderr.strip()]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    _intact(out)
    assert _leftovers(out) == []


@pytest.fixture(scope="module")
def previous_export(tiny_checkpoint, tmp_path_factory) -> Path:
    """One whole export, made once: each kill test starts from a copy of it."""
    out = tmp_path_factory.mktemp("previous") / "onnx"
    assert _export(tiny_checkpoint, out).returncode == 0
    return out


@pytest.mark.parametrize(
    ("signal_name", "kill_when"),
    [
        ("SIGKILL", "staging"),  # as soon as the staging folder exists
        ("SIGTERM", "staging"),
        ("SIGKILL", "model.onnx"),  # once the new model is written into it
        ("SIGKILL", "export_report.json"),  # the last file: just before (or after) the swap
    ],
)
@pytest.mark.slow
def test_an_export_killed_midway_leaves_a_whole_export_and_the_next_run_tidies_up(
    tiny_checkpoint, previous_export, tmp_path, signal_name, kill_when
):
    """Wherever the kill lands, the folder holds a whole export: the previous one, or (when the kill came after the
    swap) the new one; never a mix. The next export removes what the killed run left."""
    import shutil
    import signal

    out = tmp_path / "onnx"
    shutil.copytree(previous_export, out)
    before = (out / "model.onnx").read_bytes()
    command = [
        "export",
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(out),
        *EXPORT,
        "--fp16",
        "--int8",
    ]
    process = Command(*command)

    def reached() -> bool:
        staging = list(tmp_path.glob(".onnx.staging-*"))
        return bool(staging) and (kill_when == "staging" or (staging[0] / kill_when).exists())

    deadline = time.monotonic() + 120
    while not reached() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(getattr(signal, signal_name))
    process.wait(timeout=60)
    _intact(out)
    if (out / "model.onnx").read_bytes() != before:  # the kill came after the swap: the new export, whole
        assert json.loads((out / "export_report.json").read_text())["variants"].keys() == {"fp16", "int8"}
    left = [name for name in _leftovers(out) if ".staging-" in name]
    again = _export(tiny_checkpoint, out)
    assert again.returncode == 0, again.stderr
    assert all(f"vggdeploy: removed {tmp_path / name}, left by a killed run" in again.stderr for name in left)
    _intact(out)
    assert _leftovers(out) == []


@pytest.mark.slow
def test_a_folder_without_write_permission_is_exit_3_in_one_line(tmp_path, obey_permissions):
    """A real permission fault: root is made to obey file permissions by dropping its DAC-override capability."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    result = subprocess.run(
        [*obey_permissions, sys.executable, "-m", "vggdeploy", *TRAIN, "--epochs", "1", "--out", str(locked / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip() == f"error: cannot write to output directory {locked / 'run'}: Permission denied"
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_the_swap_replaces_the_folder_whole_in_one_atomic_exchange_where_the_system_has_one(
    tmp_path, monkeypatch, exchange
):
    """An export killed between the two renames of the old swap once left no folder at all (the kill test above
    caught it); renameat2's RENAME_EXCHANGE swaps the two folders in one step. Without it: two renames."""
    from vggdeploy import files

    target = tmp_path / "onnx"
    target.mkdir()
    (target / "model.onnx").write_text("the previous export")
    renames = []
    monkeypatch.setattr(files.os, "replace", lambda a, b: renames.append(Path(b).name) or os.rename(a, b))
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda first, second: False)
    with files.staged_folder(target) as staging:
        (staging / "model.onnx").write_text("the new export")
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"] and (target / "model.onnx").read_text() == "the new export"
    assert renames == ([] if exchange else [f".onnx.replaced-{os.getpid()}", "onnx"])


def test_a_run_killed_between_the_two_renames_gets_its_previous_export_back(tmp_path):
    from vggdeploy.files import clean_stale_staging

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "onnx"
    replaced = tmp_path / f".onnx.replaced-{dead.pid}"
    replaced.mkdir()
    (replaced / "model.onnx").write_text("the previous export")
    staging = tmp_path / f".onnx.staging-{dead.pid}"
    staging.mkdir()
    done = clean_stale_staging(target)
    assert (
        (target / "model.onnx").read_text() == "the previous export" and not replaced.exists() and not staging.exists()
    )
    assert any("restored" in line for line in done) and any("removed" in line for line in done)


@pytest.mark.slow
def test_two_trainings_into_one_folder_the_second_stops_at_once_naming_the_first(tmp_path):
    out = tmp_path / "run"
    # 20,000 images: still training when the second has been refused
    first = Command(*TRAIN, "--train-limit", "20000", "--epochs", "3", "--out", str(out))
    lock = tmp_path / ".run.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = cli(*TRAIN, "--epochs", "2", "--out", str(out))
    assert second.returncode == 75
    holder = json.loads(lock.read_text())
    assert second.stderr.strip() == (
        f"error: {out} is in use by 'vggdeploy train' (pid {first.pid} on {holder['host']}, since {holder['started']}); "
        "wait for it to end, or write elsewhere (--out)"
    )
    assert first.poll() is None  # the refusal did not wait for the first to end
    first.send_signal(signal.SIGINT)  # it stops at its next step and releases the folder
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130 and failure_lines(stderr)[0].startswith("error: interrupted"), stderr
    assert not lock.exists()


@pytest.mark.slow
def test_a_lock_left_by_a_dead_process_is_taken_over_and_resume_works(tmp_path):
    import socket

    out = tmp_path / "run"
    crashed = Command(*TRAIN, "--epochs", "3", "--out", str(out))
    checkpoint = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and crashed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    crashed.kill()  # SIGKILL: no chance to remove its lock
    crashed.wait()
    lock = tmp_path / ".run.lock"
    assert json.loads(lock.read_text()) | {"host": socket.gethostname()} == json.loads(lock.read_text())
    resumed = cli(*TRAIN, "--epochs", "3", "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"vggdeploy: {out} was locked by 'vggdeploy train' (pid {crashed.pid}), which no longer runs; taking the lock over"
        in resumed.stderr
    )
    assert not lock.exists() and load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 3


def test_a_full_disk_message_never_says_it_needs_what_is_free(tmp_path, monkeypatch):
    """ "0.61 MB free for it; it needs more than 0.61 MB": a write that filled the disk says it took all of it."""
    import errno

    from vggdeploy import errors

    monkeypatch.setattr(errors, "_free_bytes", lambda path: 0)
    full = OSError(errno.ENOSPC, "No space left on device")
    message = str(errors.write_error(full, tmp_path / "model.onnx", written=610_000))
    assert message == (
        f"{tmp_path / 'model.onnx'}: no space left on the device while writing it (0.61 MB free for it; the write took "
        "all of it before the file was whole)"
    )
    (tmp_path / "last.pt").write_bytes(b"x" * 1_270_000)  # the file it replaces: more than the room there is
    larger = str(errors.write_error(full, tmp_path / "last.pt", written=650_000))
    assert larger.endswith("(0.65 MB free for it; it needs more than 1.27 MB)")
