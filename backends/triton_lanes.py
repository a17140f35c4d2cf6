"""Inline PTX for the fused kernel (triton_fused.py): table loads and stores in the tile's own layout, the
mask, and sums over a warp's lanes.

Triton chooses the layout of every load and store itself (contiguous, non-repeating) and moves
values between that layout and their consumers' through shared memory, with barriers: for the
fused kernel's per-unit tables, broadcast to every warp, and its per-unit marginals that is most
of a unit's cost. Written as elementwise inline PTX, a load or store takes the layout of the
values it feeds or is fed by instead, four entries at a time (`rows_of`, `store_rows`), and the
sum over lanes is a shuffle butterfly on the values where they are (`lane_sums`).

Each relies on the layout it gets: four consecutive registers of a thread are four consecutive
entries, the last axis of a shuffled tensor is a warp's 32 lanes. `quads_ok` checks a compiled
kernel's TTGIR for both (triton_fused.py checks each tile shape once per GPU, and a shape that
fails runs the plain Triton path: slower, still right; tests/test_triton_tiles.py compiles every
tile shape for sm_90 in CI to notice a Triton release that lays them out otherwise). NVIDIA only:
inline PTX runs neither under TRITON_INTERPRET=1 nor on ROCm.
"""

from __future__ import annotations

import re

from harness.triton_helpers import jit, tl


def _asm(text: str):
    """A module-level string a kernel may read: Triton wants it as a constexpr."""
    return text if tl is None else tl.constexpr(text)


# $1 if $2 > $3 else +0 (NaN compares false): a compare and a select per element, where Triton's
# tl.where packs part of a large comparison into integer bit masks under register pressure.
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


@jit
def masked(e, a, b):
    """e where a > b, else 0 (tensors broadcast to e's shape)."""
    out = tl.inline_asm_elementwise(_SELECT, "=r,r,r,r", [e.to(tl.int32, bitcast=True), a.to(tl.int32, bitcast=True),
                                                          b.to(tl.int32, bitcast=True)],
                                    dtype=tl.int32, is_pure=True, pack=1)
    return out.to(tl.float32, bitcast=True)


@jit
def _butterfly(x, MASK: tl.constexpr):
    """x + x of lane ^ MASK."""
    out = tl.inline_asm_elementwise(_BUTTERFLY, "=r,r,r",
                                    [x.to(tl.int32, bitcast=True), tl.full(x.shape, MASK, tl.int32)],
                                    dtype=tl.int32, is_pure=False, pack=1)
    return out.to(tl.float32, bitcast=True)


@jit
def lane_sums(x):
    """x [..., 32] with its last axis over a warp's lanes (`quads_ok` checks it): every element becomes the
    sum over that axis, added in a fixed order (lane ^ 16, 8, 4, 2, 1), in x's own layout."""
    return _butterfly(_butterfly(_butterfly(_butterfly(_butterfly(x, 16), 8), 4), 2), 1)


_LOAD4 = _asm("ld.global.v4.b32 {$0, $1, $2, $3}, [$4];")
_STORE4 = _asm("st.global.v4.b32 [$4], {$8, $9, $10, $11};\n"
               "mov.b32 $0, 0;\nmov.b32 $1, 0;\nmov.b32 $2, 0;\nmov.b32 $3, 0;")      # outputs unused


@jit
def _quads(row, offs):
    """Addresses of row[offs] where offs is a multiple of 4, else 0: the compiler knows the low bits of the
    other entries' offsets and folds their addresses away (`rows_of`)."""
    return tl.where(offs % 4 == 0, (row + offs).to(tl.int64, bitcast=True), 0)


@jit
def rows_of(row, offs, PTX: tl.constexpr):
    """row[offs] for offs [N, ...]; with PTX, by 16-byte loads of four entries in offs' own layout.

    The PTX path assumes what the fused kernel's tiles give (`quads_ok` checks it): each thread holds
    the whole first axis of offs, its N entries in order, and offs runs over consecutive entries along
    it, 16-byte aligned at multiples of 4. Only each group's first address is used. Declared pure, so that
    copies Triton makes in layouts it then does not use are dropped: the address depends on what the
    caller's loop reads (the unit), which keeps the load after the barrier that precedes the loop."""
    if PTX:
        out = tl.inline_asm_elementwise(_LOAD4, "=r,=r,=r,=r,l,l,l,l", [_quads(row, offs)], dtype=tl.int32,
                                        is_pure=True, pack=4)
        return out.to(tl.float32, bitcast=True)
    else:
        return tl.load(row + offs)


@jit
def store_rows(row, offs, values, PTX: tl.constexpr):
    """row[offs] = values, as `rows_of` reads them. Copies of an element in several threads store the
    same value to the same place; Triton's own store would first move values to a layout of its choosing
    through shared memory."""
    if PTX:
        tl.inline_asm_elementwise(_STORE4, "=r,=r,=r,=r,l,l,l,l,r,r,r,r",
                                  [_quads(row, offs), values.to(tl.int32, bitcast=True)], dtype=tl.int32,
                                  is_pure=False, pack=4)
    else:
        tl.store(row + offs, values)


def _axes(layout: str, layouts: dict[str, str]) -> tuple[dict[str, list[int]], list[int]] | None:
    """A TTGIR layout (a blocked layout, or slices of one) as its root's fields and the root axes its
    tensor's axes are, in order; None for other layouts."""
    sliced = []
    while layout.startswith("#ttg.slice<"):
        dim, layout = re.fullmatch(r"#ttg\.slice<\{dim = (\d+), parent = (.*)\}>", layout).groups()
        sliced.append(int(dim))
    root = layouts.get(layout.lstrip("#"))
    if root is None:
        return None
    fields = {k: [int(x) for x in v.split(",")] for k, v in re.findall(r"(\w+) = \[([\d, ]+)\]", root)}
    axes = list(range(len(fields["order"])))
    for dim in reversed(sliced):      # the outermost slice removes an axis of what the inner ones left
        del axes[dim]
    return fields, axes


_LAYOUT = r"((?:#ttg\.slice<\{dim = \d+, parent = )*#\w+(?:\}>)*)"


def quads_ok(ttgir: str) -> bool:
    """Whether every inline-PTX access and shuffle in a compiled kernel (its TTGIR) has the layout it
    assumes. A `rows_of` / `store_rows` tensor: one element per thread per repetition, its first axis
    all in each thread (so its N entries are the thread's registers in order) and no other axis
    repeated. A `lane_sums` tensor: its last axis over the 32 lanes of a warp."""
    layouts = dict(re.findall(r"^#(\w+) = (#ttg\.blocked<\{[^}]*\}>)", ttgir, re.M))
    accesses = re.findall(r'tt\.elementwise_inline_asm "(?:ld|st)\.global\.v4[^"]*".*?: tensor<([\dx]+)xi64, '
                          + _LAYOUT + ">", ttgir)
    shuffles = re.findall(r'tt\.elementwise_inline_asm "[^"]*shfl\.sync[^"]*".*?: tensor<([\dx]+)xi32, '
                          + _LAYOUT + ">", ttgir)
    for shape, layout, shuffle in [(*a, False) for a in accesses] + [(*s, True) for s in shuffles]:
        found = _axes(layout, layouts)
        if found is None:
            return False
        fields, axes = found
        sizes = [int(n) for n in shape.split("x")]
        threads, warps = fields["threadsPerWarp"], fields["warpsPerCTA"]
        if set(fields["sizePerThread"]) != {1}:
            return False
        if shuffle:
            if threads[axes[-1]] != 32 or sizes[-1] != 32:
                return False
        elif threads[axes[0]] != 1 or warps[axes[0]] != 1 \
                or any(threads[a] * warps[a] != n for a, n in zip(axes[1:], sizes[1:], strict=True)):
            return False
    return bool(accesses)
