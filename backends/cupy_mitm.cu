// SICK-BIDE partial states in CUDA C, a lo code per thread (the `cupy` backend's `lo_per_thread` kernels).
// The algorithm and its cost are described in backends/cupy_mitm.py.

#define THREADS 128
#define WARPS (THREADS / 32)
#define QB 32
#define NHI_MAX 32
#define NEG_INF (-__int_as_float(0x7f800000))
// Shared memory: two batch tables, then the per-warp transpose; the end-of-item merges reuse it all.
#define SMEM_FLOATS (2 * QB * HP + WARPS * 32 * 33)

__device__ __forceinline__ float bitsign(long long k, int j) { return ((k >> j) & 1) ? 1.f : -1.f; }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float block_reduce(float v, float* red, bool is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    v = red[0];
    for (int w = 1; w < WARPS; ++w) v = is_max ? fmaxf(v, red[w]) : v + red[w];
    return v;
}

// One work item per block: row = blockIdx.x / chunks, hi codes [qa, qb_end) of that row.
template <bool GRAD>
__device__ void sick_bide_item(const float* __restrict__ W, const float* __restrict__ r,
                               float* __restrict__ m_out, float* __restrict__ s_out, float* __restrict__ d_out,
                               int n_hidden, int n_bits, int n_lo, long long k_start, long long k_stop,
                               long long q_first, long long q_last, int chunks, long long q_per_chunk)
{
    __shared__ __align__(16) float smem[SMEM_FLOATS];
    __shared__ float c_s[HP], r_s[HP], sgn_s[HP], high_s[HP], rq_s[QB], red_s[WARPS];
    float (*plow_s)[HP] = reinterpret_cast<float (*)[HP]>(smem);             // [QB][HP]
    float (*qhi_s)[HP] = reinterpret_cast<float (*)[HP]>(smem + QB * HP);    // [QB][HP]
    float (*tr_s)[32][33] = reinterpret_cast<float (*)[32][33]>(smem + 2 * QB * HP);   // [WARPS][32][33]

    const int item = blockIdx.x, row = item / chunks, chunk = item % chunks;
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int n_hi = n_bits - n_lo, n_low = min(5, n_hi);
    const float* Wr = W + (size_t)row * n_hidden * n_bits;   // n_hidden <= HP, the register width compiled in
    const float* rr = r + (size_t)row * n_hidden;
    const long long qa = q_first + chunk * q_per_chunk;
    const long long q_end = min(qa + q_per_chunk, q_last + 1);

    for (int h = t; h < HP; h += THREADS) {
        const float rv = h < n_hidden ? rr[h] : 0.f;
        r_s[h] = rv * 1.4426950408889634f;
        c_s[h] = (rv != 0.f ? fabsf(rv) : 1.f) * 1.4426950408889634f;
        sgn_s[h] = rv > 0.f ? 1.f : (rv < 0.f ? -1.f : 0.f);
    }
    for (int i = t; i < QB * HP; i += THREADS) {      // P over the low 5 hi bits, the same for every batch
        const int qq = i / HP, h = i % HP;
        float acc = 0.f;
        if (h < n_hidden) for (int j = 0; j < n_low; ++j) acc += Wr[h * n_bits + n_lo + j] * bitsign(qq, j);
        plow_s[qq][h] = acc;
    }
    __syncthreads();

    const int p = t;                                   // this thread's lo code
    const bool p_ok = p < (1 << n_lo);
    float qlo[HP], sg[HP], G[GRAD ? HP : 1];
    #pragma unroll
    for (int h = 0; h < HP; ++h) {
        float acc = 0.f;
        if (h < n_hidden) for (int j = 0; j < n_lo; ++j) acc += Wr[h * n_bits + j] * bitsign(p, j);
        qlo[h] = c_s[h] * acc;
        sg[h] = sgn_s[h];
        if (GRAD) G[h] = 0.f;
    }
    float dhi[GRAD ? HP / 32 : 1][GRAD ? NHI_MAX : 1];
    #pragma unroll
    for (int g = 0; g < (GRAD ? HP / 32 : 1); ++g)
        #pragma unroll
        for (int j = 0; j < (GRAD ? NHI_MAX : 1); ++j) dhi[g][j] = 0.f;
    float m = NEG_INF, s = 0.f;

    for (long long qb = qa & ~31LL; qb < q_end; qb += QB) {
        __syncthreads();                               // everyone is done with the last batch's table
        if (t < HP) {
            float high = 0.f;
            if (t < n_hidden) for (int j = n_low; j < n_hi; ++j) high += Wr[t * n_bits + n_lo + j] * bitsign(qb, j);
            high_s[t] = high;
        }
        __syncthreads();
        for (int i = t; i < QB * HP; i += THREADS) {
            const int qq = i / HP, h = i % HP;
            qhi_s[qq][h] = -c_s[h] * (plow_s[qq][h] + high_s[h]);
        }
        if (t < QB) {
            float acc = 0.f;
            for (int h = 0; h < n_hidden; ++h) acc += r_s[h] * (plow_s[t][h] + high_s[h]);
            rq_s[t] = acc;
        }
        __syncthreads();

        float l[QB];
        const bool interior = p_ok && qb >= qa && qb + QB <= q_end
                              && (qb << n_lo) >= k_start && ((qb + QB) << n_lo) <= k_stop;
        #pragma unroll
        for (int qq = 0; qq < QB; qq += 4) {           // four independent fma chains for the latency
            float a0 = rq_s[qq], a1 = rq_s[qq + 1], a2 = rq_s[qq + 2], a3 = rq_s[qq + 3];
            const float4 *r0 = reinterpret_cast<const float4*>(qhi_s[qq]), *r1 = r0 + HP / 4;
            const float4 *r2 = r1 + HP / 4, *r3 = r2 + HP / 4;
            #pragma unroll
            for (int h4 = 0; h4 < HP / 4; ++h4) {
                const float4 b0 = r0[h4], b1 = r1[h4], b2 = r2[h4], b3 = r3[h4];
                #define SB_STEP(c, h) \
                    a0 = fmaf(sg[h], fmaxf(qlo[h], b0.c), a0); a1 = fmaf(sg[h], fmaxf(qlo[h], b1.c), a1); \
                    a2 = fmaf(sg[h], fmaxf(qlo[h], b2.c), a2); a3 = fmaf(sg[h], fmaxf(qlo[h], b3.c), a3);
                SB_STEP(x, 4 * h4) SB_STEP(y, 4 * h4 + 1) SB_STEP(z, 4 * h4 + 2) SB_STEP(w, 4 * h4 + 3)
                #undef SB_STEP
            }
            l[qq] = a0; l[qq + 1] = a1; l[qq + 2] = a2; l[qq + 3] = a3;
        }
        if (!interior) {
            #pragma unroll
            for (int qq = 0; qq < QB; ++qq) {
                const long long q = qb + qq, k = (q << n_lo) + p;
                if (!p_ok || q < qa || q >= q_end || k < k_start || k >= k_stop) l[qq] = NEG_INF;
            }
        }
        float mb = NEG_INF;
        #pragma unroll
        for (int qq = 0; qq < QB; ++qq) mb = fmaxf(mb, l[qq]);
        if (GRAD) mb = block_reduce(mb, red_s, true);  // one scale for the whole block
        const float m_new = fmaxf(m, mb);
        if (m_new > m) {
            const float alpha = exp2f(m - m_new);       // 0 on the first batch (m = -inf)
            s *= alpha;
            #pragma unroll
            for (int h = 0; h < (GRAD ? HP : 0); ++h) G[h] *= alpha;
            #pragma unroll
            for (int g = 0; g < (GRAD ? HP / 32 : 0); ++g)
                #pragma unroll
                for (int j = 0; j < NHI_MAX; ++j) dhi[g][j] *= alpha;
            m = m_new;
        }
        #pragma unroll
        for (int qq = 0; qq < QB; ++qq) {
            l[qq] = m == NEG_INF ? 0.f : exp2f(l[qq] - m);   // e, in place
            s += l[qq];
        }
        if (GRAD) {
            #pragma unroll 1
            for (int qq = 0; qq < QB; ++qq) {
                const float e = l[qq];
                const long long q = qb + qq;
                #pragma unroll
                for (int g = 0; g < HP / 32; ++g) {
                    #pragma unroll
                    for (int hh = 0; hh < 32; ++hh) {
                        const float a = qlo[32 * g + hh] > qhi_s[qq][32 * g + hh] ? e : 0.f;
                        G[32 * g + hh] += a;
                        tr_s[warp][lane][hh] = a;
                    }
                    __syncwarp();
                    float c0 = 0.f, c1 = 0.f, c2 = 0.f, c3 = 0.f;   // lane hh: A over the warp's 32 lo codes
                    #pragma unroll
                    for (int i = 0; i < 32; i += 4) {
                        c0 += tr_s[warp][i][lane]; c1 += tr_s[warp][i + 1][lane];
                        c2 += tr_s[warp][i + 2][lane]; c3 += tr_s[warp][i + 3][lane];
                    }
                    const float col = (c0 + c1) + (c2 + c3);
                    __syncwarp();
                    #pragma unroll
                    for (int j = 0; j < NHI_MAX; ++j)
                        if (j < n_hi) dhi[g][j] += ((q >> j) & 1) ? col : -col;
                }
            }
        }
    }

    // s over the block (forward threads first rescale their own m to the block's).
    if (!GRAD) {
        const float mb = block_reduce(m, red_s, true);
        s = m == NEG_INF ? 0.f : s * exp2f(m - mb);
        m = mb;
    }
    s = block_reduce(s, red_s, false);
    if (t == 0) {
        m_out[item] = m * 0.6931471805599453f;
        s_out[item] = s;
    }
    if (!GRAD) return;

    float* D = d_out + (size_t)item * n_hidden * n_bits;
    // Lo bits: D[h, j] = sum_p b_pj G[p][h]. Transpose G through shared memory, then warp w folds
    // n_hidden units w, w + 4, ...: lane holds p = lane + 32 i (i = 0..3), i.e. bits 5, 6 of p are i's.
    float* G_s = smem;                                 // [THREADS][HP]
    __syncthreads();
    #pragma unroll
    for (int h = 0; h < HP; ++h) G_s[t * HP + h] = p_ok ? G[h] : 0.f;
    __syncthreads();
    for (int h = warp; h < n_hidden; h += WARPS) {
        const float x0 = G_s[lane * HP + h], x1 = G_s[(lane + 32) * HP + h];
        const float x2 = G_s[(lane + 64) * HP + h], x3 = G_s[(lane + 96) * HP + h];
        const float total = (x0 + x1) + (x2 + x3);
        for (int j = 0; j < n_lo; ++j) {
            float v;
            if (j < 5) v = ((lane >> j) & 1) ? total : -total;
            else if (j == 5) v = (x1 + x3) - (x0 + x2);
            else v = (x2 + x3) - (x0 + x1);
            v = warp_sum(v);
            if (lane == 0) D[h * n_bits + j] = v;
        }
    }
    // Hi bits: lane hh of each warp holds n_hidden unit 32 g + hh, summed over the warp's lo codes.
    __syncthreads();
    float* dh_s = smem;                                // [WARPS][HP][NHI_MAX]
    #pragma unroll
    for (int g = 0; g < HP / 32; ++g)
        #pragma unroll
        for (int j = 0; j < NHI_MAX; ++j) dh_s[(warp * HP + 32 * g + lane) * NHI_MAX + j] = dhi[g][j];
    __syncthreads();
    for (int i = t; i < n_hidden * n_hi; i += THREADS) {
        const int h = i / n_hi, j = i % n_hi;
        float v = 0.f;
        for (int w = 0; w < WARPS; ++w) v += dh_s[(w * HP + h) * NHI_MAX + j];
        D[h * n_bits + n_lo + j] = v;
    }
}

#ifndef MIN_BLOCKS
#define MIN_BLOCKS 1
#endif
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) sick_bide_forward(
    const float* W, const float* r, float* m_out, float* s_out, int n_hidden, int n_bits, int n_lo,
    long long k_start, long long k_stop, long long q_first, long long q_last, int chunks, long long q_per_chunk)
{
    sick_bide_item<false>(W, r, m_out, s_out, nullptr, n_hidden, n_bits, n_lo, k_start, k_stop, q_first, q_last,
                          chunks, q_per_chunk);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) sick_bide_fused(
    const float* W, const float* r, float* m_out, float* s_out, float* d_out, int n_hidden, int n_bits, int n_lo,
    long long k_start, long long k_stop, long long q_first, long long q_last, int chunks, long long q_per_chunk)
{
    sick_bide_item<true>(W, r, m_out, s_out, d_out, n_hidden, n_bits, n_lo, k_start, k_stop, q_first, q_last,
                         chunks, q_per_chunk);
}
