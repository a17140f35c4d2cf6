"""Inline PTX for the fused kernel (triton_fused.py): table loads in the tile's own layout, and each hidden
unit's marginals (mask, sums, sums over a warp's lanes, stores) as one block of PTX.

Triton chooses the layout of every load and store itself (contiguous, non-repeating) and moves
values between that layout and their consumers' through shared memory, with barriers: for the
fused kernel's per-unit tables, broadcast to every warp, and its per-unit marginals that is most
of a unit's cost. Written as elementwise inline PTX, a load or store takes the layout of the
values it feeds or is fed by instead, four entries at a time (`rows_of`). A unit's marginals are
one PTX block over all of a thread's elements (`store_marginals`, `pack` = the elements): a
compare and two predicated adds per element, which Triton's select-then-sum cannot express (a
select and two adds), a shuffle reduce-scatter over the lanes instead of a butterfly on every
row, and 16-byte stores.

Each relies on the layout it gets: a thread's registers are its entries in row-major order, the
last axis of a tensor summed over lanes is a warp's 32 lanes. `quads_ok` checks a compiled
kernel's TTGIR for both (triton_fused.py checks each tile shape once per GPU, and a shape that
fails runs the plain Triton path: slower, still right; tests/test_triton_tiles.py compiles every
tile shape for sm_90 in CI to notice a Triton release that lays them out otherwise). NVIDIA only:
inline PTX runs neither under TRITON_INTERPRET=1 nor on ROCm.
"""

from __future__ import annotations

import functools
import itertools
import re

from harness.triton_helpers import jit, tl


def _asm(text: str):
    """A module-level string a kernel may read: Triton wants it as a constexpr."""
    return text if tl is None else tl.constexpr(text)


@functools.cache     # built on every launch's path (`ptx_constants`): once per block shape
def marginals_ptx(rows: int, cols: int) -> tuple[str, str]:
    """PTX, and its operand constraints, that stages one hidden unit's marginals of a thread's rows x cols
    block of A = e 1[qlo > qhi] (`store_marginals`): the row sums summed over the warp's 32 lanes, the
    column sums as they are.

    Operands, N = rows cols, element (i, j) the thread's register i cols + j: N unused outputs, then N
    each of e, qlo (row i's at element (i, 0)), qhi (column j's at (0, j)), the address of row 0's sum,
    that of column 0's accumulator (of these two only element 0's are read), the accumulators' values
    (column j's at (0, j)) and alpha (element 0's). Per element a compare and two predicated adds, the first term
    of each sum a select (e >= +0, and NaN compares false: masked out). The row sums meet over the lanes in a
    reduce-scatter: at lane bit b = 4, 3, ... a lane keeps the half of its rows its bit selects and
    sends the other half to lane ^ 2^b, which adds it to its own (2 selects, a shuffle and an add per
    row kept, where a butterfly would shuffle and add every row at every bit); once a lane holds one
    row the remaining bits are a butterfly. Lane L ends with row L >> (5 - log2 rows), summed in the
    butterfly's tree (pairs across bit 4 first), and the first lane of each row's group stores it.
    The column sums are added to their accumulators, C <- alpha C + sums, in 16-byte stores (the caller
    reads C a unit ahead, to hide the load's latency, and passes 0 where C holds nothing yet).
    """
    bits = rows.bit_length() - 1
    assert rows == 1 << bits and bits <= 5 and cols % 4 == 0, (rows, cols)
    n = rows * cols
    row_at, col_at, alpha = f"${4 * n}", f"${5 * n}", f"${7 * n}"
    lines = ["{", ".reg .pred on, up;", ".reg .b32 lane, bit, send, got, rho;", ".reg .b64 at;",
             ".reg .b32 " + ", ".join([f"row{i}" for i in range(rows)] + [f"col{j}" for j in range(cols)]) + ";"]
    for i in range(rows):
        for j in range(cols):
            value = f"${n + i * cols + j}"
            lines.append(f"setp.gt.f32 on, ${2 * n + i * cols}, ${3 * n + j};")
            lines.append(f"selp.b32 row{i}, {value}, 0, on;" if j == 0 else f"@on add.f32 row{i}, row{i}, {value};")
            lines.append(f"selp.b32 col{j}, {value}, 0, on;" if i == 0 else f"@on add.f32 col{j}, col{j}, {value};")
    lines.append("mov.u32 lane, %laneid;")
    width = rows
    for b in range(4, -1, -1):
        if width > 1:
            half = width // 2
            lines += [f"and.b32 bit, lane, {1 << b};", "setp.ne.u32 up, bit, 0;"]
            for i in range(half):
                lines += [f"selp.b32 send, row{i}, row{i + half}, up;", f"selp.b32 row{i}, row{i + half}, row{i}, up;",
                          f"shfl.sync.bfly.b32 got, send, {1 << b}, 0x1f, 0xffffffff;",
                          f"add.f32 row{i}, row{i}, got;"]
            width = half
        else:
            lines += [f"shfl.sync.bfly.b32 got, row0, {1 << b}, 0x1f, 0xffffffff;", "add.f32 row0, row0, got;"]
    lines += [f"shr.u32 rho, lane, {5 - bits};", f"and.b32 bit, lane, {(1 << (5 - bits)) - 1};",
              "setp.eq.u32 up, bit, 0;", f"mad.wide.u32 at, rho, 4, {row_at};", "@up st.global.f32 [at], row0;"]
    lines += [f"fma.rn.f32 col{j}, ${6 * n + j}, {alpha}, col{j};" for j in range(cols)]
    lines += [f"st.global.v4.b32 [{col_at}+{16 * g}], {{col{4 * g}, col{4 * g + 1}, col{4 * g + 2}, col{4 * g + 3}}};"
              for g in range(cols // 4)]
    lines += [f"mov.b32 ${k}, 0;" for k in range(n)] + ["}"]
    return "\n".join(lines), ",".join(["=r"] * n + ["r"] * (3 * n) + ["l"] * (2 * n) + ["r"] * (2 * n))


@jit
def store_marginals(e, q_lo, q_hi, row_at, col_at, col_old, alpha, ASM: tl.constexpr, IO: tl.constexpr,
                    N: tl.constexpr):
    """A hidden unit's marginals of A = e 1[q_lo > q_hi] by `marginals_ptx`'s ASM: e [AP, BQ, LT, 32],
    q_lo [AP, 1, LT, 1], q_hi [1, BQ, 1, 32], row_at and col_at the int64 addresses of the thread's first
    row's sum and first column's accumulator, col_old [1, BQ, LT, 32] the accumulators, which become
    alpha col_old + sums (`quads_ok` checks the layout; N = AP BQ)."""
    alpha = tl.zeros_like(e) + alpha
    tl.inline_asm_elementwise(ASM, IO, [e.to(tl.int32, bitcast=True), q_lo.to(tl.int32, bitcast=True),
                                        q_hi.to(tl.int32, bitcast=True), row_at, col_at,
                                        col_old.to(tl.int32, bitcast=True), alpha.to(tl.int32, bitcast=True)],
                              dtype=tl.int32, is_pure=False, pack=N)


_LOAD4 = _asm("ld.global.v4.b32 {$0, $1, $2, $3}, [$4];")


@jit
def group_starts(row, offs, GROUP: tl.constexpr):
    """Addresses of row[offs] where offs is a multiple of GROUP, else 0: for PTX that reads only each group's
    first address (`rows_of`, `store_marginals`); the compiler knows the low bits of the other entries'
    offsets and folds their addresses away."""
    return tl.where(offs % GROUP == 0, (row + offs).to(tl.int64, bitcast=True), 0)


@jit
def rows_of(row, offs, PTX: tl.constexpr, PURE: tl.constexpr = True):
    """row[offs] for offs [N, ...]; with PTX, by 16-byte loads of four entries in offs' own layout.

    The PTX path assumes what the fused kernel's tiles give (`quads_ok` checks it): each thread holds
    the whole first axis of offs, its N entries in order, and offs runs over consecutive entries along
    it, 16-byte aligned at multiples of 4. Only each group's first address is used. PURE (tables the
    loop does not write): the load is declared pure, so that copies Triton makes in layouts it then
    does not use are dropped; the address depends on what the caller's loop reads (the unit), which
    keeps the load after the barrier that precedes the loop. Memory the kernel writes in the same loop
    (the accumulators) is read with PURE False, ordered with the asm that writes it."""
    if PTX:
        out = tl.inline_asm_elementwise(_LOAD4, "=r,=r,=r,=r,l,l,l,l", [group_starts(row, offs, 4)], dtype=tl.int32,
                                        is_pure=PURE, pack=4)
        return out.to(tl.float32, bitcast=True)
    else:
        return tl.load(row + offs)


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
    assumes. A tensor a `rows_of` or `store_marginals` reads or writes: one element per thread per
    repetition, its leading axis or axes held whole by each thread in row-major order (so a thread's
    registers are its entries in order) and no other axis repeated. A tensor `store_marginals` sums
    over lanes: its last axis over the 32 lanes of a warp."""
    layouts = dict(re.findall(r"^#(\w+) = (#ttg\.blocked<\{[^}]*\}>)", ttgir, re.M))
    ops = re.findall(r'tt\.elementwise_inline_asm "([^"]*)".*?: tensor<([\dx]+)x\w+, ' + _LAYOUT + ">", ttgir)
    accesses = 0
    for asm, shape, layout in ops:
        found = _axes(layout, layouts)
        if found is None:
            return False
        fields, axes = found
        sizes = [int(n) for n in shape.split("x")]
        threads, warps, order = fields["threadsPerWarp"], fields["warpsPerCTA"], fields["order"]
        if set(fields["sizePerThread"]) != {1}:
            return False
        if "shfl.sync" in asm and (threads[axes[-1]] != 32 or sizes[-1] != 32):
            return False
        if re.search(r"(ld|st)\.global", asm):
            accesses += 1
            held = 0
            while held < len(axes) and threads[axes[held]] == warps[axes[held]] == 1:
                held += 1
            row_major = all(order.index(a) > order.index(b) for a, b in itertools.pairwise(axes[:held]))
            spread = all(threads[a] * warps[a] == n for a, n in zip(axes[held:], sizes[held:], strict=True))
            if not (held and row_major and spread):
                return False
    return accesses > 0
