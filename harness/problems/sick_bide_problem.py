"""How the harness exercises the SICK-BIDE loss: inputs, size classes and the work model.

Work model (../shared/ANCHORS.md): one call walks T = batch * 2^n_bits * hidden
(row, code, hidden) triples; forward and forward-plus-gradients make one pass
over them, so `work` is the same for both modes and rates are triples per second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

from harness import tolerance
from harness.problems import sick_bide
from harness.registry import Backend, Problem

# Size classes for verification: every contract corner that fits the device.
_CPU_CASES = [
    ("n=1", {"batch": 3, "hidden": 2, "n_bits": 1, "targets_per_row": 1}),
    ("odd n, odd H, S=3", {"batch": 5, "hidden": 7, "n_bits": 9, "targets_per_row": 3}),
    ("n=12", {"batch": 16, "hidden": 32, "n_bits": 12, "targets_per_row": 1}),
    ("n=14, B=64", {"batch": 64, "hidden": 32, "n_bits": 14, "targets_per_row": 1}),
]
_CUDA_CASES = [
    *_CPU_CASES,
    ("n=16, B=64", {"batch": 64, "hidden": 32, "n_bits": 16, "targets_per_row": 1}),
    ("n=17, B=129, H=20", {"batch": 129, "hidden": 20, "n_bits": 17, "targets_per_row": 2}),
]


def cases(device: str) -> list[tuple[str, dict[str, int]]]:
    return _CUDA_CASES if torch.device(device).type == "cuda" else _CPU_CASES


def make_inputs(
    sizes: Mapping[str, int], dtype: torch.dtype, device: str | torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random W [B, H, n], r [B, H], targets [B, S] and upstream gradients, reproducible by seed.

    Drawn on the CPU in float64 and rounded to `dtype`, so every device and dtype
    sees the same values. Logits come out O(sqrt(n)), like a trained model's.
    """
    batch, hidden, n_bits = sizes["batch"], sizes["hidden"], sizes["n_bits"]
    targets_per_row = sizes.get("targets_per_row", 1)
    gen = torch.Generator().manual_seed(seed)
    acc = sick_bide.acc_dtype(dtype)
    tensors = {
        "W": torch.randn(batch, hidden, n_bits, generator=gen, dtype=torch.float64).to(dtype),
        "r": (torch.randn(batch, hidden, generator=gen, dtype=torch.float64) / math.sqrt(hidden)).to(dtype),
        "targets": torch.randint(0, 1 << n_bits, (batch, targets_per_row), generator=gen),
        "grad_nll": torch.randn(batch, targets_per_row, generator=gen, dtype=torch.float64).to(acc),
        "grad_lse": torch.randn(batch, generator=gen, dtype=torch.float64).to(acc),
    }
    return {name: t.to(device) for name, t in tensors.items()}


def prepare(
    backend: Backend, config: str, inputs: Mapping[str, torch.Tensor], mode: str
) -> Callable[[], dict[str, torch.Tensor]]:
    """A no-argument callable running one loss call ("forward") or loss plus backward ("backward")."""
    W, r, targets = inputs["W"], inputs["r"], inputs["targets"]
    run = {"backend": backend.name, "config": config}
    if mode == "forward":

        def forward() -> dict[str, torch.Tensor]:
            with torch.no_grad():
                nll, lse = sick_bide.loss(W, r, targets, **run)
            return {"nll": nll, "lse": lse}

        return forward
    if mode != "backward":
        raise ValueError(f"mode must be 'forward' or 'backward', got {mode!r}")
    W_leaf, r_leaf = W.detach().requires_grad_(), r.detach().requires_grad_()
    grads = (inputs["grad_nll"], inputs["grad_lse"])

    def forward_backward() -> dict[str, torch.Tensor]:
        W_leaf.grad = r_leaf.grad = None
        nll, lse = sick_bide.loss(W_leaf, r_leaf, targets, **run)
        torch.autograd.backward((nll, lse), grads)
        return {"nll": nll.detach(), "lse": lse.detach(), "dW": W_leaf.grad, "dr": r_leaf.grad}

    return forward_backward


class _Rounding(NamedTuple):
    """Float64 quantities of the error analysis over a set of codes (see `slack`)."""

    u: float          # FLOOR_ULPS ulps of the accumulation dtype
    b: torch.Tensor   # [K, n] bits of the codes
    z: torch.Tensor   # [B, K, H]
    p: torch.Tensor   # [B, K] softmax over these codes
    dp: torch.Tensor  # [B, K] bound on |computed p - p| from logit rounding
    d_lse: torch.Tensor  # [B] bound on the error of lse over these codes
    folded: torch.Tensor  # [B] item 4 of `slack`: folded tables' error of lse where the reference's is 0
    near: torch.Tensor   # [B, K, H] 1.0 where z may round to the other side of 0
    tau: torch.Tensor    # [B, H] bound on z's own rounding error


def _rounding(W: torch.Tensor, r: torch.Tensor, codes: torch.Tensor, dtype: torch.dtype) -> _Rounding:
    eps = torch.finfo(sick_bide.acc_dtype(dtype)).eps
    u = tolerance.FLOOR_ULPS * eps
    b = sick_bide.bits(codes, W.shape[2], torch.float64)
    z = torch.einsum("bhj,kj->bkh", W, b)
    p = torch.softmax(torch.einsum("bkh,bh->bk", z.clamp_min(0), r), dim=1)
    tau = W.shape[2] * eps * W.abs().sum(-1)
    near = ((z != 0) & (z.abs() <= tau[:, None])).double()
    d = u * (torch.einsum("bkh,bh->bk", z.clamp_min(0), r.abs()) + (r.abs() * tau).sum(-1, keepdim=True))
    d_lse = (p * d).sum(1)
    folded = u * torch.einsum("bk,bkh,bh->b", p, (z <= 0).double(), r.abs() * W.abs().sum(-1))
    return _Rounding(u, b, z, p, p * (d + d_lse[:, None]), d_lse, folded, near, tau)


def slack(inputs: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Elementwise error allowances any correct fused implementation may need (harness/tolerance.py).

    A first-order error analysis of the fused formulation, evaluated in float64
    with u = FLOOR_ULPS * eps(accumulation dtype):

    1. Logit rounding. Any computed l_k is off by up to d_k = u * (sum_h |r_h| relu(z_kh)
       + sum_h |r_h| tau_h), where tau_h = n eps sum_j |W[h, j]| bounds z's own
       rounding. Softmax turns that into |dp_k| <= p_k (d_k + sum_k' p_k' d_k'),
       which moves lse, the k-sums in dW and dr, and therefore every output.
       A reference is sometimes lucky here (two logits rounding alike), and on a
       tensor of a few elements one lucky sample would set the bound.
    2. ReLU' flips. For 0 < |z_kh| <= tau_h the mask 1[z_kh > 0] may come out
       either way; a flip moves dW[h, :] by |G| p_k |r_h| (|g_s| |r_h| for a
       target's own z_y) and dr[h] by at most |G| p_k |z_kh|. Exact zeros get
       none: integer inputs sum exactly in any order, so ReLU'(0) = 0 is checked.
    3. Cancellation. A fused backend never materialises the logits, so each
       output is a difference of a k-sum and a target term computed by different
       routes (nll = lse - l_y, dW = r (G Dn - sum_s g_s 1[z_y > 0] b_y),
       dr = G sum_j W Dn - sum_s g_s relu(z_y)): good to u of its terms, not of
       the (possibly tiny) difference. A reference reading both off one logit
       cancels exactly when p_y -> 1.
    4. Folded tables. Kernels that fold r into meet-in-the-middle tables (the
       issue asks for them) form r_h relu(a + b) as s_h max(c_h a, -c_h b) + r_h b,
       a and b sums of +-W[h, j] over disjoint bits: a difference of terms up to
       |r_h| sum_j |W[h, j]|, good to u of those terms. Where z_kh <= 0 the
       reference's term is exactly 0 and its error sets no bound, so lse (and nll,
       read off it) get u sum_k p_k sum_h 1[z_kh <= 0] |r_h| sum_j |W[h, j]|: a
       range of one code with every z < 0 at n = 17 measured 8e-8 against a bound
       of 0 without it (tests/test_partial_states.py). For z_kh > 0 the reference
       carries z's own rounding into l_k as well, so its measured error (times the
       policy's factor) already allows for this. Only lse and nll get it: added to
       d_k, it would reach Dn, dW and dr through p and make their checks several
       times looser, enough to pass a kernel whose sums over 2^n codes lose 18x
       the float32 accuracy (PERFORMANCE.md, "brute force on tensor cores").
    """
    W, r = inputs["W"].double(), inputs["r"].double()
    batch, _, n_bits = W.shape
    targets = inputs["targets"].reshape(batch, -1)                           # [B, S]
    g = inputs["grad_nll"].double().reshape(batch, -1).abs()                 # [B, S]
    G = (inputs["grad_nll"].double().reshape(batch, -1).sum(1) + inputs["grad_lse"].double()).abs()[:, None]
    e = _rounding(W, r, torch.arange(1 << n_bits, device=W.device), dtype)
    on = (e.z > 0).double()
    lse = torch.logsumexp(torch.einsum("bkh,bh->bk", e.z.clamp_min(0), r), dim=1)
    Dn = torch.einsum("bk,bkh,kj->bhj", e.p, on, e.b)                        # [B, H, n]

    b_y = sick_bide.bits(targets, n_bits, torch.float64)                     # [B, S, n]
    z_y = (W[:, None] * b_y[:, :, None]).sum(-1)                             # [B, S, H]
    relu_y = z_y.clamp_min(0)
    near_y = ((z_y != 0) & (z_y.abs() <= e.tau[:, None])).double()          # [B, S, H]
    l_y = (relu_y * r[:, None]).sum(-1)                                      # [B, S]
    d_y = e.u * ((relu_y * r.abs()[:, None]).sum(-1) + (r.abs() * e.tau).sum(-1, keepdim=True))

    nll = (e.d_lse + e.folded)[:, None] + d_y + e.u * (lse.abs()[:, None] + l_y.abs())
    per_h = (G * torch.einsum("bk,bkh->bh", e.dp, on)                                       # 1
             + G * (e.p[..., None] * e.near).sum(1) + (g[..., None] * near_y).sum(1))      # 2
    target_on = (g[..., None] * (z_y > 0)).sum(1)                                          # [B, H]
    dW = r.abs()[..., None] * (per_h[..., None] + e.u * (G[..., None] * Dn.abs() + target_on[..., None]))
    dr = (G * torch.einsum("bk,bkh->bh", e.dp, e.z.clamp_min(0))                           # 1
          + G * (e.p[..., None] * e.near * e.z.abs()).sum(1)                               # 2
          + (g[..., None] * near_y * z_y.abs()).sum(1)
          + e.u * (G * (W * Dn).abs().sum(-1) + (g[..., None] * relu_y).sum(1)))          # 3
    return {
        "nll": nll.reshape(inputs["targets"].shape).nan_to_num(0.0),
        "lse": (e.d_lse + e.folded + e.u * lse.abs()).nan_to_num(0.0),
        "dW": dW.nan_to_num(0.0),
        "dr": dr.nan_to_num(0.0),
    }


def state_meaning(state) -> dict[str, torch.Tensor]:
    """What a partial state means independently of its m: lse = m + log s, and Dn = D / s (with gradient sums)."""
    out = {"lse": state.m + state.s.log()}
    if state.D is not None:
        out["Dn"] = state.D / state.s[:, None, None]
    return out


def state_slack(W: torch.Tensor, r: torch.Tensor, k_start: int, k_stop: int, dtype: torch.dtype):
    """`slack` for a partial state's meaning over [k_start, k_stop): lse = m + log s and Dn = D / s."""
    W, r = W.double(), r.double()
    e = _rounding(W, r, torch.arange(k_start, k_stop, device=W.device), dtype)
    on = (e.z > 0).double()
    lse = torch.logsumexp(torch.einsum("bkh,bh->bk", e.z.clamp_min(0), r), dim=1)
    Dn = torch.einsum("bk,bkh,kj->bhj", e.p, on, e.b)
    per_h = torch.einsum("bk,bkh->bh", e.dp, on) + torch.einsum("bk,bkh->bh", e.p, e.near)
    return {
        "lse": (e.d_lse + e.folded + e.u * lse.abs()).nan_to_num(0.0),
        "Dn": (per_h[..., None] + e.u * Dn.abs()).nan_to_num(0.0),
    }


def work(sizes: Mapping[str, int], dtype: torch.dtype | None = None, mode: str | None = None) -> float:
    """(row, code, hidden) triples in one call, the same for every dtype and mode."""
    return float(sizes["batch"]) * 2.0 ** sizes["n_bits"] * sizes["hidden"]


PROBLEMS = [
    Problem(
        name=sick_bide.PROBLEM,
        summary="SICK-BIDE fused NLL over all 2^n codes, with dW and dr (seed 000)",
        reference="reference",
        check_backend=sick_bide.check_backend,
        make_inputs=make_inputs,
        prepare=prepare,
        cases=cases,
        work=work,
        work_unit="triples",
        slack=slack,
        # The CPU grid finishes in a few minutes on two cores; the GPU one covers the sizes kernels
        # are designed for (smaller batches at larger n, where the reference stops fitting).
        grids={
            "cpu": {"sizes": {"n_bits": [8, 12, 14], "batch": [1, 64], "hidden": [32]}},
            "gpu": {"sizes": {"n_bits": [8, 12, 16, 20, 24], "batch": [1, 64, 1024, 16384], "hidden": [32]},
                    "max_work": 2**36},
            "smoke": {"sizes": {"n_bits": [4], "batch": [3], "hidden": [5]}},
        },
        axes=("n_bits", "batch"),
        # Instructions per triple at the floor (../shared/ANCHORS.md): FMNMX + FADD forward,
        # plus the three of the gradient sums.
        roofline=("fmnmx_fadd", {"forward": 2.0, "backward": 5.0}),
    )
]
