"""Output buffers the harness allocates for kernels to fill.

Kernels write into buffers the harness hands them, so the harness controls
allocation and can poison it: under `poisoned()` every buffer starts as NaN
(integer buffers as their minimum value), and an element a kernel forgot to
write fails the tolerance checks instead of passing on stale memory that
happens to look right (the all-zeros trap of KernelBench issue #165).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch

_state = threading.local()


@contextlib.contextmanager
def poisoned() -> Iterator[None]:
    """Fill every buffer made by `empty` inside this block with NaN."""
    previous = getattr(_state, "poison", False)
    _state.poison = True
    try:
        yield
    finally:
        _state.poison = previous


def empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty, or a poisoned buffer inside `poisoned()`."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if getattr(_state, "poison", False):
        out.fill_(float("nan") if dtype.is_floating_point else torch.iinfo(dtype).min)
    return out
