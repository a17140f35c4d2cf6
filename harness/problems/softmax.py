"""Softmax layer and its backward pass (../shared/seeds/003), as a harness problem.

For each row of x [batch, features]:

    y_j  = exp(x_j) / sum_k exp(x_k)                            y  [batch, features]
    dx_j = sum_k dy_k dy_k/dx_j = (dy_j - sum_k dy_k y_k) y_j   dx [batch, features]

The Jacobian dy_k/dx_j = y_k (1[k = j] - y_j) is [batch, features, features];
the second form never builds it. Both read y and dy and write dx, so the vector
form is memory-bound: at best 2 x batch x features elements moved forward
(read x, write y) and 3 backward (read y and dy, write dx). `work` counts those
bytes, and the report divides the achieved rate by the device's measured copy
bandwidth (harness/ceiling.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from harness import layer

_ELEMENTS_MOVED = {"forward": 2, "backward": 5, "backward_only": 3}


def work(sizes: Mapping[str, int], dtype: torch.dtype, mode: str) -> float:
    """Bytes a memory-bound implementation must move in one call of `mode`."""
    return float(_ELEMENTS_MOVED[mode] * sizes["batch"] * sizes["features"] * dtype.itemsize)


def slack(inputs: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """First-order rounding allowances (harness/tolerance.py), in float64.

    y_j = exp(x_j - m) / s is good to a relative u A_j with A_j = |x_j - m| + sum_k y_k |x_k - m| + 1
    (the exponent's argument is rounded, then the normaliser). dx_j = (dy_j - dot) y_j is a
    difference: good to u of its terms (|dy_j| + sum |dy| y) y_j, not of the result, plus y's own
    error times |dy_j - dot| and the error dot inherits from every y_k. A row whose logits are
    hundreds apart has y_j = 1 - 1e-72 rounding to 1, and the float64 oracle itself then returns
    dx_j = 0 where the exact value is -5e-72: only the terms' scale is meaningful there.
    """
    u = layer.unit_roundoff(dtype)
    x, dy = inputs["x"].double(), inputs["grad_y"].double()
    y = torch.softmax(x, dim=-1)
    spread = (x - x.max(-1, keepdim=True).values).abs()
    A = spread + (y * spread).sum(-1, keepdim=True) + 1
    dot = (dy * y).sum(-1, keepdim=True)
    d_dot = u * (dy.abs() * y * (1 + A)).sum(-1, keepdim=True)
    dx = u * y * (dy.abs() + (dy.abs() * y).sum(-1, keepdim=True) + (dy - dot).abs() * A) + y * d_dot
    return {"y": (u * y * A).nan_to_num(0.0), "dx": dx.nan_to_num(0.0)}


def _values(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Logits spread over a few units, as a network's would be."""
    return 3.0 * torch.randn(shape, generator=gen, dtype=torch.float64)


LAYER = layer.Layer(
    name="softmax",
    summary="softmax layer y = softmax(x) over the last axis, dx = (dy - sum(dy y)) y (seed 003)",
    inputs={"x": ("batch", "features")},
    outputs={"y": ("batch", "features")},
    cases=[
        ("B=1, N=1", {"batch": 1, "features": 1}),
        ("B=3, N=7", {"batch": 3, "features": 7}),
        ("B=32, N=512 (seed)", {"batch": 32, "features": 512}),
        ("B=5, N=1000", {"batch": 5, "features": 1000}),
    ],
    cuda_cases=[("B=64, N=5000", {"batch": 64, "features": 5000}),
                ("B=3, N=70000", {"batch": 3, "features": 70000})],
    work=work,
    work_unit="bytes",
    values=_values,
    slack=slack,
    grids={
        "cpu": {"sizes": [{"batch": [32], "features": [64, 256, 512, 1024]},
                          {"batch": [1024], "features": [512]}],
                "mode": ["forward", "backward", "backward_only"]},
        "gpu": {"sizes": [{"batch": [32], "features": [128, 512, 2048, 8192]},
                          {"batch": [4096, 32768], "features": [512, 2048, 8192]}],
                "mode": ["forward", "backward", "backward_only"]},
        "smoke": {"sizes": {"batch": [3], "features": [7]}},
    },
    axes=("features", "batch"),
    roofline=("copy_bandwidth", {"forward": 1.0, "backward": 1.0, "backward_only": 1.0}),
    claims=(
        {"text": "the Jacobian backward is about 2000x slower than the vector formula at B=32, N=512 "
                 "(seed 003: 65.1 ms against 31.9 us in NumPy)",
         "kind": "time_ratio", "mode": "backward_only", "sizes": {"batch": 32, "features": 512},
         "numerator": "jacobian", "denominator": "vector", "expected": "~2000x"},
        {"text": "the fused Triton kernels move their bytes at >= 80% of the measured copy bandwidth "
                 "(issue 7; best cell of the sweep)",
         "kind": "ceiling_fraction", "variant": "triton", "modes": ["forward", "backward_only"],
         "expected": ">= 0.8"},
    ),
)

PROBLEMS = [layer.problem(LAYER)]


def softmax(x: torch.Tensor, *, backend: str = "auto", config: str = "default") -> torch.Tensor:
    """y = softmax(x, dim=-1) for x [batch, features], differentiable, computed by `backend`."""
    return layer.apply(LAYER, x, backend=backend, config=config)
