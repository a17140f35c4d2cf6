"""The layer checks can fail: each mutant carries one realistic backward-pass bug, and the
oracle comparison the properties use (with its error-analysis slack) must reject it, while
the correct formula on the same inputs passes."""

from __future__ import annotations

import pytest
import torch

from harness import Backend, layer, registry, tolerance, verify
from harness.layer import DTYPES
from properties.strategies import LayerCase


def _softmax_forward(x):
    y = torch.softmax(x.float() if x.dtype != torch.float64 else x, -1)
    return y.to(x.dtype), (y,)


def _softmax(bug):
    def backward(saved, grads, needs):
        (y,), (dy,) = saved, grads
        dy = dy.to(y.dtype)
        dx = dy * y if bug else (dy - (dy * y).sum(-1, keepdim=True)) * y     # bug: forgets the dot term
        return (dx.to(grads[0].dtype),)
    return {"forward": _softmax_forward, "backward": backward}


def _softmax_unstable(bug):
    def forward(x):
        e = torch.exp(x) if bug else torch.exp(x - x.amax(-1, keepdim=True))  # bug: no max subtracted
        y = e / e.sum(-1, keepdim=True)
        return y, (y,)
    return {"forward": forward, "backward": _softmax(False)["backward"]}


def _linear(bug):
    def forward(x, W, b):
        return x @ W.T + b, (x, W)

    def backward(saved, grads, needs):
        (x, W), (dy,) = saved, grads
        return dy @ W, dy.T @ x, dy.mean(0) if bug else dy.sum(0)           # bug: mean for the bias
    return {"forward": forward, "backward": backward}


def _max(bug):
    def forward(x):
        y = x.max(-1).values
        hit = (x == y[..., None]).to(torch.int64)
        positions = torch.arange(x.shape[-1])
        index = (hit * positions).argmax(-1) if bug else torch.where(hit.bool(), positions, x.shape[-1]).amin(-1)
        return y, (index, torch.tensor(x.shape))                              # bug: last tie, not first

    def backward(saved, grads, needs):
        (index, shape), (dy,) = saved, grads
        return (torch.zeros(tuple(shape.tolist()), dtype=dy.dtype).scatter_(-1, index[..., None], dy[..., None]),)
    return {"forward": forward, "backward": backward}


def _mlp(bug):
    def forward(x, W0, W1):
        z = x @ W0
        return torch.relu(z) @ W1, (x, W0, W1, z)

    def backward(saved, grads, needs):
        (x, W0, W1, z), (g,) = saved, grads
        mask = z >= 0 if bug else z > 0                                       # bug: ReLU'(0) = 1
        dz = (g @ W1.T) * mask
        return dz @ W0.T, x.T @ dz, torch.relu(z).T @ g
    return {"forward": forward, "backward": backward}


def _batchnorm(bug):
    from backends.layers_manual import KERNELS

    forward, backward = KERNELS["batchnorm_relu"]

    def mutated(saved, grads, needs):
        rstd, _, _, W, y = saved
        dx, dW, db = backward(saved, grads, needs)
        if bug:   # drops the mean term db / M of dx
            view = (1, -1) + (1,) * (y.dim() - 2)
            dx = dx + (W.to(y.dtype).view(view) * rstd * db.to(y.dtype).view(view) / (y.numel() // y.shape[1]))
        return dx.to(grads[0].dtype), dW, db
    return {"forward": forward, "backward": mutated}


MUTANTS = [
    ("softmax", _softmax, LayerCase("softmax", (("batch", 4), ("features", 9)), seed=1)),
    ("softmax", _softmax_unstable, LayerCase("softmax", (("batch", 3), ("features", 5)), kind="wide", seed=2)),
    ("linear", _linear, LayerCase("linear", (("batch", 5), ("in_features", 4), ("out_features", 3)), seed=3)),
    ("max", _max, LayerCase("max", (("batch", 4), ("channels", 3), ("length", 6)), kind="integer", seed=4)),
    ("mlp", _mlp, LayerCase("mlp", (("batch", 6), ("d_model", 4), ("d_ff", 5)), kind="integer", seed=5)),
    ("batchnorm_relu", _batchnorm, LayerCase("batchnorm_relu", (("batch", 8), ("channels", 3)), seed=6)),
]


def _verdict(problem: str, kernels, case: LayerCase, monkeypatch) -> list[tolerance.Check]:
    backend = Backend(name="mutant", problem=problem, kernels=kernels, dtypes=DTYPES)
    monkeypatch.setitem(registry._BACKENDS, (problem, "mutant"), backend)
    spec = registry.problem(problem)
    inputs = case.tensors("cpu")
    outputs = spec.prepare(backend, "default", inputs, "backward")()
    oracle, reference, slack = verify.ground_truth(spec, inputs, case.torch_dtype)
    return tolerance.check(outputs, oracle, reference, case.torch_dtype, slack)


@pytest.mark.parametrize(("problem", "make", "case"), MUTANTS, ids=[f"{m[0]}-{m[1].__name__}" for m in MUTANTS])
def test_each_mutant_is_caught_and_its_fix_passes(problem, make, case, monkeypatch):
    assert all(c.ok for c in _verdict(problem, make(False), case, monkeypatch)), "the correct formula must pass"
    failed = [c for c in _verdict(problem, make(True), case, monkeypatch) if not c.ok]
    assert failed, f"{problem}: the mutant {make.__name__} passed the oracle comparison"


def test_every_layer_problem_has_a_mutant():
    assert {m[0] for m in MUTANTS} >= set(layer.names()) - {"conv1d", "bmm"}   # both are linear's algebra
