// LoRA (Hu et al. 2021) on the GPU, as PEFT's lora.Linear computes it in bf16 autocast: y += scale · (x·Aᵀ)·Bᵀ with
// A: [r, in], B: [out, r] (PEFT's layouts, fp32 master weights rounded to the activations' 16-bit type for the tensor
// cores), and its backward. Every product runs on the tensor cores (WMMA, fp32 accumulators): with r ≤ 64 the
// products are thin, and on FFMA they would cost as much as the base matmul.
//   lora_down_<t>:  u = scale_u · X·Pᵀ ([tokens, r], fp32), grid (64-token blocks, slices of the input) meeting in
//                   fp32 atomics; forward X = x, P = A; backward X = dy, P = Bᵀ (g = scale·dy·B).
//   lora_up_<t>:    Y += scale_y · u·Qᵀ in place (one read-modify-write of Y), grid (64-token blocks, slices of the
//                   output); forward Q = B, backward Q = Aᵀ (dx += g·A). P(j, i) = P[j·p_j + i·p_i],
//                   Q(o, j) = Q[o·q_o + j·q_j].
//                   One kernel for both products (u kept in shared memory) was tried first: a block then reduces all
//                   of `in` before it can write any of Y, a long dependent loop of small tiles, and it ran at 2× the
//                   base GEMM's time (H200, 4096 tokens, 4096→4096, r 16); split, both run as wide grids.
//   lora_outer_<t>: C(m, j) += alpha · Σ_t M[t, m] · W[t, j], W fp32 [tokens, r], C(m, j) = C[m·c_m + j·c_j]:
//                   grad_B = scale·dyᵀ·u and grad_A = gᵀ·x. Grid (blocks of 64 m, token slices); slices meet in
//                   fp32 atomics.
// X/Y/M rows: element off + t·stride + column.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
using namespace nvcuda;

struct LoraParams {
    int tokens, n_in, n_out, rank;
    int x_off, x_stride, y_off, y_stride;
    int p_j, p_i, q_o, q_j;
    int out_slice, tokens_per_block, in_slice;
    int c_m, c_j;
    float scale_u, scale_y;
};

constexpr int TILE = 64, LD = TILE + 8, LDF = TILE + 4, THREADS = 128;

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }

// Element `hi` (0: low half) of a register holding two 16-bit values, and a value's bits.
__device__ __forceinline__ float half_at(unsigned u, int hi, __nv_bfloat16) { return __uint_as_float((hi ? u >> 16 : u & 0xffffu) << 16); }
__device__ __forceinline__ float half_at(unsigned u, int hi, __half) { return __half2float(__ushort_as_half((unsigned short)(hi ? u >> 16 : u & 0xffffu))); }
__device__ __forceinline__ unsigned bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ unsigned bits(__half x) { return __half_as_ushort(x); }

template <typename T> using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <typename T> using FragAT = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major>;
template <typename T> using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <typename T> using FragBT = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// dst[64][LD] = rows t0 .. t0+64, columns c0 .. c0+64 of a 16-bit matrix (zeros outside rows × cols). Every load
// of a thread is issued before its first shared-memory store, so their latencies overlap.
template <typename T>
__device__ void load_tile(T (*dst)[LD], const T *src, int off, int stride, int t0, int rows, int c0, int cols) {
    const bool vec = off % 8 == 0 && stride % 8 == 0 && c0 + TILE <= cols;
    if (vec) {
        constexpr int PER = TILE * TILE / 8 / THREADS;
        uint4 val[PER];
#pragma unroll
        for (int k = 0; k < PER; ++k) {
            const int i = threadIdx.x + k * THREADS, r = i / (TILE / 8), c = (i % (TILE / 8)) * 8;
            val[k] = t0 + r < rows ? *reinterpret_cast<const uint4 *>(src + off + (long long)(t0 + r) * stride + c0 + c)
                                   : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int k = 0; k < PER; ++k) {
            const int i = threadIdx.x + k * THREADS, r = i / (TILE / 8), c = (i % (TILE / 8)) * 8;
            *reinterpret_cast<uint4 *>(&dst[r][c]) = val[k];
        }
    } else {
        constexpr int PER = 16;
        for (int base = 0; base < TILE * TILE; base += PER * THREADS) {
            T val[PER];
#pragma unroll
            for (int k = 0; k < PER; ++k) {
                const int i = base + threadIdx.x + k * THREADS, r = i / TILE, c = i % TILE;
                val[k] = t0 + r < rows && c0 + c < cols ? src[off + (long long)(t0 + r) * stride + c0 + c] : from_float<T>(0.f);
            }
#pragma unroll
            for (int k = 0; k < PER; ++k) {
                const int i = base + threadIdx.x + k * THREADS;
                dst[i / TILE][i % TILE] = val[k];
            }
        }
    }
}

// dst[a][b] = T(src[(a0 + a)·sa + b·sb]) for a0 + a < na, b < nb; zeros elsewhere, for b < 16·bgroups. The
// faster-moving index in memory runs across threads; loads are issued in batches before their stores.
template <typename T>
__device__ void load_f32(T (*dst)[LD], const float *src, int a0, int na, int sa, int nb, int sb, int bgroups) {
    constexpr int PER = 16;
    const int nbp = bgroups * 16, total = TILE * nbp;
    for (int base = 0; base < total; base += PER * THREADS) {
        float val[PER];
#pragma unroll
        for (int k = 0; k < PER; ++k) {
            const int i = base + threadIdx.x + k * THREADS;
            const int a = sa <= sb ? i % TILE : i / nbp, b = sa <= sb ? i / TILE : i % nbp;
            val[k] = i < total && a0 + a < na && b < nb ? src[(long long)(a0 + a) * sa + (long long)b * sb] : 0.f;
        }
#pragma unroll
        for (int k = 0; k < PER; ++k) {
            const int i = base + threadIdx.x + k * THREADS;
            const int a = sa <= sb ? i % TILE : i / nbp, b = sa <= sb ? i / TILE : i % nbp;
            if (i < total) dst[a][b] = from_float<T>(val[k]);
        }
    }
}

// Y[t0 + 16w + r, o0 + c] += scale · acc[16w + r][c] for the warp's 16 rows and 64 columns: all loads first, then
// the stores; bf16x2/half2 pairs where the rows allow.
template <typename T>
__device__ void add_rows(T *y, const LoraParams &p, int t0, int o0, int o_end, const float (*acc)[LDF], float scale) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (p.y_off % 2 == 0 && p.y_stride % 2 == 0 && o0 + TILE <= o_end) {
        unsigned val[16];
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            const int t = t0 + warp * 16 + r;
            if (t < p.tokens) val[r] = *reinterpret_cast<const unsigned *>(y + p.y_off + (long long)t * p.y_stride + o0 + 2 * lane);
        }
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            const int t = t0 + warp * 16 + r;
            if (t >= p.tokens) continue;
            const float lo = half_at(val[r], 0, T()) + scale * acc[warp * 16 + r][2 * lane];
            const float hi = half_at(val[r], 1, T()) + scale * acc[warp * 16 + r][2 * lane + 1];
            *reinterpret_cast<unsigned *>(y + p.y_off + (long long)t * p.y_stride + o0 + 2 * lane) =
                bits(from_float<T>(lo)) | bits(from_float<T>(hi)) << 16;
        }
    } else {
        for (int r = 0; r < 16; ++r) {
            const int t = t0 + warp * 16 + r;
            if (t >= p.tokens) break;
            T *row = y + p.y_off + (long long)t * p.y_stride;
            for (int c = lane; c < TILE && o0 + c < o_end; c += 32)
                row[o0 + c] = from_float<T>(to_float(row[o0 + c]) + scale * acc[warp * 16 + r][c]);
        }
    }
}

// u[t, j] += scale_u · Σ_i X[t, i]·P(j, i) over this block's 64 tokens and its slice of i (fp32 atomics into u, which
// the launcher zeroes): blocks split the reduction so that a long input does not serialize in one block.
template <typename T>
__device__ void lora_down(const LoraParams p, const T *__restrict__ x, const float *__restrict__ pm,
                          float *__restrict__ u) {
    __shared__ __align__(128) T bufA[TILE][LD];  // X tile
    __shared__ __align__(128) T bufB[TILE][LD];  // P chunk [j][i]
    __shared__ __align__(128) float bufC[TILE][LDF];
    const int t0 = blockIdx.x * TILE, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int rp = (p.rank + 15) / 16;  // 16-column groups of r
    const int i_begin = blockIdx.y * p.in_slice, i_end = min(p.n_in, i_begin + p.in_slice);
    FragC acc[4];
#pragma unroll
    for (int n = 0; n < 4; ++n) wmma::fill_fragment(acc[n], 0.f);
    for (int i0 = i_begin; i0 < i_end; i0 += TILE) {
        __syncthreads();
        load_tile<T>(bufA, x, p.x_off, p.x_stride, t0, p.tokens, i0, i_end);
        // bufB[j][i] = P(j, i0 + i): rows j < rank of the chunk; P(j, i) = pm[j·p_j + (i0 + i)·p_i]
        load_f32<T>(bufB, pm + (long long)i0 * p.p_i, 0, p.rank, p.p_j, min(TILE, i_end - i0), p.p_i, 4);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE / 16; ++kk) {
            FragA<T> fa;
            wmma::load_matrix_sync(fa, &bufA[warp * 16][kk * 16], LD);
#pragma unroll
            for (int n = 0; n < 4; ++n) {
                if (n < rp) {
                    FragBT<T> fb;
                    wmma::load_matrix_sync(fb, &bufB[n * 16][kk * 16], LD);
                    wmma::mma_sync(acc[n], fa, fb, acc[n]);
                }
            }
        }
    }
#pragma unroll
    for (int n = 0; n < 4; ++n)
        if (n < rp) wmma::store_matrix_sync(&bufC[warp * 16][n * 16], acc[n], LDF, wmma::mem_row_major);
    __syncwarp();
    for (int r = 0; r < 16; ++r) {
        const int t = t0 + warp * 16 + r;
        if (t >= p.tokens) break;
        for (int j = lane; j < p.rank; j += 32) atomicAdd(u + (long long)t * p.rank + j, bufC[warp * 16 + r][j] * p.scale_u);
    }
}

// Y[t, o] += scale_y · Σ_j u[t, j]·Q(o, j) in place, for this block's 64 tokens and its slice of the output columns.
template <typename T>
__device__ void lora_up(const LoraParams p, const float *__restrict__ u, const float *__restrict__ qm,
                        T *__restrict__ y) {
    __shared__ __align__(128) T bufA[TILE][LD];  // u (16-bit) [t][j]
    __shared__ __align__(128) T bufB[TILE][LD];  // Q chunk [o][j]
    __shared__ __align__(128) float bufC[TILE][LDF];
    const int t0 = blockIdx.x * TILE, warp = threadIdx.x / 32;
    const int rp = (p.rank + 15) / 16;
    load_f32<T>(bufA, u, t0, p.tokens, p.rank, p.rank, 1, rp);
    const int o_begin = blockIdx.y * p.out_slice, o_end = min(p.n_out, o_begin + p.out_slice);
    for (int o0 = o_begin; o0 < o_end; o0 += TILE) {
        __syncthreads();
        // bufB[o][j] = Q(o0 + o, j)
        load_f32<T>(bufB, qm, o0, o_end, p.q_o, p.rank, p.q_j, rp);
        __syncthreads();
#pragma unroll
        for (int n = 0; n < TILE / 16; ++n) {
            FragC c;
            wmma::fill_fragment(c, 0.f);
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                if (kk < rp) {
                    FragA<T> fa;
                    FragBT<T> fb;
                    wmma::load_matrix_sync(fa, &bufA[warp * 16][kk * 16], LD);
                    wmma::load_matrix_sync(fb, &bufB[n * 16][kk * 16], LD);
                    wmma::mma_sync(c, fa, fb, c);
                }
            }
            wmma::store_matrix_sync(&bufC[warp * 16][n * 16], c, LDF, wmma::mem_row_major);
        }
        __syncwarp();
        add_rows<T>(y, p, t0, o0, o_end, bufC, p.scale_y);
    }
}

template <typename T>
__device__ void lora_outer(const LoraParams p, const T *__restrict__ m, const float *__restrict__ w,
                           float *__restrict__ c) {
    __shared__ __align__(128) T bufA[TILE][LD];  // M tile [t][m]
    __shared__ __align__(128) T bufB[TILE][LD];  // W tile [t][j]
    __shared__ __align__(128) float bufC[TILE][LDF];
    const int m0 = blockIdx.x * TILE, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int rp = (p.rank + 15) / 16;
    const int t_begin = blockIdx.y * p.tokens_per_block, t_end = min(p.tokens, t_begin + p.tokens_per_block);
    FragC acc[4];
#pragma unroll
    for (int n = 0; n < 4; ++n) wmma::fill_fragment(acc[n], 0.f);
    for (int t0 = t_begin; t0 < t_end; t0 += TILE) {
        __syncthreads();
        load_tile<T>(bufA, m, p.x_off, p.x_stride, t0, t_end, m0, p.n_in);
        load_f32<T>(bufB, w, t0, t_end, p.rank, p.rank, 1, rp);
        __syncthreads();
        // acc[16w.. m, :] += Mᵀ · W
#pragma unroll
        for (int kk = 0; kk < TILE / 16; ++kk) {
            FragAT<T> fa;
            wmma::load_matrix_sync(fa, &bufA[kk * 16][warp * 16], LD);
#pragma unroll
            for (int n = 0; n < 4; ++n) {
                if (n < rp) {
                    FragB<T> fb;
                    wmma::load_matrix_sync(fb, &bufB[kk * 16][n * 16], LD);
                    wmma::mma_sync(acc[n], fa, fb, acc[n]);
                }
            }
        }
    }
#pragma unroll
    for (int n = 0; n < 4; ++n)
        if (n < rp) wmma::store_matrix_sync(&bufC[warp * 16][n * 16], acc[n], LDF, wmma::mem_row_major);
    __syncwarp();
    for (int r = 0; r < 16; ++r) {
        const int mm = m0 + warp * 16 + r;
        if (mm >= p.n_in) break;
        for (int j = lane; j < p.rank; j += 32)
            atomicAdd(c + (long long)mm * p.c_m + (long long)j * p.c_j, p.scale_u * bufC[warp * 16 + r][j]);
    }
}

#define LORA_KERNELS(NAME, T)                                                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                            \
        lora_down_##NAME(const LoraParams p, const T *x, const float *pm, float *u) {                                \
        lora_down<T>(p, x, pm, u);                                                                                   \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                            \
        lora_up_##NAME(const LoraParams p, const float *u, const float *qm, T *y) {                                  \
        lora_up<T>(p, u, qm, y);                                                                                     \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                            \
        lora_outer_##NAME(const LoraParams p, const T *m, const float *w, float *c) {                                \
        lora_outer<T>(p, m, w, c);                                                                                   \
    }

LORA_KERNELS(bf16, __nv_bfloat16)
LORA_KERNELS(f16, __half)
