"""The layer contract (harness/layer.py): clear refusals before any kernel runs, the max tie
convention, double backward, non-contiguous inputs; for every layer problem and backend."""

from __future__ import annotations

import pytest
import torch

from harness import InputError, layer, registry
from harness.problems.layers import MAX
from harness.problems.mlp import mlp
from harness.problems.softmax import softmax


def _inputs(name: str, dtype=torch.float32) -> dict[str, torch.Tensor]:
    spec = layer.get(name)
    sizes = dict(next(iter(spec.cases))[1])
    sizes = {k: max(v, 2) for k, v in sizes.items()}
    return {k: v for k, v in layer.make_inputs(spec, sizes, dtype, "cpu").items() if k in spec.inputs}


LAYERS = layer.names()
CPU_BACKENDS = [(name, b.name) for name in LAYERS for b in registry.backends(name)
                if registry.unavailable_reason(b, "default", "cpu") is None]


@pytest.mark.parametrize("name", LAYERS)
def test_mismatched_sizes_name_both_arguments(name):
    spec = layer.get(name)
    inputs = _inputs(name)
    names = list(spec.inputs)
    symbols = {n: next(s for s in (spec.inputs[n] if isinstance(spec.inputs[n], list) else [spec.inputs[n]])
                        if len(s) == inputs[n].dim()) for n in names}
    shared = [(n, axis) for n in names for axis, sym in enumerate(symbols[n])
              if sum(sym in other for other in symbols.values()) > 1]
    assert shared or len(names) == 1
    for arg, axis in shared:
        shape = list(inputs[arg].shape)
        shape[axis] += 1
        bad = [torch.randn(shape) if n == arg else inputs[n] for n in names]
        names_it = rf"({arg}\.shape\[{axis}\] = \d+ but \w+\.shape)|(but {arg}\.shape\[{axis}\])"
        with pytest.raises(InputError, match=names_it):
            layer.apply(spec, *bad, backend=spec.reference)


@pytest.mark.parametrize("name", LAYERS)
def test_wrong_rank_dtype_and_mixed_dtypes_are_refused(name):
    spec = layer.get(name)
    inputs = _inputs(name)
    names = list(spec.inputs)
    first = names[0]
    with pytest.raises(InputError, match=rf"{first} must have shape"):
        layer.apply(spec, inputs[first][None, None], *[inputs[n] for n in names[1:]])
    with pytest.raises(InputError, match=rf"{first} has dtype int64; allowed: float64, float32"):
        layer.apply(spec, inputs[first].long(), *[inputs[n] for n in names[1:]])
    if len(names) > 1:
        with pytest.raises(InputError, match=rf"{names[1]} has dtype float64 but {first} has float32"):
            layer.apply(spec, inputs[first], inputs[names[1]].double(), *[inputs[n] for n in names[2:]])
    with pytest.raises(InputError, match=r"must be a torch.Tensor"):
        layer.apply(spec, inputs[first].tolist(), *[inputs[n] for n in names[1:]])


def test_empty_sizes_and_single_value_batch_norm_are_refused():
    with pytest.raises(InputError, match=r"x.shape\[0\] = 0 \(batch\) must be >= 1"):
        softmax(torch.randn(0, 4))
    spec = layer.get("batchnorm_relu")
    with pytest.raises(InputError, match=r"batch x length >= 2 values per channel"):
        layer.apply(spec, torch.randn(1, 3), torch.randn(3), torch.randn(3))


@pytest.mark.parametrize(("name", "backend"), CPU_BACKENDS)
def test_double_backward_raises_and_strided_inputs_work(name, backend):
    spec = layer.get(name)
    inputs = _inputs(name)
    strided = [torch.stack([t, t], -1)[..., 0] for t in inputs.values()]   # same values, not contiguous
    assert not strided[0].is_contiguous() or strided[0].numel() == 1
    leaves = [t.detach().requires_grad_() for t in strided]
    outputs = layer.apply(spec, *leaves, backend=backend)
    reference = layer.apply(spec, *inputs.values(), backend=spec.reference)
    torch.testing.assert_close(outputs, reference)
    grads = torch.autograd.grad(outputs.sum(), leaves, create_graph=True)
    if backend != spec.reference:   # harness-wrapped backward: once differentiable
        with pytest.raises(RuntimeError, match=r"once_differentiable|does not require grad"):
            torch.autograd.grad(sum(g.sum() for g in grads), leaves)


@pytest.mark.parametrize("backend", [b.name for b in registry.backends("max")
                                     if registry.unavailable_reason(b, "default", "cpu") is None])
def test_max_sends_the_gradient_to_the_first_tie(backend):
    x = torch.tensor([[[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]]], requires_grad=True)
    y = layer.apply(MAX, x, backend=backend)
    y.backward(torch.tensor([[10.0, 20.0]]))
    assert y.tolist() == [[3.0, 2.0]]
    assert x.grad.tolist() == [[[0.0, 10.0, 0.0, 0.0], [20.0, 0.0, 0.0, 0.0]]]


def test_public_functions_match_torch():
    x = torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(softmax(x, backend="vector"), torch.softmax(x, -1))
    x, W0, W1 = torch.randn(3, 5), torch.randn(5, 6), torch.randn(6, 5)
    torch.testing.assert_close(mlp(x, W0, W1, backend="recompute"), torch.relu(x @ W0) @ W1)
