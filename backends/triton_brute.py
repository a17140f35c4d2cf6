"""Triton, brute force on tensor cores: z of a block of codes as one dot of their bits with W.

The `brute` config of the `triton` backend (triton_mitm.py registers it). For a block of
BLOCK_K codes k of one row, with b_kj = +-1 the bits and zero past n (NB >= 16 columns):

    Z[k, h] = sum_j b_kj W[h, j]                  a [BLOCK_K, NB] x [NB, HP] dot
    l[k]    = sum_h r_h max(Z[k, h], 0)           one max and one multiply-add per triple
    m' = max(m, max l),  alpha = 2^(m - m'),  e = 2^(l - m'),  s = alpha s + sum e

and, when gradient sums are wanted, a second dot per block:

    D[h, j] = alpha D[h, j] + sum_k G[k, h] b_kj,   G[k, h] = e[k] 1[Z[k, h] > 0]

Exact products: the bits are exact in any type, so the dot's products are exact when W is,
and z is their sum in float32. Half inputs are used as they are (one dot); float32 W is split
into three bfloat16 parts by truncation, W = W1 + W2 + W3 exactly (8 + 8 + 8 significand bits;
truncating never overflows, as rounding the largest floats to bfloat16 would), three dots
accumulated in float32. G goes to the tensor cores as two TF32 parts, G1 its top 11
significand bits and G2 = G - G1, which the hardware truncates to 11 bits (it reads the top
19 bits of a float32): an error below 2^-21 relative per term, under the float32 sums' own
rounding over 2^n codes.

Against the meet-in-the-middle kernels (triton_mitm.py): the CUDA cores do the same max and
multiply-add per triple, and z costs tensor-core work (3 x 2 x NB flops per triple in
float32, 1/3 of that for half inputs) instead of one add folded into the max. No tables,
no scratch memory. PERFORMANCE.md has what it measures against them. H up to 256: the
[BLOCK_K, H] tiles of the gradient pass live in shared memory.
"""

from __future__ import annotations

import math

import torch

from harness.errors import UnsupportedError
from harness.problems.sick_bide import PartialState, merge_chunks
from harness.triton_helpers import INTERPRET, jit, tl

_RUNTIME_INTS = ["H", "n_bits", "k_start", "k_stop", "chunks", "codes_per_chunk", "n_items"]
MAX_HIDDEN = 256   # H = 384 with gradient sums asks for 319 KB of shared memory on the H100 (232 KB there)


@jit
def _code_bits(k, NB: tl.constexpr, n_bits):
    """k [BLOCK_K] (int64) -> b [BLOCK_K, NB] float32: +-1 for bits j < n_bits, 0 past them."""
    j = tl.arange(0, NB)
    b = tl.where(((k[:, None] >> j[None, :]) & 1) == 1, 1.0, -1.0)
    return tl.where(j[None, :] < n_bits, b, 0.0)


@jit
def _top_bits(x, KEEP: tl.constexpr):
    """x (float32) with only its sign, exponent and top KEEP - 9 significand bits (truncated)."""
    mask: tl.constexpr = (0xFFFFFFFF << (32 - KEEP)) & 0xFFFFFFFF
    return (x.to(tl.uint32, bitcast=True) & mask).to(tl.float32, bitcast=True)


@jit
def _block_z(b, w1, w2, w3, SPLIT: tl.constexpr):
    """Z = b @ (w1 + w2 + w3) [BLOCK_K, HP] in float32; with SPLIT false, b @ w1 (half W).
    The parts are exact in their dtype: float32 under the interpreter, whose bfloat16 dot is wrong."""
    bw = b.to(w1.dtype)
    if SPLIT:
        z = tl.dot(bw, w3, out_dtype=tl.float32)
        z = tl.dot(bw, w2, z, out_dtype=tl.float32)
        return tl.dot(bw, w1, z, out_dtype=tl.float32)
    return tl.dot(bw, w1, out_dtype=tl.float32)


@jit(do_not_specialize=_RUNTIME_INTS)
def _brute_kernel(w_ptr, r_ptr, m_ptr, s_ptr, d_ptr, H, n_bits, k_start, k_stop, chunks, codes_per_chunk, n_items,
                  HP: tl.constexpr, NB: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr,
                  GRAD: tl.constexpr, PART_DTYPE: tl.constexpr):
    """For each work item (row, chunk of codes): m, s (and D [H, n_bits]) over the chunk, written at item."""
    offs_h = tl.arange(0, HP)
    offs_j = tl.arange(0, NB)
    for item in range(tl.program_id(0), n_items, tl.num_programs(0)):
        row = tl.cast(item // chunks, tl.int64)
        w_mask = (offs_j[:, None] < n_bits) & (offs_h[None, :] < H)
        wt = tl.load(w_ptr + row * H * n_bits + offs_h[None, :] * n_bits + offs_j[:, None], mask=w_mask, other=0.0)
        if SPLIT:   # float32 W as three bfloat16 parts whose sum is W exactly
            w1 = _top_bits(wt, 16)
            rest = wt - w1
            w2 = _top_bits(rest, 16)
            w3 = (rest - w2).to(PART_DTYPE)
            w1 = w1.to(PART_DTYPE)
            w2 = w2.to(PART_DTYPE)
        else:
            w1 = wt.to(PART_DTYPE)
            w2 = w1
            w3 = w1
        r2 = tl.load(r_ptr + row * H + offs_h, mask=offs_h < H, other=0.0).to(tl.float32) * 1.4426950408889634
        m = -float("inf")
        s = 0.0
        d = tl.zeros([HP, NB], tl.float32)
        k0 = k_start + (item % chunks).to(tl.int64) * codes_per_chunk
        k1 = tl.minimum(k0 + codes_per_chunk, k_stop)
        for kb in range(k0, k1, BLOCK_K):
            k = kb + tl.arange(0, BLOCK_K).to(tl.int64)
            b = _code_bits(k, NB, n_bits)
            z = _block_z(b, w1, w2, w3, SPLIT)                                       # [BLOCK_K, HP]
            l = tl.sum(tl.maximum(z, 0.0) * r2[None, :], axis=1)                     # [BLOCK_K], base 2
            l = tl.where(k < k1, l, -float("inf"))
            m_new = tl.maximum(m, tl.max(l, axis=0))    # every block holds a code of the chunk: finite
            alpha = tl.exp2(m - m_new)
            e = tl.exp2(l - m_new)
            s = s * alpha + tl.sum(e, axis=0)
            m = m_new
            if GRAD:
                g = tl.where(z > 0, e[:, None], 0.0)                                 # [BLOCK_K, HP]
                g1 = _top_bits(g, 19)
                # A fresh accumulator per block, added on the CUDA cores: chaining d through the
                # tensor cores' additions over all 2^n codes measured 18x the error of float32 sums.
                d_block = tl.dot(tl.trans(g - g1), b, input_precision="tf32")
                d_block = tl.dot(tl.trans(g1), b, d_block, input_precision="tf32")
                d = d * alpha + d_block
        tl.store(m_ptr + item, m * 0.6931471805599453)
        tl.store(s_ptr + item, s)
        if GRAD:
            tl.store(d_ptr + tl.cast(item, tl.int64) * H * n_bits + offs_h[:, None] * n_bits + offs_j[None, :], d,
                     mask=(offs_h[:, None] < H) & (offs_j[None, :] < n_bits))


def _pow2(x: int, floor: int = 16) -> int:
    return max(floor, 1 << max(0, (x - 1).bit_length()))


def partial_state(W: torch.Tensor, r: torch.Tensor, k_start: int, k_stop: int, out: PartialState, *,
                  block_k: int = 128, num_warps: int = 4, programs_per_sm: int = 4) -> None:
    """The `brute` design of the triton backend; `block_k` codes per dot (a power of two >= 16)."""
    if block_k < 16 or block_k & (block_k - 1):
        raise ValueError(f"block_k must be a power of two >= 16, got {block_k}")
    batch, hidden, n_bits = W.shape
    if hidden > MAX_HIDDEN:
        raise UnsupportedError(f"triton:brute runs hidden <= {MAX_HIDDEN} (its tiles of the hidden units live in "
                               f"shared memory), got hidden = {hidden}; the default triton config runs any H")
    fused = out.D is not None
    codes = k_stop - k_start
    block_k = min(block_k, _pow2(codes))
    n_blocks = math.ceil(codes / block_k)
    if W.is_cuda and not INTERPRET:
        slots = programs_per_sm * torch.cuda.get_device_properties(W.device).multi_processor_count
        chunks = max(1, min(n_blocks, math.ceil(slots / batch)))
    else:
        slots, chunks = 4, min(n_blocks, 2)
    codes_per_chunk = math.ceil(n_blocks / chunks) * block_k
    chunks = math.ceil(codes / codes_per_chunk)      # no empty chunk: every item owes a state
    n_items = batch * chunks
    direct = chunks == 1
    acc = dict(dtype=torch.float32, device=W.device)
    m_ws = out.m if direct else torch.empty(batch, chunks, **acc)
    s_ws = out.s if direct else torch.empty(batch, chunks, **acc)
    d_ws = None
    if fused:
        d_ws = out.D if direct else torch.empty(batch, chunks, hidden, n_bits, **acc)
    half = W.dtype in (torch.float16, torch.bfloat16)
    # The parts' dtype on the tensor cores: W's own for half inputs, bfloat16 for float32's parts;
    # float32 under the interpreter, whose bfloat16 dot is wrong (the parts are exact in either).
    part = tl.float32 if INTERPRET and W.dtype != torch.float16 else tl.float16 if W.dtype == torch.float16 \
        else tl.bfloat16
    _brute_kernel[(min(n_items, slots),)](
        W.contiguous() if half else W.float().contiguous(), r.contiguous(), m_ws, s_ws, m_ws if d_ws is None else d_ws,
        hidden, n_bits, k_start, k_stop, chunks, codes_per_chunk, n_items,
        HP=_pow2(hidden), NB=_pow2(n_bits), BLOCK_K=block_k, SPLIT=not half, GRAD=fused, PART_DTYPE=part,
        num_warps=num_warps)
    if not direct:
        merge_chunks(m_ws, s_ws, d_ws, out)
