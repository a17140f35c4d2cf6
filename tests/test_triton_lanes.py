"""The fused kernel's inline PTX (backends/triton_lanes.py), checked without a GPU.

`marginals_ptx` is run on an emulated warp: a small interpreter for the PTX it emits executes the
32 lanes in lockstep, and the sums it stores must be those of numpy's float32, added in the order
the docstring promises (in-thread sums in order, then the butterfly's tree over lanes), bit for bit.
`quads_ok` must accept the layouts the kernel gets and refuse ones the PTX would misread.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from harness.triton_helpers import TRITON_MISSING

pytestmark = pytest.mark.skipif(TRITON_MISSING, reason="triton is not installed")

if not TRITON_MISSING:
    from backends.triton_lanes import marginals_ptx, quads_ok

f32 = np.float32


def run_warp(asm: str, operands: list[list], memory: dict[int, f32]) -> None:
    """Execute `asm` on 32 lanes in lockstep; operands[lane][k] is the value of $k in that lane."""
    regs = [{"%laneid": lane} for lane in range(32)]

    def value(lane: int, token: str):
        token = token.strip()
        if token.startswith("$"):
            return operands[lane][int(token[1:])]
        if re.fullmatch(r"-?\d+|0x[0-9a-f]+", token):
            return int(token, 0)
        return regs[lane][token]

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if line in ("{", "}") or line.startswith(".reg"):
            continue
        guard, line = re.fullmatch(r"(?:@(!?\w+)\s+)?(.*)", line).groups()
        op, args = line.split(None, 1)
        if op == "shfl.sync.bfly.b32":       # reads every lane before any lane writes
            dst, src, mask = (a.strip() for a in args.split(",")[:3])
            got = [value(lane ^ int(mask), src) for lane in range(32)]
            for lane in range(32):
                regs[lane][dst] = got[lane]
            continue
        for lane in range(32):
            if guard and not regs[lane][guard.lstrip("!")] ^ guard.startswith("!"):
                continue
            r = regs[lane]
            if op.startswith("st.global"):
                address, data = re.fullmatch(r"\[([^\]]+)\],\s*\{?([^}]*)\}?", args).groups()
                base, _, offset = address.partition("+")
                at = value(lane, base) + int(offset or 0)
                for i, token in enumerate(data.split(",")):
                    memory[at + 4 * i] = f32(value(lane, token))
                continue
            dst, *src = (a.strip() for a in args.split(","))
            v = [value(lane, s) for s in src]
            if op in ("mov.u32", "mov.b32"):
                if not dst.startswith("$"):           # the unused outputs are not modelled
                    r[dst] = v[0]
            elif op == "setp.gt.f32":
                r[dst] = bool(f32(v[0]) > f32(v[1]))
            elif op in ("setp.ne.u32", "setp.eq.u32"):
                r[dst] = (v[0] != v[1]) if op == "setp.ne.u32" else (v[0] == v[1])
            elif op == "selp.b32":
                r[dst] = v[0] if r[src[2]] else v[1]
            elif op == "add.f32":
                r[dst] = f32(f32(v[0]) + f32(v[1]))
            elif op == "fma.rn.f32":
                # In float64 and then to float32: the product of two float32 is exact in float64, and the
                # test's sums (alpha = 0.375, values below 64) are too, so this is fma's single rounding.
                r[dst] = f32(np.float64(f32(v[0])) * np.float64(f32(v[1])) + np.float64(f32(v[2])))
            elif op == "and.b32":
                r[dst] = v[0] & v[1]
            elif op == "shr.u32":
                r[dst] = v[0] >> v[1]
            elif op == "mad.wide.u32":
                r[dst] = v[0] * v[1] + v[2]
            else:
                raise AssertionError(f"the emulator does not know {op}")


@pytest.mark.parametrize("rows, cols", [(4, 4), (8, 4), (4, 8), (16, 4), (32, 4)])
def test_marginals_ptx_sums_on_an_emulated_warp(rows, cols):
    """Row sums over a thread's columns and all 32 lanes (stored once per row), and column accumulators
    alpha C + sums per lane, for a thread block of rows x cols; masked entries, ties and a NaN logit
    (which compares false) included."""
    asm, constraints = marginals_ptx(rows, cols)
    n = rows * cols
    assert len(constraints.split(",")) == 8 * n
    rng = np.random.default_rng(rows * 100 + cols)
    e = rng.random((32, rows, cols), dtype=np.float32)
    q_lo = rng.standard_normal(rows).astype(f32)                     # shared by the warp's lanes
    q_hi = rng.standard_normal((32, cols)).astype(f32)
    q_hi[3, 0] = q_lo[0]                                                # a tie: not counted
    q_hi[5, 1] = np.nan                                                 # NaN compares false
    old = rng.random((32, cols), dtype=np.float32)
    alpha = f32(0.375)
    row_at, col_at = 4096, 65536                                        # byte addresses
    operands = []
    for lane in range(32):
        ops = [0] * n                                                    # the unused outputs
        ops += [e[lane, i, j] for i in range(rows) for j in range(cols)]
        ops += [q_lo[i] for i in range(rows) for j in range(cols)]
        ops += [q_hi[lane, j] for i in range(rows) for j in range(cols)]
        # as `_stage` passes them: the first row's address in row 0's elements, the first column's in
        # column 0's, 0 elsewhere (the PTX must read element 0's)
        ops += [row_at if i == 0 else 0 for i in range(rows) for j in range(cols)]
        ops += [col_at + 4 * cols * lane if j == 0 else 0 for i in range(rows) for j in range(cols)]
        ops += [old[lane, j] for i in range(rows) for j in range(cols)] + [alpha] * n
        operands.append(ops)
    memory: dict[int, f32] = {}
    run_warp(asm, operands, memory)

    on = q_lo[None, :, None] > q_hi[:, None, :]                          # [lane, row, col]
    a = np.where(on, e, f32(0))
    partial = np.zeros((32, rows), f32)                                  # in-thread, in column order
    col_sums = np.zeros((32, cols), f32)                                 # in-thread, in row order
    for j in range(cols):
        partial = partial + a[:, :, j]
    for i in range(rows):
        col_sums = col_sums + a[:, i, :]
    for bit in (16, 8, 4, 2, 1):                                         # the butterfly's tree
        partial = partial + partial[np.arange(32) ^ bit]
    expect_cols = (old.astype(np.float64) * alpha + col_sums).astype(f32)
    got_rows = np.array([memory.get(row_at + 4 * i, np.nan) for i in range(rows)], f32)
    got_cols = np.array([[memory.get(col_at + 4 * (cols * lane + j), np.nan) for j in range(cols)]
                         for lane in range(32)], f32)
    assert np.array_equal(got_rows, partial[0]), (got_rows, partial[0])
    assert np.array_equal(got_cols, expect_cols)
    assert len(memory) == rows + 32 * cols                               # nothing else written


def test_marginals_ptx_refuses_blocks_it_cannot_sum():
    for rows, cols in [(3, 4), (64, 4), (8, 2)]:
        with pytest.raises(AssertionError):
            marginals_ptx(rows, cols)


_TTGIR = """#blocked = #ttg.blocked<{sizePerThread = [1, 1, 1, 1], threadsPerWarp = [THREADS], warpsPerCTA = [WARPS], order = [ORDER]}>
%1 = tt.elementwise_inline_asm "ld.global.v4.b32 {$0, $1, $2, $3}, [$4];" {constraints = "=r,=r,=r,=r,l,l,l,l", packed_element = 4 : i32, pure = true} %0 : tensor<8x4xi64, #ttg.slice<{dim = 1, parent = #ttg.slice<{dim = 3, parent = #blocked}>}>> -> tensor<8x4xi32, #ttg.slice<{dim = 1, parent = #ttg.slice<{dim = 3, parent = #blocked}>}>>
%2 = tt.elementwise_inline_asm "{\\0A.reg .pred on;\\0Ashfl.sync.bfly.b32 got, x, 16, 0x1f, 0xffffffff;\\0Ast.global.f32 [at], x;\\0A}" {constraints = "=r", packed_element = 32 : i32, pure = false} %e : tensor<8x4x4x32xi32, #blocked>, tensor<8x4x4x32xi32, #blocked> -> tensor<8x4x4x32xi32, #blocked>
"""  # noqa: E501


def _ttgir(threads: str, warps: str, order: str) -> str:
    return _TTGIR.replace("THREADS", threads).replace("WARPS", warps).replace("ORDER", order)


@pytest.mark.parametrize("threads, warps, order, ok", [
    ("1, 1, 1, 32", "1, 1, 4, 1", "3, 2, 1, 0", True),       # the kernel's layout
    ("1, 1, 1, 32", "1, 1, 4, 1", "3, 2, 0, 1", False),      # a thread's block in column-major registers
    ("1, 1, 2, 16", "1, 1, 4, 1", "3, 2, 1, 0", False),      # half the last axis's entries in no thread
    ("1, 1, 2, 16", "1, 1, 2, 2", "3, 2, 1, 0", False),      # every entry once, the last axis over 2 warps
    ("1, 2, 1, 16", "1, 1, 4, 1", "3, 2, 1, 0", False),      # mid codes split over lanes: not a thread's block
])
def test_quads_ok_reads_the_layouts(threads, warps, order, ok):
    assert quads_ok(_ttgir(threads, warps, order)) is ok


def test_quads_ok_wants_an_access():
    assert quads_ok(_ttgir("1, 1, 1, 32", "1, 1, 4, 1", "3, 2, 1, 0").replace("ld.global", "add.f32")
                    .replace("st.global", "add.f32")) is False
