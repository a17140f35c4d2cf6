"""Verification: every available backend of every problem against the float64 oracle.

For each problem, size class (`Problem.cases`) and dtype, the inputs are drawn
once, the reference runs in float64 (the oracle) and in the dtype (setting the
bound, harness/tolerance.py), and then every backend variant runs forward plus
backward with poisoned output buffers. A row records the verdict per output,
the forward and forward+backward times and the peak memory. Cells a backend
cannot run are rows with the reason, never crashes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from harness import buffers, measure, registry, tolerance
from harness.errors import UnsupportedError

Row = dict[str, Any]


def cast(inputs: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every floating-point input converted to dtype (integers such as targets untouched)."""
    return {k: v.to(dtype) if v.dtype.is_floating_point else v for k, v in inputs.items()}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def ground_truth(problem, inputs, dtype):
    """(oracle, reference-in-dtype, slack) outputs for judging a backend on `inputs` of `dtype`.

    The oracle is the problem's reference backend, forward plus backward, on the
    inputs upcast to float64; the second runs the problem's tolerance reference (by
    default the same backend) in tolerance.reference_dtype(dtype).
    """
    reference = registry.backend(problem.name, problem.reference)
    inputs64 = cast(inputs, torch.float64)
    oracle = problem.prepare(reference, "default", inputs64, "backward")()
    ref_inputs = cast(inputs, tolerance.reference_dtype(dtype))
    same_precision = registry.backend(problem.name, problem.tolerance_reference or problem.reference)
    in_dtype = problem.prepare(same_precision, "default", ref_inputs, "backward")()
    slack = problem.slack(inputs64, dtype) if problem.slack else None
    return oracle, in_dtype, slack


def _run_cell(problem, backend, config, inputs, truth, dtype, device, repeats) -> Row:
    with buffers.poisoned():
        outputs = problem.prepare(backend, config, inputs, "backward")()
    oracle, reference, slack = truth
    checks = tolerance.check(outputs, oracle, reference, dtype, slack)
    timings = {
        mode: measure.time_call(problem.prepare(backend, config, inputs, mode), device, repeats=repeats)
        for mode in problem.modes
    }
    peak = measure.peak_memory(problem.prepare(backend, config, inputs, "backward"), device)
    return {
        "status": "pass" if all(c.ok for c in checks) else "FAIL",
        "worst_ratio": max((c.ratio for c in checks), default=0.0),
        "checks": [
            {"output": c.name, "err": c.err, "err_ref": c.err_ref, "bound": c.bound, "ok": c.ok, "detail": str(c)}
            for c in checks
        ],
        **{f"time_{mode}_s": t.median for mode, t in timings.items()},
        "timing_method": next(iter(timings.values())).method,
        "peak_bytes": peak,
    }


def verify(
    *,
    device: str,
    problems: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    cases: Sequence[str] | None = None,
    sizes: Iterable[dict[str, int]] | None = None,
    repeats: int = 3,
    seed: int = 0,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Rows for every (problem, case, dtype, backend variant); on_row sees each as it finishes.

    cases: labels of the problem's size classes to keep; sizes: extra ad-hoc cases.
    """
    rows = []
    for problem in [registry.problem(p) for p in problems] if problems else registry.problems():
        variants = [(b, c) for b, c in registry.variants(problem.name) if backends is None or b.name in backends]
        problem_dtypes = list(dtypes or dict.fromkeys(d for b, _ in variants for d in b.dtypes))
        chosen = [(label, s) for label, s in problem.cases(device) if cases is None or label in cases]
        if sizes:
            chosen = [*(chosen if cases else []), *((format_sizes(s), s) for s in sizes)]
        for label, case_sizes in chosen:
            for dtype in problem_dtypes:
                base = {"problem": problem.name, "case": label, **case_sizes, "dtype": dtype_name(dtype),
                        "device": device}
                for row in _case_rows(problem, variants, case_sizes, dtype, device, repeats, seed):
                    rows.append(base | row)
                    if on_row:
                        on_row(rows[-1])
    return rows


def _case_rows(problem, variants, sizes, dtype, device, repeats, seed) -> Iterator[Row]:
    """One row per variant for one (size class, dtype): its verdict, or why it did not run."""
    inputs = problem.make_inputs(sizes, dtype, device, seed)
    try:
        registry.check_runnable(registry.backend(problem.name, problem.reference), "default", sizes,
                                torch.float64, device)
        truth, no_oracle = ground_truth(problem, inputs, dtype), None
    except UnsupportedError as exc:
        truth, no_oracle = None, f"no float64 oracle: {exc}"
    for backend, config in variants:
        row = {"backend": backend.name, "config": config, "variant": registry.variant_name(backend, config)}
        try:
            registry.check_runnable(backend, config, sizes, dtype, device)
            if no_oracle:
                raise UnsupportedError(no_oracle)
            row |= _run_cell(problem, backend, config, inputs, truth, dtype, device, repeats)
        except UnsupportedError as exc:
            row |= {"status": "skipped", "reason": str(exc)}
        except torch.OutOfMemoryError as exc:
            row |= {"status": "skipped", "reason": f"out of memory: {str(exc).splitlines()[0]}"}
        yield row


def format_sizes(sizes: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sizes.items())


def parse_sizes(text: str) -> dict[str, int]:
    """'batch=64,hidden=32,n_bits=16' -> {'batch': 64, 'hidden': 32, 'n_bits': 16}."""
    try:
        return {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise ValueError(f"sizes must look like 'batch=64,hidden=32,n_bits=16', got {text!r}") from None


COLUMNS = ("variant", "dtype", "case", "status", "err/bound", "fwd ms", "fwd+bwd ms", "peak MiB")
WIDTHS = (18, 9, 36, 7, 9, 10, 10, 9)


def format_header() -> str:
    return "  ".join(c.ljust(w) for c, w in zip(COLUMNS, WIDTHS, strict=True))


def format_row(row: Row) -> str:
    if row["status"] == "skipped":
        cells = (row["variant"], row["dtype"], row["case"], "skip")
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, WIDTHS, strict=False)) + "  " + row["reason"]
    peak = row.get("peak_bytes")
    cells = (
        row["variant"], row["dtype"], row["case"], row["status"], f"{row['worst_ratio']:.3f}",
        f"{1e3 * row['time_forward_s']:.3f}", f"{1e3 * row['time_backward_s']:.3f}",
        "n/a" if peak is None else f"{peak / 2**20:.1f}",
    )
    line = "  ".join(str(c).ljust(w) for c, w in zip(cells, WIDTHS, strict=True))
    if row["status"] == "FAIL":
        line += "\n      " + "\n      ".join(c["detail"] for c in row["checks"] if not c["ok"])
    return line


def print_rows(row: Row, stream=sys.stdout) -> None:
    print(format_row(row), file=stream, flush=True)
