// SICK-BIDE fused partial states with the gradient sums on tensor cores (the `cupy:mma` config).
//
// Tables, tiles and logits are those of cupy_tiles.cu's fused kernel (AP = 8: a tile is 64 lo x 128
// mid codes for one top pattern t; r folded in, base 2):
//
//     l[p, q] = sum_h s_h max(qlo[h, p], qhi[h, q]) + R_mid[q] + R_top[t]
//
// With e = 2^(l - m) and A[h, p, q] = e[p, q] 1[qlo[h, p] > qhi[h, q]] (= e 1[z > 0]), a tile's part
// of the gradient sums is one matrix product per hidden unit:
//
//     G[h, p, :] += sum_q A[h, p, q] M[q, :]       M[q] = [1, b_q0, ..., b_q6]   (K = 128, N = 8)
//
// G[h, p, 0] is the lo marginal (D's lo bits are sum_p b_pj G[h, p, 0]; its sum over p, times the
// tile's top signs, D's top bits) and sum_p G[h, p, 1 + j] is D's mid bit j. The product runs on the
// tensor cores (mma.sync m16n8k16, float16 operands, float32 accumulation). M is +-1, so every
// product is exact; A is split, e 2^14 = hi + lo, into two float16s held in one register, so one
// select per triple forms both (A's K index is (mid code, half), and each row of M appears twice).
// The split keeps 22 bits of e, and 2^14 keeps hi normal down to e = 2^-28. A triple costs a compare
// and a select here, against a compare, two predicated adds and a share of the staged reduction in
// cupy_tiles.cu (~4 instructions).
//
// Layout. Warp w owns lo codes 16 w .. 16 w + 15 (one m16 tile) and all 128 mid codes (16 k-steps of 8).
// Lane (g = lane / 4, c = lane % 4) holds rows g and g + 8, i.e. lo codes p0 = 16 w + 2 g and p0 + 1, and
// mid codes q(c, j) = 16 (j / 4) + 4 c + j % 4, j < 32 (16-byte table loads that fall in distinct banks);
// k-step b puts q(c, 2 b) in A's column pair c and q(c, 2 b + 1) in pair c + 4. A warp's G rows are
// its own lo codes, so it accumulates G [H][16][8] in shared memory without the other warps (C <-
// alpha C + the tile's product, alpha rescaling to a new block max), and D is formed once per item.
// The order of every sum is fixed: no atomics, bitwise reproducible.

#include "cupy_tiles.cuh"

#if AP != 8
#error "cupy_mma.cu needs AP = 8: four warps of 16 lo codes"
#endif

#define SPLIT 16384.f        // 2^14: e's scale in the float16 halves
#define G_FLOATS 512         // per hidden unit: WARPS x 32 lanes x 4 accumulators (G [64][8])
#define PART_FLOATS 32       // per hidden unit: WARPS x 8 row groups, a tile's lo marginal summed over 2 rows

__host__ __device__ constexpr int mma_floats(int H) { return table_floats(H) + H * (G_FLOATS + PART_FLOATS + 32); }

// d += A B on the tensor cores: A 16 x 16 float16 (row), B 16 x 8 float16 (col), d 16 x 8 float32.
__device__ __forceinline__ void mma_16816(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                          unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// e 2^14 as (hi, lo) float16s in one register: hi = fp16(x), lo = fp16(x - hi) (x - hi is exact).
__device__ __forceinline__ unsigned split_pair(float e) {
    const float x = e * SPLIT;
    unsigned short hi;
    float hi_f;
    unsigned pair;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(hi) : "f"(x));
    asm("cvt.f32.f16 %0, %1;" : "=f"(hi_f) : "h"(hi));
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(pair) : "f"(x), "f"(x - hi_f));
    return pair;
}

__device__ __forceinline__ int mid_code(int c, int j) { return 16 * (j / 4) + 4 * c + j % 4; }

// This lane's two qlo and 32 qhi entries of unit h.
__device__ __forceinline__ void load_lane(const Tables& tb, int h, int p0, int c, float (&a)[2], float (&b)[32]) {
    const float2 v = *reinterpret_cast<const float2*>(tb.qlo + h * P + lo_slot(p0));
    a[0] = v.x; a[1] = v.y;
    #pragma unroll
    for (int i = 0; i < 8; ++i) {
        const float4 u = *reinterpret_cast<const float4*>(tb.qhi + h * Q + 16 * i + 4 * c);
        b[4 * i] = u.x; b[4 * i + 1] = u.y; b[4 * i + 2] = u.z; b[4 * i + 3] = u.w;
    }
}

// G[h, p, col] of the accumulators (lane 4 g + col / 2 of warp p / 16 holds rows 2 g, 2 g + 1 of its 16).
__device__ __forceinline__ float g_entry(const float* G, int h, int p, int col) {
    return G[((h * WARPS + p / 16) * 32 + 4 * ((p % 16) / 2) + col / 2) * 4 + 2 * (p % 2) + col % 2];
}

extern "C" __global__ void __launch_bounds__(THREADS) sick_bide_mma_fused(
    const float* W, const float* r, float* m_out, float* s_out, float* d_out, int H, int n_bits, int n_lo,
    int n_mid, long long k_start, long long k_stop, long long first_tile, long long last_tile, int chunks,
    long long tiles_per_chunk)
{
    extern __shared__ __align__(16) float smem[];
    const Item it = make_item(W, r, H, n_bits, n_lo, n_mid, k_start, k_stop, first_tile, last_tile, chunks,
                              tiles_per_chunk);
    const Tables tb = carve(smem, H);
    float* G = smem + table_floats(H);                // [H][WARPS][32][4], scaled by 2^14
    float* part = G + H * G_FLOATS;                   // [H][WARPS][8]
    float* d_top = part + H * PART_FLOATS;            // [H][32], scaled by 2^14
    const int t = threadIdx.x, lane = t & 31, w = t >> 5, g = lane >> 2, c = lane & 3, p0 = 16 * w + 2 * g;
    for (int i = t; i < H * (G_FLOATS + PART_FLOATS + 32); i += THREADS) G[i] = 0.f;
    // M's fragment for k-step b: column g of rows q(c, 2 b) and q(c, 2 b + 1), each float16 twice.
    unsigned m_frag[16][2];
    #pragma unroll
    for (int b = 0; b < 16; ++b)
        #pragma unroll
        for (int u = 0; u < 2; ++u) {
            const int q = mid_code(c, 2 * b + u);
            m_frag[b][u] = (g == 0 || ((q >> (g - 1)) & 1)) ? 0x3C003C00u : 0xBC00BC00u;   // +1 : -1
        }
    build_tables<false>(it, tb);
    float m = NEG_INF, s = 0.f;                        // m is the block's; s this thread's
    const int tile_bits = it.n_lo + it.n_mid;
    const bool partial = (1 << it.n_lo) < P || (1 << it.n_mid) < Q;

    for (long long tile = it.t_begin; tile < it.t_end; ++tile) {
        const float r_top = tile_tables<false>(it, tb, tile);
        float l[2][32];
        #pragma unroll
        for (int j = 0; j < 32; ++j) l[0][j] = l[1][j] = tb.rmid[mid_code(c, j)] + r_top;
        #pragma unroll 2
        for (int h = 0; h < it.H; ++h) {
            float a[2], b[32];
            load_lane(tb, h, p0, c, a, b);
            const float sg = tb.sg[h];
            #pragma unroll
            for (int j = 0; j < 32; ++j) {
                l[0][j] = fmaf(sg, fmaxf(a[0], b[j]), l[0][j]);
                l[1][j] = fmaf(sg, fmaxf(a[1], b[j]), l[1][j]);
            }
        }
        const long long tile_start = tile << tile_bits;
        if (partial || tile_start < it.k_start || tile_start + (1LL << tile_bits) > it.k_stop) {
            #pragma unroll
            for (int i = 0; i < 2; ++i)
                #pragma unroll
                for (int j = 0; j < 32; ++j) {
                    const int p = p0 + i, q = mid_code(c, j);
                    const long long k = tile_start + ((long long)q << it.n_lo) + p;
                    if (p >= (1 << it.n_lo) || q >= (1 << it.n_mid) || k < it.k_start || k >= it.k_stop)
                        l[i][j] = NEG_INF;
                }
        }
        float mt = NEG_INF;
        #pragma unroll
        for (int j = 0; j < 32; ++j) mt = fmaxf(mt, fmaxf(l[0][j], l[1][j]));
        const float m_new = fmaxf(m, block_reduce(mt, tb.red, true));
        if (m_new == NEG_INF) continue;                // block-uniform: nothing valid here yet
        float alpha = 1.f;
        if (m_new > m) {                               // G is rescaled as it is updated; d_top here
            alpha = fast_exp2(m - m_new);              // 0 on the first valid tile (G and d_top are 0)
            s *= alpha;
            for (int i = t; i < H * 32; i += THREADS) d_top[i] *= alpha;
            m = m_new;
        }
        unsigned pe[2][32];                            // e 2^14 of this lane's codes, split
        #pragma unroll
        for (int i = 0; i < 2; ++i)
            #pragma unroll
            for (int j = 0; j < 32; ++j) {
                const float e = fast_exp2(l[i][j] - m);
                s += e;
                pe[i][j] = split_pair(e);
            }
        for (int h = 0; h < it.H; ++h) {
            float a[2], b[32];
            load_lane(tb, h, p0, c, a, b);
            float acc0[4] = {0.f, 0.f, 0.f, 0.f}, acc1[4] = {0.f, 0.f, 0.f, 0.f};   // two chains: shorter latency
            #pragma unroll
            for (int k = 0; k < 16; ++k) {
                const int j0 = 2 * k, j1 = 2 * k + 1;
                const unsigned x0 = a[0] > b[j0] ? pe[0][j0] : 0u, x1 = a[1] > b[j0] ? pe[1][j0] : 0u;
                const unsigned x2 = a[0] > b[j1] ? pe[0][j1] : 0u, x3 = a[1] > b[j1] ? pe[1][j1] : 0u;
                mma_16816(k % 2 ? acc1 : acc0, x0, x1, x2, x3, m_frag[k][0], m_frag[k][1]);
            }
            float4* slot = reinterpret_cast<float4*>(G) + (h * WARPS + w) * 32 + lane;
            float4 v = *slot;
            v.x = fmaf(alpha, v.x, acc0[0] + acc1[0]);
            v.y = fmaf(alpha, v.y, acc0[1] + acc1[1]);
            v.z = fmaf(alpha, v.z, acc0[2] + acc1[2]);
            v.w = fmaf(alpha, v.w, acc0[3] + acc1[3]);
            *slot = v;
            if (c == 0) part[(h * WARPS + w) * 8 + g] = (acc0[0] + acc1[0]) + (acc0[2] + acc1[2]);
        }
        __syncthreads();
        for (int h = t; h < H; h += THREADS) {         // D's top bits: the tile's lo marginals summed
            float total = 0.f;
            for (int i = 0; i < PART_FLOATS; ++i) total += part[h * PART_FLOATS + i];
            for (int j = 0; j < it.n_top; ++j) d_top[h * 32 + j] += bitsign(tile, j) * total;
        }
    }

    s = block_reduce(s, tb.red, false);                // its barriers also order G's last updates
    if (t == 0) {
        m_out[blockIdx.x] = m * 0.6931471805599453f;
        s_out[blockIdx.x] = s;
    }
    float* D = d_out + (long long)blockIdx.x * H * n_bits;
    const int n_lm = it.n_lo + it.n_mid;
    for (int task = t; task < H * n_lm; task += THREADS) {
        const int h = task / n_lm, j = task % n_lm;
        float v = 0.f;
        if (j < it.n_lo) for (int p = 0; p < P; ++p) v += bitsign(p, j) * g_entry(G, h, p, 0);
        else for (int p = 0; p < P; ++p) v += g_entry(G, h, p, 1 + j - it.n_lo);
        D[h * n_bits + j] = v * (1.f / SPLIT);
    }
    for (int i = t; i < H * it.n_top; i += THREADS) {
        const int h = i / it.n_top, j = i % it.n_top;
        D[h * n_bits + n_lm + j] = d_top[h * 32 + j] * (1.f / SPLIT);
    }
}
