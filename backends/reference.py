"""Reference: materialise every logit and let plain torch autograd differentiate them.

    b     [K, n]     = ±1 bits of the codes k in [k_start, k_stop)   (K = 2^n for the loss)
    z     [B, K, H]  = W [B, H, n] . b^T
    l     [B, K]     = relu(z) . r
    lse   [B]        = logsumexp_k l_k
    nll   [B, S]     = lse - l_y

z and l are computed in the input dtype, as plain torch would (this is the
"same-precision reference" of the tolerance policy, harness/tolerance.py), and
the reductions over k run in float32 or better. In float64 it is the oracle
every backend is checked against. Two kernels:

* loss: the whole op through torch autograd, independent of the harness's
  gradient formulas (so the properties check those formulas too);
* partial_state: (m, s, D) over any code range, materialised the same way.

Cost: about B * K * H * (n + 2) multiply-adds and B * K * H elements held at
once (several copies under autograd), so it is for small n only; `workspace`
declares the bytes and the harness refuses what exceeds the memory budget.
Limits: n_bits 1..32 (as far as the budget allows), any H and B, all four dtypes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from harness import Backend
from harness.problems.sick_bide import DTYPES, PartialState, acc_dtype, bits


def _logits(W: Tensor, r: Tensor, codes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """b [K, n], z [B, K, H] and l [B, K] for the given codes, in W's dtype."""
    b = bits(codes, W.shape[2], W.dtype)
    z = torch.einsum("bhj,kj->bkh", W, b)
    l = torch.einsum("bkh,bh->bk", torch.relu(z), r)
    return b, z, l


def loss(W: Tensor, r: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """nll [B, S] and lse [B] (accumulation dtype) for targets [B, S], through autograd.

    lse is written as m + log sum exp(l - m) with m = max l held constant, not
    torch.logsumexp: autograd then differentiates it into exp(l - m) / s, which
    stays exact as p_y -> 1, where logsumexp's backward, exp(l - lse), loses
    an ulp of |lse| and would make the float64 oracle the least accurate party.
    """
    codes = torch.arange(1 << W.shape[2], device=W.device)
    _, _, l = _logits(W, r, codes)
    l = l.to(acc_dtype(W.dtype))
    m = l.amax(1, keepdim=True).detach()
    lse = (m + torch.log(torch.exp(l - m).sum(1, keepdim=True)))[:, 0]
    return lse[:, None] - l.gather(1, targets), lse


def partial_state(W: Tensor, r: Tensor, k_start: int, k_stop: int, out: PartialState) -> None:
    codes = torch.arange(k_start, k_stop, device=W.device)
    b, z, l = _logits(W, r, codes)
    acc = out.m.dtype
    l = l.to(acc)
    m = l.amax(1)
    e = torch.exp(l - m[:, None])                                  # [B, K]
    out.m.copy_(m)
    out.s.copy_(e.sum(1))
    if out.D is not None:
        on = (z > 0).to(acc)                                        # [B, K, H]
        out.D.copy_(torch.einsum("bk,bkh,kj->bhj", e, on, b.to(acc)))


def workspace(sizes: Mapping[str, int], dtype: torch.dtype, options: Mapping) -> int:
    """Bytes held at the peak: z, relu(z) and their gradients in dtype, plus the mask and e."""
    codes = sizes.get("codes", 2 ** sizes["n_bits"])
    elements = sizes["batch"] * codes * sizes["hidden"]
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return elements * (4 * itemsize + torch.empty(0, dtype=acc_dtype(dtype)).element_size())


BACKENDS = [
    Backend(
        name="reference",
        problem="sick_bide",
        kernels={"loss": loss, "partial_state": partial_state},
        devices=("cpu", "cuda"),
        dtypes=DTYPES,
        limits={"n_bits": (1, 32)},
        features=frozenset({"grad", "k_ranges"}),
        workspace=workspace,
        priority=-100,
        summary="materialises all 2^n logits; plain torch autograd (ground truth)",
    )
]
