"""A backend as an installed package would ship it: used by tests/test_registry.py through a
fake entry point, to show that plugins need no edit of this repository."""

import torch

from harness import Backend
from harness.problems.sick_bide import PartialState


def partial_state(W, r, k_start, k_stop, out: PartialState) -> None:
    """Materialise z for [k_start, k_stop) in one go: the simplest correct backend."""
    n_bits = W.shape[2]
    codes = torch.arange(k_start, k_stop)
    b = ((codes[:, None] >> torch.arange(n_bits)) & 1).to(out.m.dtype) * 2 - 1   # [K, n]
    z = torch.einsum("bhj,kj->bkh", W.to(out.m.dtype), b)
    l = (z.clamp_min(0) * r.to(out.m.dtype)[:, None]).sum(-1)
    out.m.copy_(l.amax(1))
    e = torch.exp(l - out.m[:, None])
    out.s.copy_(e.sum(1))
    if out.D is not None:
        out.D.copy_(torch.einsum("bk,bkh,kj->bhj", e, (z > 0).to(e.dtype), b))


BACKENDS = [
    Backend(name="plugin-example", problem="sick_bide", kernels={"partial_state": partial_state},
            devices=("cpu",), dtypes=(torch.float32, torch.float64), limits={"n_bits": (1, 12)},
            features=frozenset({"grad", "k_ranges"}), summary="example plugin"),
]
