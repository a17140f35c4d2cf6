"""Exact CDFs and samples of a learned SICK-BIDE distribution, from partial states over code ranges.

A row (W [H, n], r [H]) defines p_k = exp(l_k - lse) over the codes k in [0, 2^n). When the
codes are the bit patterns of a dtype's values (harness/codes.py), the values order the codes:

    unsigned      k order                        uint8: 0, 1, ..., 255
    signed        two's complement               int8: codes 128..255 (-128..-1), then 0..127
    sign_magnitude  float16, bfloat16, float32   negatives by descending code (-inf ... -0),
                                                 then positives by ascending code (+0 ... +inf)

For floats the NaN patterns sit past +-inf at both ends of that order. `nan="exclude"` leaves
them out and renormalises over the other codes; `nan="report"` keeps the normalisation over
all 2^n codes, so the CDF tops out at 1 - p(NaN) (`nan_mass` gives p(NaN)) and samples can be
NaN patterns. -0 ranks just before +0.

Nothing here materialises 2^n probabilities: the mass of a range of codes is the merged
partial state (m, s) of that range, computed by any backend with k-ranges, so a CDF at Q
points walks every code at most twice, and a sample descends the code's bits a few at a time:

    level: the bits above position f are fixed (prefix), c more are chosen; the mass of each
    of the 2^c continuations is a partial state over the f - c free bits, with the fixed bits'
    contribution to z folded into one extra bit column (b = +1 over the upper half of codes):
        W' = [W[:, :f - c], sum_{j >= f - c} W[:, j] b_(prefix, j)],   codes [2^(f-c), 2^(f-c+1))

Samples sharing a prefix share its partial states, so a level costs at most
min(samples, 2^(bits fixed)) x 2^(f) codes per row; a sample is exact up to float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from harness.codes import n_bits_of, to_codes
from harness.errors import InputError
from harness.problems import sick_bide

ORDERS = ("unsigned", "signed", "sign_magnitude")
NAN_MODES = ("exclude", "report")


def order_of(dtype: torch.dtype) -> str:
    """The value order of `dtype`'s bit patterns."""
    if dtype.is_floating_point:
        return "sign_magnitude"
    return "signed" if dtype.is_signed else "unsigned"


def _check(order: str, nan: str) -> None:
    if order not in ORDERS:
        raise InputError(f"order must be one of {ORDERS}, got {order!r}")
    if nan not in NAN_MODES:
        raise InputError(f"nan must be one of {NAN_MODES}, got {nan!r}")


def segments(n_bits: int, order: str, inf_code: int | None = None) -> list[tuple[int, int, int]]:
    """The non-NaN codes in value order as inclusive runs (first, last, step): step +1 ascends, -1 descends.

    inf_code: the code of +inf for sign_magnitude floats (0x7C00 for float16); the runs stop at
    +-inf, leaving out the NaN patterns past them.
    """
    _check(order, "exclude")
    half, top = 1 << (n_bits - 1), (1 << n_bits) - 1
    if order == "unsigned":
        return [(0, top, 1)]
    if order == "signed":
        return [(half, top, 1), (0, half - 1, 1)]
    pos_last = inf_code if inf_code is not None else half - 1
    return [(half + pos_last, half, -1), (0, pos_last, 1)]


def _float_layout(dtype: torch.dtype) -> tuple[int, str, int | None]:
    """(n_bits, order, +inf's code) of a dtype; +inf's code is None for integers."""
    n_bits, order = n_bits_of(dtype), order_of(dtype)
    inf = int(to_codes(torch.tensor([math.inf], dtype=dtype))[0]) if dtype.is_floating_point else None
    return n_bits, order, inf


def _ranges_of_prefix(segs: list[tuple[int, int, int]], rank: int) -> list[tuple[int, int]]:
    """Half-open code ranges [a, b) holding the codes of value ranks 0..rank."""
    out = []
    for first, last, step in segs:
        length = abs(last - first) + 1
        take = min(length, rank + 1)
        if take <= 0:
            break
        if step == 1:
            out.append((first, first + take))
        else:
            out.append((first - take + 1, first + 1))
        rank -= take
    return out


def _rank(segs: list[tuple[int, int, int]], codes: Tensor) -> Tensor:
    """Value rank of each code; -1 for codes outside the runs (excluded NaN patterns)."""
    rank = torch.full_like(codes, -1)
    offset = 0
    for first, last, step in segs:
        lo, hi = min(first, last), max(first, last)
        inside = (codes >= lo) & (codes <= hi)
        rank = torch.where(inside, offset + (codes - first) * step, rank)
        offset += hi - lo + 1
    return rank


def _log_mass(W: Tensor, r: Tensor, ranges: list[tuple[int, int]], **kw: Any) -> Tensor:
    """log sum_k exp(l_k) over a union of code ranges, per row [B] (float64; -inf when empty)."""
    states = [sick_bide.partial_state(W, r, a, b, **kw) for a, b in ranges if b > a]
    if not states:
        return torch.full((W.shape[0],), -math.inf, dtype=torch.float64, device=W.device)
    total = states[0]
    for state in states[1:]:
        total = sick_bide.merge(total, state)
    return total.m.double() + total.s.double().log()


def _validated(W: Tensor, r: Tensor, dtype: torch.dtype, nan: str) -> tuple[int, str, int | None]:
    sick_bide.validate(W, r)
    n_bits, order, inf = _float_layout(dtype)
    if W.shape[-1] != n_bits:
        raise InputError(f"W has n_bits = {W.shape[-1]}, but {dtype} values have {n_bits} bits")
    _check(order, nan)
    return n_bits, order, inf


def nan_mass(W: Tensor, r: Tensor, dtype: torch.dtype, **kw: Any) -> Tensor:
    """p(NaN pattern) per row [B] (float64); zeros for integer dtypes."""
    n_bits, _, inf = _validated(W, r, dtype, "report")
    if inf is None:
        return torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
    half = 1 << (n_bits - 1)
    nan_ranges = [(inf + 1, half), (half + inf + 1, 1 << n_bits)]
    return (_log_mass(W, r, nan_ranges, **kw) - _log_mass(W, r, [(0, 1 << n_bits)], **kw)).exp()


def cdf(W: Tensor, r: Tensor, codes: Tensor, dtype: torch.dtype, *, nan: str = "exclude", **kw: Any) -> Tensor:
    """P(value <= value of code) per row and code: codes [Q] -> [B, Q] float64.

    Codes are bit patterns of `dtype` values (harness.codes.to_codes); NaN patterns get NaN
    (they have no place in the value order). Two passes over the codes in all, one for the
    total and one for the queries: the codes between consecutive queries (in value order)
    are one or two ranges, each a partial state.
    `kw` goes to sick_bide.partial_state (backend, config, options).
    """
    n_bits, order, inf = _validated(W, r, dtype, nan)
    if (not isinstance(codes, Tensor) or codes.dim() != 1 or codes.dtype.is_floating_point
            or codes.dtype.is_complex or codes.dtype == torch.bool):
        raise InputError("codes must be a 1-D integer tensor of bit patterns")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 1 << n_bits):
        raise InputError(f"codes must lie in 0 <= code < 2^{n_bits} for {dtype}, got "
                         f"{int(codes.min())}..{int(codes.max())}")
    segs = segments(n_bits, order, inf)
    ranks = _rank(segs, codes.long().cpu())
    last_rank = sum(abs(last - first) + 1 for first, last, _ in segs) - 1
    everything = [(0, 1 << n_bits)] if nan == "report" else _ranges_of_prefix(segs, last_rank)
    log_total = _log_mass(W, r, everything, **kw)
    out = torch.full((W.shape[0], codes.numel()), math.nan, dtype=torch.float64, device=W.device)
    valid = (ranks >= 0).nonzero().flatten()
    log_run = torch.full((W.shape[0],), -math.inf, dtype=torch.float64, device=W.device)
    done = -1                                        # the mass of ranks 0..done is in log_run
    for i in valid[torch.argsort(ranks[valid])].tolist():
        rank = int(ranks[i])
        if rank > done:
            new = _subtract(_ranges_of_prefix(segs, rank), _ranges_of_prefix(segs, done))
            log_run = torch.logaddexp(log_run, _log_mass(W, r, new, **kw))
            done = rank
        out[:, i] = (log_run - log_total).exp()
    return out


def _subtract(ranges: list[tuple[int, int]], covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of `ranges` outside `covered` (both lists of disjoint half-open ranges)."""
    out = []
    for a, b in ranges:
        pieces = [(a, b)]
        for c, d in covered:
            pieces = [p for x, y in pieces for p in ((x, min(y, c)), (max(x, d), y)) if p[1] > p[0]]
        out.extend(pieces)
    return out


def _fixed_bias(W: Tensor, prefix: Tensor, low: int) -> Tensor:
    """sum_{j >= low} W[:, :, j] b_(prefix << low), j: the fixed bits' part of z, [R, H]."""
    n_bits = W.shape[-1]
    if low >= n_bits:
        return torch.zeros(W.shape[:2], dtype=W.dtype, device=W.device)
    j = torch.arange(low, n_bits, device=W.device)
    signs = ((prefix[:, None] >> (j - low)) & 1).to(W.dtype) * 2 - 1            # [R, n - low]
    return torch.einsum("rhj,rj->rh", W[:, :, low:], signs)


def sample(
    W: Tensor,
    r: Tensor,
    num_samples: int,
    dtype: torch.dtype,
    *,
    generator: torch.Generator | None = None,
    nan: str = "exclude",
    bits_per_level: int = 4,
    max_rounds: int = 64,
    **kw: Any,
) -> Tensor:
    """num_samples codes per row drawn exactly from p (without NaN patterns unless nan="report").

    Returns int64 codes [B, num_samples]; harness.codes.from_codes turns them into values.
    NaN patterns are redrawn (at most max_rounds times; an error names the NaN mass if a row
    keeps drawing them). `generator` (on the CPU) makes the draw reproducible.
    """
    n_bits, _, inf = _validated(W, r, dtype, nan)
    if not isinstance(num_samples, int) or num_samples < 0:
        raise InputError(f"num_samples must be an int >= 0, got {num_samples!r}")
    if not 1 <= bits_per_level <= 16:
        raise InputError(f"bits_per_level must be in 1..16, got {bits_per_level}")
    bad_rows = ~(torch.isfinite(W).flatten(1).all(1) & torch.isfinite(r).all(1))
    if bad_rows.any():
        raise InputError(f"W or r has NaN or inf in rows {bad_rows.nonzero().flatten().tolist()}: "
                         "they define no distribution to sample")
    rows = torch.arange(W.shape[0]).repeat_interleave(num_samples)
    codes = _draw(W, r, rows, bits_per_level, generator, kw)
    if inf is not None and nan == "exclude":
        half = 1 << (n_bits - 1)
        for _ in range(max_rounds):
            bad = (codes % half) > inf
            if not bad.any():
                break
            codes[bad] = _draw(W, r, rows[bad], bits_per_level, generator, kw)
        if ((codes % half) > inf).any():
            mass = nan_mass(W, r, dtype, **kw)
            raise InputError(f"rows keep drawing NaN patterns after {max_rounds} redraws; p(NaN) per row: "
                             f"{[round(float(m), 4) for m in mass]}")
    return codes.view(W.shape[0], num_samples)


def _draw(W: Tensor, r: Tensor, rows: Tensor, bits_per_level: int, generator, kw) -> Tensor:
    """One code per entry of rows [R] (row indices into W), by descending the bits."""
    n_bits = W.shape[-1]
    W = W.to(sick_bide.acc_dtype(W.dtype))                    # the fixed bits' sums, accumulated
    r = r.to(W.dtype)
    prefix = torch.zeros(rows.numel(), dtype=torch.long)      # the bits fixed so far, as a number
    fixed = 0
    while fixed < n_bits:
        c = min(bits_per_level, n_bits - fixed)
        free = n_bits - fixed - c                             # bits still free after this level
        unique, inverse = torch.unique(rows * (1 << fixed) + prefix, return_inverse=True)
        u_rows, u_prefix = unique // (1 << fixed), unique % (1 << fixed)
        # Each distinct (row, prefix) x each of the 2^c continuations is a row of a reduced problem.
        longer = (u_prefix[:, None] << c | torch.arange(1 << c)[None, :]).flatten()   # [U 2^c]
        src = u_rows.repeat_interleave(1 << c).to(W.device)
        W_src = W[src]
        bias = _fixed_bias(W_src, longer.to(W.device), free)
        W_reduced = torch.cat([W_src[:, :, :free], bias[:, :, None]], dim=2).contiguous()
        log_mass = _log_mass(W_reduced, r[src].contiguous(), [(1 << free, 1 << (free + 1))], **kw)
        log_mass = log_mass.view(-1, 1 << c).cpu()
        probs = (log_mass - log_mass.max(dim=1, keepdim=True).values).exp()             # [U, 2^c]
        step = max(1, (1 << 22) >> c)          # samples per multinomial call: bounded [step, 2^c] copies
        pick = torch.cat([torch.multinomial(probs[inverse[i:i + step]], 1, generator=generator).squeeze(1)
                          for i in range(0, inverse.numel(), step)]) if inverse.numel() else inverse
        prefix = prefix << c | pick
        fixed += c
    return prefix


def log_prob(W: Tensor, r: Tensor, codes: Tensor, **kw: Any) -> Tensor:
    """log p(code) per row: codes [B, S] -> [B, S] (the negated per-target nll)."""
    with torch.no_grad():
        nll, _ = sick_bide.loss(W, r, codes.to(W.device), **kw)
    return -nll.double()
