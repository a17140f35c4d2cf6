"""Triton: the SICK-BIDE state with all its gradient sums in one pass (the `triton` backend's fused kernel).

The tables are triton_mitm.py's with P_top moved to the lo side, so that the only per-tile table is
the small one, and without r folded in (the forward's abs form needs it there; the max form's r is
the multiplier of the multiply-add it needs anyway):

    Qlo[h, p] = P_lo[h, p] + P_top[h, t]             per tile, [H, BLOCK_LO]
    Qhi[h, q] = -P_mid[h, q]                         per work item, [H, BLOCK_MID]
    l[p, q]   = sum_h r_h log2 e max(Qlo[h, p], Qhi[h, q]) + R_mid[q]      (base 2)

since r relu(a + b) = r max(a, -b) + r b with b = P_mid, R_mid[q] = sum_h r_h P_mid[h, q] log2 e.
1[z > 0] = 1[Qlo > Qhi] (exact ties stay ties). Online softmax per tile,
m' = max(m, max l), alpha = 2^(m - m'), e = 2^(l - m'), and then, per hidden unit, the marginals of
A[h, p, q] = e[p, q] 1[Qlo[h, p] > Qhi[h, q]]:

    G_lo[h, p]  = alpha G_lo[h, p]  + sum_q A       (D's lo bits: sum_p b_pj G_lo, once per item)
    G_mid[h, q] = alpha G_mid[h, q] + sum_p A       (D's mid bits: sum_q b_qj G_mid)
    D[h, top j] = alpha D[h, top j] + b_tj sum_pq A

The tile is held as [AP, BQ, LT, MT]: lo code p = w AP + i, mid code q = lane BQ + j, so that Triton's
default layout for it (threads along MT, warps along LT; `fused_constants` takes LT = the warps,
MT = 32) gives each thread an AP x BQ block. Per unit a thread sums its block's rows and columns
in registers; the rows' partial sums meet over the warp's lanes (a reduce-scatter of AP rows) and
are staged per tile; the columns' are added to one accumulator per warp, [H, LT, BLOCK_MID] in
scratch, read a unit ahead, and the warps' parts meet once per item (a sum over warps per unit would
go through shared memory with two barriers; staging them per tile and folding them cost 1.2
instructions per triple).

On CUDA (PTX) the tables are read by inline-PTX 16-byte loads in the tile's own layout, and a unit's
marginals are one block of PTX (triton_lanes.py: a compare and two predicated adds per triple, the
reduce-scatter, 16-byte stores): Triton would load each table entry once in a layout of its own
choosing, without vectors, and broadcast it to the warps through shared memory, and likewise move
each unit's marginals to a layout of its choosing before storing them. These rely on the layout;
`run` checks each compiled tile shape's TTGIR once per GPU (`quads_ok`) and runs the plain Triton
path where it does not hold, as it does for the tiles `ptx_possible` refuses (a thread's lo or mid
codes not a multiple of 4, more than 32 lo codes a thread, fewer than 32 mid codes or fewer lo codes
than warps) and under the interpreter. Cost per triple at the default 32 x 128 tile (Nsight Compute,
PERFORMANCE.md): 9.0 instructions, the marginals 5.25, the logits 2.6 and per-tile work 1.0, at
2 programs of 4 warps per SM (255 registers), stalled mostly on fixed-latency dependencies. The
per-warp accumulators take H x 2 KiB per program at 32 x 128, so from H = 48 two programs' scratch
is more than an SM's 256 KiB of L1 and shared memory; at H = 64, B = 4096 one program per SM is
faster (`programs_per_sm=1`, one of `autotune`'s candidates). Wider blocks amortise more per unit
but measured slower: 32 x 256 (8 x 8 a thread) by 1.9x, 16 x 256 by 2.3x (before the per-warp
accumulators).
"""

from __future__ import annotations

import torch

from backends.triton_lanes import group_starts, marginals_ptx, quads_ok, rows_of, store_marginals
from backends.triton_tables import RUNTIME_INTS, _build_tables, _edge, _tile_top
from harness.triton_helpers import INTERPRET, jit, tl


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
def _fold(acc_ptr, d_ptr, h0, H, n_bits, col0, n_cols, K, HB: tl.constexpr, KB: tl.constexpr, NB: tl.constexpr,
          PARTS: tl.constexpr):
    """D[h, col0 + j] = sum_k acc[h, k] b_kj for j < n_cols, hidden units h0..h0+HB, codes in KB chunks, where
    acc [H, PARTS, K] holds acc[h, k] in PARTS parts, added in order.

    An explicit IEEE dot: written as a broadcast product summed over k, Triton turns the
    pattern into a dot itself, in TF32, which loses 11 bits.
    """
    offs_h = h0 + tl.arange(0, HB)
    j = tl.arange(0, NB)
    d = tl.zeros([HB, NB], tl.float32)
    for k0 in range(0, K, KB):
        k = k0 + tl.arange(0, KB)
        g = tl.zeros([HB, KB], tl.float32)
        for part in range(PARTS):
            g += tl.load(acc_ptr + (offs_h[:, None] * PARTS + part) * K + k[None, :],
                         mask=(offs_h[:, None] < H) & (k[None, :] < K), other=0.0)                       # [HB, KB]
        b = tl.where((k[:, None] >> j[None, :]) & 1 == 1, 1.0, -1.0)                                   # [KB, NB]
        d += tl.dot(g, b, input_precision="ieee")
    tl.store(d_ptr + offs_h[:, None] * n_bits + col0 + j[None, :], d,
             mask=(offs_h[:, None] < H) & (j[None, :] < n_cols))


@jit
def _tile_qlo(qlo, tables, H, HB: tl.constexpr, BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr):
    """Qlo [H, BLOCK_LO] of the current tile: P_lo + P_top, from the item's P_lo and the tile's P_top."""
    offs_lo = tl.arange(0, BLOCK_LO)
    for h0 in range(0, H, HB):
        offs_h = h0 + tl.arange(0, HB)
        h_ok = offs_h < H
        p_top = tl.load(tables + H * (BLOCK_LO + BLOCK_MID) + BLOCK_MID + offs_h, mask=h_ok, other=0.0)
        p_lo = tl.load(tables + offs_h[:, None] * BLOCK_LO + offs_lo[None, :], mask=h_ok[:, None], other=0.0)
        tl.store(qlo + offs_h[:, None] * BLOCK_LO + offs_lo[None, :], p_lo + p_top[:, None], mask=h_ok[:, None])
    tl.debug_barrier()


@jit
def _first_unit(tile):
    """0, computed from the tile: the PTX loads are declared pure (`rows_of`), and a load at an address that does
    not depend on the tile could be hoisted out of the loop over tiles, above the barrier after which the tile's
    tables are there (the loads of later units depend on the loop over units, which starts after it)."""
    return tl.minimum(tile, 0)     # tiles are >= 0


@jit
def _unit(qlo, qhi, h, lo, mid, BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr, PTX: tl.constexpr):
    """(Qlo [AP, LT], Qhi [BQ, MT]) of hidden unit h, each in the layout the tile broadcasts it to."""
    return rows_of(qlo + h * BLOCK_LO, lo, PTX), rows_of(qhi + h * BLOCK_MID, mid, PTX)


@jit
def _block_logits(r_row, qlo, qhi, r_mid, tile, H, n_lo, n_mid, k_start, k_stop, edge, lo, mid,
                  AP: tl.constexpr, BQ: tl.constexpr, LT: tl.constexpr, MT: tl.constexpr, PTX: tl.constexpr):
    """l [AP, BQ, LT, MT] of `tile` in base 2; on an edge tile the codes outside [k_start, k_stop) or past
    2^n in padded tables are -inf."""
    acc = tl.zeros([AP, BQ, LT, MT], dtype=tl.float32) + r_mid[None, :, None, :]
    # Units in pairs, both read at the pair's start: the second's loads are covered by the first's sum, and
    # nothing is carried from one pair to the next (a loop-carried copy of the next unit's entries, read a
    # unit ahead, cost 12 moves per unit). Unit H (odd H) reads the tables that follow in the slot, P_lo's
    # and R_mid's entries, finite, and counts 0 times (its r reads as 0).
    for h in range(_first_unit(tile), H, 2):
        a_lo, a_hi = _unit(qlo, qhi, h, lo, mid, AP * LT, BQ * MT, PTX)
        b_lo, b_hi = _unit(qlo, qhi, h + 1, lo, mid, AP * LT, BQ * MT, PTX)
        r_a = tl.load(r_row + h) * 1.4426950408889634
        r_b = tl.load(r_row + h + 1, mask=h + 1 < H, other=0.0) * 1.4426950408889634
        acc += r_a * tl.maximum(a_lo[:, None, :, None], a_hi[None, :, None, :])
        acc += r_b * tl.maximum(b_lo[:, None, :, None], b_hi[None, :, None, :])
    if edge:
        lo4, mid4 = lo[:, None, :, None], mid[None, :, None, :]
        codes = (tl.cast(tile, tl.int64) << (n_lo + n_mid)) + (mid4.to(tl.int64) << n_lo) + lo4
        valid = (lo4 < (1 << n_lo)) & (mid4 < (1 << n_mid)) & (codes >= k_start) & (codes < k_stop)
        acc = tl.where(valid, acc, -float("inf"))
    return acc


@jit
def _lo_codes(AP: tl.constexpr, LT: tl.constexpr):
    """[AP, LT]: the lo code w AP + i of a tile's (i, w)."""
    return tl.arange(0, LT)[None, :] * AP + tl.arange(0, AP)[:, None]


@jit
def _mid_codes(BQ: tl.constexpr, MT: tl.constexpr):
    """[BQ, MT]: the mid code lane BQ + j of a tile's (j, lane)."""
    return tl.arange(0, MT)[None, :] * BQ + tl.arange(0, BQ)[:, None]


@jit
def _stage(e, q_lo, q_hi, lo_row, mid_row, mid_old, alpha, first, AP: tl.constexpr, BQ: tl.constexpr,
           LT: tl.constexpr, MT: tl.constexpr, PTX: tl.constexpr, MARGINALS: tl.constexpr, MARGINALS_IO: tl.constexpr):
    """One unit's marginals of A = e 1[q_lo > q_hi] (e [AP, BQ, LT, MT], q_lo [AP, 1, LT, 1], q_hi
    [1, BQ, 1, MT]): its sums over mid codes stored at lo_row [BLOCK_LO], and each warp's sums over its lo
    codes added to that warp's accumulators at mid_row [LT, BLOCK_MID] (alpha C + sums; the sums alone on
    an item's first tile). With PTX, mid_old [BQ, LT, MT] is what mid_row holds, read by the caller a
    unit ahead, and 0 before the first tile (where alpha is 0). The warps' parts meet once per item
    (`_fold`): a sum over warps per unit would go through shared memory with two barriers, and one per
    tile cost 1.2 instructions per triple."""
    lo = _lo_codes(AP, LT)                                                                       # [AP, LT]
    mid_offs = _mid_offs(BQ, LT, MT)
    if PTX:
        lo_at, mid_at = group_starts(lo_row, lo, AP), group_starts(mid_row, mid_offs, BQ)   # first row, column
        store_marginals(e, q_lo, q_hi, lo_at[:, None, :, None], mid_at[None, :, :, :],
                        mid_old[None, :, :, :], alpha, MARGINALS, MARGINALS_IO, AP * BQ)
    else:
        A = tl.where(q_lo > q_hi, e, 0.0)
        tl.store(lo_row + lo, tl.sum(tl.sum(A, axis=1), axis=2))
        _rescale_add(mid_row + mid_offs, mid_offs >= 0, alpha, tl.sum(A, axis=0), first)


@jit
def _mid_offs(BQ: tl.constexpr, LT: tl.constexpr, MT: tl.constexpr):
    """[BQ, LT, MT]: warp w's entry for mid code lane BQ + j in a [LT, BLOCK_MID] row."""
    return tl.arange(0, LT)[None, :, None] * (BQ * MT) + _mid_codes(BQ, MT)[:, None, :]


@jit
def _all(x, IS_MAX: tl.constexpr):
    """The max (IS_MAX) or the sum of a tile [AP, BQ, LT, MT]: a thread's own axes first, then the lanes, then
    the warps (lanes first would shuffle each of a thread's AP BQ values)."""
    if IS_MAX:
        return tl.max(tl.max(tl.max(tl.max(x, axis=1), axis=0), axis=1), axis=0)
    else:
        return tl.sum(tl.sum(tl.sum(tl.sum(x, axis=1), axis=0), axis=1), axis=0)


@jit(do_not_specialize=RUNTIME_INTS)
def _fused_kernel(w_ptr, r_ptr, scratch_ptr, m_ptr, s_ptr, d_ptr, slot,
                  H, n_bits, n_lo, n_mid, n_top, k_start, k_stop, first_tile, last_tile,
                  chunks, tiles_per_chunk, n_items,
                  HB: tl.constexpr, AP: tl.constexpr, BQ: tl.constexpr, LT: tl.constexpr, MT: tl.constexpr,
                  MID_A_BITS: tl.constexpr, N_TOP: tl.constexpr, PTX: tl.constexpr, MARGINALS: tl.constexpr,
                  MARGINALS_IO: tl.constexpr):
    """For each work item (row, chunk): (m, s, D [H, n]) over the chunk's tiles, written at item.

    Scratch slot (`scratch_floats`): Qlo [H, BLOCK_LO] (per tile), then the item's tables (P_lo [H, BLOCK_LO],
    Qhi [H, BLOCK_MID], R_mid [BLOCK_MID]: `_build_tables` without ABS) and the tile's P_top [H]
    (`_tile_top`), padding to 16 bytes, a tile's lo marginals [H, BLOCK_LO], the warps' parts of G_mid
    [H, LT, BLOCK_MID], G_lo [H, BLOCK_LO], and [LT, BLOCK_MID] of slack.
    """
    BLOCK_LO: tl.constexpr = AP * LT
    BLOCK_MID: tl.constexpr = BQ * MT
    scratch = scratch_ptr + tl.program_id(0).to(tl.int64) * slot
    qlo = scratch
    tables = qlo + H * BLOCK_LO
    qhi = tables + H * BLOCK_LO
    stage_lo = tables + (H * (BLOCK_LO + BLOCK_MID + 1) + BLOCK_MID + 3) // 4 * 4     # 16-byte aligned
    acc_mid = stage_lo + H * BLOCK_LO
    acc_lo = acc_mid + H * LT * BLOCK_MID
    padded = ((1 << n_lo) < BLOCK_LO) | ((1 << n_mid) < BLOCK_MID)
    tile_bits = n_lo + n_mid
    offs_lo = tl.arange(0, BLOCK_LO)
    lo = _lo_codes(AP, LT)
    mid = _mid_codes(BQ, MT)
    mid_offs = _mid_offs(BQ, LT, MT)
    j_top = tl.arange(0, N_TOP)
    for item in range(tl.program_id(0), n_items, tl.num_programs(0)):
        row = tl.cast(item // chunks, tl.int64)
        w_row, r_row = w_ptr + row * H * n_bits, r_ptr + row * H
        d_item = d_ptr + tl.cast(item, tl.int64) * H * n_bits
        tl.debug_barrier()
        _build_tables(w_row, r_row, tables, H, n_bits, n_lo, n_mid, HB, BLOCK_LO, BLOCK_MID, MID_A_BITS, False)
        if PTX:     # G_mid's parts start at 0 (the first tile's alpha is 0, and 0 x poison could be NaN)
            for h in range(0, H):
                tl.store(acc_mid + h * LT * BLOCK_MID + mid_offs, tl.zeros([BQ, LT, MT], tl.float32))
        tl.debug_barrier()  # R_mid is written by other threads, and so may G_mid's zeros be
        r_mid = tl.load(tables + H * (BLOCK_LO + BLOCK_MID) + mid)                            # [BQ, MT]
        m = -float("inf")
        s = 0.0
        t0 = first_tile + (item % chunks) * tiles_per_chunk
        t1 = tl.minimum(t0 + tiles_per_chunk, last_tile + 1)
        for tile in range(t0, t1):
            _tile_top(w_row, r_row, tables, tile, H, n_bits, n_lo, n_mid, n_top, HB, BLOCK_LO, BLOCK_MID, False)
            _tile_qlo(qlo, tables, H, HB, BLOCK_LO, BLOCK_MID)
            edge = _edge(tile, tile_bits, k_start, k_stop, padded)
            l = _block_logits(r_row, qlo, qhi, r_mid, tile, H, n_lo, n_mid, k_start, k_stop, edge, lo, mid,
                              AP, BQ, LT, MT, PTX)
            m_new = tl.maximum(m, _all(l, True))
            m_scale = tl.where(m_new == -float("inf"), 0.0, m_new)   # only -inf so far: scale 0, not NaN
            alpha = tl.exp2(m - m_scale)
            e = tl.exp2(l - m_scale)
            s = s * alpha + _all(e, False)
            m = m_new
            first = tile == t0
            q_lo, q_hi = _unit(qlo, qhi, _first_unit(tile), lo, mid, BLOCK_LO, BLOCK_MID, PTX)
            mid_old = rows_of(acc_mid, mid_offs, PTX, False)
            for h in range(0, H):
                # The next unit's tables and accumulators, read a unit ahead (at h = H - 1 the accumulators'
                # read is of what follows them in the slot, G_lo and slack, and unused).
                q_lo_next, q_hi_next = _unit(qlo, qhi, h + 1, lo, mid, BLOCK_LO, BLOCK_MID, PTX)
                mid_old_next = rows_of(acc_mid + (h + 1) * LT * BLOCK_MID, mid_offs, PTX, False)
                _stage(e, q_lo[:, None, :, None], q_hi[None, :, None, :], stage_lo + h * BLOCK_LO,
                       acc_mid + h * LT * BLOCK_MID, mid_old, alpha, first, AP, BQ, LT, MT, PTX, MARGINALS,
                       MARGINALS_IO)
                q_lo, q_hi, mid_old = q_lo_next, q_hi_next, mid_old_next
            tl.debug_barrier()
            b_top = tl.where((tile >> j_top) & 1 == 1, 1.0, -1.0)                      # [N_TOP]
            for h0 in range(0, H, HB):
                offs_h = h0 + tl.arange(0, HB)
                h_ok = offs_h[:, None] < H
                g_lo = tl.load(stage_lo + offs_h[:, None] * BLOCK_LO + offs_lo[None, :], mask=h_ok, other=0.0)
                _rescale_add(acc_lo + offs_h[:, None] * BLOCK_LO + offs_lo[None, :], h_ok, alpha, g_lo, first)
                d_top = tl.sum(g_lo, axis=1)[:, None] * b_top[None, :]                 # [HB, N_TOP]
                _rescale_add(d_item + offs_h[:, None] * n_bits + n_lo + n_mid + j_top[None, :],
                             h_ok & (j_top[None, :] < n_top), alpha, d_top, first)
        tl.debug_barrier()
        for h0 in range(0, H, HB):
            _fold(acc_lo, d_item, h0, H, n_bits, 0, n_lo, BLOCK_LO, HB, 16, 16, 1)
            _fold(acc_mid, d_item, h0, H, n_bits, n_lo, n_mid, BLOCK_MID, HB, 16, 16, LT)
        tl.store(m_ptr + item, m * 0.6931471805599453)
        tl.store(s_ptr + item, s)


def fused_constants(block_lo: int, block_mid: int, num_warps: int) -> dict[str, int]:
    """The fused kernel's tile constexprs: a [BLOCK_LO, BLOCK_MID] tile as [AP, BQ, LT, MT], warps along LT and
    lanes along MT where the tile has the codes for them."""
    lt, mt = min(num_warps, block_lo), min(32, block_mid)
    return {"HB": 16, "AP": block_lo // lt, "BQ": block_mid // mt, "LT": lt, "MT": mt,
            "MID_A_BITS": min(block_mid.bit_length() - 1, 5), "N_TOP": 32}


def scratch_floats(hidden: int, constants: dict[str, int]) -> int:
    """The floats of a program's scratch slot (`_fused_kernel`); every part starts 16-byte aligned (PTX loads
    and stores of four entries) given an aligned slot."""
    block_lo, block_mid = constants["AP"] * constants["LT"], constants["BQ"] * constants["MT"]
    tables = -(-(hidden * (block_lo + block_mid + 1) + block_mid) // 4) * 4
    # the G_mid parts are read a unit ahead: after the last unit's, one unit's worth of slack
    return hidden * block_lo + tables + hidden * (block_lo + constants["LT"] * block_mid + block_lo) \
        + constants["LT"] * block_mid


# (tile constexprs, num_warps, compute capability) -> whether the compiled kernel has the layouts `rows_of` and
# `store_marginals` assume.
_LAYOUTS: dict[tuple, bool] = {}


def ptx_possible(constants: dict[str, int], num_warps: int) -> bool:
    """Whether a tile can take the PTX path: compiled for NVIDIA, four-entry groups along both of a thread's
    axes and at most 32 lo codes a thread (`marginals_ptx`), a warp's lanes along MT and the warps along LT
    (the layout `quads_ok` then checks)."""
    return not INTERPRET and torch.version.hip is None and constants["AP"] in (4, 8, 16, 32) \
        and constants["BQ"] % 4 == 0 and constants["MT"] == 32 and constants["LT"] == num_warps


def ptx_constants(constants: dict[str, int], ptx: bool) -> dict[str, bool | str]:
    """The fused kernel's PTX constexprs: whether it takes the PTX path, and the marginals' PTX for the tile."""
    asm, io = marginals_ptx(constants["AP"], constants["BQ"]) if ptx else ("", "")
    return {"PTX": ptx, "MARGINALS": asm, "MARGINALS_IO": io}


def run(grid: tuple, args: tuple, constants: dict[str, int], launch: dict[str, int]) -> None:
    """Launch `_fused_kernel`, with PTX where the tile can have the layouts `rows_of` and `store_marginals` need
    and the compiled kernel has them (checked once per tile shape and GPU; the compile is the launch's own,
    from Triton's cache)."""
    ptx = ptx_possible(constants, launch["num_warps"])
    if ptx:
        key = (tuple(constants.items()), tuple(launch.items()), torch.cuda.get_device_capability(args[0].device))
        if key not in _LAYOUTS:
            compiled = _fused_kernel.warmup(*args, grid=grid, **constants, **ptx_constants(constants, True), **launch)
            _LAYOUTS[key] = quads_ok(compiled.asm["ttgir"])
        ptx = _LAYOUTS[key]
    _fused_kernel[grid](*args, **constants, **ptx_constants(constants, ptx), **launch)
