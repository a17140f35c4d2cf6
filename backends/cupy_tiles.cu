// SICK-BIDE partial states in CUDA C, register-tiled (the `cupy` backend's `tiles` kernels).
//
// A code k = (t << (n_lo + n_mid)) | (q << n_lo) | p. A tile is every (p, q) for one top
// pattern t: P = 8 AP lo codes x Q = 128 mid codes (AP = 4 or 8, a compile-time option). With r
// folded into meet-in-the-middle tables (c = |r| log2 e, or log2 e where r = 0; s = sign r):
//
//     qlo[h, p] = c_h P_lo[h, p]                 qhi[h, q] = -c_h (P_mid[h, q] + P_top[h, t])
//     l[p, q]   = sum_h s_h max(qlo[h, p], qhi[h, q]) + R_mid[q] + R_top[t]      (base 2)
//
// since r relu(a + b) = s max(c a, -c b) + r b. The fused kernel uses that form (the one below
// measured slower there at B = 16384: 3% at H = 32, 17% at H = 64; PERFORMANCE.md). The forward kernel
// uses relu(z) = (z + |z|) / 2 instead, with P_top moved to the lo side (FORWARD):
//
//     qlo[h, p] = c'_h (P_lo[h, p] + P_top[h, t])    qhi[h, q] = -c'_h P_mid[h, q]      c' = |r| log2 e / 2
//     l[p, q]   = sum_{h: r_h > 0} |qlo - qhi| - sum_{h: r_h < 0} |qlo - qhi| + (R_lo[p] + R_top[t] + R_mid[q]) / 2
//
// with the units stored by the sign of r (units with r = 0 drop out), so a triple is two FADDs on
// the FMA pipe (one with |.|) instead of an FMNMX on the half-rate ALU pipe and an FFMA. qlo is
// rebuilt per tile (P entries per unit, not Q), qhi once per item. Each of the 128 threads owns an
// AP x 8 block of the tile (lo codes AP tp + i, mid codes 8 tq + j), so one hidden unit costs it
// AP / 4 + 2 16-byte shared loads for 8 AP pairs, with 8 AP independent accumulators.
//
// Gradient sums, D[h, j] = sum_k e_k 1[z_kh > 0] b_kj with e_k = 2^(l_k - m): z > 0 exactly when
// qlo > qhi (c > 0 keeps the sign, and c P, c (-P) round alike, so exact ties stay ties). With
// A[h, p, q] = e[p, q] 1[qlo > qhi], the tile adds
//
//     G_lo[h, p] += sum_q A     G_mid[h, q] += sum_p A     D_top[h, j] += b_tj sum_pq A
//
// and D's lo and mid bits are sum_p b_pj G_lo[h, p] and sum_q b_qj G_mid[h, q] once per item.
// A thread sums its own block in registers (a compare and two predicated adds per triple); the
// 16 (resp. 8) threads sharing a lo (mid) code combine through a staged, fixed-order reduction
// in shared memory, HG = 16 / AP hidden units at a time. No atomics: results are bitwise reproducible.
//
// One block per work item (a row and a range of tiles); the fused kernel keeps one scale m for
// the whole block (a block max per tile), the forward kernel one per thread. Shared memory is
// dynamic and sized by the host from the number of hidden units (forward_floats, table_floats and
// grad_floats below; cupy_mitm.py's _tiles_shared_bytes mirrors them).

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

extern "C" __global__ void FORWARD_BOUNDS sick_bide_tiles_forward(
    const float* W, const float* r, float* m_out, float* s_out, int H, int n_bits, int n_lo, int n_mid,
    long long k_start, long long k_stop, long long first_tile, long long last_tile, int chunks,
    long long tiles_per_chunk)
{
    extern __shared__ __align__(16) float smem[];
    const Item it = make_item(W, r, H, n_bits, n_lo, n_mid, k_start, k_stop, first_tile, last_tile, chunks,
                              tiles_per_chunk);
    const Tables tb = carve(smem, H);
    build_tables<true>(it, tb);
    float m = NEG_INF, s = 0.f;                        // this thread's online softmax
    for (long long tile = it.t_begin; tile < it.t_end; ++tile) {
        const float r_top = tile_tables<true>(it, tb, tile);
        float l[AP][BQ];
        tile_logits<true>(it, tb, tile, r_top, l);
        const float m_new = fmaxf(m, block_max(l));
        if (m_new == NEG_INF) continue;                // nothing valid here yet
        float acc = 0.f;
        #pragma unroll
        for (int i = 0; i < AP; ++i)
            #pragma unroll
            for (int j = 0; j < BQ; ++j) acc += fast_exp2(l[i][j] - m_new);
        s = s * fast_exp2(m - m_new) + acc;                // 2^-inf = 0 on the first valid tile
        m = m_new;
    }
    const float mb = block_reduce(m, tb.red, true);
    s = m == NEG_INF ? 0.f : s * exp2f(m - mb);
    s = block_reduce(s, tb.red, false);
    if (threadIdx.x == 0) {
        m_out[blockIdx.x] = mb * 0.6931471805599453f;
        s_out[blockIdx.x] = s;
    }
}

// sum_k b_kj g[k] over K codes, in the order of a warp (lane l sums codes l, l + 32, ...; then a butterfly
// over lanes), by one thread: the bits a warp per (unit, bit) gave, at ~10x fewer instructions. The sign of
// code l + 32 i is the lane's (bit j < 5) or the round's (j >= 5), and a sign flip commutes with rounding.
template <int K>
__device__ __forceinline__ float signed_sum(const float* g, int j) {
    float v[32];
    #pragma unroll
    for (int l = 0; l < 32; ++l) {
        float x = 0.f;
        #pragma unroll
        for (int i = 0; i < K / 32; ++i) x += (j < 5 ? 1.f : bitsign(32 * i, j)) * g[l + 32 * i];
        v[l] = j < 5 ? bitsign(l, j) * x : x;
    }
    #pragma unroll
    for (int l = 0; l < 16; ++l) v[l] += v[l + 16];
    #pragma unroll
    for (int l = 0; l < 8; ++l) v[l] += v[l + 8];
    #pragma unroll
    for (int l = 0; l < 4; ++l) v[l] += v[l + 4];
    v[0] += v[2];
    v[1] += v[3];
    return v[0] + v[1];
}

extern "C" __global__ void __launch_bounds__(THREADS) sick_bide_tiles_fused(
    const float* W, const float* r, float* m_out, float* s_out, float* d_out, int H, int n_bits, int n_lo,
    int n_mid, long long k_start, long long k_stop, long long first_tile, long long last_tile, int chunks,
    long long tiles_per_chunk)
{
    extern __shared__ __align__(16) float smem[];
    const Item it = make_item(W, r, H, n_bits, n_lo, n_mid, k_start, k_stop, first_tile, last_tile, chunks,
                              tiles_per_chunk);
    const Tables tb = carve(smem, H);
    float* g_lo = smem + table_floats(H);            // [H][P]
    float* g_mid = g_lo + H * P;                      // [H][Q]
    float* d_top = g_mid + H * Q;                     // [H][32]
    float* part = d_top + H * 32;                     // [Hp][WPH]: per-warp sums of a tile's lo marginals
    float* rstage = part + padded(H) * WPH;           // [HG][TQ][P]
    float* cstage = rstage + HG * TQ * P;             // [HG][TP][CSTRIDE]
    const int t = threadIdx.x, tp = t % TP, tq = t / TP, lane = t & 31, warp = t >> 5;
    for (int i = t; i < H * (P + Q + 32); i += THREADS) g_lo[i] = 0.f;
    build_tables<false>(it, tb);
    float m = NEG_INF, s = 0.f;                        // m is the block's; s this thread's

    for (long long tile = it.t_begin; tile < it.t_end; ++tile) {
        const float r_top = tile_tables<false>(it, tb, tile);
        float e[AP][BQ];
        tile_logits<false>(it, tb, tile, r_top, e);
        const float m_new = fmaxf(m, block_reduce(block_max(e), tb.red, true));
        if (m_new == NEG_INF) continue;                // block-uniform: nothing valid here yet
        if (m_new > m) {                               // rescale the accumulators to the new scale
            const float alpha = fast_exp2(m - m_new);
            s *= alpha;
            for (int i = t; i < H * (P + Q + 32); i += THREADS) g_lo[i] *= alpha;
            m = m_new;
        }
        #pragma unroll
        for (int i = 0; i < AP; ++i)
            #pragma unroll
            for (int j = 0; j < BQ; ++j) {
                e[i][j] = fast_exp2(e[i][j] - m);
                s += e[i][j];
            }
        for (int h0 = 0; h0 < H; h0 += HG) {
            // Stage: this thread's marginals of A over its block, for HG hidden units.
            #pragma unroll
            for (int hh = 0; hh < HG; ++hh) {
                const int h = h0 + hh;
                float row[AP], col[BQ];
                {
                    float a[AP], b[BQ];
                    load_pair(tb.qlo, tb.qhi, h, tp, tq, a, b);
                    // The first term of each sum is a select, not 0 + e: e >= +0, so the sums are the
                    // same, and the compiler cannot drop 0 + e itself (0 + -0 is +0).
                    #pragma unroll
                    for (int i = 0; i < AP; ++i)
                        #pragma unroll
                        for (int j = 0; j < BQ; ++j) {
                            const bool on = a[i] > b[j];
                            row[i] = j == 0 ? (on ? e[i][j] : 0.f) : (on ? row[i] + e[i][j] : row[i]);
                            col[j] = i == 0 ? (on ? e[i][j] : 0.f) : (on ? col[j] + e[i][j] : col[j]);
                        }
                }
                #pragma unroll
                for (int i = 0; i < AP; i += 4)
                    *reinterpret_cast<float4*>(rstage + (hh * TQ + tq) * P + lo_slot(tp * AP + i)) =
                        make_float4(row[i], row[i + 1], row[i + 2], row[i + 3]);
                float* c_out = cstage + (hh * TP + tp) * CSTRIDE + tq * BQ;
                *reinterpret_cast<float4*>(c_out) = make_float4(col[0], col[1], col[2], col[3]);
                *reinterpret_cast<float4*>(c_out + 4) = make_float4(col[4], col[5], col[6], col[7]);
            }
            __syncthreads();
            // Combine in a fixed order: thread t sums lo code t % P of unit h0 + t / P over the
            // 16 threads that share it, and mid code t of every unit over the 8 that share it.
            {
                const int hh = t / P, h = h0 + hh, p = t % P, slot = lo_slot(p);
                float v = rstage[hh * TQ * P + slot];
                #pragma unroll
                for (int i = 1; i < TQ; ++i) v += rstage[(hh * TQ + i) * P + slot];
                const float total = warp_sum(v);       // this warp's part of the tile's sum, for D's top bits
                if (h < H) g_lo[h * P + p] += v;
                if (lane == 0) part[h * WPH + warp % WPH] = total;
            }
            #pragma unroll
            for (int hh = 0; hh < HG; ++hh) {
                float v = cstage[hh * TP * CSTRIDE + t];
                #pragma unroll
                for (int i = 1; i < TP; ++i) v += cstage[(hh * TP + i) * CSTRIDE + t];
                if (h0 + hh < H) g_mid[(h0 + hh) * Q + t] += v;
            }
            __syncthreads();
        }
        for (int i = t; i < H * it.n_top; i += THREADS) {   // D's top bits: constant over the tile
            const int h = i / it.n_top, j = i % it.n_top;
            float total = 0.f;
            #pragma unroll
            for (int w = 0; w < WPH; ++w) total += part[h * WPH + w];
            d_top[h * 32 + j] += bitsign(tile, j) * total;
        }
    }

    s = block_reduce(s, tb.red, false);
    if (t == 0) {
        m_out[blockIdx.x] = m * 0.6931471805599453f;
        s_out[blockIdx.x] = s;
    }
    // D's lo and mid bits, one thread per (unit, bit).
    float* D = d_out + (long long)blockIdx.x * H * n_bits;
    const int n_lm = it.n_lo + it.n_mid;
    for (int task = t; task < H * n_lm; task += THREADS) {
        const int h = task / n_lm, j = task % n_lm;
        D[h * n_bits + j] = j < it.n_lo ? signed_sum<P>(g_lo + h * P, j) : signed_sum<Q>(g_mid + h * Q, j - it.n_lo);
    }
    for (int i = t; i < H * it.n_top; i += THREADS) {
        const int h = i / it.n_top, j = i % it.n_top;
        D[h * n_bits + it.n_lo + it.n_mid + j] = d_top[h * 32 + j];
    }
}
