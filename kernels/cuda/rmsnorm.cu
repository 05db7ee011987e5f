// RMSNorm (Zhang & Sennrich 2019) as transformers' LlamaRMSNorm: y = w * (x * rsqrt(mean(x^2) + eps)), and its
// gradient with respect to x for a frozen weight: with r = rsqrt(mean(x^2) + eps) and g = w * dy,
// dx = r*g - r^3 * x * sum(g*x) / d. One block per row, fp32 math on f32/bf16/f16 data, 16-byte loads where the
// row length allows, the row held in registers between the sum and the write.
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

// Packs per thread kept in registers between a row's two passes (the launcher sizes blocks to match): 4 of x in
// the forward, 2 each of x and dy in the backward (more spills under the 64 registers a 1024-thread block leaves);
// packs past that are read again in the second pass.
#define CACHE 4
#define CACHE_BWD 2

// out, x: [rows, d], w: [d]; row = blockIdx.x.
template <typename T, int V>
__device__ void forward(T *__restrict__ out, const T *__restrict__ x, const T *__restrict__ w, int d, float eps) {
    const long long base = (long long)blockIdx.x * d;
    const Pack<T, V> *xr = reinterpret_cast<const Pack<T, V> *>(x + base);
    const Pack<T, V> *wr = reinterpret_cast<const Pack<T, V> *>(w);
    Pack<T, V> *outr = reinterpret_cast<Pack<T, V> *>(out + base);
    const int n = d / V;
    Pack<T, V> cache[CACHE];
    float ss = 0.f;
#pragma unroll
    for (int c = 0; c < CACHE; ++c) {
        const int i = threadIdx.x + c * blockDim.x;
        if (i < n) cache[c] = xr[i];
    }
#pragma unroll
    for (int c = 0; c < CACHE; ++c) {
        if (threadIdx.x + c * blockDim.x < n) {
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const float v = to_f32(cache[c].v[k]);
                ss += v * v;
            }
        }
    }
    for (int i = threadIdx.x + CACHE * blockDim.x; i < n; i += blockDim.x) {
        const Pack<T, V> p = xr[i];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float v = to_f32(p.v[k]);
            ss += v * v;
        }
    }
    const float r = rsqrtf(block_sum(ss) / (float)d + eps);
#pragma unroll
    for (int c = 0; c < CACHE; ++c) {
        const int i = threadIdx.x + c * blockDim.x;
        if (i < n) {
            const Pack<T, V> q = wr[i];
            Pack<T, V> o;
#pragma unroll
            for (int k = 0; k < V; ++k) o.v[k] = from_f32<T>(to_f32(q.v[k]) * (to_f32(cache[c].v[k]) * r));
            outr[i] = o;
        }
    }
    for (int i = threadIdx.x + CACHE * blockDim.x; i < n; i += blockDim.x) {
        const Pack<T, V> p = xr[i], q = wr[i];
        Pack<T, V> o;
#pragma unroll
        for (int k = 0; k < V; ++k) o.v[k] = from_f32<T>(to_f32(q.v[k]) * (to_f32(p.v[k]) * r));
        outr[i] = o;
    }
}

// ss += x^2 and gx += w * dy * x over one pack.
template <typename T, int V>
__device__ __forceinline__ void backward_sums(const Pack<T, V> &p, const Pack<T, V> &q, const Pack<T, V> &g, float &ss,
                                              float &gx) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const float v = to_f32(p.v[k]);
        ss += v * v;
        gx += to_f32(q.v[k]) * to_f32(g.v[k]) * v;
    }
}

// dx (pack i) = (accumulate ? dx : 0) + r * w * dy - c * x.
template <typename T, int V>
__device__ __forceinline__ void backward_store(Pack<T, V> *dxr, int i, const Pack<T, V> &p, const Pack<T, V> &q,
                                               const Pack<T, V> &g, float r, float c, int accumulate) {
    Pack<T, V> o;
    if (accumulate) o = dxr[i];
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const float v = r * to_f32(q.v[k]) * to_f32(g.v[k]) - c * to_f32(p.v[k]);
        o.v[k] = from_f32<T>(accumulate ? to_f32(o.v[k]) + v : v);
    }
    dxr[i] = o;
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
    Pack<T, V> cx[CACHE_BWD], cg[CACHE_BWD];
    float ss = 0.f, gx = 0.f;
#pragma unroll
    for (int c = 0; c < CACHE_BWD; ++c) {
        const int i = threadIdx.x + c * blockDim.x;
        if (i < n) {
            cx[c] = xr[i];
            cg[c] = dyr[i];
        }
    }
#pragma unroll
    for (int c = 0; c < CACHE_BWD; ++c) {
        const int i = threadIdx.x + c * blockDim.x;
        if (i < n) backward_sums<T, V>(cx[c], wr[i], cg[c], ss, gx);
    }
    for (int i = threadIdx.x + CACHE_BWD * blockDim.x; i < n; i += blockDim.x) backward_sums<T, V>(xr[i], wr[i], dyr[i], ss, gx);
    const float r = rsqrtf(block_sum(ss) / (float)d + eps);
    const float c3 = r * r * r * block_sum(gx) / (float)d;
#pragma unroll
    for (int c = 0; c < CACHE_BWD; ++c) {
        const int i = threadIdx.x + c * blockDim.x;
        if (i < n) backward_store<T, V>(dxr, i, cx[c], wr[i], cg[c], r, c3, accumulate);
    }
    for (int i = threadIdx.x + CACHE_BWD * blockDim.x; i < n; i += blockDim.x)
        backward_store<T, V>(dxr, i, xr[i], wr[i], dyr[i], r, c3, accumulate);
}

// 16-byte accesses when d is a multiple of their width (rows then stay 16-byte aligned), else one element each.
// Blocks of up to 1024 threads: registers capped to fit them.
#define RMSNORM_KERNELS(T, SUFFIX)                                                                           \
    extern "C" __global__ void __launch_bounds__(1024) rmsnorm_##SUFFIX(T *out, const T *x, const T *w, int d, float eps) {          \
        constexpr int V = 16 / sizeof(T);                                                                    \
        wait_for_previous_kernel();                                                                          \
        if (d % V == 0) forward<T, V>(out, x, w, d, eps);                                                    \
        else forward<T, 1>(out, x, w, d, eps);                                                               \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(1024) rmsnorm_backward_##SUFFIX(T *dx, const T *x, const T *w, const T *dy, int d,  \
                                                         float eps, int accumulate) {                        \
        constexpr int V = 16 / sizeof(T);                                                                    \
        if (d % V == 0) backward<T, V>(dx, x, w, dy, d, eps, accumulate);                                    \
        else backward<T, 1>(dx, x, w, dy, d, eps, accumulate);                                               \
    }

RMSNORM_KERNELS(float, f32)
RMSNORM_KERNELS(__nv_bfloat16, bf16)
RMSNORM_KERNELS(__half, f16)

// f32 RMSNorm bit for bit as cpu::rmsnorm computes it (calibration forwards, whose GPU and CPU runs must agree):
// accumulator l of the 8 sums x[8j + l]^2 over the row's whole chunks of 8 in order, the 8 added in order, then
// the tail's squares, mean = sum / d, r = 1 / sqrt(mean + eps), out = w * (x * r); every operation rounded on its
// own (no fused multiply-add), as the host's. 8 threads a row (thread l keeps accumulator l), 32 rows a block.
extern "C" __global__ void __launch_bounds__(256)
    rmsnorm_f32_as_cpu(float *__restrict__ out, const float *__restrict__ x, const float *__restrict__ w, int rows,
                       int d, float eps) {
    const int row = blockIdx.x * 32 + (threadIdx.x >> 3), l = threadIdx.x & 7;
    const unsigned group = 0xffu << (threadIdx.x & 24);
    if (row >= rows) return;  // a row's 8 threads leave together
    const float *xr = x + (long long)row * d;
    const int whole = d / 8 * 8;
    float acc = 0.f;
    for (int j = l; j < whole; j += 8) acc = __fadd_rn(acc, __fmul_rn(xr[j], xr[j]));
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < 8; ++k) sum = __fadd_rn(sum, __shfl_sync(group, acc, k, 8));
    float tail = 0.f;
    for (int j = whole; j < d; ++j) tail = __fadd_rn(tail, __fmul_rn(xr[j], xr[j]));
    const float mean = __fdiv_rn(__fadd_rn(sum, tail), (float)d);
    const float r = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(mean, eps)));
    float *orow = out + (long long)row * d;
    for (int j = l; j < d; j += 8) orow[j] = __fmul_rn(w[j], __fmul_rn(xr[j], r));
}
