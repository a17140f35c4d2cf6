#!/usr/bin/env bash
# The figures the speed targets of issues #3 and #4 name (n = 16, H = 32), `cupy` and `triton` side by
# side: each table is one explore.py run, its variants interleaved (A B A B rounds of do_bench medians,
# L2 flushed). Kernel states ("state", "grad-state") and whole calls ("loss", "loss+backward").
# Usage on a CUDA machine:  bash benchmarks/targets.sh [rounds]   (default 3; ~3 min on an H100 with a
# cold kernel cache). Extra variants for every table: VARIANTS="--variant cupy,blocks_per_sm=8".
set -eu
rounds=${1:-3}
explore() { python3 benchmarks/explore.py --rounds "$rounds" --variant cupy --variant triton ${VARIANTS:-} "$@"; }
large=batch=16384,hidden=32,n_bits=16
small=batch=64,hidden=32,n_bits=16
for mode in state loss grad-state loss+backward; do explore --sizes $large --mode $mode; done
for dtype in float16 bfloat16; do explore --sizes $large --mode loss --dtype $dtype; done
for mode in state grad-state loss loss+backward; do explore --sizes $small --mode $mode; done
