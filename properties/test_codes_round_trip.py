"""to_codes and from_codes are inverse bijections for every 8/16/32-bit dtype."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.codes import from_codes, n_bits_of, to_codes

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.int8, torch.uint8, torch.int16, torch.int32]


@given(dtype=st.sampled_from(DTYPES), data=st.data())
def test_codes_round_trip(dtype, data):
    n_bits = n_bits_of(dtype)
    codes = torch.tensor(data.draw(st.lists(st.integers(0, (1 << n_bits) - 1), min_size=1, max_size=50),
                                   label="codes"))
    values = from_codes(codes, dtype)
    assert values.dtype == dtype
    assert torch.equal(to_codes(values), codes)
