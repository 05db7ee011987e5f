// The linear layer's product for one token (decode), y[r] = Σ_i w[r, i] · x[i] (+ y[r] when accumulate), with
// 16-bit x and w, fp32 sums rounded once, y in the activation type or in f32 (the `_f32` kernels: logits): the
// product of kernels/src/cpu/matmul.rs at m = 1. gemm.rs takes it instead of cuBLAS for one row, whose call costs
// the host 8-9 us against a plain launch's ~3 us (decode is host-bound). A warp a row: each lane reads 16 bytes
// (8 elements) of the row and of x at a time, 512 contiguous bytes a warp, then a shuffle sum. Needs k % 8 == 0
// and 16-byte-aligned x and w (gemm.rs checks; cuBLAS otherwise).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

constexpr int ROWS_PER_BLOCK = 8;

__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ void narrow(__nv_bfloat16 *y, float v) { *y = __float2bfloat16_rn(v); }
__device__ __forceinline__ void narrow(__half *y, float v) { *y = __float2half_rn(v); }
__device__ __forceinline__ void narrow(float *y, float v) { *y = v; }

// With NORM, x goes through RMSNorm (weight `norm`, epsilon `eps`) first, as rmsnorm.cu would write it.
template <typename T, typename O, bool NORM>
__device__ void matvec(O *__restrict__ y, const T *__restrict__ x, const T *__restrict__ w, int n, int k,
                       int accumulate, const T *__restrict__ norm, float eps) {
    const float factor = NORM ? rms_factor(x, k, eps) : 0.f;  // the whole block, before any warp leaves
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
    if (row >= n) return;
    const uint4 *wr = reinterpret_cast<const uint4 *>(w + (long long)row * k);
    const uint4 *xv = reinterpret_cast<const uint4 *>(x), *nv = reinterpret_cast<const uint4 *>(norm);
    const int chunks = k / 8;
    float sum = 0.f;
#pragma unroll 4
    for (int c = lane; c < chunks; c += 32) {
        const uint4 a = ldg_stream(wr + c);
        const uint4 b = NORM ? rms_normed<T>(__ldg(xv + c), __ldg(nv + c), factor) : __ldg(xv + c);
        const unsigned aw[4] = {a.x, a.y, a.z, a.w}, bw[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 p = unpack2(aw[i], T()), q = unpack2(bw[i], T());
            sum = fmaf(p.x, q.x, sum);
            sum = fmaf(p.y, q.y, sum);
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
    if (lane == 0) narrow(y + row, accumulate ? sum + widen(y[row]) : sum);
}

#define MATVEC(NAME, T, O)                                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * ROWS_PER_BLOCK)                                            \
        matvec_##NAME(O *y, const T *x, const T *w, int n, int k, int accumulate) {                              \
        wait_for_previous_kernel();                                                                              \
        matvec<T, O, false>(y, x, w, n, k, accumulate, nullptr, 0.f);                                            \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * ROWS_PER_BLOCK) matvec_norm_##NAME(                        \
        O *y, const T *x, const T *w, int n, int k, int accumulate, const T *norm, float eps) {                  \
        wait_for_previous_kernel();                                                                              \
        matvec<T, O, true>(y, x, w, n, k, accumulate, norm, eps);                                                \
    }
MATVEC(bf16, __nv_bfloat16, __nv_bfloat16)
MATVEC(f16, __half, __half)
MATVEC(bf16_f32, __nv_bfloat16, float)
MATVEC(f16_f32, __half, float)
