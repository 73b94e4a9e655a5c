#!/usr/bin/env bash
# Builds examples/cpp/build/classify: headers from Debian trixie, ONNX Runtime from the project's pinned wheel.
# Usage: examples/cpp/build.sh [PYTHON]   (PYTHON: the interpreter whose onnxruntime to link; default .venv's)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-$here/../../.venv/bin/python}
"$here/fetch-ort-headers.sh"
capi=$("$python" -c "import os, onnxruntime; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))")
library=$(ls "$capi"/libonnxruntime.so.1.* | head -1)
mkdir -p "$here/build/ort/lib"
ln -sf "$library" "$here/build/ort/lib/libonnxruntime.so.1"  # the soname the program asks for at run time
ln -sf "$library" "$here/build/ort/lib/libonnxruntime.so"    # what the linker looks for
cmake -S "$here" -B "$here/build/cmake" -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$here/build/cmake" -j 2 > /dev/null
ln -sf cmake/classify "$here/build/classify"
echo "built $here/build/classify (ONNX Runtime $(basename "$library"))"
