"""Value orders, exact CDFs and exact samples of learned distributions (harness/sampling.py),
checked against brute force over all 2^n codes in float64."""

from __future__ import annotations

import math

import pytest
import torch

from harness import sampling
from harness.codes import from_codes, n_bits_of, to_codes
from harness.errors import InputError

DTYPES = [torch.uint8, torch.int8, torch.float16, torch.bfloat16]


def brute_probs(W: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """p_k over every code, [B, 2^n] float64, materialised (small n only)."""
    n = W.shape[-1]
    k = torch.arange(1 << n)
    b = ((k[:, None] >> torch.arange(n)) & 1).double() * 2 - 1
    l = (torch.relu(torch.einsum("bhj,kj->bkh", W.double(), b)) * r.double()[:, None, :]).sum(-1)
    return torch.softmax(l, dim=1)


def value_order(dtype: torch.dtype) -> torch.Tensor:
    """Every non-NaN code of dtype sorted by value, -0 before +0 (the order sampling defines)."""
    codes = torch.arange(1 << n_bits_of(dtype))
    values = from_codes(codes, dtype).double()
    keep = ~torch.isnan(values)
    codes, values = codes[keep], values[keep]
    negative_zero = (values == 0) & (codes >= 1 << (n_bits_of(dtype) - 1))
    key = values - negative_zero.double() * 1e-300          # -0 ranks first
    return codes[torch.argsort(key, stable=True)]


def rows(dtype: torch.dtype, seed: int = 0, batch: int = 2, hidden: int = 5, scale: float = 0.7):
    gen = torch.Generator().manual_seed(seed)
    n = n_bits_of(dtype)
    return (torch.randn(batch, hidden, n, generator=gen, dtype=torch.float64) * scale,
            torch.randn(batch, hidden, generator=gen, dtype=torch.float64) * 2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_segments_walk_the_codes_in_value_order(dtype):
    n_bits, order, inf = sampling._float_layout(dtype)
    segs = sampling.segments(n_bits, order, inf)
    walked = torch.cat([torch.arange(first, last + step, step) for first, last, step in segs])
    assert torch.equal(walked, value_order(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nan", ["exclude", "report"])
def test_cdf_matches_brute_force(dtype, nan):
    W, r = rows(dtype)
    p = brute_probs(W, r)
    order = value_order(dtype)
    total = p.sum(1, keepdim=True) if nan == "report" else p[:, order].sum(1, keepdim=True)
    want_all = p[:, order].cumsum(1) / total
    gen = torch.Generator().manual_seed(1)
    picks = torch.randperm(order.numel(), generator=gen)[:40]
    got = sampling.cdf(W, r, order[picks], dtype, nan=nan)
    assert torch.allclose(got, want_all[:, picks], atol=1e-12, rtol=1e-9)
    assert torch.allclose(sampling.cdf(W, r, order[-1:], dtype, nan=nan)[:, 0], want_all[:, -1], atol=1e-12)


def test_cdf_at_both_zeros_and_infinities():
    W, r = rows(torch.float16, seed=6)
    p = brute_probs(W, r)
    order = value_order(torch.float16)
    cdf_all = p[:, order].cumsum(1) / p[:, order].sum(1, keepdim=True)
    rank = {int(c): i for i, c in enumerate(order)}
    queries = torch.tensor([0x8000, 0x0000, 0xFC00, 0x7C00, 0x0001, 0x8001])    # -0, +0, -inf, +inf, +-tiny
    got = sampling.cdf(W, r, queries, torch.float16)
    want = torch.stack([cdf_all[:, rank[int(q)]] for q in queries], 1)
    assert torch.allclose(got, want, atol=1e-12)
    assert (got[:, 0] < got[:, 1]).all() and torch.allclose(got[:, 3], torch.ones(2, dtype=torch.float64))


def test_float16_samples_follow_the_distribution_at_the_default_levels():
    """Chi-square over the 256 high bytes of the codes (sign, exponent, 2 mantissa bits)."""
    W, r = rows(torch.float16, seed=8, batch=2)
    p = brute_probs(W, r)
    nan = torch.isnan(from_codes(torch.arange(1 << 16), torch.float16).double())
    p[:, nan] = 0
    p /= p.sum(1, keepdim=True)
    draws = 40_000
    codes = sampling.sample(W, r, draws, torch.float16, generator=torch.Generator().manual_seed(9))
    for row in range(2):
        counts = torch.bincount(codes[row] >> 8, minlength=256).double()
        expected = p[row].view(256, 256).sum(1) * draws
        big = expected >= 5
        chi2 = float(((counts[big] - expected[big]) ** 2 / expected[big]).sum())
        dof = int(big.sum())
        assert chi2 < dof + 10 * math.sqrt(2 * dof) + 30, (row, chi2, dof)


def test_log_prob_is_the_exact_log_probability():
    W, r = rows(torch.int8, seed=10)
    p = brute_probs(W, r)
    codes = torch.tensor([[0, 5, 255], [128, 7, 64]])
    assert torch.allclose(sampling.log_prob(W, r, codes).exp(), p.gather(1, codes), atol=1e-12)


def test_nan_redraws_stop_when_none_are_left():
    W, r = rows(torch.float16, seed=4, batch=1, scale=1.5)
    with pytest.raises(InputError, match="keep drawing NaN patterns after 0 redraws"):
        sampling.sample(W, r, 4000, torch.float16, max_rounds=0)       # p(NaN) > 0.01: some are drawn
    W_int, r_int = rows(torch.int8)
    assert sampling.sample(W_int, r_int, 10, torch.int8, max_rounds=0).shape == (2, 10)


def test_cdf_of_nan_patterns_is_nan():
    W, r = rows(torch.float16)
    nan_codes = to_codes(torch.tensor([math.nan, -math.nan], dtype=torch.float16))
    got = sampling.cdf(W, r, torch.cat([nan_codes, torch.tensor([0])]), torch.float16)
    assert torch.isnan(got[:, :2]).all() and not torch.isnan(got[:, 2]).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int8], ids=str)
def test_nan_mass_matches_brute_force(dtype):
    W, r = rows(dtype, seed=3)
    p = brute_probs(W, r)
    values = from_codes(torch.arange(p.shape[1]), dtype)
    nan = torch.isnan(values.double()) if dtype.is_floating_point else torch.zeros(p.shape[1], dtype=torch.bool)
    assert torch.allclose(sampling.nan_mass(W, r, dtype), p[:, nan].sum(1), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8], ids=str)
def test_samples_follow_the_distribution(dtype):
    """Pearson chi-square over the codes with expected count >= 5: a wrong level, a wrong bias
    column or a wrong bit order moves it far past the 1e-6 quantile of its distribution."""
    W, r = rows(dtype, seed=5, batch=3)
    p = brute_probs(W, r)
    draws = 40_000
    codes = sampling.sample(W, r, draws, dtype, generator=torch.Generator().manual_seed(7), bits_per_level=3)
    assert codes.shape == (3, draws) and codes.dtype == torch.long
    for row in range(3):
        counts = torch.bincount(codes[row], minlength=p.shape[1]).double()
        expected = p[row] * draws
        big = expected >= 5
        observed = torch.cat([counts[big], counts[~big].sum()[None]])
        wanted = torch.cat([expected[big], expected[~big].sum()[None]])
        chi2 = float(((observed - wanted) ** 2 / wanted.clamp_min(1e-9)).sum())
        dof = int(big.sum())
        assert chi2 < dof + 10 * math.sqrt(2 * dof) + 30, (row, chi2, dof)


def test_samples_are_reproducible_and_levels_agree():
    W, r = rows(torch.uint8, seed=2)
    one = sampling.sample(W, r, 500, torch.uint8, generator=torch.Generator().manual_seed(3))
    two = sampling.sample(W, r, 500, torch.uint8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(one, two)
    peaked_W, peaked_r = W * 40, r.abs() * 40       # nearly all mass on one code per row
    mode = brute_probs(peaked_W, peaked_r).argmax(1)
    for bits in (1, 5, 8):
        got = sampling.sample(peaked_W, peaked_r, 50, torch.uint8, bits_per_level=bits)
        assert (got == mode[:, None]).float().mean() > 0.95


def test_float16_samples_exclude_nan_patterns_unless_reported():
    W, r = rows(torch.float16, seed=4, batch=1, scale=1.5)
    nan = float(sampling.nan_mass(W, r, torch.float16)[0])
    assert nan > 0.01            # this row puts real mass on NaN patterns
    draws = 4000
    excluded = sampling.sample(W, r, draws, torch.float16, generator=torch.Generator().manual_seed(1))
    assert not torch.isnan(from_codes(excluded, torch.float16).double()).any()
    reported = sampling.sample(W, r, draws, torch.float16, nan="report", generator=torch.Generator().manual_seed(1))
    seen = float(torch.isnan(from_codes(reported, torch.float16).double()).float().mean())
    assert abs(seen - nan) < 5 * math.sqrt(nan * (1 - nan) / draws)


def test_bad_arguments_are_named():
    W, r = rows(torch.int8)
    with pytest.raises(InputError, match=r"n_bits = 8, but torch\.float16 values have 16 bits"):
        sampling.cdf(W, r, torch.tensor([0]), torch.float16)
    with pytest.raises(InputError, match="nan must be one of"):
        sampling.cdf(W, r, torch.tensor([0]), torch.int8, nan="drop")
    with pytest.raises(InputError, match="num_samples must be an int >= 0"):
        sampling.sample(W, r, -1, torch.int8)
    with pytest.raises(InputError, match=r"bits_per_level must be in 1\.\.16"):
        sampling.sample(W, r, 3, torch.int8, bits_per_level=0)
    with pytest.raises(InputError, match="1-D integer tensor"):
        sampling.cdf(W, r, torch.tensor([[0]]), torch.int8)
    with pytest.raises(InputError, match="1-D integer tensor"):
        sampling.cdf(W, r, torch.tensor([0.5]), torch.int8)
    with pytest.raises(InputError, match=r"codes must lie in 0 <= code < 2\^8 for torch\.int8, got -1\.\.3"):
        sampling.cdf(W, r, torch.tensor([-1, 3]), torch.int8)
    W_nan = W.clone()
    W_nan[1, 0, 0] = math.nan
    with pytest.raises(InputError, match=r"NaN or inf in rows \[1\]"):
        sampling.sample(W_nan, r, 3, torch.int8)
