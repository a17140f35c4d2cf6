"""Discovery: built-ins by scanning, plugins by entry points, both through one door."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
import torch

from harness import Backend, registry
from harness.problems import sick_bide
from harness.pytest_plugin import variant_params


def test_builtins_are_registered():
    names = {b.name for b in registry.backends("sick_bide")}
    assert {"reference", "chunked"} <= names
    assert {p.name for p in registry.problems()} == {
        "sick_bide", "softmax", "mlp", "linear", "batchnorm_relu", "conv1d", "max", "bmm"}
    assert {b.name for b in registry.backends("softmax")} >= {"autograd", "jacobian", "vector", "triton"}
    assert {b.name for b in registry.backends("mlp")} == {"autograd", "manual", "recompute"}
    for problem in ("linear", "batchnorm_relu", "conv1d", "max", "bmm"):
        assert {"autograd", "manual"} <= {b.name for b in registry.backends(problem)}
    assert "triton" in {b.name for b in registry.backends("batchnorm_relu")}


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(registry, "_BACKENDS", {})
    monkeypatch.setattr(registry, "_PROBLEMS", {})
    monkeypatch.setattr(registry, "_LOADED", False)


def test_entry_point_plugin_is_found_and_covered(fresh_registry, monkeypatch):
    fake = importlib.metadata.EntryPoint(name="example", value="tests.plugin_example",
                                         group=registry.BACKEND_GROUP)
    real = importlib.metadata.entry_points

    def entry_points(group=None, **kw):
        return [fake] if group == registry.BACKEND_GROUP else real(group=group, **kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert "plugin-example" in {b.name for b in registry.backends("sick_bide")}
    # ...and the property and API tests parametrize over it with no edit anywhere:
    ids = [p.id for p in variant_params("sick_bide", None)]
    assert "plugin-example-cpu" in ids
    W, r = torch.randn(2, 3, 4), torch.randn(2, 3)
    targets = torch.tensor([1, 7])
    ours = sick_bide.loss(W, r, targets, backend="plugin-example")
    ref = sick_bide.loss(W, r, targets, backend="reference")
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_broken_plugin_warns_and_the_rest_still_load(fresh_registry, monkeypatch):
    fake = importlib.metadata.EntryPoint(name="broken", value="no_such_module_xyz",
                                         group=registry.BACKEND_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **kw: [fake] if group == registry.BACKEND_GROUP else [])
    with pytest.warns(UserWarning, match="entry point 'broken' failed to load"):
        names = {b.name for b in registry.backends("sick_bide")}
    assert "chunked" in names


def test_backend_must_provide_known_kernels():
    bad = Backend(name="bad", problem="sick_bide", kernels={"forward": lambda: None})
    with pytest.raises(ValueError, match="kernels must be among"):
        sick_bide.check_backend(bad)
    with pytest.raises(ValueError, match="needs a partial_state kernel"):
        sick_bide.check_backend(Backend(name="bad", problem="sick_bide", kernels={"loss": lambda: None},
                                        features=frozenset({"k_ranges"})))
    with pytest.raises(ValueError, match="configs must include 'default'"):
        registry.register(Backend(name="bad", problem="sick_bide", kernels={"loss": lambda: None},
                                  configs={"fast": {}}))


def test_unavailable_reasons():
    chunked = registry.backend("sick_bide", "chunked")
    assert registry.unavailable_reason(chunked, "default", "cpu") is None
    if not torch.cuda.is_available():
        assert registry.unavailable_reason(chunked, "default", "cuda") == "no CUDA device"
    assert "has no config" in registry.unavailable_reason(chunked, "nope", "cpu")


def test_an_interpreter_that_cannot_run_the_kernels_is_named():
    """Triton < 3.7 under numpy >= 2.4 fails every kernel with a runtime loop bound (triton-lang/triton#9171):
    the Triton backends must say so by version, not fail each property with a TypeError."""
    from harness.triton_helpers import interpreter_problem

    reason = interpreter_problem("3.6.0", "2.4.6")
    assert "triton 3.6.0" in reason and "numpy 2.4.6" in reason and "triton >= 3.7 or numpy < 2.4" in reason
    assert interpreter_problem("3.5.1+git1234abcd", "2.10.0") is not None
    assert interpreter_problem("3.7.0", "2.4.6") is None
    assert interpreter_problem("3.10.1", "3.0.0") is None
    assert interpreter_problem("3.6.0", "2.3.5") is None
    assert interpreter_problem("2.3.1", "1.26.4") is None


def test_parse_and_format_bytes():
    assert registry.parse_bytes("4GiB") == 4 * 2**30
    assert registry.parse_bytes("1.5 MiB") == int(1.5 * 2**20)
    assert registry.parse_bytes("1e9") == 10**9
    assert registry.format_bytes(3 * 2**30) == "3.0 GiB"


def test_python_m_harness_list_shows_every_backend():
    out = subprocess.run([sys.executable, "-m", "harness", "list"], capture_output=True, text=True, check=True)
    assert "sick_bide" in out.stdout
    for name in ("reference", "chunked"):
        assert f"  {name} " in out.stdout
    assert "config 'compile'" in out.stdout
    assert "cpu: available" in out.stdout


def test_cupy_block_options_are_refused_before_any_gpu_work():
    from backends import cupy_mitm
    from harness.problems.sick_bide import empty_state

    W, r = torch.zeros(2, 3, 4), torch.zeros(2, 3)
    out = empty_state(2, 3, 4, torch.float32, "cpu", want_grad=False)
    with pytest.raises(ValueError, match="block_lo and fused_block_lo must be 4 or 8, got 5 and 8"):
        cupy_mitm.partial_state(W, r, 0, 16, out, block_lo=5, fused_block_lo=8)
    # Unset, fused_block_lo follows n: 4 below n = 13, where 8 x 8 blocks would hold padding.
    with pytest.raises(ValueError, match="got 5 and 4"):
        cupy_mitm.partial_state(W, r, 0, 16, out, block_lo=5)
