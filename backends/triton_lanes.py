"""Inline PTX for the fused kernel's marginals: the mask, and row sums by a hand-written shuffle butterfly.

Triton lays the fused kernel's [ROWS, COLS] tiles out with lanes and warps along COLS and every
row in each thread, and reduces along COLS with a shuffle tree per row: 5 levels of ROWS shuffles
and adds per thread. A reduce-scatter halves the rows at each level instead: a lane keeps one half
of its rows and sends the other to its partner (lane ^ mask), which keeps the other half, so 16
rows cost 8 + 4 + 2 + 1 shuffles, plus a plain level that leaves each pair of lanes with one row's
sum over the warp (32 rows: 16 + 8 + 4 + 2 + 1, one row per lane). Each kept half costs two selects
(which half a lane keeps depends on its lane bit), so a level of k row pairs is 2k SEL, k SHFL and
k FADD where the tree spends 2k SHFL and 2k FADD per level: ~60 instructions instead of 160 per
16 rows. The warps' partial sums then meet in an ordinary `tl.sum`. Sums are in a fixed order.

It relies on the layout: column c of the tile sits in lane c % 32 of warp (c // 32) % num_warps,
the one Triton chooses for these tiles (threads per warp [1, 32], warps along the columns) when
COLS is a multiple of 32 num_warps. `lanes_ok` says whether a tile shape can get it, and
`layout_ok` whether a compiled kernel did (triton_mitm.py checks each tile shape once, and a Triton
release that lays the tile out otherwise gets the plain reductions: slower, still right;
tests/test_triton_tiles.py compiles every shape for sm_90 in CI to notice). NVIDIA only: inline PTX
runs neither under TRITON_INTERPRET=1, where the kernel keeps `tl.sum`, nor on ROCm.
"""

from __future__ import annotations

import re

import torch

from harness.triton_helpers import INTERPRET, jit, tl


def _asm(text: str):
    """A module-level string a kernel may read: Triton wants it as a constexpr."""
    return text if tl is None else tl.constexpr(text)


# $1: the low half's value, $2: the high half's, $3: the lane's bit (lane & mask), $4: the mask.
# A lane whose bit is 0 keeps the low half and sends the high half; its partner does the opposite.
_SCATTER = _asm("""{
.reg .pred keep_high;
.reg .b32 sent, kept, got;
setp.ne.b32 keep_high, $3, 0;
selp.b32 sent, $1, $2, keep_high;
selp.b32 kept, $2, $1, keep_high;
shfl.sync.bfly.b32 got, sent, $4, 0x1f, 0xffffffff;
add.f32 $0, kept, got;
}""")
# $1 if $2 > $3 else +0 (NaN compares false): a compare and a select per element, where Triton's
# tl.where packs part of the [ROWS, COLS] comparison into integer bit masks under register pressure.
_SELECT = _asm("""{
.reg .pred greater;
setp.gt.f32 greater, $2, $3;
selp.b32 $0, $1, 0, greater;
}""")
_BUTTERFLY = _asm("""{
.reg .b32 got;
shfl.sync.bfly.b32 got, $1, $2, 0x1f, 0xffffffff;
add.f32 $0, $1, got;
}""")


def lanes_ok(rows: int, cols: int, num_warps: int) -> bool:
    """Whether `row_sums` can apply to a [rows, cols] tile: compiled for NVIDIA, 16 or 32 rows, the
    columns a multiple of the threads."""
    return not INTERPRET and torch.version.hip is None and rows in (16, 32) and cols % (32 * num_warps) == 0


def layout_ok(ttgir: str, num_warps: int) -> bool:
    """Whether every shuffle in a compiled kernel (its TTGIR) acts on the layout `row_sums` assumes:
    one element per thread per repetition, threads per warp [1, 32], warps [1, num_warps]."""
    layouts = dict(re.findall(r"^#(\w+) = (#ttg\.blocked<\{[^}]*\}>)", ttgir, re.M))
    want = f"sizePerThread = [1, 1], threadsPerWarp = [1, 32], warpsPerCTA = [1, {num_warps}]"
    shuffled = re.findall(r'tt\.elementwise_inline_asm "[^"]*shfl\.sync[^"]*".*-> tensor<[^,>]+, #(\w+)>', ttgir)
    return bool(shuffled) and all(want in layouts.get(name, "") for name in shuffled)


@jit
def _scatter(x, lane, ROWS: tl.constexpr, COLS: tl.constexpr, MASK: tl.constexpr):
    """One reduce-scatter level: x [ROWS, COLS] -> [ROWS / 2, COLS]; row i of a lane whose bit is 0
    now holds its row i plus its partner's, row ROWS / 2 + i where the bit is 1."""
    low, high = tl.split(tl.permute(tl.reshape(x, [2, ROWS // 2, COLS]), [1, 2, 0]))    # in-thread: free
    bit = (lane & MASK)[None, :]
    mask = tl.full([1, COLS], MASK, tl.int32)
    out = tl.inline_asm_elementwise(_SCATTER, "=r,r,r,r,r",
                                    [low.to(tl.int32, bitcast=True), high.to(tl.int32, bitcast=True), bit, mask],
                                    dtype=tl.int32, is_pure=False, pack=1)
    return out.to(tl.float32, bitcast=True)


@jit
def _butterfly(x, MASK: tl.constexpr, COLS: tl.constexpr):
    """x + x of lane ^ MASK, for x [1, COLS]."""
    mask = tl.full([1, COLS], MASK, tl.int32)
    out = tl.inline_asm_elementwise(_BUTTERFLY, "=r,r,r", [x.to(tl.int32, bitcast=True), mask],
                                    dtype=tl.int32, is_pure=False, pack=1)
    return out.to(tl.float32, bitcast=True)


@jit
def masked(e, a, b):
    """e where a > b, else 0 (tensors broadcast to e's shape; compiled only, as `row_sums`)."""
    out = tl.inline_asm_elementwise(_SELECT, "=r,r,r,r", [e.to(tl.int32, bitcast=True), a.to(tl.int32, bitcast=True),
                                                          b.to(tl.int32, bitcast=True)],
                                    dtype=tl.int32, is_pure=True, pack=1)
    return out.to(tl.float32, bitcast=True)


@jit
def row_sums(A, ROWS: tl.constexpr, COLS: tl.constexpr, NUM_WARPS: tl.constexpr):
    """A [ROWS, COLS] -> [32]: element l is the sum of row `row_of(l)` over all columns (`lanes_ok`)."""
    lanes: tl.constexpr = 32 * NUM_WARPS
    x = tl.sum(tl.reshape(A, [ROWS, COLS // lanes, lanes]), axis=1)      # a thread's own columns first
    lane = tl.arange(0, lanes) % 32
    x = _scatter(x, lane, ROWS, lanes, 16)
    x = _scatter(x, lane, ROWS // 2, lanes, 8)
    x = _scatter(x, lane, ROWS // 4, lanes, 4)
    x = _scatter(x, lane, ROWS // 8, lanes, 2)
    x = _scatter(x, lane, 2, lanes, 1) if ROWS == 32 else _butterfly(x, 1, lanes)
    return tl.sum(tl.reshape(x, [NUM_WARPS, 32]), axis=0)                 # the warps' partial sums


@jit
def row_of(lane, ROWS: tl.constexpr):
    """The row whose sum `row_sums` leaves at element `lane` (each row twice when ROWS = 16)."""
    return lane >> 1 if ROWS == 16 else lane
