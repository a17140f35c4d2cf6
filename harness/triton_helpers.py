"""What every Triton backend shares; importable without Triton (then `triton`, `tl`, `rounded` are None).

`jit`: triton.jit, or the identity without Triton, so kernel modules import anywhere and the
registry can say why they are unavailable (`unavailable`). `DEVICES`: CUDA, plus the CPU under
TRITON_INTERPRET=1 (the test plugin sets it on machines without a GPU). `unavailable`: why Triton
backends cannot run here (not installed, or an interpreter that cannot run these kernels).

`rounded(value, OUT_DTYPE)`: a float32 value converted to OUT_DTYPE, rounded to nearest even.
Compiled kernels already round this way (cvt.rn), but Triton's interpreter converts float32 to
bfloat16 by dropping the low 16 bits (round toward zero), so a kernel checked in CI under
TRITON_INTERPRET=1 would carry up to one bfloat16 ulp more error than on the GPU, and more
after cancellation (softmax's dx = (dy - sum dy y) y reads y back). Rounding the bits by hand
first makes the conversion exact on both; NaN stays NaN.
"""

from __future__ import annotations

import importlib.util
import os
import re

TRITON_MISSING = importlib.util.find_spec("triton") is None
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICES = ("cuda", "cpu") if INTERPRET else ("cuda",)

if not TRITON_MISSING:
    import triton
    import triton.language as tl
else:
    triton = tl = None


def jit(fn=None, **options):
    """triton.jit(fn, **options), usable bare or with options; the identity without Triton."""
    if fn is None:
        return lambda f: jit(f, **options)
    return fn if TRITON_MISSING else triton.jit(fn, **options)


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def interpreter_problem(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run these kernels with these versions, or None.

    Before 3.7 the interpreter turns a runtime loop bound (`range(start, n_items, step)` over a kernel
    argument, which every kernel here has) into an int through a one-element array, and NumPy 2.4
    refuses that conversion, so each such kernel fails on its first loop (triton-lang/triton#9171).
    """
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4):
        return (f"TRITON_INTERPRET=1 with triton {triton_version} and numpy {numpy_version}: this Triton's "
                "interpreter cannot run loops with a runtime bound under numpy >= 2.4 (triton-lang/triton#9171); "
                "install triton >= 3.7 or numpy < 2.4")
    return None


if TRITON_MISSING or not INTERPRET:
    INTERPRETER_PROBLEM = None
else:
    import numpy

    INTERPRETER_PROBLEM = interpreter_problem(triton.__version__, numpy.__version__)


def unavailable(config: str) -> str | None:
    """Backend.unavailable for Triton backends."""
    if TRITON_MISSING:
        return "triton is not installed (pip install 'fusedbench[triton]')"
    return INTERPRETER_PROBLEM


if not TRITON_MISSING:
    @triton.jit
    def rounded(value, OUT_DTYPE: tl.constexpr):
        if tl.bfloat16 == OUT_DTYPE:
            bits = value.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            value = tl.where(value != value, value, bits.to(tl.float32, bitcast=True))
        return value.to(OUT_DTYPE)
else:
    rounded = None
