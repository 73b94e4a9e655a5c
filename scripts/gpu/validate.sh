#!/usr/bin/env bash
# The GPU validation, one stage per device command (docs/gpu-runbook.md has the runbook).
#
# On the GPU host (run from the checkout's root, $OUT set by the device tool):
#   scripts/gpu/validate.sh receive                 take the carried .device/BUNDLE/pK parts (no stage run); prints
#                                                   the host's CPU, which decides whether the cpu stage is worth it
#   scripts/gpu/validate.sh runtime|train|cpu|perf|all [validate.py options, e.g. --budget-minutes 4]
#       takes the carried parts, installs onnxruntime-gpu, onnxsim and the data (and the OpenVINO plugin when
#       carried) into /tmp/vggdeploy-gpu once all parts are there, then runs the stage; the report and PNGs go to $OUT
# Here, on the CPU, with tiny models (the suite runs this):
#   scripts/gpu/validate.sh --rehearse runtime|train|cpu|perf|all OUTDIR
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = --rehearse ]; then
  [ $# -ge 3 ] || { echo "usage: $0 --rehearse runtime|train|cpu|perf|all OUTDIR" >&2; exit 2; }
  python=${PYTHON:-python3}
  [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && python=.venv/bin/python
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  exec "$python" scripts/gpu/validate.py "$2" --rehearse --out "$3" "${@:4}"
fi
usage="usage: $0 receive|runtime|train|cpu|perf|all [options] (or --rehearse STAGE OUTDIR)"
stage=${1:-}
case "$stage" in  # checked before the parts are taken: a typo on the GPU host must not cost an install first
  receive) ;;
  runtime|train|cpu|perf|all) [ -n "${OUT:-}" ] || { echo "validate: set OUT to the folder the report goes to" >&2; exit 2; } ;;
  *) echo "validate: ${stage:+unknown stage '$stage'; }$usage" >&2; exit 2 ;;
esac
shift
state=${VGGDEPLOY_GPU_STATE:-/tmp/vggdeploy-gpu}
status=0
python3 scripts/gpu/parts.py receive --from "${VGGDEPLOY_GPU_PARTS:-.device}" --state "$state" || status=$?
if [ "$stage" = receive ]; then
  cpu=$(grep -m1 -e '^vendor_id' /proc/cpuinfo; grep -m1 -e '^model name' /proc/cpuinfo) || true
  echo "host CPU: $(echo "$cpu" | sed 's/^[^:]*: *//' | paste -sd ' '), $(nproc) cores" \
    "(the cpu stage measures OpenVINO only on an Intel CPU: GenuineIntel)"
  [ "$status" = 3 ] && exit 0  # parts still missing is the expected answer while they arrive
  exit "$status"
fi
[ "$status" = 0 ] || { echo "validate: cannot run $stage before every part is installed" >&2; exit "$status"; }
export PYTHONPATH=$state/gpu/site:$state/openvino/site:$PWD VGGDEPLOY_DATA_DIR=$state/gpu/data PYTHONUNBUFFERED=1
exec python3 scripts/gpu/validate.py "$stage" --out "$OUT" --work "$state/work" "$@"
