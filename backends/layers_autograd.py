"""The seed-002 layers through torch.nn.functional, differentiated by autograd: the references.

    linear          F.linear(x, W, b)
    batchnorm_relu  relu(F.batch_norm(x, W, b, training=True, eps=1e-5)), in float32 for half inputs
    conv1d          F.conv1d(x, W[..., None], b)          (kernel size 1)
    max             torch.max(x, dim=-1).values           (gradient to the index torch.max returns)
    bmm             torch.bmm(x, t)

Run in float64 these are the oracles of the properties; in the input dtype they set the
tolerance (harness/tolerance.py). Any sizes, all four dtypes, CPU and CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from harness import Backend
from harness.layer import DTYPES
from harness.problems.layers import EPS


def _batchnorm_relu(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    # Half-precision inputs normalise in float32, as autocast runs batch norm: torch's CPU kernel
    # on float16 itself loses most digits of dx where |mean| / std is large (the properties found
    # dx = -0.075 against 0.0043 at two values -2.61, -2.43), breaking the layer contract.
    acc = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    y = F.batch_norm(x.to(acc), None, None, W.to(acc), b.to(acc), training=True, eps=EPS)
    return torch.relu(y).to(x.dtype)


KERNELS = {
    "linear": F.linear,
    "batchnorm_relu": _batchnorm_relu,
    "conv1d": lambda x, W, b: F.conv1d(x, W[:, :, None], b),
    "max": lambda x: torch.max(x, dim=-1).values,
    "bmm": torch.bmm,
}

BACKENDS = [
    Backend(name="autograd", problem=problem, kernels={"autograd": kernel}, devices=("cpu", "cuda"),
            dtypes=DTYPES, summary="torch.nn.functional differentiated by autograd (the reference)")
    for problem, kernel in KERNELS.items()
]
