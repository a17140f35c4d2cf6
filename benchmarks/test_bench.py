"""pytest-benchmark sweep of every registered problem and backend variant over a grid.

    pytest benchmarks --benchmark-only [--benchmark-json=results/run.benchmark.json]
    FUSEDBENCH_GRID=gpu pytest benchmarks --benchmark-only     # grids: harness/sweep.py

pytest-benchmark's own timer is a host clock, so each round syncs the device; the
device-accurate figures (CUDA events after an L2 flush, interleaving aside) go into
extra_info with the same fields as the main job's sweep rows, which is what reports read.
Cells a variant cannot run are skipped with the registry's reason.
"""

from __future__ import annotations

import os

import pytest
import torch

from harness import measure, registry, sweep
from harness.errors import UnsupportedError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRID = os.environ.get("FUSEDBENCH_GRID", "gpu" if DEVICE == "cuda" else "smoke")


def _cases():
    for problem in registry.problems():
        plan = sweep.settings(problem, GRID)
        for sizes, dtype, mode in sweep.cells(problem, plan):
            for backend, config in registry.variants(problem.name):
                shape = ",".join(f"{k}={v}" for k, v in sizes.items())
                name = f"{problem.name}-{registry.variant_name(backend, config)}-{shape}-{dtype}-{mode}"
                yield pytest.param(problem, backend, config, sizes, dtype, mode, plan.get("rounds", 3), id=name)


@pytest.mark.parametrize(("problem", "backend", "config", "sizes", "dtype", "mode", "rounds"), list(_cases()))
def test_benchmark(benchmark, problem, backend, config, sizes, dtype, mode, rounds):
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

    benchmark.pedantic(synced, rounds=rounds, warmup_rounds=1, iterations=1)
    samples = [sweep.sample(fn, device, flush) for _ in range(rounds)]
    benchmark.extra_info.update({
        **sweep.describe(problem, sizes, dtype, mode, DEVICE),
        "backend": backend.name, "config": config, "variant": registry.variant_name(backend, config),
        **sweep.measured(problem, sizes, dtype, mode, samples, measure.peak_memory(fn, device), inputs),
        "timing_method": "cuda-events, L2 flushed" if device.type == "cuda" else "perf_counter",
        "cache": "cold L2" if device.type == "cuda" else "warm", "env": sweep.environment(DEVICE),
        "source": "pytest-benchmark",
    })
