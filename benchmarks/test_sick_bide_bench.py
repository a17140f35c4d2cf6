"""pytest-benchmark sweep of every registered backend variant over a grid.

    pytest benchmarks --benchmark-only [--benchmark-json=results/run.benchmark.json]
    FUSEDBENCH_GRID=gpu pytest benchmarks --benchmark-only     # grids: harness/sweep.py

pytest-benchmark's own timer is a host clock, so each round syncs the device; the
device-accurate figures (CUDA events after an L2 flush, interleaving aside) go into
extra_info with the same fields as the main job's sweep rows, which is what reports read.
Cells a variant cannot run are skipped with the registry's reason.
"""

from __future__ import annotations

import os
import statistics

import pytest
import torch

from harness import measure, registry, sweep
from harness.errors import UnsupportedError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRID = sweep.GRIDS[os.environ.get("FUSEDBENCH_GRID", "gpu" if DEVICE == "cuda" else "smoke")]


def _cases():
    for problem in registry.problems():
        for sizes, dtype, mode in sweep.cells(GRID):
            for backend, config in registry.variants(problem.name):
                shape = ",".join(f"{k}={v}" for k, v in sizes.items())
                name = f"{registry.variant_name(backend, config)}-{shape}-{dtype}-{mode}"
                yield pytest.param(problem, backend, config, sizes, dtype, mode, id=name)


@pytest.mark.parametrize(("problem", "backend", "config", "sizes", "dtype", "mode"), list(_cases()))
def test_benchmark(benchmark, problem, backend, config, sizes, dtype, mode):
    try:
        registry.check_runnable(backend, config, sizes, getattr(torch, dtype), DEVICE)
    except UnsupportedError as exc:
        pytest.skip(str(exc))
    inputs = problem.make_inputs(sizes, getattr(torch, dtype), DEVICE, seed=0)
    fn = problem.prepare(backend, config, inputs, mode)
    device = torch.device(DEVICE)
    flush = sweep.L2Flush(device)
    fn()

    def synced():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=GRID.get("rounds", 3), warmup_rounds=1, iterations=1)
    samples = [sweep.sample(fn, device, flush) for _ in range(GRID.get("rounds", 3))]
    median = statistics.median(samples)
    benchmark.extra_info.update({
        "problem": problem.name, **sizes, "dtype": dtype, "mode": mode, "device": device.type,
        "backend": backend.name, "config": config, "variant": registry.variant_name(backend, config),
        "status": "ok", "time_s": median, "time_p20_s": sweep.percentile(samples, 0.2),
        "time_p80_s": sweep.percentile(samples, 0.8), "samples_s": samples, "rounds": len(samples),
        "peak_bytes": measure.peak_memory(fn, device), "rate": problem.work(sizes) / median,
        "work": problem.work(sizes), "work_unit": problem.work_unit,
        "timing_method": "cuda-events, L2 flushed" if device.type == "cuda" else "perf_counter",
        "cache": "cold L2" if device.type == "cuda" else "warm", "env": sweep.environment(DEVICE),
    })
