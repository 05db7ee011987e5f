// RMSNorm (Zhang & Sennrich 2019) as transformers' LlamaRMSNorm: y = w * (x * rsqrt(mean(x^2) + eps)), and its
// gradient with respect to x for a frozen weight: with r = rsqrt(mean(x^2) + eps) and g = w * dy,
// dx = r*g - r^3 * x * sum(g*x) / d. One block per row, fp32 math on f32/bf16/f16 data, 16-byte loads where the
// row length allows.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

// V elements of T loaded or stored as one access (16 bytes when V = 16 / sizeof(T)).
template <typename T, int V> struct alignas(sizeof(T) * V) Pack { T v[V]; };

// The sum of v over the block (blockDim.x a multiple of 32), returned to every thread.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // an earlier call's readers are done with `partial`
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// out, x: [rows, d], w: [d]; row = blockIdx.x.
template <typename T, int V>
__device__ void forward(T *__restrict__ out, const T *__restrict__ x, const T *__restrict__ w, int d, float eps) {
    const long long base = (long long)blockIdx.x * d;
    const Pack<T, V> *xr = reinterpret_cast<const Pack<T, V> *>(x + base);
    const Pack<T, V> *wr = reinterpret_cast<const Pack<T, V> *>(w);
    Pack<T, V> *outr = reinterpret_cast<Pack<T, V> *>(out + base);
    const int n = d / V;
    float ss = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        Pack<T, V> p = xr[i];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            float v = to_f32(p.v[k]);
            ss += v * v;
        }
    }
    const float r = rsqrtf(block_sum(ss) / (float)d + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        Pack<T, V> p = xr[i], q = wr[i], o;
#pragma unroll
        for (int k = 0; k < V; ++k) o.v[k] = from_f32<T>(to_f32(q.v[k]) * (to_f32(p.v[k]) * r));
        outr[i] = o;
    }
}

// dx, x, dy: [rows, d], w: [d]; dx = (accumulate ? dx : 0) + d rmsnorm / dx.
template <typename T, int V>
__device__ void backward(T *dx, const T *__restrict__ x, const T *__restrict__ w, const T *__restrict__ dy, int d,
                         float eps, int accumulate) {
    const long long base = (long long)blockIdx.x * d;
    const Pack<T, V> *xr = reinterpret_cast<const Pack<T, V> *>(x + base);
    const Pack<T, V> *dyr = reinterpret_cast<const Pack<T, V> *>(dy + base);
    const Pack<T, V> *wr = reinterpret_cast<const Pack<T, V> *>(w);
    Pack<T, V> *dxr = reinterpret_cast<Pack<T, V> *>(dx + base);
    const int n = d / V;
    float ss = 0.f, gx = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        Pack<T, V> p = xr[i], q = wr[i], g = dyr[i];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            float v = to_f32(p.v[k]);
            ss += v * v;
            gx += to_f32(q.v[k]) * to_f32(g.v[k]) * v;
        }
    }
    const float r = rsqrtf(block_sum(ss) / (float)d + eps);
    const float c = r * r * r * block_sum(gx) / (float)d;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        Pack<T, V> p = xr[i], q = wr[i], g = dyr[i], o;
        if (accumulate) o = dxr[i];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            float v = r * to_f32(q.v[k]) * to_f32(g.v[k]) - c * to_f32(p.v[k]);
            o.v[k] = from_f32<T>(accumulate ? to_f32(o.v[k]) + v : v);
        }
        dxr[i] = o;
    }
}

// 16-byte accesses when d is a multiple of their width (rows then stay 16-byte aligned), else one element each.
#define RMSNORM_KERNELS(T, SUFFIX)                                                                           \
    extern "C" __global__ void rmsnorm_##SUFFIX(T *out, const T *x, const T *w, int d, float eps) {          \
        constexpr int V = 16 / sizeof(T);                                                                    \
        if (d % V == 0) forward<T, V>(out, x, w, d, eps);                                                    \
        else forward<T, 1>(out, x, w, d, eps);                                                               \
    }                                                                                                        \
    extern "C" __global__ void rmsnorm_backward_##SUFFIX(T *dx, const T *x, const T *w, const T *dy, int d,  \
                                                         float eps, int accumulate) {                        \
        constexpr int V = 16 / sizeof(T);                                                                    \
        if (d % V == 0) backward<T, V>(dx, x, w, dy, d, eps, accumulate);                                    \
        else backward<T, 1>(dx, x, w, dy, d, eps, accumulate);                                               \
    }

RMSNORM_KERNELS(float, f32)
RMSNORM_KERNELS(__nv_bfloat16, bf16)
RMSNORM_KERNELS(__half, f16)
