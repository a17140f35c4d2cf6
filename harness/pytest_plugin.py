"""pytest plugin of the harness: every test taking `<problem>_variant` (e.g. `sick_bide_variant`)
runs once per registered (backend, config, device) of that problem, so a new backend, or a
new problem's backends, are covered with no edit here.

`--device cpu|cuda` restricts the devices (default: every device the backend
declares). On a machine without CUDA, TRITON_INTERPRET=1 is set (unless set
otherwise) so that Triton backends are checked in Triton's interpreter. A
variant that cannot run here is collected and skipped with the registry's
reason ("no CUDA device", "triton not installed"), never dropped.
"""

from __future__ import annotations

import os

import pytest
import torch

from harness import registry

# Without a GPU, Triton kernels run in Triton's interpreter (on the CPU, slowly) so that their
# properties still run in CI. Must be set before any backend module applies @triton.jit.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", action="append", default=None, choices=["cpu", "cuda"],
                     help="run backend tests only on these devices (repeatable)")


def variant_params(problem: str, devices: list[str] | None) -> list:
    params = []
    for backend, config in registry.variants(problem):
        for device in backend.devices:
            if devices and device not in devices:
                continue
            name = f"{registry.variant_name(backend, config)}-{device}"
            reason = registry.unavailable_reason(backend, config, device)
            marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
            params.append(pytest.param((backend, config, device), id=name, marks=marks))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test argument named `<problem>_variant` runs once per variant of that problem."""
    known = {problem.name for problem in registry.problems()}
    for name in metafunc.fixturenames:
        if name.endswith("_variant") and name.removesuffix("_variant") in known:
            devices = metafunc.config.getoption("--device")
            metafunc.parametrize(name, variant_params(name.removesuffix("_variant"), devices))
