"""SICK-BIDE fused NLL: the op's contract, partial states and autograd, written once.

For each row i of a batch (one distribution per row) a one-hidden-layer MLP
scores every n-bit code k (../shared/seeds/000 has the derivation):

    b_kj = +1 if (k >> j) & 1 else -1          k in [0, 2^n), j in [0, n)
    z_kh = sum_j W[i,h,j] b_kj                  W       [B, H, n]
    l_k  = sum_h r[i,h] relu(z_kh)              r       [B, H]
    lse  = log sum_k exp(l_k)                   lse     [B]
    nll  = lse - l_y                            targets [B] or [B, S], nll same shape

Backends never see the targets. They compute a *partial state* over a range of
codes [k_start, k_stop), per row:

    m       = max_k l_k                                   [B]
    s       = sum_k exp(l_k - m)                          [B]
    D[h, j] = sum_k exp(l_k - m) 1[z_kh > 0] b_kj         [B, H, n]  (only when gradients are wanted)

States merge associatively (rescale both by exp(m_x - max(m_a, m_b)) and add),
so one kernel interface serves whole-range calls, chunked walks and sharding k
across devices. Everything else is the harness's, here: validation, the
target terms, the autograd Function, dtype bookkeeping. On CUDA those steps run
as one Triton launch each (sick_bide_kernels.py, held to the torch code here). With p_k = exp(l_k - lse),
Dn = D / s = sum_k p_k 1[z_kh > 0] b_kj, g the upstream gradient of nll and
G = sum_s g_s + (upstream gradient of lse):

    lse       = m + log s
    dW[h, j]  = r_h (G Dn[h, j] - sum_s g_s 1[z_{y_s} h > 0] b_{y_s j})
    dr[h]     = G sum_j W[h, j] Dn[h, j] - sum_s g_s relu(z_{y_s} h)

using sum_k p_k relu(z_kh) = sum_j W[h, j] Dn[h, j] (z is linear in b).

Conventions: ReLU'(0) = 0 (torch's); nll and lse come back in the accumulation
dtype (float32 for half inputs, float64 for float64), dW and dr in the input
dtype; a row with NaN or inf in W or r gets NaN in all its outputs and nowhere else.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from harness import autotune, buffers, registry
from harness.errors import InputError, UnsupportedError
from harness.problems import sick_bide_kernels as kernels

PROBLEM = "sick_bide"
N_BITS_MAX = 32
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

# `log2_range`, a size `validate` derives from the values of W and r: log2 of the largest magnitude the
# float32 tables of a folded backend (and their sums over units) can reach, in units where 2^126 is the
# most they hold, rounded up. With L1[b, h] = sum_j |W[b, h, j]| over the rows whose W and r are finite
# (rows with NaN or inf go their own way):
#     max over rows b of the largest of
#         max_h L1[b, h] 2^126 / float32 max      a unit's tables of sums of +-W (and its z) stay finite
#         log2(e) max_{h: r = 0} L1[b, h]         c = log2 e scales such a unit's tables (its mask needs c > 0)
#         log2(e) sum_h |r[b, h]| L1[b, h]        the base-2 logits' halves s max(c a, -c b) and r b over units
# A kernel adds the two halves separately, so each can overflow where the logit does not. Backends with such
# tables declare FLOAT32_TABLES in their limits.
LOG2_RANGE_MIN = -1100      # below any float's log2: W = 0
FLOAT32_TABLES = (
    LOG2_RANGE_MIN, 126,
    "log2_range is log2 of the largest of max_h L1_h 2^126 / float32 max, log2(e) L1_h of units with r_h = 0 "
    "and log2(e) sum_h |r_h| L1_h over rows, with L1_h = sum_j |W[h, j]|; past 2^126 this backend's float32 "
    "tables or their sums can overflow (NaN where the loss is finite): use backend 'chunked' or 'reference' "
    "for such inputs",
)
KERNELS = ("partial_state", "loss")


class PartialState(NamedTuple):
    """(m [B], s [B], D [B, H, n] or None) over one range of codes, in the accumulation dtype."""

    m: Tensor
    s: Tensor
    D: Tensor | None


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def bits(codes: Tensor, n_bits: int, dtype: torch.dtype) -> Tensor:
    """codes [...] (integers) -> b [..., n_bits] with b_j = +1 if bit j of the code is set else -1."""
    shifts = torch.arange(n_bits, device=codes.device, dtype=torch.int64)
    return ((codes.long()[..., None] >> shifts) & 1).to(dtype) * 2 - 1


def z_table(W_part: Tensor) -> Tensor:
    """W_part [B, H, m] -> P [B, 2^m, H]: z of every m-bit code, P[c, h] = sum_j W_part[h, j] b_cj.

    Built by doubling over the bits (codes with bit j clear first), so each entry
    is summed in the order j = 0, 1, ...: one add per entry, no matmul (TF32 cannot
    touch it), and meet-in-the-middle tables of either half of the bits.
    """
    batch, hidden, _ = W_part.shape
    P = W_part.new_zeros(batch, 1, hidden)
    for j in range(W_part.shape[2]):
        w = W_part[:, None, :, j]                     # [B, 1, H]
        P = torch.cat((P - w, P + w), dim=1)
    return P


def merge(a: PartialState, b: PartialState) -> PartialState:
    """Combine the states of two disjoint code ranges (associative and commutative)."""
    m = torch.maximum(a.m, b.m)
    # exp(-inf - -inf) is NaN; an empty range (m = -inf, s = 0) must scale to 0 instead.
    scale_a = torch.where(a.m == -math.inf, 0.0, torch.exp(a.m - m))
    scale_b = torch.where(b.m == -math.inf, 0.0, torch.exp(b.m - m))
    s = a.s * scale_a + b.s * scale_b
    if a.D is None or b.D is None:
        return PartialState(m, s, None)
    return PartialState(m, s, a.D * scale_a[:, None, None] + b.D * scale_b[:, None, None])


def merge_chunks(m: Tensor, s: Tensor, D: Tensor | None, out: PartialState) -> None:
    """Merge per-chunk states m, s [B, C] and D [B, C, H, n] (or None) over C into `out`.

    For backends that split a row's codes into C chunks (to fill the GPU at small
    batches): the same rescale-and-add as `merge`, as one reduction, written into
    `out` directly (small batches are launch-bound: on CUDA this is one Triton launch).
    """
    if kernels.usable(m):
        kernels.merge_chunks(m, s, D, out)
        return
    torch.amax(m, 1, out=out.m)
    # exp(-inf - -inf) is NaN; an empty chunk (m = -inf, s = 0) must scale to 0 instead.
    scale = torch.where(m == -math.inf, 0.0, torch.exp(m - out.m[:, None]))     # [B, C]
    torch.sum(s * scale, 1, out=out.s)             # not a matmul: TF32 must not touch the sums
    if out.D is not None:
        torch.sum(D * scale[:, :, None, None], 1, out=out.D)


def empty_state(batch: int, hidden: int, n_bits: int, dtype: torch.dtype, device, *, want_grad: bool):
    """The identity of `merge` (m = -inf, s = 0, D = 0): the state of an empty range."""
    acc = acc_dtype(dtype)
    D = torch.zeros(batch, hidden, n_bits, dtype=acc, device=device) if want_grad else None
    m = torch.full((batch,), -math.inf, dtype=acc, device=device)
    return PartialState(m, torch.zeros(batch, dtype=acc, device=device), D)


# --------------------------------------------------------------------------- validation


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def validate(W: Any, r: Any, targets: Any = None, grad_nll: Any = None) -> dict[str, int]:
    """Check the contract and return the sizes {batch, hidden, n_bits, targets_per_row, log2_range}
    (log2_range: derived from the values, FLOAT32_TABLES).

    Raises InputError naming the argument, its value and the allowed range. Reads
    targets' min and max (one device sync) so that nothing runs on bad indices.
    """
    sizes = _validate(W, r, targets)[0]
    if grad_nll is not None:
        _check_grad_nll(grad_nll, targets, W)
    return sizes


def _validate(W: Any, r: Any, targets: Any = None) -> tuple[dict[str, int], bool]:
    """validate(), also returning whether W and r are all finite (learnt in the same sync)."""
    if not isinstance(W, Tensor):
        raise InputError(f"W must be a torch.Tensor [batch, hidden, n_bits], got {type(W).__name__}")
    if not isinstance(r, Tensor):
        raise InputError(f"r must be a torch.Tensor [batch, hidden], got {type(r).__name__}")
    if W.dtype not in DTYPES:
        allowed = ", ".join(_dtype_name(d) for d in DTYPES)
        raise InputError(f"W has dtype {_dtype_name(W.dtype)}; allowed dtypes: {allowed}")
    if W.dim() != 3:
        raise InputError(f"W must have 3 dims [batch, hidden, n_bits], got shape {tuple(W.shape)}")
    batch, hidden, n_bits = W.shape
    if not 1 <= n_bits <= N_BITS_MAX:
        raise InputError(f"n_bits = W.shape[2] = {n_bits} is outside 1 <= n_bits <= {N_BITS_MAX}")
    if hidden < 1:
        raise InputError(f"hidden = W.shape[1] = {hidden}; hidden must be >= 1")
    if r.dtype != W.dtype:
        raise InputError(f"r has dtype {_dtype_name(r.dtype)} but W has {_dtype_name(W.dtype)}; they must match")
    if r.device != W.device:
        raise InputError(f"r is on {r.device} but W is on {W.device}; they must be on one device")
    if tuple(r.shape) != (batch, hidden):
        raise InputError(f"r must have shape [batch, hidden] = {[batch, hidden]} to match W, got {list(r.shape)}")
    sizes = {"batch": batch, "hidden": hidden, "n_bits": n_bits}
    if targets is None:
        all_finite, sizes["log2_range"] = _scan(W, r, None, n_bits)
        return sizes, all_finite
    if not isinstance(targets, Tensor):
        raise InputError(f"targets must be an integer torch.Tensor, got {type(targets).__name__}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise InputError(f"targets must have an integer dtype, got {_dtype_name(targets.dtype)}")
    if targets.device != W.device:
        raise InputError(f"targets is on {targets.device} but W is on {W.device}; they must be on one device")
    if targets.dim() not in (1, 2) or targets.shape[0] != batch:
        raise InputError(
            f"targets must have shape [batch] or [batch, S] with batch = {batch}, got {list(targets.shape)}"
        )
    sizes["targets_per_row"] = targets.shape[1] if targets.dim() == 2 else 1
    all_finite, sizes["log2_range"] = _scan(W, r, targets, n_bits)
    return sizes, all_finite


def _log2_range(W: Tensor, r: Tensor, w_max: float, r_max: float) -> int:
    """The `log2_range` size (FLOAT32_TABLES). From the largest finite |W| and |r| (the probe's, free) an
    upper bound; only where that passes 2^126 (inputs near float32's range) the exact value, by a few
    more reductions and one more sync."""
    _, hidden, n_bits = W.shape
    log2e, per_float32_max = 1.4426950408889634, 2.0**126 / float(torch.finfo(torch.float32).max)
    value = max(n_bits * w_max * per_float32_max, log2e * n_bits * w_max * max(1.0, hidden * r_max))
    if value > 2.0**126:
        W, r = W.detach(), r.detach()
        rows = torch.isfinite(W).flatten(1).all(1) & torch.isfinite(r).all(1)              # [B]
        l1 = torch.where(rows[:, None], W.abs().sum(-1, dtype=torch.float64), 0.0)       # [B, H]
        r_abs = torch.where(rows[:, None], r.abs().to(torch.float64), 0.0)
        terms = torch.stack((l1.amax() * per_float32_max, log2e * torch.where(r_abs == 0, l1, 0.0).amax(),
                             log2e * (r_abs * l1).sum(-1).amax()))
        value = float(terms.max())
    if value == 0:
        return LOG2_RANGE_MIN
    if not math.isfinite(value):
        return 2048                                     # float64 inputs past 2^1024
    mantissa, exponent = math.frexp(value)              # value = mantissa 2^exponent, 1/2 <= mantissa < 1
    return exponent - 1 if mantissa == 0.5 else exponent   # ceil(log2(value)), exactly


def _check_grad_nll(grad_nll: Any, targets: Tensor, W: Tensor) -> None:
    if not isinstance(grad_nll, Tensor) or not grad_nll.dtype.is_floating_point:
        raise InputError("grad_nll must be a floating-point torch.Tensor shaped like targets")
    if grad_nll.shape != targets.shape or grad_nll.device != W.device:
        raise InputError(
            f"grad_nll must have the shape of targets {list(targets.shape)} on {W.device}, "
            f"got {list(grad_nll.shape)} on {grad_nll.device}"
        )


def _scan(W: Tensor, r: Tensor, targets: Tensor | None, n_bits: int) -> tuple[bool, int]:
    """One device sync: raise if a target is out of range; return whether W and r are all finite, and
    `log2_range` (from their largest finite magnitudes, learnt in the same sync).

    On CUDA one probe kernel (sick_bide_kernels.probe). Elsewhere a float64 sum, finite exactly
    when every summand is (finite float32 or half values cannot overflow it; a float64 input
    that overflows it only sends the call down the per-row NaN path, `_bad_rows`, which is
    exact), and the targets' aminmax: four small kernels and one copy.
    """
    if W.numel() == 0:
        return True, LOG2_RANGE_MIN
    has_targets = targets is not None and targets.numel() > 0
    if kernels.usable(W):
        lo, hi, all_finite, w_max, r_max = kernels.probe(W, r, targets.long() if has_targets else None)
    else:
        def finite_max(x: Tensor) -> Tensor:
            x = x.abs().to(torch.float64)
            return torch.where(x < math.inf, x, 0.0).amax()
        probes = [W.sum(dtype=torch.float64) + r.sum(dtype=torch.float64), finite_max(W), finite_max(r)]
        if has_targets:
            probes.extend(torch.aminmax(targets.long()))     # long: aminmax has no unsigned kernels
        values = torch.stack([p.to(torch.float64) for p in probes]).tolist()
        # float64 keeps the sign and any value >= 2^32 out of range, so the test is exact.
        all_finite, w_max, r_max = math.isfinite(values[0]), values[1], values[2]
        lo, hi = values[3:] if has_targets else (0, 0)
    if has_targets and (lo < 0 or hi >= 1 << n_bits):
        lo, hi = (int(v) for v in torch.aminmax(targets.long()))     # exactly (a float64 may have rounded)
        bad = lo if lo < 0 else hi
        where = tuple(int(i) for i in (targets.long() == bad).nonzero()[0].tolist())
        raise InputError(f"targets{list(where)} = {bad} is outside 0 <= targets < 2^n_bits = {1 << n_bits}")
    return all_finite, _log2_range(W, r, w_max, r_max)


def resolve(
    name: str, config: str, sizes: dict[str, int], dtype, device, needs: frozenset[str] = frozenset()
) -> registry.Backend:
    """The backend to run (registry.resolve); needs: "grad" for gradient sums, "k_ranges" for a sub-range."""
    return registry.resolve(PROBLEM, name, config, sizes, dtype, device, needs)


# --------------------------------------------------------------------------- kernels


def _options(backend: registry.Backend, config: str, overrides: dict[str, Any]) -> dict[str, Any]:
    return {**backend.configs[config], **overrides}


def _run_partial_state(backend, options, W, r, k_start, k_stop, want_grad) -> PartialState:
    """Allocate the state (poisoned under buffers.poisoned()) and let the backend fill it."""
    batch, hidden, n_bits = W.shape
    if k_start == k_stop or batch == 0:
        return empty_state(batch, hidden, n_bits, W.dtype, W.device, want_grad=want_grad)
    acc = acc_dtype(W.dtype)
    out = PartialState(
        buffers.empty((batch,), acc, W.device),
        buffers.empty((batch,), acc, W.device),
        buffers.empty((batch, hidden, n_bits), acc, W.device) if want_grad else None,
    )
    # Detached: kernels see plain tensors (torch.compile would otherwise guard on requires_grad).
    W, r = W.detach().contiguous(), r.detach().contiguous()
    kernel = backend.kernels["partial_state"]
    options, candidates = autotune.split(options)
    with kernels.launch_device(W):     # backends launch on the current device
        if candidates is not None:
            key = (backend.name, n_bits, hidden, autotune.bucket(batch), autotune.bucket(k_stop - k_start), W.dtype,
                   want_grad, str(W.device))
            # Candidates are timed into a state of their own, made only if this key is tuned now: `out`
            # stays as allocated (poisoned under test), so an element the chosen kernel does not write
            # still fails the checks.
            trial = functools.cache(lambda: PartialState(*(None if t is None else torch.empty_like(t) for t in out)))
            options = autotune.choose(key, candidates, lambda o: kernel(W, r, k_start, k_stop, trial(), **o),
                                      W.device)
        kernel(W, r, k_start, k_stop, out, **options)
    return out


def _bad_rows(W: Tensor, r: Tensor, all_finite: bool) -> Tensor | None:
    """[B] bool: rows with NaN or inf anywhere in W or r; None when there are none."""
    if all_finite:
        return None
    return ~(torch.isfinite(W).flatten(1).all(1) & torch.isfinite(r).all(1))


def _target_terms(W_acc: Tensor, r_acc: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """b_y [B, S, n], z_y [B, S, H] and l_y [B, S] for targets [B, S].

    Products with b = ±1 are exact, and the sums avoid matmul so that TF32
    (if a user enabled it) cannot touch the target terms.
    """
    b_y = bits(targets, W_acc.shape[2], W_acc.dtype)
    z_y = (W_acc[:, None] * b_y[:, :, None, :]).sum(-1)
    l_y = (z_y.clamp_min(0) * r_acc[:, None]).sum(-1)
    return b_y, z_y, l_y


def _nan_rows(x: Tensor, bad: Tensor | None) -> Tensor:
    return x if bad is None else x.masked_fill(bad.view(-1, *[1] * (x.dim() - 1)), math.nan)


class _FusedNLL(torch.autograd.Function):
    """nll and lse from one partial state; the gradient sums come from the forward pass."""

    @staticmethod
    def forward(ctx, W, r, targets, state_fn, want_grad, all_finite):
        state = state_fn(W, r, want_grad)
        ctx.input_dtype, ctx.launches = W.dtype, kernels.usable(W)
        if ctx.launches:   # one launch on CUDA (sick_bide_kernels), the same math as below
            nll, lse, kept = kernels.target_terms(W, r, targets, state.m, state.s, keep_targets=want_grad)
            if want_grad:
                ctx.save_for_backward(W, r, kept, state.s, state.D)
            return nll, lse
        acc = state.m.dtype
        W_acc, r_acc = W.to(acc), r.to(acc)
        b_y, z_y, l_y = _target_terms(W_acc, r_acc, targets)
        bad = _bad_rows(W, r, all_finite)
        lse = _nan_rows(state.m + state.s.log(), bad)
        nll = _nan_rows(lse[:, None] - l_y, bad)
        if want_grad:   # the target terms are small ([B, S, n + H]): kept rather than recomputed
            ctx.save_for_backward(W_acc, r_acc, b_y, z_y, state.s, state.D, bad)
        return nll, lse

    @staticmethod
    def backward(ctx, grad_nll, grad_lse):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "sick_bide loss: double backward is not supported; the fused backends compute "
                "first-order gradient sums only (use backend='reference' for higher orders)"
            )
        if ctx.launches:
            dW, dr = kernels.gradients(*ctx.saved_tensors, grad_nll, grad_lse)
        else:
            dW, dr = _gradients(*ctx.saved_tensors, grad_nll, grad_lse)
        dtype = ctx.input_dtype
        return (
            dW.to(dtype) if ctx.needs_input_grad[0] else None,
            dr.to(dtype) if ctx.needs_input_grad[1] else None,
            None, None, None, None,
        )


def _gradients(W, r, b_y, z_y, s, D, bad, grad_nll, grad_lse) -> tuple[Tensor, Tensor]:
    """dW [B, H, n] and dr [B, H] in the accumulation dtype (formulas in the module docstring),
    from the target terms b_y [B, S, n] and z_y [B, S, H] of the forward."""
    g = W.new_zeros(z_y.shape[:2]) if grad_nll is None else grad_nll.to(W.dtype)
    G = g.sum(1) if grad_lse is None else g.sum(1) + grad_lse.to(W.dtype)
    Dn = D / s[:, None, None]
    g_on = g[:, :, None] * (z_y > 0)                                   # [B, S, H]
    target_dW = (g_on[..., None] * b_y[:, :, None, :]).sum(1)         # [B, H, n]
    dW = r[:, :, None] * (G[:, None, None] * Dn - target_dW)
    dr = G[:, None] * (W * Dn).sum(-1) - (g[:, :, None] * z_y.clamp_min(0)).sum(1)
    return _nan_rows(dW, bad), _nan_rows(dr, bad)


class _NanRowsInGrad(torch.autograd.Function):
    """Identity whose gradient is NaN on bad rows: the contract for autograd-native kernels."""

    @staticmethod
    def forward(ctx, x, bad):
        ctx.save_for_backward(bad)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (bad,) = ctx.saved_tensors
        return _nan_rows(grad, bad), None


# --------------------------------------------------------------------------- public API


def loss(
    W: Tensor,
    r: Tensor,
    targets: Tensor,
    *,
    backend: str = "auto",
    config: str = "default",
    **options: Any,
) -> tuple[Tensor, Tensor]:
    """nll (shape of targets) and lse [B] of the SICK-BIDE model; differentiable in W and r.

    W [B, H, n], r [B, H] in float64/32/16 or bfloat16 on one device; targets [B]
    or [B, S] integer codes in [0, 2^n). `backend` names a registered backend (or
    "auto": the highest-priority one that can run these inputs), `config` one of
    its named configurations, `options` override that config's keywords. The
    gradient sums are computed in the forward pass only when autograd will need
    them (grad mode on and W or r requiring grad).
    """
    return _loss(W, r, targets, _validate(W, r, targets), backend, config, options)


def _loss(W, r, targets, validated, backend, config, options, codes=None, combine=None) -> tuple[Tensor, Tensor]:
    """loss() after validation: (sizes, all_finite) = validated.

    codes = (k_start, k_stop) restricts this call's kernel to a range of codes, and
    combine(state) -> state turns that partial state into the whole range's (an
    all-reduce across ranks: harness/distributed.py). Default: the whole range, as is.
    """
    sizes, all_finite = validated
    want_grad = torch.is_grad_enabled() and (W.requires_grad or r.requires_grad)
    needs = {"grad"} if want_grad else set()
    k_start, k_stop = codes or (0, 1 << sizes["n_bits"])
    if (k_start, k_stop) != (0, 1 << sizes["n_bits"]):
        needs.add("k_ranges")
    chosen = resolve(backend, config, sizes, W.dtype, W.device, frozenset(needs))
    targets_2d = targets.long().reshape(sizes["batch"], sizes["targets_per_row"])
    if sizes["batch"] == 0:
        acc = acc_dtype(W.dtype)
        nll, lse = W.new_zeros(targets.shape, dtype=acc), W.new_zeros(0, dtype=acc)
        # Keep W and r in the graph so that backward on an empty batch gives empty gradients.
        return nll + 0 * W.sum() + 0 * r.sum(), lse + 0 * W.sum()
    options = _options(chosen, config, options)
    if codes is None and combine is None and "loss" in chosen.kernels:
        if autotune.AUTOTUNE in options:
            raise UnsupportedError(f"backend {chosen.name!r}: autotuning is for partial_state kernels")
        bad = _bad_rows(W, r, all_finite)
        if want_grad and bad is not None:
            W, r = _NanRowsInGrad.apply(W, bad), _NanRowsInGrad.apply(r, bad)
        nll, lse = chosen.kernels["loss"](W, r, targets_2d, **options)
        nll, lse = _nan_rows(nll, bad), _nan_rows(lse, bad)
    else:
        def state_fn(W, r, want_grad):
            state = _run_partial_state(chosen, options, W, r, k_start, k_stop, want_grad)
            return combine(state) if combine else state

        nll, lse = _FusedNLL.apply(W, r, targets_2d, state_fn, want_grad, all_finite)
    return nll.reshape(targets.shape), lse


def loss_and_grad(
    W: Tensor,
    r: Tensor,
    targets: Tensor,
    grad_nll: Tensor | None = None,
    *,
    backend: str = "auto",
    config: str = "default",
    **options: Any,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """nll, lse, dW, dr without autograd: the gradient of sum(grad_nll * nll) (grad_nll defaults to ones)."""
    validated = _validate(W, r, targets)
    if grad_nll is None:
        grad_nll = torch.ones(targets.shape, dtype=acc_dtype(W.dtype), device=W.device)
    _check_grad_nll(grad_nll, targets, W)
    with torch.enable_grad():
        W_, r_ = W.detach().requires_grad_(), r.detach().requires_grad_()
        nll, lse = _loss(W_, r_, targets, validated, backend, config, options)
        dW, dr = torch.autograd.grad(nll, (W_, r_), grad_nll.to(nll.dtype), allow_unused=True)
    return nll.detach(), lse.detach(), dW, dr


def partial_state(
    W: Tensor,
    r: Tensor,
    k_start: int = 0,
    k_stop: int | None = None,
    *,
    want_grad: bool = False,
    backend: str = "auto",
    config: str = "default",
    **options: Any,
) -> PartialState:
    """The backend's (m, s, D) over codes [k_start, k_stop) (default: all 2^n), validated."""
    sizes, all_finite = _validate(W, r)
    n_bits = sizes["n_bits"]
    k_stop = 1 << n_bits if k_stop is None else k_stop
    if not (isinstance(k_start, int) and isinstance(k_stop, int) and 0 <= k_start <= k_stop <= 1 << n_bits):
        raise InputError(
            f"k range [{k_start}, {k_stop}) must satisfy 0 <= k_start <= k_stop <= 2^n_bits = {1 << n_bits}"
        )
    needs = {"grad"} if want_grad else set()
    if (k_start, k_stop) != (0, 1 << n_bits):
        needs.add("k_ranges")
    sizes["codes"] = k_stop - k_start
    chosen = resolve(backend, config, sizes, W.dtype, W.device, frozenset(needs))
    if "partial_state" not in chosen.kernels:
        raise UnsupportedError(f"backend {chosen.name!r} has no partial_state kernel")
    state = _run_partial_state(chosen, _options(chosen, config, options), W, r, k_start, k_stop, want_grad)
    bad = _bad_rows(W, r, all_finite)
    return PartialState(*(None if t is None else _nan_rows(t, bad) for t in state))


def check_backend(backend: registry.Backend) -> None:
    """Registration check: a SICK-BIDE backend provides partial_state, loss, or both."""
    unknown = set(backend.kernels) - set(KERNELS)
    if unknown or not backend.kernels:
        raise ValueError(
            f"backend {backend.name!r}: kernels must be among {KERNELS}, got {sorted(backend.kernels)}"
        )
    if "k_ranges" in backend.features and "partial_state" not in backend.kernels:
        raise ValueError(f"backend {backend.name!r}: feature 'k_ranges' needs a partial_state kernel")
