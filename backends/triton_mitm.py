"""Triton: the SICK-BIDE loss in one pass over the codes, gradient sums fused into the forward.

Split the n bits of a code into lo, mid and top parts, k = (t << (n_lo + n_mid)) | (q << n_lo) | p.
z is linear in the bits, so with per-row tables (meet in the middle, three ways)

    z[p, q, t, h] = P_lo[p, h] + P_mid[q, h] + P_top[t, h]

a tile is every (p, q) for one top pattern t: BLOCK_LO x BLOCK_MID codes. Fold r
into the tables (c_h = |r_h|, or 1 where r_h = 0, and s_h = sign r_h, so s_h c_h = r_h):

    Qlo = c P_lo,   Qhi = -c (P_mid + P_top),   relu(a + b) = max(a, -b) + b
    l[p, q] = sum_h s_h max(Qlo[p, h], Qhi[q, h]) + R_mid[q] + R_top

with R_mid[q] = sum_h r_h P_mid[q, h] and R_top = sum_h r_h P_top[h]: one max and one
multiply-add per (row, code, hidden) triple. The mask of the gradient sums is the
same comparison, 1[z > 0] = 1[Qlo > Qhi], since c > 0 keeps the sign of z. Each tile
updates the running state with online softmax,

    m' = max(m, max l),   alpha = exp(m - m'),   e = exp(l - m'),   s = alpha s + sum e

and the fused kernel makes a second pass over h through the tile marginals of
A[p, q, h] = e[p, q] 1[Qlo[p, h] > Qhi[q, h]]:

    D[h, j] = alpha D[h, j] + sum_p b_pj sum_q A      (lo bits)
                            + sum_q b_qj sum_p A      (mid bits)
                            + b_tj sum_pq A           (top bits: constant over the tile)

Cost per triple: 2 instructions forward (max, fma) plus operand loads; the gradient
pass adds a compare, a select and the two marginal sums (the performance notes
have the measured split). Programs are (row, chunk of tiles); chunks of one row
are merged with the partial-state merge, so any [k_start, k_stop) works and small
batches still fill the GPU.

Limits: n_bits 1..32 (codes are int64), any H and B; float32, float16 and bfloat16
inputs, tables and accumulation in float32. CUDA, or the CPU under
TRITON_INTERPRET=1 (Triton's interpreter, which the tests use without a GPU).
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch

from harness import Backend
from harness.problems.sick_bide import PartialState, z_table

TRITON_MISSING = importlib.util.find_spec("triton") is None
if not TRITON_MISSING:
    import triton
    import triton.language as tl
else:  # the module must import without triton so the registry can say why it is unavailable
    triton = tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _jit(fn):
    return fn if TRITON_MISSING else triton.jit(fn)


@_jit
def _operands(qlo_row, pmid_row, c_row, sgn_row, r_row, wtop_row, tile, h0, H, n_top,
              offs_lo, offs_mid, HC: tl.constexpr):
    """Qlo [BLOCK_LO, HC], Qhi [BLOCK_MID, HC], s [HC] and sum_h r_h P_top[h] for hidden units h0..h0+HC."""
    offs_h = h0 + tl.arange(0, HC)
    h_ok = offs_h < H
    qlo = tl.load(qlo_row + offs_lo[:, None] * H + offs_h[None, :], mask=h_ok[None, :], other=0.0)
    pmid = tl.load(pmid_row + offs_mid[:, None] * H + offs_h[None, :], mask=h_ok[None, :], other=0.0)
    c = tl.load(c_row + offs_h, mask=h_ok, other=1.0)
    sgn = tl.load(sgn_row + offs_h, mask=h_ok, other=0.0)
    r = tl.load(r_row + offs_h, mask=h_ok, other=0.0)
    p_top = tl.zeros([HC], dtype=tl.float32)
    for j in range(n_top):
        bit = tl.cast((tile >> j) & 1, tl.float32) * 2.0 - 1.0
        p_top += bit * tl.load(wtop_row + offs_h * n_top + j, mask=h_ok, other=0.0)
    qhi = -c[None, :] * (pmid + p_top[None, :])
    return qlo, qhi, sgn, tl.sum(r * p_top, axis=0)


@_jit
def _tile_logits(qlo_row, pmid_row, rmid_row, c_row, sgn_row, r_row, wtop_row,
                 tile, H, n_lo, n_mid, n_top, k_start, k_stop,
                 BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr, HC: tl.constexpr):
    """l [BLOCK_LO, BLOCK_MID] of tile `tile`, -inf outside the tables and outside [k_start, k_stop)."""
    offs_lo = tl.arange(0, BLOCK_LO)
    offs_mid = tl.arange(0, BLOCK_MID)
    acc = tl.zeros([BLOCK_LO, BLOCK_MID], dtype=tl.float32)
    r_top = 0.0
    for h0 in range(0, H, HC):
        qlo, qhi, sgn, r_top_h = _operands(qlo_row, pmid_row, c_row, sgn_row, r_row, wtop_row, tile, h0, H,
                                           n_top, offs_lo, offs_mid, HC)
        acc += tl.sum(sgn[None, None, :] * tl.maximum(qlo[:, None, :], qhi[None, :, :]), axis=2)
        r_top += r_top_h
    rmid = tl.load(rmid_row + offs_mid, mask=offs_mid < (1 << n_mid), other=0.0)
    codes = (tl.cast(tile, tl.int64) << (n_lo + n_mid)) + (offs_mid[None, :].to(tl.int64) << n_lo) + offs_lo[:, None]
    valid = (offs_lo[:, None] < (1 << n_lo)) & (offs_mid[None, :] < (1 << n_mid))
    valid = valid & (codes >= k_start) & (codes < k_stop)
    return tl.where(valid, acc + rmid[None, :] + r_top, -float("inf"))


@_jit
def _softmax_update(l, m, s):
    """Online softmax over one tile: (m', alpha, e, s')."""
    m_new = tl.maximum(m, tl.max(tl.max(l, axis=1), axis=0))
    alpha = tl.exp(m - m_new)
    e = tl.exp(l - m_new)
    return m_new, alpha, e, s * alpha + tl.sum(tl.sum(e, axis=1), axis=0)


@_jit
def _forward_kernel(qlo_ptr, pmid_ptr, rmid_ptr, c_ptr, sgn_ptr, r_ptr, wtop_ptr, m_ptr, s_ptr,
                    H, n_lo, n_mid, n_top, k_start, k_stop, first_tile, last_tile, tiles_per_program,
                    BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr, HC: tl.constexpr):
    """(m, s) of row program_id(0) over tiles chunk program_id(1), written at [row, chunk]."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    out = row * tl.num_programs(1) + chunk
    qlo_row = qlo_ptr + row * (H << n_lo)
    pmid_row = pmid_ptr + row * (H << n_mid)
    rmid_row = rmid_ptr + (row << n_mid)
    c_row, sgn_row, r_row = c_ptr + row * H, sgn_ptr + row * H, r_ptr + row * H
    wtop_row = wtop_ptr + row * H * n_top
    m = -float("inf")
    s = 0.0
    t0 = first_tile + chunk * tiles_per_program
    t1 = tl.minimum(t0 + tiles_per_program, last_tile + 1)
    for tile in range(t0, t1):
        l = _tile_logits(qlo_row, pmid_row, rmid_row, c_row, sgn_row, r_row, wtop_row, tile, H,
                         n_lo, n_mid, n_top, k_start, k_stop, BLOCK_LO, BLOCK_MID, HC)
        m, _, _, s = _softmax_update(l, m, s)
    tl.store(m_ptr + out, m)
    tl.store(s_ptr + out, s)


@_jit
def _rescale_add(ptrs, mask, alpha, d, first):
    """D <- alpha D + d, reading nothing on a program's first tile (the buffer may be poisoned)."""
    old = tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, tl.where(first, d, alpha * old + d), mask=mask)


@_jit
def _fused_kernel(qlo_ptr, pmid_ptr, rmid_ptr, c_ptr, sgn_ptr, r_ptr, wtop_ptr, m_ptr, s_ptr, d_ptr,
                  H, n_bits, n_lo, n_mid, n_top, k_start, k_stop, first_tile, last_tile, tiles_per_program,
                  BLOCK_LO: tl.constexpr, BLOCK_MID: tl.constexpr, HC: tl.constexpr,
                  N_LO: tl.constexpr, N_MID: tl.constexpr, N_TOP: tl.constexpr, N_ALL: tl.constexpr):
    """(m, s, D [H, n]) of row program_id(0) over tiles chunk program_id(1), written at [row, chunk]."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    out = row * tl.num_programs(1) + chunk
    qlo_row = qlo_ptr + row * (H << n_lo)
    pmid_row = pmid_ptr + row * (H << n_mid)
    rmid_row = rmid_ptr + (row << n_mid)
    c_row, sgn_row, r_row = c_ptr + row * H, sgn_ptr + row * H, r_ptr + row * H
    wtop_row = wtop_ptr + row * H * n_top
    d_out = d_ptr + out * H * n_bits
    offs_lo = tl.arange(0, BLOCK_LO)
    offs_mid = tl.arange(0, BLOCK_MID)
    j_lo, j_mid, j_top = tl.arange(0, N_LO), tl.arange(0, N_MID), tl.arange(0, N_TOP)
    b_lo = (((offs_lo[:, None] >> j_lo[None, :]) & 1) * 2 - 1).to(tl.float32)      # [BLOCK_LO, N_LO]
    b_mid = (((offs_mid[:, None] >> j_mid[None, :]) & 1) * 2 - 1).to(tl.float32)    # [BLOCK_MID, N_MID]
    m = -float("inf")
    s = 0.0
    t0 = first_tile + chunk * tiles_per_program
    t1 = tl.minimum(t0 + tiles_per_program, last_tile + 1)
    for tile in range(t0, t1):
        l = _tile_logits(qlo_row, pmid_row, rmid_row, c_row, sgn_row, r_row, wtop_row, tile, H,
                         n_lo, n_mid, n_top, k_start, k_stop, BLOCK_LO, BLOCK_MID, HC)
        m, alpha, e, s = _softmax_update(l, m, s)
        b_top = tl.cast(((tile >> j_top) & 1) * 2 - 1, tl.float32)                       # [N_TOP]
        first = tile == t0
        for h0 in range(0, H, HC):
            qlo, qhi, _, _ = _operands(qlo_row, pmid_row, c_row, sgn_row, r_row, wtop_row, tile, h0, H,
                                       n_top, offs_lo, offs_mid, HC)
            A = tl.where(qlo[:, None, :] > qhi[None, :, :], e[:, :, None], 0.0)       # [LO, MID, HC]
            g_lo = tl.sum(A, axis=1)                                                   # [BLOCK_LO, HC]
            g_mid = tl.sum(A, axis=0)                                                  # [BLOCK_MID, HC]
            offs_h = h0 + tl.arange(0, HC)
            h_ok = offs_h < H
            row_ptrs = d_out + offs_h[:, None] * n_bits
            d_lo = tl.sum(g_lo[:, :, None] * b_lo[:, None, :], axis=0)                # [HC, N_LO]
            _rescale_add(row_ptrs + j_lo[None, :], h_ok[:, None] & (j_lo[None, :] < n_lo), alpha, d_lo, first)
            d_mid = tl.sum(g_mid[:, :, None] * b_mid[:, None, :], axis=0)             # [HC, N_MID]
            _rescale_add(row_ptrs + n_lo + j_mid[None, :], h_ok[:, None] & (j_mid[None, :] < n_mid),
                         alpha, d_mid, first)
            d_top = tl.sum(g_lo, axis=0)[:, None] * b_top[None, :]                     # [HC, N_TOP]
            _rescale_add(row_ptrs + n_lo + n_mid + j_top[None, :], h_ok[:, None] & (j_top[None, :] < n_top),
                         alpha, d_top, first)
    if t1 <= t0:  # an empty chunk still owes its (empty) state: D = 0
        for h0 in range(0, H, HC):
            offs_h = h0 + tl.arange(0, HC)
            j = tl.arange(0, N_ALL)
            tl.store(d_out + offs_h[:, None] * n_bits + j[None, :], tl.zeros([HC, N_ALL], tl.float32),
                     mask=(offs_h[:, None] < H) & (j[None, :] < n_bits))
    tl.store(m_ptr + out, m)
    tl.store(s_ptr + out, s)


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def partial_state(
    W: torch.Tensor,
    r: torch.Tensor,
    k_start: int,
    k_stop: int,
    out: PartialState,
    *,
    lo_bits: int = 5,
    mid_bits: int = 5,
    h_chunk: int = 4,
    num_warps: int = 4,
    programs_per_sm: int = 4,
) -> None:
    batch, hidden, n_bits = W.shape
    n_lo = min(n_bits, lo_bits)
    n_mid = min(n_bits - n_lo, mid_bits)
    n_top = n_bits - n_lo - n_mid
    f32 = torch.float32
    W32, r32 = W.to(f32), r.to(f32)
    c = torch.where(r32 != 0, r32.abs(), 1.0).contiguous()
    sgn = torch.sign(r32).contiguous()
    qlo = (z_table(W32[:, :, :n_lo]) * c[:, None, :]).contiguous()                  # [B, 2^n_lo, H]
    pmid = z_table(W32[:, :, n_lo:n_lo + n_mid]).contiguous()                      # [B, 2^n_mid, H]
    rmid = (pmid * r32[:, None, :]).sum(-1).contiguous()                            # [B, 2^n_mid]
    wtop = W32[:, :, n_lo + n_mid:].contiguous()                                    # [B, H, n_top]

    tile_bits = n_lo + n_mid
    first_tile, last_tile = k_start >> tile_bits, (k_stop - 1) >> tile_bits
    n_tiles = last_tile - first_tile + 1
    if W.is_cuda and not INTERPRET:
        sms = torch.cuda.get_device_properties(W.device).multi_processor_count
        chunks = max(1, min(n_tiles, math.ceil(programs_per_sm * sms / batch)))
    else:
        chunks = min(n_tiles, 2)
    tiles_per_program = math.ceil(n_tiles / chunks)
    direct = chunks == 1
    m_ws = out.m if direct else torch.empty(batch, chunks, dtype=f32, device=W.device)
    s_ws = out.s if direct else torch.empty(batch, chunks, dtype=f32, device=W.device)
    blocks = {"BLOCK_LO": max(2, 1 << n_lo), "BLOCK_MID": max(2, 1 << n_mid), "HC": h_chunk}
    common = (hidden,)
    ranges = (k_start, k_stop, first_tile, last_tile, tiles_per_program)
    tables = (qlo, pmid, rmid, c, sgn, r32.contiguous(), wtop)
    grid = (batch, chunks)
    if out.D is None:
        _forward_kernel[grid](*tables, m_ws, s_ws, *common, n_lo, n_mid, n_top, *ranges,
                              **blocks, num_warps=num_warps)
    else:
        d_ws = out.D if direct else torch.empty(batch, chunks, hidden, n_bits, dtype=f32, device=W.device)
        _fused_kernel[grid](*tables, m_ws, s_ws, d_ws, *common, n_bits, n_lo, n_mid, n_top, *ranges,
                            **blocks, N_LO=_pow2(n_lo), N_MID=_pow2(max(1, n_mid)), N_TOP=_pow2(max(1, n_top)),
                            N_ALL=_pow2(n_bits), num_warps=num_warps)
    if not direct:
        m = m_ws.amax(1)
        scale = torch.where(m_ws == -math.inf, 0.0, torch.exp(m_ws - m[:, None]))     # [B, chunks]
        out.m.copy_(m)
        out.s.copy_((s_ws * scale).sum(1))
        if out.D is not None:
            out.D.copy_((d_ws * scale[:, :, None, None]).sum(1))


def _unavailable(config: str) -> str | None:
    if TRITON_MISSING:
        return "triton is not installed (pip install 'fusedbench[triton]')"
    return None


BACKENDS = [
    Backend(
        name="triton",
        problem="sick_bide",
        kernels={"partial_state": partial_state},
        devices=("cuda", "cpu") if INTERPRET else ("cuda",),
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
        limits={"n_bits": (1, 32)},
        features=frozenset({"grad", "k_ranges"}),
        configs={"default": {}},
        unavailable=_unavailable,
        priority=10,
        summary="Triton, one fused pass: 3-way meet-in-the-middle tables, r folded in, online softmax",
    )
]
