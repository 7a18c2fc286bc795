#!/usr/bin/env bash
# The GPU check of issue 12: every benchmark, JSON into OUT_DIR, within 8 minutes on one NVIDIA GPU.
#
#   bash benchmarks/gpu.sh OUT_DIR                       full-size random-weight InstructPix2Pix, 512², CUDA
#   bash benchmarks/gpu.sh OUT_DIR --device cpu --quick  the same script on the tiny model: the CPU dry run
#                                                        that CI runs (tests/test_benchmarks.py)
# No network: the models are built in code (benchmarks/models.py). PYTHON picks the interpreter (default python).
set -euo pipefail
usage="usage: bash benchmarks/gpu.sh OUT_DIR [--device cuda|cpu] [--quick]"
[ $# -ge 1 ] || { echo "OUT_DIR: expected an output directory, got nothing. $usage" >&2; exit 2; }
OUT=$1; shift
DEVICE=cuda; QUICK=0
while [ $# -gt 0 ]; do
  case $1 in
    --device) [ $# -ge 2 ] || { echo "--device: expected cuda or cpu, got nothing" >&2; exit 2; }; DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "gpu.sh: expected --device or --quick, got '$1'. $usage" >&2; exit 2 ;;
  esac
done
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
if [ "$QUICK" = 1 ]; then
  MODEL=tiny; STEP=(--ns 1 2 4 8 --repeats 1); OFFICIAL=(--ns 4 --repeats 1)
  MEMORY=(--ns 1 4 --max-batches 0 6 --control-n 2 --repeats 1)
  LIMIT_step=600; LIMIT_official_loop=600; LIMIT_memory=600  # ~1 min in all on an idle 2-core box
else
  # Budget on an H100 (estimated, not yet run): step ~1.5 min, official ~0.5 min, memory with compile ~3 min.
  MODEL=full; STEP=(--repeats 3); OFFICIAL=(--ns 8 --repeats 3)
  MEMORY=(--ns 1 4 16 --max-batches 0 6 2 --control-n 4 --repeats 3 --compile)
  LIMIT_step=150; LIMIT_official_loop=90; LIMIT_memory=220  # 460 s: the 8-minute slot with room to start
fi
start=$SECONDS
run() {  # name, args...: one benchmark, its table on stdout, its JSON in OUT
  local name=$1; shift
  echo "== $name ($MODEL, $DEVICE)"
  local limit="LIMIT_$name"
  timeout "${!limit}" "$PY" -m "benchmarks.$name" --model "$MODEL" --device "$DEVICE" "$@" --json "$OUT/$name.json" \
    || { echo "gpu.sh: $name failed (exit $?; 124 = over its ${!limit} s limit)" >&2; failed="$failed $name"; }
}
failed=""
run step "${STEP[@]}"
run official_loop "${OFFICIAL[@]}"
run memory "${MEMORY[@]}"
echo "gpu.sh: done in $((SECONDS - start)) s; JSON in $OUT"
[ -z "$failed" ] || { echo "gpu.sh: failed:$failed" >&2; exit 1; }
