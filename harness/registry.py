"""Problems and backends: what they declare, where they come from, whether they can run.

A *problem* is one operation with a contract (shapes, conventions, validation)
written once in `harness/problems/`. A *backend* implements the kernels a
problem asks for and nothing else; it declares what it can run (devices,
dtypes, size limits, named configurations) so that the harness can refuse the
rest with a reason instead of answering wrongly.

Discovery uses one door for everyone, as pluggy's eggsample host does:

* built-ins: every module of the `backends` package (and of `harness.problems`)
  that defines ``BACKENDS`` (or ``PROBLEMS``), a list of records;
* installed packages: entry points in the groups ``fusedbench.backends`` and
  ``fusedbench.problems``, each naming a module with such a list, a list, or a
  single record.

So a new backend is one new file in `backends/` (or one installed package) and
no edit anywhere else; the properties, the verification table and the
benchmarks iterate over this registry.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from harness import autotune
from harness.errors import UnsupportedError

BACKEND_GROUP = "fusedbench.backends"
PROBLEM_GROUP = "fusedbench.problems"


@dataclass(frozen=True)
class Backend:
    """One implementation of one problem's kernels.

    kernels: the problem-defined entry points, e.g. ``{"partial_state": f}``.
    limits: inclusive ranges on the problem's named sizes, e.g. ``{"n_bits": (1, 32)}``, optionally with
        a third element saying why, which the refusal quotes.
    features: problem-defined capability flags, e.g. ``{"k_ranges", "grad"}``.
    configs: named keyword sets passed to the kernels; "default" comes first.
    unavailable: ``unavailable(config) -> reason or None``: why this config cannot
        run on this machine at all (missing package, no compiler). Device support
        is checked separately from ``devices``.
    workspace: ``workspace(sizes, dtype, options) -> bytes`` the backend allocates
        beyond its inputs and outputs (options: the config's keywords); calls over
        the device's memory budget are refused.
    priority: higher wins when the caller asks for ``backend="auto"``.
    """

    name: str
    problem: str
    kernels: Mapping[str, Callable[..., Any]]
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    limits: Mapping[str, tuple[int, int] | tuple[int, int, str]] = field(default_factory=dict)
    features: frozenset[str] = frozenset()
    configs: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"default": {}})
    unavailable: Callable[[str], str | None] = lambda config: None
    workspace: Callable[[Mapping[str, int], torch.dtype, Mapping[str, Any]], int] | None = None
    priority: int = 0
    summary: str = ""


@dataclass(frozen=True)
class Problem:
    """One operation the harness verifies and benchmarks.

    The core (registry, verification, sweeps, reports) only uses these fields;
    everything op-specific lives behind them in the problem's own module.

    reference: name of the backend that is ground truth (run in float64 it is
        the oracle; run in the input dtype it sets the tolerance, harness/tolerance.py).
    check_backend: raises if a backend lacks a kernel this problem needs.
    make_inputs: ``make_inputs(sizes, dtype, device, seed) -> dict of tensors``.
    prepare: ``prepare(backend, config, inputs, mode) -> fn``; ``fn()`` runs one
        call (mode "forward", or "backward" for forward plus backward) and returns
        a dict of named output tensors.
    cases: ``cases(device) -> [(label, sizes)]``, the size classes to verify.
    work: ``work(sizes, dtype, mode) -> float``, units of work in one call (see work_unit).
    grids: per sweep grid name ("cpu", "gpu", "smoke"; harness/sweep.py), this problem's
        sizes: ``{"sizes": {size: [values]} or a list of such dicts (each a product),
        "max_work": cap on work per cell, ...}``; other keys override the grid's settings
        (dtype, mode, rounds, max_call_s). A grid the problem does not name skips it.
    axes: (x, facet): the size plotted along x and the one plots are split by.
    roofline: (ceiling name, {mode: ceiling units per work unit}): the measured ceiling
        (harness/ceiling.py) that "fraction of ceiling" divides by, e.g. instructions
        per triple, or 1.0 when work is bytes and the ceiling is copy bandwidth.
    claims: statements from the seed documents the report checks against the sweep,
        e.g. ``{"text": ..., "kind": "time_ratio", "numerator": "jacobian",
        "denominator": "vector", "mode": "backward_only", "sizes": {...}, "expected": 2000}``
        or ``{"kind": "mode_ratio", "numerator_mode": "backward", "denominator_mode":
        "forward", "value": "memory", "expected": "3-4x"}`` (reports/html.py renders them).
    tolerance_reference: the backend whose run in the input dtype sets the error bound,
        when the reference's own kernel is not a same-precision computation (torch's CPU
        batch_norm accumulates float32 inputs in float64); default: `reference`.
    slack: ``slack(inputs64, dtype) -> {output: tensor}``, an elementwise error
        allowance where an output jumps within rounding distance of the inputs
        (a ReLU derivative at z ~ 0); see harness/tolerance.py. None: no jumps.
    """

    name: str
    summary: str
    reference: str
    check_backend: Callable[[Backend], None]
    make_inputs: Callable[..., dict[str, torch.Tensor]]
    prepare: Callable[..., Callable[[], dict[str, torch.Tensor]]]
    cases: Callable[[str], list[tuple[str, dict[str, int]]]]
    work: Callable[[Mapping[str, int], torch.dtype, str], float]
    work_unit: str = "ops"
    slack: Callable[[Mapping[str, torch.Tensor], torch.dtype], dict[str, torch.Tensor]] | None = None
    modes: tuple[str, ...] = ("forward", "backward")
    grids: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    axes: tuple[str, str] = ("batch", "batch")
    roofline: tuple[str, Mapping[str, float]] | None = None
    claims: tuple[Mapping[str, Any], ...] = ()
    tolerance_reference: str | None = None


_PROBLEMS: dict[str, Problem] = {}
_BACKENDS: dict[tuple[str, str], Backend] = {}
_LOADED = False


def register(item: Problem | Backend) -> None:
    """Add a problem or backend; built-ins and plugins both come through here."""
    if isinstance(item, Problem):
        _PROBLEMS[item.name] = item
        return
    if not isinstance(item, Backend):
        raise TypeError(f"register() takes a Problem or a Backend, got {type(item).__name__}")
    if "default" not in item.configs:
        raise ValueError(f"backend {item.name!r}: configs must include 'default'")
    _BACKENDS[(item.problem, item.name)] = item


def _records(obj: Any, attr: str) -> list[Any]:
    """A module's ``attr`` list, or the object itself (a record or a list of them)."""
    if inspect.ismodule(obj):
        obj = getattr(obj, attr, [])
    return list(obj) if isinstance(obj, list | tuple) else [obj]


def _load_package(package: str, attr: str) -> None:
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for record in _records(module, attr):
            register(record)


def _load_entry_points(group: str, attr: str) -> None:
    for entry in importlib.metadata.entry_points(group=group):
        try:
            loaded = entry.load()
        except Exception as exc:  # a broken plugin must not hide the others
            warnings.warn(f"{group} entry point {entry.name!r} failed to load: {exc}", stacklevel=2)
            continue
        for record in _records(loaded, attr):
            register(record)


def load() -> None:
    """Discover built-ins and installed plugins once per process."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    _load_package("harness.problems", "PROBLEMS")
    _load_entry_points(PROBLEM_GROUP, "PROBLEMS")
    _load_package("backends", "BACKENDS")
    _load_entry_points(BACKEND_GROUP, "BACKENDS")
    for backend in _BACKENDS.values():
        problem = _PROBLEMS.get(backend.problem)
        if problem is None:
            raise ValueError(f"backend {backend.name!r} is for unknown problem {backend.problem!r}")
        problem.check_backend(backend)


def problems() -> list[Problem]:
    load()
    return list(_PROBLEMS.values())


def problem(name: str) -> Problem:
    load()
    if name not in _PROBLEMS:
        raise KeyError(f"unknown problem {name!r}; known: {sorted(_PROBLEMS)}")
    return _PROBLEMS[name]


def backends(problem: str | None = None) -> list[Backend]:
    """Registered backends, in discovery order, optionally of one problem."""
    load()
    return [b for b in _BACKENDS.values() if problem is None or b.problem == problem]


def backend(problem: str, name: str) -> Backend:
    load()
    if (problem, name) not in _BACKENDS:
        known = sorted(b.name for b in backends(problem))
        raise UnsupportedError(f"backend={name!r} is not registered for {problem}; known: {known}")
    return _BACKENDS[(problem, name)]


def variants(problem: str) -> Iterator[tuple[Backend, str]]:
    """Every (backend, config name) pair of a problem: what properties and sweeps cover."""
    for b in backends(problem):
        for config in b.configs:
            yield b, config


def variant_name(backend: Backend, config: str) -> str:
    return backend.name if config == "default" else f"{backend.name}:{config}"


def cuda_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def unavailable_reason(backend: Backend, config: str, device: str | torch.device) -> str | None:
    """Why this backend config cannot run on `device` here, or None if it can."""
    device_type = torch.device(device).type
    if config not in backend.configs:
        return f"backend {backend.name!r} has no config {config!r}; configs: {list(backend.configs)}"
    if device_type not in backend.devices:
        return f"runs on {', '.join(backend.devices)}, not {device_type}"
    if device_type == "cuda" and (reason := cuda_reason()):
        return reason
    if device_type != "cuda" and autotune.AUTOTUNE in backend.configs[config]:
        return "autotuning times its candidates with CUDA events: CUDA only"
    return backend.unavailable(config)


def memory_budget(device: str | torch.device) -> int:
    """Bytes a backend's workspace may take on `device` (env FUSEDBENCH_MEMORY_BUDGET overrides)."""
    import os

    if (text := os.environ.get("FUSEDBENCH_MEMORY_BUDGET")) is not None:
        return parse_bytes(text)
    device = torch.device(device)
    if device.type == "cuda":
        return int(0.5 * torch.cuda.get_device_properties(device).total_memory)
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return int(min(0.25 * pages * page_size, 8 * 2**30))


def parse_bytes(text: str) -> int:
    """'4GiB', '512MiB', '1e9' -> bytes."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 1e3, "mb": 1e6, "gb": 1e9}
    lowered = text.strip().lower()
    for suffix, scale in units.items():
        if lowered.endswith(suffix):
            return int(float(lowered[: -len(suffix)]) * scale)
    return int(float(lowered))


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_runnable(
    backend: Backend,
    config: str,
    sizes: Mapping[str, int],
    dtype: torch.dtype,
    device: str | torch.device,
) -> None:
    """Raise UnsupportedError naming the reason if `backend` cannot run these inputs."""
    reason = unavailable_reason(backend, config, device)
    if reason is not None:
        raise UnsupportedError(f"backend {variant_name(backend, config)!r} is unavailable: {reason}")
    if dtype not in backend.dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in backend.dtypes)
        raise UnsupportedError(
            f"backend {backend.name!r} does not support dtype {str(dtype).removeprefix('torch.')}; "
            f"it supports {allowed}"
        )
    for size_name, (lo, hi, *why) in backend.limits.items():
        value = sizes.get(size_name)
        if value is not None and not lo <= value <= hi:
            raise UnsupportedError(
                f"{size_name}={value} is outside what backend {backend.name!r} supports: "
                f"{lo} <= {size_name} <= {hi}" + "".join(f" ({reason})" for reason in why)
            )
    if backend.workspace is not None:
        need = backend.workspace(sizes, dtype, backend.configs[config])
        budget = memory_budget(device)
        if need > budget:
            shape = ", ".join(f"{k}={v}" for k, v in sizes.items())
            raise UnsupportedError(
                f"backend {backend.name!r} would need {format_bytes(need)} of workspace for "
                f"{shape}, over the memory budget of {format_bytes(budget)} on "
                f"{torch.device(device).type} (set FUSEDBENCH_MEMORY_BUDGET to change it)"
            )


def resolve(
    problem: str,
    name: str,
    config: str,
    sizes: Mapping[str, int],
    dtype: torch.dtype,
    device: str | torch.device,
    needs: frozenset[str] = frozenset(),
) -> Backend:
    """The backend to run: `name`, or with "auto" the highest-priority one that can run this.

    needs: features the call requires (problem-defined, e.g. "grad"); a backend lacking one is refused.
    """
    candidates = sorted(backends(problem), key=lambda b: -b.priority) if name == "auto" else [backend(problem, name)]
    reasons = []
    for candidate in candidates:
        try:
            check_runnable(candidate, config, sizes, dtype, device)
            if missing := needs - candidate.features:
                raise UnsupportedError(f"backend {candidate.name!r} lacks feature(s) {sorted(missing)}")
            return candidate
        except UnsupportedError as exc:
            if name != "auto":
                raise
            reasons.append(f"{candidate.name}: {exc}")
    raise UnsupportedError("backend='auto' found no backend for these inputs:\n  " + "\n  ".join(reasons))
