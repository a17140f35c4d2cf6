#!/usr/bin/env bash
# One device call: environment, instruction ceilings, GPU properties, kernel-config timings.
# Usage on the device machine: bash benchmarks/device_session.sh  (writes logs under $OUT)
set -u
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv
  python3 -c 'import sys, torch, triton; print(sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__)'
  python3 -c 'import cupy; print("cupy", cupy.__version__)' 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ -f .devtools/peak_ops.py ] && [ -z "${SKIP_PEAK:-}" ]; then timeout 120 python3 .devtools/peak_ops.py > "$OUT/peak_ops.txt" 2>&1; cat "$OUT/peak_ops.txt"; fi
for step in "$@"; do
  echo "### $step"
  case "$step" in
    properties) timeout ${PROP_TIMEOUT:-330} python3 -m pytest properties tests --device cuda -q -x -p no:cacheprovider \
                  2>&1 | tail -25 | tee "$OUT/properties.txt" ;;
    *) timeout ${STEP_TIMEOUT:-300} bash -c "$step" 2>&1 | tee -a "$OUT/explore.txt" ;;
  esac
done
