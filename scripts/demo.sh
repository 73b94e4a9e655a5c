#!/usr/bin/env bash
# The main job end to end on a sensible default: setup -> train -> export -> check -> run on sample images.
# With a GPU the default preset is `full` (VGG-11-BN, 224 px); without one, `quick` (a few minutes on 2 cores).
# Extra arguments go to `vggdeploy train` (e.g. ./scripts/demo.sh --preset seed).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source .venv/bin/activate

echo "== train"
vggdeploy train "$@" | tee /tmp/vggdeploy-demo-train.txt
out=$(sed -n 's/.*checkpoints in \(.*\)\/checkpoints$/\1/p' /tmp/vggdeploy-demo-train.txt | tail -1)

echo "== export"
vggdeploy export --checkpoint "$out/checkpoints/best.pt" --fp16 --int8 --with-preprocessing --triton-repo "$out/triton"

echo "== check (torch vs ONNX Runtime on the full test set)"
vggdeploy check --model "$out/onnx/model.onnx"

echo "== run (the golden test images exported beside the model)"
vggdeploy run "$out/onnx/golden" --model "$out/onnx/model.onnx"
vggdeploy info "$out/onnx/model.onnx" | head -4
echo "== done: everything is under $out"
