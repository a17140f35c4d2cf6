"""The per-row tables of triton_mitm.py's kernels and the logits of one tile (module docstring there).

Scratch layout of a program's slot, in floats: Qlo [H, BLOCK_LO], P_mid [H, BLOCK_MID], R_mid
[BLOCK_MID], P_top [H], and R_lo [BLOCK_LO] for the abs form (ABS, the forward kernel), whose
tables hold half of the max form's (c, R_mid and R_top halved); the fused kernel's (triton_fused.py)
start with P_lo and hold Qhi = -P_mid (no r). Qlo comes first and slots are
rounded to 4 floats, so its rows (BLOCK_LO even) can be read as aligned int64 pairs (`_lo_pairs`).
"""

from __future__ import annotations

from harness.triton_helpers import jit, tl

# Sizes vary call to call; specialising on them (value 1, multiples of 16) would recompile per shape.
RUNTIME_INTS = ["slot", "H", "n_bits", "n_lo", "n_mid", "n_top", "k_start", "k_stop", "first_tile", "last_tile",
                "chunks", "tiles_per_chunk", "n_items"]


@jit
def _edge(tile, tile_bits, k_start, k_stop, padded):
    """Whether some code of `tile` is outside [k_start, k_stop) or the tables (`padded`): only then
    does it need the masks (the first and last tiles of a whole range need none)."""
    start = tl.cast(tile, tl.int64) << tile_bits      # tile may be int32: codes reach 2^32
    return padded | (start < k_start) | (start + (1 << tile_bits) > k_stop)


@jit
def _fold_r(r):
    """r -> (c log2 e, sign r) of the forward's abs-form tables (`_tile_logits`): c = |r| / 2, or 1/2 where
    r = 0 (its sign 0 drops the unit from the logits). The fused kernel's tables do not fold r in."""
    c = tl.where(r != 0, tl.abs(r), 1.0) * (_scale(True) * 1.4426950408889634)
    return c, tl.where(r > 0, 1.0, tl.where(r < 0, -1.0, 0.0))


@jit
def _scale(ABS: tl.constexpr):
    """The tables' factor: 1/2 for the abs form, whose tables hold half of r z and |r z|."""
    return 0.5 if ABS else 1.0


@jit
def _abs_risky(w_row, r_row, H, n_bits, HB: tl.constexpr):
    """1 if a table of the abs form, |Qlo - Qhi| or a sum of them could overflow for this row (H sums
    of at most 2^118 each), else 0; NaN counts as a risk."""
    risky = 0
    for h0 in range(0, H, HB):
        offs_h = h0 + tl.arange(0, HB)
        h_ok = offs_h < H
        c, _ = _fold_r(tl.load(r_row + offs_h, mask=h_ok, other=0.0))
        norm = tl.zeros([HB], tl.float32)
        for j in range(n_bits):
            norm += tl.abs(tl.load(w_row + offs_h * n_bits + j, mask=h_ok, other=0.0))
        safe = (norm <= 2.0**124) & (c * norm <= 2.0**118)
        risky = tl.maximum(risky, tl.max(tl.where(h_ok & ~safe, 1, 0), axis=0))
    return risky


@jit
def _build_tables(w_row, r_row, scratch, H, n_bits, n_lo, n_mid, HB: tl.constexpr, BLOCK_LO: tl.constexpr,
                  BLOCK_MID: tl.constexpr, MID_A_BITS: tl.constexpr, ABS: tl.constexpr):
    """Write one row's tables to scratch, HB hidden units at a time: with ABS (the forward kernel) Qlo
    [H, BLOCK_LO], P_mid [H, BLOCK_MID], R_mid [BLOCK_MID] and R_lo [BLOCK_LO]; without (the fused
    kernel, triton_fused.py, which moves P_top to the lo side and keeps r out of the tables) P_lo,
    Qhi = -P_mid and R_mid."""
    offs_lo = tl.arange(0, BLOCK_LO)
    offs_a = tl.arange(0, 1 << MID_A_BITS)
    offs_b = tl.arange(0, BLOCK_MID >> MID_A_BITS)
    offs_q = (offs_b[:, None] << MID_A_BITS) + offs_a[None, :]                    # [MID_B, MID_A]
    mid_table = scratch + H * BLOCK_LO
    r_mid = tl.zeros([BLOCK_MID >> MID_A_BITS, 1 << MID_A_BITS], tl.float32)
    r_lo = tl.zeros([BLOCK_LO], tl.float32)
    for h0 in range(0, H, HB):
        offs_h = h0 + tl.arange(0, HB)
        h_ok = offs_h < H
        r = tl.load(r_row + offs_h, mask=h_ok, other=0.0)
        c, _ = _fold_r(r)                     # used by the abs form's tables only
        p_lo = tl.zeros([HB, BLOCK_LO], tl.float32)
        for j in range(n_lo):
            bit = tl.where((offs_lo >> j) & 1 == 1, 1.0, -1.0)
            p_lo += tl.load(w_row + offs_h * n_bits + j, mask=h_ok, other=0.0)[:, None] * bit[None, :]
        tl.store(scratch + offs_h[:, None] * BLOCK_LO + offs_lo[None, :], c[:, None] * p_lo if ABS else p_lo,
                 mask=h_ok[:, None])
        if ABS:
            r_lo += tl.sum(r[:, None] * p_lo, axis=0)
        # P_mid = P_a[low bits of q] + P_b[high bits of q]: two small FMA tables, one add per entry.
        p_a = tl.zeros([HB, 1 << MID_A_BITS], tl.float32)
        p_b = tl.zeros([HB, BLOCK_MID >> MID_A_BITS], tl.float32)
        for j in range(tl.minimum(n_mid, MID_A_BITS)):
            w = tl.load(w_row + offs_h * n_bits + n_lo + j, mask=h_ok, other=0.0)
            p_a += w[:, None] * tl.where((offs_a >> j) & 1 == 1, 1.0, -1.0)[None, :]
        for j in range(MID_A_BITS, n_mid):
            w = tl.load(w_row + offs_h * n_bits + n_lo + j, mask=h_ok, other=0.0)
            p_b += w[:, None] * tl.where((offs_b >> (j - MID_A_BITS)) & 1 == 1, 1.0, -1.0)[None, :]
        p_mid = p_b[:, :, None] + p_a[:, None, :]                                 # [HB, MID_B, MID_A]
        tl.store(mid_table + offs_h[:, None, None] * BLOCK_MID + offs_q[None, :, :],
                 p_mid if ABS else -p_mid, mask=h_ok[:, None, None])
        r_mid += tl.sum(r[:, None, None] * p_mid, axis=0)
    tl.store(mid_table + H * BLOCK_MID + offs_q, r_mid * (_scale(ABS) * 1.4426950408889634))
    if ABS:
        tl.store(scratch + H * (BLOCK_LO + BLOCK_MID + 1) + BLOCK_MID + offs_lo, r_lo * (0.5 * 1.4426950408889634))


@jit
def _tile_top(w_row, r_row, scratch, tile, H, n_bits, n_lo, n_mid, n_top, HB: tl.constexpr,
              BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr, ABS: tl.constexpr):
    """Write P_top [H] of `tile` to scratch; return R_top (base 2; halved with ABS)."""
    tl.debug_barrier()  # every thread is done with the previous tile's P_top
    r_top = 0.0
    for h0 in range(0, H, HB):
        offs_h = h0 + tl.arange(0, HB)
        h_ok = offs_h < H
        p_top = tl.zeros([HB], tl.float32)
        for j in range(n_top):
            bit = tl.cast((tile >> j) & 1, tl.float32) * 2.0 - 1.0
            p_top += bit * tl.load(w_row + offs_h * n_bits + n_lo + n_mid + j, mask=h_ok, other=0.0)
        tl.store(scratch + H * (BLOCK_LO + BLOCK_MID) + BLOCK_MID + offs_h, p_top, mask=h_ok)
        r_top += tl.sum(tl.load(r_row + offs_h, mask=h_ok, other=0.0) * p_top, axis=0)
    tl.debug_barrier()
    return r_top * (_scale(ABS) * 1.4426950408889634)


@jit
def _unit_hi(r_row, scratch, h, H, offs_mid, BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr):
    """(Qhi [BLOCK_MID], s) of hidden unit h of the current tile (the forward's halved tables)."""
    c, sgn = _fold_r(tl.load(r_row + h))
    p_top = tl.load(scratch + H * (BLOCK_LO + BLOCK_MID) + BLOCK_MID + h)
    return -c * (tl.load(scratch + H * BLOCK_LO + h * BLOCK_MID + offs_mid) + p_top), sgn


@jit
def _hidden_unit(r_row, scratch, h, H, offs_lo, offs_mid, BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr):
    """(Qlo [BLOCK_LO], Qhi [BLOCK_MID], s) of hidden unit h of the current tile."""
    q_hi, sgn = _unit_hi(r_row, scratch, h, H, offs_mid, BLOCK_LO, BLOCK_MID)
    return tl.load(scratch + h * BLOCK_LO + offs_lo), q_hi, sgn


@jit
def _lo_pairs(scratch, h, BLOCK_LO: tl.constexpr):
    """Qlo of hidden unit h at the even and at the odd lo codes, [BLOCK_LO / 2] each.

    Every thread holds all of a tile's lo codes, a broadcast Triton loads one scalar at a time
    whatever the alignment; read as int64, each load brings two (Qlo starts each slot, slots are
    16-byte aligned by `_tables_state`, BLOCK_LO is even), and splitting the halves costs no instruction."""
    pairs = tl.load(scratch.to(tl.pointer_type(tl.int64), bitcast=True) + h * (BLOCK_LO // 2)
                    + tl.arange(0, BLOCK_LO // 2))
    even = (pairs & 0xFFFFFFFF).to(tl.uint32).to(tl.float32, bitcast=True)     # little-endian: code 2i first
    return even, (pairs >> 32).to(tl.uint32).to(tl.float32, bitcast=True)


@jit
def _split_rows(acc, BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr):
    """[BLOCK_LO, BLOCK_MID] -> its even and odd rows, [BLOCK_LO / 2, BLOCK_MID] each."""
    return tl.split(tl.permute(tl.reshape(acc, [BLOCK_LO // 2, 2, BLOCK_MID]), [0, 2, 1]))


@jit
def _join_rows(even, odd, BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr):
    """The inverse of `_split_rows`."""
    return tl.reshape(tl.permute(tl.join(even, odd), [0, 2, 1]), [BLOCK_LO, BLOCK_MID])


@jit
def _tile_logits(r_row, scratch, tile, r_top, H, n_lo, n_mid, k_start, k_stop, edge, max_form,
                 BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr):
    """l [BLOCK_LO, BLOCK_MID] of `tile` in base 2, for the forward kernel. On an edge tile (one with a
    code outside [k_start, k_stop) or past 2^n in padded tables) those codes are -inf.

    The abs form: r relu(z) = r z / 2 + s |r| |z| / 2. Its tables hold half the module
    docstring's (c, R_mid and R_top halved) and R_lo; the linear half is R_lo + R_mid + R_top, and
    |Qlo - Qhi| = |r| |z| log2 e / 2 is added or subtracted by the sign of r (a branch the whole
    program takes), so a triple is two adds on the FMA pipe instead of a max on the half-rate ALU
    pipe and a multiply-add: 1-4% faster on the H100. Its infinities do not cancel, though: where z
    overflows to -inf the linear half and |z| are -+inf and their sum is NaN, not 0. A row whose
    tables could overflow (`max_form`, from `_abs_risky`) takes the max form on the halved tables,
    doubled at the end (exact). The fused kernel (triton_fused.py) has logits of its own, in the max
    form: there the shared halved tables measured 5% slower."""
    offs_lo = tl.arange(0, BLOCK_LO)
    offs_mid = tl.arange(0, BLOCK_MID)
    r_mid = tl.load(scratch + H * (BLOCK_LO + BLOCK_MID) + offs_mid)
    acc = tl.zeros([BLOCK_LO, BLOCK_MID], dtype=tl.float32) + (r_mid[None, :] + r_top)
    if max_form == 0:
        r_lo = tl.load(scratch + H * (BLOCK_LO + BLOCK_MID + 1) + BLOCK_MID + offs_lo)
        acc += r_lo[:, None]
        acc_even, acc_odd = _split_rows(acc, BLOCK_LO, BLOCK_MID)
        for h in range(0, H):
            q_even, q_odd = _lo_pairs(scratch, h, BLOCK_LO)
            q_hi, sgn = _unit_hi(r_row, scratch, h, H, offs_mid, BLOCK_LO, BLOCK_MID)
            if sgn > 0:
                acc_even += tl.abs(q_even[:, None] - q_hi[None, :])
                acc_odd += tl.abs(q_odd[:, None] - q_hi[None, :])
            elif sgn < 0:
                acc_even -= tl.abs(q_even[:, None] - q_hi[None, :])
                acc_odd -= tl.abs(q_odd[:, None] - q_hi[None, :])
        acc = _join_rows(acc_even, acc_odd, BLOCK_LO, BLOCK_MID)
    else:
        for h in range(0, H):
            q_lo, q_hi, sgn = _hidden_unit(r_row, scratch, h, H, offs_lo, offs_mid, BLOCK_LO, BLOCK_MID)
            acc += sgn * tl.maximum(q_lo[:, None], q_hi[None, :])
        acc = 2.0 * acc
    if edge:
        codes = (tl.cast(tile, tl.int64) << (n_lo + n_mid)) + (offs_mid[None, :].to(tl.int64) << n_lo) \
            + offs_lo[:, None]
        valid = (offs_lo[:, None] < (1 << n_lo)) & (offs_mid[None, :] < (1 << n_mid))
        acc = tl.where(valid & (codes >= k_start) & (codes < k_stop), acc, -float("inf"))
    return acc
