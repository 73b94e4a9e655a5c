#!/usr/bin/env bash
# Creates .venv with the pinned dependencies and the package (editable), and the Fashion-MNIST data.
# Idempotent: with pyproject.toml unchanged and the data present, a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.vggdeploy-installed
want=$(sha256sum pyproject.toml | cut -c1-16)

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned dependencies (torch, onnxruntime-gpu, onnxsim, ...; a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v -e '^WARNING: Location' -e '^ *!!' || true
  .venv/bin/python -c "import vggdeploy, torch, onnxruntime, onnxsim" || { echo "setup: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && [ -z "${VGGDEPLOY_DATA_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing the Debian package dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST not found; run 'sudo apt-get install dataset-fashion-mnist' or set VGGDEPLOY_DATA_DIR" >&2
  fi
fi
echo "setup: ready (.venv/bin/vggdeploy)"
