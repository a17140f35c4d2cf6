"""The benchmarks' peak-memory figure on CUDA includes everything a backend allocates.

measure.peak_memory adds the growth of CuPy's default pool to torch's high-water mark, so a
backend may allocate from either. The CuPy backend allocates nothing through CuPy (its workspaces
and half-to-float32 copies come from torch's allocator), which the second test holds it to.
"""

from __future__ import annotations

import pytest
import torch

from harness import measure
from harness.problems import sick_bide
from harness.pytest_plugin import variant_params

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_peak_memory_counts_what_cupy_allocates():
    cupy = pytest.importorskip("cupy")
    device = torch.device("cuda", torch.cuda.current_device())
    cupy.get_default_memory_pool().free_all_blocks()
    nbytes = 48 * 2**20
    kept = []

    def allocate():
        with cupy.cuda.Device(device.index):
            kept.append(cupy.ones(nbytes // 4, dtype=cupy.float32))

    assert measure.peak_memory(allocate, device) >= nbytes
    kept.clear()
    cupy.get_default_memory_pool().free_all_blocks()


CUPY_VARIANTS = [p for p in variant_params("sick_bide", ["cuda"]) if p.values[0][0].name == "cupy"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", CUPY_VARIANTS)
def test_cupy_allocates_only_from_torch(variant, dtype):
    """At B = 2, n = 16 the CuPy kernels split each row's codes over at least 2 blocks, each with its own
    partial state (a workspace), and a bfloat16 input is converted to float32 first. CuPy's pool, which
    torch's counters cannot see, must not grow, and the peak must hold the gradient sums' workspace
    (at least 2 chunks of D besides D itself) and the float32 copy of a bfloat16 W."""
    backend, config, _ = variant
    cupy = pytest.importorskip("cupy")
    device = torch.device("cuda", torch.cuda.current_device())
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(2, 32, 16, generator=gen).to(device, dtype)
    r = torch.randn(2, 32, generator=gen).to(device, dtype)
    for want_grad in (False, True):
        def call(want_grad=want_grad):
            return sick_bide.partial_state(W, r, want_grad=want_grad, backend=backend.name, config=config)

        call()                                              # compile, load, tune
        pool_before = cupy.get_default_memory_pool().total_bytes()
        peak = measure.peak_memory(call, device)
        assert cupy.get_default_memory_pool().total_bytes() == pool_before
        d_bytes = W.numel() * 4                             # D, or W converted to float32
        least = (3 * d_bytes if want_grad else 0) + (d_bytes if dtype != torch.float32 else 0) + 2 * 2 * 4
        assert peak >= least, (want_grad, peak, least)
