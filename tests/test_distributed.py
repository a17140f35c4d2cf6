"""The sharded loss on CPU processes (gloo): every rank gets the single-process result."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from harness import distributed
from harness.problems import sick_bide


def _inputs(n_bits: int):
    gen = torch.Generator().manual_seed(n_bits)
    W = torch.randn(3, 5, n_bits, generator=gen, dtype=torch.float64)
    r = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 1 << n_bits, (3, 2), generator=gen)
    return W, r, targets


def _rank(rank: int, world: int, store: str, n_bits: int, backend: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        W, r, targets = _inputs(n_bits)
        W.requires_grad_(), r.requires_grad_()
        nll, lse = distributed.sharded_loss(W, r, targets, backend=backend)
        (nll.sum() + lse.sum()).backward()
        state = distributed.sharded_partial_state(W.detach(), r.detach(), want_grad=True, backend=backend)
        torch.save({"nll": nll.detach(), "lse": lse.detach(), "dW": W.grad, "dr": r.grad,
                    "lse_state": state.m + state.s.log(), "Dn": state.D / state.s[:, None, None]},
                   os.path.join(results, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("world", "n_bits"), [(2, 6), (3, 5), (4, 1)],
                         ids=["2 ranks", "3 ranks, uneven", "empty slices"])
@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_sharded_loss_matches_single_process(tmp_path, world, n_bits, backend):
    mp.spawn(_rank, args=(world, str(tmp_path / "store"), n_bits, backend, str(tmp_path)), nprocs=world)
    W, r, targets = _inputs(n_bits)
    W.requires_grad_(), r.requires_grad_()
    nll, lse = sick_bide.loss(W, r, targets, backend=backend)
    (nll.sum() + lse.sum()).backward()
    expected = {"nll": nll.detach(), "lse": lse.detach(), "dW": W.grad, "dr": r.grad, "lse_state": lse.detach()}
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-12, atol=1e-12, msg=f"rank {rank}, {name}")
    assert distributed.shard(1, 3, 4) == (1, 2) and distributed.shard(1, 0, 4) == (0, 0)
