// SwiGLU's gating (Shazeer 2020, "GLU Variants Improve Transformer"): act = silu(gate) * up with
// silu(g) = g / (1 + exp(-g)), on rows gate_up: [tokens, 2*inter] (gate columns first, the layout of Phi-3's
// fused gate_up_proj), act: [tokens, inter]; and its backward, with s = sigmoid(g):
// d_up = d_act * g * s, d_gate = d_act * up * s * (1 + g * (1 - s)). fp32 math on f32/bf16/f16 data; each thread
// handles V consecutive columns of a row with one access per operand (16 bytes when inter allows).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

template <typename T, int V> struct alignas(sizeof(T) * V) Pack { T v[V]; };

// Grid-stride over the tokens * inter / V packs.
template <typename T, int V>
__device__ void forward(T *__restrict__ act, const T *__restrict__ gate_up, long long tokens, int inter) {
    const int per_row = inter / V;
    const long long n = tokens * per_row;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (long long)gridDim.x * blockDim.x) {
        const long long t = j / per_row;
        const int c = (int)(j - t * per_row) * V;
        const Pack<T, V> g = *reinterpret_cast<const Pack<T, V> *>(gate_up + t * 2 * inter + c);
        const Pack<T, V> u = *reinterpret_cast<const Pack<T, V> *>(gate_up + t * 2 * inter + inter + c);
        Pack<T, V> o;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            o.v[k] = from_f32<T>(silu_mul_of(to_f32(g.v[k]), to_f32(u.v[k])));
        }
        *reinterpret_cast<Pack<T, V> *>(act + t * inter + c) = o;
    }
}

template <typename T, int V>
__device__ void backward(T *__restrict__ d_gate_up, const T *__restrict__ gate_up, const T *__restrict__ d_act,
                         long long tokens, int inter) {
    const int per_row = inter / V;
    const long long n = tokens * per_row;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (long long)gridDim.x * blockDim.x) {
        const long long t = j / per_row;
        const int c = (int)(j - t * per_row) * V;
        const Pack<T, V> g = *reinterpret_cast<const Pack<T, V> *>(gate_up + t * 2 * inter + c);
        const Pack<T, V> u = *reinterpret_cast<const Pack<T, V> *>(gate_up + t * 2 * inter + inter + c);
        const Pack<T, V> da = *reinterpret_cast<const Pack<T, V> *>(d_act + t * inter + c);
        Pack<T, V> dg, du;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float x = to_f32(g.v[k]), a = to_f32(da.v[k]);
            const float s = 1.f / (1.f + expf(-x));
            du.v[k] = from_f32<T>(a * x * s);
            dg.v[k] = from_f32<T>(a * to_f32(u.v[k]) * s * (1.f + x * (1.f - s)));
        }
        *reinterpret_cast<Pack<T, V> *>(d_gate_up + t * 2 * inter + c) = dg;
        *reinterpret_cast<Pack<T, V> *>(d_gate_up + t * 2 * inter + inter + c) = du;
    }
}

// 16-byte accesses when inter is a multiple of their width (every row start stays aligned), else one element.
#define SILU_MUL_KERNELS(T, SUFFIX)                                                                          \
    extern "C" __global__ void silu_mul_##SUFFIX(T *act, const T *gate_up, long long tokens, int inter) {    \
        constexpr int V = 16 / sizeof(T);                                                                    \
        wait_for_previous_kernel();                                                                          \
        if (inter % V == 0) forward<T, V>(act, gate_up, tokens, inter);                                      \
        else forward<T, 1>(act, gate_up, tokens, inter);                                                     \
    }                                                                                                        \
    extern "C" __global__ void silu_mul_backward_##SUFFIX(T *d_gate_up, const T *gate_up, const T *d_act,    \
                                                          long long tokens, int inter) {                     \
        constexpr int V = 16 / sizeof(T);                                                                    \
        if (inter % V == 0) backward<T, V>(d_gate_up, gate_up, d_act, tokens, inter);                        \
        else backward<T, 1>(d_gate_up, gate_up, d_act, tokens, inter);                                       \
    }

SILU_MUL_KERNELS(float, f32)
SILU_MUL_KERNELS(__nv_bfloat16, bf16)
SILU_MUL_KERNELS(__half, f16)
