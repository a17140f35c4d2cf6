"""BatchNorm1d (training-mode statistics) with the ReLU fused in, forward and backward in Triton.

For each channel c, over its M = batch x length values x_i (../shared/seeds/002):

    mu = sum x_i / M,   var = sum (x_i - mu)^2 / M,   rstd = 1 / sqrt(var + eps)
    xhat_i = (x_i - mu) rstd,   y_i = relu(W_c xhat_i + b_c)
    g_i = dy_i where W_c xhat_i + b_c > 0 (or NaN), else 0
    db = sum g,   dW = sum g xhat,   dx_i = W_c rstd (g_i - db / M - xhat_i dW / M)

One program owns BLOCK_C channels and walks their values in [BLOCK_M, BLOCK_C] tiles
(x is [batch, channels, length], value i of channel c at (i // length) C L + c L + i % length,
so the tile reads along length when it is long and along channels when it is 1).
Forward: a pass for mu, one for var and a correction to mu (the corrected two-pass
algorithm, so nothing cancels), one writing y; it
saves mu and rstd per channel (8 bytes each), not xhat. Backward: a pass for db and dW
that recomputes xhat and the ReLU mask from x with the forward's own helper, one writing
dx. Statistics and sums in float32 registers whatever the input dtype.
Memory-bound: the extra passes re-read x, from L2 when a channel block fits.

Limits: float32, float16, bfloat16; any batch, channels and length (batch x length >= 2,
the contract's). NaN in a channel gives NaN in that channel's y, dx and dW.
CUDA, or the CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from harness import Backend
from harness.problems.layers import EPS
from harness.triton_helpers import rounded

TRITON_MISSING = importlib.util.find_spec("triton") is None
if not TRITON_MISSING:
    import triton
    import triton.language as tl
else:  # the module must import without triton, so that the registry can say why it is unavailable
    triton = tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _jit(fn):
    return fn if TRITON_MISSING else triton.jit(fn)


@_jit
def _tile(start, channels, n_channels, length, count, BLOCK_M: tl.constexpr):
    """Offsets [BLOCK_M, BLOCK_C] of values start.. of `channels`, and their mask."""
    i = start + tl.arange(0, BLOCK_M)
    n, l = i // length, i % length
    offsets = n[:, None].to(tl.int64) * n_channels * length + channels[None, :] * length + l[:, None]
    return offsets, (i < count)[:, None] & (channels < n_channels)[None, :]


@_jit
def _pre_activation(x, mu, rstd, w, b):
    """(xhat, W xhat + b): one helper for both kernels, so the ReLU mask is the same bits."""
    xhat = (x - mu[None, :]) * rstd[None, :]
    return xhat, xhat * w[None, :] + b[None, :]


@_jit
def _bn_relu_forward(x_ptr, w_ptr, b_ptr, y_ptr, mu_ptr, rstd_ptr, n_channels, length, count, eps,
                     BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    on = channels < n_channels
    total = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    for start in range(0, count, BLOCK_M):
        offsets, mask = _tile(start, channels, n_channels, length, count, BLOCK_M)
        total += tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mu = tl.sum(total, 0) / count
    # Corrected two-pass (Chan, Golub and LeVeque): the sum of x - mu is mu's rounding error times
    # count, so adding it back makes mu, and var, as good as the data allow.
    residual = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    squares = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    for start in range(0, count, BLOCK_M):
        offsets, mask = _tile(start, channels, n_channels, length, count, BLOCK_M)
        centered = tl.where(mask, tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32) - mu[None, :], 0.0)
        residual += centered
        squares += centered * centered
    correction = tl.sum(residual, 0) / count
    mu += correction
    rstd = 1.0 / tl.sqrt(tl.sum(squares, 0) / count - correction * correction + eps)
    w = tl.load(w_ptr + channels, mask=on, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + channels, mask=on, other=0.0).to(tl.float32)
    for start in range(0, count, BLOCK_M):
        offsets, mask = _tile(start, channels, n_channels, length, count, BLOCK_M)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        _, pre = _pre_activation(x, mu, rstd, w, b)
        y = tl.where(pre < 0, 0.0, pre)                  # relu that keeps NaN, as torch's
        tl.store(y_ptr + offsets, rounded(y, y_ptr.dtype.element_ty), mask=mask)
    tl.store(mu_ptr + channels, mu, mask=on)
    tl.store(rstd_ptr + channels, rstd, mask=on)


@_jit
def _bn_relu_backward(x_ptr, dy_ptr, w_ptr, b_ptr, mu_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr,
                      n_channels, length, count, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    on = channels < n_channels
    mu = tl.load(mu_ptr + channels, mask=on, other=0.0)
    rstd = tl.load(rstd_ptr + channels, mask=on, other=0.0)
    w = tl.load(w_ptr + channels, mask=on, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + channels, mask=on, other=0.0).to(tl.float32)
    sum_g = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    sum_gx = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    for start in range(0, count, BLOCK_M):
        offsets, mask = _tile(start, channels, n_channels, length, count, BLOCK_M)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        xhat, pre = _pre_activation(x, mu, rstd, w, b)
        g = tl.where(pre <= 0, 0.0, dy)                  # torch's ReLU': 0 where pre <= 0, NaN passes
        sum_g += g
        sum_gx += tl.where(mask, g * xhat, 0.0)
    db = tl.sum(sum_g, 0)
    dw = tl.sum(sum_gx, 0)
    for start in range(0, count, BLOCK_M):
        offsets, mask = _tile(start, channels, n_channels, length, count, BLOCK_M)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        xhat, pre = _pre_activation(x, mu, rstd, w, b)
        g = tl.where(pre <= 0, 0.0, dy)
        dx = (w * rstd)[None, :] * (g - db[None, :] / count - xhat * dw[None, :] / count)
        tl.store(dx_ptr + offsets, rounded(dx, dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + channels, dw, mask=on)
    tl.store(db_ptr + channels, db, mask=on)


def _blocks(n_channels: int, length: int) -> dict[str, int]:
    """Read along length when it is long, along channels when it is short."""
    if length >= 64:
        return {"BLOCK_M": 1024, "BLOCK_C": 1, "num_warps": 4}
    return {"BLOCK_M": 64, "BLOCK_C": min(32, triton.next_power_of_2(n_channels)), "num_warps": 4}


def _shape(x: Tensor) -> tuple[int, int, int]:
    return x.shape[0], x.shape[1], (x.shape[2] if x.dim() == 3 else 1)


def _forward(x: Tensor, W: Tensor, b: Tensor):
    """x [N, C] or [N, C, L] contiguous -> y like x; saves x, W, b, mu [C] and rstd [C] (float32)."""
    batch, n_channels, length = _shape(x)
    y = torch.empty_like(x)
    mu = torch.empty(n_channels, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mu)
    blocks = _blocks(n_channels, length)
    grid = (triton.cdiv(n_channels, blocks["BLOCK_C"]),)
    _bn_relu_forward[grid](x, W, b, y, mu, rstd, n_channels, length, batch * length, EPS, **blocks)
    return y, (x, W, b, mu, rstd)


def _backward(saved, grad_outputs, needs):
    (x, W, b, mu, rstd), (dy,) = saved, grad_outputs
    batch, n_channels, length = _shape(x)
    dx = torch.empty_like(x)
    dw = torch.empty(n_channels, dtype=torch.float32, device=x.device)
    db = torch.empty_like(dw)
    blocks = _blocks(n_channels, length)
    grid = (triton.cdiv(n_channels, blocks["BLOCK_C"]),)
    _bn_relu_backward[grid](x, dy.contiguous(), W, b, mu, rstd, dx, dw, db, n_channels, length, batch * length,
                            **blocks)
    return dx, dw.to(W.dtype), db.to(b.dtype)


def _unavailable(config: str) -> str | None:
    return "triton is not installed (pip install 'fusedbench[triton]')" if TRITON_MISSING else None


BACKENDS = [
    Backend(
        name="triton",
        problem="batchnorm_relu",
        kernels={"forward": _forward, "backward": _backward},
        devices=("cuda", "cpu") if INTERPRET else ("cuda",),
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
        unavailable=_unavailable,
        priority=2,
        summary="fused statistics, normalisation and ReLU; backward recomputes xhat and the mask",
    )
]
