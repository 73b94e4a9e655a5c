#!/usr/bin/env bash
# The CPU engine table of BENCHMARKS.md in one command: names this CPU, builds a full-size VGG-11 at 224 px (a few
# training steps: latency depends on the architecture, not on the weights), exports fp32 + int8, benches every CPU
# engine this machine can run (torch eager, ONNX Runtime MLAS and, on Intel CPUs with the openvino extra, OpenVINO;
# fp32 and int8) at batch 1/8/32/256, prints the floor analysis, then benches the quick model the same way.
#
#   ./scripts/cpu_table.sh [--smoke] [--seconds S] [--only vgg11|quick] [OUTDIR]   # default /tmp/cpu-table
#
# About 10 min on 2 cores. --smoke runs the same steps on a tiny 32 px model in seconds (the GPU validation's
# rehearsal of its cpu stage runs it), and leaves the quick model out unless --only quick asks for it (then at batch
# 1/2 for 0.05 s). --seconds: timed seconds per engine and batch size [default 5; the quick model 2]. --only: one of
# the two tables (a GPU window's time is short). Run the real thing on a quiet machine: the figures are the CPU's,
# and other work skews them. Only CPU engines run, also on a machine with a GPU (bench --engines cpu). PYTHON names
# another interpreter than .venv's (the GPU host's cpu stage), QUICK_MODEL another quick model.
set -euo pipefail
cd "$(dirname "$0")/.."
model_args=(--width-ratio 1 --hidden 4096 --dropout 0.5 --image-size 224)
batch_sizes=1,8,32,256
seconds=5
quick_seconds=2
profile_runs=10
smoke=false
only=
usage="usage: $0 [--smoke] [--seconds S] [--only vgg11|quick] [OUTDIR]"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke)
      smoke=true
      model_args=(--width-ratio 16 --hidden 64 --dropout 0.5 --image-size 32)
      batch_sizes=1,2 seconds=0.05 profile_runs=2
      ;;
    --seconds)  # checked here: bench would refuse it only after the full-size model was built
      [[ "${2:-}" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "cpu_table: --seconds needs a number of seconds, got '${2:-}'" >&2; exit 2; }
      seconds=$2 quick_seconds=$2 && shift
      ;;
    --only)
      [[ "${2:-}" =~ ^(vgg11|quick)$ ]] || { echo "cpu_table: --only takes vgg11 or quick, got '${2:-}'" >&2; exit 2; }
      only=$2 && shift
      ;;
    -*) echo "cpu_table: unknown option $1; $usage" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
out=${1:-/tmp/cpu-table}
python=${PYTHON:-.venv/bin/python}
vgg=("$python" -m vggdeploy)
"$smoke" && quick_seconds=$seconds
quick=${QUICK_MODEL:-artifacts/vgg11_bn-w8-32px/onnx/model.onnx}
tables=(vgg11 quick)
"$smoke" && tables=(vgg11)  # the smoke run's quick model would be the tiny one again
[ -n "$only" ] && tables=("$only")
if [[ " ${tables[*]} " == *" quick "* ]] && [ ! -f "$quick" ]; then  # before the long part, not after it
  echo "cpu_table: $quick not found: run ./scripts/demo.sh first" >&2
  exit 2
fi
mkdir -p "$out"

vgg11_table() {
  echo "== VGG-11 ${model_args[*]}"
  if [ ! -f "$out/vgg11/checkpoints/best.pt" ]; then
    "${vgg[@]}" train --arch A --no-batch-norm "${model_args[@]}" --lr 0.005 --epochs 1 --batch-size 16 \
      --train-limit 64 --test-limit 64 --calibration-holdout 0 --out "$out/vgg11" --quiet
  fi
  if [ ! -f "$out/vgg11/onnx/model.int8.onnx" ]; then
    "${vgg[@]}" export --checkpoint "$out/vgg11/checkpoints/best.pt" --int8 --no-calibration --audit-batches 1,2 \
      --parity-images 16 --variant-images 64 --int8-max-drop 100 --int8-min-agreement 0 --int8-max-mean-diff 100
  fi
  "${vgg[@]}" bench --model "$out/vgg11/onnx/model.onnx" --engines cpu --batch-sizes "$batch_sizes" \
    --seconds "$seconds" --min-runs 3 --report-dir "$out/bench-vgg11"
  "$python" scripts/cpu_layer_times.py "$out/vgg11/onnx/model.onnx" "$out/vgg11/checkpoints/best.pt" \
    --runs "$profile_runs"
}

quick_table() {
  echo "== the quick model ($quick)"
  "${vgg[@]}" bench --model "$quick" --engines cpu --batch-sizes "$batch_sizes" --seconds "$quick_seconds" \
    --report-dir "$out/bench-quick"
}

echo "== CPU: $("$python" -c 'from vggdeploy.hardware import cpu_name; print(cpu_name())')"
for table in "${tables[@]}"; do
  "${table}_table"
done
