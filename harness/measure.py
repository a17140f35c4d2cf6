"""Timers and peak memory, honest about what they measure.

On CUDA a call is timed with events around it on the current stream (device
time, launch gaps included), after warm-up; on the CPU with perf_counter. Peak
memory on CUDA is torch's allocator high-water mark above the memory already
held when the call starts, plus whatever CuPy's memory pool grew by (backends
that allocate through CuPy would otherwise be invisible); on the CPU (Linux) it is the process's peak resident
set size above its size at the start, reset through /proc/self/clear_refs, so
it counts every allocation, torch's or not, at page granularity.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call over repeated runs."""

    samples: tuple[float, ...]
    method: str

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        """(20th, 80th) percentiles: the band most runs fall in."""
        ordered = sorted(self.samples)
        pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
        return pick(0.2), pick(0.8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: str | torch.device, *, warmup: int = 1, repeats: int = 5,
              number: int = 1) -> Timing:
    """Run fn `warmup` times, then take `repeats` samples, each the mean of `number` back-to-back calls."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    if device.type == "cuda":
        for _ in range(repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn()
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop) / 1e3 / number)
        return Timing(tuple(samples), "cuda-events")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    return Timing(tuple(samples), "perf_counter")


def _rss_kib() -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of this process in KiB, or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            text = status.read()
    except OSError:
        return None
    rss, hwm = re.search(r"VmRSS:\s+(\d+)", text), re.search(r"VmHWM:\s+(\d+)", text)
    return (int(rss.group(1)), int(hwm.group(1))) if rss and hwm else None


def _cupy_pool_bytes() -> int:
    """Bytes CuPy's default device pool holds, if CuPy is already in use (never imports it)."""
    cupy = sys.modules.get("cupy")
    return int(cupy.get_default_memory_pool().total_bytes()) if cupy is not None else 0


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim) so that reuse is not invisible."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(fn: Callable[[], Any], device: str | torch.device) -> int | None:
    """Bytes at the peak of one call of fn above what was held before it; None if unmeasurable."""
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        pool_before = _cupy_pool_bytes()
        fn()
        _sync(device)
        # CuPy allocates from its own pool, invisible to torch's counters: add what the pool grew by.
        return torch.cuda.max_memory_allocated(device) - before + max(0, _cupy_pool_bytes() - pool_before)
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    start = _rss_kib()
    fn()
    end = _rss_kib()
    if start is None or end is None:
        return None
    return max(0, end[1] - start[0]) * 1024
