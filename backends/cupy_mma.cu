// SICK-BIDE fused partial states with the gradient sums on tensor cores (an experiment: option mma=1 of
// `cupy`, not a registered config; PERFORMANCE.md, "the gradient sums on tensor cores").
//
// Tables and tiles are those of cupy_tiles.cu's fused kernel (AP = 8: a tile is 64 lo x 128 mid codes
// for one top pattern t; r folded in, base 2). The logits are in the abs form (FADD and FFMA with |.|,
// both on the FMA pipe), or the max form on rows whose tables could overflow:
//
//     l[p, q] = sum_h (s_h / 2) |qlo[h, p] - qhi[h, q]| + (R_lo[p] + R_mid[q] + R_top[t]) / 2
//
// With e = 2^(l - m) and A[h, p, q] = e[p, q] 1[qlo[h, p] > qhi[h, q]] (= e 1[z > 0]), a tile's part
// of the gradient sums is one matrix product per hidden unit:
//
//     G[h, p, :] += sum_q A[h, p, q] M[q, :]       M[q] = [1, b_q0, ..., b_q6]   (K = 128, N = 8)
//
// G[h, p, 0] is the lo marginal (D's lo bits are sum_p b_pj G[h, p, 0]; its sum over p, times the
// tile's top signs, D's top bits) and sum_p G[h, p, 1 + j] is D's mid bit j. The product runs on the
// tensor cores (mma.sync m16n8k16, float16 operands, float32 accumulation). M is +-1, so every
// product is exact. e 2^15 = hi + lo 2^-11 is split into two float16s held in one register, so one
// select per triple forms both (A's K index is (mid code, half); M's row for lo is 2^-11 M). That keeps
// 22 bits of e down to e = 2^-29 of the block max, and an absolute error <= 2^-51 below: outside the
// tolerance policy where a row's gradients rest only on such codes. A triple costs a compare and a
// select here, both on the half-rate ALU pipe, against a compare, two predicated adds (FMA pipe) and a
// share of the staged reduction in cupy_tiles.cu.
//
// Layout. Warp w owns lo codes 16 w .. 16 w + 15 (one m16 tile) and all 128 mid codes (16 k-steps of 8).
// Lane (g = lane / 4, c = lane % 4) holds rows g and g + 8, i.e. lo codes p0 = 16 w + 2 g and p0 + 1, and
// mid codes q(c, j) = 16 (j / 4) + 4 c + j % 4, j < 32 (16-byte table loads that fall in distinct banks);
// k-step b puts q(c, 2 b) in A's column pair c and q(c, 2 b + 1) in pair c + 4. A warp's G rows are
// its own lo codes, so it accumulates them in shared memory without the other warps (C <- alpha C +
// the tile's product, alpha rescaling to a new block max): per lane, columns 2c, 2c + 1 summed over its
// two rows, and column 0's row difference, 288 floats per unit, so 3 blocks fit per SM at H = 32.
// D is formed once per item. The order of every sum is fixed: no atomics, bitwise reproducible.

#include "cupy_tiles.cuh"

#if AP != 8
#error "cupy_mma.cu needs AP = 8: four warps of 16 lo codes"
#endif

#define SPLIT 32768.f        // 2^15: e's scale in the float16 halves (e <= 1)
#define G_FLOATS 288         // per hidden unit: [WARPS][32 lanes][2] column sums over a lane's 2 rows, then
                             // [WARPS][8] column 0's row difference (lanes with c = 0)
#define PART_FLOATS 32       // per hidden unit: WARPS x 8 row groups, a tile's lo marginal summed over 2 rows
#define TOPS 20              // D's top bits: n - n_lo - n_mid <= 32 - 6 - 7
#ifndef SELECT_IMAD
#define SELECT_IMAD 0
#endif

__host__ __device__ constexpr int mma_floats(int H) { return table_floats(H) + H * (G_FLOATS + PART_FLOATS + TOPS) + P; }

// d += A B on the tensor cores: A 16 x 16 float16 (row), B 16 x 8 float16 (col), d 16 x 8 float32.
__device__ __forceinline__ void mma_16816(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                          unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// e 2^15 as (hi, lo) float16s in one register: hi = fp16(x), lo = fp16((x - hi) 2^11) (x - hi is exact;
// M's rows for lo are 2^-11 M). 22 bits of e down to e = 2^-29; below, an absolute error <= 2^-51.
__device__ __forceinline__ unsigned split_pair(float e) {
    const float x = e * SPLIT;
    unsigned short hi;
    float hi_f;
    unsigned pair;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(hi) : "f"(x));
    asm("cvt.f32.f16 %0, %1;" : "=f"(hi_f) : "h"(hi));
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(pair) : "f"((x - hi_f) * 2048.f), "f"(hi_f));
    return pair;   // low half hi, high half lo
}

// A's element: the pair where qlo > qhi, else 0.
__device__ __forceinline__ unsigned masked(float a, float b, unsigned pair, unsigned neg_pair) {
#if SELECT_IMAD   // tried in SASS only: ptxas compiles the set to FSETP + SEL, so this is 3 instructions, not 2
    unsigned m, x;   // m = 0xffffffff or 0; x = m * -pair (IMAD, FMA pipe)
    asm("set.gt.u32.f32 %0, %1, %2;" : "=r"(m) : "f"(a), "f"(b));
    asm("mul.lo.u32 %0, %1, %2;" : "=r"(x) : "r"(m), "r"(neg_pair));
    return x;
#else
    return a > b ? pair : 0u;
#endif
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

extern "C" __global__ void __launch_bounds__(THREADS, 3) sick_bide_mma_fused(
    const float* W, const float* r, float* m_out, float* s_out, float* d_out, int H, int n_bits, int n_lo,
    int n_mid, long long k_start, long long k_stop, long long first_tile, long long last_tile, int chunks,
    long long tiles_per_chunk)
{
    extern __shared__ __align__(16) float smem[];
    const Item it = make_item(W, r, H, n_bits, n_lo, n_mid, k_start, k_stop, first_tile, last_tile, chunks,
                              tiles_per_chunk);
    const Tables tb = carve(smem, H);
    float* G = smem + table_floats(H);                // [H][G_FLOATS], scaled by 2^15
    float* part = G + H * G_FLOATS;                   // [H][WARPS][8]
    float* d_top = part + H * PART_FLOATS;            // [H][TOPS], scaled by 2^15
    float* r_lo = d_top + H * TOPS;                   // [P]: sum_h r_h P_lo[h, p] log2 e
    const int t = threadIdx.x, lane = t & 31, w = t >> 5, g = lane >> 2, c = lane & 3, p0 = 16 * w + 2 * g;
    for (int i = t; i < H * (G_FLOATS + PART_FLOATS + TOPS); i += THREADS) G[i] = 0.f;
    // M's fragment for k-step b: column g of rows q(c, 2 b) and q(c, 2 b + 1): (+-1 for hi, +-2^-11 for lo).
    // Each value makes a round trip through shared memory (this thread's word of qlo, not yet built), so
    // that the compiler keeps the fragments in registers instead of recomputing them in the unit loop.
    unsigned m_frag[16][2];
    unsigned* slot = reinterpret_cast<unsigned*>(smem) + t;
    #pragma unroll
    for (int b = 0; b < 16; ++b)
        #pragma unroll
        for (int u = 0; u < 2; ++u) {
            const int q = mid_code(c, 2 * b + u);
            *slot = (g == 0 || ((q >> (g - 1)) & 1)) ? 0x10003C00u : 0x9000BC00u;
            __syncwarp();
            m_frag[b][u] = *slot;
            __syncwarp();
        }
    build_tables<false>(it, tb);
    // The abs form, l = sum_h (s_h / 2) |qlo - qhi| + (R_lo + R_mid + R_top) / 2, keeps the logits off the
    // ALU pipe that the masks use. Rows whose tables could overflow take the max form (cupy_tiles.cuh).
    int risky = 0;
    for (int h = t; h < H; h += THREADS) {
        float norm = 0.f;
        for (int j = 0; j < it.n_bits; ++j) norm += fabsf(it.W[h * it.n_bits + j]);
        risky |= !(norm <= 0x1p124f && tb.c[h] * norm <= 0x1p118f);
    }
    for (int p = t; p < P; p += THREADS) {           // r P_lo = s qlo (r log2 e = s c)
        float acc = 0.f;
        for (int h = 0; h < H; ++h) acc += tb.sg[h] * tb.qlo[h * P + lo_slot(p)];
        r_lo[p] = acc;
    }
    const bool max_form = __syncthreads_or(risky);
    float m = NEG_INF, s = 0.f;                        // m is the block's; s this thread's
    const int tile_bits = it.n_lo + it.n_mid;
    const bool partial = (1 << it.n_lo) < P || (1 << it.n_mid) < Q;

    for (long long tile = it.t_begin; tile < it.t_end; ++tile) {
        const float r_top = tile_tables<false>(it, tb, tile);
        float l[2][32];
        if (max_form) {
            #pragma unroll
            for (int j = 0; j < 32; ++j) l[0][j] = l[1][j] = tb.rmid[mid_code(c, j)] + r_top;
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
        } else {
            const float lo0 = r_lo[p0], lo1 = r_lo[p0 + 1];
            #pragma unroll
            for (int j = 0; j < 32; ++j) {
                const float mid = tb.rmid[mid_code(c, j)] + r_top;
                l[0][j] = 0.5f * (lo0 + mid);
                l[1][j] = 0.5f * (lo1 + mid);
            }
            #pragma unroll 2
            for (int h = 0; h < it.H; ++h) {
                float a[2], b[32];
                load_lane(tb, h, p0, c, a, b);
                const float half_s = 0.5f * tb.sg[h];
                #pragma unroll
                for (int j = 0; j < 32; ++j) {
                    l[0][j] = fmaf(half_s, fabsf(a[0] - b[j]), l[0][j]);
                    l[1][j] = fmaf(half_s, fabsf(a[1] - b[j]), l[1][j]);
                }
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
            for (int i = t; i < H * TOPS; i += THREADS) d_top[i] *= alpha;
            m = m_new;
        }
        unsigned pe[2][32];                            // e 2^15 of this lane's codes, split (negated: SELECT_IMAD)
        #pragma unroll
        for (int i = 0; i < 2; ++i)
            #pragma unroll
            for (int j = 0; j < 32; ++j) {
                const float e = fast_exp2(l[i][j] - m);
                s += e;
                pe[i][j] = SELECT_IMAD ? 0u - split_pair(e) : split_pair(e);
            }
        for (int h = 0; h < it.H; ++h) {
            const float2 av = *reinterpret_cast<const float2*>(tb.qlo + h * P + lo_slot(p0));
            const float* qh = tb.qhi + h * Q + 4 * c;
            float acc0[4] = {0.f, 0.f, 0.f, 0.f}, acc1[4] = {0.f, 0.f, 0.f, 0.f};   // two chains: shorter latency
            #pragma unroll
            for (int i = 0; i < 8; ++i) {              // four mid codes, two k-steps, per 16-byte load
                const float4 bv = *reinterpret_cast<const float4*>(qh + 16 * i);
                const float b[4] = {bv.x, bv.y, bv.z, bv.w};
                #pragma unroll
                for (int u = 0; u < 2; ++u) {
                    const int k = 2 * i + u, j0 = 2 * k, j1 = 2 * k + 1;
                    const unsigned x0 = masked(av.x, b[2 * u], pe[0][j0], pe[0][j0]);
                    const unsigned x1 = masked(av.y, b[2 * u], pe[1][j0], pe[1][j0]);
                    const unsigned x2 = masked(av.x, b[2 * u + 1], pe[0][j1], pe[0][j1]);
                    const unsigned x3 = masked(av.y, b[2 * u + 1], pe[1][j1], pe[1][j1]);
                    mma_16816(u ? acc1 : acc0, x0, x1, x2, x3, m_frag[k][0], m_frag[k][1]);
                }
            }
            // Columns 2c, 2c + 1 summed over this lane's rows p0, p0 + 1; with c = 0, column 0's row difference.
            const float row0 = acc0[0] + acc1[0], row1 = acc0[2] + acc1[2];
            const float col0 = row0 + row1, col1 = (acc0[1] + acc1[1]) + (acc0[3] + acc1[3]);
            float2* slot = reinterpret_cast<float2*>(G + h * G_FLOATS) + w * 32 + lane;
            float2 v = *slot;
            v.x = fmaf(alpha, v.x, col0);
            v.y = fmaf(alpha, v.y, col1);
            *slot = v;
            if (c == 0) {
                float* diff = G + h * G_FLOATS + 256 + w * 8 + g;
                *diff = fmaf(alpha, *diff, row1 - row0);
                part[h * PART_FLOATS + w * 8 + g] = col0;
            }
        }
        __syncthreads();
        for (int h = t; h < H; h += THREADS) {         // D's top bits: the tile's lo marginals summed
            float total = 0.f;
            for (int i = 0; i < PART_FLOATS; ++i) total += part[h * PART_FLOATS + i];
            for (int j = 0; j < it.n_top; ++j) d_top[h * TOPS + j] += bitsign(tile, j) * total;
        }
    }

    s = block_reduce(s, tb.red, false);                // its barriers also order G's last updates
    if (t == 0) {
        m_out[blockIdx.x] = m * 0.6931471805599453f;
        s_out[blockIdx.x] = s;
    }
    // D's lo bits from column 0 (bit 0: the rows' difference; bits 1..5: the pairs' sums, p = 16 w + 2 g),
    // mid bit j from column 1 + j summed over every lane's rows.
    float* D = d_out + (long long)blockIdx.x * H * n_bits;
    const int n_lm = it.n_lo + it.n_mid;
    for (int task = t; task < H * n_lm; task += THREADS) {
        const int h = task / n_lm, j = task % n_lm;
        const float* Gh = G + h * G_FLOATS;
        float v = 0.f;
        if (j == 0) {
            for (int i = 0; i < 32; ++i) v += Gh[256 + i];
        } else if (j < it.n_lo) {
            for (int i = 0; i < 32; ++i) v += bitsign(2 * (i % 8) + 16 * (i / 8), j) * Gh[2 * (32 * (i / 8) + 4 * (i % 8))];
        } else {
            const int col = 1 + j - it.n_lo;
            for (int i = 0; i < 32; ++i) v += Gh[2 * (32 * (i / 8) + 4 * (i % 8) + col / 2) + col % 2];
        }
        D[h * n_bits + j] = v * (1.f / SPLIT);
    }
    for (int i = t; i < H * it.n_top; i += THREADS) {
        const int h = i / it.n_top, j = i % it.n_top;
        D[h * n_bits + n_lm + j] = d_top[h * TOPS + j] * (1.f / SPLIT);
    }
}
