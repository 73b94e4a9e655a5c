#!/usr/bin/env bash
# Packs what the GPU host lacks (onnxruntime-gpu 1.31.1 and onnxsim 0.8.1 for its python 3.12, and Fashion-MNIST)
# into .device/gpu/p1 .. pN, and the OpenVINO plugin (onnxruntime-ep-openvino 1.8.1, for the cpu stage on an Intel
# host) into .device/openvino/p1: the fewest parts that fit one device transfer each. The downloads and the xz -9e
# compression (a few minutes) are cached in ~/.cache/vggdeploy-gpu; a second run only cuts the parts again.
# Usage: scripts/gpu/pack.sh [--python-version 3.12] [--max-part-mib 62]   (then follow docs/gpu-runbook.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.device/' .gitignore || { echo "pack: .device/ must be git-ignored" >&2; exit 1; }
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
"$python" scripts/gpu/parts.py pack "$@"
code=$("$python" -c 'import sys; sys.path.insert(0, "scripts/gpu"); import validate; print(validate.source_fingerprint())')
echo "code: $(git describe --always --dirty), source_sha256 $code (a gpu-report.json from this tree says the same)"
echo "next: the GPU runbook in docs/gpu-runbook.md (one call per part, each carrying its .device/BUNDLE/pK folder)"
