"""Triton helpers shared by backends (importable without Triton; the helpers are None then).

`rounded(value, OUT_DTYPE)`: a float32 value converted to OUT_DTYPE, rounded to nearest even.
Compiled kernels already round this way (cvt.rn), but Triton's interpreter converts float32 to
bfloat16 by dropping the low 16 bits (round toward zero), so a kernel checked in CI under
TRITON_INTERPRET=1 would carry up to one bfloat16 ulp more error than on the GPU, and more
after cancellation (softmax's dx = (dy - sum dy y) y reads y back). Rounding the bits by hand
first makes the conversion exact on both; NaN stays NaN.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("triton") is not None:
    import triton
    import triton.language as tl

    @triton.jit
    def rounded(value, OUT_DTYPE: tl.constexpr):
        if tl.bfloat16 == OUT_DTYPE:
            bits = value.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            value = tl.where(value != value, value, bits.to(tl.float32, bitcast=True))
        return value.to(OUT_DTYPE)
else:
    rounded = None
