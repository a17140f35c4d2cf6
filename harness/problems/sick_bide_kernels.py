"""The harness's side of a SICK-BIDE call on CUDA, one Triton launch per step.

A call at a small batch is launch-bound: the backend's kernel takes tens of microseconds,
and the torch ops around it (validation, the chunk merge, the target terms, NaN rows, the
gradient formulas) were ~40 launches at ~12 us each on an H100 host. Here each step is one
kernel, with the same math as the torch code in sick_bide.py, which stays the definition
and the path on the CPU (or without Triton):

    probe          min and max of the targets, and whether W and r are all finite
    merge_chunks   m = max_c m_c,  s = sum_c s_c e^(m_c - m),  D = sum_c D_c e^(m_c - m)
    target_terms   z_yh = sum_j W_hj b_yj,  l_y = sum_h r_h relu(z_yh)
                   lse = m + log s,  nll = lse - l_y
    gradients      dW_hj = r_h (G Dn_hj - sum_s g_s 1[z_ysh > 0] b_ysj)
                   dr_h  = G sum_j W_hj Dn_hj - sum_s g_s relu(z_ysh)

with Dn = D / s and G = sum_s g_s + (gradient of lse). A row with NaN or inf anywhere in
W or r gets NaN in every output of the row (each kernel reads the whole row anyway, so it
checks it there instead of trusting a batch-wide flag). Arithmetic is in the state's dtype
(float32, float64 for float64 inputs); sums run in a fixed order, so repeated calls agree
to the last bit. The tests run these kernels in Triton's interpreter against the torch code
(tests/test_sick_bide_kernels.py); on a GPU the properties of every backend with a
partial_state kernel go through them (the probe serves every backend).
"""

from __future__ import annotations

import contextlib
import struct

import torch
from torch import Tensor

from harness.triton_helpers import TRITON_MISSING, jit, rounded, tl, triton

PROBE_ONE_PROGRAM = 1 << 16     # elements of W (or targets) one probe program takes: up to B = 128 at H = 32, n = 16
PROBE_PER_PROGRAM = 1 << 13     # and per program past that: enough programs for the loads to fill the GPU
TILE = 8192                     # elements of a kernel's largest register tile


def usable(x: Tensor) -> bool:
    """Whether the calls on x's device go through these kernels (CUDA with Triton)."""
    return x.is_cuda and not TRITON_MISSING


def launch_device(x: Tensor) -> contextlib.AbstractContextManager:
    """Make x's device the current one while kernels launch (Triton and CuPy launch on the
    current device and its current stream); nothing to do when it already is."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def _pow2(x: int) -> int:
    return 1 << max(1, (x - 1).bit_length())


@jit(do_not_specialize=["n_w", "per_w", "n_r", "per_r", "n_t", "per_t"])
def _probe_kernel(w_ptr, n_w, per_w, r_ptr, n_r, per_r, t_ptr, n_t, per_t, out_ptr, BLOCK: tl.constexpr):
    """Program p: ~min (= -1 - min, so that every column combines by max) and max of its slice of
    the targets, the count of non-finite values in its slices of W and r, and the largest finite
    |W| and |r| there (float64 bits, which order as int64 for values >= 0), into out[p, 0:5].
    Values are widened to float64 first: exact, and Triton's interpreter compares bfloat16 NaN as
    bits (NaN == NaN)."""
    p = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    bad = tl.zeros([BLOCK], tl.int64)
    w_max = tl.zeros([BLOCK], tl.float64)
    r_max = tl.zeros([BLOCK], tl.float64)
    for start in range(p * per_w, tl.minimum((p + 1) * per_w, n_w), BLOCK):
        w = tl.load(w_ptr + start + offs, mask=start + offs < tl.minimum((p + 1) * per_w, n_w), other=0.0)
        w = tl.abs(w.to(tl.float64))
        finite = w < float("inf")                             # false for inf and NaN
        bad += (~finite).to(tl.int64)
        w_max = tl.maximum(w_max, tl.where(finite, w, 0.0))
    for start in range(p * per_r, tl.minimum((p + 1) * per_r, n_r), BLOCK):
        x = tl.load(r_ptr + start + offs, mask=start + offs < tl.minimum((p + 1) * per_r, n_r), other=0.0)
        x = tl.abs(x.to(tl.float64))
        finite = x < float("inf")
        bad += (~finite).to(tl.int64)
        r_max = tl.maximum(r_max, tl.where(finite, x, 0.0))
    lo = tl.full([BLOCK], 9223372036854775807, tl.int64)       # the int64 range: the identities of min, max
    hi = -lo - 1
    for start in range(p * per_t, tl.minimum((p + 1) * per_t, n_t), BLOCK):
        ok = start + offs < tl.minimum((p + 1) * per_t, n_t)
        y = tl.load(t_ptr + start + offs, mask=ok, other=0)
        lo = tl.minimum(lo, tl.where(ok, y, lo))
        hi = tl.maximum(hi, tl.where(ok, y, hi))
    tl.store(out_ptr + p * 5, ~tl.min(lo, 0))
    tl.store(out_ptr + p * 5 + 1, tl.max(hi, 0))
    tl.store(out_ptr + p * 5 + 2, tl.sum(bad, 0))
    tl.store(out_ptr + p * 5 + 3, tl.max(w_max, 0).to(tl.int64, bitcast=True))
    tl.store(out_ptr + p * 5 + 4, tl.max(r_max, 0).to(tl.int64, bitcast=True))


def probe(W: Tensor, r: Tensor, targets: Tensor | None) -> tuple[int, int, bool, float, float]:
    """(min target, max target, all of W and r finite, largest finite |W|, largest finite |r|) in
    one launch and one device sync.

    targets is int64 (any shape, or None: then min > max). Large inputs use more programs,
    whose partial results one torch reduction combines (every column by its max; the bad
    count's max is 0 exactly when every program's is)."""
    flat_t = targets.reshape(-1) if targets is not None else torch.empty(1, dtype=torch.int64, device=W.device)
    n_t = flat_t.numel() if targets is not None else 0
    flat_w, flat_r = W.reshape(-1), r.reshape(-1)
    largest = max(flat_w.numel(), n_t)
    programs = 1 if largest <= PROBE_ONE_PROGRAM else -(-largest // PROBE_PER_PROGRAM)
    parts = torch.empty(programs, 5, dtype=torch.int64, device=W.device)
    per = [-(-count // programs) for count in (flat_w.numel(), flat_r.numel(), n_t)]
    with launch_device(W):
        _probe_kernel[(programs,)](flat_w, flat_w.numel(), per[0], flat_r, flat_r.numel(), per[1],
                                   flat_t, n_t, per[2], parts, BLOCK=1024)
    if programs > 1:
        parts = parts.amax(0)
    # A plain .tolist(): a pinned copy and a stream sync measured slower (105 vs 77 us, H100 host).
    not_lo, hi, bad, w_bits, r_bits = parts.reshape(5).tolist()
    w_max, r_max = struct.unpack("<2d", struct.pack("<2q", w_bits, r_bits))   # the float64 bits back
    return ~not_lo, hi, bad == 0, w_max, r_max


@jit(do_not_specialize=["C", "HN"])
def _merge_kernel(m_ptr, s_ptr, d_ptr, m_out, s_out, d_out, C, HN,
                  HAS_D: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row program_id(0): merge its C chunk states; program_id(1) picks a block of D's H * n."""
    row = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    acc = m_out.dtype.element_ty
    offs_c = tl.arange(0, BLOCK_C)
    top = tl.full([BLOCK_C], float("-inf"), acc)
    for c0 in range(0, C, BLOCK_C):
        m_c = tl.load(m_ptr + row * C + c0 + offs_c, mask=c0 + offs_c < C, other=float("-inf"))
        top = tl.maximum(top, m_c, propagate_nan=tl.PropagateNan.ALL)
    # tl.max drops NaN (max.f32); a NaN chunk makes the row's m NaN, as torch.amax does.
    m = tl.where(tl.sum((top != top).to(tl.int32), 0) > 0, float("nan"), tl.max(top, 0))
    s = tl.zeros([BLOCK_C], acc)
    offs_d = block * BLOCK_D + tl.arange(0, BLOCK_D)
    d = tl.zeros([BLOCK_D], acc)
    for c0 in range(0, C, BLOCK_C):
        c_ok = c0 + offs_c < C
        m_c = tl.load(m_ptr + row * C + c0 + offs_c, mask=c_ok, other=float("-inf"))
        # exp(-inf - -inf) is NaN; an empty chunk (m = -inf, s = 0) must scale to 0 instead.
        scale = tl.where(m_c == float("-inf"), 0.0, tl.exp(m_c - m))
        s += tl.load(s_ptr + row * C + c0 + offs_c, mask=c_ok, other=0.0) * scale
        if HAS_D:
            tile = tl.load(d_ptr + (row * C + c0 + offs_c[:, None]) * HN + offs_d[None, :],
                           mask=c_ok[:, None] & (offs_d < HN)[None, :], other=0.0)
            d += tl.sum(tile * scale[:, None], 0)
    if HAS_D:
        tl.store(d_out + row * HN + offs_d, d, mask=offs_d < HN)
    if block == 0:
        tl.store(m_out + row, m)
        tl.store(s_out + row, tl.sum(s, 0))


def merge_chunks(m: Tensor, s: Tensor, D: Tensor | None, out) -> None:
    """sick_bide.merge_chunks in one launch: m, s [B, C] and D [B, C, H, n] into `out`."""
    batch, chunks = m.shape
    block_c = min(_pow2(chunks), 64)
    m, s = m.contiguous(), s.contiguous()
    if D is None:
        with launch_device(m):
            _merge_kernel[(batch, 1)](m, s, s, out.m, out.s, out.s, chunks, 1,
                                      HAS_D=False, BLOCK_C=block_c, BLOCK_D=2)
        return
    hn = D.shape[2] * D.shape[3]
    block_d = min(_pow2(hn), TILE // block_c)
    with launch_device(m):
        _merge_kernel[(batch, triton.cdiv(hn, block_d))](m, s, D.contiguous(), out.m, out.s, out.D, chunks, hn,
                                                          HAS_D=True, BLOCK_C=block_c, BLOCK_D=block_d)


@jit
def _row_is_bad(w_row, r_row, H, n_bits, acc: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr):
    """Whether row W [H, n], r [H] holds a NaN or an inf."""
    offs_j = tl.arange(0, BLOCK_N)
    count = 0
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        h_ok = offs_h < H
        w = tl.load(w_row + offs_h[:, None] * n_bits + offs_j[None, :],
                    mask=h_ok[:, None] & (offs_j < n_bits)[None, :], other=0.0).to(acc)
        x = tl.load(r_row + offs_h, mask=h_ok, other=0.0).to(acc)
        count += tl.sum(tl.sum(((w != w) | (tl.abs(w) == float("inf"))).to(tl.int32), 1), 0)
        count += tl.sum(((x != x) | (tl.abs(x) == float("inf"))).to(tl.int32), 0)
    return count > 0


@jit
def _relu(z):
    """max(z, 0) keeping NaN, as torch's clamp_min (PTX max.f32 would return 0)."""
    return tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)


@jit
def _target_bits(t_row, t_stride, s0, S, acc: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr):
    """b [BLOCK_S, BLOCK_N] (+-1) of targets s0 .. s0 + BLOCK_S of a row, and their mask."""
    offs_s = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
    s_ok = offs_s < S
    y = tl.load(t_row + offs_s * t_stride, mask=s_ok, other=0)
    offs_j = tl.arange(0, BLOCK_N).to(tl.int64)
    b = tl.where(((y[:, None] >> offs_j[None, :]) & 1) == 1, 1.0, -1.0).to(acc)
    return b, s_ok


@jit
def _unit_block(w_row, r_row, h0, H, n_bits, acc: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr):
    """W [BLOCK_H, BLOCK_N] and r [BLOCK_H] of hidden units h0 .. h0 + BLOCK_H (zero past H, n)."""
    offs_h = h0 + tl.arange(0, BLOCK_H)
    offs_j = tl.arange(0, BLOCK_N)
    h_ok = offs_h < H
    w = tl.load(w_row + offs_h[:, None] * n_bits + offs_j[None, :],
                mask=h_ok[:, None] & (offs_j < n_bits)[None, :], other=0.0).to(acc)
    return w, tl.load(r_row + offs_h, mask=h_ok, other=0.0).to(acc)


@jit(do_not_specialize=["t_stride_b", "t_stride_s", "S", "H", "n_bits"])
def _target_terms_kernel(w_ptr, r_ptr, t_ptr, t_stride_b, t_stride_s, m_ptr, s_ptr, nll_ptr, lse_ptr, kept_ptr,
                         S, H, n_bits, KEEP: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = m_ptr.dtype.element_ty
    w_row, r_row = w_ptr + row * H * n_bits, r_ptr + row * H
    bad = _row_is_bad(w_row, r_row, H, n_bits, acc, BLOCK_H, BLOCK_N)
    lse = tl.load(m_ptr + row) + tl.log(tl.load(s_ptr + row))
    lse = tl.where(bad, float("nan"), lse)
    tl.store(lse_ptr + row, lse)
    for s0 in range(0, S, BLOCK_S):
        b, s_ok = _target_bits(t_ptr + row * t_stride_b, t_stride_s, s0, S, acc, BLOCK_S, BLOCK_N)
        l_y = tl.zeros([BLOCK_S], acc)
        for h0 in range(0, H, BLOCK_H):
            w, r = _unit_block(w_row, r_row, h0, H, n_bits, acc, BLOCK_H, BLOCK_N)
            z = tl.sum(b[:, None, :] * w[None, :, :], 2)                         # [BLOCK_S, BLOCK_H]
            l_y += tl.sum(_relu(z) * r[None, :], 1)
        offs_s = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        tl.store(nll_ptr + row * S + offs_s, lse - l_y, mask=s_ok)
        if KEEP:   # the targets the backward will read, [B, S] contiguous
            y = tl.load(t_ptr + row * t_stride_b + offs_s * t_stride_s, mask=s_ok, other=0)
            tl.store(kept_ptr + row * S + offs_s, y, mask=s_ok)


def _blocks(targets_per_row: int, hidden: int, n_bits: int) -> dict[str, int]:
    block_n = _pow2(n_bits)
    block_h = min(_pow2(hidden), 32)
    return {"BLOCK_S": max(2, min(_pow2(targets_per_row), TILE // (block_h * block_n))), "BLOCK_H": block_h,
            "BLOCK_N": block_n}


def target_terms(W: Tensor, r: Tensor, targets: Tensor, m: Tensor, s: Tensor,
                 keep_targets: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """nll [B, S] and lse [B] in m's dtype from the merged state and targets [B, S] (int64),
    and with keep_targets a copy of the targets for the backward (the caller's may change
    in place before it runs; the torch path keeps their bits instead)."""
    batch, hidden, n_bits = W.shape
    W, r = W.contiguous(), r.contiguous()
    nll = torch.empty(targets.shape, dtype=m.dtype, device=W.device)
    lse = torch.empty(batch, dtype=m.dtype, device=W.device)
    kept = torch.empty(targets.shape, dtype=torch.int64, device=W.device) if keep_targets else None
    t_arg, nll_arg, kept_arg = targets, nll, kept if keep_targets else nll
    if nll.numel() == 0:     # rows without targets read none of these: stand-ins keep null pointers out
        t_arg, nll_arg, kept_arg = _stand_in(W.device), lse, lse
    per_row = targets.shape[1]
    with launch_device(W):
        _target_terms_kernel[(batch,)](W, r, t_arg, targets.stride(0), targets.stride(1), m, s, nll_arg, lse,
                                       kept_arg, per_row, hidden, n_bits, KEEP=keep_targets and per_row > 0,
                                       **_blocks(per_row, hidden, n_bits))
    return nll, lse, kept


def _stand_in(device) -> Tensor:
    return torch.empty(1, dtype=torch.int64, device=device)


@jit(do_not_specialize=["t_stride_b", "t_stride_s", "g_stride_b", "g_stride_s", "glse_stride", "S", "H", "n_bits"])
def _gradients_kernel(w_ptr, r_ptr, t_ptr, t_stride_b, t_stride_s, s_ptr, d_ptr, g_ptr, g_stride_b, g_stride_s,
                      glse_ptr, glse_stride, dw_ptr, dr_ptr, S, H, n_bits, HAS_G: tl.constexpr,
                      HAS_GLSE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = s_ptr.dtype.element_ty
    w_row, r_row = w_ptr + row * H * n_bits, r_ptr + row * H
    t_row, g_row = t_ptr + row * t_stride_b, g_ptr + row * g_stride_b
    bad = _row_is_bad(w_row, r_row, H, n_bits, acc, BLOCK_H, BLOCK_N)
    G = tl.zeros([BLOCK_S], acc)
    if HAS_G:
        for s0 in range(0, S, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
            G += tl.load(g_row + offs_s * g_stride_s, mask=offs_s < S, other=0.0).to(acc)
    G = tl.sum(G, 0)
    if HAS_GLSE:
        G += tl.load(glse_ptr + row * glse_stride).to(acc)
    s = tl.load(s_ptr + row)
    offs_j = tl.arange(0, BLOCK_N)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        h_ok = offs_h < H
        w, r = _unit_block(w_row, r_row, h0, H, n_bits, acc, BLOCK_H, BLOCK_N)
        hj = offs_h[:, None] * n_bits + offs_j[None, :]
        hj_ok = h_ok[:, None] & (offs_j < n_bits)[None, :]
        Dn = tl.load(d_ptr + row * H * n_bits + hj, mask=hj_ok, other=0.0) / s
        target_dw = tl.zeros([BLOCK_H, BLOCK_N], acc)
        target_dr = tl.zeros([BLOCK_H], acc)
        if HAS_G:
            for s0 in range(0, S, BLOCK_S):
                b, s_ok = _target_bits(t_row, t_stride_s, s0, S, acc, BLOCK_S, BLOCK_N)
                offs_s = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
                g = tl.load(g_row + offs_s * g_stride_s, mask=s_ok, other=0.0).to(acc)
                z = tl.sum(b[:, None, :] * w[None, :, :], 2)                     # [BLOCK_S, BLOCK_H]
                g_on = tl.where(z > 0, g[:, None], 0.0)
                target_dw += tl.sum(g_on[:, :, None] * b[:, None, :], 0)
                target_dr += tl.sum(g[:, None] * _relu(z), 0)
        dw = r[:, None] * (G * Dn - target_dw)
        dr = G * tl.sum(w * Dn, 1) - target_dr
        dw = tl.where(bad, float("nan"), dw)
        dr = tl.where(bad, float("nan"), dr)
        tl.store(dw_ptr + row * H * n_bits + hj, rounded(dw, dw_ptr.dtype.element_ty), mask=hj_ok)
        tl.store(dr_ptr + row * H + offs_h, rounded(dr, dr_ptr.dtype.element_ty), mask=h_ok)


def gradients(W: Tensor, r: Tensor, targets: Tensor, s: Tensor, D: Tensor, grad_nll: Tensor | None,
              grad_lse: Tensor | None) -> tuple[Tensor, Tensor]:
    """dW [B, H, n] and dr [B, H] in W's dtype; grad_nll [B, S] and grad_lse [B] may be None (zero)."""
    batch, hidden, n_bits = W.shape
    W, r = W.contiguous(), r.contiguous()
    dW, dr = torch.empty_like(W), torch.empty_like(r)
    per_row = targets.shape[1]
    if per_row == 0:     # no target terms (and no pointers to empty tensors)
        targets, grad_nll = _stand_in(W.device).view(1, 1), None
    g = grad_nll if grad_nll is not None else s
    g_strides = (g.stride(0), g.stride(1)) if grad_nll is not None else (0, 0)
    glse = grad_lse if grad_lse is not None else s
    with launch_device(W):
        _gradients_kernel[(batch,)](W, r, targets, targets.stride(0), targets.stride(1), s, D.contiguous(), g,
                                    *g_strides, glse, glse.stride(0), dW, dr, per_row, hidden, n_bits,
                                    HAS_G=grad_nll is not None, HAS_GLSE=grad_lse is not None,
                                    **_blocks(per_row, hidden, n_bits))
    return dW, dr
