"""Command line: `python -m harness [run|verify|list|sweep|train] ...`.

`main` takes keyword arguments mirroring the flags, so scripts and tests call
it directly; argparse lives in `run_cli`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from harness import autotune, registry, verify
from harness.errors import InputError, UnsupportedError


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def list_backends(stream=sys.stdout) -> None:
    """Every problem, its backends and configs, what they support and whether they run here."""
    for problem in registry.problems():
        print(f"{problem.name}: {problem.summary} (reference: {problem.reference})", file=stream)
        for backend in registry.backends(problem.name):
            dtypes = ",".join(verify.dtype_name(d) for d in backend.dtypes)
            limits = " ".join(f"{k}={lo}..{hi}" for k, (lo, hi, *_) in backend.limits.items())
            features = ",".join(sorted(backend.features)) or "-"
            print(f"  {backend.name:<12} {backend.summary}", file=stream)
            print(f"  {'':<12} devices={','.join(backend.devices)} dtypes={dtypes} {limits} "
                  f"features={features} priority={backend.priority}", file=stream)
            for config, options in backend.configs.items():
                status = []
                for device in backend.devices:
                    reason = registry.unavailable_reason(backend, config, device)
                    status.append(f"{device}: {'available' if reason is None else reason}")
                shown = dict(options)
                if autotune.AUTOTUNE in shown:   # the candidate list is long: say how many
                    shown[autotune.AUTOTUNE] = f"fastest of {len(shown[autotune.AUTOTUNE])} option sets, per size"
                print(f"  {'':<12} config {config!r} {shown}: {'; '.join(status)}", file=stream)


def main(
    command: str = "run",
    *,
    device: str | None = None,
    problems: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    dtypes: Sequence[str] | None = None,
    cases: Sequence[str] | None = None,
    sizes: Sequence[str] | None = None,
    repeats: int = 3,
    json_path: str | None = None,
    grid: str | None = None,
    out: str | None = None,
    gpus: int = 1,
    shard: str | None = None,
    train_steps: int | None = None,
    stream=sys.stdout,
) -> int:
    """Run a command; returns the process exit code (1 if any verification failed).

    run: verification, then the benchmark sweep of `grid` (default: "gpu" on CUDA, "cpu"
    otherwise), then the HTML report, all under `out` (default results/<date-time>/).
    verify: the verification table only. list: problems, backends, availability.
    gpus > 1 spreads the sweep over that many GPUs, one worker process per GPU (the
    `sweep` command with `shard` = "i/n"); the report merges their rows.
    train: the end-to-end training benchmark only (harness/bide.py), then the report; run
    includes it after the sweep when the SICK-BIDE problem is selected. train_steps: AdamW
    steps (default: the paper's 2000 on CUDA, 300 on the CPU; 0 skips training in run).
    """
    if command == "list":
        list_backends(stream)
        return 0
    if command not in ("run", "verify", "sweep", "train"):
        raise ValueError(f"unknown command {command!r}; commands: run, verify, list, sweep, train")
    device = device or default_device()
    out_dir = Path(out or Path("results") / time.strftime("%Y%m%d-%H%M%S"))
    if command == "run" and grid is not None:
        from harness import sweep

        if grid not in sweep.GRIDS:   # before verification, not after it
            raise ValueError(f"unknown grid {grid!r}; grids: {sorted(sweep.GRIDS)}")
    if train_steps is None and os.environ.get("FUSEDBENCH_TRAIN_STEPS"):
        train_steps = int(os.environ["FUSEDBENCH_TRAIN_STEPS"])
    if train_steps is not None and (train_steps < 0 or (command == "train" and train_steps == 0)):
        raise ValueError(f"--train-steps must be >= 1 for train (0 skips training in run), got {train_steps}")
    if command == "train":
        if not training_variants(device, backends):
            raise ValueError(f"no selected SICK-BIDE backend with gradients runs on {device}: nothing to train")
        _train(device, backends, train_steps, out_dir, stream)
        return _report(out_dir, stream)
    if command == "sweep":   # one worker of a spread sweep
        from harness import sweep

        i, n = (int(x) for x in (shard or "0/1").split("/"))
        grid_name = grid or os.environ.get("FUSEDBENCH_GRID") or ("gpu" if "cuda" in device else "cpu")
        sweep.run(device=device, grid=grid_name, out_path=out_dir / f"sweep-{i}.jsonl",
                  problems=problems, backends=backends, shard=(i, n),
                  progress=lambda line: print(f"[worker {i}] {line}", file=stream, flush=True))
        return 0
    if command == "run" and json_path is None:
        json_path = str(out_dir / "verify.json")
    failed = _verify(device, problems, backends, dtypes, cases, sizes, repeats, json_path, stream)
    if command == "verify":
        return 1 if failed else 0
    _sweep(device, problems, backends, grid, out_dir, gpus, stream)
    if train_steps != 0 and (not problems or "sick_bide" in problems):
        _train(device, backends, train_steps, out_dir, stream)
    return _report(out_dir, stream) or (1 if failed else 0)


def _verify(device, problems, backends, dtypes, cases, sizes, repeats, json_path, stream) -> int:
    torch_dtypes = [getattr(torch, d) for d in dtypes] if dtypes else None
    print(f"# verification on {device}: every backend against the float64 oracle "
          f"(err/bound < 1 passes; harness/tolerance.py)", file=stream)
    print(verify.format_header(), file=stream, flush=True)
    current = []

    def show(row: verify.Row) -> None:
        if row["problem"] not in current:
            current.append(row["problem"])
            print(f"## {row['problem']}", file=stream)
        print(verify.format_row(row), file=stream, flush=True)

    rows = verify.verify(
        device=device, problems=problems, backends=backends, dtypes=torch_dtypes, cases=cases,
        sizes=[verify.parse_sizes(s) for s in sizes or []], repeats=repeats, on_row=show,
    )
    failed = [r for r in rows if r["status"] == "FAIL"]
    ran = sum(r["status"] != "skipped" for r in rows)
    print(f"# {ran} cells verified, {len(failed)} failed, {len(rows) - ran} skipped (reasons above)",
          file=stream)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rows, indent=1, default=str))
        print(f"# rows written to {json_path}", file=stream)
    return len(failed)


def _sweep(device, problems, backends, grid, out_dir: Path, gpus: int, stream) -> None:
    from harness import ceiling, sweep

    grid = grid or os.environ.get("FUSEDBENCH_GRID") or ("gpu" if torch.device(device).type == "cuda" else "cpu")
    if grid not in sweep.GRIDS:
        raise ValueError(f"unknown grid {grid!r}; grids: {sorted(sweep.GRIDS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python -m harness " + shlex.join(sys.argv[1:]), "device": device, "grid": grid,
            "ceilings": ceiling.measure_all(device), "problems": sweep.problem_notes(problems)}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    if gpus > 1:
        _spread(gpus, grid, out_dir, problems, backends, stream)
    else:
        print(f"# sweep: grid {grid!r} on {device}, rows appended to {out_dir / 'sweep.jsonl'}", file=stream,
              flush=True)
        sweep.run(device=device, grid=grid, out_path=out_dir / "sweep.jsonl", problems=problems,
                  backends=backends, progress=lambda line: print(line, file=stream, flush=True))


def training_variants(device: str, backends: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(backend, config) of every SICK-BIDE backend with gradients that runs on `device`, the
    reference first (the anchor the others' final losses are compared with)."""
    found = [(b.name, config) for b, config in registry.variants("sick_bide")
             if "grad" in b.features and (not backends or b.name in backends)
             and registry.unavailable_reason(b, config, device) is None]
    return sorted(found, key=lambda v: (v[0] != "reference", v))


def _train(device, backends, steps, out_dir: Path, stream) -> None:
    from harness import bide

    settings = bide.GPU_SETTINGS if torch.device(device).type == "cuda" else bide.CPU_SETTINGS
    if steps is not None:
        settings = dataclasses.replace(settings, steps=steps)
    variants = training_variants(device, backends)
    if not variants:
        print(f"# end-to-end training skipped: no selected SICK-BIDE backend with gradients runs on {device}",
              file=stream, flush=True)
        return
    names = ", ".join(registry.variant_name(registry.backend("sick_bide", b), c) for b, c in variants)
    print(f"# end-to-end training: {settings.steps} steps with {names} on {device}", file=stream, flush=True)
    result = bide.run(variants, device, settings, progress=lambda line: print(line, file=stream, flush=True))
    result["command"] = "python -m harness " + shlex.join(sys.argv[1:])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train.json").write_text(json.dumps(bide.compact(result)))
    print("\n".join(bide.summary_lines(result)), file=stream, flush=True)


def _report(out_dir: Path, stream) -> int:
    try:
        from reports import html
    except ImportError as exc:
        print(f"# no report: {exc} (install the 'report' extra: pandas, matplotlib)", file=stream)
        return 1
    print(f"# report: {html.build(out_dir)}", file=stream)
    return 0


def _spread(gpus: int, grid: str, out_dir: Path, problems, backends, stream) -> None:
    """One `sweep` worker process per GPU (CUDA_VISIBLE_DEVICES pins it), each on every gpus-th cell."""
    import subprocess

    if gpus > torch.cuda.device_count():
        raise ValueError(f"gpus={gpus} but {torch.cuda.device_count()} CUDA devices are visible")
    print(f"# sweep: grid {grid!r} spread over {gpus} GPUs, rows in {out_dir}/sweep-<i>.jsonl", file=stream,
          flush=True)
    extra = [arg for name in (problems or []) for arg in ("--problem", name)]
    extra += [arg for name in (backends or []) for arg in ("--backend", name)]
    workers = [
        subprocess.Popen([sys.executable, "-m", "harness", "sweep", "--device", "cuda", "--grid", grid,
                          "--out", str(out_dir), "--shard", f"{i}/{gpus}", *extra],
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": str(i)})
        for i in range(gpus)
    ]
    codes = [w.wait() for w in workers]
    if any(codes):
        print(f"# sweep workers exited with {codes}; the report shows what they finished", file=stream)


def run_cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness",
        description="Verify and benchmark fused-loss backends against a float64 reference.",
    )
    parser.add_argument("command", nargs="?", default="run", choices=["run", "verify", "list", "sweep", "train"],
                        help="run: the main job (default): verify, sweep, train, HTML report; "
                             "verify: the verification table; list: problems, backends and availability; "
                             "train: the end-to-end training benchmark and its report")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--problem", action="append", dest="problems", help="repeatable")
    parser.add_argument("--backend", action="append", dest="backends", help="repeatable")
    parser.add_argument("--dtype", action="append", dest="dtypes",
                        choices=["float64", "float32", "float16", "bfloat16"], help="verification dtypes, repeatable")
    parser.add_argument("--case", action="append", dest="cases", help="size-class label, repeatable")
    parser.add_argument("--sizes", action="append",
                        help="an extra verification case, e.g. batch=64,hidden=32,n_bits=16 (repeatable)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per verification cell")
    parser.add_argument("--json", dest="json_path", help="also write the verification rows as JSON here")
    parser.add_argument("--grid", help="sweep grid for run: cpu, gpu, smoke (default: $FUSEDBENCH_GRID or by device)")
    parser.add_argument("--out", help="results directory for run (default: results/<date-time>)")
    parser.add_argument("--gpus", type=int, default=1, help="spread the sweep over this many GPUs (run)")
    parser.add_argument("--train-steps", type=int, help="AdamW steps of the end-to-end training benchmark "
                        "(default: $FUSEDBENCH_TRAIN_STEPS, else 2000 on CUDA, 300 on the CPU; 0 skips it in run)")
    parser.add_argument("--shard", help=argparse.SUPPRESS)   # i/n: the cells of one worker of a spread sweep
    args = parser.parse_args(argv)
    try:
        return main(**vars(args))
    except (ValueError, InputError, UnsupportedError) as exc:   # bad arguments: one line, exit code 2
        parser.error(str(exc))
