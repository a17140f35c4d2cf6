"""The SICK-BIDE loss sharded over the codes across processes, with torch.distributed.

Rank i of w computes the partial state of its slice [i 2^n / w, (i + 1) 2^n / w) of
the codes with any backend that runs code ranges (feature "k_ranges"); the states
then combine exactly as `merge` does, through two collectives:

    m = all_reduce(m_i, MAX)
    s = all_reduce(s_i exp(m_i - m), SUM),   D = all_reduce(D_i exp(m_i - m), SUM)

after which every rank holds the whole range's (m, s, D) and computes the same nll,
lse, dW and dr (the target terms and gradients are cheap and done on every rank).
Works with any process group: NCCL across GPUs of one or several machines (torchrun),
gloo across CPU processes. Inputs are replicated: every rank passes the same W, r,
targets (the batch is small when n is large, which is when sharding pays).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from harness.problems import sick_bide
from harness.problems.sick_bide import PartialState


def shard(n_bits: int, rank: int, world: int) -> tuple[int, int]:
    """[k_start, k_stop) of `rank`: contiguous, sizes differing by at most one code."""
    codes = 1 << n_bits
    return codes * rank // world, codes * (rank + 1) // world


def all_reduce_state(state: PartialState, group: Any = None) -> PartialState:
    """Combine every rank's partial state into the whole range's, on every rank."""
    m = state.m.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    scale = torch.where(state.m == -math.inf, 0.0, torch.exp(state.m - m))   # an empty slice adds nothing
    s = state.s * scale
    dist.all_reduce(s, group=group)
    D = None
    if state.D is not None:
        D = state.D * scale[:, None, None]
        dist.all_reduce(D, group=group)
    return PartialState(m, s, D)


def _slice(W: Tensor, group: Any) -> tuple[int, int]:
    return shard(W.shape[2], dist.get_rank(group), dist.get_world_size(group))


def sharded_partial_state(W: Tensor, r: Tensor, *, want_grad: bool = False, backend: str = "auto",
                          config: str = "default", group: Any = None, **options: Any) -> PartialState:
    """The whole range's (m, s, D), each rank computing its slice; same on every rank."""
    k_start, k_stop = _slice(W, group)
    state = sick_bide.partial_state(W, r, k_start, k_stop, want_grad=want_grad, backend=backend, config=config,
                                    **options)
    return all_reduce_state(state, group)


def sharded_loss(W: Tensor, r: Tensor, targets: Tensor, *, backend: str = "auto", config: str = "default",
                 group: Any = None, **options: Any) -> tuple[Tensor, Tensor]:
    """sick_bide.loss with the codes sharded across `group`; differentiable, same result on every rank."""
    validated = sick_bide._validate(W, r, targets)
    return sick_bide._loss(W, r, targets, validated, backend, config, options, codes=_slice(W, group),
                           combine=lambda state: all_reduce_state(state, group))
