"""Softmax backward in PyTorch, three ways (../shared/seeds/003).

    autograd   y = torch.softmax(x); torch differentiates it (the reference; float64 = oracle)
    jacobian   J [B, N, N] = y_k (1[k = j] - y_j) materialised, dx = J dy   (the seed's baseline)
    vector     dx = (dy - sum_k dy_k y_k) y                                  (the seed's answer)

Cost of the backward: jacobian ~ 3 B N^2 flops and 2 B N^2 elements of workspace
(J and the identity's broadcast difference); vector ~ 3 B N flops, three elementwise
kernels (read y, dy twice, write dx). Half-precision inputs compute in float32 and
return their dtype. All sizes, all four dtypes, CPU and CUDA.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from harness import Backend
from harness.layer import DTYPES


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autograd(x: Tensor) -> Tensor:
    return torch.softmax(x, dim=-1)


def _forward(x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    y = torch.softmax(x.to(_acc(x.dtype)), dim=-1)
    return y.to(x.dtype), (y,)          # y kept in the accumulation dtype for the backward


def _jacobian_backward(saved, grad_outputs, needs) -> tuple[Tensor]:
    (y,), (dy,) = saved, grad_outputs
    eye = torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
    jacobian = y[:, :, None] * (eye - y[:, None, :])                     # [B, N, N], symmetric
    dx = torch.bmm(jacobian, dy.to(y.dtype)[:, :, None]).squeeze(2)      # [B, N]
    return (dx.to(dy.dtype),)


def _vector_backward(saved, grad_outputs, needs) -> tuple[Tensor]:
    (y,), (dy,) = saved, grad_outputs
    dy = dy.to(y.dtype)
    dx = (dy - (dy * y).sum(-1, keepdim=True)) * y
    return (dx.to(grad_outputs[0].dtype),)


def _jacobian_workspace(sizes: Mapping[str, int], dtype: torch.dtype, options: Mapping) -> int:
    return 2 * sizes["batch"] * sizes["features"] ** 2 * _acc(dtype).itemsize


BACKENDS = [
    Backend(name="autograd", problem="softmax", kernels={"autograd": _autograd}, devices=("cpu", "cuda"),
            dtypes=DTYPES, summary="torch.softmax differentiated by autograd (the reference)"),
    Backend(name="jacobian", problem="softmax", kernels={"forward": _forward, "backward": _jacobian_backward},
            devices=("cpu", "cuda"), dtypes=DTYPES, workspace=_jacobian_workspace,
            summary="materialises the [B, N, N] Jacobian and multiplies (seed 003's baseline)"),
    Backend(name="vector", problem="softmax", kernels={"forward": _forward, "backward": _vector_backward},
            devices=("cpu", "cuda"), dtypes=DTYPES, priority=1,
            summary="dx = (dy - sum(dy y)) y in PyTorch, no Jacobian (seed 003)"),
]
