"""The seed-002 layers with their backward passes written out from the seed's formulas.

    linear          y = x W^T + b;       dx = dy W, dW = dy^T x, db = sum_batch dy           saves x, W
    batchnorm_relu  y = relu(xhat W + b) with the seed's cached rstd = 1/sqrt(var + eps), x - mu
                    and xhat; g = dy where y > 0 (or NaN) else 0, dxhat = g W,
                    dvar = sum dxhat (x - mu) (-1/2) rstd^3,  dmu = -sum dxhat rstd,
                    dx = dxhat rstd + dvar 2 (x - mu) / M + dmu / M,  dW = sum g xhat,  db = sum g
                    (statistics in float32 for half-precision inputs)   saves rstd, x - mu, xhat, W, y
    conv1d          y[n] = W x[n] + b;   dW = sum_n dy[n] x[n]^T, db = sum dy, dx[n] = W^T dy[n]   saves x, W
    max             y = max_l x, i = first index attaining it (a NaN counts as the max);
                    dx = dy scattered to i                                                   saves i
    bmm             y = x t;             dx = dy t^T, dt = x^T dy                            saves x, t

Any sizes, all four dtypes, CPU and CUDA.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness import Backend
from harness.layer import DTYPES
from harness.problems.layers import EPS


def _linear_forward(x: Tensor, W: Tensor, b: Tensor):
    return x @ W.T + b, (x, W)


def _linear_backward(saved, grad_outputs, needs):
    (x, W), (dy,) = saved, grad_outputs
    return dy @ W, dy.T @ x, dy.sum(0)


def _channel_view(v: Tensor, x: Tensor) -> Tensor:
    """[C] -> broadcastable against x [N, C] or [N, C, L]."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def _batchnorm_relu_forward(x: Tensor, W: Tensor, b: Tensor):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dims = [0, 2] if x.dim() == 3 else [0]
    xf = x.to(acc)
    centered = xf - xf.mean(dims, keepdim=True)                      # x - mu
    rstd = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + EPS)
    xhat = centered * rstd
    y = torch.relu(xhat * _channel_view(W.to(acc), x) + _channel_view(b.to(acc), x))
    return y.to(x.dtype), (rstd, centered, xhat, W, y)


def _batchnorm_relu_backward(saved, grad_outputs, needs):
    (rstd, centered, xhat, W, y), (dy,) = saved, grad_outputs
    dims = [0, 2] if y.dim() == 3 else [0]
    count = y.numel() // y.shape[1]                                   # M values per channel
    g = torch.where(y <= 0, 0.0, dy.to(y.dtype))                    # torch's ReLU': NaN passes
    dxhat = g * _channel_view(W.to(y.dtype), y)
    dvar = (dxhat * centered).sum(dims, keepdim=True) * -0.5 * rstd**3
    dmu = -(dxhat.sum(dims, keepdim=True)) * rstd
    dx = dxhat * rstd + dvar * 2 * centered / count + dmu / count
    dW, db = (g * xhat).sum(dims), g.sum(dims)
    return dx.to(dy.dtype), dW.to(dy.dtype), db.to(dy.dtype)


def _conv1d_forward(x: Tensor, W: Tensor, b: Tensor):
    return torch.einsum("oc,ncl->nol", W, x) + b[:, None], (x, W)


def _conv1d_backward(saved, grad_outputs, needs):
    (x, W), (dy,) = saved, grad_outputs
    return torch.einsum("oc,nol->ncl", W, dy), torch.einsum("nol,ncl->oc", dy, x), dy.sum((0, 2))


def _max_forward(x: Tensor):
    y = torch.max(x, -1).values
    hit = (x == y[..., None]) | (x.isnan() & y.isnan()[..., None])   # [N, C, L]
    positions = torch.arange(x.shape[-1], device=x.device).expand_as(x)
    first = torch.where(hit, positions, x.shape[-1]).amin(-1)        # first index attaining the max
    return y, (first, torch.tensor(x.shape))


def _max_backward(saved, grad_outputs, needs):
    (first, shape), (dy,) = saved, grad_outputs
    dx = torch.zeros(tuple(shape.tolist()), dtype=dy.dtype, device=dy.device)
    return (dx.scatter_(-1, first[..., None], dy[..., None]),)


def _bmm_forward(x: Tensor, t: Tensor):
    return x @ t, (x, t)


def _bmm_backward(saved, grad_outputs, needs):
    (x, t), (dy,) = saved, grad_outputs
    return dy @ t.transpose(1, 2), x.transpose(1, 2) @ dy


KERNELS = {
    "linear": (_linear_forward, _linear_backward),
    "batchnorm_relu": (_batchnorm_relu_forward, _batchnorm_relu_backward),
    "conv1d": (_conv1d_forward, _conv1d_backward),
    "max": (_max_forward, _max_backward),
    "bmm": (_bmm_forward, _bmm_backward),
}

BACKENDS = [
    Backend(name="manual", problem=problem, kernels={"forward": forward, "backward": backward},
            devices=("cpu", "cuda"), dtypes=DTYPES, priority=1,
            summary="the seed's backward formulas in PyTorch, cached tensors reused")
    for problem, (forward, backward) in KERNELS.items()
]
