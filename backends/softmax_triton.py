"""Softmax forward and backward as Triton kernels, one program per row.

    forward   m = max_j x_j,  s = sum_j exp(x_j - m),  y_j = exp(x_j - m) / s
    backward  dot = sum_j dy_j y_j,  dx_j = (dy_j - dot) y_j          (seed 003's vector form)

Two kernel shapes per direction (configs):

* row (default, for rows up to MAX_ROW columns): the whole row sits in registers, so each
  element is read once and written once, the floor of the memory traffic: forward reads x
  and writes y, backward reads y and dy and writes dx.
* looped (the `looped` config, and rows longer than MAX_ROW): the row is walked in blocks of
  BLOCK columns, twice: the first pass keeps a per-lane running max and normaliser (online
  softmax, rescaling s when the max grows) or the dot product, the second writes the output,
  re-reading its inputs (from L2 when enough rows fit there, else from DRAM).

Float32 registers whatever the input dtype. Memory-bound; the report shows the achieved rate
against the measured copy bandwidth.

Rows: any batch (one program each); columns: any count (blocks loop). NaN or +inf in a
row gives NaN across that row (as torch.softmax: inf - inf); -inf entries give 0.
Limits: float32, float16, bfloat16 (float64 would need float64 registers: not offered).
CUDA, or the CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness import Backend
from harness.triton_helpers import DEVICES, jit, rounded, tl, triton, unavailable


@jit
def _softmax_forward_row(x_ptr, y_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=-float("inf")).to(tl.float32)
    m = tl.max(x, 0)
    e = tl.exp(x - m)                          # a row of -inf gives NaN, as torch.softmax does
    s = tl.sum(e, 0)
    s = tl.where(tl.sum((x != x).to(tl.int32), 0) > 0, float("nan"), s)   # max() may drop a NaN
    tl.store(y_ptr + row * n_cols + cols, rounded(e / s, y_ptr.dtype.element_ty), mask=mask)


@jit
def _softmax_backward_row(y_ptr, dy_ptr, dx_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    y = tl.load(y_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    dot = tl.sum(y * dy, 0)
    tl.store(dx_ptr + row * n_cols + cols, rounded((dy - dot) * y, dx_ptr.dtype.element_ty), mask=mask)


@jit
def _softmax_forward(x_ptr, y_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row, y_row = x_ptr + row * n_cols, y_ptr + row * n_cols
    cols = tl.arange(0, BLOCK)
    # Pass 1: per-lane running max m and normaliser s = sum exp(x - m).
    m = tl.full([BLOCK], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    nans = tl.zeros([BLOCK], tl.int32)        # max() may drop a NaN (fmax semantics): count them apart
    for start in range(0, n_cols, BLOCK):
        x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=-float("inf")).to(tl.float32)
        nans += (x != x).to(tl.int32)
        m_new = tl.maximum(m, x)
        seen = m_new > -float("inf")          # lanes that saw only -inf keep s = 0, not exp(-inf + inf)
        s = tl.where(seen, s * tl.exp(m - m_new) + tl.exp(x - m_new), 0.0)
        m = m_new
    m_row = tl.max(m, 0)
    s_row = tl.sum(tl.where(m > -float("inf"), s * tl.exp(m - m_row), 0.0), 0)
    s_row = tl.where(tl.sum(nans, 0) > 0, float("nan"), s_row)
    # Pass 2: y = exp(x - m) / s.
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.exp(x - m_row) / s_row
        tl.store(y_row + start + cols, rounded(y, y_ptr.dtype.element_ty), mask=mask)


@jit
def _softmax_backward(y_ptr, dy_ptr, dx_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    y_row, dy_row, dx_row = y_ptr + row * n_cols, dy_ptr + row * n_cols, dx_ptr + row * n_cols
    cols = tl.arange(0, BLOCK)
    # Pass 1: dot = sum_j dy_j y_j.
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        y = tl.load(y_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        acc += y * dy
    dot = tl.sum(acc, 0)
    # Pass 2: dx = (dy - dot) y.
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        y = tl.load(y_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_row + start + cols, rounded((dy - dot) * y, dx_ptr.dtype.element_ty), mask=mask)


MAX_ROW = 16384     # columns held in registers: 32 float32 per thread at 16 warps


def _launch(n_cols: int, looped: bool, max_block: int = 4096) -> tuple[bool, dict[str, int]]:
    """(whole row in registers?, launch options) for rows of n_cols columns."""
    row = not looped and triton.next_power_of_2(n_cols) <= MAX_ROW
    block = triton.next_power_of_2(n_cols) if row else min(triton.next_power_of_2(n_cols), max_block)
    return row, {"BLOCK": block, "num_warps": 4 if block <= 1024 else 8 if block <= 4096 else 16}


def _forward(x: Tensor, looped: bool = False) -> tuple[Tensor, tuple[Tensor, ...]]:
    """x [B, N] contiguous -> y [B, N] in x's dtype; y is saved for the backward."""
    y = torch.empty_like(x)
    row, options = _launch(x.shape[1], looped)
    kernel = _softmax_forward_row if row else _softmax_forward
    kernel[(x.shape[0],)](x, y, x.shape[1], **options)
    return y, (y,)


def _backward(saved, grad_outputs, needs, looped: bool = False) -> tuple[Tensor]:
    (y,), (dy,) = saved, grad_outputs
    dy = dy.contiguous()
    dx = torch.empty_like(y)
    row, options = _launch(y.shape[1], looped)
    kernel = _softmax_backward_row if row else _softmax_backward
    kernel[(y.shape[0],)](y, dy, dx, y.shape[1], **options)
    return (dx,)



BACKENDS = [
    Backend(
        name="triton",
        problem="softmax",
        kernels={"forward": _forward, "backward": _backward},
        devices=DEVICES,
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
        configs={"default": {}, "looped": {"looped": True}},
        unavailable=unavailable,
        priority=2,
        summary="fused row kernels in float32 registers: one read per element, or an online two-pass loop",
    )
]
