"""The checks can fail: each mutant backend carries one realistic kernel bug, and the same
oracle comparison the properties use must reject it (and accept the unmutated kernel)."""

from __future__ import annotations

import math

import pytest
import torch

from harness import Backend, buffers, registry, tolerance, verify
from harness.problems import sick_bide
from properties.strategies import Case

PROBLEM = registry.problem("sick_bide")


def mutant(bug: str):
    """A materialising partial_state kernel with one bug switched on ("none": correct)."""

    def partial_state(W, r, k_start, k_stop, out):
        acc = out.m.dtype
        stop = k_stop - 1 if bug == "drops_last_code" and k_stop - k_start > 1 else k_stop
        b = sick_bide.bits(torch.arange(k_start, stop), W.shape[2], acc)
        z = torch.einsum("bhj,kj->bkh", W.to(acc), b)
        l = (z.clamp_min(0) * r.to(acc)[:, None]).sum(-1)                 # [B, K]
        on = (z >= 0) if bug == "relu_geq" else (z > 0)
        if bug == "no_rescale":   # two halves merged without rescaling the first by exp(m1 - m)
            half = l.shape[1] // 2 or 1
            m1, m = l[:, :half].amax(1), l.amax(1)
            s = torch.exp(l[:, :half] - m1[:, None]).sum(1) + torch.exp(l[:, half:] - m[:, None]).sum(1)
            e = torch.exp(l - m[:, None])
        else:
            m = l.amax() * torch.ones_like(l[:, 0]) if bug == "batch_max" else l.amax(1)
            work = torch.bfloat16 if bug == "bf16_sums" else acc
            e = torch.exp((l - m[:, None]).to(work))
            s = e.sum(1)
        out.m.copy_(m)
        out.s.copy_(s.to(acc))
        if out.D is not None:
            D = torch.einsum("bk,bkh,kj->bhj", e.to(acc), on.to(acc), b)
            rows = slice(0, -1) if bug == "unwritten_row" else slice(None)
            out.D[rows] = D[rows]

    return Backend(name=f"mutant-{bug}", problem="sick_bide", kernels={"partial_state": partial_state},
                   dtypes=sick_bide.DTYPES, features=frozenset({"grad", "k_ranges"}))


def verdict(bug: str, case: Case, monkeypatch) -> list[tolerance.Check]:
    backend = mutant(bug)
    monkeypatch.setitem(registry._BACKENDS, ("sick_bide", backend.name), backend)
    inputs = case.tensors("cpu")
    with buffers.poisoned():
        outputs = PROBLEM.prepare(backend, "default", inputs, "backward")()
    oracle, reference, slack = verify.ground_truth(PROBLEM, inputs, case.torch_dtype)
    return tolerance.check(outputs, oracle, reference, case.torch_dtype, slack)


NORMAL = Case(batch=6, hidden=7, n_bits=8, targets_per_row=2, seed=3)
MUTANTS = [
    # (bug, case that exposes it, the output that must fail)
    ("relu_geq", Case(batch=4, hidden=6, n_bits=7, targets_per_row=1, kind="integer_W", seed=1), "dW"),
    ("no_rescale", NORMAL, "lse"),
    ("drops_last_code", NORMAL, "lse"),
    ("unwritten_row", NORMAL, "dW"),
    ("bf16_sums", NORMAL, "lse"),
    ("batch_max", Case(batch=6, hidden=4, n_bits=6, targets_per_row=1, kind="spread", scale=3.0, seed=2), "lse"),
]


@pytest.mark.parametrize(("bug", "case", "output"), MUTANTS, ids=[m[0] for m in MUTANTS])
def test_mutant_is_rejected(bug, case, output, monkeypatch):
    checks = {c.name: c for c in verdict(bug, case, monkeypatch)}
    assert not checks[output].ok, f"{bug} passed: {checks[output]}"


@pytest.mark.parametrize("case", [NORMAL] + [m[1] for m in MUTANTS], ids=lambda c: c.kind)
def test_unmutated_kernel_passes(case, monkeypatch):
    checks = verdict("none", case, monkeypatch)
    assert all(c.ok for c in checks), "\n".join(str(c) for c in checks if not c.ok)


def test_nan_in_one_row_stays_in_that_row(monkeypatch):
    """A batch-wide max spreads a NaN row into every row: the NaN-mismatch check catches it."""
    case = Case(batch=4, hidden=3, n_bits=5, targets_per_row=1, kind="nan_rows", seed=5)
    checks = {c.name: c for c in verdict("batch_max", case, monkeypatch)}
    assert checks["nll"].nan_mismatch > 0 and not checks["nll"].ok
    assert math.isinf(checks["nll"].ratio)
