"""Layer problems: an op y = f(inputs) and its backward pass, checked through the input gradients.

The seeds' other backward passes (../shared/seeds/001-003: softmax, a two-layer MLP,
Linear, BatchNorm1d + ReLU, Conv1d, max, bmm) share one kind of contract, written
once here; each problem module (harness/problems/softmax.py, mlp.py, layers.py)
declares a `Layer` and turns it into a registry Problem with `problem()`.

A `Layer` names its inputs and outputs with symbolic shapes, e.g. Linear's
``{"x": ("batch", "in_features"), "W": ("out_features", "in_features"), ...}``;
validation binds the symbols to sizes and refuses any mismatch by naming both
arguments, before any kernel runs. Every input is differentiable and floating
point (float64, float32, float16, bfloat16), all of one dtype and device.

A backend of a layer problem provides either

* ``autograd(*inputs, **options) -> outputs``, which torch autograd differentiates
  (the float64 reference, and baselines such as the softmax Jacobian), or
* ``forward(*inputs, **options) -> (outputs, saved)`` and
  ``backward(saved, grad_outputs, needs, **options) -> grads`` (one per input, None
  where ``needs`` is False), which the harness wraps in one autograd Function:
  what `forward` saves is what training holds between the passes, so a backend's
  choice of cached activations shows in its peak memory.

Backends receive contiguous tensors and return outputs and gradients in the input
dtype; half-precision inputs accumulate in float32 or better. Gradients of an
input named ``x`` are reported as ``dx``; double backward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from harness import registry
from harness.errors import InputError

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
KERNEL_SETS = ({"autograd"}, {"forward", "backward"})

Shape = tuple[str, ...]


@dataclass(frozen=True)
class Layer:
    """One layer problem: its signature and how the harness exercises it.

    inputs / outputs: name -> symbolic shape, or a list of alternative shapes (the
        first whose symbols are all in `sizes` is used to make inputs), in call order.
    values: ``values(name, shape, generator) -> float64 tensor`` for make_inputs
        (default: standard normal); problems that need well-conditioned inputs say so.
    cases: size classes verified on every device; cuda_cases: added on CUDA.
    work, work_unit, grids, axes, roofline, claims: as in registry.Problem.
    reference / tolerance_reference / slack: as in registry.Problem; `absolute_slack`
        gives the slack of ops built from products, sums and ReLUs.
    check: ``check(sizes)`` raising InputError for sizes the op itself refuses (beyond
        every size being >= 1, which validation always requires).
    """

    name: str
    summary: str
    inputs: Mapping[str, Shape | list[Shape]]
    outputs: Mapping[str, Shape | list[Shape]]
    cases: Sequence[tuple[str, dict[str, int]]]
    work: Callable[[Mapping[str, int], torch.dtype, str], float]
    work_unit: str
    cuda_cases: Sequence[tuple[str, dict[str, int]]] = ()
    values: Callable[[str, tuple[int, ...], torch.Generator], Tensor] | None = None
    grids: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    axes: tuple[str, str] = ("batch", "batch")
    roofline: tuple[str, Mapping[str, float]] | None = None
    claims: tuple[Mapping[str, Any], ...] = ()
    reference: str = "autograd"
    tolerance_reference: str | None = None
    slack: Callable[[Mapping[str, Tensor], torch.dtype], dict[str, Tensor]] | None = None
    check: Callable[[Mapping[str, int]], None] | None = None


_LAYERS: dict[str, Layer] = {}


def get(name: str) -> Layer:
    """The Layer behind a registered layer problem (KeyError if `name` is not one)."""
    registry.load()
    return _LAYERS[name]


def names() -> list[str]:
    registry.load()
    return list(_LAYERS)


# --------------------------------------------------------------------------- validation


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shapes(spec: Shape | list[Shape]) -> list[Shape]:
    return spec if isinstance(spec, list) else [spec]


def validate(layer: Layer, tensors: Sequence[Any]) -> dict[str, int]:
    """Sizes bound from the inputs' shapes; InputError naming the argument on any violation."""
    names = list(layer.inputs)
    if len(tensors) != len(names):
        raise InputError(f"{layer.name} takes {len(names)} inputs ({', '.join(names)}), got {len(tensors)}")
    first = None
    sizes: dict[str, int] = {}
    bound_by: dict[str, str] = {}
    for name, tensor in zip(names, tensors, strict=True):
        shapes = _shapes(layer.inputs[name])
        described = " or ".join(f"[{', '.join(s)}]" for s in shapes)
        if not isinstance(tensor, Tensor):
            raise InputError(f"{name} must be a torch.Tensor {described}, got {type(tensor).__name__}")
        if tensor.dtype not in DTYPES:
            raise InputError(f"{name} has dtype {_name(tensor.dtype)}; allowed: {', '.join(map(_name, DTYPES))}")
        if first is None:
            first = (name, tensor)
        elif tensor.dtype != first[1].dtype:
            raise InputError(f"{name} has dtype {_name(tensor.dtype)} but {first[0]} has "
                             f"{_name(first[1].dtype)}; they must match")
        elif tensor.device != first[1].device:
            raise InputError(f"{name} is on {tensor.device} but {first[0]} is on {first[1].device}; "
                             "they must be on one device")
        shape = next((s for s in shapes if len(s) == tensor.dim()), None)
        if shape is None:
            raise InputError(f"{name} must have shape {described}, got {tuple(tensor.shape)}")
        for axis, (symbol, extent) in enumerate(zip(shape, tensor.shape, strict=True)):
            if symbol in sizes and sizes[symbol] != extent:
                raise InputError(f"{name}.shape[{axis}] = {extent} but {bound_by[symbol]} = {sizes[symbol]}; "
                                 f"both are {symbol}")
            if extent < 1:
                raise InputError(f"{name}.shape[{axis}] = {extent} ({symbol}) must be >= 1")
            sizes.setdefault(symbol, extent)
            bound_by.setdefault(symbol, f"{name}.shape[{axis}]")
    if layer.check:
        layer.check(sizes)
    return sizes


# --------------------------------------------------------------------------- autograd


class _Layer(torch.autograd.Function):
    """Runs a backend's forward, saves what it chose, and calls its backward once."""

    @staticmethod
    def forward(ctx, kernels, options, *inputs):
        outputs, saved = kernels["forward"](*inputs, **options)
        ctx.kernels, ctx.options = kernels, options
        ctx.save_for_backward(*saved)
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs):
        needs = ctx.needs_input_grad[2:]
        grads = ctx.kernels["backward"](ctx.saved_tensors, grad_outputs, needs, **ctx.options)
        return (None, None, *(g if want else None for g, want in zip(grads, needs, strict=True)))


def apply(layer: Layer, *inputs: Tensor, backend: str = "auto", config: str = "default", **overrides: Any):
    """The layer's outputs (a tensor, or a tuple if it has several) computed by `backend`.

    Validation and the backend's limits are checked before any kernel runs.
    """
    sizes = validate(layer, inputs)
    chosen = registry.resolve(layer.name, backend, config, sizes, inputs[0].dtype, inputs[0].device)
    options = {**chosen.configs[config], **overrides}
    inputs = tuple(t.contiguous() for t in inputs)
    if "autograd" in chosen.kernels:
        return chosen.kernels["autograd"](*inputs, **options)
    return _Layer.apply(chosen.kernels, options, *inputs)


def check_backend(layer: Layer) -> Callable[[registry.Backend], None]:
    def check(backend: registry.Backend) -> None:
        if not any(kernels <= set(backend.kernels) for kernels in KERNEL_SETS):
            raise ValueError(f"backend {backend.name!r} of {layer.name} must provide 'autograd', or 'forward' "
                             f"and 'backward'; it provides {sorted(backend.kernels)}")

    return check


# --------------------------------------------------------------------------- harness plumbing


def grad_name(name: str) -> str:
    return f"d{name}"


def make_inputs(layer: Layer, sizes: Mapping[str, int], dtype: torch.dtype, device: str | torch.device,
                seed: int = 0) -> dict[str, Tensor]:
    """Inputs drawn in float64 from a seeded generator and rounded to dtype, plus grad_<output>."""
    gen = torch.Generator().manual_seed(seed)
    values = layer.values or (lambda name, shape, g: torch.randn(shape, generator=g, dtype=torch.float64))
    out = {name: values(name, _extent(spec, sizes, name), gen).to(dtype) for name, spec in layer.inputs.items()}
    for name, spec in layer.outputs.items():
        out[f"grad_{name}"] = torch.randn(_extent(spec, sizes, name), generator=gen, dtype=torch.float64).to(dtype)
    return {name: t.to(device) for name, t in out.items()}


def _extent(spec: Shape | list[Shape], sizes: Mapping[str, int], name: str) -> tuple[int, ...]:
    """The first of the alternative shapes whose every size is given, as numbers."""
    shape = next((s for s in _shapes(spec) if all(x in sizes for x in s)), None)
    if shape is None:
        raise KeyError(f"sizes {dict(sizes)} do not give every size of {name}: {spec}")
    return tuple(sizes[x] for x in shape)


def prepare(layer: Layer, backend: registry.Backend, config: str, inputs: Mapping[str, Tensor], mode: str):
    """A no-argument callable for one call in `mode`, returning named outputs (and gradients).

    forward: outputs under no_grad (what inference holds). backward: forward plus backward
    from fresh leaves. backward_only: the backward alone, from one forward kept alive.
    """
    tensors = [inputs[name] for name in layer.inputs]
    run = {"backend": backend.name, "config": config}

    def named(outputs) -> dict[str, Tensor]:
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return dict(zip(layer.outputs, (o.detach() for o in outputs), strict=True))

    if mode == "forward":
        def forward() -> dict[str, Tensor]:
            with torch.no_grad():
                return named(apply(layer, *tensors, **run))
        return forward
    leaves = [t.detach().requires_grad_() for t in tensors]
    grads = [inputs[f"grad_{name}"] for name in layer.outputs]
    if mode == "backward":
        def forward_backward() -> dict[str, Tensor]:
            for leaf in leaves:
                leaf.grad = None
            outputs = apply(layer, *leaves, **run)
            result = named(outputs)
            torch.autograd.backward(outputs, grads)
            return result | {grad_name(n): leaf.grad for n, leaf in zip(layer.inputs, leaves, strict=True)}
        return forward_backward
    if mode == "backward_only":
        outputs = apply(layer, *leaves, **run)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)

        def backward_only() -> dict[str, Tensor]:
            found = torch.autograd.grad(outputs, leaves, grads, retain_graph=True)
            return {grad_name(n): g for n, g in zip(layer.inputs, found, strict=True)}
        return backward_only
    raise ValueError(f"mode must be 'forward', 'backward' or 'backward_only', got {mode!r}")


def unit_roundoff(dtype: torch.dtype) -> float:
    """FLOOR_ULPS ulps of the accumulation dtype of `dtype` inputs (float32 for half precision)."""
    from harness import tolerance

    return tolerance.FLOOR_ULPS * tolerance.eps(torch.float64 if dtype == torch.float64 else torch.float32)


def absolute_slack(name: str, depth: int = 1):
    """Slack for ops built from products, sums and ReLUs (Linear, Conv1d, bmm, the MLP).

    Rounding an output that is a sum of terms moves it by about u times the sum of the
    terms' magnitudes, however much the terms cancel; running the float64 reference on
    |inputs| and |upstream gradients| computes those magnitudes for every output and
    gradient at once (each node's value there bounds the sum of |terms| at that node,
    ReLUs included). `depth` chained products each add their rounding.
    """
    def slack(inputs: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
        spec = get(name)
        magnitudes = {k: v.double().abs() for k, v in inputs.items()}
        reference = registry.backend(name, spec.reference)
        bound = prepare(spec, reference, "default", magnitudes, "backward")()
        return {k: depth * unit_roundoff(dtype) * v for k, v in bound.items()}

    return slack


def problem(layer: Layer) -> registry.Problem:
    """The registry Problem of a layer: the core sees only these fields."""
    _LAYERS[layer.name] = layer
    cases = list(layer.cases)
    cuda_cases = [*cases, *layer.cuda_cases]
    return registry.Problem(
        name=layer.name,
        summary=layer.summary,
        reference=layer.reference,
        check_backend=check_backend(layer),
        make_inputs=lambda sizes, dtype, device, seed=0: make_inputs(layer, sizes, dtype, device, seed),
        prepare=lambda backend, config, inputs, mode: prepare(layer, backend, config, inputs, mode),
        cases=lambda device: cuda_cases if torch.device(device).type == "cuda" else cases,
        work=layer.work,
        work_unit=layer.work_unit,
        modes=("forward", "backward", "backward_only"),
        grids=layer.grids,
        axes=layer.axes,
        roofline=layer.roofline,
        claims=layer.claims,
        tolerance_reference=layer.tolerance_reference,
        slack=layer.slack,
    )
