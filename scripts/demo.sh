#!/usr/bin/env bash
# The main job end to end on a sensible default: setup -> train -> export -> check -> run on sample images.
# With a GPU the default preset is `full` (VGG-11-BN, 224 px); without one, `quick` (a few minutes on 2 cores).
# Extra arguments go to `vggdeploy train` (e.g. ./scripts/demo.sh --preset seed).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source .venv/bin/activate
result=$(mktemp)
trap 'rm -f "$result"' EXIT

echo "== train"
vggdeploy train "$@" --json > "$result"
field() { python -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$result" "$1"; }
field summary
out=$(field out_dir)
layout() { python -c "import sys; from vggdeploy.artifacts import RunFolder, golden_folder, model_file
onnx = RunFolder(sys.argv[1]).onnx; print(model_file(onnx) if sys.argv[2] == 'model' else golden_folder(onnx))" "$out" "$1"; }
model=$(layout model)

echo "== export"
vggdeploy export --checkpoint "$(field best_checkpoint)" --fp16 --int8 --with-preprocessing --triton-repo "$out/triton"

echo "== check (torch vs ONNX Runtime on the full test set)"
vggdeploy check --model "$model"

echo "== run (the golden test images exported beside the model)"
vggdeploy run "$(layout golden)" --model "$model"
vggdeploy info "$model" | head -4
echo "== done: everything is under $out"
