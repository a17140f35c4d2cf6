"""Properties of every layer problem (harness/layer.py), run for each registered backend variant.

A new layer problem, or a new backend of one, is covered with no edit here: the tests
parametrize over `harness.layer.names()` and the registry. Inputs come from
properties/strategies.py; failures print the LayerCase that reproduces them.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

from harness import buffers, layer, registry, tolerance, verify
from harness.errors import UnsupportedError
from harness.pytest_plugin import variant_params
from properties.strategies import LayerCase, dtypes, layer_cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`layer_variant`: every (backend, config, device) of every layer problem."""
    if "layer_variant" in metafunc.fixturenames:
        devices = metafunc.config.getoption("--device")
        params = [p for name in layer.names() for p in variant_params(name, devices)]
        metafunc.parametrize("layer_variant", [pytest.param(p.values[0], id=f"{p.values[0][0].problem}-{p.id}",
                                                            marks=p.marks) for p in params])


def _cases(backend) -> st.SearchStrategy[LayerCase]:
    return layer_cases(backend.problem, dtype_names=dtypes(backend.dtypes))


def _runnable(backend, config, case: LayerCase, device) -> LayerCase:
    try:
        registry.check_runnable(backend, config, dict(case.sizes), case.torch_dtype, device)
    except UnsupportedError as exc:
        pytest.fail(f"{backend.name} refused a case inside its declared limits: {exc}")
    return case


def _judge(variant, case: LayerCase, outputs, inputs) -> None:
    backend, config, device = variant
    problem = registry.problem(backend.problem)
    oracle, reference, slack = verify.ground_truth(problem, inputs, case.torch_dtype)
    tolerance.assert_within(outputs, oracle, reference, case.torch_dtype,
                            f"{registry.variant_name(backend, config)} on {device}, {case}", slack)


@given(data=st.data())
def test_outputs_and_gradients_match_the_float64_oracle(layer_variant, data):
    """y and every input gradient within the tolerance policy; NaN exactly where the oracle has it."""
    backend, config, device = layer_variant
    case = _runnable(backend, config, data.draw(_cases(backend), label="case"), device)
    inputs = case.tensors(device)
    with buffers.poisoned():
        outputs = registry.problem(backend.problem).prepare(backend, config, inputs, "backward")()
    _judge(layer_variant, case, outputs, inputs)


@settings(max_examples=10)
@given(data=st.data())
def test_gradient_of_one_input_alone(layer_variant, data):
    """With only one input requiring grad, its gradient is the same and the others stay None."""
    backend, config, device = layer_variant
    spec = layer.get(backend.problem)
    case = _runnable(backend, config, data.draw(_cases(backend).filter(lambda c: c.kind == "normal")), device)
    inputs = case.tensors(device)
    full = registry.problem(backend.problem).prepare(backend, config, inputs, "backward")()
    names = list(spec.inputs)
    chosen = data.draw(st.sampled_from(names), label="input requiring grad")
    note(f"only {chosen} requires grad")
    leaves = [inputs[n].detach().requires_grad_(n == chosen) for n in names]
    outputs = layer.apply(spec, *leaves, backend=backend.name, config=config)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    torch.autograd.backward(outputs, [inputs[f"grad_{o}"] for o in spec.outputs])
    for name, leaf in zip(names, leaves, strict=True):
        if name == chosen:
            torch.testing.assert_close(leaf.grad, full[layer.grad_name(name)], equal_nan=True)
        else:
            assert leaf.grad is None


@settings(max_examples=10)
@given(data=st.data())
def test_backward_alone_matches_forward_plus_backward(layer_variant, data):
    """The backward_only mode the benchmarks time computes the same gradients."""
    backend, config, device = layer_variant
    case = _runnable(backend, config, data.draw(_cases(backend).filter(lambda c: c.kind == "normal")), device)
    inputs = case.tensors(device)
    problem = registry.problem(backend.problem)
    both = problem.prepare(backend, config, inputs, "backward")()
    alone = problem.prepare(backend, config, inputs, "backward_only")()
    for name, grad in alone.items():
        torch.testing.assert_close(grad, both[name], equal_nan=True)
