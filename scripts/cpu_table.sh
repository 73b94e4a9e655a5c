#!/usr/bin/env bash
# The CPU engine table of BENCHMARKS.md in one command: names this CPU, builds a full-size VGG-11 at 224 px (a few
# training steps: latency depends on the architecture, not on the weights), exports fp32 + int8, benches every CPU
# engine this machine can run (torch eager, ONNX Runtime MLAS and, on Intel CPUs with the openvino extra, OpenVINO;
# fp32 and int8) at batch 1/8/32/256, prints the floor analysis, then benches the quick model the same way.
#
#   ./scripts/cpu_table.sh [--smoke] [OUTDIR]   # default /tmp/cpu-table; about 10 min on 2 cores
#
# --smoke runs the same steps on a tiny 32 px model in seconds (the test suite's check of this script), and leaves the
# quick model out. Run the real thing on a quiet machine: the figures are the CPU's, and other work skews them.
set -euo pipefail
cd "$(dirname "$0")/.."
model_args=(--width-ratio 1 --hidden 4096 --dropout 0.5 --image-size 224)
bench_args=(--batch-sizes 1,8,32,256 --seconds 5 --min-runs 3)
profile_runs=10
smoke=false
if [ "${1:-}" = "--smoke" ]; then
  shift
  smoke=true
  model_args=(--width-ratio 16 --hidden 64 --dropout 0.5 --image-size 32)
  bench_args=(--batch-sizes 1,2 --seconds 0.05 --min-runs 2)
  profile_runs=2
fi
out=${1:-/tmp/cpu-table}
vgg=(.venv/bin/python -m vggdeploy)
mkdir -p "$out"

echo "== CPU: $(.venv/bin/python -c 'from vggdeploy.bench import device_name; print(device_name())')"

echo "== VGG-11 ${model_args[*]}"
if [ ! -f "$out/vgg11/checkpoints/best.pt" ]; then
  "${vgg[@]}" train --arch A --no-batch-norm "${model_args[@]}" --lr 0.005 --epochs 1 --batch-size 16 \
    --train-limit 64 --test-limit 64 --calibration-holdout 0 --out "$out/vgg11" --quiet
fi
if [ ! -f "$out/vgg11/onnx/model.int8.onnx" ]; then
  "${vgg[@]}" export --checkpoint "$out/vgg11/checkpoints/best.pt" --int8 --no-calibration --audit-batches 1,2 \
    --parity-images 16 --variant-images 64 --int8-max-drop 100
fi
"${vgg[@]}" bench --model "$out/vgg11/onnx/model.onnx" "${bench_args[@]}" --report-dir "$out/bench-vgg11"
.venv/bin/python scripts/cpu_layer_times.py "$out/vgg11/onnx/model.onnx" "$out/vgg11/checkpoints/best.pt" \
  --runs "$profile_runs"

"$smoke" && exit 0
echo "== the quick model (VGG-11-BN w8, 32 px)"
quick=artifacts/vgg11_bn-w8-32px/onnx/model.onnx
[ -f "$quick" ] || { echo "error: $quick not found: run ./scripts/demo.sh first" >&2; exit 2; }
"${vgg[@]}" bench --model "$quick" "${bench_args[@]::2}" --seconds 2 --report-dir "$out/bench-quick"
