"""Every CUDA variant runs on its inputs' device and on torch's current stream there.

Stream order is checked by the data, not by timing: a wrapper around the variant's kernel
enqueues, on the current stream, a ~10 ms spin and then the write of the real W into a W of
zeros, and only then calls the kernel. A kernel launched on that stream reads the real W; one
launched on any other stream, or on another device, runs during the spin, reads the zeros and
gives another loss (W = 0 makes every code's logit 0). Results must equal the same variant's on
the real W, to the bit (every backend is deterministic on one device).

The same property as torch sees it: a partial_state kernel captured by torch.cuda.graph and
replayed on new inputs gives what an eager call gives.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from harness import autotune
from harness.problems import sick_bide
from harness.pytest_plugin import variant_params

SPIN_CYCLES = 20_000_000          # torch.cuda._sleep: ~10 ms at the H100's 1.98 GHz


def _inputs(device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(6, 5, 9, generator=gen).to(device)
    r = torch.randn(6, 5, generator=gen).to(device)
    targets = torch.randint(0, 1 << 9, (6, 2), generator=gen).to(device)
    return W, r, targets


def _call(variant, W, r, targets, grad):
    """(nll, lse, dW, dr) of the variant; the gradients only with grad."""
    backend, config, _ = variant
    W, r = W.detach().requires_grad_(grad), r.detach().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        nll, lse = sick_bide.loss(W, r, targets, backend=backend.name, config=config)
        if not grad:
            return nll, lse, None, None
        torch.autograd.backward((nll, lse), (torch.ones_like(nll), torch.ones_like(lse)))
    return nll.detach(), lse.detach(), W.grad, r.grad


@contextlib.contextmanager
def _current_stream(stream: torch.cuda.Stream):
    """Make `stream` its device's current stream, leaving the current device as it is."""
    with torch.cuda.device(stream.device):
        before = torch.cuda.current_stream()
        torch.cuda.set_stream(stream)
    try:
        yield
    finally:
        with torch.cuda.device(stream.device):
            torch.cuda.set_stream(before)


def _delay_kernels(monkeypatch, backend, W_real):
    """Each of the backend's kernels first spins its current stream, then writes W_real into its W."""
    for name, kernel in list(backend.kernels.items()):
        def delayed(W, *args, _kernel=kernel, **kwargs):
            torch.cuda._sleep(SPIN_CYCLES)
            W.detach().copy_(W_real)
            return _kernel(W, *args, **kwargs)
        monkeypatch.setitem(backend.kernels, name, delayed)


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("placement", ["current-device", "other-device"])
@pytest.mark.parametrize("variant", variant_params("sick_bide", ["cuda"]))
def test_kernels_run_on_the_inputs_device_and_current_stream(variant, placement, grad, monkeypatch):
    if placement == "other-device" and torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA devices, this machine has {torch.cuda.device_count()}")
    index = 1 if placement == "other-device" else torch.cuda.current_device()
    device = torch.device("cuda", index)
    W_real, r, targets = _inputs(device)
    # The expected values first: an autotuned variant tunes here, so the delayed call runs one kernel.
    expected = _call(variant, W_real, r, targets, grad)
    torch.cuda.synchronize(device)

    W = torch.zeros_like(W_real)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))       # the zeros are written before the call reads them
    _delay_kernels(monkeypatch, variant[0], W_real)
    with torch.cuda.device(0 if placement == "other-device" else index), _current_stream(side):
        got = _call(variant, W, r, targets, grad)
    side.synchronize()
    assert torch.equal(W, W_real)                               # the wrapper did run, on this device
    for name, a, b in zip(("nll", "lse", "dW", "dr"), got, expected, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "fused"])
@pytest.mark.parametrize("variant", variant_params("sick_bide", ["cuda"]))
def test_partial_state_kernels_replay_in_a_cuda_graph(variant, grad):
    """A kernel launched on torch's current stream is captured by torch.cuda.graph (which captures on a
    side stream it makes current); one launched on another stream is not, and either fails the capture or
    leaves the replay's outputs unwritten. Replayed on new W and r, the graph must give what an eager call
    on them gives, to the bit, with every output first poisoned with NaN."""
    backend, config, _ = variant
    if "partial_state" not in backend.kernels:
        pytest.skip(f"{backend.name}: no partial_state kernel to capture")
    options, candidates = autotune.split(backend.configs[config])
    if candidates is not None:
        pytest.skip("autotuned configs time their candidates on the first call, which a capture cannot hold")
    device = torch.device("cuda", torch.cuda.current_device())
    kernel = backend.kernels["partial_state"]
    W, r, _ = _inputs(device, seed=1)
    W_new, r_new, _ = _inputs(device, seed=2)
    n_bits = W.shape[2]

    def state():
        return sick_bide.empty_state(*W.shape, W.dtype, device, want_grad=grad)

    expected = state()
    kernel(W_new, r_new, 0, 1 << n_bits, expected, **options)
    static = state()
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):      # compile and load outside the capture
        kernel(W, r, 0, 1 << n_bits, static, **options)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernel(W, r, 0, 1 << n_bits, static, **options)
    for t in static:
        if t is not None:
            t.fill_(float("nan"))
    W.copy_(W_new)
    r.copy_(r_new)
    graph.replay()
    torch.cuda.synchronize(device)
    for name, a, b in zip(("m", "s", "D"), static, expected, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")
