"""The tolerance policy: a backend must be about as accurate as the reference in its dtype.

Fixed atol/rtol pairs are either too loose for float32 or too tight for bfloat16
(Liger-Kernel #192). Instead each output of a backend run on inputs of dtype d
is compared with the float64 oracle (the problem's reference backend run in
float64 on the same, already rounded, inputs) and its error is held to the
error of the reference run in d itself:

    err     = max |x - oracle|          over elements where the oracle is finite
    err_ref = the same for the reference run in d
    bound   = FACTOR * err_ref + FLOOR_ULPS * eps(x.dtype) * max |oracle|

and x must be NaN exactly where the oracle is NaN. Why these numbers:

* FACTOR = 8: a backend may sum in another order than the reference (online
  softmax, blocks, tables), which changes rounding error by a small factor; a
  wrong formula or a dropped term shows up orders of magnitude above that.
* The floor, 8 ulps of the output dtype relative to the largest oracle value,
  covers cases where the reference happens to be exact (W = 0, integer inputs).
* For float64 inputs the reference is the oracle (err_ref = 0), so err_ref is
  estimated from the reference run in float32, scaled by eps(float64)/eps(float32).
* Half-precision backends that accumulate in float32 are judged against the
  reference's half-precision error: that is what "correct for float16" means to
  users of that dtype, and a kernel that is wrong beyond it still fails.

Problem-specific allowances. A problem may know, from its own error analysis,
where any correct finite-precision implementation can differ from the oracle by
more than the reference happens to; it then supplies an elementwise `slack`
(Problem.slack) and errors are measured beyond it, for backend and reference alike:

    err = max (|x - oracle| - slack)+

The SICK-BIDE loss has two kinds (harness/problems/sick_bide_problem.py): the
ReLU derivative jumps where z crosses 0, so for z within rounding distance of
0 any computation may land on either side (exact ties z == 0 get no slack, so
ReLU'(0) = 0 is still checked exactly on integer inputs); and a fused backend
forms each output as a difference of a k-sum and a target term (nll = lse - l_y
and the like), good to FLOOR_ULPS ulps of those terms, not of the (possibly
tiny) difference.

Where the reference's own kernel is not a same-precision computation (torch's CPU
batch_norm accumulates float32 statistics in float64, so its error is not what float32
arithmetic achieves), the problem names another backend as its tolerance reference
(Problem.tolerance_reference); the oracle is still the reference in float64.

A reference error that is not finite (the dtype overflowed) raises rather than
passing everything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

FACTOR = 8.0
FLOOR_ULPS = 8.0


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def reference_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference runs in to set the bound for `dtype` inputs."""
    return torch.float32 if dtype == torch.float64 else dtype


@dataclass(frozen=True)
class Check:
    """One output's verdict. err is measured beyond the slack (module docstring)."""

    name: str
    err: float
    err_ref: float
    bound: float
    ratio: float          # max over elements of |x - oracle| / (bound + slack): below 1 passes
    nan_mismatch: int
    worst: tuple[int, ...] | None   # the element with the largest ratio
    value: float
    expected: float

    @property
    def ok(self) -> bool:
        return self.nan_mismatch == 0 and self.err <= self.bound

    def __str__(self) -> str:
        if self.nan_mismatch:
            return f"{self.name}: NaN where the oracle is finite (or the reverse) at {self.nan_mismatch} elements"
        where = ""
        if self.worst is not None:
            where = f"; worst at {list(self.worst)}: {self.value:.7g} vs float64 {self.expected:.7g}"
        return (
            f"{self.name}: max error {self.err:.3g} against bound {self.bound:.3g} = "
            f"{FACTOR:g} x reference error {self.err_ref:.3g} + floor{where}"
        )


def _abs_errors(x: Tensor, oracle: Tensor) -> tuple[Tensor, Tensor, int]:
    """(|x - oracle| on the CPU in float64, with 0 where the oracle is not finite and inf where
    only x is not; the oracle there; the number of NaN mismatches)."""
    x64, o64 = x.detach().to(torch.float64).cpu(), oracle.detach().to(torch.float64).cpu()
    if x64.shape != o64.shape:
        raise AssertionError(f"shape {list(x64.shape)} differs from the oracle's {list(o64.shape)}")
    finite = torch.isfinite(o64)
    nan_mismatch = int((torch.isnan(x64) != torch.isnan(o64)).sum())
    diff = torch.where(finite, (x64 - o64).abs(), torch.zeros_like(o64))
    diff = torch.where(finite & ~torch.isfinite(x64), torch.full_like(o64, math.inf), diff)
    return diff, x64, nan_mismatch


def check(
    outputs: Mapping[str, Tensor],
    oracle: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    dtype: torch.dtype,
    slack: Mapping[str, Tensor] | None = None,
) -> list[Check]:
    """Judge every output of a backend run on `dtype` inputs (see the module docstring)."""
    ref_scale = eps(dtype) / eps(reference_dtype(dtype))
    checks = []
    for name, expected in oracle.items():
        if name not in outputs or outputs[name] is None:
            raise AssertionError(f"output {name!r} is missing; got {sorted(outputs)}")
        allowance = torch.zeros(expected.shape, dtype=torch.float64)
        if slack and name in slack:
            allowance = slack[name].detach().to(torch.float64).cpu().nan_to_num(0.0).expand(expected.shape)
        ref_diff, _, _ = _abs_errors(reference[name], expected)
        err_ref = float((ref_diff - allowance).clamp_min(0).max()) * ref_scale if ref_diff.numel() else 0.0
        if math.isinf(err_ref):
            raise ValueError(
                f"the {reference_dtype(dtype)} reference's {name} is not finite where the oracle is: the "
                "input is outside what this dtype represents, so the policy cannot judge it"
            )
        finite = expected[torch.isfinite(expected)]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        bound = FACTOR * err_ref + FLOOR_ULPS * eps(outputs[name].dtype) * scale
        diff, x64, nan_mismatch = _abs_errors(outputs[name], expected)
        if diff.numel() == 0:
            checks.append(Check(name, 0.0, err_ref, bound, 0.0, nan_mismatch, None, 0.0, 0.0))
            continue
        err = float((diff - allowance).clamp_min(0).max())
        denominator = bound + allowance
        ratios = torch.where(diff == 0, 0.0, diff / denominator).nan_to_num(math.inf)
        flat = int(ratios.argmax())
        worst = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
        ratio = math.inf if nan_mismatch else float(ratios.flatten()[flat])
        value, exp_value = float(x64.flatten()[flat]), float(expected.flatten()[flat])
        checks.append(Check(name, err, err_ref, bound, ratio, nan_mismatch, worst, value, exp_value))
    return checks


def assert_within(
    outputs: Mapping[str, Tensor],
    oracle: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    dtype: torch.dtype,
    context: str,
    slack: Mapping[str, Tensor] | None = None,
) -> list[Check]:
    """check(), raising AssertionError that names the context and every failing output."""
    checks = check(outputs, oracle, reference, dtype, slack)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise AssertionError(f"{context}:\n  " + "\n  ".join(str(c) for c in failed))
    return checks
