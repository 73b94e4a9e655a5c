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
  log=.venv/install.log
  if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e ".[train,test,openvino]"; } > "$log" 2>&1; then
    tail -30 "$log" >&2; echo "setup: pip install failed (full log: $log)" >&2; exit 1
  fi
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
# The non-Python consumers (examples/): their npm packages, installed exactly from the committed lock files.
for example in examples/node examples/web; do
  lock_hash=$(sha256sum "$example/package-lock.json" | cut -c1-16)
  if [ "$(cat "$example/node_modules/.vggdeploy-installed" 2>/dev/null)" != "$lock_hash" ]; then
    if command -v npm >/dev/null; then
      echo "setup: npm ci in $example"
      (cd "$example" && npm ci --no-audit --no-fund --loglevel=error) && echo "$lock_hash" > "$example/node_modules/.vggdeploy-installed"
    else
      echo "setup: npm not found; the $example consumer cannot be installed (needs Node >= 20)" >&2
    fi
  fi
done
# The browser test drives Debian's Chromium (never a downloaded browser build).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: /usr/bin/chromium missing; the browser test needs Debian's chromium package" >&2
  fi
fi
# The C++ consumer: libpng and nlohmann-json from Debian, ONNX Runtime headers from trixie, library from the wheel.
missing=$(for pkg in cmake g++ libpng-dev nlohmann-json3-dev; do dpkg -s "$pkg" >/dev/null 2>&1 || echo "$pkg"; done)
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing $(echo $missing) for examples/cpp"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
if ! examples/cpp/build.sh .venv/bin/python > .venv/cpp-build.log 2>&1; then
  tail -20 .venv/cpp-build.log >&2; echo "setup: examples/cpp did not build (log: .venv/cpp-build.log)" >&2
fi
echo "setup: ready (.venv/bin/vggdeploy)"
