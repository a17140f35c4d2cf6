"""CuPy: the SICK-BIDE loss in CUDA C, compiled at run time by NVRTC (CuPy's binding).

Both kernel families fold r into meet-in-the-middle tables,

    qlo = c P_lo,   qhi = -c P_hi,   c = |r| (1 where r = 0),  s = sign r,
    l = sum_h s_h max(qlo[h], qhi[h]) + sum_h r_h P_hi[h]       (one FMNMX + one FFMA per triple)

so r relu(z) = s max(c P_lo, -c P_hi) + r P_hi and the gradient mask is the same comparison,
1[z > 0] = 1[qlo > qhi]. Logits are in base 2 (c and r carry log2 e). Which bits go to which
side is the kernel's choice: the tiles forward puts the top bits on the lo side (the table it
rebuilds per tile is then the smaller one), and sums relu(z) = (z + |z|) / 2 instead: with the
units stored by the sign of r, a triple is two FADDs (l +-= |qlo - qhi|, c halved) and the
linear part is three small tables, 3-7% faster than (max, fma) on the H100.

`tiles` (backends/cupy_tiles.cu, the default): a tile is 8 block_lo lo x 128 mid codes for
one top pattern; each of 128 threads owns a block_lo x 8 block of it (4 x 8 forward, 8 x 8
with gradients from n = 13, where a tile's 128 mid codes are all real), so a hidden unit
costs a few 16-byte shared loads for 32 or 64 pairs with as many independent
accumulators. The gradient sums add a compare and two
predicated adds per triple (the block's marginals over lo and mid codes), combined across
threads by a fixed-order staged reduction: 2.0 instructions per triple in the forward's
hidden loop (2.73 in all, Nsight Compute), 6.9 fused. Shared memory is dynamic, sized from H.

`lo_per_thread` (backends/cupy_mitm.cu): thread t owns lo code p = t (n_lo = min(n, 7)) with
its hidden units in registers (H compiled in, up to 64) and walks the hi codes in batches of
32; the fused kernel sums A = e 1[qlo > qhi] over the warp's lo codes by a shared-memory
transpose per (code, 32 hidden units). ~2.3 instructions per triple forward, ~8 fused, but
latency-bound at 25% (12.5% fused) occupancy (PERFORMANCE.md).

Launches on torch's current stream of the input's device (its CUDA stream protocol), so torch's
events, ordering and CUDA graphs see the kernels (tests/test_streams.py). Reads and writes torch
tensors in place through their device pointers (zero-copy, as DLPack would be, without its ~30 us
per tensor); float16 and bfloat16 W and r are first converted to float32 by torch (B x H x (n + 1)
elements), since the tables are float32. Allocates nothing itself: that copy and the partial-state
workspace for small batches come from torch's allocator, so peak memory counts them.
No atomics: repeated calls agree to the last bit.
Limits: n_bits 1..32, H up to 64, any B, log2_range <= 126 (harness/problems/sick_bide.py: the
tables and their sums stay finite); float32, float16 and bfloat16 inputs (tables and accumulation
in float32); CUDA only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import math
import os
import pathlib
from collections.abc import Callable

import torch

from harness import Backend
from harness.autotune import AUTOTUNE
from harness.problems.sick_bide import FLOAT32_TABLES, PartialState, merge_chunks

CUPY_MISSING = importlib.util.find_spec("cupy") is None
THREADS = 128          # both families
MAX_HIDDEN = 64        # lo_per_thread's register arrays; tiles' shared memory at 64 units is up to 131 KB
# Tile geometry of cupy_tiles.cu: 8 threads x AP lo codes, 16 threads x 8 mid codes (Q = 128).
TILE_Q, TILE_QA, TILE_QB, TILE_TP, TILE_TQ, TILE_CSTRIDE = 128, 32, 4, 8, 16, 132

SOURCES = {name: (pathlib.Path(__file__).with_name(f"{name}.cu")).read_text() for name in ("cupy_mitm", "cupy_tiles")}
# The headers they include, handed to NVRTC by name (as bytes, which CuPy's binding passes on as char*).
HEADERS = {name: pathlib.Path(__file__).with_name(name).read_text() for name in ("cupy_tiles.cuh",)}


def cache_dir() -> pathlib.Path | None:
    """Where compiled kernels persist between processes: $FUSEDBENCH_CACHE_DIR, else fusedbench/ under
    $XDG_CACHE_HOME or ~/.cache; None (compile once per process) when $FUSEDBENCH_CACHE_DIR is "" or "0"."""
    if (text := os.environ.get("FUSEDBENCH_CACHE_DIR")) is not None:
        return pathlib.Path(text).expanduser() if text not in ("", "0") else None
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "fusedbench"


def disk_cached(name: str, build: Callable[[], bytes]) -> bytes:
    """The bytes stored as `name` in cache_dir(), or build() stored there (written to a temporary file and
    renamed, so that concurrent processes never read a partial file; a directory that cannot be written
    leaves the result uncached)."""
    folder = cache_dir()
    path = folder / name if folder is not None else None
    if path is not None and path.is_file():
        return path.read_bytes()
    data = build()
    if path is not None:
        partial = path.with_name(f"{name}.{os.getpid()}.partial")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(data)
            os.replace(partial, path)
        except OSError:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
    return data


@functools.cache
def _cubin(source: str, options: tuple[str, ...]) -> bytes:
    """SOURCES[source] compiled by NVRTC for the arch in `options`, once per process and kept on disk
    (disk_cached) under a hash of the sources, headers, options and NVRTC version: the first call's
    kernel takes ~2.6 s to compile on the H100 machine's host.

    Not through cupy.RawModule / RawKernel: CuPy appends -ftz=true to every compile
    (cupy/cuda/compiler.py), and a kernel that flushes subnormals to zero reads a subnormal r as 0
    (dropping r relu(z) where W is near float32's largest, or turning it into NaN) and a subnormal
    z as 0 (flipping the gradient mask 1[z > 0]). NVRTC's own default is -ftz=false."""
    from cupy.cuda import nvrtc

    options = ("-ftz=false", *options)
    key = repr((SOURCES[source], sorted(HEADERS.items()), options, nvrtc.getVersion()))
    return disk_cached(f"{source}-{hashlib.sha256(key.encode()).hexdigest()[:32]}.cubin",
                       lambda: _nvrtc(source, options))


def _nvrtc(source: str, options: tuple[str, ...]) -> bytes:
    from cupy.cuda import nvrtc

    program = nvrtc.createProgram(SOURCES[source], f"{source}.cu", tuple(text.encode() for text in HEADERS.values()),
                                  tuple(name.encode() for name in HEADERS))
    try:
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError as error:
            log = nvrtc.getProgramLog(program)
            raise RuntimeError(f"NVRTC could not compile backends/{source}.cu with {options}:\n{log}") from error
        return nvrtc.getCUBIN(program)
    finally:
        nvrtc.destroyProgram(program)


@functools.cache
def _function(source: str, name: str, options: tuple[str, ...], device: int, shared_bytes: int = 0):
    """Kernel `name` of SOURCES[source], loaded on `device` (a module belongs to one device's
    context), allowed `shared_bytes` of dynamic shared memory when that is past the 48 KB default."""
    import cupy

    with cupy.cuda.Device(device):
        module = cupy.cuda.function.Module()
        module.load(_cubin(source, options))
        kernel = module.get_function(name)
        if shared_bytes > 48 * 1024:
            cupy.cuda.driver.funcSetAttribute(
                kernel.ptr, cupy.cuda.driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared_bytes)
    return kernel


def _tiles_shared_bytes(hidden: int, fused: bool, block_lo: int) -> int:
    """cupy_tiles.cuh's forward_floats, or table_floats + grad_floats when fused, in bytes."""
    lo_codes = TILE_TP * block_lo
    units = THREADS // lo_codes                       # HG: hidden units per staged reduction
    padded = units * math.ceil(hidden / units)
    floats = padded * (lo_codes + TILE_Q + TILE_QA + TILE_QB + 4) + TILE_Q + 8
    if not fused:   # forward_floats: P_lo before scaling, R_lo, the units by slot, the sign counts
        floats += padded * (lo_codes + 1) + lo_codes + 4
    else:
        floats += (hidden * (lo_codes + TILE_Q + 32) + padded * (lo_codes // 32)
                   + units * (TILE_TQ * lo_codes + TILE_TP * TILE_CSTRIDE))
    return 4 * floats


@functools.cache
def _device_facts(index: int) -> tuple[str, int]:
    props = torch.cuda.get_device_properties(index)
    return f"sm_{props.major}{props.minor}", props.multi_processor_count


def partial_state(
    W: torch.Tensor,
    r: torch.Tensor,
    k_start: int,
    k_stop: int,
    out: PartialState,
    *,
    tiles: bool = True,
    block_lo: int = 4,
    fused_block_lo: int | None = None,
    blocks_per_sm: int = 4,
    min_blocks: int = 6,
    fused_min_blocks: int = 3,
    tile_min_blocks: int = 0,
) -> None:
    # tile_min_blocks: the tiles forward's registers capped so that this many blocks fit per SM (0: the
    # compiler's choice, 94 registers and 5 blocks at block_lo = 4). A cap of 6 was 2-5% faster for the
    # max form; with the abs form, uncapped is faster (PERFORMANCE.md).
    if fused_block_lo is None:   # 8 x 8 blocks pay once the 128 mid codes of a tile are all real (n >= 13)
        fused_block_lo = 8 if W.shape[2] >= 13 else 4
    if tiles and {block_lo, fused_block_lo} - {4, 8}:
        raise ValueError(f"block_lo and fused_block_lo must be 4 or 8, got {block_lo} and {fused_block_lo}")
    if not (isinstance(tile_min_blocks, int) and 0 <= tile_min_blocks <= 16):
        raise ValueError(f"tile_min_blocks must be an int in 0..16 (0: no register cap), got {tile_min_blocks!r}")
    import cupy
    import numpy as np

    batch, hidden, n_bits = W.shape
    device = W.device.index if W.device.index is not None else torch.cuda.current_device()
    arch, sms = _device_facts(device)
    fused = out.D is not None
    block_lo = fused_block_lo if fused else block_lo
    if tiles:   # codes = (tile << (n_lo + n_mid)) | (q << n_lo) | p; chunks are whole tiles
        n_lo = min(n_bits, (TILE_TP * block_lo).bit_length() - 1)
        n_mid = min(n_bits - n_lo, 7)
        first, last = k_start >> (n_lo + n_mid), (k_stop - 1) >> (n_lo + n_mid)
        per_chunk_unit, units = 1, last - first + 1
    else:       # codes = (q << n_lo) | p; chunks are whole batches of 32 hi codes
        n_lo = min(n_bits, 7)
        first, last = k_start >> n_lo, (k_stop - 1) >> n_lo
        per_chunk_unit, units = 32, (last >> 5) - (first >> 5) + 1
    chunks = max(1, min(units, math.ceil(blocks_per_sm * sms / batch)))
    per_chunk = per_chunk_unit * math.ceil(units / chunks)
    chunks = math.ceil((last - first + 1) / per_chunk)
    direct = chunks == 1
    f32 = torch.float32
    m_ws = out.m if direct else torch.empty(batch, chunks, dtype=f32, device=W.device)
    s_ws = out.s if direct else torch.empty(batch, chunks, dtype=f32, device=W.device)
    d_ws = None
    if fused:
        d_ws = out.D if direct else torch.empty(batch, chunks, hidden, n_bits, dtype=f32, device=W.device)
    W32, r32 = W.to(f32).contiguous(), r.to(f32).contiguous()
    torch_stream = torch.cuda.current_stream(device)
    if hasattr(cupy.cuda.Stream, "from_external"):   # CuPy 14 deprecates ExternalStream for the stream protocol
        stream = cupy.cuda.Stream.from_external(torch_stream)
    else:
        stream = cupy.cuda.ExternalStream(torch_stream.cuda_stream)
    with cupy.cuda.Device(device), stream:
        # Device pointers (np.uint64 fills a pointer parameter): zero-copy as DLPack is, without
        # building a cupy array per tensor (~30 us each on the H100's host, where B = 64 calls
        # are launch-bound). The tensors live until the launch is queued on torch's stream, and
        # torch's allocator reuses freed memory in that stream's order.
        views = [np.uint64(x.data_ptr()) for x in (W32, r32, m_ws, s_ws) + ((d_ws,) if fused else ())]
        if tiles:
            tail = (np.int32(hidden), np.int32(n_bits), np.int32(n_lo), np.int32(n_mid), np.int64(k_start),
                    np.int64(k_stop), np.int64(first), np.int64(last), np.int32(chunks), np.int64(per_chunk))
            shared = _tiles_shared_bytes(hidden, fused, block_lo)
            name = "sick_bide_tiles_fused" if fused else "sick_bide_tiles_forward"
            options = ("-std=c++17", f"-arch={arch}", f"-DAP={block_lo}",   # the register cap is the forward's only
                       f"-DFORWARD_MIN_BLOCKS={0 if fused else tile_min_blocks}")
            # One attribute per loaded kernel: allowed the largest H's shared memory, not each call's.
            kernel = _function("cupy_tiles", name, options, device, _tiles_shared_bytes(MAX_HIDDEN, fused, block_lo))
            kernel((batch * chunks,), (THREADS,), (*views, *tail), shared_mem=shared)
        else:
            tail = (np.int32(hidden), np.int32(n_bits), np.int32(n_lo), np.int64(k_start), np.int64(k_stop),
                    np.int64(first), np.int64(last), np.int32(chunks), np.int64(per_chunk))
            padded = 32 * math.ceil(hidden / 32)
            # Register arrays for `padded` units; min_blocks blocks per SM cap the registers per thread at
            # 65536 / (128 min_blocks), trading a few spills for warps.
            options = ("-std=c++17", f"-arch={arch}", f"-DHP={padded}",
                       f"-DMIN_BLOCKS={fused_min_blocks if fused else min_blocks}")
            kernel = _function("cupy_mitm", "sick_bide_fused" if fused else "sick_bide_forward", options, device)
            kernel((batch * chunks,), (THREADS,), (*views, *tail))
    if not direct:
        merge_chunks(m_ws, s_ws, d_ws, out)


def _unavailable(config: str) -> str | None:
    if CUPY_MISSING:
        return "cupy is not installed (pip install 'fusedbench[cupy]')"
    return None


# The `autotune` config's candidates (harness/autotune.py times them per size): the default first.
TUNING = [
    {},
    {"block_lo": 8, "fused_block_lo": 4, "tile_min_blocks": 0},   # 64 accumulators: no room under the cap
    {"fused_block_lo": 8},
    {"blocks_per_sm": 8},
    {"blocks_per_sm": 2},
    {"tile_min_blocks": 6},   # the forward's register cap: 5% faster at n = 20, B = 256; slower at B >= 1024
]


BACKENDS = [
    Backend(
        name="cupy",
        problem="sick_bide",
        kernels={"partial_state": partial_state},
        devices=("cuda",),
        dtypes=(torch.float32, torch.float16, torch.bfloat16),
        limits={"n_bits": (1, 32), "hidden": (1, MAX_HIDDEN), "log2_range": FLOAT32_TABLES},
        features=frozenset({"grad", "k_ranges"}),
        configs={"default": {}, "lo_per_thread": {"tiles": False}, "autotune": {AUTOTUNE: TUNING}},
        unavailable=_unavailable,
        # backend="auto" takes it before `triton` (10): in the sample report it is 1.2-2.1x faster wherever a
        # call is GPU-bound (3 ms and up), and within the host's noise of it on smaller calls.
        priority=20,
        summary="CUDA C via CuPy (NVRTC): register-tiled 4 x 8 codes per thread; or a lo code per thread",
    )
]
