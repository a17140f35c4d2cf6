"""Every refusal: a clear error naming the argument, its value and the allowed range,
raised before any kernel runs, leaving the inputs untouched."""

from __future__ import annotations

import math

import pytest
import torch

from harness import Backend, InputError, UnsupportedError, registry
from harness.problems import sick_bide


@pytest.fixture
def spy(monkeypatch):
    """A backend that fails the test if any kernel of it runs: validation must come first."""

    def never(*args, **kwargs):
        raise AssertionError("a kernel ran on inputs that should have been refused")

    backend = Backend(
        name="spy", problem="sick_bide", kernels={"partial_state": never},
        devices=("cpu",), dtypes=(torch.float32,), limits={"n_bits": (2, 8)},
        features=frozenset({"grad"}),
    )
    monkeypatch.setitem(registry._BACKENDS, ("sick_bide", "spy"), backend)
    return backend


def good(batch=3, hidden=4, n_bits=5):
    return torch.randn(batch, hidden, n_bits), torch.randn(batch, hidden), torch.randint(0, 1 << n_bits, (batch,))


ENTRY_POINTS = {
    "loss": lambda W, r, t, **kw: sick_bide.loss(W, r, t, **kw),
    "loss_and_grad": lambda W, r, t, **kw: sick_bide.loss_and_grad(W, r, t, **kw),
}

BAD_INPUTS = [
    # (description, W, r, targets, error, message fragment)
    ("W not a tensor", [[1.0]], torch.randn(3, 4), torch.zeros(3, dtype=torch.long), InputError,
     r"W must be a torch\.Tensor"),
    ("W integer", torch.ones(3, 4, 5, dtype=torch.int32), torch.randn(3, 4), torch.zeros(3, dtype=torch.long),
     InputError, "W has dtype int32; allowed dtypes: float64, float32, float16, bfloat16"),
    ("W rank 2", torch.randn(3, 4), torch.randn(3, 4), torch.zeros(3, dtype=torch.long), InputError,
     r"W must have 3 dims \[batch, hidden, n_bits\], got shape \(3, 4\)"),
    ("n_bits 0", torch.randn(3, 4, 0), torch.randn(3, 4), torch.zeros(3, dtype=torch.long), InputError,
     "n_bits = W.shape.2. = 0 is outside 1 <= n_bits <= 32"),
    ("n_bits 33", torch.randn(1, 1, 33), torch.randn(1, 1), torch.zeros(1, dtype=torch.long), InputError,
     "n_bits = W.shape.2. = 33 is outside 1 <= n_bits <= 32"),
    ("hidden 0", torch.randn(3, 0, 5), torch.randn(3, 0), torch.zeros(3, dtype=torch.long), InputError,
     "hidden = W.shape.1. = 0; hidden must be >= 1"),
    ("r dtype", torch.randn(3, 4, 5), torch.randn(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.long),
     InputError, "r has dtype float64 but W has float32"),
    ("r device", torch.randn(3, 4, 5), torch.empty(3, 4, device="meta"), torch.zeros(3, dtype=torch.long),
     InputError, "r is on meta but W is on cpu"),
    ("r shape", torch.randn(3, 4, 5), torch.randn(3, 5), torch.zeros(3, dtype=torch.long), InputError,
     r"r must have shape \[batch, hidden\] = \[3, 4\] to match W, got \[3, 5\]"),
    ("targets float", torch.randn(3, 4, 5), torch.randn(3, 4), torch.zeros(3), InputError,
     "targets must have an integer dtype, got float32"),
    ("targets bool", torch.randn(3, 4, 5), torch.randn(3, 4), torch.zeros(3, dtype=torch.bool), InputError,
     "targets must have an integer dtype, got bool"),
    ("targets not a tensor", torch.randn(3, 4, 5), torch.randn(3, 4), [0, 1, 2], InputError,
     "targets must be an integer torch.Tensor, got list"),
    ("targets device", torch.randn(3, 4, 5), torch.randn(3, 4), torch.zeros(3, dtype=torch.long, device="meta"),
     InputError, "targets is on meta but W is on cpu"),
    ("targets batch", torch.randn(3, 4, 5), torch.randn(3, 4), torch.zeros(4, dtype=torch.long), InputError,
     r"targets must have shape \[batch\] or \[batch, S\] with batch = 3, got \[4\]"),
    ("targets rank 3", torch.randn(3, 4, 5), torch.randn(3, 4), torch.zeros(3, 1, 1, dtype=torch.long), InputError,
     r"targets must have shape \[batch\] or \[batch, S\]"),
    ("targets negative", torch.randn(3, 4, 5), torch.randn(3, 4), torch.tensor([0, -2, 1]), InputError,
     r"targets\[1\] = -2 is outside 0 <= targets < 2\^n_bits = 32"),
    ("targets too large", torch.randn(3, 4, 5), torch.randn(3, 4), torch.tensor([[0, 1], [2, 32], [3, 4]]),
     InputError, r"targets\[1, 1\] = 32 is outside 0 <= targets < 2\^n_bits = 32"),
    # Past 2^53 the one-sync range check reads rounded values; the message still names the exact one.
    ("targets huge", torch.randn(3, 4, 5), torch.randn(3, 4), torch.tensor([1, 2**53 + 1, 2]), InputError,
     rf"targets\[1\] = {2**53 + 1} is outside 0 <= targets < 2\^n_bits = 32"),
    ("targets most negative", torch.randn(3, 4, 5), torch.randn(3, 4), torch.tensor([1, -(2**63), 2]), InputError,
     rf"targets\[1\] = {-(2**63)} is outside"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("what", "W", "r", "targets", "error", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_are_refused_before_any_kernel(spy, entry, what, W, r, targets, error, message):
    before = [t.clone() if isinstance(t, torch.Tensor) and t.device.type != "meta" else t for t in (W, r, targets)]
    with pytest.raises(error, match=message):
        ENTRY_POINTS[entry](W, r, targets, backend="spy")
    for old, new in zip(before, (W, r, targets), strict=True):
        if isinstance(old, torch.Tensor) and old.device.type != "meta":
            assert torch.equal(old, new), f"{what}: an input was modified"


def test_grad_nll_must_match_targets(spy):
    W, r, targets = good()
    with pytest.raises(InputError, match=r"grad_nll must have the shape of targets \[3\] on cpu, got \[2\]"):
        sick_bide.loss_and_grad(W, r, targets, torch.ones(2), backend="spy")
    with pytest.raises(InputError, match=r"grad_nll must be a floating-point torch\.Tensor"):
        sick_bide.loss_and_grad(W, r, targets, torch.ones(3, dtype=torch.long), backend="spy")


def test_n_bits_outside_the_backend_limits(spy):
    W, r, targets = good(n_bits=9)
    with pytest.raises(UnsupportedError, match="n_bits=9 is outside what backend 'spy' supports: 2 <= n_bits <= 8"):
        sick_bide.loss(W, r, targets, backend="spy")


def test_dtype_the_backend_does_not_support(spy):
    W, r, targets = good()
    with pytest.raises(UnsupportedError, match="backend 'spy' does not support dtype float16; it supports float32"):
        sick_bide.loss(W.half(), r.half(), targets, backend="spy")


def test_unknown_backend_and_config():
    W, r, targets = good()
    with pytest.raises(UnsupportedError, match=r"backend='nope' is not registered for sick_bide; known: \["):
        sick_bide.loss(W, r, targets, backend="nope")
    with pytest.raises(UnsupportedError, match="has no config 'nope'"):
        sick_bide.loss(W, r, targets, backend="chunked", config="nope")


def test_unavailable_backend_says_why(spy, monkeypatch):
    monkeypatch.setitem(registry._BACKENDS, ("sick_bide", "spy"),
                        Backend(**{**spy.__dict__, "unavailable": lambda config: "triton not installed"}))
    W, r, targets = good()
    with pytest.raises(UnsupportedError, match="backend 'spy' is unavailable: triton not installed"):
        sick_bide.loss(W, r, targets, backend="spy")


def test_cuda_only_backend_on_cpu_inputs(spy, monkeypatch):
    monkeypatch.setitem(registry._BACKENDS, ("sick_bide", "spy"), Backend(**{**spy.__dict__, "devices": ("cuda",)}))
    W, r, targets = good()
    with pytest.raises(UnsupportedError, match="runs on cuda, not cpu"):
        sick_bide.loss(W, r, targets, backend="spy")


def test_materialisation_over_the_memory_budget_is_refused(monkeypatch):
    monkeypatch.setenv("FUSEDBENCH_MEMORY_BUDGET", "1MiB")
    W, r, targets = good(batch=4, hidden=8, n_bits=12)
    with pytest.raises(UnsupportedError, match=r"backend 'reference' would need 2\.5 MiB of workspace for "
                       r"batch=4, hidden=8, n_bits=12, targets_per_row=1, log2_range=-?\d+, over the memory budget "
                       r"of 1\.0 MiB"):
        sick_bide.loss(W, r, targets, backend="reference")


def test_features_the_backend_lacks(spy):
    W, r, _ = good()
    with pytest.raises(UnsupportedError, match=r"lacks feature\(s\) \['k_ranges'\]"):
        sick_bide.partial_state(W, r, 0, 4, backend="spy")
    no_grad = Backend(**{**spy.__dict__, "name": "spy", "features": frozenset()})
    registry._BACKENDS[("sick_bide", "spy")] = no_grad
    with pytest.raises(UnsupportedError, match=r"lacks feature\(s\) \['grad'\]"):
        sick_bide.loss(W.requires_grad_(), r, torch.zeros(3, dtype=torch.long), backend="spy")


@pytest.mark.parametrize(("k_start", "k_stop"), [(-1, 4), (5, 4), (0, 33), (0.5, 4)])
def test_k_range_outside_the_codes(k_start, k_stop):
    W, r, _ = good()
    with pytest.raises(InputError, match=r"k range \[.*\) must satisfy 0 <= k_start <= k_stop <= 2\^n_bits = 32"):
        sick_bide.partial_state(W, r, k_start, k_stop, backend="chunked")


def test_auto_without_any_runnable_backend_lists_the_reasons(spy, monkeypatch):
    monkeypatch.setattr(registry, "_BACKENDS", {("sick_bide", "spy"): spy})
    W, r, targets = good(n_bits=9)
    with pytest.raises(UnsupportedError, match="backend='auto' found no backend for these inputs:\n  spy: n_bits=9"):
        sick_bide.loss(W, r, targets)


def test_unsigned_targets_are_accepted():
    W, r, targets = good()
    nll, _ = sick_bide.loss(W, r, targets.to(torch.uint8), backend="chunked")
    ref, _ = sick_bide.loss(W, r, targets, backend="chunked")
    torch.testing.assert_close(nll, ref)
    with pytest.raises(InputError, match=r"targets\[0\] = 200 is outside"):
        sick_bide.loss(W, r, torch.tensor([200, 1, 2], dtype=torch.uint8), backend="chunked")


def test_log2_range_is_the_float32_tables_reach():
    """`log2_range` (FLOAT32_TABLES): the largest of max_h L1_h 2^126 / float32 max, log2(e) L1_h of units with
    r = 0 and log2(e) sum_h |r_h| L1_h over finite rows, rounded up; exact where the probe's bound is too loose."""
    def log2_range(W, r):
        return sick_bide.validate(torch.tensor(W), torch.tensor(r))["log2_range"]
    assert log2_range([[[0.0, 0.0]]], [[1.0]]) == sick_bide.LOG2_RANGE_MIN
    assert log2_range([[[3.4e38], [-1.0]]], [[2e-38, 2.0]]) == 126          # W at float32's max, accepted
    assert log2_range([[[2.0**127, 2.0**127]]], [[-(2.0**-10)]]) == 127     # the table sum reaches 2^128
    assert log2_range([[[1.5e38, 1.0e38], [1.0, 1.0]]], [[0.0, 1.0]]) == 129   # r = 0: c = log2 e
    # Row 0 has the large W, row 1 the large r: the probe's bound max|W| max|r| is 2^228, the rows' 121.
    assert log2_range([[[1e37, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]], [[1e-30, 0.5], [1e30, 2.0]]) == 121
    # A row with NaN goes the NaN way; its 3e38 does not count.
    assert log2_range([[[math.nan, 3e38]], [[1.0, 1.0]]], [[1.0], [1.0]]) == 2
    assert sick_bide.validate(torch.full((1, 1, 2), 1e300, dtype=torch.float64),
                              torch.full((1, 1), 1e300, dtype=torch.float64))["log2_range"] == 2048


def test_auto_falls_back_past_the_tables_range():
    """backend="auto" skips a backend whose log2_range limit the inputs pass, for the next that can run them."""
    registry.load()
    sizes = {"batch": 1, "hidden": 1, "n_bits": 2, "targets_per_row": 1, "log2_range": 129}
    chosen = sick_bide.resolve("auto", "default", sizes, torch.float32, "cpu")
    assert chosen.limits.get("log2_range", (0, 129))[1] >= 129, chosen.name
    W, r = torch.tensor([[[2.0e38, 2.0e38]]]), torch.tensor([[-1.0]])
    _, lse = sick_bide.loss(W, r, torch.tensor([[0]]))            # auto: a backend that can hold it
    assert abs(float(lse[0]) - math.log(3.0)) < 1e-6, float(lse[0])


def test_an_empty_batch_runs_no_kernel(spy):
    """B = 0 is answered by the harness (empty outputs and gradients) before any backend kernel runs:
    the spy raises if one does. The same holds for the forward-only and the partial-state calls."""
    W = torch.randn(0, 4, 5, requires_grad=True)
    r = torch.randn(0, 4, requires_grad=True)
    targets = torch.zeros(0, 2, dtype=torch.long)
    nll, lse = sick_bide.loss(W, r, targets, backend="spy")
    (nll.sum() + lse.sum()).backward()
    assert nll.shape == (0, 2) and lse.shape == (0,) and W.grad.shape == (0, 4, 5) and r.grad.shape == (0, 4)
    with torch.no_grad():
        assert sick_bide.loss(W, r, targets, backend="spy")[1].shape == (0,)
    state = sick_bide.partial_state(W.detach(), r.detach(), want_grad=True, backend="spy")
    assert state.m.shape == (0,) and state.D.shape == (0, 4, 5)
