"""The harness's CUDA kernels (harness/problems/sick_bide_kernels.py) against its torch code.

The torch code in sick_bide.py is the definition; the kernels are its one-launch form on
CUDA. Both are held to the float64 evaluation of the same formulas: the kernel's largest
error may be at most twice the torch code's at the same precision, plus a few ulps of the
accumulation dtype at the outputs' scale (sums in another order round differently). Without
a GPU the kernels run in Triton's interpreter on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness import InputError
from harness.problems import sick_bide
from harness.problems import sick_bide_kernels as kernels
from harness.triton_helpers import INTERPRET, INTERPRETER_PROBLEM, TRITON_MISSING

pytestmark = pytest.mark.skipif(TRITON_MISSING, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not INTERPRET:
    pytestmark = pytest.mark.skip(reason="no CUDA device and TRITON_INTERPRET is not set")
elif DEVICE == "cpu" and INTERPRETER_PROBLEM:
    pytestmark = pytest.mark.skip(reason=INTERPRETER_PROBLEM)

# (batch, hidden, n_bits, targets per row): odd sizes, one-element dims, n = 32, more targets than a block,
# rows without targets.
SHAPES = [(3, 5, 7, 1), (2, 1, 1, 3), (4, 33, 32, 2), (5, 32, 16, 19), (3, 4, 5, 0)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _inputs(shape, dtype, seed, bad_rows=()):
    batch, hidden, n_bits, per_row = shape
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(batch, hidden, n_bits, generator=gen).to(dtype)
    r = torch.randn(batch, hidden, generator=gen).to(dtype)
    if n_bits >= 2:   # unit 0 of row 0 has z = 0 exactly on targets whose bits 0 and 1 differ: ReLU'(0) = 0
        W[0, 0] = 0
        W[0, 0, :2] = 0.5
    for row, value in bad_rows:
        W[row, hidden // 2, n_bits // 2] = value
    # A transposed view: the kernels read targets through their strides.
    targets = torch.randint(0, 1 << n_bits, (per_row, batch), generator=gen, dtype=torch.int64).t()
    targets[:1, :1] = 1
    return W.to(DEVICE), r.to(DEVICE), targets.to(DEVICE)


def _state(W, r, seed):
    """A plausible merged state (m, s, D) for W's rows, in the accumulation dtype."""
    batch, hidden, n_bits = W.shape
    acc = sick_bide.acc_dtype(W.dtype)
    gen = torch.Generator().manual_seed(seed)
    m = (3 * torch.randn(batch, generator=gen)).to(acc)
    s = (1 + torch.rand(batch, generator=gen) * 100).to(acc)
    D = (torch.randn(batch, hidden, n_bits, generator=gen) * s[:, None, None].float()).to(acc)
    return m.to(W.device), s.to(W.device), D.to(W.device)


def _assert_within(kernel, torch_same, oracle, name):
    """kernel's largest error <= 2 x the torch code's at the same precision + 4 ulps of the scale."""
    eps = torch.finfo(torch.float64 if torch_same.dtype == torch.float64 else torch.float32).eps
    kernel, torch_same, oracle = (x.double().cpu() for x in (kernel, torch_same, oracle))
    assert torch.equal(torch.isnan(kernel), torch.isnan(oracle)), f"{name}: NaN in other places than the oracle's"
    ok = torch.isfinite(oracle)
    assert torch.equal(kernel[torch.isinf(oracle)], oracle[torch.isinf(oracle)]), f"{name}: infinities differ"
    if not ok.any():
        return
    err, err_same = (kernel - oracle)[ok].abs().max(), (torch_same - oracle)[ok].abs().max()
    bound = 2 * err_same + 4 * eps * oracle[ok].abs().max()
    assert err <= bound, f"{name}: error {float(err):.3g} > {float(bound):.3g} (torch code: {float(err_same):.3g})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_target_terms_and_gradients_match_the_torch_code(shape, dtype):
    W, r, targets = _inputs(shape, dtype, seed=sum(shape), bad_rows=[(1, math.nan)] if shape[0] > 2 else [])
    m, s, D = _state(W, r, seed=1)
    batch, _, _, per_row = shape
    gen = torch.Generator().manual_seed(2)
    grad_nll = torch.randn(batch, per_row, generator=gen).to(DEVICE)
    grad_lse = torch.randn(batch, generator=gen).to(DEVICE)

    def torch_code(W, r, m, s, D, grad_nll, grad_lse):
        acc = m.dtype
        b_y, z_y, l_y = sick_bide._target_terms(W.to(acc), r.to(acc), targets)
        bad = sick_bide._bad_rows(W, r, all_finite=False)
        lse = sick_bide._nan_rows(m + s.log(), bad)
        nll = sick_bide._nan_rows(lse[:, None] - l_y, bad)
        dW, dr = sick_bide._gradients(W.to(acc), r.to(acc), b_y, z_y, s, D, bad, grad_nll, grad_lse)
        return nll, lse, dW.to(W.dtype), dr.to(W.dtype)

    state64 = [x.double() for x in (m, s, D)]
    for g_nll, g_lse in [(grad_nll, grad_lse), (None, grad_lse), (grad_nll, None),
                         (grad_nll[:, :1].expand(batch, per_row), None)]:     # stride 0, as autograd hands a sum's
        oracle = torch_code(W.double(), r.double(), *state64, g_nll, g_lse)
        same = torch_code(W, r, m, s, D, g_nll, g_lse)
        nll, lse, kept = kernels.target_terms(W, r, targets, m, s, keep_targets=True)
        assert torch.equal(kept.cpu(), targets.cpu()) and kept.is_contiguous()
        dW, dr = kernels.gradients(W, r, targets, s, D, g_nll, g_lse)
        assert nll.dtype == lse.dtype == m.dtype and dW.dtype == dr.dtype == W.dtype
        for name, got, ref, exact in zip(("nll", "lse", "dW", "dr"), (nll, lse, dW, dr), same, oracle, strict=True):
            _assert_within(got, ref, exact, name)


@pytest.mark.parametrize("with_D", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunks", [1, 3, 70])
def test_merge_chunks_matches_the_torch_code(chunks, dtype, with_D):
    gen = torch.Generator().manual_seed(chunks)
    batch, hidden, n_bits = 3, 33 if chunks == 70 else 5, 6       # 70 chunks: D in two blocks per row
    m = (5 * torch.randn(batch, chunks, generator=gen)).to(dtype)
    m[0, 0] = -math.inf                       # an empty chunk
    m[2, :] = -math.inf                       # a row of empty chunks: m = -inf, s = 0
    if chunks > 1:
        m[1, 1] = math.nan                    # a NaN chunk: the row's merged state is NaN, as torch's
    s = torch.where(m == -math.inf, 0.0, torch.rand(batch, chunks, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    D = torch.randn(batch, chunks, hidden, n_bits, generator=gen).to(dtype) * (s[..., None, None] > 0)
    outs = []
    for merge, device, acc in [(kernels.merge_chunks, DEVICE, dtype), (sick_bide.merge_chunks, "cpu", dtype),
                               (sick_bide.merge_chunks, "cpu", torch.float64)]:    # on the CPU: the torch code
        out = sick_bide.empty_state(batch, hidden, n_bits, acc, device, want_grad=with_D)
        merge(m.to(device, acc), s.to(device, acc), D.to(device, acc) if with_D else None, out)
        outs.append(out)
    kernel, same, oracle = outs
    assert kernel.m[2] == -math.inf and kernel.s[2] == 0
    for name in ("m", "s", "D") if with_D else ("m", "s"):
        _assert_within(getattr(kernel, name), getattr(same, name), getattr(oracle, name), name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_probe_reads_the_target_range_and_finiteness(dtype):
    W, r, targets = _inputs((6, 7, 9, 3), dtype, seed=5)
    targets = targets.contiguous()
    w_max, r_max = float(W.abs().max()), float(r.abs().max())
    assert kernels.probe(W, r, targets) == (int(targets.min()), int(targets.max()), True, w_max, r_max)
    assert kernels.probe(W, r, None)[2]
    targets[4, 1], W[5, 6, 8] = -(2**40), math.inf
    assert kernels.probe(W, r, targets) == (-(2**40), int(targets.max()), False, w_max, r_max)   # finite only
    r[0, 0], W[5, 6, 8] = math.nan, -1024.0      # exact in every dtype
    assert kernels.probe(W, r, targets)[2:] == (False, 1024.0, r_max)


def test_probe_splits_large_inputs_over_programs():
    """Past PROBE_ONE_PROGRAM elements, programs of PROBE_PER_PROGRAM each; every column combines by max."""
    W = torch.zeros(3, 1, kernels.PROBE_ONE_PROGRAM // 2 + 1, device=DEVICE)
    assert -(-W.numel() // kernels.PROBE_PER_PROGRAM) > 3      # more than 3 programs, targets over several
    r = torch.zeros(3, 1, device=DEVICE)
    targets = torch.arange(30, device=DEVICE).reshape(3, 10)
    targets[2, 9] = 2**50
    W[2, 0, -1] = -math.inf
    W[1, 0, 3], r[2, 0] = -7.0, 0.5
    assert kernels.probe(W, r, targets) == (0, 2**50, False, 7.0, 0.5)
    targets[1, 4], W[2, 0, -1] = -(2**62), 3.0                 # the least target in a middle program; all finite
    assert kernels.probe(W, r, targets) == (-(2**62), 2**50, True, 7.0, 0.5)
    assert kernels.probe(W, r, None)[:3] == (2**63 - 1, -(2**63), True)   # no targets: min > max


@pytest.fixture
def through_kernels(monkeypatch):
    """Public calls on DEVICE go through the kernels: on a CPU-only machine, in the interpreter."""
    if DEVICE == "cpu":
        monkeypatch.setattr(kernels, "usable", lambda x: True)
    return monkeypatch      # .undo(): back to the torch path on the CPU


def _loss_and_grads(W, r, targets, dtype):
    W_, r_ = W.to(dtype).detach().requires_grad_(), r.to(dtype).detach().requires_grad_()
    nll, lse = sick_bide.loss(W_, r_, targets, backend="chunked")
    grad_nll = torch.linspace(-1, 2, nll.numel(), dtype=nll.dtype, device=nll.device).reshape(nll.shape)
    torch.autograd.backward((nll, lse), (grad_nll, torch.ones_like(lse)))
    return nll, lse, W_.grad, r_.grad


@pytest.mark.parametrize("per_row", [None, 3])
def test_public_calls_through_the_kernels_match_the_torch_path(through_kernels, per_row):
    """loss and its backward with every step on the kernels, against the torch path on the CPU."""
    W, r, targets = _inputs((5, 6, 7, per_row or 1), torch.float32, seed=11, bad_rows=[(3, math.inf)])
    targets = targets.contiguous() if per_row else targets[:, 0]
    got = _loss_and_grads(W, r, targets, torch.float32)
    through_kernels.undo()
    same = _loss_and_grads(W.cpu(), r.cpu(), targets.cpu(), torch.float32)
    oracle = _loss_and_grads(W.cpu(), r.cpu(), targets.cpu(), torch.float64)
    for name, a, b, c in zip(("nll", "lse", "dW", "dr"), got, same, oracle, strict=True):
        assert a.shape == b.shape
        _assert_within(a, b, c, name)


@pytest.mark.parametrize("bad", [-1, 128, 2**40])
def test_bad_targets_are_named_through_the_probe(through_kernels, bad):
    W, r, targets = _inputs((5, 6, 7, 3), torch.float32, seed=12)
    targets = targets.contiguous()
    targets[2, 1] = bad
    with pytest.raises(InputError, match=rf"targets\[2, 1\] = {bad} is outside 0 <= targets < 2\^n_bits = 128"):
        sick_bide.loss(W, r, targets, backend="chunked")


def test_targets_changed_after_the_forward_do_not_change_the_gradients(through_kernels):
    """The backward reads the targets the forward saw (as the torch path, which keeps their bits)."""
    W, r, targets = _inputs((4, 5, 6, 2), torch.float32, seed=13)
    targets = targets.contiguous()
    grads = []
    for change in (False, True):
        W_, r_ = W.clone().requires_grad_(), r.clone().requires_grad_()
        nll, _ = sick_bide.loss(W_, r_, targets.clone() if not change else targets, backend="chunked")
        if change:
            targets.add_(1).remainder_(1 << 6)
        nll.sum().backward()
        grads.append((W_.grad, r_.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_launches_move_to_the_inputs_device(monkeypatch):
    """Triton and CuPy launch on the current device: inputs on another one make it current."""
    class OnCuda1:
        is_cuda = True
        device = torch.device("cuda", 1)

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    guard = kernels.launch_device(OnCuda1())
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert not isinstance(kernels.launch_device(OnCuda1()), torch.cuda.device)
    assert not isinstance(kernels.launch_device(torch.zeros(1)), torch.cuda.device)
