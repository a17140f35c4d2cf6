"""Hypothesis strategies for the properties of every problem: the only place inputs are generated.

A drawn `Case` is plain data (sizes, dtype, a kind of values, a scale and a
seed); `Case.tensors(device)` builds the tensors from it deterministically, so
a failure prints a Case that reproduces it and `@example(Case(...))` pins the
awkward inputs. Tensors come from a seeded torch.Generator rather than
element-by-element draws: Hypothesis explores the structure (shapes, kinds,
scales, edge targets), the generator fills in the values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from harness import layer
from harness.errors import InputError
from harness.problems import sick_bide

__all__ = ["KINDS", "LAYER_KINDS", "Case", "LayerCase", "cases", "cases_for", "dtypes", "layer_cases",
           "split_points"]

# What the values look like; each probes one part of the contract.
KINDS = (
    "normal",       # W, r Gaussian at a drawn scale
    "zero_W",       # W = 0: every logit is 0, nll = n ln 2
    "zero_r",       # r = 0: same, through the other factor
    "integer_W",    # small integers: exact ties z = 0, where ReLU'(0) = 0 decides
    "negative_r",   # all r < 0: the best codes are the ones with every unit off
    "spread",       # logits hundreds apart and targets at the top code: p_y -> 1
    "nan_rows",     # NaN or inf in some rows: NaN there, finite everywhere else
)

# Largest |logit| a case may reach, per dtype, so the same-dtype reference stays finite.
_MAX_SCALE = {"float16": 4.0, "bfloat16": 30.0, "float32": 30.0, "float64": 30.0}


@dataclass(frozen=True)
class Case:
    batch: int
    hidden: int
    n_bits: int
    targets_per_row: int | None  # None: 1-D targets [B]
    dtype: str = "float32"
    kind: str = "normal"
    scale: float = 1.0
    edge_targets: bool = False   # put codes 0 and 2^n - 1 among the targets
    seed: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def tensors(self, device: str | torch.device) -> dict[str, torch.Tensor]:
        """W, r, targets, grad_nll, grad_lse (targets [B] when targets_per_row is None)."""
        gen = torch.Generator().manual_seed(self.seed)
        B, H, n = self.batch, self.hidden, self.n_bits
        S = self.targets_per_row or 1
        f64 = torch.float64
        W = self.scale * torch.randn(B, H, n, generator=gen, dtype=f64)
        r = torch.randn(B, H, generator=gen, dtype=f64) / math.sqrt(H)
        targets = torch.randint(0, 1 << n, (B, S), generator=gen)
        if self.kind == "zero_W":
            W.zero_()
        elif self.kind == "zero_r":
            r.zero_()
        elif self.kind == "integer_W":
            W = torch.randint(-2, 3, (B, H, n), generator=gen).to(f64)
        elif self.kind == "negative_r":
            r = -r.abs() - 0.01
        elif self.kind == "spread":
            r = r * 60 / (1 + self.scale)
            targets[:, 0] = _top_codes(W, r)
        elif self.kind == "nan_rows":
            for row in range(0, B, 2):
                bad = [math.nan, math.inf, -math.inf][row % 3]
                (W if row % 4 == 0 else r).view(B, -1)[row, row % (H if row % 4 else H * n)] = bad
        if self.edge_targets:
            targets[0, 0] = 0
            targets[-1, -1] = (1 << n) - 1
        dtype = self.torch_dtype
        acc = sick_bide.acc_dtype(dtype)
        grad_nll = torch.randn(B, S, generator=gen, dtype=f64).to(acc)
        if self.targets_per_row is None:
            targets, grad_nll = targets[:, 0], grad_nll[:, 0]
        out = {
            "W": W.to(dtype),
            "r": r.to(dtype),
            "targets": targets,
            "grad_nll": grad_nll,
            "grad_lse": torch.randn(B, generator=gen, dtype=f64).to(acc),
        }
        return {k: v.to(device) for k, v in out.items()}


def _top_codes(W: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """[B] the code with the largest logit in each row (brute force, float64)."""
    n = W.shape[2]
    b = sick_bide.bits(torch.arange(1 << n), n, torch.float64)
    return torch.einsum("bkh,bh->bk", torch.einsum("bhj,kj->bkh", W, b).clamp_min(0), r).argmax(1)


def dtypes(allowed: tuple[torch.dtype, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from([str(d).removeprefix("torch.") for d in allowed])


@st.composite
def cases(
    draw,
    *,
    dtype_names: st.SearchStrategy[str],
    min_n_bits: int = 1,
    max_n_bits: int = 11,
    max_hidden: int = 40,
    max_batch: int = 9,
    max_work: int = 1 << 17,
    kinds: tuple[str, ...] = KINDS,
    min_scale: float = 0.05,
    max_scale: float = math.inf,
) -> Case:
    """Cases whose float64 oracle stays cheap: batch * 2^n * hidden <= max_work."""
    n_bits = draw(st.integers(min_n_bits, max_n_bits))
    hidden = draw(st.integers(1, max(1, min(max_hidden, max_work >> n_bits))))
    batch = draw(st.integers(1, max(1, min(max_batch, max_work // (hidden << n_bits)))))
    dtype = draw(dtype_names)
    kind = draw(st.sampled_from(kinds))
    if kind == "nan_rows":
        batch = max(batch, 2)
    return Case(
        batch=batch,
        hidden=hidden,
        n_bits=n_bits,
        targets_per_row=draw(st.sampled_from([None, 1, 2, 3])),
        dtype=dtype,
        kind=kind,
        scale=draw(st.floats(min_scale, max(min_scale, min(max_scale, _MAX_SCALE[dtype] / math.sqrt(n_bits))))),
        edge_targets=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def cases_for(backend, *, dtype_names: tuple[str, ...] | None = None, min_n_bits: int = 1, max_n_bits: int = 11,
              **kwargs):
    """`cases` restricted to what `backend` declares it runs (dtypes, n_bits range).

    Raises LookupError naming the gap when nothing is left, so that the caller
    skips with that reason instead of passing vacuously.
    """
    declared = [str(d).removeprefix("torch.") for d in backend.dtypes]
    allowed = [d for d in (dtype_names or declared) if d in declared]
    declared_lo, declared_hi = backend.limits.get("n_bits", (1, 32))
    lo, hi = max(declared_lo, min_n_bits), min(declared_hi, max_n_bits)
    if not allowed or lo > hi:
        raise LookupError(
            f"{backend.name} declares dtypes {declared} and n_bits {declared_lo}..{declared_hi}; this property "
            f"needs {list(dtype_names or declared)} and n_bits in {min_n_bits}..{max_n_bits}"
        )
    return cases(dtype_names=st.sampled_from(allowed), min_n_bits=lo, max_n_bits=hi, **kwargs)


@st.composite
def split_points(draw, n_bits: int, count: int) -> list[int]:
    """`count` sorted cut points in [0, 2^n], ends included, repeats allowed (empty ranges)."""
    inner = draw(st.lists(st.integers(0, 1 << n_bits), min_size=count, max_size=count))
    return [0, *sorted(inner), 1 << n_bits]


# ----------------------------------------------------------------------------- layer problems

LAYER_KINDS = (
    "normal",    # the problem's own well-conditioned draws (harness/problems/*.py `values`)
    "integer",   # small integers: ties in max, exact zeros before a ReLU, constant BatchNorm channels
    "nan",       # one NaN in one input: NaN exactly where the float64 oracle has it (an inf is not
                 # promised anything: x inf - inf depends on how a backend arranges the algebra)
    "wide",      # the first input 30x larger: softmax logits far apart, large activations
)


@dataclass(frozen=True)
class LayerCase:
    """One drawn input of a layer problem; `tensors(device)` rebuilds it deterministically."""

    problem: str
    sizes: tuple[tuple[str, int], ...]
    dtype: str = "float32"
    kind: str = "normal"
    seed: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def tensors(self, device: str | torch.device) -> dict[str, torch.Tensor]:
        """The layer's inputs and grad_<output> tensors, in the case's dtype on `device`."""
        spec = layer.get(self.problem)
        values = layer.make_inputs(spec, dict(self.sizes), torch.float64, "cpu", self.seed)
        gen = torch.Generator().manual_seed(self.seed + 1)
        names = list(spec.inputs)
        if self.kind == "integer":
            for name in names:
                values[name] = torch.randint(-2, 3, values[name].shape, generator=gen).double()
        elif self.kind == "nan":
            target = values[names[int(torch.randint(len(names), (1,), generator=gen))]].view(-1)
            where = int(torch.randint(target.numel(), (1,), generator=gen))
            target[where] = math.nan
        elif self.kind == "wide":
            values[names[0]] *= 30
        return {k: v.to(self.torch_dtype).to(device) for k, v in values.items()}


@st.composite
def layer_cases(draw, problem: str, *, dtype_names: st.SearchStrategy[str], max_size: int = 40,
                max_batch: int = 9, kinds: tuple[str, ...] = LAYER_KINDS) -> LayerCase:
    """Sizes for every symbol of one of the problem's input shapes (batch up to max_batch)."""
    spec = layer.get(problem)
    shapes = [s if isinstance(s, list) else [s] for s in spec.inputs.values()]
    first = draw(st.sampled_from(shapes[0]), label="shape of the first input")
    symbols = dict.fromkeys([*first, *(x for alts in shapes[1:] for x in alts[0])])
    sizes = {x: draw(st.integers(1, max_batch if x == "batch" else max_size), label=x) for x in symbols}
    if spec.check:
        try:
            spec.check(sizes)
        except InputError:
            sizes["batch"] = max(2, sizes["batch"])
    return LayerCase(problem=problem, sizes=tuple(sizes.items()), dtype=draw(dtype_names, label="dtype"),
                     kind=draw(st.sampled_from(kinds), label="kind"), seed=draw(st.integers(0, 2**31 - 1)))
