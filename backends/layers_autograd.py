"""The seed-002 layers through torch.nn.functional, differentiated by autograd: the references.

    linear          F.linear(x, W, b)
    batchnorm_relu  relu(F.batch_norm(x, W, b, training=True, eps=1e-5))
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
    return torch.relu(F.batch_norm(x, None, None, W, b, training=True, eps=EPS))


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
