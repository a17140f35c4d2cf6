"""SICK-BIDE properties, run for every registered backend variant on every device it declares.

Each test names the property it checks; inputs come from properties/strategies.py
and failures print the Case that reproduces them.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, example, given, note
from hypothesis import strategies as st

from harness import buffers, registry, tolerance, verify
from harness.errors import UnsupportedError
from harness.problems import sick_bide
from properties.strategies import Case, cases, cases_for, dtypes

PROBLEM = registry.problem("sick_bide")
ALL_DTYPES = dtypes(sick_bide.DTYPES)


def refusal(backend, config, case: Case, device) -> str | None:
    """Why the backend declares it cannot run this case, or None."""
    sizes = {"batch": case.batch, "hidden": case.hidden, "n_bits": case.n_bits,
             "targets_per_row": case.targets_per_row or 1}
    try:
        registry.check_runnable(backend, config, sizes, case.torch_dtype, device)
    except UnsupportedError as exc:
        return str(exc)
    return None


def run(variant, inputs, mode="backward"):
    backend, config, _ = variant
    with buffers.poisoned():
        return PROBLEM.prepare(backend, config, inputs, mode)()


# What each call mode returns: the forward-only call has no gradients to judge.
OUTPUTS = {"backward": ("nll", "lse", "dW", "dr"), "forward": ("nll", "lse")}


def judge(variant, case: Case, inputs, outputs, mode="backward"):
    """Hold outputs to the tolerance policy against the float64 oracle; raise naming the case.

    Returns (checks, slack): what an output may deviate from the truth.
    """
    oracle, reference, slack = verify.ground_truth(PROBLEM, inputs, case.torch_dtype)
    oracle = {name: oracle[name] for name in OUTPUTS[mode]}
    name = f"{registry.variant_name(*variant[:2])} {mode} on {variant[2]}"
    checks = tolerance.assert_within(outputs, oracle, reference, case.torch_dtype, f"{name}, {case}", slack)
    return checks, slack or {}


def assert_consistent(a, b, judged, what: str) -> None:
    """Two runs that must agree: each is within bound + slack of the truth, so within twice that."""
    checks, slack = judged
    for check in checks:
        x, y = a[check.name].double().cpu(), b[check.name].double().cpu()
        allowed = 2 * (check.bound + slack.get(check.name, torch.zeros(())).double().cpu())
        excess = torch.where(x.isnan() & y.isnan(), 0.0, (x - y).abs() - allowed).nan_to_num(math.inf)
        assert excess.numel() == 0 or float(excess.max()) <= 0, (
            f"{what}: {check.name} differs by {float(excess.max()):.3g} more than twice its tolerance"
        )


# The awkward inputs, pinned: each runs on every backend before anything random.
PINNED = [
    Case(batch=3, hidden=2, n_bits=1, targets_per_row=None, edge_targets=True),
    Case(batch=5, hidden=7, n_bits=7, targets_per_row=3, seed=1),
    Case(batch=1, hidden=3, n_bits=5, targets_per_row=1, edge_targets=True, seed=2),
    Case(batch=33, hidden=5, n_bits=6, targets_per_row=2, seed=3),
    Case(batch=4, hidden=6, n_bits=8, targets_per_row=None, kind="zero_W", seed=4),
    Case(batch=4, hidden=6, n_bits=8, targets_per_row=1, kind="zero_r", seed=5),
    Case(batch=6, hidden=9, n_bits=7, targets_per_row=2, kind="integer_W", edge_targets=True, seed=6),
    Case(batch=3, hidden=4, n_bits=9, targets_per_row=1, kind="spread", scale=2.0, seed=7),
    Case(batch=4, hidden=8, n_bits=6, targets_per_row=1, kind="negative_r", seed=8),
    Case(batch=8, hidden=5, n_bits=5, targets_per_row=2, kind="nan_rows", seed=9),
    Case(batch=2, hidden=3, n_bits=11, targets_per_row=1, dtype="float16", seed=10),
    Case(batch=2, hidden=3, n_bits=11, targets_per_row=1, dtype="bfloat16", kind="spread", seed=11),
    Case(batch=3, hidden=5, n_bits=10, targets_per_row=2, dtype="float64", seed=12),
]


def pinned(test):
    for case in reversed(PINNED):
        test = example(case=case)(test)
    return test


@pytest.mark.parametrize("mode", OUTPUTS)
@given(case=cases(dtype_names=ALL_DTYPES))
@pinned
def test_matches_float64_oracle(sick_bide_variant, mode, case):
    """nll, lse (and dW, dr with backward) within the tolerance policy of the float64 oracle; the
    forward-only call is its own path (other kernels in the fused backends); refusals are declared."""
    backend, config, device = sick_bide_variant
    note(f"case: {case}")
    inputs = case.tensors(device)
    if refusal(backend, config, case, device) is not None:
        with pytest.raises(UnsupportedError):
            run(sick_bide_variant, inputs, mode)
        return
    judge(sick_bide_variant, case, inputs, run(sick_bide_variant, inputs, mode), mode)


def draw_case(data, variant, **kwargs) -> Case:
    """A case the variant declares it runs; skips (with the reason) if there is none."""
    try:
        strategy = cases_for(variant[0], **kwargs)
    except LookupError as exc:
        pytest.skip(str(exc))
    return data.draw(strategy, label="case")


@given(data=st.data())
def test_zero_weights_give_uniform_nll(sick_bide_variant, data):
    """W = 0 or r = 0 makes every logit 0: nll = lse = n ln 2; with W = 0 the gradients are exactly 0."""
    case = draw_case(data, sick_bide_variant, kinds=("zero_W", "zero_r"))
    out = run(sick_bide_variant, case.tensors(sick_bide_variant[2]))
    expected = case.n_bits * math.log(2)
    bound = 4 * tolerance.eps(out["nll"].dtype) * expected
    for name in ("nll", "lse"):
        worst = float((out[name].double() - expected).abs().max())
        assert worst <= bound, f"{name} off n ln 2 by {worst:.3g} > {bound:.3g} for {case}"
    if case.kind == "zero_W":
        assert not out["dW"].any() and not out["dr"].any(), f"W = 0 must give zero gradients: {case}"


@given(data=st.data())
def test_flipping_a_bit_relabels_codes(sick_bide_variant, data):
    """Negating W[:, :, j] and flipping bit j of every target leaves nll and lse, negates dW[:, :, j]."""
    case = draw_case(data, sick_bide_variant, kinds=("normal", "integer_W", "spread"))
    j = data.draw(st.integers(0, case.n_bits - 1), label="bit")
    inputs = case.tensors(sick_bide_variant[2])
    flipped = dict(inputs, W=inputs["W"].clone(), targets=inputs["targets"] ^ (1 << j))
    flipped["W"][:, :, j] *= -1
    out, out_flipped = run(sick_bide_variant, inputs), run(sick_bide_variant, flipped)
    out_flipped["dW"][:, :, j] *= -1
    assert_consistent(out, out_flipped, judge(sick_bide_variant, case, inputs, out), f"bit {j} flip, {case}")


@given(data=st.data())
def test_permuting_hidden_units_permutes_gradients(sick_bide_variant, data):
    """Permuting hidden units leaves nll and lse and permutes dW and dr the same way."""
    case = draw_case(data, sick_bide_variant, kinds=("normal", "negative_r"))
    device = sick_bide_variant[2]
    perm = torch.tensor(data.draw(st.permutations(range(case.hidden)), label="perm"), device=device)
    inputs = case.tensors(device)
    permuted = dict(inputs, W=inputs["W"][:, perm], r=inputs["r"][:, perm])
    out, out_perm = run(sick_bide_variant, inputs), run(sick_bide_variant, permuted)
    unpermute = torch.argsort(perm)
    out_perm["dW"], out_perm["dr"] = out_perm["dW"][:, unpermute], out_perm["dr"][:, unpermute]
    assert_consistent(out, out_perm, judge(sick_bide_variant, case, inputs, out), f"perm {perm.tolist()}, {case}")


@given(data=st.data())
def test_rows_are_independent(sick_bide_variant, data):
    """A row's outputs do not depend on the other rows of the batch (NaN rows included)."""
    case = draw_case(data, sick_bide_variant)
    device = sick_bide_variant[2]
    inputs = case.tensors(device)
    keep = data.draw(st.lists(st.integers(0, case.batch - 1), min_size=1, max_size=case.batch, unique=True),
                     label="rows")
    rows = torch.tensor(keep, device=device)
    subset = {name: t[rows] for name, t in inputs.items()}
    out, out_subset = run(sick_bide_variant, inputs), run(sick_bide_variant, subset)
    judged = judge(sick_bide_variant, case, inputs, out)
    slack = {k: v[rows.cpu()] for k, v in judged[1].items()}
    assert_consistent({k: v[rows] for k, v in out.items()}, out_subset, (judged[0], slack), f"rows {keep}, {case}")


@given(data=st.data())
def test_gradcheck_float64(sick_bide_variant, data):
    """torch.autograd.gradcheck of (nll, lse) in W and r against finite differences."""
    backend, config, device = sick_bide_variant
    case = draw_case(data, sick_bide_variant, dtype_names=("float64",), max_n_bits=5, max_hidden=4, max_batch=3,
                     kinds=("normal", "negative_r"), min_scale=0.5)
    inputs = case.tensors(device)
    # Finite differences across a ReLU kink test the kink, not the backend.
    assume(min_abs_z(inputs["W"]) > 1e-4)
    W = inputs["W"].detach().requires_grad_()
    r = inputs["r"].detach().requires_grad_()

    def f(W, r):
        return sick_bide.loss(W, r, inputs["targets"], backend=backend.name, config=config)

    assert torch.autograd.gradcheck(f, (W, r), eps=1e-6, atol=1e-6, rtol=1e-4)


def min_abs_z(W: torch.Tensor) -> float:
    """min |z_kh| over all codes, hidden units and rows, in float64."""
    n = W.shape[2]
    b = sick_bide.bits(torch.arange(1 << n, device=W.device), n, torch.float64)
    return float(torch.einsum("bhj,kj->bkh", W.double(), b).abs().min())


@given(data=st.data())
def test_repeated_calls_agree_to_the_last_bit(sick_bide_variant, data):
    """No atomics or order-dependent reductions: the same inputs give bitwise the same outputs."""
    case = draw_case(data, sick_bide_variant, kinds=("normal", "spread"))
    inputs = case.tensors(sick_bide_variant[2])
    first, second = run(sick_bide_variant, inputs), run(sick_bide_variant, inputs)
    for name in first:
        assert torch.equal(first[name].nan_to_num(0), second[name].nan_to_num(0)), f"{name} differs, {case}"


# Sizes where the CUDA kernels take their production paths, which the drawn cases (n <= 11) do not
# reach: Triton's PTX marginals (n >= 12), CuPy's 8 x 8 fused blocks (n >= 13), the target size's
# tiles (n = 16) and a row split into several work items (n = 20). The CPU runs the first only.
PRODUCTION_SIZES = [
    Case(batch=3, hidden=33, n_bits=12, targets_per_row=2, seed=21),
    Case(batch=2, hidden=32, n_bits=13, targets_per_row=1, kind="spread", seed=22),
    Case(batch=4, hidden=32, n_bits=16, targets_per_row=3, seed=23),
    Case(batch=1, hidden=8, n_bits=20, targets_per_row=1, seed=24),
]


@pytest.mark.parametrize("mode", OUTPUTS)
def test_production_sizes_agree_to_the_last_bit(sick_bide_variant, mode):
    """As test_repeated_calls_agree_to_the_last_bit, at the sizes where the CUDA kernels take their
    production paths, for the forward-only call (its own kernels) and the call with gradients."""
    backend, config, device = sick_bide_variant
    ran = 0
    for case in PRODUCTION_SIZES if device == "cuda" else PRODUCTION_SIZES[:1]:
        if refusal(backend, config, case, device) is not None:
            continue
        inputs = case.tensors(device)
        first, second = run(sick_bide_variant, inputs, mode), run(sick_bide_variant, inputs, mode)
        assert set(first) == set(OUTPUTS[mode])
        for name in first:
            assert torch.equal(first[name].nan_to_num(0), second[name].nan_to_num(0)), f"{name} differs, {mode}, {case}"
        ran += 1
    if ran == 0:
        pytest.skip(f"{registry.variant_name(backend, config)} refuses every production size on {device}")


def test_batches_past_the_cuda_grid_limit(sick_bide_variant):
    """B = 65543, past 65535 (the largest grid y or z dimension on CUDA): every row of the loss and
    its gradients within the policy, the harness's own kernels included."""
    if sick_bide_variant[2] != "cuda":
        pytest.skip("the grid limit is CUDA's; CPU paths loop over rows")
    case = Case(batch=65543, hidden=3, n_bits=4, targets_per_row=2, seed=13)
    reason = refusal(sick_bide_variant[0], sick_bide_variant[1], case, "cuda")
    if reason is not None:
        pytest.skip(reason)
    inputs = case.tensors("cuda")
    judge(sick_bide_variant, case, inputs, run(sick_bide_variant, inputs))
