"""Every tile shape the `triton` backend may run (its autotune candidates) against the float64 oracle.

On CUDA the fused kernel sums over mid codes with a hand-written shuffle butterfly
(backends/triton_lanes.py) that relies on Triton's layout of the tile, so each shape the
autotuner may pick is held to the tolerance policy here, not only the default the properties
draw. Under TRITON_INTERPRET=1 (no GPU) the kernels keep `tl.sum`, on smaller sizes.
"""

from __future__ import annotations

import pytest
import torch

from harness import tolerance
from harness.problems import sick_bide
from harness.problems.sick_bide_problem import state_slack
from harness.triton_helpers import INTERPRET, TRITON_MISSING

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
# 128-512 mid codes, H not a multiple of 16, a range that cuts tiles at both ends.
SIZES = [(16, 3, 33, None, None), (13, 2, 16, None, None), (20, 1, 8, 5, (1 << 20) - 77)] if DEVICE == "cuda" \
    else [(9, 2, 5, None, None), (11, 1, 3, 3, 2001)]


def _summary(state: sick_bide.PartialState) -> dict[str, torch.Tensor]:
    out = {"lse": state.m + state.s.log()}
    if state.D is not None:
        out["Dn"] = state.D / state.s[:, None, None]
    return out


@pytest.mark.parametrize("want_grad", [False, True], ids=["forward", "fused"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"n{s[0]}-B{s[1]}-H{s[2]}" + ("-range" if s[3] else ""))
@pytest.mark.parametrize("options", CANDIDATES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
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
    tolerance.assert_within(_summary(got), {k: _summary(oracle)[k] for k in keys},
                            {k: _summary(reference)[k] for k in keys}, torch.float32,
                            f"triton {options} n={n_bits} B={batch} H={hidden} [{k_start}, {k_stop})",
                            {k: slack[k] for k in keys})
