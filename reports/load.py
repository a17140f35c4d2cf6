"""Stored results -> one tidy pandas table per kind.

A results directory holds what the main job wrote: `sweep.jsonl` (one row per cell and
variant), `verify.json` (the verification table), `meta.json` (command line, ceilings),
and any pytest-benchmark JSON files (`*.benchmark.json`), whose benchmarks carry the
same row fields in extra_info and whose machine_info carries what meta.json would.
A row names its cell by problem, shape ("batch=64,hidden=32,n_bits=16"), dtype, mode
and device, and carries each size as its own column for plotting along `x_axis`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

CELL = ["problem", "shape", "dtype", "mode", "device"]


def jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:   # an interrupted sweep's last line
            continue
    return rows


def sweep_rows(directory: str | Path) -> pd.DataFrame:
    """Sweep rows from sweep.jsonl and from pytest-benchmark JSON files in `directory`."""
    directory = Path(directory)
    rows: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        rows.extend(jsonl(path))
    for path in sorted(directory.glob("*.benchmark.json")):
        for bench in json.loads(path.read_text()).get("benchmarks", []):
            extra = dict(bench.get("extra_info", {}))
            if extra:
                extra.setdefault("source", "pytest-benchmark")
                rows.append(extra)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # The same cell measured twice (the main job's sweep and a pytest-benchmark run): keep the later.
    frame = frame.drop_duplicates(subset=[c for c in [*CELL, "variant"] if c in frame], keep="last")
    frame = frame.reset_index(drop=True)
    if "env" in frame:
        env = pd.json_normalize(frame["env"].apply(lambda e: e if isinstance(e, dict) else {}).tolist())
        env.columns = [f"env.{c}" for c in env.columns]
        frame = pd.concat([frame.drop(columns=["env"]), env], axis=1)
    return frame


def verify_rows(directory: str | Path) -> pd.DataFrame:
    path = Path(directory) / "verify.json"
    return pd.DataFrame(json.loads(path.read_text())) if path.exists() else pd.DataFrame()


def meta(directory: str | Path) -> dict[str, Any]:
    """meta.json of the main job, else what pytest-benchmark runs stored in machine_info."""
    path = Path(directory) / "meta.json"
    if path.exists():
        return json.loads(path.read_text())
    found: dict[str, Any] = {}
    for bench in sorted(Path(directory).glob("*.benchmark.json")):
        info = json.loads(bench.read_text()).get("machine_info", {}).get("fusedbench", {})
        found.setdefault("ceilings", info.get("ceilings", {}))
        found.setdefault("problems", {}).update(info.get("problems", {}))
        found.setdefault("command", "pytest benchmarks --benchmark-only")
    return found
