"""BatchNorm1d (training-mode statistics) with the ReLU fused in, forward and backward in Triton.

For each channel c, over its M = batch x length values x_i (../shared/seeds/002):

    mu = sum x_i / M,   var = sum (x_i - mu)^2 / M,   rstd = 1 / sqrt(var + eps)
    xhat_i = (x_i - mu) rstd,   y_i = relu(W_c xhat_i + b_c)
    g_i = dy_i where W_c xhat_i + b_c > 0 (or NaN), else 0
    db = sum g,   dW = sum g xhat,   dx_i = W_c rstd (g_i - db / M - xhat_i dW / M)

One program owns BLOCK_C channels and walks their values in [BLOCK_N, BLOCK_C, BLOCK_L] tiles
of x [batch, channels, length] (a 2-D x is length 1): along length when it is long, along
channels when it is short, so that loads are contiguous and no index needs a division.
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

import torch
from torch import Tensor

from harness import Backend
from harness.problems.layers import EPS
from harness.triton_helpers import DEVICES, jit, rounded, tl, triton, unavailable


@jit
def _tile(n0, l0, channels, batch, n_channels, length, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """Offsets [BLOCK_N, BLOCK_C, BLOCK_L] of x[n0:, channels, l0:] and their mask (no division)."""
    n = n0 + tl.arange(0, BLOCK_N)
    l = l0 + tl.arange(0, BLOCK_L)
    offsets = (n[:, None, None].to(tl.int64) * n_channels * length + channels[None, :, None] * length
               + l[None, None, :])
    mask = (n < batch)[:, None, None] & (channels < n_channels)[None, :, None] & (l < length)[None, None, :]
    return offsets, mask


@jit
def _per_channel(tile):
    """[BLOCK_N, BLOCK_C, BLOCK_L] -> [BLOCK_C], summed over values."""
    return tl.sum(tl.sum(tile, 2), 0)


@jit
def _pre_activation(x, mu, rstd, w, b):
    """(xhat, W xhat + b): one helper for both kernels, so the ReLU mask is the same bits."""
    xhat = (x - mu[None, :, None]) * rstd[None, :, None]
    return xhat, xhat * w[None, :, None] + b[None, :, None]


@jit
def _bn_relu_forward(x_ptr, w_ptr, b_ptr, y_ptr, mu_ptr, rstd_ptr, batch, n_channels, length, eps,
                     BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    on = channels < n_channels
    count = batch * length
    total = tl.zeros([BLOCK_N, BLOCK_C, BLOCK_L], tl.float32)
    for n0 in range(0, batch, BLOCK_N):
        for l0 in range(0, length, BLOCK_L):
            offsets, mask = _tile(n0, l0, channels, batch, n_channels, length, BLOCK_N, BLOCK_L)
            total += tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mu = _per_channel(total) / count
    # Corrected two-pass (Chan, Golub and LeVeque): the sum of x - mu is mu's rounding error times
    # count, so adding it back makes mu, and var, as good as the data allow.
    residual = tl.zeros([BLOCK_N, BLOCK_C, BLOCK_L], tl.float32)
    squares = tl.zeros([BLOCK_N, BLOCK_C, BLOCK_L], tl.float32)
    for n0 in range(0, batch, BLOCK_N):
        for l0 in range(0, length, BLOCK_L):
            offsets, mask = _tile(n0, l0, channels, batch, n_channels, length, BLOCK_N, BLOCK_L)
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            centered = tl.where(mask, x - mu[None, :, None], 0.0)
            residual += centered
            squares += centered * centered
    correction = _per_channel(residual) / count
    mu += correction
    rstd = 1.0 / tl.sqrt(_per_channel(squares) / count - correction * correction + eps)
    w = tl.load(w_ptr + channels, mask=on, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + channels, mask=on, other=0.0).to(tl.float32)
    for n0 in range(0, batch, BLOCK_N):
        for l0 in range(0, length, BLOCK_L):
            offsets, mask = _tile(n0, l0, channels, batch, n_channels, length, BLOCK_N, BLOCK_L)
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            _, pre = _pre_activation(x, mu, rstd, w, b)
            y = tl.where(pre < 0, 0.0, pre)                  # relu that keeps NaN, as torch's
            tl.store(y_ptr + offsets, rounded(y, y_ptr.dtype.element_ty), mask=mask)
    tl.store(mu_ptr + channels, mu, mask=on)
    tl.store(rstd_ptr + channels, rstd, mask=on)


@jit
def _bn_relu_backward(x_ptr, dy_ptr, w_ptr, b_ptr, mu_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr,
                      batch, n_channels, length,
                      BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    on = channels < n_channels
    count = batch * length
    mu = tl.load(mu_ptr + channels, mask=on, other=0.0)
    rstd = tl.load(rstd_ptr + channels, mask=on, other=0.0)
    w = tl.load(w_ptr + channels, mask=on, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + channels, mask=on, other=0.0).to(tl.float32)
    sum_g = tl.zeros([BLOCK_N, BLOCK_C, BLOCK_L], tl.float32)
    sum_gx = tl.zeros([BLOCK_N, BLOCK_C, BLOCK_L], tl.float32)
    for n0 in range(0, batch, BLOCK_N):
        for l0 in range(0, length, BLOCK_L):
            offsets, mask = _tile(n0, l0, channels, batch, n_channels, length, BLOCK_N, BLOCK_L)
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            xhat, pre = _pre_activation(x, mu, rstd, w, b)
            g = tl.where(pre <= 0, 0.0, dy)                  # torch's ReLU': 0 where pre <= 0, NaN passes
            sum_g += g
            sum_gx += tl.where(mask, g * xhat, 0.0)
    db = _per_channel(sum_g)
    dw = _per_channel(sum_gx)
    for n0 in range(0, batch, BLOCK_N):
        for l0 in range(0, length, BLOCK_L):
            offsets, mask = _tile(n0, l0, channels, batch, n_channels, length, BLOCK_N, BLOCK_L)
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            xhat, pre = _pre_activation(x, mu, rstd, w, b)
            g = tl.where(pre <= 0, 0.0, dy)
            dx = (w * rstd)[None, :, None] * (g - (db / count)[None, :, None] - xhat * (dw / count)[None, :, None])
            tl.store(dx_ptr + offsets, rounded(dx, dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + channels, dw, mask=on)
    tl.store(db_ptr + channels, db, mask=on)


def _blocks(n_channels: int, length: int) -> dict[str, int]:
    """Tiles of about 1024 values: along length when it is long, along channels when it is short."""
    if length >= 32:
        block_l = min(1024, triton.next_power_of_2(length))
        return {"BLOCK_N": max(1, 1024 // block_l), "BLOCK_C": 1, "BLOCK_L": block_l, "num_warps": 4}
    block_l = triton.next_power_of_2(length)
    block_c = min(32, triton.next_power_of_2(n_channels))
    return {"BLOCK_N": max(1, 1024 // (block_c * block_l)), "BLOCK_C": block_c, "BLOCK_L": block_l, "num_warps": 4}


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
    _bn_relu_forward[grid](x, W, b, y, mu, rstd, batch, n_channels, length, EPS, **blocks)
    return y, (x, W, b, mu, rstd)


def _backward(saved, grad_outputs, needs):
    (x, W, b, mu, rstd), (dy,) = saved, grad_outputs
    batch, n_channels, length = _shape(x)
    dx = torch.empty_like(x)
    dw = torch.empty(n_channels, dtype=torch.float32, device=x.device)
    db = torch.empty_like(dw)
    blocks = _blocks(n_channels, length)
    grid = (triton.cdiv(n_channels, blocks["BLOCK_C"]),)
    _bn_relu_backward[grid](x, dy.contiguous(), W, b, mu, rstd, dx, dw, db, batch, n_channels, length, **blocks)
    return dx, dw.to(W.dtype), db.to(b.dtype)



BACKENDS = [
    Backend(
        name="triton",
        problem="batchnorm_relu",
        kernels={"forward": _forward, "backward": _backward},
        devices=DEVICES,
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
        unavailable=unavailable,
        priority=2,
        summary="fused statistics, normalisation and ReLU; backward recomputes xhat and the mask",
    )
]
