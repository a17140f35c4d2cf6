"""Two-layer ReLU MLP and its backward pass (../shared/seeds/001), as a harness problem.

    z   = x W0           x [batch, d_model], W0 [d_model, d_ff]     z [batch, d_ff]
    h   = relu(z)
    out = h W1           W1 [d_ff, d_model]                         out [batch, d_model]

Backward, from g = dL/dout (the seed's 0.5 sum(out^2) loss is g = out):

    dW1 = h^T g,   dh = g W1^T,   dz = dh 1[z > 0],   dW0 = x^T dz,   dx = dz W0^T

Six matrix products: the backward does twice the forward's flops (seed 001). What a
backend keeps between the passes is its choice: the seed's manual version caches z and
h; recomputing h = relu(z) in the backward keeps only z. The seed's rule of thumb is
that training takes about 3-4x the memory of inference; the report checks it on the
peak memory of forward (inference, no_grad) and forward + backward, inputs included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from harness import layer

_FLOPS_PER_BDF = {"forward": 4, "backward": 12, "backward_only": 8}


def work(sizes: Mapping[str, int], dtype: torch.dtype, mode: str) -> float:
    """Flops of the matrix products in one call of `mode` (2 per multiply-add)."""
    return float(_FLOPS_PER_BDF[mode] * sizes["batch"] * sizes["d_model"] * sizes["d_ff"])


def _values(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Unit-variance activations: weights scaled by 1/sqrt(fan_in)."""
    scale = 1.0 if name == "x" else 1.0 / math.sqrt(shape[0])
    return scale * torch.randn(shape, generator=gen, dtype=torch.float64)


LAYER = layer.Layer(
    name="mlp",
    summary="two-layer ReLU MLP out = relu(x W0) W1 and its backward pass (seed 001)",
    inputs={"x": ("batch", "d_model"), "W0": ("d_model", "d_ff"), "W1": ("d_ff", "d_model")},
    outputs={"out": ("batch", "d_model")},
    cases=[
        ("B=1, d=1, f=1", {"batch": 1, "d_model": 1, "d_ff": 1}),
        ("B=16, d=64, f=32 (seed)", {"batch": 16, "d_model": 64, "d_ff": 32}),
        ("B=33, d=17, f=70", {"batch": 33, "d_model": 17, "d_ff": 70}),
    ],
    cuda_cases=[("B=512, d=256, f=1024", {"batch": 512, "d_model": 256, "d_ff": 1024})],
    work=work,
    work_unit="flops",
    values=_values,
    slack=layer.absolute_slack("mlp", depth=2),
    grids={
        "cpu": {"sizes": {"batch": [64, 512], "d_model": [256], "d_ff": [1024]},
                "mode": ["forward", "backward", "backward_only"]},
        "gpu": {"sizes": {"batch": [1024, 8192, 32768], "d_model": [1024], "d_ff": [4096]},
                "mode": ["forward", "backward", "backward_only"]},
        "smoke": {"sizes": {"batch": [4], "d_model": [8], "d_ff": [16]}},
    },
    axes=("batch", "d_ff"),
    claims=(
        {"text": "training memory is about 3-4x inference memory (seed 001): peak of forward + backward "
                 "over peak of forward under no_grad, inputs and weights included",
         "kind": "mode_ratio", "value": "memory", "numerator_mode": "backward", "denominator_mode": "forward",
         "expected": "3-4x"},
        {"text": "the backward pass costs about twice the forward's flops (seed 001): time of the backward "
                 "alone over the forward's",
         "kind": "mode_ratio", "value": "time", "numerator_mode": "backward_only", "denominator_mode": "forward",
         "expected": "~2x"},
    ),
)

PROBLEMS = [layer.problem(LAYER)]


def mlp(x: torch.Tensor, W0: torch.Tensor, W1: torch.Tensor, *, backend: str = "auto",
        config: str = "default") -> torch.Tensor:
    """out = relu(x W0) W1 for x [batch, d_model], W0 [d_model, d_ff], W1 [d_ff, d_model]."""
    return layer.apply(LAYER, x, W0, W1, backend=backend, config=config)
