"""The autograd contract of sick_bide.loss, for every backend variant on every device."""

from __future__ import annotations

import pytest
import torch

from harness import registry
from harness.errors import UnsupportedError
from harness.problems import sick_bide


def inputs(device, dtype=torch.float32, batch=4, hidden=5, n_bits=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(batch, hidden, n_bits, generator=gen).to(dtype).to(device)
    r = torch.randn(batch, hidden, generator=gen).to(dtype).to(device)
    targets = torch.randint(0, 1 << n_bits, (batch, 2), generator=gen).to(device)
    return W, r, targets


def widest(backend) -> torch.dtype:
    """float64 where the backend has it (exact comparisons), else float32."""
    return torch.float64 if torch.float64 in backend.dtypes else torch.float32


def call(variant, W, r, targets, **kw):
    backend, config, _ = variant
    return sick_bide.loss(W, r, targets, backend=backend.name, config=config, **kw)


def test_empty_batch_returns_empty_outputs_and_gradients(sick_bide_variant):
    device = sick_bide_variant[2]
    W = torch.randn(0, 3, 5, device=device, requires_grad=True)
    r = torch.randn(0, 3, device=device, requires_grad=True)
    targets = torch.zeros(0, 2, dtype=torch.long, device=device)
    nll, lse = call(sick_bide_variant, W, r, targets)
    assert nll.shape == (0, 2) and lse.shape == (0,)
    (nll.sum() + lse.sum()).backward()
    assert W.grad.shape == (0, 3, 5) and r.grad.shape == (0, 3)


def test_one_dimensional_targets_give_one_dimensional_nll(sick_bide_variant):
    W, r, targets = inputs(sick_bide_variant[2])
    nll_1d, _ = call(sick_bide_variant, W, r, targets[:, 0])
    nll_2d, _ = call(sick_bide_variant, W, r, targets[:, :1])
    assert nll_1d.shape == (4,) and nll_2d.shape == (4, 1)
    torch.testing.assert_close(nll_1d, nll_2d[:, 0], rtol=0, atol=0)


def test_rows_without_targets_give_lse_and_its_gradient(sick_bide_variant):
    """targets [B, 0]: nll is [B, 0]; lse and its gradient are those of any other targets."""
    W, r, targets = inputs(sick_bide_variant[2])
    results = []
    for cols in (targets[:, :0], targets[:, :1]):
        W_, r_ = W.clone().requires_grad_(), r.clone().requires_grad_()
        nll, lse = call(sick_bide_variant, W_, r_, cols)
        lse.sum().backward()
        results.append((nll, lse.detach(), W_.grad, r_.grad))
    (nll0, *rest0), (nll1, *rest1) = results
    assert nll0.shape == (4, 0) and nll1.shape == (4, 1)
    for a, b in zip(rest0, rest1, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_non_contiguous_inputs_match_contiguous(sick_bide_variant):
    W, r, targets = inputs(sick_bide_variant[2])
    W_strided = W.transpose(1, 2).contiguous().transpose(1, 2)       # same values, other strides
    r_strided = torch.stack([r, r], dim=-1)[..., 0]
    assert not W_strided.is_contiguous() and not r_strided.is_contiguous()
    t_strided = torch.stack([targets, targets], dim=-1)[..., 1]
    for a, b in zip(call(sick_bide_variant, W, r, targets),
                    call(sick_bide_variant, W_strided, r_strided, t_strided), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("which", ["W", "r"])
def test_requires_grad_on_one_input_only(sick_bide_variant, which):
    W, r, targets = inputs(sick_bide_variant[2])
    leaf = (W if which == "W" else r).requires_grad_()
    nll, lse = call(sick_bide_variant, W, r, targets)
    (nll.sum() + lse.sum()).backward()
    assert leaf.grad is not None and leaf.grad.shape == leaf.shape and torch.isfinite(leaf.grad).all()
    other = r if which == "W" else W
    assert other.grad is None


def test_gradients_come_back_in_the_input_dtype(sick_bide_variant):
    backend, _, device = sick_bide_variant
    for dtype in backend.dtypes:
        W, r, targets = inputs(device, dtype)
        W.requires_grad_(), r.requires_grad_()
        nll, lse = call(sick_bide_variant, W, r, targets)
        assert nll.dtype == lse.dtype == sick_bide.acc_dtype(dtype)
        nll.sum().backward()
        assert W.grad.dtype == dtype and r.grad.dtype == dtype


def test_no_grad_computes_no_gradient_sums(sick_bide_variant, monkeypatch):
    backend, _, device = sick_bide_variant
    if "partial_state" not in backend.kernels or "loss" in backend.kernels:
        pytest.skip(f"{backend.name} differentiates with autograd; there are no fused gradient sums")
    seen = []
    kernel = backend.kernels["partial_state"]

    def spy(W, r, k_start, k_stop, out, **options):
        seen.append(out.D is not None)
        return kernel(W, r, k_start, k_stop, out, **options)

    monkeypatch.setitem(backend.kernels, "partial_state", spy)
    W, r, targets = inputs(device)
    W.requires_grad_()
    with torch.no_grad():
        call(sick_bide_variant, W, r, targets)
    call(sick_bide_variant, W.detach(), r, targets)   # nothing requires grad
    call(sick_bide_variant, W, r, targets)            # W requires grad: sums wanted
    assert seen == [False, False, True]


def test_double_backward_raises_a_clear_error(sick_bide_variant):
    backend, _, device = sick_bide_variant
    W, r, targets = inputs(device, widest(backend))
    W.requires_grad_()
    nll, _ = call(sick_bide_variant, W, r, targets)
    if "loss" in backend.kernels:  # autograd-native: second derivatives exist (ReLU'' = 0)
        (dW,) = torch.autograd.grad(nll.sum(), W, create_graph=True)
        (ddW,) = torch.autograd.grad(dW.sum(), W, allow_unused=True, materialize_grads=True)
        assert torch.isfinite(ddW).all()
        return
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(nll.sum(), W, create_graph=True)


def test_loss_and_grad_matches_autograd(sick_bide_variant):
    backend, config, device = sick_bide_variant
    W, r, targets = inputs(device, widest(backend))
    grad_nll = torch.randn(targets.shape, dtype=torch.float64, device=device)
    nll, lse, dW, dr = sick_bide.loss_and_grad(W, r, targets, grad_nll, backend=backend.name, config=config)
    W_, r_ = W.clone().requires_grad_(), r.clone().requires_grad_()
    nll_ref, _ = call(sick_bide_variant, W_, r_, targets)
    nll_ref.backward(grad_nll)
    torch.testing.assert_close(nll, nll_ref.detach())
    torch.testing.assert_close(dW, W_.grad)
    torch.testing.assert_close(dr, r_.grad)
    assert not nll.requires_grad and lse.shape == (W.shape[0],)


def test_options_override_the_config(sick_bide_variant):
    """Keyword options reach the kernel: an unknown one is an error, not silently ignored."""
    W, r, targets = inputs(sick_bide_variant[2])
    with pytest.raises(TypeError):
        call(sick_bide_variant, W, r, targets, no_such_option=1)


def test_auto_picks_a_runnable_backend():
    W, r, targets = inputs("cpu")
    nll, _ = sick_bide.loss(W, r, targets)   # backend="auto"
    ref_nll, _ = sick_bide.loss(W, r, targets, backend="reference")
    torch.testing.assert_close(nll, ref_nll)
    best = max((b for b in registry.backends("sick_bide")
                if registry.unavailable_reason(b, "default", "cpu") is None), key=lambda b: b.priority)
    assert best.name != "reference"


def test_triton_option_values_out_of_range_are_refused_by_name():
    """The triton backend's design options: a bad value is a ValueError naming the option and what it
    allows, an option of the other design a TypeError naming it, raised before any kernel runs."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    W, r, _ = inputs(device)
    with pytest.raises(ValueError, match=r"design must be 'mitm' or 'brute', got 'tables'"):
        sick_bide.partial_state(W, r, backend="triton", design="tables")
    with pytest.raises(ValueError, match=r"block_k must be a power of two >= 16, got 24"):
        sick_bide.partial_state(W, r, backend="triton", config="brute", block_k=24)
    with pytest.raises(TypeError, match="block_k"):
        sick_bide.partial_state(W, r, backend="triton", block_k=64)
    with pytest.raises(TypeError, match="lo_bits"):
        sick_bide.partial_state(W, r, backend="triton", config="brute", lo_bits=4)
    with pytest.raises(ValueError, match=r"lo_bits must be an int in 1\.\.6, got 0"):
        sick_bide.partial_state(W, r, backend="triton", lo_bits=0)
    with pytest.raises(ValueError, match=r"fused_num_warps must be 1, 2, 4, 8 or 16, got 3"):
        sick_bide.partial_state(W, r, want_grad=True, backend="triton", fused_num_warps=3)
    with pytest.raises(ValueError, match=r"lo_bits \+ mid_bits = 16 makes tiles of more than 256 codes per thread"):
        sick_bide.partial_state(W, r, backend="triton", lo_bits=6, mid_bits=10)
    with pytest.raises(ValueError, match=r"programs_per_sm must be an int in 1\.\.32, got 0"):
        sick_bide.partial_state(W, r, backend="triton", programs_per_sm=0)
    with pytest.raises(ValueError, match=r"fused_maxnreg must be 0 \(no cap\) or an int in 24\.\.255, got 8"):
        sick_bide.partial_state(W, r, backend="triton", fused_maxnreg=8)
    with pytest.raises(ValueError, match=r"mid_bits must be an int in 1\.\.11, got 12"):
        sick_bide.partial_state(W, r, backend="triton", mid_bits=12)


def test_weights_near_the_float32_limit(sick_bide_variant):
    """W = 3.4e38 (finite, past bfloat16's largest) with r = 2e-38 or 5e-39 (subnormal, which a kernel flushing
    subnormals to zero reads as 0): z, r relu(z) and the loss are finite and right. n = 1 and two units, so the
    logits are known: l = 2 for code 0, r_0 W_00 for code 1."""
    backend, _, device = sick_bide_variant
    if torch.float32 not in backend.dtypes:
        pytest.skip(f"{backend.name} has no float32; this case needs its range")
    W = torch.tensor([[[3.4e38], [-1.0]]], device=device)
    for r0 in (2.0e-38, 5.0e-39):      # normal, and subnormal (a kernel flushing it to 0 reads r_0 = 0)
        r = torch.tensor([[r0, 2.0]], device=device)
        with torch.no_grad():
            nll, lse = call(sick_bide_variant, W, r, torch.tensor([1], device=device))
        l_code = torch.tensor([2.0, float(r[0, 0].double() * W[0, 0, 0].double())], dtype=torch.float64)
        expected = torch.logsumexp(l_code, 0)
        bound = 8 * torch.finfo(torch.float32).eps * float(expected)
        right = abs(float(lse) - float(expected)) <= bound and abs(float(nll) - float(expected - l_code[1])) <= bound
        assert right, (r0, float(lse), float(nll), float(expected), float(expected - l_code[1]))


# Large pre-activations, as (W, r, targets), answered by every backend or refused by name by the table backends
# (FLOAT32_TABLES in harness/problems/sick_bide.py). W = [2e38, 2e38] with r = -1: z = +-4e38 overflows float32
# for two of the four codes (and is an exact 0 for the other two), yet every logit -relu(z) has a finite limit
# (0 where z = -inf, -inf where z = +inf): lse = log 3, gradients 0; its log2_range is 129, past the tables'
# 126. W = [2^125, 2^125] with r = 2^-3, log2_range 125: within it, and past what the abs form's own tables
# hold (its rows take the max form).
OVERFLOW_CASES = {
    "past the tables' range": ([[[2.0e38, 2.0e38]]], [[-1.0]], [[0, 1]]),
    "within it": ([[[2.0**125, 2.0**125]]], [[2.0**-3]], [[0, 1]]),
}
# Where a table, not a logit, leaves float32 (a review found both accepted by a looser bound, and Triton's
# table kernels wrong on them): n = 7 with W = 2^127 on bits 5 and 6 (their table sums reach 2^128), and a
# unit with r = 0, whose tables the kernels scale by log2 e (its mask needs c > 0), with L1 = 2.5e38.
TABLE_OVERFLOW_CASES = {
    "a table sum reaches 2^128": ([[[0.0] * 5 + [2.0**127] * 2]], [[-(2.0**-10)]], [[0, 32]]),   # z = -inf, 0
    "a unit with r = 0": ([[[1.5e38, 1.0e38], [1.0, 1.0]]], [[0.0, 1.0]], [[0, 3]]),
}


def _with_reference(case, device):
    """(W, r, targets) of `case` on device and the float64 reference's nll, lse, dW and dr."""
    W, r, targets = (torch.tensor(x, device=device) for x in case)
    ref_W, ref_r = W.double().cpu().requires_grad_(), r.double().cpu().requires_grad_()
    ref_nll, ref_lse = sick_bide.loss(ref_W, ref_r, targets.cpu(), backend="reference")
    (ref_nll.sum() + ref_lse.sum()).backward()
    return W, r, targets, ref_nll.detach(), ref_lse.detach(), ref_W.grad, ref_r.grad


def _refused_past_the_tables_range(backend, W, r, targets, sick_bide_variant) -> bool:
    """True (after checking the refusal) where `backend` declares the float32 tables' range and W, r are past it."""
    if "log2_range" not in backend.limits or sick_bide.validate(W, r)["log2_range"] <= backend.limits["log2_range"][1]:
        return False
    with pytest.raises(UnsupportedError, match=r"log2_range=\d+ .*L1_h = sum_j \|W\[h, j\]\|.*'chunked'"):
        call(sick_bide_variant, W, r, targets)
    return True


@pytest.mark.parametrize("case", [*OVERFLOW_CASES, *TABLE_OVERFLOW_CASES])
def test_pre_activations_past_float32_give_the_finite_loss(sick_bide_variant, case):
    backend, _, device = sick_bide_variant
    if torch.float32 not in backend.dtypes:
        pytest.skip(f"{backend.name} has no float32; this case needs its range")
    W, r, targets, ref_nll, ref_lse, _, _ = _with_reference({**OVERFLOW_CASES, **TABLE_OVERFLOW_CASES}[case], device)
    if _refused_past_the_tables_range(backend, W, r, targets, sick_bide_variant):
        return
    tol = 8 * torch.finfo(torch.float32).eps
    with torch.no_grad():                               # the forward-only kernels
        nll, lse = call(sick_bide_variant, W, r, targets)
    torch.testing.assert_close(lse.double().cpu(), ref_lse, rtol=tol, atol=tol)
    torch.testing.assert_close(nll.double().cpu(), ref_nll, rtol=tol, atol=tol)


def test_partial_states_across_code_2_to_the_31(sick_bide_variant):
    """n = 32, codes [2^31 - 2^14, 2^31 - 2^13): tile offsets past int32 must not wrap (a review found Triton's
    edge test shifting an int32 tile, which summed twice the codes). Checked against the float64 reference."""
    backend, config, device = sick_bide_variant
    if "k_ranges" not in backend.features or torch.float32 not in backend.dtypes:
        pytest.skip(f"{backend.name} has no k-ranges or no float32")
    gen = torch.Generator().manual_seed(3)
    W = (0.1 * torch.randn(2, 3, 32, generator=gen)).to(device)
    r = torch.randn(2, 3, generator=gen).to(device)
    k_start = (1 << 31) - (1 << 14)
    k_stop = k_start + (1 << 13)
    got = sick_bide.partial_state(W, r, k_start, k_stop, backend=backend.name, config=config)
    ref = sick_bide.partial_state(W.double(), r.double(), k_start, k_stop, backend="reference")
    got_lse, ref_lse = (got.m + got.s.log()).double().cpu(), (ref.m + ref.s.log()).cpu()
    torch.testing.assert_close(got_lse, ref_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", list(OVERFLOW_CASES))
def test_pre_activations_past_float32_give_finite_gradients(sick_bide_variant, case):
    backend, _, device = sick_bide_variant
    if torch.float32 not in backend.dtypes:
        pytest.skip(f"{backend.name} has no float32; this case needs its range")
    W, r, targets, ref_nll, ref_lse, ref_dW, ref_dr = _with_reference(OVERFLOW_CASES[case], device)
    if _refused_past_the_tables_range(backend, W, r, targets, sick_bide_variant):
        return
    if "loss" in backend.kernels and case == "past the tables' range":   # README, backends: its known limit
        pytest.skip(f"{backend.name} differentiates with plain autograd: its dr sums relu(z) g = inf * 0 = NaN")
    tol = 8 * torch.finfo(torch.float32).eps
    W_, r_ = W.clone().requires_grad_(), r.clone().requires_grad_()
    nll, lse = call(sick_bide_variant, W_, r_, targets)    # the fused kernels
    (nll.sum() + lse.sum()).backward()
    torch.testing.assert_close(lse.detach().double().cpu(), ref_lse, rtol=tol, atol=tol)
    torch.testing.assert_close(nll.detach().double().cpu(), ref_nll, rtol=tol, atol=tol)
    torch.testing.assert_close(W_.grad.double().cpu(), ref_dW, rtol=tol, atol=tol)
    torch.testing.assert_close(r_.grad.double().cpu(), ref_dr, rtol=tol, atol=tol)


def test_subnormal_logits_keep_their_gradient_mask(sick_bide_variant):
    """z = +-1e-39 (subnormal): the gradient mask 1[z > 0] is 1 for code 1, so d nll / dW is exactly -1/2
    (n = 1, one unit, r = 1, target 1; the two codes are equally likely to float32's precision). A kernel
    that flushes subnormals to zero reads z = 0 and gives -1."""
    backend, _, device = sick_bide_variant
    if torch.float32 not in backend.dtypes:
        pytest.skip(f"{backend.name} has no float32; this case needs its range")
    W = torch.tensor([[[1.0e-39]]], device=device, requires_grad=True)
    r = torch.tensor([[1.0]], device=device, requires_grad=True)
    nll, _ = call(sick_bide_variant, W, r, torch.tensor([1], device=device))
    nll.sum().backward()
    assert abs(float(W.grad[0, 0, 0]) + 0.5) <= 8 * torch.finfo(torch.float32).eps, float(W.grad[0, 0, 0])


def test_cupy_option_values_out_of_range_are_refused_by_name():
    """The cupy backend's tile options: a bad value is a ValueError naming the option and its range, raised
    before CuPy is imported or anything is compiled (so this runs without a GPU)."""
    from backends import cupy_mitm

    W, r = torch.zeros(1, 2, 3), torch.zeros(1, 2)
    out = sick_bide.empty_state(1, 2, 3, torch.float32, "cpu", want_grad=False)
    with pytest.raises(ValueError, match=r"tile_min_blocks must be an int in 0\.\.16 .* got -1"):
        cupy_mitm.partial_state(W, r, 0, 8, out, tile_min_blocks=-1)
    with pytest.raises(ValueError, match=r"block_lo and fused_block_lo must be 4 or 8, got 6 and"):
        cupy_mitm.partial_state(W, r, 0, 8, out, block_lo=6)
