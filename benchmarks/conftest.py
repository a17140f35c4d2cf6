"""pytest-benchmark plumbing: benchmarks run only with --benchmark-only, GPU facts in machine_info."""

import pytest
import torch

from harness import ceiling, sweep


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", False):
        return
    skip = pytest.mark.skip(reason="benchmarks run with: pytest benchmarks --benchmark-only")
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


def pytest_configure(config):
    """Under pytest-xdist (pytest -n N benchmarks --benchmark-only), pin worker gwI to GPU I mod count."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker and torch.cuda.is_available():
        torch.cuda.set_device(int(worker.removeprefix("gw")) % torch.cuda.device_count())


def pytest_benchmark_update_machine_info(config, machine_info):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine_info["fusedbench"] = {**sweep.environment(device), "ceilings": ceiling.measure_all(device),
                                  "problems": sweep.problem_notes()}
