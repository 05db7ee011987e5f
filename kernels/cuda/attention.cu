// Causal GQA attention over a KV cache, flash-attention style (Dao et al. 2022, FlashAttention-2 2023): queries in
// blocks of 64, keys/values streamed through shared memory in tiles of 64, an online softmax (running max and sum
// per row, the partial output rescaled as the max grows), so the score matrix never reaches global memory.
// Products run on the tensor cores through WMMA (bf16/fp16 operands, fp32 accumulators).
//   attention_fwd_<t>_<d>:    the tiled forward; grid (query blocks, heads, batch), 128 threads; writes out and,
//                             when lse is not null, the log-sum-exp of each row ([batch, heads, tokens], natural log)
//   attention_decode_<t>_<d>: few queries per KV head (decode): grid (splits, kv_heads, batch); each block takes all
//                             query rows of one KV head over one chunk of keys (K/V read once per KV head, the KV
//                             length split across blocks), writing partial (max, sum, output) rows ...
//   attention_combine_<t>_<d>: ... which this merges: grid (batch·heads·tokens)
//   attention_delta_<t>_<d>:  backward step 1: delta = rowsum(dO ⊙ O) ([batch, heads, tokens])
//   attention_bwd_<t>_<d>:    backward step 2 (FlashAttention-2's): grid (key blocks, kv_heads, batch); per key block
//                             the probabilities are recomputed from the stored lse, dK and dV summed over the group's
//                             heads in registers, dQ added to an fp32 accumulator with atomics
//   attention_dq_copy:        backward step 3: the dQ accumulator into the strided dq
// Query t of sequence b sits at position kv_len − tokens + t and sees key j when j ≤ pos, pos − j < window (when
// window > 0) and key_mask[b·kv_len + j] ≠ 0 (when has_mask); a row that sees no key gets zeros.
// Layouts: row r of an operand starts at element off + r·stride, head h at + h·head_dim; q, out: [batch·tokens] rows;
// k, v: [batch·kv_len] rows. Offsets and strides are multiples of 8 elements (16-byte loads).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
using namespace nvcuda;

struct AttnParams {
    int batch, tokens, kv_len, heads, kv_heads;
    int q_off, q_stride, k_off, k_stride, v_off, v_stride;
    int o_off, o_stride, do_off, do_stride;
    int dk_off, dk_stride, dv_off, dv_stride, dq_off, dq_stride;
    int window, has_mask, splits, chunk;
    float scale;
};

constexpr int BR = 64, BC = 64, THREADS = 128;
constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, o));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffff, x, o);
    return x;
}

__device__ __forceinline__ bool visible(const AttnParams &p, const unsigned char *mask, int b, int pos, int j) {
    return j <= pos && j < p.kv_len && (p.window == 0 || pos - j < p.window) &&
           (!p.has_mask || mask[(long long)b * p.kv_len + j] != 0);
}

// dst: [rows, LD] in shared memory = rows row0 .. of src (row stride `stride`), zeros from row `valid` on.
template <typename T, int D, int LD>
__device__ void load_rows(T *dst, const T *src, int stride, long long row0, int rows, int valid) {
    constexpr int V = D / 8;
    for (int i = threadIdx.x; i < rows * V; i += blockDim.x) {
        const int r = i / V, c = (i % V) * 8;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (r < valid) val = *reinterpret_cast<const uint4 *>(src + (row0 + r) * stride + c);
        *reinterpret_cast<uint4 *>(dst + r * LD + c) = val;
    }
}

template <typename T> using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <typename T> using FragAT = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major>;
template <typename T> using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <typename T> using FragBT = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
template <typename T, bool TR> struct FragAOf { using type = FragA<T>; };
template <typename T> struct FragAOf<T, true> { using type = FragAT<T>; };
template <typename T, bool TR> struct FragBOf { using type = FragB<T>; };
template <typename T> struct FragBOf<T, true> { using type = FragBT<T>; };

// out[16, N] (fp32, ld LDO) = A[16, K] · B[K, N]; A row-major (or col-major: A = Xᵀ) at a, B row-major (or
// col-major: B = Yᵀ) at bm, all in shared memory. N, K multiples of 16.
template <typename T, int N, int K, bool AT, bool BT>
__device__ __forceinline__ void warp_gemm(float *out, int ldo, const T *a, int lda, const T *bm, int ldb) {
#pragma unroll
    for (int n = 0; n < N / 16; ++n) {
        FragC acc;
        wmma::fill_fragment(acc, 0.f);
#pragma unroll
        for (int kk = 0; kk < K / 16; ++kk) {
            typename FragAOf<T, AT>::type fa;
            typename FragBOf<T, BT>::type fb;
            wmma::load_matrix_sync(fa, AT ? a + kk * 16 * lda : a + kk * 16, lda);
            wmma::load_matrix_sync(fb, BT ? bm + n * 16 * ldb + kk * 16 : bm + kk * 16 * ldb + n * 16, ldb);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(out + n * 16, acc, ldo, wmma::mem_row_major);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Forward, tiled. Shared memory: Q, K, V [64, D+8] (T), S [64, 68] (f32), P [64, 72] (T), O [64, D+4] (f32).
// Warp w owns query rows 16w .. 16w+16 of the block for S, the softmax and O.
template <typename T, int D>
__device__ void attn_fwd(const AttnParams p, const T *__restrict__ q, const T *__restrict__ k,
                         const T *__restrict__ v, const unsigned char *__restrict__ mask, T *__restrict__ out,
                         float *__restrict__ lse) {
    constexpr int LDT = D + 8, LDS = BC + 4, LDP = BC + 8, LDO = D + 4;
    extern __shared__ __align__(128) unsigned char smem[];
    T *sQ = reinterpret_cast<T *>(smem);
    T *sK = sQ + BR * LDT;
    T *sV = sK + BC * LDT;
    float *sS = reinterpret_cast<float *>(sV + BC * LDT);
    T *sP = reinterpret_cast<T *>(sS + BR * LDS);
    float *sO = reinterpret_cast<float *>(sP + BR * LDP);

    // The last query blocks see the most keys: they start first.
    const int t0 = (gridDim.x - 1 - blockIdx.x) * BR, h = blockIdx.y, b = blockIdx.z;
    const int g = h / (p.heads / p.kv_heads);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int start = p.kv_len - p.tokens;
    const int valid_q = min(BR, p.tokens - t0);
    load_rows<T, D, LDT>(sQ, q + p.q_off + h * D, p.q_stride, (long long)b * p.tokens + t0, BR, valid_q);
    for (int i = threadIdx.x; i < BR * LDO; i += blockDim.x) sO[i] = 0.f;
    const float sl2 = p.scale * LOG2E;
    const int pos_first = start + t0, pos_last = start + t0 + valid_q - 1;
    const int j_begin = p.window > 0 ? max(0, pos_first - p.window + 1) : 0;
    float m[16], l[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) m[r] = -INFINITY, l[r] = 0.f;

    for (int j0 = j_begin; j0 <= pos_last; j0 += BC) {
        __syncthreads();
        const int valid_k = min(BC, p.kv_len - j0);
        const long long krow = (long long)b * p.kv_len + j0;
        load_rows<T, D, LDT>(sK, k + p.k_off + g * D, p.k_stride, krow, BC, valid_k);
        load_rows<T, D, LDT>(sV, v + p.v_off + g * D, p.v_stride, krow, BC, valid_k);
        __syncthreads();
        // S[16w.., :] = Q K^T
        warp_gemm<T, BC, D, false, true>(sS + warp * 16 * LDS, LDS, sQ + warp * 16 * LDT, LDT, sK, LDT);
        __syncwarp();
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            const int row = warp * 16 + r, t = t0 + row, pos = start + t;
            float s[2];
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int col = lane + 32 * c;
                s[c] = t < p.tokens && visible(p, mask, b, pos, j0 + col) ? sS[row * LDS + col] * sl2 : -INFINITY;
            }
            const float mn = fmaxf(m[r], warp_max(fmaxf(s[0], s[1])));
            float alpha = 1.f, p0 = 0.f, p1 = 0.f;
            if (mn != -INFINITY) {
                alpha = exp2f(m[r] - mn);
                p0 = exp2f(s[0] - mn);
                p1 = exp2f(s[1] - mn);
            }
            l[r] = l[r] * alpha + warp_sum(p0 + p1);
            m[r] = mn;
            sP[row * LDP + lane] = from_float<T>(p0);
            sP[row * LDP + lane + 32] = from_float<T>(p1);
            for (int c = lane; c < D; c += 32) sO[row * LDO + c] *= alpha;
        }
        __syncwarp();
        // O[16w.., :] += P V
#pragma unroll
        for (int n = 0; n < D / 16; ++n) {
            FragC acc;
            float *o = sO + warp * 16 * LDO + n * 16;
            wmma::load_matrix_sync(acc, o, LDO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) {
                FragA<T> fa;
                FragB<T> fb;
                wmma::load_matrix_sync(fa, sP + warp * 16 * LDP + kk * 16, LDP);
                wmma::load_matrix_sync(fb, sV + kk * 16 * LDT + n * 16, LDT);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(o, acc, LDO, wmma::mem_row_major);
        }
        __syncwarp();
    }
#pragma unroll
    for (int r = 0; r < 16; ++r) {
        const int row = warp * 16 + r, t = t0 + row;
        if (t >= p.tokens) continue;
        const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
        T *o = out + ((long long)b * p.tokens + t) * p.o_stride + p.o_off + h * D;
        for (int c = lane; c < D; c += 32) o[c] = from_float<T>(sO[row * LDO + c] * inv);
        if (lse != nullptr && lane == 0)
            lse[((long long)b * p.heads + h) * p.tokens + t] = l[r] > 0.f ? (m[r] + log2f(l[r])) * LN2 : -INFINITY;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Decode: R = group·tokens ≤ MAXR query rows of KV head g (row r: head g·group + r / tokens, token r % tokens) over
// keys [s·chunk, (s+1)·chunk), 128 keys at a time: thread i scores key i against every row, the warps take the
// softmax statistics row by row, then thread (kh, c) accumulates output column c over every KH-th key.
// part: [batch, heads, tokens, splits, D + 2] = the unnormalized output row, its running max (log2 units), its sum.
constexpr int MAXR = 16;

template <typename T, int D>
__device__ void attn_decode(const AttnParams p, const T *__restrict__ q, const T *__restrict__ k,
                            const T *__restrict__ v, const unsigned char *__restrict__ mask,
                            float *__restrict__ part) {
    constexpr int KH = THREADS / D > 0 ? THREADS / D : 1;
    __shared__ float sq[MAXR][D];
    __shared__ float sp[MAXR][THREADS];
    __shared__ float sm[MAXR], sl[MAXR], salpha[MAXR];
    __shared__ float sred[KH > 1 ? MAXR : 1][KH > 1 ? D : 1];
    const int s = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int group = p.heads / p.kv_heads, R = group * p.tokens, start = p.kv_len - p.tokens;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const float sl2 = p.scale * LOG2E;
    for (int i = tid; i < R * D; i += THREADS) {
        const int r = i / D, c = i % D, hh = r / p.tokens, t = r % p.tokens;
        sq[r][c] = to_float(q[((long long)b * p.tokens + t) * p.q_stride + p.q_off + (g * group + hh) * D + c]) * sl2;
    }
    if (tid < MAXR) sm[tid] = -INFINITY, sl[tid] = 0.f;
    const int j_begin = s * p.chunk, j_end = min(p.kv_len, j_begin + p.chunk);
    const int col = tid % D, kh = tid / D;
    float acc[MAXR];
#pragma unroll
    for (int r = 0; r < MAXR; ++r) acc[r] = 0.f;
    __syncthreads();
    for (int j0 = j_begin; j0 < j_end; j0 += THREADS) {
        const int j = j0 + tid;
        float sc[MAXR];
#pragma unroll
        for (int r = 0; r < MAXR; ++r) sc[r] = 0.f;
        if (j < j_end) {
            const T *kr = k + ((long long)b * p.kv_len + j) * p.k_stride + p.k_off + g * D;
            for (int c = 0; c < D; c += 8) {
                const uint4 raw = *reinterpret_cast<const uint4 *>(kr + c);
                const T *e = reinterpret_cast<const T *>(&raw);
                float kf[8];
#pragma unroll
                for (int x = 0; x < 8; ++x) kf[x] = to_float(e[x]);
#pragma unroll
                for (int r = 0; r < MAXR; ++r) {
                    if (r < R) {
#pragma unroll
                        for (int x = 0; x < 8; ++x) sc[r] += sq[r][c + x] * kf[x];
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < MAXR; ++r) {
            if (r < R) {
                const int pos = start + r % p.tokens;
                sp[r][tid] = j < j_end && visible(p, mask, b, pos, j) ? sc[r] : -INFINITY;
            }
        }
        __syncthreads();
        for (int r = warp; r < R; r += THREADS / 32) {
            float x[THREADS / 32];
            float mx = -INFINITY;
#pragma unroll
            for (int i = 0; i < THREADS / 32; ++i) mx = fmaxf(mx, x[i] = sp[r][lane + 32 * i]);
            const float mn = fmaxf(sm[r], warp_max(mx));
            float alpha = 1.f, sum = 0.f;
#pragma unroll
            for (int i = 0; i < THREADS / 32; ++i) {
                x[i] = mn == -INFINITY ? 0.f : exp2f(x[i] - mn);
                sum += x[i];
                sp[r][lane + 32 * i] = x[i];
            }
            if (mn != -INFINITY) alpha = exp2f(sm[r] - mn);
            sum = warp_sum(sum);
            if (lane == 0) sl[r] = sl[r] * alpha + sum, sm[r] = mn, salpha[r] = alpha;
        }
        __syncthreads();
        if (kh < KH) {
#pragma unroll
            for (int r = 0; r < MAXR; ++r)
                if (r < R) acc[r] *= salpha[r];
            const int nkeys = min(THREADS, j_end - j0);
            for (int jj = kh; jj < nkeys; jj += KH) {
                const float vv = to_float(v[((long long)b * p.kv_len + j0 + jj) * p.v_stride + p.v_off + g * D + col]);
#pragma unroll
                for (int r = 0; r < MAXR; ++r)
                    if (r < R) acc[r] += sp[r][jj] * vv;
            }
        }
        __syncthreads();
    }
    if (KH > 1) {
        for (int part_kh = 1; part_kh < KH; ++part_kh) {
            if (kh == part_kh) {
#pragma unroll
                for (int r = 0; r < MAXR; ++r)
                    if (r < R) sred[r][col] = acc[r];
            }
            __syncthreads();
            if (kh == 0) {
#pragma unroll
                for (int r = 0; r < MAXR; ++r)
                    if (r < R) acc[r] += sred[r][col];
            }
            __syncthreads();
        }
    }
    if (kh == 0) {
#pragma unroll
        for (int r = 0; r < MAXR; ++r) {
            if (r >= R) continue;
            const int h = g * group + r / p.tokens, t = r % p.tokens;
            float *dst = part + ((((long long)b * p.heads + h) * p.tokens + t) * p.splits + s) * (D + 2);
            dst[col] = acc[r];
            if (col == 0) dst[D] = sm[r], dst[D + 1] = sl[r];
        }
    }
}

// One block per output row (b, t, h), thread c < D a column: merges the splits' partial rows.
template <typename T, int D>
__device__ void attn_combine(const AttnParams p, const float *__restrict__ part, T *__restrict__ out,
                             float *__restrict__ lse) {
    const long long row = blockIdx.x;  // (b·heads + h)·tokens + t
    const int t = row % p.tokens, h = (row / p.tokens) % p.heads, b = row / ((long long)p.tokens * p.heads);
    const float *src = part + row * p.splits * (D + 2);
    float mx = -INFINITY;
    for (int s = 0; s < p.splits; ++s) mx = fmaxf(mx, src[s * (D + 2) + D]);
    float sum = 0.f, o = 0.f;
    const int c = threadIdx.x;
    if (mx != -INFINITY) {
        for (int s = 0; s < p.splits; ++s) {
            const float w = exp2f(src[s * (D + 2) + D] - mx);
            sum += w * src[s * (D + 2) + D + 1];
            if (c < D) o += w * src[s * (D + 2) + c];
        }
    }
    if (c < D)
        out[((long long)b * p.tokens + t) * p.o_stride + p.o_off + h * D + c] = from_float<T>(sum > 0.f ? o / sum : 0.f);
    if (lse != nullptr && c == 0) lse[row] = sum > 0.f ? (mx + log2f(sum)) * LN2 : -INFINITY;
}

// ---------------------------------------------------------------------------------------------------------------
// Backward step 1: delta[(b·heads + h)·tokens + t] = Σ_c dO·O, one warp per row.
template <typename T, int D>
__device__ void attn_delta(const AttnParams p, const T *__restrict__ o, const T *__restrict__ d_o,
                           float *__restrict__ delta) {
    const long long row = (long long)blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
    if (row >= (long long)p.batch * p.heads * p.tokens) return;
    const int t = row % p.tokens, h = (row / p.tokens) % p.heads, b = row / ((long long)p.tokens * p.heads);
    const long long tok = (long long)b * p.tokens + t;
    const T *a = o + tok * p.o_stride + p.o_off + h * D;
    const T *da = d_o + tok * p.do_stride + p.do_off + h * D;
    float sum = 0.f;
    for (int c = threadIdx.x % 32; c < D; c += 32) sum += to_float(a[c]) * to_float(da[c]);
    sum = warp_sum(sum);
    if (threadIdx.x % 32 == 0) delta[row] = sum;
}

// Backward step 2. Shared memory: K, V, Q, dO [64, D+8] (T), S/dP/dQ [64, D+4] (f32), P, dS [64, 72] (T), lse and
// delta [64] (f32). Warp w owns query rows 16w.. for S, P, dP, dS, dQ and key rows 16w.. for dK, dV (registers).
// dq_acc: [batch·tokens, heads, D] f32, zeroed before; gets scale · dS K.
template <typename T, int D>
__device__ void attn_bwd(const AttnParams p, const T *__restrict__ q, const T *__restrict__ k,
                         const T *__restrict__ v, const unsigned char *__restrict__ mask, const T *__restrict__ d_o,
                         const float *__restrict__ lse, const float *__restrict__ delta, float *__restrict__ dq_acc,
                         float *__restrict__ dk, float *__restrict__ dv) {
    constexpr int LDT = D + 8, LDS = D + 4, LDP = BC + 8;
    static_assert(D >= BC, "S shares its buffer with dQ: D columns");
    extern __shared__ __align__(128) unsigned char smem[];
    T *sK = reinterpret_cast<T *>(smem);
    T *sV = sK + BC * LDT;
    T *sQ = sV + BC * LDT;
    T *sdO = sQ + BR * LDT;
    float *sS = reinterpret_cast<float *>(sdO + BR * LDT);
    T *sP = reinterpret_cast<T *>(sS + BR * LDS);
    T *sdS = sP + BR * LDP;
    float *sLse = reinterpret_cast<float *>(sdS + BR * LDP);
    float *sDelta = sLse + BR;

    const int j0 = blockIdx.x * BC, g = blockIdx.y, b = blockIdx.z;
    const int group = p.heads / p.kv_heads, start = p.kv_len - p.tokens;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int valid_k = min(BC, p.kv_len - j0);
    const long long krow = (long long)b * p.kv_len + j0;
    load_rows<T, D, LDT>(sK, k + p.k_off + g * D, p.k_stride, krow, BC, valid_k);
    load_rows<T, D, LDT>(sV, v + p.v_off + g * D, p.v_stride, krow, BC, valid_k);
    const float sl2 = p.scale * LOG2E;
    FragC dK[D / 16], dV[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; ++n) wmma::fill_fragment(dK[n], 0.f), wmma::fill_fragment(dV[n], 0.f);
    // Queries that see some key of this block: pos ≥ j0 and pos ≤ last key + window − 1.
    const int t_lo = max(0, j0 - start);
    const int t_hi = p.window > 0 ? min(p.tokens, j0 + valid_k - 1 + p.window - start) : p.tokens;

    for (int hh = 0; hh < group; ++hh) {
        const int h = g * group + hh;
        for (int tq0 = t_lo; tq0 < t_hi; tq0 += BR) {
            __syncthreads();
            const int valid_q = min(BR, p.tokens - tq0);
            const long long qrow = (long long)b * p.tokens + tq0;
            load_rows<T, D, LDT>(sQ, q + p.q_off + h * D, p.q_stride, qrow, BR, valid_q);
            load_rows<T, D, LDT>(sdO, d_o + p.do_off + h * D, p.do_stride, qrow, BR, valid_q);
            for (int i = threadIdx.x; i < BR; i += blockDim.x) {
                const long long at = ((long long)b * p.heads + h) * p.tokens + tq0 + i;
                sLse[i] = i < valid_q ? lse[at] * LOG2E : -INFINITY;
                sDelta[i] = i < valid_q ? delta[at] : 0.f;
            }
            __syncthreads();
            warp_gemm<T, BC, D, false, true>(sS + warp * 16 * LDS, LDS, sQ + warp * 16 * LDT, LDT, sK, LDT);
            __syncwarp();
            float pr[16][2];
#pragma unroll
            for (int r = 0; r < 16; ++r) {
                const int row = warp * 16 + r, t = tq0 + row, pos = start + t;
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = lane + 32 * c;
                    const bool vis = t < p.tokens && visible(p, mask, b, pos, j0 + col);
                    pr[r][c] = vis ? exp2f(sS[row * LDS + col] * sl2 - sLse[row]) : 0.f;
                    sP[row * LDP + col] = from_float<T>(pr[r][c]);
                }
            }
            __syncthreads();
            // dV[16w.., :] += P^T dO
#pragma unroll
            for (int n = 0; n < D / 16; ++n) {
#pragma unroll
                for (int kk = 0; kk < BR / 16; ++kk) {
                    FragAT<T> fa;
                    FragB<T> fb;
                    wmma::load_matrix_sync(fa, sP + kk * 16 * LDP + warp * 16, LDP);
                    wmma::load_matrix_sync(fb, sdO + kk * 16 * LDT + n * 16, LDT);
                    wmma::mma_sync(dV[n], fa, fb, dV[n]);
                }
            }
            // dP[16w.., :] = dO V^T
            warp_gemm<T, BC, D, false, true>(sS + warp * 16 * LDS, LDS, sdO + warp * 16 * LDT, LDT, sV, LDT);
            __syncwarp();
#pragma unroll
            for (int r = 0; r < 16; ++r) {
                const int row = warp * 16 + r;
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const int col = lane + 32 * c;
                    sdS[row * LDP + col] = from_float<T>(pr[r][c] * (sS[row * LDS + col] - sDelta[row]));
                }
            }
            __syncthreads();
            // dK[16w.., :] += dS^T Q
#pragma unroll
            for (int n = 0; n < D / 16; ++n) {
#pragma unroll
                for (int kk = 0; kk < BR / 16; ++kk) {
                    FragAT<T> fa;
                    FragB<T> fb;
                    wmma::load_matrix_sync(fa, sdS + kk * 16 * LDP + warp * 16, LDP);
                    wmma::load_matrix_sync(fb, sQ + kk * 16 * LDT + n * 16, LDT);
                    wmma::mma_sync(dK[n], fa, fb, dK[n]);
                }
            }
            // dQ[16w.., :] = dS K, added to the accumulator
            warp_gemm<T, D, BC, false, false>(sS + warp * 16 * LDS, LDS, sdS + warp * 16 * LDP, LDP, sK, LDT);
            __syncwarp();
            for (int r = 0; r < 16; ++r) {
                const int row = warp * 16 + r;
                if (row >= valid_q) break;
                float *dst = dq_acc + ((qrow + row) * p.heads + h) * D;
                for (int c = lane; c < D; c += 32) atomicAdd(dst + c, sS[row * LDS + c] * p.scale);
            }
        }
    }
    __syncwarp();
    float *mine = sS + warp * 16 * LDS;
#pragma unroll
    for (int which = 0; which < 2; ++which) {
#pragma unroll
        for (int n = 0; n < D / 16; ++n)
            wmma::store_matrix_sync(mine + n * 16, which == 0 ? dK[n] : dV[n], LDS, wmma::mem_row_major);
        __syncwarp();
        for (int r = 0; r < 16; ++r) {
            const int j = j0 + warp * 16 + r;
            if (j >= p.kv_len) break;
            const long long at = (long long)b * p.kv_len + j;
            float *dst = which == 0 ? dk + at * p.dk_stride + p.dk_off + g * D : dv + at * p.dv_stride + p.dv_off + g * D;
            const float f = which == 0 ? p.scale : 1.f;
            for (int c = lane; c < D; c += 32) dst[c] = mine[r * LDS + c] * f;
        }
        __syncwarp();
    }
}

// Backward step 3: dq[(b·tokens + t) · dq_stride + dq_off + h·D + c] = dq_acc[b·tokens + t, h, c].
extern "C" __global__ void attention_dq_copy(const AttnParams p, int head_dim, const float *__restrict__ acc,
                                             float *__restrict__ dq) {
    const int width = p.heads * head_dim;
    const long long n = (long long)p.batch * p.tokens * width;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        dq[(i / width) * p.dq_stride + p.dq_off + i % width] = acc[i];
}

#define ATTENTION_KERNELS(NAME, T, D)                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_fwd_##NAME##_##D(                               \
        const AttnParams p, const T *q, const T *k, const T *v, const unsigned char *mask, T *out, float *lse) {     \
        attn_fwd<T, D>(p, q, k, v, mask, out, lse);                                                                  \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_decode_##NAME##_##D(                            \
        const AttnParams p, const T *q, const T *k, const T *v, const unsigned char *mask, float *part) {             \
        attn_decode<T, D>(p, q, k, v, mask, part);                                                                   \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                            \
        attention_combine_##NAME##_##D(const AttnParams p, const float *part, T *out, float *lse) {                  \
        attn_combine<T, D>(p, part, out, lse);                                                                       \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                            \
        attention_delta_##NAME##_##D(const AttnParams p, const T *o, const T *d_o, float *delta) {                   \
        attn_delta<T, D>(p, o, d_o, delta);                                                                          \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_bwd_##NAME##_##D(                               \
        const AttnParams p, const T *q, const T *k, const T *v, const unsigned char *mask, const T *d_o,             \
        const float *lse, const float *delta, float *dq_acc, float *dk, float *dv) {                                 \
        attn_bwd<T, D>(p, q, k, v, mask, d_o, lse, delta, dq_acc, dk, dv);                                           \
    }

ATTENTION_KERNELS(bf16, __nv_bfloat16, 64)
ATTENTION_KERNELS(bf16, __nv_bfloat16, 96)
ATTENTION_KERNELS(bf16, __nv_bfloat16, 128)
ATTENTION_KERNELS(f16, __half, 64)
ATTENTION_KERNELS(f16, __half, 96)
ATTENTION_KERNELS(f16, __half, 128)
