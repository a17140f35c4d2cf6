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
// grad_floats in cupy_tiles.cuh; cupy_mitm.py's _tiles_shared_bytes mirrors them).

#include "cupy_tiles.cuh"

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
