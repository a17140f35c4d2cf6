"""Triton: the SICK-BIDE loss in one pass over the codes, gradient sums fused into the forward.

Split the n bits of a code into lo, mid and top parts, k = (t << (n_lo + n_mid)) | (q << n_lo) | p.
z is linear in the bits, so with per-row tables (meet in the middle, three ways)

    z[p, q, t, h] = P_lo[h, p] + P_mid[h, q] + P_top[h, t]

a tile is every (p, q) for one top pattern t: BLOCK_LO x BLOCK_MID codes. Fold r
into the tables (c_h = |r_h|, or 1 where r_h = 0, and s_h = sign r_h, so s_h c_h = r_h):

    Qlo = c P_lo,   Qhi = -c (P_mid + P_top),   relu(a + b) = max(a, -b) + b
    l[p, q] = sum_h s_h max(Qlo[h, p], Qhi[h, q]) + R_mid[q] + R_top

with R_mid[q] = sum_h r_h P_mid[h, q] and R_top = sum_h r_h P_top[h, t]: one max and one
multiply-add per (row, code, hidden) triple, the hidden sum inside each thread. The forward
kernel sums relu(z) = (z + |z|) / 2 instead: two adds per triple, both on the FMA pipe, 1-4%
faster on the H100 (`_tile_logits`; the tables and the tile's logits are in triton_tables.py);
the fused kernel keeps the max form without c in its tables, l = sum_h r_h max(P_lo + P_top,
-P_mid) + R_mid, r (times log2 e) being the multiply-add's multiplier. The mask of its gradient
sums is the comparison 1[z > 0] = 1[P_lo + P_top > -P_mid] on those unscaled tables, where exact
ties stay ties. Logits are kept in base 2 (c and r carry log2 e) so each exponential is one ex2.
Online softmax:

    m' = max(m, max l),   alpha = 2^(m - m'),   e = 2^(l - m'),   s = alpha s + sum e

per column of the tile in the forward kernel (reduced once at the end). The fused kernel, with the
gradient sums D[h, j] = sum_k e_k 1[z_kh > 0] b_kj in the same pass, is in triton_fused.py (its
tables put P_top on the lo side, and each thread owns a block of its tile).

Programs are persistent: each owns a slot of scratch memory for its row's tables,
built once per (row, chunk of tiles) work item, and walks work items until none are
left. Chunks of a row merge with the partial-state merge, so any [k_start, k_stop)
works and small batches still fill the GPU.

Cost per triple (Nsight Compute, PERFORMANCE.md): forward 2 adds plus ~0.3-0.5 of table loads (Qlo is
a broadcast, which Triton loads one scalar at a time, so the forward reads it in int64 pairs) and ~0.3
of loop control and exponentials; the fused pass ~9 (triton_fused.py).
Limits: n_bits 1..32 (codes in int64), any H and B, log2_range <= 126 (harness/problems/sick_bide.py:
the tables and their sums stay finite); float32, float16 and bfloat16 inputs, tables and
accumulation in float32. CUDA, or the CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import math

import torch

from backends import triton_brute, triton_fused
from backends.triton_fused import fused_constants
from backends.triton_tables import (
    RUNTIME_INTS,
    _abs_risky,
    _build_tables,
    _edge,
    _tile_logits,
    _tile_top,
)
from harness import Backend
from harness.autotune import AUTOTUNE
from harness.problems.sick_bide import FLOAT32_TABLES, PartialState, merge_chunks
from harness.triton_helpers import DEVICES, INTERPRET, jit, tl, unavailable


@jit(do_not_specialize=RUNTIME_INTS)
def _forward_kernel(w_ptr, r_ptr, scratch_ptr, m_ptr, s_ptr, slot,
                    H, n_bits, n_lo, n_mid, n_top, k_start, k_stop, first_tile, last_tile,
                    chunks, tiles_per_chunk, n_items,
                    HB: tl.constexpr, BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr, MID_A_BITS: tl.constexpr):
    """For each work item (row, chunk): (m, s) over the chunk's tiles, written at item."""
    scratch = scratch_ptr + tl.program_id(0).to(tl.int64) * slot
    padded = ((1 << n_lo) < BLOCK_LO) | ((1 << n_mid) < BLOCK_MID)
    tile_bits = n_lo + n_mid
    for item in range(tl.program_id(0), n_items, tl.num_programs(0)):
        row = tl.cast(item // chunks, tl.int64)
        w_row, r_row = w_ptr + row * H * n_bits, r_ptr + row * H
        tl.debug_barrier()  # the previous item's readers are done with the tables
        _build_tables(w_row, r_row, scratch, H, n_bits, n_lo, n_mid, HB, BLOCK_LO, BLOCK_MID, MID_A_BITS, True)
        max_form = _abs_risky(w_row, r_row, H, n_bits, HB)
        m_col = tl.full([BLOCK_MID], -float("inf"), tl.float32)
        s_col = tl.zeros([BLOCK_MID], tl.float32)
        t0 = first_tile + (item % chunks) * tiles_per_chunk
        for tile in range(t0, tl.minimum(t0 + tiles_per_chunk, last_tile + 1)):
            r_top = _tile_top(w_row, r_row, scratch, tile, H, n_bits, n_lo, n_mid, n_top, HB, BLOCK_LO, BLOCK_MID,
                              True)
            edge = _edge(tile, tile_bits, k_start, k_stop, padded)
            l = _tile_logits(r_row, scratch, tile, r_top, H, n_lo, n_mid, k_start, k_stop, edge, max_form,
                             BLOCK_LO, BLOCK_MID)
            m_new = tl.maximum(m_col, tl.max(l, axis=0))
            # A column that has seen only -inf keeps m = -inf and takes its scale as 0: 2^(m - m') would be NaN.
            m_scale = tl.where(m_new == -float("inf"), 0.0, m_new)
            alpha = tl.exp2(m_col - m_scale)
            e = tl.exp2(l - m_scale[None, :])
            s_col = s_col * alpha + tl.sum(e, axis=0)
            m_col = m_new
        m2 = tl.max(m_col, axis=0)
        s = tl.sum(tl.where(m_col == -float("inf"), 0.0, s_col * tl.exp2(m_col - m2)), axis=0)
        tl.store(m_ptr + item, m2 * 0.6931471805599453)
        tl.store(s_ptr + item, s)


def partial_state(W: torch.Tensor, r: torch.Tensor, k_start: int, k_stop: int, out: PartialState, *,
                  design: str = "mitm", **options) -> None:
    """design "mitm": the tables kernels here (options of `_tables_state`); "brute": tensor-core z
    (triton_brute.py, its own options). An option of the other design is a TypeError naming it."""
    if design == "mitm":
        _tables_state(W, r, k_start, k_stop, out, **options)
    elif design == "brute":
        triton_brute.partial_state(W, r, k_start, k_stop, out, **options)
    else:
        raise ValueError(f"design must be 'mitm' or 'brute', got {design!r}")


def tile_split(n_bits: int, lo_bits: int, mid_bits: int) -> tuple[int, int, int, int, int]:
    """(n_lo, n_mid, n_top, BLOCK_LO, BLOCK_MID) of a code of n_bits for the options lo_bits, mid_bits.

    Blocks are the options', clamped to the codes there are (down to 16): a tile of a small n is
    not mostly padding, and each (lo, mid) block pair is one compile shared by every larger n."""
    n_lo = min(n_bits, lo_bits)
    n_mid = min(n_bits - n_lo, mid_bits)
    return n_lo, n_mid, n_bits - n_lo - n_mid, 1 << min(lo_bits, max(n_lo, 4)), 1 << min(mid_bits, max(n_mid, 4))


def _check_options(prefix: str, lo_bits: int, mid_bits: int, num_warps: int, maxnreg: int) -> None:
    """A ValueError naming the tile option out of its range; prefix "" for the forward's, "fused_" for the
    fused pass's."""
    for name, value, high in (("lo_bits", lo_bits, 6), ("mid_bits", mid_bits, 11)):
        if not isinstance(value, int) or not 1 <= value <= high:
            raise ValueError(f"{prefix}{name} must be an int in 1..{high}, got {value!r}")
    if num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"{prefix}num_warps must be 1, 2, 4, 8 or 16, got {num_warps!r}")
    if (1 << (lo_bits + mid_bits)) > 256 * 32 * num_warps:   # registers: the tile's accumulators, per thread
        raise ValueError(f"{prefix}lo_bits + {prefix}mid_bits = {lo_bits + mid_bits} makes tiles of more than 256 "
                         f"codes per thread with {prefix}num_warps = {num_warps}; at most "
                         f"{(256 * 32 * num_warps).bit_length() - 1}")
    if not isinstance(maxnreg, int) or not (maxnreg == 0 or 24 <= maxnreg <= 255):
        raise ValueError(f"{prefix}maxnreg must be 0 (no cap) or an int in 24..255, got {maxnreg!r}")


def tile_constants(block_lo: int, block_mid: int) -> dict[str, int]:
    """The kernels' tile constexprs for a (BLOCK_LO, BLOCK_MID) pair."""
    return {"HB": 16, "BLOCK_LO": block_lo, "BLOCK_MID": block_mid, "MID_A_BITS": min(block_mid.bit_length() - 1, 5)}


def _tables_state(
    W: torch.Tensor,
    r: torch.Tensor,
    k_start: int,
    k_stop: int,
    out: PartialState,
    *,
    lo_bits: int = 5,
    mid_bits: int = 9,
    num_warps: int = 4,
    fused_lo_bits: int = 5,
    fused_mid_bits: int = 7,
    fused_num_warps: int = 4,
    programs_per_sm: int = 2,
    maxnreg: int = 0,
    fused_maxnreg: int = 0,
) -> None:
    _check_options("", lo_bits, mid_bits, num_warps, maxnreg)
    _check_options("fused_", fused_lo_bits, fused_mid_bits, fused_num_warps, fused_maxnreg)
    if not isinstance(programs_per_sm, int) or not 1 <= programs_per_sm <= 32:
        raise ValueError(f"programs_per_sm must be an int in 1..32, got {programs_per_sm!r}")
    batch, hidden, n_bits = W.shape
    fused = out.D is not None
    if fused:
        lo_bits, mid_bits, num_warps, maxnreg = fused_lo_bits, fused_mid_bits, fused_num_warps, fused_maxnreg
    n_lo, n_mid, n_top, block_lo, block_mid = tile_split(n_bits, lo_bits, mid_bits)

    tile_bits = n_lo + n_mid
    first_tile, last_tile = k_start >> tile_bits, (k_stop - 1) >> tile_bits
    n_tiles = last_tile - first_tile + 1
    if W.is_cuda and not INTERPRET:
        slots = programs_per_sm * torch.cuda.get_device_properties(W.device).multi_processor_count
        chunks = max(1, min(n_tiles, math.ceil(slots / batch)))
    else:
        slots, chunks = 4, min(n_tiles, 2)
    tiles_per_chunk = math.ceil(n_tiles / chunks)
    chunks = math.ceil(n_tiles / tiles_per_chunk)   # no empty chunk: every item owes a state
    n_items = batch * chunks
    grid = (min(n_items, slots),)
    if fused:
        constants = fused_constants(block_lo, block_mid, num_warps)
        per_program = triton_fused.scratch_floats(hidden, constants)
    else:      # the tables and R_lo of the abs form, in 16-byte aligned slots: Qlo is read in 8-byte pairs
        constants = tile_constants(block_lo, block_mid)
        per_program = -(-(hidden * (block_lo + block_mid + 1) + block_mid + block_lo) // 4) * 4
    scratch = torch.empty(grid[0], per_program, dtype=torch.float32, device=W.device)
    direct = chunks == 1
    m_ws = out.m if direct else torch.empty(batch, chunks, dtype=torch.float32, device=W.device)
    s_ws = out.s if direct else torch.empty(batch, chunks, dtype=torch.float32, device=W.device)
    d_ws = None
    args = (W.float().contiguous(), r.float().contiguous(), scratch, m_ws, s_ws)
    sizes = (per_program, hidden, n_bits, n_lo, n_mid, n_top, k_start, k_stop, first_tile, last_tile, chunks,
             tiles_per_chunk, n_items)
    launch = {"num_warps": num_warps}
    if maxnreg:   # a register cap (ptxas spills past it) buys resident programs, as CuPy's min_blocks does
        launch["maxnreg"] = maxnreg
    if not fused:
        _forward_kernel[grid](*args, *sizes, **constants, **launch)
    else:
        d_ws = out.D if direct else torch.empty(batch, chunks, hidden, n_bits, dtype=torch.float32, device=W.device)
        triton_fused.run(grid, (*args, d_ws, *sizes), constants, launch)
    if not direct:
        merge_chunks(m_ws, s_ws, d_ws, out)


# The `autotune` config's candidates (harness/autotune.py times them per size): the default first,
# then tiles with more or fewer mid codes, more lo codes, or more warps, for both passes, and brute force.
TUNING = [
    {},
    {"mid_bits": 7, "fused_mid_bits": 8},
    {"mid_bits": 8, "fused_lo_bits": 4},
    {"lo_bits": 4, "num_warps": 8, "fused_num_warps": 8},
    {"num_warps": 8, "programs_per_sm": 1},
    {"programs_per_sm": 4},
    {"design": "brute"},
]


BACKENDS = [
    Backend(
        name="triton",
        problem="sick_bide",
        kernels={"partial_state": partial_state},
        devices=DEVICES,
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
        limits={"n_bits": (1, 32), "log2_range": FLOAT32_TABLES},
        features=frozenset({"grad", "k_ranges"}),
        configs={"default": {}, "autotune": {AUTOTUNE: TUNING}, "brute": {"design": "brute"}},
        unavailable=unavailable,
        priority=10,
        summary="Triton, one fused pass: 3-way meet-in-the-middle tables, online softmax",
    )
]
