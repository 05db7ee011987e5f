// Cross-entropy over the vocabulary as torch's cross_entropy (log_softmax + nll, ignore_index -100), one block per
// row of logits [rows, vocab]: an online max and sum of exp(v - max) per thread (Milakov & Gimelshein 2018,
// "Online normalizer calculation for softmax"), merged over the block, so the row is read once for the loss:
// loss = max + log(sum) - logits[label]. With write_grad, a second pass overwrites the row with the gradient of
// inv_n * loss: (softmax - onehot(label)) * inv_n. A row whose label is negative counts nothing (loss 0, gradient
// 0); a label >= vocab gives a NaN loss and gradient. fp32 math on f32/bf16/f16 logits, 16-byte loads where the
// vocabulary size allows.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

// NVRTC has no math.h: -inf and a quiet NaN by their bits.
#define NEG_INF __int_as_float(0xff800000)
#define QNAN __int_as_float(0x7fc00000)

template <typename T, int V> struct alignas(sizeof(T) * V) Pack { T v[V]; };

// (m, s) <- the running max and sum of exp(v - max) of both halves.
__device__ __forceinline__ void merge(float &m, float &s, float m2, float s2) {
    const float top = fmaxf(m, m2);
    if (top == NEG_INF) return;  // both empty
    s = s * expf(m - top) + s2 * expf(m2 - top);
    m = top;
}

// Merges every thread's (m, s) into all threads' (blockDim.x a multiple of 32).
__device__ void block_merge(float &m, float &s) {
    __shared__ float pm[32], ps[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        pm[warp] = m;
        ps[warp] = s;
    }
    __syncthreads();
    m = NEG_INF;
    s = 0.f;
    if (lane < (int)(blockDim.x >> 5)) {
        m = pm[lane];
        s = ps[lane];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
}

// logits: [rows, vocab] (overwritten by the gradient when write_grad), labels: [rows], loss: [rows].
template <typename T, int V>
__device__ void cross_entropy(T *logits, const int *__restrict__ labels, float *__restrict__ loss, int vocab,
                              float inv_n, int write_grad) {
    const long long row = blockIdx.x;
    const int label = labels[row];
    T *x = logits + row * vocab;
    Pack<T, V> *xv = reinterpret_cast<Pack<T, V> *>(x);
    const int n = vocab / V;
    if (label < 0) {
        if (threadIdx.x == 0) loss[row] = 0.f;
        if (write_grad) {
            Pack<T, V> zero;
#pragma unroll
            for (int k = 0; k < V; ++k) zero.v[k] = from_f32<T>(0.f);
            for (int i = threadIdx.x; i < n; i += blockDim.x) xv[i] = zero;
        }
        return;
    }
    // Read before the block's barrier: no thread writes the row before every thread has passed it.
    const float target = (threadIdx.x == 0 && label < vocab) ? to_f32(x[label]) : 0.f;
    float m = NEG_INF, s = 0.f;
    // Two packs per step, both loads issued before either is used; one merge per step.
    int i = threadIdx.x;
    for (; i + (int)blockDim.x < n; i += 2 * blockDim.x) {
        const Pack<T, V> p = xv[i], q = xv[i + blockDim.x];
        float v[2 * V], top = NEG_INF;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            v[k] = to_f32(p.v[k]);
            v[V + k] = to_f32(q.v[k]);
        }
#pragma unroll
        for (int k = 0; k < 2 * V; ++k) top = fmaxf(top, v[k]);
        float part = 0.f;
#pragma unroll
        for (int k = 0; k < 2 * V; ++k) part += expf(v[k] - top);
        merge(m, s, top, part);
    }
    if (i < n) {
        const Pack<T, V> p = xv[i];
        float v[V], top = NEG_INF;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            v[k] = to_f32(p.v[k]);
            top = fmaxf(top, v[k]);
        }
        float part = 0.f;
#pragma unroll
        for (int k = 0; k < V; ++k) part += expf(v[k] - top);
        merge(m, s, top, part);
    }
    block_merge(m, s);
    if (threadIdx.x == 0) loss[row] = label < vocab ? m + logf(s) - target : QNAN;
    if (!write_grad) return;
    const float scale = label < vocab ? inv_n / s : QNAN;
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        Pack<T, V> p = xv[i];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            float g = expf(to_f32(p.v[k]) - m) * scale;
            if (i * V + k == label) g -= inv_n;
            p.v[k] = from_f32<T>(g);
        }
        xv[i] = p;
    }
}

#define CROSS_ENTROPY_KERNEL(T, SUFFIX)                                                                      \
    extern "C" __global__ void __launch_bounds__(1024) cross_entropy_##SUFFIX(T *logits, const int *labels, float *loss, int vocab,  \
                                                      float inv_n, int write_grad) {                         \
        constexpr int V = 16 / sizeof(T);                                                                    \
        if (vocab % V == 0) cross_entropy<T, V>(logits, labels, loss, vocab, inv_n, write_grad);             \
        else cross_entropy<T, 1>(logits, labels, loss, vocab, inv_n, write_grad);                            \
    }

CROSS_ENTROPY_KERNEL(float, f32)
CROSS_ENTROPY_KERNEL(__nv_bfloat16, bf16)
CROSS_ENTROPY_KERNEL(__half, f16)
