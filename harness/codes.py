"""Values <-> target codes by their bits.

BIDE models a distribution over the values of a small dtype by scoring every
bit pattern: a float16 value is the code k in [0, 2^16) whose bits are the
value's bits, read as an unsigned integer. `to_codes` maps values to such codes
(int64, usable as `targets` with n_bits = `n_bits_of(dtype)`) and `from_codes`
maps codes back to values; the two are exact inverses, NaN payloads included.

    >>> to_codes(torch.tensor([1.0], dtype=torch.float16))
    tensor([15360])
    >>> from_codes(torch.tensor([15360]), torch.float16)
    tensor([1.], dtype=torch.float16)
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.errors import InputError

# The signed integer dtype of each width; a tensor is reinterpreted through it.
_INT_OF_WIDTH = {1: torch.int8, 2: torch.int16, 4: torch.int32}


def n_bits_of(dtype: torch.dtype) -> int:
    """Bits per value of `dtype` (8, 16 or 32): the n_bits of a model over its values."""
    width = torch.empty(0, dtype=dtype).element_size()
    if width not in _INT_OF_WIDTH or dtype == torch.bool or dtype.is_complex:
        raise InputError(
            f"dtype {dtype} has {8 * width} bits; codes exist for 8-, 16- and 32-bit real dtypes "
            "(n_bits <= 32)"
        )
    return 8 * width


def to_codes(values: Tensor) -> Tensor:
    """values [...] of an 8/16/32-bit dtype -> codes [...] int64 in [0, 2^n_bits)."""
    if not isinstance(values, Tensor):
        raise InputError(f"values must be a torch.Tensor, got {type(values).__name__}")
    n_bits = n_bits_of(values.dtype)
    raw = values.contiguous().view(_INT_OF_WIDTH[n_bits // 8])
    return raw.long() & ((1 << n_bits) - 1)


def from_codes(codes: Tensor, dtype: torch.dtype) -> Tensor:
    """codes [...] integers in [0, 2^n_bits) -> values [...] of `dtype` with those bits."""
    n_bits = n_bits_of(dtype)
    if not isinstance(codes, Tensor) or codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise InputError("codes must be an integer torch.Tensor")
    codes = codes.long()
    if codes.numel():
        lo, hi = (int(v) for v in torch.stack(torch.aminmax(codes)).tolist())
        if lo < 0 or hi >= 1 << n_bits:
            bad = lo if lo < 0 else hi
            raise InputError(f"codes contains {bad}, outside 0 <= codes < 2^{n_bits} for {dtype}")
    # Codes >= 2^(n-1) are the patterns with the top bit set: negative as signed integers.
    signed = torch.where(codes >= 1 << (n_bits - 1), codes - (1 << n_bits), codes)
    return signed.to(_INT_OF_WIDTH[n_bits // 8]).view(dtype)
