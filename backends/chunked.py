"""Chunked PyTorch: walk the codes in chunks with online softmax and meet-in-the-middle tables.

Split the n bits into a low half (n_lo bits) and a high half (n_hi = n - n_lo).
z is linear in the bits, so with two tables

    P_lo [B, 2^n_lo, H]:  P_lo[k_lo, h] = sum_{j <  n_lo} W[h, j] b_{k_lo, j}
    P_hi [B, rows,   H]:  P_hi[k_hi, h] = sum_{j >= n_lo} W[h, j] b_{k_hi, j - n_lo}

every pre-activation is one add, z[k_hi, k_lo] = P_hi[k_hi] + P_lo[k_lo]. A step
takes `rows` consecutive values of k_hi against all of P_lo (a chunk of
rows * 2^n_lo codes) and updates the running state with online softmax:

    l       = relu(z) . r                         [B, rows, 2^n_lo]
    m'      = max(m, max l);  alpha = exp(m - m')
    e       = exp(l - m')
    s       = alpha s + sum e
    A       = e 1[z > 0]                          [B, rows, 2^n_lo, H]
    G_lo    = alpha G_lo + sum_{k_hi} A           [B, 2^n_lo, H]
    D_hi    = alpha D_hi + sum_{k_hi} (sum_{k_lo} A) b_{k_hi}   [B, H, n_hi]

and at the end D_lo[h, j] = sum_{k_lo} G_lo[k_lo, h] b_{k_lo, j}, so D[h, j] =
sum_k e_k 1[z_kh > 0] b_kj costs one table update per (code, hidden) pair, not n.

Cost: about 10 elementwise operations per (row, code, hidden) triple, in
chunks of `chunk_size` codes, so memory is O(batch * chunk_size * hidden) and
never O(batch * 2^n). Contractions are written as broadcast sums, not matmuls,
so that a user's TF32 setting cannot degrade float32 results.

Configs: "default" (eager) and "compile" (the step under torch.compile, what
users reach for before writing a kernel). Limits: n_bits 1..32, any H and B,
CPU and CUDA, all four dtypes (half inputs accumulate in float32).
"""

from __future__ import annotations

import functools
import math
import shutil
from collections.abc import Mapping

import torch
from torch import Tensor

from harness import Backend
from harness.problems.sick_bide import DTYPES, PartialState, bits, z_table

# Elements per [batch, chunk, hidden] tensor when chunk_size is not given: ~16 MiB in float32.
_AUTO_CHUNK_ELEMENTS = 1 << 22


def auto_chunk_size(batch: int, hidden: int, n_bits: int) -> int:
    """The largest power of two of codes per step that keeps a step's tensors near 16 MiB."""
    chunk = max(1, _AUTO_CHUNK_ELEMENTS // max(1, batch * hidden))
    return min(1 << (chunk.bit_length() - 1), 1 << n_bits)


def _fold(G: Tensor) -> Tensor:
    """G [B, 2^m, H] -> D [B, H, m] with D[h, j] = sum_k G[k, h] b_kj."""
    batch, codes, hidden = G.shape
    cols = []
    for j in range(codes.bit_length() - 1):
        halves = G.view(batch, codes >> (j + 1), 2, 1 << j, hidden).sum((1, 3))   # [B, 2, H]
        cols.append(halves[:, 1] - halves[:, 0])
    return torch.stack(cols, dim=-1) if cols else G.new_zeros(batch, hidden, 0)


def _step(P_lo, P_hi, r, valid, m, s, G_lo, D_hi, b_hi):
    """One chunk of online softmax (the module docstring's update); G_lo is None without gradients."""
    z = P_lo[:, None] + P_hi[:, :, None]                                  # [B, rows, K_lo, H]
    l = (z.clamp_min(0) * r[:, None, None]).sum(-1)                       # [B, rows, K_lo]
    if valid is not None:
        l = l.masked_fill(~valid, -math.inf)
    m_new = torch.maximum(m, l.amax((1, 2)))
    alpha = torch.exp(m - m_new)                                          # 0 on the first step (m = -inf)
    e = torch.exp(l - m_new[:, None, None])
    s = alpha * s + e.sum((1, 2))
    if G_lo is None:
        return m_new, s, None, None
    A = e[..., None] * (z > 0)                                            # [B, rows, K_lo, H]
    G_lo = alpha[:, None, None] * G_lo + A.sum(1)
    row_sums = A.sum(2)                                                   # [B, rows, H]
    D_hi = alpha[:, None, None] * D_hi + (row_sums[..., None] * b_hi[None, :, None, :]).sum(1)
    return m_new, s, G_lo, D_hi


@functools.cache
def _compiled_step():
    return torch.compile(_step, dynamic=True)


def _run_compiled(*args):
    """The compiled step, with room for its structural variants (with or without gradient
    sums and masks, per dtype): past torch's default of 8 recompiles it would fall back to
    eager silently and the "compile" numbers would be eager ones."""
    with torch._dynamo.config.patch(recompile_limit=64):
        return _compiled_step()(*args)


def partial_state(
    W: Tensor,
    r: Tensor,
    k_start: int,
    k_stop: int,
    out: PartialState,
    *,
    chunk_size: int | None = None,
    compile: bool = False,
) -> None:
    batch, hidden, n_bits = W.shape
    acc = out.m.dtype
    W, r = W.to(acc), r.to(acc)
    chunk = chunk_size or auto_chunk_size(batch, hidden, n_bits)
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"chunk_size must be a power of two >= 1, got {chunk}")
    n_lo = min((n_bits + 1) // 2, chunk.bit_length() - 1)
    n_hi = n_bits - n_lo
    rows = max(1, chunk >> n_lo)
    P_lo = z_table(W[:, :, :n_lo])                                          # [B, K_lo, H]
    W_hi = W[:, :, n_lo:]                                                  # [B, H, n_hi]

    m = torch.full((batch,), -math.inf, dtype=acc, device=W.device)
    s = torch.zeros(batch, dtype=acc, device=W.device)
    G_lo = D_hi = None
    if out.D is not None:
        G_lo = torch.zeros_like(P_lo)
        D_hi = torch.zeros(batch, hidden, n_hi, dtype=acc, device=W.device)
    lo_codes = torch.arange(1 << n_lo, device=W.device)
    hi_first, hi_last = k_start >> n_lo, (k_stop - 1) >> n_lo
    for hi0 in range(hi_first, hi_last + 1, rows):
        hi_end = min(hi0 + rows, hi_last + 1)
        k_hi = torch.arange(hi0, hi_end, device=W.device)
        b_hi = bits(k_hi, n_hi, acc)                                      # [rows, n_hi]
        P_hi = (W_hi[:, None] * b_hi[None, :, None, :]).sum(-1)           # [B, rows, H]
        valid = None
        if hi0 << n_lo < k_start or hi_end << n_lo > k_stop:
            codes = (k_hi[:, None] << n_lo) + lo_codes                    # [rows, K_lo]
            valid = (codes >= k_start) & (codes < k_stop)
        step = _run_compiled if compile else _step
        m, s, G_lo, D_hi = step(P_lo, P_hi, r, valid, m, s, G_lo, D_hi, b_hi)

    out.m.copy_(m)
    out.s.copy_(s)
    if out.D is not None:
        out.D.copy_(torch.cat((_fold(G_lo), D_hi), dim=-1))


def workspace(sizes: Mapping[str, int], dtype: torch.dtype, options: Mapping) -> int:
    """Bytes at the peak of a step: about five [B, chunk, H] float32 tensors plus the tables."""
    batch, hidden, n_bits = sizes["batch"], sizes["hidden"], sizes["n_bits"]
    chunk = options.get("chunk_size") or auto_chunk_size(batch, hidden, n_bits)
    acc_size = 8 if dtype == torch.float64 else 4
    return 6 * batch * chunk * hidden * acc_size


def _compile_unavailable(config: str) -> str | None:
    if config != "compile":
        return None
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python"
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        return "torch.compile needs a C compiler on the CPU, none found"
    return None


BACKENDS = [
    Backend(
        name="chunked",
        problem="sick_bide",
        kernels={"partial_state": partial_state},
        devices=("cpu", "cuda"),
        dtypes=DTYPES,
        limits={"n_bits": (1, 32)},
        features=frozenset({"grad", "k_ranges"}),
        configs={"default": {}, "compile": {"compile": True}},
        unavailable=_compile_unavailable,
        workspace=workspace,
        priority=0,
        summary="PyTorch online softmax over chunks of codes, meet-in-the-middle tables",
    )
]
