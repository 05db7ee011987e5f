// The linear layer's product for one token (decode), y[r] = Σ_i w[r, i] · x[i] (+ y[r] when accumulate), with
// 16-bit x and w, fp32 sums rounded once, y in the activation type or in f32 (the `_f32` kernels: logits): the
// product of kernels/src/cpu/matmul.rs at m = 1. gemm.rs takes it instead of cuBLAS for one row, whose call costs
// the host 8-9 us against a plain launch's ~3 us (decode is host-bound). A warp a row: each lane reads 16 bytes
// (8 elements) of the row and of x at a time, 512 contiguous bytes a warp, then a shuffle sum. Needs k % 8 == 0
// and 16-byte-aligned x and w (gemm.rs checks; cuBLAS otherwise). The `matvec_norm_swiglu` kernels end SwiGLU's
// gate_up product in its gating: half a block's warps take gate rows, the other half the same outputs' up rows.
// w is read before the wait for the previous kernel: in an overlapped capture (prelude.cuh) no kernel before it may
// write w (decode's weights: none does).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

constexpr int ROWS_PER_BLOCK = 8;  // weight rows: one a warp

__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ void narrow(__nv_bfloat16 *y, float v) { *y = __float2bfloat16_rn(v); }
__device__ __forceinline__ void narrow(__half *y, float v) { *y = __float2half_rn(v); }
__device__ __forceinline__ void narrow(float *y, float v) { *y = v; }

// v rounded to the output type and back: the value a separate kernel would read.
template <typename O> __device__ __forceinline__ float as_written(float v) {
    O o;
    narrow(&o, v);
    return widen(o);
}

// Chunks of 8 inputs a lane loads into each of two register sets, both loading at once: a row of up to
// 32 * 8 * 2 * CHUNKS_IN_FLIGHT inputs is one memory round trip a warp, not one a chunk. Four a set took 64 registers
// a thread (two: 46-48), fewer blocks a multiprocessor, and lost 10% of TinyLlama-shaped decode (H200).
constexpr int CHUNKS_IN_FLIGHT = 2;

// With NORM, x goes through RMSNorm (weight `norm`, epsilon `eps`) first, as rmsnorm.cu would write it: the block
// writes the k normalized inputs to its dynamic shared memory (4k bytes, with the norm's weight) once, for all its
// warps' rows (each warp normalizing all of x itself cost more instructions than its product). With SWIGLU, w is
// SwiGLU's gate_up [2n, k] (gate rows first) and y [n] gets silu(gate) * up of the two products rounded as
// written, as silu_mul.cu computes it (prelude.cuh's silu_mul_of): the block's first ROWS_PER_BLOCK / 2 warps take
// gate rows, the others the same outputs' up rows (each warp reads one row, as the plain product's do), and the up
// sums reach the gate warps through shared memory. Lane l takes chunks l, l + 32, ...; the weights are constant, so
// the first chunks' loads go before the wait for the previous kernel (and the norm's factor), x and y after it.
template <typename T, typename O, bool NORM, bool SWIGLU>
__device__ void matvec(O *__restrict__ y, const T *__restrict__ x, const T *__restrict__ w, int n, int k,
                       int accumulate, const T *__restrict__ norm, float eps) {
    constexpr int OUTS = SWIGLU ? ROWS_PER_BLOCK / 2 : ROWS_PER_BLOCK;  // outputs a block
    constexpr int U = CHUNKS_IN_FLIGHT;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int out = blockIdx.x * OUTS + warp % OUTS;
    const bool up = SWIGLU && warp >= OUTS;
    const int chunks = out < n ? k / 8 : 0;  // a warp past the outputs loads and sums nothing
    const uint4 *wr = reinterpret_cast<const uint4 *>(w + (long long)(up ? out + n : out) * k);
    const uint4 *xv = reinterpret_cast<const uint4 *>(x), *nv = reinterpret_cast<const uint4 *>(norm);
    // The U chunks from c0 on (lane's: c0 + 32u), zeros past the row.
    auto load = [&](int c0, uint4 (&wv)[U]) {
#pragma unroll
        for (int u = 0; u < U; ++u)
            wv[u] = c0 + 32 * u < chunks ? ldg_stream(wr + c0 + 32 * u) : make_uint4(0, 0, 0, 0);
    };
    extern __shared__ uint4 normed[];  // NORM: x's k / 8 chunks normalized, then the norm weight's
    float sum = 0.f;
    auto consume = [&](int c0, const uint4 (&wv)[U]) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
            if (c >= chunks) break;
            const uint4 b = NORM ? normed[c] : __ldg(xv + c);
            const unsigned aw[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w}, bw[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float2 p = unpack2(aw[i], T()), q = unpack2(bw[i], T());
                sum = fmaf(p.x, q.x, sum);
                sum = fmaf(p.y, q.y, sum);
            }
        }
    };
    // The chunks being summed and the next ones loading (unrolled by two: no register copies). With NORM both sets
    // load before the wait, twice the bytes in flight while the previous kernel ends and the norm is taken; the plain
    // product issues its second set after the wait.
    uint4 ring[2][U];
    load(lane, ring[0]);
    if constexpr (NORM) load(lane + 32 * U, ring[1]);
    unsigned token = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) token ^= NORM ? ring[0][u].x ^ ring[1][u].x : ring[0][u].x;
    wait_for_previous_kernel_after(token);
    if constexpr (NORM) {  // the whole block: no warp has left
        // One trip to memory: each thread keeps its chunks of x and of the norm's weight (after x) in shared memory
        // while summing the squares as rms_factor does, then normalizes those same chunks.
        uint4 *weight = normed + k / 8;
        float ss = 0.f;
        for (int c = threadIdx.x; c < k / 8; c += blockDim.x) {
            const uint4 v = __ldg(xv + c);
            weight[c] = __ldg(nv + c);
            normed[c] = v;
            ss = add_squares<T>(ss, v);
        }
        const float factor = rms_factor_of(ss, k, eps);
        for (int c = threadIdx.x; c < k / 8; c += blockDim.x) normed[c] = rms_normed<T>(normed[c], weight[c], factor);
        __syncthreads();
    }
    for (int c0 = lane; c0 < chunks; c0 += 64 * U) {
        if constexpr (!NORM) load(c0 + 32 * U, ring[1]);
        consume(c0, ring[0]);
        if (c0 + 32 * U >= chunks) break;
        load(c0 + 64 * U, ring[0]);
        consume(c0 + 32 * U, ring[1]);
        if constexpr (NORM) load(c0 + 96 * U, ring[1]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
    if constexpr (SWIGLU) {
        __shared__ float up_sums[OUTS];
        if (up && lane == 0) up_sums[warp - OUTS] = sum;
        __syncthreads();
        if (!up && lane == 0 && out < n)
            narrow(y + out, silu_mul_of(as_written<O>(sum), as_written<O>(up_sums[warp])));
    } else if (lane == 0 && out < n) {
        narrow(y + out, accumulate ? sum + widen(y[out]) : sum);
    }
}

#define MATVEC(NAME, T, O)                                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * ROWS_PER_BLOCK)                                            \
        matvec_##NAME(O *y, const T *x, const T *w, int n, int k, int accumulate) {                              \
        matvec<T, O, false, false>(y, x, w, n, k, accumulate, nullptr, 0.f);                                     \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * ROWS_PER_BLOCK) matvec_norm_##NAME(                        \
        O *y, const T *x, const T *w, int n, int k, const T *norm, float eps) {                                  \
        matvec<T, O, true, false>(y, x, w, n, k, 0, norm, eps);                                                  \
    }
MATVEC(bf16, __nv_bfloat16, __nv_bfloat16)
MATVEC(f16, __half, __half)
MATVEC(bf16_f32, __nv_bfloat16, float)
MATVEC(f16_f32, __half, float)

// y [n] = silu(gate) * up of rmsnorm(x) · [gate; up]ᵀ, w [2n, k] (output in the operands' type only).
#define MATVEC_SWIGLU(NAME, T)                                                                                   \
    extern "C" __global__ void __launch_bounds__(32 * ROWS_PER_BLOCK) matvec_norm_swiglu_##NAME(                 \
        T *y, const T *x, const T *w, int n, int k, const T *norm, float eps) {                                  \
        matvec<T, T, true, true>(y, x, w, n, k, 0, norm, eps);                                                   \
    }
MATVEC_SWIGLU(bf16, __nv_bfloat16)
MATVEC_SWIGLU(f16, __half)
