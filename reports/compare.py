"""Compare two sweeps cell by cell, with a bootstrap confidence interval on each time ratio.

A cell is flagged slower (or faster) only when the whole 95% interval of
time(candidate) / time(baseline) lies above (or below) 1, so noise does not raise
alarms; the exit code is 1 when a flagged ratio exceeds the threshold, for
regression gates in CI.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pandas as pd

from reports import load

KEY = [*load.CELL, "variant"]


def bootstrap_ratio(
    base: list[float], cand: list[float], draws: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(median ratio, 2.5th, 97.5th percentile) of median(cand) / median(base) under resampling."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(cand, k=len(cand))) / statistics.median(rng.choices(base, k=len(base)))
        for _ in range(draws)
    )
    return statistics.median(cand) / statistics.median(base), ratios[int(0.025 * draws)], ratios[int(0.975 * draws)]


def compare(baseline: str | Path, candidate: str | Path, threshold: float = 1.10) -> tuple[pd.DataFrame, int]:
    def ok_rows(path):
        path = Path(path)
        frame = load.sweep_rows(path) if path.is_dir() else pd.DataFrame(load.jsonl(path))
        return frame[frame["status"] == "ok"].set_index(KEY)

    base, cand = ok_rows(baseline), ok_rows(candidate)
    rows = []
    for key in base.index.intersection(cand.index):
        b, c = base.loc[key], cand.loc[key]
        ratio, lo, hi = bootstrap_ratio(list(b["samples_s"]), list(c["samples_s"]))
        verdict = "slower" if lo > 1 else "faster" if hi < 1 else "same"
        rows.append((*key, 1e3 * b["time_s"], 1e3 * c["time_s"], ratio, lo, hi, verdict))
    table = pd.DataFrame(rows, columns=[*KEY, "base ms", "cand ms", "ratio", "ci lo", "ci hi", "verdict"])
    regressions = table[(table["verdict"] == "slower") & (table["ratio"] > threshold)]
    return table, 1 if len(regressions) else 0
