"""Benchmark sweeps: every runnable backend variant over a grid of sizes, dtypes and modes.

Within one cell (sizes, dtype, mode) the variants run interleaved, A B C A B C ..., so
that clock drift and thermal state hit all of them alike; each sample is one call,
timed with CUDA events around it after the L2 cache is flushed (a 256 MiB write), or
with perf_counter on the CPU. A variant whose call (after a warm-up call that pays for compilation) takes longer than
the grid's max_call_s is recorded as "slow" and not timed, nor tried again at more work,
so a baseline cannot stall a sweep.
A row per (cell, variant) records the median and the
20th/80th percentiles, peak memory, the rate in the problem's work units per second,
and everything needed to trust or reproduce it: timing method, cache state, device,
versions, git commit. Cells a variant cannot run are rows with the reason. Rows are
appended to a JSON-lines file as they finish, so an interrupted sweep keeps its work.
"""

from __future__ import annotations

import itertools
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from harness import autotune, measure, registry
from harness.errors import UnsupportedError

# Settings of the named grids; each problem gives its own sizes per grid name (Problem.grids),
# and may override these settings there.
GRIDS: dict[str, dict[str, Any]] = {
    "cpu": {"dtype": ["float32"], "mode": ["forward", "backward"], "rounds": 3, "max_call_s": 5.0},
    "gpu": {"dtype": ["float32", "bfloat16"], "mode": ["forward", "backward"], "rounds": 5, "max_call_s": 1.0},
    "smoke": {"dtype": ["float32"], "mode": ["forward", "backward"], "rounds": 2},
}


def settings(problem: registry.Problem, grid: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The grid's settings with the problem's entry for it (and then `overrides`) on top."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; grids: {sorted(GRIDS)}")
    return {**GRIDS[grid], **problem.grids.get(grid, {}), **(overrides or {})}


def cells(problem: registry.Problem, grid: Mapping[str, Any]) -> Iterable[tuple[dict[str, int], str, str]]:
    """(sizes, dtype, mode) for every point of `grid` (from `settings`) the problem runs, under max_work."""
    products = grid.get("sizes") or []
    for axes in [products] if isinstance(products, Mapping) else products:
        names = list(axes)
        for values in itertools.product(*(axes[name] for name in names)):
            sizes = dict(zip(names, values, strict=True))
            for dtype, mode in itertools.product(grid["dtype"], grid["mode"]):
                if mode not in problem.modes:
                    continue
                if problem.work(sizes, getattr(torch, dtype), mode) > grid.get("max_work", float("inf")):
                    continue
                yield sizes, dtype, mode


def describe(problem: registry.Problem, sizes: Mapping[str, int], dtype: str, mode: str, device: str) -> dict:
    """The fields that identify a cell on every result row, and what reports need to plot it."""
    return {"problem": problem.name, **sizes, "shape": ",".join(f"{k}={v}" for k, v in sizes.items()),
            "dtype": dtype, "mode": mode, "device": torch.device(device).type,
            "x_axis": problem.axes[0], "facet_axis": problem.axes[1], "reference": problem.reference}


def input_bytes(inputs: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the op's inputs, upstream gradients (names starting "grad_") excluded."""
    return sum(t.nbytes for name, t in inputs.items() if not name.startswith("grad_"))


def measured(problem: registry.Problem, sizes: Mapping[str, int], dtype: str, mode: str,
             samples: Sequence[float], peak: int | None, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The fields of a timed row: median and spread, peak memory (above the inputs, which
    input_bytes counts), rate and its roofline."""
    median = statistics.median(samples)
    work = problem.work(sizes, getattr(torch, dtype), mode)
    row = {"status": "ok", "time_s": median, "time_p20_s": percentile(samples, 0.2),
           "time_p80_s": percentile(samples, 0.8), "samples_s": list(samples), "rounds": len(samples),
           "peak_bytes": peak, "input_bytes": input_bytes(inputs), "rate": work / median, "work": work,
           "work_unit": problem.work_unit}
    if problem.roofline and mode in problem.roofline[1]:
        row |= {"ceiling_name": problem.roofline[0], "ceiling_per_unit": problem.roofline[1][mode]}
    return row


def environment(device: str) -> dict[str, Any]:
    """What a result row needs to be compared with another: device, versions, commit."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node()}
    for module in ("triton", "cupy"):
        try:
            env[module] = __import__(module).__version__
        except ImportError:
            env[module] = None
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1))
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
            env["driver"], env["sm_clock"], env["sm_clock_max"] = (x.strip() for x in smi.stdout.split(",")[:3])
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
    else:
        env["device_name"] = platform.processor() or platform.machine()
        env["threads"] = torch.get_num_threads()
    env["commit"] = _commit()
    return env


def _commit(where: Path = Path(__file__).parent) -> str | None:
    """The short commit of the checkout holding `where`, with "+dirty" when tracked files differ
    from it (results of uncommitted code are not that commit's); None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=where, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "") if commit else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def problem_notes(problems: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """What reports need to know of each problem beyond its rows: its summary and the seeds' claims."""
    chosen = [registry.problem(p) for p in problems] if problems else registry.problems()
    return {p.name: {"summary": p.summary, "claims": list(p.claims)} for p in chosen}


class L2Flush:
    """Writes a 256 MiB buffer before each CUDA sample so that inputs come from memory, not L2."""

    def __init__(self, device: torch.device):
        self.buffer = torch.empty(64 * 2**20, dtype=torch.float32, device=device) if device.type == "cuda" else None

    def __call__(self) -> None:
        if self.buffer is not None:
            self.buffer.zero_()


def sample(fn: Callable[[], Any], device: torch.device, flush: L2Flush) -> float:
    """Seconds for one call of fn, L2 flushed first; CUDA events on CUDA, perf_counter otherwise."""
    flush()
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class _Slow(Exception):
    pass


def run(
    *,
    device: str,
    grid: str,
    out_path: str | Path,
    problems: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    overrides: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Sweep the named grid on `device`; append one JSON row per (cell, variant) to out_path; return the rows.

    overrides: settings (or "sizes") replacing the grid's and the problems' own, for every problem.
    shard = (i, n) keeps every n-th cell starting at i: n workers (one per GPU) cover the grid once.
    """
    dev = torch.device(device)
    env = environment(device)
    flush = L2Flush(dev)
    method = "cuda-events, L2 flushed" if dev.type == "cuda" else "perf_counter"
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    chosen = [registry.problem(p) for p in problems] if problems else registry.problems()
    plans = {p.name: settings(p, grid, overrides) for p in chosen}
    todo = [(p, c) for p in chosen for c in cells(p, plans[p.name])][shard[0]::shard[1]]
    too_slow: dict[tuple[str, str, str, str], float] = {}   # (problem, variant, dtype, mode) -> least work too slow
    for index, (problem, (sizes, dtype_name, mode)) in enumerate(todo, 1):
        dtype = getattr(torch, dtype_name)
        plan = plans[problem.name]
        work = problem.work(sizes, dtype, mode)
        cell = describe(problem, sizes, dtype_name, mode, device)
        inputs = problem.make_inputs(sizes, dtype, device, seed)
        runnable, cell_rows = [], []
        for backend, config in registry.variants(problem.name):
            if backends and backend.name not in backends:
                continue
            row = {**cell, "backend": backend.name, "config": config,
                   "variant": registry.variant_name(backend, config)}
            try:
                registry.check_runnable(backend, config, sizes, dtype, device)
                slow_key = (problem.name, row["variant"], dtype_name, mode)
                if work >= too_slow.get(slow_key, float("inf")):
                    raise _Slow(f"slower than max_call_s = {plan['max_call_s']:g} s at less work in this sweep")
                fn = problem.prepare(backend, config, inputs, mode)
                autotune.pop_last()
                fn()                                   # warm-up: compilation, caches, autotuning
                if autotune.AUTOTUNE in backend.configs[config]:
                    row["tuned"] = autotune.pop_last()
                warm = sample(fn, dev, flush)
                if warm > plan.get("max_call_s", float("inf")):
                    too_slow[slow_key] = min(too_slow.get(slow_key, float("inf")), work)
                    raise _Slow(f"a call took {warm:.3g} s, over the grid's max_call_s = {plan['max_call_s']:g} s")
                runnable.append((row, fn))
            except _Slow as exc:
                row |= {"status": "slow", "reason": str(exc)}
            except UnsupportedError as exc:
                row |= {"status": "unsupported", "reason": str(exc)}
            except torch.OutOfMemoryError as exc:
                row |= {"status": "oom", "reason": str(exc).splitlines()[0]}
                torch.cuda.empty_cache()
            cell_rows.append(row)
        samples: dict[int, list[float]] = {id(row): [] for row, _ in runnable}
        for _ in range(plan.get("rounds", 3)):
            for row, fn in runnable:
                samples[id(row)].append(sample(fn, dev, flush))
        for row, fn in runnable:
            row |= measured(problem, sizes, dtype_name, mode, samples[id(row)], measure.peak_memory(fn, device),
                            inputs)
        for row in cell_rows:
            row |= {"timing_method": method, "cache": "cold L2" if dev.type == "cuda" else "warm",
                    "env": env, "timestamp": time.time()}
            with out_path.open("a") as stream:
                stream.write(json.dumps(row, default=str) + "\n")
            rows.append(row)
        if progress:
            done = ", ".join(f"{r['variant']} {1e3 * r['time_s']:.3g} ms" if r["status"] == "ok"
                             else f"{r['variant']} {r['status']}" for r in cell_rows)
            progress(f"[{index}/{len(todo)}] {problem.name} {cell['shape']} {dtype_name} {mode}: {done}")
    return rows
