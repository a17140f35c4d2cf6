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
the fused kernel keeps the form above. The mask of the gradient sums is the same comparison,
1[z > 0] = 1[Qlo > Qhi]: c > 0 keeps the sign of z, and ties stay exact (c P and c (-P) round
alike). Logits are kept in base 2 (c and r carry log2 e) so each exponential is one ex2.
Online softmax:

    m' = max(m, max l),   alpha = 2^(m - m'),   e = 2^(l - m'),   s = alpha s + sum e

per column of the tile in the forward kernel (reduced once at the end), per tile in
the fused kernel, which then makes a second pass over h through the marginals of
A[h, p, q] = e[p, q] 1[Qlo[h, p] > Qhi[h, q]]:

    D[h, j] = alpha D[h, j] + sum_p b_pj sum_q A    (lo bits)
                            + sum_q b_qj sum_p A    (mid bits)
                            + b_tj sum_pq A         (top bits: constant over the tile)

Programs are persistent: each owns a slot of scratch memory for its row's tables,
built once per (row, chunk of tiles) work item, and walks work items until none are
left. Chunks of a row merge with the partial-state merge, so any [k_start, k_stop)
works and small batches still fill the GPU.

Cost per triple (Nsight Compute, PERFORMANCE.md): forward 2 adds plus ~0.3-0.5 of table loads (Qlo is
a broadcast, which Triton loads one scalar at a time, so the forward reads it in int64 pairs) and ~0.3
of loop control and exponentials; the fused pass adds a compare, a select and two marginal sums.
Triton lays A out as 16 lo rows x 2 mid columns per thread, so its own sum over mid codes would be
a 5-level shuffle tree per row (~14 instructions per triple); on CUDA a hand-written reduce-scatter
and the mask in inline PTX (triton_lanes.py) do the same arithmetic in the same order in ~8.
Limits: n_bits 1..32 (codes in int64), any H and B, log2_range <= 126 (harness/problems/sick_bide.py:
the tables and their sums stay finite); float32, float16 and bfloat16 inputs, tables and
accumulation in float32. CUDA, or the CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import math

import torch

from backends import triton_brute
from backends.triton_lanes import lanes_ok, layout_ok, masked, row_of, row_sums
from backends.triton_tables import (
    _abs_risky,
    _build_tables,
    _hidden_unit,
    _join_rows,
    _lo_pairs,
    _split_rows,
    _tile_logits,
    _tile_top,
)
from harness import Backend
from harness.autotune import AUTOTUNE
from harness.problems.sick_bide import FLOAT32_TABLES, PartialState, merge_chunks
from harness.triton_helpers import DEVICES, INTERPRET, jit, tl, unavailable

# Sizes vary call to call; specialising on them (value 1, multiples of 16) would recompile per shape.
_RUNTIME_INTS = ["slot", "H", "n_bits", "n_lo", "n_mid", "n_top", "k_start", "k_stop", "first_tile", "last_tile",
                 "chunks", "tiles_per_chunk", "n_items"]


@jit
def _edge(tile, tile_bits, k_start, k_stop, padded):
    """Whether some code of `tile` is outside [k_start, k_stop) or the tables (`padded`): only then
    does it need the masks (the first and last tiles of a whole range need none)."""
    start = tl.cast(tile, tl.int64) << tile_bits      # tile may be int32: codes reach 2^32
    return padded | (start < k_start) | (start + (1 << tile_bits) > k_stop)


@jit(do_not_specialize=_RUNTIME_INTS)
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
                             BLOCK_LO, BLOCK_MID, True)
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


@jit
def _rescale_add(ptrs, mask, alpha, d, first):
    """X <- alpha X + d; on a work item's first tile X <- d (the buffer may hold poison).

    Triton may replicate an element across threads of different warps. Every copy
    reads before any copy writes (the barrier), so the copies write the same value;
    without it a late reader would add d twice.
    """
    old = tl.load(ptrs, mask=mask, other=0.0)
    tl.debug_barrier()
    tl.store(ptrs, tl.where(first, d, alpha * old + d), mask=mask)


@jit
def _fold(acc_ptr, d_ptr, h0, H, n_bits, col0, n_cols, K, HB: tl.constexpr, KB: tl.constexpr, NB: tl.constexpr):
    """D[h, col0 + j] = sum_k acc[h, k] b_kj for j < n_cols, hidden units h0..h0+HB, codes in KB chunks.

    An explicit IEEE dot: written as a broadcast product summed over k, Triton turns the
    pattern into a dot itself, in TF32, which loses 11 bits.
    """
    offs_h = h0 + tl.arange(0, HB)
    j = tl.arange(0, NB)
    d = tl.zeros([HB, NB], tl.float32)
    for k0 in range(0, K, KB):
        k = k0 + tl.arange(0, KB)
        g = tl.load(acc_ptr + offs_h[:, None] * K + k[None, :], mask=(offs_h[:, None] < H) & (k[None, :] < K),
                    other=0.0)                                                                          # [HB, KB]
        b = tl.where((k[:, None] >> j[None, :]) & 1 == 1, 1.0, -1.0)                                   # [KB, NB]
        d += tl.dot(g, b, input_precision="ieee")
    tl.store(d_ptr + offs_h[:, None] * n_bits + col0 + j[None, :], d,
             mask=(offs_h[:, None] < H) & (j[None, :] < n_cols))


@jit
def _masked(e, scratch, h, q_lo, q_hi, BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr):
    """A = e 1[Qlo > Qhi] [BLOCK_LO, BLOCK_MID] of unit h by inline PTX (`masked`). With 32 lo codes a
    thread, Qlo is read in int64 pairs (`_lo_pairs`), measured faster there and not with 16."""
    if BLOCK_LO >= 32:
        q_even, q_odd = _lo_pairs(scratch, h, BLOCK_LO)
        e_even, e_odd = _split_rows(e, BLOCK_LO, BLOCK_MID)
        A = _join_rows(masked(e_even, q_even[:, None], q_hi[None, :]), masked(e_odd, q_odd[:, None], q_hi[None, :]),
                       BLOCK_LO, BLOCK_MID)
    else:
        A = masked(e, q_lo[:, None], q_hi[None, :])
    return A


@jit(do_not_specialize=_RUNTIME_INTS)
def _fused_kernel(w_ptr, r_ptr, scratch_ptr, m_ptr, s_ptr, d_ptr, slot,
                  H, n_bits, n_lo, n_mid, n_top, k_start, k_stop, first_tile, last_tile,
                  chunks, tiles_per_chunk, n_items,
                  HB: tl.constexpr, BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr, MID_A_BITS: tl.constexpr,
                  N_TOP: tl.constexpr, LANES: tl.constexpr, WARPS: tl.constexpr):
    """For each work item (row, chunk): (m, s, D [H, n]) over the chunk's tiles, written at item.

    Per tile and hidden unit the two marginals of A are staged in scratch (stores only);
    after the hidden loop they are folded in bulk into the accumulators G_lo [H, BLOCK_LO]
    and G_mid [H, BLOCK_MID] (rescaled by alpha) and into D's top bits; G_lo and G_mid
    become D's lo and mid bits once per work item.
    """
    tables = H * (BLOCK_LO + BLOCK_MID + 1) + BLOCK_MID
    scratch = scratch_ptr + tl.program_id(0).to(tl.int64) * slot
    stage_lo = scratch + tables
    stage_mid = stage_lo + H * BLOCK_LO
    acc_lo = stage_mid + H * BLOCK_MID
    acc_mid = acc_lo + H * BLOCK_LO
    padded = ((1 << n_lo) < BLOCK_LO) | ((1 << n_mid) < BLOCK_MID)
    tile_bits = n_lo + n_mid
    offs_lo = tl.arange(0, BLOCK_LO)
    offs_mid = tl.arange(0, BLOCK_MID)
    j_top = tl.arange(0, N_TOP)
    lane = tl.arange(0, 32)
    for item in range(tl.program_id(0), n_items, tl.num_programs(0)):
        row = tl.cast(item // chunks, tl.int64)
        w_row, r_row = w_ptr + row * H * n_bits, r_ptr + row * H
        d_item = d_ptr + tl.cast(item, tl.int64) * H * n_bits
        tl.debug_barrier()
        _build_tables(w_row, r_row, scratch, H, n_bits, n_lo, n_mid, HB, BLOCK_LO, BLOCK_MID, MID_A_BITS, False)
        m = -float("inf")
        s = 0.0
        t0 = first_tile + (item % chunks) * tiles_per_chunk
        t1 = tl.minimum(t0 + tiles_per_chunk, last_tile + 1)
        for tile in range(t0, t1):
            r_top = _tile_top(w_row, r_row, scratch, tile, H, n_bits, n_lo, n_mid, n_top, HB, BLOCK_LO, BLOCK_MID,
                              False)
            edge = _edge(tile, tile_bits, k_start, k_stop, padded)
            l = _tile_logits(r_row, scratch, tile, r_top, H, n_lo, n_mid, k_start, k_stop, edge, 1,
                             BLOCK_LO, BLOCK_MID, False)
            m_new = tl.maximum(m, tl.max(tl.max(l, axis=1), axis=0))
            m_scale = tl.where(m_new == -float("inf"), 0.0, m_new)   # only -inf so far: scale 0, not NaN
            alpha = tl.exp2(m - m_scale)
            e = tl.exp2(l - m_scale)
            s = s * alpha + tl.sum(tl.sum(e, axis=1), axis=0)
            m = m_new
            for h in range(0, H):
                q_lo, q_hi, _ = _hidden_unit(r_row, scratch, h, H, offs_lo, offs_mid, BLOCK_LO, BLOCK_MID, False)
                if LANES:      # CUDA, tiles of 16 or 32 lo codes: inline PTX (triton_lanes.py)
                    A = _masked(e, scratch, h, q_lo, q_hi, BLOCK_LO, BLOCK_MID)
                    tl.store(stage_lo + h * BLOCK_LO + row_of(lane, BLOCK_LO), row_sums(A, BLOCK_LO, BLOCK_MID, WARPS),
                             mask=row_of(lane, BLOCK_LO) * (32 // BLOCK_LO) == lane)
                else:
                    A = tl.where(q_lo[:, None] > q_hi[None, :], e, 0.0)                   # [BLOCK_LO, BLOCK_MID]
                    tl.store(stage_lo + h * BLOCK_LO + offs_lo, tl.sum(A, axis=1))
                tl.store(stage_mid + h * BLOCK_MID + offs_mid, tl.sum(A, axis=0))
            tl.debug_barrier()
            first = tile == t0
            b_top = tl.where((tile >> j_top) & 1 == 1, 1.0, -1.0)                      # [N_TOP]
            for h0 in range(0, H, HB):
                offs_h = h0 + tl.arange(0, HB)
                h_ok = offs_h[:, None] < H
                g_lo = tl.load(stage_lo + offs_h[:, None] * BLOCK_LO + offs_lo[None, :], mask=h_ok, other=0.0)
                _rescale_add(acc_lo + offs_h[:, None] * BLOCK_LO + offs_lo[None, :], h_ok, alpha, g_lo, first)
                g_mid = tl.load(stage_mid + offs_h[:, None] * BLOCK_MID + offs_mid[None, :], mask=h_ok, other=0.0)
                _rescale_add(acc_mid + offs_h[:, None] * BLOCK_MID + offs_mid[None, :], h_ok, alpha, g_mid, first)
                d_top = tl.sum(g_lo, axis=1)[:, None] * b_top[None, :]                 # [HB, N_TOP]
                _rescale_add(d_item + offs_h[:, None] * n_bits + n_lo + n_mid + j_top[None, :],
                             h_ok & (j_top[None, :] < n_top), alpha, d_top, first)
        tl.debug_barrier()
        for h0 in range(0, H, HB):
            _fold(acc_lo, d_item, h0, H, n_bits, 0, n_lo, BLOCK_LO, HB, 16, 16)
            _fold(acc_mid, d_item, h0, H, n_bits, n_lo, n_mid, BLOCK_MID, HB, 16, 16)
        tl.store(m_ptr + item, m * 0.6931471805599453)
        tl.store(s_ptr + item, s)


# (BLOCK_LO, BLOCK_MID, num_warps, compute capability) -> whether the compiled fused kernel has the layout
# triton_lanes.py assumes.
_LAYOUTS: dict[tuple, bool] = {}


def _lanes(args: tuple, grid: tuple, blocks: dict, block_lo: int, block_mid: int, num_warps: int) -> bool:
    """LANES for a fused tile: where `lanes_ok`, and the compiled kernel's layout is the one the shuffles
    assume (checked once per tile shape; the compile is the launch's own, from Triton's cache)."""
    if not lanes_ok(block_lo, block_mid, num_warps):
        return False
    key = (block_lo, block_mid, num_warps, torch.cuda.get_device_capability(args[0].device))
    if key not in _LAYOUTS:
        compiled = _fused_kernel.warmup(*args, grid=grid, **blocks, N_TOP=32, LANES=True, WARPS=num_warps)
        _LAYOUTS[key] = layout_ok(compiled.asm["ttgir"], num_warps)
    return _LAYOUTS[key]


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


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
    fused_lo_bits: int = 4,
    fused_mid_bits: int = 8,
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
    per_program = hidden * (block_lo + block_mid + 1) + block_mid
    if fused:  # staged marginals and their accumulators
        per_program += 2 * hidden * (block_lo + block_mid)
    else:      # R_lo of the abs form
        per_program += block_lo
    per_program = -(-per_program // 4) * 4      # 16-byte aligned slots: Qlo is read in 8-byte pairs
    scratch = torch.empty(grid[0], per_program, dtype=torch.float32, device=W.device)
    direct = chunks == 1
    m_ws = out.m if direct else torch.empty(batch, chunks, dtype=torch.float32, device=W.device)
    s_ws = out.s if direct else torch.empty(batch, chunks, dtype=torch.float32, device=W.device)
    d_ws = None
    args = (W.float().contiguous(), r.float().contiguous(), scratch, m_ws, s_ws)
    sizes = (per_program, hidden, n_bits, n_lo, n_mid, n_top, k_start, k_stop, first_tile, last_tile, chunks,
             tiles_per_chunk, n_items)
    blocks = {**tile_constants(block_lo, block_mid), "num_warps": num_warps}
    if maxnreg:   # a register cap (ptxas spills past it) buys resident programs, as CuPy's min_blocks does
        blocks["maxnreg"] = maxnreg
    if not fused:
        _forward_kernel[grid](*args, *sizes, **blocks)
    else:
        d_ws = out.D if direct else torch.empty(batch, chunks, hidden, n_bits, dtype=torch.float32, device=W.device)
        fused_args = (*args, d_ws, *sizes)
        lanes = _lanes(fused_args, grid, blocks, block_lo, block_mid, num_warps)
        _fused_kernel[grid](*fused_args, **blocks, N_TOP=32, LANES=lanes, WARPS=num_warps)
    if not direct:
        merge_chunks(m_ws, s_ws, d_ws, out)


# The `autotune` config's candidates (harness/autotune.py times them per size): the default first,
# then tiles with more or fewer mid codes, more lo codes, or more warps, for both passes, and brute force.
TUNING = [
    {},
    {"mid_bits": 7, "fused_mid_bits": 7},
    {"mid_bits": 8, "fused_mid_bits": 9, "fused_num_warps": 8},
    {"lo_bits": 4, "num_warps": 8, "fused_lo_bits": 5, "fused_mid_bits": 7},
    {"num_warps": 8, "programs_per_sm": 1},
    {"programs_per_sm": 4, "fused_mid_bits": 9},
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
        summary="Triton, one fused pass: 3-way meet-in-the-middle tables, r folded in, online softmax",
    )
]
