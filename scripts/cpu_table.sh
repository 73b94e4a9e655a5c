#!/usr/bin/env bash
# The CPU engine table of BENCHMARKS.md in one command: names this CPU, builds a full-size VGG-11 at 224 px (a few
# training steps: latency depends on the architecture, not on the weights), exports fp32 + int8, benches every CPU
# engine this machine can run (torch eager, ONNX Runtime MLAS and, on Intel CPUs with the openvino extra, OpenVINO;
# fp32 and int8) at batch 1/8/32/256, prints the floor analysis, then benches the quick model the same way.
#
#   ./scripts/cpu_table.sh [OUTDIR]        # default /tmp/cpu-table; about 15 min on 2 cores
#
# Run it on a quiet machine: the figures are the CPU's, and anything else running skews them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/cpu-table}
vgg=(.venv/bin/python -m vggdeploy)
mkdir -p "$out"

echo "== CPU"
grep -m1 "model name" /proc/cpuinfo
echo "cores: $(nproc); instruction sets: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' \
  | grep -E '^(avx2|avx512f|avx512_vnni|avx_vnni|amx_int8|amx_bf16)$' | tr '\n' ' ')"

echo "== full-size VGG-11, 224 px"
if [ ! -f "$out/vgg11/checkpoints/best.pt" ]; then
  "${vgg[@]}" train --arch A --no-batch-norm --width-ratio 1 --image-size 224 --epochs 1 --batch-size 16 \
    --train-limit 64 --test-limit 64 --calibration-holdout 0 --out "$out/vgg11" --quiet
fi
if [ ! -f "$out/vgg11/onnx/model.int8.onnx" ]; then
  "${vgg[@]}" export --checkpoint "$out/vgg11/checkpoints/best.pt" --int8 --no-calibration --audit-batches 1,2 \
    --parity-images 16 --variant-images 64 --int8-max-drop 100
fi
"${vgg[@]}" bench --model "$out/vgg11/onnx/model.onnx" --batch-sizes 1,8,32,256 --seconds 5 --min-runs 3 \
  --report-dir "$out/bench-vgg11"
.venv/bin/python scripts/cpu_layer_times.py "$out/vgg11/onnx/model.onnx" "$out/vgg11/checkpoints/best.pt" --runs 10

echo "== the quick model (VGG-11-BN w8, 32 px)"
quick=artifacts/vgg11_bn-w8-32px/onnx/model.onnx
[ -f "$quick" ] || { echo "error: $quick not found: run ./scripts/demo.sh first" >&2; exit 2; }
"${vgg[@]}" bench --model "$quick" --batch-sizes 1,8,32,256 --seconds 2 --report-dir "$out/bench-quick"
