"""Autotuning: run a backend's fastest option set for each problem size, picked by timing.

A backend offers it as a config whose options hold a list of candidates under AUTOTUNE:

    configs={"default": {}, "autotune": {AUTOTUNE: [{}, {"lo_bits": 4}, {"num_warps": 8}]}}

The first call with a new key (the problem's sizes, bucketed, with dtype, mode and device)
times every candidate on the call's own inputs (CUDA events, interleaved rounds: `choose`)
and remembers the fastest; later calls with that key run it directly. The registry refuses
autotuned configs off CUDA (the interpreter's speed says nothing about the GPU's). Timing is
the harness's job, so backends only list candidates. The choice depends on timing noise, so
an autotuned result is bitwise reproducible within a process, not across processes.
`choices()` says what was picked, for the explore script and reports.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch

from harness import measure

AUTOTUNE = "autotune"
ROUNDS = 3          # candidates are timed round-robin (A B C A B C ...), so clock drift hits all alike
SAMPLE_S = 2e-3     # each sample runs back-to-back calls for about this long
MARGIN = 0.03       # another candidate replaces the first only when faster by more than this
_chosen: dict[Hashable, dict[str, Any]] = {}
_last: dict[str, Any] = {}


def bucket(size: int) -> int:
    """size rounded up to a power of two: sizes in one bucket share a tuning."""
    return 1 << max(0, size - 1).bit_length()


def split(options: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """(the options without the candidate list, the candidates merged over them; None if not tuned)."""
    if AUTOTUNE not in options:
        return dict(options), None
    base = {k: v for k, v in options.items() if k != AUTOTUNE}
    candidates = options[AUTOTUNE]
    if not isinstance(candidates, Sequence) or not candidates:
        raise ValueError(f"options[{AUTOTUNE!r}] must be a non-empty list of option dicts, got {candidates!r}")
    return base, [{**base, **candidate} for candidate in candidates]


def choose(key: Hashable, candidates: list[dict[str, Any]], run: Callable[[dict[str, Any]], Any],
           device: torch.device) -> dict[str, Any]:
    """The fastest of `candidates` for `key` (timed once per key); run(options) makes one call.

    Each candidate runs once untimed (compiling it), once timed to size its samples, then
    ROUNDS samples of about SAMPLE_S each, interleaved with the others'; the median decides.
    The first candidate (the backend's default) keeps the place unless beaten by MARGIN, so
    noise does not swap it for an equal. Another candidate that raises on its first runs drops
    out (the default's error is the call's); one that raises later, while timed, propagates.
    """
    key = (key, repr(candidates))      # options overriding the config's change the candidates: retune
    if key not in _chosen:
        _chosen[key] = _fastest(candidates, run, device)
    _last["options"] = _chosen[key]
    return _chosen[key]


def _fastest(candidates: list[dict[str, Any]], run: Callable[[dict[str, Any]], Any],
             device: torch.device) -> dict[str, Any]:
    if device.type != "cuda" or len(candidates) == 1:
        return candidates[0]
    calls = [lambda c=c: run(c) for c in candidates]
    first = [measure.time_call(calls[0], device, warmup=1, repeats=1).median]   # the default must run
    for call in calls[1:]:
        try:    # a candidate this size cannot run (too many resources, say) drops out, as in triton.autotune
            first.append(measure.time_call(call, device, warmup=1, repeats=1).median)
        except Exception:   # out of memory, a launch refused: it only disqualifies this candidate
            first.append(math.inf)
    numbers = [max(1, min(100, round(SAMPLE_S / max(t, 1e-6)))) for t in first]
    samples: list[list[float]] = [[] if t < math.inf else [math.inf] for t in first]
    for _ in range(ROUNDS):
        for i, call in enumerate(calls):
            if first[i] < math.inf:
                samples[i].extend(measure.time_call(call, device, warmup=0, repeats=1, number=numbers[i]).samples)
    medians = [statistics.median(s) for s in samples]
    best = min(range(len(candidates)), key=medians.__getitem__)
    if medians[best] > (1 - MARGIN) * medians[0]:
        best = 0
    return candidates[best]


def choices() -> dict[Hashable, dict[str, Any]]:
    """What each key was tuned to in this process (for a key tuned with several candidate
    lists, as when a call overrides the config's options, the latest)."""
    return {key: options for (key, _), options in _chosen.items()}


def pop_last() -> dict[str, Any] | None:
    """The options the latest autotuned call ran since the last pop, or None (the sweep stores
    them with its row; it pops before the call too, so a call that tunes nothing stores None)."""
    return _last.pop("options", None)
