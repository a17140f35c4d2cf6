"""Small probes of the device's ceilings, run once per sweep (`measure_all`).

fmnmx_fadd: lane-instructions per second of the SICK-BIDE inner loop's mix (below).
copy_bandwidth: bytes per second read plus written by a large device-to-device copy,
the ceiling of memory-bound kernels (softmax, batch norm): a kernel moving the same
bytes cannot beat a copy by much.


Each lane repeats `a = max(a, b) + c` on registers: one FMNMX and one FADD, the
mix of the SICK-BIDE forward (max, accumulate). Eight independent chains per lane
keep the pipes full. The result is lane-instructions per second, to set beside a
backend's achieved rate (work units per second times instructions per unit).
GPU only (Triton); on the CPU the probe reports None and reports say "n/a".
"""

from __future__ import annotations

import statistics
import time

import torch


def measure_all(device: str | torch.device) -> dict[str, float | None]:
    """Every ceiling the reports divide by, measured on `device` (None where unmeasurable)."""
    return {"fmnmx_fadd": fmnmx_fadd_per_second(device), "copy_bandwidth": copy_bytes_per_second(device)}


def copy_bytes_per_second(device: str | torch.device, nbytes: int = 256 * 2**20, repeats: int = 10) -> float:
    """Bytes read plus written per second by `dst.copy_(src)` of `nbytes`, median of `repeats` copies."""
    device = torch.device(device)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            samples.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(samples)


def fmnmx_fadd_per_second(device: str | torch.device, iters: int = 4096) -> float | None:
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def probe(out_ptr, seed, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        b = offs.to(tl.float32) * seed
        c = seed * 0.5
        a0, a1, a2, a3 = b + 1.0, b + 2.0, b + 3.0, b + 4.0
        a4, a5, a6, a7 = b + 5.0, b + 6.0, b + 7.0, b + 8.0
        for _ in range(ITERS):
            a0 = tl.maximum(a0, b) + c
            a1 = tl.maximum(a1, b) + c
            a2 = tl.maximum(a2, b) + c
            a3 = tl.maximum(a3, b) + c
            a4 = tl.maximum(a4, b) + c
            a5 = tl.maximum(a5, b) + c
            a6 = tl.maximum(a6, b) + c
            a7 = tl.maximum(a7, b) + c
        tl.store(out_ptr + tl.program_id(0) * BLOCK + offs, a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7)

    block, programs = 256, 16 * torch.cuda.get_device_properties(device).multi_processor_count
    out = torch.empty(programs * block, device=device)
    probe[(programs,)](out, 1e-7, ITERS=iters, BLOCK=block, num_warps=8)   # compile and warm up
    ms = triton.testing.do_bench(lambda: probe[(programs,)](out, 1e-7, ITERS=iters, BLOCK=block, num_warps=8),
                                 return_mode="median")
    return programs * block * iters * 8 * 2 / (ms * 1e-3)
