"""Values <-> target codes by their bits."""

import math

import pytest
import torch

from harness import InputError
from harness.codes import from_codes, n_bits_of, to_codes


@pytest.mark.parametrize(("dtype", "n_bits"), [(torch.float16, 16), (torch.bfloat16, 16), (torch.int16, 16),
                                               (torch.uint8, 8), (torch.int8, 8), (torch.float32, 32)])
def test_n_bits_of(dtype, n_bits):
    assert n_bits_of(dtype) == n_bits


def test_known_float16_patterns():
    values = torch.tensor([0.0, -0.0, 1.0, -2.0, math.inf, 65504.0], dtype=torch.float16)
    assert to_codes(values).tolist() == [0x0000, 0x8000, 0x3C00, 0xC000, 0x7C00, 0x7BFF]


def test_signed_integers_map_to_twos_complement_codes():
    assert to_codes(torch.tensor([-1, 0, 1, -128], dtype=torch.int8)).tolist() == [255, 0, 1, 128]
    assert from_codes(torch.tensor([255, 128]), torch.int8).tolist() == [-1, -128]


def test_every_float16_pattern_round_trips_nan_payloads_included():
    codes = torch.arange(1 << 16)
    values = from_codes(codes, torch.float16)
    assert torch.equal(to_codes(values), codes)


def test_codes_are_valid_targets():
    values = torch.randn(5, 3).to(torch.bfloat16)
    codes = to_codes(values)
    assert codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() < 1 << 16


def test_refusals():
    with pytest.raises(InputError, match=r"codes exist for 8-, 16- and 32-bit real dtypes"):
        n_bits_of(torch.float64)
    with pytest.raises(InputError, match=r"codes contains 65536, outside 0 <= codes < 2\^16"):
        from_codes(torch.tensor([65536]), torch.float16)
    with pytest.raises(InputError, match=r"codes must be an integer torch\.Tensor"):
        from_codes(torch.tensor([1.0]), torch.float16)
    with pytest.raises(InputError, match=r"values must be a torch\.Tensor"):
        to_codes([1.0])
