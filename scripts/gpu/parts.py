"""What the GPU host lacks, carried in parts small enough for one device transfer each.

The GPU host has python 3.12 with torch but no onnxruntime-gpu, no onnxsim, no Fashion-MNIST and no network, and
one transfer carries at most 64 MiB. So, for each bundle (``gpu``: what every GPU stage needs; ``openvino``: the
OpenVINO plugin, which only the cpu stage uses, carried only when the host's CPU is Intel's):

- ``pack`` (here) puts the bundle's wheels (minus what vggdeploy never loads) and data into one xz-compressed tar,
  cut into the fewest equal parts under the size limit: ``.device/BUNDLE/p1 .. pN``, each with the same manifest.
- ``receive`` (there) copies whichever parts arrived into ``STATE/BUNDLE``, checking each against the manifest's
  SHA-256; once all N are there it joins and unpacks them into ``STATE/BUNDLE/site`` (for PYTHONPATH) and
  ``STATE/BUNDLE/data``. It exits 0 when the gpu bundle is installed and no optional bundle is half carried, 3 with
  the list of missing parts when not.

Only the standard library is used, so it runs on any python3 on either machine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import math
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Bundle:
    """What one kind of parts carries."""

    name: str
    packages: tuple[str, ...]  # pinned wheels for the host's Python
    excluded: tuple[str, ...] = ()  # files of those wheels that vggdeploy never loads
    data: bool = False  # Fashion-MNIST too
    required: bool = True  # every stage needs it; an optional bundle is installed only when carried


PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64")
BUNDLES = {
    # The TensorRT provider needs TensorRT, which the host lacks.
    "gpu": Bundle(
        "gpu",
        ("onnxruntime-gpu==1.31.1", "onnxsim==0.8.1"),
        excluded=("onnxruntime/capi/libonnxruntime_providers_tensorrt.so",),
        data=True,
    ),
    # Whole: it is one part either way, and a trimmed OpenVINO could only be tried on an Intel CPU.
    "openvino": Bundle("openvino", ("onnxruntime-ep-openvino==1.8.1",), required=False),
}
DATA_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MANIFEST = "manifest.json"
MIB = 1 << 20


class PartsError(Exception):
    """A problem with the parts, in one line."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheels(packages: tuple[str, ...], python_version: str, folder: Path) -> list[Path]:
    """The pinned wheels for the host's Python, fetched once into ``folder`` (pip's own download, no install)."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            python_version,
            *platforms,
            "--dest",
            str(folder),
            *packages,
        ],
        check=True,
    )
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != len(packages):
        raise PartsError(f"{folder}: expected {len(packages)} wheels, found {[w.name for w in wheels]}")
    return wheels


def build_payload(wheels: list[Path], data_dir: Path | None, target: Path, excluded: tuple[str, ...] = ()) -> dict:
    """One tar: every wheel's files under site/ (a wheel is a zip laid out as site-packages), data under data/.

    Compressed with ``xz -9e`` using every core where the xz tool exists (minutes for ~340 MB), else Python's lzma.
    Returns what went in.
    """
    contents: dict = {"wheels": [w.name for w in wheels], "excluded": [], "data": []}
    with tempfile.TemporaryDirectory() as scratch:
        plain = Path(scratch) / "payload.tar"
        with tarfile.open(plain, "w") as tar:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as archive:
                    for member in archive.infolist():
                        if member.is_dir():
                            continue
                        if member.filename in excluded:
                            contents["excluded"].append(member.filename)
                            continue
                        info = tarfile.TarInfo(f"site/{member.filename}")
                        info.size = member.file_size
                        info.mode = 0o755 if member.filename.endswith(".so") or ".so." in member.filename else 0o644
                        with archive.open(member) as source:
                            tar.addfile(info, source)
            if data_dir is not None:
                for name in DATA_FILES:
                    tar.add(data_dir / name, arcname=f"data/{name}")
                    contents["data"].append(name)
        if shutil.which("xz"):
            with target.open("wb") as sink:
                subprocess.run(["xz", "-9e", "-T0", "-c", str(plain)], stdout=sink, check=True)
        else:
            with plain.open("rb") as source, lzma.open(target, "wb", preset=9 | lzma.PRESET_EXTREME) as sink:
                shutil.copyfileobj(source, sink, MIB)
    return contents


def split(payload: Path, contents: dict, out: Path, max_part_bytes: int) -> list[Path]:
    """Cut ``payload`` into the fewest equal parts of at most ``max_part_bytes``: ``out/pK/part-K-of-N`` + manifest."""
    size = payload.stat().st_size
    count = max(1, math.ceil(size / max_part_bytes))
    part_size = math.ceil(size / count)
    if out.exists():
        shutil.rmtree(out)
    parts = []
    with payload.open("rb") as stream:
        for number in range(1, count + 1):
            folder = out / f"p{number}"
            folder.mkdir(parents=True)
            path = folder / f"part-{number}-of-{count}"
            path.write_bytes(stream.read(part_size))
            parts.append(path)
    manifest = {
        "parts": [
            {"name": p.name, "folder": p.parent.name, "bytes": p.stat().st_size, "sha256": sha256(p)} for p in parts
        ],
        "payload_bytes": size,
        "payload_sha256": sha256(payload),
        "contents": contents,
    }
    for path in parts:
        (path.parent / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return parts


class Receiver:
    """The host's side: parts arrive over several calls into ``state/parts``; installed once all are there."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.parts = state / "parts"
        self.installed_stamp = state / "installed.json"

    def installed(self) -> dict | None:
        return json.loads(self.installed_stamp.read_text()) if self.installed_stamp.is_file() else None

    def take(self, carried: Path) -> dict | None:
        """Copy the parts under ``carried`` (pK folders) that match their manifest; returns the manifest seen."""
        manifest = None
        for folder in sorted(carried.glob("p*")):
            manifest_path = folder / MANIFEST
            if not manifest_path.is_file():
                continue
            manifest = json.loads(manifest_path.read_text())
            entries = {entry["name"]: entry for entry in manifest["parts"]}
            for part in folder.glob("part-*"):
                entry = entries.get(part.name)
                if entry is None or sha256(part) != entry["sha256"]:
                    raise PartsError(
                        f"{part}: not the part its manifest describes (corrupt or from another pack); pack again"
                    )
                self.parts.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(part, self.parts / part.name)
            (self.state / MANIFEST).write_text(json.dumps(manifest))
        if manifest is None and (self.state / MANIFEST).is_file():
            manifest = json.loads((self.state / MANIFEST).read_text())
        return manifest

    def missing(self, manifest: dict) -> list[dict]:
        present = {p.name for p in self.parts.glob("part-*")} if self.parts.is_dir() else set()
        return [entry for entry in manifest["parts"] if entry["name"] not in present]

    def install(self, manifest: dict) -> None:
        """Join the parts in order and unpack them (tar's data filter: no absolute paths, links or devices)."""
        for folder in ("site", "data"):
            shutil.rmtree(self.state / folder, ignore_errors=True)
        digest = hashlib.sha256()

        class Joined(io.RawIOBase):
            def __init__(self, paths: list[Path]) -> None:
                self.streams = iter(paths)
                self.current = None

            def readable(self) -> bool:
                return True

            def readinto(self, buffer) -> int:
                while True:
                    if self.current is None:
                        path = next(self.streams, None)
                        if path is None:
                            return 0
                        self.current = path.open("rb")
                    count = self.current.readinto(buffer)
                    if count:
                        digest.update(memoryview(buffer)[:count])
                        return count
                    self.current.close()
                    self.current = None

        paths = [self.parts / entry["name"] for entry in manifest["parts"]]
        with lzma.open(io.BufferedReader(Joined(paths), MIB)) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            tar.extractall(self.state, filter="data")
        if digest.hexdigest() != manifest["payload_sha256"]:
            raise PartsError("the joined parts do not match the packed payload; pack again")
        self.installed_stamp.write_text(
            json.dumps({"payload_sha256": manifest["payload_sha256"], **manifest["contents"]})
        )
        shutil.rmtree(self.parts)


def receive(bundle: Bundle, carried: Path, state: Path) -> int:
    """Take what arrived of one bundle, install it when complete; print one status line.

    0: installed (or an optional bundle neither carried nor installed), 3: parts still missing."""
    receiver = Receiver(state)
    manifest = receiver.take(carried)
    done = receiver.installed()
    if manifest is None:
        if not bundle.required:
            print(f"{bundle.name}: not carried (only the cpu stage uses it)")
            return 0
        raise PartsError(
            f"no {bundle.name} parts found under {carried} and nothing installed in {state}; "
            "run scripts/gpu/pack.sh here first"
        )
    if done and done["payload_sha256"] == manifest["payload_sha256"]:
        data = f"; data: {len(done['data'])} files" if done["data"] else ""
        print(f"{bundle.name}: installed in {state} ({', '.join(done['wheels'])}{data})")
        return 0
    missing = receiver.missing(manifest)
    if missing:
        have = len(manifest["parts"]) - len(missing)
        folders = ", ".join(f".device/{bundle.name}/{entry['folder']}" for entry in missing)
        print(f"{bundle.name}: {have} of {len(manifest['parts'])} parts here; still to carry, one per call: {folders}")
        return 3
    receiver.install(manifest)
    print(f"{bundle.name}: all {len(manifest['parts'])} parts joined and installed in {state}")
    return 0


def receive_all(carried: Path, state: Path) -> int:
    """Every bundle: ``carried/NAME`` into ``state/NAME``. 0 when all that is needed is installed, else 3."""
    statuses = [receive(bundle, carried / name, state / name) for name, bundle in BUNDLES.items()]
    return max(statuses)


def pack(bundle: Bundle, python_version: str, data_dir: Path, out: Path, cache_root: Path, max_part_bytes: int) -> None:
    """Download, compress (both cached) and cut one bundle into parts under ``out``."""
    if bundle.data:
        missing = [name for name in DATA_FILES if not (data_dir / name).is_file()]
        if missing:
            raise PartsError(
                f"{data_dir}: no Fashion-MNIST ({', '.join(missing)}); apt-get install dataset-fashion-mnist"
            )
    key = hashlib.sha256(" ".join((*bundle.packages, *bundle.excluded, str(bundle.data))).encode()).hexdigest()[:12]
    cache = cache_root / f"{bundle.name}-py{python_version}-{key}"
    payload = cache / "payload.tar.xz"
    if not (cache / "contents.json").is_file():
        wheels = download_wheels(bundle.packages, python_version, cache / "wheels")
        contents = build_payload(wheels, data_dir if bundle.data else None, payload, bundle.excluded)
        (cache / "contents.json").write_text(json.dumps(contents))
    contents = json.loads((cache / "contents.json").read_text())
    parts = split(payload, contents, out, max_part_bytes)
    sizes = ", ".join(f"{p.parent.name} {p.stat().st_size / MIB:.1f} MiB" for p in parts)
    print(f"{bundle.name}: packed {payload.stat().st_size / MIB:.1f} MiB into {len(parts)} parts under {out}: {sizes}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="download, compress and cut every bundle into parts (here)")
    packing.add_argument("--python-version", default="3.12", help="the GPU host's Python [default: 3.12]")
    packing.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    packing.add_argument("--out", type=Path, default=Path(".device"), help="parts go to OUT/BUNDLE/pK")
    packing.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "vggdeploy-gpu")
    packing.add_argument("--max-part-mib", type=float, default=62.0, help="one transfer: 64 MiB with the working tree")
    take = commands.add_parser("receive", help="take the carried parts, install when complete (on the GPU host)")
    take.add_argument("--from", dest="carried", type=Path, default=Path(".device"), help="FROM/BUNDLE/pK")
    take.add_argument("--state", type=Path, default=Path("/tmp/vggdeploy-gpu"))
    args = parser.parse_args(argv)
    try:
        if args.command == "receive":
            return receive_all(args.carried, args.state)
        for name, bundle in BUNDLES.items():
            pack(bundle, args.python_version, args.data_dir, args.out / name, args.cache, int(args.max_part_mib * MIB))
        return 0
    except (PartsError, subprocess.CalledProcessError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
