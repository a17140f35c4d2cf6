// SICK-BIDE forward partial state for float16 / bfloat16 inputs on tensor cores (the `cupy`
// backend's `mma` kernels; float32 inputs and gradient sums use cupy_tiles.cu).
//
// A code k = (t << (n_lo + n_mid)) | (q << n_lo) | p, p < 16 (n_lo <= 4), q < 256 (n_mid <= 8),
// t the top pattern of a tile. Meet in the middle, with the ReLU split as
// relu(a + b) = max(a, -b) + b for a = P_lo + P_top and b = P_mid:
//
//     qlo[h, p] = P_lo[h, p] + P_top[h, t]       qhi[h, q] = -P_mid[h, q]     (the input's half type)
//     l[p, q]   = sum_h r_h max(qlo[h, p], qhi[h, q]) + R_mid[q]             R_mid = sum_h r_h P_mid (float32)
//
// The sum over h runs on the tensor cores with float32 accumulation. One mma.m16n8k16 takes
//
//     A[p, k] = max(qlo[h(k), p], qhi[h(k), q0 + c(k)])     16 lo codes x (8 mid codes x 2 hidden units)
//     B[k, c] = r_h(k) [c(k) == c]                           block-diagonal: column c gathers mid code c
//
// so D[p, c] accumulates l of 16 x 8 codes, two hidden units per instruction, and each thread
// issues 4 packed max (HMNMX2) per 256 (code, unit) pairs. The fragment layout fixes
// k = 2 (c mod 4) + u + 8 (c >= 4) for hidden unit h = 2 hp + u: a thread (group g, lane t4 in
// the group) holds rows g and g + 8 and mid codes t4 and t4 + 4. Only the table entries are
// rounded to the half type (as the same-dtype reference rounds z); products with r (exact in
// the half type) and their sums are float32. float16 tables are scaled by a power of two per
// row (sigma, undone on D) so that no entry overflows.
//
// Each warp walks its own tiles; the block shares the static tables (qhi, R_mid, B) of its
// work item (a row and a range of tiles). Logits are base 2 inside; m is written in nats.

#ifndef HP
#define HP 32                // hidden units, padded to a multiple of 8 (compiled per size)
#endif
#define HPP (HP / 2)         // hidden-unit pairs: one mma k-step each
#define THREADS 128
#define WARPS (THREADS / 32)
#define NQ 256               // mid codes per tile: n_mid <= 8
#ifndef CB
#define CB 8                 // mma column blocks of 8 mid codes per step: CB independent accumulator chains
#endif
#define QGROUP (8 * CB)      // mid codes per online-softmax step
#define STRIDE (HPP + 4)     // words per qhi row: conflict-free 16-byte loads for 4 distinct q
#define NEG_INF (-__int_as_float(0x7f800000))
#define LOG2E 1.4426950408889634f

typedef unsigned short half_bits;

template <bool BF16> __device__ __forceinline__ float to_float(half_bits x) {
    if (BF16) return __uint_as_float((unsigned)x << 16);
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
}

// (lo, hi) -> one register with lo in the low half, rounded to nearest.
template <bool BF16> __device__ __forceinline__ unsigned pack(float lo, float hi) {
    unsigned d;
    if (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

// Elementwise max of two packed pairs; NaN wins (a NaN table entry must reach the logit).
template <bool BF16> __device__ __forceinline__ unsigned max2(unsigned a, unsigned b) {
    unsigned d;
    if (BF16) asm("max.NaN.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    else asm("max.NaN.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

template <bool BF16> __device__ __forceinline__ void mma(float (&d)[4], unsigned a0, unsigned a1, unsigned a2,
                                                          unsigned a3, unsigned b0, unsigned b1) {
    if (BF16)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float fast_exp2(float x) {   // 2^x, one MUFU.EX2; 2^-inf = 0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float bitsign(long long k, int j) { return ((k >> j) & 1) ? 1.f : -1.f; }

struct Smem {
    float *w;        // [H][n] this row's W in float32
    float *plo;      // [HP][16] P_lo
    float *pa, *pb;  // [HP][16] P_mid of the low and high 4 mid bits
    unsigned *qhi;   // [NQ][STRIDE] packed pairs of -sigma P_mid
    float *r2;       // [NQ] R_mid log2 e
    uint2 *b;        // [HPP][32] each lane's B fragment per pair
    float *ptop;     // [WARPS][HP] P_top of each warp's current tile
    unsigned *qlo;   // [WARPS][16][STRIDE] packed pairs of sigma (P_lo + P_top) for each warp's tile
    float *red;      // [2 WARPS]
};

__host__ __device__ constexpr int smem_floats(int n_bits) {
    return 64 * n_bits + 3 * HP * 16 + NQ * STRIDE + NQ + HPP * 32 * 2 + WARPS * HP + WARPS * 16 * STRIDE + 2 * WARPS;
}

__device__ Smem carve(float* base, int n_bits) {
    Smem s;
    s.w = base;
    s.plo = s.w + 64 * n_bits;
    s.pa = s.plo + HP * 16;
    s.pb = s.pa + HP * 16;
    s.qhi = reinterpret_cast<unsigned*>(s.pb + HP * 16);
    s.r2 = reinterpret_cast<float*>(s.qhi + NQ * STRIDE);
    s.b = reinterpret_cast<uint2*>(s.r2 + NQ);
    s.ptop = reinterpret_cast<float*>(s.b + HPP * 32);
    s.qlo = reinterpret_cast<unsigned*>(s.ptop + WARPS * HP);
    s.red = reinterpret_cast<float*>(s.qlo + WARPS * 16 * STRIDE);
    return s;
}

template <bool BF16>
__device__ void sick_bide_mma_forward(const half_bits* W, const half_bits* r, float* m_out, float* s_out, int H,
                                      int n_bits, int n_lo, int n_mid, long long k_start, long long k_stop,
                                      long long first_tile, long long last_tile, int chunks,
                                      long long tiles_per_chunk) {
    extern __shared__ __align__(16) float smem_raw[];
    const Smem sm = carve(smem_raw, n_bits);
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5, g = lane >> 2, t4 = lane & 3;
    const long long row = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
    const half_bits* Wr = W + row * H * n_bits;
    const half_bits* rr = r + row * H;
    const int n_top = n_bits - n_lo - n_mid, top0 = n_lo + n_mid, n_a = min(n_mid, 4);
    const long long t_begin = first_tile + chunk * tiles_per_chunk;
    const long long t_end = min(t_begin + tiles_per_chunk, last_tile + 1);

    // ---- the item's static tables
    float wmax = 0.f;                                  // max_h sum_j |W[h, j]|, for sigma
    for (int i = t; i < H * n_bits; i += THREADS) sm.w[i] = to_float<BF16>(Wr[i]);
    __syncthreads();
    for (int h = t; h < H; h += THREADS) {
        float a = 0.f;
        for (int j = 0; j < n_bits; ++j) a += fabsf(sm.w[h * n_bits + j]);
        wmax = fmaxf(wmax, a);
    }
    for (int i = t; i < HP * 16; i += THREADS) {
        const int h = i / 16, c = i % 16;
        float lo = 0.f, a = 0.f, b = 0.f;
        if (h < H) {
            for (int j = 0; j < n_lo; ++j) lo += sm.w[h * n_bits + j] * bitsign(c, j);
            for (int j = 0; j < n_a; ++j) a += sm.w[h * n_bits + n_lo + j] * bitsign(c, j);
            for (int j = n_a; j < n_mid; ++j) b += sm.w[h * n_bits + n_lo + j] * bitsign(c, j - n_a);
        }
        sm.plo[i] = lo; sm.pa[i] = a; sm.pb[i] = b;
    }
    for (int o = 16; o > 0; o >>= 1) wmax = fmaxf(wmax, __shfl_xor_sync(0xffffffffu, wmax, o));
    if (lane == 0) sm.red[warp] = wmax;
    __syncthreads();
    wmax = fmaxf(fmaxf(sm.red[0], sm.red[1]), fmaxf(sm.red[2], sm.red[3]));
    // sigma = 2^(15 - e) with wmax < 2^e keeps every float16 entry below 2^15; bfloat16 has float32's range.
    float sigma = 1.f;
    if (!BF16 && wmax >= 32768.f && wmax <= 3.0e38f) {
        int e;
        frexpf(wmax, &e);
        sigma = ldexpf(1.f, 15 - e);
    }
    for (int i = t; i < NQ * HPP; i += THREADS) {
        const int q = i / HPP, hp = i % HPP, h0 = 2 * hp, h1 = h0 + 1;
        const float z0 = sm.pa[h0 * 16 + q % 16] + sm.pb[h0 * 16 + q / 16];
        const float z1 = sm.pa[h1 * 16 + q % 16] + sm.pb[h1 * 16 + q / 16];
        sm.qhi[q * STRIDE + hp] = pack<BF16>(-sigma * z0, -sigma * z1);
    }
    for (int q = t; q < NQ; q += THREADS) {
        float acc = 0.f;
        for (int h = 0; h < H; ++h) acc += to_float<BF16>(rr[h]) * (sm.pa[h * 16 + q % 16] + sm.pb[h * 16 + q / 16]);
        sm.r2[q] = acc * LOG2E;
    }
    for (int i = t; i < HPP * 32; i += THREADS) {      // lane l's (b0, b1) of pair hp
        const int hp = i / 32, l = i % 32, lg = l >> 2, lt = l & 3, h0 = 2 * hp;
        const float r0 = h0 < H ? to_float<BF16>(rr[h0]) : 0.f, r1 = h0 + 1 < H ? to_float<BF16>(rr[h0 + 1]) : 0.f;
        const unsigned pair = pack<BF16>(r0, r1);
        sm.b[i] = make_uint2(lg == lt ? pair : 0u, lg == lt + 4 ? pair : 0u);
    }
    __syncthreads();

    // ---- each warp walks tiles t_begin + warp, + WARPS, ...
    const float scale = LOG2E / sigma;                 // D -> base-2 logits
    const int n_q = 1 << n_mid, lo_codes = 1 << n_lo;
    const bool partial_geometry = lo_codes < 16 || n_q < QGROUP;
    float* ptop = sm.ptop + warp * HP;
    unsigned* qlo = sm.qlo + warp * 16 * STRIDE;       // [16 lo codes][STRIDE] packed pairs
    float m = NEG_INF, s = 0.f;                        // this thread's online softmax (base 2)
    for (long long tile = t_begin + warp; tile < t_end; tile += WARPS) {
        for (int h = lane; h < HP; h += 32) {
            float acc = 0.f;
            if (h < H) for (int j = 0; j < n_top; ++j) acc += sm.w[h * n_bits + top0 + j] * bitsign(tile, j);
            ptop[h] = acc;
        }
        __syncwarp();
        for (int i = lane; i < 16 * HPP; i += 32) {   // this warp's qlo for the tile
            const int p = i / HPP, hp = i % HPP, h0 = 2 * hp, h1 = h0 + 1;
            qlo[p * STRIDE + hp] = pack<BF16>(sigma * (sm.plo[h0 * 16 + p] + ptop[h0]), sigma * (sm.plo[h1 * 16 + p] + ptop[h1]));
        }
        __syncwarp();
        const bool edge = partial_geometry || tile == first_tile || tile == last_tile;
        for (int q0 = 0; q0 < n_q; q0 += QGROUP) {
            float d[CB][4] = {};                       // [column block][fragment]
            #pragma unroll
            for (int hp4 = 0; hp4 < HPP; hp4 += 4) {
                uint2 b[4];
                #pragma unroll
                for (int u = 0; u < 4; ++u) b[u] = sm.b[(hp4 + u) * 32 + lane];
                const uint4 la = *reinterpret_cast<const uint4*>(qlo + g * STRIDE + hp4);
                const uint4 lb = *reinterpret_cast<const uint4*>(qlo + (g + 8) * STRIDE + hp4);
                const unsigned lo0[4] = {la.x, la.y, la.z, la.w}, lo1[4] = {lb.x, lb.y, lb.z, lb.w};
                #pragma unroll
                for (int cb = 0; cb < CB; ++cb) {
                    const int qa = q0 + 8 * cb + t4;
                    const uint4 ha = *reinterpret_cast<const uint4*>(sm.qhi + qa * STRIDE + hp4);
                    const uint4 hb = *reinterpret_cast<const uint4*>(sm.qhi + (qa + 4) * STRIDE + hp4);
                    const unsigned va[4] = {ha.x, ha.y, ha.z, ha.w}, vb[4] = {hb.x, hb.y, hb.z, hb.w};
                    #pragma unroll
                    for (int u = 0; u < 4; ++u)
                        mma<BF16>(d[cb], max2<BF16>(lo0[u], va[u]), max2<BF16>(lo1[u], va[u]),
                                  max2<BF16>(lo0[u], vb[u]), max2<BF16>(lo1[u], vb[u]), b[u].x, b[u].y);
                }
            }
            // d[cb] = (p g, q c), (g, c + 1), (g + 8, c), (g + 8, c + 1) for c = q0 + 8 cb + 2 t4.
            float l[CB][4];
            #pragma unroll
            for (int cb = 0; cb < CB; ++cb) {
                const float2 rq = *reinterpret_cast<const float2*>(sm.r2 + q0 + 8 * cb + 2 * t4);
                #pragma unroll
                for (int f = 0; f < 4; ++f) l[cb][f] = fmaf(d[cb][f], scale, (f & 1) ? rq.y : rq.x);
            }
            if (edge) {                                // codes outside the tables or the range are -inf
                #pragma unroll
                for (int cb = 0; cb < CB; ++cb)
                    #pragma unroll
                    for (int f = 0; f < 4; ++f) {
                        const int p = g + 8 * (f >> 1), q = q0 + 8 * cb + 2 * t4 + (f & 1);
                        const long long k = (tile << top0) + ((long long)q << n_lo) + p;
                        if (p >= lo_codes || q >= n_q || k < k_start || k >= k_stop) l[cb][f] = NEG_INF;
                    }
            }
            float mx = NEG_INF;
            #pragma unroll
            for (int cb = 0; cb < CB; ++cb)
                #pragma unroll
                for (int f = 0; f < 4; ++f) mx = fmaxf(mx, l[cb][f]);
            const float m_new = fmaxf(m, mx);
            if (m_new == NEG_INF) continue;
            float acc = 0.f;
            #pragma unroll
            for (int cb = 0; cb < CB; ++cb)
                #pragma unroll
                for (int f = 0; f < 4; ++f) acc += fast_exp2(l[cb][f] - m_new);
            s = s * fast_exp2(m - m_new) + acc;        // 2^-inf = 0 on the first valid step
            m = m_new;
        }
        __syncwarp();                                  // ptop and qlo are rewritten for the next tile
    }

    // ---- the block's (m, s): max over threads, then the rescaled sum
    float mb = m;
    for (int o = 16; o > 0; o >>= 1) mb = fmaxf(mb, __shfl_xor_sync(0xffffffffu, mb, o));
    __syncthreads();
    if (lane == 0) sm.red[warp] = mb;
    __syncthreads();
    mb = fmaxf(fmaxf(sm.red[0], sm.red[1]), fmaxf(sm.red[2], sm.red[3]));
    s = m == NEG_INF ? 0.f : s * exp2f(m - mb);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) sm.red[WARPS + warp] = s;
    __syncthreads();
    if (t == 0) {
        m_out[blockIdx.x] = mb * 0.6931471805599453f;
        s_out[blockIdx.x] = (sm.red[WARPS] + sm.red[WARPS + 1]) + (sm.red[WARPS + 2] + sm.red[WARPS + 3]);
    }
}

#define ENTRY(NAME, BF16)                                                                                      \
    extern "C" __global__ void __launch_bounds__(THREADS) NAME(                                               \
        const half_bits* W, const half_bits* r, float* m_out, float* s_out, int H, int n_bits, int n_lo,      \
        int n_mid, long long k_start, long long k_stop, long long first_tile, long long last_tile, int chunks, \
        long long tiles_per_chunk) {                                                                           \
        sick_bide_mma_forward<BF16>(W, r, m_out, s_out, H, n_bits, n_lo, n_mid, k_start, k_stop, first_tile,  \
                                    last_tile, chunks, tiles_per_chunk);                                       \
    }
ENTRY(sick_bide_mma_forward_f16, false)
ENTRY(sick_bide_mma_forward_bf16, true)
