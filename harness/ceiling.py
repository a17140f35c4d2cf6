"""Small probes of the device's ceilings, run once per sweep (`measure_all`).

fmnmx_fadd: lane-instructions per second of the SICK-BIDE inner loop's mix (below).
copy_bandwidth: bytes per second read plus written by a large device-to-device copy,
the ceiling of memory-bound kernels (softmax, batch norm): a kernel moving the same
bytes cannot beat a copy by much.


The fmnmx_fadd probe is the method of ../shared/tools/peak_ops.py's `fadd_fmax` kernel, in Triton:
each lane holds eight loop-invariant values a_i and eight accumulators, and each step adds
max(a_i, b) to accumulator i (one FMNMX and one FADD, the mix of the SICK-BIDE forward's max
and accumulate), with b moved once per step so nothing can be hoisted. The result is
lane-instructions per second (the step on b not counted, as in peak_ops.py), to set beside a
backend's achieved rate (work units per second times instructions per unit). On the H100 it reads
30.3 Tinstr/s, peak_ops.py's FFMA figure, and 8% above its fadd_fmax (28.1), whose loop was not
disassembled; an earlier probe, eight chains of `a = max(a, b) + c`, read 31.9 (PERFORMANCE.md).
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
        x = tl.arange(0, BLOCK).to(tl.float32) * seed
        a0, a1, a2, a3 = x + 1.0, x + 2.0, x + 3.0, x + 4.0
        a4, a5, a6, a7 = x + 5.0, x + 6.0, x + 7.0, x + 8.0
        s0, s1, s2, s3 = tl.zeros_like(x), tl.zeros_like(x), tl.zeros_like(x), tl.zeros_like(x)
        s4, s5, s6, s7 = tl.zeros_like(x), tl.zeros_like(x), tl.zeros_like(x), tl.zeros_like(x)
        b = tl.program_id(0).to(tl.float32) * seed
        for _ in range(ITERS):
            s0 += tl.maximum(a0, b)
            s1 += tl.maximum(a1, b)
            s2 += tl.maximum(a2, b)
            s3 += tl.maximum(a3, b)
            s4 += tl.maximum(a4, b)
            s5 += tl.maximum(a5, b)
            s6 += tl.maximum(a6, b)
            s7 += tl.maximum(a7, b)
            b += 1e-7
        tl.store(out_ptr + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK), s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7)

    block, programs = 256, 16 * torch.cuda.get_device_properties(device).multi_processor_count
    out = torch.empty(programs * block, device=device)
    probe[(programs,)](out, 1e-7, ITERS=iters, BLOCK=block, num_warps=8)   # compile and warm up
    ms = triton.testing.do_bench(lambda: probe[(programs,)](out, 1e-7, ITERS=iters, BLOCK=block, num_warps=8),
                                 return_mode="median")
    return programs * block * iters * 8 * 2 / (ms * 1e-3)
