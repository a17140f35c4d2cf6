"""pytest-benchmark plumbing: benchmarks run only with --benchmark-only, GPU facts in machine_info."""

import pytest
import torch

from harness import sweep


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", False):
        return
    skip = pytest.mark.skip(reason="benchmarks run with: pytest benchmarks --benchmark-only")
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


def pytest_benchmark_update_machine_info(config, machine_info):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine_info["fusedbench"] = sweep.environment(device)
