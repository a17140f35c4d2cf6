// The pieces of cupy_tiles.cu's kernels that both share: tile geometry, the row's tables, a tile's
// logits, reductions. Included by cupy_tiles.cu; NVRTC gets it as a named header (cupy_mitm.py), and
// the math is in cupy_tiles.cu's opening comment.

#pragma once

#define THREADS 128
#define WARPS (THREADS / 32)
#define TP 8                 // threads along lo codes
#define TQ 16                // threads along mid codes
#ifndef AP
#define AP 4                 // lo codes per thread (4 or 8; the host compiles both)
#endif
#define BQ 8                 // mid codes per thread
#if defined(FORWARD_MIN_BLOCKS) && FORWARD_MIN_BLOCKS > 0   // the host's tile_min_blocks: blocks per SM that
#define FORWARD_BOUNDS __launch_bounds__(THREADS, FORWARD_MIN_BLOCKS)  // the forward's registers must fit
#else
#define FORWARD_BOUNDS __launch_bounds__(THREADS)
#endif
#define P (TP * AP)          // lo codes per tile: 32 (n_lo <= 5) or 64 (n_lo <= 6)
#define Q (TQ * BQ)          // 128 mid codes: n_mid <= 7
#define QA 32                // P_mid[q] = P_a[q % 32] + P_b[q / 32]
#define QB (Q / QA)
#define HG (THREADS / P)     // hidden units per staged reduction: one lo code of one unit per thread
#define WPH (P / 32)         // warps per hidden unit in the staged lo-code sums
#define CSTRIDE (Q + 4)      // padded rows of the mid-code stage: conflict-free 16-byte stores
#define NEG_INF (-__int_as_float(0x7f800000))
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ float bitsign(long long k, int j) { return ((k >> j) & 1) ? 1.f : -1.f; }
__device__ __forceinline__ float bitsign(int k, int j) { return ((k >> j) & 1) ? 1.f : -1.f; }   // 32-bit shifts

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Every thread gets the block's max (is_max) or sum of v.
__device__ __forceinline__ float block_reduce(float v, float* red, bool is_max) {
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float out = red[0];
    for (int w = 1; w < WARPS; ++w) out = is_max ? fmaxf(out, red[w]) : out + red[w];
    return out;
}

struct Item {
    const float* W;          // this row's W [H, n]
    const float* r;          // this row's r [H]
    int H, n_bits, n_lo, n_mid, n_top;
    long long k_start, k_stop, t_begin, t_end;
};

__device__ Item make_item(const float* W, const float* r, int H, int n_bits, int n_lo, int n_mid,
                          long long k_start, long long k_stop, long long first_tile, long long last_tile,
                          int chunks, long long tiles_per_chunk) {
    Item it;
    const long long row = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
    it.W = W + row * H * n_bits;
    it.r = r + row * H;
    it.H = H; it.n_bits = n_bits; it.n_lo = n_lo; it.n_mid = n_mid; it.n_top = n_bits - n_lo - n_mid;
    it.k_start = k_start; it.k_stop = k_stop;
    it.t_begin = first_tile + chunk * tiles_per_chunk;
    it.t_end = min(it.t_begin + tiles_per_chunk, last_tile + 1);
    return it;
}

// Hidden units padded to a multiple of HG; the padded units' tables are zero (s = 0, no mask).
__host__ __device__ constexpr int padded(int H) { return (H + HG - 1) / HG * HG; }
// Shared memory, in floats, of a block (the host sizes the launch with the same formulas).
__host__ __device__ constexpr int table_floats(int H) { return padded(H) * (P + Q + QA + QB + 4) + Q + 8; }
// The forward kernel's tables add P_lo before scaling [Hp][P], R_lo [P], the units by slot [Hp] and the
// number of units with r > 0 and r < 0 [4], after the shared ones.
__host__ __device__ constexpr int forward_floats(int H) { return table_floats(H) + padded(H) * (P + 1) + P + 4; }
__host__ __device__ constexpr int grad_floats(int H) {
    return H * (P + Q + 32) + padded(H) * WPH + HG * (TQ * P + TP * CSTRIDE);
}

// Where lo code p sits in a row of qlo and of the lo-marginal stage. At AP = 8 threads 4..7 of a quarter
// warp store their two groups of four codes swapped, so that the quarter warp's 16-byte accesses
// (threads 0..7, codes 8 tp + 4 g) fall in 32 distinct banks instead of two ways on 16.
__device__ __forceinline__ int lo_slot(int p) { return AP == 8 ? p ^ ((p >> 3) & 4) : p; }

// This thread's AP lo-code and BQ mid-code table entries of hidden unit h (16-byte loads).
__device__ __forceinline__ void load_pair(const float* qlo, const float* qhi, int h, int tp, int tq,
                                          float (&a)[AP], float (&b)[BQ]) {
    #pragma unroll
    for (int i = 0; i < AP; i += 4) {
        const float4 v = *reinterpret_cast<const float4*>(qlo + h * P + lo_slot(tp * AP + i));
        a[i] = v.x; a[i + 1] = v.y; a[i + 2] = v.z; a[i + 3] = v.w;
    }
    #pragma unroll
    for (int j = 0; j < BQ; j += 4) {
        const float4 v = *reinterpret_cast<const float4*>(qhi + h * Q + tq * BQ + j);
        b[j] = v.x; b[j + 1] = v.y; b[j + 2] = v.z; b[j + 3] = v.w;
    }
}

__device__ __forceinline__ float fast_exp2(float x) {   // 2^x, one MUFU.EX2; 2^-inf = 0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

struct Tables {
    float *qlo, *qhi, *pa, *pb, *c, *sg, *r2, *ptop, *rmid, *red, *plo, *rlo;
    int *unit, *signs;   // FORWARD: the unit in each slot (-1: padding); units with r > 0, r < 0; max form
};

__device__ Tables carve(float* smem, int H) {
    const int Hp = padded(H);
    Tables tb;
    tb.qlo = smem;               // [Hp][P]
    tb.qhi = tb.qlo + Hp * P;    // [Hp][Q], per tile
    tb.pa = tb.qhi + Hp * Q;     // [Hp][QA]
    tb.pb = tb.pa + Hp * QA;     // [Hp][QB]
    tb.c = tb.pb + Hp * QB;      // [Hp]
    tb.sg = tb.c + Hp;
    tb.r2 = tb.sg + Hp;
    tb.ptop = tb.r2 + Hp;
    tb.rmid = tb.ptop + Hp;      // [Q]
    tb.red = tb.rmid + Q;        // [8]
    tb.plo = tb.red + 8;         // [Hp][P], FORWARD only (forward_floats); the fused kernel's g_lo is there
    tb.rlo = tb.plo + Hp * P;    // [P]
    tb.unit = reinterpret_cast<int*>(tb.rlo + P);
    tb.signs = tb.unit + Hp;
    return tb;
}

// qhi[h, q] = -c_h (P_mid[h, q] + P_top[h]) (without P_top: -c_h P_mid[h, q]), four mid codes at a time.
// A thread keeps its four mid codes from unit to unit, so no index is divided in the loop.
__device__ __forceinline__ void mid_table(const Tables& tb, int Hp, bool with_top) {
    const int q = 4 * (threadIdx.x % (Q / 4));
    for (int h = threadIdx.x / (Q / 4); h < Hp; h += THREADS / (Q / 4)) {
        const float4 a = *reinterpret_cast<const float4*>(tb.pa + h * QA + q % QA);
        const float b = tb.pb[h * QB + q / QA], top = with_top ? tb.ptop[h] : 0.f, neg_c = -tb.c[h];
        *reinterpret_cast<float4*>(tb.qhi + h * Q + q) = make_float4(
            neg_c * ((a.x + b) + top), neg_c * ((a.y + b) + top), neg_c * ((a.z + b) + top), neg_c * ((a.w + b) + top));
    }
}

// The item's fixed tables: c, s, r log2 e, P_a, P_b, R_mid and qlo (or, FORWARD, the slots, R_lo, P_lo
// and qhi, with c and r log2 e halved). Tables are indexed by slot: the unit itself, or (FORWARD) units
// with r > 0, then r < 0, then r = 0 (or NaN, kept with r > 0 so that it reaches the logits).
template <bool FORWARD>
__device__ void build_tables(const Item& it, const Tables& tb) {
    const int t = threadIdx.x, H = it.H, Hp = padded(H), n_a = min(it.n_mid, 5);
    const float half = FORWARD ? 0.5f : 1.f;
    // FORWARD: a unit's class is 0 (r > 0, or NaN), 1 (r < 0) or 2 (r = 0). Warps 0 and 1 (H <= 64) publish
    // each class's members as bit masks (in tb.red, unused until the end), so a slot is a few popcounts.
    auto cls = [&](int u) { const float v = it.r[u]; return v < 0.f ? 1 : (v == 0.f ? 2 : 0); };
    unsigned* members = reinterpret_cast<unsigned*>(tb.red);     // [warp][class]
    if (FORWARD) {
        if (t < 64) {
            const int k = t < H ? cls(t) : 3;
            for (int c = 0; c < 3; ++c) {
                const unsigned m = __ballot_sync(0xffffffffu, k == c);
                if ((t & 31) == 0) members[(t >> 5) * 3 + c] = m;
            }
        }
        __syncthreads();
    }
    int risky = 0;
    for (int h = t; h < Hp; h += THREADS) {
        int slot = h;
        if (FORWARD) {
            if (h < H) {   // slot = the units of earlier classes + the earlier units of this one
                const int mine = cls(h), w = h >> 5;
                int before = __popc(members[w * 3 + mine] & ((1u << (h & 31)) - 1u)) + (w ? __popc(members[mine]) : 0);
                for (int c = 0; c < mine; ++c) before += __popc(members[c]) + __popc(members[3 + c]);
                slot = before;
                if (h == 0) {
                    tb.signs[0] = __popc(members[0]) + __popc(members[3]);
                    tb.signs[1] = __popc(members[1]) + __popc(members[4]);
                }
            }
            tb.unit[slot] = h < H ? h : -1;
        }
        const float rv = h < H ? it.r[h] : 0.f;
        tb.r2[slot] = rv * (half * LOG2E);                 // one rounding: r = 2^-149 stays nonzero
        tb.c[slot] = (rv != 0.f ? fabsf(rv) : 1.f) * (half * LOG2E);
        tb.sg[slot] = rv > 0.f ? 1.f : (rv < 0.f ? -1.f : 0.f);
        if (FORWARD && h < H) {   // can a table, |qlo - qhi| or a sum of them overflow? (H <= 64 = 2^6)
            float norm = 0.f;
            for (int j = 0; j < it.n_bits; ++j) norm += fabsf(it.W[h * it.n_bits + j]);
            risky |= !(norm <= 0x1p124f && tb.c[slot] * norm <= 0x1p118f);
        }
    }
    risky = __syncthreads_or(risky);
    if (FORWARD && t == 0) tb.signs[2] = risky;
    auto unit = [&](int slot) { return FORWARD ? tb.unit[slot] : (slot < H ? slot : -1); };
    for (int h = t / P, p = t % P; h < Hp; h += THREADS / P) {   // a thread keeps its code p from unit to unit
        const int u = unit(h);
        float acc = 0.f;
        if (u >= 0) for (int j = 0; j < it.n_lo; ++j) acc += it.W[u * it.n_bits + j] * bitsign(p, j);
        if (FORWARD) tb.plo[h * P + p] = acc;
        else tb.qlo[h * P + lo_slot(p)] = tb.c[h] * acc;
    }
    for (int h = t / QA, qa = t % QA; h < Hp; h += THREADS / QA) {
        const int u = unit(h);
        float acc = 0.f;
        if (u >= 0) for (int j = 0; j < n_a; ++j) acc += it.W[u * it.n_bits + it.n_lo + j] * bitsign(qa, j);
        tb.pa[h * QA + qa] = acc;
    }
    for (int i = t; i < Hp * QB; i += THREADS) {
        const int u = unit(i / QB), qb = i % QB;
        float acc = 0.f;
        if (u >= 0) for (int j = n_a; j < it.n_mid; ++j) acc += it.W[u * it.n_bits + it.n_lo + j] * bitsign(qb, j - n_a);
        tb.pb[i] = acc;
    }
    __syncthreads();
    for (int q = t; q < Q; q += THREADS) {
        float acc = 0.f;
        for (int h = 0; h < H; ++h) acc += tb.r2[h] * (tb.pa[h * QA + q % QA] + tb.pb[h * QB + q / QA]);
        tb.rmid[q] = acc;
    }
    if (FORWARD) {
        for (int p = t; p < P; p += THREADS) {
            float acc = 0.f;
            for (int h = 0; h < H; ++h) acc += tb.r2[h] * tb.plo[h * P + p];
            tb.rlo[p] = acc;
        }
        mid_table(tb, Hp, false);
    }
}

// The tables of tile `tile`: P_top, then qhi (or, FORWARD, qlo = c (P_lo + P_top)); returns R_top
// (base 2; halved with FORWARD). Starts and ends with a barrier.
template <bool FORWARD>
__device__ float tile_tables(const Item& it, const Tables& tb, long long tile) {
    const int t = threadIdx.x, H = it.H, Hp = padded(H), top0 = it.n_lo + it.n_mid;
    __syncthreads();                                   // everyone is done with the last tile's qhi (qlo)
    for (int h = t; h < Hp; h += THREADS) {
        const int u = FORWARD ? tb.unit[h] : (h < H ? h : -1);
        float acc = 0.f;
        if (u >= 0) for (int j = 0; j < it.n_top; ++j) acc += it.W[u * it.n_bits + top0 + j] * bitsign(tile, j);
        tb.ptop[h] = acc;
    }
    __syncthreads();
    if (FORWARD) {
        const int p = 4 * (threadIdx.x % (P / 4));      // four lo codes at a time, the same ones for every unit
        for (int h = threadIdx.x / (P / 4); h < Hp; h += THREADS / (P / 4)) {
            const float4 a = *reinterpret_cast<const float4*>(tb.plo + h * P + p);
            const float top = tb.ptop[h], c = tb.c[h];
            *reinterpret_cast<float4*>(tb.qlo + h * P + lo_slot(p)) =
                make_float4(c * (a.x + top), c * (a.y + top), c * (a.z + top), c * (a.w + top));
        }
    } else {
        mid_table(tb, Hp, true);
    }
    float r_top = 0.f;                                 // every warp sums it: no extra barrier
    for (int h = t & 31; h < H; h += 32) r_top += tb.r2[h] * tb.ptop[h];
    r_top = warp_sum(r_top);
    __syncthreads();
    return r_top;
}

// l += s max(qlo[h], qhi[h]) over this thread's block: the max form's triple, an FMNMX and an FFMA.
__device__ __forceinline__ void add_max_unit(const Tables& tb, int h, int tp, int tq, float s, float (&l)[AP][BQ]) {
    float a[AP], b[BQ];
    load_pair(tb.qlo, tb.qhi, h, tp, tq, a, b);
    #pragma unroll
    for (int i = 0; i < AP; ++i)
        #pragma unroll
        for (int j = 0; j < BQ; ++j) l[i][j] = fmaf(s, fmaxf(a[i], b[j]), l[i][j]);
}

// l [AP][BQ] of this thread's block of `tile`; codes outside the tables or outside
// [k_start, k_stop) are -inf.
template <bool FORWARD>
__device__ void tile_logits(const Item& it, const Tables& tb, long long tile, float r_top, float (&l)[AP][BQ]) {
    const int tp = threadIdx.x % TP, tq = threadIdx.x / TP;
    // The abs form's infinities do not cancel: where a unit's z overflows to -inf, its linear half
    // and |z| are -+inf and their sum is NaN, not 0. Rows whose tables could overflow (tb.signs[2])
    // take the max form on the same (halved) tables instead: l = 2 (sum_h s max(qlo, qhi) + R_mid),
    // whose max(-inf, x) = x has the right limit.
    const bool max_form = !FORWARD || tb.signs[2];
    #pragma unroll
    for (int j = 0; j < BQ; ++j) {
        const float base = tb.rmid[tq * BQ + j] + (FORWARD && max_form ? 0.f : r_top);
        #pragma unroll
        for (int i = 0; i < AP; ++i) l[i][j] = max_form ? base : base + tb.rlo[tp * AP + i];
    }
    if (FORWARD) {   // units with r > 0 add |qlo - qhi| (max), units with r < 0 subtract it
        const int pos = tb.signs[0], signed_units = pos + tb.signs[1];
        if (!max_form) {
            #pragma unroll 4
            for (int h = 0; h < pos; ++h) {
                float a[AP], b[BQ];
                load_pair(tb.qlo, tb.qhi, h, tp, tq, a, b);
                #pragma unroll
                for (int i = 0; i < AP; ++i)
                    #pragma unroll
                    for (int j = 0; j < BQ; ++j) l[i][j] += fabsf(a[i] - b[j]);
            }
            #pragma unroll 4
            for (int h = pos; h < signed_units; ++h) {
                float a[AP], b[BQ];
                load_pair(tb.qlo, tb.qhi, h, tp, tq, a, b);
                #pragma unroll
                for (int i = 0; i < AP; ++i)
                    #pragma unroll
                    for (int j = 0; j < BQ; ++j) l[i][j] -= fabsf(a[i] - b[j]);
            }
        } else {
            for (int h = 0; h < signed_units; ++h) add_max_unit(tb, h, tp, tq, h < pos ? 1.f : -1.f, l);
            #pragma unroll
            for (int i = 0; i < AP; ++i)
                #pragma unroll
                for (int j = 0; j < BQ; ++j) l[i][j] *= 2.f;
        }
    } else {   // unit 0 (H >= 1) peeled: its multiply-adds start from the base, not from 8 AP copies of it
        add_max_unit(tb, 0, tp, tq, tb.sg[0], l);
        #pragma unroll 4
        for (int h = 1; h < it.H; ++h) add_max_unit(tb, h, tp, tq, tb.sg[h], l);
    }
    const int tile_bits = it.n_lo + it.n_mid;
    const bool partial = (1 << it.n_lo) < P || (1 << it.n_mid) < Q;
    const long long tile_start = tile << tile_bits;    // whole tiles inside [k_start, k_stop) need no mask
    if (partial || tile_start < it.k_start || tile_start + (1LL << tile_bits) > it.k_stop) {
        #pragma unroll
        for (int i = 0; i < AP; ++i)
            #pragma unroll
            for (int j = 0; j < BQ; ++j) {
                const int p = tp * AP + i, q = tq * BQ + j;
                const long long k = (tile << tile_bits) + ((long long)q << it.n_lo) + p;
                if (p >= (1 << it.n_lo) || q >= (1 << it.n_mid) || k < it.k_start || k >= it.k_stop)
                    l[i][j] = NEG_INF;
            }
    }
}

// The largest of this thread's logits.
__device__ __forceinline__ float block_max(const float (&l)[AP][BQ]) {
    float mt = NEG_INF;
    #pragma unroll
    for (int i = 0; i < AP; ++i)
        #pragma unroll
        for (int j = 0; j < BQ; ++j) mt = fmaxf(mt, l[i][j]);
    return mt;
}
