"""Every tile shape the `triton` backend may run (its autotune candidates) against the float64 oracle.

On CUDA the fused kernel reads and writes its tables and marginals by inline PTX in the tile's
own layout and sums over lanes with shuffles (backends/triton_lanes.py), which rely on
Triton's layout of the tile, so each shape the autotuner may pick is held to the tolerance policy
here, not only the default the properties draw. Under TRITON_INTERPRET=1 (no GPU) the kernels take
the plain Triton path, on smaller sizes; and every fused tile shape is compiled for sm_90 (no GPU
needed) to check that it gets the layout the PTX assumes, so a Triton release that changes it shows
up in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from harness import tolerance
from harness.problems import sick_bide
from harness.problems.sick_bide_problem import state_meaning, state_slack
from harness.triton_helpers import INTERPRET, INTERPRETER_PROBLEM, TRITON_MISSING

pytestmark = pytest.mark.skipif(TRITON_MISSING, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not INTERPRET:
    pytestmark = pytest.mark.skip(reason="no CUDA device and TRITON_INTERPRET is not set")

if not TRITON_MISSING:
    from backends.triton_mitm import TUNING
    CANDIDATES = [options for options in TUNING if options.get("design") != "brute"]
else:
    CANDIDATES = []
# (n_bits, batch, hidden, k_start, k_stop); None: the whole range. Tiles of 16 and 32 lo codes and
# 128-512 mid codes (n = 12: 256 with 8 warps), H not a multiple of 16, a range that cuts tiles at both ends.
SIZES = [(16, 3, 33, None, None), (13, 2, 16, None, None), (12, 2, 16, None, None), (20, 1, 8, 5, (1 << 20) - 77)] \
    if DEVICE == "cuda" \
    else [(9, 2, 5, None, None), (11, 1, 3, 3, 2001)]


@pytest.mark.parametrize("want_grad", [False, True], ids=["forward", "fused"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"n{s[0]}-B{s[1]}-H{s[2]}" + ("-range" if s[3] else ""))
@pytest.mark.parametrize("options", CANDIDATES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.skipif(DEVICE == "cpu" and INTERPRETER_PROBLEM is not None, reason=str(INTERPRETER_PROBLEM))
def test_tile_shapes_match_the_oracle(options, size, want_grad):
    n_bits, batch, hidden, k_start, k_stop = size
    k_start, k_stop = k_start or 0, k_stop or 1 << n_bits
    gen = torch.Generator().manual_seed(n_bits)
    W = torch.randn(batch, hidden, n_bits, generator=gen).to(DEVICE)
    r = torch.randn(batch, hidden, generator=gen).to(DEVICE)
    r[:, ::4] = -r[:, ::4].abs()      # both signs of r in every row
    got = sick_bide.partial_state(W, r, k_start, k_stop, want_grad=want_grad, backend="triton", **options)
    oracle = sick_bide.partial_state(W.double(), r.double(), k_start, k_stop, want_grad=True, backend="reference")
    reference = sick_bide.partial_state(W, r, k_start, k_stop, want_grad=True, backend="reference")
    keys = ("lse", "Dn") if want_grad else ("lse",)
    slack = state_slack(W, r, k_start, k_stop, torch.float32)
    tolerance.assert_within(state_meaning(got), {k: state_meaning(oracle)[k] for k in keys},
                            {k: state_meaning(reference)[k] for k in keys}, torch.float32,
                            f"triton {options} n={n_bits} B={batch} H={hidden} [{k_start}, {k_stop})",
                            {k: slack[k] for k in keys})


_COMPILE_SHAPES = textwrap.dedent("""
    import inspect
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import triton
    from backends.triton_fused import _fused_kernel, fused_constants, ptx_constants, ptx_possible
    from backends.triton_lanes import quads_ok
    from backends.triton_mitm import TUNING, _tables_state, tile_split
    from backends.triton_tables import RUNTIME_INTS

    defaults = {k: p.default for k, p in inspect.signature(_tables_state).parameters.items()}
    shapes = set()
    for options in TUNING:
        if options.get("design") == "brute":
            continue
        fused = {k: options.get(k, defaults[k]) for k in ("fused_lo_bits", "fused_mid_bits", "fused_num_warps")}
        for n_bits in (12, 13, 16, 20, 24):
            *_, lo, mid = tile_split(n_bits, fused["fused_lo_bits"], fused["fused_mid_bits"])
            warps = fused["fused_num_warps"]
            if ptx_possible(fused_constants(lo, mid, warps), warps):
                shapes.add((lo, mid, warps))
    wide = ("k_start", "k_stop", "first_tile", "last_tile")
    ints = {name: "i64" if name in wide else "i32" for name in RUNTIME_INTS}
    for lo, mid, warps in sorted(shapes):
        tile = fused_constants(lo, mid, warps)
        constants = {**tile, **ptx_constants(tile, True)}
        signature = {**{p: "*fp32" for p in ("w_ptr", "r_ptr", "scratch_ptr", "m_ptr", "s_ptr", "d_ptr")}, **ints,
                     **{c: "constexpr" for c in constants}}
        compiled = triton.compile(ASTSource(_fused_kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": warps})
        print(lo, mid, warps, quads_ok(compiled.asm["ttgir"]))
""")


def test_every_fused_tile_shape_gets_the_ptx_layout():
    """Compiled for sm_90 in a fresh process outside the interpreter (no GPU needed): each fused tile
    shape the autotune candidates reach at n = 12..24 gets the layout triton_lanes.py assumes. On a
    GPU a shape that did not would run the plain Triton path, slower and still right."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _COMPILE_SHAPES], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    verdicts = [line.split() for line in done.stdout.splitlines()]
    assert len(verdicts) >= 4, done.stdout          # 32 x 128 at 4 and 8 warps, 32 x 256, 16 x 128 at least
    assert all(v[3] == "True" for v in verdicts), done.stdout
