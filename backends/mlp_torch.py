"""Two-layer ReLU MLP backward in PyTorch, three ways (../shared/seeds/001).

    autograd    relu(x @ W0) @ W1, differentiated by torch (the reference; float64 = oracle)
    manual      the seed's backward, caching z and h = relu(z) between the passes
    recompute   the same backward keeping only z, recomputing h = relu(z) (rematerialisation)

Backward (g = dL/dout): dW1 = h^T g, dh = g W1^T, dz = dh where z > 0 (or NaN) else 0, dW0 = x^T dz,
dx = dz W0^T. Held between the passes beyond the inputs: manual 2 x batch x d_ff
elements (z, h), recompute 1 (z); autograd keeps h only (relu saves its output).
Products run in the input dtype through torch.matmul (float32 accumulation for
half-precision inputs on both devices). Any sizes, all four dtypes, CPU and CUDA.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness import Backend
from harness.layer import DTYPES


def _autograd(x: Tensor, W0: Tensor, W1: Tensor) -> Tensor:
    return torch.relu(x @ W0) @ W1


def _manual_forward(x: Tensor, W0: Tensor, W1: Tensor):
    z = x @ W0
    h = torch.relu(z)
    return h @ W1, (x, W0, W1, z, h)


def _recompute_forward(x: Tensor, W0: Tensor, W1: Tensor):
    z = x @ W0
    return torch.relu(z) @ W1, (x, W0, W1, z)


def _backward(x: Tensor, W0: Tensor, W1: Tensor, z: Tensor, h: Tensor, g: Tensor, needs) -> tuple:
    need_x, need_W0, need_W1 = needs
    dW1 = h.T @ g if need_W1 else None
    dx = dW0 = None
    if need_x or need_W0:
        dz = torch.where(z <= 0, 0.0, g @ W1.T)     # torch's ReLU': 0 where z <= 0, NaN passes
        dW0 = x.T @ dz if need_W0 else None
        dx = dz @ W0.T if need_x else None
    return dx, dW0, dW1


def _manual_backward(saved, grad_outputs, needs):
    x, W0, W1, z, h = saved
    return _backward(x, W0, W1, z, h, grad_outputs[0], needs)


def _recompute_backward(saved, grad_outputs, needs):
    x, W0, W1, z = saved
    return _backward(x, W0, W1, z, torch.relu(z), grad_outputs[0], needs)


BACKENDS = [
    Backend(name="autograd", problem="mlp", kernels={"autograd": _autograd}, devices=("cpu", "cuda"),
            dtypes=DTYPES, summary="relu(x @ W0) @ W1 differentiated by autograd (the reference)"),
    Backend(name="manual", problem="mlp", kernels={"forward": _manual_forward, "backward": _manual_backward},
            devices=("cpu", "cuda"), dtypes=DTYPES, summary="the seed's backward, caching z and relu(z)"),
    Backend(name="recompute", problem="mlp",
            kernels={"forward": _recompute_forward, "backward": _recompute_backward},
            devices=("cpu", "cuda"), dtypes=DTYPES, priority=1,
            summary="keeps only z and recomputes relu(z) in the backward"),
]
