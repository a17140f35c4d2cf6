"""Layer backward passes of ../shared/seeds/002 as harness problems: Linear, BatchNorm1d + ReLU,
Conv1d (kernel size 1), max over the last axis, bmm.

    linear          y = x W^T + b             x [batch, in_features], W [out_features, in_features], b [out_features]
                    dW = dy^T x,  db = sum_batch dy,  dx = dy W
    batchnorm_relu  xhat = (x - mu) rstd,  rstd = 1 / sqrt(var + eps),  y = relu(W xhat + b)
                    x [batch, channels(, length)], W, b [channels]; mu and the biased var over every
                    axis but channels (training-mode statistics), eps = 1e-5. With g = dy 1[y > 0]
                    and M = batch x length values per channel:
                    db = sum g,  dW = sum g xhat,  dx = W rstd (g - db / M - xhat dW / M)
                    (the seed's dL/dvar and dL/dmu collapsed; its dL/dmu drops a term that is
                    zero because sum (x - mu) = 0)
    conv1d          y[n] = W x[n] + b         x [batch, in_channels, length], W [out_channels, in_channels]
                    dW = sum_n dy[n] x[n]^T,  db = sum_{n,l} dy,  dx[n] = W^T dy[n]
    max             y = max_l x[..., l]       x [batch, channels, length], y [batch, channels]
                    dx = dy at the first index attaining the max, 0 elsewhere (torch.max's tie
                    convention; a NaN counts as the max, so it propagates)
    bmm             y = x t                   x [batch, length, channels], t [batch, channels, out_channels]
                    dx = dy t^T,  dt = x^T dy  (the seed writes bmm(dy, t), right only for symmetric t)

Linear, Conv1d, bmm count flops; BatchNorm1d and max are memory-bound and count the
bytes a one-read, one-write implementation moves, against the measured copy bandwidth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from harness import layer
from harness.errors import InputError

EPS = 1e-5
MODES = ["forward", "backward", "backward_only"]
_MATMUL_FLOPS = {"forward": 2, "backward": 6, "backward_only": 4}      # per multiply-add of the forward
_COPY = ("copy_bandwidth", {"forward": 1.0, "backward": 1.0, "backward_only": 1.0})


def _fan_in_scaled(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Weights scaled by 1/sqrt(fan_in) (their last axis), everything else standard normal."""
    scale = 1.0 / math.sqrt(shape[-1]) if name == "W" else 1.0
    return scale * torch.randn(shape, generator=gen, dtype=torch.float64)


def _matmul_work(*sizes_names: str):
    def work(sizes: Mapping[str, int], dtype: torch.dtype, mode: str) -> float:
        return float(_MATMUL_FLOPS[mode] * math.prod(sizes[s] for s in sizes_names))
    return work


LINEAR = layer.Layer(
    name="linear",
    summary="Linear y = x W^T + b and its backward pass (seed 002)",
    inputs={"x": ("batch", "in_features"), "W": ("out_features", "in_features"), "b": ("out_features",)},
    outputs={"y": ("batch", "out_features")},
    cases=[("1x1x1", {"batch": 1, "in_features": 1, "out_features": 1}),
           ("odd", {"batch": 33, "in_features": 17, "out_features": 9}),
           ("B=64, 256 -> 128", {"batch": 64, "in_features": 256, "out_features": 128})],
    work=_matmul_work("batch", "in_features", "out_features"),
    work_unit="flops",
    values=_fan_in_scaled,
    slack=layer.absolute_slack("linear"),
    grids={"cpu": {"sizes": {"batch": [64, 1024], "in_features": [512], "out_features": [512]}, "mode": MODES},
           "gpu": {"sizes": {"batch": [1024, 16384], "in_features": [4096], "out_features": [4096]}, "mode": MODES},
           "smoke": {"sizes": {"batch": [3], "in_features": [5], "out_features": [4]}}},
    axes=("batch", "in_features"),
)


def _bn_values(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Per-channel offsets in [-3, 3] and scales in [e^-2, e^2]: statistics stay well conditioned
    (|mu| / sigma <= 3 e^2), as after a preceding layer; W and b standard normal."""
    if name != "x":
        return torch.randn(shape, generator=gen, dtype=torch.float64)
    channel_shape = (1, shape[1]) + (1,) * (len(shape) - 2)
    offset = 6 * torch.rand(channel_shape, generator=gen, dtype=torch.float64) - 3
    scale = torch.exp(4 * torch.rand(channel_shape, generator=gen, dtype=torch.float64) - 2)
    return offset + scale * torch.randn(shape, generator=gen, dtype=torch.float64)


def _bn_check(sizes: Mapping[str, int]) -> None:
    if sizes["batch"] * sizes.get("length", 1) < 2:
        raise InputError(f"batchnorm_relu needs batch x length >= 2 values per channel for training-mode "
                         f"statistics, got batch = {sizes['batch']}, length = {sizes.get('length', 1)}")


def _bn_slack(inputs: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """First-order rounding allowances of BatchNorm1d + ReLU (harness/tolerance.py), in float64.

    xhat = (x - mu) rstd loses u (|x| + |mu|) rstd to the subtraction and u |xhat| R to rstd,
    where R = mean((|x| + |mu|) |x - mu|) / var bounds the relative error of var; everything
    downstream (y, the sums dW and db, and dx, a difference of three terms) inherits those
    and adds u of its own terms' magnitudes. Small batches with nearly equal values are where
    a reference happens to be exact and a correct kernel is not.
    """
    u = layer.unit_roundoff(dtype)
    x, W, b, dy = (inputs[k].double() for k in ("x", "W", "b", "grad_y"))
    dims = [0, 2] if x.dim() == 3 else [0]
    view = (1, -1) + (1,) * (x.dim() - 2)
    count = x.numel() // x.shape[1]
    mu = x.mean(dims, keepdim=True)
    centered = x - mu
    var = (centered * centered).mean(dims, keepdim=True)
    rstd = torch.rsqrt(var + EPS)
    xhat = centered * rstd
    relative_var = ((x.abs() + mu.abs()) * centered.abs()).mean(dims, keepdim=True) / (var + EPS)
    e_xhat = u * (rstd * (x.abs() + mu.abs()) + xhat.abs() * (1 + relative_var))
    w, bias = W.view(view).abs(), b.view(view).abs()
    pre = xhat * W.view(view) + b.view(view)
    g = torch.where(pre <= 0, 0.0, dy).abs()
    d_dW = (g * e_xhat).sum(dims) + u * (g * xhat.abs()).sum(dims)
    d_db = u * g.sum(dims)
    dW, db = (g * xhat.abs()).sum(dims, keepdim=True), g.sum(dims, keepdim=True)
    d_dx = w * rstd * (u * (g + db / count + xhat.abs() * dW / count) + e_xhat * dW / count
                       + xhat.abs() * d_dW.view(view) / count + d_db.view(view) / count
                       + u * relative_var * (g + db / count + xhat.abs() * dW / count))
    return {"y": (w * e_xhat + u * (w * xhat.abs() + bias)).nan_to_num(0.0),
            "dx": d_dx.nan_to_num(0.0), "dW": d_dW.nan_to_num(0.0), "db": d_db.nan_to_num(0.0)}


def _elementwise_bytes(forward: int, backward_only: int, *sizes_names: str):
    """Bytes of `forward` (and `backward_only`) element moves per element of the named sizes."""
    moves = {"forward": forward, "backward": forward + backward_only, "backward_only": backward_only}

    def work(sizes: Mapping[str, int], dtype: torch.dtype, mode: str) -> float:
        return float(moves[mode] * math.prod(sizes.get(s, 1) for s in sizes_names) * dtype.itemsize)
    return work


BATCHNORM_RELU = layer.Layer(
    name="batchnorm_relu",
    summary="BatchNorm1d (training-mode statistics) with the ReLU fused in, and its backward (seed 002)",
    inputs={"x": [("batch", "channels", "length"), ("batch", "channels")], "W": ("channels",),
            "b": ("channels",)},
    outputs={"y": [("batch", "channels", "length"), ("batch", "channels")]},
    cases=[("N=2, C=1", {"batch": 2, "channels": 1}),
           ("N=33, C=7", {"batch": 33, "channels": 7}),
           ("N=1, C=3, L=5", {"batch": 1, "channels": 3, "length": 5}),
           ("N=16, C=32, L=50", {"batch": 16, "channels": 32, "length": 50})],
    cuda_cases=[("N=256, C=64, L=1000", {"batch": 256, "channels": 64, "length": 1000})],
    # read x, write y; backward: read x and dy, write dx (the mask recomputed from x)
    work=_elementwise_bytes(2, 3, "batch", "channels", "length"),
    work_unit="bytes",
    values=_bn_values,
    check=_bn_check,
    slack=lambda inputs, dtype: _bn_slack(inputs, dtype),
    # torch's CPU batch_norm accumulates float32 statistics in float64, so it is not the
    # same-precision computation the tolerance policy compares with; the seed's formulas
    # in plain float32 torch ops are.
    tolerance_reference="manual",
    grids={"cpu": {"sizes": {"batch": [32, 256], "channels": [64], "length": [128]}, "mode": MODES},
           "gpu": {"sizes": {"batch": [64, 512, 4096], "channels": [256], "length": [256]}, "mode": MODES},
           "smoke": {"sizes": {"batch": [4], "channels": [3], "length": [5]}}},
    axes=("batch", "length"),
    roofline=_COPY,
    claims=({"text": "a fused kernel moves its bytes close to the measured copy bandwidth (best cell)",
             "kind": "ceiling_fraction", "variant": "triton", "modes": ["forward", "backward_only"],
             "expected": "close to 1"},),
)

CONV1D = layer.Layer(
    name="conv1d",
    summary="Conv1d with kernel size 1, y = W x + b per position, and its backward (seed 002)",
    inputs={"x": ("batch", "in_channels", "length"), "W": ("out_channels", "in_channels"),
            "b": ("out_channels",)},
    outputs={"y": ("batch", "out_channels", "length")},
    cases=[("1x1x1x1", {"batch": 1, "in_channels": 1, "out_channels": 1, "length": 1}),
           ("odd", {"batch": 3, "in_channels": 7, "out_channels": 5, "length": 11}),
           ("N=8, 64 -> 32, L=100", {"batch": 8, "in_channels": 64, "out_channels": 32, "length": 100})],
    work=_matmul_work("batch", "in_channels", "out_channels", "length"),
    work_unit="flops",
    values=_fan_in_scaled,
    slack=layer.absolute_slack("conv1d"),
    grids={"cpu": {"sizes": {"batch": [8, 64], "in_channels": [128], "out_channels": [128], "length": [256]},
                   "mode": MODES},
           "gpu": {"sizes": {"batch": [64, 512], "in_channels": [512], "out_channels": [512], "length": [1024]},
                   "mode": MODES},
           "smoke": {"sizes": {"batch": [2], "in_channels": [3], "out_channels": [4], "length": [5]}}},
    axes=("batch", "in_channels"),
)

MAX = layer.Layer(
    name="max",
    summary="max over the last axis; the gradient goes to the first maximal index (seed 002)",
    inputs={"x": ("batch", "channels", "length")},
    outputs={"y": ("batch", "channels")},
    cases=[("1x1x1", {"batch": 1, "channels": 1, "length": 1}),
           ("odd", {"batch": 3, "channels": 5, "length": 7}),
           ("N=16, C=64, L=300", {"batch": 16, "channels": 64, "length": 300})],
    # read x, write y (1/length of x); backward: write dx (dy is 1/length of it)
    work=_elementwise_bytes(1, 1, "batch", "channels", "length"),
    work_unit="bytes",
    grids={"cpu": {"sizes": {"batch": [16, 128], "channels": [64], "length": [512]}, "mode": MODES},
           "gpu": {"sizes": {"batch": [128, 1024], "channels": [256], "length": [1024]}, "mode": MODES},
           "smoke": {"sizes": {"batch": [2], "channels": [3], "length": [5]}}},
    axes=("batch", "length"),
    roofline=_COPY,
)

BMM = layer.Layer(
    name="bmm",
    summary="batched matmul y = x t and its backward, dx = dy t^T, dt = x^T dy (seed 002)",
    inputs={"x": ("batch", "length", "channels"), "t": ("batch", "channels", "out_channels")},
    outputs={"y": ("batch", "length", "out_channels")},
    cases=[("1x1x1x1", {"batch": 1, "length": 1, "channels": 1, "out_channels": 1}),
           ("odd, t not square", {"batch": 3, "length": 5, "channels": 7, "out_channels": 4}),
           ("N=8, L=64, C=64", {"batch": 8, "length": 64, "channels": 64, "out_channels": 64})],
    work=_matmul_work("batch", "length", "channels", "out_channels"),
    work_unit="flops",
    values=lambda name, shape, gen: torch.randn(shape, generator=gen, dtype=torch.float64)
    / (math.sqrt(shape[1]) if name == "t" else 1.0),
    slack=layer.absolute_slack("bmm"),
    grids={"cpu": {"sizes": {"batch": [8, 64], "length": [128], "channels": [128], "out_channels": [128]},
                   "mode": MODES},
           "gpu": {"sizes": {"batch": [64, 512], "length": [512], "channels": [512], "out_channels": [512]},
                   "mode": MODES},
           "smoke": {"sizes": {"batch": [2], "length": [3], "channels": [4], "out_channels": [4]}}},
    axes=("batch", "length"),
)

PROBLEMS = [layer.problem(spec) for spec in (LINEAR, BATCHNORM_RELU, CONV1D, MAX, BMM)]
